"""peft's DeLoRA (--method delora): its λ per linear and w_norm buffer, the scaled input and
r-wide products it keeps, its forward's sum, how it is refused and read from a live model.

Counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny models and
against the count PEFT's MetaMathQA benchmark published for Llama-3.2-3B; the kept tensors
against a peft up/down pair; memory against measurement in tests/accuracy
(``_bdlora_mica``'s DeLoRA cases).
"""

from __future__ import annotations

import pytest

from ftmem import estimate
from ftmem.cli import main
from tests.test_bdlora_mica import _saved_by_two_linears
from tests.test_peft_methods import assert_counts_match_peft


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "phi3"])
@pytest.mark.parametrize("targets", ["q,v", "all-linear"])
def test_delora_counts_match_peft(family: str, targets: str) -> None:
    assert_counts_match_peft(family, {"method": "delora", "lora_r": 4, "lora_targets": targets})


def test_delora_published_metamathqa_count() -> None:
    """huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/
    delora--llama-3.2-3B-rank32.json: ``num_trainable_params`` 9175096,
    ``num_total_params`` 3221924920 (experiments/delora/llama-3.2-3B-rank32/
    adapter_config.json: r 32, delora_lambda 15, default q,v). By hand: LoRA r32's
    9,175,040 plus one λ on each of the 56 adapted linears."""
    e = estimate("llama-3.2-3b", method="delora", lora_r=32)
    assert e.model.n_trainable_params == 28 * 32 * (3 * 3072 + 1024) + 56 == 9_175_096
    assert e.model.n_params + e.model.n_trainable_params == 3_221_924_920


def test_delora_keeps_its_scaled_input_and_two_products() -> None:
    """Measured on a peft up/down pair (bf16 base, 10 tokens, r 4): per linear the fp32
    input × w_norm (10 · in · 4: 2,560 and 1,920 bytes), A's output and its scaled copy
    (160 bytes each), six r-vectors (16 bytes each) and one scalar; and the w_norm buffers
    themselves (48 and 64 fp32: already among the weights). ftmem counts the same."""
    pytest.importorskip("peft")
    from peft import DeloraConfig

    saved = _saved_by_two_linears(DeloraConfig(r=4, target_modules=["up_proj", "down_proj"]))
    f32 = "torch.float32"
    expected = [(4, f32)] * 2 + [(16, f32)] * 12 + [(160, f32)] * 4 + [(192, f32), (256, f32)]
    expected += [(1920, f32), (2560, f32)]
    assert saved == expected


def test_delora_under_autocast_keeps_16_bit_casts() -> None:
    """Measured on a peft up/down pair (fp32 base, fp32 input requiring grad, CPU autocast
    to bf16, 10 tokens, r 4): per linear the bf16 cast of the scaled input (10 · in · 2),
    A's bf16 output and the bf16 cast of its fp32 scaled copy (80 bytes each), the norms
    (fp32, as without autocast), the bf16 casts of A (r · in · 2) and B (out · r · 2) (and
    the frozen base weights' casts, ftmem's base linears' items); and
    the output in the input's dtype (fp32). linear is lower precision on CUDA's list as on
    the CPU's; mul, clamp and the fp32 norms are on neither."""
    torch = pytest.importorskip("torch")
    from peft import DeloraConfig, get_peft_model

    model = get_peft_model(
        torch.nn.Sequential(torch.nn.Linear(64, 48, bias=False), torch.nn.Linear(48, 64)),
        DeloraConfig(r=4, target_modules=["0", "1"]),
    )
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    x = torch.randn(2, 5, 64, requires_grad=True)
    saved: dict[int, tuple[int, str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr != x.untyped_storage().data_ptr():
            saved[ptr] = (t.untyped_storage().nbytes(), str(t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu"):
        y = model(x)
    bf, f32 = "torch.bfloat16", "torch.float32"
    casts = [(10 * 64 * 2, bf), (10 * 48 * 2, bf), (4 * 64 * 2, bf), (4 * 48 * 2, bf)]
    casts += [(48 * 4 * 2, bf), (64 * 4 * 2, bf)]  # B's casts
    casts += [(80, bf)] * 4  # A's output and the scaled copy's cast, per linear
    casts += [(64 * 48 * 2, bf)] * 2  # the frozen base weights' casts (ftmem's base linears')
    norms = [(4, f32)] * 2 + [(16, f32)] * 12
    assert y.dtype == torch.float32
    assert sorted(v for v in saved.values() if v[1] == bf) == sorted(casts)
    assert sorted(v for v in saved.values() if v[1] == f32 and v[0] <= 16) == sorted(norms)


def test_delora_w_norm_and_activations_by_hand() -> None:
    """Llama-3.2-3B r32 on q,v, bf16, 200 tokens: w_norm adds 56 · 3072 fp32 values to the
    weights (688,128 bytes beside LoRA's); per adapted linear the scaled input (200 · 3072 · 4,
    what LoRA's input cast keeps), two 200 · 32 fp32 products (LoRA keeps one) and the norms
    (6 · 32 + 1 values)."""
    kw = {"precision": "bf16", "batch_size": 2, "seq_len": 100, "lora_r": 32}
    lora = estimate("llama-3.2-3b", method="lora", **kw).memory
    de = estimate("llama-3.2-3b", method="delora", **kw).memory
    assert de.weights_bytes - lora.weights_bytes == 56 * 3072 * 4 + 56 * 4
    assert de.activations_bytes - lora.activations_bytes == 56 * (200 * 32 * 4 + (6 * 32 + 1) * 4)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--framework", "unsloth"], "unsloth"),
        (["--lora-dropout", "0.1"], "module_dropout"),
        (["--lora-targets", "q,v,lm_head"], "the delora adapter on the head"),
    ],
)
def test_bad_input_is_one_sentence(args: list[str], expected: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "llama2-7b", "--method", "delora", *args])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == ""
    assert err.startswith("Error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_live_delora_model_is_read() -> None:
    """A peft DeLoRA model reads as --method delora; module_dropout is refused."""
    from types import SimpleNamespace

    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")

    from ftmem.errors import InvalidInputError
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.DeloraConfig(r=4, target_modules=["q_proj", "v_proj"])
    s = read_run(peft.get_peft_model(tiny_llama(), config), args, given={"seq_len": 16}).settings
    assert (s["method"], s["lora_r"], s["lora_targets"]) == ("delora", 4, "q_proj,v_proj")
    dropped = peft.DeloraConfig(r=4, target_modules=["q_proj"], module_dropout=0.1)
    with pytest.raises(InvalidInputError, match=r"module_dropout 0\.1"):
        read_run(peft.get_peft_model(tiny_llama(), dropped), args, given={"seq_len": 16})
