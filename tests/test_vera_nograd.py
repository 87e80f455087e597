"""The forward without a graph (a checkpointed block's first forward) of peft's VeRA, PVeRA
and C3A linears: one peft Linear run alone under ``torch.no_grad`` on the CPU (ftmem's
live-storage tracker), its largest moment beyond its input against VeRA.nograd_forward and
C3A.nograd_forward; the whole checkpointed step's forward phase in tests/accuracy (cases
``gradckpt=True-method=vera``, ``pvera``, ``c3a``).
"""

from __future__ import annotations

import warnings

import pytest

from ftmem.estimate import estimate_step
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny

T = 600
SHAPES = [(96, 160, 16), (96, 96, 256), (512, 64, 16)]


def _peft_linear(torch, method: str, mode: str, shape: tuple[int, int, int]):
    """One nn.Linear named ``up`` wrapped by peft: VeRA or PVeRA (rank ``shape[2]``), or
    C3A (block size ``shape[2]``), its base in fp32 (fp32, bf16-mixed) or bf16."""
    import peft

    in_f, out_f, r = shape
    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(in_f, out_f, bias=False))
    base = torch.float32 if mode in ("fp32", "bf16-mixed") else torch.bfloat16
    config = {
        "vera": lambda: peft.VeraConfig(r=r, target_modules=["up"]),
        "pvera": lambda: peft.PveraConfig(r=r, target_modules=["up"]),
        "c3a": lambda: peft.C3AConfig(block_size=r, target_modules=["up"], init_weights=False),
    }[method]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(model.to(base), config, autocast_adapter_dtype=True)
    if mode == "bf16-bf16":  # 16-bit vectors and projections (--adapter-dtype bf16)
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
        for d in (getattr(model.base_model, f"{method}_{x}") for x in "AB"):
            d["default"] = d["default"].to(torch.bfloat16)
    return model.train(), base


def _nograd_peak(torch, method: str, mode: str, shape: tuple[int, int, int]) -> int:
    """The largest live bytes of one peft Linear's forward under no_grad beyond its input
    (and the model's parameters and buffers)."""
    from ftmem.measure.tracker import LiveBytesTracker

    model, base = _peft_linear(torch, method, mode, shape)
    x = torch.randn(T, shape[0], dtype=base)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16-mixed")
    with LiveBytesTracker() as tracker, torch.no_grad():
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with autocast:
            y = model(x)
        del y
        return tracker.peak - start


def _run(method: str, mode: str, shape: tuple[int, int, int]) -> RunConfig:
    precision = {"bf16-bf16": "bf16"}.get(mode, mode)
    settings: dict[str, object] = {f"{method}_targets": "up"}
    if method == "c3a":
        settings["c3a_block_size"] = shape[2]
    else:
        settings[f"{method}_rank"] = shape[2]
        settings["adapter_dtype"] = "bf16" if mode == "bf16-bf16" else "auto"
    return RunConfig(precision=precision, method=method, device="cpu", **settings)


@pytest.mark.parametrize("mode", ["fp32", "bf16", "bf16-bf16", "bf16-mixed"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("method", ["vera", "pvera"])
def test_vera_nograd_forward_matches_one_peft_linear(
    method: str, mode: str, shape: tuple[int, int, int]
) -> None:
    """The three shapes put the largest moment at the sum (out wide), at the code (PVeRA's
    sample, VeRA's h and λ_d·h: r wide) and at the first matmul's casts (in wide, under
    autocast): exact."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from ftmem.adapters.vera import VeRA
    from ftmem.ops.linear import LinearOp

    run = _run(method, mode, shape)
    plan = plan_method(tiny("llama", hidden_size=shape[0], intermediate_size=shape[1]), run)
    (lin,) = plan.vectored
    e = 2 if mode != "fp32" else 4
    in_bytes = LinearOp.input_bytes(plan, lin, e)
    assert in_bytes == (2 if mode in ("bf16", "bf16-bf16") else 4)
    got = _nograd_peak(torch, method, mode, shape)
    assert VeRA.nograd_forward(plan, run, lin, T, in_bytes) == got


@pytest.mark.parametrize("mode", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(96, 160, 16), (512, 64, 32), (256, 512, 64)], ids=str)
def test_c3a_nograd_forward_matches_one_peft_linear(mode: str, shape: tuple[int, int, int]) -> None:
    """The fp32 copy of a 16-bit input, the base output and the FFTs' complex outputs: exact."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from ftmem.adapters.c3a import C3A

    run = _run("c3a", mode, shape)
    plan = plan_method(tiny("llama", hidden_size=shape[0], intermediate_size=shape[1]), run)
    (lin,) = plan.circulant
    e = 4 if mode == "fp32" else 2
    assert C3A.nograd_forward(run, lin, T, e, e) == _nograd_peak(torch, "c3a", mode, shape)


@pytest.mark.parametrize(
    ("settings", "measured"),
    [
        # docs/accuracy.md's rows (a tracker on the whole checkpointed step, CPU): the
        # forward's largest moment, in the top block's v_proj (PVeRA on q,v), o_proj
        # (VeRA, all linears) and up_proj (C3A, all linears); -29 %, -15 %, -18 % before
        ({"method": "pvera", "precision": "bf16"}, 1_930_560),
        (
            {"method": "vera", "precision": "fp32", "vera_targets": "all-linear"}
            | {"batch_size": 4, "seq_len": 400},
            9_570_768,
        ),
        (
            {"method": "c3a", "precision": "fp32", "c3a_targets": "all-linear"}
            | {"c3a_block_size": 8, "seq_len": 400},
            7_685_656,
        ),
    ],
    ids=["pvera", "vera", "c3a"],
)
def test_checkpointed_forward_phase(settings: dict, measured: int) -> None:
    """The step's forward phase with the layer's locals beside each linear (_layer_locals:
    q's and k's outputs at v; q, k, v and the norm's output at o; the gate's activation at
    up): within 0.2 % of the measured row (the rotary tables and position ids, 80 KB at 400
    tokens, are left out)."""
    base = {"batch_size": 3, "seq_len": 50, "optimizer_impl": "for-loop"}
    run = RunConfig(device="cpu", grad_ckpt=True, **(base | settings))
    forward = estimate_step(tiny("llama"), run).memory.phases.forward
    assert -0.002 < (forward - measured) / measured < 0
