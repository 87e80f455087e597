"""What the engines that run the whole model in 16-bit do to peft's adapters and buffers.

DeepSpeed's bf16/fp16 modes cast the model before training: up to 0.19.1
``self.module.bfloat16()`` / ``.half()``, every floating parameter and buffer
(deepspeedai/DeepSpeed@7ad41089 deepspeed/runtime/engine.py ``_configure_distributed_model``
l.1516-1523); from 0.19.2 on, parameters only, buffers unless ``data_types.buffer_dtype``
is set keep their dtype (@edaa7221 engine.py ``_cast_module_mixed_precision`` l.1537-1550,
commit b919284a, ``git tag --contains``: v0.19.2). ColossalAI's plugins cast everything:
LowLevelZeroModel ``module.to(self.dtype)`` (hpcaitech/ColossalAI@4f9953be
colossalai/booster/plugin/low_level_zero_plugin.py l.82-83), HybridParallelModule
``module.to(self.mixed_precision)`` (hybrid_parallel_plugin.py l.103-104), GeminiDDP every
parameter, frozen ones too (zero/gemini/gemini_ddp.py l.826-835) and ``_cast_buffers``
(l.876-884). FSDP's MixedPrecision computes every flat parameter in its ``param_dtype``,
the fp32 adapters' too (parallel._fsdp_mixed; the stored shards stay fp32).

So every peft method's adapters are 16-bit there, not only the LoRA family's: measured on
the CPU (a tiny Llama built as ftmem builds it, ``model.bfloat16()``, one step without
autocast), the one-GPU estimate with 16-bit adapters gives those runs' weights and
activations for every method in CAST_ADAPTER_METHODS (tests/test_engine_cast.py), except
the ones in UNMODELLED, which are refused.
"""

from __future__ import annotations

from ftmem.errors import InvalidInputError
from ftmem.precision import resolve_dtypes
from ftmem.run import (
    ADAPTER_METHODS,
    METHOD_SETTINGS,
    PEFT_MODEL_METHODS,
    PROMPT_METHODS,
    RunConfig,
)
from ftmem.versions import deepspeed_keeps_buffer_dtype

# the methods whose trainable tensors ftmem keeps in the adapter dtype (dtypes.adapter):
# those that take --adapter-dtype, and those that take none, whose adapters peft makes fp32
CAST_ADAPTER_METHODS: frozenset[str] = (
    ADAPTER_METHODS
    | METHOD_SETTINGS["adapter_dtype"]
    | {"tinylora", "adamss", "unilora", "lily", "c3a"}
    | PROMPT_METHODS
)

# methods ftmem does not model with 16-bit adapters, and why (measured with the cast above:
# BOFT's weights +14 %, PSOFT's +9 %, RandLoRA's activations -40 % against the estimate;
# DeFT's refused by adapters.deft). All of them refuse autocast, so FSDP's MixedPrecision,
# which ftmem models for *-mixed runs only, never meets them.
UNMODELLED: dict[str, str] = {
    "boft": "its permutations and Cayley solve are modelled in fp32 only",
    "oft": "its exact Cayley solve is modelled in fp32 only",
    "psoft": "its frozen A and B are modelled in fp32 only",
    "randlora": "peft builds its bases in fp32 on the CPU, where ftmem measures",
    "deft": "peft computes it in fp32 whatever their dtype",
    # the engine casts OSF's parameters in place (nn.Module._apply keeps the Parameter
    # objects, so its gradient-projection hooks stay, unlike peft's own fp32 cast that
    # adapters.osf models) and its fp32 buffers with them: neither measured
    "osf": "its gradient hooks and fp32 buffers under the engine's cast are not measured",
    "supertuning": "its values under the engine's cast are not measured",
    # (prefix tuning's encoder was measured cast; Cartridge's cat of its frozen and trained
    # halves and their gradient storage were not)
    "cartridge": "its cache halves and their gradient storage under the cast are not measured",
    # peft's forward casts A_i, B_i and newB to the base weight's dtype per call, a no-op
    # once the engine made them 16-bit: not measured
    "adamss": "its factors and projection are measured in fp32 only",
}

# methods whose fp32 buffers meet the 16-bit input in a matmul: with parameters cast and
# buffers kept (DeepSpeed >= 0.19.2) peft's forward raises "expected m1 and m2 to have the
# same dtype" (measured on the CPU, parameters cast one by one as the engine does)
FP32_BUFFERS: dict[str, str] = {
    "vera": "projections vera_A and vera_B",
    "pvera": "projections pvera_A and pvera_B",
    "tinylora": "tinylora_A, tinylora_B and tinylora_P",
    "unilora": "scales unilora_scales_A and unilora_scales_B",
    "delora": "delora_w_norm",
}


def sixteen_bit(run: RunConfig) -> dict[str, object]:
    """The settings that turn a ``*-mixed`` run into the pure 16-bit one with the same
    compute dtype, every peft method's adapters in 16-bit too."""
    half = run.precision.removesuffix("-mixed")
    update: dict[str, object] = {"precision": half, "autocast": None}
    if run.method in CAST_ADAPTER_METHODS and half != "fp32":
        update["adapter_dtype"] = half
    return update


def check_cast(run: RunConfig, strategy: str, engine: str) -> None:
    """Refuse a method whose 16-bit adapters ftmem does not model under an engine that
    casts them (``engine``: what casts, for the sentence)."""
    if run.precision == "fp32" or run.method not in UNMODELLED:
        return
    if run.method == "oft" and run.oft_neumann_terms != 0:
        return  # (the Neumann series runs in the adapters' dtype: modelled)
    name = PEFT_MODEL_METHODS[run.method]
    raise InvalidInputError(
        f"--strategy {strategy} casts the whole model, {name}'s adapters too, to 16-bit "
        f"({engine}), and {name} with 16-bit adapters is not modelled "
        f"({UNMODELLED[run.method]}): use DDP, or --precision fp32."
    )


def check_fsdp_mixed(run: RunConfig) -> None:
    """Refuse a method whose 16-bit adapters ftmem does not model under FSDP's mixed
    precision, which gathers every flat parameter, the adapters too, in 16-bit."""
    if run.method not in UNMODELLED or (run.method == "oft" and run.oft_neumann_terms != 0):
        return
    name = PEFT_MODEL_METHODS[run.method]
    raise InvalidInputError(
        f"FSDP's mixed precision (--precision {run.precision}) gathers {name}'s adapters in "
        f"16-bit, and {name} with 16-bit adapters is not modelled ({UNMODELLED[run.method]}): "
        "use --precision bf16 --autocast (FSDP then keeps them fp32), DDP or fp32."
    )


def check_kept_buffers(run: RunConfig, strategy: str) -> None:
    """DeepSpeed >= 0.19.2 casts parameters and keeps buffers: a method whose fp32 buffers
    meet the 16-bit input fails there."""
    if run.precision == "fp32" or run.method not in FP32_BUFFERS:
        return
    if not deepspeed_keeps_buffer_dtype(run) or resolve_dtypes(run).adapter != "fp32":
        return
    name = PEFT_MODEL_METHODS[run.method]
    fix = "--adapter-dtype bf16, " if run.method in METHOD_SETTINGS["adapter_dtype"] else ""
    raise InvalidInputError(
        f"--strategy {strategy} (DeepSpeed 0.19.2 or later) casts the parameters to 16-bit "
        f"and keeps {name}'s fp32 {FP32_BUFFERS[run.method]}, so peft's forward raises "
        f"(mixed dtypes in one matmul): give {fix}--deepspeed-version 0.19.1 (which casts "
        "the buffers too) or a ColossalAI strategy."
    )
