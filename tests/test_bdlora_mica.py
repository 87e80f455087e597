"""peft's LoRA variants BD-LoRA (--lora-bd-blocks) and MiCA (--lora-mica): what trains,
what the block-diagonal factor and the frozen lora_B keep, how both are refused.

Counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny models and
against the counts PEFT's MetaMathQA benchmark published for Llama-3.2-3B; the kept tensors
against one peft LoRA Linear pair run with each variant; memory against measurement in
tests/accuracy (``_bdlora_mica``).
"""

from __future__ import annotations

import pytest

from ftmem import estimate
from ftmem.cli import main
from tests.test_peft_methods import assert_counts_match_peft


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "mistral"])
@pytest.mark.parametrize("targets", ["q,v", "all-linear", "gate,up,down"])
def test_bdlora_counts_match_peft(family: str, targets: str) -> None:
    """peft's BdLoraConfig with ftmem's factor per linear (block-diagonal lora_A on o and
    down, lora_B elsewhere; phi3's fused qkv_proj and gate_up_proj take lora_B)."""
    assert_counts_match_peft(
        family, {"method": "lora", "lora_bd_blocks": 2, "lora_targets": targets, "lora_r": 4}
    )


def test_bdlora_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    lora--llama-3.2-3B-rank14-target-mlp-bdlora.json: ``num_trainable_params`` 8429568,
    ``num_total_params`` 3221179392 (r 14 on gate, up, down; nblocks 2; its
    adapter_config.json puts up/gate in target_modules_bd_b, down in _bd_a). By hand: gate
    and up keep A 14 × 3072 and B 8192 × 7; down keeps A 14 × 4096 and B 3072 × 14:
    28 · 3 · (43,008 + 57,344) = 8,429,568 (plain LoRA r 14: 10,014,720)."""
    e = estimate(
        "llama-3.2-3b",
        method="lora",
        lora_r=14,
        lora_alpha=28,
        lora_targets="gate,up,down",
        lora_bd_blocks=2,
    )
    assert e.model.n_trainable_params == 28 * 3 * (14 * 3072 + 8192 * 7) == 8_429_568
    assert e.model.n_params + e.model.n_trainable_params == 3_221_179_392


def _saved_by_two_linears(config: object) -> list[tuple[int, str]]:
    """(bytes, dtype) of what autograd keeps through an up and a down projection under
    peft (bf16 base, fp32 adapters), parameters left out."""
    import torch
    from peft import get_peft_model

    class Two(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up_proj = torch.nn.Linear(64, 48, bias=False, dtype=torch.bfloat16)
            self.down_proj = torch.nn.Linear(48, 64, bias=False, dtype=torch.bfloat16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down_proj(self.up_proj(x))

    model = get_peft_model(Two(), config)  # type: ignore[arg-type]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    x = torch.randn(2, 5, 64, dtype=torch.bfloat16, requires_grad=True)
    saved: dict[int, tuple[int, str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr != x.untyped_storage().data_ptr():
            saved[ptr] = (t.untyped_storage().nbytes(), str(t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sorted(saved.values())


def test_bdlora_keeps_what_lora_keeps() -> None:
    """Measured: BlockDiagonalLinear's einsum keeps views of its input (the fp32 cast of x
    for down's block-diagonal A, A's output for up's block-diagonal B), as LoRA's matmuls
    keep them: the same activations, fewer adapter parameters."""
    pytest.importorskip("peft")
    from peft import LoraConfig
    from peft.tuners.lora.config import BdLoraConfig

    targets = ["up_proj", "down_proj"]
    bd = BdLoraConfig(target_modules_bd_a=["down_proj"], target_modules_bd_b=["up_proj"], nblocks=2)
    lora = _saved_by_two_linears(LoraConfig(r=4, target_modules=targets))
    assert lora == _saved_by_two_linears(LoraConfig(r=4, target_modules=targets, use_bdlora=bd))
    kw = {"method": "lora", "precision": "bf16", "lora_targets": "all-linear", "lora_r": 16}
    plain = estimate("llama-3.2-3b", **kw).memory
    blocks = estimate("llama-3.2-3b", lora_bd_blocks=2, **kw).memory
    assert blocks.activations_bytes == plain.activations_bytes
    assert blocks.weights_bytes < plain.weights_bytes


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--method", "dora", "--lora-bd-blocks", "2"], "only applies to lora and rslora"),
        (["--method", "lora", "--lora-bd-blocks", "3"], "must divide the rank (8)"),
        (["--method", "lora", "--lora-bd-blocks", "2", "--precision", "bf16-mixed"], "autocast"),
        (["--method", "lora", "--lora-bd-blocks", "2", "--framework", "unsloth"], "LoraConfig"),
        (["--method", "lora", "--lora-bd-blocks", "2", "--lora-fa"], "drop one"),
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


def test_live_peft_models_are_read() -> None:
    """A peft model with use_bdlora reads as --lora-bd-blocks (its nblocks)."""
    from types import SimpleNamespace

    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from peft.tuners.lora.config import BdLoraConfig

    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    bd = BdLoraConfig(target_modules_bd_a=["o_proj"], target_modules_bd_b=["q_proj"], nblocks=2)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "o_proj"], use_bdlora=bd)
    model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    assert (s["method"], s["lora_bd_blocks"], s["lora_r"]) == ("lora", 2, 4)


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma2"])
@pytest.mark.parametrize("targets", ["q,v", "all-linear"])
def test_mica_counts_match_peft(family: str, targets: str) -> None:
    """peft's init_lora_weights="mica": lora_B frozen, counted in the total only."""
    assert_counts_match_peft(
        family, {"method": "lora", "lora_mica": True, "lora_targets": targets, "lora_r": 4}
    )


def test_mica_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    lora--llama-3.2-3B-rank32-mica.json: ``num_trainable_params`` 5505024,
    ``num_total_params`` 3221924864 (r 32, alpha 64 on the default q,v). By hand: lora_A
    alone trains, 28 · 32 · (3072 + 3072) = 5,505,024; B (28 · 32 · (3072 + 1024) =
    3,670,016) stays in the total, as LoRA r32's 9,175,040 adapter parameters do."""
    e = estimate("llama-3.2-3b", method="lora", lora_r=32, lora_alpha=64, lora_mica=True)
    b = 28 * 32 * (3072 + 1024)
    assert e.model.n_trainable_params == 28 * 32 * 2 * 3072 == 5_505_024
    assert e.model.n_params + b + e.model.n_trainable_params == 3_221_924_864


def test_mica_keeps_no_lora_a_output() -> None:
    """Measured on a peft up/down pair: with lora_B frozen its matmul keeps B, not lora_A's
    output (2 · 5 tokens × r 4 fp32 = 160 bytes per linear), and nothing else changes.
    ftmem: MiCA's activations are LoRA's less T · r · 4 per adapted linear, its gradients
    and states LoRA's less B's."""
    pytest.importorskip("peft")
    from peft import LoraConfig

    targets = ["up_proj", "down_proj"]
    lora = _saved_by_two_linears(LoraConfig(r=4, target_modules=targets))
    mica = _saved_by_two_linears(LoraConfig(r=4, target_modules=targets, init_lora_weights="mica"))
    assert [t for t in lora if t != (160, "torch.float32")] == mica
    assert lora.count((160, "torch.float32")) == 2
    kw = {"method": "lora", "precision": "bf16", "batch_size": 2, "seq_len": 100, "lora_r": 32}
    plain = estimate("llama-3.2-3b", **kw).memory
    frozen_b = estimate("llama-3.2-3b", lora_mica=True, **kw).memory
    T, adapted = 200, 28 * 2
    assert plain.activations_bytes - frozen_b.activations_bytes == adapted * T * 32 * 4
    assert plain.gradients_bytes - frozen_b.gradients_bytes == 28 * 32 * (3072 + 1024) * 4


def test_disable_adapter_keeps_mica_b_frozen() -> None:
    """PEFT's benchmark loop runs ``disable_adapter()`` before training; its exit calls
    set_adapter, which re-freezes the weights a variant registered as frozen (peft 0.21.2
    tuners_utils.py l.2067): MiCA's lora_B stays without a gradient (unlike LoRA-FA's A),
    so --framework peft-mc estimates what hf does."""
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(64, 48)),
        LoraConfig(r=4, target_modules=["0"], init_lora_weights="mica"),
    )
    with model.disable_adapter():
        pass
    trains = {n.split(".")[-3]: p.requires_grad for n, p in model.named_parameters() if "lora" in n}
    assert trains == {"lora_A": True, "lora_B": False}
    kw = {"method": "lora", "precision": "bf16", "lora_mica": True}
    mc = estimate("llama-3.2-3b", framework="peft-mc", **kw).memory
    hf = estimate("llama-3.2-3b", **kw).memory
    assert (mc.gradients_bytes, mc.activations_bytes) == (hf.gradients_bytes, hf.activations_bytes)


@pytest.mark.parametrize(
    ("model", "args", "expected"),
    [
        ("llama2-7b", ["--lora-mica", "--lora-fa"], "drop one"),
        ("llama2-7b", ["--lora-mica", "--lora-bd-blocks", "2"], "two LoRA variants"),
        ("llama2-7b", ["--lora-mica", "--lora-targets", "q,v,lm_head"], "the LM head"),
        ("mixtral-8x7b", ["--lora-mica", "--lora-targets", "all-linear"], "routed experts"),
        ("llama2-7b", ["--lora-mica", "--framework", "litgpt"], "LoraConfig"),
    ],
)
def test_mica_bad_input_is_one_sentence(model: str, args: list[str], expected: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", model, "--method", "lora", *args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == ""
    assert err.startswith("Error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_live_mica_model_is_read() -> None:
    """A peft model with init_lora_weights="mica" reads as --lora-mica (and not as LoRA-FA:
    its lora_A trains)."""
    from types import SimpleNamespace

    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")

    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="mica")
    s = read_run(peft.get_peft_model(tiny_llama(), config), args, given={"seq_len": 16}).settings
    assert (s["method"], s["lora_mica"], s["lora_r"]) == ("lora", True, 4)
    assert "lora_fa" not in s
