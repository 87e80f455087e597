"""Run training steps on a real model and measure the last one."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from ftmem.arch import Architecture
from ftmem.distill import Teacher
from ftmem.measure import Measurement, Phase
from ftmem.measure.build import (
    Built,
    build_model,
    build_optimizer,
    galore_optimizer,
    galore_param_groups,
    logical_numel,
    unique_params,
)
from ftmem.measure.fused_loss import chunked_loss, fused_loss
from ftmem.measure.saved import (
    HostOffload,
    SavedRegistry,
    bytes_by_op,
    model_state_tensors,
    storage_bytes,
    walk_saved,
    weight_storage_ptrs,
)
from ftmem.measure.tracker import LiveBytesTracker
from ftmem.run import RunConfig

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

    def __init__(self, pre_existing: list[torch.Tensor]) -> None:
        self.tracker = LiveBytesTracker()
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


def _forward(
    model: torch.nn.Module,
    ids: torch.Tensor,
    dtype: torch.dtype | None,
    device_type: str,
    grad_accum: int = 1,
    loss_impl: str = "standard",
    teacher: torch.nn.Module | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    ctx = (
        torch.autocast(device_type=device_type, dtype=dtype)
        if dtype is not None
        else contextlib.nullcontext()
    )
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' renamed-API notices
        if teacher is not None:
            loss = _distillation_loss(model, teacher, ids)
        elif loss_impl == "fused":
            loss = fused_loss(model, ids)
        elif loss_impl == "chunked":
            loss = chunked_loss(model, ids)
        else:
            # an encoder-decoder reads ids and learns to produce its own labels
            out = model(input_ids=ids, labels=ids if labels is None else labels)
            loss = out.loss
            del out  # drop logits: only what autograd saved stays alive
        if grad_accum > 1:  # as HF Trainer scales each micro-batch's loss
            loss = loss / grad_accum
    return loss


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

    def __init__(self, model: torch.nn.Module, run: RunConfig, arch: Architecture) -> None:
        import torch.nn as nn

        self.optimizers: list[torch.optim.Optimizer] = []
        groups = galore_param_groups(model, arch, run) if run.method == "galore" else None
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


def optimizer_state_tensors(
    optimizer: torch.optim.Optimizer | _StepInBackward,
) -> list[torch.Tensor]:
    """Every tensor the optimizer keeps per parameter, including those held by helper
    objects in its state (GaLore's projector matrices)."""
    out: list[torch.Tensor] = []
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                out.append(value)
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
) -> Measurement:
    if fake:
        if teacher is not None:
            raise RuntimeError("--fake does not run a distillation teacher")
        return _run_fake(arch, run, steps=steps, seed=seed)
    return _run(arch, run, device=device, steps=steps, seed=seed, teacher=teacher)


FAKE_NOTES = (
    "fake: FakeTensorMode, no memory allocated. It sees every tensor PyTorch creates "
    "(weights, gradients, states, saved activations, temporaries) with real shapes and "
    "dtypes. It cannot see kernel-internal workspaces, the CUDA caching allocator's "
    "rounding and fragmentation, the CUDA context, or bitsandbytes (no fake kernels: "
    "qlora and 8-bit optimizers are refused).",
    "fake: the attention kernel chosen for fake tensors can differ from a real run: with "
    "GQA/MQA it repeats k and v per head, or falls back to the math path that keeps the "
    "s² scores, so attention activations of GQA models are an upper bound here.",
)


def _run_fake(arch: Architecture, run: RunConfig, *, steps: int, seed: int) -> Measurement:
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ftmem.measure.build import materialize_fake

    if run.method == "qlora" or "8bit" in run.optimizer:
        raise RuntimeError("--fake cannot run bitsandbytes (qlora, 8-bit optimizers)")
    built = build_model(arch, run, device="meta", seed=seed)
    with FakeTensorMode(allow_non_fake_inputs=True):
        materialize_fake(built.model)
        got = _run(arch, run, device="cpu", steps=steps, seed=seed, built=built)
    return dataclasses.replace(
        got, tracker="dispatch (fake tensors)", notes=(*got.notes, *FAKE_NOTES)
    )


def _tokens(vocab: int, shape: tuple[int, int], gen, fake: bool, dev) -> torch.Tensor:
    """Random token ids (fake mode takes no real generator: values do not matter there)."""
    if fake:
        return torch.randint(0, vocab, shape)
    return torch.randint(0, vocab, shape, generator=gen).to(dev)


def _run(
    arch: Architecture,
    run: RunConfig,
    *,
    device: str = "cpu",
    steps: int = 2,
    seed: int = 0,
    built: Built | None = None,
    teacher: Teacher | None = None,
) -> Measurement:
    fake = built is not None
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if run.optimizer in ("lion", "adamw-fp32"):
        raise RuntimeError(f"optimizer {run.optimizer!r} is not measurable here")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())

    if built is None:
        built = build_model(arch, run, device=str(dev), seed=seed)
    model = built.model
    notes = list(built.notes)
    teacher_model = _build_teacher(teacher, str(dev), seed) if teacher is not None else None
    optimizer = (
        _StepInBackward(model, run, arch)
        if run.optimizer_in_backward
        else build_optimizer(model, run, arch)
    )
    accum = run.grad_accum
    if steps == 1:
        notes.append("steps=1: the measured step creates the optimizer states (not steady state)")

    gen = torch.Generator().manual_seed(seed)
    ids = _tokens(arch.vocab_size, (run.batch_size, run.seq_len), gen, fake, dev)
    labels = None
    if arch.encoder_decoder:
        labels = _tokens(arch.vocab_size, (run.batch_size, run.decoder_len), gen, fake, dev)

    params = unique_params(model)
    weight_ptrs = weight_storage_ptrs(model)
    by_op: dict[str, int] = {}

    def forward() -> torch.Tensor:
        return _forward(
            model, ids, built.autocast_dtype, dev.type, accum, run.loss, teacher_model, labels
        )

    # warm-up steps: optimizer states get created
    for i in range(steps - 1):
        for micro in range(accum):
            loss = forward()
            if i == 0 and micro == 0:
                if run.grad_ckpt:
                    notes.append(
                        "grad_ckpt: activations_by_op not walked (unpacking would recompute)"
                    )
                else:
                    by_op = bytes_by_op(walk_saved(loss.grad_fn, weight_ptrs))
            loss.backward()
            del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()

    # -- the measured step ------------------------------------------------------------
    # the weights as they are now: bitsandbytes casts a 4-bit linear's bias at the first
    # forward and frees the old one, whose address a saved activation can then take
    weight_ptrs = weight_storage_ptrs(model)
    state_tensors = optimizer_state_tensors(optimizer)
    teacher_state = model_state_tensors(teacher_model) if teacher_model is not None else []
    inputs = [ids] if labels is None else [ids, labels]
    pre_existing = [*model_state_tensors(model), *teacher_state, *state_tensors, *inputs]
    meter: Any = _CudaMeter(dev) if dev.type == "cuda" else _CpuMeter(pre_existing)
    # hold no reference across the step: an optimizer that replaces a state tensor
    # (GaLore renewing its projectors) frees the old one, as in training
    del pre_existing, state_tensors, teacher_state
    with contextlib.ExitStack() as stack:
        # no cyclic GC inside the step: frees happen where refcounts drop, run after run
        if gc.isenabled():
            gc.disable()
            stack.callback(gc.enable)
        stack.enter_context(meter.active())
        baseline = meter.current()
        peaks = {"forward": 0, "backward": 0}
        for micro in range(accum):  # gradients of earlier micro-batches stay live
            last = micro == accum - 1
            registry = (
                HostOffload(weight_ptrs) if run.activation_offload else SavedRegistry(weight_ptrs)
            )
            before_forward = meter.current()
            meter.start_phase()
            with torch.autograd.graph.saved_tensors_hooks(registry.pack, registry.unpack):
                loss = forward()
            peaks["forward"] = max(peaks["forward"], meter.phase_peak())
            if last:
                forward_retained = meter.current() - before_forward
                # + tensors custom autograd Functions keep on ctx (bitsandbytes int8),
                # which the hooks never see; reading ctx attributes unpacks nothing
                stashed = {
                    s.ptr: s.nbytes
                    for s in walk_saved(loss.grad_fn, weight_ptrs, unpack=False)
                    if s.nbytes
                }
                activations = registry.nbytes + sum(
                    n for ptr, n in stashed.items() if ptr not in registry.live
                )
                if isinstance(registry, HostOffload):
                    notes.append(f"activation offload: {registry.host_bytes:,} B sent to host")
                if steps == 1 and not run.grad_ckpt:
                    by_op = bytes_by_op(walk_saved(loss.grad_fn, weight_ptrs))

            meter.start_phase()
            loss.backward()
            peaks["backward"] = max(peaks["backward"], meter.phase_peak())
            del loss
        grads = [p.grad for _, p in params if p.grad is not None]
        gradients = storage_bytes(grads)
        del grads

        meter.start_phase()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if run.method == "relora":
            # ReLoRA's periodic merge of the adapters into the base, between steps
            from peft import PeftModel

            assert isinstance(model, PeftModel)  # ReLoRA is measured as peft's LoRA
            with torch.no_grad():
                model.merge_adapter()
        peaks["optimizer"] = meter.phase_peak()

    state_tensors = optimizer_state_tensors(optimizer)
    peak_phase = max(PHASES, key=lambda ph: peaks[ph])
    models = [model] if teacher_model is None else [model, teacher_model]
    weights = storage_bytes([t for m in models for t in model_state_tensors(m, buffers=False)])
    all_weights = storage_bytes([t for m in models for t in model_state_tensors(m)])
    return Measurement(
        weights_bytes=weights,
        buffers_bytes=all_weights - weights,
        n_params=sum(logical_numel(p) for _, p in params),
        n_trainable_params=sum(logical_numel(p) for _, p in params if p.requires_grad),
        gradients_bytes=gradients,
        optimizer_states_bytes=storage_bytes(state_tensors),
        activations_bytes=activations,
        forward_retained_bytes=forward_retained,
        baseline_bytes=baseline,
        peak_allocated_bytes=peaks[peak_phase],
        peak_phase=peak_phase,
        phase_peaks=peaks,
        activations_by_op=by_op,
        device=str(dev),
        tracker=meter.name,
        attn_implementation=built.attn_implementation,
        notes=tuple(notes),
        **_versions(),
    )
