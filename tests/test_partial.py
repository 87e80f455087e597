"""Partial finetuning by parameter-name pattern (--method partial --trainable-modules)."""

from __future__ import annotations

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from ftmem.run import split_patterns

H, F, L, V = 4096, 11008, 32, 32000  # Llama-2-7B
ATTN = 4 * H * H  # q, k, v, o
MLP = 3 * H * F  # gate, up, down
BLOCK = ATTN + MLP + 2 * H  # + two RMSNorm weights


def trainable(**settings) -> int:
    return estimate("llama2-7b", method="partial", **settings).model.n_trainable_params


def test_counts_by_hand() -> None:
    assert trainable(trainable_modules="self_attn") == L * ATTN
    assert trainable(trainable_modules="lm_head") == V * H
    assert trainable(trainable_modules="mlp") == L * MLP
    # two blocks by index (layers 30 and 31): everything in them
    assert trainable(trainable_modules=r"layers\.3[01]\.") == 2 * BLOCK
    # every norm: two per block and the final one
    assert trainable(trainable_modules="norm") == (2 * L + 1) * H
    # several patterns add up, overlaps counted once
    both = trainable(trainable_modules="self_attn,lm_head,q_proj")
    assert both == L * ATTN + V * H


def test_quantifier_commas_do_not_split() -> None:
    assert split_patterns(r"layers\.(3[01])\.,lm_head, x{1,2}") == [
        r"layers\.(3[01])\.",
        "lm_head",
        "x{1,2}",
    ]
    assert trainable(trainable_modules=r"layers\.3{1,1}\.mlp") == MLP


def test_only_the_head_trains_nothing_below_keeps_activations() -> None:
    """With only the LM head trainable no block needs a gradient: the activations are the
    head's input, the final norm keeps nothing, and the loss's fp32 log-softmax."""
    T = 512
    est = estimate("llama2-7b", method="partial", trainable_modules="lm_head", seq_len=T)
    loss = T * V * 4 + T * 8 + 4  # log-softmax, int64 labels, the mean's normaliser
    assert est.memory.activations_bytes == T * H * 2 + loss
    # freezing everything but the last block keeps just that block's activations
    top = estimate("llama2-7b", method="partial", trainable_modules=r"layers\.31\.", seq_len=T)
    freeze = estimate("llama2-7b", method="freeze", trainable_layers=1, seq_len=T)
    assert top.memory == freeze.memory


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "partial"}, "needs --trainable-modules"),
        ({"method": "full", "trainable_modules": "mlp"}, "only applies to partial"),
        ({"method": "partial", "trainable_modules": " , "}, "is empty"),
        ({"method": "partial", "trainable_modules": "mlp(["}, "not a regular expression"),
        ({"method": "partial", "trainable_modules": "mlp,experts"}, "'experts' matches no"),
    ],
)
def test_bad_patterns_are_one_sentence(settings: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        estimate("llama2-7b", **settings)


def test_axolotl_unfrozen_parameters(tmp_path) -> None:
    from ftmem.frameworks import read_framework_config

    cfg_file = tmp_path / "axolotl.yml"
    cfg_file.write_text(
        "base_model: meta-llama/Llama-2-7b-hf\n"
        "unfrozen_parameters:\n"
        "  - ^lm_head.weight$\n"
        "  - model.layers.3[01].self_attn\n"
        "sequence_len: 1024\n"
        "micro_batch_size: 2\n",
        encoding="utf-8",
    )
    cfg = read_framework_config(str(cfg_file))
    assert cfg.settings["method"] == "partial"
    est = estimate("llama2-7b", **cfg.settings)
    assert est.model.n_trainable_params == V * H + 2 * ATTN
