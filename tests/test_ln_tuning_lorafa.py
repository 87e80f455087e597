"""peft's LN tuning (--method ln-tuning) and LoRA-FA (--lora-fa): what trains, what the
frozen originals and the frozen lora_A leave behind, what LoRA-FA's step allocates, how
both are refused.

Counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny models
(LoRA-FA: after peft's ``create_lorafa_optimizer`` froze lora_A) and against the counts
PEFT's MetaMathQA benchmark published for Llama-3.2-3B; the kept tensors against one peft
LoRA Linear run with and without a frozen lora_A; memory against measurement in
tests/accuracy (``_ln_tuning_lorafa``).
"""

from __future__ import annotations

import warnings

import pytest

from ftmem import estimate
from ftmem.cli import main
from ftmem.methods import plan_method
from ftmem.optim import optimizer_step_temporary_bytes
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.test_peft_methods import assert_counts_match_peft

# peft 0.21.2 utils/constants.py l.155-192 has default LN-tuning targets for these
LN_FAMILIES = [
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "falcon",
    "phi",
    "gpt2",
]


@pytest.mark.parametrize("family", LN_FAMILIES)
def test_ln_tuning_counts_match_peft(family: str) -> None:
    assert_counts_match_peft(family, {"method": "ln-tuning"})


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
@pytest.mark.parametrize("targets", ["q,v", "all-linear"])
def test_lora_fa_counts_match_peft(family: str, targets: str) -> None:
    """peft's create_lorafa_optimizer freezes every lora_A of a plain LoRA model: what
    get_nb_trainable_parameters counts then is ftmem's plan with --lora-fa."""
    pytest.importorskip("peft")
    from peft.optimizers import create_lorafa_optimizer

    from ftmem.measure.build import build_model

    arch = tiny(family)
    kw = {"method": "lora", "precision": "bf16", "device": "cpu", "lora_r": 4}
    plain = RunConfig(lora_targets=targets, **kw)
    fa = RunConfig(lora_targets=targets, lora_fa=True, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, plain).model
        create_lorafa_optimizer(model, r=4, lora_alpha=8, lr=1e-4)
    trainable, total = model.get_nb_trainable_parameters()
    plan = plan_method(arch, fa)
    assert (plan.n_trainable, plan.n_params) == (trainable, total)


def test_published_metamathqa_counts() -> None:
    """huggingface/peft@5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40 method_comparison/
    MetaMathQA/results/: ln_tuning--llama-3.2-3B-default.json ``num_trainable_params``
    175104, ``num_total_params`` 3212924928; lora--llama-3.2-3B-rank32-lorafa.json 3670016
    and 3221924864. By hand: LN tuning copies the two RMSNorms of 28 blocks and the final
    one, 3072 wide: 57 · 3072 = 175,104, and the copies add to the base's 3,212,749,824.
    LoRA-FA r 32 on q (3072 → 3072) and v (3072 → 1024): B alone trains, 28 · 32 · (3072 +
    1024) = 3,670,016; A (28 · 2 · 32 · 3072 = 5,505,024) stays in the total."""
    ln = estimate("llama-3.2-3b", method="ln-tuning")
    assert ln.model.n_trainable_params == 57 * 3072 == 175_104
    assert ln.model.n_params + ln.model.n_trainable_params == 3_212_924_928
    fa = estimate("llama-3.2-3b", method="lora", lora_r=32, lora_alpha=64, lora_fa=True)
    a = 28 * 2 * 32 * 3072
    assert fa.model.n_trainable_params == 28 * 32 * (3072 + 1024) == 3_670_016
    assert fa.model.n_params + a + fa.model.n_trainable_params == 3_221_924_864


def test_ln_tuning_keeps_the_frozen_originals() -> None:
    """Beside partial training of the same norms, LN tuning holds one more copy of each:
    57 · 3072 bf16 values (the copies stay in the base dtype: LNTuningModel's
    _cast_adapter_dtype does nothing); gradients, states and activations are the same."""
    ln = estimate("llama-3.2-3b", method="ln-tuning", precision="bf16").memory
    norms = r"(input_layernorm|post_attention_layernorm|model\.norm)\.weight$"
    partial = estimate(
        "llama-3.2-3b", method="partial", trainable_modules=norms, precision="bf16"
    ).memory
    assert ln.weights_bytes - partial.weights_bytes == 57 * 3072 * 2
    assert ln.gradients_bytes == partial.gradients_bytes == 57 * 3072 * 2
    assert ln.activations_bytes == partial.activations_bytes


def _saved_by_one_lora_linear(frozen_a: bool) -> list[tuple[tuple[int, ...], object]]:
    import torch
    from peft import LoraConfig, get_peft_model

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = torch.nn.Linear(64, 48, bias=False, dtype=torch.bfloat16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.q(x)

    model = get_peft_model(One(), LoraConfig(r=4, target_modules=["q"]))
    for name, p in model.named_parameters():
        if "lora_A" in name:
            p.requires_grad_(not frozen_a)
    x = torch.randn(10, 64, dtype=torch.bfloat16, requires_grad=True)
    saved: list[tuple[tuple[int, ...], object]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return saved


def test_frozen_lora_a_keeps_no_input() -> None:
    """Measured on one peft LoRA Linear (bf16 base, fp32 adapters): with lora_A frozen
    its matmul keeps A (for x's gradient) but not the fp32 cast of x (10 × 64), which only
    A's gradient needs; B still keeps A's output (10 × 4). ftmem: the difference between
    LoRA and LoRA-FA activations is that cast, T · in · 4 per adapted linear."""
    torch = pytest.importorskip("torch")
    trains, frozen = _saved_by_one_lora_linear(False), _saved_by_one_lora_linear(True)
    assert ((10, 64), torch.float32) in trains
    assert [t for t in trains if t != ((10, 64), torch.float32)] == frozen
    assert ((10, 4), torch.float32) in frozen
    kw = {"precision": "bf16", "batch_size": 2, "seq_len": 100, "lora_r": 32}
    lora = estimate("llama-3.2-3b", method="lora", **kw).memory
    fa = estimate("llama-3.2-3b", method="lora", lora_fa=True, **kw).memory
    T, adapted = 200, 28 * 2
    assert lora.activations_bytes - fa.activations_bytes == adapted * T * 3072 * 4


def test_lora_fa_step_by_hand() -> None:
    """LoraFAOptimizer.step for one lora_B at a time (peft 0.21.2 optimizers/lorafa.py
    l.146-180): at ``B.addcdiv_`` AA_T and its pseudo-inverse (r × r), grad_B (cast back to
    B's fp32) and denom_B (B's size) are alive. The largest B is q's, 3072 × 32, fp32:
    2 · 98,304 · 4 + 2 · 32² · 4 = 794,624 bytes; no AdamW ``step`` tensors (a Python int)."""
    from ftmem.presets import get_model

    run = RunConfig(method="lora", lora_r=32, lora_alpha=64, lora_fa=True, precision="bf16")
    plan = plan_method(get_model("llama-3.2-3b"), run)
    want = 2 * 3072 * 32 * 4 + 2 * 32**2 * 4
    assert optimizer_step_temporary_bytes(plan.groups, run) == want == 794_624
    fa = estimate("llama-3.2-3b", method="lora", lora_r=32, lora_fa=True, precision="bf16")
    assert fa.memory.optimizer_states_bytes == 2 * 3_670_016 * 4


def test_disable_adapter_gives_lora_a_its_gradient_back() -> None:
    """PEFT's method_comparison loop (framework peft-mc) runs its wiki loss under
    ``model.disable_adapter()`` after create_lorafa_optimizer froze lora_A; the context's
    exit (enable_adapter_layers -> set_adapter) sets requires_grad on every active adapter
    layer again. Measured here on peft: A is trainable again, gets a gradient, and the
    LoRA-FA step still keeps states for B only. ftmem under peft-mc: A's gradient and its
    input cast as plain LoRA's, AdamW states for B alone."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from peft.optimizers import create_lorafa_optimizer

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = torch.nn.Linear(64, 48, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.q(x)

    model = get_peft_model(One(), LoraConfig(r=4, target_modules=["q"]))
    optimizer = create_lorafa_optimizer(model, r=4, lora_alpha=8, lr=1e-4)
    a = model.base_model.model.q.lora_A["default"].weight
    assert not a.requires_grad
    with model.disable_adapter():
        pass
    assert a.requires_grad
    model(torch.randn(3, 64)).sum().backward()
    optimizer.step()
    assert a.grad is not None
    assert [sorted(k for k in s if k != "step") for s in optimizer.state.values()] == [
        ["exp_avg_B", "exp_avg_sq_B"]
    ]
    kw = {"method": "lora", "precision": "bf16", "lora_r": 32, "framework": "peft-mc"}
    lora = estimate("llama-3.2-3b", **kw).memory
    fa = estimate("llama-3.2-3b", lora_fa=True, **kw).memory
    assert fa.activations_bytes == lora.activations_bytes
    assert fa.gradients_bytes == lora.gradients_bytes
    assert fa.optimizer_states_bytes == 2 * 3_670_016 * 4


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "dora", "--lora-fa"], "--lora-fa only applies to lora and rslora"),
        (["--method", "lora", "--lora-fa", "--optimizer", "adamw-8bit"], "its own AdamW loop"),
        (["--method", "lora", "--lora-fa", "--framework", "unsloth"], "create_lorafa_optimizer"),
        (["--method", "ln-tuning", "--framework", "litgpt"], "has no --method ln-tuning"),
        (["--method", "lora", "--lora-fa", "--gpus", "2", "--strategy", "zero2"], "only DDP"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "llama2-7b", *args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == ""
    assert err.startswith("Error: ") and expected in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_ln_tuning_without_default_targets_is_refused(capsys) -> None:
    """peft has no default LN-tuning targets for phi3 (its LNTuningConfig then needs
    target_modules): refused, pointing at partial training of the norms."""
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "phi3-mini", "--method", "ln-tuning"])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "no default LN-tuning targets for phi3" in err


def test_ln_tuning_on_an_image_text_model_is_refused(capsys) -> None:
    """Qwen2-VL's family has LN-tuning targets, but peft keys its defaults by the
    composite model's type (qwen2_vl, absent from its mapping) and nothing image-text was
    measured: refused, where it was estimated as the text model's norms."""
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "qwen2-vl-2b", "--method", "ln-tuning"])
    _, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "LN tuning on Qwen2-VL-2B" in err and "is not modelled" in err


def test_live_peft_models_are_read() -> None:
    """A peft LN-tuning model reads as --method ln-tuning; a LoRA model whose lora_A
    create_lorafa_optimizer froze reads as --lora-fa (B still trains)."""
    from types import SimpleNamespace

    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from peft.optimizers import create_lorafa_optimizer

    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    model = peft.get_peft_model(tiny_llama(), peft.LNTuningConfig())
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert s["method"] == "ln-tuning" and "adapter_dtype" not in s
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj"]))
    assert "lora_fa" not in read_run(model, args, given={"seq_len": 16}).settings
    create_lorafa_optimizer(model, r=4, lora_alpha=8, lr=1e-4)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["lora_fa"], s["lora_r"]) == ("lora", True, 4)
