"""How many decoder units FSDP1 and FSDP2 hold gathered in forward (parallel.fsdp1_forward,
parallel.BLOCKS_IN_FLIGHT).

FSDP1 (``FullyShardedDataParallel``) reshards each non-root unit in its post-forward before
the next unit gathers, and prefetches in forward only under ``forward_prefetch``, which
accelerate and HF Trainer leave off; its all-gather writes into the unsharded flat parameter
itself. FSDP2 (``fully_shard``) keeps a unit's all-gather output beside its unsharded
parameters until the next unit's copy-out. So FSDP1 holds one unit at a time in forward
and FSDP2 two. Which one runs: the framework's own (torchtune FSDP2, fsdp_qlora FSDP1), else
HF Trainer's default, FSDP1 before transformers 5.10 and FSDP2 from it.

The measured half runs torch's FSDP1 on two gloo ranks on the CPU (tiny Llama, the
installed transformers' checkpoint inside each layer, FULL_SHARD) and counts the decoder
units whose unsharded flat parameter is allocated inside every layer (the forward and the
recompute) and at every pre-backward hook, under each backward prefetch policy.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests import fsdp_gloo as gloo

H, I, S, V, LAYERS, BATCH, KV = 512, 1024, 64, 64, 4, 2, 256
CONFIG = gloo.llama_config(H, I, LAYERS, V)
SETTINGS = {
    "method": "full",
    "precision": "bf16",
    "grad_ckpt": True,
    "batch_size": BATCH,
    "seq_len": S,
    "attn": "sdpa",
    "device": "cpu",
}
# by hand: one decoder block in bf16 (q, o: H·H; k, v: H·KV; gate, up, down: H·I; two
# norms); the root unit: embedding, LM head, final norm in bf16, and the head side's
# gradients (LM head and final norm, unsharded until the root's reduce-scatter)
BLOCK = (2 * H * H + 2 * H * KV + 3 * H * I + 2 * H) * 2
ROOT = (2 * V * H + H) * 2
HEAD_GRAD = (V * H + H) * 2


def _comm(
    transformers_version: str | None,
    framework: str = "hf",
    fsdp_version: int | None = None,
    **settings: object,
):
    return gloo.estimated_rank0(
        CONFIG,
        SETTINGS,
        fsdp_version=fsdp_version,
        framework=framework,
        transformers_version=transformers_version,
        **settings,
    ).sizes.comm


@pytest.mark.parametrize(
    ("version", "framework", "blocks"),
    [
        ("4.57.6", "hf", 1),
        ("5.9.0", "hf", 1),  # training_args.py: fsdp_config.get("version", 1)
        ("5.10.1", "hf", 2),  # get("version", 2)
        (None, "hf", 2),  # the installed release
        (None, "axolotl", 2),
        ("4.57.6", "axolotl", 1),
        (None, "fsdp_qlora", 1),  # its train.py's FullyShardedDataParallel
        (None, "torchtune", 2),  # fully_shard (a transformers release is refused there)
    ],
)
def test_blocks_gathered_in_forward_by_hand(version, framework, blocks) -> None:
    comm = _comm(version, framework)
    assert comm.forward == ROOT + blocks * BLOCK
    # at the logits FSDP1 has resharded the last unit; FSDP2 still holds its all-gather
    # output (kept until the next copy-out)
    assert comm.head_forward == ROOT + (blocks - 1) * BLOCK
    # the unit resharded last waits for the compute stream: the replay keeps its block
    assert comm.forward_waiting == (2 - blocks) * BLOCK


@pytest.mark.parametrize(
    ("version", "framework", "fsdp_version", "blocks"),
    [
        ("4.57.6", "hf", 2, 2),  # FSDP2 asked for under a release defaulting to FSDP1
        (None, "hf", 1, 1),  # FSDP1 asked for under a release defaulting to FSDP2
        (None, "axolotl", 1, 1),
        (None, "fsdp_qlora", 1, 1),  # its own version, given again
        (None, "torchtune", 2, 2),
    ],
)
def test_the_given_version_sets_the_blocks(version, framework, fsdp_version, blocks) -> None:
    comm = _comm(version, framework, fsdp_version)
    assert comm.forward == ROOT + blocks * BLOCK
    assert comm.head_forward == ROOT + (blocks - 1) * BLOCK
    assert comm.forward_waiting == (2 - blocks) * BLOCK


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--strategy", "fsdp", "--fsdp-version", "3"], "--fsdp-version is 1"),
        (["--strategy", "ddp", "--fsdp-version", "1"], "it needs an FSDP strategy"),
        (
            ["--strategy", "fsdp", "--fsdp-version", "1", "--framework", "torchtune"],
            "torchtune shards with FSDP2 only",
        ),
    ],
)
def test_a_version_that_cannot_run_is_refused(capsys, flags, said) -> None:
    from ftmem.cli import main

    with pytest.raises(SystemExit) as done:
        main(["estimate", "llama3.2-1b", "--gpus", "2", *flags])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("version", "framework", "settings", "blocks"),
    [
        ("4.57.6", "hf", {"method": "lora"}, 1),  # FSDP1, peft's policy: the unit's own leaf
        ("4.57.6", "axolotl", {"method": "lora"}, 1),
        (None, "fsdp_qlora", {"method": "lora"}, 1),
        (None, "hf", {"method": "lora"}, 2),  # FSDP2
        ("4.57.6", "hf", {"method": "full"}, 2),  # no LoRA leaf units: the unit below
        ("4.57.6", "hf", {"method": "lora", "grad_ckpt": False}, 2),  # the boundary moment
        (None, "litgpt", {"method": "lora"}, 2),  # its own policy (Block units)
    ],
)
def test_lora_leaf_units_hold_one_block_in_backward(version, framework, settings, blocks):
    comm = _comm(version, framework, **settings)
    unit = comm.forward - comm.head_forward if blocks == 1 else comm.backward_waiting
    if blocks == 1:  # (FSDP1's forward: one unit, none at the logits)
        assert comm.backward == comm.head_forward + unit
        assert comm.backward_waiting == unit  # resharded, waiting: reserved only
    else:
        assert comm.backward_waiting == 0


def test_backward_is_unchanged_by_the_version() -> None:
    """Backward stays BACKWARD_PRE's two units (FSDP2's prefetch alike): the root's
    pre-backward hook gathers the last unit, the unit being computed the one below."""
    fsdp1, fsdp2 = _comm("4.57.6"), _comm(None)
    assert fsdp1.backward == fsdp2.backward == ROOT + 2 * BLOCK + HEAD_GRAD
    assert fsdp1.loss_backward == fsdp2.loss_backward == ROOT + BLOCK


def test_one_block_without_checkpointing_too() -> None:
    """Nothing of the forward depends on the checkpoint (FSDP's hooks around each unit)."""
    assert _comm("4.57.6", grad_ckpt=False).forward == ROOT + BLOCK


def _gathered(prefetch: str, lora: bool = False) -> dict[str, int]:
    """The most decoder units gathered at once, per phase and place. With ``lora``: LoRA
    on the attention projections wrapped by peft's auto-wrap policy (each LoRA matrix a
    unit of its own, as HF Trainer's update_fsdp_plugin_peft sets it) and transformers'
    own checkpoint default (non-reentrant)."""
    import torch
    from torch.distributed.fsdp import BackwardPrefetch
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = gloo.bf16_llama(CONFIG)
    policy: Any = ModuleWrapPolicy({LlamaDecoderLayer})  # TRANSFORMER_BASED_WRAP
    if lora:
        from peft.utils.other import fsdp_auto_wrap_policy

        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = gloo.with_lora(model)
        policy = fsdp_auto_wrap_policy(model)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    model = gloo.fsdp1(
        model,
        policy,
        backward_prefetch=None if prefetch == "none" else BackwardPrefetch[prefetch],
        forward_prefetch=False,
        use_orig_params=not lora,  # (peft's FSDP1 QLoRA path: False)
    )
    units = list(gloo.decoder_layers(model, LAYERS))
    gathered = gloo.GatheredUnits(units)
    layers = [u._fsdp_wrapped_module for u in units]
    # the layer's submodules run in the forward and in the recompute
    gathered.watch([sub for layer in layers for sub in layer.modules() if sub is not layer])
    gathered.follow_pre_backward()
    return gathered.second_step(model, torch.randint(0, V, (BATCH, S)))


@pytest.mark.slow
@pytest.mark.parametrize("prefetch", ["BACKWARD_PRE", "BACKWARD_POST", "none"])
def test_fsdp1_units_gathered_as_modelled(tmp_path, prefetch: str) -> None:
    got = gloo.on_two_ranks(tmp_path, _gathered, prefetch)

    comm = _comm("4.57.6")  # FSDP1 under HF Trainer
    assert got["forward:layer"] == (comm.forward - ROOT) // BLOCK == 1
    assert got["head:logits"] == (comm.head_forward - ROOT) // BLOCK == 0
    # backward: BACKWARD_PRE prefetches the unit below while one is computed (what ftmem
    # keeps); the others gather each unit in its own pre-backward hook, the one above
    # resharded as its backward ends
    modelled = (comm.backward - ROOT - HEAD_GRAD) // BLOCK
    assert got["backward:layer"] == (modelled if prefetch == "BACKWARD_PRE" else 1)
    assert got["head:root"] == (1 if prefetch == "BACKWARD_PRE" else 0)


@pytest.mark.slow
def test_fsdp1_lora_holds_one_unit_in_backward(tmp_path) -> None:
    """LoRA under FSDP1 with peft's auto-wrap policy: BACKWARD_PRE prefetches a decoder
    unit's own last LoRA leaf, not the unit below (parallel.fsdp1_lora_backward), so one
    decoder unit is gathered while a block recomputes and runs its backward."""
    got = gloo.on_two_ranks(tmp_path, _gathered, "BACKWARD_PRE", True, needs=("peft",))

    comm = _comm("4.57.6", method="lora")  # FSDP1 under HF Trainer
    unit = comm.forward - comm.head_forward  # one decoder unit: forward's, none at the logits
    assert got["forward:layer"] == 1 and got["head:logits"] == 0
    assert got["head:root"] == (comm.loss_backward - comm.head_forward) // unit == 1
    # the LM head is frozen: no head gradients beside the root in backward
    assert got["backward:layer"] == (comm.backward - comm.head_forward) // unit == 1
    # the unit below gathers at its own pre-backward hook before the one above reshards,
    # before its recompute: two units, not a backward moment of the block
    assert got["backward:pre_backward"] == 2
    # that unit, resharded, waits for the compute stream: kept in the allocator replay
    assert comm.backward_waiting == unit
