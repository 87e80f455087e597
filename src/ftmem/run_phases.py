"""The moments of a run outside the training step, and what each holds on the GPU.

Scripts that read ``torch.cuda.max_memory_*`` once at the end (LitGPT), or nvidia-smi
over the whole job, measure more than the step: loading (and quantising) the checkpoint,
evaluation and sample generation between steps, merging the adapters at the end. Each
moment is the state the run holds then (weights; the optimizer states once a step has
run) plus its own tensors, sized here from the architecture and the run, each with the
library code it comes from. ``gpu.trace`` replays them before and after the step, so the
caching allocator keeps what they leave behind (e.g. torchao's NF4 quantisation
transients, which torchtune's training then reuses or not).

Symbols: n = elements of one weight, B batch, T tokens, V vocabulary, c = bytes of the
compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from ftmem.arch import Architecture
from ftmem.dtypes import BYTES_PER_ELEMENT, is_quantized
from ftmem.methods import MethodPlan, TensorGroup
from ftmem.profiles import Profile
from ftmem.run import RunConfig

FP32 = 4
FP16 = 2
INT64 = 8

# torchao NF4 (torchao/dtypes/nf4tensor.py @ff2889540075e8c8d0a2f4b9900da1b9136ae376, v0.1,
# pinned by torchtune@0914d5cfb): convert_to_norm_float_weight keeps ``scaled_blocks``
# (bf16, 2n) and quantize_tensor_nearest computes ``(value.unsqueeze(-1) - nf4).abs()``
# against the 16 bf16 NF4 codes: the difference and its abs, 2 * 16n bf16, exist together
# (64n); then ``.min(-1)`` (bf16 values + int64 indices) while the abs lives (42n).
NF4_V01_BYTES_PER_ELEMENT = 2 + 2 * 16 * 2  # = 66, calibration/notes/torchtune.md
# From pytorch/ao@6081796bc ("perform in chunks (#196)", 2024-05-01, first in 0.2) the
# nearest-code search runs on CHUNK_SIZE = 1024**2 elements at a time into a uint8 buffer
# of n (torchao/dtypes/nf4tensor.py@6081796bc convert_to_norm_float_weight).
NF4_CHUNK = 1024**2
NF4_CHUNKED_FIRST = "0.2"

Stage = Literal["before", "after"]


@dataclass(frozen=True, slots=True)
class Moment:
    """One moment outside the step: ``held`` bytes of the run's state, plus its own
    ``tensors`` (alive together at its peak); ``when``: before the first step or after
    the steps (what the allocator has cached by then)."""

    name: str
    when: Stage
    held: int
    tensors: tuple[int, ...]
    source: str

    @property
    def peak(self) -> int:
        return self.held + sum(self.tensors)


def _version_at_least(version: str | None, first: str) -> bool:
    if version is None:
        return True  # a current install
    have = [int(p) for p in version.split(".")[:2] if p.isdigit()]
    want = [int(p) for p in first.split(".")[:2]]
    return have >= want


def quantise_transient(g: TensorGroup, run: RunConfig, profile: Profile) -> tuple[int, ...]:
    """The tensors alive beside the weights while one tensor of ``g`` is quantised on
    the GPU (none: loaded as stored)."""
    if not is_quantized(g.fmt) or g.fmt == "int4":  # int4: GPTQ/AWQ, loaded pre-quantised
        return ()
    n = g.numel
    if profile.loading == "torchao-nf4":
        # the bf16 source (nn.Linear built on the GPU, or the checkpoint tensor copied
        # in by torchtune/utils/_register_nf4_dispatch_ops.py@0914d5cfb inplace_copy),
        # ``scaled_blocks`` (bf16), then the nearest-code search on n or on a chunk
        if _version_at_least(run.torchao_version, NF4_CHUNKED_FIRST):
            chunk = min(n, NF4_CHUNK)
            return (2 * n, 2 * n, n, 32 * chunk, 32 * chunk)  # + the uint8 codes (n)
        return (2 * n, 2 * n, 32 * n, 32 * n)
    if profile.loading == "fabric-bnb":
        # Lightning's bnb plugin builds the bf16 weight on the GPU and quantises it from an
        # fp16 copy: ``w = weight.contiguous().to("cuda", torch.half)`` (pytorch-lightning
        # @527d071f src/lightning/fabric/plugins/precision/bitsandbytes.py
        # _Linear4bit.quantize; calibration/notes/litgpt.md M9)
        return (2 * n, FP16 * n)
    # HF from_pretrained: each checkpoint tensor goes to the GPU in 16 bits, then
    # bitsandbytes quantises it (bitsandbytes@005a63c2 bitsandbytes/nn/modules.py
    # Params4bit._quantize ``w = self.data.contiguous().to(device)``; Int8Params._quantize
    # ``.to(device=device, dtype=torch.float16)``)
    return (FP16 * n,)


# One weight's loading as the allocator sees it, in order: ("alloc", bytes) a transient,
# ("weight", 0) the weight itself, ("free", j) the j-th transient of this program
Program = tuple[tuple[str, int], ...]


def quantise_program(g: TensorGroup, run: RunConfig, profile: Profile) -> Program:
    """The order of ``quantise_transient``'s tensors and the weight (read in the same
    code); empty where the weight is loaded as stored."""
    sizes = quantise_transient(g, run, profile)
    if not sizes:
        return ()
    n = g.numel
    if profile.loading != "torchao-nf4":
        # the 16-bit copy(ies) exist, quantize_4bit allocates the weight, they are freed
        return (
            *(("alloc", b) for b in sizes),
            ("weight", 0),
            *(("free", j) for j in reversed(range(len(sizes)))),
        )
    absmax = (("alloc", 2 * n), ("free", 1), ("alloc", 2 * n), ("free", 2))  # blocks.abs()
    if _version_at_least(run.torchao_version, NF4_CHUNKED_FIRST):
        chunk = 32 * min(n, NF4_CHUNK)
        return (
            ("alloc", 2 * n),  # 0: the bf16 source
            *absmax,  # 1, 2: get_block_absmax in the scalers' and the codes' pass
            ("alloc", 2 * n),  # 3: scaled_blocks
            ("alloc", n),  # 4: quantized_blocks (uint8)
            ("alloc", chunk), ("alloc", chunk), ("free", 5), ("free", 6),  # one chunk
            ("weight", 0),
            ("free", 4), ("free", 3), ("free", 0),
        )  # fmt: skip
    # torchao@ff288954 convert_to_norm_float_weight / quantize_tensor_nearest, then the
    # packing ``quantized_blocks[::2] << 4 | quantized_blocks[1::2]`` on int64 indices
    return (
        ("alloc", 2 * n),  # 0: the bf16 source
        *absmax,  # 1, 2
        ("alloc", 2 * n),  # 3: scaled_blocks
        ("alloc", 32 * n), ("alloc", 32 * n), ("free", 4),  # 4: value - nf4, 5: .abs()
        ("alloc", 2 * n), ("alloc", 8 * n), ("free", 6), ("free", 5),  # 6, 7: .min(-1)
        ("alloc", 4 * n), ("alloc", 4 * n), ("free", 8),  # 8: [::2] << 4, 9: | [1::2]
        ("weight", 0),  # .to(torch.uint8) and the scalers: the NF4Tensor
        ("free", 9), ("free", 7), ("free", 3), ("free", 0),
    )  # fmt: skip


def loading_transients(
    plan: MethodPlan, run: RunConfig, profile: Profile, tensors: int
) -> tuple[tuple[int, ...], ...]:
    """Per weight tensor (``tensors`` of them), in the order ``gpu.trace.plan_tensors``
    lays the weights out, the tensors its loading adds; the weights beyond the plan's (a
    frozen reference copy, a teacher) load as stored."""
    out: list[tuple[int, ...]] = []
    for g in plan.groups:
        out += [quantise_transient(g, run, profile)] * g.count
    return tuple(out) + ((),) * (tensors - len(out))


def replayed_loading(
    plan: MethodPlan, run: RunConfig, profile: Profile, tensors: int
) -> tuple[Program, ...]:
    """The loading transients the allocator replay lays out. Not HF's: from_pretrained
    first warms the caching allocator up with one tensor of the model's bytes
    (transformers src/transformers/modeling_utils.py caching_allocator_warmup, docstring
    "As of 18/03/2025"; read in the code index, commit not pinned), so weights and
    transients are carved out of one cached segment whose size for bnb-quantised models
    depends on the quantiser's warm-up factor; the replay keeps loading as the weights
    alone there. The loading moment's allocated peak counts the transients either way."""
    if profile.loading == "hf":
        return ()
    out: list[Program] = []
    for g in plan.groups:
        out += [quantise_program(g, run, profile)] * g.count
    return tuple(out) + ((),) * (tensors - len(out))  # beyond the plan's: as stored


@lru_cache(maxsize=64)  # the same for every estimate of a model, method and profile
def loading_peak(weights: tuple[int, ...], transients: tuple[tuple[int, ...], ...]) -> int:
    """The allocated peak of loading: weights in order, each tensor's transient beside
    the ones already loaded and itself."""
    peak, held = 0, 0
    for w, t in zip(weights, transients, strict=True):
        held += w
        peak = max(peak, held + sum(t))
    return max(peak, held)


@lru_cache(maxsize=16)  # one program per model and method
def program_peak(program: tuple[tuple[str, int], ...]) -> int:
    """The bytes a program of requests (("alloc", bytes), ("free", j) the j-th alloc)
    holds at its busiest."""
    sizes: list[int] = []
    live = peak = 0
    for op, value in program:
        if op == "alloc":
            sizes.append(value)
            live += value
            peak = max(peak, live)
        else:
            live -= sizes[value]
    return peak


def eval_tensors(
    arch: Architecture, run: RunConfig, profile: Profile, batch: int
) -> tuple[int, ...]:
    """A forward without grad and its loss: no saved activations, but the logits."""
    n = batch * run.seq_len * arch.vocab_size
    c = _compute_bytes(run)
    if profile.name == "litgpt":
        # validate(): Fabric casts the output to fp32; the ``logits[..., :-1, :]`` slice is
        # copied by reshape (B > 1), then cross_entropy's fp32 log-softmax
        # (litgpt@00af8b0d litgpt/finetune/lora.py validate, litgpt/utils.py
        # chunked_cross_entropy with chunk_size=0; calibration/notes/litgpt.md M10)
        return (FP32 * n, FP32 * n if batch > 1 else 0, FP32 * n)
    # transformers' ForCausalLMLoss: the model's logits (compute dtype), ``logits.float()``
    # and cross_entropy's fp32 log-softmax (transformers@0114da07
    # src/transformers/loss/loss_utils.py ForCausalLMLoss, fixed_cross_entropy)
    return (c * n, FP32 * n, FP32 * n)


def generation_tensors(
    arch: Architecture, run: RunConfig, profile: Profile, batch: int, length: int
) -> tuple[int, ...]:
    """Generation with a KV cache of ``batch`` x ``length`` tokens: a k and a v tensor
    per layer, as the caches allocate them."""
    c = _compute_bytes(run)
    if profile.name == "litgpt":
        # set_kv_cache: a static cache of max_seq_length per block, k and v with all
        # query heads unless MQA, and a bool mask of max_seq_length^2 (litgpt@00af8b0d
        # litgpt/model.py build_kv_cache, build_mask_cache; notes/litgpt.md M10)
        heads = 1 if arch.kv_heads == 1 else arch.num_heads
        one = batch * heads * length * arch.head_size * c
        return (*[one] * (2 * arch.num_layers), length * length, FP32 * batch * arch.vocab_size)
    # transformers' DynamicCache appends with torch.cat at every token: the cache, plus
    # one layer's k and v being re-made one token longer; the step's fp32 scores
    # (calibration/notes/peft.md, Doubts)
    k, v = (batch * length * width * c for width in arch.cache_widths)
    cache = [k, v] * arch.num_layers
    return (*cache, k, v, FP32 * batch * arch.vocab_size)


def merge_tensors(plan: MethodPlan) -> tuple[int, ...]:
    """peft's merge_and_unload on the largest adapted linear (one at a time)."""
    a = BYTES_PER_ELEMENT[plan.dtypes.adapter]
    c = BYTES_PER_ELEMENT[plan.dtypes.base]
    n = max((lin.in_features * lin.out_features for lin in plan.adapted), default=0)
    if plan.dtypes.quantized is not None and plan.dtypes.quantized != "int4":
        # peft@628ad7c0 src/peft/tuners/lora/bnb.py Linear4bit.merge: ``lora_data``
        # (B @ A * scaling, adapter dtype), ``output = dequantize_bnb_weight`` (base
        # dtype), ``w_data = output + lora_data`` (promoted), then
        # ``Params4bit(w_data.to("cpu")).to(device)`` quantises a GPU copy of w_data
        p = max(a, c)
        return (a * n, c * n, p * n, p * n)
    # peft LoRA Linear.merge: ``base_layer.weight.data += delta_weight`` where
    # get_delta_weight is ``(B @ A) * scaling``: two adapter-dtype out x in tensors
    return (a * n, a * n)


def _compute_bytes(run: RunConfig) -> int:
    return 4 if run.precision == "fp32" else 2


def run_moments(
    arch: Architecture,
    plan: MethodPlan,
    run: RunConfig,
    profile: Profile,
    *,
    weights: tuple[int, ...],
    states: int,
    workspaces: int,
    init: tuple[tuple[str, int], ...] = (),
) -> tuple[Moment, ...]:
    """The moments of the run beside the step (loading first); ``init``: the model's
    construction and loading as a program of requests (torchtune_init), whose peak is
    the loading moment's."""
    total = sum(weights)
    if init:
        load = program_peak(init)
        source = "torchtune 0.1: one layer built, deep-copied per layer, then loaded"
    else:
        transients = loading_transients(plan, run, profile, len(weights))
        load = loading_peak(weights, transients)
        source = {
            "hf": "each weight to the GPU as stored (bitsandbytes: in 16 bits, then quantised)",
            "fabric-bnb": "Lightning's bnb plugin: each weight quantised from an fp16 copy",
            "torchao-nf4": "torchao NF4: each weight's nearest-code search",
        }[profile.loading]
    moments = [Moment("loading", "before", total, (load - total,) if load > total else (), source)]
    after = total + states + workspaces
    eval_batch = run.eval_batch_size or (run.batch_size if profile.evaluates else None)
    if eval_batch:
        moments.append(
            Moment(
                "evaluation",
                "after",
                after,
                eval_tensors(arch, run, profile, eval_batch),
                f"forward without grad at batch {eval_batch}: logits and the loss",
            )
        )
    gen_batch = run.generate_batch_size or (1 if profile.generates else None)
    gen_len = run.generate_len or (run.seq_len if gen_batch else None)
    if gen_batch and gen_len:
        moments.append(
            Moment(
                "generation",
                "after",
                after,
                generation_tensors(arch, run, profile, gen_batch, gen_len),
                f"generate() with a KV cache of {gen_batch} x {gen_len} tokens",
            )
        )
    if run.merge_adapters and plan.adapted:
        moments.append(
            Moment("merge", "after", after, merge_tensors(plan), "peft merge_and_unload")
        )
    return tuple(moments)


def resolved_peak_of(run: RunConfig, profile: Profile) -> Literal["step", "run"]:
    """--peak-of, else the framework's figure; on the CPU (measured steps) the step."""
    if run.peak_of is not None:
        return run.peak_of
    return profile.peak_of if run.device == "cuda" else "step"
