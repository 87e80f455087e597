"""The dense families of stop 49 (arcee, ...): each config.json read as its transformers
config class reads it (the defaults it fills), counted as transformers builds the model
on the meta device, and what is not modelled refused in one sentence."""

from __future__ import annotations

import json

import pytest

from ftmem.arch import count_params
from ftmem.errors import InvalidInputError
from ftmem.estimate import estimate_step
from ftmem.run import RunConfig
from ftmem.sources import resolve_model

from .test_cli_contracts import one_sentence, run_main

# what every config below gives: two layers, 4 heads of 16 over 2 KV heads
BASE = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def transformers_count(cfg: dict) -> int:
    """The parameters of AutoModelForCausalLM built from ``cfg`` on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def read(tmp_path, cfg: dict):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return resolve_model(str(tmp_path))


# -- arcee ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {},  # ArceeConfig's defaults: relu2, untied, no biases
        {"hidden_act": "relu2", "tie_word_embeddings": True, "mlp_bias": True},
        {"attention_bias": True, "head_dim": 32},
    ],
)
def test_arcee_counts_as_transformers_builds_it(tmp_path, changes):
    cfg = {"model_type": "arcee", **BASE, **changes}
    arch = read(tmp_path, cfg)
    assert (arch.family, arch.mlp, arch.activation) == ("arcee", "plain", "relu2")
    assert count_params(arch) == transformers_count(cfg)


def test_arcee_plain_mlp_by_hand(tmp_path):
    """Per layer: q, k, v, o (64·64 + 2·64·32 + 64·64), up and down (2·64·160), two
    norms (2·64); the embedding and the untied head 2·320·64, the final norm 64."""
    arch = read(tmp_path, {"model_type": "arcee", **BASE})
    layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 2 * 64 * 160 + 2 * 64
    assert count_params(arch) == 2 * layer + 2 * 320 * 64 + 64


def test_relu2_is_refused_on_a_gated_mlp(tmp_path):
    with pytest.raises(ValueError, match="plain MLPs only"):
        read(tmp_path, {"model_type": "llama", **BASE, "hidden_act": "relu2"})


def test_relu2_under_cuda_autocast_is_refused(tmp_path, capsys):
    """On CUDA autocast runs the square (pow) in fp32, not measured: one sentence, exit
    2; pure bf16 on CUDA and autocast on the CPU (measured) are estimated."""
    arch = read(tmp_path, {"model_type": "arcee", **BASE})
    for precision, device in (("bf16", "cuda"), ("bf16-mixed", "cpu")):
        estimate_step(arch, RunConfig(method="lora", precision=precision, device=device))
    with pytest.raises(InvalidInputError, match="ReLU² under autocast on CUDA"):
        estimate_step(arch, RunConfig(method="lora", precision="bf16-mixed", device="cuda"))
    code, out, err = run_main(
        capsys, "estimate", str(tmp_path), "--method", "lora", "--precision", "bf16-mixed"
    )
    assert (code, out) == (2, "")
    assert "ReLU²" in one_sentence(err)
