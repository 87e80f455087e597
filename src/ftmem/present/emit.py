"""Engine configs for the estimated plan: DeepSpeed JSON, Accelerate YAML (DeepSpeed or FSDP).

The values are those the estimate assumed (bucket sizes, stage, offload, precision),
so the run launched with the config is the run that was estimated. Tests load every
emitted config with DeepSpeed's and Accelerate's own parsers.
"""

from __future__ import annotations

import json

import yaml

from ftmem import families
from ftmem.errors import InvalidInputError
from ftmem.parallel import DEEPSPEED, FSDP
from ftmem.result import Estimate, ParallelInfo

EMITTERS = ("deepspeed", "accelerate", "fsdp")

# transformers 5 block classes (each model's _no_split_modules): FSDP wraps one per unit.
FSDP_SHARDING = {
    "fsdp": "FULL_SHARD",
    "fsdp-hybrid": "HYBRID_SHARD",
    "fsdp-grad-op": "SHARD_GRAD_OP",
    "fsdp-no-shard": "NO_SHARD",
}
NVME_PATH = "/local_nvme"  # a placeholder the user edits: DeepSpeed needs a real mount
GRADIENT_CLIPPING = 1.0  # HF Trainer's max_grad_norm default


def emit_config(est: Estimate, kind: str) -> str:
    """The config text for ``kind`` (deepspeed | accelerate | fsdp)."""
    if kind not in EMITTERS:
        raise InvalidInputError(f"--emit must be one of {', '.join(EMITTERS)}, not {kind!r}.")
    p = est.parallel
    strategy = p.strategy if p is not None else "single"
    if p is None or strategy not in DEEPSPEED | FSDP | {"ddp"}:
        raise InvalidInputError(
            f"--emit {kind} needs a multi-GPU strategy (--strategy zero1/2/3, fsdp... or ddp)."
        )
    if kind == "deepspeed" and strategy not in DEEPSPEED:
        raise InvalidInputError(
            f"--emit deepspeed needs --strategy zero1, zero2 or zero3, not {strategy}."
        )
    if kind == "fsdp" and strategy not in FSDP:
        raise InvalidInputError(f"--emit fsdp needs an FSDP strategy, not {strategy}.")
    if p.pipeline_parallel > 1:
        raise InvalidInputError(
            "--emit does not cover pipeline parallelism: it needs a PipelineModule in the "
            "training code (DeepSpeed) or Megatron/torchtitan; drop --pp to emit a config."
        )
    if kind == "deepspeed":
        return json.dumps(deepspeed_config(est, p), indent=2) + "\n"
    return yaml.safe_dump(accelerate_config(est, p), sort_keys=False)


def _half(est: Estimate) -> str | None:
    precision = str(est.run.precision).removesuffix("-mixed")
    return None if precision == "fp32" else precision


def deepspeed_config(est: Estimate, p: ParallelInfo) -> dict[str, object]:
    run = est.run
    stage = int(p.strategy.removeprefix("zero"))
    zero: dict[str, object] = {
        "stage": stage,
        "overlap_comm": stage >= 2,
        "contiguous_gradients": True,
        "reduce_bucket_size": p.reduce_bucket_elements,
    }
    if stage <= 2:
        zero["allgather_bucket_size"] = p.reduce_bucket_elements
    else:
        zero.update(
            stage3_prefetch_bucket_size=p.prefetch_bucket_elements,
            stage3_param_persistence_threshold=p.persistence_threshold_elements,
            stage3_gather_16bit_weights_on_model_save=True,
        )
    for key, where in (
        ("offload_optimizer", p.offload_optimizer),
        ("offload_param", p.offload_params),
    ):
        if where == "cpu":
            zero[key] = {"device": "cpu", "pin_memory": True}
        elif where == "nvme":
            zero[key] = {"device": "nvme", "nvme_path": NVME_PATH, "pin_memory": True}
    config: dict[str, object] = {
        "train_micro_batch_size_per_gpu": run.batch_size,
        "gradient_accumulation_steps": run.grad_accum,
        "gradient_clipping": GRADIENT_CLIPPING,
        "zero_optimization": zero,
    }
    half = _half(est)
    if half == "bf16":
        config["bf16"] = {"enabled": True}
    elif half == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    if p.tensor_parallel > 1:
        config["tensor_parallel"] = {"autotp_size": p.tensor_parallel}
    config["steps_per_print"] = 100
    return config


def accelerate_config(est: Estimate, p: ParallelInfo) -> dict[str, object]:
    if (p.tensor_parallel > 1 or p.context_parallel > 1) and p.strategy not in FSDP:
        raise InvalidInputError(
            "Accelerate composes tensor/context parallel with FSDP only; for DeepSpeed use "
            "--emit deepspeed (tensor_parallel.autotp_size) as its deepspeed_config_file."
        )
    half = _half(est)
    config: dict[str, object] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_GPU",
        "downcast_bf16": "no",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": half or "no",
        "num_machines": p.nodes,
        "num_processes": p.world_size,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if p.strategy in DEEPSPEED:
        config["distributed_type"] = "DEEPSPEED"
        stage = int(p.strategy.removeprefix("zero"))
        config["deepspeed_config"] = {
            "gradient_accumulation_steps": est.run.grad_accum,
            "gradient_clipping": GRADIENT_CLIPPING,
            "offload_optimizer_device": p.offload_optimizer,
            "offload_param_device": p.offload_params,
            "zero3_init_flag": stage == 3,
            "zero3_save_16bit_model": stage == 3,
            "zero_stage": stage,
        }
    elif p.strategy in FSDP:
        config["distributed_type"] = "FSDP"
        # FSDP2 (fully_shard) is what Accelerate composes with tensor/context parallel;
        # there, hybrid sharding is a replicate × shard mesh instead of a strategy name.
        v2 = p.tensor_parallel > 1 or p.context_parallel > 1
        fsdp: dict[str, object] = {
            "fsdp_version": 2 if v2 else 1,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": families.get(est.model.family).decoder_layer,
            "fsdp_reshard_after_forward": p.strategy != "fsdp-grad-op"
            if v2
            else FSDP_SHARDING[p.strategy],
            "fsdp_offload_params": p.offload_params == "cpu",
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_activation_checkpointing": bool(est.run.grad_ckpt),
        }
        if not v2:
            # accelerate launch still reads the FSDP1 strategy from this key
            fsdp.update(
                fsdp_sharding_strategy=FSDP_SHARDING[p.strategy],
                fsdp_backward_prefetch="BACKWARD_PRE",
                fsdp_sync_module_states=True,
                fsdp_use_orig_params=True,
            )
        config["fsdp_config"] = fsdp
        if v2:
            replicate = {"fsdp-hybrid": p.nodes, "fsdp-no-shard": p.data_parallel}.get(
                p.strategy, 1
            )
            config["parallelism_config"] = {
                "parallelism_config_dp_replicate_size": replicate,
                "parallelism_config_dp_shard_size": p.data_parallel // replicate,
                "parallelism_config_tp_size": p.tensor_parallel,
                "parallelism_config_cp_size": p.context_parallel,
            }
    return config
