"""Memory budgets in CI: a YAML file of named runs, each checked against its budget.

::

    defaults:            # optional: settings every run starts from
      precision: bf16
    runs:
      - name: qlora-8b-on-a-4090
        model: llama3-8b
        method: qlora
        seq_len: 2048
        gpu: rtx4090
        max_total: 22GiB     # optional: the per-GPU total may not exceed this
        min_headroom: 10%    # optional: of the GPU's memory, or a size (2GiB)

A run fails when it does not fit its GPU, exceeds ``max_total`` or leaves less than
``min_headroom``. Errors in the file name the line they are on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ftmem.display import printable
from ftmem.errors import FtmemError, InvalidInputError
from ftmem.limits import GPU_MEMORY
from ftmem.result import Estimate
from ftmem.textfiles import compose_yaml, given_path, parse_yaml, read_text
from ftmem.units import format_bytes, parse_size

MAX_FILE_BYTES = 1 << 20  # a budgets file is a page of YAML, not a dataset
MAX_RUNS = 1000  # a team's list of runs: 1,000 check in ~3 s here (a 1 MiB file holds ~20,000)


class BudgetRun(BaseModel):
    """One named run; keys other than these are run settings (as `ftmem estimate` takes
    them, with underscores: seq_len, lora_r, strategy, gpus...)."""

    # names compared and shown stripped: "a" and "a " were two runs that read the same
    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=True)

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    gpu: str | None = None
    gpu_memory: str | None = None
    max_total: str | None = None
    min_headroom: str | None = None

    @field_validator("max_total", "min_headroom", "gpu_memory", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return str(v) if isinstance(v, int | float) else v

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


BUDGET_KEYS = ("model", "gpu", "gpu_memory", "max_total", "min_headroom")
"""The run's own fields a ``defaults`` may give (each run may still set its own)."""


class BudgetFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: dict[str, Any] = Field(default_factory=dict)
    runs: list[BudgetRun] = Field(min_length=1, max_length=MAX_RUNS)

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_run_fields(cls, data: Any) -> Any:
        """A default ``gpu`` (or model, budget) goes into each run, validated there as
        the run's own (it was passed twice to the estimate: a TypeError)."""
        if not isinstance(data, dict):
            return data
        defaults, runs = data.get("defaults"), data.get("runs")
        if not isinstance(defaults, dict):
            return data
        if "name" in defaults:
            raise ValueError("defaults cannot give a name: each run names itself")
        own = {k: defaults[k] for k in BUDGET_KEYS if k in defaults}
        if not own:
            return data
        rest = {k: v for k, v in defaults.items() if k not in own}
        if isinstance(runs, list):
            runs = [{**own, **r} if isinstance(r, dict) else r for r in runs]
        return {**data, "defaults": rest, "runs": runs}


@dataclass
class RunResult:
    run: BudgetRun
    line: int
    estimate: Estimate | None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


# -- reading, with line numbers -----------------------------------------------------------


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int:
    """1-based line of the YAML node at ``loc`` (keys and indexes), or of its nearest
    parent that exists."""
    node, line = root, 1
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if getattr(k, "value", None) == part]
            if not match:
                break
            key, node = match[0]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_budgets(path: str) -> tuple[BudgetFile, yaml.Node | None]:
    text = read_text(given_path(path, "budgets file"), "budgets file", MAX_FILE_BYTES)
    root = compose_yaml(text, path)
    data = parse_yaml(text, path)
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}, line 1: expected a mapping with a 'runs' list.")
    try:
        return BudgetFile.model_validate(data), root
    except ValidationError as exc:
        # an unknown key explains the rest ("runs" missing when it is misspelt)
        err = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
        loc = tuple(err["loc"])
        line = _node_line(root, loc)
        where = ".".join(str(x) for x in loc) or "file"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (a file has 'defaults' and 'runs')"
        raise InvalidInputError(f"{path}, line {line}: {where}: {msg}.") from None


# -- checking ------------------------------------------------------------------------------


def _headroom_needed(text: str, gpu_bytes: int) -> int:
    t = text.strip()
    if t.endswith("%"):
        try:
            share = float(t[:-1])
        except ValueError:
            raise InvalidInputError(f"min_headroom: '{text}' is not a percentage.") from None
        if not 0 <= share < 100:
            raise InvalidInputError(f"min_headroom: '{text}' must be between 0% and 100%.")
        return int(gpu_bytes * share / 100)
    return _size("min_headroom", t)


def _size(key: str, text: str) -> int:
    """A per-GPU size of the budgets file (max_total, min_headroom)."""
    return parse_size(text, GPU_MEMORY, key)


def check_run(run: BudgetRun, defaults: dict[str, Any], line: int) -> RunResult:
    from ftmem.api import estimate

    settings = {**defaults, **run.settings}
    if run.gpu is None and run.gpu_memory is None and run.max_total is None:
        raise InvalidInputError("no budget: give gpu, gpu_memory or max_total.")
    est = estimate(run.model, gpu=run.gpu, gpu_memory=run.gpu_memory, **settings)
    result = RunResult(run, line, est)
    total = est.memory.total_bytes
    if est.fits is False:
        assert est.gpu is not None and est.headroom_bytes is not None
        result.problems.append(
            f"does not fit {est.gpu['name']}: needs {format_bytes(total)}, "
            f"short by {format_bytes(-est.headroom_bytes)}"
        )
    host = est.parallel
    if host is not None and host.host_fits is False:
        assert host.host_memory_bytes is not None
        result.problems.append(
            f"host RAM does not fit: offload needs {format_bytes(host.host_bytes_per_node)} "
            f"per node, the node has {format_bytes(host.host_memory_bytes)}"
        )
    if run.max_total is not None:
        limit = _size("max_total", run.max_total)
        if total > limit:
            result.problems.append(
                f"needs {format_bytes(total)}, over max_total {format_bytes(limit)}"
            )
    if run.min_headroom is not None:
        if est.gpu is None or est.headroom_bytes is None:
            raise InvalidInputError("min_headroom needs a gpu or gpu_memory.")
        need = _headroom_needed(run.min_headroom, est.gpu["memory_bytes"])
        if 0 <= est.headroom_bytes < need:
            result.problems.append(
                f"headroom {format_bytes(est.headroom_bytes)} is under min_headroom "
                f"{run.min_headroom} ({format_bytes(need)})"
            )
    return result


def check_budgets(path: str) -> list[RunResult]:
    """Every run of the file, checked; an error in a run names its line."""
    budgets, root = load_budgets(path)
    results = []
    names: set[str] = set()
    for i, run in enumerate(budgets.runs):
        line = _node_line(root, ("runs", i))
        if run.name in names:
            raise InvalidInputError(f"{path}, line {line}: run name '{run.name}' is used twice.")
        names.add(run.name)
        try:
            results.append(check_run(run, budgets.defaults, line))
        except FtmemError as exc:
            key = _offending_key(str(exc), run)
            if key is not None:
                line = _node_line(root, ("runs", i, key))
            raise InvalidInputError(f"{path}, line {line}: run '{run.name}': {exc}") from None
    return results


def _offending_key(message: str, run: BudgetRun) -> str | None:
    """The run's key an estimate error is about, to point at its line."""
    for key in [*run.settings, "model", "gpu", "gpu_memory", "max_total", "min_headroom"]:
        flag = "--" + key.replace("_", "-")
        starts = (flag, f"{key}:", f"{key} ")
        if f"'{key}'" in message or message.startswith(starts) or f" {flag}" in message:
            return key
    if "model" in message.lower():
        return "model"
    if "gpu" in message.lower():
        return "gpu"
    return None


# -- reports -------------------------------------------------------------------------------


def results_json(results: list[RunResult]) -> str:
    rows = []
    for r in results:
        est = r.estimate
        rows.append(
            {
                "name": r.run.name,
                "model": r.run.model,
                "line": r.line,
                "passed": r.passed,
                "problems": r.problems,
                "total_bytes": est.memory.total_bytes if est else None,
                "headroom_bytes": est.headroom_bytes if est else None,
                "gpu": est.gpu if est else None,
                "max_total": r.run.max_total,
                "min_headroom": r.run.min_headroom,
            }
        )
    return json.dumps({"passed": all(r.passed for r in results), "runs": rows}, indent=2)


def results_junit(results: list[RunResult], path: str) -> str:
    """A JUnit XML report; user text (run names, the path) shown inert, which also keeps
    the document legal XML (a control character in a name is not)."""
    suite = ET.Element(
        "testsuite",
        name="ftmem budgets",
        tests=str(len(results)),
        failures=str(sum(not r.passed for r in results)),
        errors="0",
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=printable(f"ftmem.{Path(path).stem}", one_line=True),
            name=printable(r.run.name, one_line=True),
        )
        case.set("file", printable(path, one_line=True))
        case.set("line", str(r.line))
        if not r.passed:
            problems = printable("; ".join(r.problems), one_line=True)
            failure = ET.SubElement(case, "failure", message=problems)
            failure.text = printable(f"{r.run.name} ({r.run.model}): ", one_line=True) + problems
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def _escape_data(text: str) -> str:
    """A workflow command's message, escaped as GitHub's toolkit does (escapeData in
    actions/toolkit packages/core/src/command.ts): %, CR and LF."""
    return printable(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    """A workflow command's property value (file=, title=), escaped as the toolkit's
    escapeProperty: the data escapes, and ':' and ',' that would end the value."""
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(results: list[RunResult], path: str) -> list[str]:
    """Workflow commands GitHub Actions turns into annotations on the file's lines."""
    lines = []
    where = f"file={_escape_property(path)}"
    for r in results:
        total = format_bytes(r.estimate.memory.total_bytes) if r.estimate else "?"
        name = _escape_data(r.run.name)
        if r.passed:
            lines.append(
                f"::notice {where},line={r.line},title=ftmem budget::{name}: {total}, within budget"
            )
        else:
            lines.append(
                f"::error {where},line={r.line},title=ftmem budget::"
                f"{name}: {_escape_data('; '.join(r.problems))}"
            )
    return lines
