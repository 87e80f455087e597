"""AdamW's states, one pair per FSDP unit, when every LoRA matrix is a unit of its own
(gpu.trace.leaf_units; calibration/notes/fsdp_qlora.md F13).

Answer.AI's fsdp_qlora wraps each trainable leaf module (each LoRA matrix) as an FSDP unit
(AnswerDotAI/fsdp_qlora@50efa1e train.py ``get_wrapping_policy``) with
``use_orig_params=False``, so ``model.parameters()`` yields one FlatParameter per unit and
``torch.optim.AdamW(model.parameters(), ...)`` keeps ``exp_avg`` and ``exp_avg_sq`` per
FlatParameter (torch/optim/adamw.py ``_init_group``: ``torch.zeros_like(p)`` for each
parameter with a gradient; the same in torch 2.2 and 2.13), in its shape: rank 0's shard,
ceil(n / W) elements, or the whole matrix under NO_SHARD. On Llama-2-7B with r = 64 those
are tensors of 256 and 688 KiB per rank: the caching allocator serves requests of at most
1 MiB from its small pool (2 MiB segments), which the large blocks the wrap leaves cached
cannot serve. The PyTorch half runs FSDP1 on two gloo ranks on the CPU.
"""

from __future__ import annotations

import pytest

from ftmem.api import parallel_config, run_config
from ftmem.estimate import _leaf_shards, _tensors
from ftmem.gpu.allocator import CachingAllocator
from ftmem.gpu.trace import leaf_units
from ftmem.methods import plan_method
from ftmem.parallel import parallel_step
from ftmem.presets import get_model
from tests import fsdp_gloo as gloo

KiB, MiB = 2**10, 2**20


def _lora_7b():
    arch = get_model("llama-2-7b")
    run = run_config(
        method="lora",
        precision="bf16",
        framework="fsdp_qlora",
        lora_r=64,
        lora_targets="q,k,v,gate,up,down",
        adapter_dtype="bf16",
        batch_size=1,
        seq_len=512,
    )
    return arch, run


def _one_layer_by_hand(shards: int) -> list[int]:
    """Llama-2-7B's twelve LoRA matrices of one layer in module order (q, k, v, gate,
    up, down; A then B), bf16, as rank 0's shard of each."""
    d, inter, r = 4096, 11008, 64
    shapes = [(r, d), (d, r)] * 3 + [(r, d), (inter, r)] * 2 + [(r, inter), (d, r)]
    return [-(-(a * b) // shards) * 2 for a, b in shapes]


@pytest.mark.parametrize("shards", [2, 1], ids=["full-shard", "no-shard"])
def test_leaf_units_by_hand(shards):
    arch, run = _lora_7b()
    units = leaf_units(plan_method(arch, run), shards)
    assert units == tuple(_one_layer_by_hand(shards) * 32)
    if shards == 2:  # 256 KiB and 688 KiB per rank
        assert set(units) == {256 * KiB, 688 * KiB}


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp-no-shard"])
def test_the_replayed_states_are_one_pair_per_lora_matrix(strategy):
    """The rank's optimizer states as two moments per LoRA unit, its step temporaries
    (foreach AdamW's ``_foreach_sqrt`` of the second moments) one per unit; NO_SHARD's
    gradients are each unit's whole one (each FlatParameter's own ``.grad``)."""
    arch, run = _lora_7b()
    par = parallel_config(gpus=2, strategy=strategy)
    step = parallel_step(arch, run, par)
    sizes = step.ranks[step.worst].sizes
    shards = 2 if strategy == "fsdp" else 1
    assert _leaf_shards(run, par) == shards
    tensors = _tensors(step.parts, sizes, shards, run)
    layer = _one_layer_by_hand(shards)
    assert tensors.states == tuple(size for size in layer * 32 for _ in range(2))
    assert sum(tensors.states) == sizes.states
    assert tensors.step_temporaries == tuple(layer * 32)
    assert tensors.block_grads == tuple(layer)


def test_other_frameworks_keep_one_buffer_per_block():
    """Without a policy wrapping each LoRA matrix (HF Trainer under FSDP2, its default
    at the installed transformers: a decoder layer per unit) the states stay one flat
    buffer per block (tests/test_hf_fsdp_peft_units.py: FSDP1's)."""
    run = run_config(method="lora", precision="bf16", lora_r=64, batch_size=1, seq_len=512)
    assert _leaf_shards(run, parallel_config(gpus=2, strategy="fsdp")) == 0


def test_one_layers_moments_take_five_small_segments_beside_a_large_cache():
    """One layer's 24 moments (2 x the twelve shards of 256 and 688 KiB, 8.53 MiB) after
    a 1 GiB large block was cached. By hand (best fit in the small pool, 2 MiB segments,
    a block split when 512 B or more is left): q, k, v's twelve 256 KiB moments fill
    segment 1 and half of 2; gate_A's two 256 KiB leave 512 KiB in 2; gate_B's 688 KiB
    pair opens 3 (672 KiB left); up_A's pair fills 2's last 512 KiB; up_B's pair opens 4,
    down_A's 5 (672 KiB left in each); down_B's pair fits in 3. Five segments, 10 MiB,
    none from the large cache; the same bytes as one 8.53 MiB chunk per layer reserved
    nothing new."""
    moments = [size for size in _one_layer_by_hand(2) for _ in range(2)]
    alloc = CachingAllocator()
    alloc.free(alloc.malloc(1024 * MiB))
    before = alloc.reserved
    for size in moments:
        alloc.malloc(size)
    assert alloc.reserved - before == 5 * 2 * MiB
    chunked = CachingAllocator()
    chunked.free(chunked.malloc(1024 * MiB))
    chunked.malloc(sum(moments))
    assert chunked.reserved == 1024 * MiB


def _grads_and_states(strategy: str) -> dict[str, list]:
    """A frozen linear, then two layers of three LoRA-adapted linears, wrapped as train.py
    wraps (each trainable leaf a unit, each layer a unit, the root); one forward, backward
    and AdamW step: the elements of the rank's gradients and states, per parameter."""
    import functools

    import torch
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
    from torch.distributed.fsdp.wrap import (
        ModuleWrapPolicy,
        _or_policy,
        lambda_auto_wrap_policy,
    )

    class Lora(nn.Module):
        def __init__(self, d_in: int, d_out: int, r: int) -> None:
            super().__init__()
            self.base_layer = nn.Linear(d_in, d_out, bias=False)
            self.base_layer.weight.requires_grad_(False)
            self.lora_A = nn.Linear(d_in, r, bias=False)
            self.lora_B = nn.Linear(r, d_out, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.base_layer(x) + self.lora_B(self.lora_A(x))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.up, self.down = Lora(16, 16, 3), Lora(16, 37, 3), Lora(37, 16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.down(self.up(self.q(x)))

    def trainable_leaf(module: nn.Module) -> bool:  # train.py's lambda_policy_fn
        weight = getattr(module, "weight", None)
        return not list(module.named_children()) and weight is not None and weight.requires_grad

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16, bias=False), Layer(), Layer())
    model[0].weight.requires_grad_(False)
    policy = functools.partial(
        _or_policy,
        policies=[
            functools.partial(lambda_auto_wrap_policy, lambda_fn=trainable_leaf),
            ModuleWrapPolicy({Layer}),
        ],
    )
    wrapped = FullyShardedDataParallel(
        model,
        auto_wrap_policy=policy,
        use_orig_params=False,
        device_id=torch.device("cpu"),
        sharding_strategy=getattr(ShardingStrategy, strategy),
    )
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    wrapped(torch.randn(4, 16)).sum().backward()
    params = list(wrapped.parameters())
    grads = [None if p.grad is None else p.grad.numel() for p in params]
    optimizer.step()
    states = [
        [optimizer.state[p]["exp_avg"].numel(), optimizer.state[p]["exp_avg_sq"].numel()]
        for p in params
        if p in optimizer.state
    ]
    return {"grads": grads, "states": states}


@pytest.mark.parametrize("strategy", ["FULL_SHARD", "NO_SHARD"])
def test_torch_adamw_keeps_a_state_pair_per_lora_unit(tmp_path, strategy):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # NO_SHARD's deprecation
        held = gloo.on_two_ranks(tmp_path, _grads_and_states, strategy)
    shards = 2 if strategy == "FULL_SHARD" else 1
    # per layer: q's A (3 x 16) and B (16 x 3), up's A (3 x 16) and B (37 x 3), down's A
    # (3 x 37) and B (16 x 3), each rank 0's ceil(n / shards) elements
    layer = [-(-n // shards) for n in (48, 48, 48, 111, 111, 48)]
    # the root's and each layer's own flat parameters are frozen: no gradient, no state
    assert held["grads"] == [None, None, *layer, None, *layer]
    assert held["states"] == [[n, n] for n in layer * 2]
