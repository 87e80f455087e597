"""Activation offload with peft's weight-rebuilding and rotating adapters: the CPU
harness's host copy of a sparse delta (ftmem.measure.saved.HostOffload) and the offloaded
backward moments of one peft linear (transients.offloaded_adapter_moments' per-method
parts), measured under the harness's save_on_cpu emulation with the live-storage
tracker. The whole step is checked by tests/accuracy (the offloaded cases)."""

from __future__ import annotations

import warnings

import pytest

from ftmem.adapters.hra import offloaded_backward as hra_offloaded
from ftmem.adapters.oft import offloaded_chain
from ftmem.adapters.osf import OSF
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")


def test_host_offload_moves_a_sparse_delta_to_the_host() -> None:
    """save_on_cpu copies a sparse COO tensor like any other (torch 2.13
    autograd/graph.py pack_to_cpu): the harness packs its indices and values to the host
    and brings back an equal tensor, coalesced or not as it was."""
    from ftmem.measure.saved import HostOffload
    from ftmem.measure.tracker import LiveBytesTracker

    indices = torch.tensor([[0, 2, 2], [1, 0, 3]])
    with LiveBytesTracker() as tracker:
        delta = torch.sparse_coo_tensor(indices, torch.tensor([1.0, 2.0, 3.0]), (4, 4))
        made = tracker.current
        registry = HostOffload(set())
        packed = registry.pack(delta)
        assert registry.host_bytes == 3 * 2 * 8 + 3 * 4  # int64 indices, fp32 values
        del delta
        assert tracker.current < made  # nothing of it is held on the device
        back = HostOffload.unpack(packed)
    assert back.layout == torch.sparse_coo and back.shape == (4, 4)
    assert not back.is_coalesced()
    assert torch.equal(
        back.to_dense(), torch.sparse_coo_tensor(indices, [1.0, 2.0, 3.0], (4, 4)).to_dense()
    )


def _offloaded_backward(config, base, in_f: int, out_f: int, T: int) -> tuple[int, int]:
    """The backward peak of one peft linear whose saved tensors are offloaded, above the
    output gradient the caller holds (the tracker's live bytes on the CPU), and its
    parameters' gradients."""
    from ftmem.measure.saved import HostOffload
    from ftmem.measure.tracker import LiveBytesTracker

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(model.to(base), config, autocast_adapter_dtype=True)
    x = torch.randn(T, in_f, dtype=base, requires_grad=True)
    x = x * 1  # (not a leaf, as in a model)
    registry = HostOffload(set())
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        with torch.autograd.graph.saved_tensors_hooks(registry.pack, registry.unpack):
            y = model(x)
        g = torch.ones_like(y)
        tracker.peak = before = tracker.current
        y.backward(g)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return tracker.peak - before, sum(t.numel() * t.element_size() for t in grads)


def _plan(method: str, in_f: int, out_f: int, T: int, **options):
    run = RunConfig(
        method=method,
        precision="bf16",
        activation_offload=True,
        batch_size=1,
        seq_len=T,
        **{f"{method}_targets": "up"},
        **options,
    )
    arch = tiny("llama", hidden_size=in_f, intermediate_size=out_f)
    plan = plan_method(arch, run)
    return run, plan


@pytest.mark.parametrize("terms", [3, 5, 7])
@pytest.mark.parametrize(("in_f", "out_f", "T"), [(96, 96, 8), (160, 96, 37), (96, 160, 8)])
def test_oft_cayley_backward_offloaded(terms: int, in_f: int, out_f: int, T: int) -> None:
    """OFT's Neumann series backward with its tensors on the host: seven blocks-sized
    tensors beside x's gradient in the adapter dtype, whatever the number of terms
    (bf16 base, fp32 adapter; the series' moment is the linear's largest at these
    shapes). Exact."""
    run, plan = _plan("oft", in_f, out_f, T, oft_block_size=32, oft_neumann_terms=terms)
    (lin,) = plan.block_rotated
    config = peft.OFTConfig(
        r=0, oft_block_size=32, num_cayley_neumann_terms=terms, target_modules=["up"]
    )
    got, _ = _offloaded_backward(config, torch.bfloat16, in_f, out_f, T)
    assert got == offloaded_chain(plan, run, lin, T)


@pytest.mark.parametrize(("in_f", "out_f", "T"), [(96, 96, 8), (160, 96, 37), (96, 160, 37)])
def test_hra_backward_offloaded_is_a_tight_bound(in_f: int, out_f: int, T: int) -> None:
    """HRA with its tensors on the host: F.linear's node (exact where it is the largest,
    96 × 160) or a chain step's three in × in tensors beside x's and the u's gradients
    (a bound, at most 10 % over the traced)."""
    run, plan = _plan("hra", in_f, out_f, T, hra_rank=8)
    (lin,) = plan.householder
    config = peft.HRAConfig(r=8, target_modules=["up"])
    got, _ = _offloaded_backward(config, torch.bfloat16, in_f, out_f, T)
    want = hra_offloaded(plan, run, lin, T)
    assert got <= want <= got * 1.1


@pytest.mark.parametrize(("in_f", "out_f", "T"), [(96, 96, 8), (160, 96, 37)])
def test_osf_backward_offloaded_is_a_tight_bound(in_f: int, out_f: int, T: int) -> None:
    """OSF's two nodes, each with what it unpacked beside its gradients and the ones made
    before; its largest moment comes later, at the rebuilt factors' MulBackward0, beside
    the trained factors' gradients as they are made, which the step counts beside the
    moment (offloaded_own_gradients): the two together bound it."""
    run, plan = _plan("osf", in_f, out_f, T)
    (lin,) = plan.osf
    config = peft.OSFConfig(target_modules=["up"])
    got, grads = _offloaded_backward(config, torch.bfloat16, in_f, out_f, T)
    want = OSF.offloaded_backward(plan, run, lin, T, 2, 2)
    assert want <= got <= want + grads
