"""ColossalAI's sequence parallelism modes (split_gather, ring, all_to_all, ring_attn)
against hand derivations from ColossalAI's source (hpcaitech/ColossalAI 4f9953be335e;
file:line in src/ftmem/sequence_parallel.py). Every byte count below is written out from
the model's shapes: Llama-2-7B (h 4096, f 11008, 32 heads of 128, V 32000)."""

import json

import pytest

from ftmem import estimate
from ftmem.api import parallel_config, run_config
from ftmem.errors import InvalidInputError
from ftmem.ops.attention import Attention
from ftmem.ops.saved import Kind, Saved, Side
from ftmem.parallel import parallel_step
from ftmem.phases import find_peak
from ftmem.present.emit import emit_config
from ftmem.presets import get_model
from ftmem.sequence_parallel import SequenceSplit
from ftmem.sources import resolve_model

H, F, HEADS, D = 4096, 11008, 32, 128
E, FP32 = 2, 4  # bf16 activations; the norms' fp32 input


def _step(model="llama2-7b", gpus=8, **kw):
    kw.setdefault("strategy", "colossalai-zero1")
    keys = ("gpus", "strategy", "tp", "cp", "pp", "pp_chunks", "sp_mode")
    spread = {k: kw.pop(k) for k in keys if k in kw}
    spread["gpus"] = gpus
    kw.setdefault("precision", "bf16")
    run = run_config(method=kw.pop("method", "full"), **kw)
    return parallel_step(get_model(model), run, parallel_config(**spread))


def _llama_block(T: int, tp: int, split: bool) -> int:
    """One Llama block's saved bytes on a TP rank with ``T`` tokens per sequence batch:
    HF's RMSNorm keeps its fp32 input, an fp32 rstd per token and the bf16 normalised
    tensor; the q/k/v (gate/up) input; rotary q and k, v, attention's output and its fp32
    logsumexp; gate, up and SiLU·up outputs and the down input (f/tp wide). Under
    split_gather the norms hold T/tp tokens, and the q/k/v and gate/up inputs become a
    T/tp shard plus one whole gathered copy per linear."""
    t = T // tp if split else T
    norm = t * H * FP32 + t * FP32 + t * H * E
    heads, f = HEADS // tp, F // tp
    attention = 2 * T * heads * D * E + T * heads * D * E + T * heads * D * E + heads * T * FP32
    mlp = 3 * T * f * E + T * f * E
    if split:
        inputs = (t * H * E + 3 * T * H * E) + (t * H * E + 2 * T * H * E)
    else:
        inputs = 2 * T * H * E  # one shared input each for q/k/v and gate/up
    return 2 * norm + inputs + attention + mlp


@pytest.mark.parametrize("tp", [2, 4, 8])
@pytest.mark.parametrize("mode", ["split_gather", "ring"])
def test_split_gather_block_on_a_tp_rank(tp, mode):
    T = 1024  # (--attn flash: shardformer's ColoAttention; without, eager matmuls)
    with_sp = _step(tp=tp, sp_mode=mode, seq_len=T, attn="flash")
    without = _step(tp=tp, seq_len=T, attn="flash")
    assert without.parts.sizes.activations.per_block[0] == _llama_block(T, tp, split=False)
    assert with_sp.parts.sizes.activations.per_block[0] == _llama_block(T, tp, split=True)


def test_split_gather_costs_more_than_it_saves_at_tp2_on_llama():
    """Five whole gathered inputs (q, k, v, gate, up) against two shared ones without it:
    at tp 2 the halved norms do not pay for them (8,384,512 bytes more per block at 1,024
    tokens); at tp 8 they do."""
    T = 1024
    extra_inputs = 3 * T * H * E  # 5 gathered - 2 shared
    shards = 2 * (T // 2) * H * E  # the two inputs' shards
    saved_norms = 2 * (T // 2) * (H * FP32 + FP32 + H * E)
    assert extra_inputs + shards - saved_norms == 8_384_512
    assert _llama_block(T, 2, True) - _llama_block(T, 2, False) == 8_384_512
    assert _llama_block(T, 8, True) < _llama_block(T, 8, False)


def test_head_side_final_norm_on_its_shard_lm_head_input_whole():
    T, tp = 1024, 4
    above = _step(tp=tp, sp_mode="split_gather", seq_len=T).parts.sizes.activations.above
    plain = _step(tp=tp, seq_len=T).parts.sizes.activations.above
    final_norm = T * (H * FP32 + FP32 + H * E)
    assert plain - above == final_norm - final_norm // tp


def test_checkpointed_block_keeps_its_input_shard():
    """With checkpointing a block keeps its input: the hidden states split along the
    sequence (bf16, T/tp tokens)."""
    T, tp = 2048, 4
    kept = _step(tp=tp, sp_mode="split_gather", seq_len=T, grad_ckpt=True)
    assert set(kept.parts.sizes.activations.per_block) == {T // tp * H * E}


def test_qk_norms_stay_on_the_tp_split_heads():
    """Qwen3's q/k norms normalise the TP rank's heads over the whole sequence: unchanged,
    while the block's residual norms are split (Qwen3-8B: h 4096, 32 heads, 8 KV heads of
    128)."""
    T, tp = 512, 4
    q_rows, k_rows = T * 32 // tp, T * 8 // tp
    qk_norms = (q_rows + k_rows) * (D * FP32 + FP32) + (q_rows + k_rows) * D * E
    split = _step("qwen3-8b", tp=tp, sp_mode="split_gather", seq_len=T)
    items = {x.what: x.nbytes for x in split.parts.typical_block}
    assert sum(v for k, v in items.items() if k.startswith(("q norm", "k norm"))) == qk_norms
    assert items["input norm: fp32 input + rstd"] == T // tp * (H * FP32 + FP32)


def test_gpt2_fused_qkv_gathers_once():
    """GPT-2's c_attn (and c_fc) is one column-parallel linear: one gathered copy each
    (h 768, T 1024, tp 4)."""
    T, tp, h = 1024, 4, 768
    split = _step("gpt2", tp=tp, sp_mode="split_gather", seq_len=T)
    items = {x.what: x.nbytes for x in split.parts.typical_block}
    assert items["c_attn: gathered input"] == items["c_fc: gathered input"] == T * h * E
    assert items["sequence shard of q/k/v projections: input"] == T // tp * h * E
    assert items["down_proj: input"] == T * 4 * h // tp * E  # row-parallel: unchanged


def test_residual_dropout_is_split_attention_dropout_is_not():
    """A residual dropout mask lies on the split hidden states; attention's probability
    dropout (per TP-split head) and a feed-forward one (f/tp wide) do not."""
    items = [
        Saved("attention output dropout mask", 4000, Kind.RESIDUAL_DROPOUT, Side.ATTENTION),
        Saved("attention probabilities dropout mask", 8000, Kind.DROPOUT, Side.ATTENTION),
        Saved("feed-forward dropout mask", 16000, Kind.DROPOUT, Side.MLP),
    ]
    assert [x.nbytes for x in SequenceSplit(4).block(items)] == [1000, 8000, 16000]


def _ring_backward(t: int, cp: int, b: int = 1) -> int:
    """RingAttention's backward (attn.py at 4f9953be335e) on t local tokens, bf16, over
    cp ranks: its largest moment on any rank beside the saved tensors. k and v come
    repeated to every head (modeling/llama.py:551-552), so every buffer is q's size."""
    q = t * HEADS * D
    # kv_buffers (two stacked k/v), dq/dk/dv blocks, two fp32 stacked dk/dv (:999-1007)
    buffers = 2 * 2 * q * E + 3 * q * E + 2 * 2 * q * FP32
    dq = q * FP32  # the fp32 accumulator (:1066)

    def flash(rows: int) -> int:  # flash-attn v2.8.3 mha_varlen_bwd: dq_accum, softmax_d
        return (rows + 128 * b) * HEADS * (D + 1) * FP32

    lse = HEADS * (t // 2) * FP32  # softmax_lse[:, half_idx_back], all ranks but the last
    first = max(flash(t), dq + q * FP32) + lse  # step 0; then dq beside dk_block.float()
    end = dq + 3 * q * E + lse  # dq, dk, dv cast back (:1171)
    # i <= rank: k, v halves copied, the kernel on all of q (the middle ranks hold lse)
    inside = dq + q * E + flash(t) + (lse if cp > 2 else 0)
    # i > rank: q, out, dout halves copied, the kernel on half of q; from the second
    # such step the last step's halves too (rank 0 with cp > 2)
    outside = dq + max(3 * q // 2 * E + flash(t // 2), 3 * q * E if cp > 2 else 0) + lse
    return buffers + max(first, end, inside, outside)


@pytest.mark.parametrize("cp", [2, 4])
def test_ring_attention_backward_moment(cp):
    """RingAttention's backward moment in the block: its buffers (_ring_backward) beside
    what the fused kernel's moment holds besides its gradients: the attention output's
    gradient (bf16) and the residual stream's arriving, the block's gradients made by
    then (o_proj, gate/up/down, the post-attention norm; bf16), and the MLP side freed
    (post-attention norm's fp32 input, rstd, bf16 output; gate/up input; gate, up,
    SiLU·up and the down input)."""
    T = 4096
    t = T // cp
    arriving = t * HEADS * D * E + t * H * E
    made = (H * H + 3 * H * F + H) * E
    freed = (t * H * FP32 + t * FP32 + t * H * E) + t * H * E + 4 * t * F * E
    moment = _ring_backward(t, cp) + arriving + made - freed
    step = _step(cp=cp, sp_mode="ring_attn", seq_len=T)
    block = step.parts.sizes.block
    assert block.workspace == moment
    if cp == 4:
        assert moment == 367_218_688
    # the allocator replay takes as the block's gradients what the moment counts of
    # them above the MLP's own workspace
    a2a = _step(cp=cp, sp_mode="all_to_all", seq_len=T, attn="flash")  # (without: eager)
    mlp = a2a.parts.sizes.block.without_kernel
    assert block.workspace_grads == moment - max(mlp, moment - made)
    assert a2a.parts.sizes.activations == step.parts.sizes.activations


def test_ring_attention_repeats_grouped_keys():
    """Llama-3.1-8B (32 heads, 8 kv heads of 128): the forward's two k/v buffers and two
    blocks' outputs are at every query head, repeat_kv having run before the ring."""
    T, cp = 4096, 4
    q = T // cp * 32 * 128
    step = _step("llama3.1-8b", cp=cp, sp_mode="ring_attn", seq_len=T)
    assert step.parts.sizes.block.forward == 2 * 2 * q * E + 2 * q * E == 50_331_648


def test_cp_alone_is_all_to_all_under_colossalai():
    est = estimate(
        "llama2-7b", method="full", precision="bf16", gpus=8, strategy="colossalai-zero1", cp=2
    )
    assert est.parallel.sequence_parallel_mode == "all_to_all"
    plain = estimate("llama2-7b", method="full", precision="bf16", gpus=8, strategy="zero1", cp=2)
    assert plain.parallel.sequence_parallel_mode is None


def test_split_gather_peak_with_long_sequences_and_checkpointing():
    """Activations dominate at 8 × 4,096 tokens with checkpointing: each of the 32 kept
    block inputs shrinks to a quarter (8·4096/4 tokens × h × 2 bytes)."""
    kw = dict(tp=4, seq_len=4096, batch_size=8, grad_ckpt=True, attn="flash")
    with_sp = _step(sp_mode="split_gather", **kw)
    without = _step(**kw)
    kept = 8 * 4096 * H * E
    assert sum(without.parts.sizes.activations.per_block) == 32 * kept
    assert sum(with_sp.parts.sizes.activations.per_block) == 32 * kept // 4
    assert max(with_sp.peaks) < max(without.peaks)


@pytest.mark.parametrize(
    ("model", "kw", "words"),
    [
        ("llama2-7b", {"sp_mode": "split_gather"}, "add --tp 2 or more"),
        ("llama2-7b", {"sp_mode": "split_gather", "tp": 2, "cp": 2}, "drop --cp"),
        ("llama2-7b", {"sp_mode": "ring_attn", "tp": 2}, "add --cp 2 or more"),
        ("llama2-7b", {"sp_mode": "split_gather", "tp": 2, "strategy": "zero1"}, "colossalai-*"),
        (
            "llama2-7b",
            {"sp_mode": "ring", "tp": 2, "strategy": "colossalai-gemini"},
            "only shardformer's default",
        ),
        ("mistral-7b", {"sp_mode": "split_gather", "tp": 2}, "ignores sequence parallelism"),
        ("mistral-7b", {"cp": 2}, "ignores sequence parallelism"),
        ("qwen2-7b", {"sp_mode": "ring_attn", "cp": 2}, "not ring_attn"),
        # modeling/command.py: ring_attn splits no sequence and runs ColoAttention (:397-399,
        # :499-506), RingAttention never
        ("command-r-08-2024", {"sp_mode": "ring_attn", "cp": 2}, "not ring_attn"),
        # modeling/llama.py:153 `attention_mask.bool()`: a flattened batch gives no mask
        ("llama2-7b", {"sp_mode": "ring_attn", "cp": 2, "padding": "packed"}, "reads each batch"),
        ("gpt2", {"sp_mode": "all_to_all", "cp": 2}, "not all_to_all"),
        ("gemma-7b", {"tp": 2}, "no policy for"),
        ("gemma-7b", {"strategy": "colossalai-3d"}, "no policy for"),
        ("llama2-7b", {"sp_mode": "split_gather", "tp": 4, "seq_len": 1022}, "multiple of 4"),
    ],
)
def test_refusals(model, kw, words):
    kw.setdefault("strategy", "colossalai-zero1")
    with pytest.raises((InvalidInputError, ValueError), match=words):
        estimate(model, method="full", precision="bf16", gpus=8, **kw)


def test_low_level_zero_alone_needs_no_policy():
    """LowLevelZeroPlugin and GeminiPlugin without --tp wrap the model as it is."""
    for strategy in ("colossalai-zero2", "colossalai-gemini"):
        est = estimate("gemma-7b", method="full", precision="bf16", gpus=8, strategy=strategy)
        assert est.memory.peak_allocated_bytes > 0


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (
            {"strategy": "colossalai-zero1", "tp": 2, "sp_mode": "ring"},
            {"enable_sequence_parallelism": True, "sequence_parallelism_mode": "ring"},
        ),
        (
            {"strategy": "colossalai-3d", "cp": 4, "sp_mode": "ring_attn"},
            {"sp_size": 4, "sequence_parallelism_mode": "ring_attn"},
        ),
        (
            {"strategy": "colossalai-gemini", "tp": 2, "sp_mode": "split_gather"},
            {"tp_size": 2, "enable_sequence_parallelism": True},
        ),
        # --attn flash: shardformer's own attention, which the estimate assumed
        # (Architecture.kv_repeated), switched on by the plugin's enable_flash_attention
        ({"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, {"enable_flash_attention": True}),
        (
            {"strategy": "colossalai-gemini", "tp": 2, "attn": "flash"},
            {"enable_flash_attention": True},
        ),
    ],
)
def test_emit_sequence_parallelism(kw, expected):
    from tests.test_colossalai import PLUGIN_ARGUMENTS, _plugin_call

    est = estimate("llama2-7b", method="full", precision="bf16", gpus=4, seq_len=1024, **kw)
    name, args = _plugin_call(emit_config(est, "colossalai"))
    assert set(args) <= PLUGIN_ARGUMENTS[name]
    assert expected.items() <= args.items()


def test_emit_keeps_transformers_attention_without_flash():
    """Without --attn flash the plugin leaves enable_flash_attention at its default (False)
    and the estimate keeps transformers' attention (tp 2, no sequence parallelism)."""
    from tests.test_colossalai import _plugin_call

    est = estimate(
        "llama3.1-8b", method="full", precision="bf16", gpus=4, strategy="colossalai-3d", tp=2
    )
    _, args = _plugin_call(emit_config(est, "colossalai"))
    assert "enable_flash_attention" not in args


def test_plan_offers_split_gather_to_a_tensor_parallel_colossalai_run():
    """32,768 tokens on 16 × RTX 4090, tp 4, checkpointed: the kept block inputs are
    32 × 32,768 × 4096 × 2 bytes = 8 GiB per GPU without sequence parallelism, 2 GiB with
    it; the first way to fit uses it."""
    from ftmem.api import plan as make_plan

    kw = dict(
        gpus=16, strategy="colossalai-zero2", tp=4, seq_len=32768, grad_ckpt=True, attn="flash"
    )
    plan = make_plan("llama3-8b", method="full", precision="bf16", gpu="rtx4090", **kw)
    assert not plan.baseline.fits
    first = plan.fitting[0]
    assert ("sp_mode", "split_gather") in [u for c in first.changes for u in c.updates]
    assert first.estimate.parallel.sequence_parallel_mode == "split_gather"
    kept = 32 * 32768 * H * E
    assert kept == 8 * 2**30


# Measured: what one TP rank's autograd graph keeps per decoder block (bytes), ColossalAI
# 0.5.0 shardformer (pip; its shardformer/ matches hpcaitech/ColossalAI 4f9953be335e but for
# layer/loss.py) on transformers 4.51.3, torch 2.13.0+cpu, two gloo ranks on CPU
# (torchrun --nproc_per_node 2). A tiny LlamaForCausalLM (h 256, f 688, 2 layers, V 1000),
# bf16, batch 1, sharded by ShardFormer(ShardConfig(enable_tensor_parallelism=True,
# enable_sequence_parallelism=..., sequence_parallelism_mode=...)), model.train(), one
# forward with labels. Every tensor saved for backward (saved_tensors_hooks, still alive
# at the end of the forward) plus every tensor attribute of a custom Function's ctx
# reachable from loss.grad_fn (ctx.gathered_input, shardformer/layer/_operation.py:562),
# parameters left out, one count per storage, tagged by the module that ran it; the rotary
# cos/sin shared by the blocks counted outside them. Both ranks measured the same. "flash":
# the flash path (enable_flash_attention=True, ColoAttention.attention, which needs CUDA,
# replaced by torch's scaled_dot_product_attention: q, k, v, output and logsumexp kept);
# "eager": enable_flash_attention=False (ColossalAI's eager attention under sequence
# parallelism, shardformer/modeling/llama.py:569-585; HF's eager path without it).
# (heads, kv heads, seq len, attn, sp mode) -> bytes per block on one of the two ranks
MEASURED_COLOSSALAI_BLOCK = {
    (4, 4, 128, "flash", None): 1_009_664,
    (4, 4, 128, "flash", "split_gather"): 1_074_688,
    (4, 4, 128, "flash", "ring"): 1_074_688,
    (4, 4, 128, "eager", None): 1_205_248,
    (4, 4, 128, "eager", "split_gather"): 1_270_272,
    (4, 4, 64, "flash", None): 504_832,
    (4, 4, 64, "flash", "split_gather"): 537_344,
    (4, 4, 64, "eager", None): 553_472,
    (4, 4, 64, "eager", "split_gather"): 585_984,
    (4, 2, 128, "flash", None): 976_896,
    (4, 2, 128, "flash", "split_gather"): 1_041_920,
    (8, 4, 128, "eager", None): 1_401_856,
}
# One KV head per TP rank, eager: repeat_kv's reshape of the stride-0 expand is a view
# (transformers modeling_llama.py repeat_kv), so k and v keep one head, not a copy per
# query head (ftmem counted the copies, 2 · 128 tokens · (128 − 64) · 2 bytes = 32,768 over,
# until this measurement)
MEASURED_COLOSSALAI_BLOCK |= {
    (4, 2, 128, "eager", None): 1_172_480,
    (4, 2, 128, "eager", "split_gather"): 1_237_504,
}


def _tiny_llama(tmp_path, heads: int, kv_heads: int):
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return resolve_model(str(tmp_path))


def _tiny_block(tmp_path, heads, kv_heads, T, attn, mode) -> int:
    arch = _tiny_llama(tmp_path, heads, kv_heads)
    run = run_config(method="full", precision="bf16", seq_len=T, batch_size=1, attn=attn)
    par = parallel_config(gpus=2, tp=2, strategy="colossalai-3d", sp_mode=mode)
    return parallel_step(arch, run, par).parts.sizes.activations.per_block[0]


@pytest.mark.parametrize(("key", "measured"), MEASURED_COLOSSALAI_BLOCK.items())
def test_block_matches_colossalai_measurement(tmp_path, key, measured):
    assert _tiny_block(tmp_path, *key) == measured


def _shardformer_attention_core_saved(heads: int, kv_heads: int, head_dim: int, T: int) -> int:
    """Bytes autograd keeps for ColossalAI's shardformer attention core on one rank,
    measured on the CPU: the q, k and v projections' outputs (leaves here) through
    get_llama_flash_attention_forward as modeling/llama.py at 4f9953be335e writes it
    (:527-529 view and transpose, :542 apply_rotary_pos_emb, :551-552 repeat_kv; the
    transformers functions it imports), the kernel, o_proj's matmul. ColoAttention needs
    CUDA: torch's sdpa stands in, as in MEASURED_COLOSSALAI_BLOCK (both keep q, k, v, the
    output and the log-sum-exp: flash-attn's FlashAttnFunc.forward save_for_backward)."""
    import torch
    import torch.nn.functional as F
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    from ftmem.measure.saved import SavedRegistry, storage_key

    b, s, bf16 = 1, T, torch.bfloat16
    torch.manual_seed(0)
    qp = torch.randn(b, s, heads * head_dim, dtype=bf16, requires_grad=True)
    kp = torch.randn(b, s, kv_heads * head_dim, dtype=bf16, requires_grad=True)
    vp = torch.randn(b, s, kv_heads * head_dim, dtype=bf16, requires_grad=True)
    w_o = torch.randn(heads * head_dim, heads * head_dim, dtype=bf16, requires_grad=True)
    cos, sin = torch.randn(2, b, s, head_dim, dtype=bf16)  # the model's, shared by the blocks
    exclude = {storage_key(t)[0] for t in (qp, kp, vp, w_o, cos)}  # type: ignore[index]
    reg = SavedRegistry(exclude)
    with torch.autograd.graph.saved_tensors_hooks(reg.pack, reg.unpack):
        q = qp.view(b, s, -1, head_dim).transpose(1, 2)
        k = kp.view(b, s, -1, head_dim).transpose(1, 2)
        v = vp.view(b, s, -1, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k, v = repeat_kv(k, heads // kv_heads), repeat_kv(v, heads // kv_heads)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = out.transpose(1, 2).contiguous().reshape(b, s, -1) @ w_o.t()
    assert y.requires_grad
    return reg.nbytes


def test_shardformer_attention_keeps_keys_and_values_at_every_query_head(tmp_path):
    """Llama, 8 heads and 4 kv heads of 32, over tp 2 with sequence parallelism: each
    rank's replaced LlamaAttention.forward repeats its 2 kv heads to its 4 query heads
    before the kernel (policies/llama.py:75-82, modeling/llama.py:551-552), which keeps
    them: rotary q, the repeated k and v, the output (o_proj's input: sdpa's output is
    laid out (b, s, heads, d), so the transpose's contiguous() is a view) and the fp32
    log-sum-exp. The kernel's k and v gradients are at every query head too."""
    T, heads, kv_heads, d = 128, 4, 2, 32
    measured = _shardformer_attention_core_saved(heads, kv_heads, d, T)
    q, kv = heads * d, kv_heads * d
    assert measured == 4 * T * q * E + heads * T * FP32
    arch = _tiny_llama(tmp_path, 2 * heads, 2 * kv_heads)
    run = run_config(method="full", precision="bf16", seq_len=T, batch_size=1, attn="flash")
    par = parallel_config(gpus=2, tp=2, strategy="colossalai-3d", sp_mode="split_gather")
    step = parallel_step(arch, run, par)
    assert step.arch.kv_repeated
    items = {x.what: x.nbytes for x in step.parts.typical_block}
    core = ("rotary q and k (k at every head)", "v expanded to every head")
    modelled = sum(items[name] for name in core) + items["attention output + logsumexp"]
    assert modelled == measured
    # the kernel's gradients: q's, and k's and v's at the width the kernel was given
    # (not CUDA flash's per-head ones beside their kv-sized sums, q + kv wide)
    grads = Attention.kernel_gradients(step.arch, step.run, E, T)
    assert grads == T * q * E + 2 * T * q * E
    # (a GQA-aware kernel instead: neither repeated nor ColoAttention's)
    grouped = step.arch.model_copy(update={"kv_repeated": False, "coloattention_mask_positions": 0})
    assert Attention.kernel_gradients(grouped, step.run, E, T) == T * q * E + 2 * T * (q + kv) * E


def test_ring_attention_saves_grouped_keys_at_every_head():
    """Llama-3.1-8B (32 heads, 8 kv heads of 128) under ring_attn over 4 ranks at 32k:
    RingAttention keeps the repeated k and v (layer/attn.py:925-928) of each rank's
    8,192 tokens; all_to_all's kernel (8 heads, 2 kv heads of all 32k) the same bytes."""
    T, cp = 32768, 4
    ring = _step("llama3.1-8b", cp=cp, sp_mode="ring_attn", seq_len=T, attn="flash")
    t, q, kv = T // cp, 32 * 128, 8 * 128
    block = ring.parts.sizes.activations.per_block[0]
    items = {x.what: x.nbytes for x in ring.parts.typical_block}
    assert items["rotary q and k (k at every head)"] == 2 * t * q * E
    assert items["v expanded to every head"] == t * q * E
    a2a = _step("llama3.1-8b", cp=cp, sp_mode="all_to_all", seq_len=T, attn="flash")
    assert a2a.parts.sizes.activations.per_block[0] == block  # 8 heads, 2 kv heads of all T
    # against grouped ones (rotary q and k q + kv wide, v kv wide): 2·t·(q − kv)·2 more
    assert 2 * t * (q - kv) * E == 100_663_296


# Whether each rank's kernel gets keys and values copied per head, from the policies at
# 4f9953be335e: the forward replaced (policies/llama.py:75, qwen2.py:285, qwen3.py:285,
# command.py:79-86 under flash or sp; mixtral.py:70 under sp only, :278-280 turning
# flash off; mistral.py:241 under flash only), by a plugin that runs shardformer
# (HybridParallelPlugin; GeminiPlugin with tp, gemini_plugin.py:675-677; not
# LowLevelZeroPlugin), with more than one kv head and fewer than the heads per rank
@pytest.mark.parametrize(
    ("model", "kw", "repeated"),
    [
        ("llama3.1-8b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, True),
        ("llama3.1-8b", {"strategy": "colossalai-3d", "tp": 2, "attn": "sdpa"}, False),
        ("llama3.1-8b", {"strategy": "colossalai-zero2", "attn": "flash"}, False),
        ("llama3.1-8b", {"strategy": "colossalai-gemini", "attn": "flash"}, False),
        ("llama3.1-8b", {"strategy": "colossalai-gemini", "tp": 2, "attn": "flash"}, True),
        ("llama3.1-8b", {"sp_mode": "split_gather", "tp": 2}, True),
        ("llama3.1-8b", {"strategy": "colossalai-3d", "tp": 8, "attn": "flash"}, False),  # 1 kv
        # RingAttention's contiguous() copies one kv head's stride-0 view (attn.py:570)
        ("llama3.1-8b", {"tp": 8, "cp": 2, "sp_mode": "ring_attn", "gpus": 16}, True),
        ("llama2-7b", {"sp_mode": "split_gather", "tp": 2, "attn": "flash"}, False),  # MHA
        ("qwen2-7b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, True),
        ("qwen2-7b", {"strategy": "colossalai-3d", "tp": 4, "attn": "flash"}, False),  # 1 kv
        ("qwen2-7b", {"cp": 2, "sp_mode": "all_to_all"}, True),
        ("qwen2-7b", {"cp": 4, "sp_mode": "all_to_all"}, False),  # 4 kv heads over 4 ranks
        ("qwen3-8b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, True),
        ("mixtral-8x7b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, False),
        ("mixtral-8x7b", {"sp_mode": "split_gather", "tp": 2}, True),
        ("mistral-7b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, True),
        ("mistral-7b", {"strategy": "colossalai-3d", "tp": 2, "attn": "sdpa"}, False),
        ("command-r-08-2024", {"sp_mode": "split_gather", "tp": 2}, True),
        ("command-r-08-2024", {"strategy": "colossalai-3d", "tp": 2, "attn": "sdpa"}, False),
    ],
)
def test_which_shardformer_runs_repeat_keys_and_values(model, kw, repeated):
    assert _step(model, **kw).arch.kv_repeated is repeated


@pytest.mark.parametrize(("T", "measured"), [(128, 1_270_272), (64, 585_984)])
def test_sequence_parallelism_without_flash_runs_eager_attention(tmp_path, T, measured):
    """Without enable_flash_attention the replaced LlamaAttention.forward computes the
    scores with eager matmuls (modeling/llama.py:568-585) whatever attn_implementation
    the model was loaded with: --attn sdpa under split_gather keeps what the measured
    eager rows keep (MEASURED_COLOSSALAI_BLOCK, 4 heads, split_gather; the causal mask
    transformers builds or not is added to the scores, which keeps neither)."""
    assert MEASURED_COLOSSALAI_BLOCK[(4, 4, T, "eager", "split_gather")] == measured
    assert _tiny_block(tmp_path, 4, 4, T, "sdpa", "split_gather") == measured
    assert _tiny_block(tmp_path, 4, 4, T, "sdpa", None) < measured  # tp alone: sdpa


@pytest.mark.parametrize(
    ("model", "kw", "eager"),
    [
        ("llama3.1-8b", {"sp_mode": "split_gather", "tp": 2}, True),
        ("llama3.1-8b", {"sp_mode": "split_gather", "tp": 2, "attn": "flash"}, False),
        ("llama3.1-8b", {"sp_mode": "all_to_all", "cp": 2}, True),
        # ring_attn switches flash attention on (hybrid_parallel_plugin.py:1080-1081)
        ("llama3.1-8b", {"sp_mode": "ring_attn", "cp": 2}, False),
        ("llama3.1-8b", {"strategy": "colossalai-3d", "tp": 2}, False),
        ("qwen2-7b", {"sp_mode": "split_gather", "tp": 2}, True),
        ("qwen3-8b", {"sp_mode": "all_to_all", "cp": 2}, True),
        # Mixtral's forward calls transformers' attention function (modeling/mixtral.py
        # l.679-687); Command's forces ColoAttention (modeling/command.py:395)
        ("mixtral-8x7b", {"sp_mode": "split_gather", "tp": 2}, False),
        ("command-r-08-2024", {"sp_mode": "split_gather", "tp": 2}, False),
    ],
)
def test_which_shardformer_runs_eager_attention(model, kw, eager):
    step = _step(model, **kw)
    assert (step.run.attn == "eager") is eager


def _prepare_causal_attn_mask(b: int, s: int, dtype) -> object:
    """ColoAttention.prepare_attn_kwargs's causal branch without padding and its
    invert_mask, transcribed (hpcaitech/ColossalAI 4f9953be335e, layer/attn.py l.40-50,
    176-187, 223-225): the tensor the model forward hands every layer."""
    import torch

    attention_mask = torch.ones(s, s, dtype=dtype)
    attention_mask.tril_(diagonal=0)
    attention_mask = attention_mask.expand(b, s, s)
    inverted = 1.0 - attention_mask
    inverted = inverted.masked_fill(inverted.bool(), torch.finfo(dtype).min)
    return inverted.unsqueeze(1)


def test_coloattention_mask_is_b_s_s_in_the_compute_dtype():
    """Measured on the CPU (ftmem's dispatch tracker): the mask left alive is one new
    (b, 1, s, s) tensor in the hidden states' dtype; while it is built the tril'd ones
    (s²·e), ``1.0 - mask`` (b·s²·e), its bool (b·s²) and masked_fill's output (b·s²·e)
    are alive at once. ftmem counts what is kept, for the positions the rank's model
    forward builds it over."""
    import torch

    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.sequence_parallel import coloattention_mask_bytes

    b, s = 3, 40
    with LiveBytesTracker() as tracker:
        mask = _prepare_causal_attn_mask(b, s, torch.bfloat16)
        held = tracker.current
    assert tuple(mask.shape) == (b, 1, s, s)  # type: ignore[attr-defined]
    assert held == b * s * s * E
    assert tracker.peak == s * s * E + 2 * b * s * s * E + b * s * s
    arch = get_model("llama3.1-8b").model_copy(update={"coloattention_mask_positions": s})
    assert coloattention_mask_bytes(arch, b, E) == held
    # MEMORY_BOUND (layer/attn.py:22): s²·e of 10 GB or more builds an empty tensor
    big = arch.model_copy(update={"coloattention_mask_positions": 70_711})  # 70711² · 2 > 10¹⁰
    assert coloattention_mask_bytes(big, b, E) == 0
    assert (
        coloattention_mask_bytes(arch.model_copy(update={"coloattention_mask_positions": 0}), b, E)
        == 0
    )


MASK = "ColoAttention's causal mask (kept by checkpointing)"


@pytest.mark.parametrize(
    ("model", "kw", "built"),
    [
        # llama: the model forward (policies/llama.py:84-94) builds it under flash
        ("llama3.1-8b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, True),
        ("llama3.1-8b", {"strategy": "colossalai-3d", "tp": 2}, False),
        # over the whole sequence: the input ids before the split (modeling/llama.py:77-82)
        ("llama3.1-8b", {"sp_mode": "split_gather", "tp": 2, "attn": "flash"}, True),
        ("llama3.1-8b", {"sp_mode": "all_to_all", "cp": 4, "attn": "flash"}, True),
        # ring_attn prepares a varlen batch instead (modeling/llama.py:130-131)
        ("llama3.1-8b", {"sp_mode": "ring_attn", "cp": 4, "attn": "flash"}, False),
        # LowLevelZeroPlugin runs no shardformer
        ("llama3.1-8b", {"strategy": "colossalai-zero2", "attn": "flash"}, False),
        ("qwen2-7b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, True),
        ("qwen3-8b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, True),
        ("mistral-7b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, True),
        # Command's model forward forces flash on under sp (modeling/command.py:483-492)
        ("command-r-08-2024", {"sp_mode": "split_gather", "tp": 2}, True),
        # Mixtral's keeps transformers' mask (modeling/mixtral.py: no prepare_attn_kwargs)
        ("mixtral-8x7b", {"strategy": "colossalai-3d", "tp": 2, "attn": "flash"}, False),
    ],
)
def test_which_shardformer_builds_coloattention_mask(model, kw, built):
    b, s = 2, 4096
    step = _step(model, batch_size=b, seq_len=s, grad_ckpt=True, **kw)
    items = {x.what: x.nbytes for x in step.parts.outer_items}
    assert items.get(MASK, 0) == (b * s * s * E if built else 0)


def test_coloattention_mask_needs_checkpointing_and_reaches_every_stage():
    # without checkpointing nothing keeps the attention kwargs past the model forward
    kw = {"strategy": "colossalai-3d", "tp": 2, "attn": "flash", "batch_size": 1}
    plain = _step("llama3.1-8b", seq_len=32768, **kw)
    assert MASK not in {x.what for x in plain.parts.outer_items}
    # 2 GiB per sequence at 32k, held below the blocks on every pipeline stage (each
    # stage's model forward builds its own, modeling/llama.py:98-99 and 132-140)
    staged = _step("llama3.1-8b", seq_len=32768, grad_ckpt=True, pp=2, **kw)
    mask = 32768 * 32768 * E
    assert mask == 2 * 2**30
    first, later = (r.sizes.activations.below for r in staged.ranks)
    # beside the rotary cos and sin every stage's model forward computes (llama.py:181;
    # both s × head_dim in bf16, the whole sequence's positions: llama.py:98-99)
    assert later == mask + 2 * 32768 * D * E
    assert first - mask == plain.ranks[0].sizes.activations.below


def _ring_attn_first_stage_forward(x, b: int, s: int, checkpointed: bool, reentrant: bool):
    """ring_attn's first pipeline stage, its model forward transcribed down to what the
    mask meets (hpcaitech/ColossalAI 4f9953be335e): prepare_attn_kwargs's causal branch
    without padding and with ``invert=False`` (layer/attn.py l.178-185, 223-225;
    modeling/llama.py l.132-140), the kwargs dict every layer, checkpointed or not, is
    given (modeling/llama.py l.196-210), and layers that never read it, as
    RingAttention.attention takes it in ``**kwargs`` (layer/attn.py l.498-513). Returns
    the output and a weak reference to the mask."""
    import weakref

    import torch
    from torch.utils.checkpoint import checkpoint

    attention_mask = torch.ones(s, s, dtype=x.dtype)
    attention_mask.tril_(diagonal=0)
    attention_mask = attention_mask.expand(b, s, s)
    attn_kwargs = {"attention_mask": attention_mask, "attention_mask_type": "CAUSAL"}

    def layer(hidden, kwargs):
        return torch.sin(hidden)  # keeps its input, as a layer does

    hidden = x
    for _ in range(2):
        if checkpointed:
            hidden = checkpoint(layer, hidden, attn_kwargs, use_reentrant=reentrant)
        else:
            hidden = layer(hidden, attn_kwargs)
    return hidden, weakref.ref(attention_mask)


def test_ring_attn_first_stage_mask_is_one_s_s_storage():
    """Measured on the CPU (ftmem's dispatch tracker): left uninverted the mask is
    ``expand``'s (b, s, s) view of the tril'd ones, one s²·e storage whatever b, and
    nothing more is made while it is built."""
    import torch

    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.sequence_parallel import coloattention_mask_bytes

    b, s = 3, 40
    with LiveBytesTracker() as tracker:
        mask = torch.ones(s, s, dtype=torch.bfloat16)
        mask.tril_(diagonal=0)
        mask = mask.expand(b, s, s)
        held = tracker.current
    assert tuple(mask.shape) == (b, s, s)
    assert held == tracker.peak == s * s * E
    arch = get_model("llama3.1-8b").model_copy(
        update={"coloattention_mask_positions": s, "coloattention_mask_uninverted": True}
    )
    assert coloattention_mask_bytes(arch, b, E) == held
    # and the estimate's first stage asks for the same at these sizes
    step = _step(
        "llama3.1-8b", sp_mode="ring_attn", cp=2, pp=2, seq_len=s, batch_size=b, grad_ckpt=True
    )
    assert {x.what: x.nbytes for x in step.parts.outer_items}[MASK] == held
    # the inverted one of the other modes is b of them (the measured test above)
    inverted = arch.model_copy(update={"coloattention_mask_uninverted": False})
    assert coloattention_mask_bytes(inverted, b, E) == b * held
    # MEMORY_BOUND (layer/attn.py:22, 181) is s²·e alike: 8 GiB at 64k for any batch,
    # an empty tensor from 70,711 positions (70711² · 2 > 10¹⁰)
    at_64k = arch.model_copy(update={"coloattention_mask_positions": 65536})
    assert coloattention_mask_bytes(at_64k, 4, E) == 8 * 2**30
    big = arch.model_copy(update={"coloattention_mask_positions": 70_711})
    assert coloattention_mask_bytes(big, 4, E) == 0


@pytest.mark.parametrize(
    ("checkpointed", "reentrant"), [(False, False), (True, False), (True, True)]
)
def test_ring_attn_mask_is_kept_by_the_checkpoints_only(checkpointed, reentrant):
    """Measured on the CPU: the kwargs dict given to checkpointed layers (either
    torch.utils.checkpoint; transformers' gradient_checkpointing_enable picks one) keeps
    the mask alive after the model forward returns, until the backward has run and the
    stage's output is dropped; without checkpointing it dies with the forward's frame."""
    import torch

    b, s = 2, 16
    x = torch.randn(b, s // 2, 8, dtype=torch.bfloat16, requires_grad=True)
    out, mask = _ring_attn_first_stage_forward(x, b, s, checkpointed, reentrant)
    assert (mask() is not None) is checkpointed
    out.sum().backward()
    del out
    assert mask() is None


def test_ring_attn_mask_on_the_first_pipeline_stage_only():
    """ring_attn with a pipeline: the first stage's model forward builds the uninverted
    mask (modeling/llama.py:132-140; ring_attn turns flash attention on itself,
    hybrid_parallel_plugin.py:1080-1081, so whatever --attn), s²·2 bytes for the batch:
    2 GiB at 32k with 2 sequences, not 4. Later stages, and a run without a pipeline,
    prepare a varlen batch instead (modeling/llama.py:129-131): nothing."""
    b, s = 2, 32768
    kw = {"sp_mode": "ring_attn", "cp": 2, "batch_size": b, "seq_len": s}
    mask = s * s * E
    assert mask == 2 * 2**30
    plain = _step("llama3.1-8b", pp=2, **kw)
    assert MASK not in {x.what for x in plain.parts.outer_items}
    for attn in ("flash", "sdpa"):
        staged = _step("llama3.1-8b", pp=2, grad_ckpt=True, attn=attn, **kw)
        items = {x.what: x.nbytes for x in staged.parts.outer_items}
        assert items[MASK] == mask
        first, later = (r.sizes.activations.below for r in staged.ranks)
        assert first - mask == plain.ranks[0].sizes.activations.below
        # (the later stage's rotary cos and sin alone, checkpointed or saved: llama.py:181,
        # over the rank's zigzag share of the positions)
        assert later == plain.ranks[1].sizes.activations.below == 2 * (s // 2) * D * E
        # its attention is RingAttention's: the k/v gradients stay those of the repeat
        assert staged.arch.coloattention_mask_uninverted and staged.arch.kv_repeated
    alone = _step("llama3.1-8b", grad_ckpt=True, attn="flash", **kw)
    assert MASK not in {x.what for x in alone.parts.outer_items}


@pytest.mark.parametrize(
    ("padding", "b", "kept"),
    [("none", 2, True), ("max-length", 1, False), ("longest", 2, False), ("longest", 1, True)],
)
def test_ring_attn_mask_not_kept_for_batches_with_pad_tokens(padding, b, kept):
    """A batch with pad tokens has the first stage's kwargs replaced by a varlen batch's
    before the first layer (modeling/llama.py:153-156): the mask is built, then dropped.
    One sequence padded to its own longest has no pad tokens (profiles.pads_batches)."""
    s = 4096
    kw = {"sp_mode": "ring_attn", "cp": 2, "pp": 2, "seq_len": s, "grad_ckpt": True}
    staged = _step("llama3.1-8b", batch_size=b, padding=padding, **kw)
    items = {x.what: x.nbytes for x in staged.parts.outer_items}
    assert items.get(MASK, 0) == (s * s * E if kept else 0)


def _first_chunk_forwards_in_flight(pp: int, v: int, m: int) -> int:
    """ColossalAI's interleaved schedule on the first device, replayed
    (pipeline/schedule/interleaved_pp.py at 4f9953be335e): warmup forwards
    min(2(pp − 1) + (v − 1)·pp, m·v) (l.435-441), then one forward and one backward in
    turn (l.486-503); forward and backward i run chunk ``(i mod pp·v) // pp`` and
    ``v − 1 −`` that (get_model_chunk_id, l.118-136). The most chunk-0 forwards whose
    backward has not run."""
    n = m * v
    warmup = min(2 * (pp - 1) + (v - 1) * pp, n)
    group = pp * v
    alive = most = 0
    for i in range(warmup):
        alive += (i % group) // pp == 0
        most = max(most, alive)
    for i in range(n - warmup):
        alive += ((warmup + i) % group) // pp == 0
        most = max(most, alive)
        alive -= v - 1 - (i % group) // pp == 0
    return most


@pytest.mark.parametrize(("pp", "v", "m"), [(2, 1, 8), (2, 2, 8), (2, 2, 2), (4, 2, 8), (2, 4, 8)])
def test_ring_attn_masks_in_flight_follow_the_first_chunk(pp, v, m):
    """Each micro-batch in flight through the first stage keeps its own mask. 1F1B: stage 0
    holds min(pp, m) micro-batches. Interleaved, only the first device's chunk 0 is the
    first stage (pipeline/stage_manager.py:107-122): its forwards in flight, replayed
    above, not all of the device's chunk forwards. A batch with pad tokens holds no mask
    and stands in for the run without one."""
    s = 4096
    mask = s * s * E
    kw = {"sp_mode": "ring_attn", "cp": 2, "pp": pp, "seq_len": s, "grad_ckpt": True}
    kw.update({"pp_chunks": v, "grad_accum": m, "batch_size": 1, "attn": "flash"})
    masked, padded = (
        _step("llama3.1-8b", padding=p, **kw).ranks[0] for p in ("none", "max-length")
    )
    masks = min(pp, m) if v == 1 else _first_chunk_forwards_in_flight(pp, v, m)
    assert masked.sizes.activations.below - padded.sizes.activations.below == mask
    assert masked.sizes.activations.held - padded.sizes.activations.held == (masks - 1) * mask
    if v > 1:
        assert masks < masked.micro_batches  # the device's forwards in flight


@pytest.mark.parametrize(
    "kw",
    [
        {"sp_mode": "all_to_all", "cp": 2, "pp": 2},
        {"sp_mode": "split_gather", "tp": 2, "pp": 2},
    ],
)
def test_other_modes_build_the_inverted_mask_on_every_stage(kw):
    """The neighbours of ring_attn with a pipeline: under flash every stage's model
    forward builds the inverted (b, 1, s, s) mask (modeling/llama.py:132-140 with
    invert=True), b·s²·2 bytes on each stage, beside the rotary cos and sin each stage
    computes over the whole sequence (llama.py:98-99, 181)."""
    b, s = 2, 4096
    run = {"batch_size": b, "seq_len": s, "attn": "flash"}
    plain = _step("llama3.1-8b", **run, **kw)
    staged = _step("llama3.1-8b", grad_ckpt=True, **run, **kw)
    assert not staged.arch.coloattention_mask_uninverted
    mask = b * s * s * E
    first, later = (r.sizes.activations.below for r in staged.ranks)
    assert first - mask == plain.ranks[0].sizes.activations.below
    assert later == mask + 2 * s * D * E


@pytest.mark.parametrize(("attn", "every_head"), [("flash", True), ("sdpa", False)])
def test_one_kv_head_per_rank_gets_coloattention_gradients_at_every_head(attn, every_head):
    """Llama-3.1-8B over tp 8: one kv head per rank. Under flash the replaced attention
    gives ColoAttention repeat_kv's stride-0 view, which it keeps (the saved tensors stay
    kv-wide), and flash-attn's backward allocates dk and dv with torch.empty_like, dense at
    every head (flash_attn_interface.py l.883 at 0251105a; torch.empty_like of an
    expanded tensor measured below). Without flash transformers' sdpa gets the grouped k
    and v: CUDA flash's gradients per query head and their sums (q + kv)."""
    import torch

    expanded = torch.empty(2, 5, 1, 8).expand(2, 5, 4, 8)
    assert torch.empty_like(expanded).untyped_storage().nbytes() == 2 * 5 * 4 * 8 * 4
    b, s = 1, 4096
    step = _step("llama3.1-8b", strategy="colossalai-3d", tp=8, attn=attn, batch_size=b, seq_len=s)
    arch, T = step.arch, b * s
    q, kv = arch.q_size, arch.kv_size
    assert (arch.kv_heads, q, kv) == (1, 4 * D, D)
    assert not arch.kv_repeated
    width = q if every_head else q + kv
    assert Attention.kernel_gradients(arch, step.run, E, T) == T * q * E + 2 * T * width * E
    items = {x.what: x.nbytes for x in step.parts.typical_block}
    assert items["rotary q and k"] == T * (q + kv) * E  # the view: kv-wide keys


def test_ring_attn_padded_first_stage_builds_a_transient_mask():
    """Measured on the CPU (ftmem's dispatch tracker): ring_attn's first pipeline stage,
    given pad tokens, embeds the whole sequence (modeling/llama.py l.77-88) and builds
    ColoAttention's padded-causal mask uninverted (layer/attn.py l.210-215, called at
    modeling/llama.py l.132-141): the hidden-dtype copy of the expanded padding mask,
    the tril'd ones, their product; the kwargs are then rebound to RingAttention's
    varlen batch (l.153-156). Its largest moment is the first stage's transient before
    its first block; later stages prepare a varlen batch only (l.129-131)."""
    import torch

    from ftmem.measure.tracker import LiveBytesTracker

    b, s = 3, 40
    padding = torch.ones(b, s, dtype=torch.long)
    padding[0, 25:] = 0  # one row with pad tokens
    ids = torch.zeros(b, s, dtype=torch.long)
    table = torch.zeros(4, H, dtype=torch.bfloat16)  # (the embedding's rows: any few)
    with LiveBytesTracker() as tracker:
        tracker.track(padding, ids, table)
        before = tracker.current
        hidden = torch.nn.functional.embedding(ids, table)
        mask = padding[:, None, :].expand(b, s, s).to(dtype=hidden.dtype)
        mask = mask * mask.new_ones(s, s).tril(diagonal=0)
        built = tracker.peak - before
        del mask  # attn_kwargs rebound to the varlen batch's
    assert built == 2 * b * s * s * E + s * s * E + b * s * H * E
    kw = {"sp_mode": "ring_attn", "cp": 2, "pp": 2, "seq_len": s, "batch_size": b}
    for ckpt in (True, False):  # built whether or not anything keeps it
        step = _step("llama3.1-8b", padding="max-length", grad_ckpt=ckpt, grad_accum=2, **kw)
        assert [r.sizes.forward_start for r in step.ranks] == [built, 0]
        assert MASK not in {x.what for x in step.parts.outer_items}
    # no pad tokens: the s²·e mask is kept below the blocks instead (tests above): the
    # embeddings' output beside it; no pipeline: a varlen batch
    unpadded = _step("llama3.1-8b", grad_ckpt=True, grad_accum=2, **kw)
    assert [r.sizes.forward_start for r in unpadded.ranks] == [b * s * H * E, 0]
    alone = _step("llama3.1-8b", padding="max-length", **{**kw, "pp": 1})
    assert alone.ranks[0].sizes.forward_start == 0
    # past MEMORY_BOUND (s²·e ≥ 10¹⁰, layer/attn.py l.22, 212) an empty tensor
    big = {**kw, "seq_len": 70_712, "batch_size": 1}
    assert _step("llama3.1-8b", padding="max-length", **big).ranks[0].sizes.forward_start == 0


def test_ring_attn_padded_build_can_be_the_first_stages_peak():
    """Llama-3.1-8B, ring_attn cp2, pp4, one 64k sequence padded to its length, eight
    micro-batches: the build (2·s²·2 + s²·2 bytes, 24 GiB, and the 0.5 GiB embedding
    output) comes when the stage holds its three other micro-batches' activations and
    the embedding side's items, and outweighs every later moment of that stage (the
    allocator replay's: test_gpu_trace)."""
    s = 65536
    step = _step(
        "llama3.1-8b",
        sp_mode="ring_attn",
        cp=2,
        pp=4,
        seq_len=s,
        batch_size=1,
        grad_accum=8,
        grad_ckpt=True,
        padding="max-length",
    )
    sizes = step.ranks[0].sizes
    build = 2 * s * s * E + s * s * E + s * H * E
    assert build == 24.5 * 2**30
    timeline = find_peak(sizes)
    assert timeline.phase == "forward"
    assert timeline.at_peak.temporaries == build
    held = sizes.activations
    assert timeline.at_peak.activations == held.held + held.below


@pytest.mark.parametrize(
    ("kw", "positions"),
    [
        ({"sp_mode": "ring_attn", "cp": 2}, 4096 // 2),
        ({"sp_mode": "all_to_all", "cp": 2}, 4096),
        ({"strategy": "colossalai-3d", "tp": 2}, 4096),
    ],
)
@pytest.mark.parametrize("ckpt", [True, False])
def test_later_pipeline_stages_hold_their_rotary_tables(kw, positions, ckpt):
    """Every stage's shardformer model forward computes the rotary cos and sin
    (modeling/llama.py l.181) and gives them to each layer: a checkpoint keeps them as
    its argument, an unchecked layer's rotary multiply saves them (Embedding.rotary_held,
    rotary_saved). Two s × head_dim tables in bf16; s is the stage's received share
    under ring_attn, the whole sequence under the other modes (l.98-99). (sdpa: no
    ColoAttention mask beside them outside ring_attn's first stage.)"""
    step = _step("llama3.1-8b", pp=2, seq_len=4096, batch_size=1, grad_ckpt=ckpt, **kw)
    later = step.ranks[1].sizes.activations.below
    assert later == 2 * positions * D * E


def _inverted_build(b: int, s: int, padded: bool) -> int:
    """The bytes ColoAttention.prepare_attn_kwargs holds at once building the inverted
    causal mask, measured on the CPU from its code transcribed (hpcaitech/ColossalAI
    4f9953be335e layer/attn.py l.40-50 invert_mask, l.178-185 without pad tokens,
    l.210-215 with them, l.224 the invert)."""
    import torch

    from ftmem.measure.tracker import LiveBytesTracker

    padding = torch.ones(b, s, dtype=torch.long)
    if padded:
        padding[0, s // 2 :] = 0
    with LiveBytesTracker() as tracker:
        tracker.track(padding)
        before = tracker.current
        if padded:
            mask = padding[:, None, :].expand(b, s, s).to(dtype=torch.bfloat16)
            mask = mask * mask.new_ones(s, s).tril(diagonal=0)
        else:
            mask = torch.ones(s, s, dtype=torch.bfloat16)
            mask.tril_(diagonal=0)
            mask = mask.expand(b, s, s)
        inverted = 1.0 - mask
        mask = inverted.masked_fill(inverted.bool(), torch.finfo(mask.dtype).min).unsqueeze(1)
        del inverted
        assert tracker.current - before == b * s * s * E  # what is kept
        return tracker.peak - before


@pytest.mark.parametrize("padding", ["none", "max-length"])
@pytest.mark.parametrize("ckpt", [True, False])
def test_other_modes_build_the_inverted_mask_before_each_stages_blocks(padding, ckpt):
    """all_to_all with a pipeline under flash: every stage's model forward builds the
    inverted mask (modeling/llama.py l.132-141, invert=True) before its first block, with
    or without pad tokens (the padded-causal branch then). The moment is the measured
    build less what the stage keeps below its blocks (the mask itself under
    checkpointing), and on the first stage the embeddings' output, the whole sequence,
    beside it; later stages' received input is their pipeline edge."""
    b, s = 3, 40
    built = _inverted_build(b, s, padding != "none")
    # the padded product or the tril'd ones, then ``1.0 - mask``, its bool(), masked_fill's
    whole = b * s * s * E
    assert built == (2 * whole if padding != "none" else s * s * E + whole) + b * s * s + whole
    kw = {"sp_mode": "all_to_all", "cp": 2, "pp": 2, "seq_len": s, "batch_size": b}
    step = _step("llama3.1-8b", attn="flash", padding=padding, grad_ckpt=ckpt, grad_accum=2, **kw)
    kept = b * s * s * E if ckpt else 0
    first, later = (r.sizes.forward_start for r in step.ranks)
    assert first == built - kept + b * s * H * E
    assert later == built - kept
    # sdpa: transformers' own mask (llama.py l.142-145), no ColoAttention build
    plain = _step("llama3.1-8b", padding=padding, grad_ckpt=ckpt, grad_accum=2, **kw)
    assert [r.sizes.forward_start for r in plain.ranks] == [0, 0]
