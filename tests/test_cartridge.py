"""peft's Cartridge (--method cartridge): a trained key/value cache served as every layer's
prefix. Counts against peft's own, the gradient storage of its trained tokens against
what torch keeps on peft's encoder (CPU), and the runs it refuses. The whole step is in the
accuracy cases (tests/accuracy/cases.py _cartridge)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

CART = {"method": "cartridge"}


@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2"])
@pytest.mark.parametrize("extra", [{}, {"virtual_tokens": 7, "cartridge_frozen_tokens": 0}])
def test_counts_are_peft_own(family: str, extra: dict) -> None:
    assert_counts_match_peft(family, {**CART, **extra})


def test_llama2_7b_by_hand() -> None:
    """20 virtual tokens, the first frozen: 19 trained rows of every layer's keys and values,
    32 × 2 × 4096 wide, fp32 (peft builds the encoder in torch's default dtype); the trained
    rows' gradient keeps the whole 20-row storage (cat's backward narrows it)."""
    est = estimate("llama2-7b", method="cartridge")
    kv_all = 32 * 2 * 4096
    assert est.model.n_trainable_params == 19 * kv_all
    assert est.memory.gradients_bytes == 20 * kv_all * 4


@pytest.mark.parametrize("frozen", [0, 1, 3])
def test_trained_tokens_gradient_storage_is_measured(frozen: int) -> None:
    """One forward and backward through peft's Cartridge on a tiny Llama: the trained
    tokens' ``.grad`` holds the whole cache's storage where tokens are frozen (a view of
    cat's gradient), its own size where none is."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from ftmem.measure.build import build_model
    from ftmem.methods import plan_method

    arch = tiny("llama")
    run = RunConfig(**CART, precision="bf16", device="cpu", cartridge_frozen_tokens=frozen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    ids = torch.randint(0, arch.vocab_size, (2, 10))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    measured = sum(g.untyped_storage().nbytes() for g in grads)
    estimated = sum(g.count * g.grad_bytes for g in plan_method(arch, run).groups if g.trainable)
    assert measured == estimated


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--cartridge-frozen-tokens", "21"], "is more than the 20 virtual tokens"),
        (["--grad-ckpt"], "Cartridge does not work with gradient checkpointing"),
        (["--precision", "bf16-mixed"], "Cartridge under autocast"),
        (["--gpus", "2", "--strategy", "zero2"], "Cartridge with 16-bit adapters is not modelled"),
        (["--framework", "litgpt"], "has no --method cartridge"),
        (["--lora-r", "8"], "--lora-r only applies to"),
    ],
)
def test_refusals_are_one_sentence(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = one_sentence(["estimate", "llama2-7b", "--method", "cartridge", *args], capsys)
    assert said in err


def test_live_peft_cartridge_model_is_read() -> None:
    """A peft Cartridge model handed to the live integration reads as --method cartridge
    with its virtual and frozen tokens."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.CartridgeConfig(num_virtual_tokens=6, num_frozen_tokens=2, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    got = (s["method"], s["virtual_tokens"], s["cartridge_frozen_tokens"])
    assert got == ("cartridge", 6, 2)
