"""GRPO (``--objective grpo``): TRL's GRPOTrainer, one GPU.

One optimizer step of huggingface/trl trl/trainer/grpo_trainer.py@f2cd57710ae3 is, for
memory, two parts (docs/grpo.md):

* **Generation**, every ``steps_per_generation`` micro-batches
  (``_prepare_inputs``): transformers' ``generate()`` under ``torch.no_grad()`` on the
  generation batch, R = batch_size x steps_per_generation prompts of P = seq_len - C
  tokens each (every prompt already repeated num_generations times), C new tokens each,
  with a DynamicCache; then, when beta != 0, the reference's per-token log-probabilities
  under no_grad, b sequences at a time (``_generate_and_score_completions``). Its peak
  is a moment before the training forward, beside the weights and optimizer states,
  with no gradient (``zero_grad(set_to_none=True)`` ran) and no activation.
* **The training micro-batch** (``_compute_loss``): b = batch_size completions of
  seq_len tokens through the policy with ``logits_to_keep = C + 1``; the completion's
  log-probabilities (``selective_log_softmax``: 16-bit logits one sequence at a time
  through log_softmax, whose output is saved; fp32 logits through gather and a
  per-sequence logsumexp, which keeps the logits), the entropies under no_grad
  (``entropy_from_logits``: 128 rows at a time) and the dapo loss over b x C values.

With ``--vllm colocate`` generation runs in a vLLM engine inside the same process,
which takes ``vllm_gpu_memory_utilization`` of the GPU's memory for its own copy of the
weights and its KV cache blocks (``vllm_reserved_bytes``: needs the GPU's size).

Symbols: b completions per micro-batch, R rows per generation, S = seq_len, C the
completion, P = S - C the prompt, V vocabulary, e bytes of the compute dtype.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ftmem.arch import Architecture
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES
from ftmem.errors import InvalidInputError
from ftmem.methods import MethodPlan
from ftmem.ops.saved import Saved
from ftmem.run import RunConfig

if TYPE_CHECKING:  # step imports this module lazily: no cycle at run time
    from ftmem.phases import Gradients
    from ftmem.step import StepParts

ENTROPY_CHUNK = 128  # trl/trainer/utils.py@f2cd57710ae3 entropy_from_logits chunk_size


def logits_bytes(run: RunConfig, e: int) -> int:
    """Bytes per logit the loss reads: fp32 under autocast (accelerate's
    convert_outputs_to_fp32 on the prepared model), else the compute dtype; TRL >= 1.16's
    fused LM head (``--loss logprob-tiles``) returns fp32 log-probabilities whatever the
    dtype (trl 1.16.0 trl/kernels/chunked_logprob.py:376)."""
    return FP32 if run.uses_autocast or tiles(run) else e


def tiles(run: RunConfig) -> bool:
    """TRL >= 1.16's GRPOTrainer: every log-probability through the fused LM head
    (trl 1.16.0 trl/trainer/grpo_trainer.py:1068 add_fused_lm_head, :1498
    ``fused_lm_head=True``), the full logits never made."""
    return run.loss == "logprob-tiles"


def scored_rows(run: RunConfig) -> int:
    """The rows TRL >= 1.16 projects. Its labels are -100 but on the completion
    (grpo_trainer.py:1495-1496 ``labels[:, :-logits_to_keep] = -100``). On CUDA with
    Triton only the labelled rows go through the tiles (trl/trainer/utils.py:1638
    ``compact = _use_triton(hidden_states.device)``, :1645 ``hidden_states[mask]``):
    b·C, every completion at its full length (the longest batch). Elsewhere, the CPU
    included, every shifted position is scored (:1645 ``hidden_states.reshape(-1, H)``,
    "every position is scored instead"): b·(S − 1), the prompt's rows too (measured
    against the real GRPOTrainer on the CPU: tests/test_integrations_hf.py)."""
    if run.device == "cuda":
        return run.batch_size * run.completion
    return run.batch_size * (run.seq_len - 1)


def tiles_saved(arch: Architecture, run: RunConfig, plan: MethodPlan) -> list[Saved]:
    """What TRL >= 1.16's loss side keeps for backward: the fused head's (the b·C
    completion rows' copy, their targets, log Z and entropy, the b·(S − 1) label mask:
    Loss.logprob_tiles_saved) and the dapo loss's per-token tensors on fp32
    log-probabilities with the generation batch's storages (loss_saved; no gather)."""
    from ftmem.ops.loss import Loss

    residual = plan.dtypes.residual_bytes
    head = Loss.logprob_tiles_saved(arch, run, residual, scored_rows(run))
    return head + loss_saved(arch, run, FP32, ids_kept=True)[1:]


def tiles_forward(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int) -> int:
    """TRL >= 1.16's training forward at its tiles, beyond the saved activations: the
    attention mask and the labels (b·S int64 each), the backbone's output beside the
    tiles over the b·C completion rows (FusedHead.backbone_output,
    Loss.logprob_tiles_forward)."""
    from ftmem.ops.loss import FusedHead, Loss

    b, S = run.batch_size, run.seq_len
    backbone = FusedHead.backbone_output(arch, run, plan.dtypes.residual_bytes)
    tiles_moment = Loss.logprob_tiles_forward(arch, run, plan, e, scored_rows(run))
    return 2 * b * S * INDEX_BYTES + backbone + tiles_moment


def loss_saved(arch: Architecture, run: RunConfig, e: int, ids_kept: bool) -> list[Saved]:
    """What the completion's log-probabilities and the dapo loss keep for backward (b
    sequences): 16-bit logits, each sequence's log-softmax over its C positions
    (b·C·V·e); fp32 logits, the logits themselves (all C + 1 kept positions: logsumexp
    reads views of them) and a logsumexp per position; gather's index, a view of the
    concatenated input ids (b·S int64), unless the embedding's backward keeps them
    already; the loss's per-token tensors: exp's result (the ratio, in the logits'
    dtype), the two fp32 products with the advantages that ``torch.min`` keeps, with
    beta != 0 the KL term's exp (the logits' dtype: so are the reference's
    log-probabilities), the fp32 normaliser; and the views of the
    generation batch the loss reads, whose whole storages they keep: the completion
    mask (R·C int64, the product's) and the advantages (R fp32)."""
    b, S, C, V = run.batch_size, run.seq_len, run.completion, arch.vocab_size
    lb = logits_bytes(run, e)
    if lb == FP32:
        probs = Saved("GRPO: fp32 logits + logsumexp", b * (C + 1) * V * FP32 + b * C * FP32)
    else:
        probs = Saved("GRPO: 16-bit log-softmax of the completions", b * C * V * lb)
    out = [probs]
    if not ids_kept:
        out.append(Saved("GRPO: input ids (gather's index)", b * S * INDEX_BYTES))
    kl = b * C * lb if run.needs_reference else 0  # the reference's are in the logits' dtype
    per_token = b * C * lb + 2 * b * C * FP32 + kl + FP32
    out.append(Saved("GRPO: the dapo loss's per-token tensors", per_token))
    out.append(Saved("GRPO: completion mask + advantages (generation batch)", read_by_loss(run)))
    return out


def read_by_loss(run: RunConfig) -> int:
    """The generation batch's storages the loss keeps through its views: the completion
    mask (R·C int64) and the advantages (R fp32)."""
    R = run.generation_rows
    return R * run.completion * INDEX_BYTES + R * FP32


def head_saved(
    arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, train: bool
) -> list[Saved]:
    """The LM head's side over the C + 1 positions ``logits_to_keep`` keeps
    (transformers' ``lm_head(hidden_states[:, -(C + 1):, :])``): the head's input, when
    its weight trains, is the sliced hidden states, which the matmul's reshape copies
    when b > 1 (the slice is not contiguous; with b = 1 it is a view of the final norm's
    whole output); the 16-bit weight copy under autocast; the soft-capping's tanh over
    the kept logits."""
    b, S, C, V, h = run.batch_size, run.seq_len, run.completion, arch.vocab_size, arch.hidden_size
    out: list[Saved] = []
    if train or plan.head_trainable:
        rows = b * (C + 1) if b > 1 else b * S
        out.append(Saved("LM head input (the kept positions)", rows * h * e))
    if plan.dtypes.casts_weights:
        out.append(Saved("LM head 16-bit weight copy", V * h * 2))
    if arch.final_logit_softcapping:
        out.append(Saved("logit soft-capping tanh (the kept positions)", b * (C + 1) * V * e))
    return out


def logits_moment(arch: Architecture, run: RunConfig, e: int) -> int:
    """At the loss in forward, beyond every saved tensor: the policy's logits the
    trainer holds (b·(C + 1)·V in the logits' dtype; with fp32 logits they are saved, and
    the 16-bit ones beside their fp32 copy first), the attention mask (b·S int64), then
    the entropies under no_grad: ``logits.reshape(-1, V)`` copies the sliced logits when
    b > 1 (the slice is not contiguous), and each chunk of 128 rows makes its
    log-softmax, exp and product (3 chunks) beside it."""
    b, S, C, V = run.batch_size, run.seq_len, run.completion, arch.vocab_size
    lb = logits_bytes(run, e)
    kept = b * (C + 1) * V
    rows = b * C
    mask = b * S * INDEX_BYTES
    entropy = (rows * V * lb if b > 1 else 0) + 3 * min(ENTROPY_CHUNK, rows) * V * lb
    if lb == FP32:  # the logits are saved; their 16-bit original lived beside the copy
        upcast = kept * e if e != FP32 else 0
        return mask + max(upcast, entropy)
    return mask + kept * lb + entropy


def loss_backward(arch: Architecture, run: RunConfig, e: int) -> int:
    """The loss's backward beyond the saved tensors (measured on the CPU, the head's
    backward before the final norm's: docs/grpo.md): 16-bit, unbind's stacked gradient
    of the sequences' log-softmaxes (b·C·V), the outer slice's copy of it (b·C·V) and
    the inner slice's full-size one (b·(C + 1)·V); fp32, gather's scattered gradient,
    unbind's stacked one from the logsumexps and their sum (3·b·C·V·4)."""
    b, C, V = run.batch_size, run.completion, arch.vocab_size
    lb = logits_bytes(run, e)
    if lb == FP32:
        return 3 * b * C * V * FP32
    return 2 * b * C * V * lb + b * (C + 1) * V * lb


def buffered_bytes(run: RunConfig, e: int) -> int:
    """The generation batch the trainer keeps between micro-batches
    (``self._buffered_inputs``): prompt and completion ids and masks (int64), the
    advantages (fp32), and the per-token log-probabilities (in the logits' dtype) of the
    reference (beta != 0) and of the policy before the step (``old_logps``)."""
    R, S, C = run.generation_rows, run.seq_len, run.completion
    per_token = R * C * logits_bytes(run, e)
    ref = per_token * (int(run.needs_reference) + int(old_logps(run)))
    return 2 * R * S * INDEX_BYTES + R * FP32 + ref


def kv_cache_bytes(arch: Architecture, rows: int, tokens: int, e: int) -> int:
    """transformers' DynamicCache with ``tokens`` on every layer (right after the prefill:
    a sliding layer keeps a view of its whole cat then): a key and a value per layer,
    rows x kv_heads x tokens x head_size in the compute dtype (Architecture.cache_widths:
    latent attention's compressed latent and rotary key)."""
    return arch.num_layers * rows * tokens * sum(arch.cache_widths) * e


def sliding_tokens(arch: Architecture, prompt: int, tokens: int) -> int:
    """The tokens a sliding layer's key (or value) storage holds once the cache has seen
    ``tokens`` of which the prefill brought ``prompt``. transformers 5.24 cache_utils.py
    DynamicSlidingWindowLayer.update makes ``cat([keys, new])`` and keeps the view
    ``[:, :, -sliding_window + 1:]`` of it: the prefill's whole cat (``prompt`` tokens)
    stays alive under that view; each decoding step's cat is the kept view's at most
    w - 1 tokens and the new one, so at most w tokens of storage."""
    if tokens <= prompt or arch.sliding_window is None:
        return tokens
    return min(tokens, arch.sliding_window)


def decode_step_bytes(arch: Architecture, rows: int, prompt: int, tokens: int, e: int) -> int:
    """The cache at the largest moment of the decoding step that grows it to ``tokens``
    (transformers 5.24 cache_utils.py): every layer at its larger size of the step (full
    layers at ``tokens``; a sliding layer at its old or its new storage, the old one
    being the prefill's whole cat at the first step), and one layer's update on top:

    - a full layer (DynamicLayer.update: ``self.keys = torch.cat(...)``, then the values):
      its old key (or value) beside the new one, counted one token long, at ``tokens``;
    - a sliding layer (DynamicSlidingWindowLayer.update makes both cats before it
      replaces either): its other storage, key and value, beside the one counted.

    The later layers still hold their old sizes; counting them at the larger is the safe
    side by at most a token each."""
    one_key = kv_cache_bytes(arch, rows, tokens, e) // (2 * arch.num_layers)
    if not arch.sliding_layers or tokens <= prompt:
        return kv_cache_bytes(arch, rows, tokens, e) + one_key
    old, new = sliding_tokens(arch, prompt, tokens - 1), sliding_tokens(arch, prompt, tokens)
    per_token_layer = rows * sum(arch.cache_widths) * e
    cache = per_token_layer * (arch.full_layers * tokens + arch.sliding_layers * max(old, new))
    full_update = one_key if arch.full_layers else 0
    return cache + max(full_update, per_token_layer * min(old, new))


def eager_decode_attention_bytes(
    arch: Architecture, run: RunConfig, rows: int, prompt: int, tokens: int, e: int
) -> int:
    """The cache while eager attention runs the last decoding step on its largest layer
    (every cache already grown to ``tokens``), with that layer's key and value repeated
    to every query head: transformers 5.24 eager_attention_forward calls ``repeat_kv``
    (an expand and a reshape, a copy) on both whenever heads share key/value heads;
    sdpa packs the single query instead (integrations/sdpa_attention.py pack_gqa) and
    copies nothing. 0 where attention is not eager or every head has its own key/value.
    The step's scores (a few rows x heads x tokens tensors) are left out: measured on
    gpt-oss's tiny model, about 4 % of the moment."""
    from ftmem.ops.attention import runs_eager

    if not runs_eager(arch, run) or arch.kv_heads >= arch.num_heads:
        return 0
    per_token_layer = rows * sum(arch.cache_widths) * e
    longest = tokens if arch.full_layers else sliding_tokens(arch, prompt, tokens)
    cache = per_token_layer * (
        arch.full_layers * tokens + arch.sliding_layers * sliding_tokens(arch, prompt, tokens)
    )
    return cache + 2 * rows * arch.num_heads * longest * arch.head_size * e


def generation_moment(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """The largest moment of ``generate()`` on the generation batch, beyond the weights,
    the optimizer states and the buffered inputs (_generate_single_turn, no vLLM):

    - the prefill, R·P tokens under no_grad: a frozen block's forward transient (its
      MLP intermediates or eager scores, the residual stream and norm output) beside the
      cache of every layer so far (the current layer's included: it is appended before
      the MLP runs), P tokens on every layer (a sliding layer's view keeps its whole cat);
    - a decoding step (``decode_step_bytes``): the last, whose cache holds S - 1 tokens
      on the full layers and at most the window on the sliding ones, or, with sliding
      layers, the first, where they still hold the prompt's P; plus the step's logits
      (R·V·e), their fp32 copy and the sampling probabilities (R·V·4 each);

    with the prompt ids and mask (R·P int64 each) and the growing ids (``torch.cat``
    each step: old and new, R·S int64 each) beside them."""
    from ftmem.transients import frozen_forward_transient

    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    R, S, C = run.generation_rows, run.seq_len, run.completion
    P, V = S - C, arch.vocab_size
    # no_grad: nothing is checkpointed
    prefill_run = run.model_copy(update={"batch_size": R, "seq_len": P, "grad_ckpt": False})
    prefill = frozen_forward_transient(
        arch, prefill_run, e, plan.dtypes.residual_bytes, R * P
    ) + kv_cache_bytes(arch, R, P, e)
    cache = decode_step_bytes(arch, R, P, S - 1, e)
    if C >= 2:  # a first decoding step before the last
        cache = max(cache, decode_step_bytes(arch, R, P, P + 1, e))
    cache = max(cache, eager_decode_attention_bytes(arch, run, R, P, S - 1, e))
    decode = cache + R * V * e + 2 * R * V * FP32 + 2 * R * S * INDEX_BYTES
    return 2 * R * P * INDEX_BYTES + max(prefill, decode)


def old_logps(run: RunConfig) -> bool:
    """Whether the trainer computes the policy's "old" log-probabilities after
    generation (_generate_and_score_completions, grpo_trainer.py@f2cd57710ae3
    l. 2561-2576; trl 1.16.0 l. 2642-2657): when the weights change while the generation
    batch is still trained on, ``gradient_accumulation_steps % generate_every != 0``
    with ``generate_every = steps_per_generation * num_iterations`` (the batch feeds
    num_iterations passes of steps_per_generation micro-batches), or with vLLM
    (vllm_importance_sampling_correction, True by default). They are the policy's
    no_grad forward, b sequences at a time, concatenated into one R x C tensor that the
    buffer keeps until the next generation; the loss reads a b x C view of it
    (``log_ratio = per_token_logps - old_per_token_logps``: a subtraction, which saves
    neither input), so the loss keeps what it keeps without them."""
    return run.grad_accum % run.generate_every != 0 or run.vllm is not None


def reference_moment(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """The no_grad log-probabilities after generation, b sequences at a time
    (``_get_per_token_logps_and_entropies`` with batch_size = per_device_train_batch_size):
    the reference's when beta != 0, the policy's old ones (``old_logps``). Each is a
    frozen block's forward over b·S tokens, or at its end the logits (b·(C + 1)·V) with
    one sequence's 16-bit log-softmax (C·V·e) or, fp32, the whole logits' logsumexp
    inputs; beside the concatenated ids and mask of the generation batch (R·S int64
    each) and the new buffer's prompt and completion tensors."""
    from ftmem.transients import frozen_forward_transient

    if not (run.needs_reference or old_logps(run)):
        return 0
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    b, S, C, V = run.batch_size, run.seq_len, run.completion, arch.vocab_size
    lb = logits_bytes(run, e)
    T = b * S
    no_grad = run.model_copy(update={"grad_ckpt": False})
    block = frozen_forward_transient(arch, no_grad, e, plan.dtypes.residual_bytes, T)
    held = 2 * run.generation_rows * S * INDEX_BYTES + buffered_bytes(run, e)
    if tiles(run):
        # each chunk's labels (b·S int64) and fused pass; the earlier chunks'
        # log-probabilities kept as views of their whole b·(S − 1) fp32 outputs
        from ftmem.ops.loss import FusedHead

        chunks = run.generation_rows * (S - 1) * FP32
        fused = FusedHead.no_grad_pass(arch, run, plan, e, scored_rows(run))
        return held + chunks + T * INDEX_BYTES + max(block, fused)
    upcast = b * (C + 1) * V * e if lb != e else 0
    row = C * V * lb if lb != FP32 else 0
    logits = b * (C + 1) * V * lb + max(row, upcast)
    return 2 * run.generation_rows * S * INDEX_BYTES + buffered_bytes(run, e) + max(block, logits)


def check_supported(arch: Architecture, run: RunConfig) -> None:
    """Refuse what the GRPO model does not cover, in one sentence."""
    if run.activation_offload:
        raise InvalidInputError(
            "--objective grpo is not modelled with --activation-offload yet; drop it"
        )
    if run.vllm == "server":
        return  # generation runs on another machine: nothing on this GPU
    if run.framework not in ("hf", "axolotl", "torchtune"):
        raise InvalidInputError(
            f"--objective grpo follows TRL's GRPOTrainer (--framework hf or axolotl) or "
            f"torchtune's GRPO recipe; --framework {run.framework} is not modelled for it"
        )


def before_moment(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    gradients: Gradients,
    gathered: Gathered | None = None,
) -> Before:
    """The moment before the training forward: generation (or, with vLLM, the weights'
    sync to it) or the no_grad log-probabilities after it, whichever is larger, each
    with what a sharded rank gathers for it (``gathered``, parallel.py), beside the
    whole previous generation batch, still buffered (the loop's held bytes and
    ``read_by_loss``)."""
    g = gathered or Gathered()
    if run.framework == "torchtune":  # torchtune's recipe (ftmem.torchtune_grpo)
        from ftmem.torchtune_grpo import generation_moment as tt_generation
        from ftmem.torchtune_grpo import scoring_moment

        # the policy keeps what generation gathered (reshard_after_forward=False); the
        # reference gathers its own units as it runs
        generation = tt_generation(arch, run, plan) + g.generation
        scoring = scoring_moment(arch, run, plan) + g.generation + g.reference
        if generation >= scoring:
            return Before(generation - g.generation, g.generation, g.one_by_one)
        return Before(scoring - g.generation - g.reference, g.generation + g.reference)
    if run.vllm is not None:
        generate, generate_gathers = 0, g.sync
    else:
        generate, generate_gathers = generation_moment(arch, run, plan), g.generation
    ref = reference_moment(arch, run, plan)
    # the buffered generation batch's mask and advantages: the loop's held bytes leave
    # them to the loss's saved items (with_grpo), and no activation exists yet here
    held = read_by_loss(run)
    if ref and ref + g.reference > generate + generate_gathers:
        before = Before(ref + held, g.reference)
    else:
        before = Before(generate + held, generate_gathers, g.one_by_one)
    if gradients.persist and run.generate_every % run.grad_accum == 0:
        # the timeline holds every gradient from the second micro-batch on; generation
        # runs at micro-batches generate_every apart (_prepare_inputs: ``self._step %
        # generate_every == 0``), each then the first of an optimizer step, after
        # zero_grad(set_to_none=True): no gradient exists (otherwise some generation
        # runs within an accumulation, beside the gradients)
        from_transient = min(before.transient, gradients.total)
        from_gathered = min(before.gathered, gradients.total - from_transient)
        before = Before(
            before.transient - from_transient,
            before.gathered - from_gathered,
            before.requests if not from_gathered else (),
        )
    return before


@dataclasses.dataclass(frozen=True, slots=True)
class Before:
    """GRPO's moment before the training forward: its own tensors, and what a sharded
    rank gathers for it (bytes; ``requests``: that gathering one request per parameter,
    where known)."""

    transient: int
    gathered: int = 0
    requests: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Gathered:
    """What a rank whose weights are sharded gathers (bytes) for each part of the moment
    before the training forward, the forward's own gathering included."""

    generation: int = 0  # generate() with the policy
    reference: int = 0  # the no_grad forwards after it
    sync: int = 0  # the policy's weights pushed to vLLM
    # generation's (or the sync's) gathering as one request per parameter, where known
    one_by_one: tuple[int, ...] = ()


def check_groups(run: RunConfig, world: int) -> None:
    """The generation batch, over the data-parallel ranks, holds whole groups of
    completions (trl/trainer/grpo_config.py@f2cd57710ae3 __post_init__:
    generation_batch_size = per_device_train_batch_size x num_processes x
    steps_per_generation must divide by num_generations)."""
    rows = run.generation_rows * world
    if rows % run.generations:
        over = f" x {world} GPUs" if world > 1 else ""
        raise InvalidInputError(
            f"the generation batch ({run.batch_size} x {run.generation_steps}{over} = "
            f"{rows} completions) must hold whole groups of --num-generations "
            f"{run.generations}, as TRL's GRPOConfig requires: set --batch-size (or "
            "--steps-per-generation) to a multiple of it"
        )


def with_grpo(parts: StepParts, arch: Architecture, run: RunConfig) -> StepParts:
    """The SFT step's parts over b sequences of seq_len tokens (``parts``, built with
    objective sft) turned into GRPO's: the cross-entropy replaced by the completion's
    log-probabilities and entropies, the reference's weights when beta != 0, the
    buffered generation batch held by the loop, and generation (or the reference's
    forward) as the moment before the training forward."""
    from ftmem.ops.loss import Loss

    plan, sizes = parts.plan, parts.sizes
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    T = run.batch_size * run.seq_len
    train = plan.outer_trainable
    # the SFT step ends with the LM head's and the cross-entropy's items
    # (activations.outer_saved, the standard loss; TRL's tiles with --loss
    # logprob-tiles): GRPO's replace them
    if tiles(run):
        tail = Loss.logprob_tiles_saved(arch, run, plan.dtypes.residual_bytes)
        new = tiles_saved(arch, run, plan)
    else:
        tail = Loss.saved(arch, plan, T, train, FP32)
        new = head_saved(arch, run, plan, e, train) + loss_saved(
            arch, run, e, ids_kept=train or plan.embed_trainable
        )
    before = before_moment(arch, run, plan, sizes.gradients).transient
    if tiles(run):
        # the SFT head moment's own terms beyond its tiles (the autocast cache under
        # checkpointing, a prefix cache) stay; the tiles are the completion's rows
        sft_tiles = Loss.logprob_tiles_moment(arch, run, plan, e)
        head_grad = plan.outer_trainable or plan.head_trainable
        rows = scored_rows(run)
        head = dataclasses.replace(
            sizes.head,
            logits_forward=sizes.head.logits_forward
            - sft_tiles
            + tiles_forward(arch, run, plan, e),
            loss_backward=Loss.logprob_tiles_backward(arch, run, plan, e, head_grad, rows),
        )
    else:
        head = dataclasses.replace(
            sizes.head,
            logits_forward=logits_moment(arch, run, e),
            loss_backward=loss_backward(arch, run, e),
        )
    return replace_loss(
        parts,
        run,
        tail,
        new,
        head=head,
        teacher_forward=max(before, sizes.teacher_forward),
        # the mask's and the advantages' storages are counted with the loss's saved items
        loop_held=sizes.loop_held + buffered_bytes(run, e) - read_by_loss(run),
    )


def replace_loss(
    parts: StepParts, run: RunConfig, tail: list[Saved], new: list[Saved], **changes: Any
) -> StepParts:
    """``parts`` with the SFT loss's outer items (``tail``, the last ones) replaced by
    ``new``, the reference's weights added and ``changes`` made to its sizes (an RL
    objective's head moments, the moment before the forward, what the loop holds)."""
    from ftmem.step import reference_weights

    items = list(parts.outer_items)
    if items[-len(tail) :] != tail:
        raise AssertionError("the SFT step's outer items do not end with its loss's")
    delta = sum(s.nbytes for s in new) - sum(s.nbytes for s in tail)
    sizes, acts = parts.sizes, parts.sizes.activations
    new_sizes = dataclasses.replace(
        sizes,
        weights=sizes.weights + reference_weights(parts.plan, run),
        activations=dataclasses.replace(acts, above=acts.above + delta),
        **changes,
    )
    return dataclasses.replace(
        parts,
        sizes=new_sizes,
        activations=parts.activations + delta,
        outer_items=tuple(items[: -len(tail)] + new),
    )


def grpo_note(plan: MethodPlan, run: RunConfig) -> str:
    """What a GRPO estimate models, in one note."""
    from ftmem.step import reference_weights

    R, C = run.generation_rows, run.completion
    P = run.seq_len - C
    if run.vllm == "colocate":
        gen = (
            f"generation in a colocated vLLM engine holding {run.vllm_share:.0%} of the GPU "
            "(in the device total on a CUDA GPU of known size, beyond the allocated peak)"
        )
    elif run.vllm == "server":
        gen = "generation on a vLLM server (nothing on this GPU)"
    else:
        gen = (
            f"generate() with a KV cache on {R} prompts of {P} tokens, {C} new tokens each, "
            "as a moment before the training forward"
        )
    ref = "no reference (beta 0)"
    if run.needs_reference:
        copy = reference_weights(plan, run)
        ref = (
            f"reference: a frozen copy ({copy:,} bytes, included in Weights)"
            if copy
            else "reference: the adapter disabled"
        ) + f", its log-probabilities under no_grad after generation, {run.batch_size} at a time"
    if old_logps(run):
        ref += (
            "; the policy's old log-probabilities under no_grad after generation, "
            f"{run.batch_size} at a time, buffered for the {run.generate_every} micro-batches "
            "until the next generation"
        )
    how = " (TRL >= 1.16's fused LM head, no logits)" if tiles(run) else ""
    return (
        f"GRPO (TRL GRPOTrainer, loss dapo): {run.batch_size} completions of {run.seq_len} "
        f"tokens per micro-batch, log-probabilities over the last {C}{how}; {gen}; {ref}."
    )


def vllm_reserved_bytes(run: RunConfig, gpu_memory_bytes: int) -> int:
    """--vllm colocate: what the engine takes of the GPU, its gpu_memory_utilization
    share of the total memory (vLLM sizes its KV cache blocks so that its weights, its
    activations' profile and the blocks fill that share: vllm-project/vllm
    vllm/v1/worker/gpu_worker.py Worker.determine_available_memory, commit not pinned;
    TRL passes vllm_gpu_memory_utilization to LLM(...): huggingface/trl
    trl/generation/vllm_generation.py@f2cd57710ae3).
    0 without a colocated engine."""
    if run.objective != "grpo" or run.vllm != "colocate":
        return 0
    return int(gpu_memory_bytes * run.vllm_share)
