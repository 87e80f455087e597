"""Training-framework configs (--from): each sample maps to the settings written here by
hand from the framework's documented keys (and the code path it runs: TRL's and
TrainingArguments' are HF Trainer's), and gives the same estimate as those flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app, main
from ftmem.errors import ConfigError
from ftmem.frameworks import read_framework_config

SAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "frameworks"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
runner = CliRunner()

EXPECTED = {
    "axolotl-qlora-llama3-8b.yml": (
        "axolotl",
        "meta-llama/Meta-Llama-3-8B",
        dict(framework="axolotl", method="qlora", lora_r=32, lora_alpha=16, lora_dropout=0.05, lora_targets="all-linear",
             seq_len=4096, batch_size=2, grad_accum=4, grad_ckpt=True, optimizer="paged-adamw-8bit",
             precision="bf16", autocast=True, attn="flash", eval_batch_size=2),
    ),
    "torchtune-lora-llama3.1-8b.yaml": (
        "torchtune",
        "llama3.1-8b",
        dict(framework="torchtune", method="lora", lora_r=8, lora_alpha=16, lora_targets="q,v,o,gate,up,down",
             precision="bf16", adapter_dtype="bf16", seq_len=2048, batch_size=2, grad_accum=8,
             grad_ckpt=True, optimizer="adamw", optimizer_impl="fused", loss="chunked",
             lengths="padded"),  # packed: False: padded_collate_sft pads to the longest
    ),
    "trl-sft-mistral-7b.json": (
        "trl",
        "mistralai/Mistral-7B-v0.1",
        dict(framework="hf", method="lora", lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_targets="all-linear",
             seq_len=2048, batch_size=4, grad_accum=4, grad_ckpt=True, optimizer="adamw",
             optimizer_impl="fused", precision="bf16", autocast=True, attn="sdpa", loss="logprob-tiles",
             padding="packed"),  # packing: true (bfd): padding-free, one flattened row
    ),
    "hf-seq2seq-flan-t5-xl.json": (
        "trl",
        "google/flan-t5-xl",
        dict(framework="hf", seq_len=256, target_len=256, batch_size=8, grad_accum=2, optimizer="adafactor",
             precision="bf16", autocast=True),
    ),
    "litgpt-lora-llama2-7b.yaml": (
        "litgpt",
        "meta-llama/Llama-2-7b-hf",
        dict(framework="litgpt", method="lora", lora_r=8, lora_alpha=16, lora_dropout=0.05, lora_targets="q,v",
             precision="bf16", adapter_dtype="bf16", seq_len=512, batch_size=2, grad_accum=4),
    ),
    "llama-factory-qlora-qwen2.5-7b.yaml": (
        "llama-factory",
        "Qwen/Qwen2.5-7B-Instruct",
        dict(framework="llama-factory", method="qlora", lora_r=16, lora_alpha=32, lora_targets="all-linear", seq_len=2048,
             batch_size=2, grad_accum=8, grad_ckpt=True, precision="bf16", autocast=True,
             attn="sdpa"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_maps_to_the_expected_settings(name):
    framework, model, settings = EXPECTED[name]
    cfg = read_framework_config(str(SAMPLES / name))
    assert cfg.framework == framework
    assert cfg.model == model
    assert cfg.settings == settings


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_from_gives_the_same_estimate_as_the_flags(name):
    _, model, settings = EXPECTED[name]
    res = runner.invoke(app, ["estimate", "--from", str(SAMPLES / name), "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    direct = estimate(model, **settings)  # the settings name the code path (framework)
    assert data["memory"] == direct.model_dump(mode="json")["memory"]
    assert any(note.startswith("Read from the") for note in data["notes"])


def test_flags_override_the_file():
    path = str(SAMPLES / "axolotl-qlora-llama3-8b.yml")
    res = runner.invoke(app, ["estimate", "--from", path, "--seq-len", "1024", "--format", "json"])
    run = json.loads(res.output)["run"]
    assert run["seq_len"] == 1024  # the flag
    assert run["lora_r"] == 32  # the file
    res = runner.invoke(app, ["estimate", "llama3-8b", "--from", path, "--format", "json"])
    assert json.loads(res.output)["model"]["name"] == "Llama-3-8B"


def test_ignored_keys_are_listed_not_dropped(tmp_path):
    path = tmp_path / "axo.yml"
    path.write_text((SAMPLES / "axolotl-qlora-llama3-8b.yml").read_text() + "some_new_key: 1\n")
    cfg = read_framework_config(str(path))
    assert "learning_rate" in cfg.ignored and "some_new_key" in cfg.ignored
    note = next(n for n in cfg.notes if n.startswith("axolotl keys ignored"))
    assert "no effect on memory: " in note and "learning_rate" in note
    assert "not read by ftmem: " in note and "some_new_key" in note


def test_json_carries_what_the_config_gave(tmp_path):
    """--format json's `config` block (issue 18: "`--format json` carries that list"):
    the file's settings, the keys ignored split as the note splits them, the settings a
    flag replaced; absent without --from. What the file says: lora_r 32, sequence_len
    4096; learning_rate has no effect on memory; some_new_key is unknown."""
    path = tmp_path / "axo.yml"
    path.write_text((SAMPLES / "axolotl-qlora-llama3-8b.yml").read_text() + "some_new_key: 1\n")
    res = runner.invoke(
        app, ["estimate", "--from", str(path), "--seq-len", "1024", "--format", "json"]
    )
    out = json.loads(res.output)
    read = out["config"]
    assert (read["framework"], read["path"]) == ("axolotl", str(path))
    assert read["settings"]["lora_r"] == 32 and read["settings"]["seq_len"] == 4096
    assert out["run"]["seq_len"] == 1024 and read["replaced_by_flags"] == ["seq_len"]
    assert "learning_rate" in read["ignored_no_effect"]
    assert read["ignored_not_read"] == ["some_new_key"]
    # the torchtune GRPO recipe's GPU count is the header's launcher line: an assumption
    grpo = FIXTURES / "frameworks" / "torchtune" / "dev_3B_full_grpo.yaml"
    res = runner.invoke(app, ["estimate", "--from", str(grpo), "--format", "json"])
    assumed = json.loads(res.output)["config"]["assumed"]
    assert len(assumed) == 1 and assumed[0].startswith("gpus 4 (")
    res = runner.invoke(app, ["estimate", "llama3-8b", "--format", "json"])
    assert "config" not in json.loads(res.output)


@pytest.mark.parametrize(
    ("builder", "model"),
    [
        ("qwen2_5.lora_qwen2_5_7b_instruct", "qwen2.5-7b"),
        ("qwen2_5.qwen2_5_0_5b_base", "qwen2.5-0.5b"),
        ("qwen3.lora_qwen3_8b_base", "qwen3-8b"),
        ("qwen3.qwen3_8b_instruct", "qwen3-8b"),
        ("llama3_1.qlora_llama3_1_8b", "llama3.1-8b"),
        ("phi3.lora_phi3_mini", "phi3-mini"),
    ],
)
def test_torchtune_builders_name_presets(tmp_path, builder, model):
    """torchtune's model builders (torchtune/models/*/_model_builders.py) name a size and,
    for Qwen, base or instruct weights of the same shapes: each reads as the preset."""
    from ftmem.presets import get_model

    (tmp_path / "tt.yaml").write_text(f"model:\n  _component_: torchtune.models.{builder}\n")
    cfg = read_framework_config(str(tmp_path / "tt.yaml"))
    assert cfg.model == model
    get_model(model)  # a shipped preset


def test_framework_memory_features_map_to_settings(tmp_path):
    """Each framework's own memory features become ftmem settings, not notes."""
    (tmp_path / "tt.yaml").write_text(
        "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n"
        "loss:\n  _component_: torchtune.modules.loss.CEWithChunkedOutputLoss\n"
        "enable_activation_offloading: True\noptimizer_in_bwd: True\n"
    )
    tt = read_framework_config(str(tmp_path / "tt.yaml")).settings
    assert (tt["loss"], tt["activation_offload"], tt["optimizer_in_backward"]) == (
        "chunked",
        True,
        True,
    )
    (tmp_path / "axo.yml").write_text(
        "base_model: meta-llama/Llama-2-7b-hf\nadapter: lora\npeft_use_rslora: true\n"
        "liger_fused_linear_cross_entropy: true\nactivation_offloading: true\n"
    )
    axo = read_framework_config(str(tmp_path / "axo.yml")).settings
    assert (axo["method"], axo["loss"], axo["activation_offload"]) == ("rslora", "fused", True)
    (tmp_path / "relora.yml").write_text(
        "base_model: meta-llama/Llama-2-7b-hf\nadapter: lora\nrelora_steps: 150\n"
    )
    assert read_framework_config(str(tmp_path / "relora.yml")).settings["method"] == "relora"
    (tmp_path / "trl.json").write_text(json.dumps({
        "model_name_or_path": "meta-llama/Llama-2-7b-hf", "use_liger_kernel": True,
        "optim": "galore_adamw_8bit_layerwise", "optim_args": "rank=64, update_proj_gap=100",
        "optim_target_modules": ["attn", "mlp"],
    }))  # fmt: skip
    trl = read_framework_config(str(tmp_path / "trl.json")).settings
    assert trl["method"] == "galore" and trl["optimizer"] == "adamw-8bit"
    assert (trl["galore_rank"], trl["galore_targets"]) == (64, "all-linear")
    assert trl["optimizer_in_backward"] is True and trl["loss"] == "fused"
    (tmp_path / "lf.yaml").write_text(
        "model_name_or_path: meta-llama/Llama-2-7b-hf\nfinetuning_type: full\n"
        "use_galore: true\ngalore_rank: 32\ngalore_target: all\nenable_liger_kernel: true\n"
    )
    lf = read_framework_config(str(tmp_path / "lf.yaml")).settings
    assert (lf["method"], lf["galore_rank"], lf["loss"]) == ("galore", 32, "fused")
    # and every one of them estimates
    for settings in (axo, trl, lf):
        estimate("llama2-7b", **{k: v for k, v in settings.items() if k != "model"})


def test_deepspeed_config_next_to_the_training_config(tmp_path):
    (tmp_path / "zero3.json").write_text(
        json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}})
    )
    (tmp_path / "axo.yml").write_text(
        "base_model: meta-llama/Llama-2-7b-hf\nmicro_batch_size: 1\ndeepspeed: zero3.json\n"
    )
    cfg = read_framework_config(str(tmp_path / "axo.yml"))
    assert cfg.settings["strategy"] == "zero3"
    assert cfg.settings["offload_optimizer"] == "cpu"
    res = runner.invoke(app, ["estimate", "--from", str(tmp_path / "axo.yml"), "--gpus", "8",
                              "--format", "json"])  # fmt: skip
    assert json.loads(res.output)["parallel"]["strategy"] == "zero3"


def test_fsdp_from_training_arguments(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({
        "model_name_or_path": "meta-llama/Meta-Llama-3-8B", "per_device_train_batch_size": 1,
        "fsdp": "full_shard auto_wrap offload", "bf16": True,
    }))  # fmt: skip
    cfg = read_framework_config(str(path))
    assert cfg.settings["strategy"] == "fsdp"
    assert cfg.settings["offload_params"] == cfg.settings["offload_optimizer"] == "cpu"


def test_llama_factory_checkpoints_by_default_and_freeze(tmp_path):
    path = tmp_path / "lf.yaml"
    path.write_text(
        "model_name_or_path: meta-llama/Llama-2-7b-hf\nfinetuning_type: freeze\n"
        "freeze_trainable_layers: 4\n"
    )
    cfg = read_framework_config(str(path))
    assert cfg.settings["method"] == "freeze" and cfg.settings["trainable_layers"] == 4
    assert cfg.settings["grad_ckpt"] is True


BAD = [
    ("x.yaml", "- a\n- b\n", "expected a mapping"),
    ("x.yaml", "base_model: [\n", "line"),
    ("x.json", "{not json", "not valid JSON"),
    ("x.yaml", "learning_rate: 0.1\n", "cannot tell which framework"),
    ("x.yaml", "micro_batch_size: 2\nbase_model:\n", "names no base model"),
    ("x.yaml", "base_model: nosuch/model-7b\n", "Unknown model"),
    (
        "x.yaml",
        "base_model: meta-llama/Llama-2-7b-hf\nmicro_batch_size: -2\n",
        "micro_batch_size must be at least 1",
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD)
def test_bad_framework_configs(tmp_path, capsys, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "--from", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert expected in err and err.count("\n") == 1


def test_missing_config_file():
    with pytest.raises(ConfigError, match="no such file"):
        read_framework_config("/no/such/axolotl.yml")


def test_model_or_config_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate"])
    assert exit_info.value.code == 2
    assert "give a model" in capsys.readouterr().err


def test_plan_and_max_read_the_config_too():
    path = str(SAMPLES / "axolotl-qlora-llama3-8b.yml")
    _, model, settings = EXPECTED["axolotl-qlora-llama3-8b.yml"]
    res = runner.invoke(app, ["max", "--from", path, "--gpu", "rtx4090", "--for", "seq-len",
                              "--format", "json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    n = json.loads(res.output)["largest"]
    assert estimate(model, gpu="rtx4090", **{**settings, "seq_len": n}).fits
    assert not estimate(model, gpu="rtx4090", **{**settings, "seq_len": n + 1}).fits
    res = runner.invoke(app, ["plan", "--from", path, "--gpu", "rtx4090", "--format", "json"])
    assert res.exit_code == 0, res.output
    baseline = json.loads(res.output)["baseline"]
    assert (
        baseline["memory"]
        == estimate(model, gpu="rtx4090", **settings).model_dump(mode="json")["memory"]
    )


def test_axolotl_modules_to_save(tmp_path):
    path = tmp_path / "axo.yml"
    path.write_text(
        "base_model: meta-llama/Llama-2-7b-hf\nadapter: lora\n"
        "lora_modules_to_save: [embed_tokens, lm_head]\n"
    )
    cfg = read_framework_config(str(path))
    assert cfg.settings["lora_modules_to_save"] == "embed,head"
    est = estimate(cfg.model, **cfg.settings)
    # the two trainable copies: 2 × 32000 × 4096 parameters on top of LoRA's
    plain = estimate(
        cfg.model, **{k: v for k, v in cfg.settings.items() if k != "lora_modules_to_save"}
    )
    assert est.model.n_trainable_params - plain.model.n_trainable_params == 2 * 32000 * 4096
