"""Llama 4's text model (model_type llama4_text; transformers 5.25
models/llama4/modeling_llama4.py): the two facts ftmem's refusal of it rests on, checked
against the real modules, for calibration/notes/peft.md "Llama 4's text model (stop 51,
helper llama4)". Nothing here enters ftmem, the calibration set or the test suite.

1. The parameter count by hand (symbols below) equals Llama4ForCausalLM's on the meta
   device: the tiny model of the notes, Llama4TextConfig's defaults, and the widths of the
   16- and 128-expert models (from public test fixtures, not a config.json: no preset).
2. What one MoE block (Llama4TextMoe) keeps for backward, by formula, equals the bytes of
   the distinct non-parameter tensors autograd saves in its forward (saved_tensors_hooks),
   in fp32 and bf16, with the block's weights trained (full) or frozen (LoRA q,v).
3. What the attention keeps (Llama4TextAttention with sdpa, b*s within
   attention_chunk_size), by formula, equals the same count in a rotary layer with its
   weightless qk_norm and in a rotary-free layer with attention temperature tuning.

Symbols: T tokens (b*s), H hidden_size, E num_local_experts, k num_experts_per_tok,
I intermediate_size (each expert's and the shared expert's width), e the bytes of the
compute dtype. Llama4TextMoe.forward repeats the T tokens E times (``hidden_states.repeat``)
and scales each copy by its sigmoid score, -inf -> 0 off the top k (Llama4Router): every
token goes through every expert (torch.bmm over (E, T, H)), so what the block keeps grows
with E, not with k.

Run from the repository root: python calibration/notes/llama4_text.py
"""

import torch  # noqa: TID251 (a measurement beside the notes, not ftmem)
from transformers import Llama4ForCausalLM, Llama4TextConfig  # noqa: TID251

TINY = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 32,
    "intermediate_size_mlp": 48,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_local_experts": 4,
    "num_experts_per_tok": 1,
    "interleave_moe_layer_step": 2,
}
# widths of the 16-expert (Scout) and 128-expert (Maverick) text models as public test
# fixtures write them (not a config.json: checks of the formula only)
SIXTEEN = {
    "vocab_size": 202048,
    "hidden_size": 5120,
    "intermediate_size": 8192,
    "intermediate_size_mlp": 16384,
    "num_hidden_layers": 48,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "num_local_experts": 16,
    "num_experts_per_tok": 1,
    "interleave_moe_layer_step": 1,
}
ONE_TWENTY_EIGHT = {**SIXTEEN, "num_local_experts": 128, "interleave_moe_layer_step": 2}


def by_hand(cfg: Llama4TextConfig) -> int:
    """V vocab, H hidden, L layers, n/m query/key-value heads of d, I the experts' (and the
    shared expert's) width, J the dense layers' MLP width, E experts; M the MoE layers."""
    V, H, L = cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers
    n, m, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    I, J, E = cfg.intermediate_size, cfg.intermediate_size_mlp, cfg.num_local_experts
    M = len(cfg.moe_layers)
    bias = cfg.attention_bias
    attention = 2 * H * n * d + 2 * H * m * d + (2 * m * d + n * d + H if bias else 0)
    norms = 2 * H  # input_layernorm, post_attention_layernorm (qk_norm has no weight)
    # router (H -> E), gate_up_proj (E, H, 2I), down_proj (E, I, H), shared SwiGLU of I
    moe = H * E + E * H * 2 * I + E * I * H + 3 * H * I
    dense = 3 * H * J
    head = 0 if cfg.tie_word_embeddings else V * H
    return V * H + L * (attention + norms) + M * moe + (L - M) * dense + H + head


def check_counts() -> None:
    for name, kw in (
        ("tiny", TINY),
        ("defaults", {}),
        ("16E", SIXTEEN),
        ("128E", ONE_TWENTY_EIGHT),
    ):
        cfg = Llama4TextConfig(**kw)
        with torch.device("meta"):
            model = Llama4ForCausalLM(cfg)
        real = sum(p.numel() for p in model.parameters())
        print(
            f"count {name:8s} moe_layers {len(cfg.moe_layers):2d}/{cfg.num_hidden_layers}: "
            f"by hand {by_hand(cfg):,} transformers {real:,}"
        )
        assert by_hand(cfg) == real


def moe_kept(T: int, cfg: Llama4TextConfig, e: int, weights_train: bool) -> int:
    """What Llama4TextMoe keeps (the block's input needing a gradient)."""
    H, E, k, I = (
        cfg.hidden_size,
        cfg.num_local_experts,
        cfg.num_experts_per_tok,
        cfg.intermediate_size,
    )
    kept = 0
    if weights_train:
        kept += T * H * e  # the block's input (router's linear, the shared gate/up's)
    kept += T * k * 8  # topk indices (scatter_)
    kept += T * E * 4  # the sigmoid's fp32 output (router_scores.float())
    kept += E * T * H * e + E * T * e  # repeat(E, 1) and the score column (their product)
    kept += E * T * 2 * I * e  # gate_up (chunked to gate and up: silu's input, the product's)
    kept += E * T * I * e  # silu(gate)
    kept += 3 * T * I * e  # the shared expert's gate and up outputs, silu(gate)
    if weights_train:
        # the bmm inputs for the weights' gradients: the scaled copies (gate_up_proj's),
        # up * silu(gate) (down_proj's), and the shared expert's product (its down_proj's)
        kept += E * T * H * e + E * T * I * e + T * I * e
    return kept


def measured_moe(
    dtype: torch.dtype, weights_train: bool, b: int = 3, s: int = 50
) -> tuple[int, int]:
    torch.manual_seed(0)
    cfg = Llama4TextConfig(**TINY)
    model = Llama4ForCausalLM(cfg).to(dtype).train()
    if not weights_train:
        model.requires_grad_(False)
        model.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)  # an input grad
    block = model.model.layers[1].feed_forward  # layer 1 is a MoE layer (step 2)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    inside = [False]

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if inside[0] and ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    block.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    block.register_forward_hook(lambda *_: inside.__setitem__(0, False))
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(seen.values()), moe_kept(b * s, cfg, dtype.itemsize, weights_train)


def check_moe() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for weights_train in (True, False):
            real, formula = measured_moe(dtype, weights_train)
            what = "trained" if weights_train else "frozen "
            print(f"MoE block {dtype!s:15s} {what}: formula {formula:,} saved {real:,}")
            assert formula == real


def attention_kept(b: int, s: int, cfg: Llama4TextConfig, e: int, rope: bool) -> int:
    """What Llama4TextAttention keeps (its weights trained), n/m query/key-value heads of
    d: the input, the qk_norm's fp32 copies of the rotated q and k and their rsqrt (rotary
    layers, use_qk_norm), the temperature scales (rotary-free layers: s fp32, expanded over
    the batch), and sdpa's q, k, v, output and fp32 logsumexp (torch's CPU flash kernel)."""
    T, H = b * s, cfg.hidden_size
    n, m, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    kept = T * H * e + T * (2 * n + 2 * m) * d * e + b * n * s * 4
    if rope:
        kept += T * (n + m) * d * 4 + T * (n + m) * 4
    else:
        kept += s * 4
    return kept


def measured_attention(dtype: torch.dtype, b: int = 3, s: int = 50) -> list[tuple[int, int]]:
    """Layer 0 (rotary, qk_norm) and layer 3 (no rotary: no_rope_layers' every fourth)."""
    torch.manual_seed(0)
    cfg = Llama4TextConfig(**TINY, attn_implementation="sdpa")
    model = Llama4ForCausalLM(cfg).to(dtype).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    # (the rotary table, complex64 (1, s, 1, d/2), is the model's, shared by every layer)
    table: set[int] = set()
    kept: dict[int, dict[int, int]] = {0: {}, 3: {}}
    where: list[int | None] = [None]

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if t.is_complex():
            table.add(ptr)
        elif where[0] is not None and ptr not in params:
            kept[where[0]][ptr] = t.untyped_storage().nbytes()
        return t

    for i in kept:
        attn = model.model.layers[i].self_attn
        attn.register_forward_pre_hook(lambda *_, i=i: where.__setitem__(0, i))
        attn.register_forward_hook(lambda *_: where.__setitem__(0, None))
    ids = torch.randint(0, cfg.vocab_size, (b, s))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    assert len(table) == 1
    e = dtype.itemsize
    return [
        (sum(kept[0].values()), attention_kept(b, s, cfg, e, rope=True)),
        (sum(kept[3].values()), attention_kept(b, s, cfg, e, rope=False)),
    ]


def check_attention() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        for (real, formula), what in zip(
            measured_attention(dtype), ("rotary", "no rotary"), strict=True
        ):
            print(f"attention {dtype!s:15s} {what:9s}: formula {formula:,} saved {real:,}")
            assert formula == real


if __name__ == "__main__":
    check_counts()
    check_moe()
    check_attention()
