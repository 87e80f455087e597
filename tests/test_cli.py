"""The CLI: exit codes, stdout carries data, stderr carries one-sentence errors."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ftmem.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "120", "NO_COLOR": "1"})


def test_estimate_table_shows_components_and_verdict():
    res = run("estimate", "llama2-13b", "--method", "qlora", "--gpu", "rtx4090")
    assert res.exit_code == 0, res.output
    for word in (
        "Weights",
        "Gradients",
        "Optimizer states",
        "Activations",
        "Temporaries",
        "Peak reserved",
        "CUDA context",
        "Device total",
        "GiB",
        "FITS on NVIDIA GeForce RTX 4090",
    ):
        assert word in res.stdout


def test_json_contract():
    res = run(
        "estimate", "llama2-13b", "--method", "full", "--gpu", "a100-80gb", "--format", "json"
    )
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["model"]["name"] == "Llama-2-13B"
    assert data["model"]["n_params"] == 13_015_864_320
    assert data["model"]["n_trainable_params"] == 13_015_864_320
    for key in (
        "weights_bytes",
        "gradients_bytes",
        "optimizer_states_bytes",
        "activations_bytes",
        "temporaries_bytes",
        "peak_allocated_bytes",
        "overhead_bytes",
        "total_bytes",
    ):
        assert isinstance(data["memory"][key], int)
    mem = data["memory"]
    assert mem["total_bytes"] == mem["peak_allocated_bytes"] + mem["overhead_bytes"]
    assert mem["peak_phase"] in ("forward", "backward", "optimizer")
    assert data["gpu"]["memory_bytes"] == 85_100_068_864
    assert data["fits"] is False
    assert data["headroom_bytes"] == 85_100_068_864 - mem["total_bytes"]
    assert data["run"]["method"] == "full" and data["run"]["precision"] == "bf16"
    assert isinstance(data["notes"], list)


def test_check_exit_codes():
    assert run("estimate", "gpt2", "--gpu", "t4", "--check").exit_code == 0
    assert run("estimate", "llama2-70b", "--gpu", "t4", "--check").exit_code == 1
    # without --check a run that does not fit still exits 0
    assert run("estimate", "llama2-70b", "--gpu", "t4").exit_code == 0


def test_gpu_memory_instead_of_preset():
    res = run("estimate", "gpt2", "--gpu-memory", "24GiB", "--format", "json")
    assert json.loads(res.stdout)["gpu"]["memory_bytes"] == 24 * 2**30


def test_config_json_source(tmp_path):
    cfg = {
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "intermediate_size": 11008,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    res = run(
        "estimate",
        str(tmp_path / "config.json"),
        "--method",
        "lora",
        "--lora-r",
        "16",
        "--batch-size",
        "4",
        "--seq-len",
        "4096",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["model"]["n_params"] == 6_738_415_616
    # LoRA r=16 on q and v of 32 layers: 16·(4096+4096)·2·32
    assert data["model"]["n_trainable_params"] == 16 * 8192 * 2 * 32
    assert run("estimate", str(tmp_path), "--format", "json").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["estimate", "llama2-13"], "Did you mean llama2-13b"),
        (["estimate", "nosuchmodel"], "Unknown model 'nosuchmodel'"),
        (["estimate", "gpt2", "--gpu", "rtx9090"], "Unknown gpu 'rtx9090'"),
        (["estimate", "gpt2", "--batch-size", "-1"], "--batch-size"),
        (["estimate", "gpt2", "--seq-len", "0"], "--seq-len"),
        (["estimate", "gpt2", "--method", "full", "--lora-r", "8"], "--lora-r only applies"),
        (["estimate", "gpt2", "--method", "banana"], "--method"),
        (["estimate", "gpt2", "--gpu-memory", "24g"], "Unknown size unit"),
        (["estimate", "gpt2", "--gpu", "t4", "--gpu-memory", "24GiB"], "not both"),
        (["estimate", "gpt2", "--seq-len", "4096"], "learned positions"),
        (["estimate", "gpt2", "--batch-size", "10000000"], "tokens per step"),
        (
            ["estimate", "llama2-7b", "--method", "lora", "--lora-targets", "qq"],
            "matches no linear",
        ),
        (["estimate", "llama2-7b", "--method", "freeze", "--trainable-layers", "99"], "exceeds"),
        (["estimate", "gpt2", "--units", "gb"], "--units"),
    ],
)
def test_bad_input_is_one_sentence_on_stderr_exit_2(args, message):
    res = run(*args)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_malformed_config_json(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    res = run("estimate", str(bad))
    assert res.exit_code == 2 and "not valid JSON" in res.stderr
    bad.write_text(json.dumps({"model_type": "mamba"}))
    res = run("estimate", str(bad))
    assert res.exit_code == 2 and "does not model yet" in res.stderr
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    res = run("estimate", str(bad))
    assert res.exit_code == 2 and "lacks" in res.stderr


def test_models_and_gpus_listings():
    res = run("models")
    assert res.exit_code == 0 and "llama2-13b" in res.stdout and "13,015,864,320" in res.stdout
    res = run("gpus")
    assert res.exit_code == 0 and "a100-80gb" in res.stdout


def test_estimate_path_does_not_import_torch():
    code = (
        "import sys, ftmem, ftmem.cli, ftmem.present.estimate; ftmem.estimate('llama2-7b'); "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_measure_side_by_side_json(tmp_path):
    pytest.importorskip("torch")
    cfg = {
        "model_type": "llama",
        "vocab_size": 128,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 96,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    res = run(
        "measure",
        str(tmp_path),
        "--method",
        "lora",
        "--lora-r",
        "4",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--format",
        "json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    measured = data["measured"]
    for key in ("weights", "gradients", "optimizer_states"):
        assert measured[f"{key}_bytes"] == data["memory"][f"{key}_bytes"]
    # r·(in + out) for q (64→64) and v (64→32), 2 layers, fp32 adapters + 2 AdamW states
    assert measured["gradients_bytes"] == 4 * 2 * 4 * ((64 + 64) + (64 + 32))
    assert measured["peak_phase"] in ("forward", "backward", "optimizer")


def test_measure_bad_device():
    res = run("measure", "gpt2", "--device", "tpu")
    assert res.exit_code == 2 and "--device" in res.stderr and res.stdout == ""


def test_zero3_70b_prints_per_gpu_with_sharded_and_replicated_parts():
    """The issue's example: per-GPU memory, sharded and whole parts, host RAM, verdict."""
    res = run(
        "estimate", "llama2-70b", "--method", "full", "--gpus", "8", "--strategy", "zero3",
        "--gpu", "a100-80gb", "--offload-optimizer", "cpu", "--host-memory", "2TiB",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    for text in (
        "zero3 (dp 8) · per GPU",
        "Weights sharded (this GPU's shard)",
        "Weights whole on every GPU",
        "Gathered weights and buckets",
        "Host RAM per node",
        "FITS on NVIDIA A100 80GB (per GPU)",
        "Host RAM fits",
    ):
        assert text in res.output, text


def test_parallel_json_has_the_parallel_block():
    res = run("estimate", "llama3-8b", "--gpus", "4", "--pp", "2", "--strategy", "zero1",
              "--grad-accum", "4", "--format", "json")  # fmt: skip
    data = json.loads(res.output)
    p = data["parallel"]
    assert (p["pipeline_parallel"], p["data_parallel"], p["world_size"]) == (2, 2, 4)
    assert len(p["stage_peak_bytes"]) == 2
    assert data["memory"]["peak_allocated_bytes"] == max(p["stage_peak_bytes"])


def test_emit_to_file_prints_the_table_too(tmp_path):
    out = tmp_path / "ds.json"
    res = run("estimate", "llama3-8b", "--gpus", "8", "--strategy", "zero2",
              "--emit", "deepspeed", "--emit-to", str(out))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Across GPUs" in res.output
    assert json.loads(out.read_text())["zero_optimization"]["stage"] == 2


def test_emit_alone_prints_only_the_config():
    res = run("estimate", "llama3-8b", "--gpus", "8", "--strategy", "fsdp", "--emit", "fsdp")
    assert res.exit_code == 0
    assert res.output.startswith("compute_environment: LOCAL_MACHINE")


def test_fewest_gpus_is_the_smallest_count_that_fits():
    """Verified by the estimator itself: the count found fits, the one before does not."""
    from ftmem import estimate

    res = run("estimate", "llama2-70b", "--strategy", "zero3", "--gpu", "a100-80gb",
              "--seq-len", "2048", "--grad-ckpt", "--fewest-gpus")  # fmt: skip
    assert res.exit_code == 0, res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("Fewest GPUs that fit: ")
    total = int(line.split(": ")[1].split()[0])
    kw = dict(strategy="zero3", gpu="a100-80gb", seq_len=2048, grad_ckpt=True)

    def on(n):
        return estimate("llama2-70b", gpus=min(n, 8), nodes=max(1, n // 8), **kw)

    assert on(total).fits
    previous = total - 1 if total <= 8 else total - 8
    assert not on(previous).fits


def test_fewest_gpus_says_when_nothing_fits():
    res = run("estimate", "llama2-70b", "--gpu", "rtx4090", "--fewest-gpus", "--check")
    assert res.exit_code == 1
    assert "Does not fit on up to 1,024 GPUs" in res.output
    assert "try --strategy zero3 or fsdp" in res.output


def test_terminal_bar_is_proportional_to_an_eighth_of_a_cell():
    from ftmem.present.estimate import bar

    assert bar(0.5) == "█████·····"
    assert bar(0.0) == "··········"
    assert bar(1.0) == "█" * 10
    assert bar(1 / 80) == "▏·········"  # one eighth of one cell of ten
    assert bar(2.0, 4) == "████"  # clipped
    assert all(len(bar(i / 97, 13)) == 13 for i in range(98))


def test_methods_lists_every_method_the_estimator_takes():
    from typing import get_args

    from ftmem.methods import METHOD_CATALOG
    from ftmem.run import Method

    assert set(METHOD_CATALOG) == set(get_args(Method))
    res = run("methods")
    assert res.exit_code == 0
    for name in METHOD_CATALOG:
        assert name in res.output
    assert "arXiv:2305.14314" in res.output
