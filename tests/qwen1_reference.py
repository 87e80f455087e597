"""A small re-implementation of Qwen-1's QWenLMHeadModel for the CPU accuracy cases
(tests/accuracy/cases.py Qwen1Case) and tests/test_qwen1.py: transformers cannot build the
remote code offline.

Written for these tests, following modeling_qwen.py of the Qwen/Qwen-7B repository as
mirrored at zhangningboo/Qwen-7B@e7a368b0774370edec29674e7c51f52fc7663f59 (2023-11-30):
the same modules, tensor shapes, dtypes and op order on the path a CPU training step
takes (no flash-attn: ``query.is_cuda`` is false, so apply_rotary_pos_emb's torch
branch, RMSNorm's ``_norm(x.float())`` and the sdpa call with an explicit bool causal
mask). What the step never runs is left out: the KV cache and its quantisation,
logn scaling and dynamic NTK (both only ``not self.training``), attention-mask padding,
head masks, generation. Class and attribute names are the file's, so that parameter
names (``transformer.h.0.attn.c_attn.weight``) and LoRA targets match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


@dataclass
class QWenConfig:
    """configuration_qwen.py QWenConfig's keys that shape the model."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    kv_channels: int
    intermediate_size: int
    seq_length: int = 8192
    rotary_pct: float = 1.0
    rotary_emb_base: float = 10000.0
    layer_norm_epsilon: float = 1e-6
    no_bias: bool = True
    emb_dropout_prob: float = 0.0
    tie_word_embeddings: bool = False
    model_type: str = "qwen"


class RotaryEmbedding(nn.Module):
    """modeling_qwen.py RotaryEmbedding: an fp32 cos/sin cache of max(2·s, 16) positions,
    kept on the module (not a buffer) and sliced per call."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._rotary_pos_emb_cache: list[torch.Tensor] | None = None
        self._seq_len_cached = 0

    def forward(self, max_seq_len: int) -> list[torch.Tensor]:
        if max_seq_len > self._seq_len_cached:  # update_rotary_pos_emb_cache, ntk_alpha 1
            # the buffer is made again in fp32, whatever .bfloat16() made of it
            base = self.base * 1.0 ** (self.dim / (self.dim - 2))
            arange = torch.arange(0, self.dim, 2, device=self.inv_freq.device).float()
            self.inv_freq = 1.0 / (base ** (arange / self.dim))
            self._seq_len_cached = max(2 * max_seq_len, 16)
            seq = torch.arange(self._seq_len_cached, device=self.inv_freq.device)
            freqs = torch.outer(seq.type_as(self.inv_freq), self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            emb = emb[None, :, None, :]  # rearrange "n d -> 1 n 1 d"
            self._rotary_pos_emb_cache = [emb.cos(), emb.sin()]
        assert self._rotary_pos_emb_cache is not None
        cos, sin = self._rotary_pos_emb_cache
        return [cos[:, :max_seq_len], sin[:, :max_seq_len]]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x = x.unflatten(-1, (2, -1))  # rearrange "... (j d) -> ... j d", j=2
    x1, x2 = x.unbind(dim=-2)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(t: torch.Tensor, freqs: list[torch.Tensor]) -> torch.Tensor:
    rot_dim = freqs[0].shape[-1]
    cos, sin = freqs
    t_float = t.float()
    t_rot, t_pass = t_float[..., :rot_dim], t_float[..., rot_dim:]
    t_rot = (t_rot * cos) + (_rotate_half(t_rot) * sin)
    return torch.cat((t_rot, t_pass), dim=-1).type_as(t)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self._norm(x.float()).type_as(x)
        return output * self.weight


class QWenAttention(nn.Module):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__()
        self.register_buffer("masked_bias", torch.tensor(-1e4), persistent=False)
        self.seq_length = config.seq_length
        self.hidden_size = config.hidden_size
        self.split_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.hidden_size // self.num_heads
        self.projection_size = config.kv_channels * config.num_attention_heads
        self.c_attn = nn.Linear(config.hidden_size, 3 * self.projection_size)
        self.c_proj = nn.Linear(config.hidden_size, self.projection_size, bias=not config.no_bias)
        logn_list = [
            math.log(i, self.seq_length) if i > self.seq_length else 1 for i in range(1, 32768)
        ]
        logn_tensor = torch.tensor(logn_list)[None, :, None, None]
        self.register_buffer("logn_tensor", logn_tensor, persistent=False)

    def _split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view((*tensor.size()[:-1], self.num_heads, self.head_dim))

    def _merge_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        return tensor.view((*tensor.size()[:-2], self.num_heads * self.head_dim))

    def forward(self, hidden_states: torch.Tensor, rotary_pos_emb_list: list) -> torch.Tensor:
        mixed_x_layer = self.c_attn(hidden_states)
        query, key, value = mixed_x_layer.split(self.split_size, dim=2)
        query, key, value = map(self._split_heads, (query, key, value))
        cur_len = query.shape[1]
        rotary_pos_emb = [i[:, -cur_len:, :, :] for i in rotary_pos_emb_list[0]]
        query = apply_rotary_pos_emb(query, rotary_pos_emb)
        key = apply_rotary_pos_emb(key, rotary_pos_emb)
        key_size = key.size(1)
        causal_mask = torch.tril(
            torch.ones((key_size, key_size), dtype=torch.bool, device=query.device)
        ).view(1, 1, key_size, key_size)
        query = query.permute(0, 2, 1, 3)
        key = key.permute(0, 2, 1, 3)
        value = value.permute(0, 2, 1, 3)
        attn_output = F.scaled_dot_product_attention(
            query, key, value, attn_mask=causal_mask
        ).transpose(1, 2)
        context_layer = self._merge_heads(attn_output)
        return self.c_proj(context_layer)


class QWenMLP(nn.Module):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__()
        width = config.intermediate_size // 2
        self.w1 = nn.Linear(config.hidden_size, width, bias=not config.no_bias)
        self.w2 = nn.Linear(config.hidden_size, width, bias=not config.no_bias)
        self.c_proj = nn.Linear(width, config.hidden_size, bias=not config.no_bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        a1 = self.w1(hidden_states)
        a2 = self.w2(hidden_states)
        intermediate_parallel = a1 * F.silu(a2)
        return self.c_proj(intermediate_parallel)


class QWenBlock(nn.Module):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__()
        self.ln_1 = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = QWenAttention(config)
        self.ln_2 = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = QWenMLP(config)

    def forward(self, hidden_states: torch.Tensor, rotary_pos_emb_list: list) -> torch.Tensor:
        layernorm_output = self.ln_1(hidden_states)
        attn_output = self.attn(layernorm_output, rotary_pos_emb_list)
        layernorm_input = attn_output + hidden_states
        layernorm_output = self.ln_2(layernorm_input)
        mlp_output = self.mlp(layernorm_output)
        return layernorm_input + mlp_output


class QWenModel(nn.Module):
    def __init__(self, config: QWenConfig) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.drop = nn.Dropout(config.emb_dropout_prob)
        rot = int(config.kv_channels * config.rotary_pct) if config.rotary_pct < 1 else None
        self.rotary_emb = RotaryEmbedding(rot or config.kv_channels, base=config.rotary_emb_base)
        self.h = nn.ModuleList(QWenBlock(config) for _ in range(config.num_hidden_layers))
        self.ln_f = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden_states = self.wte(input_ids)
        rotary_pos_emb_list = [self.rotary_emb(hidden_states.size()[1])]
        hidden_states = self.drop(hidden_states)
        for block in self.h:
            if self.gradient_checkpointing and self.training:
                # QWenModel.forward: torch.utils.checkpoint.checkpoint per block (reentrant
                # by torch 2.0's default there; measured here non-reentrant, as ftmem
                # measures every family)
                hidden_states = torch.utils.checkpoint.checkpoint(
                    block, hidden_states, rotary_pos_emb_list, use_reentrant=False
                )
            else:
                hidden_states = block(hidden_states, rotary_pos_emb_list)
        return self.ln_f(hidden_states)


class QWenLMHeadModel(nn.Module):
    """The causal LM; ``forward(input_ids=...)`` returns the logits as computed (its own
    loss is measure.step's ``_shifted_loss``, QWenLMHeadModel.forward's lines)."""

    def __init__(self, config: QWenConfig) -> None:
        super().__init__()
        self.config = SimpleNamespace(**vars(config), use_return_dict=True)
        self.transformer = QWenModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        hidden_states = self.transformer(input_ids)
        return SimpleNamespace(logits=self.lm_head(hidden_states))

    # what peft's PeftModelForCausalLM reads of a base model (QWenLMHeadModel is a
    # PreTrainedModel: peft 0.21.2 peft_model.py:184 reads is_gradient_checkpointing, True
    # when missing, and then makes the embedding output require a gradient)
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.transformer.gradient_checkpointing

    def prepare_inputs_for_generation(self, *args: object, **kwargs: object) -> dict:
        raise NotImplementedError

    def get_input_embeddings(self) -> nn.Module:
        return self.transformer.wte

    def enable_input_require_grads(self) -> None:
        """PreTrainedModel.enable_input_require_grads, as Qwen's finetune.py calls it for
        LoRA with checkpointing: the embedding's output requires a gradient."""

        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        self._require_grads_hook = self.transformer.wte.register_forward_hook(hook)


# --------------------------------------------------------------------------------------
# measuring it as tests/accuracy measures the families transformers builds
# --------------------------------------------------------------------------------------
# Qwen/Qwen-7B's config.json as published (zhangningboo/Qwen-7B@e7a368b077 config.json)
QWEN_7B = {
    "architectures": ["QWenLMHeadModel"],
    "attn_dropout_prob": 0.0,
    "bf16": False,
    "emb_dropout_prob": 0.0,
    "fp16": False,
    "fp32": False,
    "hidden_size": 4096,
    "intermediate_size": 22016,
    "kv_channels": 128,
    "layer_norm_epsilon": 1e-06,
    "max_position_embeddings": 32768,
    "model_type": "qwen",
    "no_bias": True,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "rotary_emb_base": 10000,
    "rotary_pct": 1.0,
    "seq_length": 8192,
    "tie_word_embeddings": False,
    "use_dynamic_ntk": True,
    "use_flash_attn": "auto",
    "use_logn_attn": True,
    "vocab_size": 151936,
}
# the tiny shape of the accuracy cases: Qwen-7B's config.json with these keys
TINY = {
    "vocab_size": 128,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "kv_channels": 16,
    "intermediate_size": 256,
}


def tiny_config(**changes: object) -> dict:
    return {**QWEN_7B, **TINY, **changes}


def measure(arch, run):  # -> ftmem.measure.Measurement
    """One steady-state step of the re-implementation for ``arch`` (read from
    :func:`tiny_config`) under ``run``: its trainable set as ftmem's measurement builds it
    (peft for the LoRA family), checkpointing as QWenModel.forward runs it, measured by
    ftmem.measure.step.run_steps. The weights are its parameters and the blocks'
    registered buffers, as the estimate counts them (Family.block_buffers)."""
    import dataclasses

    from ftmem.measure.build import Built, _with_trainable_set, autocast_dtype, param_dtype
    from ftmem.measure.step import run_steps

    keys = {k: v for k, v in tiny_config().items() if k in QWenConfig.__dataclass_fields__}
    keys.update(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        kv_channels=arch.head_size,
        intermediate_size=2 * arch.intermediate_size,
    )
    torch.manual_seed(0)
    model = QWenLMHeadModel(QWenConfig(**keys)).to(param_dtype(run))
    notes: list[str] = []
    model = _with_trainable_set(model, arch, run, notes)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if run.grad_ckpt:  # HF Trainer's gradient_checkpointing_enable, finetune.py's hook
        base.transformer.gradient_checkpointing = True
        base.enable_input_require_grads()
    model.train()
    run = run if run.loss != "standard" else run.model_copy(update={"loss": "shifted"})
    got = run_steps(arch, run, built=Built(model, autocast_dtype(run), "sdpa", notes))
    blocks = sum(b.untyped_storage().nbytes() for b in base.transformer.h.buffers())
    return dataclasses.replace(got, weights_bytes=got.weights_bytes + blocks)
