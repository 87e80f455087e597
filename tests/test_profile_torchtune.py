"""torchtune's code path (ftmem.profiles): per-layer compile, the compiled chunked loss and
activation offload around the model only. Each expected number is derived here from the
torchtune / PyTorch source the mechanism cites (calibration/notes/torchtune.md), on the
tiny Llama of conftest; defaults (framework hf, compile off) must not move."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ftmem.estimate import estimate_step
from ftmem.run import RunConfig
from tests.conftest import tiny

BF16, FP32, INT64 = 2, 4, 8
B, S = 3, 50  # micro-batch and length of every run here
T = B * S

LLAMA = tiny("llama")
H, I, L, V = LLAMA.hidden_size, LLAMA.intermediate_size, LLAMA.num_layers, LLAMA.vocab_size


def est(**settings: object):
    base = dict(batch_size=B, seq_len=S, precision="bf16", attn="sdpa")
    return estimate_step(LLAMA, RunConfig(**{**base, **settings})).memory


def per_layer_saving(norm_weights_train: bool) -> int:
    """Bytes per token per layer a compiled torchtune layer keeps less than eager.

    torchtune RMSNorm.forward (torchtune/modules/rms_norm.py@1814feb17a90): x.float(),
    x_fp32 * rsqrt(...), .type_as(x), * scale. Eager autograd keeps the fp32 copy (4h) and,
    for the scale's gradient, the normalised bf16 tensor (2h); the compiled layer keeps the
    bf16 input (2h) and rebuilds both (the fp32 rstd is kept either way). FeedForward
    (torchtune/modules/feed_forward.py@1814feb17a90): silu(w1(x)) * w3(x); the compiled
    layer recomputes the SiLU output (I elements, bf16)."""
    norm = 4 * H + (2 * H if norm_weights_train else 0) - 2 * H
    return 2 * norm + 2 * I


def test_per_layer_compile_full_finetune_keeps_8h_plus_2i_less_per_token_and_layer():
    eager = est(method="full", framework="torchtune")
    compiled = est(method="full", framework="torchtune", compile=True)
    assert per_layer_saving(True) == 8 * H + 2 * I  # the note's (8h + 2I)
    saved_less = eager.activations_bytes - compiled.activations_bytes
    assert saved_less == L * T * per_layer_saving(True)


def test_per_layer_compile_lora_saves_only_the_fp32_copies_and_silu():
    # LoRA: the norms' scales are frozen, so eager keeps no normalised tensor to lose;
    # the bottom layer's input norm keeps nothing either way (the frozen embedding's
    # output needs no gradient)
    eager = est(method="lora", framework="torchtune", adapter_dtype="bf16")
    compiled = est(method="lora", framework="torchtune", adapter_dtype="bf16", compile=True)
    saved_less = eager.activations_bytes - compiled.activations_bytes
    bottom_input_norm = T * (4 * H - 2 * H)
    assert per_layer_saving(False) == 4 * H + 2 * I
    assert saved_less == L * T * per_layer_saving(False) - bottom_input_norm


def test_compile_on_llama_3_2_3b_matches_the_readme_flag_rows_derivation():
    # calibration/notes/torchtune.md: 40,960 B/token/layer x 8192 tokens x 28 layers
    # = 8.75 GiB, for the README's "+ Compile" row (60.0 -> 51.0 GiB measured)
    from ftmem import estimate

    cfg = Path(__file__).resolve().parents[1] / "calibration/configs/llama-3.2-3b/config.json"
    run = dict(method="full", precision="bf16", batch_size=2, seq_len=4096, gpu="a100-80gb")
    eager = estimate(str(cfg), framework="torchtune", **run).memory
    compiled = estimate(str(cfg), framework="torchtune", compile=True, **run).memory
    per_token_layer = 8 * 3072 + 2 * 8192
    assert per_token_layer == 40_960
    assert eager.peak_phase == compiled.peak_phase == "backward"
    drop = eager.peak_allocated_bytes - compiled.peak_allocated_bytes
    assert drop == per_token_layer * 2 * 4096 * 28


def test_compiled_chunked_loss_keeps_bf16_logits_and_two_row_statistics():
    # CEWithChunkedOutputLoss.compute_cross_entropy (logits.float() + F.cross_entropy) compiled
    # alone (torchtune/training/_compile.py@1814feb17a90 compile_loss): eager keeps the
    # fp32 log-softmax (4·T·V), the int64 labels and the mean's fp32 normaliser; compiled,
    # the bf16 chunk it was given (2·T·V), the fp32 amax and log-sum-exp of each row
    # (torch/_decomp/decompositions.py _log_softmax) and the labels
    eager_loss = T * V * FP32 + T * INT64 + FP32
    compiled_loss = T * V * BF16 + 2 * T * FP32 + T * INT64
    layers = L * T * per_layer_saving(True)
    eager = est(method="full", framework="torchtune", loss="chunked")
    compiled = est(method="full", framework="torchtune", loss="chunked", compile=True)
    saved_less = eager.activations_bytes - compiled.activations_bytes
    assert saved_less == layers + eager_loss - compiled_loss
    assert eager_loss - compiled_loss == 2 * T * V - 8 * T + 4  # the note's 2·b·s·V


def test_compiled_standard_loss_keeps_the_same_size():
    # compile_loss compiles a non-chunked loss whole: it keeps its fp32 input logits
    # instead of the fp32 log-softmax, the same size; only the layers change
    eager = est(method="full", framework="torchtune", loss="standard")
    compiled = est(method="full", framework="torchtune", loss="standard", compile=True)
    assert eager.activations_bytes - compiled.activations_bytes == L * T * per_layer_saving(True)


def test_with_checkpointing_compile_changes_only_the_recomputed_layer():
    # checkpointing keeps each layer's input either way; the compiled layer's recompute
    # keeps (8h + 2I)·T less, and its first norm's input is the checkpoint's own input
    # (one storage), which an eager bf16 RMSNorm's fp32 copy is not
    run = dict(method="full", framework="torchtune", grad_ckpt=True)
    eager, compiled = est(**run), est(**run, compile=True)
    assert eager.activations_bytes == compiled.activations_bytes
    # backward's largest moment is a layer's, its recompute alive: smaller by the compiled
    # layer's saving and by the input norm's bf16 input (already there as the kept input)
    # (in the bytes asked for: each phase also shows the allocator's block rounding)
    drop = eager.phases.backward - compiled.phases.backward
    blocks = eager.at_peak.block_rounding - compiled.at_peak.block_rounding
    assert drop - blocks == T * per_layer_saving(True) + T * H * BF16


def test_torchtune_offload_leaves_the_head_and_loss_on_the_gpu():
    # OffloadActivations is entered around the model's forward only, the loss runs after
    # it (recipes/full_finetune_single_device.py@1814feb17a90 _loss_step), and the LM head
    # runs under a NoOpManager (get_act_offloading_ctx_manager): on the GPU stay the head's
    # bf16 input (T·h) and the loss's tensors; everything else goes to the host
    run = dict(method="full", grad_ckpt=True, activation_offload=True, loss="chunked")
    hf = est(**run)
    tt = est(**run, framework="torchtune", compile=True)
    assert hf.activations_bytes == 0
    compiled_loss = T * V * BF16 + 2 * T * FP32 + T * INT64
    assert tt.activations_bytes == T * H * BF16 + compiled_loss


def test_defaults_unchanged_and_other_frameworks_stay_eager_with_a_note():
    assert RunConfig().compile is False
    for method in ("full", "lora"):
        plain = estimate_step(LLAMA, RunConfig(method=method, batch_size=B, seq_len=S))
        hf = estimate_step(LLAMA, RunConfig(method=method, batch_size=B, seq_len=S, compile=True))
        tt = estimate_step(
            LLAMA, RunConfig(method=method, batch_size=B, seq_len=S, framework="torchtune")
        )

        # the step itself is the same (the run around it, loading and the window the
        # framework's figure covers, is run_phases' and may differ), but for torchtune's
        # rotary cache buffer beside the weights and, with the head frozen, the head's
        # input transformers' forward names through its loss (step._named_head_input:
        # torchtune computes the loss after the forward; bf16, T·H·2)
        def step(m, buffer=0, named=0):
            at_peak = m.at_peak.model_copy(update={"weights": m.at_peak.weights - buffer})
            phases = {k: v - buffer for k, v in m.phases.model_dump().items()}
            phases["forward"] += named
            return (at_peak, phases, m.activations_bytes, m.activations_per_block)

        table = LLAMA.max_position_embeddings * (LLAMA.hidden_size // LLAMA.num_heads) * FP32
        named = T * H * 2 if method == "lora" else 0
        assert step(plain.memory) == step(hf.memory) == step(tt.memory, table, named)
        assert not any("compile" in n for n in plain.notes)
        assert any("not modelled" in n and "compile" in n for n in hf.notes)


def test_torchtune_config_compile_true_sets_the_run_setting(tmp_path: Path):
    from ftmem.frameworks import read_framework_config

    cfg = tmp_path / "tt.yaml"
    cfg.write_text(
        textwrap.dedent(
            """\
            model:
              _component_: torchtune.models.llama3_2.llama3_2_3b
            batch_size: 2
            compile: True
            loss:
              _component_: torchtune.modules.loss.CEWithChunkedOutputLoss
            """
        )
    )
    read = read_framework_config(str(cfg))
    assert read.settings.get("compile") is True and read.settings.get("loss") == "chunked"
    assert not any("compile" in n for n in read.notes)


@pytest.mark.parametrize("flag", ["--compile"])
def test_cli_takes_compile(flag: str):
    from typer.testing import CliRunner

    from ftmem.cli import app

    cfg = Path(__file__).resolve().parents[1] / "calibration/configs/llama-3.2-1b/config.json"
    args = ["estimate", str(cfg), "--framework", "torchtune", "--method", "full", flag]
    res = CliRunner().invoke(app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert '"compile": true' in res.output


def _head_sizes(framework: str, **settings: object):
    from ftmem.step import step_parts

    base = dict(batch_size=B, seq_len=S, precision="bf16", attn="sdpa", method="lora")
    run = RunConfig(**{**base, "framework": framework, "loss": "upcast-shifted", **settings})
    return step_parts(LLAMA, run).sizes


def test_torchtune_01s_loop_holds_its_shifted_copy_and_copies_the_transposed_input():
    # recipes/lora_finetune_single_device.py@ff594c231 train: `logits = self._model(x)`
    # (fp32), `logits = logits[..., :-1, :].contiguous()`, `.transpose(1, 2)` into
    # nn.CrossEntropyLoss; the name holds the shifted copy (R·V·4) until the next forward
    # returns. In forward, beyond the saved item (fp32 log-softmax, labels, total_weight)
    # and that copy: the cast (bf16 logits beside their fp32 copy, the previous copy
    # still held), the fp32 logits beside this copy, CUDA's contiguous copy of the
    # transposed input (its total_weight not made yet). Backward: transformers < 4.46's.
    R = T - B
    saved = R * V * FP32 + R * INT64 + FP32
    tt, hf = _head_sizes("torchtune"), _head_sizes("hf")
    assert tt.loop_held == R * V * FP32 and hf.loop_held == 0
    expected = max(T * V * (BF16 + FP32) - saved, T * V * FP32 - saved, R * V * FP32 - FP32)
    assert tt.head.logits_forward == expected
    # (HF's forward also names the frozen head's input through its loss: T·H·2)
    named = T * H * BF16
    assert hf.head.logits_forward == max(T * V * (BF16 + FP32), T * V * FP32 + R * V * FP32) + named
    assert tt.head.loss_backward == hf.head.loss_backward
    requests = tt.head.requests
    assert requests is not None and requests.into_next_forward  # (tests/test_loss_requests.py)


def test_torchtune_01s_lora_on_the_output_is_modelled_on_its_loop_loss_only():
    # torchtune/modules/peft/lora.py@ff594c231 LoRALinear.forward: out + (alpha / rank) *
    # lora_b(lora_a(dropout(x))), peft's ops; apply_lora_to_output=True
    from ftmem.errors import InvalidInputError

    # (its adapters in bf16: recipes/lora_finetune_single_device.py@ff594c231 builds
    # the model under set_default_dtype(bf16))
    targets = dict(lora_targets="q,v,lm_head", adapter_dtype="bf16")
    tt = _head_sizes("torchtune", **targets)
    assert tt.loop_held == (T - B) * V * FP32
    requests = tt.head.requests  # the adapted head's tensors one by one as well
    assert requests is not None and requests.into_next_forward
    # fp32 adapters promote the sum: laid out as the moments only
    assert _head_sizes("torchtune", lora_targets="q,v,lm_head").head.requests is None
    with pytest.raises(InvalidInputError, match="upcast-shifted"):
        _head_sizes("hf", **targets)


def _torchtune_attention_core_saved(arch, b: int, s: int, packed: bool = False) -> int:
    """Bytes autograd keeps for torchtune's attention core, measured on the CPU: the q, k
    and v projections' outputs (leaves here, counted where kept) through MultiHeadAttention.forward as
    torchtune/modules/attention.py@1814feb17a90 l.236-302 writes it (rotary as
    torchtune/modules/position_embeddings.py@1814feb17a90 RotaryPositionalEmbeddings.forward,
    its cache a buffer: excluded like the weights), o_proj's matmul included. ``packed``:
    each row holds two samples and the rotary takes padded_collate_packed's ``input_pos``
    (each token's position in its own sample)."""
    import torch
    import torch.nn.functional as F

    from ftmem.measure.saved import SavedRegistry, storage_key

    nh, nkv, hd = arch.num_heads, arch.num_kv_heads, arch.hidden_size // arch.num_heads
    torch.manual_seed(0)
    bf16 = torch.bfloat16
    qp = torch.randn(b, s, nh * hd, dtype=bf16, requires_grad=True)
    kp = torch.randn(b, s, nkv * hd, dtype=bf16, requires_grad=True)
    vp = torch.randn(b, s, nkv * hd, dtype=bf16, requires_grad=True)
    w_o = torch.randn(arch.hidden_size, nh * hd, dtype=bf16, requires_grad=True)
    cache = torch.randn(s, hd // 2, 2)  # the rope cache buffer (fp32)
    first = s // 3  # the first sample's length in every row
    row_pos = torch.cat([torch.arange(first), torch.arange(s - first)])
    input_pos = row_pos.expand(b, s) if packed else None

    def rope(x: torch.Tensor) -> torch.Tensor:
        rope_cache = cache[:s] if input_pos is None else cache[input_pos]
        xshaped = x.float().reshape(*x.shape[:-1], -1, 2)
        rope_cache = rope_cache.view(-1, xshaped.size(1), 1, xshaped.size(3), 2)
        x_out = torch.stack(
            [
                xshaped[..., 0] * rope_cache[..., 0] - xshaped[..., 1] * rope_cache[..., 1],
                xshaped[..., 1] * rope_cache[..., 0] + xshaped[..., 0] * rope_cache[..., 1],
            ],
            -1,
        )
        return x_out.flatten(3).type_as(x)

    # (the projections' outputs count where the kernel keeps a view of one)
    exclude = {storage_key(t)[0] for t in (w_o, cache)}  # type: ignore[index]
    reg = SavedRegistry(exclude)
    with torch.autograd.graph.saved_tensors_hooks(reg.pack, reg.unpack):
        q = rope(qp.view(b, s, nh, hd)).transpose(1, 2)
        k = rope(kp.view(b, s, -1, hd)).transpose(1, 2)
        v = vp.view(b, s, -1, hd).transpose(1, 2)
        expand_shape = (b, nkv, nh // nkv, -1, hd)
        k = k.unsqueeze(2).expand(expand_shape).flatten(1, 2)
        v = v.unsqueeze(2).expand(expand_shape).flatten(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = out.transpose(1, 2).contiguous().view(b, s, -1) @ w_o.t()
    assert y.requires_grad
    return reg.nbytes


def test_grouped_keys_and_values_are_expanded_to_every_head_before_the_kernel():
    # torchtune/modules/attention.py@1814feb17a90 l.284-290: with fewer kv heads, k and v
    # go through unsqueeze(2).expand(...).flatten(1, 2), a copy (the expanded dim has
    # stride 0 and cannot merge with the kv-head dim into a view); sdpa keeps q, those
    # full-width k and v, its output (o_proj's input too) and the fp32 log-sum-exp
    arch = tiny("mistral")
    assert arch.num_kv_heads < arch.num_heads
    q = arch.hidden_size
    measured = _torchtune_attention_core_saved(arch, B, S)
    assert measured == 4 * T * q * BF16 + B * arch.num_heads * S * FP32
    run = RunConfig(
        method="full", framework="torchtune", batch_size=B, seq_len=S, precision="bf16",
        attn="sdpa", device="cpu",
    )  # fmt: skip
    memory = estimate_step(arch, run).memory
    items = {x.what: x.bytes for x in memory.activations_per_block}
    core = ("rotary q and k (k at every head)", "v expanded to every head")
    modelled = sum(items[name] for name in core) + items["attention output + logsumexp"]
    assert modelled == measured
    # against transformers' GQA-aware sdpa call, which keeps k and v at the kv heads
    hf = estimate_step(arch, RunConfig(**{**run.model_dump(), "framework": "hf"})).memory
    grown = memory.activations_bytes - hf.activations_bytes
    assert grown == arch.num_layers * 2 * T * (q - arch.kv_size) * BF16


def test_packed_rows_index_the_rotary_cache_and_each_eager_rotary_call_keeps_its_rows():
    # torchtune's packed batches (padding packed-flex): RotaryPositionalEmbeddings.forward
    # (torchtune/modules/position_embeddings.py@1814feb17a90) takes self.cache[input_pos],
    # an fp32 (b, s, h_d / 2, 2) copy where an unpacked batch takes a view of the buffer,
    # and its multiplies keep it for x's gradient: one copy per rotary call (q and k)
    arch = tiny("mistral")
    hd = arch.hidden_size // arch.num_heads
    grown = _torchtune_attention_core_saved(arch, B, S, packed=True)
    grown -= _torchtune_attention_core_saved(arch, B, S)
    assert grown == 2 * B * S * (hd // 2) * 2 * FP32
    run = RunConfig(
        method="full", framework="torchtune", batch_size=B, seq_len=S, precision="bf16",
        attn="sdpa", device="cpu",
    )  # fmt: skip
    packed = RunConfig(**{**run.model_dump(), "padding": "packed-flex"})
    memory = estimate_step(arch, packed).memory
    items = [x for x in memory.activations_per_block if x.what.startswith("rotary cache rows")]
    assert sum(x.bytes for x in items) == grown
    # the flex kernel keeps what flash keeps: nothing else moves
    plain = estimate_step(arch, run).memory
    assert memory.activations_bytes - plain.activations_bytes == arch.num_layers * grown


def test_packed_flex_is_torchtunes_only():
    from ftmem.validation import InvalidFields

    with pytest.raises(InvalidFields, match="packed-flex"):
        estimate_step(LLAMA, RunConfig(padding="packed-flex"))


def test_the_rotary_cache_buffer_is_counted_beside_the_weights():
    # build_rope_cache (torchtune/modules/position_embeddings.py@1814feb17a90), run here:
    # cos and sin of every position stacked into a (max_seq_len, dim / 2, 2) fp32 buffer;
    # one module serves every layer (llama3_2/_component_builders.py@1814feb17a90), and
    # torchtune 0.1 deep-copies the layer, its rotary with it (transformer.py@0914d5cfb)
    import torch

    dim, positions = LLAMA.hidden_size // LLAMA.num_heads, LLAMA.max_position_embeddings
    theta = 1.0 / (10_000 ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    idx_theta = torch.einsum("i, j -> ij", torch.arange(positions, dtype=theta.dtype), theta)
    cache = torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)
    table = cache.numel() * cache.element_size()
    tt, hf = est(framework="torchtune"), est()
    assert tt.weights_bytes - hf.weights_bytes == table
    old = est(framework="torchtune", torchao_version="0.1")
    assert old.weights_bytes - hf.weights_bytes == LLAMA.num_layers * table


def test_one_kv_head_is_expanded_as_a_view_the_kernel_keeps():
    # multi-query: the expanded dim merges with the size-1 kv-head dim, so flatten(1, 2)
    # is a stride-0 view of the rotary k (of the v projection) and sdpa keeps those
    # kv-wide storages; only the kernel's gradients are at every head
    arch = tiny("mistral", num_kv_heads=1)
    q, kv = arch.hidden_size, arch.kv_size
    measured = _torchtune_attention_core_saved(arch, B, S)
    assert measured == 2 * T * q * BF16 + 2 * T * kv * BF16 + B * arch.num_heads * S * FP32
    run = RunConfig(
        method="full", framework="torchtune", batch_size=B, seq_len=S, precision="bf16",
        attn="sdpa", device="cpu",
    )  # fmt: skip
    items = {x.what: x.bytes for x in estimate_step(arch, run).memory.activations_per_block}
    core = ("rotary q and k", "v (expanded as a view)", "attention output + logsumexp")
    assert sum(items[name] for name in core) == measured
