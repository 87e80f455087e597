"""Bottleneck adapters, LongLoRA and ReLoRA: trainable sets and the merge, by hand.

Memory is measured on tiny models in tests/accuracy (docs/accuracy.md).
"""

from __future__ import annotations

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError

H, F, L, V = 4096, 11008, 32, 32000  # Llama-2-7B


def test_houlsby_and_pfeiffer_counts() -> None:
    """An adapter h → m → h with biases: 2·h·m + m + h; Houlsby puts two per block,
    Pfeiffer one (after the MLP)."""
    m = 64
    one = 2 * H * m + m + H
    assert estimate("llama2-7b", method="adapter").model.n_trainable_params == L * 2 * one
    pf = estimate("llama2-7b", method="adapter", adapter_placement="pfeiffer", adapter_size=m)
    assert pf.model.n_trainable_params == L * one
    # fp32 adapters on a bf16 base: gradients 4 bytes per trainable parameter
    assert pf.memory.gradients_bytes == 4 * L * one


def test_adapters_refuse_a_moe_mlp_and_foreign_options() -> None:
    with pytest.raises(InvalidInputError, match="mixture of experts"):
        estimate("mixtral-8x7b", method="adapter")
    with pytest.raises(InvalidInputError, match="only applies to adapter"):
        estimate("llama2-7b", method="lora", adapter_size=32)


def test_longlora_trains_lora_embeddings_and_norms() -> None:
    """LoRA r 8 on q, k, v, o (4 × (8·4096 + 4096·8) per block), the token embedding
    (32000 × 4096) and every norm (2 per block + the final one)."""
    lora = L * 4 * (8 * H + H * 8)
    expected = lora + V * H + (2 * L + 1) * H
    assert estimate("llama2-7b", method="longlora").model.n_trainable_params == expected


def test_relora_merge_step_by_hand() -> None:
    """ReLoRA merges B·A into the base between steps: peft builds B·A and its scaled copy
    (fp32 adapters) for one linear at a time; the largest is gate/up/down (11008 × 4096).
    Nothing else is live then but the weights and the optimizer states."""
    est = estimate("llama2-7b", method="relora", seq_len=8)  # tiny activations
    merge = 2 * F * H * 4
    m = est.memory
    lora = estimate("llama2-7b", method="lora", lora_targets="all-linear", seq_len=8).memory
    # the same adapters as LoRA on all linears otherwise
    assert (m.weights_bytes, m.gradients_bytes, m.optimizer_states_bytes) == (
        lora.weights_bytes,
        lora.gradients_bytes,
        lora.optimizer_states_bytes,
    )
    # (and the BLAS workspaces PyTorch keeps in every phase of a CUDA step)
    assert (
        m.phases.optimizer
        == m.weights_bytes + m.optimizer_states_bytes + merge + m.at_peak.workspaces
    )


def test_fused_loss_drops_the_logits_by_hand() -> None:
    """Llama-3-8B (vocabulary 128,256), LoRA, bf16, 2 × 4096 tokens. transformers' loss
    keeps the fp32 log-softmax of every position (+ int64 labels and the mean's fp32
    normaliser); Liger's fused loss keeps the gradient of its shifted input instead,
    2 × 4095 rows of 4096 in bf16 (the LM head is frozen: no weight gradient)."""
    b, s, h, V = 2, 4096, 4096, 128256
    kw = dict(method="lora", batch_size=b, seq_len=s)
    standard = estimate("llama3-8b", **kw).memory
    fused = estimate("llama3-8b", loss="fused", **kw).memory
    T = b * s
    kept_standard = T * V * 4 + T * 8 + 4
    kept_fused = b * (s - 1) * h * 2
    assert standard.activations_bytes - fused.activations_bytes == kept_standard - kept_fused
    # and at the loss in backward the fp32 logits' gradients (2 × T·V·4) are gone
    assert fused.peak_allocated_bytes < standard.peak_allocated_bytes - 2 * T * V * 4


def test_distillation_by_hand() -> None:
    """Llama-2-7B (LoRA) learning from Llama-2-13B: the teacher's bf16 weights join the
    student's, and the KL term keeps two fp32 distributions of T × 32000."""
    T = 1 * 512
    plain = estimate("llama2-7b", method="lora").memory
    kd = estimate("llama2-7b", method="lora", teacher="llama2-13b").memory
    assert kd.weights_bytes - plain.weights_bytes == 2 * 13_015_864_320
    assert kd.activations_bytes - plain.activations_bytes == 2 * T * V * 4
    nf4 = estimate("llama2-7b", method="lora", teacher="llama2-13b", teacher_weights="nf4")
    # an NF4 teacher: about a quarter of its bf16 weights (4 bits + constants)
    teacher_nf4 = nf4.memory.weights_bytes - plain.weights_bytes
    assert teacher_nf4 < (kd.weights_bytes - plain.weights_bytes) / 3
    with pytest.raises(InvalidInputError, match="vocabulary"):
        estimate("llama2-7b", method="lora", teacher="llama3-8b")
    with pytest.raises(InvalidInputError, match="one GPU"):
        estimate("llama2-7b", method="lora", teacher="llama2-13b", gpus=2, strategy="zero2")
    with pytest.raises(InvalidInputError, match="--teacher MODEL"):
        estimate("llama2-7b", method="lora", teacher_weights="nf4")


def test_lora_on_a_gptq_base_by_hand() -> None:
    """--quant int4: every block linear as GPTQ/AWQ stores it (0.5 byte per weight, per
    128 inputs and output row an fp16 scale and a 4-bit zero); the rest bf16, LoRA fp32."""
    est = estimate("llama2-7b", method="qlora", quant="int4")

    def gptq(out_f: int, in_f: int) -> int:
        groups = (in_f // 128) * out_f
        return out_f * in_f // 2 + 2 * groups + groups // 2

    block = 4 * gptq(H, H) + 2 * gptq(F, H) + gptq(H, F) + 2 * H * 2
    outer = (2 * V * H + H) * 2
    lora = L * 2 * (8 * H + H * 8) * 4  # r 8 on q and v, fp32
    assert est.memory.weights_bytes == L * block + outer + lora
    with pytest.raises(InvalidInputError, match="not --quant int4"):
        estimate("llama2-7b", method="qlora", quant="int4", double_quant=True)
