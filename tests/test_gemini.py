"""ColossalAI GeminiPlugin's chunks and per-rank bytes against ColossalAI's own code.

Truths (ColossalAI 0.5.0 = hpcaitech/ColossalAI 4f9953be335e: its sdist's source on the
path beside torch 2.13, since its pins refuse to install here; 8 gloo ranks on the CPU,
2026-12-02):
* ``search_chunk_configuration`` on 8 ranks over meta-device HF Llamas gave chunk_size
  45,101,056 (Llama-2-7B) and 234,905,600 (Llama-3.3-70B).
* a real ``GeminiDDP`` on 8 ranks over a small Llama (V=1000, h=256, I=688, 4 layers,
  8 heads / 4 kv, untied, search_range_m = min_chunk_size_m = 0.05) built 15 chunks of
  275,456 (13 with attention and embedding frozen), listed below, and its
  ``chunk_manager.total_mem`` was 3,098,880 B (2,685,696 B frozen) per rank.
The rest is derived here from the cited source lines.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

import pytest

from ftmem import gemini
from ftmem.api import run_config
from ftmem.errors import InvalidInputError
from ftmem.gemini import chunk_size, gemini_rank, pack, parameter_order
from ftmem.methods import TensorGroup, plan_method
from ftmem.presets import get_model
from ftmem.sources import architecture_from_config

SMALL = {
    "model_type": "llama",
    "vocab_size": 1000,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
}
SMALL_SEARCH = {"search_range_m": 0.05, "min_chunk_size_m": 0.05}
# (chunk_size, utilized_size) of GeminiDDP's first fp16 chunks (pack_check.out)
SMALL_FULL_FIRST = [256000, 196608, 176128, 176128, 274944, 274432, 176128, 274944]
SMALL_FROZEN_FIRST = [176128, 176128, 176640, 176128, 176128, 176640, 176128, 176128]


def _plan(arch, method="full"):
    return plan_method(arch, run_config(method=method, precision="bf16")).groups


def _small(**changes):
    return architecture_from_config({**SMALL, **changes}, "small", "small")


def _frozen_attention(groups):
    """pack_check's frozen case: every self_attn tensor and the embedding frozen."""
    return tuple(
        dataclasses.replace(g, trainable=False) if "self_attn" in g.name or "embed" in g.name else g
        for g in groups
    )


def _sizes(groups, arch):
    return [p.numel for p in parameter_order(groups, arch, arch.num_layers)]


def _trainable(groups, arch):
    return [p.numel for p in parameter_order(groups, arch, arch.num_layers) if p.trainable]


# --- the chunk size search -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "params", "expected"),
    [
        ("llama2-7b", 6_738_415_616, 45_101_056),
        ("llama3.3-70b", 70_553_706_496, 234_905_600),
    ],
)
def test_chunk_size_matches_colossalai_search(model, params, expected):
    arch = get_model(model)
    sizes = _sizes(_plan(arch), arch)
    assert sum(sizes) == params  # the total search_chunk_configuration returned
    assert chunk_size(sizes, 8) == (expected, False)


def test_small_llama_chunk_size_matches_gemini_ddp():
    arch = _small()
    assert chunk_size(_sizes(_plan(arch), arch), 8, **SMALL_SEARCH) == (275_456, False)


def _random_sizes(rng: random.Random) -> list[int]:
    kind = rng.randrange(3)
    if kind == 0:  # anything
        return [rng.randint(1, 40_000) for _ in range(rng.randint(1, 60))]
    if kind == 1:  # repeated blocks, like a decoder, with two large outer tensors
        block = [rng.choice([256, 4096, 9000, 16_384, 30_000]) for _ in range(rng.randint(2, 9))]
        big = rng.randint(50_000, 400_000)
        return [big, *block * rng.randint(2, 12), 256, big]
    return [rng.choice([1, 7, 1024, 5000, 20_000, 33_000]) for _ in range(rng.randint(1, 80))]


def _naive_chunk_size(sizes, group, search_range_m=32, min_chunk_size_m=32, interval=1024):
    """search:143-185 as written: float outlier filter (np.std is the population std),
    then every candidate's next-fit leftover (search:41-60)."""
    search_range, min_chunk = round(search_range_m * 2**20), round(min_chunk_size_m * 2**20)
    if sum(sizes) < min_chunk:
        return sum(sizes), True
    limit = statistics.fmean(sizes) + 3 * statistics.pstdev(sizes)
    kept = [s for s in sizes if s <= limit]
    start = math.ceil(max(min_chunk, max(kept)) / interval) * interval
    best, least = start, math.inf
    for cs in range(start, start + search_range + 1, interval):
        acc = left = 0
        for s in kept:
            if s > left:
                acc += left
                left = cs
            left -= s
        if left + acc < least:
            best, least = cs, left + acc
    return best + (-best % group), False


def test_fast_search_equals_the_naive_scan():
    """The branch and bound returns what scanning every candidate returns (search:173-182)."""
    rng = random.Random(20261202)
    for _ in range(300):
        sizes = _random_sizes(rng)
        group = rng.choice([1, 2, 3, 8, 64])
        interval = rng.choice([1, 7, 64, 1024])
        settings = {
            "search_range_m": rng.choice([0.0, 0.01, 0.05, 0.2]),
            "min_chunk_size_m": rng.choice([0.0, 0.005, 0.02, 0.1]),
            "interval": interval,
        }
        if (settings["search_range_m"] * 2**20) / interval > 5000:
            settings["interval"] = 1024  # keep the naive scan short
        assert chunk_size(sizes, group, **settings) == _naive_chunk_size(
            sizes, group, **settings
        ), (sizes, group, settings)


def test_fast_search_equals_the_naive_scan_on_llama2_7b():
    arch = get_model("llama2-7b")
    sizes = _sizes(_plan(arch), arch)
    assert gemini._chunk_size.__wrapped__(tuple(sizes), 8, 32, 32, 1024) == (
        _naive_chunk_size(sizes, 8)
    )


def test_a_model_under_the_minimum_is_one_gathered_chunk():
    """search:159-161: total < min_chunk_size_m·2^20 → chunk_size = the total, unsharded."""
    arch = _small()
    sizes = _sizes(_plan(arch), arch)
    assert sum(sizes) < 32 * 2**20
    assert chunk_size(sizes, 8) == (sum(sizes), True)


def test_outliers_are_left_out_of_the_search():
    """One tensor above mean + 3σ is dropped (search:14-38): the search starts at the
    largest of the others, rounded up to the interval."""
    sizes = [100] * 20 + [10_000]
    assert chunk_size(sizes, 1, search_range_m=0, min_chunk_size_m=0, interval=64) == (128, False)


def test_chunk_size_is_rounded_up_to_the_group():
    # the waste is least at 1000 (ten tensors of 100 fill it), rounded up to 1008 (search:185)
    sizes = [100] * 10
    got = chunk_size(sizes, 16, search_range_m=0, min_chunk_size_m=1000 / 2**20, interval=1000)
    assert got == (1008, False)


def test_bad_search_settings_are_refused():
    with pytest.raises(InvalidInputError, match="group of at least one rank"):
        chunk_size([100], 0)


# --- the packing ---------------------------------------------------------------------


def test_pack_matches_gemini_ddp_full():
    arch = _small()
    chunks = pack(_trainable(_plan(arch), arch), 275_456, 8)
    assert len(chunks) == 15
    assert all(size == 275_456 for size, _ in chunks)
    assert [used for _, used in chunks[:8]] == SMALL_FULL_FIRST


def test_pack_matches_gemini_ddp_with_frozen_attention():
    """Frozen tensors count in the search but never enter a chunk (ddp:826-832)."""
    arch = _small()
    groups = _frozen_attention(_plan(arch))
    cs, _ = chunk_size(_sizes(groups, arch), 8, **SMALL_SEARCH)
    chunks = pack(_trainable(groups, arch), cs, 8)
    assert cs == 275_456
    assert len(chunks) == 13
    assert [used for _, used in chunks[:8]] == SMALL_FROZEN_FIRST


def test_pack_gives_a_large_tensor_its_own_padded_chunk():
    """mgr:92-95: a tensor over chunk_size gets a chunk of its size rounded up to the
    group; a later small tensor still fits in its padding (mgr:82, chunk:274-277)."""
    assert pack([10, 2, 3, 5], 8, 4) == ((12, 12), (8, 8))
    assert pack([5, 4], 8, 4) == ((8, 5), (8, 4))


# --- parameter order -----------------------------------------------------------------


def test_order_is_hugging_face_parameters_order():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    arch = _small()
    config = transformers.LlamaConfig(**{k: v for k, v in SMALL.items() if k != "model_type"})
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    real = [(p.numel(), True) for p in model.parameters()]
    mine = [(p.numel, p.trainable) for p in parameter_order(_plan(arch), arch, 4)]
    assert mine == real


def test_order_puts_adapters_behind_their_module_as_peft_does():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    arch = _small()
    config = transformers.LlamaConfig(**{k: v for k, v in SMALL.items() if k != "model_type"})
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    groups = _plan(arch, "lora")
    rank = next(g.shape[0] for g in groups if g.name.endswith("lora_A"))
    targets = sorted({g.name.split(".")[1] for g in groups if g.adapter})
    model = peft.get_peft_model(model, peft.LoraConfig(r=rank, target_modules=targets))
    real = [(p.numel(), p.requires_grad) for p in model.parameters()]
    mine = [(p.numel, p.trainable) for p in parameter_order(groups, arch, 4)]
    assert mine == real


def test_order_of_a_partly_frozen_stack():
    """Trainable copies of a partial group are the top blocks, frozen ones the bottom."""
    arch = _small()
    bf16 = _plan(arch)[0].fmt

    def group(name, trainable, count, in_block=True):
        return TensorGroup(name, (3,), count, bf16, trainable, in_block=in_block)

    groups = (
        group("model.embed_tokens.weight", False, 1, in_block=False),
        group("model.norm.weight", True, 1, in_block=False),
        group("lm_head.weight", True, 1, in_block=False),
        group("a", False, 3),
        group("a", True, 1),
        group("b", True, 4),
    )
    order = [(p.name, p.trainable) for p in parameter_order(groups, arch, 4)]
    blocks = [("a", False), ("b", True)] * 3 + [("a", True), ("b", True)]
    assert order == [
        ("model.embed_tokens.weight", False),
        *blocks,
        ("model.norm.weight", True),
        ("lm_head.weight", True),
    ]


# --- one rank ------------------------------------------------------------------------


def _rank(groups, arch, **kw):
    return gemini_rank(groups, arch, arch.num_layers, 8, **kw)


@pytest.mark.parametrize(
    ("frozen", "total_mem"),
    [(False, 3_098_880), (True, 2_685_696)],
)
def test_pinned_host_bytes_equal_gemini_ddp_shard_bytes(frozen, total_mem):
    """GeminiDDP's ``total_mem`` counted one shard_mem per closed chunk, 16-bit and fp32
    (chunk:186-189): (2 + 4)·C/N. With pin_memory each such shard has a pinned twin of
    the same size and dtype (chunk:313-314), so that is the pinned host memory."""
    arch = _small()
    groups = _plan(arch)
    if frozen:
        groups = _frozen_attention(groups)
    r = _rank(groups, arch, **SMALL_SEARCH)
    assert r.chunks == (13 if frozen else 15)
    assert (2 + 4) * r.chunks * 275_456 // 8 == total_mem
    assert r.host_pinned == total_mem
    assert r.host_unpinned == 0


def test_worked_example_a_llama2_7b_full_bf16_eight_gpus():
    """Notes §6. Layout by hand: the embedding and the LM head (32000·4096 =
    131,072,000, a multiple of 8) each get their own chunk; each block packs into
    [q,k] [v,o] [gate] [up] [down,ln1,ln2] of 45,101,056; the final norm fills the last
    block's [down,ln1,ln2] chunk exactly (45,088,768 + 2·4096 + 4096 = 45,101,056)."""
    arch = get_model("llama2-7b")
    r = _rank(_plan(arch), arch)
    h, i, v, cs, n = 4096, 11008, 32000, 45_101_056, 8
    assert i * h + 3 * h == cs  # the last chunk is full
    assert 2 * h * h <= cs < 3 * h * h and i * h + h * h > cs  # why q,k and v,o pair up
    chunks = 2 + 32 * 5
    c = 2 * v * h + 32 * 5 * cs
    assert (r.chunk_size, r.chunks, r.chunk_elements) == (cs, chunks, c)
    assert (chunks, c) == (162, 7_478_312_960)  # the notes' simulation (§1.5)
    shard = c // n  # 934,789,120; every chunk's used ≥ its shard, so own0 = C/N
    assert r.shards == 2 * shard
    assert r.masters == 4 * shard
    assert r.states == 8 * shard
    assert r.grads == r.replicated == 0
    assert r.resident == 14 * shard == 13_087_047_680
    assert r.host_pinned == 6 * shard == 5_608_734_720
    # the LM head's chunk alone at the head; two 45.1M chunks at a block boundary
    assert r.gathered_head == 2 * v * h
    assert r.gathered_forward == 2 * 2 * cs
    assert r.head_backward == 2 * 2 * v * h  # autograd's grad + the hook's empty_like
    assert r.gathered_outer == 2 * v * h  # the embedding's chunk, at the end of backward
    # two block chunks + the reduce-scatter's output shard (chunk:404-406)
    assert r.gathered_backward == 2 * 2 * cs + 2 * cs // n
    assert r.block_backward == 2 * 2 * i * h  # gate, up and down are the largest in a block


def test_offloaded_optimizer_leaves_the_16_bit_shards():
    """offload_optim_frac=1: masters, Adam states and reduced grads go to the host
    (policy:91-105, ddp:429-431, 873-874); the Adam states are not pinned."""
    arch = get_model("llama2-7b")
    r = _rank(_plan(arch), arch, optim_frac=1.0)
    shard = 7_478_312_960 // 8
    assert r.shards == 2 * shard
    assert r.masters == r.states == r.grads == 0
    assert r.host_pinned == 6 * shard
    assert r.host_unpinned == 8 * shard
    assert r.access_transient == 4 * (131_072_000 // 8)  # the largest chunk's fp32 shard
    both = _rank(_plan(arch), arch, optim_frac=1.0, offload_params=True)
    assert both.shards == 0
    assert both.host_pinned == r.host_pinned


def test_parameters_offload_needs_the_optimizer_offloaded():
    arch = _small()
    with pytest.raises(InvalidInputError, match=r"offload_optim_frac=1\.0"):
        _rank(_plan(arch), arch, offload_params=True)


def test_gradient_accumulation_keeps_separate_gradient_shards():
    """enable_gradient_accumulation → no reuse (ddp:106): a gradient chunk per chunk,
    with its own pinned shard (chunk:640-683, 670-673): 8·C/N pinned."""
    arch = _small()
    r = _rank(_plan(arch), arch, accumulation=True, **SMALL_SEARCH)
    c = 15 * 275_456
    assert r.grads == 2 * c // 8
    assert r.host_pinned == (2 + 4 + 2) * c // 8


def test_frozen_tensors_are_replicated_in_16_bit():
    arch = _small()
    groups = _frozen_attention(_plan(arch))
    frozen = sum(g.total_numel for g in groups if not g.trainable)
    assert _rank(groups, arch, **SMALL_SEARCH).replicated == 2 * frozen


def test_a_tiny_model_is_kept_whole_and_unpinned():
    """search:159-161 + chunk:102-104, 147-148: one unsharded chunk the size of every
    parameter (frozen ones too), Adam states for every trainable element, nothing pinned."""
    arch = _small()
    groups = _frozen_attention(_plan(arch))
    total = sum(g.total_numel for g in groups)
    trainable = sum(g.total_numel for g in groups if g.trainable)
    r = _rank(groups, arch, optim_frac=1.0)
    assert r.keep_gathered
    assert (r.chunks, r.chunk_size) == (1, total)
    assert r.shards == 2 * total
    assert r.masters == 4 * total
    assert r.states == 8 * trainable
    assert r.host_pinned == r.host_unpinned == 0


def test_tied_head_is_the_embedding_chunk():
    arch = _small(tie_word_embeddings=True)
    r = _rank(_plan(arch), arch, **SMALL_SEARCH)
    assert r.gathered_head == 2 * 275_456  # the embedding (256,000) sits in a regular chunk
