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
    def rotary_tables(
        arch: Architecture, run: RunConfig, T: int, residual: int, grad_blocks: int | None = None
    ) -> tuple[int, ...]:
        """The model's shared rotary cos and sin (s × rotary_dim each), bytes of each:
        computed in the residual dtype (fp32 under autocast with fp32 weights). Qwen-VL's
        M-RoPE makes one table per sequence (position ids 3 × batch × s: transformers 5.24
        Qwen2_5_VLRotaryEmbedding.forward returns cos and sin of batch × s × head_dim);
        Gemma 3 one pair per layer type (rotary_tables_per_layer_type). None where every
        layer builds its own (rotary_tables_per_layer). ``grad_blocks``: with one pair per
        layer type, only the pairs of the types among the top ``grad_blocks`` blocks (those
        needing gradients, whose rotary multiplies keep them; the top blocks are the full
        ones, step._sliding_blocks); None: every block's."""
        if arch.position_embedding != "rotary" or rotary_tables_per_layer(arch, run):
            return ()
        e = FP32 if arch.traits.rotary_tables_fp32 else residual
        width = arch.rotary_size // 2 if arch.traits.rotary_tables_half else arch.rotary_size
        per_sequence = arch.vision is not None and arch.vision.qwen
        per_sequence = per_sequence or arch.traits.rotary_tables_per_sequence
        positions = T if per_sequence else T // run.batch_size
        if arch.traits.rotary_tables_cached:
            positions = max(2 * positions, 16)  # slices keep the whole cache's storage
        if arch.traits.rotary_on_sliding_layers_only:  # (one pair, read where it slides)
            top = arch.num_layers if grad_blocks is None else min(grad_blocks, arch.num_layers)
            slides = top - min(top, arch.full_layers) > 0 and arch.sliding_layers
            return (positions * width * e,) * (2 if slides else 0)
        if arch.traits.rotary_tables_per_layer_type:
            top = arch.num_layers if grad_blocks is None else min(grad_blocks, arch.num_layers)
            full = min(top, arch.full_layers)
            # (each type's pair as wide as its heads: Gemma 4's global layers' tables are
            # global_head_dim wide, modeling_gemma4.py l.1093-1099 builds each type's
            # inv_freq from per_layer_config[layer_type])
            full_rotary = arch.of_layer_type(full=True).rotary_size
            full_width = full_rotary // 2 if arch.traits.rotary_tables_half else full_rotary
            widths = [full_width] if full else []
            widths += [width] if top - full > 0 and arch.sliding_layers else []
            return tuple(positions * w * e for w in widths for _ in (0, 1))
        return (positions * width * e,) * 2

    @staticmethod
    def rotary_saved(
        arch: Architecture, run: RunConfig, T: int, residual: int, grad_blocks: int | None = None
    ) -> list[Saved]:
        """The rotary tables, shared by every layer's rotary multiply, which keeps them
        when the blocks need gradients (the top ``grad_blocks``, None: all; OLMo 3 frozen
        below its top full layer keeps no sliding pair: 9,600 B over 1,329,004 measured
        before, tests/accuracy); a stack whose full layers take no rotary
        (Family.rotary_on_sliding_layers_only) keeps them only where a sliding block needs
        a gradient (rotary_tables). Checkpointed blocks hold them instead, saved by no node (rotary_held)."""
        if run.grad_ckpt:
            return []
        tables = Embedding.rotary_tables(arch, run, T, residual, grad_blocks)
        return [Saved("rotary cos/sin", sum(tables))] if tables else []

    @staticmethod
    def rotary_held(arch: Architecture, run: RunConfig, T: int, residual: int) -> tuple[int, ...]:
        """The rotary tables checkpointed blocks hold from the forward until the backward
        has passed them, saved by no autograd node: every decoder layer gets them as the
        keyword ``position_embeddings`` (a (cos, sin) tuple; e.g. transformers 5.25
        modeling_llama.py l.394-397), which GradientCheckpointingLayer binds in the
        ``partial(forward, self, **kwargs)`` it checkpoints (modeling_layers.py l.123);
        torch's non-reentrant checkpoint saves only the tensor positional arguments
        (torch 2.13 utils/checkpoint.py l.842-847, _CheckpointFrame.save_inputs), and
        the partial lives in the frame's recompute_fn until that block's backward. (The
        releases before GradientCheckpointingLayer, 4.52, passed the tuple positionally:
        no tensor either, saved by neither checkpoint variant.) Qwen-1's
        cached tables (rotary_tables_cached) are slices the recompute takes again: none
        held. One tensor each. A family whose layers rebuild their own tables from the
        model's pair (Family.rotary_tables_per_layer: GLM's and GLM-4's in the embeddings'
        dtype, transformers 5.25 modeling_glm4.py l.309; ERNIE 4.5's in fp32,
        modeling_ernie4_5.py l.85-91) holds that pair all the same."""
        if not run.grad_ckpt or arch.traits.rotary_tables_cached:
            return ()
        if arch.traits.rotary_tables_per_layer and arch.position_embedding == "rotary":
            e = FP32 if arch.traits.rotary_tables_fp32 else residual
            return (T // run.batch_size * arch.rotary_size * e,) * 2
        return Embedding.rotary_tables(arch, run, T, residual)

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
