"""A faithful loop of torchtune's GRPO recipe, for measuring on the CPU.

torchtune is not installed here, so this module replays what one step of
pytorch/torchtune recipes/dev/grpo_full_finetune_distributed.py@bd2a0fc7c314 does to
memory, in order, with the same tensor operations, on transformers' model of the same
shapes (one process: FSDP2's gathered copies are left to the estimate's parallel part):

1. ``generate_trajectory_batched`` (l. 699-728) under ``torch.no_grad()``: for each
   ``forward_batch_size`` prompts, ``generate_trajectory`` (l. 581-682):
   - the prompts repeated ``grpo_samples`` times (``expand(...).reshape``: a copy);
   - ``local_kv_cache``: every layer's key and value cache preallocated,
     ``[rows, kv_heads, prompt + max_generated_tokens, head_dim]`` in the dtype
     (torchtune/modules/kv_cache.py l. 32-41), before the prefill;
   - ``torchtune.dev.rl.generation.generate`` (l. 84-244): the prompt's clone, the
     causal mask and positions, the exponential noise ``q`` (rows x V fp32) for each
     call; the prefill's logits over every prompt position, cast to fp32
     (torchtune/modules/transformer.py l. 687 ``self.output(h).float()``), kept until
     generate() returns through ``generated_logits`` (l. 148: return_logits=False only
     skips the concatenation); each step's logits, ``sample``
     (torchtune/generation/_generation.py l. 48-69: the clone, ``/ temperature``,
     softmax, ``probs / q``); the stop-token mask growing by ``torch.cat``;
   - the policy's no_grad forward over prompt + completion, fp32 logits, the
     log-probabilities four sequences at a time (torchtune/rlhf/sequence_processing.py
     l. 102-135 ``batched_logits_to_logprobs``), then the reference's;
   - the stop-token truncation, rewards and advantages, the trajectory's tensors;
   then ``torch.cat`` of every field over the chunks.
2. ``grpo_step`` (l. 750-797): the policy's forward with gradients over all
   ``batch_size x grpo_samples`` sequences, fp32 logits, the log-probabilities one
   sequence at a time (``chunk_size=1``), ``GRPOSimpleLoss`` (torchtune/dev/grpo/loss.py
   l. 243-264) and backward.
3. ``clip_grad_norm_``, the optimizer's step, ``zero_grad(set_to_none=True)``
   (l. 844-851).

Every completion runs to max_generated_tokens (no stop token), the longest trajectory,
which the estimate sizes; prompts are not padded (one prompt per chunk, as the shipped
configs' forward_batch_size 1 gives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

TEMPERATURE = 1.0  # the shipped configs' temperature
LOGPROB_CHUNK = 4  # batched_logits_to_logprobs' default chunk_size


@dataclass(frozen=True)
class RecipeShape:
    """The recipe's numbers: prompts per step (batch_size), completions per prompt
    (grpo_samples), prompts per generate() call (forward_batch_size), prompt tokens and
    max_generated_tokens, and the loss's kl_coeff."""

    batch_size: int
    grpo_samples: int
    forward_batch_size: int
    prompt: int
    generated: int
    kl_coeff: float = 0.01


@dataclass(frozen=True)
class RecipePeaks:
    """The largest live bytes in each part of the step (every storage counted, weights
    and optimizer states included)."""

    generation: int
    scoring: int
    training: int
    optimizer: int
    forward: int  # the training step's forward, to the loss
    backward: int


ATTENTION = "torchtune_sdpa"


def _torchtune_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """torchtune/modules/attention.py l. 282-298: the key and value (the whole cache
    while generating) expanded to every query head, a copy, then
    scaled_dot_product_attention with the mask (transformers' sdpa path packs the
    query heads instead and copies nothing)."""
    b, kv_heads, tokens, head_dim = key.shape
    heads = query.shape[1]
    if heads != kv_heads:
        shape = (b, kv_heads, heads // kv_heads, tokens, head_dim)
        key = key.unsqueeze(2).expand(shape).flatten(1, 2)
        value = value.unsqueeze(2).expand(shape).flatten(1, 2)
    is_causal = attention_mask is None and query.shape[2] > 1
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, is_causal=is_causal, scale=scaling
    )
    return out.transpose(1, 2).contiguous(), None


def as_torchtune(model: Any) -> Any:
    """transformers' model run as torchtune's TransformerDecoder for memory: its
    attention (``_torchtune_attention``) and its final norm applied outside the model,
    as ``unembed`` does (``_logits``)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _torchtune_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    model.config._attn_implementation = ATTENTION
    if not isinstance(model.model.norm, torch.nn.Identity):
        model.final_norm = model.model.norm
        model.model.norm = torch.nn.Identity()
    if not hasattr(model, "rope_cache"):
        # torchtune's rotary registers build_rope_cache's fp32 (max_seq_len, head_dim / 2,
        # 2) buffer (torchtune/modules/position_embeddings.py@1814feb17a90), which
        # transformers' rotary does not: its memory only, the forward never reads it
        config = model.config
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        shape = (config.max_position_embeddings, head_dim // 2, 2)
        model.register_buffer("rope_cache", torch.zeros(shape), persistent=False)
    return model


def _logits(model: Any, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """torchtune's TransformerDecoder.forward and unembed (transformer.py l. 651-687):
    the last layer's output ``h`` still bound while the final norm's output goes through
    the output projection over every position, then ``.float()``."""
    kwargs.setdefault("use_cache", False)
    h = model.model(input_ids=ids, **kwargs).last_hidden_state
    normed = model.final_norm(h)
    return model.lm_head(normed).float()


def batched_logits_to_logprobs(
    logits: torch.Tensor, sequences: torch.Tensor, chunk_size: int = LOGPROB_CHUNK
) -> torch.Tensor:
    """torchtune/rlhf/sequence_processing.py l. 102-135."""
    batch_size = logits.shape[0]
    result = torch.empty_like(sequences, dtype=torch.float32, device=logits.device)
    for start in range(0, batch_size, chunk_size):
        end = min(start + chunk_size, batch_size)
        chunk = F.log_softmax(logits[start:end] / TEMPERATURE, dim=-1)
        result[start:end] = torch.gather(chunk, 2, sequences[start:end].unsqueeze(-1)).squeeze(-1)
    return result


def _sample(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """torchtune/generation/_generation.py l. 48-69 (top_k None)."""
    logits = logits / max(TEMPERATURE, 1e-5)
    probs = torch.softmax(logits, dim=-1)
    return torch.argmax(probs / q, dim=-1, keepdim=True).to(dtype=torch.int)


def _generate(model, prompt: torch.Tensor, generated: int, vocab: int, cache) -> torch.Tensor:
    """torchtune/dev/rl/generation.py generate() with a static KV cache, no padding."""
    rows, prompt_len = prompt.shape
    total = prompt_len + generated
    generated_tokens = prompt.clone()
    padding_masks = generated_tokens != 0
    masks = torch.tril(torch.ones(total, total, dtype=torch.bool)).unsqueeze(0)
    input_pos = torch.arange(0, total).unsqueeze(0)
    q = torch.empty((rows, vocab)).exponential_(1)
    logits = _logits(model, prompt, past_key_values=cache, use_cache=True)[:, -1]
    tokens = _sample(logits.clone(), q)
    generated_logits = logits.unsqueeze(1)  # kept until return (l. 148)
    generated_tokens = torch.cat([generated_tokens, tokens], dim=-1)
    stop_tokens = torch.tensor([vocab - 1])
    stop_reached = torch.zeros(rows, dtype=torch.bool)
    stop_mask = torch.ones((rows, prompt_len + 1), dtype=torch.int32)
    stop_reached |= torch.isin(tokens, stop_tokens).flatten()
    curr_pos = prompt_len
    for _ in range(generated - 1):
        stop_mask = torch.cat([stop_mask, ~stop_reached.reshape(rows, 1)], dim=-1)
        curr_masks = masks[:, curr_pos, None, :].contiguous()
        q = torch.empty((rows, vocab)).exponential_(1)
        position = input_pos[:, curr_pos].contiguous()
        logits = _logits(
            model,
            tokens.clone().long(),
            past_key_values=cache,
            use_cache=True,
            position_ids=position.expand(rows, 1),
        )[:, -1]
        tokens = _sample(logits.clone(), q)
        generated_tokens = torch.cat([generated_tokens, tokens], dim=-1)
        curr_pos += 1
        stop_reached |= torch.isin(tokens, stop_tokens).flatten()
        del curr_masks
    generated_tokens *= stop_mask
    del generated_logits, padding_masks
    return generated_tokens


def _trajectory(
    model, reference, ids: torch.Tensor, shape: RecipeShape, vocab: int, peaks: dict, tracker
) -> dict:
    """generate_trajectory (l. 581-682) for one chunk of prompts; the generation's and
    the scoring's peaks into ``peaks``."""
    from transformers import StaticCache

    batch, context = ids.shape
    rows = batch * shape.grpo_samples
    batch_ids = ids[:, None, :].expand(-1, shape.grpo_samples, -1).reshape(rows, -1)
    cache = StaticCache(config=model.config, max_cache_len=context + shape.generated)
    if tracker is not None:
        tracker.reset_peak()
    p = next(model.parameters())
    heads = model.config.num_key_value_heads
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    # local_kv_cache: every layer's cache made before the prefill (setup_caches)
    cache.early_initialization(rows, heads, head_dim, p.dtype, p.device)
    query_responses = _generate(model, batch_ids, shape.generated, vocab, cache)
    del cache  # leaving local_kv_cache deletes the caches
    if tracker is not None:
        peaks["generation"] = max(peaks.get("generation", 0), tracker.peak)
        tracker.reset_peak()
    responses = query_responses[:, context:].clone()
    padding = query_responses != 0
    # get_causal_mask_from_padding_mask: [rows, L, L] bool; positions from the mask
    L = query_responses.shape[1]
    masks = torch.tril(torch.ones(L, L, dtype=torch.bool)) & padding[:, None, :]
    position_ids = (padding.cumsum(-1) - 1) * padding
    del padding
    logits = _logits(model, query_responses)
    logits = logits[:, context - 1 :]
    logprobs = batched_logits_to_logprobs(logits, responses)
    del logits
    ref_logits = _logits(reference, query_responses)[:, context - 1 : -1]
    ref_logprobs = batched_logits_to_logprobs(ref_logits, responses)
    del ref_logits
    # truncate_sequence_at_first_stop_token (sequence_processing.py l. 75-79)
    eos = torch.isin(responses, torch.tensor([vocab - 1]))
    seq_lens = torch.cumsum(eos, dim=1)
    response_padding = (seq_lens > 1) | ((seq_lens == 1) & ~eos)
    responses[response_padding] = 0
    del eos, seq_lens
    rewards = torch.rand(batch, shape.grpo_samples, 2).sum(-1)
    successes = torch.rand(batch, shape.grpo_samples, 2).sum(-1)
    advantages = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    advantages = advantages.reshape(rows)
    del responses
    logprobs[response_padding] = 1.0
    ref_logprobs[response_padding] = 1.0
    if tracker is not None:
        peaks["scoring"] = max(peaks.get("scoring", 0), tracker.peak)
    return {
        "query_responses": query_responses,
        "logprobs": logprobs,
        "ref_logprobs": ref_logprobs,
        "rewards": rewards.reshape(rows),
        "successes": successes.reshape(rows),
        "advantages": advantages,
        "masks": masks,
        "position_ids": position_ids,
        "response_padding_masks": response_padding,
        "seq_lens": (~response_padding).sum(-1),
    }


def generate_trajectory_batched(
    model, reference, shape: RecipeShape, vocab: int, peaks: dict | None = None, tracker=None
) -> dict:
    """l. 699-728: the chunks' trajectories, then every field concatenated."""
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, vocab - 1, (shape.batch_size, shape.prompt), generator=gen)
    parts = []
    with torch.no_grad():
        for start in range(0, shape.batch_size, shape.forward_batch_size):
            chunk = prompts[start : start + shape.forward_batch_size]
            parts.append(
                _trajectory(
                    model, reference, chunk, shape, vocab, {} if peaks is None else peaks, tracker
                )
            )
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """torchtune/rlhf/rewards.py masked_mean."""
    return (x * mask).sum(dim=dim) / (mask.sum(dim=dim) + 1e-8)


def grpo_loss(pi, old, ref, advantages, padding_masks, kl_coeff: float) -> torch.Tensor:
    """GRPOSimpleLoss.forward (torchtune/dev/grpo/loss.py l. 243-264)."""
    per_token_kl = torch.exp(ref.detach() - pi) - (ref.detach() - pi) - 1
    advantages = advantages[:, None]
    per_token_policy_loss = torch.exp(pi - pi.detach()) * advantages
    per_token_loss = -(per_token_policy_loss - kl_coeff * per_token_kl)
    loss = masked_mean(per_token_loss, padding_masks, dim=1).mean()
    masked_mean(per_token_policy_loss, padding_masks, dim=1).mean().detach()
    masked_mean(per_token_kl, padding_masks, dim=1).mean().detach()
    del old
    return loss


def grpo_step(
    model, trajectory: dict, context: int, kl_coeff: float, peaks: dict | None = None, tracker=None
) -> None:
    """grpo_step (l. 750-782): forward with gradients, log-probabilities one sequence at
    a time, the loss and backward."""
    qr = trajectory["query_responses"]
    pi_logits = _logits(model, qr)[:, context - 1 : -1]
    pi_logprobs = batched_logits_to_logprobs(pi_logits, qr[:, context:], chunk_size=1)
    pi_logprobs[trajectory["response_padding_masks"]] = 1.0
    del pi_logits
    loss = grpo_loss(
        pi_logprobs,
        trajectory["logprobs"],
        trajectory["ref_logprobs"],
        trajectory["advantages"],
        ~trajectory["response_padding_masks"],
        kl_coeff,
    )
    if tracker is not None and peaks is not None:
        peaks["forward"] = tracker.peak
        tracker.reset_peak()
    loss.backward()
    if tracker is not None and peaks is not None:
        peaks["backward"] = tracker.peak


def measure_recipe(
    model, reference, optimizer, shape: RecipeShape, tracker, loop: dict
) -> RecipePeaks:
    """One step of the recipe's train() loop (l. 829-851) under ``tracker`` (a
    LiveBytesTracker entered by the caller, with the models and optimizer tracked).
    ``loop`` keeps the trajectory as the loop does: the previous step's stays bound to
    ``trajectory`` until the new one replaces it (l. 835)."""
    vocab = model.config.vocab_size
    peaks: dict[str, int] = {}
    new = generate_trajectory_batched(model, reference, shape, vocab, peaks, tracker)
    peaks["scoring"] = max(peaks["scoring"], tracker.peak)  # the concatenation
    loop["trajectory"] = new
    del new
    tracker.reset_peak()
    grpo_step(model, loop["trajectory"], shape.prompt, shape.kl_coeff, peaks, tracker)
    tracker.reset_peak()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return RecipePeaks(
        generation=peaks["generation"],
        scoring=peaks["scoring"],
        training=max(peaks["forward"], peaks["backward"]),
        optimizer=tracker.peak,
        forward=peaks["forward"],
        backward=peaks["backward"],
    )
