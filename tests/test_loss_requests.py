"""The LM head's and the loss's requests (ops/loss_requests.py) against PyTorch's own.

The truth: the loss's library code run on the CPU on a tiny head, every op output's
storage logged as it is allocated and freed (ftmem.measure.tracker.LiveBytesTracker
with an event log). Compared: the tensors that scale with the vocabulary (at least
4·V bytes: logits, their copies, log-softmaxes, gradients), sizes and order, the
forward's and the backward's apart. Smaller ones (labels, scalars, the head input's
gradient) are below the threshold; ops/loss_requests.py names the few it leaves out.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

from ftmem.measure.saved import HostOffload
from ftmem.measure.tracker import LiveBytesTracker, storage_key
from ftmem.ops import loss_requests

B, S, H, V = 2, 16, 16, 1000  # S a multiple of 8: torchtune's chunks are equal
T = B * S
THRESHOLD = 4 * V


def _measure(loss_of, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor):
    """(forward, backward) events of ``loss_of(hidden, weight, labels)`` and its
    backward, the storages that existed before left out."""
    events: list[tuple[str, int]] = []
    tracker = LiveBytesTracker(events)
    with tracker:
        tracker.track(hidden, weight, labels)
        before = len(events)
        loss = loss_of(hidden, weight, labels)
        split = len(events)
        loss.backward()
    return events[before:split], events[split:], before


def _vocabulary_sized(forward, backward, skip: int = 0):
    """The events of allocations of at least THRESHOLD bytes, renumbered in order;
    ``skip``: allocations numbered before these events (the tracked storages)."""
    number: dict[int, int] = {}
    count = skip
    phases = []
    for events in (forward, backward):
        out = []
        for kind, value in events:
            if kind == "alloc":
                if value >= THRESHOLD:
                    number[count] = len(number)
                    out.append(("alloc", value))
                count += 1
            elif kind == "free" and value in number:
                out.append(("free", number[value]))
        phases.append(out)
    return phases


def _inputs(dtype: torch.dtype):
    torch.manual_seed(0)
    hidden = torch.randn(B, S, H, dtype=dtype, requires_grad=True)  # the final norm's output
    weight = torch.randn(V, H, dtype=dtype)  # a frozen LM head (LoRA, QLoRA)
    labels = torch.randint(0, V, (B, S))
    return hidden, weight, labels


def _hf_step(hidden, weight, labels):
    """LlamaForCausalLM.forward's head and loss_function (transformers 5.24), its output
    dropped by HF Trainer's compute_loss, which returns the loss alone."""

    def model_forward():
        logits = F.linear(hidden, weight)
        return ForCausalLMLoss(logits, labels, V), logits

    loss, _ = model_forward()
    return loss


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_the_causal_lm_loss_requests_its_tensors_as_transformers_does(dtype):
    e = torch.finfo(dtype).bits // 8
    measured = _vocabulary_sized(*_measure(_hf_step, *_inputs(dtype))[:2], skip=3)
    forward, backward = loss_requests.causal_lm_loss(T, V, e)
    assert _vocabulary_sized(forward, backward) == measured
    # the hand derivation, bf16: logits, fp32 copy, fp32 log-softmax; both copies freed;
    # backward: nll's and log_softmax's fp32 gradients, the cast back to bf16
    if e == 2:
        assert measured[0] == [
            ("alloc", T * V * 2),
            ("alloc", T * V * 4),
            ("alloc", T * V * 4),
            ("free", 1),
            ("free", 0),
        ]
        assert measured[1] == [
            ("alloc", T * V * 4),
            ("alloc", T * V * 4),
            ("free", 3),
            ("free", 2),
            ("alloc", T * V * 2),
            ("free", 4),
            ("free", 5),
        ]


def _offloaded(loss_of):
    """``loss_of`` with every saved tensor but the weight sent to host memory and
    brought back by each node that reads it, as the measured step runs activation
    offload (ftmem.measure.saved.HostOffload: torch's save_on_cpu)."""

    def step(hidden, weight, labels):
        host = HostOffload({storage_key(weight)[0]})
        with torch.autograd.graph.saved_tensors_hooks(host.pack, host.unpack):
            return loss_of(hidden, weight, labels)

    return step


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_the_offloaded_causal_lm_loss_requests_its_tensors_as_save_on_cpu_does(dtype):
    """The same tensors as without offload; the saved log-softmax dies as the forward
    ends (its host copy is the graph's), and each of the backward's two nodes brings
    back its own copy, freed when the node returns."""
    e = torch.finfo(dtype).bits // 8
    measured = _vocabulary_sized(*_measure(_offloaded(_hf_step), *_inputs(dtype))[:2], skip=3)
    forward, backward = loss_requests.causal_lm_loss(T, V, e, offloaded=True)
    assert _vocabulary_sized(forward, backward) == measured
    # the hand derivation, bf16: logits, fp32 copy, fp32 log-softmax, all three freed;
    # backward: NllLossBackward0's copy of the log-softmax and its zeros, the copy
    # freed; LogSoftmaxBackward0's copy and its gradient, the copy and the zeros freed;
    # the cast back to bf16
    if e == 2:
        assert measured[0] == [
            ("alloc", T * V * 2),
            ("alloc", T * V * 4),
            ("alloc", T * V * 4),
            ("free", 2),
            ("free", 1),
            ("free", 0),
        ]
        assert measured[1] == [
            ("alloc", T * V * 4),
            ("alloc", T * V * 4),
            ("free", 3),
            ("alloc", T * V * 4),
            ("alloc", T * V * 4),
            ("free", 5),
            ("free", 4),
            ("alloc", T * V * 2),
            ("free", 6),
            ("free", 7),
        ]


def _qwen_step(autocast: bool):
    """Qwen-1's QWenLMHeadModel.forward (modeling_qwen.py@a6ca629 l.1125-1135): the
    shifted logits' contiguous copy and CrossEntropyLoss, no upcast of its own; under
    autocast (CPU's policy, bf16) cross_entropy takes an fp32 cast of the copy."""

    def step(hidden, weight, labels):
        def model_forward():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                lm_logits = F.linear(hidden, weight)
                shift_logits = lm_logits[..., :-1, :].contiguous()
                shift_labels = labels[..., 1:].contiguous()
                loss = torch.nn.CrossEntropyLoss()(shift_logits.view(-1, V), shift_labels.view(-1))
            return loss, lm_logits

        loss, _ = model_forward()
        return loss

    return step


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16", "autocast"])
def test_the_shifted_loss_requests_its_tensors_as_qwen1_does(autocast):
    measured = _vocabulary_sized(
        *_measure(_qwen_step(autocast), *_inputs(torch.bfloat16))[:2], skip=3
    )
    log_softmax_bytes = 4 if autocast else 2
    forward, backward = loss_requests.shifted_loss(T, T - B, V, 2, log_softmax_bytes)
    assert _vocabulary_sized(forward, backward) == measured
    R = T - B
    # the hand derivation's last two requests: the slice's zeros of the whole logits,
    # made after the shifted gradient (R·V in the log-softmax's dtype, then bf16)
    assert measured[1][-3][1] == T * V * 2
    assert measured[1][0] == ("alloc", R * V * log_softmax_bytes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_the_offloaded_upcast_shifted_loss_requests_its_tensors_as_save_on_cpu_does(dtype):
    """transformers < 4.46's loss under save_on_cpu: its tensors without offload, the
    saved log-softmax freed as the forward ends, each backward node's own copies."""
    e = torch.finfo(dtype).bits // 8
    R = T - B
    step = _offloaded(_legacy_llama_step(hold=False))
    measured = _vocabulary_sized(*_measure(step, *_inputs(dtype))[:2], skip=3)
    forward, backward = loss_requests.upcast_shifted_loss(T, R, V, e, offloaded=True)
    assert _vocabulary_sized(forward, backward) == measured
    if e == 2:
        # forward: bf16 logits, fp32 copy (the bf16 freed), shifted copy, log-softmax,
        # the log-softmax freed (its host copy is the graph's), the shifted copy, the logits
        assert measured[0] == [
            ("alloc", T * V * 2),
            ("alloc", T * V * 4),
            ("free", 0),
            ("alloc", R * V * 4),
            ("alloc", R * V * 4),
            ("free", 3),
            ("free", 2),
            ("free", 1),
        ]
        # backward: NllLossBackward0's copy and zeros, LogSoftmaxBackward0's copy and
        # gradient, the slice's zeros of the whole logits, the cast back
        assert measured[1] == [
            ("alloc", R * V * 4),
            ("alloc", R * V * 4),
            ("free", 4),
            ("alloc", R * V * 4),
            ("alloc", R * V * 4),
            ("free", 6),
            ("free", 5),
            ("alloc", T * V * 4),
            ("free", 7),
            ("alloc", T * V * 2),
            ("free", 8),
            ("free", 9),
        ]


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16", "cpu-autocast"])
def test_the_offloaded_shifted_loss_requests_its_tensors_as_save_on_cpu_does(autocast):
    R = T - B
    measured = _vocabulary_sized(
        *_measure(_offloaded(_qwen_step(autocast)), *_inputs(torch.bfloat16))[:2], skip=3
    )
    ls = 4 if autocast else 2
    forward, backward = loss_requests.shifted_loss(T, R, V, 2, ls, offloaded=True)
    assert _vocabulary_sized(forward, backward) == measured


def _qwen_step_cuda_autocast(hidden, weight, labels):
    """Qwen-1's loss lines as CUDA's autocast dispatches them, written out on the CPU
    (no CPU autocast: its policy differs). cross_entropy_loss has no AutocastCUDA
    kernel, so its composite runs (pytorch/pytorch aten/src/ATen/native/LossNLL.cpp
    cross_entropy_loss_symint): ``at::log_softmax(self, class_dim, self.scalar_type())``,
    whose fp32_set_opt_dtype policy leaves the explicit bf16 alone, then nll_loss_nd ->
    at::nll_loss, whose fp32 policy casts its input (aten/src/ATen/autocast_mode.cpp
    KERNEL_CUDA2(log_softmax, int, fp32_set_opt_dtype), KERNEL_CUDA(nll_loss, fp32));
    the head's matmul is bf16 already (lower_precision_fp, the weights bf16)."""

    def model_forward():
        lm_logits = F.linear(hidden, weight)
        shift_logits = lm_logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        log_probs = torch.log_softmax(shift_logits.view(-1, V), 1, dtype=shift_logits.dtype)
        loss = F.nll_loss(log_probs.float(), shift_labels.view(-1))
        return loss, lm_logits

    loss, _ = model_forward()
    return loss


def test_the_shifted_loss_under_cuda_autocast_requests_its_tensors_in_cuda_order():
    measured = _vocabulary_sized(
        *_measure(_qwen_step_cuda_autocast, *_inputs(torch.bfloat16))[:2], skip=3
    )
    R = T - B
    forward, backward = loss_requests.shifted_loss_cuda_autocast(T, R, V, 2)
    assert _vocabulary_sized(forward, backward) == measured
    # the hand derivation: logits, the shifted copy, the bf16 log-softmax, its fp32 cast
    # (both kept), the shifted copy freed at the return, the logits with the output
    assert measured[0] == [
        ("alloc", T * V * 2),
        ("alloc", R * V * 2),
        ("alloc", R * V * 2),
        ("alloc", R * V * 4),
        ("free", 1),
        ("free", 0),
    ]
    # nll's fp32 gradient, the saved cast released, the cast back, log-softmax's
    # gradient, the slice's zeros of the whole logits
    assert measured[1] == [
        ("alloc", R * V * 4),
        ("free", 3),
        ("alloc", R * V * 2),
        ("free", 4),
        ("alloc", R * V * 2),
        ("free", 5),
        ("free", 2),
        ("alloc", T * V * 2),
        ("free", 6),
        ("free", 7),
    ]


def _qwen_step_accelerate(hidden, weight, labels):
    """HF Trainer's compute_loss on a model prepared by accelerate under native autocast
    (huggingface/accelerate@8d1479def0bb = v0.24.1 src/accelerate/accelerator.py
    l.1389-1398: forward = convert_outputs_to_fp32(autocast(forward));
    utils/operations.py l.608-647: ``tensor.float()`` of every fp16/bf16 tensor of the
    output): Qwen-1's loss lines in CUDA's autocast order, then the returned logits cast
    to fp32 once the forward has returned; the model's own output dies with the call,
    the converted one when compute_loss returns the loss alone."""

    def converted_forward():
        loss, lm_logits = _qwen_forward_cuda_order(hidden, weight, labels)
        return loss, lm_logits.float()

    loss, _ = converted_forward()
    return loss


def _qwen_forward_cuda_order(hidden, weight, labels):
    lm_logits = F.linear(hidden, weight)
    shift_logits = lm_logits[..., :-1, :].contiguous()
    shift_labels = labels[..., 1:].contiguous()
    log_probs = torch.log_softmax(shift_logits.view(-1, V), 1, dtype=shift_logits.dtype)
    return F.nll_loss(log_probs.float(), shift_labels.view(-1)), lm_logits


def test_accelerate_casts_the_returned_logits_to_fp32_after_the_shifted_loss():
    measured = _vocabulary_sized(
        *_measure(_qwen_step_accelerate, *_inputs(torch.bfloat16))[:2], skip=3
    )
    R = T - B
    forward, backward = loss_requests.shifted_loss_accelerate(T, R, V, 2)
    assert _vocabulary_sized(forward, backward) == measured
    # the hand derivation: the CUDA-order loss (logits, shifted copy, bf16 log-softmax,
    # its fp32 cast; the copy freed at the return), then the logits' fp32 copy beside
    # them, the bf16 logits dropped with the model's output, the fp32 ones with
    # compute_loss's: the moment after the forward is 2·T·V + 4·T·V beyond the saved
    assert measured[0] == [
        ("alloc", T * V * 2),
        ("alloc", R * V * 2),
        ("alloc", R * V * 2),
        ("alloc", R * V * 4),
        ("free", 1),
        ("alloc", T * V * 4),
        ("free", 0),
        ("free", 4),
    ]
    # the backward is the CUDA-order loss's (numbering shifted by the copy)
    plain = loss_requests.shifted_loss_cuda_autocast(T, R, V, 2)[1]
    assert [op for op, _ in backward] == [op for op, _ in plain]


def _one_sequence(dtype: torch.dtype = torch.bfloat16):
    """The head's inputs for one sequence of T positions (the Qwen-1 README's batch 1)."""
    torch.manual_seed(0)
    hidden = torch.randn(1, T, H, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, H, dtype=dtype)
    return hidden, weight, torch.randint(0, V, (1, T))


def test_one_sequences_shifted_slice_is_not_copied():
    """``lm_logits[..., :-1, :]`` of a (1, T, V) tensor is contiguous (the size-1 batch
    dimension is skipped by is_contiguous), so ``.contiguous()`` returns it: the shifted
    loss makes no R·V copy, here nor in CUDA's order with accelerate's fp32 copy. The
    hand derivation, R = T − 1: the logits, the bf16 log-softmax, its fp32 cast; the
    logits' fp32 copy after the return, the bf16 logits dropped, then the copy; the
    backward as with a copy (SliceBackward0's zeros of the whole logits last)."""
    logits = torch.zeros(1, T, V)
    assert logits[..., :-1, :].contiguous().data_ptr() == logits.data_ptr()
    R = T - 1
    measured = _vocabulary_sized(*_measure(_qwen_step_accelerate, *_one_sequence())[:2], skip=3)
    forward, backward = loss_requests.shifted_loss_accelerate(T, R, V, 2)
    assert _vocabulary_sized(forward, backward) == measured
    assert measured[0] == [
        ("alloc", T * V * 2),
        ("alloc", R * V * 2),
        ("alloc", R * V * 4),
        ("alloc", T * V * 4),
        ("free", 0),
        ("free", 3),
    ]
    # the slice's zeros (#7) after the log-softmax's gradient (#6); both freed last
    assert measured[1][-3:] == [("alloc", T * V * 2), ("free", 6), ("free", 7)]


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16", "autocast"])
def test_one_sequences_shifted_loss_in_the_cpus_order(autocast):
    measured = _vocabulary_sized(*_measure(_qwen_step(autocast), *_one_sequence())[:2], skip=3)
    forward, backward = loss_requests.shifted_loss(T, T - 1, V, 2, 4 if autocast else 2)
    assert _vocabulary_sized(forward, backward) == measured
    # R·V·2 in forward: the bf16 log-softmax alone (none under autocast: fp32), no copy
    assert measured[0].count(("alloc", (T - 1) * V * 2)) == (0 if autocast else 1)


def test_the_timeline_counts_no_copy_for_one_sequence():
    """Loss.forward_transient of the shifted loss: the logits and the slice's copy at
    batch 2, the logits alone at batch 1 (CUDA's autocast: the log-softmax and its cast
    are the saved item), and the head's requests still lay out that moment."""
    from ftmem.api import run_config
    from ftmem.ops.loss import Loss
    from ftmem.presets import get_model
    from ftmem.step import step_parts

    arch = get_model("qwen1-1.8b")
    Vq = arch.vocab_size
    for batch, copy in ((1, 0), (2, (2 * 256 - 2) * Vq * 2)):
        run = run_config(
            method="lora",
            precision="bf16",
            autocast=True,
            adapter_dtype="fp32",
            loss="shifted",
            seq_len=256,
            batch_size=batch,
        )
        Tq = batch * 256
        assert Loss.forward_transient(arch, run, 2, Tq) == Tq * Vq * 2 + copy
        assert step_parts(arch, run).sizes.head.requests is not None


def _peak_beyond_forward(forward, backward, skip: int) -> int:
    """The backward's largest live total beyond what the forward left alive (its saved
    tensors), every storage counted (``skip``: the tracked storages, numbered first)."""
    sizes: dict[int, int] = {}
    live, count = 0, skip
    for kind, value in forward:
        if kind == "alloc":
            sizes[count], live, count = value, live + value, count + 1
        elif value in sizes:
            live -= sizes.pop(value)
    end_of_forward = peak = live
    for kind, value in backward:
        if kind == "alloc":
            sizes[count], live, count = value, live + value, count + 1
        elif value in sizes:
            live -= sizes.pop(value)
        peak = max(peak, live)
    return peak - end_of_forward


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16", "autocast"])
@pytest.mark.parametrize("batch", [B, 1])
def test_the_shifted_backward_moment_is_the_two_log_softmax_gradients(autocast, batch):
    """Loss.shifted_backward against the measured backward of GPT-2's and Qwen-1's loss
    (the slice's contiguous copy, CrossEntropyLoss; _qwen_step). Autograd's order:
    NllLossBackward0 makes its gradient (R·V·ℓ) beside the saved log-softmax and frees
    its labels; LogSoftmaxBackward0 makes the input gradient (R·V·ℓ), then releases the
    log-softmax (it saved it as ``result``); only then SliceBackward0 makes the zeros of
    the whole logits (T·V·e) beside the R·V·e shifted gradient. So the peak beyond the
    saved tensors is 2·R·V·ℓ, not R·V·e + T·V·e (b·V·e more, where ℓ = e), which the
    timeline counted before. The timeline keeps the labels to the top (R·8 over, b > 1:
    freed by NllLossBackward0 before the peak; a view of the batch's for one sequence)."""
    from ftmem.api import run_config
    from ftmem.ops.loss import Loss

    inputs, seq = (_inputs(torch.bfloat16), S) if batch == B else (_one_sequence(), T)
    forward, backward, skip = _measure(_qwen_step(autocast), *inputs)
    measured = _peak_beyond_forward(forward, backward, skip)
    run = run_config(
        method="lora",
        precision="bf16",
        autocast=autocast,
        loss="shifted",
        seq_len=seq,
        batch_size=batch,
        device="cpu",
    )
    R, ls = T - batch, 4 if autocast else 2
    assert measured == 2 * R * V * ls - Loss.shifted_labels(run)
    assert Loss.shifted_backward(run, V, 2, T) == 2 * R * V * ls


def test_the_accelerate_moment_is_modelled_where_the_trainer_converts_outputs():
    """Loss.fp32_output_moment: the shifted loss under CUDA's autocast on HF Trainer's
    path; none on the CPU (the measured suite's loop calls the model itself), without
    autocast (DeepSpeed's fp16/bf16 engines: accelerate sets no native_amp), with
    transformers' own loss (an equal moment already) or a loop of its own."""
    from ftmem.api import run_config
    from ftmem.ops.loss import Loss
    from ftmem.presets import get_model

    arch = get_model("qwen2.5-0.5b")
    Vq, n = arch.vocab_size, 256
    bf16 = {"precision": "bf16", "autocast": True, "loss": "shifted", "seq_len": n}
    cases = [
        ({**bf16, "device": "cuda"}, n * Vq * (2 + 4)),
        ({**bf16, "device": "cpu"}, 0),
        ({**bf16, "device": "cuda", "autocast": False}, 0),
        ({**bf16, "device": "cuda", "loss": "standard"}, 0),
        ({**bf16, "device": "cuda", "framework": "fsdp_qlora"}, 0),
    ]
    for settings, expected in cases:
        run = run_config(method="lora", **settings)
        assert Loss.fp32_output_moment(arch, run, 2, n) == expected, settings


def _legacy_llama_step(hold: bool):
    """transformers 4.40.2's LlamaForCausalLM.forward with labels
    (models/llama/modeling_llama.py:1230-1244, pretraining_tp 1): the logits upcast, a
    contiguous copy of the shifted ones, CrossEntropyLoss; the model returns the fp32
    logits. ``hold``: the loop keeps the output past the backward (fsdp_qlora's
    train.py@3616227:803-848: ``output = None`` after the optimizer step)."""

    def model_forward(hidden, weight, labels):
        logits = F.linear(hidden, weight)
        logits = logits.float()
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        loss_fct = torch.nn.CrossEntropyLoss()
        shift_logits = shift_logits.view(-1, V)
        shift_labels = shift_labels.view(-1)
        loss = loss_fct(shift_logits, shift_labels)
        return loss, logits

    held = []

    def step(hidden, weight, labels):
        loss, logits = model_forward(hidden, weight, labels)
        if hold:  # dropped after the measured window (the backward) ends
            held.append(logits)
        return loss

    return step


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("hold", [False, True], ids=["dropped", "held"])
def test_the_upcast_shifted_loss_requests_its_tensors_as_transformers_4_40_does(dtype, hold):
    e = torch.finfo(dtype).bits // 8
    measured = _vocabulary_sized(*_measure(_legacy_llama_step(hold), *_inputs(dtype))[:2], skip=3)
    R = T - B
    program = loss_requests._upcast_shifted_loss(T, R, V, e, hold=hold)
    assert _vocabulary_sized(*program.phases()) == measured
    if e == 2 and hold:
        # the hand derivation: bf16 logits, their fp32 copy (the bf16 ones freed as the
        # name is rebound), the shifted fp32 copy, the fp32 log-softmax; the shifted copy
        # freed at the return, the fp32 logits held (the program's output, number 1)
        assert measured[0] == [
            ("alloc", T * V * 2),
            ("alloc", T * V * 4),
            ("free", 0),
            ("alloc", R * V * 4),
            ("alloc", R * V * 4),
            ("free", 2),
        ]
        assert program.output == 1
        # backward: nll's and log-softmax's fp32 gradients, the slice's fp32 zeros of
        # the whole logits, the cast back to bf16
        assert measured[1] == [
            ("alloc", R * V * 4),
            ("alloc", R * V * 4),
            ("free", 4),
            ("free", 3),
            ("alloc", T * V * 4),
            ("free", 5),
            ("alloc", T * V * 2),
            ("free", 6),
            ("free", 7),
        ]


def test_one_sequences_upcast_slice_shares_the_fp32_logits_storage():
    """transformers < 4.46 upcasts before it slices (4.37.2 and 4.38.2
    models/llama/modeling_llama.py: ``logits = logits.float()`` l.1202 / l.1196, then
    ``logits[..., :-1, :].contiguous()`` and ``labels[..., 1:].contiguous()``; 4.45.2
    l.1219-1222 the same): for one sequence both slices are contiguous views, so
    ``contiguous()`` returns them; for two sequences both are copies."""
    for b, shared in ((1, True), (2, False)):
        logits = torch.zeros(b, S, V, dtype=torch.bfloat16).float()
        labels = torch.zeros(b, S, dtype=torch.int64)
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous()
        assert (shift_logits.untyped_storage().data_ptr() == logits.data_ptr()) is shared
        assert (shift_labels.untyped_storage().data_ptr() == labels.data_ptr()) is shared


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("hold", [False, True], ids=["dropped", "held"])
def test_one_sequences_upcast_shifted_loss_makes_no_shifted_copy(dtype, hold):
    e = torch.finfo(dtype).bits // 8
    R = T - 1
    step = _legacy_llama_step(hold)
    measured = _vocabulary_sized(*_measure(step, *_one_sequence(dtype))[:2], skip=3)
    program = loss_requests._upcast_shifted_loss(T, R, V, e, hold=hold)
    assert _vocabulary_sized(*program.phases()) == measured
    # the hand derivation (bf16): the logits, their fp32 copy (the bf16 ones freed as
    # the name is rebound), the fp32 log-softmax; no R·V·4 copy; the backward as at
    # batch 2: two fp32 gradients, the slice's fp32 zeros, the cast back
    logits = [("alloc", T * V * 2), ("alloc", T * V * 4), ("free", 0)] if e == 2 else []
    fp32_logits = 1 if e == 2 else 0  # the fp32 logits' number
    assert measured[0] == [
        *(logits or [("alloc", T * V * 4)]),
        ("alloc", R * V * 4),
        *([] if hold else [("free", fp32_logits)]),
    ]
    assert [v for op, v in measured[1] if op == "alloc"] == [
        R * V * 4,
        R * V * 4,
        T * V * 4,
        *([T * V * e] if e == 2 else []),
    ]


@pytest.mark.parametrize("framework", ["hf", "fsdp_qlora"])
def test_the_timeline_counts_no_upcast_shifted_copy_for_one_sequence(framework):
    """Loss.upcast_shifted_forward beyond the saved item: the fp32 logits beside the
    shifted copy, (T + R)·V·4 at batch 2; at batch 1 the copy is none, so the fp32
    logits alone, T·V·4 (the bf16 logits beside their fp32 copy, T·V·6, come before
    the saved log-softmax, R·V·4: 2·T·V beyond it, smaller). The head's requests (the
    measured program) still lay out that moment (else None)."""
    from ftmem.api import run_config
    from ftmem.ops.loss import Loss
    from ftmem.presets import get_model
    from ftmem.step import step_parts

    arch = get_model("qwen2.5-0.5b")
    Vq, n = arch.vocab_size, 256
    for batch in (1, 2):
        run = run_config(
            method="lora",
            precision="bf16",
            loss="upcast-shifted",
            framework=framework,
            seq_len=n,
            batch_size=batch,
        )
        Tq, Rq = batch * n, batch * (n - 1)
        expected = Tq * Vq * 4 if batch == 1 else (Tq + Rq) * Vq * 4
        assert Loss.forward_transient(arch, run, 2, Tq) == expected
        assert step_parts(arch, run).sizes.head.requests is not None


def _chunked_cross_entropy(logits, labels):
    """CEWithChunkedOutputLoss.forward (torchtune
    modules/loss/ce_chunked_output_loss.py@1814feb17a90), compute_cross_entropy inlined."""
    labels = [t.reshape(-1) for t in labels.chunk(8, dim=1)]
    logits = [piece.reshape(-1, V) for piece in logits]
    total = 0.0
    for piece, target in zip(logits, labels, strict=True):
        total += F.cross_entropy(piece.float(), target, ignore_index=-100, reduction="sum")
    return total / T


def _torchtune_step(hidden, weight, labels):
    """torchtune's recipe: the model's chunked output (modules/transformer.py
    chunked_output: the head per tensor_split piece), the loss, ``del logits``."""
    logits = [F.linear(chunk, weight) for chunk in hidden.tensor_split(8, dim=1)]
    loss = _chunked_cross_entropy(logits, labels)
    del logits
    return loss


def test_the_chunked_loss_requests_its_tensors_as_torchtune_does():
    measured = _vocabulary_sized(*_measure(_torchtune_step, *_inputs(torch.bfloat16))[:2], skip=3)
    forward, backward = loss_requests.chunked_loss(T, V, 2)
    assert _vocabulary_sized(forward, backward) == measured
    # backward from the last chunk; every chunk's bf16 gradient held to the end
    c = T // 8
    assert measured[1][:6] == [
        ("alloc", c * V * 4),
        ("alloc", c * V * 4),
        ("free", 24),
        ("free", 23),
        ("alloc", c * V * 2),
        ("free", 25),
    ]


def _torchtune_lora_output(hidden, weight, lora_a, lora_b, dropout: float = 0.05):
    """torchtune 0.1's LoRALinear.forward on the output (apply_lora_to_output;
    torchtune/modules/peft/lora.py@ff594c231: ``out = F.linear(x, self.weight)``,
    ``lora_out = self.lora_a(self.dropout(x))``, ``(self.alpha / self.rank) *
    self.lora_b(lora_out)``, ``out + lora_out``), alpha 2 · rank."""
    out = F.linear(hidden, weight)
    lora_out = F.linear(F.dropout(hidden, dropout), lora_a)
    lora_out = 2.0 * F.linear(lora_out, lora_b)
    return out + lora_out


def _torchtune_01_loop(
    hidden, weight, labels, passes: int, cuda_copy: bool, adapter: tuple | None = None
):
    """torchtune 0.1's LoRA recipe loop (pytorch/torchtune
    recipes/lora_finetune_single_device.py@ff594c231 train; the model ends in
    ``self.output(h).float()``, torchtune/modules/transformer.py@ff594c231), ``passes``
    micro-batches. ``cuda_copy``: CUDA's log_softmax kernel first copies its
    non-contiguous input (aten/src/ATen/native/cuda/SoftMax.cu host_softmax ``auto input
    = input_.contiguous();``), written out here (the CPU kernel and a dispatch mode do
    not show it); nothing saves the copy, as nothing saves the kernel's. Returns each
    pass's forward and backward events."""
    events: list[tuple[str, int]] = []
    tracker = LiveBytesTracker(events)
    marks = []
    with tracker:
        tracker.track(hidden, weight, labels)
        marks.append(len(events))
        logits = None
        for _ in range(passes):
            if adapter is None:
                logits = F.linear(hidden, weight).float()  # self._model(input_ids)
            else:
                logits = _torchtune_lora_output(hidden, weight, *adapter).float()
            logits = logits[..., :-1, :].contiguous()
            shifted_labels = labels[..., 1:].contiguous()
            logits = logits.transpose(1, 2)
            # (the copy an argument only: freed as log_softmax returns, as the kernel's)
            log_probs = torch.log_softmax(logits.contiguous() if cuda_copy else logits, 1)
            loss = F.nll_loss(log_probs, shifted_labels)
            del log_probs
            marks.append(len(events))
            loss.backward()
            marks.append(len(events))
    return [events[a:b] for a, b in itertools.pairwise(marks)], marks[0]


def _program_of_passes(
    passes: int, e: int, adapted_head: bool = False, rows: int = T - B
) -> list[list[tuple[str, int]]]:
    """``passes`` runs of the loop program, numbered as one sequence: each pass's
    ("previous", 0) frees the last pass's held copy (none in the first)."""
    program = loss_requests._loop_shifted_loss(T, rows, V, e, adapted_head=adapted_head)
    count = sum(op == "alloc" for op, _ in program.forward + program.backward)
    phases, held = [], -1
    for k in range(passes):
        for phase in program.phases():
            out = []
            for op, value in phase:
                if op == "previous":
                    out += [("free", held)] if held >= 0 else []
                else:
                    out.append((op, value + k * count) if op == "free" else (op, value))
            phases.append(out)
        held = program.output + k * count
    return phases


def _numbered(phases, skip: int):
    """The vocabulary-sized events of consecutive phases, renumbered in one sequence."""
    number: dict[int, int] = {}
    count = skip
    out = []
    for events in phases:
        kept = []
        for kind, value in events:
            if kind == "alloc":
                if value >= THRESHOLD:
                    number[count] = len(number)
                    kept.append(("alloc", value))
                count += 1
            elif kind == "free" and value in number:
                kept.append(("free", number[value]))
        out.append(kept)
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_torchtune_01s_loop_loss_requests_its_tensors_as_its_recipe_does(dtype):
    e = torch.finfo(dtype).bits // 8
    R = T - B
    phases, skip = _torchtune_01_loop(*_inputs(dtype), passes=2, cuda_copy=True)
    measured = _numbered(phases, skip)
    assert _numbered(_program_of_passes(2, e), 0) == measured
    if e == 2:
        # the hand derivation, the second pass (9 allocations a pass): bf16 logits (9),
        # their fp32 copy (10; the bf16 ones freed), the last pass's shifted copy (2)
        # freed as the model returns, this one's (11), the fp32 logits freed as the name
        # is rebound, CUDA's contiguous copy of the transposed input (12), the
        # log-softmax (13), the copy freed
        assert measured[2] == [
            ("alloc", T * V * 2),
            ("alloc", T * V * 4),
            ("free", 9),
            ("free", 2),
            ("alloc", R * V * 4),
            ("free", 10),
            ("alloc", R * V * 4),
            ("alloc", R * V * 4),
            ("free", 12),
        ]
        # backward: nll's and log-softmax's fp32 gradients, the slice's fp32 zeros of
        # the whole logits, the cast back; the shifted copy (11) stays with the loop
        assert measured[3] == [
            ("alloc", R * V * 4),
            ("alloc", R * V * 4),
            ("free", 14),
            ("free", 13),
            ("alloc", T * V * 4),
            ("free", 15),
            ("alloc", T * V * 2),
            ("free", 16),
            ("free", 17),
        ]


def test_one_sequences_loop_keeps_a_view_of_the_whole_fp32_logits():
    """torchtune 0.1's recipe lines (recipes/lora_finetune_single_device.py@ff594c231
    l.447-451) for one sequence: the slice of the fp32 logits is contiguous, so
    ``contiguous()`` returns it and the rebound name (then its transposed view) holds the
    fp32 logits' storage, T·V·4, into the next pass; for two sequences a copy of R rows."""
    for b in (1, 2):
        logits = torch.zeros(b, S, V, dtype=torch.bfloat16).float()  # self._model(...)
        storage = logits.untyped_storage().data_ptr()
        logits = logits[..., :-1, :].contiguous()
        logits = logits.transpose(1, 2)
        held = logits.untyped_storage()
        assert (held.data_ptr() == storage) is (b == 1)
        assert held.nbytes() == (b * S * V * 4 if b == 1 else b * (S - 1) * V * 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_one_sequences_loop_loss_requests_no_shifted_copy_and_holds_the_fp32_logits(dtype):
    e = torch.finfo(dtype).bits // 8
    R = T - 1
    phases, skip = _torchtune_01_loop(*_one_sequence(dtype), passes=2, cuda_copy=True)
    measured = _numbered(phases, skip)
    assert _numbered(_program_of_passes(2, e, rows=R), 0) == measured
    program = loss_requests._loop_shifted_loss(T, R, V, e)
    assert _size_of_alloc(program.forward, program.output) == T * V * 4
    # the hand derivation, the second pass (bf16, 8 allocations a pass): bf16 logits
    # (8), their fp32 copy (9; the bf16 ones freed), the last pass's fp32 logits (1)
    # freed as the model returns; no R·V·4 copy: CUDA's contiguous copy of the
    # transposed input (10), the log-softmax (11), the copy freed; the fp32 logits (9)
    # stay with the loop through the backward
    if e == 2:
        assert measured[2] == [
            ("alloc", T * V * 2),
            ("alloc", T * V * 4),
            ("free", 8),
            ("free", 1),
            ("alloc", R * V * 4),
            ("alloc", R * V * 4),
            ("free", 10),
        ]
        assert 9 not in [v for op, v in measured[3] if op == "free"]


def _size_of_alloc(requests, key: int) -> int:
    return [v for op, v in requests if op == "alloc"][key]


def test_one_sequences_loop_holds_the_fp32_logits_in_the_timeline():
    """The timeline's held bytes (Loss.loop_shifted_copy): R·V·4 at batch 2, the whole
    fp32 logits T·V·4 at batch 1; the head's requests (checked against the timeline's
    moments and held bytes, _loop_requests) still lay them out, and the replay reaches
    the timeline's peak."""
    from ftmem.api import run_config
    from ftmem.estimate import _tensors
    from ftmem.gpu.trace import step_events
    from ftmem.ops.loss import Loss
    from ftmem.phases import find_peak
    from ftmem.presets import get_model
    from ftmem.step import step_parts
    from tests.test_gpu_trace import replay_live

    arch = get_model("qwen2.5-0.5b")
    Vq, n = arch.vocab_size, 256
    for batch, precision in itertools.product((1, 2), ("bf16", "fp32")):
        run = run_config(
            method="lora",
            precision=precision,
            loss="upcast-shifted",
            framework="torchtune",
            seq_len=n,
            batch_size=batch,
        )
        Tq = batch * n
        expected = Tq * Vq * 4 if batch == 1 else (Tq - batch) * Vq * 4
        assert Loss.loop_shifted_copy(run, Vq, Tq) == expected
        parts = step_parts(arch, run)
        assert parts.sizes.head.requests is not None
        best, _ = replay_live(step_events(parts.sizes, _tensors(parts, parts.sizes)))
        assert best == find_peak(parts.sizes).at_peak.total


def test_torchtune_01s_loop_loss_on_a_lora_output_requests_its_tensors_as_the_recipe_does():
    # rank 1: lora_b's weight gradient (V·r·2 bytes) stays below the threshold, as the
    # program leaves the adapters' gradients to the timeline's gradients
    hidden, weight, labels = _inputs(torch.bfloat16)
    torch.manual_seed(1)
    lora_a = torch.randn(1, H, dtype=torch.bfloat16, requires_grad=True)
    lora_b = torch.randn(V, 1, dtype=torch.bfloat16, requires_grad=True)
    phases, skip = _torchtune_01_loop(
        hidden, weight, labels, passes=2, cuda_copy=True, adapter=(lora_a, lora_b)
    )
    measured = _numbered(phases, skip)
    assert _numbered(_program_of_passes(2, 2, adapted_head=True), 0) == measured
    # the hand derivation, the first pass: the base logits, lora_b's output, its scaled
    # copy (lora_b's freed: the scalar product keeps nothing), the sum (the operands
    # freed), the sum's fp32 cast; backward, its end:
    assert measured[0][:8] == [
        ("alloc", T * V * 2),
        ("alloc", T * V * 2),
        ("alloc", T * V * 2),
        ("free", 1),
        ("alloc", T * V * 2),
        ("free", 0),
        ("free", 2),
        ("alloc", T * V * 4),
    ]
    assert measured[1][-5:] == [
        ("alloc", T * V * 2),  # the cast back: the sum's gradient (11)
        ("free", 10),  # the slice's zeros
        ("alloc", T * V * 2),  # MulBackward0's scaled copy (12)
        ("free", 12),  # after lora_b's backward
        ("free", 11),  # after the base matmul's
    ]


def test_the_log_softmax_of_the_transposed_logits_is_contiguous_so_nll_copies_nothing():
    """The copy the loop program counts is the kernel's alone: log_softmax's structured
    meta makes a contiguous output whatever its input's strides (the same meta on every
    device), so nll_loss_nd's ``input_.contiguous()`` before its 4-D view copies nothing
    (pytorch/pytorch aten/src/ATen/native/LossNLL.cpp nll_loss_nd_symint)."""
    logits = torch.randn(B, S - 1, V).transpose(1, 2)
    assert not logits.is_contiguous()
    assert torch.log_softmax(logits, 1).is_contiguous()
    phases, skip = _torchtune_01_loop(*_inputs(torch.bfloat16), passes=1, cuda_copy=False)
    forward = _numbered(phases, skip)[0]
    R = T - B
    assert [v for op, v in forward if op == "alloc"] == [T * V * 2, T * V * 4, R * V * 4, R * V * 4]


def _profiled_backward(loss_of, hidden, weight, labels) -> list[int]:
    """The backward's allocations and frees of at least THRESHOLD bytes as signed sizes,
    read from the CPU allocator by torch.profiler: no dispatch mode runs, so autograd's
    input buffer adds in place where it may (a mode keeps a second reference to every
    op output)."""
    from torch.profiler import ProfilerActivity, profile

    loss = loss_of(hidden, weight, labels)
    # oneDNN's bf16 GEMM on CPUs with avx512_bf16 or AMX packs its operands in scratch
    # buffers from the same allocator (74 and 133 kB here, freed at once): not tensors,
    # so the backward runs on the native kernels, which allocate none
    with (
        torch.backends.mkldnn.flags(enabled=False),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        loss.backward()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    return [e.nbytes() for e in events if abs(e.nbytes()) >= THRESHOLD]


def _signed_backward(forward, backward) -> list[int]:
    """A program's backward as signed sizes of at least THRESHOLD bytes, without the
    frees of the forward's tensors (made before the profiler started, it sees none)."""
    made = sum(1 for op, _ in forward if op == "alloc")
    sizes: list[int] = []
    out = []
    for op, value in backward:
        if op == "alloc":
            sizes.append(value)
            out.append(value)
        elif value >= made:
            out.append(-sizes[value - made])
    return [x for x in out if abs(x) >= THRESHOLD]


def test_a_trained_chunked_head_sums_its_pieces_weight_gradients_as_autograd_does():
    """Each piece's weight gradient (V·H·2) goes to autograd's input buffer: the first
    as it is, the second added out of place (old, new and sum alive at once, 6 logit
    gradients still waiting), the later ones in place."""
    hidden, weight, labels = _inputs(torch.bfloat16)
    weight.requires_grad_(True)
    measured = _profiled_backward(_torchtune_step, hidden, weight, labels)
    c, W = T // 8, V * H * 2
    head_grads = (W, c * H * 2)  # each piece's input gradient: below the threshold
    program = _signed_backward(*loss_requests.chunked_loss(T, V, 2, head_grads=head_grads))
    # the program frees the sum at its end (the timeline counts the gradient from the
    # next moment); here it stays, as the weight's .grad
    assert program == [*measured, -W]
    # the hand derivation, from the first piece's weight gradient on
    pieces = measured[measured.index(W) :]
    assert pieces[:9] == [W, -c * V * 2, W, -c * V * 2, W, -W, -W, W, -c * V * 2]
    # at the second piece's sum: three weight-sized tensors beside 6 logit gradients
    live = [sum(measured[: i + 1]) for i in range(len(measured))]
    assert max(live) == 3 * W + 6 * c * V * 2


def test_under_a_dispatch_mode_every_sum_is_a_new_tensor():
    """ftmem's CPU tracker (a TorchDispatchMode) sees every later sum out of place too:
    the second piece stays the largest moment (the most logit gradients left), so the
    accuracy cases' peak is the same as without a mode."""
    hidden, weight, labels = _inputs(torch.bfloat16)
    weight.requires_grad_(True)
    backward = _measure(_torchtune_step, hidden, weight, labels)[1]
    W = V * H * 2
    sizes = [v for op, v in backward if op == "alloc" and v == W]
    assert len(sizes) == 8 + 7  # the pieces' gradients and a new sum for each but the first


LOSSES = [
    ({"loss": "standard"}, True),
    ({"loss": "standard", "precision": "fp32"}, True),
    ({"loss": "shifted"}, True),
    ({"loss": "shifted", "precision": "bf16", "autocast": True, "device": "cpu"}, True),
    ({"loss": "shifted", "precision": "bf16", "autocast": True, "device": "cuda"}, True),
    ({"loss": "upcast-shifted"}, True),
    ({"loss": "upcast-shifted", "precision": "fp32"}, True),
    ({"loss": "upcast-shifted", "precision": "bf16-mixed"}, True),
    ({"loss": "upcast-shifted", "framework": "fsdp_qlora"}, True),  # the output held
    # torchtune 0.1's loop: its shifted copy held into the next forward
    ({"loss": "upcast-shifted", "framework": "torchtune"}, True),
    ({"loss": "upcast-shifted", "framework": "torchtune", "precision": "fp32"}, True),
    ({"loss": "standard", "framework": "fsdp_qlora"}, True),
    ({"loss": "chunked"}, True),
    # the tied weight's LM-head part held in autograd's buffer until the embedding's
    ({"loss": "chunked", "optimizer_in_backward": True}, True),
    ({"loss": "standard", "optimizer_in_backward": True}, True),
    ({"loss": "chunked", "compile": True, "framework": "torchtune"}, False),  # one kernel
    ({"loss": "fused"}, False),
    ({"loss": "linear-chunked"}, False),
    # activation offload: the loss's saved tensors on the host, its inputs named
    ({"loss": "standard", "activation_offload": True}, True),
    ({"loss": "standard", "precision": "fp32", "activation_offload": True}, True),
    ({"loss": "standard", "precision": "bf16-mixed", "activation_offload": True}, True),
    ({"loss": "standard", "framework": "fsdp_qlora", "activation_offload": True}, True),
    # torchtune's: the head side stays on the device, so the loss's requests as they are
    ({"loss": "chunked", "framework": "torchtune", "activation_offload": True}, True),
    # the shifted losses offloaded: their saved tensors on the host, their inputs named
    ({"loss": "shifted", "activation_offload": True}, True),
    ({"loss": "upcast-shifted", "activation_offload": True}, True),
    ({"loss": "upcast-shifted", "precision": "fp32", "activation_offload": True}, True),
    # CUDA autocast's shifted loss (its fp32 cast ordered apart): moments
    ({"loss": "shifted", "precision": "bf16-mixed", "activation_offload": True}, False),
]


@pytest.mark.parametrize(
    ("settings", "derived"),
    LOSSES,
    ids=lambda s: "-".join(map(str, s.values())) if isinstance(s, dict) else str(s),
)
@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_step_replays_the_head_tensor_by_tensor_at_the_timeline_peak(settings, derived, method):
    """The step's head carries its requests where the loss's order is derived, and the
    trace with them still reaches the timeline's peak exactly (tests/test_gpu_trace.py's
    check, over the losses)."""
    from ftmem.api import run_config
    from ftmem.estimate import _tensors
    from ftmem.gpu.trace import step_events
    from ftmem.phases import find_peak
    from ftmem.presets import get_model
    from ftmem.step import step_parts
    from tests.test_gpu_trace import replay_live

    run = run_config(method=method, seq_len=256, batch_size=2, **settings)
    parts = step_parts(get_model("qwen2.5-0.5b"), run)
    assert (parts.sizes.head.requests is not None) == derived
    best, _ = replay_live(step_events(parts.sizes, _tensors(parts, parts.sizes)))
    assert best == find_peak(parts.sizes).at_peak.total


@pytest.mark.parametrize(
    ("settings", "residual"),
    [
        ({}, 2),
        ({"precision": "fp32"}, 4),
        ({"precision": "bf16-mixed"}, 4),
        ({"grad_ckpt": True}, 2),
    ],
    ids=["bf16", "fp32", "bf16-mixed", "grad_ckpt"],
)
@pytest.mark.parametrize("method", ["lora", "full"])
def test_an_offloaded_run_requests_the_loss_tensors_of_the_run_without_offload(
    settings, residual, method
):
    """Activation offload moves the loss's saved tensors, not the tensors the loss
    makes: the offloaded step's head requests the plain step's, sizes and order (one
    program, ops.loss_requests._causal_lm_loss). Derived: the forward's from the
    logits on are the same; before them it also names the LM head's input (T·h in
    the residual dtype); the backward is the plain one with NllLossBackward0's copies
    of the log-softmax (T·V·4), the labels (T int64) and total_weight (fp32) before its
    zeros, and LogSoftmaxBackward0's copy of the log-softmax before its gradient."""
    from ftmem.api import run_config
    from ftmem.presets import get_model
    from ftmem.step import step_parts

    arch = get_model("qwen2.5-0.5b")
    S_, B_ = 256, 2
    T_, V_ = S_ * B_, arch.vocab_size

    def requests(offload: bool):
        run = run_config(
            method=method, seq_len=S_, batch_size=B_, activation_offload=offload, **settings
        )
        r = step_parts(arch, run).sizes.head.requests
        assert r is not None
        return r

    plain, offloaded = requests(False), requests(True)

    def allocs(phase):
        return [v for op, v in phase if op == "alloc"]

    e = 4 if settings.get("precision") == "fp32" else 2
    logits = T_ * V_ * e

    def split(sizes):
        at = sizes.index(logits)
        return sizes[:at], sizes[at:]

    before_plain, loss_plain = split(allocs(plain.forward))
    before_off, loss_off = split(allocs(offloaded.forward))
    assert loss_off == loss_plain
    # named through the forward: the LM head's input, and a trained fp32 head's 16-bit
    # copy in autocast's cache; before them at most that cache's weight copies (held to
    # the forward's end, as under checkpointing)
    h = arch.hidden_size
    head_copy = (
        [V_ * h * 2] if method == "full" and settings.get("precision") == "bf16-mixed" else []
    )
    named = [T_ * h * residual, *head_copy]
    assert before_off[len(before_off) - len(named) :] == named
    assert len(before_off) - len(named) <= 1 and len(before_plain) <= 1
    nll_zeros, *rest = allocs(plain.backward)
    assert allocs(offloaded.backward) == [T_ * V_ * 4, T_ * 8, 4, nll_zeros, T_ * V_ * 4, *rest]
    # the plain step keeps the loss's saved item among the head side's tensors; the
    # offloaded one keeps none of it on the device
    assert (plain.saved_item, offloaded.saved_item) == (T_ * V_ * 4 + T_ * 8 + 4, 0)


@pytest.mark.parametrize("loss", ["shifted", "upcast-shifted"])
def test_an_offloaded_shifted_loss_counts_its_saved_item_and_input_at_the_logits(loss):
    """Offloaded, the shifted losses' saved tensors leave the device as the forward ends,
    but at the loss they exist, with the LM head's input the forward still names: the
    logits' moment is the plain one (beyond the saved item) plus the item; the head's
    input (T·h·2, LoRA: the head frozen) is in both (step._named_head_input names it
    without offload too). Derived: the item is the log-softmax over R = T − b rows, the
    labels and total_weight."""
    from ftmem.api import run_config
    from ftmem.presets import get_model
    from ftmem.step import step_parts

    arch = get_model("qwen2.5-0.5b")
    S_, B_ = 256, 2
    T_, R_, V_, h = S_ * B_, (S_ - 1) * B_, arch.vocab_size, arch.hidden_size

    def head(offload: bool):
        run = run_config(
            method="lora", seq_len=S_, batch_size=B_, loss=loss, activation_offload=offload
        )
        return step_parts(arch, run).sizes.head

    ls = 2 if loss == "shifted" else 4  # bf16: the shifted loss's log-softmax in its dtype
    saved = R_ * V_ * ls + R_ * 8 + ls
    plain, offloaded = head(False), head(True)
    assert offloaded.logits_forward == plain.logits_forward + saved
    assert plain.requests is not None and ("alloc", T_ * h * 2) in plain.requests.forward
    requests = offloaded.requests
    assert requests is not None and requests.saved_item == 0


def _saved_storages(step, hidden, weight, labels) -> set[int]:
    """The data pointers of the storages the step's graph saves (saved-tensor hooks)."""
    seen: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(hidden, weight, labels)
    return seen


@pytest.mark.parametrize("b", [1, 2])
def test_one_sequences_shifted_losses_save_the_batchs_own_labels(b):
    """``labels[..., 1:].contiguous()`` of one sequence is a view of the batch's labels
    (the size-1 batch dimension is skipped by is_contiguous), and nll_loss saves that
    view: the saved labels are no new storage at batch 1 (Qwen-1's loss, transformers
    < 4.46's), a copy at batch 2. The programs request no R·8 at batch 1
    (Loss.shifted_labels)."""
    torch.manual_seed(0)
    hidden = torch.randn(b, S, H, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(V, H, dtype=torch.bfloat16)
    labels = torch.randint(0, V, (b, S))
    for step in (_qwen_step(False), _legacy_llama_step(False)):
        assert (labels.data_ptr() in _saved_storages(step, hidden, weight, labels)) is (b == 1)
    Tb, R = b * S, b * (S - 1)
    requests = (
        loss_requests._shifted_loss(Tb, R, V, 2, 2),
        loss_requests._shifted_cuda_program(Tb, R, V, 2, 0, False),
        loss_requests._upcast_shifted_loss(Tb, R, V, 2),
        loss_requests._loop_shifted_loss(Tb, R, V, 2),
    )
    for program in requests:
        allocs = [v for op, v in program.phases()[0] if op == "alloc"]
        assert allocs.count(R * 8) == (0 if b == 1 else 1)


@pytest.mark.parametrize("loss", ["shifted", "upcast-shifted"])
def test_the_timeline_keeps_no_labels_copy_for_one_sequence(loss):
    """The shifted losses' saved item: the labels' R·8 at batch 2, none at batch 1, and
    the head's requests (which check their kept bytes against that item) still lay out
    the timeline's moments."""
    from ftmem.api import run_config
    from ftmem.presets import get_model
    from ftmem.step import step_parts

    arch = get_model("qwen2.5-0.5b")
    n = 256
    items = {}
    for batch in (1, 2):
        run = run_config(method="lora", precision="bf16", loss=loss, seq_len=n, batch_size=batch)
        parts = step_parts(arch, run)
        assert parts.sizes.head.requests is not None
        (item,) = [s for s in parts.outer_items if s.what.startswith("loss:")]
        items[batch] = item.nbytes
    R1, V1 = n - 1, arch.vocab_size
    ls = items[2] // (2 * R1 * V1)  # the log-softmax's element size
    assert items[1] == R1 * V1 * ls + ls
    assert items[2] == 2 * R1 * V1 * ls + 2 * R1 * 8 + ls
