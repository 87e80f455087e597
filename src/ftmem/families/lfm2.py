"""Liquid's LFM2 text model (Lfm2ForCausalLM, model_type lfm2; transformers 5.25
models/lfm2/): a pre-norm block (``operator_norm`` before the mixer, ``ffn_norm`` before
the MLP, ``model.embedding_norm`` after the stack) whose mixer is one of two kinds by
``layer_types`` (else ``full_attn_idxs``; by default every layer attends,
Lfm2Config.__post_init__): Lfm2ShortConv ("conv", module ``conv``: in_proj to B, C and x,
B·x, a depthwise causal conv1d of ``conv_L_cache`` taps, C·conv, out_proj;
arch.ShortConv) or Lfm2Attention (``self_attn``: bias-free q/k/v, ``out_proj``, per-head
RMSNorms ``q_layernorm``/``k_layernorm`` before the rotary). The MLP is SwiGLU
(``feed_forward.w1``/``w3``/``w2``) whose width Lfm2MLP.__init__ derives (l.111-125, see
``mlp_width``). Embeddings are tied by default (``tie_embedding``, ``tie_word_embeddings``).

Notes (stop 51, helper lfm2). Measured: every tensor's name and size equals transformers
5.25's model on the meta device (tests/test_lfm2.py: tiny stacks in several orders, the top
layer a conv one, conv biases, untied, full_attn_idxs, the MLP multiplier and no adjustment;
Lfm2Config's own defaults, 32 attention layers at 2560 wide; lfm2_moe likewise), the
presets lfm2-1.2b (1,170,340,608) and lfm2-350m (354,483,968) by hand and on meta. What
one Lfm2ShortConv keeps for backward on the CPU torch path (ops.short_conv.saved_bytes,
checked against torch's saved-tensor hooks): b 2, s 16, h 64, 3 taps, fp32 with its
weights trained 50,176 B beyond its input (in_proj's output 24,576 whole, B·x 8,192, the
padded conv output 9,216, out_proj's input 8,192), frozen 41,984; bf16 half those; s 33
with 4 taps the padded output b·h·36·e. Modelled: the parameters only. Left: wiring
saved_bytes into the block walk (a conv block beside the attention ones, keyed on
Architecture.short_conv_blocks as the Gated DeltaNet blocks are), the conv's forward
transient and backward workspace (its input gradient through the padded conv), the
attention blocks (out_proj for o, q_layernorm/k_layernorm before the rotary), what the
model holds beside (the rotary's tables, the padding mask the conv applies), autocast,
``ftmem measure``'s build of the real model and the accuracy cases (full fp32, LoRA bf16
on q/v and on in_proj/out_proj, bf16-mixed, checkpointed), QLoRA, serving's conv state
(one per conv layer in the cache, not sized here); until then a training step and serving are
refused in one sentence (ops.short_conv.refuse). peft 0.21.2 has no default LoRA targets
for lfm2 (utils/constants.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftmem import limits
from ftmem.families import ConfigMap, Family, ModuleNames
from ftmem.families._config import (
    Config,
    LlamaKeys,
    build_llama_like,
    flag,
    opt,
    read_llama_like,
    wrong,
)
from ftmem.families._llama import LLAMA_NAMES

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# Lfm2Config's class defaults (transformers 5.25 configuration_lfm2.py) for the keys a
# config.json may leave out
DEFAULTS: Config = {
    "vocab_size": 65536,
    "hidden_size": 2560,
    "intermediate_size": 12288,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 128_000,
    "tie_word_embeddings": True,
    "conv_L_cache": 3,
    "block_multiple_of": 256,
}
LAYER_TYPES = ("conv", "full_attention")


def mlp_width(cfg: Config, intermediate: int) -> int:
    """Lfm2MLP's width (modeling_lfm2.py l.114-122), the same float arithmetic: with
    ``block_auto_adjust_ff_dim`` (default true) int(2·ff/3), then, where
    ``block_ffn_dim_multiplier`` (default 1.0) int(multiplier·that) rounded up to
    ``block_multiple_of`` (default 256); else ``intermediate`` itself. (The model skips
    the multiplier where it is None, which Lfm2Config's strict ``float | int`` refuses.)"""
    if not flag(cfg, "block_auto_adjust_ff_dim", True):
        return intermediate
    width = int(2 * intermediate / 3)
    multiplier: Any = cfg.get("block_ffn_dim_multiplier", 1.0)
    if isinstance(multiplier, bool) or not isinstance(multiplier, int | float) or multiplier <= 0:
        raise wrong("block_ffn_dim_multiplier", "a positive number", multiplier)
    width = int(multiplier * width)
    of = opt(cfg, "block_multiple_of") or DEFAULTS["block_multiple_of"]
    return of * ((width + of - 1) // of)


def conv_layer_indices(cfg: Config, layers: int) -> list[int]:
    """The layers that are short convolutions, bottom to top: where ``layer_types`` says
    "conv", else (no ``layer_types``) those not in ``full_attn_idxs`` (default: none)."""
    types = cfg.get("layer_types")
    if types is None:
        full = cfg.get("full_attn_idxs")
        if full is None:
            return []
        if not isinstance(full, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in full
        ):
            raise wrong("full_attn_idxs", "a list of layer indices", full)
        types = [LAYER_TYPES[i in full] for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        raise wrong("layer_types", f"a list of the {layers} layers' types", types)
    if any(kind not in LAYER_TYPES for kind in types):
        raise wrong("layer_types", "a list of conv and full_attention", types)
    return [i for i, kind in enumerate(types) if kind == "conv"]


def read_lfm2(cfg: Config, family: str, defaults: Config) -> tuple[Config, Config]:
    """An Architecture's fields from an LFM2 config.json (``defaults``: its config class's),
    and that config with the defaults and aliases applied; the MLP width as config.json
    gives it (lfm2 derives its own: ``mlp_width``)."""
    # Lfm2Config.__post_init__ (and Lfm2MoeConfig's): tie_embedding, where given, wins
    given = {k: v for k, v in cfg.items() if v is not None or k == "block_ffn_dim_multiplier"}
    full: Config = {**defaults, **given, "hidden_act": "silu", "attention_bias": False}
    if "tie_embedding" in given:
        full["tie_word_embeddings"] = given["tie_embedding"]
    full.pop("sliding_window", None)  # (neither config class has a window)
    out = read_llama_like(full, family, LlamaKeys())
    out["max_position_embeddings"] = opt(full, "max_position_embeddings", limits.TOKENS)
    out["qk_norm"] = True
    indices = conv_layer_indices(full, out["num_layers"])
    if indices:
        out["short_conv"] = {
            "indices": tuple(indices),
            "kernel": opt(full, "conv_L_cache"),
            "bias": flag(full, "conv_bias", False),
        }
    return out, full


def _read(cfg: Config) -> Config:
    # Lfm2Config.__post_init__: block_ff_dim, where given, wins
    if cfg.get("block_ff_dim") is not None:
        cfg = {**cfg, "intermediate_size": cfg["block_ff_dim"]}
    out, full = read_lfm2(cfg, "lfm2", DEFAULTS)
    out["intermediate_size"] = mlp_width(full, out["intermediate_size"])
    return out


def build_lfm2(arch: Architecture) -> Config:
    """The transformers config of ``arch``'s attention and conv layers: its layer_types in
    its order, the conv's taps and biases."""
    kw = build_llama_like(arch, LlamaKeys())
    if arch.head_dim is None:  # (Lfm2Attention: hidden / heads unless the config says)
        kw.pop("head_dim")
    conv, blocks = arch.short_conv, arch.short_conv_blocks
    kw.update(
        layer_types=[
            LAYER_TYPES[blocks is None or not blocks.holds(i)] for i in range(arch.num_layers)
        ],
        tie_word_embeddings=arch.tie_embeddings,
        vocab_size=arch.vocab_size,
    )
    if conv is not None:
        kw.update(conv_L_cache=conv.kernel, conv_bias=conv.bias)
    return kw


def _build(arch: Architecture) -> Config:
    """The transformers config of ``arch``, the MLP's width as is (block_auto_adjust_ff_dim
    off)."""
    return {**build_lfm2(arch), "block_auto_adjust_ff_dim": False}


NAMES = ModuleNames(
    blocks=LLAMA_NAMES.blocks,
    attention={**LLAMA_NAMES.attention, "o": "self_attn.out_proj"},
    mlp={"gate": "feed_forward.w1", "up": "feed_forward.w3", "down": "feed_forward.w2"},
    norms={2: ("operator_norm", "ffn_norm")},
    embedding=LLAMA_NAMES.embedding,
    final_norm="model.embedding_norm",
)

FAMILY = Family(
    name="lfm2",
    model_types=("lfm2",),
    decoder_layer="Lfm2DecoderLayer",
    config=ConfigMap(_read, _build),
    names=NAMES,
    qk_norm=True,
    qk_norm_names=("q_layernorm", "k_layernorm"),
    short_conv_module="conv",
    # not measured: nothing of ColossalAI's
    colossalai_policy=None,
)
