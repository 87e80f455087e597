"""A decoder trained with its config's dropout under checkpointing (StarCoder2's 0.1).

The truth: PyTorch on the CPU, a tiny StarCoder2 with LoRA on q and v, non-reentrant
checkpointing and enable_input_require_grads as HF Trainer + peft set them up
(ftmem.measure.build.enable_checkpointing). Two things the estimate follows
(tests/accuracy's starcoder2 case with checkpointing and dropout holds the peak):

* the frozen embeddings' output is a leaf of the graph; with embedding dropout (or GPT-2's
  learned positions added to it) it is no block's input, and its AccumulateGrad node keeps
  it to the end of backward (step.embedding_leaf_apart);
* the MLP's fused GELU writes its input's gradient beside its output's (two T·f) where the
  down projection keeps no input, and the MLP output's dropout mask is freed before
  (MLP.activation_output_gradient, MLP.output_dropout_freed).
"""

from __future__ import annotations

import gc
import weakref

import pytest

from ftmem.api import run_config
from ftmem.arch import Architecture
from ftmem.step import embedding_leaf_apart, step_parts

B, S, H, F = 3, 20, 64, 256


def _arch(dropout: float) -> Architecture:
    from ftmem.sources import architecture_from_config

    config = {
        "model_type": "starcoder2",
        "vocab_size": 128,
        "hidden_size": H,
        "intermediate_size": F,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "embedding_dropout": dropout,
        "residual_dropout": dropout,
    }
    return architecture_from_config(config, "tiny-starcoder2", "test")


def _gpt2() -> Architecture:
    """GPT-2: learned positions added to the token embeddings, no dropout."""
    from ftmem.sources import architecture_from_config

    config = {
        "model_type": "gpt2", "vocab_size": 128, "n_embd": H, "n_inner": F, "n_layer": 2,
        "n_head": 4, "n_positions": 64, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }  # fmt: skip
    return architecture_from_config(config, "tiny-gpt2", "test")


def _embedding_output_after_forward(
    dropout: float, arch: Architecture | None = None
) -> tuple[bool, bool]:
    """Whether the embeddings' output outlives the model's forward (the loss in hand),
    and whether it is the first block's input."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from ftmem.measure.build import build_model, find_blocks

    model = build_model(arch or _arch(dropout), _run()).model  # checkpointed as HF Trainer + peft
    kept: list[weakref.ref] = []
    first: list[int] = []
    embeddings = model.get_input_embeddings()
    hooks = [
        embeddings.register_forward_hook(lambda m, i, out: kept.append(weakref.ref(out))),
        find_blocks(model)[1][0].register_forward_pre_hook(
            lambda m, args: first.append(args[0].untyped_storage().data_ptr())
        ),
    ]
    ids = torch.randint(0, 128, (B, S))
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    for h in hooks:
        h.remove()
    gc.collect()
    out = kept[0]()
    alive = out is not None
    is_input = alive and out.untyped_storage().data_ptr() == first[0]
    loss.backward()
    return alive, is_input


def test_the_dropped_embeddings_leaf_outlives_the_forward():
    assert _embedding_output_after_forward(0.1) == (True, False)  # held apart
    # without dropout the checkpoint keeps it as the first block's input: nothing apart
    assert _embedding_output_after_forward(0.0) == (True, True)
    assert embedding_leaf_apart(_arch(0.0), _run(), _plan(_arch(0.0))) == 0
    assert embedding_leaf_apart(_arch(0.1), _run(), _plan(_arch(0.1))) == B * S * H * 2


def test_learned_positions_hold_the_embeddings_leaf_apart():
    """GPT-2 adds its position embeddings to the token embeddings' output: the first block
    reads the sum, the leaf is held apart (fp32: B·S·H·4)."""
    assert _embedding_output_after_forward(0.0, _gpt2()) == (True, False)
    fp32 = _run(precision="fp32")
    assert embedding_leaf_apart(_gpt2(), fp32, _plan(_gpt2(), fp32)) == B * S * H * 4


def test_no_leaf_without_checkpointing_or_with_a_trained_embedding():
    arch = _arch(0.1)
    plain = _run(grad_ckpt=False)
    full = _run(method="full")
    assert embedding_leaf_apart(arch, plain, _plan(arch, plain)) == 0
    assert embedding_leaf_apart(arch, full, _plan(arch, full)) == 0


def _run(**changes):
    settings = {
        "method": "lora", "precision": "bf16", "batch_size": B, "seq_len": S,
        "device": "cpu", "grad_ckpt": True, **changes,
    }  # fmt: skip
    return run_config(**settings)


def _plan(arch: Architecture, run=None):
    from ftmem.methods import plan_method

    return plan_method(arch, run or _run())


def test_the_gelu_backward_holds_two_intermediate_gradients_where_c_proj_keeps_nothing():
    """By hand: the checkpointed block's MLP moment is the GELU's input and output
    gradients (2·T·f·e) and the incoming residual gradient, bf16 in a bf16 model
    (T·h·e: tests/test_residual_gradient.py), less the MLP output's dropout mask, freed
    first (T·h·e on the CPU); LoRA on all linears keeps c_proj's input, whose own backward
    is the same size: one T·f there."""
    T, e = B * S, 2
    arch = _arch(0.1)
    attention_only = step_parts(arch, _run()).sizes.block.workspace
    assert attention_only == 2 * T * F * e + T * H * e - T * H * e
    no_dropout = step_parts(_arch(0.0), _run()).sizes.block.workspace
    assert no_dropout == 2 * T * F * e + T * H * e
