"""Property tests over the model files a user points ftmem at: config.json objects with
any of the real config fields set to any JSON value, safetensors headers and their index
with any JSON, and Hugging Face cache folders in any state. Each run keeps the CLI's
contract (tests/surface_contract.py): an answer, or exit 2 with one line and no stdout."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ftmem import sources
from tests.surface_contract import FEW, broken, judged

TINY = {
    "model_type": "llama",
    "vocab_size": 320,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}
# the fields the loaders read (grep of src/ftmem/families, sources.py, vision*.py)
FIELDS = [
    "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "intermediate_size", "head_dim", "hidden_act",
    "tie_word_embeddings", "attention_bias", "mlp_bias", "max_position_embeddings",
    "sliding_window", "layer_types", "rope_parameters", "quantization_config",
    "text_config", "vision_config", "num_local_experts", "num_experts_per_tok",
    "first_k_dense_replace", "n_shared_experts", "q_lora_rank", "qk_norm", "rotary_dim",
    "max_window_layers", "mlp_only_layers", "no_rope_layers", "_name_or_path",
    "architectures", "torch_dtype", "n_embd", "n_layer", "n_head", "n_positions",
    "new_decoder_architecture", "multi_query", "num_kv_heads", "d_model", "d_ff",
    "num_layers", "num_heads", "is_encoder_decoder", "partial_rotary_factor",
]  # fmt: skip
MODEL_TYPES = ["llama", "gpt2", "t5", "mixtral", "qwen2", "gemma2", "falcon", "mllama",
               "deepseek_v3", "qwen2_5_vl", "llava", "nope", ""]  # fmt: skip
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 5000),
    st.sampled_from([2**31, 2**62, 2**64, 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from([*MODEL_TYPES, "true", "no", "bnb", "gelu", "silu", "\x1b[2J"]),
)
json_values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from([*FIELDS, "quant_method", "bits"]), inner, max_size=3),
    ),
    max_leaves=8,
)
configs = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
COMMANDS = [
    ["estimate"],
    ["estimate", "--method", "qlora", "--gpu", "rtx4090", "--check"],
    ["serve"],
    ["compare-methods"],
    ["explain"],
]


@FEW
@given(changes=configs, base=st.booleans(), command=st.sampled_from(COMMANDS))
def test_any_config_json_keeps_the_contract(changes, base, command):
    """A tiny llama's config with up to six fields set to anything, or those fields alone."""
    config = {**TINY, **changes} if base else changes
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config, allow_nan=True))
        argv = [command[0], folder, *command[1:]]
        assert not (problem := broken(argv)), f"{problem}\n    config: {config!r:.600}"


# -- safetensors headers and index -----------------------------------------------------

DTYPES = ["BF16", "F32", "I8", "U8", "F8_E4M3", "bf16", "X", ""]
tensors = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(DTYPES), json_values),
        "shape": st.one_of(
            st.lists(st.integers(0, 4096), max_size=3),
            st.lists(st.sampled_from([-1, 2**40, 2**64, 10**30]), min_size=1, max_size=3),
            json_values,
        ),
        "data_offsets": st.one_of(st.just([0, 8]), json_values),
    }
)
NAMES = ["model.embed_tokens.weight", "lm_head.weight", "model.layers.0.q_proj.qweight",
         "model.layers.0.mlp.weight.absmax", "__metadata__", ""]  # fmt: skip
headers = st.dictionaries(st.sampled_from(NAMES), st.one_of(tensors, json_values), max_size=4)


def _safetensors(header: object, declared: int | None) -> bytes:
    text = json.dumps(header, allow_nan=True).encode()
    length = len(text) if declared is None else declared
    return struct.pack("<Q", length) + text + b"\0" * 8


@FEW
@given(
    header=headers,
    declared=st.one_of(st.none(), st.sampled_from([0, 3, 2**63, 2**64 - 1])),
    index=st.one_of(
        st.none(),
        st.fixed_dictionaries(
            {
                "metadata": st.one_of(json_values, st.just({"total_size": 10**30})),
                "weight_map": st.one_of(
                    json_values,
                    st.dictionaries(
                        st.sampled_from(NAMES),
                        st.one_of(
                            st.sampled_from(["model.safetensors", "../x.safetensors", "missing"]),
                            json_values,
                        ),
                        max_size=3,
                    ),
                ),
            }
        ),
        json_values,
    ),
)
def test_any_safetensors_header_and_index_keep_the_contract(header, declared, index):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "config.json").write_text(json.dumps(TINY))
        (root / "model.safetensors").write_bytes(_safetensors(header, declared))
        if index is not None:
            text = json.dumps(index, allow_nan=True)
            (root / "model.safetensors.index.json").write_text(text)
        # the table shows the checkpoint's notes; explain reads the same headers
        for argv in (["estimate", folder], ["estimate", folder, "--format", "json"]):
            problem = broken(argv)
            assert not problem, f"{problem}\n    header: {header!r:.400}\n    index: {index!r:.400}"


# -- Hugging Face cache folders ---------------------------------------------------------

ref_bytes = st.one_of(
    st.sampled_from([b"abc", b"abc\n", b"", b"\xff\xfe", b"../../etc", b"a" * 5000]),
    st.binary(max_size=12),
)


@FEW
@given(
    ref=st.one_of(st.none(), ref_bytes),
    snapshot=st.sampled_from(["abc", "def", None]),
    config=st.one_of(st.just(TINY), configs, st.none()),
)
@example(ref=b"abc", snapshot="abc", config=TINY)  # the readable entry: estimated
def test_any_hub_cache_folder_keeps_the_contract(ref, snapshot, config):
    """An offline cache entry of acme/tiny: refs/main with any bytes (or none), a
    snapshot named or not by it, with any config.json (or none)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    with tempfile.TemporaryDirectory() as folder:
        entry = Path(folder) / "models--acme--tiny"
        (entry / "refs").mkdir(parents=True)
        if ref is not None:
            (entry / "refs" / "main").write_bytes(ref)
        if snapshot is not None:
            (entry / "snapshots" / snapshot).mkdir(parents=True)
            if config is not None:
                text = json.dumps(config, allow_nan=True)
                (entry / "snapshots" / snapshot / "config.json").write_text(text)
        sources._hub_lookup.cache_clear()
        argv = ["estimate", "acme/tiny", "--format", "json"]
        try:  # huggingface_hub reads its cache folder from its constants (at import)
            with mock.patch.multiple(constants, HF_HUB_CACHE=folder, HF_HUB_OFFLINE=True):
                problem, code, _ = judged(argv, {"HF_HUB_CACHE": folder})
        finally:
            sources._hub_lookup.cache_clear()
        # the entry's folder given as a path: its snapshot found the same way
        folder_problem = broken(["estimate", str(entry), "--format", "json"])
    assert not problem, f"{problem}\n    ref: {ref!r:.100} config: {config!r:.300}"
    assert not folder_problem, f"{folder_problem}\n    ref: {ref!r:.100} config: {config!r:.300}"
    if ref == b"abc" and snapshot == "abc" and config == TINY:
        assert code == 0, "a readable cache entry was not estimated"
