"""What each finetuning method trains and what it adds to the model.

The result is a list of :class:`TensorGroup`: every parameter tensor of the
(adapted) model, grouped by identical shape, storage and trainability, so that
weights, gradients and optimizer states are sums over a handful of groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from ftmem.arch import ATTENTION_ROLES, Architecture, Linear, Param, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, StorageFormat, tensor_bytes
from ftmem.errors import InvalidInputError
from ftmem.precision import Dtypes, resolve_dtypes
from ftmem.run import ADAPTER_METHODS, RunConfig

DEFAULT_FREEZE_TRAINABLE_LAYERS = 2

# What `ftmem methods` lists: every method the estimator implements, with its source.
METHOD_CATALOG: dict[str, tuple[str, str]] = {
    "full": (
        "every weight trains; gradients and optimizer states for all of them",
        "—",
    ),
    "freeze": (
        "the last N blocks train (--trainable-layers, default 2), the rest is frozen",
        "LLaMA-Factory's freeze tuning; Lee et al. 2019, arXiv:1911.03090",
    ),
    "lora": (
        "low-rank adapters A (r × in) and B (out × r) beside frozen linears",
        "Hu et al. 2021, arXiv:2106.09685",
    ),
    "qlora": (
        "LoRA over a 4-bit NF4 (or fp4 / int8) base, double-quantised constants",
        "Dettmers et al. 2023, arXiv:2305.14314",
    ),
    "dora": (
        "LoRA plus a magnitude vector per adapted linear; builds the adapted weight each forward",
        "Liu et al. 2024, arXiv:2402.09353",
    ),
    "bitfit": (
        "only the bias terms (linears and LayerNorms); models without biases are refused",
        "Ben Zaken et al. 2022, arXiv:2106.10199",
    ),
}  # LLaMA-Factory's freeze_trainable_layers default


@dataclass(frozen=True, slots=True)
class TensorGroup:
    """``count`` parameter tensors of one shape, storage format and trainability."""

    name: str
    shape: tuple[int, ...]
    count: int
    fmt: StorageFormat
    trainable: bool
    adapter: bool = False
    double_quant: bool = True
    in_block: bool = True  # repeated per decoder block (count = blocks), or outer

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def total_numel(self) -> int:
        return self.numel * self.count

    @property
    def element_bytes(self) -> int:
        """Bytes per element of an unquantised tensor (what its gradient and torch
        optimizer states take); quantised storage has no per-element size."""
        return BYTES_PER_ELEMENT[self.fmt]

    @property
    def nbytes(self) -> int:
        # (out, in) for nn.Linear; int8 keeps one scale per output row
        out_features = self.shape[-2] if len(self.shape) >= 2 else self.shape[0]
        return self.count * tensor_bytes(self.numel, self.fmt, out_features, self.double_quant)


@dataclass(frozen=True, slots=True)
class MethodPlan:
    """The resolved method: parameter groups and what shapes the activations."""

    groups: tuple[TensorGroup, ...]
    dtypes: Dtypes
    adapted: tuple[Linear, ...]  # per block, linears carrying an adapter
    trainable_blocks: int  # blocks (counted from the top) that hold trainable tensors
    outer_trainable: bool  # embeddings / final norm / LM head train
    notes: tuple[str, ...] = ()
    # peft modules_to_save: trainable copies of the token embedding and/or the LM head
    embed_trainable: bool = False
    head_trainable: bool = False
    # BitFit: linears whose bias trains, and whether LayerNorm biases train
    biased: tuple[str, ...] = ()
    norm_bias_trainable: bool = False

    @property
    def n_params(self) -> int:
        return sum(g.total_numel for g in self.groups)

    @property
    def n_trainable(self) -> int:
        return sum(g.total_numel for g in self.groups if g.trainable)


_ROLE_ALIASES = {"q": "q", "k": "k", "v": "v", "o": "o", "gate": "gate", "up": "up", "down": "down"}


def adapted_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears that get an adapter, from ``run.targets``.

    ``q,v`` (peft's default for Llama), ``attention``, ``all-linear`` (every
    ``nn.Linear`` in the blocks, as peft does: not the LM head, not MoE experts stored
    as 3-D parameters), or a comma list of roles (q,k,v,o,gate,up,down) or module names.
    """
    linears = [lin for lin in layout(arch).linears if lin.is_module]
    spec = run.targets.strip().lower()
    if spec == "all-linear":
        return tuple(linears)
    if spec == "attention":
        return tuple(lin for lin in linears if set(lin.roles) & set(ATTENTION_ROLES))
    chosen: list[Linear] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        if item in _ROLE_ALIASES:
            match = [lin for lin in linears if item in lin.roles]
        else:
            match = [
                lin for lin in linears if lin.module == item or lin.module.endswith("." + item)
            ]
        if not match:
            names = sorted({lin.leaf for lin in linears})
            raise InvalidInputError(
                f"LoRA target '{item}' matches no linear layer of {arch.name}; use q,k,v,o,gate,up,"
                f"down, attention, all-linear or one of {', '.join(names)}."
            )
        chosen += [lin for lin in match if lin not in chosen]
    if not chosen:
        raise InvalidInputError("--lora-targets is empty.")
    # keep the model's own order
    return tuple(lin for lin in linears if lin in chosen)


def adapted_module_names(arch: Architecture, run: RunConfig) -> list[str]:
    """peft ``target_modules`` for the adapted linears (unambiguous module suffixes)."""
    return [lin.module for lin in adapted_linears(arch, run)]


def _is_bias(p: Param) -> bool:
    """BitFit's trainable set: every bias, of linears and of LayerNorms."""
    return p.kind == "linear_bias" or (p.kind == "norm" and p.name.endswith(".bias"))


def _base_format(param: Param, run: RunConfig, dtypes: Dtypes) -> StorageFormat:
    # bitsandbytes quantises only nn.Linear layers of the blocks; embeddings, norms,
    # biases and the LM head stay in the base dtype.
    if dtypes.quantized and param.kind == "linear" and param.name != "lm_head.weight":
        return dtypes.quantized
    return dtypes.base


def plan_method(arch: Architecture, run: RunConfig) -> MethodPlan:
    """Parameter groups of the model as the method trains it."""
    lay = layout(arch)
    dtypes = resolve_dtypes(run)
    L = arch.num_layers
    notes: list[str] = []
    dq = run.uses_double_quant

    if run.method == "freeze":
        trainable_blocks = (
            DEFAULT_FREEZE_TRAINABLE_LAYERS
            if run.trainable_layers is None
            else run.trainable_layers
        )
        if trainable_blocks == 0:
            raise InvalidInputError("--trainable-layers 0 leaves nothing to train.")
        if trainable_blocks > L:
            raise InvalidInputError(
                f"--trainable-layers {trainable_blocks} exceeds the model's {L} blocks."
            )
    elif run.method == "full":
        trainable_blocks = L
    elif run.method == "bitfit":
        if not arch.has_biases:
            raise InvalidInputError(
                f"{arch.name} has no bias terms: BitFit would train nothing "
                "(Llama-family models have none); use LoRA instead."
            )
        trainable_blocks = L
        if arch.family == "falcon" and (run.grad_ckpt or run.attn == "eager"):
            notes.append(
                "BitFit on Falcon with checkpointing or eager attention is a known gap "
                "(docs/accuracy.md): the peak measured up to 11 % above this estimate."
            )
    else:
        trainable_blocks = L  # adapters in every block
    outer_trainable = run.method == "full"

    groups: list[TensorGroup] = []
    for p in lay.outer:
        trains = outer_trainable or (run.method == "bitfit" and _is_bias(p))
        groups.append(TensorGroup(p.name, p.shape, 1, dtypes.base, trains, in_block=False))
    for p in lay.block:
        fmt = _base_format(p, run, dtypes)
        if run.method == "full":
            groups.append(TensorGroup(p.name, p.shape, L, fmt, True))
        elif run.method == "freeze":
            if L - trainable_blocks:
                groups.append(TensorGroup(p.name, p.shape, L - trainable_blocks, fmt, False))
            groups.append(TensorGroup(p.name, p.shape, trainable_blocks, fmt, True))
        elif run.method == "bitfit":
            groups.append(TensorGroup(p.name, p.shape, L, fmt, _is_bias(p)))
        else:
            groups.append(TensorGroup(p.name, p.shape, L, fmt, False, double_quant=dq))

    adapted: tuple[Linear, ...] = ()
    if run.method in ADAPTER_METHODS:
        adapted = adapted_linears(arch, run)
        r = run.r
        for lin in adapted:
            groups.append(
                TensorGroup(
                    f"{lin.module}.lora_A",
                    (r, lin.in_features),
                    L,
                    dtypes.adapter,
                    True,
                    adapter=True,
                )
            )
            groups.append(
                TensorGroup(
                    f"{lin.module}.lora_B",
                    (lin.out_features, r),
                    L,
                    dtypes.adapter,
                    True,
                    adapter=True,
                )
            )
            if run.method == "dora":
                groups.append(
                    TensorGroup(
                        f"{lin.module}.lora_magnitude_vector",
                        (lin.out_features,),
                        L,
                        dtypes.adapter,
                        True,
                        adapter=True,
                    )
                )
        if arch.is_moe and run.targets.strip().lower() == "all-linear":
            notes.append(
                "MoE experts are 3-D parameters in transformers 5, not nn.Linear: "
                "all-linear adapts the attention projections only."
            )
    if run.method == "qlora" and arch.is_moe:
        notes.append(
            "bitsandbytes quantises nn.Linear layers only: transformers 5 stores MoE experts "
            "as 3-D parameters, so they stay 16-bit under QLoRA."
        )
    saved = run.modules_to_save if run.method in ADAPTER_METHODS else frozenset()
    if saved:
        if arch.tie_embeddings:
            raise InvalidInputError(
                f"{arch.name} ties its embedding and LM head: --lora-modules-to-save on a tied "
                "pair is not modelled."
            )
        for p in lay.outer:
            kind = (
                "head"
                if p.name.startswith("lm_head")
                else "embed"
                if p.kind == "embedding"
                else None
            )
            if kind in saved:
                # peft keeps the frozen original and a trainable copy in the same dtype
                groups.append(
                    TensorGroup(
                        f"{p.name}.modules_to_save", p.shape, 1, dtypes.base, True, in_block=False
                    )
                )
    return MethodPlan(
        tuple(groups),
        dtypes,
        adapted,
        trainable_blocks,
        outer_trainable,
        tuple(notes),
        embed_trainable="embed" in saved,
        head_trainable="head" in saved,
        biased=tuple(
            p.module for p in lay.block if run.method == "bitfit" and p.kind == "linear_bias"
        ),
        norm_bias_trainable=run.method == "bitfit" and arch.norm == "layernorm",
    )
