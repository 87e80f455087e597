"""ColossalAI's sequence parallelism modes: what a rank keeps of a block's activations.

Read at hpcaitech/ColossalAI 4f9953be335e (paths under ``colossalai/``), the
``sequence_parallelism_mode`` of ``HybridParallelPlugin`` (and of ``GeminiPlugin`` with
``tp_size > 1``, which takes shardformer's default, ``split_gather``):

* ``split_gather`` / ``ring`` (Megatron's sequence parallelism, inside the TP group):
  the hidden states are split along the sequence between the TP ranks after the
  embedding (``shardformer/modeling/llama.py:160-163``), so the norms and the residual
  stream hold ``s/tp`` tokens; the final norm too, its output gathered whole for the LM
  head (``:230-232``). Every column-parallel linear gathers its input back to the whole
  sequence and keeps *both* the shard it was given (``save_for_backward``) and the
  gathered copy (``ctx.gathered_input``) until its backward
  (``shardformer/layer/_operation.py:538-566``; ``ring`` gathers piece by piece but keeps
  the same whole input, ``_ring_as_gather``). q, k and v (gate and up) are separate
  ``Linear1D_Col`` modules (``shardformer/policies/llama.py:115-170``): one gathered copy
  each. Row-parallel linears reduce-scatter their output and keep their (TP-split) input.
* ``all_to_all`` / ``ring_attn``: the sequence is split over ``sp_size`` ranks of their
  own (ftmem's ``--cp``) for the whole block. ``ring_attn`` runs ``RingAttention``
  (``shardformer/layer/attn.py:406``), whose backward holds double key/value buffers, the
  16-bit gradient blocks and fp32 accumulators beside the saved tensors (``:999-1007,
  1066``); its forward, double key/value buffers and two blocks' outputs (``:708-713``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ftmem import families
from ftmem.arch import Architecture, Role
from ftmem.dtypes import FP32, ceil_div
from ftmem.errors import InvalidInputError
from ftmem.ops.norm import NORM_KINDS
from ftmem.ops.saved import Kind, Saved
from ftmem.profiles import batch_padding, pads_batches
from ftmem.run import RunConfig

SpMode = Literal["split_gather", "ring", "all_to_all", "ring_attn"]
# the modes that split the sequence inside the TP group (sp_size forced to 1,
# booster/plugin/hybrid_parallel_plugin.py:1066-1076)
INSIDE_TP: frozenset[str] = frozenset({"split_gather", "ring"})
# the linears that read the TP-split hidden states and reduce-scatter their output
ROW_PARALLEL: frozenset[Role] = frozenset({"o", "down"})


def check_policy(arch: Architecture, hybrid: bool, mode: str | None, pp: int) -> None:
    """What shardformer refuses for this model: no policy at all under HybridParallelPlugin,
    or a sequence parallelism mode its policy does not run."""
    family = families.get(arch.family)
    modes = family.colossalai_policy
    if hybrid and modes is None:
        raise InvalidInputError(
            f"ColossalAI's shardformer has no policy for {arch.name} ({family.name}; "
            "shardformer/policies/auto_policy.py), which HybridParallelPlugin needs: use "
            "--strategy colossalai-zero2 or colossalai-gemini without --tp/--pp/--cp."
        )
    if mode is None:
        return
    if not modes:
        raise InvalidInputError(
            f"ColossalAI's {family.name} policy ignores sequence parallelism (it warns and "
            f"runs without it): drop --sp-mode and --cp for {arch.name}."
        )
    if mode not in modes:
        ran = ", ".join(sorted(modes))
        raise InvalidInputError(
            f"ColossalAI's {family.name} policy runs sequence parallelism as {ran}, not {mode}."
        )
    if pp > 1 and arch.is_moe:
        raise InvalidInputError(
            "ColossalAI's MoE policies (Mixtral's, DeepSeek's) refuse sequence parallelism with "
            "pipeline parallelism (policies/mixtral.py:74): drop --pp or --sp-mode."
        )


def shardformer_repeats_kv(
    arch: Architecture, flash: bool, mode: str | None, tp: int, cp: int
) -> bool:
    """ColossalAI's shardformer attention gives the kernel keys and values copied to every
    query head on this rank: the family's policy replaces the attention forward under
    flash attention or sequence parallelism (Family.colossalai_repeats_kv) and that
    forward runs transformers' ``repeat_kv`` before ColoAttention, RingAttention or the
    attention function (modeling/llama.py:551-552). A rank holds ``1/tp`` of the heads,
    ``1/(tp·cp)`` after all_to_all's exchange (policies/llama.py:64-72). One key/value
    head there repeats as a stride-0 view, which ColoAttention's flash-attn call keeps
    as it is (extensions/pybind/flash_attention/flash_attention_dao_cuda.py l.61-63:
    transposes only; its gradients are at every head: ops.attention kernel_gradients), but
    RingAttention copies (layer/attn.py:570 ``transpose(1, 2).contiguous()``, q's width
    whatever the kv heads). As many kv heads as heads are not repeated."""
    switches = families.get(arch.family).colossalai_repeats_kv
    replaced = ("flash" in switches and flash) or ("sp" in switches and mode is not None)
    shards = tp * (cp if mode == "all_to_all" else 1)
    kv, heads = arch.kv_heads // shards, arch.num_heads // shards
    fewest = 1 if mode == "ring_attn" else 2
    return replaced and fewest <= kv < heads


def shardformer_mask_positions(
    arch: Architecture, run: RunConfig, mode: str | None, pp: int
) -> int:
    """The positions of ColoAttention's materialised causal mask, which the family's
    shardformer model forward builds on this rank (Family.colossalai_builds_mask; 0: none).
    ``ColoAttention.prepare_attn_kwargs`` (layer/attn.py:176-187, 223-225) makes
    ``torch.ones(s, s)``, ``tril_``, expands it to (b, s, s) and inverts it into a new
    (b, 1, s, s) tensor in the hidden states' dtype. ``s`` is the whole sequence whatever
    the mode: the first stage takes it from the input ids before the split, later stages
    multiply theirs by sp_size (modeling/llama.py:77-82, 98-99). ring_attn, which turns
    flash attention on itself (hybrid_parallel_plugin.py:1080-1081), prepares a varlen
    batch instead on a rank that does not split the input: without a pipeline, or on a
    later stage (modeling/llama.py:129-131). A pipeline's first stage builds the mask
    with ``invert=False`` (:132-140) and, for unpadded rows, keeps it in the kwargs every
    layer and checkpoint is given (:148-158, 199-210); a batch with pad tokens has its
    kwargs replaced by a varlen batch's before the first layer (:153-156). It is counted
    on the stage whose slice the step's own timeline is
    (Architecture.coloattention_mask_uninverted)."""
    switches = families.get(arch.family).colossalai_builds_mask
    if mode == "ring_attn":
        kept = pp > 1 and not pads_batches(run)
        return run.positions if kept and "flash" in switches else 0
    flash = run.attn == "flash"
    builds = ("flash" in switches and flash) or ("sp" in switches and mode is not None)
    return run.positions if builds else 0


def shardformer_mask_build(
    arch: Architecture, run: RunConfig, mode: str | None, pp: int, e: int
) -> int:
    """The most bytes ColoAttention's ``prepare_attn_kwargs`` holds at once while the
    family's shardformer model forward builds its mask on this rank, before the first
    block (0 where it builds none: shardformer_mask_positions; ring_attn's first stage
    builds one whether or not it keeps it). ``s`` is the whole sequence (modeling/llama.py
    :77-82, 98-99); MEMORY_BOUND (layer/attn.py:22, 181, 212) gives an empty tensor.
    Without pad tokens (attn.py:178-185) the tril'd ones, s²·e, expanded; with them
    (:210-215) the hidden-dtype copy of the expanded padding mask (b·s²·e: an expand has
    no dense layout to keep), ``new_ones(s, s).tril()`` (s²·e, the ones freed once it
    exists) and their product beside both. Inverted (:224, invert_mask :40-50): ``1.0 -
    mask`` (b·s²·e), its ``bool()`` (b·s²) and ``masked_fill``'s result (b·s²·e) beside
    the mask. ring_attn's first stage leaves it uninverted (modeling/llama.py:140) and,
    given pad tokens, rebinds the kwargs to RingAttention's varlen batch before the
    first layer (:153-156)."""
    ring = mode == "ring_attn"
    if ring:
        builds = pp > 1 and "flash" in families.get(arch.family).colossalai_builds_mask
    else:
        builds = shardformer_mask_positions(arch, run, mode, pp) > 0
    s, b = run.positions, run.batch_size
    if not builds or s * s * e >= 10 * 10**9:
        return 0
    one, whole = s * s * e, b * s * s * e
    padded = pads_batches(run) and batch_padding(run) != "packed"  # (packed: no pad tokens)
    if ring:
        return 2 * whole + one if padded else one
    return (3 * whole if padded else one + 2 * whole) + b * s * s


def coloattention_mask_bytes(arch: Architecture, batch: int, e: int) -> int:
    """The (b, 1, s, s) mask in the compute dtype, or nothing where s²·e reaches
    MEMORY_BOUND = 10·10⁹ bytes (layer/attn.py:22, 181: an empty tensor instead). It is in
    the attention kwargs that every layer, and every checkpoint, is given
    (modeling/llama.py:190-200), so checkpointing keeps it until the backward ends; the
    flash-attn kernel it dispatches to for 16-bit CAUSAL masks does not read it
    (layer/attn.py:89-95). Its build, before the first block, is a moment of its own
    (shardformer_mask_build, StepSizes.forward_start). Left uninverted
    (ring_attn's first stage) it is ``expand``'s view of the tril'd ones (layer/attn.py:
    182-185): one s²·e storage for the whole batch, built and kept alike; RingAttention
    takes it in ``**kwargs`` and never reads it (attn.py:498-514)."""
    s = arch.coloattention_mask_positions
    if not s or s * s * e >= 10 * 10**9:
        return 0
    copies = 1 if arch.coloattention_mask_uninverted else batch
    return copies * s * s * e


def shardformer_runs_eager(arch: Architecture, flash: bool, mode: str | None) -> bool:
    """Sequence parallelism without enable_flash_attention: the family's replaced forward
    computes the scores with eager matmuls, an fp32 softmax cast back, whatever the
    model's attn_implementation (Family.colossalai_sp_eager; modeling/llama.py:568-585).
    ring_attn switches flash attention on itself (hybrid_parallel_plugin.py:1080-1081)."""
    eager = families.get(arch.family).colossalai_sp_eager
    return eager and mode not in (None, "ring_attn") and not flash


@dataclasses.dataclass(frozen=True, slots=True)
class SequenceSplit:
    """split_gather / ring inside ``shards`` TP ranks: how a block's saved tensors change."""

    shards: int

    def tokens(self, nbytes: int) -> int:
        """A tensor of the residual stream, split along the sequence."""
        return ceil_div(nbytes, self.shards)

    def block(self, items: list[Saved]) -> list[Saved]:
        """One block's saved tensors on one TP rank."""
        out: list[Saved] = []
        for x in items:
            # (a q/k norm belongs to its projections: it normalises TP-split heads)
            residual = x.kind in NORM_KINDS and not x.linears
            if residual or x.kind is Kind.RESIDUAL_DROPOUT:
                out.append(x._replace(nbytes=self.tokens(x.nbytes)))
            elif x.kind is Kind.LINEAR_INPUT and not self._row_parallel(x):
                out.append(
                    x.relabelled("sequence shard of ")._replace(nbytes=self.tokens(x.nbytes))
                )
                out += [
                    Saved(
                        f"{lin.leaf}: gathered input", x.nbytes, Kind.LINEAR_INPUT, x.side, (lin,)
                    )
                    for lin in x.linears
                ]
            else:
                out.append(x)
        return out

    def head_side(self, items: list[Saved]) -> list[Saved]:
        """The head side: the final norm on its shard of the tokens, the LM head's input
        gathered whole."""
        return [
            x._replace(nbytes=self.tokens(x.nbytes)) if x.kind in NORM_KINDS else x for x in items
        ]

    @staticmethod
    def _row_parallel(x: Saved) -> bool:
        return all(set(lin.roles) <= ROW_PARALLEL for lin in x.linears)


def ring_attention_backward(arch: Architecture, e: int, T: int, sequences: int, ranks: int) -> int:
    """RingAttention's backward on ``T`` local tokens (``sequences`` of them in the batch)
    over a ring of ``ranks``: its largest moment on any rank, beside the saved tensors and
    what any attention's backward holds (transients.attention_backward_beside: the
    output's gradient arriving, the block's gradients made).

    Read at 4f9953be335e, shardformer/layer/attn.py RingAttention.backward: the buffers
    it makes first (:999-1007), two stacked key/value buffers (``kv_buffers``), the
    ``dq/dk/dv`` blocks in the input dtype and two fp32 ``dkv_buffers``; then per ring
    step i one flash-attn backward (``_flash_attn_varlen_backward``) whose fp32 ``dq`` is
    accumulated (:1066). Keys and values come repeated to every query head
    (modeling/llama.py:551-552 ``repeat_kv`` before ``RingAttention.attention``; GPT-2
    has as many), so every buffer is q's size. The moments, beside those buffers:

    - step 0: the kernel's workspace, then ``dq = dq_block.float()`` beside
      ``dk_block.float()``'s copy into its buffer (:1066-1067);
    - a step with i <= rank (every rank but the first): the key/value halves indexed out
      (:1051, an index copy) beside ``dq`` and the kernel's workspace on all of q;
    - a step with i > rank (every rank but the last): the q, out and dout halves indexed
      out (:1060) beside ``dq`` and the kernel's workspace on half of q; from the second
      such step on, the last step's halves are still bound while the new are made;
    - the end: ``dq, dk, dv`` cast to the input dtype beside ``dq`` (:1171), the
      gradients a fused kernel returns (Attention.kernel_gradients, here at q's width).

    Every rank but the last holds the half of the log-sum-exp it indexes out (:994-995).
    (``dq[half_idx_back] += dq_`` reads an fp32 half copy, under the kernel's workspace
    it follows.)"""
    n = arch.num_heads
    q = T * n * arch.head_size
    buffers = 2 * (2 * q) * e + 3 * q * e + 2 * (2 * q) * FP32
    dq = q * FP32
    half = q // 2
    first = max(_flash_backward_workspace(arch, T, sequences), 2 * dq)
    end = dq + 3 * q * e
    lse = n * (T // 2) * FP32 if ranks > 1 else 0
    moments = [first + lse, end + lse]
    if ranks > 1:
        inside = dq + 2 * half * e + _flash_backward_workspace(arch, T, sequences)
        halves = 3 * half * e
        outside = dq + max(
            halves + _flash_backward_workspace(arch, T // 2, sequences),
            2 * halves if ranks > 2 else 0,
        )
        moments += [inside + (lse if ranks > 2 else 0), outside + lse]
    return buffers + max(moments)


def _flash_backward_workspace(arch: Architecture, rows: int, sequences: int) -> int:
    """flash-attn's varlen backward on ``rows`` query tokens: its fp32 ``dq_accum`` and
    ``softmax_d``, each sequence padded by 128 rows, the head size rounded up to 32 (64
    past 128) (Dao-AILab/flash-attention v2.8.3 csrc/flash_attn/flash_api.cpp
    mha_varlen_bwd l.1051, 1100, 1113; no ``dk_expanded`` with as many key heads)."""
    d = arch.head_size
    rounded = ceil_div(d, 32 if d <= 128 else 64) * (32 if d <= 128 else 64)
    return (rows + 128 * sequences) * arch.num_heads * (rounded + 1) * FP32


def ring_attention_forward(arch: Architecture, e: int, T: int) -> int:
    """RingAttention's forward beside its inputs: the two key/value buffers (keys and
    values repeated to every query head: ring_attention_backward) and the two blocks'
    outputs being merged (attn.py:708-713)."""
    q = T * arch.num_heads * arch.head_size
    return 2 * (2 * q) * e + 2 * q * e
