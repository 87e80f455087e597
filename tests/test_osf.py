"""peft's OSF: what trains and what it holds beside the weights, what it keeps, how it is
read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B;
memory (buffers, saved tensors, the forward's and backward's moments) against measurement
in tests/accuracy (cases ``method=osf``) and one peft OSF linear measured alone here.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "osf"},
    {"method": "osf", "osf_rank": 8},
    {"method": "osf", "osf_targets": "q,v,o", "osf_rank": 20},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/osf--llama-3.2-3B-rank128.json: ``"num_trainable_params":
    194535936``; its adapter_config.json keeps min(out, in) − 128 directions frozen on all
    seven linears (rank_pattern 2944 / 896). By hand: U_low (out × 128), S_low (128) and
    V_low (128 × in) per linear, in 28 blocks: 28 · 128 · (2 · 6145 + 2 · 4097 + 3 · 11265)."""
    est = estimate("llama-3.2-3b", method="osf", osf_rank=128)
    n = 28 * 128 * (2 * (3072 + 3072 + 1) + 2 * (1024 + 3072 + 1) + 3 * (8192 + 3072 + 1))
    assert est.model.n_trainable_params == n == 194_535_936


def _one_linear(n: int, o: int, T: int, bf16: bool, x_grad: bool) -> tuple:
    """One peft OSF linear (32 directions frozen) on ftmem's live-storage tracker, with a
    real output gradient: (buffers, kept beyond y, forward peak, backward peak)."""
    import peft
    import torch

    from ftmem.measure.tracker import LiveBytesTracker

    dtype = torch.bfloat16 if bf16 else torch.float32
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    cfg = peft.OSFConfig(effective_rank=32, target_modules=["lin"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base.to(dtype), cfg, autocast_adapter_dtype=True)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    x = torch.randn(2, T // 2, n, dtype=dtype, requires_grad=x_grad)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        y = model(x)
        forward_peak = tracker.peak - start
        kept = tracker.current - start - y.numel() * y.element_size()
        dy = torch.randn_like(y)
        tracker.peak = before = tracker.current
        y.backward(dy)
        return buffers, kept, forward_peak, tracker.peak - before


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("n", "o", "T"), [(96, 160, 64), (160, 96, 64), (128, 128, 64), (96, 160, 512)]
)
def test_one_osf_linear_matches_its_measurement(n: int, o: int, T: int, bf16: bool) -> None:
    """Buffers: the frozen copies (t · (out + in + 1)) and the high factor on the longer
    side (k · max(out, in)), fp32. Kept: A (out × 2t), B (2t × in), h (T × 2t) and the
    input's fp32 cast (bf16 base). Forward: the output's sum (base output, product, its
    cast back, sum beside A, B, h and the cast). Backward: the larger of the second
    linear's node (the output gradient's fp32 cast, A's and h's gradients) and the
    first's (B's and the input cast's gradients)."""
    pytest.importorskip("peft")
    e, de, k = (2 if bf16 else 4), 4, 32
    t = min(n, o) - k
    buffers, kept, forward_peak, backward_peak = _one_linear(n, o, T, bf16, True)
    high = k * max(n, o) if n != o else 0
    assert buffers == (t * (n + o + 1) + high) * de
    a, b, h, cast = o * 2 * t * de, 2 * t * n * de, T * 2 * t * de, (T * n * de if bf16 else 0)
    assert kept == a + b + h + cast
    y = T * o
    assert forward_peak == a + b + h + cast + y * (2 * e + de) + (y * e if bf16 else 0)
    grad = y * de if bf16 else 0
    assert backward_peak == max(grad + a + h, b + T * n * de)


def test_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--method", "osf", "--osf-rank", "0"], "--osf-rank: Input should be"),
        (["--method", "lora", "--osf-rank", "4"], "--osf-rank only applies to osf"),
        (["--method", "osf", "--osf-targets", " , "], "--osf-targets is empty"),
        (["--method", "osf", "--osf-targets", "zz"], "OSF target 'zz' matches no"),
        (["--method", "osf", "--precision", "bf16-mixed"], "OSF under autocast"),
        (["--method", "osf", "--adapter-dtype", "bf16"], "--adapter-dtype only applies to"),
        (["--method", "osf", "--osf-rank", "4096"], "leaves self_attn.q_proj no frozen"),
        (["--method", "osf", "--framework", "torchtune"], "has no --method osf"),
    ]
    for args, expected in cases:
        assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)
    err = one_sentence(["estimate", "gpt2", "--method", "osf"], capsys)
    assert "peft's OSF does not wrap gpt2's transformers Conv1D layers" in err


def test_live_peft_osf_model_is_read() -> None:
    """A peft OSF model reads as --method osf with the modules it wrapped; peft's default
    (half of each smaller side frozen) leaves --osf-rank unset, one rank for all sets it."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    model = peft.get_peft_model(tiny_llama(), peft.OSFConfig(target_modules=["k_proj", "o_proj"]))
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["osf_targets"], s.get("osf_rank")) == ("osf", "k_proj,o_proj", None)
    config = peft.OSFConfig(target_modules=["q_proj"], effective_rank=2)
    model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (
        s["osf_rank"]
        == min(model.base_model.model.model.layers[0].self_attn.q_proj.weight.shape) - 2
    )


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("n", "o"), [(96, 160), (160, 96), (128, 128)])
def test_storages_the_trained_factors_keep(n: int, o: int, bf16: bool) -> None:
    """The storages behind V_low's gradient and S_low, measured on one peft OSF linear
    (32 directions frozen) after two backward passes (the second accumulates in place).

    V_low's gradient, derived: on a bf16 base peft's fp32 cast drops the projection hooks
    and V_low's gradient is rows 0..t of B's (2t × in) gradient, kept whole (2t × in); on
    fp32 the hook's projection returns a new t × in tensor. S_low, derived: on fp32 it is
    a view of the SVD's S (min(out, in) values); on bf16 a copy (t). U_low and V_low on
    the CPU: copies (LAPACK's U and Vh are F-contiguous)."""
    import peft
    import torch

    from ftmem.adapters.osf import gradient_storage, kept_svd_storage
    from ftmem.arch import Linear
    from ftmem.precision import Dtypes

    dtype = torch.bfloat16 if bf16 else torch.float32
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    cfg = peft.OSFConfig(effective_rank=32, target_modules=["lin"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base.to(dtype), cfg, autocast_adapter_dtype=True)
    x = torch.randn(2, 8, n, dtype=dtype)
    for _ in range(2):
        model(x).float().sum().backward()
    params = {k.rsplit(".", 1)[-1]: p for k, p in model.named_parameters() if p.requires_grad}
    m, k = min(n, o), 32
    t = m - k
    v_grad = params["V_low"].grad.untyped_storage().nbytes()
    assert v_grad == (2 * t * n if bf16 else t * n) * 4
    s_low = params["S_low"].untyped_storage().nbytes()
    assert s_low == (t if bf16 else m) * 4
    for name in ("U_low", "V_low"):
        assert params[name].untyped_storage().nbytes() == params[name].numel() * 4
    # ftmem's terms give the same sizes
    half = "bf16" if bf16 else "fp32"
    dtypes = Dtypes(base=half, quantized=None, compute=half, adapter="fp32", autocast=False)
    one = Linear("lin", ("q",), n, o, False)
    assert max(t * n, gradient_storage(one, t, "V_low", dtypes)) * 4 == v_grad
    assert gradient_storage(one, t, "U_low", dtypes) == 0
    assert (t + kept_svd_storage(one, k, dtypes, "cpu")) * 4 == s_low


def test_storage_terms_in_the_published_model() -> None:
    """Llama-3.2-3B, t = 128 on all seven linears (q, o 3072 → 3072; k, v 3072 → 1024;
    gate, up 3072 → 8192; down 8192 → 3072), 28 blocks, fp32 adapters.

    bf16 base: each linear's gradients are U_low's out · t, S_low's t and V_low's 2t · in
    (B's whole gradient, test_storages_the_trained_factors_keep), against the fp32 base's
    own sizes (4 B for each of the 194,535,936 trainable). fp32 base on CUDA: V_low keeps
    cuSOLVER's whole Vh where out ≥ in (q, o, gate, up: k = 3072 − 128 = 2944 rows of
    3072 more than on the CPU; k and down keep them as V_high anyway)."""
    bf16 = estimate("llama-3.2-3b", method="osf", osf_rank=128).memory
    per_linear = [(3072, 3072), (3072, 1024), (3072, 1024), (3072, 3072)]
    per_linear += [(3072, 8192), (3072, 8192), (8192, 3072)]
    t = 128
    assert bf16.gradients_bytes == 28 * 4 * sum(o * t + t + 2 * t * n for n, o in per_linear)
    fp32 = {
        device: estimate(
            "llama-3.2-3b", method="osf", osf_rank=128, precision="fp32", device=device
        ).memory
        for device in ("cpu", "cuda")
    }
    assert fp32["cpu"].gradients_bytes == 4 * 194_535_936
    extra = fp32["cuda"].weights_bytes - fp32["cpu"].weights_bytes
    assert extra == 28 * 4 * (4 * 2944 * 3072)


def test_ddp_keeps_the_gradient_storage() -> None:
    """torch DDP (no gradient_as_bucket_view) copies each .grad into its buckets and back
    into the same tensor: every rank keeps the gradients as one GPU does, V_low's 2t × in
    storage included."""
    one = estimate("llama-3.2-3b", method="osf", osf_rank=128).memory
    ddp = estimate("llama-3.2-3b", method="osf", osf_rank=128, gpus=2, strategy="ddp").memory
    assert ddp.gradients_bytes == one.gradients_bytes
