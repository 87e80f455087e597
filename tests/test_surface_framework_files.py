"""Property tests over the training files ``--from`` and ``--launcher`` read, beyond the
docs' samples that tests/test_option_space.py mutates: each framework's real configs
(tests/fixtures/frameworks: axolotl, torchtune, litgpt, LLaMA-Factory, TRL, Accelerate and
DeepSpeed launcher configs, ColossalChat's command lines), with any of their own keys
(at any depth) set to any value. Each run keeps the CLI's contract
(tests/surface_contract.py)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.surface_contract import FEW, broken

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "frameworks"
TRAINING = sorted(
    p
    for folder in ("axolotl", "torchtune", "litgpt", "llama-factory", "trl")
    for p in (FIXTURES / folder).glob("*.y*ml")
)
LAUNCHERS = sorted((FIXTURES / "accelerate").glob("*.y*ml")) + sorted(
    (FIXTURES / "axolotl" / "deepspeed_configs").glob("*.json")
) + [FIXTURES / "accelerate" / "llama_factory_ds_z3_offload_config.json"]  # fmt: skip
COMMANDS = sorted((FIXTURES / "colossalai").glob("*.sh"))

values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 70_000),
        st.sampled_from([2**63, 10**30, 10**400, 0.5, 1e300, float("nan"), float("inf")]),
        st.sampled_from(["", "auto", "true", "no", "cpu", "nvme", "3", "all", "bf16", "fp8",
                         "FULL_SHARD", "DEEPSPEED", "q_proj", "x" * 300, "\x1b[31m", "é"]),
        st.text(max_size=5),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(
        st.sampled_from(["stage", "device", "_component_", "x"]), inner, max_size=2)),
    max_leaves=4,
)  # fmt: skip


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a parsed file, at any depth (list items by index)."""
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    out = []
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key))
    return out


def _set(data: dict, path: tuple, value: object) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _mutated(data, draw) -> object:
    paths = _paths(data)
    for _ in range(draw(st.integers(1, 3))):
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        try:
            _set(data, path, draw(values))
        except (KeyError, IndexError, TypeError):  # a parent replaced by an earlier draw
            continue
        paths = _paths(data)
    return data


def _load(path: Path):
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def _write(folder: str, like: Path, data) -> str:
    out = Path(folder) / like.name
    out.write_text(json.dumps(data) if like.suffix == ".json" else yaml.safe_dump(data))
    return str(out)


@FEW
@given(data=st.data(), config=st.sampled_from(TRAINING))
def test_any_training_config_of_each_framework_keeps_the_contract(data, config):
    changed = _mutated(_load(config), data.draw)
    extra = data.draw(st.sampled_from([[], ["--gpu", "rtx4090", "--check"], ["llama2-7b"]]))
    with tempfile.TemporaryDirectory() as folder:
        argv = ["estimate", *extra[2:], "--from", _write(folder, config, changed)]
        problem = broken([*argv, *extra[:2], "--format", "json"])
    assert not problem, f"{problem}\n    {config.name}: {changed!r:.600}"


@FEW
@given(data=st.data(), launcher=st.sampled_from(LAUNCHERS))
def test_any_launcher_config_keeps_the_contract(data, launcher):
    changed = _mutated(_load(launcher), data.draw)
    train = FIXTURES / "trl" / "sft_qlora_handwritten.yaml"
    with tempfile.TemporaryDirectory() as folder:
        argv = ["estimate", "--from", str(train), "--launcher", _write(folder, launcher, changed)]
        problem = broken([*argv, "--format", "json"])
    assert not problem, f"{problem}\n    {launcher.name}: {changed!r:.600}"


words = st.one_of(
    st.sampled_from(["0", "1", "2", "-1", "8", "99999999999999999999", "1e400", "nan", "inf",
                     "zero2", "gemini", "3d", "ddp", "bf16", "fp16", "ring", "auto", "", "'",
                     "\\", "--", "$X", "${dataset[@]}", "--plugin", "--tp", "#"]),
    st.text(alphabet="ab-_=$'\"\\ 0123456789", max_size=6),
)  # fmt: skip


FLAG_VALUE = re.compile(r"(--[a-z_]+)([ \t]+)([^ \t\n\\]*)")


@FEW
@given(data=st.data(), script=st.sampled_from(COMMANDS))
def test_any_colossalchat_command_line_keeps_the_contract(data, script):
    """A shipped command line with one to three of its options' values replaced by any
    word (or a flag given a value)."""
    text = script.read_text()
    spots = list(FLAG_VALUE.finditer(text))
    for spot in sorted(
        data.draw(st.lists(st.sampled_from(spots), min_size=1, max_size=3, unique_by=id)),
        key=lambda m: -m.start(),
    ):
        word = data.draw(words)
        text = text[: spot.start(3)] + word + text[spot.end(3) :]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / script.name
        path.write_text(text)
        problem = broken(["estimate", "llama2-7b", "--from", str(path), "--format", "json"])
    assert not problem, f"{problem}\n    script: {text[-1500:]!r}"
