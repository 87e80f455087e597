"""torchtune 0.1's QLoRA init and load (ftmem.torchtune_init) against PyTorch and by hand.

The truths: torchao v0.1's NF4 code (pytorch/ao@ff2889540075e8c8d0a2f4b9900da1b9136ae376
torchao/dtypes/nf4tensor.py), transcribed below statement by statement and run on the
CPU with every op output's storage logged as it is allocated and freed
(ftmem.measure.tracker.LiveBytesTracker); ``copy.deepcopy`` of a storage-less wrapper
subclass run the same way; the bytes the model keeps, counted by hand from torchtune
@0914d5cfb's modules; and the tutorial's published reserve after model init.
"""

from __future__ import annotations

import copy
import gc
import weakref
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from ftmem.api import _architecture
from ftmem.gpu.allocator import CachingAllocator
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.methods import plan_method
from ftmem.profiles import HF, TORCHTUNE
from ftmem.run import RunConfig
from ftmem.torchtune_init import (
    RequestProgram,
    from_tensor,
    get_original_weight,
    nf4_parts,
    torchtune_init,
)

CONFIGS = Path(__file__).resolve().parents[1] / "calibration" / "configs"
N = 128 * 256  # a multiple of 64 * 256: whole blocks and scaler blocks


# -- torchao v0.1, transcribed (nf4tensor.py @ff288954; module-level names kept) ------


def get_block_absmax(inpt_tensor, block_size):
    n_blocks = inpt_tensor.numel() // block_size
    blocks = inpt_tensor.view(n_blocks, block_size)
    block_scalers = blocks.abs().max(dim=1).values
    return block_scalers


def double_quantize_scalers(inpt_tensor, block_size, scaler_block_size):
    scalers_1 = get_block_absmax(inpt_tensor, block_size)
    scalers_1_mean = scalers_1.mean()
    scalers_1 = scalers_1 - scalers_1_mean
    n_scaler_blocks = scalers_1.numel() // scaler_block_size
    scaler_blocks = scalers_1.view(n_scaler_blocks, scaler_block_size)
    scaler_absmax = get_block_absmax(scalers_1, scaler_block_size)
    scaler_absmax = scaler_absmax.unsqueeze(-1).expand(n_scaler_blocks, scaler_block_size)
    quantization_factor = 256 / (2 * scaler_absmax)
    quantized_scaler_blocks = scaler_blocks * quantization_factor
    quantized_scaler_blocks = quantized_scaler_blocks.round()
    quantized_scaler_blocks = quantized_scaler_blocks.clamp(-128, 127)
    quantization_factor = quantization_factor[:, 0]
    return (
        quantized_scaler_blocks.flatten().to(torch.int8),
        quantization_factor.view(n_scaler_blocks),
        scalers_1_mean,
    )


def quantize_tensor_nearest(value, nf4):
    value = value.unsqueeze(-1)
    diff = (value - nf4).abs()
    closest_nf4 = diff.min(dim=-1).indices
    return closest_nf4


def convert_to_norm_float_weight(inpt_tensor, n_blocks, block_size, nf4):
    flattened_tensor = inpt_tensor.flatten()
    blocks = flattened_tensor.view(n_blocks, block_size)
    scalers = get_block_absmax(inpt_tensor.flatten(), block_size)
    scales = scalers.unsqueeze(-1).expand(n_blocks, block_size)
    scaled_blocks = blocks / scales
    quantized_blocks = quantize_tensor_nearest(scaled_blocks.flatten(), nf4)
    combined_blocks = quantized_blocks[::2] << 4 | quantized_blocks[1::2]
    return combined_blocks.to(torch.uint8)


NF4_CODES = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0]
NF4_CODES += [0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]


@torch.no_grad()
def torchao_from_tensor(inpt_tensor, block_size=64, scaler_block_size=256):
    """NF4Tensor.from_tensor, its parts in ``__init__``'s order instead of the wrapper."""
    nf4 = torch.tensor(NF4_CODES, device=inpt_tensor.device, dtype=torch.bfloat16)
    n_blocks = inpt_tensor.numel() // block_size
    quantized_scalers, quantization_factor, scaler_mean = double_quantize_scalers(
        inpt_tensor.flatten(), block_size, scaler_block_size
    )
    quantized_data = convert_to_norm_float_weight(inpt_tensor, n_blocks, block_size, nf4)
    return [quantized_scalers, quantization_factor, scaler_mean, quantized_data, nf4]


def dequantize_scalers(parts, scaler_block_size=256):
    quantized_scalers, quantization_factor, scaler_mean = parts[:3]
    n_scaler_blocks = quantized_scalers.numel() // scaler_block_size
    inpt_tensor = quantized_scalers.view(n_scaler_blocks, scaler_block_size)
    dequantized = (inpt_tensor / quantization_factor.unsqueeze(-1)).flatten().to(
        torch.bfloat16
    ) + scaler_mean
    return dequantized


def torchao_get_original_weight(parts, shape, block_size=64):
    quantized_data, nf4 = parts[3], parts[4]
    first_elements = (quantized_data >> 4).to(torch.long)
    second_elements = (quantized_data & 0b1111).to(torch.long)
    dequantized_first = nf4[first_elements]
    dequantized_second = nf4[second_elements]
    scalers = dequantize_scalers(parts)
    repeated = scalers.unsqueeze(-1).expand(scalers.size(0), block_size // 2)
    scaled_first = dequantized_first * repeated.flatten()
    scaled_second = dequantized_second * repeated.flatten()
    scaled_first = scaled_first.unsqueeze(-1).transpose(0, 1)
    scaled_second = scaled_second.unsqueeze(-1).transpose(0, 1)
    return torch.stack([scaled_first, scaled_second], dim=-1).reshape(shape)


# -- helpers ----------------------------------------------------------------------------


def _measured(fn, *tracked):
    """The events ``fn()`` makes (its inputs' storages tracked first, left out), renumbered
    from 0, and its result (kept alive so its frees are not logged)."""
    events: list[tuple[str, int]] = []
    tracker = LiveBytesTracker(events)
    with tracker:
        tracker.track(*tracked)
        skip = len(events)
        result = fn()
    made = [(kind, value - skip if kind == "free" else value) for kind, value in events[skip:]]
    return [(k, v) for k, v in made if k == "alloc" or v >= 0], result


def _program(build) -> list[tuple[str, int]]:
    p = RequestProgram()
    build(p)
    return p.ops


def _peak_and_kept(ops) -> tuple[int, int]:
    """The live bytes' peak over the program and what it never frees."""
    sizes = [v for k, v in ops if k == "alloc"]
    live, peak, index = 0, 0, 0
    freed = set()
    for kind, value in ops:
        if kind == "alloc":
            live += value
            peak = max(peak, live)
            index += 1
        else:
            live -= sizes[value]
            freed.add(value)
    return peak, sum(s for i, s in enumerate(sizes) if i not in freed)


# -- the tests ---------------------------------------------------------------------------


def test_from_tensor_requests_what_torchao_v01_allocates():
    weight = torch.randn(128, 256, dtype=torch.bfloat16)
    measured, parts = _measured(lambda: torchao_from_tensor(weight), weight)
    assert _program(lambda p: from_tensor(p, N)) == measured
    assert [t.untyped_storage().nbytes() for t in parts] == list(nf4_parts(N))


def test_from_tensor_peak_by_hand():
    # at ``.abs()`` of quantize_tensor_nearest: the code book (32), the int8 scalers
    # (n/64), the factor's storage (2n/64), the mean (2), the block absmaxes (2n/64),
    # scaled_blocks (2n), ``value - nf4`` and its abs (16 bf16 per element each)
    n = 11008 * 4096
    peak, kept = _peak_and_kept(_program(lambda p: from_tensor(p, n)))
    assert peak == 32 + n // 64 + 2 * n // 64 + 2 + 2 * n // 64 + 2 * n + 2 * 32 * n
    assert kept == 32 + n // 64 + 2 * n // 64 + 2 + n // 2


def test_get_original_weight_requests_what_torchao_v01_allocates():
    parts = torchao_from_tensor(torch.randn(128, 256, dtype=torch.bfloat16))
    measured, dense = _measured(lambda: torchao_get_original_weight(parts, (128, 256)), parts)
    assert _program(lambda p: get_original_weight(p, N)) == measured
    assert dense.untyped_storage().nbytes() == 2 * N


class _Wrapper(torch.Tensor):
    """A storage-less wrapper subclass holding one tensor in its ``__dict__`` and cloned
    by rebuilding it (as NF4Tensor with torchtune's clone); ``made`` keeps a weak
    reference to each clone's own tensor."""

    made: ClassVar[list] = []

    @staticmethod
    def __new__(cls, inner):
        return torch.Tensor._make_wrapper_subclass(cls, inner.shape, dtype=inner.dtype)

    def __init__(self, inner):
        self.inner = inner

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.clone.default:
            fresh = args[0].inner.clone()
            cls.made.append(weakref.ref(fresh))
            return _Wrapper(fresh)
        if func is torch.ops.aten.detach.default:
            return args[0]
        raise NotImplementedError(func)

    __torch_function__ = torch._C._disabled_torch_function_impl


def test_deepcopy_of_a_wrapper_clones_then_copies_its_dict():
    # torch/_tensor.py __deepcopy__ (PR #73078): ``self.clone()``, then
    # ``new_tensor.__dict__ = deepcopy(self.__dict__)``: the clone's own tensor is made,
    # a copy of the original's replaces it and it is freed before deepcopy returns
    # (_copy_linear's order; no dispatch mode here, which would hold it longer)
    inner = torch.arange(1000, dtype=torch.bfloat16)
    _Wrapper.made.clear()
    gc.disable()
    try:
        copied = copy.deepcopy(_Wrapper(inner))
        assert len(_Wrapper.made) == 1 and _Wrapper.made[0]() is None
    finally:
        gc.enable()
    assert copied.inner is not inner and torch.equal(copied.inner, inner)


def _llama2_7b_qlora(torchao_version: str | None = "0.1") -> tuple:
    arch = _architecture(str(CONFIGS / "llama-2-7b" / "config.json"))
    run = RunConfig(
        method="qlora",
        quant="nf4",
        framework="torchtune",
        adapter_dtype="bf16",
        lora_r=8,
        lora_alpha=16,
        lora_targets="q,k,v,o,gate,up,down",
        torchao_version=torchao_version,
    )
    return arch, plan_method(arch, run), run


def _replayed(program) -> CachingAllocator:
    allocator = CachingAllocator()
    handles: list[int] = []
    for kind, value in program:
        if kind == "alloc":
            handles.append(allocator.malloc(value))
        else:
            allocator.free(handles[value])
    return allocator


def test_the_model_keeps_its_weights_and_rotary_tables():
    # torchtune @0914d5cfb qlora_llama2_7b: per layer 4 NF4 (4096 x 4096) and 3 NF4
    # (11008 x 4096) weights, r = 8 bf16 LoRA A (8 x in) and B (out x 8) beside each, two
    # bf16 norms of 4096, the rotary theta (64 fp32) and cache (4096 x 64 x 2 fp32); then
    # the bf16 embedding and output (32000 x 4096) and the final norm
    h, f, V, r = 4096, 11008, 32000, 8
    parts = 4 * sum(nf4_parts(h * h)) + 3 * sum(nf4_parts(f * h))
    lora = 4 * 2 * (r * h + h * r) + 2 * 2 * (r * h + f * r) + 2 * (r * f + h * r)
    layer = parts + lora + 2 * 2 * h + 4 * 64 + 4 * 4096 * 64 * 2
    arch, plan, run = _llama2_7b_qlora()
    _, kept = _peak_and_kept(torchtune_init(arch, plan, run, TORCHTUNE))
    assert kept == 32 * layer + 2 * 2 * V * h + 2 * h


def test_the_reserve_after_init_is_the_tutorials():
    # docs/source/tutorials/qlora_finetune.rst @0914d5cfb: "QLoRA | 9.13 GB (model init)",
    # max_memory_reserved / 1e9 (torchtune/utils/memory.py memory_stats_log); reserved
    # only grows, so it is the reserve when init and loading end
    arch, plan, run = _llama2_7b_qlora()
    allocator = _replayed(torchtune_init(arch, plan, run, TORCHTUNE))
    assert allocator.stats().peak_reserved == pytest.approx(9.13e9, rel=0.005)


def test_the_lora_init_peaks_are_the_tutorials():
    # the same tutorial's LoRA log (llama2/7B_lora_single_device @0914d5cfb: q_proj and
    # v_proj, r 8, bf16): "GPU peak memory allocation: 13.96 GB", "GPU peak memory
    # reserved: 13.98 GB" after model init (the first layer and its 32 copies together)
    arch = _architecture(str(CONFIGS / "llama-2-7b" / "config.json"))
    run = RunConfig(
        method="lora",
        framework="torchtune",
        adapter_dtype="bf16",
        precision="bf16",
        lora_r=8,
        lora_alpha=16,
        lora_targets="q,v",
        torchao_version="0.1",
    )
    stats = _replayed(torchtune_init(arch, plan_method(arch, run), run, TORCHTUNE)).stats()
    assert stats.peak_allocated == pytest.approx(13.96e9, rel=0.002)
    assert stats.peak_reserved == pytest.approx(13.98e9, rel=0.002)


@pytest.mark.parametrize(
    ("torchao_version", "profile", "applies"),
    [
        ("0.1", TORCHTUNE, True),
        ("0.2", TORCHTUNE, False),
        (None, TORCHTUNE, False),
        ("0.1", HF, False),
    ],
)
def test_only_torchtune_01_builds_a_layer_and_copies_it(torchao_version, profile, applies):
    arch, plan, run = _llama2_7b_qlora(torchao_version)
    assert bool(torchtune_init(arch, plan, run, profile)) is applies
