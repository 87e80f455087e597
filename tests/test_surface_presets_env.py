"""Property tests over user presets (FTMEM_PRESETS) and the environment variables ftmem
reads: a shipped preset with any of its fields set to any YAML value, preset files that
are not mappings, and any value of each variable. Each run keeps the CLI's contract
(tests/surface_contract.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.surface_contract import FEW, broken, judged

PRESETS = Path(__file__).resolve().parents[1] / "presets"
GPT2 = yaml.safe_load((PRESETS / "models" / "gpt2.yaml").read_text())
RTX4090 = yaml.safe_load((PRESETS / "gpus" / "rtx4090.yaml").read_text())
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 100_000),
        st.sampled_from([2**31, 2**63, 10**30, 10**400, 0.5, float("nan"), float("inf")]),
        st.sampled_from(["", "acme", "gpt2", "llama", "gelu", "learned", "rmsnorm", "8.9",
                         "x" * 200, "\x1b[2J", "a b", "../x", "24GiB"]),
        st.text(max_size=6),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=3),
                                                                          inner, max_size=2)),
    max_leaves=4,
)  # fmt: skip
MODEL_FIELDS = [*sorted(GPT2), "num_experts", "experts_per_token", "head_dim", "sliding_window"]
GPU_FIELDS = [*sorted(RTX4090), "unknown"]
AS_WRITTEN = ({**GPT2, "id": "acme", "aliases": []}, {**RTX4090, "id": "acme-gpu", "aliases": []})


def _with(base: dict, changes: dict) -> dict:
    data = {**base, "aliases": [], **changes}
    return {k: v for k, v in data.items() if v != "<drop>"}


preset_changes = st.dictionaries(
    st.sampled_from(MODEL_FIELDS), st.one_of(values, st.just("<drop>")), max_size=3
)
gpu_changes = st.dictionaries(
    st.sampled_from(GPU_FIELDS), st.one_of(values, st.just("<drop>")), max_size=3
)
COMMANDS = [
    ["models"],
    ["gpus"],
    ["estimate", "acme", "--gpu", "acme-gpu", "--format", "json"],
    ["serve", "acme", "--gpu", "acme-gpu", "--context", "64"],
    ["estimate", "gpt2", "--format", "json"],  # a broken user preset must not hide a shipped one
]


@FEW
@given(
    model=st.one_of(preset_changes.map(lambda c: _with({**GPT2, "id": "acme"}, c)), values),
    gpu=st.one_of(gpu_changes.map(lambda c: _with({**RTX4090, "id": "acme-gpu"}, c)), values),
    command=st.sampled_from(COMMANDS),
)
@example(  # the presets as written: read
    model=_with({**GPT2, "id": "acme"}, {}),
    gpu=_with({**RTX4090, "id": "acme-gpu"}, {}),
    command=COMMANDS[2],
)
def test_any_user_preset_keeps_the_contract(model, gpu, command):
    with tempfile.TemporaryDirectory() as folder:
        for kind, data in (("models", model), ("gpus", gpu)):
            (Path(folder) / kind).mkdir()
            (Path(folder) / kind / "acme.yaml").write_text(yaml.safe_dump(data))
        problem, code, _ = judged(command, {"FTMEM_PRESETS": folder})
    assert not problem, f"{problem}\n    model: {model!r:.400}\n    gpu: {gpu!r:.400}"
    if (model, gpu) == AS_WRITTEN:
        assert code == 0


# -- the environment -----------------------------------------------------------------------

env_text = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "true", "false", "99999999999999999999", "nan",
                     " ", "~", "~nobody-ftmem", "/nonexistent", ":", "::", "a" * 5000]),
    st.text(max_size=10).filter(lambda t: "\0" not in t),
)  # fmt: skip
# each variable ftmem reads (grep os.environ in src/ftmem), and what it runs under
ENVIRONMENT = {
    "FTMEM_PRESETS": ["models"],
    "COLUMNS": ["estimate", "gpt2"],
    "LINES": ["models"],
    "HF_HUB_CACHE": ["estimate", "acme/tiny", "--format", "json"],
    "HF_HUB_OFFLINE": ["estimate", "gpt2", "--format", "json"],
    "GITHUB_ACTIONS": ["check", str(Path(__file__).parents[1] / "docs/examples/budgets.yaml")],
    "TRANSFORMERS_VERBOSITY": ["estimate", "gpt2", "--format", "yaml"],
    "PYTORCH_CUDA_ALLOC_CONF": ["estimate", "gpt2", "--gpu", "rtx4090", "--check"],
    "NO_COLOR": ["gpus"],
    "FORCE_COLOR": ["gpus"],
    "TERM": ["estimate", "gpt2"],
}


@FEW
@given(name=st.sampled_from(sorted(ENVIRONMENT)), value=env_text)
@example(name="COLUMNS", value="0")  # once: empty output, exit 0
def test_any_environment_value_keeps_the_contract(name, value):
    argv = ENVIRONMENT[name]
    env = {"HF_HUB_OFFLINE": "1", name: value}  # tests never reach the network
    problem = broken(argv, env)
    assert not problem, f"{problem}\n    {name}={value!r:.100}"
