"""--padding packed: a batch flattened into one row of several sequences told apart by
position_ids, with no attention_mask (ops/attention.packed_rows).

The truth: PyTorch on the CPU against transformers 5.24, a tiny Llama with GQA (and MHA).
One row of T = 24 tokens runs twice: once as three packed sequences (position_ids restart
at 0 for each: 8, 10 and 6 tokens), once as one sequence (position_ids 0..T-1), both
without an attention_mask and with use_cache=False as HF Trainer and TRL call the model.
transformers finds the packed sequences from position_ids only when no attention_mask
and no cache are given (masking_utils.py l.865) and then builds a boolean (1, 1, T, T)
block-diagonal mask; sdpa with a mask repeats GQA keys and values per head
(integrations/sdpa_attention.py l.42-51, l.118-127). The hand derivation, per layer: the
additive mask torch makes of the boolean one in the compute dtype, T·T·e, plus for GQA
keys and values at every query head instead of the kv heads' own, 2·T·(q − kv)·e.
"""

from __future__ import annotations

import pytest

from ftmem.api import estimate, run_config
from ftmem.phases import find_peak
from ftmem.sources import architecture_from_config
from ftmem.step import step_parts

# the tiny Llamas of the padding tests
from tests.test_padding import HEAD_DIM, HEADS, E, L, _config, measured_step, moved_by

LENGTHS = (8, 10, 6)  # the packed sequences
T = sum(LENGTHS)
# the estimate's batch: 3 rows of 8 flattened into one row of T = 24 tokens
B, S = 3, 8


def _position_ids(packed: bool):
    torch = pytest.importorskip("torch")
    if not packed:
        return torch.arange(T).unsqueeze(0)
    return torch.cat([torch.arange(n) for n in LENGTHS]).unsqueeze(0)


def _measured(kv_heads: int, position_ids, attn: str = "sdpa") -> tuple[int, ...]:
    """The step on one row of T tokens with these position_ids and no attention_mask."""
    return measured_step(kv_heads, (1, T), attn, position_ids=position_ids)


def _estimated(
    kv_heads: int, padding: str, b: int = B, s: int = S, **settings
) -> tuple[int, int, int]:
    """(activations kept, forward peak, backward peak) of the estimate on the CPU, above
    the weights and optimizer states (alive before the step, as the measured model's
    parameters; the measurement has no optimizer)."""
    run = run_config(
        method="full", precision="bf16", batch_size=b, seq_len=s, device="cpu",
        padding=padding, **settings,
    )  # fmt: skip
    arch = architecture_from_config(_config(kv_heads), f"tiny-kv{kv_heads}", "test")
    parts = step_parts(arch, run)
    phases, before = find_peak(parts.sizes).phases, parts.sizes.weights + parts.sizes.states
    return parts.activations, phases.forward - before, phases.backward - before


def _by_hand(kv_heads: int) -> int:
    q, kv = HEADS * HEAD_DIM, kv_heads * HEAD_DIM
    mask = T * T * E  # one row: (1, 1, T, T), made additive in bf16
    repeated = 2 * T * (q - kv) * E if 1 < kv_heads < HEADS else 0
    return L * (mask + repeated)


@pytest.mark.parametrize("kv_heads", [2, 6], ids=["gqa", "mha"])
def test_packed_sequences_get_a_block_diagonal_mask_under_sdpa(kv_heads):
    packed = _measured(kv_heads, _position_ids(True))
    one = _measured(kv_heads, _position_ids(False))
    moved = moved_by(packed, one)
    # saved and the forward peak move by the mask (+ GQA's copies); the backward's peak is
    # its end, when the saved tensors are freed and every gradient is made
    assert moved[:2] == [_by_hand(kv_heads)] * 2
    estimated = _estimated(kv_heads, "packed")
    assert moved_by(estimated, _estimated(kv_heads, "none"))[:2] == moved[:2]
    assert estimated[2] - _estimated(kv_heads, "none")[2] == moved[2]


def test_the_packed_estimate_matches_the_measured_step():
    saved, forward, backward = _measured(2, _position_ids(True))
    activations, est_forward, est_backward = _estimated(2, "packed")
    assert abs(activations - saved) / saved < 0.03
    assert abs(est_forward - forward) / forward < 0.05
    assert abs(est_backward - backward) / backward < 0.05


def test_data_collator_with_flattening_packs_the_same_way():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    collator = transformers.DataCollatorWithFlattening()
    batch = collator([{"input_ids": list(range(1, n + 1))} for n in LENGTHS])
    # no attention_mask: transformers looks for packed sequences in position_ids
    assert "attention_mask" not in batch
    assert torch.equal(batch["position_ids"], _position_ids(True))
    assert _measured(2, batch["position_ids"]) == _measured(2, _position_ids(True))


def test_one_sequence_or_an_attention_mask_has_no_packed_mask():
    # position_ids that never restart: find_packed_sequence_indices returns None
    # (masking_utils.py l.761-762) and sdpa keeps its causal flag
    torch = pytest.importorskip("torch")
    assert _measured(2, _position_ids(False)) == _measured(2, None)
    assert torch.equal(_position_ids(False), torch.arange(T).unsqueeze(0))


def test_eager_and_flash_add_nothing_and_say_why():
    assert _estimated(2, "packed", attn="eager") == _estimated(2, "none", attn="eager")
    assert _estimated(2, "packed", attn="flash") == _estimated(2, "none", attn="flash")
    flash = estimate("llama-3.2-1b", attn="flash", padding="packed").notes
    assert any("position_ids" in n and "nothing added" in n for n in flash)
    eager = estimate("llama-3.2-1b", attn="eager", padding="packed").notes
    assert any("T×T scores" in n for n in eager)


def test_a_packed_batch_of_one_row_still_gets_the_mask():
    # unlike --padding longest, a batch of one packed row has a mask
    moved = moved_by(_estimated(2, "packed", b=1, s=T), _estimated(2, "none", b=1, s=T))
    assert moved[:2] == [_by_hand(2)] * 2


@pytest.mark.parametrize(
    ("keys", "padding"),
    [
        ({"padding_free": True}, "packed"),
        ({"packing": True}, "packed"),  # packing_strategy bfd, TRL's default: padding_free
        ({"packing": True, "packing_strategy": "bfd_split"}, "packed"),
        ({"packing": True, "packing_strategy": "wrapped"}, None),  # an attention_mask of ones
        ({"packing": False}, "longest"),
    ],
)
def test_trl_configs_say_when_the_batch_is_flattened(tmp_path, keys, padding):
    # trl@f2cd5771 sft_trainer.py l.1143: padding_free or packing with bfd / bfd_split
    import json

    from ftmem.frameworks import read_framework_config

    path = tmp_path / "sft.json"
    path.write_text(json.dumps({"model_name_or_path": "gpt2", "max_length": 256, **keys}))
    assert read_framework_config(str(path)).settings.get("padding") == padding
