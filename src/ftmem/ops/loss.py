"""The LM head and the loss: transformers' cross-entropy (fp32 log-softmax), torchtune's
chunked ones (CEWithChunkedOutputLoss, LinearCrossEntropyLoss), Liger's fused linear
cross-entropy, TRL's log-probability tiles (SFTTrainer since TRL 1.15.0)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from ftmem.arch import HEAD, Architecture, Param, layout
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES, is_quantized
from ftmem.methods import MethodPlan
from ftmem.ops.context import LayerContext
from ftmem.ops.loss_requests import shifted_copy_bytes
from ftmem.ops.registry import register
from ftmem.ops.saved import Saved
from ftmem.profiles import compiled_chunked_loss, head_chunk_tokens, profile_of
from ftmem.run import UNPAIRED_OBJECTIVES, RunConfig
from ftmem.versions import head_upcasts, masked_shift, shifted_logits_loss

CHUNKS = 8  # torchtune's num_output_chunks
# rows per chunk of TRL's entropy_from_logits (trl/trainer/utils.py@f2cd57710ae3)
ENTROPY_CHUNK_ROWS = 128
# TRL's log-probability tiles (SFTTrainer since TRL 1.15.0, --loss logprob-tiles): rows per
# tile (TOKEN_CHUNK_SIZE, trl 1.16.0 trl/kernels/chunked_logprob.py:31) and the tile's
# vocabulary width (_CHUNKED_LOGPROB_CHUNK_SIZE, trl 1.16.0 trl/trainer/utils.py:1506)
TRL_TOKEN_TILE = 4096
TRL_VOCAB_TILE = 32768


@register("loss")
class Loss:
    """The head's matmul and the loss over its logits (``run.loss``)."""

    @staticmethod
    def parameters(arch: Architecture) -> tuple[Param, ...]:
        """The LM head's weight, unless it is the tied embedding, and its bias (Phi)."""
        return tuple(p for p in layout(arch).outer if p.is_head)

    @staticmethod
    def rows(run: RunConfig) -> int:
        """Rows the loss sees: transformers' loss takes every position (the last label is
        padded); a fused loss (Liger) takes the shifted b·(s − 1), and so does torchtune's
        LinearCrossEntropyLoss, which drops the rows whose label is ignored."""
        rows = run.batch_size * run.positions
        if run.loss == "fused" and profile_of(run).fused_loss_chunk_bytes is not None:
            # Unsloth's fused loss shifts the labels (the last one ignored) and takes every
            # row of the hidden states (unslothai/unsloth-zoo
            # unsloth_zoo/fused_losses/cross_entropy_loss.py@ce232d6cef9c
            # UnslothFusedLoss.forward: grad_inputs = torch.empty_like(hidden_states))
            return rows
        shifted = ("upcast-shifted", "shifted", "fused", "linear-chunked", "logprob-tiles")
        return rows - run.batch_size if Loss.kind(run) in shifted else rows

    @staticmethod
    def kind(run: RunConfig) -> str:
        """The loss's code path: ``run.loss``, but transformers 4.46-4.48's standard loss
        (versions.shifted_logits_loss), which upcasts and shifts the logits as the
        upcast-shifted loss does and has its backward; its forward also keeps the 16-bit
        logits (Loss.keeps_logits). A loop's own upcast-shifted loss stays apart."""
        if shifted_logits_loss(run) and not profile_of(run).loop_shifted_loss:
            return "upcast-shifted"
        return run.loss

    @staticmethod
    def keeps_logits(run: RunConfig) -> bool:
        """The upcast-shifted path with the 16-bit logits named through the loss: the
        standard loss of transformers 4.46-4.48, where the model's forward passes its
        logits to ForCausalLMLoss, which upcasts a copy (versions.py)."""
        return run.loss == "standard" and Loss.kind(run) == "upcast-shifted"

    @staticmethod
    def saved(
        arch: Architecture,
        plan: MethodPlan,
        T: int,
        train: bool,
        log_softmax_bytes: int,
        compiled_chunks: bool = False,
        softcaps: bool = True,
        masked_rows: int | None = None,
        cross_entropy: bool = True,
        loss_rows: int | None = None,
        nll_cast: bool = False,
        weight_casts: int = 1,
        labels: int | None = None,
    ) -> list[Saved]:
        """The LM head and the loss over T positions: the head's input (when it trains), its
        16-bit weight copy under autocast (``weight_casts`` of them where the head is
        called piece by piece on a frozen weight: head_weight_casts), and the log-softmax (fp32 in transformers'
        causal-LM loss; T5 takes it in the logits' dtype) with the int64 labels; with
        ``compiled_chunks`` (torchtune's compiled chunked loss) what each chunk's compiled
        cross-entropy keeps instead (_compiled_chunks); ``softcaps``: False where the
        framework's path skips the final logit soft-capping; ``masked_rows``: torchtune's
        LinearCrossEntropyLoss, which keeps only the labelled rows (index_select, whose
        backward keeps its int64 indices) and runs the head on them; ``cross_entropy``: False
        where another loss replaces the cross-entropy (the head's side is kept);
        ``loss_rows``: the rows the cross-entropy takes, where it is not every position
        (the shifted loss: T − b); ``nll_cast``: nll_loss keeps an fp32 cast of the
        16-bit log-softmax (the shifted loss under CUDA's autocast:
        Loss.shifted_nll_cast); ``labels``: the saved labels' bytes where they are not the
        rows' int64 copy (Loss.shifted_labels)."""
        V, h = arch.vocab_size, arch.hidden_size
        e = BYTES_PER_ELEMENT[plan.dtypes.compute]
        out: list[Saved] = []
        if masked_rows is not None:
            out.append(Saved("loss: labelled-row indices", masked_rows * INDEX_BYTES))
            T = masked_rows
        if train or plan.head_trainable:
            out.append(Saved("LM head input", T * h * e))
        if plan.dtypes.casts_head:
            # the head's input needs a gradient, so its 16-bit weight copy is kept, frozen or not
            label = "LM head 16-bit weight copy"
            if weight_casts > 1:
                label = f"LM head 16-bit weight copies (one per head piece: {weight_casts})"
            out.append(Saved(label, weight_casts * V * h * 2))
        if arch.final_logit_softcapping and softcaps:
            out.append(Saved("logit soft-capping tanh", T * V * e))
        if compiled_chunks:
            return [*out, Loss._compiled_chunks(V, e, T)]
        if not cross_entropy:  # a preference objective keeps its own (PreferenceLoss)
            return out
        # log-softmax, int64 labels and the normaliser of the mean
        rows = T if loss_rows is None else loss_rows
        kind = "fp32" if log_softmax_bytes == FP32 else "16-bit"
        cast = " + its fp32 cast" if nll_cast else ""
        out.append(
            Saved(
                f"loss: {kind} log-softmax{cast} + labels",
                Loss.cross_entropy_saved(rows, V, log_softmax_bytes, nll_cast, labels),
            )
        )
        return out

    @staticmethod
    def _compiled_chunks(V: int, e: int, T: int) -> Saved:
        """torchtune's CEWithChunkedOutputLoss with compile: compute_cross_entropy
        (logits.float() + F.cross_entropy, reduction "sum") is compiled alone and called
        once per chunk (pytorch/torchtune torchtune/training/_compile.py@1814feb17a90
        compile_loss; torchtune/modules/loss/ce_chunked_output_loss.py@1814feb17a90).
        Inductor decomposes log_softmax into amax, exp, sum and log (pytorch/pytorch
        torch/_decomp/decompositions.py@dec01e4c6f71 _log_softmax); the partitioner saves
        the graph's input as it is and keeps the two reductions, 4x smaller than their
        input, rather than recompute them (torch/_functorch/partitioners.py@00c07b93c9e8
        should_ban_recomputation): per chunk its 16-bit logits, a fp32 max and log-sum-exp
        per row and the int64 labels; over the chunks, T rows of each."""
        size = T * V * e + 2 * T * FP32 + T * INDEX_BYTES
        return Saved("loss: 16-bit logit chunks + fp32 max, log-sum-exp + labels", size)

    @staticmethod
    def fused_saved(
        arch: Architecture, run: RunConfig, plan: MethodPlan, ctx: LayerContext, train: bool
    ) -> list[Saved]:
        """Liger's fused linear cross-entropy computes the gradients of its input and of the
        LM head weight in forward and keeps them for backward; no logits are kept. The input
        gradient has the input's dtype (``zeros_like``): the final norm's output, fp32 under
        autocast with fp32 weights (measured: the bf16 count was one T·h·2 short)."""
        rows, h = Loss.rows(run), arch.hidden_size
        out = [Saved("fused loss: input gradient", rows * h * ctx.residual)]
        if train or plan.head_trainable:
            w = BYTES_PER_ELEMENT[plan.dtypes.head]
            out.append(Saved("fused loss: LM head weight gradient", arch.vocab_size * h * w))
        return out

    @staticmethod
    def forward_transient(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
        """At the loss in forward: the logits and their fp32 copy; with Liger's fused loss,
        one chunk of logits, the shifted hidden states' copy and the per-row losses; with
        torchtune's compiled chunked loss nothing beyond what it keeps: the logit chunks
        are its saved tensors and the upcast is fused into the kernel that reads a chunk
        (_compiled_chunks)."""
        V, h = arch.vocab_size, arch.hidden_size
        if run.loss == "logprob-tiles":
            raise ValueError("TRL's log-probability tiles: Loss.logprob_tiles_forward")
        if run.loss == "fused" and profile_of(run).fused_loss_chunk_bytes is not None:
            return Loss.target_chunk_transient(arch, run, e)
        if run.loss == "fused":
            rows = Loss.rows(run)
            chunk = Loss.liger_chunk_rows(rows, h, V)
            return min(chunk, rows) * V * e + rows * h * e + rows * FP32
        if compiled_chunked_loss(run):
            return 0
        if run.loss == "shifted":
            # the logits, the shifted slice's contiguous copy (none for one sequence:
            # Loss.shifted_copy) and, under autocast, cross_entropy's fp32 cast of it
            # (freed once the log-softmax exists)
            rows = Loss.rows(run)
            cast = rows * V * FP32 if Loss.shifted_log_softmax_bytes(run, e) != e else 0
            return T * V * e + Loss.shifted_copy(run, V, e, masked_shift(arch, run)) + cast
        if Loss.kind(run) == "upcast-shifted":
            return Loss.upcast_shifted_forward(run, V, e, T, masked_shift(arch, run))
        upcast = T * V * FP32 if e != FP32 else 0
        if head_upcasts(arch, run):
            # the head's cast (T·V·(e + 4)) comes before the saved item exists, and is
            # smaller beyond it than the fp32 logits alone (the item is T·V·4 and more)
            return T * V * FP32
        if run.loss == "linear-chunked":
            # torchtune's LinearCrossEntropyLoss: the head runs in the loss, one chunk at a
            # time, so one chunk's logits and their fp32 copy live at once (both freed
            # when its log-softmax, a saved fp32 tensor, is made)
            return -(-T // CHUNKS) * V * e + -(-T // CHUNKS) * V * FP32 * (e != FP32)
        if run.loss == "chunked":  # torchtune: one chunk upcast at a time
            upcast //= CHUNKS
        return T * V * e + upcast

    @staticmethod
    def shifted_copy(run: RunConfig, V: int, e: int, masked: bool = False) -> int:
        """Qwen-1's ``lm_logits[..., :-1, :].contiguous()`` (R·V·e, R = T − b): a copy for
        b > 1 or a boolean-indexed selection (``masked``: versions.masked_shift), none for
        one sequence's plain slice (ops.loss_requests.shifted_copy_bytes, which the
        allocator's programs use too). LitGPT's chunked loss reads the same slice
        (held_logits_head: a copy when b > 1)."""
        rows = Loss.rows(run)
        return shifted_copy_bytes(rows + run.batch_size, rows, V, e, masked)

    @staticmethod
    def upcast_shifted_forward(run: RunConfig, V: int, e: int, T: int, masked: bool = False) -> int:
        """transformers < 4.46's causal-LM forward with labels (4.40.2
        models/llama/modeling_llama.py:1230-1244; the same lines in 4.36.2 :1199-1213):
        ``logits = logits.float()`` (a copy when e ≠ 4; the 16-bit logits die as the name
        is rebound: no node saves them), ``logits[..., :-1, :].contiguous()`` (R·V·4,
        R = T − b; none for one sequence, as in 4.37.2 :1202-1215 and 4.45.2
        :1219-1229: the upcast comes first, and the slice of the fp32 logits is then
        contiguous, Loss.shifted_copy), CrossEntropyLoss (its fp32 log-softmax and the
        shifted labels are the saved item). Beyond that item, the larger of the 16-bit
        logits beside their fp32 copy (made before the item: written beyond it) and the
        fp32 logits beside the shifted copy and the item; the second, but for a cast
        larger than the item (never at e ≤ 4: the item is R·V·4, R ≥ T/2). transformers
        4.46-4.48's standard loss (Loss.keeps_logits): the 16-bit logits, their fp32 copy
        and the shifted copy at once (measured on the CPU: tests/test_shifted_logits_loss.py;
        the shifted copy again none for one sequence; ``masked``: Loss.shifted_copy's)."""
        rows = Loss.rows(run)
        if Loss.keeps_logits(run):
            copy = Loss.shifted_copy(run, V, FP32, masked)
            return (T * V * e if e != FP32 else 0) + T * V * FP32 + copy
        cast = T * V * e + T * V * FP32 if e != FP32 else 0
        labels = Loss.shifted_labels(run)
        if profile_of(run).loop_shifted_loss:
            return Loss.loop_shifted_forward(V, rows, cast, T, labels)
        saved = Loss.cross_entropy_saved(rows, V, FP32, False, labels)
        return max(cast - saved, T * V * FP32 + Loss.shifted_copy(run, V, FP32, masked))

    @staticmethod
    def loop_shifted_forward(V: int, rows: int, cast: int, T: int, labels: int) -> int:
        """The loop's own upcast-shifted loss (Profile.loop_shifted_loss) in forward,
        beyond its saved item (the fp32 log-softmax, the labels, total_weight) and the
        shifted copy the loop holds (Loss.loop_shifted_copy: the previous pass's until the
        model returns, this pass's from the slice on). Its moments, before the item
        exists: the cast (the 16-bit logits beside their fp32 copy; the fp32 logits
        alone when e = 4), then the fp32 logits beside this pass's copy until the name
        is rebound to it (for one sequence, whose held copy is the fp32 logits
        themselves, the same T·V·4 beyond the held bytes comes earlier: the new fp32
        logits beside the last pass's, until the model returns); with the item but its
        total_weight (made by nll_loss after):
        log_softmax's copy of its transposed input (R·V·4). CUDA's kernel copies a
        non-contiguous input first (pytorch/pytorch
        aten/src/ATen/native/cuda/SoftMax.cu host_softmax: ``auto input =
        input_.contiguous();``), and its output is contiguous (the structured meta's
        LEGACY_CONTIGUOUS_MEMORY_FORMAT), so nll_loss_nd's ``contiguous()`` (LossNLL.cpp)
        copies nothing. ``labels``: the saved labels' bytes (Loss.shifted_labels)."""
        saved = Loss.cross_entropy_saved(rows, V, FP32, False, labels)
        return max(cast - saved, T * V * FP32 - saved, rows * V * FP32 - FP32, 0)

    @staticmethod
    def loop_shifted_copy(run: RunConfig, V: int, T: int) -> int:
        """The shifted fp32 logits a loop that computes the upcast-shifted loss itself
        keeps (Profile.loop_shifted_loss; R·V·4): torchtune 0.1's recipe rebinds
        ``logits`` to ``logits[..., :-1, :].contiguous()`` and then to its transposed
        view, and the name holds it through the backward, the optimizer step and the
        next forward, until that forward returns (pytorch/torchtune
        recipes/lora_finetune_single_device.py@ff594c231 train l.447-451). For one
        sequence the slice is contiguous, so ``contiguous()`` makes no copy
        (Loss.shifted_copy) and the name holds a view of the whole fp32 logits: their
        storage, T·V·4, is what the loop keeps (measured on the CPU, storage identity:
        tests/test_loss_requests.py). 0 elsewhere."""
        if not (run.loss == "upcast-shifted" and profile_of(run).loop_shifted_loss):
            return 0
        return Loss.shifted_copy(run, V, FP32) or T * V * FP32

    @staticmethod
    def upcast_shifted_backward(run: RunConfig, V: int, e: int, T: int) -> int:
        """Its backward beyond the saved item (the fp32 log-softmax R·V·4, the labels R·8,
        the scalar total_weight), in autograd's order (measured on the CPU,
        tests/test_loss_requests.py): nll_loss's and log_softmax's fp32 gradients
        (2·R·V·4, the log-softmax still saved); the saved item freed, CloneBackward0 and
        ViewBackward0 pass the gradient through and SliceBackward0 makes fp32 zeros of
        the whole logits (T·V·4) the shifted gradient is copied into; that freed,
        ToCopyBackward0's cast back to the logits' dtype (T·V·e, where e ≠ 4) beside the
        zeros. The two later moments are written beyond the item they outlive. One
        sequence's (no copy in forward, so no CloneBackward0) makes the same tensors."""
        rows = Loss.rows(run)
        saved = Loss.cross_entropy_saved(rows, V, FP32, False, Loss.shifted_labels(run))
        slice_zeros = rows * V * FP32 + T * V * FP32 - saved
        cast_back = T * V * FP32 + T * V * e - saved if e != FP32 else 0
        return max(2 * rows * V * FP32, slice_zeros, cast_back)

    @staticmethod
    def output_logits(run: RunConfig, V: int, e: int, T: int) -> int:
        """The logits the model's output carries back to the loop (a loop that holds the
        output holds them): transformers < 4.46's fp32 ones (``--loss upcast-shifted``),
        the logits in their dtype with the standard loss (transformers 5 returns the
        head's output; the loss upcasts its own copy) and Qwen-1's shifted one; 0 where
        the path returns no whole logits (not derived for the others)."""
        if run.loss == "upcast-shifted":
            return T * V * FP32
        if run.loss in ("standard", "shifted"):
            return T * V * e
        return 0

    @staticmethod
    def cross_entropy_saved(
        rows: int, V: int, log_softmax_bytes: int, nll_cast: bool, labels: int | None = None
    ) -> int:
        """What cross_entropy keeps: the log-softmax, the int64 labels (``labels`` bytes
        where they are no new copy of the rows': Loss.shifted_labels) and nll_loss's
        total_weight scalar (in its input's dtype); with ``nll_cast``, nll_loss's input is
        an fp32 cast of the log-softmax, kept as well (NllLossBackward0 saves self)."""
        nll_input = FP32 if nll_cast else log_softmax_bytes
        cast = rows * V * FP32 if nll_cast else 0
        label_bytes = rows * INDEX_BYTES if labels is None else labels
        return rows * V * log_softmax_bytes + cast + label_bytes + nll_input

    @staticmethod
    def shifted_labels(run: RunConfig) -> int:
        """The bytes of the shifted losses' ``labels[..., 1:].contiguous()`` (Qwen-1's
        loss, transformers < 4.46's, torchtune 0.1's loop: R int64, R = T − b): a copy
        for b > 1; for one sequence the slice is contiguous (as the logits' slice,
        Loss.shifted_copy), so ``contiguous()`` returns a view of the batch's labels and
        the cross-entropy saves that: no new storage (measured on the CPU, storage
        identity: tests/test_loss_requests.py)."""
        return Loss.rows(run) * INDEX_BYTES if run.batch_size > 1 else 0

    @staticmethod
    def shifted_log_softmax_bytes(run: RunConfig, e: int) -> int:
        """The shifted loss's log-softmax element size: the logits' own; fp32 under the
        CPU's autocast, whose fp32 list has cross_entropy_loss (the input cast first).
        CUDA's has not (Loss.shifted_nll_cast): there the log-softmax stays 16-bit."""
        return FP32 if run.uses_autocast and e != FP32 and run.device == "cpu" else e

    @staticmethod
    def shifted_nll_cast(run: RunConfig, e: int) -> bool:
        """The shifted loss under CUDA's autocast: cross_entropy_loss is not on CUDA's
        autocast lists (pytorch/pytorch aten/src/ATen/autocast_mode.cpp: KERNEL_CUDA2
        (log_softmax, int, fp32_set_opt_dtype), KERNEL_CUDA(nll_loss, fp32); its
        composite aten/src/ATen/native/LossNLL.cpp cross_entropy_loss_symint calls
        ``at::log_softmax(self, class_dim, self.scalar_type())``, and fp32_set_opt_dtype
        leaves an explicit dtype alone (aten/src/ATen/autocast_mode.h CastPolicy), so the
        log-softmax stays 16-bit; nll_loss_nd then calls at::nll_loss, whose fp32 policy
        casts it to fp32, the copy NllLossBackward0 keeps. The torch 2.13 build's
        dispatcher agrees: ``torch._C._dispatch_has_kernel_for_dispatch_key`` finds an
        AutocastCUDA kernel for log_softmax.int and nll_loss, none for
        cross_entropy_loss (AutocastCPU has one)."""
        return run.uses_autocast and e != FP32 and run.device == "cuda"

    @staticmethod
    def fp32_output_moment(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
        """Beyond what the loss saved, once the forward has returned: the 16-bit logits
        beside the fp32 copy accelerate's convert_outputs_to_fp32 makes of the model's
        output (profiles.Profile.converts_outputs_to_fp32), T·V·(e + 4); 0 where no copy
        is made. Modelled for the shifted loss under CUDA's autocast only: transformers'
        own loss (ForCausalLMLoss) upcasts the logits itself, and that moment (the logits,
        their fp32 upcast beside the fp32 log-softmax it saves) is as large as this one
        (an equal request that reuses the upcast's freed block in the replay)."""
        if not (
            run.loss == "shifted"
            and Loss.shifted_nll_cast(run, e)
            and profile_of(run).converts_outputs_to_fp32
            and not profile_of(run).output_held_through_step
        ):
            return 0
        return T * arch.vocab_size * (e + FP32)

    @staticmethod
    def shifted_backward(run: RunConfig, V: int, e: int, T: int) -> int:
        """Beyond the saved tensors in the shifted loss's backward: nll_loss's and
        log_softmax's gradients (rows = T − b, in the log-softmax's dtype) beside the
        saved log-softmax; LogSoftmaxBackward0 then releases it (both nodes have run), so
        the later moments are written beyond the saved item they outlive: under the CPU's
        autocast the cast back to the logits' dtype beside the second gradient; the
        slice's backward, a zero tensor of the whole logits (T·V·e) the shifted gradient
        is copied into. The first moment is the largest (2R ≥ T once s ≥ 2); counting
        the slice's zeros beside the saved log-softmax overcounted it by b·V·e (measured
        on the CPU: tests/test_loss_requests.py). Under CUDA's autocast
        (shifted_nll_cast): nll_loss's fp32 gradient beside every saved tensor; its saved
        cast, labels and scalar freed, the cast back to e beside it; then the 16-bit
        log-softmax gradient; the slice's zeros beside that."""
        rows, labels = Loss.rows(run), Loss.shifted_labels(run)
        if Loss.shifted_nll_cast(run, e):
            saved = Loss.cross_entropy_saved(rows, V, e, True, labels)
            cast = rows * V * (FP32 + e) + rows * V * e - saved
            zeros = rows * V * e + T * V * e - saved
            return max(rows * V * FP32, cast, zeros)
        ls = Loss.shifted_log_softmax_bytes(run, e)
        saved = Loss.cross_entropy_saved(rows, V, ls, False, labels)
        cast_back = rows * V * (ls + e) - saved if ls != e else 0
        return max(2 * rows * V * ls, cast_back, rows * V * e + T * V * e - saved)

    @staticmethod
    def target_chunks(rows: int, vocab: int, target_bytes: int) -> int:
        """Chunks of a fused loss sized so that each chunk's fp32 logits take at most
        ``target_bytes``: the exact count rounded up to a multiple of 4, or 1 when one
        chunk fits (unslothai/unsloth-zoo unsloth_zoo/fused_losses/cross_entropy_loss.py
        @ce232d6cef9c get_chunk_size, _get_chunk_multiplier)."""
        exact = rows * vocab * FP32 / target_bytes
        if exact <= 1.0 + 1e-9:
            return 1
        return math.ceil(exact / 4 - 1e-9) * 4

    @staticmethod
    def target_chunk_transient(arch: Architecture, run: RunConfig, e: int) -> int:
        """Unsloth's fused loss in forward, beyond what it keeps (the input gradient): one
        chunk of c = ceil(rows / n) rows (torch.chunk) through the compiled
        grad_and_value of linear + cross-entropy, its 16-bit logits and the 16-bit
        gradient of them for the head's backward matmul (c·V·e each; the fp32 upcast and
        the softmax fused into the kernels between, not modelled apart), the chunk's
        input gradient (c·h·e) and the shifted labels (int64 per row)
        (unslothai/unsloth-zoo unsloth_zoo/fused_losses/cross_entropy_loss.py@ce232d6cef9c
        UnslothFusedLoss.forward accumulate_chunk, compute_fused_ce_loss)."""
        V, h = arch.vocab_size, arch.hidden_size
        rows = Loss.rows(run)
        target = profile_of(run).fused_loss_chunk_bytes or rows * V * FP32
        n = Loss.target_chunks(rows, V, target)
        chunk = -(-rows // n)
        return 2 * chunk * V * e + chunk * h * e + rows * INDEX_BYTES

    @staticmethod
    def fused_backward(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
        """A fused loss's backward beyond its kept gradients: Unsloth's scales the kept
        input gradient out of place (``grad_inputs * scale_factor``: T·h in the hidden
        states' dtype; UnslothFusedLoss.backward, unsloth-zoo@ce232d6cef9c); Liger's
        returns what it kept (0)."""
        if profile_of(run).fused_loss_chunk_bytes is None:
            return 0
        return Loss.rows(run) * arch.hidden_size * plan.dtypes.residual_bytes

    @staticmethod
    def logprob_tiles_saved(
        arch: Architecture, run: RunConfig, residual: int, rows: int | None = None
    ) -> list[Saved]:
        """TRL's log-probability tiles (SFTTrainer since TRL 1.15.0; --loss logprob-tiles):
        SFTTrainer always patches the model's forward (trl 1.16.0 trl/trainer/utils.py:1548
        add_fused_lm_head, _fused_forward :1599): the backbone's last hidden states are
        shifted (hidden[:, :-1], labels[:, 1:]) and ChunkedLogProbFunction (trl 1.16.0
        trl/kernels/chunked_logprob.py:299) projects them tile by tile, the full logits
        never made. Rows N = b·(s − 1), all of them: off Triton every row, on CUDA with
        Triton only the labelled ones (``_use_triton``, :48), which ftmem does not know.
        Its forward (:311) saves the rows it gets, a copy in the hidden states' dtype
        (N·H·e_h; the slice's reshape, or the labelled rows' boolean index), the clamped
        int64 targets (N·8), the fp32 log-normaliser and entropy (2·N·4); the loss's
        masked_fill keeps the bool label mask (N·1). ``rows``: the labelled rows where
        they are fewer than the shifted positions (GRPO's completions: on CUDA only they
        are projected, the mask keeps its b·(s − 1) shape; FusedHead)."""
        N, h = rows or Loss.rows(run), arch.hidden_size
        return [
            Saved("TRL log-prob tiles: hidden rows", N * h * residual),
            Saved(
                "TRL log-prob tiles: targets, fp32 log-normaliser + entropy, label mask",
                N * INDEX_BYTES + 2 * N * FP32 + Loss.rows(run),
            ),
        ]

    @staticmethod
    def logprob_tiles_buffer(run: RunConfig, e: int, rows: int | None = None) -> int:
        """The tile buffer ChunkedLogProbFunction makes in forward and again in backward:
        ``torch.empty((min(N, 4096), 32768))`` in the compute dtype (the autocast dtype under
        autocast, else the hidden states'), its full width whatever the vocabulary
        (trl 1.16.0 trl/kernels/chunked_logprob.py:347 forward, :413 backward)."""
        return min(rows or Loss.rows(run), TRL_TOKEN_TILE) * TRL_VOCAB_TILE * e

    @staticmethod
    def _logprob_tiles_casts(
        arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, rows: int | None = None
    ) -> tuple[int, int]:
        """Each tile's casts to the compute dtype (``.to(compute_dtype)``, a copy only where
        the dtype differs: fp32 hidden states or weights under autocast): the row chunk
        (R·H·e, R = min(N, 4096)) and the weight's vocabulary slice (C·H·e,
        C = min(V, 32768))."""
        h, V = arch.hidden_size, arch.vocab_size
        R = min(rows or Loss.rows(run), TRL_TOKEN_TILE)
        rows = R * h * e if plan.dtypes.residual_bytes != e else 0
        weight = min(V, TRL_VOCAB_TILE) * h * e if BYTES_PER_ELEMENT[plan.dtypes.head] != e else 0
        return rows, weight

    @staticmethod
    def logprob_tiles_moment(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int) -> int:
        """SFTTrainer's forward at its tiles: their moment, and the backbone's output
        beside them until the fused forward returns (trl 1.16.0 trl/trainer/utils.py:1623;
        measured missing before: T·H·e, 28,800 B at 3 × 50 bf16, twice under autocast)."""
        return Loss.logprob_tiles_forward(arch, run, plan, e) + FusedHead.backbone_output(
            arch, run, plan.dtypes.residual_bytes
        )

    @staticmethod
    def logprob_tiles_forward(
        arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, rows: int | None = None
    ) -> int:
        """In forward beyond what it keeps (trl 1.16.0 trl/kernels/chunked_logprob.py:311-391):
        the tile buffer and the row chunk's cast, with either the weight slice's cast
        (alive only inside ``torch.mm``) beside the seven fp32 per-row statistics (running
        max, sums, target logit; the kept log-normaliser and entropy not made yet: 5·N·4
        beyond), or, at the end, the statistics with the log-probabilities and the
        quotient the entropy is formed from (9·N·4). Measured on the CPU to the byte with
        the tile folds stubbed (tests/test_trl_logprob_loss.py). The torch fallback of
        devices without Triton (_forward_tile, :211) adds fp32 temporaries of the tile's
        size, not modelled (about 3.3·R·C·4 measured on the CPU)."""
        N = rows or Loss.rows(run)
        cast, weight = Loss._logprob_tiles_casts(arch, run, plan, e, N)
        return (
            Loss.logprob_tiles_buffer(run, e, N) + cast + max(weight + 5 * N * FP32, 9 * N * FP32)
        )

    @staticmethod
    def logprob_tiles_backward(
        arch: Architecture,
        run: RunConfig,
        plan: MethodPlan,
        e: int,
        head_grad: bool,
        rows: int | None = None,
    ) -> int:
        """Its backward beyond the saved tensors (trl 1.16.0 trl/kernels/chunked_logprob.py
        :394-465): the incoming fp32 gradient of the log-probabilities (N·4), the fp32
        accumulators of the rows' gradient (N·H·4) and, where the LM head trains, of its
        weight's (V·H·4), the tile buffer again and the tile's casts; at the return the
        accumulators are cast to the inputs' dtypes beside them (N·H·e_h where e_h ≠ 4,
        V·H·e_w where e_w ≠ 4). The head's gradient is not yet among the gradients at this
        moment (they count from the final norm's backward on; with accumulation the held
        sum is another tensor), so none is counted twice.
        Then the shift's slice backward (b·s·H·e_h zeros) beside the rows' gradient, the
        accumulators freed. Off CUDA two more paths add copies, not modelled: the torch
        fallback of the tile fold (_backward_tile, :257; about 7.25·R·C·4 on the CPU) and
        _addmm_fp32's ``a.float(), b.float()`` for 16-bit tiles (:52; on CUDA with torch
        >= 2.8 an fp32-output addmm)."""
        N, h, V = rows or Loss.rows(run), arch.hidden_size, arch.vocab_size
        e_h, e_w = plan.dtypes.residual_bytes, BYTES_PER_ELEMENT[plan.dtypes.head]
        accumulators = N * h * FP32 + (V * h * FP32 if head_grad else 0)
        returned = (N * h * e_h if e_h != FP32 else 0) + (
            V * h * e_w if head_grad and e_w != FP32 else 0
        )
        tiles = Loss.logprob_tiles_buffer(run, e, N) + sum(
            Loss._logprob_tiles_casts(arch, run, plan, e, N)
        )
        at_return = N * FP32 + accumulators + tiles + returned
        T = run.batch_size * run.positions
        return max(at_return, N * h * e_h + T * h * e_h)

    @staticmethod
    def chunked_backward(run: RunConfig, V: int, e: int, T: int) -> int:
        """Beyond the saved tensors in the backward of torchtune's CEWithChunkedOutputLoss,
        one chunk (c = T/8 rows) at a time. Eager: nll_loss's and log_softmax's fp32
        gradients (2·c·V·4). Compiled (compute_cross_entropy alone): inductor's joint-graph
        pass rewrites nll_loss_backward's scatter into a zero tensor as a pointwise
        ``where`` (torch/_inductor/fx_passes/joint_graph.py scatter_upon_const_tensor,
        config.optimize_scatter_upon_const_tensor on by default; torch 2.13.0), so the
        whole backward fuses into one kernel that writes the chunk's 16-bit gradient
        (c·V·e) and nothing else; measured on the CPU in tests/test_compiled_loss.py."""
        chunk = -(-T // CHUNKS) * V
        if compiled_chunked_loss(run):
            return chunk * e
        return 2 * chunk * FP32

    @staticmethod
    def chunked_head_backward(arch: Architecture, plan: MethodPlan, T: int) -> int:
        """The LM head's backward under torchtune's chunked output, where its weight trains
        (0 where it is frozen), beyond the activations but the loss's saved tensors.

        The head runs once per piece (torchtune modules/transformer.py@1814feb17a90
        ``chunked_output``), so its weight's gradient is a sum of 8 matmul gradients,
        added up in autograd's input buffer of the weight's AccumulateGrad (a tied
        weight's: until the embedding's backward). Autograd runs every loss node first,
        then the pieces from the last (measured), so all 8 logit gradients (c·V·e each,
        c = T/8 rows) exist when the first piece's runs. The buffer's first entry is the
        transposed view TBackward returns, whose storage its base shares: the buffer
        cannot add into it in place (pytorch/pytorch torch/csrc/autograd/input_buffer.cpp
        ``accumulate``, ``can_accumulate_inplace``: storage use_count 1; @4537ef6c), so at
        the second piece its old entry, that piece's weight gradient and their new sum
        (3·V·h·e) live beside the 6 logit gradients not yet used and the two pieces'
        input gradients (c·h in the residual dtype); each later sum is in place
        (torch.profiler's allocator events, torch 2.13 CPU; under a dispatch mode, as
        ftmem's CPU tracker runs, every sum is a new tensor: the second piece is the
        largest moment either way, with the most logit gradients left)."""
        weight_grad, input_grad = Loss.chunked_head_grads(arch, plan, T)
        if not weight_grad:
            return 0
        e = BYTES_PER_ELEMENT[plan.dtypes.compute]
        logit_grads = (CHUNKS - 2) * -(-T // CHUNKS) * arch.vocab_size * e
        return logit_grads + 2 * input_grad + 3 * weight_grad

    @staticmethod
    def chunked_head_grads(arch: Architecture, plan: MethodPlan, T: int) -> tuple[int, int]:
        """One piece of torchtune's chunked output in backward: its weight gradient (V·h
        in the compute dtype, the matmul's; 0 where the head is frozen) and its input
        gradient (c = T/8 rows of h, in the residual dtype: the cast back under
        autocast)."""
        V, h = arch.vocab_size, arch.hidden_size
        trains = plan.outer_trainable or plan.head_trainable
        weight_grad = V * h * BYTES_PER_ELEMENT[plan.dtypes.compute] if trains else 0
        return weight_grad, -(-T // CHUNKS) * h * plan.dtypes.residual_bytes

    @staticmethod
    def chunked_saved(run: RunConfig, V: int, e: int, T: int) -> int:
        """What torchtune's chunked loss keeps until its backward (Loss.saved's loss
        item): the fp32 log-softmax and labels, or compiled, the 16-bit chunks."""
        if compiled_chunked_loss(run):
            return Loss._compiled_chunks(V, e, T).nbytes
        return Loss.cross_entropy_saved(T, V, FP32, False)

    @staticmethod
    def linear_chunked_backward(arch: Architecture, plan: MethodPlan, e: int, T: int) -> int:
        """Beyond the saved activations in the backward of torchtune's
        LinearCrossEntropyLoss: a chunk's log-softmax and logits gradients (fp32, 2·c·V·4
        for c = T/8 rows); where the LM head trains, each chunk's head-weight gradient is
        summed into autograd's input buffer. The first is a transposed view of its matmul's
        output, which the buffer cannot add into in place (pytorch/pytorch
        torch/csrc/autograd/input_buffer.cpp accumulate), so at the second chunk the old
        sum, the chunk's gradient and the new sum (3·V·h·e) live at once, the two
        processed chunks' log-softmaxes already freed; each later add finds more of them
        freed. Measured on the CPU: that first add is the backward's peak
        (tests/accuracy/cases.py, loss=linear-chunked)."""
        V, h = arch.vocab_size, arch.hidden_size
        chunk_fp32 = -(-T // CHUNKS) * V * FP32
        if not (plan.outer_trainable or plan.head_trainable):
            return 2 * chunk_fp32
        return max(2 * chunk_fp32, 3 * V * h * e - 2 * chunk_fp32)

    @staticmethod
    def liger_forward(arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, T: int) -> int:
        """Liger's fused linear cross-entropy in forward, beyond what it keeps (the input
        and weight gradients). Liger's patched causal-LM forward holds the backbone's last
        hidden states (T·h in the residual dtype: the final norm's output, which nothing
        saves) and their shifted contiguous copy (R·h), and the shifted labels' copy (R
        int64); its loop (linkedin/Liger-Kernel src/liger_kernel/ops/
        fused_linear_cross_entropy.py ``fused_linear_cross_entropy_forward``) makes each
        chunk's logits (chunk × V, the matmul's dtype) while the previous chunk's are still
        bound (``logits_chunk = _input_chunk @ weight.t()``), beside the fp32 per-row loss
        (R); under autocast the matmul's 16-bit casts of the chunk (chunk × h) and, for a
        frozen head, of the weight (V·h: a trained one is autocast's cached copy, kept
        with the head's tensors). Measured on the CPU with the reference Function
        (ftmem.measure.fused_loss): Llama freeze bf16-mixed, b 4 × 256, the top block
        trained, forward -8.6 % -> exact to 36 bytes."""
        V, h, rows = arch.vocab_size, arch.hidden_size, Loss.rows(run)
        dt = plan.dtypes
        chunk = min(Loss.liger_chunk_rows(rows, h, V), rows)
        # (one token a sample leaves no shifted row: no chunk, no logits)
        logits = min(2, -(-rows // chunk)) * chunk * V * e if chunk else 0
        casts = 0
        if dt.autocast:
            casts = chunk * h * e + (0 if plan.head_trainable else V * h * e)
        held = (T + rows) * h * dt.residual_bytes + rows * INDEX_BYTES
        return held + logits + casts + rows * FP32

    @staticmethod
    def liger_chunk_rows(tokens: int, hidden: int, vocab: int) -> int:
        """Rows per chunk of Liger's fused linear cross-entropy: the next power of two of
        tokens / ceil(vocab / hidden), so that a chunk's logits are about the size of the
        hidden states."""
        inc = -(-vocab // hidden)
        return 1 << max(0, (-(-tokens // inc) - 1).bit_length())


def head_dequant_bytes(arch: Architecture, run: RunConfig, plan: MethodPlan) -> int:
    """A 4-bit LM head's dequantised weight and its cast, alive while each of its matmuls
    runs (profiles.Profile.dequant_copy_bytes: fp16 then bf16 under Lightning's plugin,
    bitsandbytes@0.42.0 autograd/_functions.py MatMul4Bit.forward/backward); 0 for a
    16-bit head."""
    head = [g for g in plan.groups if g.name == f"{HEAD}.weight"]
    if not head or not is_quantized(head[0].fmt):
        return 0
    return arch.vocab_size * arch.hidden_size * profile_of(run).dequant_copy_bytes


def head_weight_casts(run: RunConfig, head_weight_trains: bool) -> int:
    """Autocast's 16-bit copies of the LM head weight that the head's matmuls keep for
    its input's gradient. autocast caches a cast only for a leaf that requires grad
    (pytorch/pytorch@008ec6b1 aten/src/ATen/autocast_mode.cpp cached_cast:
    ``arg.requires_grad() && arg.is_leaf()``; measured on the CPU's autocast in
    tests/test_profile_litgpt.py), so a frozen weight is cast anew at every call: LitGPT calls its head once per 128-position piece
    (lit-gpt@8641822b lit_gpt/lora.py GPT.forward ``[self.lm_head(x_i) for x_i in
    x.split(lm_head_chunk_size, dim=1)]``; litgpt@00af8b0d litgpt/lora.py the same) and
    each piece's matmul keeps its own copy until its backward: ceil(s / 128) copies. A
    weight that trains is cast once per forward (the cache lives until autocast exits,
    Fabric's forward_context around the whole forward: pytorch-lightning@71aed751
    src/lightning/fabric/wrappers.py _FabricModule.forward)."""
    chunk = head_chunk_tokens(run)
    if chunk is None or head_weight_trains:
        return 1
    return -(-run.positions // chunk)


@dataclass(frozen=True, slots=True)
class HeldLogitsHead:
    """The head side when the framework casts the model's output to fp32 and its loop
    holds it (LitGPT under Fabric: pytorch-lightning@527d071f fabric/wrappers.py
    _FabricModule.forward, precision.convert_output; litgpt@00af8b0d finetune/lora.py
    fit() keeps ``logits`` until the next forward returns). Sizes in bytes; the
    transients are beyond every saved activation (the fp32 log-softmax included) and
    beyond ``held``."""

    held: int  # the fp32 logits the loop holds: at every moment of the step
    logits_forward: int
    loss_backward: int


class AdaptedPieces(NamedTuple):
    """An adapter's moments on LitGPT's chunked head (adapters.head_lora.chunked_head_lora),
    in held_logits_head's terms: the pieces' forward, the branch's backward, and what the
    branch adds to (or, its saved tensors freed, takes from) the base's backward."""

    forward: int
    branch: int
    base: int


def held_logits_head(
    arch: Architecture,
    run: RunConfig,
    plan: MethodPlan,
    e: int,
    T: int,
    adapted: AdaptedPieces | None = None,
) -> HeldLogitsHead | None:
    """LitGPT's LM head and chunked cross-entropy (litgpt@00af8b0d litgpt/lora.py
    GPT.forward, litgpt/utils.py chunked_cross_entropy), None on other frameworks.

    Autograd runs ready nodes latest-created first, so every piece's nll and log-softmax
    backward runs before any piece's cast and head backward: the fp32 gradients replace
    the freed log-softmax outputs one piece at a time (two pieces' fp32 tensors beyond),
    then the 16-bit gradients (T·V·e) meet the 4-bit head's dequantised weight."""
    if not profile_of(run).logits_fp32_held:
        return None
    V, h = arch.vocab_size, arch.hidden_size
    log_softmax = T * V * FP32  # saved (in the activations), not yet made at the logits
    dequant = head_dequant_bytes(arch, run, plan)
    chunk = head_chunk_tokens(run)
    if chunk is not None:
        rows = min(T, run.batch_size * chunk)  # one head piece: b × chunk positions
        # the last piece's matmul beside the earlier pieces' 16-bit logits; then the
        # fp32 copies of all (the previous step's still held) before the 16-bit ones go
        forward = max(T * V * e + dequant - log_softmax, T * V * e)
        base = T * V * e - log_softmax + dequant + rows * h * e  # the head's backward
        backward = max(2 * rows * V * FP32, base)  # (first: a piece's nll, log-softmax grads)
        if adapted is not None:  # LoRA on the head (lora_head): its pieces and branch
            forward = max(forward, adapted.forward)
            backward = max(2 * rows * V * FP32, base + adapted.base, adapted.branch)
    else:
        # litgpt/finetune/full.py: one head matmul; chunked_cross_entropy reshapes the
        # shifted logits[..., :-1, :] (a copy when b > 1) and splits it in 128 rows
        rows = profile_of(run).loss_chunk_rows or T
        copy = T * V * FP32 if run.batch_size > 1 else 0
        forward = max(T * V * e + dequant - log_softmax, T * V * e, copy)
        # the pieces' gradients, then their concatenation (SplitBackward) and the
        # slice's full-size gradient, each T·V fp32 while the log-softmax is freed
        backward = max(2 * rows * V * FP32, T * V * FP32)
    return HeldLogitsHead(T * V * FP32, max(forward, 0), max(backward, 0))


class PreferenceLoss:
    """A preference objective's loss over the pair forward (``run.objective``; T tokens
    of the 2b concatenated chosen and rejected sequences, T' = T − 2b shifted ones; kto's
    b unpaired completions, T' = T − b): the
    sequences' log-probabilities, measured on the CPU against ftmem's loops
    (ftmem.measure.step._preference_loss).

    TRL (huggingface/trl trl/trainer/utils.py@f2cd57710ae3 selective_log_softmax, called
    by trl/trainer/dpo_trainer.py@f2cd57710ae3 _compute_loss and by the ORPO and CPO
    trainers' get_batch_logps): 16-bit logits go one sequence at a time through
    log_softmax, whose 16-bit output is saved; fp32 logits (pure fp32, or autocast, where
    accelerate returns the model's outputs in fp32) through gather and a per-sequence
    logsumexp, which keeps the logits themselves. LLaMA-Factory
    (hiyouga/LLaMA-Factory src/llamafactory/train/dpo/trainer.py@ff6d4d12eeb0
    concatenated_forward, train/trainer_utils.py get_batch_logps) casts the logits to
    fp32, holds them until the loss is formed, and saves the fp32 log-softmax of all
    of them at once, gather's cloned labels and the mask its product keeps. torchtune
    (pytorch/torchtune recipes/lora_dpo_single_device.py@bd2a0fc7c314 concatenated_forward,
    train; torchtune/rlhf/sequence_processing.py get_batch_log_probs, logits_to_logprobs;
    the model's fp32 output: torchtune/modules/transformer.py unembed) keeps the same,
    divides the logits by the temperature before the log-softmax (a copy), and deletes
    the policy's logits before the reference's forward."""

    @staticmethod
    def upcasts(run: RunConfig) -> bool:
        """LLaMA-Factory's and torchtune's paths: fp32 logits and one log-softmax over
        the whole batch."""
        return run.framework in ("llama-factory", "torchtune")

    @staticmethod
    def logits_bytes(run: RunConfig, e: int) -> int:
        """Bytes per logit the loss reads: fp32 under autocast (accelerate's
        convert_outputs_to_fp32 on the prepared model's forward) and on LLaMA-Factory's
        path, else the compute dtype."""
        return FP32 if run.uses_autocast or PreferenceLoss.upcasts(run) else e

    @staticmethod
    def saved(arch: Architecture, run: RunConfig, e: int, T: int, ids_kept: bool) -> list[Saved]:
        """What the loss keeps (``run``: the pair run, 2b sequences): the log-softmax of
        the T' shifted positions (TRL: 16-bit, or the whole fp32 logits and a logsumexp
        per position), the prompt mask, gather's index (the token ids unless the embedding
        keeps them; LLaMA-Factory's cloned labels); TRL's ORPO cross-entropy on the chosen
        half keeps its own log-softmax and labels (LLaMA-Factory's ORPO reuses the
        log-probabilities)."""
        V = arch.vocab_size
        shifted = T - run.batch_size
        if PreferenceLoss.upcasts(run):
            return [
                Saved("preference loss: fp32 log-softmax", shifted * V * FP32),
                Saved("preference loss: labels + prompt mask", shifted * (INDEX_BYTES + 1)),
            ]
        lb = PreferenceLoss.logits_bytes(run, e)
        if lb == FP32:
            probs = Saved("preference loss: fp32 logits + logsumexp", T * V * FP32 + shifted * FP32)
        else:
            probs = Saved("preference loss: 16-bit log-softmax", shifted * V * lb)
        out = [probs, Saved("preference loss: prompt mask", shifted)]
        if not ids_kept:
            out.append(Saved("preference loss: token ids (gather's index)", T * INDEX_BYTES))
        if run.objective == "orpo":
            chosen = shifted // 2
            out.append(
                Saved(
                    "ORPO: chosen cross-entropy log-softmax + labels",
                    chosen * V * lb + chosen * INDEX_BYTES + lb,
                )
            )
        return out

    @staticmethod
    def _copy(run: RunConfig, e: int, T: int, V: int) -> int:
        """The 16-bit logits beside their fp32 copy while it is made (0 without one)."""
        return T * V * e if PreferenceLoss.logits_bytes(run, e) != e else 0

    @staticmethod
    def held_logits(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
        """The policy's logits the trainer holds until the loss is formed, beyond the
        saved tensors (TRL's fp32 ones are saved; LLaMA-Factory's fp32 ones are not)."""
        V = arch.vocab_size
        if PreferenceLoss.upcasts(run):
            return T * V * FP32
        return 0 if PreferenceLoss.logits_bytes(run, e) == FP32 else T * V * e

    @staticmethod
    def held_at_reference(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
        """The policy's logits still held at the reference's forward (torchtune deletes
        them first)."""
        return 0 if run.framework == "torchtune" else PreferenceLoss.held_logits(arch, run, e, T)

    @staticmethod
    def _divided(run: RunConfig, T: int, V: int) -> int:
        """torchtune's logits / temperature, the log-softmax's fp32 input (T'·V·4)."""
        return (T - run.batch_size) * V * FP32 if run.framework == "torchtune" else 0

    @staticmethod
    def logits_moment(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
        """At the loss in forward, beyond every saved tensor: the held logits, and the
        16-bit logits beside their fp32 copy, made before the log-softmax it saves."""
        V = arch.vocab_size
        held = PreferenceLoss.held_logits(arch, run, e, T)
        copy = PreferenceLoss._copy(run, e, T, V)
        if PreferenceLoss.upcasts(run):
            divided = PreferenceLoss._divided(run, T, V)
            return held + max(copy - (T - run.batch_size) * V * FP32, divided, 0)
        return held + copy

    @staticmethod
    def reference_logits_moment(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
        """The reference forward's last moment (no_grad): its logits with one sequence's
        16-bit log-softmax (TRL), or its fp32 logits with their whole fp32 log-softmax
        (LLaMA-Factory); the 16-bit logits beside an fp32 copy."""
        V, lb = arch.vocab_size, PreferenceLoss.logits_bytes(run, e)
        copy = PreferenceLoss._copy(run, e, T, V)
        if PreferenceLoss.upcasts(run):
            log_softmax = (T - run.batch_size) * V * FP32 + PreferenceLoss._divided(run, T, V)
            return T * V * FP32 + max(copy, log_softmax)
        row = 0 if lb == FP32 else (run.positions - 1) * V * lb
        return T * V * lb + row + copy

    @staticmethod
    def unpaired_moment(
        arch: Architecture, run: RunConfig, e: int, T: int, no_grad_forward: int
    ) -> int:
        """kto, apo-zero-unpaired (0 for the other objectives): the moments after the
        policy's loss, beyond every saved tensor; ``no_grad_forward``: one forward under
        no_grad beyond what is held (its blocks' intermediates, or its logits and
        log-probabilities: reference_logits_moment).

        TRL (trl/trainer/kto_trainer.py@f2cd57710ae3 _compute_loss): the reference's two
        forwards come after the policy's (the moment _with_reference counts for every
        reference), the policy's own KL forward before it, when nothing is saved yet.
        Then the metrics, with the policy's logits (``outputs``) and the reference's
        (``ref_outputs``) held, both locals until the method returns:
        ``entropy_from_logits(shift_logits.detach())`` reshapes the shifted logits into
        rows, a copy (T'·V; the slice is not contiguous), and per chunk of 128 rows holds
        its log-softmax, their exp and the product (3 chunks); then ``index_select``
        copies the chosen and the rejected sequences' shifted logits (T'·V together,
        held to the end) and ``chosen_logits[chosen_mask.bool()]`` copies one group's
        completion rows: at most T'·V, for a batch whose completions share one label and
        fill the sequence (the worst batch of a run; a prompt shortens it).

        LLaMA-Factory (hiyouga/LLaMA-Factory src/llamafactory/train/kto/trainer.py
        @ff6d4d12eeb0 concatenated_forward, compute_reference_log_probs): the policy's
        fp32 logits held, its KL forward under no_grad; then the chosen and rejected
        logits' boolean-index copies (T·V·4 together) beside the logits, the copies held
        while the reference runs the same: its completions' forward, its KL forward
        beside its own fp32 logits, its copies."""
        if run.objective not in UNPAIRED_OBJECTIVES:
            return 0
        V, lb = arch.vocab_size, PreferenceLoss.logits_bytes(run, e)
        if PreferenceLoss.upcasts(run):
            logits = T * V * FP32
            policy = logits + max(no_grad_forward, logits)  # KL forward, then the copies
            if not run.needs_reference:
                return policy
            # the copies held: the reference's completions, its KL forward and its copies
            return max(policy, logits + logits + max(no_grad_forward, logits))
        shifted = T - run.batch_size
        reference = T * V * lb if run.needs_reference else 0
        chunk = min(ENTROPY_CHUNK_ROWS, shifted)
        metrics = shifted * V * lb + max(3 * chunk, shifted) * V * lb
        return PreferenceLoss.held_logits(arch, run, e, T) + reference + metrics

    @staticmethod
    def backward(arch: Architecture, run: RunConfig, e: int, T: int) -> int:
        """The loss's backward beyond the saved tensors (measured): TRL 16-bit, the
        stacked sequences' gradient then the slice's full-size one (T·V·e) as the saved
        log-softmax is freed; TRL fp32, gather's and logsumexp's gradients and their sum
        (3·T'·V·4); LLaMA-Factory, gather's and the log-softmax's gradients (2·T'·V·4)."""
        V, shifted = arch.vocab_size, T - run.batch_size
        if PreferenceLoss.upcasts(run):
            return 2 * shifted * V * FP32
        if PreferenceLoss.logits_bytes(run, e) == FP32:
            return 3 * shifted * V * FP32
        return T * V * e


# the per-token outputs each TRL >= 1.16 trainer asks of the policy's fused LM head
# (trl 1.16.0 trl/trainer/dpo_trainer.py:957, without WPO's weighting; kto_trainer.py:969;
# grpo_trainer.py:1072); a reference copy gets add_fused_lm_head's default, the
# log-probabilities alone (trl/trainer/utils.py:1552)
FUSED_OUTPUTS: dict[str, tuple[str, ...]] = {
    "dpo": ("log_probs", "entropy", "mean_logits", "is_top1"),
    "ipo": ("log_probs", "entropy", "mean_logits", "is_top1"),
    "kto": ("log_probs", "entropy", "mean_logits"),
    "apo-zero-unpaired": ("log_probs", "entropy", "mean_logits"),
    "grpo": ("log_probs", "entropy"),
}
_FP32_OUTPUTS = ("log_probs", "entropy", "mean_logits")


class FusedHead:
    """TRL >= 1.16's DPO, KTO and GRPO trainers (``--loss logprob-tiles`` with
    ``--objective dpo | ipo | kto | apo-zero-unpaired | grpo``): the policy's and the
    reference's log-probabilities come from the fused LM head SFTTrainer uses
    (add_fused_lm_head: trl 1.16.0 trl/trainer/dpo_trainer.py:960 and :962,
    kto_trainer.py:967 and :972, grpo_trainer.py:1068 and :1075), never from logits:
    each forward with ``fused_lm_head=True`` runs the backbone, shifts its last hidden
    states and projects the labelled rows through ChunkedLogProbFunction's tiles
    (Loss.logprob_tiles_*). The metrics read the kernel's per-token outputs (entropy,
    mean logit, top-1), a few bytes per row. Symbols: T = b·s tokens, M = b·(s − 1)
    shifted positions (the labels' shape), N ≤ M the rows scored."""

    @staticmethod
    def outputs_bytes(objective: str, M: int, reference_copy: bool = False) -> int:
        """What one fused forward returns and its caller holds (utils.py:1510
        FusedCausalLMOutput), in the labels' shape: fp32 log-probabilities (and entropy,
        mean logit), a bool top-1, the bool label mask."""
        names = ("log_probs",) if reference_copy else FUSED_OUTPUTS[objective]
        fp32 = sum(n in _FP32_OUTPUTS for n in names)
        return M * (fp32 * FP32 + int("is_top1" in names) + 1)

    @staticmethod
    def backbone_output(arch: Architecture, run: RunConfig, residual: int) -> int:
        """The backbone's last hidden states (T·H in the hidden states' dtype), alive
        until the fused forward returns (``backbone_outputs``, utils.py:1623)."""
        return run.batch_size * run.positions * arch.hidden_size * residual

    @staticmethod
    def no_grad_pass(
        arch: Architecture, run: RunConfig, plan: MethodPlan, e: int, rows: int | None = None
    ) -> int:
        """One fused forward under no_grad (a reference's, KTO's KL sequences', GRPO's
        old or reference log-probabilities) at its tiles, beyond what was live before:
        the backbone's output, what the function would save made all the same (the
        rows' copy, the targets, log Z and entropy, the mask: freed when it returns) and
        its tiles' moment (Loss.logprob_tiles_forward)."""
        residual = plan.dtypes.residual_bytes
        made = sum(s.nbytes for s in Loss.logprob_tiles_saved(arch, run, residual, rows))
        return (
            FusedHead.backbone_output(arch, run, residual)
            + made
            + Loss.logprob_tiles_forward(arch, run, plan, e, rows)
        )

    @staticmethod
    def preference_forward(
        arch: Architecture,
        run: RunConfig,
        plan: MethodPlan,
        e: int,
        policy_tiles: int,
        no_grad_blocks: int,
    ) -> int:
        """The loss side's largest forward moment beyond the saved activations (``run``:
        the pair run, 2b sequences; kto's b completions). ``policy_tiles``: the policy's
        own at its tiles (the SFT step's head moment); ``no_grad_blocks``: a block's
        forward under no_grad.

        - DPO (dpo_trainer.py:1285 _compute_loss): the labels (``input_ids.masked_fill``,
          T int64, to the end), the policy's pass (its backbone output beside its tiles);
          then, with a reference, its pass under no_grad (:1336 the adapter disabled,
          the policy's patched forward; :1338 a frozen copy) beside the policy's outputs.
        - KTO (kto_trainer.py:1370): the policy's KL pass under no_grad comes first, with
          nothing saved yet (smaller than the policy's own); the reference's KL pass and
          completions' pass run one after the other, the first's outputs summed and
          freed: one pass's moment covers both.
        - The metrics after the loss (:1521-1560, kto :1490-1510) read the per-token
          outputs: rows of bytes, below either pass's tile buffer."""
        M = Loss.rows(run)
        labels = run.batch_size * run.positions * INDEX_BYTES
        residual = plan.dtypes.residual_bytes
        policy = labels + FusedHead.backbone_output(arch, run, residual) + policy_tiles
        if not run.needs_reference:
            return policy
        held = labels + FusedHead.outputs_bytes(run.objective, M)
        reference = FusedHead.no_grad_pass(arch, run, plan, e)
        return max(policy, held + max(no_grad_blocks, reference))
