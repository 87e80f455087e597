"""framework="unsloth": Unsloth's code path as mechanisms (ftmem.profiles.UNSLOTH).

Each test derives the bytes of one mechanism from the cited source, by hand, on a small
Llama (GQA, untied head): unslothai/unsloth@015bdef0d94a (unsloth/kernels/fast_lora.py
LoRA_QKV, LoRA_W, LoRA_MLP; kernels/rms_layernorm.py Fast_RMS_Layernorm;
kernels/utils.py fast_dequantize, matmul_lora; models/llama.py patch_peft_model,
CausalLM_fast_forward) and unslothai/unsloth-zoo@ce232d6cef9c
(unsloth_zoo/gradient_checkpointing.py UnslothCheckpointFunction;
unsloth_zoo/fused_losses/cross_entropy_loss.py UnslothFusedLoss, get_chunk_size;
unsloth_zoo/__init__.py). The Triton kernels cannot run here; the autograd Functions
around them are pure torch and are re-implemented at the end (their forward as in the
source, the Triton SwiGLU as its torch formula) and measured with saved-tensor hooks.
docs/frameworks/unsloth.md has the details.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftmem import estimate, step
from ftmem.api import _architecture, run_config
from ftmem.ops.loss import Loss
from ftmem.ops.saved import Kind, Side
from ftmem.profiles import framework_run

from .conftest import framework_parts, profile_switch

# a small Llama with GQA (4 heads, 2 kv heads) and an untied LM head
V, D, NH, NG, I, L = 4096, 256, 4, 2, 704, 2
HS = D // NH
KV = NG * HS  # k and v widths
LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": V,
    "hidden_size": D,
    "intermediate_size": I,
    "num_hidden_layers": L,
    "num_attention_heads": NH,
    "num_key_value_heads": NG,
    "max_position_embeddings": 16384,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
# Unsloth's defaults: get_peft_model(lora_dropout=0, bias="none", all seven linears),
# from_pretrained(load_in_4bit=True) with bnb_4bit_use_double_quant=True, the model in
# bf16; flash-attn when installed
QLORA = dict(
    method="qlora",
    quant="nf4",
    lora_r=8,
    lora_targets="all-linear",
    precision="bf16",
    optimizer="adamw-8bit",
    attn="flash",
    device="cuda",
    batch_size=1,
)
LORA = dict(QLORA, method="lora")
del LORA["quant"]
E = 2  # bf16
RSTD = 4  # fp32 per row


@pytest.fixture
def llama(tmp_path: Path) -> str:
    path = tmp_path / "llama" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(LLAMA))
    return str(path)


@pytest.fixture
def unsloth_without(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    yield from profile_switch(monkeypatch, "unsloth")


parts = framework_parts


def block_items(p: step.StepParts, side: Side, kinds: tuple[Kind, ...]) -> int:
    return sum(x.nbytes for x in p.typical_block if x.side is side and x.kind in kinds)


LINEAR_SIDE = (Kind.LINEAR_INPUT, Kind.LORA, Kind.WEIGHT_COPY, Kind.MLP_HIDDEN)


def test_fused_qkv_and_o_keep_their_input_only(llama: str) -> None:
    # LoRA_QKV.forward: save_for_backward(X, QA, QB, KA, KB, VA, VB): X (N·D, bf16) and
    # the parameters themselves; LoRA_W (o): (A, B, X) with X the attention output the
    # flash kernel keeps (one storage): nothing new. peft's path would add each
    # adapter's lora_A output (N·r) and the fp32 cast of X per adapter.
    N = 1 * 512
    p = parts(llama, framework="unsloth", seq_len=512, **QLORA)
    assert block_items(p, Side.ATTENTION, LINEAR_SIDE) == N * D * E
    hf = parts(llama, framework="hf", seq_len=512, **QLORA)
    assert block_items(hf, Side.ATTENTION, LINEAR_SIDE) > N * D * E


def test_fused_mlp_keeps_input_gate_and_up(llama: str) -> None:
    # LoRA_MLP.forward: save_for_backward(gateA, gateB, upA, upB, downA, downB, X, e, g):
    # X (N·D) and the gate and up outputs e, g (N·I each), all in X.dtype (matmul_lora
    # answers in X.dtype); h = swiglu(e, g), the down projection's input, is not kept
    N = 1 * 512
    p = parts(llama, framework="unsloth", seq_len=512, **QLORA)
    assert block_items(p, Side.MLP, LINEAR_SIDE) == N * D * E + 2 * N * I * E


def test_kernel_rms_norm_keeps_input_and_rstd(llama: str) -> None:
    # Fast_RMS_Layernorm.forward: save_for_backward(X, W, r): X in its own dtype (bf16)
    # and r, one fp32 per row; both block norms and the final norm
    N = 1 * 512
    p = parts(llama, framework="unsloth", seq_len=512, **QLORA)
    norms = [x.nbytes for x in p.typical_block if x.kind is Kind.NORM_INPUT]
    assert norms == [N * D * E + N * RSTD] * 2
    final = [x.nbytes for x in p.outer_items if x.kind is Kind.NORM_INPUT]
    assert final == [N * D * E + N * RSTD]


def test_whole_block_without_checkpointing(llama: str) -> None:
    # a block above the lowest: the two norms, q/k/v's X, flash-attn's q and k (after
    # RoPE, in place), v, its output and fp32 logsumexp (b·heads·s), the MLP's X, e, g
    b, s = 2, 256
    N = b * s
    p = parts(llama, framework="unsloth", seq_len=s, **dict(QLORA, batch_size=b))
    norms = 2 * (N * D * E + N * RSTD)
    attention = N * (D + KV) * E + N * KV * E + N * D * E + b * NH * s * 4
    linears = N * D * E + N * D * E + 2 * N * I * E
    assert p.per_block_full[-1] == norms + attention + linears


def test_dropout_turns_the_fused_functions_off(llama: str) -> None:
    # patch_peft_model patches only `if lora_dropout == 0 and bias == "none"`: with a
    # dropout every adapter is peft's again (its dropout mask and dropped copy per
    # adapted input); the estimate says so
    s = 512
    p = parts(llama, framework="unsloth", seq_len=s, **dict(QLORA, lora_dropout=0.05))
    assert not any("fused" in x.what for x in p.typical_block)
    assert any(x.kind is Kind.LORA for x in p.typical_block)
    est = estimate(llama, framework="unsloth", seq_len=s, **dict(QLORA, lora_dropout=0.05))
    assert any("lora_dropout 0.05 turns the fused LoRA Functions off" in n for n in est.notes)


def test_partial_targets_fuse_only_whole_groups(llama: str) -> None:
    # q and v alone: LoRA_QKV needs lora_A on q, k and v (peft's layers run); o alone is
    # a whole group (LoRA_W); the MLP is not adapted
    p = parts(llama, framework="unsloth", seq_len=512, **dict(QLORA, lora_targets="q,v,o"))
    fused = [x.what for x in p.typical_block if "fused" in x.what]
    assert fused == []  # o's X is the kernel's output: nothing of its own
    assert any(x.kind is Kind.LORA and x.linears[0].leaf == "q_proj" for x in p.typical_block)
    assert not any(x.kind is Kind.LORA and x.linears[0].leaf == "o_proj" for x in p.typical_block)


def test_offloaded_checkpointing(llama: str) -> None:
    # UnslothCheckpointFunction.forward copies the block's input (the first tensor
    # argument, N·D bf16) to pinned host memory for every checkpointed layer but
    # LAST_GC_INDEX; backward copies it back into GPU_BUFFERS[device], one buffer of the
    # largest input. Inputs of at most MINIMUM_SIZE = 2 MiB / 2 bytes elements stay.
    b, s = 1, 8192
    N = b * s
    x = N * D * E  # 4 MiB > 2 MiB
    p = parts(llama, framework="unsloth", seq_len=s, grad_ckpt=True, **QLORA)
    assert p.sizes.activations.per_block == (0, x)  # block 0 offloaded, the last kept
    assert p.offloaded == (L - 1) * x
    buffers = [i.nbytes for i in p.outer_items if "reload buffer" in i.what]
    assert buffers == [x]
    hf = parts(llama, framework="hf", seq_len=s, grad_ckpt=True, **QLORA)
    assert hf.sizes.activations.per_block == (x, x)


def test_small_inputs_stay_on_the_gpu(llama: str) -> None:
    # N·D·2 = 1 MiB, under MINIMUM_SIZE (2 MiB): nothing offloaded, no buffer
    p = parts(llama, framework="unsloth", seq_len=2048, grad_ckpt=True, **QLORA)
    assert p.offloaded == 0
    assert not any("reload buffer" in i.what for i in p.outer_items)


def test_recompute_reuses_the_block_input(llama: str) -> None:
    # the input norm keeps X itself (the reloaded buffer): the recompute rebuilds
    # everything of the block but that N·D
    s = 8192
    N = s
    p = parts(llama, framework="unsloth", seq_len=s, grad_ckpt=True, **QLORA)
    assert p.sizes.block.policy.rebuilt[-1] == p.per_block_full[-1] - N * D * E


def test_fused_loss_keeps_the_input_gradient(llama: str) -> None:
    # CausalLM_fast_forward calls unsloth_fused_ce_loss whenever labels are given;
    # UnslothFusedLoss.forward makes grad_inputs = torch.empty_like(hidden_states)
    # (all N rows, bf16) and saves it; no logits, no LM head input are kept
    s = 512
    N = s
    p = parts(llama, framework="unsloth", seq_len=s, **QLORA)
    above = p.outer_items[
        [x.what for x in p.outer_items].index("final norm: input + fp32 rstd (kernel)") :
    ]
    assert [(x.what, x.nbytes) for x in above[1:]] == [("fused loss: input gradient", N * D * E)]
    # backward: grad_inputs * scale_factor, out of place: one more N·D
    assert p.sizes.head.loss_backward == N * D * E


def test_fused_loss_one_chunk(llama: str) -> None:
    # N·V·4 = 32 MiB under the 4 GiB target: one chunk; in forward its bf16 logits and
    # their bf16 gradient (N·V each), its input gradient (N·D) and the shifted labels
    # (int64 per row)
    s = 2048
    N = s
    p = parts(llama, framework="unsloth", seq_len=s, **QLORA)
    assert p.sizes.head.logits_forward == 2 * N * V * E + N * D * E + N * 8


@pytest.mark.parametrize(
    ("target", "chunks"),
    [
        (8 * 2**20, 16),  # exact = 128 MiB / 8 MiB = 16: 4 · ceil(16/4)
        (7 * 2**20, 20),  # exact = 18.3: 4 · ceil(4.57) = 20
        (32 * 2**20, 4),  # exact = 4: 4
        (64 * 2**20, 4),  # exact = 2: rounded up to a multiple of 4
        (128 * 2**20, 1),  # exact = 1: one chunk
    ],
)
def test_fused_loss_chunks(llama: str, unsloth_without: object, target: int, chunks: int) -> None:
    # get_chunk_size: exact = N·V·4 / target; 1 when exact <= 1, else 4·ceil(exact/4);
    # torch.chunk makes chunks of ceil(N / n) rows
    s = 8192
    N = s
    assert N * V * 4 == 128 * 2**20
    assert Loss.target_chunks(N, V, target) == chunks
    unsloth_without(fused_loss_chunk_bytes=target)  # type: ignore[operator]
    p = parts(llama, framework="unsloth", seq_len=s, **QLORA)
    c = -(-N // chunks)
    assert p.sizes.head.logits_forward == 2 * c * V * E + c * D * E + N * 8


def test_the_loss_stays_as_asked_for_preference_objectives(llama: str) -> None:
    # their trainers call the model without labels: the logits path, not the fused loss
    run = run_config(framework="unsloth", seq_len=256, objective="dpo", **QLORA)
    assert framework_run(_architecture(llama), run).loss == "standard"
    assert (
        framework_run(
            _architecture(llama), run_config(framework="unsloth", seq_len=256, **QLORA)
        ).loss
        == "fused"
    )
    assert (
        framework_run(_architecture(llama), run_config(framework="hf", seq_len=256, **QLORA)).loss
        == "standard"
    )


def test_dequantisation_buffer_and_backward_copy(llama: str) -> None:
    # matmul_lora: fast_dequantize(W, W_quant, use_global_buffer=True) in forward: one
    # WEIGHT_BUFFER resized to the largest 4-bit weight (I·D, bf16) and one fp32
    # ABSMAX_BUFFER (I·D/64), kept; LoRA_MLP.backward: DW = dY·downWᵀ (N·I, new; the
    # SwiGLU backward kernel writes h, df, de over DW, e, g), then up's and gate's
    # weights dequantised afresh (I·D bf16 + I·D/64 fp32 absmax), dX written over X,
    # beside the incoming gradient (N·D)
    s = 8192
    N = s
    p = parts(llama, framework="unsloth", seq_len=s, grad_ckpt=True, **QLORA)
    buffer = [x.nbytes for x in p.outer_items if "dequantisation buffer" in x.what]
    assert buffer == [I * D * E + I * D // 64 * 4]
    mlp_backward = N * I * E + N * D * E + I * D * E + I * D // 64 * 4
    assert p.sizes.block.workspace == mlp_backward
    lora = parts(llama, framework="unsloth", seq_len=s, grad_ckpt=True, **LORA)
    assert not any("dequantisation buffer" in x.what for x in lora.outer_items)
    assert lora.sizes.block.workspace == N * I * E + N * D * E


def test_forward_dequantises_into_the_kept_buffer(llama: str) -> None:
    # in forward each 4-bit matmul writes its weight into the kept buffer (counted above),
    # no copy of its own: a checkpointed block's forward moment is its MLP intermediates
    # (gate, up, product: 3·N·I, ftmem's no-grad block forward) and four N·D tensors
    # (embedding output, block input, residual, norm output), though a fresh copy with
    # its matmul's input and output (I·D·2 + N·(I + D)·2) would be larger at N = 64
    N = 64
    p = parts(llama, framework="unsloth", seq_len=N, grad_ckpt=True, **QLORA)
    assert p.sizes.block.forward == 3 * N * I * E + 4 * N * D * E
    assert p.sizes.block.forward < I * D * E + N * (I + D) * E


def test_expandable_segments(llama: str) -> None:
    # unsloth_zoo/__init__.py sets PYTORCH_ALLOC_CONF="expandable_segments:True" unless
    # the user set one
    run = run_config(framework="unsloth", seq_len=256, **QLORA)
    assert framework_run(_architecture(llama), run).alloc_conf == "expandable_segments:True"
    own = run_config(framework="unsloth", seq_len=256, alloc_conf="max_split_size_mb:128", **QLORA)
    assert framework_run(_architecture(llama), own).alloc_conf == "max_split_size_mb:128"


def test_without_checkpointing_says_unsloths_default(llama: str) -> None:
    est = estimate(llama, framework="unsloth", seq_len=256, **QLORA)
    assert any('use_gradient_checkpointing="unsloth"' in n for n in est.notes)
    ckpt = estimate(llama, framework="unsloth", seq_len=256, grad_ckpt=True, **QLORA)
    assert not any('use_gradient_checkpointing="unsloth"' in n for n in ckpt.notes)


@pytest.mark.parametrize("settings", [dict(QLORA, seq_len=512), dict(LORA, seq_len=512)])
def test_hf_numbers_unchanged(llama: str, settings: dict[str, object]) -> None:
    """The unsloth profile's mechanisms leave every other framework's estimate alone."""
    plain = estimate(llama, **settings).memory
    assert estimate(llama, framework="hf", **settings).memory == plain
    assert estimate(llama, framework="unsloth", **settings).memory != plain


# --- the pure-torch autograd Functions, measured --------------------------------------

torch = pytest.importorskip("torch")


def _matmul_lora(X, W, A, B, s):
    """unsloth/kernels/utils.py matmul_lora for a 16-bit W (no quant state), as is."""
    batch, seq_len, d = X.shape
    X = X.view(-1, d)
    out = torch.matmul(X, W.t())
    A, B = A.t(), B.t()
    XA = torch.matmul(X, A.to(X.dtype))
    out.addmm_(XA, B.to(X.dtype), alpha=s)
    return out.view(batch, seq_len, -1)


class _LoRA_QKV(torch.autograd.Function):  # fast_lora.py LoRA_QKV.forward, as is
    @staticmethod
    def forward(ctx, X, QW, QA, QB, KW, KA, KB, VW, VA, VB):
        Q = _matmul_lora(X, QW, QA, QB, 2.0)
        K = _matmul_lora(X, KW, KA, KB, 2.0)
        V_ = _matmul_lora(X, VW, VA, VB, 2.0)
        ctx.save_for_backward(X, QA, QB, KA, KB, VA, VB)
        return Q, K, V_

    @staticmethod
    def backward(ctx, dQ, dK, dV):
        raise NotImplementedError  # only what forward saves is measured


class _LoRA_MLP(torch.autograd.Function):  # fast_lora.py LoRA_MLP.forward, as is
    @staticmethod
    def forward(ctx, X, gW, gA, gB, uW, uA, uB, dW, dA, dB):
        e = _matmul_lora(X, gW, gA, gB, 2.0)
        g = _matmul_lora(X, uW, uA, uB, 2.0)
        h = torch.nn.functional.silu(e) * g  # swiglu_fg_kernel's formula
        i = _matmul_lora(h, dW, dA, dB, 2.0)
        ctx.save_for_backward(gA, gB, uA, uB, dA, dB, X, e, g)
        return i

    @staticmethod
    def backward(ctx, dY):
        raise NotImplementedError


def _saved_activation_bytes(fn, *args) -> int:
    """Bytes of the tensors autograd saves that are not parameters (distinct storages)."""
    params = {id(a) for a in args if isinstance(a, torch.nn.Parameter)}
    seen: dict[int, int] = {}

    def pack(t):
        if id(t) not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(seen.values())


def _params(*shapes: tuple[int, int]) -> list[object]:
    return [torch.nn.Parameter(torch.randn(*sh, dtype=torch.float32) * 0.01) for sh in shapes]


def test_measured_fused_functions_match(llama: str) -> None:
    """LoRA_QKV and LoRA_MLP re-implemented from the source, their saved tensors
    measured on the CPU in bf16: the bytes ftmem counts for them."""
    r, N = 8, 512
    X = torch.randn(1, N, D, dtype=torch.bfloat16, requires_grad=True)
    frozen = [
        torch.randn(o, D, dtype=torch.bfloat16) for o in (D, KV, KV)
    ]  # q, k, v base weights (16-bit here: the 4-bit ones are not saved either)
    qa, qb, ka, kb, va, vb = _params((r, D), (D, r), (r, D), (KV, r), (r, D), (KV, r))
    qkv = _saved_activation_bytes(
        _LoRA_QKV.apply, X, frozen[0], qa, qb, frozen[1], ka, kb, frozen[2], va, vb
    )
    gate, up = torch.randn(I, D, dtype=torch.bfloat16), torch.randn(I, D, dtype=torch.bfloat16)
    down = torch.randn(D, I, dtype=torch.bfloat16)
    ga, gb, ua, ub, da, db = _params((r, D), (I, r), (r, D), (I, r), (r, I), (D, r))
    mlp = _saved_activation_bytes(_LoRA_MLP.apply, X, gate, ga, gb, up, ua, ub, down, da, db)
    p = parts(llama, framework="unsloth", seq_len=N, **LORA)
    assert block_items(p, Side.ATTENTION, LINEAR_SIDE) == qkv
    assert block_items(p, Side.MLP, LINEAR_SIDE) == mlp
