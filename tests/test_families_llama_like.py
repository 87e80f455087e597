"""The Llama-like families of stop 48 (OLMo 3, Ministral, Ministral 3, Seed-OSS, ERNIE 4.5,
Hunyuan-V1-Dense, Helium) read
from config.json files that leave keys to their config classes' defaults, as published
configs do: what ftmem reads equals what transformers' own config class fills in and
the model it builds on the meta device (window, sliding layers, head_dim, biases, tying,
Seed-OSS's residual dropout, parameter count); and what transformers cannot run is
refused."""

from __future__ import annotations

import json

import pytest

from ftmem.arch import count_params
from ftmem.errors import ConfigError
from ftmem.sources import resolve_model

# a small Llama-style shape each case starts from (4 heads of 24, 2 KV heads)
BASE = {
    "vocab_size": 300,
    "hidden_size": 96,
    "intermediate_size": 160,
    "num_hidden_layers": 8,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}

CASES = {
    # layer_types and sliding_window left to Olmo3Config: 4096, every fourth layer full
    "olmo3-defaults": {"model_type": "olmo3"},
    "olmo3-layer-types": {
        "model_type": "olmo3",
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"] * 4,
    },
    # every layer slides at MinistralConfig's window (4096)
    "ministral-defaults": {"model_type": "ministral", "head_dim": 24},
    "ministral-layer-types": {
        "model_type": "ministral",
        "head_dim": 32,
        "sliding_window": 16,
        "layer_types": ["full_attention"] + ["sliding_attention"] * 7,
        # (keys its attention and MLP do not read)
        "attention_bias": True,
        "mlp_bias": True,
    },
    # Ministral3Config: head_dim 128 when the key is left out
    "ministral3-defaults": {"model_type": "ministral3"},
    "ministral3-window": {"model_type": "ministral3", "head_dim": 24, "sliding_window": 16},
    "ministral3-rope-parameters": {
        "model_type": "ministral3",
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 1e6,
            "factor": 16.0,
            "original_max_position_embeddings": 16384,
            "llama_4_scaling_beta": 0.1,
        },
    },
    # SeedOssConfig: q/k/v biases, none on o, head_dim 128 when left out
    "seed_oss-defaults": {"model_type": "seed_oss"},
    "seed_oss-null-head-dim": {"model_type": "seed_oss", "head_dim": None},
    "seed_oss-switches": {
        "model_type": "seed_oss",
        "head_dim": 16,
        "attention_bias": False,
        "attention_out_bias": True,
        "mlp_bias": True,
        "tie_word_embeddings": True,
        "residual_dropout": 0.0,
    },
    # Ernie4_5Config: head_dim 128, every linear unbiased, tied embeddings
    "ernie4_5-defaults": {"model_type": "ernie4_5"},
    # use_bias biases q, k, v, o and the MLP's three; null head_dim and kv heads
    "ernie4_5-switches": {
        "model_type": "ernie4_5",
        "head_dim": None,
        "num_key_value_heads": None,
        "use_bias": True,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
    },
    # HunYuanDenseV1Config: no biases, 2048 positions, untied; the q/k norms always
    # there (their weights in the count)
    "hunyuan_v1_dense-defaults": {"model_type": "hunyuan_v1_dense", "head_dim": 24},
    "hunyuan_v1_dense-switches": {
        "model_type": "hunyuan_v1_dense",
        "head_dim": 32,
        "attention_bias": True,
        "tie_word_embeddings": True,
        "max_position_embeddings": 262144,
        # (keys of the remote code that transformers' port does not read: no
        # cross-layer attention, no switch for the q/k norms)
        "use_cla": True,
        "cla_share_factor": 2,
        "use_qk_norm": False,
        "rope_scaling": {"type": "dynamic", "alpha": 1000.0, "factor": 1.0},
    },
    # HeliumConfig: head_dim 128 (here 4 × 128 wide, o_proj 96 → 96 would not run: refused
    # below), no biases, untied, 4096 positions
    "helium-defaults": {"model_type": "helium", "head_dim": 24},
    "helium-switches": {
        "model_type": "helium",
        "head_dim": 24,
        "attention_bias": True,
        "mlp_bias": True,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
    },
}


def _transformers_view(cfg: dict) -> dict:
    """What transformers' config class makes of ``cfg``: the window the sliding layers
    use (None where none slides), how many slide, head_dim, the four bias switches and
    tying, and the parameter count of the model it builds on the meta device."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    # a config class without layer_types (Ministral 3's) gives every layer its window
    # (Ministral3Attention: ``sliding_window=getattr(self.config, "sliding_window", None)``)
    window = getattr(config, "sliding_window", None)
    default = "sliding_attention" if window else "full_attention"
    types = getattr(config, "layer_types", None) or [default] * config.num_hidden_layers
    sliding = sum(t == "sliding_attention" for t in types) if window else 0
    attn = model.model.layers[0].self_attn
    return {
        "sliding_window": window if sliding else None,
        "sliding_layers": sliding,
        "head_dim": attn.q_proj.out_features // config.num_attention_heads,
        "qkv_bias": attn.q_proj.bias is not None,
        "out_bias": attn.o_proj.bias is not None,
        "mlp_bias": model.model.layers[0].mlp.up_proj.bias is not None,
        "tied": model.lm_head.weight is model.model.embed_tokens.weight,
        # the dropout on attention's and the MLP's outputs (Seed-OSS's)
        "residual_dropout": getattr(config, "residual_dropout", 0.0),
        "max_position_embeddings": config.max_position_embeddings,
        "params": sum(p.numel() for p in model.parameters()),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_read_as_transformers_fills_it(case, tmp_path):
    cfg = {**BASE, **CASES[case]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve_model(str(tmp_path))
    ours = {
        "sliding_window": arch.sliding_window,
        "sliding_layers": arch.sliding_layers,
        "head_dim": arch.head_size,
        "qkv_bias": arch.attention_qkv_bias,
        "out_bias": arch.attention_out_bias,
        "mlp_bias": arch.mlp_bias,
        "tied": arch.tie_embeddings,
        "residual_dropout": arch.residual_dropout,
        "max_position_embeddings": arch.max_position_embeddings,
        "params": count_params(arch),
    }
    assert ours == _transformers_view(cfg)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # Olmo3Model.forward builds the sliding mask for every stack (transformers 5.25
        # modeling_olmo3.py l.405-419): without a window it raises, with one but no
        # sliding layer it is a mask no layer reads
        ({"model_type": "olmo3", "sliding_window": None}, "configs without sliding layers"),
        (
            {"model_type": "olmo3", "layer_types": ["full_attention"] * 8},
            "configs without sliding layers",
        ),
        ({"model_type": "ministral", "head_dim": 24, "sliding_window": None}, "sliding"),
        # HunYuanDenseV1Attention reads head_dim as given, as Ministral's (l.161)
        ({"model_type": "hunyuan_v1_dense"}, "lacks 'head_dim'"),
        # HeliumAttention's o_proj is hidden → hidden: heads × head_dim (4 × 128 by
        # HeliumConfig's default) must be the hidden size (96)
        ({"model_type": "helium"}, "o_proj is hidden_size wide"),
        ({"model_type": "helium", "head_dim": 32}, "o_proj is hidden_size wide"),
        # MinistralAttention reads head_dim as given: None fails at head_dim ** -0.5
        ({"model_type": "ministral"}, "lacks 'head_dim'"),
        # Ministral3Config's head_dim is a strict int field: null is refused there too
        ({"model_type": "ministral3", "head_dim": None}, "head_dim must be an integer"),
        # get_llama_4_attn_scale(position_ids, None, None) raises in the forward
        (
            {"model_type": "ministral3", "rope_parameters": {"rope_type": "default"}},
            "llama_4_scaling_beta",
        ),
    ],
)
def test_what_is_refused(changes, message, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**BASE, **changes}))
    with pytest.raises(ConfigError, match=message):
        resolve_model(str(tmp_path))


def test_olmo3_without_a_window_does_not_run_in_transformers():
    """The refusal's reason, checked: transformers 5.25 cannot run that stack."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(
        **{
            **BASE,
            "model_type": "olmo3",
            "sliding_window": None,
            "num_hidden_layers": 1,
            "use_cache": False,
        }
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match="sliding_window"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_seed_oss_trains_with_its_config_class_dropouts(tmp_path):
    """A Seed-OSS config.json that leaves the dropouts out trains with SeedOssConfig's
    0.1 on both: the residual dropout is read (its masks counted, tests/accuracy), the
    attention's own is said in the note; given as 0, neither."""
    transformers = pytest.importorskip("transformers")
    from ftmem.sources import source_notes

    config = transformers.AutoConfig.for_model(model_type="seed_oss")
    assert (config.residual_dropout, config.attention_dropout) == (0.1, 0.1)
    cfg = {**BASE, "model_type": "seed_oss"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert resolve_model(str(tmp_path)).residual_dropout == 0.1
    (note,) = [n for n in source_notes(str(tmp_path)) if "dropout" in n]
    assert "(attention_dropout 0.1)" in note
    cfg.update(residual_dropout=0.0, attention_dropout=0.0)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert resolve_model(str(tmp_path)).residual_dropout == 0.0
    assert not [n for n in source_notes(str(tmp_path)) if "dropout" in n]


def test_ernie4_5_takes_two_kv_heads_when_the_key_is_left_out(tmp_path):
    """Ernie4_5Config's num_key_value_heads defaults to 2, not to the heads' count (null
    means as many as heads): 8 heads, the key left out, the meta model's k_proj 2 heads
    wide and the counts equal."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = {k: v for k, v in BASE.items() if k != "num_key_value_heads"}
    cfg.update(model_type="ernie4_5", num_attention_heads=8, head_dim=12)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve_model(str(tmp_path))
    config = transformers.AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    k_proj = model.model.layers[0].self_attn.k_proj
    assert arch.kv_heads == k_proj.out_features // 12 == 2
    assert count_params(arch) == sum(p.numel() for p in model.parameters())


def test_helium_with_heads_wider_than_hidden_does_not_run_in_transformers():
    """HeliumAttention feeds its heads × head_dim output to an o_proj built hidden →
    hidden (transformers 5.25 modeling_helium.py): where the two differ the forward
    fails, which is why ftmem refuses such a config."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(model_type="helium", **{**BASE, "head_dim": 32})
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 4, dtype=torch.long))
