"""Run training steps on a real model and measure the last one."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ftmem.arch import Architecture
from ftmem.distill import Teacher
from ftmem.measure import Measurement, Phase, WarmUp
from ftmem.measure.build import (
    Built,
    build_model,
    build_optimizer,
    galore_optimizer,
    galore_param_groups,
    hf_model,
    image_inputs,
    logical_numel,
    unique_params,
)
from ftmem.measure.fused_loss import IGNORE_INDEX, chunked_loss, fused_loss
from ftmem.measure.saved import (
    HostOffload,
    SavedRegistry,
    bytes_by_op,
    graph_nodes,
    model_state_tensors,
    storage_bytes,
    walk_saved,
    weight_storage_ptrs,
)
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.optim import BNB_OPTIMIZERS
from ftmem.run import UNPAIRED_OBJECTIVES, RunConfig

PHASES: tuple[Phase, ...] = ("forward", "backward", "optimizer")


def _versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    return {
        "torch_version": torch.__version__,
        "transformers_version": ver("transformers") or "",
        "peft_version": ver("peft"),
        "bitsandbytes_version": ver("bitsandbytes"),
    }


class _CpuMeter:
    """Phase peaks from the dispatch-mode tracker."""

    name = "dispatch"

    def __init__(
        self, pre_existing: list[torch.Tensor], events: list[tuple[str, int]] | None = None
    ) -> None:
        self.tracker = LiveBytesTracker(events)
        self.tracker.track(pre_existing)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with self.tracker:
            yield

    def current(self) -> int:
        return self.tracker.current

    def start_phase(self) -> None:
        self.tracker.reset_peak()

    def phase_peak(self) -> int:
        return self.tracker.peak


class _CudaMeter:
    """Phase peaks from the CUDA caching allocator's statistics."""

    name = "cuda-allocator"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        yield

    def current(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.memory_allocated(self.device)

    def start_phase(self) -> None:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)

    def phase_peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def device_readings(self, before: int) -> tuple[int, int]:
        """(peak reserved, device memory at that peak) of the whole run: ``before`` is
        the reserved peak of loading and warm-up (read before the cache was emptied for
        the measured step), the step's own counts from its last phase's reset, which
        starts it at the reserved bytes then (reserved only grows inside a step). The
        device figure is what lives outside the allocator now (total - free -
        reserved, from mem_get_info: context, libraries) plus that peak."""
        torch.cuda.synchronize(self.device)
        free, total = torch.cuda.mem_get_info(self.device)
        peak = max(before, torch.cuda.max_memory_reserved(self.device))
        outside = total - free - torch.cuda.memory_reserved(self.device)
        return peak, outside + peak


def _forward(
    model: torch.nn.Module,
    ids: torch.Tensor,
    dtype: torch.dtype | None,
    device_type: str,
    grad_accum: int = 1,
    loss_impl: str = "standard",
    teacher: torch.nn.Module | None = None,
    labels: torch.Tensor | None = None,
    run: RunConfig | None = None,
    images: dict | None = None,
) -> torch.Tensor:
    """One micro-batch's loss; ``teacher``: the distillation teacher, or a preference
    objective's frozen reference copy (``run.objective``)."""
    ctx = (
        torch.autocast(device_type=device_type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' renamed-API notices
        if run is not None and run.objective == "grpo":  # TRL's GRPOTrainer (measure.grpo)
            from ftmem.measure.grpo import grpo_loss

            loss = grpo_loss(model, teacher, ids, run)
        elif run is not None and run.objective != "sft":
            loss = _preference_loss(model, teacher, ids, run, labels)
        elif loss_impl == "logprob-tiles" and teacher is None:
            loss = _tiles_sft_loss(model, ids)
        elif teacher is not None:
            loss = _distillation_loss(model, teacher, ids)
        elif loss_impl == "fused":
            loss = fused_loss(model, ids)
        elif loss_impl == "chunked":
            loss = chunked_loss(model, ids)
        elif loss_impl == "shifted":
            loss = _shifted_loss(model, ids)
        elif loss_impl == "upcast-shifted":
            loss = _upcast_shifted_loss(model, ids)
        elif loss_impl == "linear-chunked":
            loss = _linear_chunked_loss(model, ids)
        else:
            # an encoder-decoder reads ids and learns to produce its own labels
            out = model(input_ids=ids, labels=ids if labels is None else labels, **(images or {}))
            loss = out.loss
            del out  # drop logits: only what autograd saved stays alive
        if grad_accum > 1:  # as HF Trainer scales each micro-batch's loss
            loss = loss / grad_accum
    return loss


def _shifted_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's own loss as 2023 remote-code models write it (Qwen-1's modeling_qwen.py
    QWenLMHeadModel.forward, Qwen/Qwen-7B@a6ca629): the logits in the model's dtype, a
    contiguous copy of their shifted slice and of the shifted labels, CrossEntropyLoss
    without an upcast."""
    import torch.nn.functional as F

    with _head_input_named(model) as named:
        out = model(input_ids=ids)  # no labels: transformers returns the logits as computed
        logits = out.logits
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = ids[..., 1:].contiguous()
        loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        del out, logits, shift_logits  # the forward returns; only what autograd saved stays
        named.clear()
    return loss


@contextlib.contextmanager
def _head_input_named(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The LM head's input, referenced until the caller clears the list: a forward that
    computes its own loss names it (``hidden_states``) until the loss returns, where these
    stand-ins call the model for its logits first (step._named_head_input)."""
    named: list[torch.Tensor] = []
    get = getattr(model, "get_output_embeddings", None)  # (Qwen-1's remote code has none)
    head = get() if get is not None else None
    if head is None:
        head = next(m for name, m in model.named_modules() if name.endswith("lm_head"))
    handle = head.register_forward_pre_hook(lambda _module, args: named.append(args[0]))
    try:
        yield named
    finally:
        handle.remove()


def _upcast_shifted_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """transformers < 4.46's causal-LM loss in the model's forward (4.40.2
    models/llama/modeling_llama.py:1230-1244): ``logits = logits.float()`` (the head's
    output dropped as the name is rebound), a contiguous copy of the shifted fp32 logits
    and of the shifted labels, CrossEntropyLoss; the fp32 logits are returned in the
    output, which HF Trainer's compute_loss drops."""
    with _head_input_named(model) as named:
        out = model(input_ids=ids)  # no labels: transformers returns the logits as computed
        logits = out.logits.float()
        del out  # the head's own output: only the name held it
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = ids[..., 1:].contiguous()
        loss_fct = torch.nn.CrossEntropyLoss()
        loss = loss_fct(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
        del logits, shift_logits  # the forward returns, its output dropped
        named.clear()
    return loss


TORCHTUNE_CHUNKS = 8  # LinearCrossEntropyLoss's num_output_chunks default


def _linear_chunked_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """torchtune's LinearCrossEntropyLoss (pytorch/torchtune
    torchtune/modules/loss/cross_entropy_loss.py@bd2a0fc7c314 forward, mask_inputs,
    compute_cross_entropy): the model stops before its LM head; the hidden states of the
    labelled positions are picked with index_select, split in 8 chunks, and each chunk
    goes through the head, an fp32 upcast and a summed cross-entropy on its own."""
    import torch.nn.functional as F

    base = hf_model(model)
    hidden = getattr(base, base.base_model_prefix)(input_ids=ids).last_hidden_state
    head = base.get_output_embeddings()
    # the recipe's shifted labels: the last position has none
    labels = F.pad(ids[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
    keep = torch.where(labels != IGNORE_INDEX)[0]
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    labels = labels.index_select(0, keep)
    total = torch.zeros((), dtype=torch.float32, device=ids.device)
    chunks = zip(
        hidden.tensor_split(TORCHTUNE_CHUNKS), labels.tensor_split(TORCHTUNE_CHUNKS), strict=True
    )
    for rows, target in chunks:
        total = total + F.cross_entropy(
            head(rows).float(), target, reduction="sum", ignore_index=IGNORE_INDEX
        )
    return total / keep.numel()


# TRL >= 1.16's fused LM head (--loss logprob-tiles) as it runs on CUDA. The tile's rows
# (TOKEN_CHUNK_SIZE, trl 1.16.0 trl/kernels/chunked_logprob.py:31) and vocabulary width
# (_CHUNKED_LOGPROB_CHUNK_SIZE, trl 1.16.0 trl/trainer/utils.py:1506).
TILE_ROWS = 4096
TILE_VOCAB = 32768
# rows (or vocabulary columns) this loop folds at once: TRL's Triton kernels fold a tile
# in registers, one program per row; one row at a time keeps the fp32 temporaries of this
# torch replay to a few rows of the vocabulary (kilobytes beside a buffer of megabytes)
FOLD_BLOCK = 1
# the outputs each trainer asks its fused head for (trl 1.16.0): SFTTrainer
# (sft_trainer.py:1146), DPOTrainer (dpo_trainer.py:957, without WPO's weighting),
# KTOTrainer (kto_trainer.py:969), GRPOTrainer (grpo_trainer.py:1072); a reference copy
# gets the default, the log-probabilities alone (add_fused_lm_head, utils.py:1552)
SFT_OUTPUTS = ("log_probs", "entropy", "is_top1")
DPO_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
KTO_OUTPUTS = ("log_probs", "entropy", "mean_logits")
GRPO_OUTPUTS = ("log_probs", "entropy")
REFERENCE_OUTPUTS = ("log_probs",)


class LogProbTiles(torch.autograd.Function):
    """Each row's log-probability of its target under ``hidden @ weight.T``, tile by
    tile, with the memory TRL's ChunkedLogProbFunction (trl 1.16.0
    trl/kernels/chunked_logprob.py:299) takes on CUDA: in forward one buffer of
    min(N, 4096) x 32768 in the compute dtype (the autocast dtype, else the hidden
    states'), each row chunk and weight slice cast to it (a copy only where the dtype
    differs), seven fp32 running statistics per row; it saves the rows, the targets, the
    log-normaliser and the entropy. Backward makes the buffer again, fp32 accumulators
    of the rows' gradient and (where the head trains) of the weight's, turns each
    recomputed tile into the logits' gradient in place and adds its products into the
    accumulators (CUDA's fp32-output addmm: no fp32 copy of a tile), then casts the
    accumulators to the inputs' dtypes. Written for this measurement from the
    algorithm (online log-sum-exp); tests/test_trl116_objectives.py checks its moments
    against TRL's own function. No soft-capping, logit scale, bias or temperature (the
    tiny models have none; GRPO's temperature is 1)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        outputs: tuple[str, ...],
    ) -> tuple[torch.Tensor | None, ...]:
        ctx.set_materialize_grads(False)
        dev = hidden.device
        on = torch.is_autocast_enabled(dev.type)
        compute = torch.get_autocast_dtype(dev.type) if on else hidden.dtype
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        # running max, sum of exp, sum of exp x logit, sum of exp squared, sum of
        # logits, max before the target, target logit: all seven made whatever is asked
        stats = [torch.zeros(n_rows, device=dev, dtype=torch.float32) for _ in range(7)]
        stats[0].fill_(-float("inf"))
        stats[5].fill_(-float("inf"))
        buffer = torch.empty((min(n_rows, TILE_ROWS), TILE_VOCAB), device=dev, dtype=compute)
        for r0 in range(0, n_rows, TILE_ROWS):
            r1 = min(r0 + TILE_ROWS, n_rows)
            rows = hidden[r0:r1].to(compute)
            for v0 in range(0, vocab, TILE_VOCAB):
                v1 = min(v0 + TILE_VOCAB, vocab)
                tile = buffer[: r1 - r0, : v1 - v0]
                torch.mm(rows, weight[v0:v1].to(compute).t(), out=tile)
                _fold_forward(tile, targets[r0:r1] - v0, [s[r0:r1] for s in stats])
        running_max, sum_exp, x_sum_exp, _, z_sum, max_before, target_logit = stats
        log_z = running_max + torch.log(sum_exp)
        logprobs = target_logit - log_z
        entropy = log_z - x_sum_exp / sum_exp if "entropy" in outputs else None
        mean_logits = z_sum / vocab if "mean_logits" in outputs else None
        is_top1 = (
            (target_logit >= running_max) & (target_logit > max_before)
            if "is_top1" in outputs
            else None
        )
        ctx.save_for_backward(hidden, weight, targets, log_z, log_z if entropy is None else entropy)
        ctx.compute = compute
        ctx.mark_non_differentiable(*(x for x in (mean_logits, is_top1) if x is not None))
        return logprobs, entropy, mean_logits, is_top1

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets, log_z, entropy = ctx.saved_tensors
        grad_logprobs, grad_entropy = grads[0], grads[1]
        compute = ctx.compute
        n_rows, vocab = hidden.shape[0], weight.shape[0]
        want_hidden, want_weight = ctx.needs_input_grad[:2]
        dev = hidden.device
        grad_hidden = (
            torch.zeros(hidden.shape, device=dev, dtype=torch.float32) if want_hidden else None
        )
        grad_weight = (
            torch.zeros(weight.shape, device=dev, dtype=torch.float32) if want_weight else None
        )
        buffer = torch.empty((min(n_rows, TILE_ROWS), TILE_VOCAB), device=dev, dtype=compute)
        g_lp = None if grad_logprobs is None else grad_logprobs.float().contiguous()
        g_ent = None if grad_entropy is None else grad_entropy.float().contiguous()
        for r0 in range(0, n_rows, TILE_ROWS):
            r1 = min(r0 + TILE_ROWS, n_rows)
            rows = hidden[r0:r1].to(compute)
            for v0 in range(0, vocab, TILE_VOCAB):
                v1 = min(v0 + TILE_VOCAB, vocab)
                w_slice = weight[v0:v1].to(compute)
                tile = buffer[: r1 - r0, : v1 - v0]
                torch.mm(rows, w_slice.t(), out=tile)
                per_row = (log_z[r0:r1], entropy[r0:r1])
                picked = (
                    None if g_lp is None else g_lp[r0:r1],
                    None if g_ent is None else g_ent[r0:r1],
                )
                _fold_backward(tile, targets[r0:r1] - v0, per_row, picked)
                if grad_hidden is not None:
                    _add_products(grad_hidden[r0:r1], tile, w_slice)
                if grad_weight is not None:
                    _add_products(grad_weight[v0:v1], tile.t(), rows)
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None,
            None,
        )


def _fold_forward(tile: torch.Tensor, local: torch.Tensor, stats: list[torch.Tensor]) -> None:
    """One tile's logits folded into the rows' running statistics, a few rows at a time
    (``local``: the targets' columns in this tile; outside it, no target logit)."""
    running_max, sum_exp, x_sum_exp, sq_sum_exp, z_sum, max_before, target_logit = stats
    width = tile.shape[1]
    columns = torch.arange(width, device=tile.device)
    for i in range(0, tile.shape[0], FOLD_BLOCK):
        j = min(i + FOLD_BLOCK, tile.shape[0])
        z = tile[i:j].float()
        here = local[i:j]
        z_sum[i:j] += z.sum(-1)
        before = columns < here.unsqueeze(-1)
        max_before[i:j] = torch.maximum(
            max_before[i:j], z.masked_fill(~before, -float("inf")).amax(-1)
        )
        new_max = torch.maximum(running_max[i:j], z.amax(-1))
        rescale = torch.exp(running_max[i:j] - new_max)
        e = torch.exp(z - new_max.unsqueeze(-1))
        sum_exp[i:j] = sum_exp[i:j] * rescale + e.sum(-1)
        x_sum_exp[i:j] = x_sum_exp[i:j] * rescale + (e * z).sum(-1)
        sq_sum_exp[i:j] = sq_sum_exp[i:j] * rescale * rescale + (e * e).sum(-1)
        running_max[i:j] = new_max
        inside = (here >= 0) & (here < width)
        picked = z.gather(-1, here.clamp(0, width - 1).unsqueeze(-1)).squeeze(-1)
        target_logit[i:j] = torch.where(inside, picked, target_logit[i:j])


def _fold_backward(
    tile: torch.Tensor,
    local: torch.Tensor,
    per_row: tuple[torch.Tensor, torch.Tensor],
    grads: tuple[torch.Tensor | None, torch.Tensor | None],
) -> None:
    """The tile overwritten, a few rows at a time, with the gradient of the loss with
    respect to its logits: g·(1[target] − p) for the log-probability,
    −g·p·(log p + H) for the entropy."""
    log_z, entropy = per_row
    g_lp, g_ent = grads
    columns = torch.arange(tile.shape[1], device=tile.device)
    for i in range(0, tile.shape[0], FOLD_BLOCK):
        j = min(i + FOLD_BLOCK, tile.shape[0])
        log_p = tile[i:j].float() - log_z[i:j].unsqueeze(-1)
        p = torch.exp(log_p)
        grad = torch.zeros_like(p)
        if g_lp is not None:
            target = (columns == local[i:j].unsqueeze(-1)).float()
            grad += g_lp[i:j].unsqueeze(-1) * (target - p)
        if g_ent is not None:
            grad -= g_ent[i:j].unsqueeze(-1) * p * (log_p + entropy[i:j].unsqueeze(-1))
        tile[i:j].copy_(grad)


def _add_products(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b into an fp32 ``acc``, a few rows of ``a`` at a time (CUDA's addmm
    with an fp32 output reads 16-bit inputs without copies)."""
    for i in range(0, a.shape[0], FOLD_BLOCK):
        j = min(i + FOLD_BLOCK, a.shape[0])
        acc[i:j] += (a[i:j] @ b).float()


@dataclasses.dataclass
class FusedOutput:
    """What TRL's fused forward returns (trl 1.16.0 trl/trainer/utils.py:1510
    FusedCausalLMOutput): the per-token fields in the shape of the shifted labels,
    zero where the label is ignored, None where not asked for."""

    loss: torch.Tensor
    log_probs: torch.Tensor
    entropy: torch.Tensor | None
    mean_logits: torch.Tensor | None
    is_top1: torch.Tensor | None
    label_mask: torch.Tensor


def fused_head_forward(
    model: torch.nn.Module,
    ids: torch.Tensor,
    labels: torch.Tensor,
    outputs: tuple[str, ...],
    attention_mask: torch.Tensor | None = None,
    compact: bool = True,
) -> FusedOutput:
    """TRL's patched forward with ``fused_lm_head=True`` (trl 1.16.0
    trl/trainer/utils.py:1599 _fused_forward) on CUDA with Triton (``compact``): the
    backbone (no LM head), its last hidden states and the labels shifted, only the rows
    whose label is not -100 projected (``hidden_states[mask]``: a copy, the targets
    ``labels[mask]`` another), each output scattered back into zeros of the labels'
    shape, the mean negative log-likelihood as ``loss``. The backbone's output lives
    until the forward returns. ``compact=False``: TRL off Triton (the CPU), every
    shifted row projected (``hidden_states.reshape(-1, H)``, a copy of the slice; the
    targets ``labels.clamp(min=0).reshape(-1)``), each output masked in its own shape
    (``x.view(mask.shape).masked_fill(~mask, 0)``)."""
    base = hf_model(model)
    backbone = getattr(base, base.base_model_prefix)(
        input_ids=ids, attention_mask=attention_mask, use_cache=False
    )
    hidden = backbone.last_hidden_state[:, :-1]
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    head = base.get_output_embeddings()
    if compact:
        per_token = LogProbTiles.apply(hidden[mask], head.weight, shifted[mask], outputs)
        log_probs, entropy, mean_logits, is_top1 = (
            None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x)
            for x in per_token
        )
    else:
        rows = hidden.reshape(-1, hidden.size(-1))
        per_token = LogProbTiles.apply(rows, head.weight, shifted.clamp(min=0).reshape(-1), outputs)
        del rows
        log_probs, entropy, mean_logits, is_top1 = (
            None if x is None else x.view(mask.shape).masked_fill(~mask, 0) for x in per_token
        )
    del per_token
    assert log_probs is not None
    loss = -log_probs.sum() / mask.sum().clamp(min=1)
    return FusedOutput(loss, log_probs, entropy, mean_logits, is_top1, mask)


PREFERENCE_BETA = 0.1  # TRL DPOConfig's and CPOConfig's beta default


def _selective_log_softmax(shifted: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """TRL's selective_log_softmax (trl/trainer/utils.py@f2cd57710ae3): 16-bit logits one
    sequence at a time through log_softmax and gather; fp32 ones by gather and a
    per-sequence logsumexp."""
    import torch.nn.functional as F

    labels = index.unsqueeze(-1)
    if shifted.dtype in (torch.float32, torch.float64):
        picked = torch.gather(shifted, dim=-1, index=labels)
        logsumexp = torch.stack([torch.logsumexp(row, dim=-1) for row in shifted])
        return (picked - logsumexp.unsqueeze(-1)).squeeze(-1)
    rows = [
        F.log_softmax(row, dim=-1).gather(dim=-1, index=label)
        for row, label in zip(shifted, labels, strict=True)
    ]
    return torch.stack(rows).squeeze(-1)


def _sequence_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Each sequence's summed completion log-probability as TRL's DPOTrainer forms it
    (huggingface/trl trl/trainer/dpo_trainer.py@f2cd57710ae3 _compute_loss): the shifted
    logits through selective_log_softmax (trl/trainer/utils.py@f2cd57710ae3: 16-bit
    logits one sequence at a time through log_softmax and gather; fp32 ones by gather
    and a per-sequence logsumexp), the prompt's positions (here the first half) zeroed."""
    per_token = _selective_log_softmax(logits[..., :-1, :], ids[..., 1:])
    completion = torch.ones_like(per_token, dtype=torch.bool)
    completion[:, : per_token.shape[1] // 2] = False
    per_token[~completion] = 0.0
    return per_token.sum(dim=1)


def _preference_loss(
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    ids: torch.Tensor,
    run: RunConfig,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """One preference step over ``ids`` = [chosen; rejected] (2b sequences), as TRL runs
    it: the policy's forward with its outputs held until the loss is formed, its
    sequence log-probabilities, then (dpo, ipo) the reference's under no_grad: the
    adapter disabled on a peft model (``reference`` None), else the frozen copy
    (dpo_trainer.py@f2cd57710ae3 _compute_loss). orpo first takes the chosen half's
    cross-entropy (trl/experimental/orpo/orpo_trainer.py@f2cd57710ae3
    concatenated_forward, odds_ratio_loss); simpo is CPOTrainer's loss_type simpo with
    cpo_alpha 0 (trl/experimental/cpo/cpo_trainer.py@f2cd57710ae3 cpo_loss): no
    reference, length-averaged log-probabilities. Precomputed reference
    log-probabilities (precompute_ref) are constants read with the batch."""
    import torch.nn.functional as F

    if run.objective in UNPAIRED_OBJECTIVES:
        assert batch is not None, "a KTO batch's completion mask and KL sequences"
        if run.framework == "llama-factory":
            return _llama_factory_kto_loss(model, reference, ids, batch[1])
        if run.loss == "logprob-tiles":  # TRL >= 1.16's fused LM head
            return _tiles_kto_loss(model, reference, ids, batch, run)
        return _kto_loss(model, reference, ids, batch, run)
    if run.loss == "logprob-tiles":  # TRL >= 1.16's fused LM head
        return _tiles_preference_loss(model, reference, ids, run)
    if run.framework in ("llama-factory", "torchtune"):
        return _llama_factory_preference_loss(model, reference, ids, run)
    outputs = model(input_ids=ids, use_cache=False)
    if torch.is_autocast_enabled(ids.device.type):  # accelerate's convert_outputs_to_fp32
        outputs.logits = outputs.logits.float()
    b, beta = ids.shape[0] // 2, PREFERENCE_BETA
    completion = ids.shape[1] - 1 - (ids.shape[1] - 1) // 2  # tokens after the prompt
    if run.objective == "orpo":
        logits = outputs.logits[:b, :-1, :].contiguous()
        nll = F.cross_entropy(logits.view(-1, logits.shape[-1]), ids[:b, 1:].reshape(-1))
        del logits
        chosen, rejected = (_sequence_logps(outputs.logits, ids) / completion).chunk(2)
        log_odds = (chosen - rejected) - (
            torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected))
        )
        return nll - beta * F.logsigmoid(log_odds).mean()
    logps = _sequence_logps(outputs.logits, ids)
    if run.objective == "simpo":  # simpo_gamma 0.5 (CPOConfig)
        chosen, rejected = (logps / completion).chunk(2)
        return -F.logsigmoid(beta * (chosen - rejected) - 0.5).mean()
    ref_logps = torch.zeros_like(logps)  # precomputed: read with the batch
    if run.needs_reference:
        with torch.no_grad():
            if reference is None:
                with model.disable_adapter():  # type: ignore[operator]
                    ref_logits = model(input_ids=ids, use_cache=False).logits
            else:
                ref_logits = reference(input_ids=ids, use_cache=False).logits
            if torch.is_autocast_enabled(ids.device.type):
                ref_logits = ref_logits.float()
            ref_logps = _sequence_logps(ref_logits, ids)
            del ref_logits
    chosen, rejected = (logps - ref_logps).chunk(2)
    if run.objective == "ipo":
        loss = ((chosen - rejected) / completion - 1 / (2 * beta)) ** 2
    else:
        loss = -F.logsigmoid(beta * (chosen - rejected))
    del outputs
    return loss.mean()


def kto_batch(ids: torch.Tensor) -> torch.Tensor:
    """The rest of a KTO batch, made with it (inputs, not activations), stacked: the
    completion mask (the prompt is the first token: the completions fill the sequence,
    the worst batch ftmem estimates) and the KL sequences TRL's collator builds by
    rotating the batch's completions by one (trl/trainer/kto_trainer.py@f2cd57710ae3
    _prepare_dataset add_kl_completion_ids)."""
    mask = torch.ones_like(ids)
    mask[:, 0] = 0
    return torch.stack([mask, torch.cat([ids[:, :1], ids.roll(1, dims=0)[:, 1:]], dim=1)])


def _entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """TRL's entropy_from_logits (trl/trainer/utils.py@f2cd57710ae3): the rows' entropy,
    128 rows at a time."""
    import torch.nn.functional as F

    flat_logits = logits.reshape(-1, logits.shape[-1])
    entropies = []
    for chunk in flat_logits.split(chunk_size, dim=0):
        logps = F.log_softmax(chunk, dim=-1)
        entropies.append(-(torch.exp(logps) * logps).sum(-1))
    return torch.cat(entropies, dim=0).reshape(logits.shape[:-1])


def _kto_loss(
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    ids: torch.Tensor,
    batch: torch.Tensor,
    run: RunConfig,
) -> torch.Tensor:
    """One step of TRL's KTOTrainer (trl/trainer/kto_trainer.py@f2cd57710ae3
    _compute_loss, _compute_kl_logps) over b completions, every one desirable (the
    worst batch for the metrics' masked copy, ftmem.ops.loss.PreferenceLoss): loss_type
    kto first runs the policy on the KL sequences (``batch``: kto_batch) under no_grad, then the
    policy's forward (``outputs`` held to the end), its completion log-probabilities,
    then the reference's KL and completion forwards under no_grad (the adapter disabled
    on a peft model, else the frozen copy; precomputed: read with the batch), the loss,
    and the metrics (entropy, the chosen and rejected logits' means).
    apo-zero-unpaired has no KL sequences."""
    autocast = torch.is_autocast_enabled(ids.device.type)
    completion_mask = batch[0]
    kl_ids = batch[1] if run.objective == "kto" else None

    def logits_of(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(input_ids=x, use_cache=False).logits
        return logits.float() if autocast else logits  # accelerate's convert_outputs_to_fp32

    def kl_logps(m: torch.nn.Module) -> torch.Tensor | None:
        if kl_ids is None:
            return None
        with torch.no_grad():
            kl_logits = logits_of(m, kl_ids)
        per_token = _selective_log_softmax(kl_logits[:, :-1, :], kl_ids[:, 1:])
        per_token[completion_mask[:, 1:] == 0] = 0.0
        return per_token.sum(-1)

    policy_kl = kl_logps(model)
    outputs = model(input_ids=ids, use_cache=False)
    if autocast:
        outputs.logits = outputs.logits.float()
    shift_logits = outputs.logits[:, :-1, :]
    per_token_logps = _selective_log_softmax(shift_logits, ids[:, 1:])
    per_token_logps[completion_mask[:, 1:] == 0] = 0.0
    completion_logps = per_token_logps.sum(-1)
    bool_labels = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    chosen_idx = torch.nonzero(bool_labels, as_tuple=False).view(-1)
    rejected_idx = torch.nonzero(~bool_labels, as_tuple=False).view(-1)
    chosen_logps = completion_logps.index_select(0, chosen_idx)
    rejected_logps = completion_logps.index_select(0, rejected_idx)
    ref_outputs = None
    if run.needs_reference:
        with torch.no_grad():
            if reference is None:
                with model.disable_adapter():  # type: ignore[operator]
                    ref_kl = kl_logps(model)
                    ref_outputs = model(input_ids=ids, use_cache=False)
            else:
                ref_kl = kl_logps(reference)
                ref_outputs = reference(input_ids=ids, use_cache=False)
            if autocast:
                ref_outputs.logits = ref_outputs.logits.float()
        ref_per_token = _selective_log_softmax(ref_outputs.logits[:, :-1, :], ids[:, 1:])
        ref_per_token[completion_mask[:, 1:] == 0] = 0.0
        ref_logps = ref_per_token.sum(-1)
    else:  # precomputed: read with the batch
        ref_logps = torch.zeros_like(completion_logps.detach())
        ref_kl = None if policy_kl is None else torch.zeros_like(policy_kl)
    if policy_kl is not None and ref_kl is not None:
        kl = (policy_kl - ref_kl).mean().detach().clamp(min=0)
    else:
        kl = torch.zeros(1, device=ids.device)
    groups = (chosen_idx, rejected_idx)
    losses = _kto_losses((chosen_logps, rejected_logps), ref_logps, groups, kl, run.objective)
    _kto_metrics(shift_logits, completion_mask, groups)
    loss = losses.nanmean()
    del outputs, ref_outputs, shift_logits
    return loss


def _kto_losses(
    logps: tuple[torch.Tensor, torch.Tensor],
    ref_logps: torch.Tensor,
    groups: tuple[torch.Tensor, torch.Tensor],
    kl: torch.Tensor,
    objective: str,
) -> torch.Tensor:
    """KTOTrainer's chosen and rejected losses (kto, or apo_zero_unpaired without the KL
    term): an empty group's losses are an empty tensor, never computed (TRL's branches;
    a computed one would hang off the graph unreached by backward)."""
    import torch.nn.functional as F

    beta = PREFERENCE_BETA
    (chosen_logps, rejected_logps), (chosen_idx, rejected_idx) = logps, groups
    ref_chosen = ref_logps.index_select(0, chosen_idx)
    ref_rejected = ref_logps.index_select(0, rejected_idx)
    chosen_losses = rejected_losses = torch.Tensor([]).to(kl.device)
    if chosen_logps.shape[0] != 0:
        ratios = chosen_logps - ref_chosen
        chosen_losses = 1 - F.sigmoid(beta * (ratios - kl if objective == "kto" else ratios))
    if rejected_logps.shape[0] != 0:
        ratios = rejected_logps - ref_rejected
        if objective == "kto":
            rejected_losses = 1 - F.sigmoid(beta * (kl - ratios))
        else:  # apo_zero_unpaired
            rejected_losses = F.sigmoid(beta * ratios)
    return torch.cat((1.0 * chosen_losses, 1.0 * rejected_losses), 0)


def _kto_metrics(
    shift_logits: torch.Tensor,
    completion_mask: torch.Tensor,
    groups: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """KTOTrainer's metrics after the loss: the entropy, the chosen and rejected logits'
    copies and their masked means."""
    per_token_entropy = _entropy_from_logits(shift_logits.detach())
    mask = completion_mask[:, 1:]
    (per_token_entropy * mask).sum().item()
    chosen_idx, rejected_idx = groups
    chosen_logits = shift_logits.detach().index_select(0, chosen_idx)
    rejected_logits = shift_logits.detach().index_select(0, rejected_idx)
    chosen_logits[mask.index_select(0, chosen_idx).bool()].mean(-1).sum().item()
    rejected_logits[mask.index_select(0, rejected_idx).bool()].mean(-1).sum().item()


def _tiles_sft_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """SFTTrainer since TRL 1.15 (--loss logprob-tiles): the fused head's loss over every
    shifted position (trl 1.16.0 trl/trainer/sft_trainer.py:1144; compute_loss takes
    ``outputs.loss``)."""
    out = fused_head_forward(model, ids, ids, SFT_OUTPUTS)
    loss = out.loss
    del out
    return loss


def worst_case_labels(ids: torch.Tensor) -> torch.Tensor:
    """A preference batch's labels: the prompt is the first token, so every completion
    fills its sequence and every shifted row is scored (the worst batch, which the
    estimate sizes)."""
    labels = ids.clone()
    labels[:, 0] = IGNORE_INDEX
    return labels


def _tiles_preference_loss(
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    ids: torch.Tensor,
    run: RunConfig,
) -> torch.Tensor:
    """DPOTrainer's step since TRL 1.16 (trl 1.16.0 trl/trainer/dpo_trainer.py:1285
    _compute_loss): the policy's fused forward over [chosen; rejected] with its outputs
    held to the end, the sequences' summed log-probabilities, then the reference's fused
    forward under no_grad (the adapter disabled on a peft model, whose patched forward
    asks for every output; a frozen copy asks for the log-probabilities alone), the
    loss (sigmoid, or ipo normalised by the completion's length), and the metrics read
    from the per-token outputs: no logits anywhere."""
    import torch.nn.functional as F

    labels = worst_case_labels(ids)
    outputs = fused_head_forward(model, ids, labels, DPO_OUTPUTS)
    mask = outputs.label_mask
    logps = outputs.log_probs.sum(dim=1)
    chosen_logps, rejected_logps = logps.chunk(2, dim=0)
    ref_logps = torch.zeros_like(logps)  # precomputed: read with the batch
    ref_outputs = None
    if run.needs_reference:
        with torch.no_grad():
            if reference is None:
                with model.disable_adapter():  # type: ignore[operator]
                    ref_outputs = fused_head_forward(model, ids, labels, DPO_OUTPUTS)
            else:
                ref_outputs = fused_head_forward(reference, ids, labels, REFERENCE_OUTPUTS)
        ref_logps = ref_outputs.log_probs.sum(dim=1)
    ref_chosen, ref_rejected = ref_logps.chunk(2, dim=0)
    chosen = chosen_logps - ref_chosen
    rejected = rejected_logps - ref_rejected
    beta = PREFERENCE_BETA
    if run.objective == "ipo":
        lengths = mask.sum(dim=1).clamp(min=1)
        chosen_len, rejected_len = lengths.chunk(2, dim=0)
        delta = chosen / chosen_len - rejected / rejected_len
        loss = (delta - 1 / (2 * beta)) ** 2
    else:
        loss = -F.logsigmoid(beta * (chosen - rejected))
    _tiles_metrics(outputs, mask, paired=True)
    del outputs, ref_outputs
    return loss.mean()


def _tiles_metrics(outputs: FusedOutput, mask: torch.Tensor, paired: bool) -> None:
    """The trainers' metrics after the loss, from the per-token outputs (dpo_trainer.py
    :1521-1560; kto_trainer.py:1490-1510 alike): the masked entropy, each group's mean
    logit over its completion rows, DPO's top-1 accuracy of the chosen completions."""
    assert outputs.entropy is not None and outputs.mean_logits is not None
    (outputs.entropy.detach() * mask).sum().item()
    if paired:
        chosen_ml, rejected_ml = outputs.mean_logits.chunk(2, dim=0)
        chosen_mask, rejected_mask = mask.chunk(2, dim=0)
    else:  # KTO: every completion desirable (kto_batch), the rejected group empty
        chosen_mask, rejected_mask = mask, mask[:0]
        chosen_ml, rejected_ml = outputs.mean_logits, outputs.mean_logits[:0]
    chosen_ml[chosen_mask.bool()].sum().item()
    rejected_ml[rejected_mask.bool()].sum().item()
    if outputs.is_top1 is not None:
        top1, _ = outputs.is_top1.chunk(2, dim=0)
        (top1 & chosen_mask.bool()).sum().item()


def _tiles_kto_loss(
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    ids: torch.Tensor,
    batch: torch.Tensor,
    run: RunConfig,
) -> torch.Tensor:
    """KTOTrainer's step since TRL 1.16 (trl 1.16.0 trl/trainer/kto_trainer.py:1370
    _compute_loss, :1337 _compute_kl_logps): loss_type kto first runs the policy's fused
    forward on the KL sequences under no_grad, then the policy's over the completions
    (outputs held to the end), then the reference's two under no_grad (KL, then the
    completions; the adapter disabled on a peft model, else the frozen copy), the loss,
    and the metrics from the per-token outputs. apo-zero-unpaired has no KL
    sequences."""
    completion_mask = batch[0]
    labels = ids.masked_fill(completion_mask == 0, IGNORE_INDEX)
    kl_ids = batch[1] if run.objective == "kto" else None

    def kl_logps(m: torch.nn.Module, outputs: tuple[str, ...]) -> torch.Tensor | None:
        if kl_ids is None:
            return None
        kl_labels = kl_ids.masked_fill(completion_mask == 0, IGNORE_INDEX)
        with torch.no_grad():
            return fused_head_forward(m, kl_ids, kl_labels, outputs).log_probs.sum(-1)

    policy_kl = kl_logps(model, KTO_OUTPUTS)
    outputs = fused_head_forward(model, ids, labels, KTO_OUTPUTS)
    completion_logps = outputs.log_probs.sum(-1)
    bool_labels = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)
    chosen_idx = torch.nonzero(bool_labels, as_tuple=False).view(-1)
    rejected_idx = torch.nonzero(~bool_labels, as_tuple=False).view(-1)
    chosen_logps = completion_logps.index_select(0, chosen_idx)
    rejected_logps = completion_logps.index_select(0, rejected_idx)
    ref_outputs = None
    if run.needs_reference:
        with torch.no_grad():
            if reference is None:
                with model.disable_adapter():  # type: ignore[operator]
                    ref_kl = kl_logps(model, KTO_OUTPUTS)
                    ref_outputs = fused_head_forward(model, ids, labels, KTO_OUTPUTS)
            else:
                ref_kl = kl_logps(reference, REFERENCE_OUTPUTS)
                ref_outputs = fused_head_forward(reference, ids, labels, REFERENCE_OUTPUTS)
        ref_logps = ref_outputs.log_probs.sum(-1)
    else:  # precomputed: read with the batch
        ref_logps = torch.zeros_like(completion_logps.detach())
        ref_kl = None if policy_kl is None else torch.zeros_like(policy_kl)
    if policy_kl is not None and ref_kl is not None:
        kl = (policy_kl - ref_kl).mean().detach().clamp(min=0)
    else:
        kl = torch.zeros(1, device=ids.device)
    groups = (chosen_idx, rejected_idx)
    losses = _kto_losses((chosen_logps, rejected_logps), ref_logps, groups, kl, run.objective)
    _tiles_metrics(outputs, outputs.label_mask, paired=False)
    loss = losses.nanmean()
    del outputs, ref_outputs
    return loss


def _llama_factory_logps(
    model: torch.nn.Module, ids: torch.Tensor, torchtune: bool = False, prompt_half: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaMA-Factory's concatenated_forward and get_batch_logps
    (hiyouga/LLaMA-Factory src/llamafactory/train/dpo/trainer.py@ff6d4d12eeb0,
    train/trainer_utils.py@ff6d4d12eeb0): the logits cast to fp32, one log-softmax over
    all of them, gather on the cloned labels (the prompt's set to 0), the product with
    the mask summed. Returns (log-probabilities, the fp32 logits, completion lengths).
    ``torchtune``: its get_batch_log_probs (pytorch/torchtune
    torchtune/rlhf/sequence_processing.py@bd2a0fc7c314), the same with the logits
    divided by the temperature first; its model returns fp32 logits (unembed).
    ``prompt_half``: the prompt is the first half (pairs), else the first token (KTO)."""
    logits = model(input_ids=ids, use_cache=False).logits.to(torch.float32)
    labels = ids[:, 1:].clone()
    mask = torch.ones_like(labels, dtype=torch.bool)
    if prompt_half:  # the prompt: IGNORE_INDEX labels (KTO's first token: none shifted)
        mask[:, : labels.shape[1] // 2] = False
    labels[~mask] = 0
    shifted = logits[:, :-1, :]
    if torchtune:  # logits_to_logprobs: log_softmax(logits / temperature), temperature 1
        shifted = shifted / 1.0
    per_token = torch.gather(shifted.log_softmax(-1), 2, labels.unsqueeze(2))
    return (per_token.squeeze(2) * mask).sum(-1), logits, mask.sum(-1)


def _llama_factory_kto_loss(
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    ids: torch.Tensor,
    kl_ids: torch.Tensor,
) -> torch.Tensor:
    """LLaMA-Factory's CustomKTOTrainer.get_batch_loss_metrics (hiyouga/LLaMA-Factory
    src/llamafactory/train/kto/trainer.py@ff6d4d12eeb0), every completion desirable:
    concatenated_forward runs the policy (fp32 logits, get_batch_logps), then its KL
    sequences under no_grad, then copies the chosen and rejected logits by boolean index
    (held to the end); compute_reference_log_probs runs the same under no_grad (the
    adapter disabled, or the frozen copy); then TRL's kto_loss and the metrics' sums."""
    import torch.nn.functional as F

    tags = torch.ones(ids.shape[0], dtype=torch.bool, device=ids.device)

    def concatenated_forward(m: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        logps, logits, _ = _llama_factory_logps(m, ids, prompt_half=False)
        with torch.no_grad():
            kl_logps, _, _ = _llama_factory_logps(m, kl_ids, prompt_half=False)
        return logps[tags], logps[~tags], logits[tags], logits[~tags], kl_logps

    chosen, rejected, chosen_logits, rejected_logits, kl_logps = concatenated_forward(model)
    with torch.no_grad():
        if reference is None:
            with model.disable_adapter():  # type: ignore[operator]
                ref_chosen, ref_rejected, _, _, ref_kl = concatenated_forward(model)
        else:
            ref_chosen, ref_rejected, _, _, ref_kl = concatenated_forward(reference)
    # trl's kto_loss (an empty group's losses an empty tensor)
    beta = PREFERENCE_BETA
    kl = (kl_logps - ref_kl).mean().clamp(min=0).detach()
    chosen_losses = rejected_losses = torch.Tensor([]).to(ids.device)
    if chosen.shape[0] != 0:
        chosen_losses = 1 - F.sigmoid(beta * ((chosen - ref_chosen) - kl))
    if rejected.shape[0] != 0:
        rejected_losses = 1 - F.sigmoid(beta * (kl - (rejected - ref_rejected)))
    losses = torch.cat((1.0 * chosen_losses, 1.0 * rejected_losses), 0).nanmean()
    chosen_logits.nansum().item()
    rejected_logits.nansum().item()
    del chosen_logits, rejected_logits
    return losses


def _llama_factory_preference_loss(
    model: torch.nn.Module,
    reference: torch.nn.Module | None,
    ids: torch.Tensor,
    run: RunConfig,
) -> torch.Tensor:
    """LLaMA-Factory's CustomDPOTrainer.get_batch_loss_metrics (trainer.py@ff6d4d12eeb0):
    the policy's pass (its fp32 logits held in the returned dict until the loss is
    formed), then the reference's under no_grad (the adapter disabled, or the frozen
    copy), then compute_preference_loss (sigmoid, ipo; orpo: the chosen log-probability
    as its SFT term; simpo with simpo_gamma 0.5). torchtune's DPO recipes run the same
    order with DPOLoss (sigmoid), the policy's logits deleted before the reference's pass."""
    import torch.nn.functional as F

    torchtune = run.framework == "torchtune"
    logps, logits, lengths = _llama_factory_logps(model, ids, torchtune)
    if torchtune:  # lora_dpo_single_device.py@bd2a0fc7c314 train: logits deleted first
        del logits
    beta = PREFERENCE_BETA
    if run.objective in ("ipo", "orpo", "simpo"):
        logps = logps / lengths
    chosen, rejected = logps.chunk(2)
    if run.objective == "orpo":
        log_odds = (chosen - rejected) - (
            torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected))
        )
        loss = -chosen - beta * F.logsigmoid(log_odds)
    elif run.objective == "simpo":
        loss = -F.logsigmoid(beta * (chosen - rejected) - 0.5)
    else:
        ref_chosen = ref_rejected = torch.zeros_like(chosen)  # precomputed
        if run.needs_reference:
            with torch.no_grad():
                if reference is None:
                    with model.disable_adapter():  # type: ignore[operator]
                        ref_logps, _, _ = _llama_factory_logps(model, ids.clone(), torchtune)
                else:
                    ref_logps, _, _ = _llama_factory_logps(reference, ids.clone(), torchtune)
            if run.objective == "ipo":
                ref_logps = ref_logps / lengths
            ref_chosen, ref_rejected = ref_logps.chunk(2)
        margin = (chosen - ref_chosen) - (rejected - ref_rejected)
        if run.objective == "ipo":
            loss = (margin - 1 / (2 * beta)) ** 2
        else:
            loss = -F.logsigmoid(beta * margin)
    return loss.mean()


KD_TEMPERATURE = 2.0


def _distillation_loss(
    model: torch.nn.Module, teacher: torch.nn.Module, ids: torch.Tensor
) -> torch.Tensor:
    """ftmem's reference distillation step (ftmem.distill): the teacher's logits under
    no_grad, then the student's cross-entropy plus the KL term in fp32, times τ²."""
    import torch.nn.functional as F

    with torch.no_grad():
        t_logits = teacher(input_ids=ids).logits
    out = model(input_ids=ids, labels=ids)
    tau = KD_TEMPERATURE
    kl = F.kl_div(
        F.log_softmax(out.logits.float() / tau, dim=-1),
        F.softmax(t_logits.float() / tau, dim=-1),
        reduction="batchmean",
    )
    loss = out.loss + kl * tau**2
    del out, t_logits
    return loss


def _reference_copy(model: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """DPO's reference for a model without adapters: a frozen copy in the training dtype
    (TRL's DPOTrainer loads it from the same checkpoint with the model's init kwargs:
    dpo_trainer.py@f2cd57710ae3 __init__, create_model_from_path)."""
    import copy

    reference = copy.deepcopy(model)
    if dtype is not None:
        reference = reference.to(dtype)
    for p in reference.parameters():
        p.requires_grad_(False)
    return reference


def _build_teacher(teacher: Teacher, device: str, seed: int) -> torch.nn.Module:
    if teacher.weights not in ("bf16", "fp16", "fp32"):
        raise RuntimeError(f"a {teacher.weights} teacher is not measurable here; use bf16")
    run = RunConfig(method="full", precision=teacher.weights)
    model = build_model(teacher.arch, run, device, seed + 1).model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _StepInBackward:
    """torch's optimizer-in-backward recipe: one optimizer per parameter, stepped and
    cleared by a post-accumulate-grad hook; ``step``/``zero_grad`` have nothing left
    to do."""

    def __init__(self, model: torch.nn.Module, run: RunConfig, arch: Architecture | None) -> None:
        import torch.nn as nn

        self.optimizers: list[torch.optim.Optimizer] = []
        groups = None
        if run.method == "galore":
            assert arch is not None, "GaLore finds its targets in the architecture"
            groups = galore_param_groups(model, arch, run)
        for p in model.parameters():
            if not p.requires_grad:
                continue
            if groups is not None:  # layer-wise GaLore: p keeps its group's settings
                group = next(g for g in groups if any(q is p for q in g["params"]))
                opt = galore_optimizer([{**group, "params": [p]}], run)
            else:
                holder = nn.Module()
                holder.p = p  # build_optimizer takes a module; this one holds just p
                opt = build_optimizer(holder, run, arch)
            self.optimizers.append(opt)

            def hook(param: torch.Tensor, opt: torch.optim.Optimizer = opt) -> None:
                opt.step()
                opt.zero_grad(set_to_none=True)

            p.register_post_accumulate_grad_hook(hook)

    @property
    def state(self) -> dict:
        return {k: v for opt in self.optimizers for k, v in opt.state.items()}

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


class _AdaLoraStep:
    """The optimizer, then AdaLoRA's rank allocator as a training loop calls it after
    ``optimizer.step()`` and before ``zero_grad`` (huggingface/peft@5d602fdb
    method_comparison/MetaMathQA/run.py l.285-290): its importance EMAs are state kept
    per adapter tensor like the optimizer's, so ``state`` lists them beside its own."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        self.optimizer = optimizer
        self.model: Any = model  # a peft PeftModel over an AdaLoraModel
        self.steps = 0

    @property
    def state(self) -> dict:
        allocator = self.model.base_model.rankallocator
        kept = {
            f"{name} {kind}": {kind: tensors[name]}
            for kind, tensors in (
                ("ipt", allocator.ipt),
                ("exp_avg_ipt", allocator.exp_avg_ipt),
                ("exp_avg_unc", allocator.exp_avg_unc),
            )
            for name in tensors
        }
        return {**self.optimizer.state, **kept}

    def step(self) -> None:
        self.optimizer.step()
        self.steps += 1  # from 1: past tinit 0, a budget below the initial one
        self.model.base_model.update_and_allocate(self.steps)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


class _AsaStep:
    """The optimizer, then AdaMSS's ASA as its callback calls it after ``optimizer.step()``
    (peft 0.21.2 tuners/adamss/asa_callback.py ``on_optimizer_step``): on a warm-up step
    that is no mask interval (measure.shared_bank builds it with init_warmup 1), the
    importance EMAs of every factor, kept as state beside the optimizer's."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        self.optimizer = optimizer
        self.model: Any = model  # a peft PeftModel over an AdamssModel
        self.steps = 0

    @property
    def state(self) -> dict:
        kept: dict = {}
        for name, module in self.model.named_modules():
            for kind in ("exp_avg_ipt_A", "exp_avg_ipt_B", "exp_avg_unc_A", "exp_avg_unc_B"):
                for i, t in enumerate(getattr(module, kind, {}).get("default", [])):
                    if t is not None:
                        kept[f"{name} {kind} {i}"] = {kind: t}
        return {**self.optimizer.state, **kept}

    def step(self) -> None:
        self.optimizer.step()
        self.steps += 1
        self.model.base_model.update_and_allocate(self.steps)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


Stepper = torch.optim.Optimizer | _StepInBackward | _AdaLoraStep | _AsaStep


def _stepper(model: torch.nn.Module, run: RunConfig, arch: Architecture | None) -> Stepper:
    """The run's optimizer: stepped in backward, or after it (AdaLoRA's allocator next)."""
    if run.optimizer_in_backward:
        return _StepInBackward(model, run, arch)
    optimizer = build_optimizer(model, run, arch)
    if run.method == "adamss" and run.adamss_asa:
        return _AsaStep(optimizer, model)
    return _AdaLoraStep(optimizer, model) if run.method == "adalora" else optimizer


def _inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """A wrapper subclass's storages are its inner tensors' (torchao's quantised states:
    codes, scales, code book; a DTensor: its local tensor, itself maybe one of those)."""
    if not hasattr(t, "__tensor_flatten__"):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [inner for name in names for inner in _inner_tensors(getattr(t, name))]


def optimizer_state_tensors(
    optimizer: Stepper,
) -> list[torch.Tensor]:
    """Every tensor the optimizer keeps per parameter, including those held by helper
    objects in its state (GaLore's projector matrices)."""
    out: list[torch.Tensor] = []
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                out += _inner_tensors(value)
            elif hasattr(value, "ortho_matrix"):  # galore_torch's GaLoreProjector
                m = value.ortho_matrix
                out += [t for t in (m if isinstance(m, list) else [m]) if t is not None]
    return out


def run_measurement(
    arch: Architecture,
    run: RunConfig,
    *,
    device: str = "cpu",
    steps: int = 2,
    seed: int = 0,
    fake: bool = False,
    teacher: Teacher | None = None,
    warm_up: WarmUp = "step",
) -> Measurement:
    if fake:
        if teacher is not None:
            raise RuntimeError("--fake does not run a distillation teacher")
        return _run_fake(arch, run, steps=steps, seed=seed)
    return run_steps(
        arch, run, device=device, steps=steps, seed=seed, teacher=teacher, warm_up=warm_up
    )


FAKE_ATTENTION_NOTE = (
    "fake: the attention kernel chosen for fake tensors can differ from a real run: with "
    "GQA/MQA it repeats k and v per head, or falls back to the math path that keeps the "
    "s² scores, so attention activations of GQA models are an upper bound here."
)
FAKE_NOTES = (
    "fake: FakeTensorMode, no memory allocated. It sees every tensor PyTorch creates "
    "(weights, gradients, states, saved activations, temporaries) with real shapes and "
    "dtypes. It cannot see kernel-internal workspaces, the CUDA caching allocator's "
    "rounding and fragmentation, the CUDA context, or bitsandbytes (no fake kernels: "
    "qlora and 8-bit optimizers are refused).",
    FAKE_ATTENTION_NOTE,
)


def _run_fake(arch: Architecture, run: RunConfig, *, steps: int, seed: int) -> Measurement:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ftmem.measure.build import materialize_fake

    if run.method == "qlora" or "8bit" in run.optimizer or run.optimizer in BNB_OPTIMIZERS:
        raise RuntimeError("--fake cannot run bitsandbytes (qlora, its optimizers)")
    built = build_model(arch, run, device="meta", seed=seed)
    with FakeTensorMode(allow_non_fake_inputs=True):
        materialize_fake(built.model)
        got = run_steps(arch, run, device="cpu", steps=steps, seed=seed, built=built, fake=True)
    return dataclasses.replace(
        got, tracker="dispatch (fake tensors)", notes=(*got.notes, *FAKE_NOTES)
    )


def _tokens(vocab: int, shape: tuple[int, int], gen, fake: bool, dev) -> torch.Tensor:
    """Random token ids (fake mode takes no real generator: values do not matter there)."""
    if fake:
        return torch.randint(0, vocab, shape)
    return torch.randint(0, vocab, shape, generator=gen).to(dev)


def run_steps(
    arch: Architecture | None,
    run: RunConfig,
    *,
    device: str = "cpu",
    steps: int = 2,
    seed: int = 0,
    built: Built | None = None,
    teacher: Teacher | None = None,
    vocab_size: int = 0,
    events: list[tuple[str, int]] | None = None,
    fake: bool = False,
    warm_up: WarmUp = "step",
) -> Measurement:
    """``steps - 1`` warm-up steps (the optimizer states appear), then the measured one
    (``warm_up``: see :func:`ftmem.measure.measure`).

    Without an ``arch`` the model comes ``built`` (a traced model transformers built
    from its own config) with its ``vocab_size``; ``events`` (the CPU only) receives the
    measured step's allocations and frees, the storages live before it first; ``fake``:
    the model's tensors are fake (FakeTensorMode is active)."""
    _check_measurable(run, steps, device)
    dev = _device(device)
    if built is None:
        assert arch is not None, "a model to build, or one built"
        built = build_model(arch, run, device=str(dev), seed=seed)
    model = built.model
    notes = list(built.notes)
    teacher_model = _build_teacher(teacher, str(dev), seed) if teacher is not None else None
    if run.needs_reference and not hasattr(model, "disable_adapter"):
        # LLaMA-Factory loads its reference in the compute dtype (ftmem.step.reference_weights)
        lf = run.framework == "llama-factory"
        teacher_model = _reference_copy(model, built.autocast_dtype if lf else None)
    optimizer = _stepper(model, run, arch)
    if steps == 1:
        notes.append("steps=1: the measured step creates the optimizer states (not steady state)")
    if arch is not None:
        vocab_size = arch.vocab_size
    ids, labels = _batch(
        vocab_size, arch is not None and arch.encoder_decoder, run, seed, fake, dev
    )
    images = image_inputs(arch, run, ids, seed, teacher is not None)
    params = unique_params(model)  # before the warm-up: gradients and counts read from these

    def forward() -> torch.Tensor:
        return _forward(
            model,
            ids,
            built.autocast_dtype,
            dev.type,
            run.grad_accum,
            run.loss,
            teacher_model,
            labels,
            run,
            images,
        )

    primed = warm_up == "states" and _states_suffice(run, dev, steps, fake)
    by_op, reserved_before = _before_step(forward, model, optimizer, run, dev, steps, primed, notes)
    # the weights as they are now: bitsandbytes casts a 4-bit linear's bias at the first
    # forward and frees the old one, whose address a saved activation can then take
    weight_ptrs = weight_storage_ptrs(model)
    inputs = [ids, *images.values()]
    meter = _step_meter(dev, model, teacher_model, optimizer, run, inputs, labels, events)
    walk_ops = steps == 1 and not run.grad_ckpt
    step = _measured_step(
        forward, model, optimizer, meter, run, params, weight_ptrs, walk_ops, notes
    )
    if walk_ops:
        by_op = step.by_op
    readings: tuple[int | None, int | None] = (None, None)
    if isinstance(meter, _CudaMeter):
        readings = meter.device_readings(reserved_before)
    got = _Measured(model, teacher_model, optimizer, params, step, by_op)
    return _measurement(got, meter.name, built, dev, notes, readings)


def _check_measurable(run: RunConfig, steps: int, device: str) -> None:
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if run.optimizer in ("lion", "adamw-fp32"):
        raise RuntimeError(f"optimizer {run.optimizer!r} is not measurable here")
    if run.optimizer.startswith("ao-") and torch.device(device).type == "cpu":
        # torch.compile refuses to run under the CPU tracker's dispatch mode
        raise RuntimeError(
            f"optimizer {run.optimizer!r} compiles its step, which the CPU tracker cannot "
            "follow: measure it on CUDA (tests/accuracy/test_torchao_optim.py measures it "
            "on the CPU with the profiler)"
        )


def _device(device: str) -> torch.device:
    """The device, with the current CUDA index made explicit (the meter's statistics
    are per device)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _batch(
    vocab_size: int,
    encoder_decoder: bool,
    run: RunConfig,
    seed: int,
    fake: bool,
    dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The input ids, and an encoder-decoder's labels (the decoder's length) or the rest
    of a KTO batch (kto_batch)."""
    gen = torch.Generator().manual_seed(seed)
    ids = _tokens(vocab_size, (run.sequences, run.seq_len), gen, fake, dev)
    if run.objective in UNPAIRED_OBJECTIVES:  # KTO's completion mask and KL sequences
        return ids, kto_batch(ids)
    if not encoder_decoder:
        return ids, None
    return ids, _tokens(vocab_size, (run.batch_size, run.decoder_len), gen, fake, dev)


def _warm_up(
    forward: Callable[[], torch.Tensor],
    optimizer: Stepper,
    run: RunConfig,
    steps: int,
    weight_ptrs: set[int],
    notes: list[str],
) -> dict[str, int]:
    """The steps before the measured one (the optimizer states get created); the bytes
    autograd saved per op, walked after the first forward."""
    by_op: dict[str, int] = {}
    for i in range(steps - 1):
        for micro in range(run.grad_accum):
            loss = forward()
            if i == 0 and micro == 0:
                by_op = _saved_by_op(loss, run, weight_ptrs, notes)
            loss.backward()
            del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return by_op


def _before_step(
    forward: Callable[[], torch.Tensor],
    model: torch.nn.Module,
    optimizer: Stepper,
    run: RunConfig,
    dev: torch.device,
    steps: int,
    primed: bool,
    notes: list[str],
) -> tuple[dict[str, int], int]:
    """The warm-up (``primed``: the states alone, and no collection: the CPU tracker counts
    only storages it is told of or ops make, so the warm-up's garbage cannot enter its
    reading), then the bytes saved per op and CUDA's reserved peak so far."""
    ptrs = weight_storage_ptrs(model)
    if primed:
        return _prime_states(forward, optimizer, run, ptrs, notes), 0
    by_op = _warm_up(forward, optimizer, run, steps, ptrs, notes)
    reserved = torch.cuda.max_memory_reserved(dev) if dev.type == "cuda" else 0
    _settle(dev)
    return by_op, reserved


def _states_suffice(run: RunConfig, dev: torch.device, steps: int, fake: bool) -> bool:
    """Whether the measured step can follow the states alone: the CPU tracker (CUDA's
    reserved figures keep the warm-up's cached blocks), one warm-up step, and no GRPO
    (its forward buffers the generation batch the measured step reads)."""
    return dev.type == "cpu" and steps == 2 and not fake and run.objective != "grpo"


def _prime_states(
    forward: Callable[[], torch.Tensor],
    optimizer: Stepper,
    run: RunConfig,
    weight_ptrs: set[int],
    notes: list[str],
) -> dict[str, int]:
    """The warm-up step's lasting effects without its backward (nor a collection of what
    it leaves: see run_steps): the first micro-batch's forward (what a first forward
    leaves on the model, such as bitsandbytes' bias cast; the bytes saved per op), then
    zero gradients on exactly the leaves its graph reaches (a backward would give those,
    and only those, a gradient: an expert no token was routed to, a vision tower a text
    batch skips, get none), and the optimizer's step over them: states take their
    parameters' shapes, not their gradients' values."""
    loss = forward()
    by_op = _saved_by_op(loss, run, weight_ptrs, notes)
    leaves = [n.variable for n in graph_nodes(loss.grad_fn) if hasattr(n, "variable")]
    del loss
    for leaf in leaves:
        leaf.grad = torch.zeros_like(leaf)
    steppers = optimizer.optimizers if isinstance(optimizer, _StepInBackward) else [optimizer]
    for stepper in steppers:  # (in backward: what each parameter's hook does)
        stepper.step()
        stepper.zero_grad(set_to_none=True)
    notes.append("warm-up: the optimizer's states made over zero gradients (warm_up='states')")
    return by_op


def _saved_by_op(
    loss: torch.Tensor, run: RunConfig, weight_ptrs: set[int], notes: list[str]
) -> dict[str, int]:
    """The bytes autograd saved per op for the first warm-up forward (not walked under
    checkpointing, where unpacking would recompute)."""
    if run.grad_ckpt:
        notes.append("grad_ckpt: activations_by_op not walked (unpacking would recompute)")
        return {}
    return bytes_by_op(walk_saved(loss.grad_fn, weight_ptrs))


def _step_meter(
    dev: torch.device,
    model: torch.nn.Module,
    teacher_model: torch.nn.Module | None,
    optimizer: Stepper,
    run: RunConfig,
    ids: list[torch.Tensor],
    labels: torch.Tensor | None,
    events: list[tuple[str, int]] | None,
) -> _CpuMeter | _CudaMeter:
    """The measured step's meter, told of its inputs (the token ids, an image-text
    model's pixel values) and, for GRPO, of the generation batch buffered before the
    step: live until the next generation replaces it, so no reference to it stays here."""
    inputs = list(ids) if labels is None else [*ids, labels]
    if run.objective == "grpo":
        from ftmem.measure.grpo import buffered_tensors

        inputs += buffered_tensors(model)
    return _meter(dev, model, teacher_model, optimizer, inputs, events)


def _settle(dev: torch.device) -> None:
    """Free what the warm-up left for the collector and, on CUDA, the cached blocks."""
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()


def _meter(
    dev: torch.device,
    model: torch.nn.Module,
    teacher_model: torch.nn.Module | None,
    optimizer: Stepper,
    inputs: list[torch.Tensor],
    events: list[tuple[str, int]] | None = None,
) -> _CpuMeter | _CudaMeter:
    """The CUDA allocator's statistics, or on the CPU a tracker told which tensors
    exist before the step. It holds no reference to them once made: an optimizer that
    replaces a state tensor (GaLore renewing its projectors) frees the old one, as in
    training."""
    if dev.type == "cuda":
        return _CudaMeter(dev)
    teacher_state = model_state_tensors(teacher_model) if teacher_model is not None else []
    state_tensors = optimizer_state_tensors(optimizer)
    pre_existing = [*model_state_tensors(model), *teacher_state, *state_tensors, *inputs]
    return _CpuMeter(pre_existing, events)


@dataclasses.dataclass(frozen=True)
class _Readings:
    """What the meter read during the measured step (bytes)."""

    baseline: int  # live when the step began
    peaks: dict[str, int]  # per phase
    forward_retained: int  # the last micro-batch's forward: what it left alive
    activations: int  # saved for backward by the last micro-batch
    gradients: int
    by_op: dict[str, int]  # saved bytes per op (walked only when asked)


def _measured_step(
    forward: Callable[[], torch.Tensor],
    model: torch.nn.Module,
    optimizer: Stepper,
    meter: _CpuMeter | _CudaMeter,
    run: RunConfig,
    params: list[tuple[str, torch.nn.Parameter]],
    weight_ptrs: set[int],
    walk_ops: bool,
    notes: list[str],
) -> _Readings:
    """One training step under the meter: forward and backward of each micro-batch
    (gradients of earlier ones stay live), then the optimizer step."""
    by_op: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        # no cyclic GC inside the step: frees happen where refcounts drop, run after run
        if gc.isenabled():
            gc.disable()
            stack.callback(gc.enable)
        stack.enter_context(meter.active())
        baseline = meter.current()
        peaks = {"forward": 0, "backward": 0}
        for micro in range(run.grad_accum):
            registry = (
                HostOffload(weight_ptrs) if run.activation_offload else SavedRegistry(weight_ptrs)
            )
            before_forward = meter.current()
            meter.start_phase()
            with torch.autograd.graph.saved_tensors_hooks(registry.pack, registry.unpack):
                loss = forward()
            peaks["forward"] = max(peaks["forward"], meter.phase_peak())
            if micro == run.grad_accum - 1:
                forward_retained = meter.current() - before_forward
                activations = _saved_bytes(loss, registry, weight_ptrs)
                if isinstance(registry, HostOffload):
                    notes.append(f"activation offload: {registry.host_bytes:,} B sent to host")
                if walk_ops:
                    by_op = bytes_by_op(walk_saved(loss.grad_fn, weight_ptrs))
            meter.start_phase()
            loss.backward()
            peaks["backward"] = max(peaks["backward"], meter.phase_peak())
            del loss
        gradients = storage_bytes([p.grad for _, p in params if p.grad is not None])
        meter.start_phase()
        _optimizer_step(model, optimizer, run)
        peaks["optimizer"] = meter.phase_peak()
    return _Readings(baseline, peaks, forward_retained, activations, gradients, by_op)


def _saved_bytes(loss: torch.Tensor, registry: SavedRegistry, weight_ptrs: set[int]) -> int:
    """Bytes saved for backward: what the hooks packed, plus tensors custom autograd
    Functions keep on ctx (bitsandbytes int8), which the hooks never see; reading ctx
    attributes unpacks nothing."""
    stashed = {
        s.ptr: s.nbytes for s in walk_saved(loss.grad_fn, weight_ptrs, unpack=False) if s.nbytes
    }
    return registry.nbytes + sum(n for ptr, n in stashed.items() if ptr not in registry.live)


def _optimizer_step(model: torch.nn.Module, optimizer: Stepper, run: RunConfig) -> None:
    """The optimizer's step and zero_grad; ReLoRA then merges the adapters into the base."""
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if run.method == "relora":
        # ReLoRA's periodic merge of the adapters into the base, between steps
        from peft import PeftModel

        assert isinstance(model, PeftModel)  # ReLoRA is measured as peft's LoRA
        with torch.no_grad():
            model.merge_adapter()


@dataclasses.dataclass(frozen=True)
class _Measured:
    """The step's objects after it ran, and what the meter read."""

    model: torch.nn.Module
    teacher: torch.nn.Module | None
    optimizer: Stepper
    params: list[tuple[str, torch.nn.Parameter]]
    step: _Readings
    by_op: dict[str, int]


def _measurement(
    got: _Measured,
    tracker: str,
    built: Built,
    dev: torch.device,
    notes: list[str],
    device_readings: tuple[int | None, int | None] = (None, None),
) -> Measurement:
    """The readings with the sizes of what the step left: weights, buffers, states;
    ``device_readings``: CUDA's (peak reserved, device in use)."""
    r, params = got.step, got.params
    peak_phase = max(PHASES, key=lambda ph: r.peaks[ph])
    models = [got.model] if got.teacher is None else [got.model, got.teacher]
    weights = storage_bytes([t for m in models for t in model_state_tensors(m, buffers=False)])
    all_weights = storage_bytes([t for m in models for t in model_state_tensors(m)])
    return Measurement(
        weights_bytes=weights,
        buffers_bytes=all_weights - weights,
        n_params=sum(logical_numel(p) for _, p in params),
        n_trainable_params=sum(logical_numel(p) for _, p in params if p.requires_grad),
        gradients_bytes=r.gradients,
        optimizer_states_bytes=storage_bytes(optimizer_state_tensors(got.optimizer)),
        activations_bytes=r.activations,
        forward_retained_bytes=r.forward_retained,
        baseline_bytes=r.baseline,
        peak_allocated_bytes=r.peaks[peak_phase],
        peak_phase=peak_phase,
        phase_peaks=r.peaks,
        activations_by_op=got.by_op,
        peak_reserved_bytes=device_readings[0],
        device_bytes=device_readings[1],
        device=str(dev),
        tracker=tracker,
        attn_implementation=built.attn_implementation,
        notes=tuple(notes),
        **_versions(),
    )
