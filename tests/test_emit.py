"""Emitted engine configs load with DeepSpeed's and Accelerate's own parsers."""

import json
import os
from contextlib import contextmanager

import pytest
import yaml

from ftmem import estimate, families
from ftmem.errors import InvalidInputError
from ftmem.present.emit import emit_config

ds_config = pytest.importorskip("deepspeed.runtime.config")
pytest.importorskip("accelerate")

ZERO_CASES = [
    ({"strategy": "zero1"}, 1),
    ({"strategy": "zero2", "offload_optimizer": "cpu"}, 2),
    ({"strategy": "zero3"}, 3),
    ({"strategy": "zero3", "offload_optimizer": "cpu", "offload_params": "cpu"}, 3),
    ({"strategy": "zero3", "offload_optimizer": "nvme", "offload_params": "nvme"}, 3),
]


@pytest.mark.parametrize(("kw", "stage"), ZERO_CASES)
@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16", "fp32"])
def test_deepspeed_json_parses_as_estimated(kw, stage, precision):
    est = estimate("llama3-8b", precision=precision, gpus=8, batch_size=2, grad_accum=4, **kw)
    cfg = ds_config.DeepSpeedConfig(json.loads(emit_config(est, "deepspeed")))
    zero = cfg.zero_config
    assert zero.stage == stage
    assert zero.reduce_bucket_size == est.parallel.reduce_bucket_elements == 4096**2
    if stage == 3:
        assert zero.prefetch_bucket_size == est.parallel.prefetch_bucket_elements
        assert zero.param_persistence_threshold == 10 * 4096
    assert cfg.train_micro_batch_size_per_gpu == 2
    assert cfg.gradient_accumulation_steps == 4
    offload = kw.get("offload_optimizer", "none")
    if offload == "none":
        assert zero.offload_optimizer is None
    else:
        assert zero.offload_optimizer.device == offload
    assert cfg.bfloat16_config.enabled == (precision == "bf16-mixed")
    assert cfg.float16_config.enabled == (precision == "fp16")


def test_deepspeed_tensor_parallel_is_autotp():
    est = estimate("llama3-8b", gpus=8, tp=2, strategy="zero1")
    cfg = ds_config.DeepSpeedConfig(json.loads(emit_config(est, "deepspeed")))
    assert cfg.tensor_parallel_config.autotp_size == 2


@contextmanager
def _environ(env):
    old = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)


def _launch(path):
    """What `accelerate launch --config_file path` makes of the file."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(path), "train.py"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command does before the DeepSpeed launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return args


@pytest.mark.parametrize(
    ("strategy", "sharding"),
    [
        ("fsdp", "FULL_SHARD"),
        ("fsdp-grad-op", "SHARD_GRAD_OP"),
        ("fsdp-hybrid", "HYBRID_SHARD"),
        ("fsdp-no-shard", "NO_SHARD"),
    ],
)
def test_accelerate_fsdp_yaml_launches(tmp_path, strategy, sharding):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    est = estimate("qwen2.5-7b", method="lora", gpus=4, nodes=2, strategy=strategy, grad_ckpt=True)
    path = tmp_path / "fsdp.yaml"
    path.write_text(emit_config(est, "fsdp"))
    cluster = ClusterConfig.from_yaml_file(str(path))
    assert cluster.distributed_type.value == "FSDP"
    assert (cluster.num_processes, cluster.num_machines) == (8, 2)
    args = _launch(path)
    env = prepare_multi_gpu_env(args)
    assert env["FSDP_SYNC_MODULE_STATES"] == env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    # the plugin needs an accelerator only to honour these two (rank 0 loads, then syncs)
    env["FSDP_SYNC_MODULE_STATES"] = env["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    with _environ(env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.sharding_strategy.name == sharding
    assert plugin.transformer_cls_names_to_wrap == ["Qwen2DecoderLayer"]
    assert plugin.activation_checkpointing is True
    assert plugin.cpu_offload.offload_params is False


def test_accelerate_fsdp2_with_tensor_parallel(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    est = estimate("llama3-8b", gpus=8, nodes=2, tp=2, strategy="fsdp-hybrid")
    path = tmp_path / "fsdp2.yaml"
    path.write_text(emit_config(est, "accelerate"))
    cluster = ClusterConfig.from_yaml_file(str(path))
    pc = cluster.parallelism_config
    assert pc["parallelism_config_tp_size"] == 2
    # 16 GPUs / tp 2 = 8 data-parallel ranks: replicated over 2 nodes, sharded 4 ways
    assert pc["parallelism_config_dp_replicate_size"] * pc["parallelism_config_dp_shard_size"] == 8
    assert pc["parallelism_config_dp_replicate_size"] == 2
    args = _launch(path)
    assert args.fsdp_version == 2
    assert args.parallelism_config_tp_size == 2


@pytest.mark.parametrize(("kw", "stage"), ZERO_CASES)
def test_accelerate_deepspeed_yaml_launches(tmp_path, kw, stage):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    est = estimate("llama3-8b", gpus=8, grad_accum=2, **kw)
    path = tmp_path / "ds.yaml"
    path.write_text(emit_config(est, "accelerate"))
    args = _launch(path)
    assert args.use_deepspeed
    _, env = prepare_deepspeed_cmd_env(args)
    with _environ(env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage
    assert plugin.gradient_accumulation_steps == 2
    assert plugin.offload_optimizer_device == kw.get("offload_optimizer", "none")
    assert plugin.offload_param_device == kw.get("offload_params", "none")


def test_layer_classes_exist_in_transformers():
    """Every family's block class is one transformers defines (FSDP's wrap policy looks
    it up by name; a wrong one fails only on the cluster)."""
    import importlib
    import sys

    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    classes = {**MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, **MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES}
    for name in families.names():
        family = families.get(name)
        for model_type in family.model_types:
            # (gemma3_text's model lives in the gemma3 package)
            if model_type not in CONFIG_MAPPING:  # remote code (Qwen-1): its reference
                from tests import qwen1_reference as mod
            elif model_type in classes:
                mod = sys.modules[getattr(transformers, classes[model_type]).__module__]
            else:  # a sub-config's type (mllama_text_model): its package's modeling module
                where = CONFIG_MAPPING[model_type].__module__
                mod = importlib.import_module(where.replace(".configuration_", ".modeling_"))
            assert hasattr(mod, family.decoder_layer), (name, family.decoder_layer)


@pytest.mark.parametrize(
    ("kw", "kind", "message"),
    [
        ({}, "deepspeed", "needs a multi-GPU strategy"),
        ({"gpus": 8, "strategy": "fsdp"}, "deepspeed", "needs --strategy zero1"),
        ({"gpus": 8, "strategy": "zero2"}, "fsdp", "needs an FSDP strategy"),
        ({"gpus": 8, "pp": 2, "strategy": "zero1"}, "deepspeed", "pipeline parallelism"),
        ({"gpus": 8, "tp": 2, "strategy": "zero1"}, "accelerate", "--emit deepspeed"),
        ({"gpus": 8, "strategy": "zero2"}, "megatron", "must be one of"),
    ],
)
def test_emit_refuses_what_it_cannot_write(kw, kind, message):
    est = estimate("llama3-8b", **kw)
    with pytest.raises(InvalidInputError, match=message):
        emit_config(est, kind)


def test_ddp_accelerate_yaml(tmp_path):
    est = estimate("llama3-8b", method="lora", gpus=4)
    text = emit_config(est, "accelerate")
    assert yaml.safe_load(text)["distributed_type"] == "MULTI_GPU"
    path = tmp_path / "ddp.yaml"
    path.write_text(text)
    args = _launch(path)
    assert args.multi_gpu and args.num_processes == 4
