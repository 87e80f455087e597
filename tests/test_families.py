"""Each family's config map both ways, against transformers' own config classes; and
what issue 17's families refuse rather than mis-read."""

from __future__ import annotations

import json

import pytest

from ftmem.arch import Architecture, count_params
from ftmem.errors import ConfigError
from ftmem.sources import resolve_model

from .conftest import TINY, tiny

# fields that name where an Architecture came from, not its shape
PROVENANCE = {"name", "source", "published_params", "published_params_source"}


@pytest.mark.parametrize("family", sorted(TINY))
def test_config_written_by_transformers_reads_back(family, tmp_path):
    """transformers writes the family's config.json its own way (rope_parameters,
    layer_types, defaults spelled out); read back it is the same Architecture."""
    pytest.importorskip("transformers")
    from ftmem.measure.build import hf_config

    arch = tiny(family)
    hf_config(arch).to_json_file(tmp_path / "config.json")
    assert _shape(resolve_model(str(tmp_path))) == _shape(arch)


def _shape(arch: Architecture) -> dict:
    """The fields, with those left to a default spelled out (head_dim, kv heads, rotary)."""
    fields = arch.model_dump(exclude=PROVENANCE)
    fields.update(head_dim=arch.head_size, num_kv_heads=arch.kv_heads, rotary_dim=arch.rotary_size)
    return fields


# google/gemma-3-4b-it's text_config gives only what differs from Gemma3TextConfig
GEMMA3_4B = {
    "model_type": "gemma3",
    "text_config": {
        "model_type": "gemma3_text",
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152},
}


def test_gemma3_text_config_takes_transformers_defaults(tmp_path):
    """The heads, head_dim and vocabulary come from Gemma3TextConfig's defaults, as
    transformers fills them; the count is the gemma3-4b preset's (derived there)."""
    (tmp_path / "config.json").write_text(json.dumps(GEMMA3_4B))
    arch = resolve_model(str(tmp_path))
    assert (arch.family, arch.num_heads, arch.kv_heads, arch.head_size) == ("gemma3", 8, 4, 256)
    assert (arch.vocab_size, arch.norms_per_block, arch.qk_norm) == (262_208, 4, True)
    assert count_params(arch) == count_params(resolve_model("gemma3-4b"))


def test_gemma3_text_defaults_match_transformers():
    transformers = pytest.importorskip("transformers")
    from ftmem.families.gemma3 import TEXT_DEFAULTS

    defaults = transformers.Gemma3TextConfig()
    for key, value in TEXT_DEFAULTS.items():
        assert getattr(defaults, key) == value, key


def test_multimodal_tie_defaults_match_transformers():
    """A multimodal config.json that does not say ties (or not) as its class's default."""
    transformers = pytest.importorskip("transformers")
    from ftmem.families._config import MULTIMODAL_TIE_DEFAULT

    for model_type, tie in MULTIMODAL_TIE_DEFAULT.items():
        assert transformers.AutoConfig.for_model(model_type).tie_word_embeddings == tie, model_type


QWEN3_MOE = {
    "model_type": "qwen3_moe",
    "vocab_size": 1000,
    "hidden_size": 64,
    "intermediate_size": 256,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_experts": 8,
    "num_experts_per_tok": 2,
}


def test_qwen3_moe_counts_as_transformers_builds_it():
    """Every layer sparse: the experts are moe_intermediate_size wide (the dense
    intermediate_size is unused); checked against transformers on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ftmem.sources import architecture_from_config

    config = transformers.Qwen3MoeConfig(
        **{k: v for k, v in QWEN3_MOE.items() if k != "model_type"}
    )
    with torch.device("meta"):
        real = sum(p.numel() for p in transformers.Qwen3MoeForCausalLM(config).parameters())
    arch = architecture_from_config(QWEN3_MOE, "x", "x")
    assert (arch.intermediate_size, arch.num_experts) == (32, 8)
    assert count_params(arch) == real


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_type": "qwen3_moe", "mlp_only_layers": [0]}, "dense layers"),
        ({"model_type": "qwen3_moe", "decoder_sparse_step": 2}, "dense layers"),
        ({"model_type": "phi", "qk_layernorm": True}, "qk_layernorm true"),
        ({"model_type": "stablelm", "qk_layernorm": True}, "qk_layernorm true"),
        ({"model_type": "cohere", "use_qk_norm": True}, "use_qk_norm true"),
        ({"model_type": "phi", "partial_rotary_factor": 1.5}, "fraction of the head"),
        ({"model_type": "gpt_neox", "rotary_pct": 0.001}, "at least one"),
    ],
)
def test_what_the_new_families_refuse(tmp_path, changes, message):
    """Layouts ftmem does not model are refused in one sentence, never mis-counted."""
    (tmp_path / "config.json").write_text(json.dumps({**QWEN3_MOE, **changes}))
    with pytest.raises(ConfigError, match=message):
        resolve_model(str(tmp_path))


def test_config_dropout_is_read_and_the_rest_said(tmp_path):
    """StarCoder2's published configs train with dropout 0.1 in three places: the residual
    and embedding dropouts are read (their masks modelled, tests/accuracy), the attention
    dropout is said in a note; none at 0."""
    from ftmem.measure.build import hf_config
    from ftmem.sources import source_notes

    pytest.importorskip("transformers")
    cfg = hf_config(tiny("starcoder2")).to_dict()
    cfg.update(residual_dropout=0.1, embedding_dropout=0.1, attention_dropout=0.1)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve_model(str(tmp_path))
    assert (arch.residual_dropout, arch.embedding_dropout) == (0.1, 0.1)
    (note,) = [n for n in source_notes(str(tmp_path)) if "dropout" in n]
    assert "(attention_dropout 0.1)" in note
    cfg.update(attention_dropout=0.0)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert not [n for n in source_notes(str(tmp_path)) if "dropout" in n]


def test_a_dropout_the_family_lacks_is_refused():
    with pytest.raises(ValueError, match="has no such dropout"):
        tiny("llama", residual_dropout=0.1)


def test_readme_names_every_family():
    """The README's list of model types is the families' (a new family is listed)."""
    from pathlib import Path

    from ftmem import families

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    listed = readme.split("Families (`model_type`):", 1)[1].split(";", 1)[0]
    assert {t.strip(" .") for t in listed.split(",")} == set(families.by_model_type())


def test_no_dropout_trains_without_the_configs_dropout(tmp_path):
    """--no-dropout estimates the run as the architecture without its dropout (and the
    measured step builds it so: measure.build applies the same as_trained)."""
    from ftmem.api import estimate
    from ftmem.arch import as_trained

    drop = tiny("gpt2", residual_dropout=0.1, embedding_dropout=0.1)
    plain = tiny("gpt2")
    kw = dict(method="full", precision="bf16", batch_size=2, seq_len=64, device="cpu")
    off = estimate(drop, **kw, model_dropout=False).memory
    assert off.activations_bytes == estimate(plain, **kw).memory.activations_bytes
    on = estimate(drop, **kw).memory
    # five masks (embeddings, then attention's and the MLP's output in each of 2 blocks),
    # each T·h in bf16 on the CPU (the scaled mask in the input's dtype)
    assert on.activations_bytes - off.activations_bytes == 5 * 2 * 64 * 96 * 2
    assert as_trained(drop, False).model_dump(
        exclude={"residual_dropout", "embedding_dropout"}
    ) == (drop.model_dump(exclude={"residual_dropout", "embedding_dropout"}))
