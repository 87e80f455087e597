"""The MLP's backward moment and what exists by then, derived from the tiny models' shapes
(b 3 × s 50; GPT-2 and Falcon h 96, f 384; Llama h 96, f 160); the steps' peaks are
measured in tests/accuracy (full finetuning with checkpointing: GPT-2, Falcon, Llama).

- The down projection's gradients are made before the activation's backward
  (transients.down_gradients_made): the independent truth is torch's own order, checked
  here on a two-linear MLP.
- Rotary Falcon's materialised causal mask, held by the checkpoints (Attention.
  held_layer_masks), and Granite's embedding multiplier, a tensor apart from the
  embeddings' leaf (step.embedding_leaf_apart).
"""

from __future__ import annotations

import pytest

from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import plan_method
from ftmem.ops.attention import Attention
from ftmem.run import RunConfig
from ftmem.step import embedding_leaf_apart
from ftmem.transients import down_gradients_made
from tests.conftest import tiny

B, S = 3, 50
FP32, BF16 = 4, 2


def made(family: str, **settings: object) -> int:
    arch = tiny(family)
    run = RunConfig(**{"batch_size": B, "seq_len": S, "grad_ckpt": True, **settings})
    plan = plan_method(arch, run)
    return down_gradients_made(arch, run, plan, BYTES_PER_ELEMENT[plan.dtypes.compute])


@pytest.mark.parametrize("gated", [False, True])
def test_torch_makes_down_gradients_before_the_activation_backward(gated: bool):
    torch = pytest.importorskip("torch")
    up, gate, down = (torch.nn.Linear(8, 16), torch.nn.Linear(8, 16), torch.nn.Linear(16, 8))
    x = torch.randn(4, 8)
    act = torch.nn.functional.silu(gate(x)) if gated else torch.nn.functional.gelu(up(x))
    hidden = act * up(x) if gated else act
    seen: list[bool] = []
    # the activation's (or the product's) node, the first after down's in the backward
    hidden.grad_fn.register_prehook(
        lambda grads: seen.append(down.weight.grad is not None and down.bias.grad is not None)
    )
    down(hidden).sum().backward()
    assert seen == [True]


def test_plain_mlp_after_down_in_the_parameters_dtype():
    # GPT-2's written-out tanh-GELU peaks after c_proj's backward: its weight and bias
    # gradients in the parameters' dtype
    assert made("gpt2", method="full", precision="bf16") == (384 * 96 + 96) * BF16
    assert made("gpt2", method="full", precision="fp32") == (384 * 96 + 96) * FP32


def test_single_activation_inside_down_as_the_matmul_makes_it():
    # Falcon's fused GELU: the moment is dense_4h_to_h's own backward, its weight gradient
    # as the bf16 matmul makes it (autocast's ToCopyBackward to fp32 comes after)
    assert made("falcon", method="full", precision="bf16-mixed") == 384 * 96 * BF16


def test_gated_mlp_after_the_weight_cast_backward():
    # Llama's product backward: down_proj's fp32 gradient (the weight cast's node ran)
    assert made("llama", method="full", precision="bf16-mixed") == 160 * 96 * FP32


def test_adapters_on_down():
    # LoRA r 8 on c_proj: lora_A (8, 384) and lora_B (96, 8), fp32 adapters
    assert made("gpt2", method="lora", lora_targets="all-linear") == (8 * 384 + 96 * 8) * FP32
    assert made("gpt2", method="lora") == 0  # c_attn only


def test_none_where_not_laid_out_per_block():
    assert made("gpt2", method="full", grad_accum=2) == 0  # they exist already
    assert made("gpt2", method="full", optimizer_in_backward=True) == 0  # stepped, freed
    assert made("gpt2", method="freeze", trainable_layers=1) == 0


def test_rotary_falcon_mask_held_by_the_checkpoints():
    # transformers 5.25 FalconModel.forward: create_causal_mask(allow_is_causal_skip=False);
    # without pad tokens one (1, 1, s, s) bool tensor expanded to the batch
    arch = tiny("falcon")
    run = RunConfig(batch_size=4, seq_len=256, method="full", grad_ckpt=True)
    assert Attention.held_layer_masks(arch, run) == 256 * 256
    off = RunConfig(batch_size=4, seq_len=256, method="full")
    assert Attention.held_layer_masks(arch, off) == 0


@pytest.mark.parametrize(("precision", "residual"), [("bf16", BF16), ("bf16-mixed", FP32)])
def test_granite_embedding_multiplier_apart(precision: str, residual: int):
    # GraniteModel.forward multiplies the embeddings' output (the leaf) into a new tensor
    run = RunConfig(batch_size=B, seq_len=S, method="lora", grad_ckpt=True, precision=precision)
    arch = tiny("granite")
    assert embedding_leaf_apart(arch, run, plan_method(arch, run)) == B * S * 96 * residual
    llama = tiny("llama")
    assert embedding_leaf_apart(llama, run, plan_method(llama, run)) == 0
