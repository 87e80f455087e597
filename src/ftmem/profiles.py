"""The training frameworks' own code paths, where they differ from HF Trainer + PEFT
over transformers (the path ftmem's defaults describe).

A profile is data, like a model family (families/): each field names one mechanism by
which the framework's step holds memory differently, with the source it comes from
(repository, file, commit). The core reads ``profile_of(run)`` and never names a
framework. ``RunConfig.framework`` chooses the profile; ``--from`` sets it from the
config it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ftmem.run import RunConfig

# How a framework puts the checkpoint on the GPU (ftmem.run_phases.quantise_transient)
Loading = Literal["hf", "fabric-bnb", "torchao-nf4"]


@dataclass(frozen=True, slots=True)
class Profile:
    """One framework's code path; the defaults are HF Trainer's."""

    name: str
    notes: tuple[str, ...] = ()  # what the estimate says of this path
    # What the framework's own memory figure covers when --peak-of is not given: "run"
    # (no reset_peak_memory_stats before training: loading, evaluation... are in it) or
    # "step". HF Trainer: its memory metrics span the whole trainer.train()
    # (transformers src/transformers/trainer_utils.py TrainerMemoryTracker; the
    # ``train_mem_gpu_peaked_delta`` telescopes, calibration/notes/fms.md) and
    # nvidia-smi the whole job; peft's method_comparison reads max_memory_reserved once at
    # the end (peft@5d602fdb method_comparison/MetaMathQA/run.py main).
    peak_of: Literal["step", "run"] = "run"
    loading: Loading = "hf"
    # the checkpoint is loaded into parameters quantised at init: each quantised again
    # and replaced (ftmem.gpu.trace replays the second pass)
    requantises_on_load: bool = False
    # runs validate() / generates a sample inside the measured window by default
    evaluates: bool = False  # HF TrainingArguments.eval_strategy defaults to "no"
    generates: bool = False


HF = Profile("hf")

PROFILES: dict[str, Profile] = {
    "hf": HF,
    # axolotl and LLaMA-Factory drive HF Trainer over transformers + peft
    "axolotl": Profile("axolotl"),
    "llama-factory": Profile("llama-factory"),
    # max_memory_allocated printed after fit(), never reset: loading, the sanity
    # validate(), every validate() and generate_example() are inside
    # (litgpt@00af8b0d litgpt/finetune/lora.py main, fit; notes/litgpt.md M0, M9, M10)
    "litgpt": Profile(
        "litgpt", peak_of="run", loading="fabric-bnb", evaluates=True, generates=True
    ),
    # get_memory_stats / memory_stats_log reset the peaks after model init and at every
    # logged step: a figure is one step's (torchtune@1814feb1
    # torchtune/training/memory.py get_memory_stats; @ff594c231 torchtune/utils/memory.py
    # memory_stats_log); reserved keeps the cache loading left (no empty_cache)
    # LoRALinear quantises its bf16 nn.Linear at init, then load_state_dict's NF4
    # copy_ quantises the checkpoint tensor on the GPU and swaps the buffers in
    # (torchtune@0914d5cfb torchtune/modules/peft/lora.py _create_weight_and_bias;
    # torchtune/utils/_register_nf4_dispatch_ops.py inplace_copy: ``ref_tensor =
    # to_nf4(args[0][1].to(dest_tensor.device))``, ``dest_tensor.quantized_data =
    # ref_tensor.quantized_data``)
    "torchtune": Profile(
        "torchtune", peak_of="step", loading="torchao-nf4", requantises_on_load=True
    ),
    # Unsloth's notebooks print max_memory_reserved once after trainer.train()
    "unsloth": Profile("unsloth"),
}


def profile_of(run: RunConfig) -> Profile:
    return PROFILES[run.framework]
