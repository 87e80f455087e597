"""framework="litgpt": LitGPT's code path as mechanisms (ftmem.profiles.LITGPT).

Each test derives the bytes of one mechanism from the cited source on a small config,
written here: Lightning-AI/litgpt@00af8b0d (litgpt/lora.py, litgpt/model.py,
litgpt/utils.py, litgpt/finetune/{lora,full}.py), Lightning-AI/pytorch-lightning@527d071f
(fabric/wrappers.py, fabric/plugins/precision/bitsandbytes.py), bitsandbytes@0.42.0
(autograd/_functions.py MatMul4Bit); calibration/notes/litgpt.md has the details.
One mechanism is switched off in a copy of the profile to isolate its bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftmem import estimate, methods
from ftmem.api import _architecture, run_config
from ftmem.ops.linear import LinearOp
from ftmem.profiles import framework_arch

from .conftest import framework_parts, profile_switch

# a small Llama with GQA (4 heads, 2 kv heads) and a tied embedding, as Llama-3.2-1B
V, D, NH, NG, I, L = 4096, 256, 4, 2, 704, 2
HS = D // NH
LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": V,
    "hidden_size": D,
    "intermediate_size": I,
    "num_hidden_layers": L,
    "num_attention_heads": NH,
    "num_key_value_heads": NG,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
FALCON = {
    "model_type": "falcon",
    "architectures": ["FalconForCausalLM"],
    "vocab_size": V,
    "hidden_size": D,
    "num_hidden_layers": L,
    "num_attention_heads": NH,
    "multi_query": True,
    "parallel_attn": True,
    "new_decoder_architecture": False,
    "bias": False,
    "alibi": False,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
LORA = dict(
    method="lora",
    precision="bf16",
    adapter_dtype="bf16",
    optimizer="adamw",
    lora_r=8,
    lora_targets="q,v",
    lora_dropout=0.05,
    attn="sdpa",
    device="cuda",
)
QLORA = dict(LORA, method="qlora", quant="nf4", double_quant=False, compute_dtype="bf16")
FULL = dict(method="full", precision="bf16", optimizer="adamw", attn="sdpa", device="cuda")


@pytest.fixture
def llama(tmp_path: Path) -> str:
    path = tmp_path / "llama" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(LLAMA))
    return str(path)


@pytest.fixture
def falcon(tmp_path: Path) -> str:
    path = tmp_path / "falcon" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(FALCON))
    return str(path)


@pytest.fixture
def litgpt_without(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    yield from profile_switch(monkeypatch, "litgpt")


parts = framework_parts


def nf4_bytes(numel: int) -> int:
    """bitsandbytes 4-bit without double quantisation (functional.quantize_4bit): two
    values per byte, an fp32 absmax per 64 values, the 16-entry fp32 code book."""
    return numel // 2 + numel // 64 * 4 + 16 * 4


def test_lm_head_is_never_tied(llama: str) -> None:
    # convert_hf_checkpoint.py copies transformer.wte.weight into lm_head.weight
    hf = estimate(llama, framework="hf", batch_size=1, seq_len=256, **LORA)
    lit = estimate(llama, framework="litgpt", batch_size=1, seq_len=256, **LORA)
    assert lit.memory.weights_bytes - hf.memory.weights_bytes == 2 * V * D


def test_untied_config_weights_unchanged(llama: str, tmp_path: Path) -> None:
    path = tmp_path / "untied.json"
    path.write_text(json.dumps(dict(LLAMA, tie_word_embeddings=False)))
    hf = estimate(str(path), framework="hf", batch_size=1, seq_len=256, **LORA)
    lit = estimate(str(path), framework="litgpt", batch_size=1, seq_len=256, **LORA)
    assert lit.memory.weights_bytes == hf.memory.weights_bytes


def test_qlora_quantizes_the_untied_lm_head(llama: str) -> None:
    # the bnb plugin replaces every nn.Linear, the LM head too: HF's tied head adds
    # nothing, LitGPT's own head is one more 4-bit V x d weight
    hf = estimate(llama, framework="hf", batch_size=1, seq_len=256, **QLORA)
    lit = estimate(llama, framework="litgpt", batch_size=1, seq_len=256, **QLORA)
    assert lit.memory.weights_bytes - hf.memory.weights_bytes == nf4_bytes(V * D)


def test_fp32_logits_held_by_the_loop(llama: str) -> None:
    # Fabric's convert_output casts the chunks to fp32; fit()'s `logits` holds them
    b, s = 2, 256
    p = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    assert p.sizes.loop_held == 4 * b * s * V


def test_chunked_head_and_loss_transients(llama: str) -> None:
    b, s = 1, 512
    N, rows = b * s, b * 128  # 128-position pieces of b rows each
    p = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    # forward: the bf16 pieces (2·N·V) beside the held fp32 logits, before the fp32
    # log-softmax exists; backward: one piece's nll and log-softmax fp32 gradients
    assert p.sizes.head.logits_forward == 2 * N * V
    assert p.sizes.head.loss_backward == max(2 * rows * V * 4, 2 * N * V - 4 * N * V + rows * D * 2)


def test_quantized_head_dequant_at_the_head(llama: str) -> None:
    # MatMul4Bit: dequantize_4bit to fp16 (2·V·d) and .to(bf16) (2·V·d) per piece
    b, s = 1, 256
    N, rows = b * s, b * 128
    p = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **QLORA)
    dequant = 4 * V * D
    assert p.sizes.head.logits_forward == max(2 * N * V + dequant - 4 * N * V, 2 * N * V)
    assert p.sizes.head.loss_backward == max(
        2 * rows * V * 4, 2 * N * V - 4 * N * V + dequant + rows * D * 2
    )
    assert dequant > 4 * N * V - 2 * N * V  # the config makes the dequant copy matter


def test_full_finetuning_head_is_not_chunked(llama: str) -> None:
    # full.py: logits = model(input_ids); chunked_cross_entropy reshapes the shifted
    # slice (a copy for b > 1) and concatenates the pieces' gradients in backward
    b, s = 2, 256
    N = b * s
    p = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **FULL)
    assert p.sizes.head.logits_forward == max(2 * N * V, 4 * N * V)
    assert p.sizes.head.loss_backward == max(2 * 128 * V * 4, 4 * N * V)


def test_kv_expanded_before_sdpa(llama: str, litgpt_without: object) -> None:
    # model.py: k.expand(...).reshape(...) and v likewise when n_query_groups != n_head
    b, s = 1, 256
    N = b * s
    on = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA).per_block_full[-1]
    litgpt_without(expands_kv=False)  # type: ignore[operator]
    off = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA).per_block_full[-1]
    assert on - off == 4 * N * (NH - NG) * HS


def test_one_dropout_for_the_fused_qkv(llama: str, litgpt_without: object) -> None:
    # lora.py LoRAQKVLinear.forward: F.linear(self.lora_dropout(x), self.lora_A) once;
    # peft drops q's and v's input each: one bf16 output (2·N·d) and bool mask (N·d) less
    b, s = 1, 256
    N = b * s
    on = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA).per_block_full[-1]
    litgpt_without(one_qkv_lora_dropout=False)  # type: ignore[operator]
    off = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA).per_block_full[-1]
    assert off - on == N * D * 2 + N * D * 1


def test_block_dequant_moment(llama: str) -> None:
    # the largest 4-bit block linear (gate/up: I x d): 4·I·d beside its input and output
    b, s = 1, 256
    N = b * s
    run = run_config(framework="litgpt", batch_size=b, seq_len=s, **QLORA)
    arch = framework_arch(_architecture(llama), run)
    plan = methods.plan_method(arch, run)
    assert LinearOp.dequant_moment(arch, run, plan, 2, N) == 4 * I * D + N * (I + D) * 2
    # transformers + peft: bitsandbytes' own Linear4bit, the bf16 copy only (the weight
    # quantised from bf16; tests/test_bnb_dequant.py)
    hf = run_config(framework="hf", batch_size=b, seq_len=s, **QLORA)
    hf_moment = LinearOp.dequant_moment(arch, hf, methods.plan_method(arch, hf), 2, N)
    assert hf_moment == 2 * I * D + N * (I + D) * 2


def _litgpt_attention_core_saved(b: int, s: int, groups: int) -> int:
    """Bytes autograd keeps for LitGPT's attention core, measured on the CPU: the fused
    qkv output (a leaf here, counted: v may be a view of it) through
    CausalSelfAttention.forward as model.py@00af8b0d l.242-268 and l.299-321 write it
    (apply_rope l.501-515 on bf16 cos/sin buffers), the frozen projection's matmul
    included (it keeps no input)."""
    import torch
    import torch.nn.functional as F

    from ftmem.measure.saved import SavedRegistry, storage_key

    torch.manual_seed(0)
    bf16 = torch.bfloat16
    q_per_kv = NH // groups
    qkv = torch.randn(b, s, (NH + 2 * groups) * HS, dtype=bf16, requires_grad=True)
    w_proj = torch.randn(D, NH * HS, dtype=bf16)  # frozen, as under LoRA on q and v
    cos, sin = torch.randn(s, HS, dtype=bf16), torch.randn(s, HS, dtype=bf16)

    def apply_rope(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : HS // 2], x[..., HS // 2 :]
        rotated = torch.cat((-x2, x1), dim=-1)
        return ((x * cos) + (rotated * sin)).to(dtype=x.dtype)

    exclude = {storage_key(t)[0] for t in (w_proj, cos, sin)}  # type: ignore[index]
    reg = SavedRegistry(exclude)
    with torch.autograd.graph.saved_tensors_hooks(reg.pack, reg.unpack):
        x = qkv.view(b, s, groups, q_per_kv + 2, HS).permute(0, 2, 3, 1, 4)
        q, k, v = x.split((q_per_kv, 1, 1), dim=2)
        k = k.expand(b, groups, q_per_kv, s, HS)
        v = v.expand(b, groups, q_per_kv, s, HS)
        q, k, v = (t.reshape(b, -1, s, HS) for t in (q, k, v))
        q = torch.cat((apply_rope(q), q[..., HS:]), dim=-1)
        k = torch.cat((apply_rope(k), k[..., HS:]), dim=-1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
        out = y.reshape(b, s, NH * HS) @ w_proj.t()
    assert out.requires_grad
    return reg.nbytes


def test_falcon_attention_through_sdpa(falcon: str) -> None:
    # LitGPT runs Falcon through F.scaled_dot_product_attention (no fp32 s² scores).
    # Multi-query: the expanded k and v reshape to stride-0 views (the size-1 group dim
    # merges), the rotary makes k new at every head, v stays a view of the qkv output,
    # whose whole storage the kernel keeps; then the output and the fp32 logsumexp
    b, s = 1, 256
    N = b * s
    measured = _litgpt_attention_core_saved(b, s, groups=1)
    assert measured == 2 * N * D * 2 + N * (D + 2 * HS) * 2 + N * D * 2 + b * NH * s * 4
    p = parts(falcon, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    attention = sum(x.nbytes for x in p.typical_block if x.kind.name.startswith("ATTN"))
    assert attention == measured
    # transformers before 5.25 ran Falcon's own fp32 attention (s² probabilities kept);
    # 5.25's goes through sdpa too
    for version, eager in (("5.24.0", True), ("5.25.0", False)):
        kw = dict(framework="hf", batch_size=b, seq_len=s, transformers_version=version)
        hf = parts(falcon, **kw, **LORA)
        assert any("s²" in x.what for x in hf.typical_block) == eager


def test_grouped_query_attention_core_matches_the_measurement(llama: str) -> None:
    # two groups: the reshapes copy k and v to every head
    b, s = 1, 256
    measured = _litgpt_attention_core_saved(b, s, groups=NG)
    p = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    attention = sum(
        x.nbytes for x in p.typical_block if x.what.startswith(("rotary", "v ", "attention out"))
    )
    assert measured == 4 * b * s * D * 2 + b * NH * s * 4
    assert attention == measured


@pytest.mark.parametrize(
    "settings",
    [
        dict(LORA, batch_size=2, seq_len=256),
        dict(QLORA, batch_size=1, seq_len=512),
        dict(FULL, batch_size=2, seq_len=256),
    ],
)
@pytest.mark.parametrize("which", ["llama", "falcon"])
def test_hf_numbers_unchanged(
    settings: dict[str, object], which: str, request: pytest.FixtureRequest
) -> None:
    """framework="hf" (and a profile with no mechanism of its own) is the estimate
    with no framework given."""
    model = request.getfixturevalue(which)
    plain = estimate(model, **settings).memory
    for fw in ("hf", "axolotl"):
        memory = estimate(model, framework=fw, **settings).memory
        assert memory == plain
    lit = estimate(model, framework="litgpt", **settings).memory
    assert lit.peak_allocated_bytes != plain.peak_allocated_bytes


def test_last_graph_holds_every_4bit_input_into_the_next_forward(llama: str) -> None:
    # bitsandbytes < 0.43.2 MatMul4Bit keeps its input A as ``ctx.tensors`` (not a saved
    # tensor: backward does not free it), and fit() rebinds `loss` only after the next
    # forward and loss, so the last pass's graph holds every A through them. Per block
    # the 4-bit linears read: norm_1's output (d, the fused qkv), the attention output
    # (nh·hs, attn.proj; the kernel's own output), norm_2's output (d, fc_1 and fc_2) and
    # the activation (I, mlp.proj). Block 0's qkv input needs no gradient (frozen
    # embedding and norm): MatMul4Bit keeps (None, None) there.
    b, s = 1, 256
    N = b * s
    run = dict(framework="litgpt", batch_size=b, seq_len=s, bnb_version="0.42.0", **QLORA)
    p = parts(llama, **run)
    per_block = 2 * N * (D + NH * HS + D + I)
    assert p.sizes.previous_graph == L * per_block - 2 * N * D
    fixed = parts(llama, **dict(run, bnb_version="0.43.2"))
    assert fixed.sizes.previous_graph == 0  # 9e753741: ctx.tensors = (None, B)
    hf = parts(llama, **dict(run, framework="hf"))
    assert hf.sizes.previous_graph == 0  # Trainer's training_step drops its loss


def test_last_graph_counts_in_the_forward_not_the_backward(llama: str) -> None:
    b, s = 1, 256
    run = dict(framework="litgpt", batch_size=b, seq_len=s, bnb_version="0.42.0", **QLORA)
    held = parts(llama, **run).sizes.previous_graph
    old_memory = estimate(llama, **run).memory
    new_memory = estimate(llama, **dict(run, bnb_version="0.43.2")).memory
    old, new = old_memory.phases, new_memory.phases
    # the phases carry the allocator's block rounding of each run's peak alike (its own
    # mechanism, gpu/device.py); the tensors' bytes are compared
    blocks = old_memory.at_peak.block_rounding - new_memory.at_peak.block_rounding
    # this pass's own kept inputs: the same tensors, but the attention output is the
    # kernel's saved output already (no bytes of its own)
    kept_inputs = held - L * 2 * b * s * NH * HS
    assert old.forward - new.forward - blocks == held + kept_inputs
    assert old.backward - new.backward - blocks == kept_inputs


def test_a_ctx_attribute_outlives_backward_until_the_graph_goes() -> None:
    # the autograd semantics the mechanism rests on, in PyTorch itself: a Function that
    # keeps its input as a ctx attribute (as MatMul4Bit does) holds it after backward
    # for as long as a tensor of the graph (LitGPT's `loss`) is referenced
    import gc
    import weakref

    import torch

    class KeepsInput(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            ctx.tensors = (a, w)
            return a @ w.t()

        @staticmethod
        def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
            _, w = ctx.tensors
            return grad @ w, None

    w = torch.randn(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    a = x * 2  # the kept input: made here, so only the graph refers to it afterwards
    alive = weakref.ref(a)
    loss = KeepsInput.apply(a, w).sum()
    del a
    loss.backward()
    gc.collect()
    assert alive() is not None  # backward ran; the graph (named by `loss`) keeps A
    loss = torch.zeros(())  # the next iteration's loss is assigned
    gc.collect()
    assert alive() is None


def test_zero_padded_qkv_lora_keeps_lora_b_output(llama: str, litgpt_without: object) -> None:
    # litgpt@00af8b0d litgpt/lora.py LoRAQKVLinear.zero_pad, q and v enabled (not k):
    # result.index_copy_(-1, lora_ind, source=after_B), and index_copy's backward reads its
    # source (derivatives.yaml: grad.index_select(dim, index).expand_as(source)), so
    # lora_B's output for the q and v slices, N x (NH + NG)·HS in bf16, lives until the
    # block's backward
    b, s = 2, 256
    N = b * s
    on = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    litgpt_without(qkv_lora_zero_pad_keeps_source=False)  # type: ignore[operator]
    off = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    per_block = N * (NH * HS + NG * HS) * 2
    assert on.per_block_full[-1] - off.per_block_full[-1] == per_block
    assert on.sizes.activations.total - off.sizes.activations.total == L * per_block


def test_zero_pad_keeps_nothing_with_q_k_and_v_enabled(llama: str, litgpt_without: object) -> None:
    # zero_pad: `if all(self.enable_lora): return x`, and `x * self.scaling` keeps nothing
    b, s = 1, 256
    run = dict(LORA, lora_targets="q,k,v")
    on = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **run)
    litgpt_without(qkv_lora_zero_pad_keeps_source=False)  # type: ignore[operator]
    off = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **run)
    assert on.per_block_full[-1] == off.per_block_full[-1]


def test_zero_pad_on_falcons_fused_query_key_value(falcon: str, litgpt_without: object) -> None:
    # transformers' Falcon has one query_key_value, adapted whole by ftmem's q,v; LitGPT
    # enables the q slice (NH·HS) and the one key/value head's v slice (HS, multi-query)
    b, s = 1, 256
    N = b * s
    on = parts(falcon, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    litgpt_without(qkv_lora_zero_pad_keeps_source=False)  # type: ignore[operator]
    off = parts(falcon, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    assert on.per_block_full[-1] - off.per_block_full[-1] == N * (NH * HS + HS) * 2


def test_index_copy_keeps_its_source_in_pytorch() -> None:
    # the autograd fact zero_pad_source rests on, in PyTorch: zero_pad's two lines on a
    # small after_B; the node's saved source is lora_B's output itself (its storage)
    import torch

    lora_b = torch.randn(3, 6, requires_grad=True)
    after_b = torch.randn(2, 5, 3) @ lora_b  # (B, T, enabled widths): what zero_pad gets
    index = torch.tensor([0, 1, 2, 3, 6, 7])  # q and v slices of a q, k, v width of 8
    result = after_b.new_zeros(2, 5, 8).index_copy_(-1, index, after_b)
    saved = result.grad_fn._saved_source  # type: ignore[union-attr]
    assert saved.untyped_storage().data_ptr() == after_b.untyped_storage().data_ptr()
    assert saved.untyped_storage().nbytes() == 2 * 5 * 6 * 4


PHI3 = {
    "model_type": "phi3",
    "architectures": ["Phi3ForCausalLM"],
    "vocab_size": V,
    "hidden_size": D,
    "intermediate_size": I,
    "num_hidden_layers": L,
    "num_attention_heads": NH,
    "num_key_value_heads": NH,
    "max_position_embeddings": 2048,
    "original_max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_scaling": None,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def test_gate_up_split_into_two_adapted_linears(tmp_path: Path, litgpt_without: object) -> None:
    # Phi-3's checkpoint fuses gate_up_proj (one peft LoRA: one dropout); LitGPT builds
    # LLaMAMLP's fc_1 and fc_2 (litgpt/config.py Phi-3-mini-4k-instruct
    # mlp_class_name="LLaMAMLP"), each a LoRALinear: one more dropout output (bf16, N·d),
    # its bool mask (N·d, the block input needs a gradient) and lora_A output (N·r)
    path = tmp_path / "phi3" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(PHI3))
    b, s, r = 1, 256, 8
    N = b * s
    run = dict(LORA, lora_targets="gate,up")
    on = parts(str(path), framework="litgpt", batch_size=b, seq_len=s, **run)
    litgpt_without(splits_gate_up=False)  # type: ignore[operator]
    off = parts(str(path), framework="litgpt", batch_size=b, seq_len=s, **run)
    assert on.per_block_full[-1] - off.per_block_full[-1] == N * D * 2 + N * D + N * r * 2


def test_rms_norm_keeps_fp32_normalised_when_its_weight_trains(
    llama: str, litgpt_without: object
) -> None:
    # litgpt@00af8b0d litgpt/model.py RMSNorm.forward: (x_normed * weight.float()).to(dtype):
    # with the weight trainable the mul keeps x_normed in fp32 (4·N·d) where transformers'
    # `weight * hidden_states.to(input_dtype)` keeps the bf16 cast (2·N·d): 2·N·d more for
    # each of the 2·L block norms and the final one
    b, s = 2, 256
    N = b * s
    on = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **FULL)
    litgpt_without(rms_norm_scales_in_fp32=False)  # type: ignore[operator]
    off = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **FULL)
    assert on.per_block_full[-1] - off.per_block_full[-1] == 2 * N * D * 2
    assert on.sizes.activations.total - off.sizes.activations.total == (2 * L + 1) * N * D * 2
    # LoRA: the norm weights are frozen, nothing changes (switched off still, then on)
    lora_off = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    litgpt_without(rms_norm_scales_in_fp32=True)  # type: ignore[operator]
    lora_on = parts(llama, framework="litgpt", batch_size=b, seq_len=s, **LORA)
    assert lora_on.sizes.activations.total == lora_off.sizes.activations.total


def _head_weight_casts_kept(pieces: int, weight_trains: bool) -> int:
    """Bytes of the distinct 16-bit storages of the LM head weight that the head's
    matmuls keep when it is called once per 128-position piece under autocast (the CPU's,
    bf16; the same cached_cast as CUDA's), its weight fp32 and frozen or trained."""
    import torch

    head = torch.nn.Linear(D, V, bias=False)
    head.weight.requires_grad_(weight_trains)
    x = torch.randn(1, 128 * pieces - 5, D, requires_grad=True)  # the last piece shorter
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if t.dtype == torch.bfloat16 and storage.nbytes() == V * D * 2:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16):
        logits = [head(x_i) for x_i in x.split(128, dim=1)]
    assert len(logits) == pieces
    return sum(kept.values())


def test_frozen_head_cast_once_per_piece_under_autocast(llama: str) -> None:
    # bf16-mixed (lit-gpt@8641822b finetune/lora.py's default, the StableLM tutorial):
    # fp32 weights, Fabric's autocast around the forward; GPT.forward calls the frozen
    # head once per 128-position piece and autocast caches no cast of a weight that does
    # not require grad, so each piece's matmul keeps its own bf16 copy (measured here)
    from ftmem.ops.loss import head_weight_casts

    pieces = 3
    s = 128 * pieces - 5
    mixed = dict(LORA, precision="bf16-mixed", adapter_dtype="fp32")
    lit = estimate(llama, framework="litgpt", batch_size=1, seq_len=s, **mixed)
    hf = estimate(llama, framework="hf", batch_size=1, seq_len=s, **mixed)

    def head_copies(est: object) -> int:
        items = est.memory.activations_outer  # type: ignore[attr-defined]
        return sum(i.bytes for i in items if i.what.startswith("LM head 16-bit weight cop"))

    assert head_copies(lit) == _head_weight_casts_kept(pieces, weight_trains=False)
    assert head_copies(lit) == pieces * 2 * V * D
    assert head_copies(hf) == 2 * V * D  # transformers calls its head once
    # a head weight that trains is cast once per forward (autocast's cache)
    run = run_config(framework="litgpt", batch_size=1, seq_len=s, **mixed)
    assert head_weight_casts(run, head_weight_trains=True) * 2 * V * D == (
        _head_weight_casts_kept(pieces, weight_trains=True)
    )
