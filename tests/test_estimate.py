"""The estimator against hand derivations and the seed's worked examples."""

import pytest

from ftmem import estimate
from ftmem.activations import block_saved
from ftmem.methods import plan_method
from ftmem.ops.context import BlockState
from ftmem.presets import get_model
from ftmem.run import RunConfig

from .conftest import tiny

GB = 10**9


def test_seed_13b_full_16bit_simple_accounting():
    """Seed: 26 GB weights + 78 GB gradients and Adam states + ~5 GB activations ≈ 109 GB."""
    est = estimate("llama2-13b", method="full", precision="bf16", accounting="simple")
    n = 13_015_864_320
    m = est.memory
    assert m.weights_bytes == 2 * n  # 26.03 GB
    assert m.gradients_bytes + m.optimizer_states_bytes == 6 * n  # 78.1 GB
    assert 4 * GB < m.activations_bytes < 6 * GB
    assert round(m.peak_allocated_bytes / GB) == 109


def test_seed_7b_weights_and_adam():
    """Seed: 7B = 14 GB of weights and ~56 GB with Adam (it rounds 6.74B up to 7B)."""
    est = estimate("llama2-7b", method="full", precision="bf16", accounting="simple")
    n = 6_738_415_616
    assert est.memory.weights_bytes == 2 * n  # 13.5 GB ≈ 14
    # weights + gradient + 2 Adam states, 16-bit each = 8 bytes per parameter
    m = est.memory
    assert m.weights_bytes + m.gradients_bytes + m.optimizer_states_bytes == 8 * n  # 53.9 ≈ 56


def test_seed_13b_weights_by_precision():
    n = 13_015_864_320
    arch = get_model("llama2-13b")
    assert estimate(arch, precision="fp32").memory.weights_bytes == 4 * n  # 52 GB
    assert estimate(arch, precision="bf16").memory.weights_bytes == 2 * n  # 26 GB
    # int8 base: linears 1 byte + fp32 row scales; embeddings, norms, head stay 16-bit
    int8 = estimate(arch, method="qlora", quant="int8", lora_targets="q,v").memory.weights_bytes
    h, L, f = 5120, 40, 13824
    linear = L * (4 * h * h + 3 * h * f)
    rows = L * (4 * h + 2 * f + h)
    lora = L * 2 * 8 * (h + h) * 4  # q and v adapters, r=8, fp32
    assert int8 == linear + 4 * rows + 2 * (n - linear) + lora
    assert round(int8 / GB) == 13


def test_qlora_nf4_double_quant_storage_by_hand():
    """QLoRA paper: 4 bits + 8/64 + 32/(64·256) ≈ 4.127 bits per quantised weight."""
    arch = tiny(
        "llama", hidden_size=256, intermediate_size=512, vocab_size=64, num_heads=4, num_kv_heads=4
    )
    est = estimate(arch, method="qlora", lora_targets="q", lora_r=4)
    h, f, L = 256, 512, 2
    sizes = [h * h] * 4 + [h * f] * 3  # q k v o, gate up down

    def nf4(n):
        blocks = -(-n // 64)
        return n // 2 + blocks + 4 * -(-blocks // 256) + 4 + 1024 + 64

    quantised = L * sum(nf4(n) for n in sizes)
    rest = 2 * (64 * h * 2 + L * 2 * h + h)  # embed + head, norms, final norm (bf16)
    lora = L * 4 * (h + h) * 4
    assert est.memory.weights_bytes == quantised + rest + lora


def test_full_adamw_pure_bf16_gradients_and_states():
    arch = tiny("llama")
    n = 2 * 300 * 96 + 2 * (4 * 96 * 96 + 3 * 96 * 160 + 2 * 96) + 96
    est = estimate(arch, method="full", precision="bf16", optimizer="adamw")
    assert est.model.n_params == n
    assert est.memory.gradients_bytes == 2 * n
    assert est.memory.optimizer_states_bytes == 4 * n  # step tensors live on the CPU
    mixed = estimate(arch, method="full", precision="bf16-mixed", optimizer="adamw")
    assert mixed.memory.weights_bytes + mixed.memory.gradients_bytes == 8 * n
    assert mixed.memory.optimizer_states_bytes == 8 * n  # the ZeRO paper's 16 bytes/param


def test_llama_block_activations_by_hand():
    """One Llama block, pure bf16, sdpa, full finetuning, op by op."""
    arch = tiny("mistral")  # h=96, 4 heads of 24, 2 kv heads, ffn 160
    run = RunConfig(method="full", precision="bf16", batch_size=3, seq_len=50)
    plan = plan_method(arch, run)
    T, h, q, kv, f, e = 150, 96, 96, 48, 160, 2
    norm = 4 * T * h + 4 * T + e * T * h  # fp32 input, fp32 rstd, normalised cast for weight grad
    attn = e * T * h + e * T * (q + kv) + e * T * kv + e * T * q + 4 * 3 * 4 * 50
    #      qkv input, rotary q and k, v, output (= o_proj input), logsumexp (b·heads·s fp32)
    mlp = e * T * h + 3 * e * T * f + e * T * f  # input, gate/up/act outputs, down input
    state = BlockState(True, True, frozenset())
    got = sum(s.nbytes for s in block_saved(arch, run, plan, state, T))
    assert got == 2 * norm + attn + mlp


def test_eager_attention_keeps_the_s_squared_scores():
    arch = tiny("llama")
    sdpa = estimate(arch, attn="sdpa", batch_size=2, seq_len=64).memory.activations_bytes
    eager = estimate(arch, attn="eager", batch_size=2, seq_len=64).memory.activations_bytes
    L, b, heads, s = 2, 2, 4, 64
    # + fp32 softmax and its bf16 copy, − sdpa's output and logsumexp, + o_proj input copy
    scores = L * b * heads * s * s * (4 + 2)
    assert eager - sdpa == scores - L * b * heads * s * 4


def test_gradient_checkpointing_keeps_block_inputs_only():
    arch = tiny("llama")
    full = estimate(arch, batch_size=2, seq_len=64)
    ckpt = estimate(arch, batch_size=2, seq_len=64, grad_ckpt=True)
    outer = sum(i.bytes for i in full.memory.activations_outer)
    # the rotary's cos and sin (s × head_dim 24, bf16) are the checkpoints' keyword
    # argument then: held, but saved by no node
    tables = 2 * 64 * 24 * 2
    assert ckpt.memory.activations_bytes == outer - tables + 2 * (2 * 64 * 96 * 2)


def test_peak_is_a_phase_not_the_sum():
    est = estimate("llama2-7b", method="full", batch_size=1, seq_len=512)
    m = est.memory
    assert m.peak_allocated_bytes == m.at_peak.total
    assert m.peak_allocated_bytes < (
        m.weights_bytes
        + m.gradients_bytes
        + m.optimizer_states_bytes
        + m.activations_bytes
        + m.temporaries_bytes
    )
    assert m.peak_allocated_bytes == max(m.phases.forward, m.phases.backward, m.phases.optimizer)
    assert m.total_bytes == m.peak_allocated_bytes + m.overhead_bytes


def test_lora_peaks_in_backward_full_in_optimizer_step():
    assert estimate("llama2-7b", method="lora").memory.peak_phase == "backward"
    assert estimate("llama2-7b", method="full").memory.peak_phase == "optimizer"


@pytest.mark.parametrize(
    ("method", "extra"),
    [("full", {}), ("lora", {}), ("qlora", {}), ("dora", {}), ("freeze", {"trainable_layers": 4})],
)
def test_methods_order(method, extra):
    est = estimate("llama2-7b", method=method, **extra)
    full = estimate("llama2-7b", method="full")
    assert est.memory.peak_allocated_bytes <= full.memory.peak_allocated_bytes


def test_fit_verdict_and_headroom():
    est = estimate("llama2-7b", method="qlora", gpu="rtx4090")
    assert est.fits is True
    assert est.headroom_bytes == est.gpu["memory_bytes"] - est.memory.total_bytes
    big = estimate("llama2-70b", method="full", gpu="rtx4090")
    assert big.fits is False and big.headroom_bytes < 0


def test_overhead_override():
    est = estimate("gpt2", overhead="0")
    assert est.memory.overhead_bytes == 0
    assert est.memory.total_bytes == est.memory.peak_allocated_bytes
    assert estimate("gpt2", overhead="1GiB").memory.overhead_bytes == 2**30


def test_gradient_accumulation_keeps_gradients_through_forward():
    """From the second micro-batch on every gradient exists during forward and backward."""
    one = estimate("llama2-7b", method="full", seq_len=1024).memory
    two = estimate("llama2-7b", method="full", seq_len=1024, grad_accum=2).memory
    assert two.phases.forward - one.phases.forward == one.gradients_bytes
    assert two.phases.optimizer == one.phases.optimizer
    assert two.peak_allocated_bytes == two.at_peak.total
    assert two.at_peak.gradients == two.gradients_bytes


def test_bitfit_trains_the_biases_by_hand():
    """Qwen2.5-7B has biases on q, k and v only: 28 × (3584 + 512 + 512) parameters."""
    est = estimate("qwen2.5-7b", method="bitfit")
    assert est.model.n_trainable_params == 28 * (3584 + 512 + 512)
    # GPT-2: every linear bias and both LayerNorm biases per block, plus ln_f's bias
    h, L = 768, 12
    per_block = (3 * h) + h + (4 * h) + h + 2 * h
    assert estimate("gpt2", method="bitfit").model.n_trainable_params == L * per_block + h
