"""peft's OFT: what trains, what it keeps at real size, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models (block sizes that do not divide included: peft moves them to a divisor) and
against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B; memory
(saved tensors, the rotation's forward and backward) against measurement in
tests/accuracy (cases ``method=oft``) and one peft OFT linear measured alone here.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "oft"},
    {"method": "oft", "oft_targets": "all-linear", "oft_block_size": 8},
    {"method": "oft", "oft_targets": "attention", "oft_r": 4},
    {"method": "oft", "oft_block_size": 5},  # peft moves it to a divisor of in_features
    {"method": "oft", "oft_r": 7, "oft_targets": "all-linear"},
    {"method": "oft", "oft_block_share": True, "oft_block_size": 16},
    {"method": "oft", "oft_neumann_terms": 0, "adapter_dtype": "fp32"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mixtral", "gemma2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_block_split_is_peft_s() -> None:
    """ftmem's split of in_features equals peft's update_layer (its adjust included)."""
    pytest.importorskip("peft")
    from peft.tuners.oft.layer import OFTLayer

    from ftmem.methods import _adjusted

    for n in (96, 100, 3072, 8192, 11008, 14336):
        for wanted in (1, 3, 5, 7, 32, 33, 100, 200, 20000):
            assert _adjusted(n, wanted) == OFTLayer.adjust_oft_parameters(None, n, wanted)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/oft--llama-3.2-3B-rank32.json: ``"num_trainable_params":
    8171520`` for r 32 (oft_block_size 0) on q_proj, v_proj. By hand: 3072 / 32 = 96-wide
    blocks, each stored as its upper triangle, 96 · 95 / 2 = 4,560 values, 32 blocks per
    linear, two linears, 28 blocks: 28 · 2 · 32 · 4,560 = 8,171,520."""
    est = estimate("llama-3.2-3b", method="oft", oft_r=32)
    assert est.model.n_trainable_params == 28 * 2 * 32 * 4560 == 8_171_520


def test_oft_keeps_its_blocks_where_lora_keeps_its_rank_r_output() -> None:
    """Llama-3.2-3B, q and v, r 32 (96-wide blocks), bf16 base, fp32 adapters, T = 512:
    both keep each adapted linear's input cast to fp32 (T × 3072 × 4); LoRA adds lora_A's
    output (T × r × 4), OFT the Cayley-Neumann series' Q, Q² and Q³ (32 × 96² × 4 each)
    and, above the first block (whose input needs no gradient), R (32 × 96² × 4)."""
    T, L, r, square = 512, 28, 8, 32 * 96 * 96 * 4
    oft = estimate("llama-3.2-3b", method="oft", oft_r=32, seq_len=T).memory
    lora = estimate("llama-3.2-3b", method="lora", lora_r=r, seq_len=T).memory
    expected = L * 2 * 3 * square + (L - 1) * 2 * square - L * 2 * T * r * 4
    assert oft.activations_bytes - lora.activations_bytes == expected


def test_one_oft_linear_matches_its_measurement() -> None:
    """One peft OFT linear (in 512, out 256, 16 blocks of 32, bf16 base, fp32 adapters,
    T = 128) run alone on ftmem's live-storage tracker: it keeps 8·T·in bytes (the fp32
    input cast, Q, Q², Q³ and R: 4 + 1 + 1 + 1 + 1 T·in), its forward peaks 2·T·in·4
    beyond them before the output exists (OFT.forward_build's first moment); its
    backward peaks at 2·T·in·4 + R's gradient beyond the kept and the output
    (OFT.backward_moment, whose output's gradient y stands for here)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.measure.tracker import LiveBytesTracker

    n, o, T = 512, 256, 128
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(
            base.to(torch.bfloat16),
            peft.OFTConfig(oft_block_size=32, target_modules=["lin"]),
            autocast_adapter_dtype=True,
        )
    x = torch.randn(2, T // 2, n, dtype=torch.bfloat16, requires_grad=True)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        y = model(x)
        forward_peak, kept = tracker.peak - start, tracker.current - start - T * o * 2
        tracker.peak = before = tracker.current
        y.sum().backward()  # (sum's gradient is an expanded scalar: no T × out tensor)
        backward_peak = tracker.peak - before
    assert kept == 8 * T * n
    assert forward_peak - kept == 2 * T * n * 4
    # beyond the kept and y, which stands where a model holds the output's gradient
    # (and the 4-byte fp32 gradient of the sum)
    assert backward_peak == 2 * T * n * 4 + 16 * 32 * 32 * 4 + 4


def test_autocast_lists_the_rotation_s_ops_as_modelled() -> None:
    """The ops OFT runs under autocast, per device, as torch 2.13's dispatcher registers
    them (aten/src/ATen/autocast_mode.cpp): bmm in both lower-precision lists, einsum in
    CUDA's only (the CPU decomposes it into a bmm, which casts the same operands),
    linalg.solve in the CPU's fp32 list only (its inputs are fp32 on both), kron in none
    (LoKr's product runs in its factors' dtype)."""
    torch = pytest.importorskip("torch")
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    lists = {
        op: {k for k in ("AutocastCUDA", "AutocastCPU") if has(f"aten::{op}", k)}
        for op in ("bmm", "einsum", "linalg_solve", "kron")
    }
    assert lists == {
        "bmm": {"AutocastCUDA", "AutocastCPU"},
        "einsum": {"AutocastCUDA"},
        "linalg_solve": {"AutocastCPU"},
        "kron": set(),
    }


def _one_linear_under_autocast(torch, peft, base_dtype, terms: int) -> tuple[int, int, int]:
    """One peft OFT linear (in 512, out 256, 16 blocks of 32, fp32 adapters, T = 128)
    under CPU bf16 autocast on the live-storage tracker: (kept, forward peak beyond the
    kept, backward peak beyond what was live), the output excluded from the kept."""
    from ftmem.measure.tracker import LiveBytesTracker

    n, o, T = 512, 256, 128
    base = torch.nn.Sequential()
    base.add_module("lin", torch.nn.Linear(n, o, bias=False))
    config = peft.OFTConfig(
        oft_block_size=32,
        target_modules=["lin"],
        use_cayley_neumann=terms > 0,
        num_cayley_neumann_terms=terms,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base.to(base_dtype), config, autocast_adapter_dtype=True)
    x = torch.randn(2, T // 2, n, dtype=base_dtype, requires_grad=True)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        kept = tracker.current - start - y.numel() * y.element_size()
        forward = tracker.peak - start - kept
        tracker.peak = before = tracker.current
        y.sum().backward()
    return kept, forward, tracker.peak - before


def test_one_oft_linear_under_autocast_matches_its_measurement() -> None:
    """Under bf16 autocast on a bf16 base (HF Trainer's bf16=True on a bf16 model), with
    Tn = T·in bytes: the kept are the einsum's 16-bit x (2 Tn) and R (16 · 32² · 2 =
    Tn/2) and each series bmm's two 16-bit operands (5 terms: 3 bmm's, 6 · 16 · 32² · 2
    = 3 Tn; 3 terms: 2 bmm's) or the exact solve's fp32 LU, pivots and result; the
    forward peaks beyond them at peft's fp32 copy of x (4 Tn), the fp32 R (1 Tn), the
    einsum's output and its reshaped copy (2 + 2) and their fp32 copy (4): 13 Tn
    (OFT.forward_build); the backward at peft's reshape: x's fp32 gradient and its copy
    and R's fp32 gradient, less the einsum's casts it freed: 8 + 1 − 2.5 = 6.5 Tn
    (OFT.backward_moment, the output's gradient aside: y.sum()'s is a scalar). An fp32
    base (bf16-mixed) keeps the frozen weight's 16-bit copy besides (4 Tn)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    Tn, square = 128 * 512, 16 * 32 * 32
    for terms, cayley in (
        (5, 6 * square * 2),
        (3, 4 * square * 2),
        (0, 3 * square * 4 + 16 * 32 * 4),
    ):
        kept, forward, backward = _one_linear_under_autocast(torch, peft, torch.bfloat16, terms)
        assert kept == 2 * Tn + square * 2 + cayley
        assert forward == (13 if terms else 12) * Tn  # (the solve's R is kept)
        assert backward == 6.5 * Tn + 4  # (+ the fp32 gradient of the sum)
    kept, _, _ = _one_linear_under_autocast(torch, peft, torch.float32, 5)
    assert kept == 2 * Tn + square * 2 + 6 * square * 2 + 256 * 512 * 2


@pytest.mark.parametrize(
    "precision", [{"precision": "bf16-mixed"}, {"precision": "fp16-mixed"}, {"autocast": True}]
)
def test_autocast_is_estimated(precision: dict) -> None:
    """OFT under autocast was refused (RunConfig's NO_AUTOCAST); it is estimated, keeping
    16-bit casts where it kept adapter-dtype tensors: fewer bytes than without autocast
    on a bf16 model (Llama-3.2-3B, q and v, r 32: each series bmm's two 16-bit operands,
    3 · 2 squares, for Q, Q², Q³ in fp32; x and R at 2 bytes for 4)."""
    est = estimate("llama-3.2-3b", method="oft", oft_r=32, **precision).memory
    assert est.activations_bytes > 0
    if precision == {"autocast": True}:
        plain = estimate("llama-3.2-3b", method="oft", oft_r=32).memory
        T, L, square = 512, 28, 32 * 96 * 96
        # per adapted linear: Cayley 3 · 4 → 6 · 2 bytes a square (no change); R 4 → 2
        # bytes (blocks above the first); x's cast 4 → 2 bytes
        saved = (L - 1) * 2 * square * 2 + L * 2 * T * 3072 * 2
        assert plain.activations_bytes - est.activations_bytes == saved


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "oft", "--oft-r", "0"], "--oft-r: Input should be greater than 0"),
        (["--method", "lora", "--oft-r", "4"], "--oft-r only applies to oft"),
        (["--method", "oft", "--oft-targets", " , "], "--oft-targets is empty"),
        (["--method", "oft", "--oft-targets", "zz"], "OFT target 'zz' matches no linear"),
        (["--method", "oft", "--oft-r", "4", "--oft-block-size", "8"], "not both"),
        (["--method", "oft", "--oft-neumann-terms", "1"], "leaves every rotation the identity"),
        (
            ["--method", "oft", "--framework", "torchtune"],
            "--framework torchtune has no --method oft",
        ),
        (["--method", "oft", "--oft-neumann-terms", "-1"], "--oft-neumann-terms: Input should"),
        (
            ["--method", "oft", "--oft-neumann-terms", "0", "--adapter-dtype", "bf16"],
            "OFT's Cayley solve runs in fp32",
        ),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_models_peft_cannot_wrap_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="does not wrap gpt2's transformers Conv1D"):
        estimate("gpt2", method="oft")


def test_resolved_run_reports_the_oft_settings() -> None:
    run = estimate("llama-3.2-3b", method="oft").run
    assert (run.oft_r, run.oft_block_size, run.oft_targets) == (None, 32, "q,v")
    assert (run.oft_block_share, run.oft_neumann_terms) == (None, 5)
    assert run.adapter_dtype == "fp32"
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_oft_model_is_read() -> None:
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.OFTConfig(
        r=4, oft_block_size=0, use_cayley_neumann=False, target_modules=["q_proj", "v_proj"]
    )
    model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["oft_r"], s["oft_neumann_terms"]) == ("oft", 4, 0)
    assert s["oft_targets"] == "q_proj,v_proj"
    assert "oft_block_size" not in s and "oft_block_share" not in s
