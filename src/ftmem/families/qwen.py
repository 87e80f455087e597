"""Qwen (1st generation: Qwen-1.8B/7B/14B/72B, QWenLMHeadModel): remote code on the Hub
(``trust_remote_code``), not in transformers. Read in the Qwen/Qwen-7B repository's code,
mirrored at zhangningboo/Qwen-7B@e7a368b0774370edec29674e7c51f52fc7663f59 (2023-11-30, the
1.8B/7B/14B repositories share the file): modeling_qwen.py, configuration_qwen.py.

A Llama-shaped pre-norm block under other names: one fused ``c_attn`` (h -> 3·heads·kv_channels,
``nn.Linear`` with its default bias whatever ``no_bias`` says), ``c_proj`` (no bias when
``no_bias``), RMSNorms ``ln_1``/``ln_2``, and an MLP ``a1 * F.silu(a2)`` with a1 = ``w1(x)``
(the up half) and a2 = ``w2(x)`` (the gate), each ``intermediate_size // 2`` wide, then
``mlp.c_proj`` back (QWenAttention.__init__, QWenMLP). What differs from transformers' Llama
in the step, as flags:
- apply_rotary_pos_emb turns ``t.float()`` with the fp32 cos/sin of RotaryEmbedding's cache,
  which holds max(2·s, 16) positions (update_rotary_pos_emb_cache) and which every layer's
  multiply keeps through a slice (checkpointed blocks keep none of it; the cache, 16 MiB at
  8,192 tokens for Qwen-7B, stays on the module and is then not counted);
- without flash-attn (the CPU, fp32, or flash-attn not installed) sdpa gets an explicit
  (1, 1, s, s) bool causal mask (QWenAttention.forward), which sdpa turns into a float mask
  per call and keeps;
- the loss is the model's own (QWenLMHeadModel.forward: a contiguous copy of the shifted
  logits, CrossEntropyLoss without an upcast): ``--loss shifted``, run whenever the model
  computes the loss from its labels (HF Trainer, TRL's SFT).
What the config says but the step does not read: ``use_logn_attn`` and ``use_dynamic_ntk``
act only when not training (QWenAttention.forward, QWenModel.forward); ``bf16/fp16/fp32``
all false (as shipped) makes QWenLMHeadModel.__init__ cast the model to bf16 on a GPU that
has it (fp16 otherwise), whatever from_pretrained was given: the run's ``--precision``
says it. Each attention layer registers a (1, 32767, 1, 1) ``logn_tensor`` buffer and a
scalar ``masked_bias`` (QWenAttention.__init__), which ``.bfloat16()`` casts with the
weights: 64 KiB a layer in bf16, 2 MiB for Qwen-7B, counted with the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import ConfigMap, Family, ModuleNames
from ftmem.families._config import Config, flag, need, number, opt, rotary_dim
from ftmem.ops.nograd_fused_qkv import fused_qkv_block_forward

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# configuration_qwen.py QWenConfig.__init__ defaults (Qwen-7B's values)
DEFAULT_KV_CHANNELS = 128
DEFAULT_INTERMEDIATE = 22016
# QWenAttention.__init__: logn_tensor over range(1, 32768), and masked_bias
LOGN_ENTRIES = 32767
BLOCK_BUFFERS = LOGN_ENTRIES + 1


def _read(cfg: Config) -> Config:
    h, heads = need(cfg, "hidden_size"), need(cfg, "num_attention_heads")
    kv_channels = opt(cfg, "kv_channels") or DEFAULT_KV_CHANNELS
    # QWenAttention splits c_attn's output every hidden_size columns and c_proj reads
    # heads × (hidden_size // heads): the code runs only when the two widths agree
    if kv_channels * heads != h:
        raise ConfigError(
            f"config.json (qwen): kv_channels {kv_channels} × num_attention_heads {heads} "
            f"must equal hidden_size {h}; QWenAttention splits its fused projection by "
            "hidden_size."
        )
    # QWenMLP: w1 and w2 are intermediate_size // 2 wide each
    width = (opt(cfg, "intermediate_size") or DEFAULT_INTERMEDIATE) // 2
    if width < 1:
        raise ConfigError("config.json (qwen): intermediate_size must be at least 2.")
    if (number(cfg, "attn_dropout_prob") or 0.0) > 0:
        raise ConfigError(
            "config.json (qwen): attn_dropout_prob above 0 (flash-attn's dropout on the "
            "attention probabilities) is not modelled; the released configs ship 0.0."
        )
    no_bias = flag(cfg, "no_bias", True)
    out: Config = {
        "family": "qwen",
        "vocab_size": need(cfg, "vocab_size"),
        "hidden_size": h,
        "num_layers": need(cfg, "num_hidden_layers", bound=limits.LAYERS),
        "num_heads": heads,
        "head_dim": kv_channels,
        "intermediate_size": width,
        "attention_qkv_bias": True,  # c_attn: nn.Linear's default bias
        "attention_out_bias": not no_bias,
        "mlp_bias": not no_bias,
        "tie_embeddings": flag(cfg, "tie_word_embeddings", False),
        # the trained length (seq_length); max_position_embeddings is what dynamic NTK
        # reaches in inference only
        "max_position_embeddings": opt(cfg, "seq_length", limits.TOKENS)
        or opt(cfg, "max_position_embeddings", limits.TOKENS)
        or 8192,
    }
    rot = rotary_dim(cfg, kv_channels, ("rotary_pct",), 1.0)
    if rot is not None:
        out["rotary_dim"] = rot
    return out


def _build(arch: Architecture) -> Config:
    """QWenConfig's keys for ``arch`` (remote code: transformers cannot build it; these
    are what a config.json for it holds)."""
    if arch.attention_out_bias != arch.mlp_bias or not arch.attention_qkv_bias:
        raise ValueError("qwen: c_attn always has a bias; no_bias sets c_proj's and the MLP's")
    return {
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "kv_channels": arch.head_size,
        "intermediate_size": 2 * arch.intermediate_size,
        "no_bias": not arch.mlp_bias,
        "rotary_pct": arch.rotary_size / arch.head_size,
        "seq_length": arch.max_position_embeddings,
        "attn_dropout_prob": 0.0,
    }


FAMILY = Family(
    name="qwen",
    model_types=("qwen",),
    decoder_layer="QWenBlock",
    config=ConfigMap(_read, _build),
    names=ModuleNames(
        blocks="transformer.h",
        attention={"qkv": "attn.c_attn", "o": "attn.c_proj"},
        # a1 = w1(x) multiplies F.silu(w2(x)): w2 is the gate
        mlp={"gate": "mlp.w2", "up": "mlp.w1", "down": "mlp.c_proj"},
        norms={2: ("ln_1", "ln_2")},
        embedding="transformer.wte",
        final_norm="transformer.ln_f",
    ),
    rotary_tables_fp32=True,
    rotary_tables_cached=True,
    block_forward=fused_qkv_block_forward,
    sdpa_explicit_mask=True,
    own_loss="shifted",
    block_buffers=BLOCK_BUFFERS,
    # emb_dropout_prob: QWenModel's self.drop on the embeddings (0.0 in the released configs)
    dropout_keys={"embedding_dropout": "emb_dropout_prob"},
    notes={
        "model": "Qwen-1 (remote code): its forward computes the loss itself, a contiguous "
        "copy of the shifted logits and cross-entropy without an upcast (--loss shifted, "
        "estimated for supervised finetuning's --loss standard); with bf16, fp16 and fp32 all "
        "false in config.json (as released) it casts itself to bf16 on a GPU that has it, "
        "fp16 otherwise, whatever from_pretrained is given: --precision bf16 (or fp16) says "
        "that."
    },
)
