"""Numbers at the edges and types in files: every number that reaches the arithmetic is
checked against a named physical bound (ftmem.limits), and config.json values are read
with the types transformers gives them.

Each bad input exits 2 with nothing on stdout and one line on stderr that names the bound
(or the field and the type it must have); each good one is read exactly, which the
parameter counts below check against a hand derivation and transformers itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftmem import limits
from ftmem.arch import count_params
from ftmem.cli import main
from ftmem.errors import FtmemError
from ftmem.sources import architecture_from_config, load_config_json
from ftmem.units import parse_size
from tests.conftest import write_files

# A small llama with grouped-query attention: head_dim 16, 2 KV heads.
V, H, LAYERS, HEADS, KV, FFN = 320, 64, 2, 4, 2, 128
TINY = {
    "model_type": "llama",
    "vocab_size": V,
    "hidden_size": H,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV,
    "intermediate_size": FFN,
}
HUGE = "1" + "0" * 300  # a 301-digit number


def cfg(**changes: object) -> str:
    return json.dumps({**TINY, **changes})


def st_header(shape: object, data_bytes: int = 8, dtype: object = "BF16") -> bytes:
    """A safetensors file: one tensor of ``shape`` and ``data_bytes`` bytes of data."""
    header = json.dumps(
        {"model.embed_tokens.weight": {"dtype": dtype, "shape": shape, "data_offsets": [0, 8]}}
    ).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * data_bytes


GPU_MEM = limits.GPU_MEMORY.name
HOST_MEM = limits.HOST_MEMORY.name
WIDTH = limits.WIDTH.name
LAYER = limits.LAYERS.name
TOKEN = limits.TOKENS.name

# (id, arguments, files to write in the test's folder, text the error must hold)
CASES: list[tuple[str, list[str], dict[str, str | bytes], str]] = [
    # measurement and plan sizes: a run that would never end, or output without end
    ("measure-steps-huge", ["measure", "gpt2", "--steps", HUGE], {}, "measured-step bound"),
    ("measure-steps-101", ["measure", "gpt2", "--steps", "101"], {}, "measured-step bound"),
    ("measure-fsdp-65", ["measure", "gpt2", "--fsdp", "65"], {}, "measured-rank bound"),
    ("plan-rows-huge", ["plan", "gpt2", "--rows", HUGE], {}, "row bound"),
    ("plan-rows-zero", ["plan", "gpt2", "--rows", "0"], {}, "--rows must be at least 1"),
    # sizes with hundreds of digits, and sizes beyond any machine
    ("gpu-memory-300-digits", ["estimate", "gpt2", "--gpu-memory", HUGE + "GiB"], {}, GPU_MEM),
    ("gpu-memory-bare-digits", ["estimate", "gpt2", "--gpu-memory", HUGE], {}, GPU_MEM),
    (
        "gpu-memory-1e30-gib",
        ["estimate", "gpt2", "--gpu-memory", "1" + "0" * 30 + "GiB"],
        {},
        GPU_MEM,
    ),
    ("gpu-memory-2tib", ["estimate", "gpt2", "--gpu-memory", "2TiB"], {}, GPU_MEM),
    ("overhead-300-digits", ["estimate", "gpt2", "--overhead", HUGE + "MiB"], {}, GPU_MEM),
    (
        "host-memory-300-digits",
        ["estimate", "llama2-7b", "--gpus", "2", "--strategy", "zero3", "--host-memory", HUGE],
        {},
        HOST_MEM,
    ),
    ("shard-size-300-digits", ["merge", "gpt2", "--shard-size", HUGE + "TB"], {}, HOST_MEM),
    ("size-5000-digits", ["estimate", "gpt2", "--gpu-memory", "9" * 5000], {}, GPU_MEM),
    (
        "size-5000-fraction-digits",
        ["estimate", "gpt2", "--gpu-memory", "0." + "0" * 5000 + "1GiB"],
        {},
        "must be positive",
    ),
    (
        "serve-gpu-memory",
        ["serve", "gpt2", "--context", "64", "--gpu-memory", HUGE + "GB"],
        {},
        GPU_MEM,
    ),
    (
        "budget-max-total",
        ["check", "{tmp}/b.yaml"],
        {"b.yaml": f"runs:\n  - name: a\n    model: gpt2\n    max_total: {HUGE}GiB\n"},
        GPU_MEM,
    ),
    (
        "budget-max-total-int",
        ["check", "{tmp}/b.yaml"],
        {"b.yaml": f"runs:\n  - name: a\n    model: gpt2\n    max_total: {HUGE}\n"},
        GPU_MEM,
    ),
    (
        "budget-gpu-memory",
        ["check", "{tmp}/b.yaml"],
        {"b.yaml": f"runs:\n  - name: a\n    model: gpt2\n    gpu_memory: {HUGE}GiB\n"},
        GPU_MEM,
    ),
    # counts of the run
    ("batch-300-digits", ["estimate", "gpt2", "--batch-size", HUGE], {}, limits.SEQUENCES.name),
    ("seq-len-300-digits", ["estimate", "gpt2", "--seq-len", HUGE], {}, TOKEN),
    ("target-len-300-digits", ["estimate", "flan-t5-small", "--target-len", HUGE], {}, TOKEN),
    (
        "grad-accum-300-digits",
        ["estimate", "gpt2", "--grad-accum", HUGE],
        {},
        limits.MICRO_BATCHES.name,
    ),
    ("lora-r-300-digits", ["estimate", "gpt2", "--method", "lora", "--lora-r", HUGE], {}, WIDTH),
    (
        "galore-rank-300-digits",
        ["estimate", "gpt2", "--method", "galore", "--galore-rank", HUGE],
        {},
        WIDTH,
    ),
    (
        "adapter-size-300-digits",
        ["estimate", "gpt2", "--method", "adapter", "--adapter-size", HUGE],
        {},
        WIDTH,
    ),
    (
        "encoder-hidden-300-digits",
        ["estimate", "gpt2", "--method", "p-tuning", "--encoder-hidden", HUGE],
        {},
        WIDTH,
    ),
    (
        "trainable-layers-300-digits",
        ["estimate", "gpt2", "--method", "freeze", "--trainable-layers", HUGE],
        {},
        LAYER,
    ),
    ("gpus-300-digits", ["estimate", "gpt2", "--gpus", HUGE], {}, limits.GPUS.name),
    ("tp-300-digits", ["estimate", "gpt2", "--tp", HUGE], {}, limits.GPUS.name),
    ("nodes-300-digits", ["estimate", "gpt2", "--nodes", HUGE], {}, limits.GPUS.name),
    # floats: nan and infinities mean nothing
    (
        "lora-alpha-nan",
        ["estimate", "gpt2", "--method", "lora", "--lora-alpha", "nan"],
        {},
        "finite",
    ),
    (
        "lora-alpha-inf",
        ["estimate", "gpt2", "--method", "lora", "--lora-alpha", "inf"],
        {},
        "finite",
    ),
    (
        "lora-alpha-overflow",
        ["estimate", "gpt2", "--method", "lora", "--lora-alpha", "1e400"],
        {},
        "finite",
    ),
    (
        "lora-dropout-nan",
        ["estimate", "gpt2", "--method", "lora", "--lora-dropout", "nan"],
        {},
        "finite",
    ),
    # merging
    ("merge-models-1025", ["merge", "gpt2", "--models", "1025"], {}, limits.MERGED_MODELS.name),
    ("merge-models-300-digits", ["merge", "gpt2", "--models", HUGE], {}, limits.MERGED_MODELS.name),
    # serving
    ("serve-lora-adapters", ["serve", "gpt2", "--lora-adapters", HUGE], {}, limits.ADAPTERS.name),
    (
        "serve-lora-adapters-million",
        ["serve", "gpt2", "--context", "64", "--lora-adapters", "1000000"],
        {},
        limits.ADAPTERS.name,
    ),
    ("serve-context", ["serve", "gpt2", "--context", HUGE], {}, TOKEN),
    ("serve-sequences", ["serve", "gpt2", "--sequences", HUGE], {}, limits.SEQUENCES.name),
    ("serve-lora-r", ["serve", "gpt2", "--lora-adapters", "1", "--lora-r", HUGE], {}, WIDTH),
    # huge integers in config.json
    (
        "config-hidden-1e200",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(hidden_size=10**200, num_attention_heads=1)},
        WIDTH,
    ),
    (
        "config-layers-1e40",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_hidden_layers=10**40)},
        LAYER,
    ),
    (
        "config-layers-2-62",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_hidden_layers=2**62)},
        LAYER,
    ),
    (
        "config-layers-million",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_hidden_layers=10**6)},
        LAYER,
    ),
    (
        "config-vocab-trillion",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(vocab_size=10**12)},
        WIDTH,
    ),
    (
        "config-positions-1e30",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(max_position_embeddings=10**30)},
        TOKEN,
    ),
    (
        "config-head-dim-huge",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(head_dim=2**40)},
        WIDTH,
    ),
    (
        "config-experts-huge",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(model_type="mixtral", num_local_experts=2**20, num_experts_per_tok=2)},
        limits.EXPERTS.name,
    ),
    (
        "config-heads-times-head-dim",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_attention_heads=4096, num_key_value_heads=1, head_dim=4096)},
        WIDTH,
    ),
    (
        "config-parameters",  # every dimension within its bound, the product not
        ["estimate", "{tmp}/config.json"],
        {
            "config.json": cfg(
                hidden_size=2**17,
                intermediate_size=2**20,
                num_hidden_layers=4096,
                num_attention_heads=1024,
                num_key_value_heads=1024,
            )
        },
        limits.PARAMETERS.name,
    ),
    (
        "config-float-layers-1e40",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_hidden_layers=1e40)},
        "num_hidden_layers must be an integer",
    ),
    (
        "config-t5-dropout-nan",
        ["estimate", "{tmp}/config.json"],
        {
            "config.json": '{"model_type": "t5", "vocab_size": 32, "d_model": 8, "num_layers": 1, '
            '"num_heads": 2, "d_kv": 4, "d_ff": 16, "dropout_rate": NaN}'
        },
        "dropout_rate must be a finite number",
    ),
    (
        "config-softcap-inf",
        ["estimate", "{tmp}/config.json"],
        {
            "config.json": cfg(model_type="gemma2").replace(
                "}", ', "final_logit_softcapping": Infinity}'
            )
        },
        "final_logit_softcapping must be a finite number",
    ),
    # types in config.json: as transformers 5 reads them (strict dataclasses)
    (
        "tie-string-false",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(tie_word_embeddings="false")},
        "tie_word_embeddings must be true or false",
    ),
    (
        "tie-zero",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(tie_word_embeddings=0)},
        "tie_word_embeddings must be true or false",
    ),
    (
        "attention-bias-no",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(attention_bias="no")},
        "attention_bias must be true or false",
    ),
    (
        "mlp-bias-null",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(mlp_bias=None)},
        "mlp_bias must be true or false",
    ),
    (
        "layers-true",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_hidden_layers=True)},
        "num_hidden_layers must be an integer, not true",
    ),
    (
        "layers-float",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_hidden_layers=2.0)},
        "num_hidden_layers must be an integer",
    ),
    (
        "layers-string",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_hidden_layers="2")},
        "num_hidden_layers must be an integer",
    ),
    (
        "heads-empty-list",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_attention_heads=[])},
        "num_attention_heads must be an integer",
    ),
    (
        "kv-heads-empty-list",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_key_value_heads=[])},
        "num_key_value_heads must be an integer",
    ),
    (
        "kv-heads-zero",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_key_value_heads=0)},
        "num_key_value_heads must be positive",
    ),
    (
        "sliding-window-true",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(sliding_window=True)},
        "sliding_window must be an integer",
    ),
    (
        "use-sliding-window-string",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(use_sliding_window="false")},
        "use_sliding_window must be true or false",
    ),
    (
        "hidden-act-number",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(hidden_act=5)},
        "hidden_act must be a non-empty string",
    ),
    (
        "hidden-act-empty",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(hidden_act="")},
        "hidden_act must be a non-empty string",
    ),
    (
        "gpt2-n-inner-string",
        ["estimate", "{tmp}/config.json"],
        {
            "config.json": json.dumps(
                {
                    "model_type": "gpt2",
                    "vocab_size": 64,
                    "n_embd": 8,
                    "n_layer": 1,
                    "n_head": 2,
                    "n_positions": 32,
                    "n_inner": "32",
                }
            )
        },
        "n_inner must be an integer",
    ),
    (
        "falcon-alibi-string",
        ["estimate", "{tmp}/config.json"],
        {
            "config.json": json.dumps(
                {
                    "model_type": "falcon",
                    "vocab_size": 64,
                    "hidden_size": 8,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "alibi": "yes",
                }
            )
        },
        "alibi must be true or false",
    ),
    (
        "quantization-config-string",
        ["estimate", "{tmp}"],
        {"config.json": cfg(quantization_config="bnb")},
        "quantization_config must be an object",
    ),
    (
        "quant-method-number",
        ["estimate", "{tmp}"],
        {"config.json": cfg(quantization_config={"quant_method": 4})},
        "quant_method must be a string",
    ),
    # presets: the same types and bounds
    (
        "preset-layers-true",
        ["estimate", "acme"],
        {
            "models/acme.yaml": "id: acme\nname: Acme\nfamily: llama\nvocab_size: 320\n"
            "hidden_size: 64\nnum_layers: true\nnum_heads: 4\nintermediate_size: 128\n"
        },
        "num_layers: Input should be a valid integer",
    ),
    (
        "preset-tie-string",
        ["estimate", "acme"],
        {
            "models/acme.yaml": "id: acme\nname: Acme\nfamily: llama\nvocab_size: 320\n"
            "hidden_size: 64\nnum_layers: 2\nnum_heads: 4\nintermediate_size: 128\n"
            "tie_embeddings: 'no'\n"
        },
        "tie_embeddings: Input should be a valid boolean",
    ),
    (
        "preset-million-layers",
        ["estimate", "acme"],
        {
            "models/acme.yaml": "id: acme\nname: Acme\nfamily: llama\nvocab_size: 320\n"
            "hidden_size: 64\nnum_layers: 1000000\nnum_heads: 4\nintermediate_size: 128\n"
        },
        LAYER,
    ),
    (
        "gpu-preset-huge",
        ["estimate", "gpt2", "--gpu", "big"],
        {"gpus/big.yaml": f"id: big\nname: Big\nmemory_bytes: {HUGE}\nsource: x\n"},
        GPU_MEM,
    ),
    (
        "gpu-preset-true",
        ["estimate", "gpt2", "--gpu", "big"],
        {"gpus/big.yaml": "id: big\nname: Big\nmemory_bytes: true\nsource: x\n"},
        "memory_bytes must be a number of bytes",
    ),
    # safetensors headers: shapes bounded by the file that holds their data
    (
        "shape-huge-dim",
        ["estimate", "{tmp}"],
        {"config.json": cfg(), "model.safetensors": st_header([10**40, 2])},
        "file size bound",
    ),
    (
        "shape-product-huge",
        ["estimate", "{tmp}"],
        {"config.json": cfg(), "model.safetensors": st_header([64] * 40)},
        "file size bound",
    ),
    (
        "shape-bool-dim",
        ["estimate", "{tmp}"],
        {"config.json": cfg(), "model.safetensors": st_header([True, 4])},
        "malformed shape",
    ),
    (
        "dtype-not-string",
        ["estimate", "{tmp}"],
        {"config.json": cfg(), "model.safetensors": st_header([2, 2], dtype=["BF16"])},
        "malformed dtype",
    ),
    (
        "weight-map-number",
        ["estimate", "{tmp}"],
        {"config.json": cfg(), "model.safetensors.index.json": '{"weight_map": {"a": 5}}'},
        "weight_map",
    ),
    (
        "weight-map-nul",
        ["estimate", "{tmp}"],
        {"config.json": cfg(), "model.safetensors.index.json": '{"weight_map": {"a": "x\\u0000"}}'},
        "weight_map",
    ),
    (
        "weight-map-name-too-long",
        ["estimate", "{tmp}"],
        {
            "config.json": cfg(),
            "model.safetensors.index.json": json.dumps({"weight_map": {"a": "a" * 5000}}),
        },
        "weight_map",
    ),
    # Hugging Face cache entries: refs/main read as huggingface_hub reads it
    (
        "hf-ref-not-utf8",
        ["estimate", "{tmp}/models--acme--m"],
        {
            "models--acme--m/snapshots/abc/config.json": cfg(),
            "models--acme--m/refs/main": b"\xff\xfe",
        },
        "not UTF-8",
    ),
    (
        "hf-ref-nowhere",
        ["estimate", "{tmp}/models--acme--m"],
        {"models--acme--m/snapshots/abc/config.json": cfg(), "models--acme--m/refs/main": "def"},
        "names snapshot",
    ),
    (
        "hf-ref-path",
        ["estimate", "{tmp}/models--acme--m"],
        {"models--acme--m/snapshots/abc/config.json": cfg(), "models--acme--m/refs/main": "../.."},
        "does not hold a snapshot's name",
    ),
]


def _run(argv: list[str]) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of the CLI (captured here: hypothesis runs many
    inputs in one test, which pytest's capsys would mix)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(("case_id", "args", "files", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_number_or_type(case_id, args, files, expected, tmp_path, monkeypatch):
    write_files(tmp_path, files)
    monkeypatch.setenv("FTMEM_PRESETS", str(tmp_path))
    for kind in ("models", "gpus"):
        (tmp_path / kind).mkdir(exist_ok=True)
    code, out, err = _run([a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2, (case_id, err)
    assert out == ""
    assert err.startswith("Error: ")
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err, err
    assert len(err) < 600, err  # a 5,000-digit input is not echoed back


def test_hf_ref_fifo_is_refused_not_waited_on(tmp_path):
    entry = tmp_path / "models--acme--m"
    write_files(tmp_path, {"models--acme--m/snapshots/abc/config.json": cfg()})
    (entry / "refs").mkdir()
    os.mkfifo(entry / "refs" / "main")
    code, out, err = _run(["estimate", str(entry)])
    assert (code, out) == (2, "")
    assert "not a regular file" in err


# -- the bounds hold real things: the largest of each kind passes ---------------------------


def test_sizes_at_the_bound_pass_and_one_byte_more_does_not():
    assert parse_size("1TiB", limits.GPU_MEMORY) == 2**40
    assert parse_size(str(2**40), limits.GPU_MEMORY) == 2**40
    with pytest.raises(FtmemError, match=GPU_MEM):
        parse_size(str(2**40 + 1), limits.GPU_MEMORY)
    # the largest shipped accelerators (288 GB: AMD MI355X, NVIDIA B300) are within it
    assert parse_size("288GB", limits.GPU_MEMORY) == 288 * 10**9
    # 4 PiB = 2^52 bytes: the 52-bit physical address space
    assert parse_size("4096TiB", limits.HOST_MEMORY) == 2**52
    with pytest.raises(FtmemError, match=HOST_MEM):
        parse_size("4097TiB", limits.HOST_MEMORY)


def test_sizes_are_parsed_exactly():
    # a float would round 0.1 GiB to 107374182.4 and 1/3 of 3 GiB off by a byte
    assert parse_size("0.1GiB") == round(2**30 / 10)
    assert parse_size("1.000000000000000000001TB") == 10**12
    assert parse_size("16777217") == 16_777_217  # 2^24 + 1: not a float32-exact number


def test_the_largest_real_models_are_within_the_bounds(tmp_path):
    """Llama 3.1 405B (126 layers, hidden 16,384, 128 heads, 8 KV heads, MLP 53,248,
    vocabulary 128,256; its published config.json) loads and counts 405.85 B parameters
    (Meta's model card: 405B)."""
    llama405 = {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 16384,
        "num_hidden_layers": 126,
        "num_attention_heads": 128,
        "num_key_value_heads": 8,
        "intermediate_size": 53248,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(llama405))
    n = count_params(load_config_json(tmp_path))
    h, kv, f, V, L = 16384, 8 * 128, 53248, 128256, 126
    assert n == 2 * V * h + h + L * (2 * h * h + 2 * h * kv + 3 * h * f + 2 * h)
    assert 405e9 < n < 406e9


# -- types read right: parameter counts derived by hand ---------------------------------------


def _count_by_hand(*, tied: bool, attention_bias: bool, mlp_bias: bool) -> int:
    """transformers' LlamaForCausalLM: q and o are H×H, k and v H×(KV·head_dim); with
    attention_bias each of the four has a bias (o_proj too), with mlp_bias each of gate,
    up, down; two RMS norms per block, one final; the head unless tied."""
    head_dim = H // HEADS
    kv = KV * head_dim
    attn = 2 * H * H + 2 * H * kv + (2 * H + 2 * kv if attention_bias else 0)
    mlp = 3 * H * FFN + (2 * FFN + H if mlp_bias else 0)
    block = attn + mlp + 2 * H
    return V * H + LAYERS * block + H + (0 if tied else V * H)


FLAG_CASES = [
    {"tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False},
    {"tie_word_embeddings": False, "attention_bias": True, "mlp_bias": False},
    {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True},
    {"tie_word_embeddings": False, "attention_bias": False, "mlp_bias": True},
]


@pytest.mark.parametrize(
    "flags", FLAG_CASES, ids=lambda f: "-".join(str(int(v)) for v in f.values())
)
def test_flags_in_config_json_are_read_as_written(flags, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**TINY, **flags}))
    expected = _count_by_hand(
        tied=flags["tie_word_embeddings"],
        attention_bias=flags["attention_bias"],
        mlp_bias=flags["mlp_bias"],
    )
    assert count_params(load_config_json(tmp_path)) == expected


@pytest.mark.parametrize(
    "flags", FLAG_CASES, ids=lambda f: "-".join(str(int(v)) for v in f.values())
)
def test_flags_count_as_transformers_builds_them(flags):
    """The same configs through transformers' own LlamaConfig and model (meta device)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        **{k: v for k, v in TINY.items() if k != "model_type"}, **flags
    )
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    real = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    assert count_params(architecture_from_config({**TINY, **flags}, "x", "x")) == real


def test_null_optional_counts_take_their_defaults():
    """transformers' configs write null for an unset head_dim, sliding_window, n_inner."""
    base = architecture_from_config(TINY, "x", "x")
    nulls = architecture_from_config(
        {**TINY, "head_dim": None, "sliding_window": None, "num_key_value_heads": None},
        "x",
        "x",
    )
    assert nulls.head_size == H // HEADS == base.head_size
    assert nulls.kv_heads == HEADS  # null KV heads: as many as heads (multi-head attention)
    assert nulls.sliding_window is None


# -- hypothesis: any number anywhere gives an answer or one sentence ------------------------

COUNT_KEYS = [
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "max_position_embeddings",
    "sliding_window",
]
ANY_NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(0, 8), max_size=2),
)


# the CLI takes ~50 ms a run: fewer examples, and no per-example deadline
FAST = settings(max_examples=150, deadline=None)
CLI = settings(max_examples=40, deadline=None)


@FAST
@given(key=st.sampled_from(COUNT_KEYS), value=ANY_NUMBER)
def test_any_number_in_config_json_is_read_or_refused(key, value):
    try:
        arch = architecture_from_config({**TINY, key: value}, "x", "x")
    except FtmemError as exc:
        assert len(str(exc)) < 600 and "\n" not in str(exc)
        return
    # what was accepted is an integer within its bound, read as written
    assert type(value) is int or value is None
    assert 0 < arch.num_layers <= limits.LAYERS.limit
    assert count_params(arch) <= limits.PARAMETERS.limit


SIZE_TEXT = st.from_regex(r"\A[0-9]{0,400}(\.[0-9]{0,400})?\s?(B|KiB|MiB|GiB|TiB|KB|GB|TB)?\Z")


@FAST
@given(text=SIZE_TEXT, bound=st.sampled_from([limits.GPU_MEMORY, limits.HOST_MEMORY]))
def test_any_size_is_exact_or_refused(text, bound):
    try:
        value = parse_size(text, bound, "--x")
    except FtmemError as exc:
        assert len(str(exc)) < 600
        return
    assert 0 < value <= bound.limit


INT_OPTIONS = [
    ("estimate", "--batch-size", []),
    ("estimate", "--seq-len", []),
    ("estimate", "--grad-accum", []),
    ("estimate", "--lora-r", ["--method", "lora"]),
    ("estimate", "--encoder-hidden", ["--method", "p-tuning"]),
    ("estimate", "--adapter-size", ["--method", "adapter"]),
    ("estimate", "--gpus", []),
    ("serve", "--context", []),
    ("serve", "--lora-adapters", ["--context", "64"]),
]


@CLI
@given(
    option=st.sampled_from(INT_OPTIONS),
    value=st.one_of(
        st.integers(-5, 2**40),
        st.integers(10**200, 10**300),
        st.sampled_from([2**31, 2**31 + 1, 2**62, 2**64]),
    ),
)
def test_any_integer_option_answers_or_refuses_in_one_line(option, value):
    command, flag, extra = option
    code, out, err = _run([command, "gpt2", *extra, flag, str(value)])
    if code == 2:
        assert out == "" and len(err.strip().splitlines()) == 1 and len(err) < 600, err
    else:
        assert code in (0, 1) and out, err


@CLI
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_any_lora_alpha_is_finite_or_refused(value):
    code, out, err = _run(
        ["estimate", "gpt2", "--method", "lora", "--lora-alpha", repr(value), "--format", "json"],
    )
    if not math.isfinite(value):
        assert (code, out) == (2, "") and "finite" in err
    else:
        assert code == 0 and json.loads(out)["run"]["lora_alpha"] == value
