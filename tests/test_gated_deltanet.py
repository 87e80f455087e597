"""Gated DeltaNet (ops.gated_deltanet), the real transformers 5.25 module
(models/qwen3_5/modeling_qwen3_5.py Qwen3_5GatedDeltaNet, its torch fallbacks
causal_conv1d_fn and torch_chunk_gated_delta_rule; Qwen3-Next's Qwen3NextGatedDeltaNet with
its fused input projections) measured with saved_tensors_hooks on
the CPU against GatedDeltaNet.saved, and its parameters against the module's on the meta
device.

The truth here is autograd's: the distinct storages its saved-tensor hooks see while the
module runs forward (tests/saved_storages.py), parameters left out. The linears' own
inputs (in_proj_*'s, out_proj's: ops.linear's items) appear only where their weights
train, and are added to the expectation here as the plain b·s·width·e tensors they are.
"""

from __future__ import annotations

import gc
import math
import os
import weakref

import pytest

from ftmem.dtypes import FP32
from ftmem.ops.gated_deltanet import CHUNK, DeltaNetShape, GatedDeltaNet

torch = pytest.importorskip("torch")
pytest.importorskip("transformers.models.qwen3_5")

# (hidden, key heads, value heads, key head width, value head width, conv kernel)
SHAPES = {
    "grouped": DeltaNetShape(64, 2, 4, 16, 8, 4),  # q and k repeated to the value heads
    "equal": DeltaNetShape(48, 3, 3, 8, 16, 3),
    # Qwen3-Next's fused in_proj_qkvz / in_proj_ba
    "next-grouped": DeltaNetShape(64, 2, 4, 16, 8, 4, fused=True),
    "next-equal": DeltaNetShape(48, 3, 3, 8, 16, 3, fused=True),
}


class _Held:
    """What a saved-tensor hook hands autograd: alive while some graph node keeps it."""

    def __init__(self, tensor):
        # detached: a saved output held with its grad_fn would keep its own node alive
        # (autograd's SavedVariable does not hold an output's grad_fn)
        self.tensor = tensor.detach()


class Kept:
    """Saved-tensor hooks that remember what autograd keeps: :meth:`alive` gives the bytes
    of each distinct storage some graph node still holds, parameters left out. Tensors
    saved by nodes the forward dropped on the way (the last chunk's state update, whose
    new state nothing reads) are gone from it, as they are from memory."""

    def __init__(self, params):
        self.skip = {p.untyped_storage().data_ptr() for p in params}
        self.held: list[weakref.ref] = []
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda h: h.tensor)

    def _pack(self, tensor):
        holder = _Held(tensor)
        self.held.append(weakref.ref(holder))
        return holder

    def __enter__(self):
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    def alive(self) -> list[int]:
        gc.collect()
        seen: dict[int, int] = {}
        for ref in self.held:
            holder = ref()
            if holder is not None:
                storage = holder.tensor.untyped_storage()
                if storage.data_ptr() not in self.skip:
                    seen[storage.data_ptr()] = storage.nbytes()
        return sorted(seen.values())


def _module(shape: DeltaNetShape, dtype, weights_train: bool):
    """transformers' layer for the shape: Qwen3.5's, or Qwen3-Next's (fused projections)."""
    common = {
        "hidden_size": shape.hidden,
        "linear_num_key_heads": shape.k_heads,
        "linear_num_value_heads": shape.v_heads,
        "linear_key_head_dim": shape.k_dim,
        "linear_value_head_dim": shape.v_dim,
        "linear_conv_kernel_dim": shape.conv_kernel,
        "num_hidden_layers": 2,
        "layer_types": ["linear_attention", "full_attention"],
        "vocab_size": 128,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 16,
    }
    torch.manual_seed(0)
    if shape.fused:
        from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig
        from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet

        moe = {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 16}
        cfg = Qwen3NextConfig(**common, **moe, shared_expert_intermediate_size=16)
        layer = Qwen3NextGatedDeltaNet(cfg, 0)
    else:
        from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5TextConfig
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

        layer = Qwen3_5GatedDeltaNet(Qwen3_5TextConfig(**common), 0)
    return layer.to(dtype).requires_grad_(weights_train)


def _expected(shape: DeltaNetShape, b: int, s: int, e: int, weights_train: bool) -> list[int]:
    items = GatedDeltaNet.saved(shape, b, s, e, weights_train)
    out = [item.nbytes for item in items]
    if weights_train:  # in_proj_*'s shared input and out_proj's (ops.linear)
        out += [b * s * shape.hidden * e, b * s * shape.value_dim * e]
    # equal-sized tensors the hooks see as one storage do not occur: each item is its own
    return sorted(out)


# one chunk and a crossing of two chunk boundaries by default; FTMEM_SLOW=1 adds a whole
# chunk and three (the grid the op was measured over, twice as long)
SEQS = [50, 2 * CHUNK + 1] + ([CHUNK, 3 * CHUNK] if os.environ.get("FTMEM_SLOW") else [])


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("x_grad", "weights_train"), [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("seq", SEQS)
def test_the_module_keeps_what_the_op_counts(shape_name, precision, x_grad, weights_train, seq):
    shape = SHAPES[shape_name]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    module = _module(shape, dtype, weights_train)
    x = torch.randn(2, seq, shape.hidden, dtype=dtype, requires_grad=x_grad)

    with Kept(module.parameters()) as kept:
        y = module(x)
        measured = kept.alive()
    del y

    e = 2 if precision == "bf16" else FP32
    assert measured == _expected(shape, 2, seq, e, weights_train)


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("weights_train", [False, True])
@pytest.mark.parametrize("seq", SEQS[:3])  # (no three-chunk run under autocast)
def test_under_autocast_the_module_keeps_what_the_op_counts(shape_name, weights_train, seq):
    """fp32 weights under a bf16 autocast: the matmuls keep their operands' casts, the
    linears and the conv their weights' casts (frozen or not: ops.linear's, added here)."""
    shape = SHAPES[shape_name]
    module = _module(shape, torch.float32, weights_train)
    x = torch.randn(2, seq, shape.hidden, requires_grad=True)

    with Kept(module.parameters()) as kept:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(x)
        measured = kept.alive()
    del y

    items = GatedDeltaNet.saved(shape, 2, seq, 2, weights_train, autocast=True)
    params = GatedDeltaNet.layer_parameters(shape)
    linears = [name for name in params if "proj" in name]
    expected = [item.nbytes for item in items] + [2 * params[name] for name in linears]
    if weights_train:  # the linears' 16-bit inputs
        expected += [2 * seq * shape.hidden * 2, 2 * seq * shape.value_dim * 2]
    assert measured == sorted(expected)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_checkpointed_layer_keeps_its_input_and_its_recompute_keeps_the_same(precision):
    """Reentrant checkpointing runs the forward without a graph (the input kept by the
    checkpoint alone) and runs it again in backward: the recompute keeps what the op
    counts. (transformers' default, non-reentrant, recomputes the same forward; its
    saved-tensor hooks hide the tensors from an outer hook.)"""
    shape, seq = SHAPES["grouped"], 100
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    module = _module(shape, dtype, False)
    x = torch.randn(2, seq, shape.hidden, dtype=dtype, requires_grad=True)
    rebuilt: list[list[int]] = []

    def layer(hidden):
        out = module(hidden)
        rebuilt.append(tracker.alive())  # the forward's end, graph and all
        return out

    with Kept(module.parameters()) as tracker:
        y = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=True)
        assert rebuilt == [[]]  # no graph in the checkpointed forward
        assert tracker.alive() == [x.untyped_storage().nbytes()]  # the checkpoint's input
        y.float().sum().backward()  # the recompute, then the layer's backward
    rebuilt_layer = list(rebuilt[1])
    rebuilt_layer.remove(x.untyped_storage().nbytes())  # the checkpoint's saved input
    e = 2 if precision == "bf16" else FP32
    assert rebuilt_layer == _expected(shape, 2, seq, e, False)


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
def test_parameters_match_the_module(shape_name):
    shape = SHAPES[shape_name]
    with torch.device("meta"):
        module = _module(shape, torch.float32, True)
    counted = GatedDeltaNet.layer_parameters(shape)
    real = {name.split(".")[0]: p.numel() for name, p in module.named_parameters()}
    assert counted == real
    assert sum(counted.values()) == sum(p.numel() for p in module.parameters())


def test_the_delta_rule_grows_with_the_padded_length():
    """Derived: the five C-wide fp32 tensors are b·h_v·P·C·4 each, P the length rounded up
    to the chunk: a row of 65 tokens keeps as much of them as one of 128."""
    shape = SHAPES["grouped"]
    wide = [i.nbytes for i in GatedDeltaNet.saved(shape, 1, 65, 2, False) if "(C-wide)" in i.what]
    assert wide == [shape.v_heads * 2 * CHUNK * CHUNK * 4] * 5
    assert math.ceil(65 / CHUNK) * CHUNK == 128
