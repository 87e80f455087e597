"""Saved tensors carry their identity (kind, side, linears); rules select by it, never
by parsing the display labels (issue 15)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ftmem.activations import block_saved
from ftmem.arch import layout
from ftmem.methods import plan_method
from ftmem.ops.context import BlockState
from ftmem.ops.mlp import MLP
from ftmem.ops.saved import Kind, Side
from ftmem.run import RunConfig
from ftmem.transients import freed_before_attention

from .conftest import TINY, tiny

SRC = Path(__file__).resolve().parents[1] / "src" / "ftmem"
# where Saved.what is shown (the estimate's item list, explain) or composed (relabelled)
# where labels are shown or carried to the result (and present/, which shows them)
DISPLAY = {"ops/saved.py", "estimate.py"}
PER_LINEAR = {Kind.LORA, Kind.DORA, Kind.IA3, Kind.BOTTLENECK, Kind.WEIGHT_COPY}


def cuda_autocast_refused(arch) -> bool:
    """Families whose ops CUDA's autocast casts where the CPU's does not (ReLU², xIELU,
    Nemotron's LayerNorm1P: methods._check_cuda_autocast)."""
    return arch.activation in ("relu2", "xielu") or arch.traits.layer_norm_plus_one


def _block(family: str, **run: object):
    arch = tiny(family)
    refused = arch.shared_experts_size or arch.dense_layers or arch.traits.peft_all_linear_fails
    if run.get("lora_targets") == "all-linear" and refused:
        # (LoRA on a dense-and-MoE stack's MLP is refused: peft moves it onto the experts;
        # PhiMoE's all-linear: peft's LoRA fails on its tuple-returning router)
        run = {**run, "lora_targets": "attention"}
    elif run.get("lora_targets") == "all-linear" and arch.traits.peft_converts_expert_targets:
        # all-linear reaches the experts there, where peft refuses LoRA dropout
        run = {**run, "lora_dropout": 0.0}
    if cuda_autocast_refused(arch):
        # (their autocast on CUDA is refused: the CPU's, which was measured)
        run = {**run, "device": "cpu"}
    cfg = RunConfig(batch_size=3, seq_len=50, **run)  # type: ignore[arg-type]
    plan = plan_method(arch, cfg)
    adapted = frozenset(lin.module for lin in plan.adapted)
    full = cfg.method == "full"
    state = BlockState(True, full, adapted)
    return arch, cfg, block_saved(arch, cfg, plan, state, cfg.batch_size * cfg.positions)


def test_no_module_reads_saved_labels_outside_display():
    """``.what`` is read only where items are shown: a rule that parsed it would miss
    any family whose names differ (GPT-2's mlp.c_proj, Falcon's dense_4h_to_h did)."""
    readers = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).as_posix() in DISPLAY or {"measure", "present"} & set(path.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "what":
                readers.append(f"{path.name}:{node.lineno}")
    assert readers == []


@pytest.mark.parametrize("family", sorted(TINY))
@pytest.mark.parametrize(
    "run",
    [
        {"method": "full", "precision": "bf16-mixed"},
        {
            "method": "lora",
            "lora_targets": "all-linear",
            "precision": "bf16-mixed",
            "lora_dropout": 0.1,
        },
        {"method": "dora", "lora_targets": "all-linear", "precision": "bf16"},
    ],
    ids=["full", "lora", "dora"],
)
def test_block_items_say_what_they_are(family: str, run: dict):
    """Every item a block saves names its op and its side; an adapter's or weight
    copy's item names the one linear of the block it belongs to."""
    arch, _, items = _block(family, **run)
    linears = set(layout(arch).linears)
    assert items
    for item in items:
        assert item.kind is not Kind.OTHER, item.what
        assert item.side is not Side.OUTER, item.what
        if item.kind in PER_LINEAR:
            assert len(item.linears) == 1 and item.linears[0] in linears, item.what


@pytest.mark.parametrize("family", sorted(TINY))
def test_down_projection_input_found_in_every_family(family: str):
    """Full bf16: the down projection keeps its input, T·f bf16 elements (the activation's
    output). It is freed before the MLP's largest backward moment where that moment is
    the activation's (gated product, GPT-2's written-out tanh-GELU); a single fused
    activation (Falcon's GELU) has its largest moment at the down projection's own
    backward, input still saved (GPT-NeoX, StarCoder, StarCoder2 too). MoE experts keep
    theirs as routed inputs instead; a shared expert beside them (DeepSeek) is a gated MLP
    of its own width, its down input freed like a dense one's."""
    arch, cfg, items = _block(family, method="full", precision="bf16")
    T = cfg.batch_size * cfg.seq_len
    f = arch.shared_experts_size if arch.is_moe else arch.intermediate_size
    # (ReLU²'s pow_backward and xIELU's written-out backward hold several T·f too)
    several = arch.mlp == "gated" or arch.traits.gelu_written_out
    several_grads = several or arch.activation in ("relu2", "xielu")
    assert MLP.down_input_freed(arch, cfg, items) == (T * f * 2 if several_grads else 0)


def test_gpt2_mlp_side_includes_its_output_projection():
    """GPT-2 LoRA on all linears: what is freed before attention's backward is every
    MLP-side item, mlp.c_proj's adapter items included (its label once hid them)."""
    arch, _, items = _block("gpt2", method="lora", lora_targets="all-linear", precision="bf16")
    # the attention side by display name, as the block lists it: the first norm, the
    # q/k/v input, c_attn's and attn.c_proj's items, the kernel's output and lse
    attention = ("input norm", "q/k/v", "c_attn", "attn.c_proj", "attention output", "o_proj")
    mlp_side = [x for x in items if not x.what.startswith(attention)]
    assert any(x.what.startswith("mlp.c_proj lora") for x in mlp_side)
    assert freed_before_attention(arch, items) == sum(x.nbytes for x in mlp_side)
