"""The shared rotary tables under checkpointing, Gemma's per-type tables and its norms'
``1 + w``, LayerNorm's statistics: each item measured on a tiny model against the
estimate's (ops.embedding.Embedding.rotary_tables / rotary_held, ops.norm.Norm,
dtypes.layer_norm_stats_bytes)."""

from __future__ import annotations

import gc
import weakref

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ftmem.dtypes import BYTES_PER_ELEMENT, layer_norm_stats_bytes  # noqa: E402
from ftmem.measure.build import build_model, hf_model  # noqa: E402
from ftmem.ops.embedding import Embedding  # noqa: E402
from ftmem.run import RunConfig  # noqa: E402
from ftmem.step import step_parts  # noqa: E402
from tests.conftest import tiny  # noqa: E402

BATCH, SEQ = 2, 24


def _tables_made(model) -> list[tuple[int, int, list]]:
    """A forward hook on the rotary module: (data_ptr, bytes, [freed?]) of each cos and
    sin it returns, without keeping them alive."""
    made: list[tuple[int, int, list]] = []

    def hook(_module, _args, out):
        for t in out:
            freed: list[bool] = []
            weakref.finalize(t.untyped_storage(), freed.append, True).atexit = False
            made.append((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes(), freed))

    hf_model(model).model.rotary_emb.register_forward_hook(hook)
    return made


@pytest.mark.accuracy
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_checkpointed_layers_hold_the_rotary_tables_without_saving_them(precision):
    """transformers' decoder layers take ``position_embeddings`` as a keyword, which the
    checkpoint's partial holds: no saved-tensor hook sees cos or sin, yet both live from
    the forward until the backward has passed the layers, as the estimate holds them
    (graph leaves, not activations)."""
    arch = tiny("llama")
    run = RunConfig(
        method="lora", precision=precision, grad_ckpt=True, batch_size=BATCH, seq_len=SEQ
    )
    model = build_model(arch, run).model
    made = _tables_made(model)
    packed: set[int] = set()

    def pack(t):
        packed.add(t.untyped_storage().data_ptr())
        return t

    ids = torch.randint(0, arch.vocab_size, (BATCH, SEQ))
    gc.disable()  # (freeing is by reference count alone, as on the GPU)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=ids).loss
        assert len(made) == 2  # cos and sin, once for the model
        assert not {ptr for ptr, _, _ in made} & packed  # saved by no node
        assert not any(freed for _, _, freed in made)  # yet held past the forward
        loss.backward()
        del loss
        assert all(freed for _, _, freed in made)  # and freed by the backward
    finally:
        gc.enable()
    e = BYTES_PER_ELEMENT[precision]
    held = Embedding.rotary_held(arch, run, BATCH * SEQ, e)
    assert held == tuple(nbytes for _, nbytes, _ in made)
    assert set(held) <= set(step_parts(arch, run).graph_leaves)
    assert not Embedding.rotary_saved(arch, run, BATCH * SEQ, e)


@pytest.mark.accuracy
@pytest.mark.parametrize(("layers", "sliding"), [(6, 5), (5, 5)])
def test_gemma3_builds_a_pair_of_tables_per_layer_type(layers, sliding):
    """Gemma 3's model calls its rotary module once per layer type its stack has (every
    sixth layer global: six layers have both types, five only sliding ones)."""
    arch = tiny("gemma3", num_layers=layers, sliding_layers=sliding, sliding_window=8)
    run = RunConfig(method="full", precision="bf16", batch_size=BATCH, seq_len=SEQ)
    model = build_model(arch, run).model
    made = _tables_made(model)
    ids = torch.randint(0, arch.vocab_size, (BATCH, SEQ))
    with torch.no_grad():
        model(input_ids=ids)
    tables = Embedding.rotary_tables(arch, run, BATCH * SEQ, 2)
    assert tables == tuple(nbytes for _, nbytes, _ in made)


def _saved_by(fn, x):
    """The storages (bytes, dtype, shape) the graph of ``fn(x)`` saves beside ``x`` and
    the parameters."""
    kept: dict[int, tuple[int, torch.dtype, tuple]] = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = (t.untyped_storage().nbytes(), t.dtype, t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    kept.pop(x.untyped_storage().data_ptr(), None)
    return kept


@pytest.mark.accuracy
def test_gemma_norm_keeps_its_fp32_one_plus_weight():
    """Gemma's RMSNorm multiplies by ``1.0 + weight.float()``, a new fp32 vector per call,
    which the product keeps where the input needs a gradient: what the estimate adds to
    the fp32 input and rstd (T·h·4 + T·4 + h·4)."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    from ftmem.activations import outer_saved
    from ftmem.methods import plan_method

    arch = tiny("gemma")
    h, T = arch.hidden_size, BATCH * SEQ
    norm = GemmaRMSNorm(h).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(T, h, dtype=torch.bfloat16, requires_grad=True)
    measured = sum(n for n, _, _ in _saved_by(norm, x).values())
    vectors = [v for v in _saved_by(norm, x).values() if v[2] == (h,)]
    assert vectors == [(h * 4, torch.float32, (h,))]
    run = RunConfig(method="full", precision="bf16", batch_size=BATCH, seq_len=SEQ)
    _, above = outer_saved(arch, run, plan_method(arch, run), T)
    final = next(s for s in above if s.what.startswith("final norm: fp32 input"))
    assert final.nbytes == measured == T * h * 4 + T * 4 + h * 4


@pytest.mark.accuracy
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_layer_norm_statistics_in_the_cpu_and_cuda_dtypes(dtype):
    """native_layer_norm's mean and rstd: the input's dtype on the CPU; on a CUDA GPU
    (when this machine has one) the accumulate type, fp32."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    e = torch.finfo(dtype).bits // 8
    for device in devices:
        ln = torch.nn.LayerNorm(16).to(device=device, dtype=dtype)
        x = torch.randn(6, 16, device=device, dtype=dtype, requires_grad=True)
        node = ln(x).grad_fn
        for stat in (node._saved_result1, node._saved_result2):
            assert stat.element_size() == layer_norm_stats_bytes(device, e)
