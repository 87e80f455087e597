"""The LM head's and the loss's tensors in the order PyTorch allocates and frees them.

The timeline (phases.py) needs the head's two moments as sums: the logits' forward
(Loss.forward_transient) and the loss's backward (its gradients), each beyond the
loss's saved item. The CUDA caching allocator needs them tensor by tensor: which
freed block a later request reuses decides what it reserves, and one block of the
moment's size packs unlike the logits, their fp32 copy and the gradients it stands for
(gpu/trace.py replays these requests in place of the two moments).

Each program is derived from the library code and checked against PyTorch on the CPU,
tensor by tensor (tests/test_loss_requests.py). Symbols: T = b·s positions, R the rows
the cross-entropy takes (T; T − b for the shifted loss), V the vocabulary, e the
logits' element size.

Activation offload changes where the loss's saved tensors live, not which tensors the
loss makes: the standard loss's one program serves both (``offloaded``, _Program), and
the test compares it with torch's save_on_cpu on the CPU and with the run without
offload (tests/test_loss_requests.py).

Left out (a few bytes a row, or beyond the moments the timeline counts):
``nn.functional.pad``'s padded labels (b·(s + 1)·8, freed when the loss returns), the
loss's scalars but the one the saved item counts, and the logits' 16-bit gradient
living on through the LM head's backward matmuls (freed here when the loss's backward
ends: the timeline counts the head's gradients after that moment), but for torchtune's
chunked output with a trained head, whose pieces' backward is the larger moment.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftmem.dtypes import FP32, INDEX_BYTES
from ftmem.gpu.program import PREVIOUS, RequestProgram
from ftmem.phases import HeadRequest, HeadRequests

CHUNKS = 8  # torchtune's num_output_chunks (ops.loss.CHUNKS)
Phase = tuple[HeadRequest, ...]  # a forward's or a backward's requests


class _Program(RequestProgram):
    """Forward and backward share the numbering; ``output``: the allocation the loop
    holds past the backward. ``offloaded``: the loss's saved tensors go to host memory
    as they are saved (torch's ``save_on_cpu``: torch 2.13 torch/autograd/graph.py
    ``pack_to_cpu`` copies into a host tensor, which the graph keeps; ``unpack_from_cpu``
    brings back a new device tensor, ``tensor.to(device)``, for each node that unpacks
    it): the device tensors die when nothing else names them, and each backward node
    that reads one holds its own copy while it runs. ``cache``: the allocation that
    stands for what the forward holds until it ends (:meth:`held_cache`)."""

    __slots__ = ("cache", "offloaded", "output", "sizes")

    def __init__(self, offloaded: bool = False) -> None:
        super().__init__()
        self.output = -1
        self.cache = -1
        self.offloaded = offloaded
        self.sizes: list[int] = []  # each allocation's bytes, by its number

    def held_cache(self, held: int) -> int:
        """What the forward holds until it ends (autocast's weight cache, a prefix
        cache), as one request at the head: the replay takes out of it the casts the
        blocks' forwards made themselves (gpu.trace, HeadRequests.cache)."""
        self.cache = self.alloc(held)
        return self.cache

    def alloc(self, size: int) -> int:
        key = super().alloc(size)
        if key >= 0:
            self.sizes.append(size)
        return key

    def unpack(self, *saved: int) -> tuple[int, ...]:
        """A backward node's saved tensors as it reads them: offloaded, a new copy of
        each (returned, for :meth:`node_done`); else the tensors themselves (none)."""
        if not self.offloaded:
            return ()
        return tuple(self.alloc(self.sizes[k]) for k in saved if k >= 0)

    def node_done(self, *copies: int) -> None:
        """A backward node returns: the copies it unpacked die with its locals."""
        self.free(*reversed(copies))

    def release(self, *saved: int) -> None:
        """The graph lets its saved tensors go (their last node ran): on the device
        unless they were offloaded, whose device tensors died in forward."""
        if not self.offloaded:
            self.free(*saved)

    def saved_by_graph(self, *saved: int) -> None:
        """The forward's end, for tensors only the graph still names: offloaded, the
        graph holds their host copies, so the device tensors are freed."""
        if self.offloaded:
            self.free(*saved)

    def cut(self) -> Phase:
        """The requests so far (a phase's), the numbering kept for the next phase."""
        out, self.ops = tuple(self.ops), []
        return out

    def previous(self) -> None:
        """The loop's previous output is let go here (its name rebound to this pass's):
        the replay frees what the last pass's program held (Programmed.into_next_forward)."""
        self.ops.append((PREVIOUS, 0))

    def drop_output(self, key: int, hold: bool) -> None:
        """The model's output at the forward's end: freed, or held by the loop."""
        if hold:
            self.output = key
        else:
            self.free(key)

    def nll_backward(self, size: int, log_softmax: int, *saved: int) -> int:
        """NllLossBackward0's zeros (nll_loss_backward), then LogSoftmaxBackward0's
        output (_log_softmax_backward_data), ``size`` bytes each; the first and the
        saved tensors (the log-softmax, which both nodes save, and nll_loss's ``saved``
        labels and total_weight) freed after the second: returns the second (the
        log-softmax's input gradient). Offloaded, each node first unpacks its own:
        NllLossBackward0 self, target and total_weight, LogSoftmaxBackward0 result
        (torch/csrc/autograd/generated: the order of their saved variables)."""
        copies = self.unpack(log_softmax, *saved)
        nll_grad = self.alloc(size)
        self.node_done(*copies)
        copies = self.unpack(log_softmax)
        ls_grad = self.alloc(size)
        self.node_done(*copies)
        self.free(nll_grad)
        self.release(log_softmax, *saved)
        return ls_grad

    def done(self, forward: Phase, into_next_forward: bool = False) -> Programmed:
        return Programmed(forward, self.cut(), self.output, into_next_forward, self.cache)


@dataclass(frozen=True, slots=True)
class Programmed:
    """A head program: its forward's and backward's requests, and the number of the
    allocation the loop holds past them (-1: none)."""

    forward: Phase
    backward: Phase
    output: int = -1
    # the output is held into the next pass's forward, freed at its PREVIOUS request
    into_next_forward: bool = False
    cache: int = -1  # the forward's held cache (_Program.held_cache), -1: none

    def phases(self) -> tuple[Phase, Phase]:
        return self.forward, self.backward


def causal_lm_loss(
    T: int, V: int, e: int, held: int = 0, offloaded: bool = False, inputs: tuple[int, ...] = ()
) -> tuple[Phase, Phase]:
    """transformers' ForCausalLMLoss (_causal_lm_loss), the model's output dropped."""
    return _causal_lm_loss(T, V, e, held, offloaded=offloaded, inputs=inputs).phases()


def _causal_lm_loss(
    T: int,
    V: int,
    e: int,
    held: int = 0,
    hold: bool = False,
    offloaded: bool = False,
    inputs: tuple[int, ...] = (),
    fp32_head: bool = False,
) -> Programmed:
    """transformers' ForCausalLMLoss on the model's logits (transformers 5.24
    loss/loss_utils.py:51-73, fixed_cross_entropy :34-48): ``logits.float()`` (a copy
    when e ≠ 4), the labels padded and shifted (``.contiguous()``: T int64),
    ``cross_entropy`` = log_softmax (fp32, saved) then nll_loss (its scalar
    total_weight saved); the fp32 copy dies when the loss returns, the 16-bit logits
    with the model's output (HF Trainer's compute_loss returns the loss alone).
    ``held``: what the forward holds until it ends (autocast's weight cache, a prefix
    cache), counted in the logits' moment; ``inputs``: tensors the forward names until
    it ends beyond those (the LM head's input where nothing saves it,
    step._named_head_input; offloaded: that input and its 16-bit copy,
    step._offloaded_loss_inputs), one request each; ``hold``: the loop keeps the
    model's output (the logits) past the backward.

    Backward (torch/csrc/autograd/generated: NllLossBackward0, LogSoftmaxBackward0,
    ToCopyBackward0): nll_loss_backward's zeros (T·V·4), _log_softmax_backward_data's
    output (T·V·4), then the two freed with the saved log-softmax and labels; the cast
    back to the logits' dtype (T·V·e) as the fp32 gradient goes.

    ``offloaded`` (activation offload, _Program): the same tensors in the same order;
    the saved log-softmax, labels and total_weight die as the forward ends, and the
    backward's two nodes bring back their own copies (_Program.nll_backward).

    ``fp32_head``: the model's head casts its output (versions.head_upcasts): the 16-bit
    logits die at that cast, the loss's ``float()`` copies nothing, and the model returns
    the fp32 logits; the backward's cast back is the head's."""
    p = _Program(offloaded)
    cache = p.held_cache(held)
    named = [p.alloc(size) for size in inputs]
    logits = p.alloc(T * V * e)
    upcast = p.alloc(T * V * FP32) if e != FP32 else -1
    if fp32_head and upcast >= 0:
        p.free(logits)
        logits, upcast = upcast, -1
    labels = p.alloc(T * INDEX_BYTES)
    log_softmax = p.alloc(T * V * FP32)
    total_weight = p.alloc(FP32)
    p.saved_by_graph(log_softmax, labels, total_weight)
    p.free(upcast, *named, cache)
    p.drop_output(logits, hold)
    forward = p.cut()
    ls_grad = p.nll_backward(T * V * FP32, log_softmax, labels, total_weight)
    cast_back = p.alloc(T * V * e) if e != FP32 else -1
    p.free(ls_grad, cast_back)
    return p.done(forward)


def shifted_loss(
    T: int, R: int, V: int, e: int, log_softmax_bytes: int, held: int = 0, offloaded: bool = False
) -> tuple[Phase, Phase]:
    """Qwen-1's own loss (_shifted_loss), the model's output dropped."""
    return _shifted_loss(T, R, V, e, log_softmax_bytes, held, offloaded=offloaded).phases()


def shifted_loss_cuda_autocast(
    T: int, R: int, V: int, e: int, held: int = 0
) -> tuple[Phase, Phase]:
    """Qwen-1's own loss under CUDA's autocast (ops.loss.Loss.shifted_nll_cast): the
    logits, the shifted copy (R·V·e), the labels' copy, the log-softmax in the logits'
    dtype (R·V·e, saved: its explicit dtype is left alone), nll_loss's fp32 cast of it
    (R·V·4, saved by NllLossBackward0) and its fp32 total_weight; the shifted copy dies
    when the forward returns, the logits with its output.

    Backward: nll_loss_backward's fp32 zeros (R·V·4); NllLossBackward0's saved cast,
    labels and scalar released as it returns; ToCopyBackward0's cast back (R·V·e), the
    fp32 gradient freed; _log_softmax_backward_data (R·V·e), the cast and the saved
    log-softmax freed; SliceBackward0's zeros of the whole logits (T·V·e).

    ``fp32_output``: accelerate's convert_outputs_to_fp32 around the forward (HF Trainer
    under native autocast, profiles.Profile.converts_outputs_to_fp32): once the forward
    has returned (the autocast context exited, its cache freed), ``logits.float()``
    (T·V·4) beside the 16-bit logits, which die with the model's own output object; the
    fp32 copy with the converted output, when the trainer's compute_loss returns."""
    return _shifted_cuda_program(T, R, V, e, held, False).phases()


def shifted_loss_accelerate(T: int, R: int, V: int, e: int, held: int = 0) -> tuple[Phase, Phase]:
    """shifted_loss_cuda_autocast with accelerate's fp32 copy of the returned logits."""
    return _shifted_cuda_program(T, R, V, e, held, False, fp32_output=True).phases()


def _shifted_cuda_program(
    T: int,
    R: int,
    V: int,
    e: int,
    held: int,
    hold: bool,
    fp32_output: bool = False,
    inputs: tuple[int, ...] = (),
    masked: bool = False,
) -> Programmed:
    """shifted_loss_cuda_autocast's requests; ``inputs``: as _causal_lm_loss's, freed
    with the shifted copy as the forward returns (before accelerate's conversion);
    ``masked``: shifted_copy_bytes'."""
    p = _Program()
    cache = p.held_cache(held)
    named = [p.alloc(size) for size in inputs]
    logits = p.alloc(T * V * e)
    shifted = p.alloc(shifted_copy_bytes(T, R, V, e, masked))
    labels = p.alloc(shifted_copy_bytes(T, R, 1, INDEX_BYTES))  # a view for one sequence
    log_softmax = p.alloc(R * V * e)
    cast = p.alloc(R * V * FP32)
    total_weight = p.alloc(FP32)
    p.free(shifted, *named, cache)
    if fp32_output and not hold:  # accelerate's convert_to_fp32 of the model's output
        converted = p.alloc(T * V * FP32)
        p.free(logits)
        logits = converted
    p.drop_output(logits, hold)
    forward = p.cut()
    nll_grad = p.alloc(R * V * FP32)
    p.free(cast, labels, total_weight)
    cast_back = p.alloc(R * V * e)
    p.free(nll_grad)
    ls_grad = p.alloc(R * V * e)
    p.free(cast_back, log_softmax)
    zeros = p.alloc(T * V * e)
    p.free(ls_grad, zeros)
    return p.done(forward)


def shifted_copy_bytes(T: int, R: int, V: int, e: int, masked: bool = False) -> int:
    """The bytes of ``lm_logits[..., :-1, :].contiguous()`` (R = T − b rows): a copy of
    the slice, but for one sequence (b = 1), whose slice is contiguous already (the
    batch dimension has size 1, which ``is_contiguous`` skips; dropping the last row of
    a row-major T×V matrix keeps the rest in place), so ``contiguous()`` returns it: 0
    (Loss.shifted_copy; measured on the CPU, tests/test_loss_requests.py). ``masked``: a
    boolean index selects the rows (versions.masked_shift), a copy at any batch."""
    return R * V * e if T - R > 1 or masked else 0


def _shifted_loss(
    T: int,
    R: int,
    V: int,
    e: int,
    log_softmax_bytes: int,
    held: int = 0,
    hold: bool = False,
    offloaded: bool = False,
    inputs: tuple[int, ...] = (),
    masked: bool = False,
) -> Programmed:
    """The model's own loss on a shifted copy (Qwen-1's QWenLMHeadModel.forward,
    modeling_qwen.py@a6ca629 l.1125-1135): the logits (T·V·e), ``lm_logits[..., :-1,
    :].contiguous()`` (R·V·e; none for one sequence: shifted_copy_bytes), the shifted labels'
    copy (R int64), under autocast
    cross_entropy's fp32 cast of the copy (R·V·4, freed when it returns),
    log_softmax (R·V·ℓ, saved) and nll_loss; the shifted copy dies when the model's
    forward returns, the logits with its output.

    Backward: nll_loss_backward's and _log_softmax_backward_data's gradients (R·V·ℓ
    each), the saved tensors freed; under autocast the cast back (R·V·e); then
    SliceBackward0's zeros of the whole logits (T·V·e) the shifted gradient is copied
    into (``slice_backward``).

    The autocast order is the CPU's, where cross_entropy_loss is on autocast's fp32
    list; CUDA's is shifted_loss_cuda_autocast (ops.loss.Loss.shifted_nll_cast).

    ``offloaded`` and ``inputs``: as _causal_lm_loss's; ``masked``: shifted_copy_bytes'."""
    p = _Program(offloaded)
    cache = p.held_cache(held)
    named = [p.alloc(size) for size in inputs]
    logits = p.alloc(T * V * e)
    shifted = p.alloc(shifted_copy_bytes(T, R, V, e, masked))
    labels = p.alloc(shifted_copy_bytes(T, R, 1, INDEX_BYTES))  # a view for one sequence
    cast = p.alloc(R * V * FP32) if log_softmax_bytes != e else -1
    log_softmax = p.alloc(R * V * log_softmax_bytes)
    total_weight = p.alloc(log_softmax_bytes)
    p.saved_by_graph(log_softmax, labels, total_weight)
    p.free(cast, shifted, *named, cache)
    p.drop_output(logits, hold)
    forward = p.cut()
    ls_grad = p.nll_backward(R * V * log_softmax_bytes, log_softmax, labels, total_weight)
    grad = ls_grad
    if log_softmax_bytes != e:
        grad = p.alloc(R * V * e)
        p.free(ls_grad)
    zeros = p.alloc(T * V * e)
    p.free(grad, zeros)
    return p.done(forward)


def upcast_shifted_loss(
    T: int, R: int, V: int, e: int, held: int = 0, offloaded: bool = False
) -> tuple[Phase, Phase]:
    """transformers < 4.46's causal-LM loss (_upcast_shifted_loss), the output dropped."""
    return _upcast_shifted_loss(T, R, V, e, held, offloaded=offloaded).phases()


def _upcast_shifted_loss(
    T: int,
    R: int,
    V: int,
    e: int,
    held: int = 0,
    hold: bool = False,
    offloaded: bool = False,
    inputs: tuple[int, ...] = (),
    keep_logits: bool = False,
    masked: bool = False,
) -> Programmed:
    """transformers < 4.46's LlamaForCausalLM.forward with labels (4.40.2
    models/llama/modeling_llama.py:1230-1244; 4.36.2 :1199-1213): the logits (T·V·e),
    ``logits = logits.float()`` (T·V·4; the 16-bit logits freed as the name is rebound,
    no node saves them; no copy when e = 4), ``logits[..., :-1, :].contiguous()``
    (R·V·4; none for one sequence, whose slice of the fp32 logits is contiguous:
    shifted_copy_bytes; the same lines in 4.37.2 :1202-1215 and 4.45.2 :1219-1229, the
    upcast always before the slice), the shifted labels' copy (R int64; none for one
    sequence, whose ``labels[..., 1:]`` is contiguous: Loss.shifted_labels), CrossEntropyLoss's
    log_softmax (R·V·4, saved) and nll_loss; the shifted copy dies when the forward
    returns, the fp32 logits with the model's output (HF Trainer's compute_loss drops
    it; a loop that holds it: ``hold``).

    Backward: nll_loss_backward's and _log_softmax_backward_data's fp32 gradients
    (R·V·4 each), the saved tensors freed; CloneBackward0 and ViewBackward0 pass the
    gradient on, SliceBackward0 makes fp32 zeros of the whole logits (T·V·4) and copies
    it in; ToCopyBackward0's cast back to e (T·V·e, none when e = 4).

    ``offloaded`` and ``inputs``: as _causal_lm_loss's (save_on_cpu: the saved
    log-softmax, labels and total_weight die as the forward ends, each backward node
    brings back its own copies; the forward names ``inputs`` until it ends).

    ``keep_logits``: transformers 4.46-4.48's ForCausalLMLoss (versions.py): the model's
    forward names its 16-bit logits through the loss, which upcasts a copy (freed with
    the shifted one as the loss returns); the model returns the 16-bit logits.
    ``masked``: shifted_copy_bytes'."""
    p = _Program(offloaded)
    cache = p.held_cache(held)
    named = [p.alloc(size) for size in inputs]
    logits = p.alloc(T * V * e)
    upcast = -1
    if e != FP32:
        upcast = p.alloc(T * V * FP32)
        if not keep_logits:
            p.free(logits)
            logits, upcast = upcast, -1
    shifted = p.alloc(shifted_copy_bytes(T, R, V, FP32, masked))
    labels = p.alloc(shifted_copy_bytes(T, R, 1, INDEX_BYTES))  # a view for one sequence
    log_softmax = p.alloc(R * V * FP32)
    total_weight = p.alloc(FP32)
    p.saved_by_graph(log_softmax, labels, total_weight)
    p.free(shifted, upcast, *named, cache)
    p.drop_output(logits, hold)
    forward = p.cut()
    ls_grad = p.nll_backward(R * V * FP32, log_softmax, labels, total_weight)
    zeros = p.alloc(T * V * FP32)
    p.free(ls_grad)
    cast_back = p.alloc(T * V * e) if e != FP32 else -1
    p.free(zeros, cast_back)
    return p.done(forward)


def loop_shifted_loss(
    T: int, R: int, V: int, e: int, held: int = 0, adapted_head: bool = False
) -> tuple[Phase, Phase]:
    """torchtune 0.1's loop loss (_loop_shifted_loss), the PREVIOUS request kept."""
    return _loop_shifted_loss(T, R, V, e, held, adapted_head).phases()


def _loop_shifted_loss(
    T: int, R: int, V: int, e: int, held: int = 0, adapted_head: bool = False
) -> Programmed:
    """torchtune 0.1's LoRA recipe, which computes the loss in its loop
    (pytorch/torchtune recipes/lora_finetune_single_device.py@ff594c231 train; the model
    ends in ``self.output(h).float()``, torchtune/modules/transformer.py@ff594c231):
    the logits (T·V·e) and their fp32 copy (T·V·4; the 16-bit ones freed, no node saves
    them); the model returns, so ``logits = self._model(input_ids)`` lets the last
    pass's shifted copy go (PREVIOUS); ``logits[..., :-1, :].contiguous()`` (R·V·4,
    the fp32 logits freed as the name is rebound to it; for one sequence no copy, as
    shifted_copy_bytes: the name then holds a view of the fp32 logits, so their T·V·4 is
    what the loop keeps), the labels' copy (R int64; a view for one sequence);
    ``logits.transpose(1, 2)`` into CrossEntropyLoss: log_softmax over dimension 1 of
    the (b, V, s − 1) view, whose CUDA kernel first copies the non-contiguous input
    (R·V·4, freed as it returns; Loss.loop_shifted_forward) and writes a contiguous
    output (R·V·4, saved), then nll_loss's total_weight. The loop holds the shifted
    copy (the program's output; one sequence's fp32 logits) until the next pass's
    PREVIOUS.

    Backward: the upcast-shifted loss's (_upcast_shifted_loss): nll_loss's and
    log_softmax's fp32 gradients (R·V·4 each), the saved tensors freed; TransposeBackward0
    and CloneBackward0 pass the gradient on, SliceBackward0 makes fp32 zeros of the
    whole logits (T·V·4) and copies it in; ToCopyBackward0's cast back to e (T·V·e,
    none when e = 4).

    ``adapted_head``: the output is a LoRALinear (apply_lora_to_output; torchtune/modules/
    peft/lora.py@ff594c231 LoRALinear.forward, its adapter in the logits' dtype): the
    base logits, lora_b's output (lora_a's, T·r, and the dropout's are the head side's
    saved tensors, made before), its scaled copy (``(alpha / rank) * ...``: MulBackward0
    keeps only the scalar, so lora_b's output is freed), the sum, the two operands freed
    as forward returns; the sum is what ``.float()`` casts. In backward, after the cast
    back (the sum's gradient): MulBackward0's scaled copy for lora_b, made first (created
    last), freed when lora_b's backward has run; the sum's gradient freed once the base
    matmul's backward has read it."""
    p = _Program()
    cache = p.held_cache(held)
    logits = p.alloc(T * V * e)
    if adapted_head:
        lora_b = p.alloc(T * V * e)
        scaled = p.alloc(T * V * e)
        p.free(lora_b)
        total = p.alloc(T * V * e)
        p.free(logits, scaled)
        logits = total
    if e != FP32:
        upcast = p.alloc(T * V * FP32)
        p.free(logits)
        logits = upcast
    p.previous()
    shifted = p.alloc(shifted_copy_bytes(T, R, V, FP32))
    if shifted >= 0:
        p.free(logits)
    else:  # one sequence: the name keeps a view of the fp32 logits, their storage held
        shifted = logits
    labels = p.alloc(shifted_copy_bytes(T, R, 1, INDEX_BYTES))  # a view for one sequence
    contiguous = p.alloc(R * V * FP32)
    log_softmax = p.alloc(R * V * FP32)
    p.free(contiguous)
    total_weight = p.alloc(FP32)
    p.free(cache)
    p.drop_output(shifted, True)
    forward = p.cut()
    ls_grad = p.nll_backward(R * V * FP32, log_softmax, labels, total_weight)
    zeros = p.alloc(T * V * FP32)
    p.free(ls_grad)
    cast_back = p.alloc(T * V * e) if e != FP32 else -1
    p.free(zeros)
    if adapted_head:
        p.free(p.alloc(T * V * e))  # MulBackward0's copy, through lora_b's backward
    p.free(cast_back)
    return p.done(forward, into_next_forward=True)


def chunked_loss(
    T: int, V: int, e: int, held: int = 0, head_grads: tuple[int, int] = (0, 0)
) -> tuple[Phase, Phase]:
    """torchtune's eager chunked loss (_chunked_loss)."""
    return _chunked_loss(T, V, e, held, head_grads).phases()


def _chunked_loss(
    T: int, V: int, e: int, held: int = 0, head_grads: tuple[int, int] = (0, 0)
) -> Programmed:
    """torchtune's CEWithChunkedOutputLoss, eager (torchtune
    modules/loss/ce_chunked_output_loss.py@1814feb17a90): the model's output is 8
    chunks of logits (modules/transformer.py ``chunked_output``: the LM head per
    ``tensor_split`` piece, c = T/8 rows each, all made before the loss), then per
    chunk ``logits.float()`` (c·V·4, freed when compute_cross_entropy returns), its
    labels (c int64) and the log-softmax (c·V·4, saved); the recipe deletes the logits
    before backward (the labels' chunks are made first, a list comprehension before the
    loop). Chunks are laid out at the timeline's sizes: equal, T·V·4 // 8
    for each upcast, ceil(T/8)·V·4 for each gradient.

    Backward: autograd runs the ready node created last first (the chunks' losses are
    summed in order), so the chunks go from the last: nll_loss's and log_softmax's
    gradients, that chunk's saved tensors freed, the cast back to e (c·V·e) held
    until every chunk is done (the head's matmul backward of each piece comes after
    all the loss's nodes; measured on the CPU). Then the head's pieces (_head_pieces),
    ``head_grads`` their gradients' sizes (Loss.chunked_head_grads)."""
    p = _Program()
    cache = p.held_cache(held)
    pieces = [p.alloc(_share(T * V * e, i)) for i in range(CHUNKS)]
    rows = -(-T // CHUNKS)
    upcast_bytes = T * V * FP32 // CHUNKS if e != FP32 else 0
    labels = [p.alloc(_share(T * INDEX_BYTES, i)) for i in range(CHUNKS)]
    saved: list[tuple[int, int]] = []
    total_weight = -1
    for i in range(CHUNKS):
        upcast = p.alloc(upcast_bytes)
        log_softmax = p.alloc(_share(T * V * FP32, i))
        if i == 0:  # the saved item's scalar: the first chunk's nll_loss total_weight
            total_weight = p.alloc(FP32)
        p.free(upcast)
        saved.append((labels[i], log_softmax))
    # the recipe's ``del logits``: a list frees its items from the last (CPython)
    p.free(*reversed(pieces), cache)
    forward = p.cut()
    grads: list[int] = []
    for chunk_labels, log_softmax in reversed(saved):
        ls_grad = p.nll_backward(rows * V * FP32, log_softmax, chunk_labels)
        if e != FP32:
            grads.append(p.alloc(rows * V * e))
            p.free(ls_grad)
        else:
            grads.append(ls_grad)
    p.free(total_weight)
    _head_pieces(p, grads, *head_grads)
    return p.done(forward)


def _head_pieces(p: _Program, grads: list[int], weight_grad: int, input_grad: int) -> None:
    """The LM head's backward per piece, after the loss's nodes, from the last piece
    (``grads``: the logits' gradients in that order): its weight's gradient and its
    input's, the piece's logit gradient freed. Autograd's input buffer takes the first
    weight gradient as it is (a transposed view, whose base it keeps), adds the second
    out of place (the old, the new and the sum live at once) and every later one in
    place (pytorch/pytorch torch/csrc/autograd/input_buffer.cpp ``accumulate``; measured
    with torch.profiler's allocator events, Loss.chunked_head_backward). The sum and the
    input gradients are freed at the end: the timeline counts the head's gradient and
    the final norm's backward from the next moment. A frozen head (``weight_grad`` 0)
    is left out: its pieces hold less than the loss's backward."""
    if not weight_grad:
        p.free(*grads)
        return
    buffer = -1
    inputs: list[int] = []
    for k, grad in enumerate(grads):
        piece = p.alloc(weight_grad)
        inputs.append(p.alloc(input_grad))
        p.free(grad)
        if k == 0:
            buffer = piece
        elif k == 1:
            total = p.alloc(weight_grad)
            p.free(buffer, piece)
            buffer = total
        else:
            p.free(piece)
    p.free(buffer, *inputs)


def _share(total: int, i: int) -> int:
    """Chunk i's share of ``total`` bytes over the chunks (the last takes the rest)."""
    part = total // CHUNKS
    return part if i < CHUNKS - 1 else total - part * (CHUNKS - 1)


def peak_of(requests: Phase, sizes: list[int], live: int = 0, previous: int = 0) -> int:
    """The most bytes the requests hold at once beyond what was live before them
    (``sizes``: every allocation's bytes so far, extended here; ``live``: the program's
    own bytes still held from its earlier phase; ``previous``: the last pass's held
    output, live until the PREVIOUS request)."""
    live += previous
    best = live
    freed = set()
    for op, value in requests:
        if op == PREVIOUS:
            live -= previous
        elif op == "alloc":
            sizes.append(value)
            live += value
            best = max(best, live)
        elif value not in freed:
            freed.add(value)
            live -= sizes[value]
    return best


def head_requests(
    loss: str,
    T: int,
    R: int,
    V: int,
    e: int,
    log_softmax_bytes: int,
    saved_item: int,
    logits_forward: int,
    loss_backward: int,
    held: int = 0,
    output_held: int = 0,
    nll_cast: bool = False,
    fp32_output: bool = False,
    head_grads: tuple[int, int] = (0, 0),
    offloaded: bool = False,
    inputs: tuple[int, ...] = (),
    loop_shifted: bool = False,
    adapted_head: bool = False,
    keep_logits: bool = False,
    masked: bool = False,
    fp32_head: bool = False,
) -> HeadRequests | None:
    """The head's requests for ``loss`` (Loss.kind), or None where its order is not
    derived (fused, linear-chunked, log-probability tiles, compiled chunks: one buffer
    or tile at a time) or where the program does not lay
    out the timeline's own moments: its forward reaching ``logits_forward`` and the
    ``saved_item`` it keeps, its backward at most ``loss_backward`` beyond that item,
    and the item's bytes among what it keeps. ``output_held``: the model's output the
    loop holds past the backward (StepSizes.output_held): the program keeps its logits
    allocated, and they must be that many bytes; ``nll_cast``: the shifted loss under
    CUDA's autocast (shifted_loss_cuda_autocast); ``fp32_output``: with accelerate's fp32
    copy of the returned logits (shifted_loss_accelerate); ``head_grads``: the chunked
    head's weight and input gradients per piece (Loss.chunked_head_grads);
    ``offloaded``: the loss's saved tensors offloaded with the activations (the standard
    loss's program, _Program: none of them stays on the device past the forward, so
    the requests keep no saved item and the timeline's moments count it in), ``inputs``:
    what that forward names beyond ``held`` (_causal_lm_loss); ``loop_shifted``: the
    upcast-shifted loss is torchtune 0.1's loop's (_loop_shifted_loss), whose held shifted
    copy the timeline counts (StepSizes.loop_held), the last pass's live until PREVIOUS;
    ``adapted_head``: with LoRA on the LM head (its program only: elsewhere None);
    ``keep_logits`` and ``masked``: as _upcast_shifted_loss's; ``fp32_head``: as
    _causal_lm_loss's."""
    hold = output_held > 0
    # (offloaded: the standard and shifted losses', but CUDA autocast's shifted one)
    shifted = loss == "upcast-shifted" or (loss == "shifted" and not nll_cast)
    if offloaded and not (loss == "standard" or shifted):
        return None
    if loop_shifted:
        if loss != "upcast-shifted" or hold or (adapted_head and e == FP32):
            return None
        program = _loop_shifted_loss(T, R, V, e, held, adapted_head)
        return _loop_requests(program, saved_item, logits_forward, loss_backward)
    if adapted_head:
        return None
    if loss == "standard":
        program = _causal_lm_loss(T, V, e, held, hold, offloaded, inputs, fp32_head)
    elif loss == "shifted" and nll_cast:  # CUDA's autocast
        program = _shifted_cuda_program(T, R, V, e, held, hold, fp32_output, inputs, masked)
    elif loss == "shifted":
        program = _shifted_loss(
            T, R, V, e, log_softmax_bytes, held, hold, offloaded, inputs, masked
        )
    elif loss == "upcast-shifted":
        program = _upcast_shifted_loss(
            T, R, V, e, held, hold, offloaded, inputs, keep_logits, masked
        )
    elif loss == "chunked" and not hold:
        program = _chunked_loss(T, V, e, held, head_grads)
    else:
        return None
    on_device = 0 if offloaded else saved_item
    return _checked(program, on_device, logits_forward, loss_backward, output_held)


def _checked(
    program: Programmed, on_device: int, logits_forward: int, loss_backward: int, output_held: int
) -> HeadRequests | None:
    """head_requests' program where it lays out the timeline's moments (its docstring);
    ``on_device``: the saved item's bytes the requests keep (none when offloaded)."""
    forward, backward = program.phases()
    sizes: list[int] = []
    forward_peak = peak_of(forward, sizes)
    kept = sum(sizes) - sum(sizes[k] for op, k in forward if op == "free")
    backward_peak = peak_of(backward, sizes, kept)
    output = sizes[program.output] if program.output >= 0 else 0
    if (
        output != output_held
        or kept != on_device + output
        or forward_peak != logits_forward + on_device
        or backward_peak > loss_backward + on_device + output
    ):
        return None
    moments = (on_device, forward, backward, logits_forward, loss_backward)
    return HeadRequests(*moments, program.output, cache=program.cache)


def _loop_requests(
    program: Programmed, saved_item: int, logits_forward: int, loss_backward: int
) -> HeadRequests | None:
    """A loop-held program's requests (_loop_shifted_loss) where they lay out the
    timeline's moments: its forward, with the last pass's copy live until PREVIOUS,
    reaching ``logits_forward`` beyond the saved item and the held copy (which the
    timeline counts in StepSizes.loop_held), and its backward within
    ``loss_backward`` beyond them; else None."""
    forward, backward = program.phases()
    sizes: list[int] = []
    held = _size_of(forward, program.output)
    forward_peak = peak_of(forward, sizes, previous=held)
    kept = sum(sizes) - sum(sizes[k] for op, k in forward if op == "free")
    backward_peak = peak_of(backward, sizes, kept)
    if (
        kept != saved_item + held
        or forward_peak != logits_forward + saved_item + held
        or backward_peak > loss_backward + saved_item + held
    ):
        return None
    return HeadRequests(
        saved_item,
        forward,
        backward,
        logits_forward,
        loss_backward,
        program.output,
        True,
        program.cache,
    )


def _size_of(requests: Phase, key: int) -> int:
    """The bytes of the requests' ``key``-th allocation."""
    allocs = [value for op, value in requests if op == "alloc"]
    return allocs[key]
