"""bitsandbytes' unpaged 32-bit AdamW (--optimizer adamw-32bit: ``bitsandbytes.optim.AdamW``
/ ``AdamW32bit`` / ``Adam`` / ``Adam32bit``) and the ``optim_bits`` / ``is_paged`` arguments
of bitsandbytes' classes in torchtune and LitGPT configs.

bitsandbytes@95f9af30 optim/optimizer.py Optimizer2State.init_state (l.492-532): with
optim_bits 32 ``state1`` and ``state2`` are fp32 whatever the parameter's dtype (l.508-510)
and ``step`` a Python int (l.506); update_step runs one ``optimizer_update_32bit`` kernel per
tensor (l.549). So not ``adamw-fp32`` (torch's AdamW: step tensors, foreach temporaries).
The states are checked here against bitsandbytes' own optimizer stepped on CPU tensors; the
accuracy suite's ``optimizer=adamw-32bit`` cases measure the whole step."""

from __future__ import annotations

import pytest
import yaml

from ftmem import estimate
from ftmem.errors import ConfigError
from ftmem.frameworks import read_framework_config
from ftmem.integrations.live import LiveRun, read_optimizer
from ftmem.measure.build import build_model
from ftmem.methods import plan_method
from ftmem.optim import optimizer_step_temporary_bytes, step_tensor_bytes
from ftmem.run import RunConfig
from tests.conftest import tiny

# the norms (96 values) are under min_8bit_size, the MLP (96×1100) over 1e5: a paged
# class would page it
ARCH = tiny("llama", vocab_size=1200, intermediate_size=1100)
SETTINGS = dict(method="full", precision="bf16", batch_size=1, seq_len=32, attn="sdpa")
BNB_32BIT = ["AdamW", "AdamW32bit", "Adam", "Adam32bit"]


def _figures(optimizer: str, **extra: object):
    return estimate(ARCH, optimizer=optimizer, device="cuda", **SETTINGS, **extra)


@pytest.mark.parametrize("cls", BNB_32BIT)
def test_states_are_bitsandbytes_own(cls):
    """The state bytes bitsandbytes' class keeps after one step on the CPU (bf16 model)."""
    import torch

    bnb = pytest.importorskip("bitsandbytes")
    model = build_model(ARCH, RunConfig(**SETTINGS, optimizer="adamw-32bit")).model
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = getattr(bnb.optim, cls)(params, lr=1e-4)
    opt.step()
    held = 0
    for state in opt.state.values():
        assert isinstance(state["step"], int)  # no step tensor
        held += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    assert held == 8 * sum(p.numel() for p in params)  # two fp32 per bf16 value
    assert _figures("adamw-32bit").memory.optimizer_states_bytes == held


def test_no_step_tensors_or_temporaries():
    """torch's AdamW (adamw-fp32 with the same fp32 states) keeps step tensors and makes
    foreach square roots; bitsandbytes keeps an int and updates in its kernel."""

    def parts(opt: str, impl: str = "foreach") -> tuple[int, int]:
        run = RunConfig(**SETTINGS, optimizer=opt, device="cuda", optimizer_impl=impl)
        groups = plan_method(ARCH, run).groups
        return step_tensor_bytes(groups, run), optimizer_step_temporary_bytes(groups, run)

    assert parts("adamw-32bit") == (0, 0)
    assert parts("adamw-fp32", "fused")[0] > 0  # fused: step tensors on the GPU
    assert parts("adamw-fp32", "foreach")[1] > 0  # foreach: the square roots


def _torchtune(tmp_path, optimizer: str) -> str | None:
    file = tmp_path / "tt.yaml"
    file.write_text(
        "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n"
        f"optimizer:\n  {optimizer}\n"
    )
    return read_framework_config(str(file)).settings.get("optimizer")


def _litgpt(tmp_path, optimizer: str) -> str | None:
    file = tmp_path / "lit.yaml"
    file.write_text(
        f"checkpoint_dir: checkpoints/meta-llama/Llama-2-7b-hf\noptimizer: {optimizer}\n"
    )
    return read_framework_config(str(file)).settings.get("optimizer")


# (class, its keyword arguments as YAML flow mapping entries, ftmem's --optimizer); what
# bitsandbytes@95f9af30 builds: AdamW / Adam / Lion pass both arguments on, the 8bit and
# 32bit classes fix the bits, the Paged ones is_paged
CLASSES = [
    ("AdamW", "", "adamw-32bit"),
    ("AdamW32bit", "", "adamw-32bit"),
    ("Adam", "", "adamw-32bit"),
    ("Adam32bit", "", "adamw-32bit"),
    ("AdamW", "optim_bits: 8", "adamw-8bit"),
    ("AdamW", "optim_bits: 8, is_paged: true", "paged-adamw-8bit"),
    ("AdamW", "is_paged: true", "paged-adamw"),
    ("Adam", "optim_bits: 32, is_paged: false", "adamw-32bit"),
    ("AdamW32bit", "is_paged: true", "paged-adamw"),
    ("AdamW8bit", "is_paged: true", "paged-adamw-8bit"),
    ("PagedAdamW", "optim_bits: 8", "paged-adamw-8bit"),
    ("Lion", "optim_bits: 8", "lion-8bit"),
    ("Lion", "is_paged: true", "paged-lion"),
    ("Lion8bit", "is_paged: true", "paged-lion-8bit"),
    ("PagedLion", "optim_bits: 8", "paged-lion-8bit"),
]


@pytest.mark.parametrize(("cls", "args", "expected"), CLASSES)
def test_torchtune_reads_the_arguments(tmp_path, cls, args, expected):
    entries = f"_component_: bitsandbytes.optim.{cls}" + (f", {args}" if args else "")
    assert _torchtune(tmp_path, "{" + entries + "}") == expected


@pytest.mark.parametrize(("cls", "args", "expected"), CLASSES)
def test_litgpt_reads_the_init_args(tmp_path, cls, args, expected):
    init = f", init_args: {{{args}}}" if args else ""
    assert _litgpt(tmp_path, f"{{class_path: bitsandbytes.optim.{cls}{init}}}") == expected


@pytest.mark.parametrize(("cls", "args", "expected"), CLASSES)
def test_live_objects_agree_with_the_readers(cls, args, expected):
    """The same classes and arguments built for real: the live reader says the same."""
    import torch

    bnb = pytest.importorskip("bitsandbytes")
    kwargs = yaml.safe_load("{" + args + "}")
    opt = getattr(bnb.optim, cls)([torch.nn.Parameter(torch.zeros(4, 4))], **kwargs)
    live = LiveRun(tiny("llama"))
    read_optimizer(opt, live)
    assert live.settings["optimizer"] == expected


def test_torch_classes_stay_torch(tmp_path):
    assert _torchtune(tmp_path, "{_component_: torch.optim.AdamW}") == "adamw"
    assert _litgpt(tmp_path, "{class_path: torch.optim.AdamW}") in (None, "adamw")
    assert _litgpt(tmp_path, "AdamW") in (None, "adamw")  # LitGPT's torch.optim name


@pytest.mark.parametrize(
    "entries",
    [
        "_component_: bitsandbytes.optim.AdamW8bit, optim_bits: 8",  # adamw.py l.110
        "_component_: bitsandbytes.optim.PagedAdam8bit, optim_bits: 8",
        "_component_: bitsandbytes.optim.AdamW, optim_bits: 4",  # init_state's error
    ],
)
def test_arguments_bitsandbytes_refuses(tmp_path, entries):
    with pytest.raises(ConfigError, match="optim_bits must be"):
        _torchtune(tmp_path, "{" + entries + "}")
