"""A traced answer for a model ftmem does not model (``ftmem estimate --traced``).

transformers builds the causal LM from its own config.json on the meta device, and one
training step runs under FakeTensorMode at the real sizes, nothing allocated: weights,
gradients, optimizer states, saved activations and every temporary PyTorch creates are
the model's own. The step's allocations and frees, logged in order, are then replayed
through the CUDA caching allocator's rules (:mod:`ftmem.gpu.allocator`) with the BLAS
workspaces and the context of :mod:`ftmem.gpu.runtime`, as the estimate's own figures
are, for the three numbers a GPU shows.

It cannot see what runs inside a kernel (attention's and fused ops' scratch) or what
the framework adds around the step; TRACED_NOTE says so on every answer.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ftmem.errors import ConfigError, InvalidInputError
from ftmem.measure.build import (
    Built,
    autocast_dtype,
    block_lists,
    enable_checkpointing,
    materialize_fake,
    param_dtype,
)
from ftmem.optim import BNB_OPTIMIZERS
from ftmem.run import split_patterns

if TYPE_CHECKING:
    from ftmem.hardware import Gpu
    from ftmem.measure import Measurement
    from ftmem.run import RunConfig

TRACED_NOTE = (
    "traced: every tensor PyTorch creates in the step (weights, gradients, states, saved "
    "activations, temporaries) at its real shape and dtype; on a GPU, ftmem's replay of "
    "them through the CUDA caching allocator with the BLAS workspaces and the CUDA "
    "context. Not seen: scratch memory inside kernels (attention's, fused ops'), and what "
    "a framework adds around the step (its own buffers, evaluation, checkpoint saving)."
)
# What a traced step can train: the methods whose trainable set needs no ftmem layout.
TRACED_METHODS = ("full", "freeze", "partial", "bitfit", "lora", "dora", "rslora")

# peft's LoRA target roles as the module names causal LMs in transformers give them;
# a role matches whichever of its names the model has.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "q": ("q_proj", "query", "q_a_proj", "q_b_proj"),
    "k": ("k_proj", "key"),
    "v": ("v_proj", "value"),
    "o": ("o_proj", "out_proj", "dense", "c_proj"),
    "gate": ("gate_proj", "w1"),
    "up": ("up_proj", "w3", "fc1", "c_fc", "dense_h_to_4h"),
    "down": ("down_proj", "w2", "fc2", "dense_4h_to_h"),
}
# Fused projections: adapted when any of their roles is asked for.
FUSED_NAMES: dict[str, tuple[str, ...]] = {
    "query_key_value": ("q", "k", "v"),
    "qkv_proj": ("q", "k", "v"),
    "c_attn": ("q", "k", "v"),
    "Wqkv": ("q", "k", "v"),
    "kv_a_proj_with_mqa": ("k", "v"),
    "kv_b_proj": ("k", "v"),
    "gate_up_proj": ("gate", "up"),
}


@dataclass(frozen=True)
class Traced:
    """One traced step: what it measured, its GPU figures, and how long it took."""

    name: str
    model_type: str
    run: RunConfig
    measured: Measurement
    seconds: float
    adapted: tuple[str, ...]  # the module names LoRA adapted (empty for other methods)
    # on a GPU (None for none): the caching allocator's replay of the traced step
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    device_bytes: int | None
    fits: bool | None
    notes: tuple[str, ...]


def trace(
    cfg: dict[str, Any],
    name: str,
    run: RunConfig,
    gpu: Gpu | None,
    *,
    steps: int = 2,
    fake: bool = True,
) -> Traced:
    """Build ``cfg`` (a parsed config.json: its language model for a multimodal one) in
    transformers and run ``steps`` training steps on fake tensors; the last is traced.
    ``fake=False`` runs them for real on the CPU (random weights), to check a trace."""
    from ftmem.measure.step import FAKE_ATTENTION_NOTE

    _check_traceable(run)
    started = time.perf_counter()
    config, notes = _hf_config(cfg, run)
    try:
        got, adapted, events = _step(config, run, notes, steps, fake)
    except RuntimeError as exc:
        # torch's meta kernel of grouped_mm (transformers' expert matmuls) takes bf16 only
        if fake and "BF16 type" in str(exc):
            raise InvalidInputError(
                "--traced cannot run this model's experts with "
                f"--precision {run.precision}: torch's fake kernel for the grouped expert "
                "matmuls takes bf16 weights only; trace it with --precision bf16."
            ) from None
        raise
    seconds = time.perf_counter() - started
    allocated = reserved = device = None
    fits = None
    if gpu is not None:
        allocated, reserved, device = _on_gpu(events, run, gpu)
        fits = device <= gpu.memory_bytes
    return Traced(
        name=name,
        model_type=str(cfg.get("model_type")),
        run=run,
        measured=got,
        seconds=seconds,
        adapted=adapted,
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        device_bytes=device,
        fits=fits,
        notes=(*got.notes, *((TRACED_NOTE, FAKE_ATTENTION_NOTE) if fake else ())),
    )


def _step(
    config: Any,
    run: RunConfig,
    notes: list[str],
    steps: int,
    fake: bool,
) -> tuple[Measurement, tuple[str, ...], list[tuple[str, int]]]:
    """The model built and its steps run (fake or real): the measured step, LoRA's
    targets, and the step's allocation events."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ftmem.measure.step import run_steps

    built, adapted = _build(config, run, list(notes), "meta" if fake else "cpu")
    events: list[tuple[str, int]] = []
    with (
        FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext(),
        _quiet_fake_tensor_log(),
    ):
        if fake:
            materialize_fake(built.model)
        got = run_steps(
            None,
            run,
            device="cpu",
            steps=steps,
            built=built,
            vocab_size=config.get_text_config().vocab_size,
            events=events,
            fake=fake,
        )
    return got, adapted, events


@contextlib.contextmanager
def _quiet_fake_tensor_log() -> Iterator[None]:
    """FakeTensorMode logs a kernel's failure with its whole stack before raising it;
    the raised error says what is needed."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_traceable(run: RunConfig) -> None:
    if run.method not in TRACED_METHODS:
        raise InvalidInputError(
            f"--traced runs {', '.join(TRACED_METHODS)}; --method {run.method} needs ftmem's "
            "own model of the family."
        )
    if "8bit" in run.optimizer or run.optimizer in ("lion", "adamw-fp32", *BNB_OPTIMIZERS):
        raise InvalidInputError(
            f"--traced cannot run --optimizer {run.optimizer} on fake tensors "
            "(bitsandbytes has no fake kernels; lion and adamw-fp32 have no reference "
            "implementation here); trace with adamw, sgd or adafactor."
        )
    if run.optimizer.startswith("ao-"):
        raise InvalidInputError(
            f"--traced cannot run --optimizer {run.optimizer}: torchao compiles each "
            "parameter's step, which the tracker's dispatch mode turns off; trace with "
            "adamw, sgd or adafactor."
        )
    if run.activation_offload or run.optimizer_in_backward:
        raise InvalidInputError(
            "--traced runs the plain step; drop --activation-offload and --optimizer-in-backward."
        )


def _hf_config(cfg: dict[str, Any], run: RunConfig) -> tuple[Any, list[str]]:
    """transformers' config for ``cfg``, without the KV cache, dropout as the run says."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    kwargs = {k: v for k, v in cfg.items() if k not in ("model_type", "auto_map")}
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        code = " (its auto_map names its own code, which ftmem does not run)"
        raise ConfigError(
            f"config.json has model_type {str(model_type)[:60]!r}, which this transformers "
            f"does not build either{code if 'auto_map' in cfg else ''}; --traced needs a "
            "model transformers has."
        )
    kwargs["use_cache"] = False
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"transformers cannot read this config.json: {first[:200]}") from None
    if not run.model_dropout:
        dropped = _drop_dropout(config)
        if dropped:
            notes.append(f"--no-dropout: traced with {', '.join(dropped)} set to 0")
    return config, notes


def _drop_dropout(config: Any) -> list[str]:
    """Set every dropout probability of the config (and its text config) to 0."""
    dropped: list[str] = []
    for part in {id(c): c for c in (config, config.get_text_config())}.values():
        for key, value in vars(part).items():
            is_rate = isinstance(value, float) and value > 0
            if is_rate and ("dropout" in key or key.endswith("pdrop")):
                setattr(part, key, 0.0)
                dropped.append(key)
    return dropped


def _build(
    config: Any, run: RunConfig, notes: list[str], device: str
) -> tuple[Built, tuple[str, ...]]:
    """The causal LM on ``device`` (meta, to be made fake), with the run's trainable set
    and checkpointing."""
    model, attn = _causal_lm(config, param_dtype(run), notes, device)
    adapted: tuple[str, ...] = ()
    if run.method in ("lora", "dora", "rslora"):
        model, adapted = _with_lora(model, run, notes)
    else:
        _set_trainable(model, run, notes)
    if run.grad_ckpt:
        enable_checkpointing(model)
    model.train()
    return Built(model, autocast_dtype(run), attn, notes), adapted


def _causal_lm(
    config: Any, dtype: torch.dtype, notes: list[str], device: str
) -> tuple[nn.Module, str]:
    from transformers import AutoModelForCausalLM

    for attn in ("sdpa", "eager"):
        try:
            torch.manual_seed(0)
            with warnings.catch_warnings(), torch.device(device):
                warnings.simplefilter("ignore")
                model = AutoModelForCausalLM.from_config(
                    config, dtype=dtype, attn_implementation=attn
                )
            if attn == "eager":
                notes.append("attn: this model has no sdpa path in transformers; traced eager")
            return model, attn
        except ValueError as exc:
            text = str(exc)
            if attn == "sdpa" and "scaled_dot_product_attention" in text:
                continue
            first = text.splitlines()[0] if text else type(exc).__name__
            raise ConfigError(
                f"transformers has no causal LM for this config.json: {first[:200]}"
            ) from None
    raise AssertionError("unreachable: eager attention always exists")


def _set_trainable(model: nn.Module, run: RunConfig, notes: list[str]) -> None:
    named = list(model.named_parameters())
    if run.method == "full":
        chosen = {n for n, _ in named}
    elif run.method == "bitfit":
        chosen = {n for n, _ in named if n.endswith(".bias")}
    elif run.method == "partial":
        from ftmem.regexes import compile_bounded

        patterns = compile_bounded(
            split_patterns(run.trainable_modules or ""),
            "--trainable-modules",
            max(len(n) for n, _ in named),
        )
        chosen = {n for n, _ in named if any(p.search(n) for p in patterns)}
    else:  # freeze: the top blocks
        from ftmem.methods import DEFAULT_FREEZE_TRAINABLE_LAYERS

        k = run.trainable_layers or DEFAULT_FREEZE_TRAINABLE_LAYERS
        ids = {
            id(p)
            for blocks in block_lists(model)
            for b in list(blocks)[-k:]
            for p in b.parameters()
        }
        chosen = {n for n, p in named if id(p) in ids}
    if not chosen:
        raise InvalidInputError(f"--method {run.method} trains no parameter of this model.")
    for n, p in named:
        p.requires_grad_(n in chosen)


def _with_lora(
    model: nn.Module, run: RunConfig, notes: list[str]
) -> tuple[nn.Module, tuple[str, ...]]:
    """peft's LoRA (DoRA, rsLoRA) on what --lora-targets names, by role or by name: the
    linear modules, and MoE experts' 3-D parameters through peft's target_parameters."""
    from peft import LoraConfig, get_peft_model

    leaves, experts = set(), set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            leaves.add(name.rsplit(".", 1)[-1])
        if isinstance(module, nn.modules.conv._ConvNd):
            continue  # a convolution's 3-D kernel (Gated DeltaNet's conv1d) is no expert
        for pname, param in module.named_parameters(recurse=False):
            if param.dim() == 3:
                experts.add(f"{name.rsplit('.', 1)[-1]}.{pname}")
    modules, params = lora_targets(run.targets, leaves, experts)
    if experts and not params:
        notes.append(
            "MoE experts are 3-D parameters, not linears: LoRA on them too with "
            "--lora-targets experts (or gate,up,down), through peft's target_parameters"
        )
    lcfg = LoraConfig(
        r=run.r,
        lora_alpha=run.alpha,  # type: ignore[arg-type]  # peft scales by alpha / r
        lora_dropout=run.dropout,
        target_modules=list(modules) or None,
        target_parameters=list(params) or None,
        use_dora=run.method == "dora",
        use_rslora=run.method == "rslora",
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_peft_model(model, lcfg), (*modules, *params)
    except ValueError as exc:  # peft's ParamWrapper: no DoRA, no LoRA dropout on experts
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInputError(f"peft refuses this LoRA: {first}") from None


EXPERTS = "experts"  # --lora-targets' name for every MoE expert parameter


def lora_targets(
    spec: str, leaves: AbstractSet[str], experts: AbstractSet[str] = frozenset()
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The linear module names (``leaves``) and MoE expert parameters (``experts``, as
    ``module.parameter``) that --lora-targets picks: all-linear (the linears, as peft
    reads it), attention, roles (q, k, v, o, gate, up, down: by the names transformers
    gives them, experts' included), ``experts``, or names."""
    spec = spec.strip()
    if spec == "all-linear":
        return tuple(sorted(leaves)), ()
    items = [s.strip() for s in spec.split(",") if s.strip()]
    roles = {"q", "k", "v", "o"} if spec == "attention" else {i for i in items if i in ROLE_NAMES}
    names = set() if spec == "attention" else {i for i in items if i not in ROLE_NAMES}
    chosen = {n for r in roles for n in ROLE_NAMES[r]} | names
    chosen |= {fused for fused, of in FUSED_NAMES.items() if roles & set(of)}
    by_param = {key.rsplit(".", 1)[-1]: key for key in experts}
    params = {key for key in experts if key.rsplit(".", 1)[-1] in chosen or key in names}
    if EXPERTS in names:
        params |= experts
    known = leaves | experts | set(by_param) | ({EXPERTS} if experts else set())
    missing = sorted(names - known)
    shown = ", ".join(sorted(leaves | experts)[:12])
    if missing:
        raise InvalidInputError(
            f"--lora-targets: this model has no linear or expert parameter named "
            f"{', '.join(missing)} (it has {shown})."
        )
    found = tuple(sorted(chosen & leaves))
    if not found and not params:
        raise InvalidInputError(
            f"--lora-targets {spec[:60]}: none of this model's linears plays those roles "
            f"(it has {shown}); name them instead."
        )
    return found, tuple(sorted(params))


def _on_gpu(events: list[tuple[str, int]], run: RunConfig, gpu: Gpu) -> tuple[int, int, int]:
    """(allocated, reserved, device) peaks: the BLAS workspaces kept for the run, then
    the traced step, replayed through the caching allocator; a GEMM's own workspace
    where none is kept (it can run at the peak); and the memory outside the allocator."""
    from ftmem.gpu.allocator import replay
    from ftmem.gpu.device import cuda_runtime, kept_per_thread

    rt = cuda_runtime(gpu, run.torch_version)
    kept = [("alloc", size) for thread in kept_per_thread(rt) for size in thread]
    shifted = [(kind, v + len(kept) if kind == "free" else v) for kind, v in events]
    stats = replay([*kept, *shifted], **run.allocator)
    transient = rt.transient_workspace_bytes if rt.through_allocator else 0
    reserved = stats.peak_reserved + transient
    return stats.peak_allocated + transient, reserved, reserved + rt.outside_allocator_bytes
