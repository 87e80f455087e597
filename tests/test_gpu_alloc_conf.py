"""PYTORCH_CUDA_ALLOC_CONF text read as PyTorch's own parser reads it.

Expected values come from PyTorch's test of its parser (pytorch/pytorch
c10/test/core/AllocatorConfig_test.cpp @13e144e13b3b406b56189e1819bde240f16ce621) and
from the allocator rules that tests/test_gpu_allocator.py derives.
"""

from __future__ import annotations

import pytest

from ftmem.errors import InvalidInputError
from ftmem.gpu.alloc_conf import allocator_options
from ftmem.gpu.allocator import CachingAllocator, _divisions_for

MIB = 2**20


def test_the_common_settings():
    options = allocator_options("expandable_segments:True, max_split_size_mb:128")
    assert options == {"expandable_segments": True, "max_split_size_mb": 128}
    assert allocator_options("") == {}
    assert allocator_options("roundup_power2_divisions:4") == {"roundup_power2_divisions": 4}


def test_pytorchs_own_interval_example():
    # AllocatorConfig_test: "[64:8,128:2,256:4,512:2,1024:4,>:1]" gives 8 for 32 and 64 MiB,
    # 2, 4, 2, 4 for 128 ... 1024 MiB and 1 from 2048 MiB on
    text = "max_split_size_mb:40,max_non_split_rounding_mb:30,garbage_collection_threshold:0.5,"
    text += "roundup_power2_divisions:[64:8,128:2,256:4,512:2,1024:4,>:1],expandable_segments:True"
    options = allocator_options(text)
    assert (options["max_split_size_mb"], options["max_non_split_rounding_mb"]) == (40, 30)
    assert options["expandable_segments"] is True
    table = options["roundup_power2_divisions"]
    expected = {32: 8, 64: 8, 128: 2, 256: 4, 512: 2, 1024: 4, 2048: 1, 4096: 1, 8192: 1}
    assert {mib: _divisions_for(mib * MIB, table) for mib in expected} == expected


def test_a_garbage_collection_threshold_in_range_is_accepted_without_effect():
    assert allocator_options("garbage_collection_threshold:0.6,max_split_size_mb:64") == {
        "max_split_size_mb": 64
    }


def test_settings_reach_the_allocator():
    a = CachingAllocator(**allocator_options("expandable_segments:True"))
    for _ in range(30):
        a.malloc(7 * MIB)
    assert a.reserved == 220 * MIB  # 210 MiB in 20 MiB pages (test_gpu_allocator)


@pytest.mark.parametrize(
    "text",
    [
        "backend:cudaMallocAsync",
        "expandable_segments:yes",
        "max_split_size_mb:big",
        "no_such_option:1",
        "expandable_segments",
        "roundup_power2_divisions:[256:1",
        "roundup_power2_divisions:[3:1]",
        "expandable_segments:True;max_split_size_mb:64",
        # PyTorch: TORCH_CHECK(val > 0 ...) and (val < 1.0 ...), NaN failing the first
        "garbage_collection_threshold:nan",
        "garbage_collection_threshold:5",
        "garbage_collection_threshold:0",
        "garbage_collection_threshold:1.0",
        "garbage_collection_threshold:0.x",
    ],
)
def test_bad_settings_are_one_sentence(text):
    with pytest.raises(InvalidInputError) as error:
        CachingAllocator(**allocator_options(text))
    assert "\n" not in str(error.value)
