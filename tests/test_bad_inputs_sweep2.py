"""A second adversarial sweep over every subcommand and input surface (issue 19).

Each case is an input a user (or a caller of ``main([...])``) can give, that once
crashed or was silently misread; each must now exit 2 with one ``Error:`` line and
nothing on stdout, or, where marked, be read exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ftmem.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def refused(capsys, *args: str) -> str:
    """The run exits 2, stdout empty, one ``Error:`` line; that line."""
    code, out, err = run(capsys, *args)
    assert code == 2, (args, out[:300], err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    return lines[0]


BUDGET = "runs:\n  - name: a\n    model: gpt2\n    gpu: rtx4090\n"
EMIT = ["estimate", "gpt2", "--gpus", "2", "--strategy", "zero2", "--emit", "deepspeed"]


# -- options crossed: FSDP offload ----------------------------------------------------------


@pytest.mark.parametrize("strategy", ["fsdp", "fsdp-hybrid", "fsdp-no-shard"])
def test_fsdp_params_on_cpu_optimizer_on_nvme_is_refused(capsys, strategy):
    # FSDP's CPUOffload has no NVMe tier; --offload-optimizer nvme was replaced by cpu
    # without a word (the slow option sweep's forbidden pair)
    line = refused(
        capsys, "estimate", "gpt2", "--gpus", "2", "--strategy", strategy,
        "--offload-params", "cpu", "--offload-optimizer", "nvme",
    )  # fmt: skip
    assert "NVMe" in line


def test_fsdp_params_on_cpu_still_takes_the_optimizer_along(capsys):
    code, out, _ = run(
        capsys, "estimate", "gpt2", "--gpus", "2", "--strategy", "fsdp",
        "--offload-params", "cpu", "--format", "json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out)["parallel"]["offload_optimizer"] == "cpu"


# -- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["estimate", "a\0b/config.json"],
        ["estimate", "gpt2", "--from", "a\0b.yaml"],
        ["check", "a\0b.yaml"],
        [*EMIT, "--emit-to", "a\0b.json"],
        ["plan", "gpt2", "--gpu", "rtx4090", "--plot", "a\0b.png"],
        ["max", "gpt2", "--gpu", "rtx4090", "--plot", "a\0b.svg"],
    ],
    ids=["model", "from", "budgets", "emit-to", "plan-plot", "max-plot"],
)
def test_a_nul_byte_in_a_path_is_one_sentence(capsys, args):
    # a shell cannot pass NUL, main([...]) can: ValueError: embedded null byte
    assert "NUL" in refused(capsys, *args)


@pytest.mark.parametrize("json_or_junit", ["--json", "--junit"])
def test_check_report_nul_path(capsys, tmp_path, json_or_junit):
    budgets = tmp_path / "b.yaml"
    budgets.write_text(BUDGET)
    assert "NUL" in refused(capsys, "check", str(budgets), json_or_junit, "r\0.json")


@pytest.mark.parametrize("name", ["", " ", "\t"])
def test_an_empty_model_name_is_not_the_current_folder(capsys, tmp_path, name, monkeypatch):
    # Path("") is ".": an empty name read ./config.json when there was one
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    monkeypatch.chdir(tmp_path)
    assert "empty" in refused(capsys, "estimate", name)
    assert "empty" in refused(capsys, "estimate", "gpt2", "--teacher", name)


def test_an_empty_output_file_name(capsys, tmp_path):
    budgets = tmp_path / "b.yaml"
    budgets.write_text(BUDGET)
    assert "empty" in refused(capsys, *EMIT, "--emit-to", "")
    assert "empty" in refused(capsys, "check", str(budgets), "--json", "")


def test_json_and_junit_into_one_file(capsys, tmp_path):
    # the JUnit report silently replaced the JSON one
    budgets, out = tmp_path / "b.yaml", tmp_path / "r.txt"
    budgets.write_text(BUDGET)
    line = refused(capsys, "check", str(budgets), "--json", str(out), "--junit", str(out))
    assert "--json and --junit" in line
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_model_path_to_a_fifo_or_broken_link_says_what_it_is(capsys, tmp_path):
    # was "Unknown model '/…/fifo'. Run `ftmem models`": the path exists, it is no file
    fifo, broken = tmp_path / "fifo", tmp_path / "broken"
    os.mkfifo(fifo)
    broken.symlink_to(tmp_path / "nothing")
    assert "not a regular file" in refused(capsys, "estimate", str(fifo))
    assert "broken link" in refused(capsys, "estimate", str(broken))
    assert "not a regular file" in refused(capsys, "estimate", "/dev/null")


def test_a_preset_name_is_still_a_preset(capsys, tmp_path, monkeypatch):
    # the FIFO rule above applies to paths with a folder only: a preset id stays a preset
    monkeypatch.chdir(tmp_path)
    Path("gpt2x").mkdir()
    code, _, _ = run(capsys, "estimate", "gpt2")
    assert code == 0


# -- config.json ------------------------------------------------------------------------------

TINY = {
    "model_type": "llama",
    "vocab_size": 320,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
}
# vocab × hidden twice (embedding and untied head) + 2 blocks of (4 h² attention +
# 3 h·ffn MLP + 2 h norms) + the final norm
TINY_PARAMS = 2 * 320 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


def n_params(capsys, path: Path) -> int:
    code, out, err = run(capsys, "estimate", str(path), "--format", "json")
    assert code == 0, err
    return json.loads(out)["model"]["n_params"]


def test_a_byte_order_mark_before_config_json_is_read(capsys, tmp_path):
    # Windows editors write one; json.loads refused it ("Unexpected UTF-8 BOM")
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(TINY, indent=2).encode())
    assert n_params(capsys, path) == TINY_PARAMS


def test_crlf_line_endings_are_read(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(json.dumps(TINY, indent=2).replace("\n", "\r\n").encode())
    assert n_params(capsys, path) == TINY_PARAMS


def test_a_duplicate_key_takes_its_last_value_as_transformers_does(capsys, tmp_path):
    # transformers reads config.json with json.loads: the last of two equal keys wins
    path = tmp_path / "config.json"
    text = json.dumps({**TINY, "hidden_size": 32})
    path.write_text(text[:-1] + ', "hidden_size": 64}')
    assert n_params(capsys, path) == TINY_PARAMS


def test_utf16_is_not_utf8(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(json.dumps(TINY).encode("utf-16"))
    assert "not UTF-8" in refused(capsys, "estimate", str(path))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # transformers splits "gated-" into "gated" and no activation; it was read as silu
        (
            {
                "model_type": "t5",
                "d_model": 64,
                "num_layers": 2,
                "num_heads": 4,
                "d_kv": 16,
                "d_ff": 128,
                "feed_forward_proj": "gated-",
            },
            "feed_forward_proj must be an activation",
        ),
        # gemma2 divides the logits by the cap: 0 gives NaN, a negative flips them
        ({"model_type": "gemma2", "final_logit_softcapping": 0}, "must be positive"),
        ({"model_type": "gemma2", "attn_logit_softcapping": -30.0}, "must be positive"),
        # model_type shown as JSON, not Python's repr ('None', "['llama']")
        ({"model_type": None}, "model_type null,"),
        ({"model_type": ["llama"]}, 'model_type ["llama"],'),
    ],
    ids=["t5-gated-nothing", "softcap-zero", "softcap-negative", "type-null", "type-list"],
)
def test_config_values_refused(capsys, tmp_path, changes, expected):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, **changes}))
    assert expected in refused(capsys, "estimate", str(path))


# an image-text config (Qwen2.5-VL, the Hub's flat layout) whose vision_config a case spoils
QWEN_VL = {
    "model_type": "qwen2_5_vl",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
    "vision_config": {"depth": 4, "hidden_size": 128, "num_heads": 4, "out_hidden_size": 256},
}
LLAMA_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
}


@pytest.mark.parametrize(
    ("vision", "expected"),
    [
        # a depth of 10^40 looped for ever before any bound was checked
        ({"depth": 10**40}, "over the layer bound"),
        ({"fullatt_block_indexes": [10**30]}, "full-attention layer index"),
        ({"num_heads": 7}, "whole number of its 7 heads"),
        # int() read 2.5 as 2 (a wrong token count)
        ({"spatial_merge_size": 2.5}, "spatial_merge_size must be an integer"),
        ({"patch_size": 0}, "patch_size must be positive"),
        ("abc", "vision_config must be an object"),
        # pixels, not tokens: a side is a length in pixels
        ({"patch_size": 10**9}, "patch_size is 1,000,000,000 pixels, over the pixel bound"),
    ],
    ids=[
        "depth-huge",
        "full-index",
        "heads",
        "merge-float",
        "patch-zero",
        "not-object",
        "patch-huge",
    ],
)
def test_vision_config_values_refused(capsys, tmp_path, vision, expected):
    given = QWEN_VL["vision_config"]
    spoiled = {**given, **vision} if isinstance(vision, dict) else vision
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**QWEN_VL, "vision_config": spoiled}))
    assert expected in refused(capsys, "estimate", str(path))


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        # was "model_type mllama, which ftmem does not model yet"
        ({"model_type": "mllama"}, "no text_config object"),
        ({"model_type": "mllama", "text_config": "x"}, "no text_config object"),
        # a text_config without model_type is MllamaTextConfig (was "model_type null")
        (
            {
                "model_type": "mllama",
                "text_config": {**LLAMA_TEXT, "cross_attention_layers": [99]},
                "vision_config": {},
            },
            "cross_attention_layers must index",
        ),
    ],
    ids=["no-text", "text-string", "cross-layer-out"],
)
def test_image_text_configs_refused(capsys, tmp_path, cfg, expected):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert expected in refused(capsys, "estimate", str(path))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # each count in its own unit: an image side was once "100,000,000,000 tokens"
        (
            ["--image-size", "100000000000", "--images", "1"],
            "100,000,000,000 pixels, over the pixel bound",
        ),
        (["--images", "100000000000"], "100,000,000,000 images, over the image bound"),
    ],
    ids=["image-side", "images"],
)
def test_image_counts_are_bounded_in_their_own_units(capsys, args, expected):
    assert expected in refused(capsys, "estimate", "qwen2.5-vl-7b", *args)


def test_a_text_config_without_model_type_is_its_outer_class_default(capsys, tmp_path):
    # LlavaConfig builds a LlamaConfig for a text_config that names no model_type
    # (transformers 5.24 configuration_llava.py SubConfigSpec(AutoConfig, "llama"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llava", "text_config": LLAMA_TEXT}))
    code, out, err = run(capsys, "estimate", str(path), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["model"]["family"] == "llama"


# -- measure ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_measure_keeps_stderr_clean(tmp_path):
    # transformers logged "`loss_type=None` was set in the config but it is
    # unrecognized" on stderr under a successful run (exit 0)
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import subprocess
    import sys

    gpt2 = {"model_type": "gpt2", "vocab_size": 320, "n_embd": 64, "n_layer": 2, "n_head": 4}
    (tmp_path / "config.json").write_text(json.dumps({**gpt2, "n_positions": 128}))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-m", "ftmem.cli", "measure", str(tmp_path), "--fake"],
        capture_output=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    assert b"peak allocated" in res.stdout


# -- budgets files (ftmem check) --------------------------------------------------------------


def budgets(tmp_path: Path, text: str) -> str:
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    return str(path)


RUN_A = "  - name: a\n    model: gpt2\n    gpu: rtx4090\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a default gpu was passed to the estimate twice: TypeError, multiple values for 'gpu'
        ("defaults:\n  gpu: 5\nruns:\n  - name: a\n    model: gpt2\n", "gpu: Input should be"),
        ("defaults:\n  name: x\nruns:\n" + RUN_A, "defaults cannot give a name"),
        # strategy: [] reached `in FSDP`: TypeError, unhashable type: 'list'
        ("runs:\n" + RUN_A + "    gpus: 2\n    strategy: []\n", "strategy"),
        ("runs:\n" + RUN_A + "    gpus: 2\n    strategy: {a: 1}\n", "strategy"),
        # teacher: true reached the distillation: AttributeError, no attribute 'vocab_size'
        ("runs:\n" + RUN_A + "    teacher: true\n", "--teacher must be a model name"),
        ("runs:\n" + RUN_A + "    teacher: [gpt2]\n", "--teacher must be a model name"),
        # gpus: true, nodes: yes, tp: on were read as 1
        ("runs:\n" + RUN_A + "    gpus: true\n", "--gpus must be a number, not true"),
        ("runs:\n" + RUN_A + "    nodes: yes\n", "--nodes must be a number, not true"),
        ("runs:\n" + RUN_A + "    tp: on\n", "--tp must be a number, not true"),
        # overhead: false was read as an overhead of 0 (False == 0)
        ("runs:\n" + RUN_A + "    overhead: false\n", "--overhead: Cannot read False"),
        # a size without a unit: max_total 24 was a 24-byte budget
        ("runs:\n" + RUN_A + "    max_total: 24\n", "has no unit"),
        # "a" and "a " were two runs that read the same everywhere
        ("runs:\n" + RUN_A + "  - name: 'a '\n    model: gpt2\n    gpu: rtx4090\n", "used twice"),
        ("runs:\n  - name: '  '\n    model: gpt2\n    gpu: rtx4090\n", "name"),
        # the safe loader's refusals, one line each
        ("runs: !!python/object/apply:os.system ['true']\n", "python/object/apply"),
        ("runs:\n  - <<: 5\n    name: a\n", "merge"),
    ],
    ids=[
        "default-gpu",
        "default-name",
        "strategy-list",
        "strategy-map",
        "teacher-bool",
        "teacher-list",
        "gpus-bool",
        "nodes-bool",
        "tp-bool",
        "overhead-false",
        "max-total-bare",
        "names-by-whitespace",
        "blank-name",
        "python-tag",
        "merge-scalar",
    ],
)
def test_budgets_refused(capsys, tmp_path, text, expected):
    line = refused(capsys, "check", budgets(tmp_path, text))
    assert expected in line


def test_a_default_gpu_and_budget_apply_to_each_run(capsys, tmp_path):
    text = "defaults:\n  gpu: rtx4090\n  max_total: 1MiB\nruns:\n  - name: a\n    model: gpt2\n"
    code, out, err = run(capsys, "check", budgets(tmp_path, text), "--json", "-")
    assert code == 1, err  # gpt2 full finetuning needs GiBs, over the default 1 MiB
    (only,) = json.loads(out)["runs"]
    assert only["gpu"]["name"] == "NVIDIA GeForce RTX 4090" and only["max_total"] == "1MiB"


def test_a_run_keeps_its_own_gpu_over_the_default(capsys, tmp_path):
    text = "defaults:\n  gpu: rtx4090\nruns:\n  - name: a\n    model: gpt2\n    gpu: h100-80gb\n"
    code, out, err = run(capsys, "check", budgets(tmp_path, text), "--json", "-")
    assert code == 0, err
    assert "H100" in json.loads(out)["runs"][0]["gpu"]["name"]


def test_budgets_runs_are_bounded(capsys, tmp_path):
    # 20,000 runs fit in the 1 MiB a budgets file may be: about a minute of estimates
    from ftmem.budget import MAX_RUNS

    rows = "".join(f"  - {{name: r{i}, model: gpt2, gpu: rtx4090}}\n" for i in range(MAX_RUNS + 1))
    line = refused(capsys, "check", budgets(tmp_path, "runs:\n" + rows))
    assert f"at most {MAX_RUNS}" in line


# -- sizes without a unit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["estimate", "gpt2", "--gpu-memory", "24"],  # was a 24-byte GPU: DOES NOT FIT, exit 0
        ["estimate", "gpt2", "--gpu-memory", "79.5"],
        ["serve", "gpt2", "--gpu-memory", "80"],
        ["estimate", "gpt2", "--overhead", "1"],
        [
            "estimate",
            "gpt2",
            "--gpus",
            "2",
            "--strategy",
            "zero3",
            "--offload-params",
            "cpu",
            "--host-memory",
            "512",
        ],
        ["merge", "gpt2", "--shard-size", "5"],
    ],
    ids=["gpu-memory", "gpu-memory-fraction", "serve", "overhead", "host-memory", "shard-size"],
)
def test_a_small_size_without_a_unit_is_a_forgotten_unit(capsys, args):
    assert "has no unit" in refused(capsys, *args)


def test_a_byte_count_without_a_unit_is_still_bytes(capsys):
    from ftmem.units import parse_size

    assert parse_size("1048576") == 2**20  # 1 MiB written out: no unit needed
    assert parse_size(24) == 24  # the API's integers are byte counts
    code, out, _ = run(
        capsys, "estimate", "gpt2", "--gpu-memory", str(80 * 2**30), "--format", "json"
    )
    assert code == 0 and json.loads(out)["gpu"]["memory_bytes"] == 80 * 2**30
    assert "must be positive" in refused(capsys, "estimate", "gpt2", "--gpu-memory", "0")


# -- --from training configs -------------------------------------------------------------------

AXOLOTL = "base_model: gpt2\nadapter: lora\nsequence_len: 128\n"
TRL = "model_name_or_path: gpt2\nper_device_train_batch_size: 1\n"


def from_config(tmp_path: Path, text: str, name: str = "train.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def estimated(capsys, *args: str) -> dict:
    code, out, err = run(capsys, "estimate", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # a 5,000-character deepspeed: reached is_file: OSError ENAMETOOLONG, a traceback
        ("deepspeed: " + "x" * 5000 + "\n", "File name too long"),
        # axolotl's schema takes true, false, offload or offload_disk: any word was "on"
        ("gradient_checkpointing: 'false'\n", "gradient_checkpointing must be true, false or"),
        ("gradient_checkpointing: zero2\n", "gradient_checkpointing must be true, false or"),
        ("activation_offloading: 'no'\n", "activation_offloading must be true, false or"),
        # transformers refuses an unknown FSDPOption; "ful_shard" was FSDP full sharding
        ("fsdp: ful_shard auto_wrap\n", "fsdp must be true or options among"),
        ("fsdp: [full_shard, xyz]\n", "fsdp must be true or options among"),
        # the safe loader's refusals, one line
        ("x: !!python/object/apply:os.system ['true']\n", "python/object/apply"),
        ("x: *nope\n", "undefined alias"),
        ("? [a, b]\n: 1\n", "unhashable"),
    ],
    ids=[
        "deepspeed-long",
        "ckpt-false-string",
        "ckpt-word",
        "offload-no-string",
        "fsdp-typo",
        "fsdp-list-typo",
        "python-tag",
        "undefined-alias",
        "list-key",
    ],
)
def test_from_refused(capsys, tmp_path, extra, expected):
    line = refused(capsys, "estimate", "--from", from_config(tmp_path, AXOLOTL + extra))
    assert expected in line


@pytest.mark.parametrize("mode", ["offload", "offload_disk", "unsloth"])
def test_axolotl_checkpointing_modes_still_read(capsys, tmp_path, mode):
    cfg = from_config(tmp_path, AXOLOTL + f"gradient_checkpointing: {mode}\n")
    assert estimated(capsys, "--from", cfg)["run"]["grad_ckpt"] is True


def test_fsdp_hybrid_shard_zero2_is_hybrid(capsys, tmp_path):
    # the legacy option word was not in the name table: read as full_shard
    cfg = from_config(tmp_path, TRL + "fsdp: hybrid_shard_zero2 auto_wrap\n")
    got = estimated(capsys, "--from", cfg, "--gpus", "8", "--nodes", "2")
    assert got["parallel"]["strategy"] == "fsdp-hybrid"
    assert any("HYBRID_SHARD_ZERO2" in n for n in got["notes"])


def test_yaml_merge_keys_alias_and_bom_crlf_read_as_yaml_says(capsys, tmp_path):
    # a merge (<<:) brings its mapping's keys; a BOM and CRLF endings change nothing
    text = "base: &b\n  micro_batch_size: 4\n<<: *b\n" + AXOLOTL
    plain = estimated(capsys, "--from", from_config(tmp_path, text))
    assert plain["run"]["batch_size"] == 4
    windows = "\ufeff" + text.replace("\n", "\r\n")
    path = tmp_path / "win.yaml"
    path.write_bytes(windows.encode())
    assert estimated(capsys, "--from", str(path))["run"] == plain["run"]


# -- an output over the run's own input --------------------------------------------------------


@pytest.mark.parametrize("flag", ["--json", "--junit"])
def test_a_report_does_not_replace_the_budgets_file(capsys, tmp_path, flag):
    # `check budgets.yaml --json budgets.yaml` replaced the budgets with the report
    path = budgets(tmp_path, "runs:\n" + RUN_A)
    assert "the file the run was read from" in refused(capsys, "check", path, flag, path)
    assert Path(path).read_text() == "runs:\n" + RUN_A


def test_emit_to_does_not_replace_the_training_config(capsys, tmp_path):
    text = TRL + "deepspeed: {zero_optimization: {stage: 2}}\n"
    cfg = from_config(tmp_path, text)
    args = ["estimate", "--from", cfg, "--gpus", "2", "--emit", "deepspeed", "--emit-to", cfg]
    assert "the file the run was read from" in refused(capsys, *args)
    assert Path(cfg).read_text() == text


def test_emit_to_does_not_replace_config_json(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    args = ["estimate", str(path), "--gpus", "2", "--strategy", "zero2", "--emit", "deepspeed"]
    assert "the file the run was read from" in refused(capsys, *args, "--emit-to", str(path))
    assert json.loads(path.read_text()) == TINY


# -- digits that are not ASCII -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["COLUMNS", "LINES"])
@pytest.mark.parametrize("value", ["\u00b2", "9" * 5000, "abc"])
def test_terminal_sizes_that_int_cannot_read(name, value):
    # COLUMNS=² (or LINES=², which rich's Console reads the same way) passed isdigit()
    # and failed int(): a ValueError traceback before any output
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, name: value}
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-m", "ftmem.cli", "gpus"],
        capture_output=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    assert b"rtx4090" in res.stdout


def test_merge_layers_with_a_superscript_digit(capsys):
    assert "not a range" in refused(capsys, "merge", "gpt2", "--layers", "\u00b2-5")


def test_merge_layers_stacked_past_the_layer_bound(capsys):
    # 400 slices of GPT-2's 12 blocks: a 4,800-block model was estimated
    line = refused(capsys, "merge", "gpt2", "--layers", ",".join(["0-12"] * 400))
    assert "the layer bound" in line and "4,800" in line
