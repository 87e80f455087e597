"""torchtune 0.1's LoRA and QLoRA model init and checkpoint load, as the allocator sees them.

torchtune 0.1.x (the releases that pin ``torchao==0.1``: pytorch/torchtune pyproject.toml
@v0.1.0 and @v0.1.1; the QLoRA tutorial's commit 0914d5cfb too; v0.2.0 pins 0.3.1)
builds every model the same way (the builders of llama2, llama3, mistral and gemma @v0.1.1
all pass ``layer=layer, num_layers=...``), and ``recipes/lora_finetune_single_device.py``
@0914d5cfb ``_setup_model`` (``full_finetune_single_device.py`` alike) runs it on the GPU
(``with utils.set_default_dtype(bf16), self._device``), then loads the checkpoint, then
resets the peaks. Nothing empties the
cache, so what this leaves reserved is where the step's reserved peak starts from
(calibration/notes/torchtune.md). In order (torchtune @0914d5cfb unless said):

1. **One layer** (``models/llama2/_component_builders.py lora_llama2``): the attention's
   linears, q, k, v, output (``lora_llama2_self_attention``), each a ``LoRALinear``
   (``modules/peft/lora.py _create_weight_and_bias``): a bf16 ``nn.Linear`` on the GPU
   (its init in place), ``to_nf4(linear.weight)`` when quantised, the ``nn.Linear`` freed
   on return; then ``lora_a`` and ``lora_b``. Then the rotary table
   (``modules/position_embeddings.py RotaryPositionalEmbeddings._rope_init``: ``theta``
   and a ``cache`` of (max_seq_len, head_dim / 2, 2) fp32, built from fp32 ``cos`` and
   ``sin``), then the MLP's gate, down, up (``lora_llama2_mlp``), then the two norms
   (``TransformerDecoderLayer(..., sa_norm=RMSNorm(...), mlp_norm=RMSNorm(...))``).
2. The token embedding, the output linear and the final norm (bf16, initialised in place).
3. **Its copies** (``modules/transformer.py _get_clones``: ``copy.deepcopy(layer)`` per
   layer), module by module in attribute order (sa_norm, attn: q, k, v, output_proj,
   pos_embeddings; mlp_norm; mlp: w1 = gate, w2 = down, w3 = up; ``feed_forward.py``,
   ``attention.py``). A plain tensor is copied once. An ``NF4Tensor`` parameter is a
   storage-less wrapper, so ``Tensor.__deepcopy__`` clones it and then deep-copies its
   ``__dict__`` over the clone's (pytorch/pytorch PR #73078, torch/_tensor.py
   ``__deepcopy__``, the same in 2.13), and torchtune's clone dequantises and quantises
   again (``utils/_register_nf4_dispatch_ops.py clone``: ``to_nf4(get_original_weight())``).
4. The first layer is freed when ``lora_llama2`` returns (its locals held it last).
5. ``model.load_state_dict``: the checkpoint is on the CPU (``utils/_checkpointing/
   _checkpointer_utils.py safe_torch_load``: ``map_location="cpu"``). A 16-bit parameter
   takes it with a blocking ``copy_``, converted on the CPU (aten/src/ATen/native/cuda/
   Copy.cu ``copy_kernel_cuda``: "For blocking transfers conversions are performed on CPU
   to avoid allocating extra GPU memory"). An NF4 weight's ``copy_`` is torchtune's
   ``inplace_copy``: ``to_nf4(src.to(device))`` (a GPU copy as stored, then ``.to(bf16)``
   unless bf16), and the new parts replace the old, which are freed.

torchao v0.1's tensors (pytorch/ao@ff2889540075e8c8d0a2f4b9900da1b9136ae376
``torchao/dtypes/nf4tensor.py``), n elements of a bf16 weight, block 64, scaler block 256:
``from_tensor`` makes its 16-entry code book, then ``double_quantize_scalers`` (the block
absmaxes, less their mean, quantised to int8; the factor a view of a dense bf16 tensor of
one value per block), then ``convert_to_norm_float_weight`` (``quantize_tensor_nearest``
on all n at once: ``(value - nf4).abs()`` of 16 bf16 per element). ``get_original_weight``
unpacks the two nibbles to int64 and indexes the code book. Each function below follows
its source line by line; a temporary is freed where CPython drops its last reference (end
of the statement; a local at the function's return).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ftmem.arch import Architecture
from ftmem.dtypes import ceil_div
from ftmem.gpu.program import RequestProgram, Requests
from ftmem.methods import MethodPlan, TensorGroup
from ftmem.profiles import Profile
from ftmem.run import RunConfig
from ftmem.versions import older_than

# The first torchao release torchtune 0.1 did not pin (pyproject.toml @v0.1.1
# "torchao==0.1"; @v0.2.0 "torchao==0.3.1"): an older torchao means torchtune 0.1.x.
TORCHTUNE_01_TORCHAO_BEFORE = (0, 2, 0)
BLOCK = 64  # from_tensor's block_size (to_nf4's default)
SCALER_BLOCK = 256  # to_nf4's scaler_block_size
CODES = 16  # the NF4 code book, bf16
BF16 = 2
FP32 = 4
INT64 = 8

# the init as the allocator sees it (gpu.program)
Program = Requests


def nf4_parts(n: int) -> tuple[int, ...]:
    """An NF4Tensor's own tensors in its ``__dict__`` order (``__init__``): the int8
    scalers (one per block), the factor's dense bf16 storage (one per block: torchao <
    0.3), the bf16 mean, the packed codes (two per byte), the code book."""
    blocks = ceil_div(n, BLOCK)
    return (blocks, BF16 * blocks, BF16, ceil_div(n, 2), BF16 * CODES)


def _block_absmax(p: RequestProgram, nbytes_in: int, elements: int, block: int) -> int:
    """``get_block_absmax``: ``blocks.abs().max(dim=1).values`` on a bf16 input; the
    abs and the int64 indices are freed at the statement's end."""
    rows = ceil_div(elements, block)
    absolute = p.alloc(nbytes_in)
    values, indices = p.alloc(BF16 * rows), p.alloc(INT64 * rows)
    p.free(absolute, indices)
    return values


def _double_quantize_scalers(p: RequestProgram, n: int) -> tuple[int, int, int]:
    """``double_quantize_scalers``: returns (int8 scalers, factor storage, mean)."""
    blocks = ceil_div(n, BLOCK)
    scalers = _block_absmax(p, BF16 * n, n, BLOCK)
    mean = p.alloc(BF16)
    centred = p.alloc(BF16 * blocks)  # scalers_1 - scalers_1_mean
    p.free(scalers)
    absmax = _block_absmax(p, BF16 * blocks, blocks, SCALER_BLOCK)
    doubled = p.alloc(BF16 * blocks)  # 2 * scaler_absmax (expanded: dense)
    # 256 / (...): Tensor.__rtruediv__ is ``self.reciprocal() * other`` (torch/_tensor.py)
    reciprocal = p.alloc(BF16 * blocks)
    factor = p.alloc(BF16 * blocks)
    p.free(reciprocal, doubled)
    scaled = p.alloc(BF16 * blocks)  # scaler_blocks * quantization_factor
    rounded = p.alloc(BF16 * blocks)  # .round()
    p.free(scaled)
    clamped = p.alloc(BF16 * blocks)  # .clamp(-128, 127)
    p.free(rounded)
    int8 = p.alloc(blocks)  # .flatten().to(torch.int8)
    p.free(centred, absmax, clamped)  # the locals, at the return
    return int8, factor, mean


def _convert_to_norm_float_weight(p: RequestProgram, n: int) -> int:
    """``convert_to_norm_float_weight`` with ``quantize_tensor_nearest``: returns the
    packed uint8 codes."""
    scalers = _block_absmax(p, BF16 * n, n, BLOCK)
    scaled = p.alloc(BF16 * n)  # blocks / scales
    difference = p.alloc(BF16 * CODES * n)  # value.unsqueeze(-1) - nf4
    distance = p.alloc(BF16 * CODES * n)  # .abs()
    p.free(difference)
    values, nearest = p.alloc(BF16 * n), p.alloc(INT64 * n)  # diff.min(dim=-1)
    p.free(values)
    p.free(distance)  # ``diff``, at quantize_tensor_nearest's return
    shifted = p.alloc(INT64 * ceil_div(n, 2))  # quantized_blocks[::2] << 4
    combined = p.alloc(INT64 * ceil_div(n, 2))  # ... | quantized_blocks[1::2]
    p.free(shifted)
    codes = p.alloc(ceil_div(n, 2))  # combined_blocks.to(torch.uint8)
    p.free(scalers, scaled, nearest, combined)  # the locals, at the return
    return codes


def from_tensor(p: RequestProgram, n: int) -> list[int]:
    """``NF4Tensor.from_tensor`` of an n-element bf16 tensor already on the GPU: its
    parts' keys in ``nf4_parts`` order."""
    book = p.alloc(BF16 * CODES)  # torch.tensor([...], device=device, dtype=bf16)
    int8, factor, mean = _double_quantize_scalers(p, n)
    codes = _convert_to_norm_float_weight(p, n)
    return [int8, factor, mean, codes, book]


def get_original_weight(p: RequestProgram, n: int) -> int:
    """``NF4Tensor.get_original_weight``: returns the dequantised bf16 weight's key."""
    half, blocks = ceil_div(n, 2), ceil_div(n, BLOCK)
    shifted = p.alloc(half)  # quantized_data >> 4
    first = p.alloc(INT64 * half)  # .to(torch.long)
    p.free(shifted)
    masked = p.alloc(half)  # quantized_data & 0b1111
    second = p.alloc(INT64 * half)
    p.free(masked)
    looked_up = [p.alloc(BF16 * half), p.alloc(BF16 * half)]  # nf4[value], twice
    divided = p.alloc(BF16 * blocks)  # dequantize_scalers: int8 / factor
    scalers = p.alloc(BF16 * blocks)  # + scaler_mean
    p.free(divided)
    products = []
    for _ in range(2):  # dequantized_* * repeated.flatten() (an expanded view: a copy)
        flat = p.alloc(BF16 * half)
        products.append(p.alloc(BF16 * half))
        p.free(flat)
    weight = p.alloc(BF16 * n)  # torch.stack([...], dim=-1)
    p.free(first, second, *looked_up, scalers, *products)
    return weight


@dataclass(frozen=True, slots=True)
class _Linear:
    """One linear of the layer: its weight's elements, whether NF4, its LoRA matrices'
    bytes (none when not adapted)."""

    n: int
    quantised: bool
    lora: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Layer:
    """One decoder layer as torchtune builds it: ``attention`` and ``mlp`` linears in
    construction order, ``norms`` (sa_norm, mlp_norm) and the rotary table's
    ``rope_theta`` and ``rope_cache`` bytes; ``rope_temporaries``: cos and sin (fp32)."""

    attention: tuple[_Linear, ...]
    mlp: tuple[_Linear, ...]
    norms: tuple[int, ...]
    rope_theta: int
    rope_cache: int
    rope_temporaries: int


def _build_linear(p: RequestProgram, lin: _Linear) -> list[int]:
    """``LoRALinear.__init__`` (or a plain bf16 ``nn.Linear``): the kept tensors' keys."""
    weight = p.alloc(BF16 * lin.n)
    kept = [weight]
    if lin.quantised:
        kept = from_tensor(p, lin.n)
        p.free(weight)  # the nn.Linear, at _create_weight_and_bias's return
    return kept + [p.alloc(size) for size in lin.lora]


def _build_rope(p: RequestProgram, layer: Layer) -> list[int]:
    """``RotaryPositionalEmbeddings._rope_init``: theta (the int64 arange, its fp32 copy,
    ``/ dim``, ``base **``, ``1.0 /``), then ``build_rope_cache`` (an fp32 arange of the
    positions, the einsum's outer product, cos, sin, their stack)."""
    half = layer.rope_theta // FP32
    arange = p.alloc(INT64 * half)
    as_float = p.alloc(layer.rope_theta)
    p.free(arange)
    divided = p.alloc(layer.rope_theta)
    p.free(as_float)
    power = p.alloc(layer.rope_theta)
    p.free(divided)
    theta = p.alloc(layer.rope_theta)
    p.free(power)
    positions = p.alloc(layer.rope_temporaries // half)
    outer = p.alloc(layer.rope_temporaries)
    cos, sin = p.alloc(layer.rope_temporaries), p.alloc(layer.rope_temporaries)
    cache = p.alloc(layer.rope_cache)
    p.free(cos, sin, outer, positions)
    return [theta, cache]


def build_layer(p: RequestProgram, layer: Layer) -> list[int]:
    """Step 1: the first layer, in construction order; its kept tensors' keys."""
    kept: list[int] = []
    for lin in layer.attention:
        kept += _build_linear(p, lin)
    kept += _build_rope(p, layer)
    for lin in layer.mlp:
        kept += _build_linear(p, lin)
    return kept + [p.alloc(size) for size in layer.norms]


def _copy_linear(p: RequestProgram, lin: _Linear) -> list[int | list[int]]:
    """``copy.deepcopy`` of one linear: its weight (an NF4 weight cloned through
    dequantisation and quantisation, then its ``__dict__`` copied over the clone's), then
    its LoRA matrices. An NF4 weight's entry is the list of its parts' keys."""
    if lin.quantised:
        dense = get_original_weight(p, lin.n)
        clone = from_tensor(p, lin.n)
        p.free(dense)  # to_nf4's argument, once the clone exists
        copies = [p.alloc(size) for size in nf4_parts(lin.n)]
        p.free(*clone)  # the clone's own __dict__, replaced
        weight: int | list[int] = copies
    else:
        weight = p.alloc(BF16 * lin.n)
    return [weight, *(p.alloc(size) for size in lin.lora)]


def copy_layer(p: RequestProgram, layer: Layer) -> list[list[int]]:
    """Step 3: ``copy.deepcopy(layer)`` in module order; per linear (attention's, then
    the MLP's), its NF4 parts' keys (empty when it is not quantised)."""
    sa_norm, mlp_norm = layer.norms[:1], layer.norms[1:]
    for size in sa_norm:
        p.alloc(size)
    nf4: list[list[int]] = []
    for lin in layer.attention:
        weight = _copy_linear(p, lin)[0]
        nf4.append(weight if isinstance(weight, list) else [])
    p.alloc(layer.rope_theta)
    p.alloc(layer.rope_cache)
    for size in mlp_norm:
        p.alloc(size)
    for lin in layer.mlp:
        weight = _copy_linear(p, lin)[0]
        nf4.append(weight if isinstance(weight, list) else [])
    return nf4


def load_layer(p: RequestProgram, layer: Layer, nf4: list[list[int]], cast: bool) -> None:
    """Step 5 for one layer: each NF4 weight's ``inplace_copy`` (the 16-bit parameters
    take their values without a GPU request); ``cast``: the checkpoint is not bf16."""
    for lin, parts in zip((*layer.attention, *layer.mlp), nf4, strict=True):
        if not lin.quantised:
            continue
        stored = p.alloc(BF16 * lin.n)  # src.to(dest_tensor.device)
        as_bf16 = [p.alloc(BF16 * lin.n)] if cast else []  # to_nf4's .to(torch.bfloat16)
        new = from_tensor(p, lin.n)
        p.free(*as_bf16, stored)
        p.free(*parts)  # dest_tensor.quantized_scalers = ... (the old parts)
        parts[:] = new


def init_program(layer: Layer, layers: int, outer: Sequence[int], cast: bool) -> Program:
    """Steps 1-5: the first layer, ``outer`` (embedding, output, final norm), its
    ``layers`` copies, the first layer freed, then the checkpoint loaded."""
    p = RequestProgram()
    first = build_layer(p, layer)
    for size in outer:
        p.alloc(size)
    copies = [copy_layer(p, layer) for _ in range(layers)]
    p.free(*first)
    for nf4 in copies:
        load_layer(p, layer, nf4, cast)
    return tuple(p.ops)


def _mlp_order(name: str) -> int:
    """torchtune's FeedForward registers w1 (gate), w2 (down), w3 (up)."""
    return next((i for i, part in enumerate(("gate", "down", "up")) if part in name), 3)


def torchtune_layer(arch: Architecture, plan: MethodPlan) -> Layer | None:
    """The plan's decoder layer as torchtune 0.1 builds it; None where its blocks are
    not all alike (a layer is built once and copied)."""
    L = arch.num_layers
    block = [g for g in plan.groups if g.in_block]
    if not block or any(g.count != L for g in block):
        return None
    lora: dict[str, list[int]] = {}
    for g in block:
        if g.adapter:
            lora.setdefault(g.name.rsplit(".", 1)[0], []).append(g.nbytes // g.count)
    linears: list[tuple[str, _Linear]] = []
    norms: list[int] = []
    for g in block:
        if g.adapter:
            continue
        if len(g.shape) == 1:
            norms.append(g.nbytes // g.count)
            continue
        module = g.name.rsplit(".", 1)[0]
        linears.append((g.name, _Linear(g.numel, g.fmt == "nf4", tuple(lora.get(module, ())))))
    mlp = sorted((item for item in linears if "mlp" in item[0]), key=lambda i: _mlp_order(i[0]))
    table = arch.max_position_embeddings * (arch.head_size // 2)  # (max_seq_len, dim / 2)
    return Layer(
        attention=tuple(lin for name, lin in linears if "mlp" not in name),
        mlp=tuple(lin for _, lin in mlp),
        norms=tuple(norms),
        rope_theta=FP32 * (arch.head_size // 2),
        rope_cache=2 * FP32 * table,
        rope_temporaries=FP32 * table,
    )


def outer_tensors(plan: MethodPlan) -> tuple[int, ...]:
    """The tensors outside the layers, in torchtune's order: the token embedding and the
    output linear (with its LoRA matrices, if adapted), the final norm (built after the
    first layer)."""
    outer = [g for g in plan.groups if not g.in_block]
    norms = [g for g in outer if len(g.shape) == 1 and not g.adapter]
    rest = [g for g in outer if g not in norms]
    return tuple(g.nbytes // g.count for g in [*rest, *norms] for _ in range(g.count))


def applies(run: RunConfig, profile: Profile, groups: Sequence[TensorGroup]) -> bool:
    """torchtune 0.1, known by its torchao (one GPU: the caller's); ``groups`` must hold
    a layer's tensors."""
    return (
        profile.loading == "torchao-nf4"
        and older_than(run.torchao_version, TORCHTUNE_01_TORCHAO_BEFORE)
        and any(g.in_block for g in groups)
    )


def torchtune_init(
    arch: Architecture, plan: MethodPlan, run: RunConfig, profile: Profile
) -> Program:
    """The init and load program of a torchtune 0.1 run; () where it does not apply. The checkpoint is taken as fp16 (Llama-2's, which torchtune 0.1's QLoRA
    configs load; calibration/configs/llama-2-7b/config.json ``torch_dtype``): ftmem
    does not know a checkpoint's dtype, and a bf16 one only saves the cast's copy."""
    if not applies(run, profile, plan.groups):
        return ()
    layer = torchtune_layer(arch, plan)
    if layer is None:
        return ()
    return init_program(layer, arch.num_layers, outer_tensors(plan), cast=True)
