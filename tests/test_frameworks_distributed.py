"""Launcher configs (Accelerate's, DeepSpeed JSONs) as the parallel part of an estimate,
DeepSpeed files found where the frameworks open them, and axolotl's FSDP2 block.

Each fixture's settings are written here by hand from the file: Accelerate's
``num_processes`` counts the processes of all machines (LLaMA-Factory's comment: "the
number of GPUs in all nodes"), so GPUs per node = num_processes / num_machines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftmem.cli import app
from ftmem.errors import ConfigError
from ftmem.filekeys import Keys
from ftmem.frameworks import read_framework_config, read_launcher_config, with_launcher
from ftmem.frameworks.distributed import (
    ACCELERATE_KEYS,
    ACCELERATE_NO_EFFECT,
    DEEPSPEED_KEYS,
    DEEPSPEED_NO_EFFECT,
    LAUNCHER_NOTE,
    distributed_settings,
)
from ftmem.frameworks.shared import FrameworkConfig, read_mapping

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "frameworks" / "accelerate"
TRL_FIXTURES = ROOT / "tests" / "fixtures" / "frameworks" / "trl"
PAGE = ROOT / "docs" / "frameworks" / "trl.md"
runner = CliRunner()

BF16 = dict(precision="bf16", autocast=True)  # mixed_precision: bf16
EXPECTED = {
    # DEEPSPEED, zero_stage 2, offload none, 8 processes on 1 machine; the DeepSpeed config
    # Accelerate builds has no reduce_bucket_size (accelerate 1.16 DeepSpeedPlugin
    # __post_init__), so DeepSpeed's default bucket, 5e8 elements, is allocated
    "trl_deepspeed_zero2.yaml": dict(gpus=8, nodes=1, strategy="zero2",
                                     bucket_elements=500_000_000, **BF16),
    "trl_deepspeed_zero3.yaml": dict(gpus=8, nodes=1, strategy="zero3", **BF16),
    # FSDP, fsdp_version 2, reshard_after_forward true, no offload, no checkpointing
    "trl_fsdp2.yaml": dict(gpus=8, nodes=1, strategy="fsdp", fsdp_version=2, **BF16),
    # FSDP2 with fsdp_activation_checkpointing, parallelism_config_cp_size 2, 2 processes
    "trl_context_parallel_2gpu.yaml": dict(gpus=2, nodes=1, strategy="fsdp", grad_ckpt=True,
                                           cp=2, fsdp_version=2, **BF16),
    # FSDP1 FULL_SHARD, fsdp_offload_params true (FSDP's CPUOffload moves the parameters,
    # their gradients and so the optimizer step to the CPU), 2 processes; no fsdp_version:
    # accelerate launch's --fsdp_version default "1"
    "llama_factory_fsdp_config_offload.yaml": dict(gpus=2, nodes=1, strategy="fsdp",
                                                   offload_params="cpu",
                                                   offload_optimizer="cpu", fsdp_version=1,
                                                   **BF16),
    # num_machines 2, num_processes 16 (all nodes): 8 per node
    "llama_factory_fsdp_config_multiple_nodes.yaml": dict(gpus=8, nodes=2, strategy="fsdp",
                                                          fsdp_version=1, **BF16),
    # a DeepSpeed JSON: stage 3, offload_optimizer and offload_param on the CPU; no GPU count
    "llama_factory_ds_z3_offload_config.json": dict(strategy="zero3", offload_optimizer="cpu",
                                                    offload_params="cpu"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_fixture_maps_to_parallel_settings(name):
    cfg = read_launcher_config(str(FIXTURES / name))
    assert cfg.settings == EXPECTED[name]
    assert cfg.framework == ("deepspeed" if name.endswith(".json") else "accelerate")
    # the GPU count is the launcher's: a note asks for it only where the file has none
    assert (LAUNCHER_NOTE in cfg.notes) == name.endswith(".json")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_fixture_keys_are_read_or_known(name):
    data = read_mapping(FIXTURES / name)
    json_file = name.endswith(".json")
    known = DEEPSPEED_KEYS | DEEPSPEED_NO_EFFECT if json_file else ACCELERATE_KEYS
    quiet = set() if json_file else ACCELERATE_NO_EFFECT
    assert set(data) <= known | quiet


def test_sequence_parallel_is_noted(tmp_path):
    # TRL's examples/accelerate_configs/alst_ulysses_4gpu.yaml: ZeRO-3, sp_size 2
    path = tmp_path / "alst.yaml"
    path.write_text(
        "distributed_type: DEEPSPEED\nnum_processes: 4\ndeepspeed_config:\n  zero_stage: 3\n"
        "parallelism_config:\n  parallelism_config_sp_size: 2\n"
        "  parallelism_config_dp_shard_size: 2\n"
    )
    cfg = read_launcher_config(str(path))
    assert (cfg.settings["strategy"], cfg.settings["gpus"]) == ("zero3", 4)
    assert "cp" not in cfg.settings
    assert any(n.startswith("parallelism_config_sp_size 2") for n in cfg.notes)


@pytest.mark.parametrize("name", ["trl_fsdp2.yaml", "llama_factory_ds_z3_offload_config.json"])
def test_launcher_given_to_from_says_to_use_launcher(name):
    with pytest.raises(ConfigError, match="give it as --launcher"):
        read_framework_config(str(FIXTURES / name))


def test_processes_must_fill_the_machines(tmp_path):
    path = tmp_path / "acc.yaml"
    path.write_text("distributed_type: MULTI_GPU\nnum_processes: 6\nnum_machines: 4\n")
    with pytest.raises(ConfigError, match=r"num_processes \(6\) counts the GPUs of all"):
        read_launcher_config(str(path))


def test_training_config_wins_over_the_launcher(tmp_path):
    # TRL file: bf16 (TRL's default) and its own zero2; the launcher: zero3 on 8 GPUs
    (tmp_path / "z2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    train = tmp_path / "sft.yaml"
    train.write_text(f"model_name_or_path: gpt2\ndeepspeed: {tmp_path / 'z2.json'}\n")
    got = with_launcher(
        read_framework_config(str(train)),
        read_launcher_config(str(FIXTURES / "trl_deepspeed_zero3.yaml")),
    )
    assert (got.settings["strategy"], got.settings["gpus"]) == ("zero2", 8)
    assert got.settings["precision"] == "bf16-mixed" and "autocast" not in got.settings
    assert any(n.startswith("strategy:") and "zero3" in n for n in got.notes)
    assert LAUNCHER_NOTE not in got.notes


def test_launcher_precision_replaces_training_arguments_defaults(tmp_path):
    # plain TrainingArguments, float32 weights, neither bf16 nor fp16: the launcher's
    # mixed_precision bf16 turns autocast on over the fp32 weights
    train = tmp_path / "args.json"
    train.write_text(json.dumps({"model_name_or_path": "gpt2", "torch_dtype": "float32"}))
    got = with_launcher(
        read_framework_config(str(train)),
        read_launcher_config(str(FIXTURES / "trl_fsdp2.yaml")),
    )
    assert got.settings["precision"] == "bf16-mixed" and "autocast" not in got.settings


def test_fsdp_activation_checkpointing_holds_over_the_file(tmp_path):
    train = tmp_path / "args.json"
    train.write_text(json.dumps({"model_name_or_path": "gpt2", "bf16": True}))
    got = with_launcher(
        read_framework_config(str(train)),
        read_launcher_config(str(FIXTURES / "trl_context_parallel_2gpu.yaml")),
    )
    assert (got.settings["grad_ckpt"], got.settings["cp"]) == (True, 2)


def test_cli_launcher_option():
    res = runner.invoke(app, [
        "estimate", "--from", str(TRL_FIXTURES / "example_config.yaml"),
        "--launcher", str(FIXTURES / "llama_factory_fsdp_config_multiple_nodes.yaml"),
        "--format", "json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    parallel = json.loads(res.output)["parallel"]
    assert (parallel["strategy"], parallel["gpus_per_node"], parallel["nodes"]) == ("fsdp", 8, 2)
    # with a model alone, and the flags over the launcher
    res = runner.invoke(app, [
        "estimate", "qwen2.5-0.5b", "--launcher", str(FIXTURES / "trl_deepspeed_zero3.yaml"),
        "--gpus", "4", "--format", "json",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    parallel = json.loads(res.output)["parallel"]
    assert (parallel["strategy"], parallel["gpus_per_node"]) == ("zero3", 4)


# -- deepspeed: paths, found as the frameworks open them (the working directory first) ------


def _zero(path: Path, stage: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"zero_optimization": {"stage": stage}}))


def _train(tmp_path: Path, ds: str) -> str:
    folder = tmp_path / "configs"
    folder.mkdir(exist_ok=True)
    (folder / "sft.yaml").write_text(f"model_name_or_path: gpt2\ndeepspeed: {ds}\n")
    return str(folder / "sft.yaml")


def test_deepspeed_path_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _zero(tmp_path / "ds" / "zero.json", 3)  # as LLaMA-Factory's examples/deepspeed/...
    _zero(tmp_path / "configs" / "ds" / "zero.json", 2)  # next to the config: not opened
    cfg = read_framework_config(_train(tmp_path, "ds/zero.json"))
    assert cfg.settings["strategy"] == "zero3"
    assert not any("config's folder" in n for n in cfg.notes)


def test_deepspeed_path_next_to_the_config_is_a_fallback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _zero(tmp_path / "configs" / "ds" / "zero.json", 2)
    cfg = read_framework_config(_train(tmp_path, "ds/zero.json"))
    assert cfg.settings["strategy"] == "zero2"
    assert any("not found from the working directory" in n for n in cfg.notes)


def test_deepspeed_path_found_nowhere_is_read_from_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = read_framework_config(_train(tmp_path, "ds/ds_z3_offload_config.json"))
    s = cfg.settings
    assert (s["strategy"], s["offload_optimizer"], s["offload_params"]) == ("zero3", "cpu", "cpu")
    assert any("read from its name" in n for n in cfg.notes)


# -- axolotl's FSDP2 block (examples/qwen3.5/27b-fft.yaml @067b021c: fsdp_version inside
# fsdp_config, unprefixed keys, no top-level fsdp_version) ------------------------------

AXOLOTL_FSDP2 = {
    "fsdp_config": {
        "fsdp_version": 2,
        "offload_params": False,
        "cpu_ram_efficient_loading": False,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "transformer_layer_cls_to_wrap": "Qwen3_5DecoderLayer",
        "state_dict_type": "FULL_STATE_DICT",
        "sharding_strategy": "FULL_SHARD",
        "reshard_after_forward": True,
        "activation_checkpointing": True,
    }
}


def _axolotl(data: dict, tmp_path: Path) -> FrameworkConfig:
    cfg = FrameworkConfig("axolotl", "x.yml", None)
    distributed_settings(Keys(data, "x.yml"), tmp_path, cfg, fsdp_config_alone=True)
    return cfg


def test_axolotl_fsdp2_inside_fsdp_config(tmp_path):
    cfg = _axolotl(AXOLOTL_FSDP2, tmp_path)
    assert cfg.settings == dict(strategy="fsdp", grad_ckpt=True, fsdp_version=2)
    offload = {"fsdp_config": {**AXOLOTL_FSDP2["fsdp_config"], "offload_params": True,
                               "reshard_after_forward": False}}  # fmt: skip
    s = _axolotl(offload, tmp_path).settings
    assert (s["strategy"], s["offload_params"]) == ("fsdp-grad-op", "cpu")


def test_fsdp_config_alone_is_not_fsdp_for_training_arguments(tmp_path):
    # transformers applies fsdp_config only with fsdp set; axolotl turns FSDP on with it
    cfg = FrameworkConfig("trl", "x.json", None)
    distributed_settings(Keys(AXOLOTL_FSDP2, "x.json"), tmp_path, cfg)
    assert "strategy" not in cfg.settings


def test_the_page_names_the_launcher_keys():
    text = PAGE.read_text().split("## Launcher configs")[1]
    for key in ACCELERATE_KEYS - {"fsdp_config", "deepspeed_config"}:
        assert f"`{key}`" in text, key


LF_DEEPSPEED = (
    ROOT / "tests" / "fixtures" / "frameworks" / "llama-factory" / "examples" / "deepspeed"
)


def test_deepspeed_json_reduce_bucket_size_is_applied():
    """LLaMA-Factory's ds_z2_config.json: stage 2, "reduce_bucket_size": 5e8 (JSON reads
    it as 500000000.0), "overlap_comm": false: the bucket is the file's, and the single
    buffer DeepSpeed then keeps (stage_1_and_2.py setup_buckets) is named beside ftmem's
    two."""
    cfg = read_launcher_config(str(LF_DEEPSPEED / "ds_z2_config.json"))
    assert cfg.settings == dict(strategy="zero2", bucket_elements=500_000_000)
    assert any("overlap_comm is not true" in n for n in cfg.notes)


def test_deepspeed_zero3_sizes_other_than_auto_are_named():
    """ZeRO-3 through Accelerate's own DeepSpeed config (no JSON): reduce_bucket_size,
    stage3_prefetch_bucket_size and stage3_param_persistence_threshold are absent, so
    DeepSpeed's defaults hold (5e8, 5e7, 1e5), not transformers' hidden-based "auto"
    values ftmem estimates with: a note says so. The JSON fixture spells all three
    "auto": no note."""
    cfg = read_launcher_config(str(FIXTURES / "trl_deepspeed_zero3.yaml"))
    assert any("stage3_prefetch_bucket_size" in n and "not 'auto'" in n for n in cfg.notes)
    cfg = read_launcher_config(str(FIXTURES / "llama_factory_ds_z3_offload_config.json"))
    assert not any("not 'auto'" in n for n in cfg.notes)


# -- a nested DeepSpeed config's / fsdp_config's values, by dotted path -------------------

SHIPPED = ROOT / "tests" / "fixtures" / "frameworks"
HF_FILLED = ["gradient_accumulation_steps", "gradient_clipping", "train_batch_size",
             "train_micro_batch_size_per_gpu"]  # fmt: skip
NESTED = {
    # fsdp_config (in the file): fsdp_offload_params true and fsdp_sharding_strategy
    # FULL_SHARD are read (offload, fsdp); the checkpoint's format, the loading path and
    # the first broadcast change no step's memory; the wrap policy and its class, the
    # all-gather limit, orig params and the backward prefetch may, and are not read
    "axolotl/llama-3-fft-8b-liger-fsdp.yaml": (
        ["fsdp_config.fsdp_offload_params", "fsdp_config.fsdp_sharding_strategy"],
        ["fsdp_config.fsdp_sync_module_states", "fsdp_config.fsdp_cpu_ram_efficient_loading",
         "fsdp_config.fsdp_state_dict_type"],
        ["fsdp_config.fsdp_limit_all_gathers", "fsdp_config.fsdp_use_orig_params",
         "fsdp_config.fsdp_auto_wrap_policy", "fsdp_config.fsdp_transformer_layer_cls_to_wrap",
         "fsdp_config.fsdp_backward_prefetch"],
    ),
    # deepspeed: deepspeed_configs/zero2.json: stage 2, offload_optimizer.device cpu and
    # overlap_comm true read (ZeRO-2's two reduce buffers); bf16 / fp16 blocks and the
    # "auto" sizes HF Trainer fills, and the timer switch, change nothing; contiguous
    # gradients (a flat gradient buffer) are not read
    "axolotl/mistral-mixtral-mixtral.yml": (
        ["deepspeed.zero_optimization.stage", "deepspeed.zero_optimization.offload_optimizer.device",
         "deepspeed.zero_optimization.overlap_comm"],
        ["deepspeed.bf16.enabled"]
        + [f"deepspeed.fp16.{k}" for k in ("enabled", "auto_cast", "loss_scale",
           "initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale")]
        + [f"deepspeed.{k}" for k in HF_FILLED] + ["deepspeed.wall_clock_breakdown"],
        ["deepspeed.zero_optimization.contiguous_gradients"],
    ),
    # deepspeed: examples/deepspeed/ds_z3_config.json: stage 3 and the three "auto" sizes
    # read; the gather at a save, HF's "auto" values, fp16 / bf16 and the untested
    # optimizer switch change nothing; ZeRO-3's overlap_comm, contiguous gradients, the
    # optimizer's sub-groups and the live / reuse limits of gathered parameters may, and
    # are not read
    "llama-factory/qwen3_full_sft.yaml": (
        ["deepspeed.zero_optimization.stage", "deepspeed.zero_optimization.reduce_bucket_size",
         "deepspeed.zero_optimization.stage3_prefetch_bucket_size",
         "deepspeed.zero_optimization.stage3_param_persistence_threshold"],
        [f"deepspeed.{k}" for k in HF_FILLED] + ["deepspeed.zero_allow_untested_optimizer"]
        + [f"deepspeed.fp16.{k}" for k in ("enabled", "loss_scale", "loss_scale_window",
           "initial_scale_power", "hysteresis", "min_loss_scale")]
        + ["deepspeed.bf16.enabled",
           "deepspeed.zero_optimization.stage3_gather_16bit_weights_on_model_save"],
        ["deepspeed.zero_optimization.overlap_comm",
         "deepspeed.zero_optimization.contiguous_gradients",
         "deepspeed.zero_optimization.sub_group_size",
         "deepspeed.zero_optimization.stage3_max_live_parameters",
         "deepspeed.zero_optimization.stage3_max_reuse_distance"],
    ),
}  # fmt: skip


def _leaves(data: dict, where: str) -> set[str]:
    """Every value of a nested mapping by dotted path (the test's own walk)."""
    out: set[str] = set()
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{where}{key}.")
        else:
            out.add(f"{where}{key}")
    return out


@pytest.mark.parametrize("name", sorted(NESTED))
def test_nested_deepspeed_and_fsdp_values_are_listed_by_dotted_path(name, monkeypatch):
    """Every value of a shipped config's DeepSpeed JSON or fsdp_config is read, or listed by
    its dotted path as ignored: with no effect on memory, or not read by ftmem (named in
    the note), as the comments above say file by file; --format json's config block
    carries the same lists."""
    read, no_effect, not_read = NESTED[name]
    path = SHIPPED / name
    monkeypatch.chdir(path.parent)  # the DeepSpeed paths are the frameworks' (the working dir)
    data = read_mapping(path)
    section = "deepspeed" if "deepspeed" in data else "fsdp_config"
    inner = data[section]
    if isinstance(inner, str):
        inner = json.loads((path.parent / inner).read_text())
    assert _leaves(inner, f"{section}.") == set(read) | set(no_effect) | set(not_read)
    cfg = read_framework_config(str(path))
    assert sorted(cfg.nested_no_effect) == sorted(no_effect)
    assert sorted(cfg.nested_not_read) == sorted(not_read)
    note = next(n for n in cfg.notes if " keys ignored " in n)
    assert all(key in note.split("not read by ftmem: ")[1] for key in not_read)
    res = runner.invoke(app, ["estimate", "--from", str(path), "--format", "json"])
    block = json.loads(res.output)["config"]
    assert set(no_effect) <= set(block["ignored_no_effect"])
    assert set(not_read) == {k for k in block["ignored_not_read"] if k.startswith(section)}


# -- which torch FSDP runs, from each reader's own key --------------------------------


def test_accelerate_fsdp_version_is_carried(tmp_path):
    path = tmp_path / "acc.yaml"
    path.write_text(
        "distributed_type: FSDP\nnum_processes: 2\n"
        "fsdp_config:\n  fsdp_version: 1\n  fsdp_sharding_strategy: FULL_SHARD\n"
    )
    assert read_launcher_config(str(path)).settings["fsdp_version"] == 1


def test_axolotl_top_level_fsdp_version_is_carried(tmp_path):
    data = {"fsdp_version": 1, "fsdp_config": {"reshard_after_forward": True}}
    assert _axolotl(data, tmp_path).settings["fsdp_version"] == 1


def test_training_arguments_fsdp_config_version_is_carried(tmp_path):
    # transformers reads it as int(fsdp_config.get("version", 2)): a digit string counts
    train = tmp_path / "args.json"
    train.write_text(
        json.dumps(
            {"model_name_or_path": "gpt2", "fsdp": "full_shard", "fsdp_config": {"version": "1"}}
        )
    )
    assert read_framework_config(str(train)).settings["fsdp_version"] == 1


def test_an_fsdp_version_other_than_1_or_2_is_refused(tmp_path):
    data = {"fsdp": True, "fsdp_config": {"version": 3}}
    with pytest.raises(ConfigError, match=r"version must be 1 \(FullyShardedDataParallel\)"):
        distributed_settings(Keys(data, "x.json"), tmp_path, FrameworkConfig("trl", "x", None))


# -- which FSDP version runs when a launcher config and a training config both speak ----
# accelerate launch's --fsdp_version defaults to "1" (accelerate 1.16 commands/launch.py
# l.517-523), exported as FSDP_VERSION, which the plugin reads when built without a
# version (utils/dataclasses.py l.1709-1710). transformers >= 5.0 builds the plugin
# itself from TrainingArguments' fsdp_config when ``fsdp`` is set, its version among the
# arguments (default 1 before 5.10, 2 from it); 4.x sets the plugin's FSDP_* variables
# without a version, so the launcher's holds.

OFFLOAD = FIXTURES / "llama_factory_fsdp_config_offload.yaml"  # FSDP, no fsdp_version


def _args(tmp_path, **keys) -> FrameworkConfig:
    train = tmp_path / "args.json"
    train.write_text(json.dumps({"model_name_or_path": "gpt2", "bf16": True, **keys}))
    return read_framework_config(str(train))


def _launcher(tmp_path, version: int) -> FrameworkConfig:
    path = tmp_path / "acc.yaml"
    path.write_text(
        f"distributed_type: FSDP\nnum_processes: 2\nfsdp_config:\n  fsdp_version: {version}\n"
    )
    return read_launcher_config(str(path))


def test_a_launcher_without_fsdp_version_runs_fsdp1(tmp_path):
    got = with_launcher(_args(tmp_path), read_launcher_config(str(OFFLOAD)))
    assert got.settings["fsdp_version"] == 1
    assert any(a.startswith("fsdp_version 1 (accelerate launch") for a in got.assumed)


@pytest.mark.parametrize(
    ("fsdp_config", "launcher", "transformers_version", "version"),
    [
        ({}, None, None, None),  # TrainingArguments' default (2 at 5.25), not the launcher's
        ({}, 1, None, None),  # the launcher's explicit 1 is not passed to the plugin either
        ({"version": 1}, 2, None, 1),
        ({}, None, "4.57.6", 1),  # 4.x: the launcher's FSDP_VERSION, its default 1
        ({}, 2, "4.57.6", 2),
        ({"version": 2}, 1, "4.57.6", 1),  # 4.x does not read fsdp_config's version
        ({"version": 2}, None, "5.0.0", 2),
    ],
)
def test_training_arguments_fsdp_and_the_launchers_version(
    tmp_path, fsdp_config, launcher, transformers_version, version
):
    train = _args(tmp_path, fsdp="full_shard", fsdp_config=fsdp_config)
    on = read_launcher_config(str(OFFLOAD)) if launcher is None else _launcher(tmp_path, launcher)
    got = with_launcher(train, on, transformers_version)
    assert got.settings.get("fsdp_version") == version
    assert got.settings["strategy"] == "fsdp"
    said = [n for n in got.notes if n.startswith("fsdp_version:")]
    # a note where a version the files state is replaced
    replaced = (launcher is not None and launcher != version) or (
        "version" in fsdp_config and fsdp_config["version"] != version
    )
    assert bool(said) == replaced


def test_training_configs_deepspeed_drops_the_launchers_fsdp_version(tmp_path):
    (tmp_path / "z2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    train = _args(tmp_path, deepspeed=str(tmp_path / "z2.json"))
    got = with_launcher(train, read_launcher_config(str(OFFLOAD)))
    assert got.settings["strategy"] == "zero2" and "fsdp_version" not in got.settings


def test_a_framework_with_its_own_fsdp_keeps_its_version(tmp_path):
    # torchtune's distributed recipes shard with fully_shard whatever the launcher says
    train = FrameworkConfig("torchtune", "tt.yaml", None, {"method": "lora"})
    got = with_launcher(train, read_launcher_config(str(OFFLOAD)))
    assert "fsdp_version" not in got.settings and got.settings["strategy"] == "fsdp"


def test_the_cli_runs_fsdp1_from_a_launcher_without_a_version():
    """--launcher with no fsdp_version: the same estimate as with --fsdp-version 1, not
    as with 2 (FSDP2 gathers two decoder units in forward, FSDP1 one)."""

    def estimate(*flags: str) -> dict:
        res = runner.invoke(app, [
            "estimate", "qwen2.5-0.5b", "--method", "lora", "--format", "json", *flags,
        ])  # fmt: skip
        assert res.exit_code == 0, res.output
        return json.loads(res.output)["memory"]

    launched = estimate("--launcher", str(OFFLOAD))
    assert launched == estimate("--launcher", str(OFFLOAD), "--fsdp-version", "1")
    assert launched != estimate("--launcher", str(OFFLOAD), "--fsdp-version", "2")
