"""The whole option space of the CLI: every option crossed with every other.

All-pairs coverage over the choices of every option of ``estimate`` (and ``serve`` and
``compare``), hypothesis over the numbers and over ``--from`` configs of every
framework. Every run, in-process through :func:`ftmem.cli.main`, must keep the CLI's
contract:

* exit 0 with valid output (``--format json`` parses, ``yaml`` loads, ``--emit`` is a
  config the engine reads);
* exit 1 only for "does not fit" (``--check`` with a GPU, the JSON saying ``fits: false``);
* exit 2 with exactly one line on stderr and nothing on stdout;
* in bounded time and output size, and never a traceback.

*Accepted* rows respect the rules the tools themselves impose (written out below, each
with the tool it comes from): each must be estimated (exit 0 or 1). A refusal there is
either a combination ftmem refuses without reason (``--gpus 2 --strategy fsdp
--offload-params cpu`` once was) or a rule missing here: both worth a look. *Forbidden*
pairs, each put into an accepted row, must be refused, in one sentence: a run that goes
through is a rule the tool does not keep (a silent misread). ``FTMEM_SLOW=1`` adds every
preset, ``plan``, ``max``, ``explain`` and ``--fewest-gpus``.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import functools
import io
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import get_args
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftmem import cli
from ftmem.cli import root as cli_root  # loaded lazily by ftmem.cli: patched below
from ftmem.engine_cast import FP32_BUFFERS, UNMODELLED
from ftmem.presets import model_presets
from ftmem.run import Method

OMIT = "(default)"  # the option is not given
MAX_SECONDS = 10.0  # per run, on a slow CI core (a run takes 0.01 to 0.1 s here)
MAX_OUTPUT = 200_000  # characters on stdout

# One model of each family and kind (decoder, encoder-decoder, MoE, tied, biased)
MODELS = [
    "falcon-7b", "flan-t5-small", "t5-small", "gemma-2b", "gemma2-9b", "gpt2", "llama2-7b",
    "llama3-8b", "mistral-7b", "mixtral-8x7b", "phi3-mini", "qwen2.5-0.5b",
]  # fmt: skip

LORA = {"lora", "rslora", "longlora", "relora", "qlora", "dora"}
PROMPT = {"prompt-tuning", "prefix-tuning", "p-tuning"}
# peft's other adapter methods (each refuses the rest's options)
PEFT_OTHER = {
    "adalora", "loha", "lokr", "oft", "boft", "miss", "road", "vera", "fourierft", "hira",
    "psoft", "hra", "pvera", "randlora", "vblora", "shira", "waveft", "c3a", "tinylora",
    "unilora", "lily", "beft", "glora", "peanut", "trainable-tokens", "osf", "supertuning",
    "adamss",
}  # fmt: skip
# peft's prompt-side methods beyond PROMPT: the adaption prompt (LLaMA-Adapter's gated
# prompts on Llama, Mistral and GPT-2) and Cartridge (a trained KV cache, prefix tuning's path)
PROMPT_OTHER = {"adaption-prompt", "cartridge"}
# peft's LoRA variants with LoRA's options (--lora-r, --lora-targets, ...)
LORA_VARIANTS = {"adalora", "gralora", "delora", "deft"}
# not modelled under autocast (ftmem.run.NO_AUTOCAST: measured on the CPU without it only)
AUTOCAST_MODELLED = {
    "adalora", "loha", "vera", "fourierft", "waveft", "shira", "c3a", "hira", "psoft",
    "pvera", "randlora", "vblora", "tinylora", "unilora", "lily",
    "gralora", "delora", "beft", "glora", "peanut", "trainable-tokens", "deft",
    "oft", "boft", "hra", "road", "miss", "lokr",
}  # fmt: skip
NO_AUTOCAST = (PEFT_OTHER | LORA_VARIANTS | PROMPT_OTHER) - AUTOCAST_MODELLED
# peft wraps no transformers Conv1D (GPT-2's) for these, or ftmem does not model it
NO_CONV1D = PEFT_OTHER - {"adalora"} | LORA_VARIANTS - {"adalora"}
# MoE families with dense or shared MLPs that peft's all-linear turns into LoRA on the router
# and the routed experts' 3-D weights: refused (ftmem.methods._check_all_linear)
ALL_LINEAR_REFUSED = {
    "deepseek_v2",
    "deepseek_v3",
    "dots1",
    "ernie4_5_moe",
    "exaone_moe",
    "glm4_moe",
    "qwen2_moe",
}
# families whose quantised form bitsandbytes makes differently (Family.quantisation_unmodelled)
QUANT_REFUSED = {"qwen2_moe", "hunyuan_v1_moe"}
# measured on decoder-only language models only (refused on image-text ones)
TEXT_ONLY = PEFT_OTHER - {"adalora"} | LORA_VARIANTS - {"adalora"} | {"ln-tuning"} | PROMPT_OTHER
# their parameters stay fp32 (BOFT's solve, PSOFT's frozen factors, RandLoRA's bases)
FP32_ONLY = {"boft", "psoft", "randlora", "deft"}
# kept fp32 by peft and not measured under the engines' 16-bit casts, which Gemini always
# applies (OFT only with the exact solve, not in the grid: ftmem.engine_cast)
CAST_UNMODELLED = set(UNMODELLED) - {"oft"}
METHODS = sorted(
    {"full", "freeze", "partial", "galore", "bitfit", "adapter", "ia3", "ln-tuning"}
    | LORA
    | PROMPT
    | PROMPT_OTHER
    | PEFT_OTHER
    | LORA_VARIANTS
)
DEEPSPEED = {"zero1", "zero2", "zero3"}
FSDP = {"fsdp", "fsdp-hybrid", "fsdp-grad-op", "fsdp-no-shard"}
CAI_ZERO = {"colossalai-zero1", "colossalai-zero2"}  # ColossalAI's ZeRO (LowLevelZero/Hybrid)
COLOSSALAI = CAI_ZERO | {"colossalai-3d", "colossalai-gemini"}
# bitsandbytes' optimizers, which do not run on FSDP2's DTensor parameters (bitsandbytes
# issue #1633; ftmem.paged_ranks): under FSDP, FSDP1 only
BNB = {
    "adamw-8bit", "paged-adamw-8bit", "paged-adamw", "paged-lion", "paged-lion-8bit",
    "lion-32bit", "lion-8bit", "adamw-32bit",
}  # fmt: skip

# Every option of `estimate` with choices, each with all its values (flags: given or not).
ESTIMATE: dict[str, list[str]] = {
    "model": MODELS,
    "--method": METHODS,
    "--precision": ["fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"],
    "--optimizer": [
        "adamw", "adamw-fp32", "adamw-8bit", "paged-adamw-8bit", "ao-adamw-8bit",
        "ao-adamw-4bit", "ao-adamw-fp8", "sgd", "sgd-momentum", "adafactor", "lion",
    ],
    "--optimizer-impl": ["foreach", "for-loop", "fused"],
    "--attn": ["eager", "sdpa", "flash"],
    "--loss": ["standard", "shifted", "chunked", "linear-chunked", "fused"],
    "--objective": [OMIT, "sft", "dpo", "ipo", "simpo", "orpo", "kto", "apo-zero-unpaired"],
    "--precompute-ref": [OMIT, "--precompute-ref", "--no-precompute-ref"],
    "--autocast": [OMIT, "--autocast", "--no-autocast"],
    "--grad-ckpt": [OMIT, "--grad-ckpt", "--no-grad-ckpt"],
    "--activation-offload": [OMIT, "--activation-offload"],
    "--optimizer-in-backward": [OMIT, "--optimizer-in-backward"],
    "--quant": [OMIT, "nf4", "fp4", "int8", "int4"],
    "--double-quant": [OMIT, "--double-quant", "--no-double-quant"],
    "--compute-dtype": [OMIT, "bf16", "fp16", "fp32"],
    "--adapter-dtype": [OMIT, "auto", "fp32", "bf16", "fp16"],
    "--lora-targets": [OMIT, "all-linear", "attention", "q,v", "k,o"],
    "--lora-modules-to-save": [OMIT, "embed", "head", "embed,head"],
    "--adapter-placement": [OMIT, "houlsby", "pfeiffer"],
    "--ia3-targets": [OMIT, "k,v", "q,o"],
    "--lora-fa": [OMIT, "--lora-fa"],
    "--miss-init": [OMIT, "bat", "mini"],
    "--road-variant": [OMIT, "road_2", "road_4"],
    "--oft-block-share": [OMIT, "--oft-block-share"],
    "--lokr-decompose-both": [OMIT, "--lokr-decompose-both"],
    "--adamss-asa": [OMIT, "--adamss-asa"],
    "--prompt-encoder": [OMIT, "mlp", "lstm"],
    "--prefix-projection": [OMIT, "--prefix-projection", "--no-prefix-projection"],
    "--trainable-layers": [OMIT, "1", "3"],
    "--trainable-modules": [OMIT, "attn|ttention", "norm|layer_norm|ln_"],
    "--galore-targets": [OMIT, "attention", "all-linear"],
    "--accounting": ["phases", "simple"],
    "--gpu": [OMIT, "rtx4090", "h100-80gb"],
    "--gpus": [OMIT, "1", "2", "8"],
    "--nodes": ["1", "2"],
    "--strategy": [OMIT, "single", "ddp", *sorted(DEEPSPEED), *sorted(FSDP), *sorted(COLOSSALAI)],
    "--tp": ["1", "2"],
    "--pp": ["1", "2"],
    "--cp": ["1", "2"],
    "--ep": ["1", "2"],
    "--sp-mode": [OMIT, "split_gather", "ring", "all_to_all", "ring_attn"],
    "--pp-chunks": ["1", "2"],
    "--grad-accum": [OMIT, "2"],
    "--offload-optimizer": [OMIT, "none", "cpu", "nvme"],
    "--offload-params": [OMIT, "none", "cpu", "nvme"],
    "--fsdp-sharded-ends": [OMIT, "--fsdp-sharded-ends"],
    "--fsdp-version": [OMIT, "1", "2"],
    "--zero-force-ds-cpu-optimizer": [OMIT, "--zero-force-ds-cpu-optimizer", "--no-zero-force-ds-cpu-optimizer"],
    "--gemini-placement": [OMIT, "static", "auto"],
    "--gemini-offload-optim-frac": [OMIT, "0.5"],
    "--gemini-shard-param-frac": [OMIT, "0.9"],
    "--teacher": [OMIT, "gpt2", "llama2-7b"],
    "--teacher-weights": [OMIT, "bf16", "fp8", "int8", "nf4", "int4"],
    "--emit": [OMIT, "deepspeed", "accelerate", "fsdp", "colossalai"],
    "--format": ["json", "yaml", "csv", "markdown", "table"],
    "--check": [OMIT, "--check"],
    "--units": ["GiB", "GB"],
}  # fmt: skip

FLAGS = {name for name, values in ESTIMATE.items() if any(v.startswith("--") for v in values)}

# Method-specific options and the methods that take them (`ftmem estimate --help`).
ONLY_FOR: dict[str, set[str]] = {
    "--quant": {"qlora"},
    "--double-quant": {"qlora"},
    "--compute-dtype": {"qlora"},
    "--lora-targets": LORA | LORA_VARIANTS,
    "--lora-modules-to-save": LORA | LORA_VARIANTS,
    "--lora-fa": {"lora", "rslora"},  # peft's LoRA-FA optimizer
    "--miss-init": {"miss"},
    "--road-variant": {"road"},
    "--oft-block-share": {"oft"},
    "--lokr-decompose-both": {"lokr"},
    "--adamss-asa": {"adamss"},
    # (auto, the default, goes with any)
    "--adapter-dtype": LORA
    | LORA_VARIANTS
    | PEFT_OTHER - {"c3a", "tinylora", "unilora", "lily", "osf", "adamss"}
    | {"adapter", "ia3"},
    "--adapter-placement": {"adapter"},
    "--ia3-targets": {"ia3"},
    "--prompt-encoder": {"p-tuning"},
    "--prefix-projection": {"prefix-tuning"},
    "--trainable-layers": {"freeze"},
    "--trainable-modules": {"partial"},
    "--galore-targets": {"galore"},
}
SEQ2SEQ_METHODS = {"full", "freeze", "galore", "lora", "rslora", "dora", "qlora"}
# peft 0.21's prefix-tuning runs on these (its prefix cache fits their attention)
PREFIX_FAMILIES = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi3",
    "gpt2",
}


@functools.cache
def _pair_ok(a: str, x: str, b: str, y: str) -> bool:
    """Whether two option values can appear in one accepted run: the rules between two
    options, each from the tool that imposes it."""
    v = {a: x, b: y}
    if "model" in v:
        return _model_ok(v["model"], *next((k, w) for k, w in v.items() if k != "model"))
    # peft / bitsandbytes: an option of one method is meaningless with another
    given = {k for k, w in v.items() if k in ONLY_FOR and w not in (OMIT, "auto")}
    if any("--method" in v and v["--method"] not in ONLY_FOR[k] for k in given):
        return False
    if given == {a, b} and not ONLY_FOR[a] & ONLY_FOR[b]:
        return False  # options of two different methods
    if "--ep" in v and v["--ep"] == "2" and "--strategy" not in v:
        # expert parallel is ColossalAI's ZeRO: what both its strategies refuse, it refuses
        ((other, value),) = ((k, w) for k, w in v.items() if k != "--ep")
        if not any(_pair_ok("--strategy", s, other, value) for s in sorted(CAI_ZERO)):
            return False
    return not any(forbidden(v) for forbidden in PAIR_RULES)


def _is(v: dict[str, str], option: str, *values: str) -> bool:
    return v.get(option, "") in values


def _given(v: dict[str, str], option: str) -> bool:
    return option in v and v[option] not in (OMIT, "none")


PREFERENCE = ["dpo", "ipo", "simpo", "orpo", "kto", "apo-zero-unpaired"]
# ColossalAI shardformer's policies for the families above (shardformer/policies/
# auto_policy.py at hpcaitech/ColossalAI 4f9953be335e; HybridParallelPlugin needs one) and
# the sequence parallelism modes each runs: Qwen2's and Mixtral's modeling refuse ring_attn,
# GPT-2's policy all_to_all; Mistral's, Falcon's and T5's warn and ignore every mode
SP_ALL = {"split_gather", "ring", "all_to_all", "ring_attn"}
SHARDFORMER: dict[str, set[str]] = {
    "llama": SP_ALL,
    "qwen2": SP_ALL - {"ring_attn"},
    "mixtral": SP_ALL - {"ring_attn"},
    "gpt2": SP_ALL - {"all_to_all"},
    "mistral": set(),
    "falcon": set(),
    "t5": set(),
}
# the methods ColossalAI's booster treats as LoRA (enable_lora; ftmem.run.ADAPTER_METHODS)
BOOSTER_LORA = LORA | LORA_VARIANTS
GEMINI_OPTIONS = ("--gemini-placement", "--gemini-offload-optim-frac", "--gemini-shard-param-frac")
# the Gemini options that, given, say the strategy is Gemini (static placement is not one)
GEMINI_IMPLIED = ("--gemini-offload-optim-frac", "--gemini-shard-param-frac")
# Multi-GPU settings, and what ftmem models on one GPU only
MULTI = {"--strategy": ["ddp", *DEEPSPEED, *FSDP, *COLOSSALAI], "--gpus": ["2", "8"]}
MULTI["--nodes"] = ["2"]
MULTI |= {k: ["2"] for k in ("--tp", "--pp", "--cp", "--ep", "--pp-chunks")}
MULTI["--sp-mode"] = ["split_gather", "ring", "all_to_all", "ring_attn"]
MULTI |= {k: ["cpu", "nvme"] for k in ("--offload-optimizer", "--offload-params")}
ONE_GPU = {
    "--accounting": ["simple"],  # the seed's single-GPU sum
    "--optimizer-in-backward": ["--optimizer-in-backward"],
    "--teacher": ["gpt2", "llama2-7b"],  # distillation
    "--teacher-weights": [w for w in ESTIMATE["--teacher-weights"] if w != OMIT],
}
PARALLEL = ("--gpus", "--nodes", "--tp", "--pp", "--cp", "--ep")
MODEL_PARALLEL = ("--tp", "--pp", "--cp")
EMIT_FOR = {
    "deepspeed": DEEPSPEED,
    "fsdp": FSDP,
    "accelerate": {"ddp"} | DEEPSPEED | FSDP,
    "colossalai": {"ddp"} | FSDP | COLOSSALAI,
}

# Each rule names a pair of values that no run accepts.
PAIR_RULES: list[Callable[[dict[str, str]], bool]] = [
    # ftmem's partial needs its patterns
    lambda v: _is(v, "--method", "partial") and _is(v, "--trainable-modules", OMIT),
    # galore_torch: GaLoreAdamW and GaLoreAdamW8bit only
    lambda v: (
        _is(v, "--method", "galore")
        and "--optimizer" in v
        and not _is(v, "--optimizer", "adamw", "adamw-8bit")
    ),
    # peft refuses gradient checkpointing with a prefix in the KV cache
    lambda v: (
        _is(v, "--grad-ckpt", "--grad-ckpt")
        and (_is(v, "--method", "prefix-tuning", "cartridge") or _given(v, "--prefix-projection"))
    ),
    # (ftmem models the adaption prompt's gated attention on data-parallel ranks only)
    lambda v: (
        _is(v, "--method", "adaption-prompt")
        and (any(_is(v, o, "2") for o in MODEL_PARALLEL) or _given(v, "--sp-mode"))
    ),
    # torch's fused kernels are AdamW's and SGD's (not bitsandbytes', torchao's,
    # Adafactor's, Lion's, nor galore_torch's)
    lambda v: (
        _is(v, "--optimizer-impl", "fused")
        and (
            _is(v, "--optimizer", "adamw-8bit", "paged-adamw-8bit", "adafactor", "lion")
            or _is(v, "--optimizer", "ao-adamw-8bit", "ao-adamw-4bit", "ao-adamw-fp8")
            or _is(v, "--method", "galore")
        )
    ),
    lambda v: (
        _is(v, "--method", *NO_AUTOCAST)
        and (
            _is(v, "--precision", "bf16-mixed", "fp16-mixed") or _is(v, "--autocast", "--autocast")
        )
    ),
    # MiSS's bat init under autocast is not modelled (refused)
    lambda v: (
        _is(v, "--miss-init", "bat")
        and (
            _is(v, "--precision", "bf16-mixed", "fp16-mixed") or _is(v, "--autocast", "--autocast")
        )
    ),
    # peft's LoRA-FA steps with its own AdamW loop (LoraFAOptimizer)
    lambda v: (
        _is(v, "--lora-fa", "--lora-fa")
        and (
            ("--optimizer" in v and not _is(v, "--optimizer", "adamw"))
            or _is(v, "--optimizer-impl", "fused")
            or _is(v, "--optimizer-in-backward", "--optimizer-in-backward")
        )
    ),
    # (its optimizer steps whole lora_A/lora_B pairs by name: DDP's unsharded parameters)
    lambda v: (
        _is(v, "--lora-fa", "--lora-fa") and _is(v, "--strategy", *DEEPSPEED, *FSDP, *COLOSSALAI)
    ),
    # (FP32_ONLY: their parameters stay fp32 in peft)
    lambda v: _is(v, "--method", *FP32_ONLY) and _is(v, "--adapter-dtype", "bf16", "fp16"),
    # AdaLoRA's rank allocator reads every gradient after the optimizer step
    lambda v: (
        _is(v, "--method", "adalora")
        and _is(v, "--optimizer-in-backward", "--optimizer-in-backward")
    ),
    # double quantisation is bitsandbytes' (not GPTQ/AWQ int4)
    lambda v: _is(v, "--quant", "int4") and _given(v, "--double-quant"),
    # autocast needs a 16-bit compute dtype; *-mixed means autocast
    lambda v: _is(v, "--precision", "fp32") and _is(v, "--autocast", "--autocast"),
    lambda v: (
        _is(v, "--precision", "bf16-mixed", "fp16-mixed") and _is(v, "--autocast", "--no-autocast")
    ),
    lambda v: _is(v, "--teacher", OMIT) and _given(v, "--teacher-weights"),
    # ftmem's preference objectives: TRL's log-probabilities over full logits, no teacher;
    # a precomputed reference is that of the objectives with one (dpo, ipo, kto, apo)
    lambda v: (
        _is(v, "--objective", *PREFERENCE)
        and _is(v, "--loss", "shifted", "chunked", "linear-chunked", "fused")
    ),
    lambda v: _is(v, "--objective", *PREFERENCE) and _given(v, "--teacher"),
    lambda v: (
        _is(v, "--precompute-ref", "--precompute-ref")
        and "--objective" in v
        and not _is(v, "--objective", "dpo", "ipo", "kto", "apo-zero-unpaired")
    ),
    # TRL's KTOTrainer refuses a micro-batch of one completion (the default batch here)
    lambda v: _is(v, "--objective", "kto"),
    lambda v: (
        _is(v, "--precompute-ref", "--precompute-ref")
        and (_given(v, "--teacher") or _given(v, "--teacher-weights"))
    ),
    # DeepSpeed's pipeline engine runs ZeRO stage 0 or 1 only
    lambda v: _is(v, "--strategy", "zero2", "zero3") and _is(v, "--pp", "2"),
    # offload: the optimizer under ZeRO (DeepSpeed's, ColossalAI's), FSDP or Gemini, the
    # weights under ZeRO-3, FSDP or Gemini
    lambda v: (
        _given(v, "--offload-optimizer")
        and "--strategy" in v
        and not _is(v, "--strategy", *DEEPSPEED, *FSDP, *CAI_ZERO, "colossalai-gemini")
    ),
    lambda v: (
        _given(v, "--offload-params")
        and "--strategy" in v
        and not _is(v, "--strategy", "zero3", *FSDP, "colossalai-gemini")
    ),
    # the embedding and the head as FSDP units of their own: FSDP only
    lambda v: (
        _given(v, "--fsdp-sharded-ends") and "--strategy" in v and not _is(v, "--strategy", *FSDP)
    ),
    # torch's FSDP implementation: FSDP strategies only
    lambda v: _given(v, "--fsdp-version") and "--strategy" in v and not _is(v, "--strategy", *FSDP),
    lambda v: _is(v, "--optimizer", *BNB) and _is(v, "--fsdp-version", "2"),
    # DeepSpeed's zero_force_ds_cpu_optimizer: DeepSpeed strategies only
    lambda v: (
        _is(v, "--zero-force-ds-cpu-optimizer", "--no-zero-force-ds-cpu-optimizer")
        and "--strategy" in v
        and not _is(v, "--strategy", *DEEPSPEED)
    ),
    # ColossalAI (hpcaitech/ColossalAI 4f9953be335e): CPU offload only; HybridParallel takes
    # zero_stage 2 without a pipeline only; Gemini: no pipeline, no sequence split without
    # tensor parallel, no LoRA (support_lora False), 16-bit (so none of FP32_ONLY: ftmem's
    # engine_cast), HybridAdam, no GaLore
    lambda v: (
        _is(v, "--strategy", *COLOSSALAI)
        and (_is(v, "--offload-optimizer", "nvme") or _is(v, "--offload-params", "nvme"))
    ),
    lambda v: _is(v, "--strategy", "colossalai-zero2", "colossalai-gemini") and _is(v, "--pp", "2"),
    lambda v: _is(v, "--strategy", "colossalai-gemini") and _is(v, "--cp", "2"),
    lambda v: (
        _is(v, "--strategy", "colossalai-gemini")
        and _is(v, "--method", *BOOSTER_LORA, *FP32_ONLY, *CAST_UNMODELLED, "galore")
    ),
    lambda v: _is(v, "--strategy", "colossalai-gemini") and _is(v, "--precision", "fp32"),
    lambda v: (
        _is(v, "--strategy", "colossalai-gemini")
        and "--optimizer" in v
        and not _is(v, "--optimizer", "adamw", "adamw-fp32")
    ),
    lambda v: _is(v, "--strategy", *COLOSSALAI) and _is(v, "--method", "galore"),
    # GeminiPlugin's static fractions: Gemini's only; the optimizer's is --offload-optimizer
    # cpu's finer form; weights leave the GPU only with both fractions at 1
    lambda v: (
        _given(v, "--gemini-offload-optim-frac")
        and "--strategy" in v
        and not _is(v, "--strategy", "colossalai-gemini")
    ),
    lambda v: (
        _given(v, "--gemini-shard-param-frac")
        and "--strategy" in v
        and not _is(v, "--strategy", "colossalai-gemini")
    ),
    lambda v: _given(v, "--gemini-offload-optim-frac") and _given(v, "--offload-optimizer"),
    # (and what Gemini itself refuses, with an option that implies it)
    lambda v: (
        (any(_given(v, o) for o in GEMINI_IMPLIED) or _is(v, "--gemini-placement", "auto"))
        and (
            _is(v, "--method", *BOOSTER_LORA, *FP32_ONLY, *CAST_UNMODELLED, "galore")
            or _is(v, "--precision", "fp32")
            or _is(v, "--pp", "2")
            or _is(v, "--cp", "2")
            or _is(v, "--ep", "2")
            or _is(v, "--offload-optimizer", "nvme")
            or _is(v, "--offload-params", "nvme")
            or _is(v, "--emit", "deepspeed", "accelerate", "fsdp")
            or ("--optimizer" in v and not _is(v, "--optimizer", "adamw", "adamw-fp32"))
        )
    ),
    lambda v: (
        _is(v, "--gemini-placement", "auto")
        and "--strategy" in v
        and not _is(v, "--strategy", "colossalai-gemini")
    ),
    lambda v: (
        _is(v, "--gemini-placement", "auto")
        and any(
            _given(v, o)
            for o in (
                "--offload-optimizer",
                "--offload-params",
                "--gemini-offload-optim-frac",
                "--gemini-shard-param-frac",
            )
        )
    ),
    lambda v: (
        _is(v, "--offload-params", "cpu")
        and (_given(v, "--gemini-offload-optim-frac") or _given(v, "--gemini-shard-param-frac"))
    ),
    # ColossalAI's sequence parallelism modes (sequence_parallelism_mode): split_gather and
    # ring inside the TP group, all_to_all and ring_attn over sp (--cp) ranks; Gemini takes
    # shardformer's default (split_gather) only
    lambda v: (
        _given(v, "--sp-mode") and "--strategy" in v and not _is(v, "--strategy", *COLOSSALAI)
    ),
    lambda v: _is(v, "--sp-mode", "split_gather", "ring") and _is(v, "--tp", "1"),
    lambda v: _is(v, "--sp-mode", "split_gather", "ring") and _is(v, "--cp", "2"),
    lambda v: _is(v, "--sp-mode", "all_to_all", "ring_attn") and _is(v, "--cp", "1"),
    lambda v: (
        _is(v, "--sp-mode", "ring", "all_to_all", "ring_attn")
        and _is(v, "--strategy", "colossalai-gemini")
    ),
    # the interleaved pipeline: ColossalAI's, a multiple of the stages in micro-batches
    # (interleaved_pp.py:88-90)
    lambda v: (
        _is(v, "--pp-chunks", "2") and "--strategy" in v and not _is(v, "--strategy", *COLOSSALAI)
    ),
    lambda v: _is(v, "--pp-chunks", "2") and _is(v, "--pp", "1"),
    # (ftmem lays out interleaved chunks for stacks whose blocks all train alike)
    lambda v: _is(v, "--pp-chunks", "2") and _is(v, "--method", "freeze"),
    # (what the strategies these need refuse: ZeRO-2 and Gemini take no pipeline, Gemini
    # no other mode, the weights leave the GPU under Gemini only, NVMe is DeepSpeed's;
    # the other engines' configs)
    lambda v: (
        _is(v, "--pp-chunks", "2")
        and (
            _is(v, "--strategy", "colossalai-zero2", "colossalai-gemini")
            or _given(v, "--offload-params")
            or _is(v, "--offload-optimizer", "nvme")
            or _is(v, "--emit", "deepspeed", "accelerate", "fsdp")
            or any(_given(v, o) for o in GEMINI_OPTIONS)
        )
    ),
    lambda v: (
        _given(v, "--sp-mode")
        and (
            _is(v, "--offload-optimizer", "nvme")
            or _is(v, "--offload-params", "nvme")
            or _is(v, "--emit", "deepspeed", "accelerate", "fsdp")
        )
    ),
    lambda v: (
        _is(v, "--sp-mode", "ring", "all_to_all", "ring_attn")
        and (_given(v, "--offload-params") or any(_given(v, o) for o in GEMINI_OPTIONS))
    ),
    # (split_gather and ring need --tp, which HybridParallelPlugin's enable_lora refuses)
    lambda v: _is(v, "--sp-mode", "split_gather", "ring") and _is(v, "--method", *BOOSTER_LORA),
    # (ColossalAI's GaLore turns ZeRO off: refused under every ColossalAI strategy)
    lambda v: (
        (_given(v, "--sp-mode") or _is(v, "--pp-chunks", "2")) and _is(v, "--method", "galore")
    ),
    lambda v: _is(v, "--pp-chunks", "2") and _is(v, "--grad-accum", OMIT),
    # one optimizer step per micro-batch
    lambda v: (
        _is(v, "--optimizer-in-backward", "--optimizer-in-backward") and _is(v, "--grad-accum", "2")
    ),
    # (LoRA on the routed experts, which all-linear reaches, is modelled data parallel only)
    lambda v: _is(v, "--ep", "2") and _is(v, "--lora-targets", "all-linear"),
    # expert parallel: ColossalAI's MoeHybridParallelPlugin, with ZeRO
    lambda v: _is(v, "--ep", "2") and "--strategy" in v and not _is(v, "--strategy", *CAI_ZERO),
    # FSDP offloads to the CPU only, weights and optimizer together (CPUOffload)
    lambda v: (
        _is(v, "--strategy", *FSDP)
        and (_is(v, "--offload-optimizer", "nvme") or _is(v, "--offload-params", "nvme"))
    ),
    lambda v: _is(v, "--offload-optimizer", "nvme") and _is(v, "--offload-params", "cpu"),
    # TRL's preference trainers run data parallel only
    lambda v: (
        _is(v, "--objective", *PREFERENCE)
        and (
            any(_is(v, o, "2") for o in MODEL_PARALLEL)
            or _given(v, "--sp-mode")
            or _is(v, "--pp-chunks", "2")
        )
    ),
    # the one-GPU features, with any multi-GPU setting
    lambda v: (
        any(_is(v, m, *mv) for m, mv in MULTI.items())
        and any(_is(v, o, *ov) for o, ov in ONE_GPU.items())
    ),
    # --strategy single is one GPU
    lambda v: _is(v, "--strategy", "single") and any(_is(v, p, "2", "8") for p in PARALLEL),
    # --emit: DeepSpeed's config for ZeRO, FSDP's for FSDP, Accelerate's for either or DDP;
    # none for a pipeline (it needs a PipelineModule in the training code); an omitted
    # strategy is DDP on several GPUs (the rows' rule)
    lambda v: (
        _given(v, "--emit")
        and "--strategy" in v
        and not _is(v, "--strategy", OMIT, *EMIT_FOR[v["--emit"]])
    ),
    lambda v: _is(v, "--emit", "deepspeed", "fsdp") and _is(v, "--strategy", OMIT),
    lambda v: _is(v, "--emit", "fsdp") and _is(v, "--offload-optimizer", "nvme"),
    lambda v: _is(v, "--emit", "fsdp") and _is(v, "--offload-params", "nvme"),
    lambda v: _is(v, "--emit", "deepspeed", "accelerate", "fsdp") and _is(v, "--pp", "2"),
    lambda v: _given(v, "--emit") and any(_is(v, o, *ov) for o, ov in ONE_GPU.items()),
]


def _colossalai_model_ok(model: str, option: str, value: str) -> bool:
    """ColossalAI's rules between one model and one option value."""
    arch = model_presets()[model]
    gemini = option in GEMINI_IMPLIED and value != OMIT
    gemini |= option == "--gemini-placement" and value == "auto"
    gemini |= option == "--strategy" and value == "colossalai-gemini"
    if gemini and arch.encoder_decoder:
        return False  # ftmem lays out Gemini's chunks for decoder-only models
    if option == "--strategy" and value == "colossalai-3d":  # HybridParallelPlugin's policy
        return arch.family in SHARDFORMER
    if option == "--pp-chunks" and value == "2":  # two stages of two chunks, a policy
        return arch.num_layers % 4 == 0 and arch.family in SHARDFORMER
    if option == "--sp-mode" and value != OMIT:  # shardformer's policy for the family
        return value in SHARDFORMER.get(arch.family, ())
    return True


@functools.cache
def _ln_tuning_types() -> set[str]:
    """The model types peft's LN tuning has default targets for (Gemma 3's text model is
    ``gemma3_text`` there)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING

    return {t.removesuffix("_text") for t in TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING}


def _parallel_model_ok(arch, option: str, value: str) -> bool:
    """How one model splits over tensor, pipeline, context and expert ranks in ftmem."""
    if value != "2" or option not in ("--tp", "--pp", "--cp", "--ep"):
        return True
    if option != "--pp" and arch.family == "gpt_oss":
        return False  # ftmem splits neither its attention sinks nor its biased experts
    if option in ("--tp", "--cp") and arch.kv_lora_rank:
        return False  # nor DeepSeek's latent attention
    if option == "--tp":  # Megatron splits heads and MLP columns evenly
        return all(n % 2 == 0 for n in (arch.num_heads, arch.kv_heads, arch.intermediate_size))
    if option == "--pp":  # (a stack of dense then MoE blocks is not split in stages)
        return arch.num_layers % 2 == 0 and not arch.dense_layers
    if option == "--ep":  # experts split in two
        return arch.is_moe and arch.num_experts % 2 == 0
    return True


def _tiles(arch, width: int) -> bool:
    """Whether ``width`` divides the default q and v projections' sides."""
    head = arch.head_dim or arch.hidden_size // arch.num_heads
    return all(n % width == 0 for n in (arch.hidden_size, head * arch.kv_heads))


def _odd_embedding_path(arch) -> bool:
    """Where ftmem refuses trainable tokens (its tiny models measured off): latent
    attention, attention sinks, a soft-capped head, learned positions."""
    odd = arch.kv_lora_rank or arch.family == "gpt_oss" or arch.final_logit_softcapping
    return bool(odd) or arch.position_embedding == "learned"


def _method_model_ok(arch, method: str) -> bool:
    """Rules between one model and one method."""
    if method == "bitfit":
        return arch.has_biases
    if method in ("prefix-tuning", "cartridge"):  # peft 0.21's prefix cache must fit
        return arch.family in PREFIX_FAMILIES
    if method == "adaption-prompt":  # peft's TRANSFORMERS_MODEL_CONFIG, text only, and
        # k_proj's features read as heads x head_dim (peft's own arithmetic)
        whole = arch.hidden_size == arch.num_heads * arch.head_size
        return arch.family in ("llama", "mistral", "gpt2") and arch.vision is None and whole
    if method == "adapter":  # no MLP output linear after the experts
        return not arch.is_moe
    if method in NO_CONV1D and arch.family == "gpt2":
        return False  # transformers' Conv1D layers (ftmem.methods)
    if method == "ln-tuning" and arch.family not in _ln_tuning_types():
        return False  # peft has no default LN-tuning targets for the model type
    if method in TEXT_ONLY and arch.vision is not None:
        return False
    if method == "trainable-tokens" and _odd_embedding_path(arch):
        return False
    if method == "relora" and arch.family in ALL_LINEAR_REFUSED:
        return False  # (ReLoRA's all-linear default: the router and 3-D experts)
    if method == "qlora" and arch.family in QUANT_REFUSED:
        return False
    if method == "glora" and arch.attention_qkv_bias:
        return False  # (its linears with a bias are not modelled: Qwen2's q and v)
    # peft's 256-wide vectors (blocks) must tile q and v (peft refuses; DeepSeek's latent
    # projections are 576 wide)
    return method not in ("vblora", "c3a") or (_tiles(arch, 256) and not arch.kv_lora_rank)


def _model_ok(model: str, option: str, value: str) -> bool:
    """Rules between one model and one option value."""
    arch = model_presets()[model]
    given = option in ONLY_FOR and value not in (OMIT, "auto")
    if given and not any(_model_ok(model, "--method", m) for m in ONLY_FOR[option]):
        return False  # a method's own option goes where one of its methods runs
    if arch.encoder_decoder:
        # what ftmem's encoder-decoder path models (docs/seq2seq.md): data parallel only
        refused = {
            "--method": set(METHODS) - SEQ2SEQ_METHODS,
            "--loss": {"shifted", "chunked", "linear-chunked", "fused"},
            "--objective": set(PREFERENCE),  # decoder-only (docs/objectives.md)
            "--precompute-ref": {"--precompute-ref"},
            "--activation-offload": {"--activation-offload"},
            "--optimizer-in-backward": {"--optimizer-in-backward"},
            "--lora-modules-to-save": {"embed", "head", "embed,head"},
            "--quant": {"int4"},
            "--attn": {"flash"},  # transformers' T5 has no FlashAttention path
            "--tp": {"2"},
            "--pp": {"2"},
            "--cp": {"2"},
            "--teacher": {"gpt2", "llama2-7b"},
        }
        if value in refused.get(option, ()):
            return False
    if not _colossalai_model_ok(model, option, value):
        return False
    if not _parallel_model_ok(arch, option, value):
        return False
    if option == "--method" and not _method_model_ok(arch, value):
        return False
    if option == "--lora-targets" and value == "all-linear" and arch.family in ALL_LINEAR_REFUSED:
        return False  # peft's all-linear reaches the router and 3-D expert weights
    if option == "--lora-modules-to-save" and value != OMIT and arch.tie_embeddings:
        return False
    if option == "--teacher" and value != OMIT:  # logit distillation needs one tokenizer
        return model_presets()[value].vocab_size == arch.vocab_size
    return True


def _colossalai_row_ok(g: dict[str, str], strategy: str, model_parallel: int) -> bool:
    """ColossalAI's rules over more than two options (hpcaitech/ColossalAI 4f9953be335e)."""
    if g["--emit"] == "colossalai" and strategy in ("ddp", *FSDP) and model_parallel > 1:
        return False  # TorchDDPPlugin / TorchFSDPPlugin: data parallel only
    if strategy in COLOSSALAI and g["--tp"] == "2" and g["--method"] in BOOSTER_LORA:
        return False  # HybridParallelPlugin's enable_lora asserts tp_size == 1
    if g["--emit"] == "colossalai" and strategy == "ddp" and g["--precision"] == "bf16-mixed":
        return False  # ColossalAI's BF16MixedPrecision is abstract
    if (
        strategy == "colossalai-gemini"
        and g["--offload-params"] == "cpu"
        and g["--offload-optimizer"] != "cpu"
    ):
        return False  # offload_param_frac needs offload_optim_frac = 1
    if strategy in COLOSSALAI and not _shardformer_ok(g, strategy, model_parallel):
        return False
    # HybridParallelPlugin refuses fp32 with ZeRO
    return not (strategy in CAI_ZERO and model_parallel > 1 and g["--precision"] == "fp32")


def _shardformer_ok(g: dict[str, str], strategy: str, model_parallel: int) -> bool:
    """Shardformer's policies (shardformer/policies/auto_policy.py): HybridParallelPlugin
    (and Gemini with tp) needs one for the model; --cp alone is all_to_all, which the
    family's policy must run; Mixtral's refuses sequence parallelism with a pipeline."""
    family = model_presets()[g["model"]].family
    hybrid = strategy == "colossalai-3d" or model_parallel > 1 or g["--ep"] == "2"
    if hybrid and family not in SHARDFORMER:
        return False
    mode = g["--sp-mode"] if g["--sp-mode"] != OMIT else "all_to_all" if g["--cp"] == "2" else None
    if mode is not None and mode not in SHARDFORMER.get(family, ()):
        return False
    return not (mode is not None and family == "mixtral" and g["--pp"] == "2")


def _autocast_row_ok(g: dict[str, str]) -> bool:
    """Under autocast MiSS bat and HRA with 16-bit hra_u are not modelled (refused)."""
    if not (g["--precision"].endswith("-mixed") or g["--autocast"] == "--autocast"):
        return True
    if g["--method"] == "miss":
        return g["--miss-init"] != "bat"
    return g["--method"] != "hra" or g["--adapter-dtype"] not in ("bf16", "fp16")


def _adapter_row_ok(g: dict[str, str], tp: int, strategy: str) -> bool:
    """Each tensor-parallel rank's shard of q and v tiled by VB-LoRA's vectors or C3A's
    blocks (256 wide); the methods whose 16-bit adapters ftmem does not model kept fp32,
    which DeepSpeed's and ColossalAI's 16-bit modes do not (OFT's only with the exact
    solve, not in the grid); the methods whose fp32 buffers DeepSpeed >= 0.19.2 keeps
    beside 16-bit parameters, unless the adapters (buffers too) are 16-bit already
    (ftmem.engine_cast); nor FSDP's mixed precision (it gathers them in 16-bit)."""
    cast = strategy in DEEPSPEED | COLOSSALAI and g["--precision"] != "fp32"
    if cast and g["--method"] in CAST_UNMODELLED:
        return False
    if cast and strategy in DEEPSPEED and g["--method"] in FP32_BUFFERS:
        return g["--adapter-dtype"] in ("bf16", "fp16")
    if g["--method"] in CAST_UNMODELLED and strategy in FSDP:
        return not g["--precision"].endswith("-mixed")
    if g["--method"] == "trainable-tokens" and g["--loss"] == "fused":
        return not model_presets()[g["model"]].tie_embeddings  # (a tied head's: refused)
    if not _autocast_row_ok(g):
        return False
    return g["--method"] not in ("vblora", "c3a") or _tiles(model_presets()[g["model"]], 256 * tp)


def _row_ok(row: dict[str, str]) -> bool:
    """Rules over more than two options."""
    g = {k: row.get(k, OMIT) for k in ESTIMATE}
    gpus = 1 if g["--gpus"] == OMIT else int(g["--gpus"])
    world = gpus * int(g["--nodes"])
    tp, pp, cp = int(g["--tp"]), int(g["--pp"]), int(g["--cp"])
    if world % (tp * pp * cp):  # the GPUs split into tp × pp × cp groups
        return False
    if (world // (tp * pp * cp)) % int(g["--ep"]):  # experts over the data-parallel ranks
        return False
    strategy = g["--strategy"]
    if strategy == OMIT and world > 1:
        strategy = "ddp"
    # one GPU for single; expert parallel under ColossalAI's ZeRO (with ddp implied)
    if (strategy == "single" and world > 1) or (g["--ep"] == "2" and strategy not in CAI_ZERO):
        return False
    if strategy == "fsdp-hybrid" and (world // (tp * pp * cp)) % int(g["--nodes"]):
        return False  # hybrid: each node holds one replica
    offload_opt, offload_params = g["--offload-optimizer"], g["--offload-params"]
    if strategy in FSDP and offload_opt == "cpu" and offload_params != "cpu":
        return False  # FSDP cannot move the optimizer alone (CPUOffload moves weights too)
    if strategy in FSDP and offload_params == "cpu" and offload_opt == "none":
        return False  # nor the weights without the optimizer step
    if strategy in FSDP and g["--optimizer"] in BNB and g["--fsdp-version"] != "1":
        return False  # bitsandbytes on FSDP2 (BNB)
    no_force = g["--zero-force-ds-cpu-optimizer"] == "--no-zero-force-ds-cpu-optimizer"
    if no_force and strategy not in DEEPSPEED:
        return False  # DeepSpeed's setting
    if strategy == OMIT and world == 1 and "cpu" in (offload_opt, offload_params):
        return False
    if g["--emit"] != OMIT and strategy in (OMIT, "single"):
        return False
    if g["--emit"] == "accelerate" and (tp > 1 or cp > 1) and strategy not in FSDP:
        return False  # Accelerate composes tensor/context parallel with FSDP only
    if not _colossalai_row_ok(g, strategy, max(tp, pp, cp)):
        return False
    if not _adapter_row_ok(g, tp, strategy):
        return False
    # T5 in pure fp16: transformers keeps its wo in fp32 (_keep_in_fp32_modules), which
    # ftmem does not model
    # (and under DeepSpeed's fp16 mode or FSDP's MixedPrecision, which run fp16 whole)
    fp16 = g["--precision"]
    pure_fp16 = fp16 == "fp16" and g["--autocast"] != "--autocast"
    pure_fp16 |= strategy in DEEPSPEED | COLOSSALAI and fp16.startswith("fp16")
    pure_fp16 |= strategy in FSDP and fp16 == "fp16-mixed"
    return not (model_presets()[g["model"]].encoder_decoder and pure_fp16)


# options that others depend on, chosen first in each row
FIRST = ("model", "--method", "--strategy", "--precision", "--teacher")
# the options the rules over many options involve: what a row's repair may change
SPREAD = (
    "model", "--precision", "--autocast", "--gpus", "--nodes", "--tp", "--pp", "--cp", "--ep",
    "--strategy", "--offload-optimizer", "--offload-params", "--emit", "--sp-mode",
    "--pp-chunks", "--grad-accum",
    "--gemini-offload-optim-frac", "--gemini-shard-param-frac", "--gemini-placement",
    "--adapter-dtype",
)  # fmt: skip


# -- an all-pairs generator -----------------------------------------------------------------


def all_pairs(  # noqa: C901 (debt: a seeded search; splitting it must keep its rows)
    domains: dict[str, list[str]],
    pair_ok: Callable[[str, str, str, str], bool] = lambda *_: True,
    row_ok: Callable[[dict[str, str]], bool] = lambda _: True,
    repairable: tuple[str, ...] = (),
    first: tuple[str, ...] = (),
    seed: int = 0,
) -> tuple[list[dict[str, str]], set[tuple[str, str, str, str]]]:
    """Rows that together hold every allowed pair of values of two options.

    Greedy, as AETG: each row starts from an uncovered pair; every other option then
    takes the value that covers most uncovered pairs with the values already chosen
    (``first`` options before the others: those that others depend on, the method
    before its options; an option that found no value goes first on the next try). A
    row that breaks a rule over more options (``row_ok``) is repaired by a short random
    walk over the ``repairable`` options. Returns the rows and the allowed pairs that no
    valid row could hold (to be reported, not hidden).
    """
    names = list(domains)
    # every (option, value) as a number, in option order: a pair is lo * size + hi
    items = [(n, v) for n in names for v in domains[n]]
    number = {item: i for i, item in enumerate(items)}
    size = len(items)
    ids = {n: [number[n, v] for v in domains[n]] for n in names}
    rng = random.Random(seed)

    def pair(i: int, j: int) -> int:
        return i * size + j if i < j else j * size + i

    forbidden, uncovered = set(), set()
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for p in ids[a]:
                for q in ids[b]:
                    ok = pair_ok(a, items[p][1], b, items[q][1])
                    (uncovered if ok else forbidden).add(pair(p, q))

    def named(row: dict[str, int]) -> dict[str, str]:
        return {n: items[row[n]][1] for n in names if n in row}

    def fits(row: dict[str, int], n: str, value: int) -> bool:
        return not any(pair(value, w) in forbidden for m, w in row.items() if m != n)

    rows: list[dict[str, str]] = []
    infeasible: set[int] = set()
    tries: dict[int, int] = {}
    stuck: dict[int, list[str]] = {}
    while uncovered:
        seed_pair = min(uncovered)
        p, q = divmod(seed_pair, size)
        row = {items[p][0]: p, items[q][0]: q}
        early = [*stuck.get(seed_pair, []), *first]
        rest = [n for n in names if n not in row and n not in early]
        rng.shuffle(rest)
        for n in dict.fromkeys(n for n in [*early, *rest] if n not in row):
            best, best_gain = None, -1
            for value in ids[n]:
                if not fits(row, n, value):
                    continue
                gain = sum(pair(value, w) in uncovered for w in row.values())
                if gain > best_gain or (gain == best_gain and rng.random() < 0.5):
                    best, best_gain = value, gain
            if best is None:
                stuck.setdefault(seed_pair, []).append(n)
                break
            row[n] = best
        complete = len(row) == len(names)
        walk = [n for n in repairable if n not in (items[p][0], items[q][0])]
        # (200 steps, 16 tries a seed pair: the engines' rules over method, strategy,
        # precision and adapter dtype, ftmem.engine_cast, need the longer walk)
        for _ in range(200 if complete and walk else 0):
            if row_ok(named(row)):
                break
            n = rng.choice(walk)
            row[n] = rng.choice([v for v in ids[n] if fits(row, n, v)] or [row[n]])
        if complete and row_ok(named(row)):
            values = list(row.values())
            held = {pair(i, j) for k, i in enumerate(values) for j in values[k + 1 :]}
            uncovered -= held
            infeasible -= held  # given up as a seed, held by a later row
            rows.append(named(row))
            continue
        tries[seed_pair] = tries.get(seed_pair, 0) + 1
        if tries[seed_pair] >= 16:
            uncovered.discard(seed_pair)
            infeasible.add(seed_pair)
    return rows, {(*items[k // size], *items[k % size]) for k in infeasible}


def argv_of(command: str, row: dict[str, str]) -> list[str]:
    argv = [command]
    if "model" in row:
        argv.append(row["model"])
    for name, value in row.items():
        if name == "model" or value == OMIT:
            continue
        argv += [value] if name in FLAGS else [name, value]
    return argv


# -- running one command and checking the contract ----------------------------------------


@functools.cache
def _command():
    """The click command typer builds from ``ftmem.cli.app``: built once here, where
    ``main`` rebuilds it on every call (about 20 ms, most of a refused run's time)."""
    import typer.main

    return typer.main.get_command(cli.app)


def run_cli(argv: list[str]) -> tuple[int, str, str, float]:
    """``ftmem.cli.main(argv)`` in-process: exit code, stdout, stderr, seconds."""
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code: int | str | None = 0
    with (
        mock.patch.object(cli_root, "_app_for", lambda _args: _command()),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    return (
        (code if isinstance(code, int) else 2),
        out.getvalue(),
        err.getvalue(),
        (time.perf_counter() - start),
    )


def contract_broken(argv: list[str], code: int, out: str, err: str, seconds: float) -> str | None:
    """What is wrong with one run, or None."""
    if seconds > MAX_SECONDS:
        return f"took {seconds:.1f} s"
    if len(out) > MAX_OUTPUT:
        return f"printed {len(out):,} characters"
    if code == 2:
        if out:
            return "exit 2 with output on stdout"
        if not err.startswith("Error: ") or err.count("\n") != 1 or not err.endswith("\n"):
            return f"exit 2 without exactly one line on stderr: {err[:300]!r}"
        return None
    if code not in (0, 1):
        return f"exit {code}"
    if err:
        return f"exit {code} with stderr: {err[:300]!r}"
    if not out.strip() and not {"--quiet", "-q"} & set(argv):
        return f"exit {code} with no output"
    unreadable = _unreadable_output(argv, code, out)
    if unreadable:
        return unreadable
    if code == 1 and "--check" not in argv and argv[0] == "estimate":
        return "exit 1 without --check"
    return None


def _unreadable_output(argv: list[str], code: int, out: str) -> str | None:
    """The output does not parse as the format (or emitted config) asked for."""
    fmt = argv[argv.index("--format") + 1] if "--format" in argv else "table"
    emit = argv[argv.index("--emit") + 1] if "--emit" in argv else None
    try:
        if emit == "deepspeed":
            data = json.loads(out)
            assert "zero_optimization" in data
        elif emit == "colossalai":  # a Python snippet around the plugin's construction
            assert "Plugin(" in out
            ast.parse(out)
        elif emit is not None:
            assert isinstance(yaml.safe_load(out), dict)
        elif fmt == "json":
            data = json.loads(out)
            if argv[0] == "estimate":
                assert data["memory"]["total_bytes"] > 0
                if code == 1:
                    assert data["fits"] is False
        elif fmt == "yaml":
            assert isinstance(yaml.safe_load(out), dict)
        elif fmt == "csv":
            assert len(list(csv.reader(io.StringIO(out)))) >= 2
    except (AssertionError, ValueError, KeyError, SyntaxError, yaml.YAMLError) as exc:
        return f"exit {code} with unreadable {emit or fmt} output ({type(exc).__name__})"
    return None


def check_all(argvs: Iterable[list[str]]) -> tuple[list[str], list[tuple[list[str], int, str]]]:
    """Run each argv; the contract breaks (with the exception for a traceback) and the
    outcomes."""
    broken, outcomes = [], []
    for argv in argvs:
        try:
            code, out, err, seconds = run_cli(argv)
        except Exception as exc:  # a traceback: the worst break
            broken.append(f"{' '.join(argv)}\n    raised {type(exc).__name__}: {exc}")
            continue
        problem = contract_broken(argv, code, out, err, seconds)
        if problem:
            broken.append(f"{' '.join(argv)}\n    {problem}")
        outcomes.append((argv, code, err.strip()))
    return broken, outcomes


# -- estimate: accepted rows and unconstrained rows -----------------------------------------


@pytest.fixture(scope="module")
def accepted_rows():
    return all_pairs(
        ESTIMATE, _pair_ok, _row_ok, SPREAD, FIRST, seed=31
    )  # a seed whose greedy rows hold every allowed pair


def test_the_grid_holds_every_method():
    """A method added to ftmem joins the grid (and its rules) here; LitGPT's adapters are
    refused without --framework litgpt, which this grid does not vary."""
    litgpt_only = {"llama-adapter", "llama-adapter-v2"}
    assert set(get_args(Method)) - litgpt_only == set(METHODS)


def test_the_generator_covers_every_allowed_pair(accepted_rows):
    """The all-pairs rows hold every pair the rules allow (checked here, independently of
    the generator's bookkeeping), and no allowed pair was found impossible."""
    rows, infeasible = accepted_rows
    names = list(ESTIMATE)
    held = {(a, r[a], b, r[b]) for r in rows for i, a in enumerate(names) for b in names[i + 1 :]}
    wanted = {
        (a, x, b, y)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        for x in ESTIMATE[a]
        for y in ESTIMATE[b]
        if _pair_ok(a, x, b, y)
    }
    missing = wanted - held
    assert missing == infeasible
    # each pair no row holds is truly impossible: some third option has no value that
    # goes with both of its values
    for a, x, b, y in infeasible:
        assert any(
            not any(_pair_ok(a, x, c, z) and _pair_ok(b, y, c, z) for z in ESTIMATE[c])
            for c in names
            if c not in (a, b)
        ), (a, x, b, y)
    assert all(_row_ok(r) for r in rows)
    assert all(
        _pair_ok(a, r[a], b, r[b])
        for r in rows
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    )


def test_every_accepted_combination_is_estimated(accepted_rows):
    rows, _ = accepted_rows
    broken, outcomes = check_all(argv_of("estimate", r) for r in rows)
    refused = [f"{' '.join(a)}\n    {e}" for a, code, e in outcomes if code == 2]
    assert not broken, "\n".join(broken[:20])
    assert not refused, f"{len(refused)} of {len(rows)} refused:\n" + "\n".join(refused[:20])


def forbidden_pairs() -> list[tuple[str, str, str, str]]:
    names = list(ESTIMATE)
    return [
        (a, x, b, y)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        for x in ESTIMATE[a]
        for y in ESTIMATE[b]
        if not _pair_ok(a, x, b, y)
    ]


def _violations(rows: list[dict[str, str]], count: int | None, seed: int) -> list[list[str]]:
    """Accepted rows with one forbidden pair of values put in: each must be refused."""
    pairs = forbidden_pairs()
    if count is not None:
        pairs = random.Random(seed).sample(pairs, count)
    return [
        argv_of("estimate", {**rows[i % len(rows)], a: x, b: y})
        for i, (a, x, b, y) in enumerate(pairs)
    ]


def test_every_forbidden_pair_is_refused_in_one_sentence(accepted_rows):
    """A sample of the pairs the rules forbid, each put into an accepted row: refused
    (exit 2), in one sentence; a run that goes through is a rule here the tool does not
    keep (a silent misread, or a rule to correct)."""
    rows, _ = accepted_rows
    broken, outcomes = check_all(_violations(rows, 120, seed=19))
    accepted = [" ".join(a) for a, code, _ in outcomes if code != 2]
    assert not broken, "\n".join(broken[:20])
    assert not accepted, "\n".join(accepted[:20])


# -- numbers: hypothesis --------------------------------------------------------------------

# Each numeric option with the method it applies to, and its kind.
NUMERIC = {
    "--batch-size": ("full", "int"),
    "--seq-len": ("full", "int"),
    "--target-len": ("full", "int"),
    "--grad-accum": ("full", "int"),
    "--trainable-layers": ("freeze", "int"),
    "--galore-rank": ("galore", "int"),
    "--lora-r": ("lora", "int"),
    "--lora-alpha": ("lora", "float"),
    "--lora-dropout": ("lora", "float"),
    "--adapter-size": ("adapter", "int"),
    "--virtual-tokens": ("p-tuning", "int"),
    "--encoder-hidden": ("p-tuning", "int"),
    "--gpus": ("full", "int"),
    "--nodes": ("full", "int"),
    "--tp": ("full", "int"),
    "--pp": ("full", "int"),
    "--cp": ("full", "int"),
    "--gpu-memory": ("full", "size"),
    "--overhead": ("full", "size"),
    "--host-memory": ("full", "size"),
}
EXTREME_INTS = [0, 1, 2, 3, 7, 64, 4096, 2**31, 2**31 + 1, 2**63, 2**64 + 1, 10**30]
integers = st.one_of(  # as the user types them
    st.integers(-4, 9000).map(str),
    st.sampled_from(EXTREME_INTS).map(str),
    st.integers(-(2**70), 2**70).map(str),
    # past the int64, the float and Python's 4,300-digit limits
    st.sampled_from([19, 20, 40, 309, 400, 4400]).map(lambda digits: "9" * digits),
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 300))
sizes = st.builds(
    lambda n, unit: f"{n}{unit}",
    st.one_of(integers, st.floats(allow_infinity=True, allow_nan=True)),
    st.sampled_from(["", "B", "KiB", "MiB", "GiB", "TiB", "GB", "TB", " GiB", "gib", "iB"]),
)
NUMBER_MODELS = ["gpt2", "llama2-7b", "t5-small", "mixtral-8x7b"]


def _number_text(option: str, data) -> str:
    kind = NUMERIC[option][1]
    if kind == "int":
        return data.draw(integers)
    if kind == "float":
        return repr(float(data.draw(floats)))
    return data.draw(sizes)


@settings(
    max_examples=int(os.environ.get("FTMEM_NUMBER_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_numbers_keep_the_contract(data):
    """Two numeric options at a time, each at ordinary and absurd values (zero, negative,
    2⁶³, 10³⁰, hundreds of digits, NaN, infinities, sizes with odd units), on the method
    they apply to, on one GPU or several."""
    first, second = data.draw(
        st.lists(st.sampled_from(sorted(NUMERIC)), min_size=2, max_size=2, unique=True)
    )
    method = next((NUMERIC[o][0] for o in (first, second) if NUMERIC[o][0] != "full"), "full")
    argv = ["estimate", data.draw(st.sampled_from(NUMBER_MODELS)), "--method", method]
    for option in (first, second):
        argv += [option, _number_text(option, data)]
    if data.draw(st.booleans()):
        argv += ["--strategy", data.draw(st.sampled_from(["zero3", "fsdp", "ddp"]))]
    argv += ["--format", "json"]
    broken, _ = check_all([argv])
    assert not broken, broken[0]


# -- --from: hypothesis over the training configs of each framework -------------------------

SAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "frameworks"
# Keys each reader takes (top level; "a.b" nested), as the frameworks document them.
FROM_KEYS = {
    "axolotl-qlora-llama3-8b.yml": [
        "base_model", "adapter", "load_in_4bit", "load_in_8bit", "peft_use_dora", "lora_r",
        "lora_alpha", "lora_dropout", "lora_target_linear", "lora_target_modules",
        "lora_modules_to_save", "unfrozen_parameters", "peft_use_rslora", "relora_steps",
        "liger_fused_linear_cross_entropy", "activation_offloading", "sequence_len",
        "micro_batch_size", "gradient_accumulation_steps", "gradient_checkpointing",
        "optimizer", "bf16", "fp16", "flash_attention", "sdp_attention", "eager_attention",
        "sample_packing", "deepspeed", "fsdp", "fsdp_config", "fsdp_version",
        "deepspeed.zero_optimization", "deepspeed.zero_optimization.stage",
        "deepspeed.zero_optimization.offload_optimizer",
        "deepspeed.zero_optimization.offload_optimizer.device",
        "fsdp_config.fsdp_offload_params", "fsdp_config.sharding_strategy",
        "fsdp_config.reshard_after_forward", "fsdp_config.activation_checkpointing",
    ],
    "torchtune-lora-llama3.1-8b.yaml": [
        "model", "model._component_", "model.lora_attn_modules", "model.apply_lora_to_mlp",
        "model.lora_rank", "model.lora_alpha", "model.lora_dropout", "model.use_dora",
        "dtype", "tokenizer", "tokenizer.max_seq_len", "batch_size",
        "gradient_accumulation_steps", "enable_activation_checkpointing",
        "enable_activation_offloading", "optimizer", "optimizer._component_",
        "optimizer.fused", "optimizer.momentum", "optimizer_in_bwd", "loss",
        "loss._component_", "compile",
    ],
    "trl-sft-mistral-7b.json": [
        "model_name_or_path", "use_peft", "load_in_4bit", "load_in_8bit", "use_dora", "lora_r",
        "lora_alpha", "lora_dropout", "lora_target_modules", "max_length", "max_seq_length",
        "max_target_length", "per_device_train_batch_size", "gradient_accumulation_steps",
        "gradient_checkpointing", "optim", "optim_args", "optim_target_modules",
        "use_liger_kernel", "bf16", "fp16", "torch_dtype", "attn_implementation",
        "model_init_kwargs", "model_init_kwargs.torch_dtype",
        "model_init_kwargs.attn_implementation", "packing", "deepspeed", "fsdp", "fsdp_config",
    ],
    "litgpt-lora-llama2-7b.yaml": [
        "checkpoint_dir", "precision", "quantize", "lora_r", "lora_alpha", "lora_dropout",
        "lora_query", "lora_key", "lora_value", "lora_projection", "lora_mlp", "lora_head",
        "train", "train.max_seq_length", "train.micro_batch_size", "train.global_batch_size",
        "optimizer", "optimizer.class_path", "devices",
    ],
    "llama-factory-qlora-qwen2.5-7b.yaml": [
        "model_name_or_path", "finetuning_type", "lora_rank", "lora_alpha", "lora_dropout",
        "lora_target", "use_dora", "quantization_bit", "freeze_trainable_layers",
        "cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps",
        "disable_gradient_checkpointing", "optim", "bf16", "fp16", "flash_attn", "deepspeed",
        "stage", "enable_liger_kernel", "use_rslora", "use_galore", "galore_rank",
        "galore_target", "galore_layerwise",
    ],
}  # fmt: skip
FROM_KEYS["hf-seq2seq-flan-t5-xl.json"] = FROM_KEYS["trl-sft-mistral-7b.json"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 70000),
    st.sampled_from([2**63, 10**30, 10**400, 0.5, 1e300, -1.0, float("nan"), float("inf")]),
    st.sampled_from(["", "auto", "true", "false", "abc", "cpu", "nvme", "3", "all", "bf16",
                     "fp16", "full_shard", "q_proj,v_proj", "zero3.json", "\x1b[31m", "é"]),
)  # fmt: skip
config_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["stage", "device", "x", "_component_"]), inner, max_size=3
        ),
    ),
    max_leaves=6,
)


def _set_path(data: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[leaf] = value


@settings(
    max_examples=int(os.environ.get("FTMEM_FROM_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_from_configs_keep_the_contract(data):
    """A sample config of each framework with one to three of its keys set to any
    value of any type (strings where numbers belong, lists, mappings, NaN, "auto"):
    estimated, or refused in one line naming the file."""
    sample = data.draw(st.sampled_from(sorted(FROM_KEYS)))
    text = (SAMPLES / sample).read_text()
    config = json.loads(text) if sample.endswith(".json") else yaml.safe_load(text)
    for path in data.draw(st.lists(st.sampled_from(FROM_KEYS[sample]), min_size=1, max_size=3)):
        _set_path(config, path, data.draw(config_values))
    extra = data.draw(st.sampled_from([[], ["--gpus", "8"], ["--gpu", "rtx4090", "--check"]]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / sample
        dump = json.dumps if sample.endswith(".json") else yaml.safe_dump
        path.write_text(dump(config))
        argv = ["estimate", "--from", str(path), *extra, "--format", "json"]
        broken, _ = check_all([argv])
    assert not broken, broken[0] + "\n    config: " + repr(config)[:600]


# -- serve and compare ------------------------------------------------------------------------

SERVE: dict[str, list[str]] = {
    "model": [m for m in MODELS if "t5" not in m],  # serve models decoder-only generation
    "--weights": ["bf16", "fp16", "fp32", "fp8", "int8", "nf4", "fp4", "int4", "ternary"],
    "--kv-dtype": ["bf16", "fp16", "fp32", "fp8"],
    "--sequences": ["1", "8"],
    "--context": ["512", "1024"],
    "--prefill-chunk": [OMIT, "256"],
    "--lora-adapters": ["0", "2"],
    "--lora-r": ["8", "16"],
    "--lora-targets": ["all-linear", "q,v"],
    "--max-sequences": [OMIT, "--max-sequences"],
    "--max-context": [OMIT, "--max-context"],
    "--gpu": [OMIT, "rtx4090", "h100-80gb"],
    "--format": ["table", "json"],
    "--units": ["GiB", "GB"],
}
SERVE_RULES: list[Callable[[dict[str, str]], bool]] = [
    # one search at a time, and a search needs a GPU
    lambda v: _given(v, "--max-sequences") and _given(v, "--max-context"),
    lambda v: (
        (_given(v, "--max-sequences") or _given(v, "--max-context")) and _is(v, "--gpu", OMIT)
    ),
]


@functools.cache
def _serve_pair_ok(a: str, x: str, b: str, y: str) -> bool:
    return not any(rule({a: x, b: y}) for rule in SERVE_RULES)


def test_every_serve_combination_is_answered():
    rows, infeasible = all_pairs(SERVE, _serve_pair_ok, seed=19)
    assert not infeasible
    flags = {n for n, values in SERVE.items() if any(v.startswith("--") for v in values)}
    argvs = [
        ["serve", r["model"]]
        + [
            arg
            for n, value in r.items()
            if n != "model" and value != OMIT
            for arg in ([value] if n in flags else [n, value])
        ]
        for r in rows
    ]
    broken, outcomes = check_all(argvs)
    refused = [f"{' '.join(a)}\n    {e}" for a, code, e in outcomes if code == 2]
    assert not broken, "\n".join(broken[:20])
    assert not refused, "\n".join(refused[:20])


COMPARE: dict[str, list[str]] = {
    "model": ["gpt2", "llama2-7b", "flan-t5-small", "mixtral-8x7b", "qwen2.5-0.5b"],
    "--methods": ["full,lora,qlora", "dora,ia3,adapter", "prompt-tuning,bitfit,galore"],
    "--gpus": ["rtx4090,h100-80gb", "l4"],
    "--precision": ["fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"],
    "--optimizer": ["adamw", "adamw-8bit", "sgd", "adafactor"],
    "--attn": ["eager", "sdpa", "flash"],
    "--grad-ckpt": [OMIT, "--grad-ckpt"],
    "--format": ["table", "json"],
}


def test_every_compare_combination_keeps_the_contract():
    """compare runs many methods per cell: a method that does not apply is "n/a" in its
    cell, the rest estimated."""
    rows, _ = all_pairs(COMPARE, seed=19)
    argvs = [
        ["compare", r["model"]]
        + [
            arg
            for n, value in r.items()
            if n != "model" and value != OMIT
            for arg in ([value] if value.startswith("--") else [n, value])
        ]
        for r in rows
    ]
    broken, outcomes = check_all(argvs)
    assert not broken, "\n".join(broken[:20])
    assert sum(code == 0 for _, code, _ in outcomes) > len(rows) // 2


# -- the larger sweep (FTMEM_SLOW=1): every preset, plan, max, --fewest-gpus ----------------

slow = pytest.mark.skipif(
    not os.environ.get("FTMEM_SLOW"), reason="the larger sweep: set FTMEM_SLOW=1 (minutes)"
)


def _search_argvs(rows: list[dict[str, str]], command: str) -> list[list[str]]:
    """Accepted estimate rows with a GPU, as plan / max / --fewest-gpus take them."""
    out = []
    for r in rows:
        if r["--gpu"] == OMIT or r["--emit"] != OMIT:
            continue
        drop = {"--emit", "--check", "--units"}
        row = {k: v for k, v in r.items() if k not in drop}
        row["--format"] = "json" if row["--format"] in ("json", "yaml") else "table"
        if command == "explain":
            out.append(argv_of("explain", {k: v for k, v in row.items() if k != "--format"}))
        elif command == "fewest":
            if row["--nodes"] != "1":
                continue
            out.append([*argv_of("estimate", {**row, "--nodes": OMIT}), "--fewest-gpus"])
        else:
            argv = argv_of(command, row)
            if command == "max":
                argv += ["--for", "lora-r" if r["--method"] in LORA else "batch-size"]
            out.append(argv)
    return out


@pytest.mark.slow
@slow
def test_sweep_every_preset():
    # (LFM2's steps are refused in one sentence: ops.short_conv, tests/test_lfm2.py)
    estimated = (n for n, a in model_presets().items() if not a.traits.short_conv_module)
    domains = {**ESTIMATE, "model": sorted(estimated)}
    rows, _ = all_pairs(domains, _pair_ok, _row_ok, SPREAD, FIRST, seed=23)
    broken, outcomes = check_all(argv_of("estimate", r) for r in rows)
    refused = [f"{' '.join(a)}\n    {e}" for a, code, e in outcomes if code == 2]
    assert not broken, "\n".join(broken[:20])
    assert not refused, f"{len(refused)} of {len(rows)} refused:\n" + "\n".join(refused[:20])


@pytest.mark.slow
@slow
@pytest.mark.parametrize("command", ["plan", "max", "fewest", "explain"])
def test_sweep_searches(accepted_rows, command):
    rows, _ = accepted_rows
    argvs = _search_argvs(rows, command)[:80]
    broken, _ = check_all(argvs)
    assert not broken, "\n".join(broken[:20])


@pytest.mark.slow
@slow
def test_sweep_every_forbidden_pair(accepted_rows):
    rows, _ = accepted_rows
    broken, outcomes = check_all(_violations(rows, None, seed=0))
    accepted = [" ".join(a) for a, code, _ in outcomes if code != 2]
    assert not broken, "\n".join(broken[:20])
    assert not accepted, "\n".join(accepted[:20])
