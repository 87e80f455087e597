"""A faithful loop of TRL's GRPOTrainer step, for measuring on the CPU.

TRL is not installed here (and its trainer needs a tokenizer, a dataset and reward
functions), so this module replays what one micro-batch of
huggingface/trl trl/trainer/grpo_trainer.py@f2cd57710ae3 does to memory, in order,
with the same tensor operations:

1. ``_prepare_inputs``: every ``steps_per_generation`` x ``num_iterations`` micro-batches,
   ``_generate_and_score_completions`` on the generation batch (batch_size x
   steps_per_generation prompts, each prompt already repeated num_generations times by
   the RepeatSampler):
   - ``_generate_single_turn``: left-padded prompt ids and an attention mask, then
     ``unwrapped_model.generate(**inputs, generation_config=...)`` under ``torch.no_grad()``
     with the model in training mode (do_sample, temperature 1, top_p 1, top_k 0: no
     logits processor; transformers' DynamicCache); the completion is the generated tail;
   - the prompt and completion ids and masks re-padded as int64 tensors;
   - the policy's old per-token log-probabilities under no_grad when
     gradient_accumulation_steps is not a multiple of steps_per_generation x
     num_iterations (ftmem.grpo.old_logps), in chunks of per_device_train_batch_size;
   - beta != 0: the reference's per-token log-probabilities under no_grad, in chunks of
     per_device_train_batch_size (``_get_per_token_logps_and_entropies``; the frozen copy,
     or the policy with its adapter disabled under PEFT);
   - the buffered inputs (ids, masks, advantages, old and reference log-probabilities) kept
     until the next generation (``self._buffered_inputs``), split in micro-batches.
2. ``_compute_loss`` on the micro-batch: ``torch.cat`` of prompt and completion ids and
   masks, the policy's forward with ``logits_to_keep = C + 1``, ``logits[:, :-1, :]``,
   ``[:, -C:, :]``, ``div_(temperature)``, ``selective_log_softmax`` (trl/trainer/utils.py),
   the entropies under no_grad (``entropy_from_logits``: chunks of 128 rows), then the
   dapo loss (the default ``loss_type``) with the KL term when beta != 0.

The random "rewards" give advantages; their values do not change memory.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch

from ftmem.run import RunConfig

TEMPERATURE = 1.0  # GRPOConfig.temperature
EPSILON_LOW = EPSILON_HIGH = 0.2  # GRPOConfig.epsilon, epsilon_high (defaults to epsilon)
ENTROPY_CHUNK = 128  # trl/trainer/utils.py entropy_from_logits chunk_size


@dataclass
class _Loop:
    """What the trainer keeps between micro-batches: the step counter and the buffered
    generation batch (TRL's ``self._step`` and ``self._buffered_inputs``)."""

    step: int = 0
    buffered: list[dict[str, torch.Tensor]] = field(default_factory=list)


_LOOPS: weakref.WeakKeyDictionary[torch.nn.Module, _Loop] = weakref.WeakKeyDictionary()


def buffered_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The generation batch the loop keeps between micro-batches (TRL's
    ``self._buffered_inputs``), made before the measured step: the CPU meter counts it
    as live from the step's start, as the estimate's loop does (it is freed when the next
    generation replaces it)."""
    loop = _LOOPS.get(model)
    return [t for batch in loop.buffered for t in batch.values()] if loop else []


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """trl/trainer/utils.py@f2cd57710ae3 selective_log_softmax, for an index of shape (...)."""
    import torch.nn.functional as F

    index = index.unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        selected = torch.gather(logits, dim=-1, index=index)
        logsumexp = torch.stack([torch.logsumexp(lg, dim=-1) for lg in logits])
        per_token = selected - logsumexp.unsqueeze(-1)
    else:
        rows = []
        for row_logits, row_labels in zip(logits, index, strict=True):
            row_logps = F.log_softmax(row_logits, dim=-1)
            rows.append(row_logps.gather(dim=-1, index=row_labels))
        per_token = torch.stack(rows)
    return per_token.squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = ENTROPY_CHUNK) -> torch.Tensor:
    """trl/trainer/utils.py@f2cd57710ae3 entropy_from_logits."""
    import torch.nn.functional as F

    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    entropies = []
    for chunk in flat.split(chunk_size, dim=0):
        logps = F.log_softmax(chunk, dim=-1)
        entropies.append(-(torch.exp(logps) * logps).sum(-1))
    return torch.cat(entropies, dim=0).reshape(shape)


def per_token_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    batch_size: int,
    compute_entropy: bool,
    fused: tuple[str, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GRPOTrainer._get_per_token_logps_and_entropies (no images, no aux loss);
    ``fused``: TRL >= 1.16's, the outputs the model's fused LM head computes
    (fused_per_token_logps)."""
    if fused is not None:
        return fused_per_token_logps(
            model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, fused
        )
    all_logps, all_entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids = input_ids[start : start + batch_size]
        mask = attention_mask[start : start + batch_size]
        outputs = model(
            input_ids=ids, attention_mask=mask, logits_to_keep=logits_to_keep + 1, use_cache=False
        )
        if torch.is_autocast_enabled(ids.device.type):  # accelerate's convert_outputs_to_fp32
            outputs.logits = outputs.logits.float()
        logits = outputs.logits
        logits = logits[:, :-1, :]
        logits = logits[:, -logits_to_keep:, :]
        logits.div_(TEMPERATURE)
        completion_ids = ids[:, -logits_to_keep:]
        all_logps.append(selective_log_softmax(logits, completion_ids))
        if compute_entropy:
            with torch.no_grad():  # no entropy bonus (entropy_coef 0): only logged
                all_entropies.append(entropy_from_logits(logits))
    logps = torch.cat(all_logps, dim=0)
    entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
    return logps, entropies


def fused_per_token_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    batch_size: int,
    compute_entropy: bool,
    outputs: tuple[str, ...],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TRL >= 1.16's _get_per_token_logps_and_entropies (trl 1.16.0
    trl/trainer/grpo_trainer.py:1419-1508): per chunk of ``batch_size`` sequences, labels
    -100 but on the completion, the model's fused forward (ftmem.measure.step
    fused_head_forward: the backbone over the whole sequence, the completion's rows
    through the tiles), its per-token outputs sliced to the completion (views of the
    whole shifted shape); the last chunk's outputs live until the concatenation."""
    from ftmem.measure.fused_loss import IGNORE_INDEX
    from ftmem.measure.step import fused_head_forward

    all_logps, all_entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids = input_ids[start : start + batch_size]
        mask = attention_mask[start : start + batch_size]
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels[:, :-logits_to_keep] = IGNORE_INDEX
        # TRL scores only the labelled rows on CUDA (Triton), every row elsewhere
        out = fused_head_forward(model, ids, labels, outputs, mask, compact=ids.is_cuda)
        all_logps.append(out.log_probs[:, -logits_to_keep:])
        if compute_entropy:
            assert out.entropy is not None
            all_entropies.append(out.entropy[:, -logits_to_keep:])
    logps = torch.cat(all_logps, dim=0)
    entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
    return logps, entropies


def _fused(run: RunConfig, reference_copy: bool = False) -> tuple[str, ...] | None:
    """The outputs of TRL >= 1.16's fused head (--loss logprob-tiles), None before: the
    policy's (trl 1.16.0 grpo_trainer.py:1072), a reference copy's default (:1075)."""
    from ftmem.measure.step import GRPO_OUTPUTS, REFERENCE_OUTPUTS

    if run.loss != "logprob-tiles":
        return None
    return REFERENCE_OUTPUTS if reference_copy else GRPO_OUTPUTS


def _generate_batch(
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    run: RunConfig,
    vocab: int,
    device: torch.device,
    seed: int,
) -> list[dict[str, torch.Tensor]]:
    """_generate_and_score_completions for one generation batch, split in micro-batches."""
    from transformers import GenerationConfig

    rows, C = run.generation_rows, run.completion
    P = run.seq_len - C
    gen = torch.Generator().manual_seed(seed)
    # the padded prompts and their mask (all prompts P tokens: no padding)
    prompt_ids = torch.randint(1, vocab, (rows, P), generator=gen).to(device)
    prompt_mask = torch.ones_like(prompt_ids)
    config = GenerationConfig(
        max_new_tokens=C,
        do_sample=True,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        pad_token_id=0,
        # no end-of-sequence token: every completion runs to max_new_tokens (the longest
        # generation, which the estimate sizes)
        eos_token_id=None,
        # a checkpoint's config keeps transformers' default use_cache=True; ftmem's test
        # configs turn it off for training, so it is turned back on for generation
        use_cache=True,
        disable_compile=True,
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        generated = model.generate(  # type: ignore[operator]
            input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config
        )
    if generated.shape[1] != P + C:
        raise RuntimeError(f"generate() made {generated.shape[1] - P} tokens, not {C}")
    completion_ids = generated[:, P:].clone()  # the re-padded completion tensor
    del generated
    completion_mask = torch.ones_like(completion_ids)
    from ftmem.grpo import old_logps

    ref_logps = previous = None
    if run.needs_reference or old_logps(run):
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        with torch.no_grad():
            b, policy = run.batch_size, _fused(run)
            if old_logps(run):  # the policy before the step, for importance sampling
                previous, _ = per_token_logps(model, ids, mask, C, b, False, policy)
            if not run.needs_reference:
                pass
            elif reference is None:  # peft: use_adapter(model, None) disables the adapter
                with model.disable_adapter():  # type: ignore[operator]
                    ref_logps, _ = per_token_logps(model, ids, mask, C, b, False, policy)
            else:
                copy = _fused(run, reference_copy=True)
                ref_logps, _ = per_token_logps(reference, ids, mask, C, b, False, copy)
        del ids, mask
    advantages = torch.randn(rows, generator=gen).to(device)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
    }
    if previous is not None:
        batch["old_per_token_logps"] = previous
    if ref_logps is not None:
        batch["ref_per_token_logps"] = ref_logps
    b = run.batch_size
    # split_tensor_dict: views of each tensor, one per micro-batch
    return [{k: v[i * b : (i + 1) * b] for k, v in batch.items()} for i in range(rows // b)]


def grpo_loss(
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    ids: torch.Tensor,
    run: RunConfig,
) -> torch.Tensor:
    """One micro-batch of GRPOTrainer: the generation batch when it is due
    (``_prepare_inputs``), then ``_compute_loss`` with loss_type dapo. ``ids`` only says
    the device (the trainer makes its own from the generated completions)."""
    from ftmem.measure.build import hf_model

    if run.vllm is not None:
        raise RuntimeError("--vllm is not measurable here: vLLM is not installed")
    loop = _LOOPS.setdefault(model, _Loop())
    # generate_every = steps_per_generation x num_iterations: the buffer feeds
    # num_iterations passes of its micro-batches
    if loop.step % run.generate_every == 0 or not loop.buffered:
        vocab = hf_model(model).config.vocab_size
        loop.buffered = _generate_batch(model, reference, run, vocab, ids.device, loop.step)
    inputs = loop.buffered[loop.step % run.generation_steps]
    loop.step += 1
    return _compute_loss(model, inputs, run)


def _compute_loss(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], run: RunConfig
) -> torch.Tensor:
    """GRPOTrainer._compute_loss, loss_type dapo (importance sampling per token)."""
    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    logits_to_keep = completion_ids.size(1)
    mask = completion_mask
    logps, entropies = per_token_logps(
        model, input_ids, attention_mask, logits_to_keep, input_ids.size(0), True, _fused(run)
    )
    advantages = inputs["advantages"].unsqueeze(1)
    # generation aligned with the optimizer steps: no old log-probabilities, the detached ones
    old_logps = inputs.get("old_per_token_logps", logps.detach())
    log_ratio = logps - old_logps
    coef_1 = torch.exp(log_ratio)
    per_token_kl = None
    if "ref_per_token_logps" in inputs:
        ref = inputs["ref_per_token_logps"]
        per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1
    coef_2 = torch.clamp(coef_1, 1 - EPSILON_LOW, 1 + EPSILON_HIGH)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if per_token_kl is not None:
        per_token_loss = per_token_loss + run.kl_beta * per_token_kl  # type: ignore[operator]
    # dapo: normalised by the tokens of the whole accumulated batch
    normalizer = (mask.sum() * run.grad_accum).clamp(min=1.0)
    loss = (per_token_loss * mask).sum() / normalizer
    del entropies
    return loss
