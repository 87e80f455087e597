"""FSDP1 under transformers' reentrant checkpoint around each decoder unit gathers one
block at a time: BACKWARD_PRE prefetch never fires (parallel.fsdp1_unprefetched).

transformers before 4.52 calls ``checkpoint(decoder_layer.__call__, hidden_states, ...)``
(4.48.1 models/llama/modeling_llama.py:577), so under FSDP1 the checkpoint wraps the unit
and the unit's first forward runs without grad. FSDP1 prefetches a unit in backward only
once a grad-enabled forward has flagged it (``_needs_pre_backward_unshard``), which here
happens in the unit's own recompute, after the unit above has looked for it. The measured
half runs torch's FSDP1 on two gloo ranks on the CPU (tiny Llama, peft LoRA, peft's
auto-wrap policy, BACKWARD_PRE) and counts the decoder units whose unsharded flat parameter
is allocated at every hook of the step, with the checkpoint around each unit as
transformers 4.48 calls it and inside it as the installed transformers does.
"""

from __future__ import annotations

import pytest

from tests import fsdp_gloo as gloo

H, I, S, V, LAYERS, BATCH, KV = 512, 1024, 64, 64, 4, 2, 256
CONFIG = gloo.llama_config(H, I, LAYERS, V)
SETTINGS = {
    "method": "lora",
    "precision": "bf16",
    "grad_ckpt": True,
    "batch_size": BATCH,
    "seq_len": S,
    **gloo.LORA_SETTINGS,
    "lora_dropout": 0.1,
    "attn": "sdpa",
    "device": "cpu",
}
# by hand: one decoder block in bf16 (q, o: H·H; k, v: H·KV; gate, up, down: H·I; two
# norms) with its fp32 LoRA r 4 adapters (A r·H for q, k, v, o; B out·r: H, KV, KV, H);
# the root unit: embedding, LM head, final norm in bf16
BASE_BLOCK = (2 * H * H + 2 * H * KV + 3 * H * I + 2 * H) * 2
BLOCK = BASE_BLOCK + 4 * (4 * H + 2 * H + 2 * KV) * 4
ROOT = (2 * V * H + H) * 2


def _comm(transformers_version: str | None, **settings: object):  # -> Communication
    return gloo.estimated_rank0(
        CONFIG, SETTINGS, transformers_version=transformers_version, **settings
    ).sizes.comm


def test_one_block_gathered_by_hand() -> None:
    comm = _comm("4.48.1")
    assert (comm.forward, comm.backward) == (ROOT + BLOCK, ROOT + BLOCK)
    assert (comm.head_forward, comm.loss_backward, comm.head_backward) == (ROOT, ROOT, ROOT)


@pytest.mark.parametrize(
    ("version", "blocks"),
    [("4.52.0", 1), (None, 2)],
    ids=["transformers-4.52", "current"],
)
def test_prefetch_with_the_checkpoint_inside(version: str | None, blocks: int) -> None:
    """The checkpoint inside the layer (GradientCheckpointingLayer): the first forward
    runs with grad, so BACKWARD_PRE prefetches in backward. Under FSDP1 (transformers
    4.52) with peft's auto-wrap policy it prefetches the unit's own last LoRA leaf, not
    the unit below: one decoder unit (parallel.fsdp1_lora_backward, measured in
    tests/test_fsdp_units_in_flight.py); FSDP2 (the installed release) keeps two."""
    assert _comm(version).backward == ROOT + blocks * BLOCK


def test_full_finetuning_is_unprefetched_too() -> None:
    """Nothing of it depends on frozen units (measured below with LoRA only; the flag is
    set on any unit's outputs the same way)."""
    comm = _comm("4.48.1", method="full")
    assert comm.backward - comm.head_backward == BASE_BLOCK


def _gathered(around: bool) -> dict[str, int]:
    """The most decoder units gathered at once in forward, at the head side (between the
    last block's forward and the top block's backward) and in backward: the tiny Llama
    with peft LoRA under FSDP1 (peft's auto-wrap policy, BACKWARD_PRE), the checkpoint
    around each unit (``around``) or inside the layer's call (the installed transformers)."""
    import torch
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import BackwardPrefetch

    model = gloo.bf16_llama(CONFIG)
    if not around:  # the installed transformers: the checkpoint inside the layer's call
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    model = gloo.with_lora(model)
    model.train()
    model = gloo.fsdp1(
        model,
        fsdp_auto_wrap_policy(model),
        backward_prefetch=BackwardPrefetch.BACKWARD_PRE,
        use_orig_params=False,
    )
    layers = gloo.decoder_layers(model, LAYERS)
    units = list(layers)
    if around:
        for i in range(LAYERS):
            layers[i] = gloo.checkpointed_around(layers[i])
    gathered = gloo.GatheredUnits(units)
    gathered.watch([unit._fsdp_wrapped_module for unit in units])  # both passes
    gathered.follow_pre_backward()
    return gloo.most_by_phase(gathered.second_step(model, torch.randint(0, V, (BATCH, S))))


@pytest.mark.slow
@pytest.mark.parametrize("around", [True, False], ids=["transformers-4.48", "inside"])
def test_units_gathered_as_modelled(tmp_path, around: bool) -> None:
    got = gloo.on_two_ranks(tmp_path, _gathered, around, needs=("peft",))

    comm = _comm("4.48.1" if around else None)
    blocks_backward = (comm.backward - ROOT) // BLOCK
    assert got["backward"] == blocks_backward == (1 if around else 2)
    # with the checkpoint inside, the run is the installed transformers': FSDP2 by default,
    # two in forward (FSDP1's one: tests/test_fsdp_units_in_flight.py)
    if around:
        assert got["forward"] == (comm.forward - ROOT) // BLOCK == 1
        assert got["head"] == (comm.loss_backward - ROOT) // BLOCK == 0
