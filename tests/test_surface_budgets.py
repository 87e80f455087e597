"""Property test over budgets files for `ftmem check`: any run keys (names, models, GPUs,
budgets, estimate settings) with any YAML value, in any shape of file. Each run keeps the
CLI's contract (tests/surface_contract.py), exit 1 meaning a run over its budget, and
the --json/--junit reports on stdout parse."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from xml.etree import ElementTree as ET

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.surface_contract import FEW, judged

RUN_KEYS = [
    "name", "model", "gpu", "gpu_memory", "max_total", "min_headroom", "method", "precision",
    "seq_len", "batch_size", "gpus", "nodes", "strategy", "lora_r", "lora_alpha",
    "lora_targets", "grad_ckpt", "quant", "optimizer", "attn", "loss", "grad_accum",
    "offload_optimizer", "tp", "pp", "teacher", "objective", "units", "format", "unknown",
]  # fmt: skip
values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 100_000),
    st.sampled_from([2**63, 10**30, 10**400, 0.5, float("nan"), float("inf"), -1.5]),
    st.sampled_from(["gpt2", "llama2-7b", "rtx4090", "a100-80gb", "lora", "qlora", "bf16",
                     "zero3", "10%", "150%", "-5%", "nan%", "22GiB", "0B", "1e400GiB",
                     "9" * 400 + "GiB", "", "x", "\x1b[31mred", "a\x00b", "<&>\"]]>"]),
    st.text(max_size=8),
)  # fmt: skip
nested = st.recursive(values, lambda inner: st.lists(inner, max_size=2), max_leaves=3)
GOOD = {"name": "r", "model": "gpt2", "gpu": "rtx4090", "seq_len": 128}
runs = st.builds(
    lambda base, changes: {**(GOOD if base else {}), **changes},
    st.booleans(),
    st.dictionaries(st.sampled_from(RUN_KEYS), nested, max_size=4),
)
files = st.one_of(
    st.fixed_dictionaries(
        {"runs": st.lists(runs, min_size=1, max_size=3)},
        optional={"defaults": st.one_of(st.dictionaries(st.sampled_from(RUN_KEYS), nested,
                                                        max_size=3), nested)},
    ),
    st.dictionaries(st.sampled_from(["runs", "defaults", "x"]), nested, max_size=2),
    nested,
)  # fmt: skip
REPORTS = [[], ["--json", "-"], ["--junit", "-"], ["--units", "GB"], ["--quiet"]]


@FEW
@given(data=files, report=st.sampled_from(REPORTS))
@example(data={"runs": [GOOD]}, report=["--json", "-"])  # a good file: checked
def test_any_budgets_file_keeps_the_contract(data, report):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "budgets.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        argv = ["check", str(path), *report]
        problem, code, out = judged(argv)
    assert not problem, f"{problem}\n    file: {data!r:.600}"
    if code != 2 and "--json" in report:
        assert isinstance(json.loads(out), list | dict)
    if code != 2 and "--junit" in report:
        ET.fromstring(out)
    if data == {"runs": [GOOD]}:
        assert code == 0
