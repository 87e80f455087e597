"""Engine configs for the estimated plan: DeepSpeed JSON, Accelerate YAML (DeepSpeed or
FSDP), ColossalAI's booster setup (Python).

The values are those the estimate assumed (bucket sizes, stage, offload, precision),
so the run launched with the config is the run that was estimated. Tests load every
emitted config with DeepSpeed's and Accelerate's own parsers.
"""

from __future__ import annotations

import json

import yaml

from ftmem import families
from ftmem.colossalai import COLOSSALAI, GEMINI, HYBRID_AMP, zero_stage
from ftmem.errors import InvalidInputError
from ftmem.parallel import DEEPSPEED, FSDP
from ftmem.result import Estimate, ParallelInfo

EMITTERS = ("deepspeed", "accelerate", "fsdp", "colossalai")

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
    if kind == "colossalai":
        if p is None or strategy not in COLOSSALAI | FSDP | {"ddp"}:
            raise InvalidInputError(
                "--emit colossalai needs --strategy colossalai-zero1/zero2/3d/gemini, ddp or "
                f"an FSDP strategy, not {strategy} (ColossalAI has no ZeRO-3 plugin: its "
                "nearest is colossalai-gemini)."
            )
        return colossalai_setup(est, p)
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


def _call(name: str, kwargs: dict[str, str]) -> str:
    args = "".join(f"\n    {k}={v}," for k, v in kwargs.items())
    return f"{name}({args}\n)"


def _torch_plugin(est: Estimate, p: ParallelInfo) -> tuple[str, list[str], dict[str, str]]:
    """ColossalAI's wrappers of torch DDP and FSDP (data parallel only)."""
    s, run = p.strategy, est.run
    if p.pipeline_parallel > 1:
        raise InvalidInputError(
            "ColossalAI runs a pipeline with HybridParallelPlugin only: use --strategy "
            "colossalai-zero1 or colossalai-3d with --pp."
        )
    if s == "ddp":
        if run.precision == "bf16-mixed":
            raise InvalidInputError(
                "ColossalAI's Booster has no bf16 autocast for TorchDDPPlugin (its "
                "BF16MixedPrecision is abstract, mixed_precision/bf16.py:4-5): use --precision "
                "bf16, or fp16-mixed."
            )
        return "TorchDDPPlugin", [], {"bucket_cap_mb": "25"}
    if p.tensor_parallel > 1 or p.context_parallel > 1:
        raise InvalidInputError(
            "ColossalAI's TorchFSDPPlugin is FSDP1 without tensor or context parallel: "
            "use --strategy colossalai-zero1 with --tp/--cp."
        )
    block = families.get(est.model.family).decoder_layer
    kwargs = {
        "sharding_strategy": f"ShardingStrategy.{FSDP_SHARDING[s]}",
        # without a wrap policy the whole model is one unit, gathered for the whole step
        "auto_wrap_policy": "partial(transformer_auto_wrap_policy, transformer_layer_cls="
        f"{{type(m) for m in model.modules() if type(m).__name__ == {block!r}}})",
    }
    half = _half(est)
    if half and str(run.precision).endswith("-mixed"):
        dtype = "torch.bfloat16" if half == "bf16" else "torch.float16"
        kwargs["mixed_precision"] = (
            f"MixedPrecision(param_dtype={dtype}, reduce_dtype={dtype}, buffer_dtype={dtype})"
        )
    if p.offload_params == "cpu":
        kwargs["cpu_offload"] = "CPUOffload(offload_params=True)"
    imports = [
        "from functools import partial",
        "import torch",
        "from torch.distributed.fsdp import CPUOffload, MixedPrecision, ShardingStrategy",
        "from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy",
    ]
    return "TorchFSDPPlugin", imports, kwargs


def _colossalai_plugin(est: Estimate, p: ParallelInfo) -> tuple[str, list[str], dict[str, str]]:
    """The plugin's class, the imports it needs and its arguments (names as in the
    plugins' ``__init__`` at hpcaitech/ColossalAI 4f9953be335e)."""
    s, run = p.strategy, est.run
    if s in FSDP | {"ddp"}:
        return _torch_plugin(est, p)
    precision = repr(_half(est) or "fp32")
    offload = p.offload_optimizer == "cpu"
    if s == GEMINI and p.gemini_placement == "auto":
        kwargs = {
            "precision": precision,
            "placement_policy": "'auto'",
            "enable_gradient_accumulation": str(run.grad_accum > 1),
            "max_norm": str(GRADIENT_CLIPPING),
        }
        return "GeminiPlugin", [], kwargs
    if s == GEMINI:
        kwargs = {
            "precision": precision,
            "placement_policy": "'static'",
            "shard_param_frac": str(
                1.0 if p.gemini_shard_param_frac is None else p.gemini_shard_param_frac
            ),
            "offload_optim_frac": str(p.gemini_offload_optim_frac or 0.0),
            "offload_param_frac": "1.0" if p.offload_params == "cpu" else "0.0",
            "enable_gradient_accumulation": str(run.grad_accum > 1),
            "max_norm": str(GRADIENT_CLIPPING),
        }
        if p.tensor_parallel > 1:
            kwargs["tp_size"] = str(p.tensor_parallel)
        if p.sequence_parallel_mode:  # (shardformer's default mode: split_gather)
            kwargs["enable_sequence_parallelism"] = "True"
        if p.tensor_parallel > 1 and run.attn == "flash":  # (shardformer runs with tp only)
            kwargs["enable_flash_attention"] = "True"
        return "GeminiPlugin", [], kwargs
    bucket_m = max(1, -(-p.reduce_bucket_elements // 2**20))
    model_parallel = p.tensor_parallel * p.pipeline_parallel * p.context_parallel
    if model_parallel == 1 and p.expert_parallel == 1 and s != HYBRID_AMP:
        kwargs = {
            "stage": str(zero_stage(s)),
            "precision": precision,
            "reduce_bucket_size_in_m": str(bucket_m),
            "cpu_offload": str(offload),
            "max_norm": str(GRADIENT_CLIPPING),
        }
        return "LowLevelZeroPlugin", [], kwargs
    kwargs = {
        "tp_size": str(p.tensor_parallel),
        "pp_size": str(p.pipeline_parallel),
        "zero_stage": str(zero_stage(s)),
        "precision": precision,
        "max_norm": str(GRADIENT_CLIPPING),
    }
    if zero_stage(s):
        kwargs.update(zero_bucket_size_in_m=str(bucket_m), cpu_offload=str(offload))
    if p.pipeline_parallel > 1:
        kwargs.update(microbatch_size=str(run.batch_size), pp_style="'1f1b'")
        if p.pipeline_chunks > 1:
            kwargs.update(pp_style="'interleaved'", num_model_chunks=str(p.pipeline_chunks))
    if run.attn == "flash":
        # the policies' own attention, as the estimate assumed it (Architecture.kv_repeated;
        # ring_attn turns it on anyway, hybrid_parallel_plugin.py:1080-1081)
        kwargs["enable_flash_attention"] = "True"
    if p.expert_parallel > 1:
        # the MoE plugin runs ZeRO-2 as ZeRO-1 (moe_hybrid_parallel_plugin.py:227-233)
        kwargs.update(zero_stage="1", ep_size=str(p.expert_parallel))
        return "MoeHybridParallelPlugin", [], kwargs
    if p.sequence_parallel_mode:
        kwargs.update(
            enable_sequence_parallelism="True",
            sequence_parallelism_mode=repr(p.sequence_parallel_mode),
        )
    if p.context_parallel > 1:
        kwargs["sp_size"] = str(p.context_parallel)
    return "HybridParallelPlugin", [], kwargs


def colossalai_setup(est: Estimate, p: ParallelInfo) -> str:
    """ColossalAI's booster for the estimated plan: the plugin with the arguments the
    estimate assumed, the optimizer and LoRA as the plugins take them, as a Python snippet
    to paste into a training script launched with ``colossalai run --nproc_per_node``."""
    plugin, imports, kwargs = _colossalai_plugin(est, p)
    run = est.run
    # torch DDP and FSDP's MixedPrecision keep fp32 weights for a mixed run
    autocast = str(run.precision).endswith("-mixed") and p.strategy not in COLOSSALAI
    loaded = "fp32" if autocast else _half(est) or "fp32"
    lines = [
        f"# ftmem: {est.model.name} {run.method}, {p.world_size} GPUs, launch with",
        f"#   colossalai run --nproc_per_node {p.gpus_per_node}"
        + (f" --num_nodes {p.nodes} --hostfile HOSTFILE" if p.nodes > 1 else "")
        + " train.py",
        "import colossalai",
        "from colossalai.booster import Booster",
        f"from colossalai.booster.plugin import {plugin}",
        "from colossalai.nn.optimizer import HybridAdam",
        *imports,
        "",
        "colossalai.launch_from_torch()",
        f"# model: yours, loaded in {loaded}; dataloader: "
        f"plugin.prepare_dataloader(dataset, batch_size={run.batch_size}, ...)",
        f"plugin = {_call(plugin, kwargs)}",
        "booster = Booster(plugin=plugin"
        + (', mixed_precision="fp16")' if p.strategy == "ddp" and autocast else ")"),
    ]
    if run.method in ("lora", "dora", "rslora", "qlora"):
        targets = list(run.adapted_modules or [])
        lines += [
            "# LoRA through peft, before boost (not GeminiPlugin, not with tp_size > 1)"
            + (
                "; QLoRA: add quantize=True and a bnb_quantization_config"
                if run.method == "qlora"
                else ""
            ),
            "from peft import LoraConfig",
            "model = booster.enable_lora(model, lora_config=LoraConfig("
            f"r={run.r}, lora_alpha={run.alpha}, lora_dropout={run.dropout}, "
            f"target_modules={sorted({t.rsplit('.', 1)[-1] for t in targets})!r}))",
        ]
        if run.adapted_parameters:
            # (peft's target_parameters, 0.17 and later; a converted gate_up at rank 2r)
            lines.append(
                "# the estimate also counts LoRA on these expert parameters (peft "
                f"target_parameters): {', '.join(run.adapted_parameters)}"
            )
    if run.grad_ckpt:
        lines.append("model.gradient_checkpointing_enable()")
    lines += [
        "optimizer = HybridAdam(model.parameters(), adamw_mode=True)",
        "model, optimizer, _, dataloader, _ = booster.boost(model, optimizer, "
        "dataloader=dataloader)",
    ]
    if p.pipeline_parallel > 1:
        lines.append(
            "# each step: booster.execute_pipeline(iter(dataloader), model, "
            "lambda out, inputs: out.loss, optimizer, return_loss=True)"
        )
    return "\n".join(lines) + "\n"
