"""--from configs whose values have the wrong type: each is one sentence on stderr naming
the file, the key and the type it must have (exit 2), never a traceback or a silent
misread; and the legitimate spellings the frameworks themselves accept are read."""

from __future__ import annotations

import json

import pytest

from ftmem.cli import main
from ftmem.frameworks import read_framework_config

AXO = "base_model: meta-llama/Llama-2-7b-hf\nadapter: lora\n"
TT = "model:\n  _component_: torchtune.models.llama2.lora_llama2_7b\n"
LF = "model_name_or_path: meta-llama/Llama-2-7b-hf\nfinetuning_type: lora\n"
LIT = "checkpoint_dir: checkpoints/meta-llama/Llama-2-7b-hf\n"
TRL = {"model_name_or_path": "meta-llama/Llama-2-7b-hf", "per_device_train_batch_size": 1}

# (name, file text, what the one line must say: the key and the expected type)
WRONG_TYPES = [
    ("deepspeed-stage-auto", AXO + "deepspeed: {zero_optimization: {stage: auto}}\n",
     "deepspeed.zero_optimization.stage is 'auto'"),
    ("deepspeed-stage-list", AXO + "deepspeed: {zero_optimization: {stage: [3]}}\n",
     "deepspeed.zero_optimization.stage must be 0, 1, 2 or 3, not a list"),
    ("deepspeed-stage-7", AXO + "deepspeed: {zero_optimization: {stage: 7}}\n",
     "stage must be 0, 1, 2 or 3, not 7"),
    ("deepspeed-zero-string", AXO + "deepspeed: {zero_optimization: three}\n",
     "deepspeed.zero_optimization must be a mapping of settings, not 'three'"),
    ("deepspeed-number", AXO + "deepspeed: 3\n",
     "deepspeed must be a DeepSpeed config file name or a mapping, not 3"),
    ("deepspeed-offload-device", AXO + "deepspeed: {zero_optimization: {stage: 2, "
     "offload_optimizer: {device: gpu}}}\n",
     "deepspeed.zero_optimization.offload_optimizer.device must be one of none, cpu or nvme"),
    ("deepspeed-offload-auto", AXO + "deepspeed: {zero_optimization: {stage: 3, "
     "offload_param: {device: auto}}}\n", "offload_param.device is 'auto'"),
    ("axolotl-lora-r-text", AXO + "lora_r: sixteen\n",
     "lora_r must be a whole number (at least 1), not 'sixteen'"),
    ("axolotl-lora-r-float", AXO + "lora_r: 8.5\n", "lora_r must be a whole number"),
    ("axolotl-lora-r-bool", AXO + "lora_r: true\n", "lora_r must be a whole number"),
    ("axolotl-alpha-list", AXO + "lora_alpha: [16]\n", "lora_alpha must be a number, not a list"),
    ("axolotl-alpha-nan", AXO + "lora_alpha: .nan\n", "lora_alpha must be a finite number"),
    # an integer past what a float holds (math.isfinite raised OverflowError on it)
    ("axolotl-alpha-huge", AXO + f"lora_alpha: {'9' * 400}\n", "lora_alpha must be a finite"),
    ("axolotl-dropout-range", AXO + "lora_dropout: 1.5\n", "lora_dropout must be below 1"),
    ("axolotl-targets-number", AXO + "lora_target_modules: 5\n",
     "lora_target_modules must be a name or a list of names, not 5"),
    ("axolotl-targets-mapping", AXO + "lora_target_modules: {q_proj: 1}\n",
     "lora_target_modules must be a name or a list of names, not a mapping"),
    ("axolotl-base-model-list", "base_model: [a, b]\n",
     "base_model must be a string, not a list"),
    ("axolotl-flag-string", AXO + "load_in_4bit: 'false'\n",
     "load_in_4bit must be true or false, not 'false'"),
    ("axolotl-seq-mapping", AXO + "sequence_len: {max: 4096}\n", "sequence_len must be a whole"),
    ("axolotl-optimizer-list", AXO + "optimizer: [adamw_torch]\n",
     "optimizer must be a string, not a list"),
    ("axolotl-unfrozen-number", "base_model: meta-llama/Llama-2-7b-hf\nunfrozen_parameters: 3\n",
     "unfrozen_parameters must be a regular expression or a list of them, not 3"),
    ("axolotl-fsdp-number", AXO + "fsdp: 1\n", "fsdp must be true, an option string"),
    ("axolotl-fsdp-config-list", AXO + "fsdp: [full_shard]\nfsdp_config: [a]\n",
     "fsdp_config must be a mapping of settings, not a list"),
    ("axolotl-fsdp-sharding", AXO + "fsdp: [full_shard]\nfsdp_config: "
     "{fsdp_sharding_strategy: SHARDED}\n", "fsdp_config.fsdp_sharding_strategy must be one of"),
    ("torchtune-tokenizer-text", TT + "tokenizer: abc\n",
     "tokenizer must be a mapping of settings, not 'abc'"),
    ("torchtune-model-component", "model:\n  _component_: 5\n",
     "model._component_ must be a string, not 5"),
    ("torchtune-max-seq-text", TT + "tokenizer: {max_seq_len: long}\n",
     "tokenizer.max_seq_len must be a whole number"),
    ("torchtune-attn-modules-number", TT + "  lora_attn_modules: 7\n",
     "model.lora_attn_modules must be a name or a list of names, not 7"),
    ("torchtune-dtype", TT + "dtype: [bf16]\n", "dtype must be a string, not a list"),
    ("torchtune-dtype-unknown", TT + "dtype: int3\n", "dtype must be one of bf16, fp32 or fp16"),
    ("torchtune-optimizer-text", TT + "optimizer: adamw\n",
     "optimizer must be a mapping of settings, not 'adamw'"),
    ("torchtune-loss-list", TT + "loss: [a]\n", "loss must be a mapping of settings"),
    ("llama-factory-target-number", LF + "lora_target: 5\n",
     "lora_target must be a name or a list of names, not 5"),
    ("llama-factory-rank-text", LF + "lora_rank: big\n", "lora_rank must be a whole number"),
    ("llama-factory-quant-bit-text", LF + "quantization_bit: four\n",
     "quantization_bit must be a whole number"),
    ("llama-factory-freeze-negative",
     "model_name_or_path: meta-llama/Llama-2-7b-hf\nfinetuning_type: freeze\n"
     "freeze_trainable_layers: -2\n", "freeze_trainable_layers -2 trains the first blocks"),
    ("llama-factory-cutoff-list", LF + "cutoff_len: [1, 2]\n", "cutoff_len must be a whole number"),
    ("llama-factory-flash-number", LF + "flash_attn: 2\n", "flash_attn must be a string, not 2"),
    ("litgpt-precision-list", LIT + "precision: [bf16-true]\n", "precision must be a string"),
    ("litgpt-precision-unknown", LIT + "precision: 8-true\n", "precision must be one of"),
    ("litgpt-quantize-unknown", LIT + "quantize: gptq\n", "quantize must be one of bnb.nf4"),
    ("litgpt-train-text", LIT + "train: fast\n", "train must be a mapping of settings"),
    ("litgpt-micro-batch-text", LIT + "train: {micro_batch_size: two}\n",
     "train.micro_batch_size must be a whole number"),
    ("litgpt-lora-query-text", LIT + "lora_r: 8\nlora_query: 'yes'\n",
     "lora_query must be true or false"),
]  # fmt: skip

WRONG_JSON = [
    ("trl-batch-text", {**TRL, "per_device_train_batch_size": "4"},
     "per_device_train_batch_size must be a whole number (at least 1), not '4'"),
    ("trl-init-kwargs-text", {**TRL, "model_init_kwargs": "bf16"},
     "model_init_kwargs must be a mapping of settings, not 'bf16'"),
    ("trl-dtype-number", {**TRL, "model_init_kwargs": {"torch_dtype": 16}},
     "model_init_kwargs.torch_dtype must be a string, not 16"),
    ("trl-bf16-text", {**TRL, "bf16": "yes"}, "bf16 must be true or false, not 'yes'"),
    ("trl-optim-mapping", {**TRL, "optim": {"name": "adamw"}}, "optim must be a string"),
    ("trl-galore-rank", {**TRL, "optim": "galore_adamw", "optim_args": "rank=big"},
     "optim_args' rank must be a positive whole number, not 'big'"),
    ("trl-optim-args-list", {**TRL, "optim": "galore_adamw", "optim_args": ["rank=8"]},
     "optim_args must be a string"),
    ("trl-deepspeed-list", {**TRL, "deepspeed": ["zero3.json"]},
     "deepspeed must be a DeepSpeed config file name or a mapping, not a list"),
    ("trl-fsdp-config-reshard", {**TRL, "fsdp": True, "fsdp_config": {"reshard_after_forward": 3}},
     "fsdp_config.reshard_after_forward must be true or false, not 3"),
    ("trl-lora-r-mapping", {**TRL, "use_peft": True, "lora_r": {"r": 8}},
     "lora_r must be a whole number (at least 1), not a mapping"),
    ("trl-attn-list", {**TRL, "attn_implementation": ["sdpa"]},
     "attn_implementation must be a string"),
]  # fmt: skip


def _refused(path, capsys, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", "--from", str(path), "--gpus", "2"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert out == ""
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert str(path) in err and expected in err, err


@pytest.mark.parametrize(("name", "text", "expected"), WRONG_TYPES, ids=[c[0] for c in WRONG_TYPES])
def test_wrong_type_in_yaml_is_one_sentence_naming_the_key(tmp_path, capsys, name, text, expected):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    _refused(path, capsys, expected)


@pytest.mark.parametrize(("name", "data", "expected"), WRONG_JSON, ids=[c[0] for c in WRONG_JSON])
def test_wrong_type_in_json_is_one_sentence_naming_the_key(tmp_path, capsys, name, data, expected):
    path = tmp_path / "args.json"
    path.write_text(json.dumps(data))
    _refused(path, capsys, expected)


def test_wrong_type_in_a_separate_deepspeed_file_names_that_file(tmp_path, capsys):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": "auto"}}))
    (tmp_path / "axo.yml").write_text(AXO + "deepspeed: ds.json\n")
    with pytest.raises(SystemExit):
        main(["estimate", "--from", str(tmp_path / "axo.yml")])
    err = capsys.readouterr().err
    assert f"{tmp_path / 'ds.json'}: zero_optimization.stage is 'auto'" in err
    assert "write 0, 1, 2 or 3 there" in err


# What the frameworks themselves accept, read as they read it (their sources cited).
ACCEPTED = [
    # DeepSpeed's ZeroStageEnum takes the stage as a numeric string too (pydantic, lax)
    ("deepspeed stage '2'", AXO + "deepspeed: {zero_optimization: {stage: '2'}}\n",
     {"strategy": "zero2"}),
    # "auto" is HF Trainer's for buckets and batch sizes: those keys are not read
    ("deepspeed auto buckets", AXO + "deepspeed: {zero_optimization: {stage: 3, "
     "reduce_bucket_size: auto, stage3_prefetch_bucket_size: auto}}\n", {"strategy": "zero3"}),
    # transformers 5: fsdp: true, options in fsdp_config without the fsdp_ prefix
    ("fsdp true + cpu_offload", AXO + "fsdp: true\nfsdp_config: {cpu_offload: true}\n",
     {"strategy": "fsdp", "offload_params": "cpu", "offload_optimizer": "cpu"}),
    # FSDP2's reshard_after_forward false is SHARD_GRAD_OP; str_to_bool reads "false"
    ("fsdp reshard false", AXO + "fsdp: true\nfsdp_config: {reshard_after_forward: 'false'}\n",
     {"strategy": "fsdp-grad-op"}),
    # Accelerate's prefixed keys, its sharding strategy as 1-based index (4: HYBRID_SHARD)
    ("accelerate fsdp keys", AXO + "fsdp: [full_shard]\nfsdp_config: "
     "{fsdp_sharding_strategy: 4, fsdp_activation_checkpointing: true}\n",
     {"strategy": "fsdp-hybrid", "grad_ckpt": True}),
    # axolotl 0.8+: fsdp_version with fsdp_config, no option list
    ("axolotl fsdp_version", AXO + "fsdp_version: 2\nfsdp_config: {offload_params: true}\n",
     {"strategy": "fsdp", "offload_params": "cpu"}),
    # axolotl gradient_checkpointing modes and activation_offloading: legacy
    ("axolotl ckpt mode", AXO + "gradient_checkpointing: offload\nactivation_offloading: legacy\n",
     {"grad_ckpt": True, "activation_offload": True}),
    # a single target as a string, a comma-separated string
    ("targets as string", AXO + "lora_target_modules: q_proj, v_proj\n",
     {"lora_targets": "q_proj,v_proj"}),
    # LitGPT's precision as a YAML number, bnb.int8-training (its finetune scripts' spelling)
    ("litgpt precision 32", LIT + "precision: 32\n", {"precision": "fp32"}),
    ("litgpt int8-training", LIT + "precision: bf16-true\nquantize: bnb.int8-training\n",
     {"method": "qlora", "quant": "int8"}),
    # older LLaMA-Factory: flash_attn as a switch
    ("llama-factory flash true", LF + "flash_attn: true\n", {"attn": "flash"}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "expected"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_the_frameworks_own_spellings_are_read(tmp_path, name, text, expected):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    settings = read_framework_config(str(path)).settings
    assert {k: settings.get(k) for k in expected} == expected


def _json_run(argv, capsys):
    from ftmem.cli import main as run

    with pytest.raises(SystemExit) as exit_info:
        run([*argv, "--format", "json"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    return json.loads(out)


def test_a_flag_takes_the_file_settings_that_went_with_what_it_replaced(tmp_path, capsys):
    """--method full over a LoRA config: the file's rank goes too (it once was refused as
    '--lora-r only applies to ...', a flag the user never gave); --strategy zero2 over an
    FSDP config with offload: the FSDP offload goes; each named in a note."""
    path = tmp_path / "axo.yml"
    path.write_text(AXO + "lora_r: 16\nfsdp: [full_shard, offload]\n")
    data = _json_run(["estimate", "--from", str(path), "--method", "full"], capsys)
    assert data["run"]["method"] == "full"
    assert any("Not taken from" in n and "lora_r" in n for n in data["notes"])
    data = _json_run(
        ["estimate", "--from", str(path), "--gpus", "4", "--strategy", "zero2"], capsys
    )
    assert data["parallel"]["strategy"] == "zero2"
    assert data["parallel"]["offload_params"] == data["parallel"]["offload_optimizer"] == "none"
    assert any("offload_optimizer, offload_params" in n for n in data["notes"])
    # what the flags keep: the file's rank under another LoRA method
    data = _json_run(["estimate", "--from", str(path), "--method", "dora"], capsys)
    assert data["run"]["lora_r"] == 16
