"""The token embedding (and learned or rotary positions): what it keeps, and a tied
embedding's gradient sum."""

from __future__ import annotations

from ftmem.arch import TOKEN_EMBEDDINGS, Architecture, Param, layout
from ftmem.dtypes import FP32, INDEX_BYTES
from ftmem.methods import TensorGroup
from ftmem.ops.registry import register
from ftmem.ops.saved import Saved
from ftmem.run import RunConfig
from ftmem.versions import rotary_tables_per_layer


@register("embedding")
class Embedding:
    """Token ids in, hidden states out; positions beside them."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        """The token embedding, and a learned position table (an encoder-decoder's
        position parameters are its attention's relative bias)."""
        positions = () if arch.encoder_decoder else ("position",)
        return tuple(p for p in layout(arch).outer if p.kind in ("embedding", *positions))

    @staticmethod
    def saved(arch: Architecture, run: RunConfig, T: int, train: bool) -> list[Saved]:
        """The token ids (and learned position ids) the embedding's gradient reads, when
        it trains (``train``: everything outside the blocks does)."""
        out = [Saved("embedding token ids", T * INDEX_BYTES)]
        if arch.position_embedding == "learned" and train:
            out.append(Saved("position ids", (T // run.batch_size) * INDEX_BYTES))
        return out

    @staticmethod
    def rotary_saved(arch: Architecture, run: RunConfig, T: int, residual: int) -> list[Saved]:
        """Rotary's cos and sin tables (s × rotary_dim), shared by every layer's rotary
        multiply, computed in the residual dtype (fp32 under autocast with fp32
        weights); kept when the blocks need gradients. Qwen-VL's M-RoPE makes one table
        per sequence (position ids 3 × batch × s: transformers 5.24
        Qwen2_5_VLRotaryEmbedding.forward returns cos and sin of batch × s × head_dim)."""
        if arch.position_embedding != "rotary" or rotary_tables_per_layer(arch, run):
            return []
        e = FP32 if arch.traits.rotary_tables_fp32 else residual
        width = arch.rotary_size // 2 if arch.traits.rotary_tables_half else arch.rotary_size
        positions = T if arch.vision is not None and arch.vision.qwen else T // run.batch_size
        if arch.traits.rotary_tables_cached:
            if run.grad_ckpt:  # only the blocks' recompute multiplies by them
                return []
            positions = max(2 * positions, 16)  # slices keep the whole cache's storage
        return [Saved("rotary cos/sin", 2 * positions * width * e)]

    @staticmethod
    def unread_rotary_held(arch: Architecture, run: RunConfig, residual: int) -> int:
        """An ALiBi model whose forward computes the rotary cos and sin all the same
        (Family.rotary_tables_with_alibi): under checkpointing every checkpoint holds them
        as a block input until the backward has passed the blocks, saved by no node (two
        s × head_dim tables in the embeddings' dtype; measured on the tiny falcon-rw, 9,600
        B under autocast)."""
        if not (run.grad_ckpt and arch.position_embedding == "alibi"):
            return 0
        if not arch.traits.rotary_tables_with_alibi:
            return 0
        return 2 * run.positions * arch.head_size * residual

    @staticmethod
    def backward_workspace(arch: Architecture, grad_groups: list[TensorGroup]) -> int:
        """A trained tied embedding: at the end of backward the embedding path's gradient
        and its sum with the LM head path's are both new (vocab × hidden) tensors."""
        if not arch.tie_embeddings:
            return 0
        return sum(
            2 * g.total_numel * g.element_bytes
            for g in grad_groups
            if not g.in_block and g.name.endswith(TOKEN_EMBEDDINGS)
        )
