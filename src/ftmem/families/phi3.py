"""Phi-3 (Phi3ForCausalLM): fused qkv and gate_up projections."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem.families import Family
from ftmem.families._config import Config, LlamaKeys, every_layer
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import TRANSFORMERS_SDPA_CONTIGUOUS, UPCAST_IN_FORWARD_LOSS

if TYPE_CHECKING:
    from ftmem.arch import Architecture


def _no_dropout(arch: Architecture, kw: Config) -> None:
    kw.update(resid_pdrop=0.0, embd_pdrop=0.0)


FAMILY = Family(
    name="phi3",
    model_types=("phi3",),
    decoder_layer="Phi3DecoderLayer",
    config=llama_map(
        "phi3", LlamaKeys(window="when-set", sliding=every_layer), build_extra=_no_dropout
    ),
    names=replace(
        LLAMA_NAMES,
        attention={"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj"},
        mlp={"gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"},
    ),
    # its sdpa output is copied before o_proj reads it (measured in tests/accuracy)
    o_proj_reads_kernel_output=False,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    # its own upcast-shifted loss before 4.46 (versions.UPCAST_IN_FORWARD_LOSS)
    own_loss_releases=((UPCAST_IN_FORWARD_LOSS, "upcast-shifted"),),
)
