"""GRPO under torchtune's own recipe (``--objective grpo`` with ``--framework torchtune``).

pytorch/torchtune recipes/dev/grpo_full_finetune_distributed.py@bd2a0fc7c314 (the
"recipe" below; its line numbers) trains one step as, for memory (docs/grpo.md,
"torchtune's recipe"):

* **Generation**, ``forward_batch_size`` prompts at a time (``generate_trajectory_batched``
  l. 699-712), each repeated ``grpo_samples`` times: R = f x G rows (l. 584-585) under
  no_grad with a static KV cache preallocated before the prefill (``local_kv_cache``
  l. 588-594; torchtune/modules/kv_cache.py l. 32-41: a key and a value of R x kv_heads
  x (P + C) x head_dim per layer in the recipe's dtype, and a (P + C) int64 position
  buffer). generate() (torchtune/dev/rl/generation.py) runs the prefill through the
  whole decoder, whose logits are cast to fp32 over every prompt position
  (torchtune/modules/transformer.py l. 687 ``self.output(h).float()``) and kept until it
  returns (``generated_logits``, l. 148: ``return_logits=False`` only skips their
  concatenation), then one token per step, sampling through a clone, ``/ temperature``,
  softmax and ``probs / q`` with a fresh R x V fp32 noise ``q`` per step
  (torchtune/generation/_generation.py l. 48-69, l. 108-111).
* **Scoring** (no_grad, after the cache is freed): the policy's forward over the R
  trajectories of P + C tokens, fp32 logits over every position, their log-probabilities
  four sequences at a time (l. 620-624; torchtune/rlhf/sequence_processing.py l. 102-135:
  each chunk's ``/ temperature`` and log_softmax, the previous chunk's still bound); the
  reference's the same way (l. 627-635); the chunks' trajectories concatenated (l. 714-726).
* **The training step** (``grpo_step`` l. 750-782) on all N = batch_size x grpo_samples
  trajectories at once: the policy's forward (activation checkpointing per layer when
  enabled), fp32 logits over every position, the log-probabilities one sequence at a
  time (``chunk_size=1``: each sequence's fp32 log_softmax over C positions kept for
  backward), GRPOSimpleLoss (torchtune/dev/grpo/loss.py l. 243-264) and backward.

The policy is sharded with FSDP2 and ``reshard_after_forward=False`` (l. 143, 365-373):
torch 2.13's FSDPParamGroup.post_forward calls ``reshard()``, which returns at once in
the forward state when the group does not reshard after forward
(torch/distributed/fsdp/_fully_shard/_fsdp_param_group.py l. 499-502, 557-566), whether
or not gradients are on: the no_grad generation leaves every parameter gathered until
the training step's backward reshards it (post_backward l. 588-609) — ftmem's
``fsdp-grad-op``. The reference (eval, frozen, l. 149-157) reshards after each forward.
AdamW's states follow the parameters' dtype (the recipe's dtype, with no fp32 master).

``torch.cuda.empty_cache()`` (l. 624, 635, 664, 708, 712, 750, 770, 781) returns the
caching allocator's free segments to the driver between the parts: what is reserved
then follows each part's own allocations (the reserved peak is the largest part's).

Symbols: G completions per prompt, R rows per generate(), N = batch_size x G rows per
training step, P prompt, C max_generated_tokens, L = P + C, V vocabulary, h hidden, e
bytes of the dtype.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ftmem.arch import Architecture
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES
from ftmem.grpo import replace_loss
from ftmem.methods import MethodPlan
from ftmem.ops.saved import Saved
from ftmem.run import RunConfig

if TYPE_CHECKING:
    from ftmem.step import StepParts

LOGPROB_CHUNK = 4  # batched_logits_to_logprobs' default chunk_size (sequence_processing.py l. 106)
BOOL = 1


def check_recipe_settings(run: RunConfig) -> None:
    """What the recipe cannot run, in one sentence (called by RunConfig's validation)."""
    if run.batch_size % run.generations:
        raise ValueError(
            f"torchtune's GRPO recipe trains batch_size x grpo_samples completions at once: "
            f"--batch-size {run.batch_size} must be a multiple of --num-generations "
            f"{run.generations}"
        )
    for name in ("steps_per_generation", "num_iterations", "vllm", "ds3_gather_for_generation"):
        if getattr(run, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} is TRL's; torchtune's GRPO recipe has no such setting")
    if run.method != "full":
        raise ValueError(
            "torchtune's GRPO recipe is full finetuning (grpo_full_finetune_distributed); "
            f"--method {run.method} is not modelled for it"
        )
    if run.loss == "logprob-tiles":
        raise ValueError(
            "--loss logprob-tiles is TRL's fused LM head; torchtune's GRPO recipe "
            "takes full logits: drop it"
        )


def _dims(arch: Architecture, run: RunConfig) -> tuple[int, int, int, int, int]:
    """(N, P, C, L, V)."""
    C = run.completion
    return run.batch_size, run.seq_len - C, C, run.seq_len, arch.vocab_size


def trajectory_bytes(run: RunConfig, rows: int) -> int:
    """A GRPOTrajectory of ``rows`` sequences (l. 670-682): the query-responses, position
    ids (int64, L each) and the [L, L] boolean attention mask per row
    (get_causal_mask_from_padding_mask), the policy's and the reference's fp32
    log-probabilities over C, the response padding mask (bool), rewards, successes,
    advantages (fp32) and the sequence lengths (int64)."""
    L, C = run.seq_len, run.completion
    per_row = 2 * L * INDEX_BYTES + L * L * BOOL + 2 * C * FP32 + C * BOOL + 3 * FP32 + INDEX_BYTES
    return rows * per_row


def kv_cache_bytes(arch: Architecture, rows: int, tokens: int, e: int) -> int:
    """local_kv_cache: every layer's KVCache (kv_cache.py l. 32-41), a key and a value of
    rows x kv_heads x tokens x head_dim in the dtype, and its int64 position buffer."""
    per_layer = rows * tokens * sum(arch.cache_widths) * e + tokens * INDEX_BYTES
    return arch.num_layers * per_layer


def expanded_kv_bytes(arch: Architecture, rows: int, tokens: int, e: int) -> int:
    """torchtune/modules/attention.py l. 284-290: with fewer key/value heads than query
    heads, the layer's key and value (the whole cache during generation) expanded to
    every query head, a copy (``expand(...).flatten(1, 2)``); 0 otherwise."""
    if arch.kv_heads >= arch.num_heads:
        return 0
    return 2 * rows * arch.num_heads * tokens * arch.head_size * e


def _frozen_block(
    arch: Architecture, run: RunConfig, plan: MethodPlan, rows: int, seq: int, keys: int = 0
) -> int:
    """A block's forward transient under no_grad over rows x seq tokens: its MLP's (or
    eager scores', transients.frozen_forward_transient), or its attention's with the
    ``keys`` tokens of the cache expanded (``expanded_kv_bytes``) beside the query, key,
    value and output projections and the residual stream (4 T·h)."""
    from ftmem.transients import frozen_forward_transient

    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    T = rows * seq
    no_grad = run.model_copy(update={"batch_size": rows, "seq_len": seq, "grad_ckpt": False})
    block = frozen_forward_transient(arch, no_grad, e, plan.dtypes.residual_bytes, T)
    expand = expanded_kv_bytes(arch, rows, keys, e)
    if not expand:
        return block
    projections = T * (2 * arch.num_heads + 2 * arch.kv_heads) * arch.head_size * e
    residual = 4 * T * arch.hidden_size * plan.dtypes.residual_bytes
    return max(block, expand + projections + residual)


def generation_moment(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """generate() on one chunk of R rows, beyond the weights, the optimizer states and
    the previous step's trajectory (the loop rebinds it only when the new one is made,
    l. 835): the earlier chunks' trajectories of this step, the repeated prompts (R·P
    int64), the cache (``kv_cache_bytes``), generate()'s clone of the prompts, causal
    mask ([1, L, L] bool) and positions, the noise ``q`` (R·V fp32), and the larger of

    - the prefill: a block's forward over R·P tokens with its keys and values expanded
      over the whole cache, or the logits' cast (R·P·V in the dtype and in fp32) beside
      the final norm's output and the last block's (R·P·h·e each);
    - a decoding step: the prefill's fp32 logits still held (R·P·V·4), the previous
      step's (R·V·4), then either the step's block (one token per row, the expanded
      cache) or its logits (R·V·e then fp32) and ``sample``'s three R·V fp32 tensors
      (``/ temperature``, softmax, ``probs / q``), beside the growing ids (old and new,
      R·L int64 each) and stop-token mask (R·L int32 each)."""
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    _, P, _, L, V = _dims(arch, run)
    R, h = run.generation_rows, arch.hidden_size
    earlier = trajectory_bytes(run, _prompts(run) * run.generations - R)
    held = (
        earlier
        + 2 * R * P * INDEX_BYTES  # the repeated prompts and generate()'s clone
        + kv_cache_bytes(arch, R, L, e)
        + L * L * BOOL
        + L * INDEX_BYTES
        + R * V * FP32  # q
    )
    prefill = max(
        _frozen_block(arch, run, plan, R, P, keys=L),
        R * P * V * (e + FP32) + 2 * R * P * h * e,
    )
    ids = 2 * R * L * INDEX_BYTES + 2 * R * L * 4  # ids and the int32 stop mask, cat'ed
    step_logits = max(R * V * e, 3 * R * V * FP32)  # the cast's input, or sample's three
    decode = (
        R * P * V * FP32
        + R * V * FP32  # the previous step's logits
        + ids
        + max(_frozen_block(arch, run, plan, R, 1, keys=L), R * V * FP32 + step_logits)
    )
    return held + max(prefill, decode)


def _prompts(run: RunConfig) -> int:
    return run.batch_size // run.generations


def _logprob_chunks(rows: int, positions: int, V: int) -> int:
    """batched_logits_to_logprobs at its largest chunk: the chunk's ``/ temperature`` and
    log_softmax (fp32) beside the previous chunk's log_softmax, still bound to
    ``chunk_log_probs`` while the next is made."""
    sizes = [min(LOGPROB_CHUNK, rows - s) for s in range(0, rows, LOGPROB_CHUNK)]
    largest = max([2 * sizes[0]] + [sizes[i - 1] + 2 * sizes[i] for i in range(1, len(sizes))])
    return largest * positions * V * FP32


def scoring_moment(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """The no_grad forwards after generation (l. 607-635), beyond what
    ``generation_moment`` counts as held too: this step's earlier trajectories, this
    chunk's query-responses, responses, mask and positions, then the policy's forward
    (a block over R·L tokens, or the logits' cast, R·L·V in the dtype and fp32, or the
    fp32 logits with the log-probabilities' chunks over C + 1 positions) and the
    reference's (the same, over C positions, beside the policy's log-probabilities); and
    the trajectories' concatenation (``torch.cat`` of every field: all of them twice)."""
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    _, _, C, L, V = _dims(arch, run)
    R, h = run.generation_rows, arch.hidden_size
    earlier = trajectory_bytes(run, _prompts(run) * run.generations - R)
    held = earlier + R * L * (2 * INDEX_BYTES + BOOL) + R * C * INDEX_BYTES + R * L * L * BOOL
    block = _frozen_block(arch, run, plan, R, L, keys=L)
    cast = R * L * V * (e + FP32) + 2 * R * L * h * e
    policy = max(block, cast, R * L * V * FP32 + _logprob_chunks(R, C + 1, V))
    reference = R * C * FP32 + max(block, cast, R * L * V * FP32 + _logprob_chunks(R, C, V))
    concat = 2 * trajectory_bytes(run, run.batch_size)
    return max(held + R * C * FP32 + max(policy, reference), concat)


def before_moment(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """The larger of generation and scoring: the moment before the training forward."""
    return max(generation_moment(arch, run, plan), scoring_moment(arch, run, plan))


def loss_saved(arch: Architecture, run: RunConfig, plan: MethodPlan, train: bool) -> list[Saved]:
    """What the training forward's head and loss keep for backward: the output
    projection's input (the final norm's output over N·L positions, when it trains),
    each sequence's fp32 log_softmax over its C response positions (chunk_size=1:
    LogSoftmaxBackward keeps its result; the division by the temperature keeps
    nothing), and GRPOSimpleLoss's per-token tensors (the two ``exp`` results, fp32, and
    the boolean padding mask ``masked_mean`` multiplies by)."""
    N, _, C, L, V = _dims(arch, run)
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    out: list[Saved] = []
    if train or plan.head_trainable:
        out.append(Saved("LM head input", N * L * arch.hidden_size * e))
    out.append(Saved("GRPO (torchtune): fp32 log-softmax of the responses", N * C * V * FP32))
    out.append(Saved("GRPO (torchtune): the loss's per-token tensors", N * C * (2 * FP32 + BOOL)))
    return out


def logits_forward(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """At the head in forward, beyond every saved tensor (the log-softmaxes counted whole):
    the fp32 logits over every position (N·L·V·4: ``pi_logits`` until l. 769's del) and
    the last sequence's ``/ temperature`` (C·V·4); before that, the cast, the logits in
    the dtype beside their fp32 copy and the last layer's output (N·L·h·e, still bound
    to ``h`` in TransformerDecoder.forward), when no log-softmax exists yet."""
    N, _, C, L, V = _dims(arch, run)
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    kept = N * C * V * FP32
    cast = N * L * V * (e + FP32) + N * L * arch.hidden_size * e - kept
    return max(N * L * V * FP32 + C * V * FP32, cast)


def loss_backward(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """The head's backward beyond every saved tensor (measured on the CPU against
    measure/torchtune_grpo.py): each sequence's gradient comes back through the slice
    of the truncated logits it was cut from, whose backward makes a zero-filled N x C x
    V fp32 tensor; autograd sums them into one buffer, out of place: with two sequences
    or more, the buffer, the new slice's gradient and their sum (3·N·C·V·4) beside the
    log-softmaxes of the sequences not yet reached (all but two); then the truncation's
    backward (N·L·V·4 beside the summed N·C·V·4) and the cast's (N·L·V in the dtype
    beside its fp32 input), every log-softmax freed."""
    N, _, C, L, V = _dims(arch, run)
    e = BYTES_PER_ELEMENT[plan.dtypes.compute]
    kept = N * C * V * FP32
    row = C * V * FP32
    summed = 3 * kept - 2 * row if N >= 2 else 3 * row
    # the summed gradient (N·C·V·4) in place of the freed log-softmaxes
    truncation = N * L * V * FP32
    cast = N * L * V * (FP32 + e) - kept
    return max(summed, truncation, cast)


def with_recipe(parts: StepParts, arch: Architecture, run: RunConfig) -> StepParts:
    """The SFT step's parts over the N trajectories of L tokens (``parts``, objective sft,
    the standard loss) turned into the recipe's: the cross-entropy's items replaced by
    the log-softmaxes and the loss's, the reference's weights, the trajectory held by
    the loop, and generation or scoring as the moment before the training forward."""
    from ftmem.ops.loss import Loss

    plan, sizes = parts.plan, parts.sizes
    T = run.batch_size * run.seq_len
    train = plan.outer_trainable
    head = dataclasses.replace(
        sizes.head,
        logits_forward=logits_forward(arch, run, plan),
        loss_backward=loss_backward(arch, run, plan),
    )
    return replace_loss(
        parts,
        run,
        Loss.saved(arch, plan, T, train, FP32),
        loss_saved(arch, run, plan, train),
        head=head,
        teacher_forward=before_moment(arch, run, plan),
        loop_held=sizes.loop_held + trajectory_bytes(run, run.batch_size),
        empties_cache=True,
    )


def recipe_note(plan: MethodPlan, run: RunConfig) -> str:
    """What a torchtune GRPO estimate models, in one note."""
    from ftmem.step import reference_weights

    G, C = run.generations, run.completion
    P = run.seq_len - C
    prompts = run.generation_rows // G
    return (
        f"GRPO (torchtune's grpo_full_finetune_distributed, GRPOSimpleLoss): "
        f"{run.batch_size} completions ({run.batch_size // G} prompts x {G}) of "
        f"{run.seq_len} tokens trained at once, fp32 logits over every position; "
        f"generation {prompts} prompt(s) at a time ({run.generation_rows} rows, a static KV "
        f"cache of {P} + {C} tokens, the prefill's fp32 logits kept), then the policy's and "
        f"the reference's log-probabilities under no_grad (the reference a frozen copy, "
        f"{reference_weights(plan, run):,} bytes in Weights), as moments before the "
        "training forward; every completion assumed to run to max_generated_tokens."
    )
