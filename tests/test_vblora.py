"""peft's VB-LoRA: what trains (the shared bank once, the logits per linear), what each
adapted linear keeps and its own backward, how it is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
models and against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B; what
one adapted linear keeps and its backward against one peft VB-LoRA Linear run alone
(here), the whole step in tests/accuracy (cases ``method=vblora``).
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

BANK = {"method": "vblora", "vblora_vector_length": 16, "vblora_vectors": 32}
SETTINGS = [
    BANK,
    {**BANK, "vblora_targets": "all-linear", "vblora_rank": 3, "vblora_topk": 3},
    {**BANK, "vblora_targets": "k,o", "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "falcon", "mixtral"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    vblora--llama-3.2-3B-default.json: ``"num_trainable_params": 1212416``,
    ``num_total_params`` 3,213,962,240 for r 4, 256 vectors of 256, top-2, q_proj and
    v_proj. By hand: the bank 256 · 256 once; per block logits_A r · in/256 · 256 for q and
    v (3072 in each) and logits_B out/256 · r · 256 (q 3072, v 1024)."""
    est = estimate("llama-3.2-3b", method="vblora")
    per_block = 2 * (4 * 12 * 256) + (12 * 4 * 256) + (4 * 4 * 256)
    assert est.model.n_trainable_params == 256 * 256 + 28 * per_block == 1_212_416
    assert est.model.n_params + est.model.n_trainable_params == 3_213_962_240


AUTOCAST = ("bf16-mixed", "bf16-autocast", "bf16-bf16-autocast")


def _one_linear(torch, mode: str, shape: tuple[int, int], T: int, x_grad: bool) -> tuple:
    """What one peft VB-LoRA Linear (r 8, 32 vectors of 16, top-2) keeps after its
    forward beside its output, and the bytes above that and its output gradient at the
    peak of its backward less the trained tensors' gradients, on the CPU."""
    from peft import VBLoRAConfig, get_peft_model

    from ftmem.measure.tracker import LiveBytesTracker

    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(*shape, bias=False))
    base = torch.float32 if mode in ("fp32", "bf16-mixed") else torch.bfloat16
    cfg = VBLoRAConfig(r=8, target_modules=["up"], vector_length=16, num_vectors=32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model.to(base), cfg, autocast_adapter_dtype=True)
    if mode.startswith("bf16-bf16"):
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
    x = torch.randn(T, shape[0], dtype=base, requires_grad=x_grad) * 1  # (not a leaf)
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode in AUTOCAST):
            y = model(x)
        kept = tracker.current - start - y.nbytes
        g = torch.ones_like(y)  # (held by the caller)
        tracker.peak = before = tracker.current
        y.backward(g)
        grads = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
        return kept, tracker.peak - before - grads, grads


@pytest.mark.parametrize("mode", ["fp32", "bf16", "bf16-bf16", *AUTOCAST])
@pytest.mark.parametrize("shape", [(96, 160), (160, 96), (64, 64)], ids=str)
def test_one_peft_linear(mode: str, shape: tuple[int, int]) -> None:
    """VBLoRA.saved and backward_own against one peft VB-LoRA Linear whose input needs a
    gradient: what it keeps exact (the input's cast where the dtypes differ, A, h, B, the
    gathered vectors, the top-k softmax and indices; under autocast with the fp32 bank
    16-bit casts of the input, A and B and a 16-bit h); its backward within the trained
    tensors' gradients (made by the moment or not). Under bf16-mixed the fp32 base
    weight's 16-bit copy (out × in × 2, a linear's saved tensor, not the adapter's) is
    kept too, and freed before the input's gradients are summed."""
    torch = pytest.importorskip("torch")
    from ftmem.adapters.vblora import VBLoRA
    from ftmem.ops.context import LayerContext
    from ftmem.ops.saved import Side

    run = RunConfig(
        precision={"fp32": "fp32", "bf16-mixed": "bf16-mixed"}.get(mode, "bf16"),
        autocast=True if mode.endswith("-autocast") else None,
        device="cpu",
        **{**BANK, "vblora_rank": 8, "vblora_targets": "up"},
        adapter_dtype="bf16" if mode.startswith("bf16-bf16") else "auto",
    )
    arch = tiny("llama", hidden_size=shape[0], intermediate_size=shape[1])
    plan = plan_method(arch, run)
    (lin,) = plan.banked
    T, e = 600, 4 if mode in ("fp32", "bf16-mixed") else 2  # the input's
    kept, backward, grads = _one_linear(torch, mode, shape, T, True)
    items, _ = VBLoRA.saved(LayerContext(arch, run, plan, T), lin, Side.MLP, True, e)
    weight_copy = shape[0] * shape[1] * 2 if mode == "bf16-mixed" else 0
    assert kept == sum(item.nbytes for item in items) + weight_copy
    ce = 4 if mode == "fp32" else 2  # the base output's
    assert abs(backward - VBLoRA.backward_own(plan, run, lin, T, ce)) <= grads + weight_copy


def test_cuda_autocast_keeps_an_fp32_softmax() -> None:
    """CUDA's autocast runs softmax in fp32 (the CPU's does not): with 16-bit logits under
    autocast the top-k softmax each adapted linear keeps is fp32 there."""
    from ftmem.adapters.vblora import softmax_bytes

    for device, want in (("cuda", 4), ("cpu", 2)):
        run = RunConfig(
            precision="bf16", autocast=True, adapter_dtype="bf16", device=device, **BANK
        )
        assert softmax_bytes(run, 2) == want


def test_bank_is_one_tensor_outside_the_blocks() -> None:
    """The bank (vectors × length) is counted once, in the adapter dtype, whatever the
    number of adapted linears: its gradient and AdamW's two states once too."""
    one = estimate("llama-3.2-3b", method="vblora", vblora_targets="q")
    two = estimate("llama-3.2-3b", method="vblora", vblora_targets="q,v")
    v = 28 * (4 * 12 * 256 + 4 * 4 * 256)  # v's logits only
    assert two.model.n_trainable_params - one.model.n_trainable_params == v
    assert two.memory.gradients_bytes - one.memory.gradients_bytes == v * 4


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "vblora", "--vblora-rank", "0"], "--vblora-rank: Input should be greater"),
        (["--method", "lora", "--vblora-topk", "4"], "--vblora-topk only applies to vblora"),
        (["--method", "vblora", "--vblora-targets", " , "], "--vblora-targets is empty"),
        (["--method", "vblora", "--vblora-targets", "zz"], "VB-LoRA target 'zz' matches no"),
        (["--method", "vblora", "--vblora-topk", "9", "--vblora-vectors", "8"], "exceeds"),
        (
            ["--method", "vblora", "--vblora-vector-length", "96"],
            "VB-LoRA's vectors (96 long) do not tile self_attn.q_proj",
        ),
        (["--method", "vblora", "--framework", "torchtune"], "has no --method vblora"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)


def test_resolved_run_reports_the_vblora_settings() -> None:
    run = estimate("llama-3.2-3b", method="vblora").run
    assert (run.vblora_rank, run.vblora_vectors, run.vblora_vector_length) == (4, 256, 256)
    assert (run.vblora_topk, run.vblora_targets, run.adapter_dtype) == (2, "q,v", "fp32")
    assert run.adapted_modules == ["self_attn.q_proj", "self_attn.v_proj"]


def test_live_peft_vblora_model_is_read() -> None:
    """A peft VB-LoRA model handed to the live integration reads as --method vblora with
    its rank, bank and the modules peft wrapped."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    config = peft.VBLoRAConfig(
        r=2, num_vectors=16, vector_length=8, topk=3, target_modules=["q_proj", "o_proj"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["vblora_rank"], s["vblora_targets"]) == ("vblora", 2, "o_proj,q_proj")
    assert (s["vblora_vectors"], s["vblora_vector_length"], s["vblora_topk"]) == (16, 8, 3)


@pytest.mark.parametrize("precision", [["bf16-mixed"], ["fp16-mixed"], ["bf16", "--autocast"]])
def test_autocast_is_estimated(precision: list[str], capsys) -> None:
    """VB-LoRA under autocast was refused (not modelled); its 16-bit casts of the input, A
    and B, CUDA's fp32 softmax, its output in the input's dtype and its backward are
    modelled now (accuracy cases method=vblora)."""
    from ftmem.cli import main

    args = ["estimate", "llama-3.2-3b", "--method", "vblora", "--precision", *precision]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == "" and "GiB" in out
