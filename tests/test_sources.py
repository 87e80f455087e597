"""Model sources: model folders with safetensors headers, Hugging Face cache entries, Hub
ids through the cache (offline), multimodal configs, user presets. Every file is made
by the test; nothing is downloaded."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from ftmem import estimate
from ftmem.arch import count_params
from ftmem.errors import ConfigError, FtmemError
from ftmem.presets import get_gpu, get_model
from ftmem.quantized_base import QuantizedBase
from ftmem.safetensors_headers import read_checkpoint, read_header
from ftmem.sources import quantized_base_of, resolve_model, source_notes
from tests.conftest import hub_cache_with, tiny

LLAMA_CFG = {
    "model_type": "llama", "vocab_size": 320, "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
    "max_position_embeddings": 256, "tie_word_embeddings": False,
}  # fmt: skip


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file written by hand: header, then zero bytes for the data."""
    sizes = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4, "U8": 1}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def test_folder_saved_by_transformers_matches_the_layout(tmp_path):
    """transformers' own save_pretrained: config.json and model.safetensors."""
    pytest.importorskip("transformers")
    from ftmem.measure.build import build_model
    from ftmem.run import RunConfig

    arch = tiny("llama")
    model = build_model(arch, RunConfig(method="full", precision="bf16", device="cpu")).model
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = resolve_model(str(tmp_path))
    assert count_params(loaded) == count_params(arch)
    ckpt = read_checkpoint(tmp_path)
    assert ckpt is not None and set(ckpt.bytes_by_dtype()) == {"BF16"}
    assert ckpt.nbytes == 2 * count_params(arch)
    notes = source_notes(str(tmp_path))
    assert any("the same count as the layout" in n for n in notes), notes


def test_sharded_index_and_hand_written_headers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CFG))
    arch = resolve_model(str(tmp_path))
    from ftmem.arch import layout

    lay = layout(arch)
    names = {p.name: list(p.shape) for p in lay.outer}
    for i in range(arch.num_layers):
        names.update({f"model.layers.{i}.{p.name}": list(p.shape) for p in lay.block})
    half = dict(list(names.items())[: len(names) // 2])
    rest = dict(list(names.items())[len(names) // 2 :])
    write_safetensors(
        tmp_path / "model-00001-of-00002.safetensors", {k: ("BF16", v) for k, v in half.items()}
    )
    write_safetensors(
        tmp_path / "model-00002-of-00002.safetensors", {k: ("BF16", v) for k, v in rest.items()}
    )
    weight_map = {k: "model-00001-of-00002.safetensors" for k in half}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in rest})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ckpt = read_checkpoint(tmp_path)
    assert len(ckpt.files) == 2 and ckpt.numel == count_params(arch)
    assert any(
        "2 safetensors file(s)" in n and "same count" in n for n in source_notes(str(tmp_path))
    )


def test_quantised_checkpoint_is_recognised(tmp_path):
    cfg = dict(LLAMA_CFG, quantization_config={"quant_method": "gptq", "bits": 4})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_safetensors(tmp_path / "model.safetensors", {
        "model.layers.0.self_attn.q_proj.qweight": ("I32", [8, 64]),
        "model.layers.0.self_attn.q_proj.qzeros": ("I32", [1, 8]),
        "model.layers.0.self_attn.q_proj.scales": ("F16", [1, 64]),
        "model.layers.0.self_attn.q_proj.g_idx": ("I32", [64]),
    })  # fmt: skip
    notes = source_notes(str(tmp_path))
    assert any("GPTQ" in n and "-quantised" in n and "on disk" in n for n in notes)
    assert quantized_base_of(str(tmp_path)) == QuantizedBase("gptq", "int4", group_size=128)


def test_mismatching_checkpoint_is_reported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_CFG))
    write_safetensors(
        tmp_path / "model.safetensors", {"model.embed_tokens.weight": ("BF16", [320, 64])}
    )
    assert any("check the checkpoint matches" in n for n in source_notes(str(tmp_path)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02", "too short"),
        (struct.pack("<Q", 10**9) + b"{}", "does not fit the file"),
        (struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 15) + b'{"a": {"x": 1}}', "no dtype or shape"),
    ],
)
def test_bad_safetensors_headers(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        read_header(path)


def test_huggingface_cache_entry_resolves_to_its_snapshot(tmp_path):
    entry = tmp_path / "models--acme--tiny-llama"
    snap = entry / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(LLAMA_CFG))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("abc123")
    assert resolve_model(str(entry)).num_layers == 2


def test_hub_id_from_the_local_cache_offline(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    hub_cache_with(tmp_path, monkeypatch, "acme/tiny-llama", LLAMA_CFG)
    arch = resolve_model("acme/tiny-llama")
    assert arch.hidden_size == 64
    with pytest.raises(
        ConfigError,
        match=r"Unknown model .acme/not-cached.: not a preset, and its config.json is not in the local",
    ):
        resolve_model("acme/not-cached")


def test_multimodal_config_estimates_the_language_model(tmp_path):
    """An image-text model whose tower ftmem does not model (LLaVA-NeXT's tiled images): its
    language model, with a note (LLaVA's and Gemma 3's towers: tests/test_vision.py)."""
    cfg = {
        "model_type": "llava_next",
        "text_config": LLAMA_CFG,
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32},
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve_model(str(tmp_path))
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps(LLAMA_CFG))
    assert count_params(arch) == count_params(resolve_model(str(plain)))
    est = estimate(str(tmp_path))
    assert any("vision encoder and its projector are left out" in n for n in est.notes)


def test_user_presets_are_validated_and_used(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "gpus").mkdir()
    (tmp_path / "models" / "acme.yaml").write_text(
        "id: acme-7b\naliases: [acme/acme-7b]\nname: Acme-7B\nfamily: llama\nvocab_size: 32000\n"
        "hidden_size: 4096\nnum_layers: 32\nnum_heads: 32\nintermediate_size: 11008\n"
    )
    (tmp_path / "gpus" / "lab.yaml").write_text(
        "id: lab-card\nname: Lab card 40GB\nmemory_bytes: 42949672960\nsource: our spec sheet\n"
    )
    monkeypatch.setenv("FTMEM_PRESETS", str(tmp_path))
    assert count_params(get_model("acme/acme-7b")) == count_params(get_model("llama2-7b"))
    assert get_gpu("lab-card").memory_bytes == 40 * 2**30
    assert estimate("acme-7b", gpu="lab-card").fits is not None
    (tmp_path / "gpus" / "bad.yaml").write_text("id: bad\nname: x\nmemory_bytes: -1\nsource: y\n")
    with pytest.raises(FtmemError, match=r"bad\.yaml is invalid \(memory_bytes"):
        get_gpu("lab-card")


def test_user_presets_folder_must_exist(monkeypatch):
    monkeypatch.setenv("FTMEM_PRESETS", "/no/such/presets")
    with pytest.raises(FtmemError, match="not a folder"):
        get_model("llama2-7b")


# google/flan-t5-base's config.json (the keys that shape memory, as published)
FLAN_T5_BASE_CFG = {
    "architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_ff": 2048,
    "d_kv": 64, "d_model": 768, "decoder_start_token_id": 0, "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1, "feed_forward_proj": "gated-gelu", "is_encoder_decoder": True,
    "layer_norm_epsilon": 1e-06, "n_positions": 512, "num_decoder_layers": 12,
    "num_heads": 12, "num_layers": 12, "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32, "tie_word_embeddings": False, "vocab_size": 32128,
}  # fmt: skip


def test_flan_t5_config_json_matches_the_preset(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(FLAN_T5_BASE_CFG))
    arch = resolve_model(str(tmp_path))
    preset = get_model("flan-t5-base")
    assert count_params(arch) == 247_577_856 == count_params(preset)
    fields = ("family", "mlp", "activation", "tie_embeddings", "dropout_rate", "head_dim")
    assert {f: getattr(arch, f) for f in fields} == {f: getattr(preset, f) for f in fields}


def test_t5_v1_config_ties_the_head(tmp_path):
    cfg = {k: v for k, v in FLAN_T5_BASE_CFG.items() if k != "tie_word_embeddings"}
    cfg.update(feed_forward_proj="relu", d_ff=3072)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve_model(str(tmp_path))
    assert arch.tie_embeddings and arch.mlp == "plain" and arch.activation == "relu"
    assert count_params(arch) == count_params(get_model("t5-base")) == 222_903_552


def test_t5_with_unequal_stacks_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(FLAN_T5_BASE_CFG | {"num_decoder_layers": 6}))
    with pytest.raises(ConfigError, match="12 encoder and 6 decoder layers"):
        resolve_model(str(tmp_path))


def test_t5_folder_saved_by_transformers(tmp_path):
    pytest.importorskip("transformers")
    from ftmem.measure.build import build_model
    from ftmem.run import RunConfig

    arch = tiny("flan-t5", dropout_rate=0.1)
    model = build_model(arch, RunConfig(method="full", precision="bf16", device="cpu")).model
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = resolve_model(str(tmp_path))
    assert count_params(loaded) == count_params(arch)
    assert loaded.dropout_rate == 0.1 and not loaded.tie_embeddings
    ckpt = read_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.nbytes == 2 * count_params(arch)


# Qwen/Qwen3-0.6B's config.json (the keys that shape memory, as published)
QWEN3_0_6B_CFG = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "head_dim": 128,
    "hidden_act": "silu", "hidden_size": 1024, "intermediate_size": 3072,
    "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
    "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip


def test_qwen3_config_json(tmp_path):
    """q/k norms from the model type, head_dim as written (not hidden / heads), tied
    head; 596,049,920 parameters as KerasHub's qwen3_0.6b_en lists."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN3_0_6B_CFG))
    arch = resolve_model(str(tmp_path))
    assert (arch.family, arch.qk_norm, arch.head_size, arch.q_size) == ("qwen3", True, 128, 2048)
    assert arch.tie_embeddings and not arch.has_biases and arch.sliding_window is None
    assert count_params(arch) == 596_049_920


@pytest.mark.parametrize(
    ("changes", "window", "biases"),
    [
        # Qwen3Config's defaults: no sliding window (use_sliding_window false), no biases
        ({"use_sliding_window": None, "sliding_window": 4096}, None, 0),
        ({"use_sliding_window": True, "sliding_window": 4096}, 4096, 0),
        # attention_bias puts a bias on q, k, v and o alike
        ({"attention_bias": True}, None, 28 * (2048 + 2 * 1024 + 1024)),
    ],
)
def test_qwen3_config_flags(tmp_path, changes, window, biases):
    cfg = {k: v for k, v in {**QWEN3_0_6B_CFG, **changes}.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    arch = resolve_model(str(tmp_path))
    assert arch.sliding_window == window
    assert count_params(arch) == 596_049_920 + biases


def test_qwen3_config_counts_as_transformers_builds_it():
    """The same config through transformers' own Qwen3 model (meta device), with biases."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ftmem.sources import architecture_from_config

    cfg = {**QWEN3_0_6B_CFG, "num_hidden_layers": 2, "attention_bias": True}
    config = transformers.Qwen3Config(**{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        model = transformers.Qwen3ForCausalLM(config)
    real = sum(p.numel() for p in model.parameters())
    assert count_params(architecture_from_config(cfg, "x", "x")) == real


def test_qwen3_folder_saved_by_transformers(tmp_path):
    """transformers 5 writes Qwen3's config.json its own way (layer_types, rope_parameters,
    a null sliding_window): read back, it is the same layout, q/k norms included."""
    pytest.importorskip("transformers")
    from ftmem.measure.build import build_model
    from ftmem.run import RunConfig

    arch = tiny("qwen3")
    model = build_model(arch, RunConfig(method="full", precision="bf16", device="cpu")).model
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = resolve_model(str(tmp_path))
    assert (loaded.qk_norm, loaded.head_size, loaded.sliding_window) == (True, 32, None)
    assert count_params(loaded) == count_params(arch)
    notes = source_notes(str(tmp_path))
    assert any("the same count as the layout" in n for n in notes), notes
