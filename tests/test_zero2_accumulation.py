"""DeepSpeed ZeRO-2 under gradient accumulation: the second 16-bit gradient partition.

Derived from microsoft/DeepSpeed@26d0dd92 (v0.11.0) deepspeed/runtime/zero/stage_1_and_2.py,
one GPU, contiguous_gradients and overlap_comm (Qwen-1's ds_config_zero2.json):

- ``backward`` (l.1922-1945) makes two ipg buffers of ``reduce_bucket_size`` 16-bit elements;
- ``reduce_independent_p_g_buckets_and_remove_grads`` (l.885-910) copies each arriving
  gradient into the current buffer and reduces the bucket only when the next gradient would
  overflow it (l.888); ``reduce_ipg_grads`` -> ``copy_grads_in_partition`` (l.1232-1266)
  then allocates ``grads_in_partition``, ψ 16-bit elements (the rank's trainable ones);
- the epilogue (l.712-755) reduces what is left, keeps views of the partition in
  ``averaged_gradients`` (micro-step 1) or adds into them, and sets every ``p.grad = None``.

So from micro-step 2 on, micro-step 1's partition (2ψ bytes, ftmem's gradients) and the
current one (2ψ more) are both alive from the first full bucket on; with ψ no larger than
a bucket the current one is made only in the epilogue, after autograd's backward.

Qwen-1 LoRA (r = 64 on c_attn, attn.c_proj, w1, w2, mlp.c_proj): ψ = L·r·(9h + 3f′), f′ the
MLP width (config intermediate_size / 2): 7B 32·64·(9·4096 + 3·11008) = 143,130,624;
14B 40·64·(9·5120 + 3·13696) = 223,150,080.
"""

from __future__ import annotations

from ftmem import estimate

PSI_7B = 32 * 64 * (9 * 4096 + 3 * 11008)
PSI_14B = 40 * 64 * (9 * 5120 + 3 * 13696)
QLORA = dict(
    method="qlora",
    quant="int4",
    gptq_kernel="cuda-old",
    compute_dtype="fp16",
    precision="fp16",
    adapter_dtype="fp16",
    lora_r=64,
    lora_alpha=16,
    lora_targets="q,k,v,o,gate,up,down",
    loss="shifted",
    seq_len=256,
    grad_ckpt=True,
    attn="flash",
    gpus=1,
    strategy="zero2",
    gpu="a100-80gb",
)


def _peak(model: str, bucket: int, accum: int) -> tuple[int, str]:
    m = estimate(model, bucket_elements=bucket, grad_accum=accum, **QLORA).memory
    # in the bytes the tensors ask for: the caching allocator's whole blocks
    # (at_peak.block_rounding, gpu/device.py) are a mechanism of their own
    return m.peak_allocated_bytes - m.at_peak.block_rounding, m.peak_phase


def test_the_sums_are_qwen1s_adapters():
    assert (PSI_7B, PSI_14B) == (143_130_624, 223_150_080)
    m = estimate("qwen1-7b", bucket_elements=200_000_000, grad_accum=8, **QLORA).memory
    assert m.gradients_bytes == 2 * PSI_7B


def test_a_partition_larger_than_the_bucket_holds_a_second_one_in_backward():
    """14B: 2e8 < ψ <= 2.3e8. The blocks' backward is the peak either way; between the two
    buckets the ipg buffers differ by 2 x 0.3e8 x 2 B and the smaller holds 2ψ more."""
    small, phase_small = _peak("qwen1-14b", 200_000_000, 8)
    large, phase_large = _peak("qwen1-14b", 230_000_000, 8)
    assert phase_small == phase_large == "backward"
    assert small - large == 2 * PSI_14B - 2 * 30_000_000 * 2


def test_one_micro_step_has_no_second_partition():
    small, _ = _peak("qwen1-14b", 200_000_000, 1)
    large, _ = _peak("qwen1-14b", 230_000_000, 1)
    assert small - large == -2 * 30_000_000 * 2


def test_a_partition_within_one_bucket_is_made_after_backward():
    """7B (Qwen's own 2e8 bucket): the second partition is made in the epilogue, with the
    activations freed: not in the blocks' backward. With a 1e8 bucket it is."""
    qwen, _ = _peak("qwen1-7b", 200_000_000, 8)
    small, phase = _peak("qwen1-7b", 100_000_000, 8)
    assert phase == "backward"
    assert small - qwen == 2 * PSI_7B - 2 * 100_000_000 * 2
