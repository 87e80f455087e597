"""A Llama-style decoder layer's forward under ``torch.no_grad`` (a checkpointed layer's
first forward), op by op, in the order PyTorch allocates and frees its tensors.

The timeline needs only this forward's largest moment (``BlockTransients.forward``); the
CUDA caching allocator needs each request: a layer whose intermediates are made and
freed one op at a time cuts and reuses blocks unlike one request of their sum.

Which block a run's model has is its family's hook (``Family.block_forward``): this module
holds the building blocks and transformers' Llama layer (``llama_block_forward``);
ops.nograd_fused_qkv a block with one fused q/k/v projection. Derived from transformers'
LlamaDecoderLayer (4.37.2 and 5.25 alike for these ops:
``LlamaRMSNorm``, ``LlamaAttention`` with SDPA, ``apply_rotary_pos_emb``, ``LlamaMLP``;
4.36-4.53's sdpa path adds GQA's ``repeat_kv`` copies of k and v:
versions.SDPA_REPEAT_KV_DERIVED; 4.48-4.55's makes the kernel's inputs contiguous:
versions.TRANSFORMERS_SDPA_CONTIGUOUS, ``LayerProgram.contiguous_sdpa``),
peft 0.21's ``lora.Linear.forward`` (``result = result + lora_B(lora_A(dropout(x))) *
scaling``; before 0.9.0 the sum is in place, below; on a 4-bit base, tuners/lora/bnb.py
``Linear4bit.forward`` first clones the base output, ``result = result.clone()``: 0.21.2
l.533, 0.9.0 l.340) and bitsandbytes 0.43's ``MatMul4Bit`` (the dequantised weight, made and freed
around each matmul). Without grad nothing is saved: each op's output is freed when its
last Python name goes (a rebinding, or the function's return). Checked against PyTorch
on the CPU, request by request (tests/test_nograd_requests.py).

On CUDA, dropout is the fused ``native_dropout`` (torch aten/src/ATen/native/Dropout.cpp
``dropout`` takes it when ``is_fused_kernel_acceptable``, which needs a CUDA input):
``dropout_cuda`` (native/cuda/Dropout.cu) makes its bool mask, then the output, and
``dropout`` returns the output alone, so the mask goes; on the CPU ``_dropout_impl`` makes a
noise tensor of the input's dtype (``at::empty_like(input).bernoulli_``), then ``input *
noise``: the same order, the noise ``e`` bytes an element (``mask_bytes``).

With adapters in another dtype than the activations (peft's default fp32 adapters under
autocast) peft casts the linear's input to the adapters' dtype (``x =
x.to(lora_A.weight.dtype)``, held until the linear returns), dropout runs in that dtype,
and autocast casts lora_A's input back to the compute dtype (a copy freed once lora_A has
answered); lora_A and lora_B answer in the compute dtype (peft 0.5.0 src/peft/tuners/lora.py
``Linear.forward``, 0.21 src/peft/tuners/lora/layer.py ``Linear.forward``). Each adapter
weight is cast too, once per forward: autocast caches the 16-bit copy of an fp32 leaf that
requires grad (also under ``no_grad``) until the outermost autocast region ends (torch
aten/src/ATen/autocast_mode.cpp ``cached_cast``; torch/amp/autocast_mode.py ``__exit__``:
``clear_autocast_cache`` once the nesting is back to 0), so each linear's r·in·e and out·r·e
copies are never freed here: they live to the model's return, where the head's requests let
them go (gpu.trace). Within a call autocast casts the weight before the input (the casts of
one call's arguments are made last to first: measured with torch 2.13 on the CPU,
tests/test_nograd_fused_qkv.py).

The 4-bit weight is dequantised in the compute dtype (``quant_state.dtype``, taken as the
compute dtype: then ``.to(A.dtype)`` is no copy). Left out, small requests (the small
pool's on real sizes): each norm's statistics (b·s·4 bytes: the mean, ``+ eps``, the
rsqrt), transformers 4.37's per-layer cos/sin gathers (s·d·e each) and 4.40-4.42's per-layer
cos and sin (b·s·d, in fp32 then cast), SDPA's logsumexp.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftmem.arch import Architecture, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.gpu.program import RequestProgram, Requests
from ftmem.methods import MethodPlan
from ftmem.ops.attention import explicit_mask, kernel_output_follows_query
from ftmem.profiles import profile_of
from ftmem.run import RunConfig
from ftmem.versions import (
    PEFT_LORA_SUM_OUT_OF_PLACE,
    SDPA_REPEAT_KV_DERIVED,
    older_than,
    sdpa_float_causal_mask,
    sdpa_inputs_copied,
    sdpa_repeats_kv,
    within,
)

NF4_BLOCK = 64  # values per absmax (bitsandbytes' default 4-bit blocksize)
# the linears of a Llama decoder layer (module names' last part)
LLAMA_LINEARS = frozenset(
    ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
)
# frameworks whose model is transformers' own (a profile's name); the others bring theirs
TRANSFORMERS_MODELS = frozenset(("hf", "axolotl", "llama-factory", "fsdp_qlora", "peft-mc"))


@dataclass(frozen=True, slots=True)
class LayerShape:
    """What the layer's requests depend on: positions ``T`` (= b·s), widths, the
    activations' element size ``e``, the LoRA targets (module names, with dropout or
    not), whether the base weights are 4-bit (dequantised per matmul), the bytes per
    element of dropout's mask (CUDA's bool; the CPU's noise is its input's: the tests'
    case), the adapters' element size where peft casts their input to it (0: the
    activations' dtype, no cast), whether peft adds the adapter's output in place,
    ``repeated_kv``: GQA keys and values copied to every query head before sdpa
    (transformers 4.36-4.53, SDPA_REPEAT_KV_DERIVED), ``inputs_copied``: q, k and v made
    contiguous in sdpa_attention_forward's own frame (4.48-4.55,
    TRANSFORMERS_SDPA_CONTIGUOUS), ``output_follows_query``: the kernel lays its output
    out as its query, so a contiguous query's output is copied by the caller's
    ``transpose(1, 2).contiguous()`` (LayerProgram.contiguous_sdpa), and ``weight_casts``:
    autocast casts the adapters' fp32 weights and caches the copies (never freed in the
    layer's requests)."""

    T: int
    hidden: int
    q_size: int
    kv_size: int
    intermediate: int
    e: int
    lora: frozenset[str] = frozenset()
    lora_r: int = 0
    lora_dropout: bool = False
    quantized: bool = False
    mask_bytes: int = 1
    adapter_e: int = 0
    sum_in_place: bool = False
    repeated_kv: bool = False
    inputs_copied: bool = False
    output_follows_query: bool = False
    weight_casts: bool = False


class LayerProgram(RequestProgram):
    __slots__ = ("shape",)

    def __init__(self, shape: LayerShape) -> None:
        super().__init__()
        self.shape = shape

    def rms_norm(self) -> int:
        """LlamaRMSNorm on a 16-bit input held by the caller: its fp32 copy, the squares
        (freed by ``mean``), the normalised fp32 product (the copy freed by the
        rebinding), then ``weight * hidden_states.to(input_dtype)``."""
        s = self.shape
        wide = s.T * s.hidden * FP32
        copy = self.alloc(wide)
        self.free(self.alloc(wide))  # pow(2), read by mean
        normed = self.alloc(wide)
        self.free(copy)
        cast = self.alloc(s.T * s.hidden * s.e)
        out = self.alloc(s.T * s.hidden * s.e)
        self.free(cast, normed)
        return out

    def linear(self, name: str, x: int, width_in: int, width_out: int) -> int:
        """A base linear (a 4-bit one dequantises its weight first) and, on a LoRA
        target, peft's branch: dropout's output (and mask), lora_A's, lora_B's, the
        scaling's product, the sum (each freed once read)."""
        s = self.shape
        if s.quantized:  # dequantize_4bit: the nested absmax in fp32, then the weight
            absmax = self.alloc(width_out * width_in // NF4_BLOCK * FP32)
            weight = self.alloc(width_out * width_in * s.e)
            self.free(absmax)
            out = self.alloc(s.T * width_out * s.e)
            self.free(weight)
        else:
            out = self.alloc(s.T * width_out * s.e)
        if name not in s.lora:
            return out
        if s.quantized:  # peft's 4-bit LoRA layer: ``result = result.clone()``
            copy = self.alloc(s.T * width_out * s.e)
            self.free(out)
            out = copy
        return self.lora_branch(out, width_in, width_out)

    def lora_branch(self, out: int, width_in: int, width_out: int) -> int:
        """peft's branch beside the base output ``out``: the input's cast to the adapters'
        dtype (held to the return), dropout's mask and output, autocast's casts of
        lora_A's weight (cached) and input, lora_A's output, lora_B's weight cast
        (cached) and output, the scaling's product, the sum (in place before peft
        0.9.0); each freed once read but the cached casts."""
        s = self.shape
        wide = self.alloc(s.T * width_in * s.adapter_e) if s.adapter_e else -1
        dropped = -1
        if s.lora_dropout:  # the mask (the CPU's noise), then the output; the mask freed
            mask = self.alloc(s.T * width_in * s.mask_bytes)
            dropped = self.alloc(s.T * width_in * (s.adapter_e or s.e))
            self.free(mask)
        if s.weight_casts:
            self.alloc(s.lora_r * width_in * s.e)
        cast = self.alloc(s.T * width_in * s.e) if s.adapter_e else -1
        a = self.alloc(s.T * s.lora_r * s.e)
        self.free(cast, dropped)
        if s.weight_casts:
            self.alloc(width_out * s.lora_r * s.e)
        b = self.alloc(s.T * width_out * s.e)
        self.free(a)
        scaled = self.alloc(s.T * width_out * s.e)
        self.free(b)
        if s.sum_in_place:  # ``result += ...``
            self.free(scaled, wide)
            return out
        total = self.alloc(s.T * width_out * s.e)
        # layer.py's scaled product is a temporary, gone before the rebinding of
        # ``result``; bnb.py names it ``output``, kept until the return
        self.free(*((out, scaled) if s.quantized else (scaled, out)), wide)
        return total

    def rotary(self, x: int, width: int) -> int:
        """``(x * cos) + (rotate_half(x) * sin)``: rotate_half's negated half and cat."""
        size = self.shape.T * width * self.shape.e
        by_cos = self.alloc(size)
        neg = self.alloc(size // 2)
        turned = self.alloc(size)
        self.free(neg)
        by_sin = self.alloc(size)
        self.free(turned)
        out = self.alloc(size)
        self.free(by_cos, by_sin)
        return out

    def attention(self, x: int) -> int:
        """q, k, v; the rotary outputs (the projections freed by the tuple's rebinding);
        SDPA's output, o_proj; the rest goes at the return."""
        s = self.shape
        q = self.linear("q_proj", x, s.hidden, s.q_size)
        k = self.linear("k_proj", x, s.hidden, s.kv_size)
        v = self.linear("v_proj", x, s.hidden, s.kv_size)
        q_rot = self.rotary(q, s.q_size)
        k_rot = self.rotary(k, s.kv_size)
        self.free(q, k)
        if s.inputs_copied:
            out = self.contiguous_sdpa()
        else:
            if s.repeated_kv:  # ``key_states = repeat_kv(key_states, ...)``, then the values
                k_rot = self.repeated(k_rot)
                v = self.repeated(v)
            # the kernels' output is laid out as q, (b, s, heads, d): ``.transpose(1, 2)
            # .contiguous()`` after SDPA is a view
            out = self.alloc(s.T * s.q_size * s.e)
        projected = self.linear("o_proj", out, s.q_size, s.hidden)
        self.free(out, q_rot, k_rot, v)
        return projected

    def contiguous_sdpa(self) -> int:
        """transformers 4.48-4.55's sdpa_attention_forward, its own frame beside the
        caller's rotary q and k and transposed v: GQA's keys, then values, repeated per
        head (the caller keeps the unrepeated ones); ``query.contiguous()``, then the keys'
        and values' (each a copy of a view laid out (b, s, heads, d); repeat_kv's outputs
        are contiguous already and returned as they are); the kernel's output; its
        ``transpose(1, 2).contiguous()``, a copy where the kernel laid its output out as
        the now contiguous query (versions.TRANSFORMERS_SDPA_CONTIGUOUS), the kernel's
        output freed by the rebinding. The frame's locals go at its return: the query's
        copy, the keys, the values."""
        s = self.shape
        wide = s.T * s.q_size * s.e
        if s.repeated_kv:
            key = self.alloc(wide)
            value = self.alloc(wide)
            query = self.alloc(wide)
        else:
            query = self.alloc(wide)
            key = self.alloc(s.T * s.kv_size * s.e)
            value = self.alloc(s.T * s.kv_size * s.e)
        out = self.alloc(wide)
        if s.output_follows_query:
            copy = self.alloc(wide)
            self.free(out)
            out = copy
        self.free(query, key, value)
        return out

    def repeated(self, kv: int) -> int:
        """repeat_kv: ``expand`` to (b, kv_heads, n_rep, s, d) is a view, ``reshape`` to
        (b, heads, s, d) copies it (as wide as q); the rebinding of the caller's name
        frees the unrepeated tensor."""
        out = self.alloc(self.shape.T * self.shape.q_size * self.shape.e)
        self.free(kv)
        return out

    def mlp(self, x: int) -> int:
        """``down_proj(act_fn(gate_proj(x)) * up_proj(x))``."""
        s = self.shape
        gate = self.linear("gate_proj", x, s.hidden, s.intermediate)
        act = self.alloc(s.T * s.intermediate * s.e)
        self.free(gate)
        up = self.linear("up_proj", x, s.hidden, s.intermediate)
        product = self.alloc(s.T * s.intermediate * s.e)
        self.free(act, up)
        down = self.linear("down_proj", product, s.intermediate, s.hidden)
        self.free(product)
        return down

    def residual(self, branch: int) -> int:
        out = self.alloc(self.shape.T * self.shape.hidden * self.shape.e)
        self.free(branch)
        return out


def llama_layer(shape: LayerShape) -> tuple[Requests, int]:
    """The layer's requests with its input held by the caller, and the number of the
    allocation that is its output (the only one never freed)."""
    p = LayerProgram(shape)
    normed = p.rms_norm()
    attended = p.attention(normed)
    p.free(normed)  # the rebinding of hidden_states
    mid = p.residual(attended)
    normed = p.rms_norm()
    down = p.mlp(normed)
    p.free(normed)
    out = p.residual(down)
    p.free(mid)  # ``residual`` at the return
    return tuple(p.ops), out


def checkpointed_layer(
    arch: Architecture, run: RunConfig, plan: MethodPlan
) -> tuple[Requests, int] | None:
    """A checkpointed layer's first forward, request by request, where the run's family
    derives its block (``Family.block_forward``) for this run; else None (the replay keeps
    the timeline's one moment). Activation offload is not derived, nor a layer whose sdpa
    call takes a mask (the blocks are derived for is_causal): a padded batch's, images',
    a model's own (ops.attention.explicit_mask), or a sliding window the sequence reaches.
    With a mask transformers 5.25 repeats GQA keys and values per head
    (integrations/sdpa_attention.py l.42-51, l.118-128) and torch converts a boolean mask
    to an additive one per call; 4.36-4.47 make q, k and v contiguous under a mask on
    CUDA (4.47.1 models/llama/modeling_llama.py:557-560)."""
    hook = arch.traits.block_forward
    if hook is None or not run.grad_ckpt or run.activation_offload:
        return None
    sliding = arch.sliding_layers and run.positions >= (arch.sliding_window or 0)
    if run.attn == "sdpa" and (explicit_mask(arch, run) or sliding):
        return None
    return hook(arch, run, plan)


def adapter_cast_bytes(run: RunConfig, plan: MethodPlan) -> int | None:
    """The adapters' element size where peft casts their input to it (fp32 adapters under
    autocast with 16-bit weights), 0 where the adapters are in the activations' dtype
    (no autocast) or there are none, None for the regimes not derived."""
    d = plan.dtypes
    if run.method == "full" or d.adapter == d.compute:
        return None if d.autocast else 0
    if d.autocast and d.adapter == "fp32" and run.method == "lora":
        return FP32
    return None


def peft_adds_in_place(run: RunConfig) -> bool:
    """peft's LoRA adds the adapter's output in place (``result += ...``) before 0.9.0."""
    return older_than(run.peft_version, PEFT_LORA_SUM_OUT_OF_PLACE)


def llama_block_forward(
    arch: Architecture, run: RunConfig, plan: MethodPlan
) -> tuple[Requests, int] | None:
    """transformers' Llama (or Mistral) decoder layer as :func:`llama_layer` lays it out,
    under SDPA, in one 16-bit dtype (no autocast, adapters in it), LoRA, QLoRA (4-bit) or
    full training; else None. Not derived, so None: GQA keys and values repeated per head
    outside 4.36-4.37 and 4.40-4.53 (versions.SDPA_REPEAT_KV_DERIVED), 4.38-4.39's float
    causal mask, one kv head under 4.48-4.55 (its repeat is a stride-0 view that
    ``.contiguous()`` copies per query head), DoRA and the other adapters."""
    d = plan.dtypes
    linears = layout(arch).linears
    repeats = sdpa_repeats_kv(arch, run)
    copied = sdpa_inputs_copied(arch, run)
    if not (
        profile_of(run).name in TRANSFORMERS_MODELS
        and run.attn == "sdpa"
        and (not repeats or within(run.transformers_version, SDPA_REPEAT_KV_DERIVED))
        and not (copied and arch.kv_heads == 1 < arch.num_heads)
        and not sdpa_float_causal_mask(arch, run)
        and run.method in ("lora", "qlora", "full")
        and not d.autocast
        and d.base == d.compute
        and (run.method == "full" or d.adapter == d.compute)
        and (run.method != "qlora" or d.quantized in ("nf4", "fp4"))
        and {lin.module.split(".")[-1] for lin in linears} == LLAMA_LINEARS
        and not any(lin.bias for lin in linears)
    ):
        return None
    widths = {lin.module.split(".")[-1]: lin for lin in linears}
    lora = frozenset(lin.module.split(".")[-1] for lin in plan.adapted)
    e = BYTES_PER_ELEMENT[d.compute]
    shape = LayerShape(
        T=run.batch_size * run.positions,
        hidden=arch.hidden_size,
        q_size=widths["q_proj"].out_features,
        kv_size=widths["k_proj"].out_features,
        intermediate=widths["gate_proj"].out_features,
        e=e,
        lora=lora if run.method != "full" else frozenset(),
        lora_r=run.r,
        lora_dropout=run.dropout > 0,
        quantized=run.method == "qlora",
        sum_in_place=peft_adds_in_place(run),
        repeated_kv=repeats,
        inputs_copied=copied,
        output_follows_query=kernel_output_follows_query(run, e),
    )
    return llama_layer(shape)
