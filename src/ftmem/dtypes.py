"""Bytes per storage format, including quantised weight storage.

Sources: bitsandbytes ``quantize_4bit`` (blocksize 64, fp32 absmax per block;
with double quantisation the absmaxes are stored as 8-bit with one fp32 scale per
256 of them, Dettmers et al. 2023, QLoRA §2) and LLM.int8 (int8 weight + one fp32
scale per output row, Dettmers et al. 2022).
"""

from __future__ import annotations

from typing import Literal

Dtype = Literal["fp32", "bf16", "fp16", "fp8", "int8"]
StorageFormat = Literal["fp32", "bf16", "fp16", "fp8", "int8", "nf4", "fp4", "int4"]

BYTES_PER_ELEMENT: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
# The sizes the arithmetic writes out by name: fp32 (softmax, statistics, optimizer
# masters, upcast logits) and int64 (token ids, labels, routing indices).
FP32 = BYTES_PER_ELEMENT["fp32"]
INDEX_BYTES = 8  # int64


def layer_norm_stats_bytes(device: str, e: int) -> int:
    """Bytes per element of the mean and rstd torch's native_layer_norm keeps for backward,
    for an input of ``e`` bytes and weights of its dtype: on CUDA the input's accumulate
    type, fp32 for a 16-bit input (aten/src/ATen/native/cuda/layer_norm_kernel.cu,
    layer_norm_cuda: ``toAccumulateType(input.scalar_type(), true)``); on the CPU the
    input's own dtype (aten/src/ATen/native/layer_norm.cpp, layer_norm_cpu:
    ``param_scalar_type(input, mixed_type)``, fp32 only where fp32 weights meet a 16-bit
    input; measured, torch 2.13: a bf16 LayerNorm's mean and rstd are bf16)."""
    return FP32 if device == "cuda" else e


def eager_score_bytes(e: int, fp16_on_cuda: bool) -> int:
    """Bytes per score live at eager attention's softmax (``softmax(scores, dim=-1,
    dtype=torch.float32)``), forward and backward alike: fp32 scores, the input and its
    softmax (or their gradients); 16-bit scores are converted first (torch
    aten/src/ATen/native/SoftMax.cpp softmax(input, dim, dtype): ``input_.toType(dtype)``
    then _softmax), so the 16-bit scores, their fp32 copy and the fp32 softmax, except
    fp16 on CUDA, which that function hands to the kernel unconverted
    (``_softmax(input_, dim_, half_to_float=true)``)."""
    if e == FP32:
        return 2 * FP32
    return e + FP32 if fp16_on_cuda else e + 2 * FP32


def layer_norm_saved_bytes(n: int, width: int, e: int, ln_stats: int) -> int:
    """What a LayerNorm a gradient passes keeps for n rows: its input (``e`` bytes an
    element) and each row's mean and rstd (``ln_stats`` bytes each:
    :func:`layer_norm_stats_bytes`)."""
    return sum(layer_norm_saved_parts(n, width, e, ln_stats))


def layer_norm_saved_parts(n: int, width: int, e: int, ln_stats: int) -> tuple[int, int, int]:
    """The same as three tensors, as the allocator sees them: the input and
    native_layer_norm's mean and rstd outputs, (n, 1) each (ops.saved.Saved.parts;
    measured on the CPU: tests/test_norm_requests.py)."""
    return (n * width * e, n * ln_stats, n * ln_stats)


# Weight storage with quantisation constants beside the values: no single size per
# element (int8 here is LLM.int8's weight, scales included, not the 1-byte dtype). Every
# test of "is this weight quantised" asks this set, so a new format cannot be missed.
QUANTIZED_FORMATS: frozenset[str] = frozenset({"nf4", "fp4", "int8", "int4"})


def is_quantized(fmt: str) -> bool:
    return fmt in QUANTIZED_FORMATS


NF4_BLOCK = 64  # elements per absmax in bitsandbytes 4-bit weights
INT4_GROUP = 128  # GPTQ/AWQ's usual group size (along the input features)
NESTED_BLOCK = 256  # absmaxes per fp32 constant under double quantisation
_CODE_4BIT_BYTES = 16 * 4  # each 4-bit tensor keeps its 16-entry fp32 code book
_NESTED_CODE_BYTES = 256 * 4  # the 8-bit dynamic code book of the double quantisation
_TORCHAO_CODE_BYTES = 16 * 2  # torchao keeps its NF4 code book per tensor, in bf16


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def torchao_nf4_bytes(numel: int, factor_per_block: bool = False) -> int:
    """Bytes of one torchao NF4Tensor of a bf16 weight (torchtune's QLoRA base): two
    4-bit indices per uint8, an int8 scaler per block of 64 (the block absmaxes minus
    their mean, quantised in groups of 256), a bf16 quantisation factor per group of 256
    scalers, the bf16 mean and the 16-entry bf16 code book (pytorch/ao@ff288954 = v0.1 and
    @99c8d52c = v0.6.1 torchao/dtypes/nf4tensor.py NF4Tensor.from_tensor,
    double_quantize_scalers, convert_to_norm_float_weight). ``factor_per_block``: torchao
    < 0.3 kept the factor as a view of a dense bf16 tensor of one value per block
    (ftmem.versions)."""
    blocks = ceil_div(numel, NF4_BLOCK)
    factors = blocks if factor_per_block else ceil_div(blocks, NESTED_BLOCK)
    return ceil_div(numel, 2) + blocks + 2 * factors + 2 + _TORCHAO_CODE_BYTES


def quantized_weight_bytes(
    numel: int,
    out_features: int,
    fmt: StorageFormat,
    double_quant: bool = True,
    layout: str = "bitsandbytes",
) -> int:
    """Bytes of one quantised ``nn.Linear`` weight, quantisation constants included.

    nf4/fp4: two values per byte + absmax per 64 values (fp32, or 8-bit with one fp32
    per 256 blocks and a 4-byte offset when double-quantised) + the 16-value code book.
    int8 (LLM.int8): one byte per value + an fp32 scale per output row.
    int4 (GPTQ/AWQ): two values per byte + an fp16 scale and a 4-bit zero per group of
    128 inputs and output row.
    """
    if fmt == "int8":
        return numel + 4 * out_features
    if fmt == "int4":
        # GPTQ/AWQ: 4-bit values packed in int32s, per group of 128 inputs and output an
        # fp16 scale and a 4-bit zero point (packed likewise)
        groups = ceil_div(numel // max(out_features, 1), INT4_GROUP) * out_features
        return ceil_div(numel, 2) + groups * 2 + ceil_div(groups, 2)
    if fmt not in ("nf4", "fp4"):
        raise ValueError(f"{fmt} is not a quantised storage format")
    if fmt == "nf4" and layout != "bitsandbytes":
        return torchao_nf4_bytes(numel, factor_per_block=layout == "torchao-factor-per-block")
    blocks = ceil_div(numel, NF4_BLOCK)
    packed = ceil_div(numel, 2)
    if double_quant:
        # 8-bit absmaxes, one fp32 scale per 256 of them, an fp32 offset, and the nested
        # 256-entry fp32 code book that each double-quantised tensor keeps
        constants = blocks + 4 * ceil_div(blocks, NESTED_BLOCK) + 4 + _NESTED_CODE_BYTES
    else:
        constants = 4 * blocks
    return packed + constants + _CODE_4BIT_BYTES


def quant_state_bytes(numel: int, fmt: StorageFormat, double_quant: bool = True) -> int:
    """The bitsandbytes nf4/fp4 weight's quantisation constants alone (its ``QuantState``:
    everything of quantized_weight_bytes but the packed 4-bit values)."""
    return quantized_weight_bytes(numel, 0, fmt, double_quant) - ceil_div(numel, 2)


def tensor_bytes(
    numel: int,
    fmt: StorageFormat,
    out_features: int = 0,
    double_quant: bool = True,
    layout: str = "bitsandbytes",
) -> int:
    """Bytes of a tensor of ``numel`` elements stored as ``fmt`` (``layout``: whose
    4-bit storage, ftmem.versions.nf4_layout)."""
    if is_quantized(fmt):
        return quantized_weight_bytes(numel, out_features, fmt, double_quant, layout)
    return numel * BYTES_PER_ELEMENT[fmt]


def bits_per_param(fmt: StorageFormat, double_quant: bool = True) -> float:
    """Average storage bits per weight for a large tensor (for explanations)."""
    n = NF4_BLOCK * NESTED_BLOCK * 1024
    return 8 * tensor_bytes(n, fmt, 1024, double_quant) / n
