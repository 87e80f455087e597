"""Granite MoE with a shared expert (GraniteMoeSharedForCausalLM, ``granitemoeshared``):
GraniteMoE (``families.granitemoe``) with a dense gated MLP beside the routed experts on
the same input, ``shared_mlp`` of width ``shared_intermediate_size`` (transformers 5.25
models/granitemoeshared/modular_granitemoeshared.py GraniteMoeSharedMLP: one
``input_linear`` (h -> 2·width), chunked into the activated half and the other, then
``output_linear``; its output added to the experts'). A width of 0, the config class's
default, builds no shared MLP: that stack is GraniteMoE's. Both linears are nn.Linear:
LoRA's all-linear and bitsandbytes reach them as they reach the attention's."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.families._config import Config, LlamaKeys, opt
from ftmem.families._llama import llama_map
from ftmem.families.granitemoe import FAMILY as GRANITEMOE
from ftmem.families.granitemoe import build_granite_experts, read_granite_experts

if TYPE_CHECKING:
    from ftmem.arch import Architecture

SHARED_MLP = {"gate_up": "shared_mlp.input_linear", "down": "shared_mlp.output_linear"}


def _read(cfg: Config, out: Config) -> None:
    read_granite_experts(cfg, out)
    # (GraniteMoeSharedConfig's default 0: no shared MLP)
    out["shared_experts_size"] = opt(cfg, "shared_intermediate_size", limits.WIDTH) or 0


def _build(arch: Architecture, kw: Config) -> None:
    build_granite_experts(arch, kw)
    kw["shared_intermediate_size"] = arch.shared_experts_size


FAMILY = replace(
    GRANITEMOE,
    name="granitemoeshared",
    model_types=("granitemoeshared",),
    decoder_layer="GraniteMoeSharedDecoderLayer",
    config=llama_map("granitemoeshared", LlamaKeys(optional=("attention_bias",)), _read, _build),
    names=replace(GRANITEMOE.names, shared_experts=SHARED_MLP),
)
