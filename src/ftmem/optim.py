"""Optimizer state and optimizer-step temporaries, per trainable tensor.

Each rule follows the optimizer's own code (torch 2.13, bitsandbytes 0.50,
transformers 5 Adafactor, torchao 0.18's low-bit AdamW in ``ftmem.torchao_optim``); the
accuracy suite measures them to the byte.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from math import prod

from ftmem.dtypes import ceil_div
from ftmem.methods import TensorGroup
from ftmem.run import RunConfig
from ftmem.torchao_optim import TORCHAO_OPTIMIZERS
from ftmem.torchao_optim import state_bytes as torchao_state_bytes
from ftmem.torchao_optim import step_temporary_bytes as torchao_step_bytes
from ftmem.versions import torch_adamw_denom_out_of_place

BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit state for tensors smaller than this
BNB_BLOCK = 256  # elements per fp32 absmax in blockwise 8-bit optimizer state
STEP_TENSOR_BYTES = 4  # torch Adam/AdamW keep `step` as an fp32 scalar tensor per param
# bitsandbytes' paged optimizers take the state buffers of a parameter of at least this many
# elements from CUDA managed memory, outside torch's allocator (bitsandbytes-foundation/
# bitsandbytes@95f9af30 bitsandbytes/optim/optimizer.py l.383 ``get_state_buffer``:
# ``if not self.is_paged or p.numel() < 1e5: return torch.zeros_like(...)`` else
# ``F.get_paged``, functional.py l.91-99: ``cget_managed_ptr`` = ``cudaMallocManaged(&ptr,
# bytes, cudaMemAttachHost)``, csrc/pythonInterface.cpp l.557-559; the same test in
# every release tag from 0.39.1, where paged optimizers arrived)
BNB_PAGED_MIN_NUMEL = 100_000
BNB_CODE_BOOK_BYTES = 256 * 4  # one 256-entry fp32 quantisation map per 8-bit state


@dataclass(frozen=True)
class BnbOptimizer:
    """A bitsandbytes optimizer as its memory sees it: ``states`` buffers per parameter
    (Optimizer2State: Adam's state1 and state2; Optimizer1State: Lion's state1), their
    bits (``optim_bits``) and whether they come from managed memory (``is_paged``)."""

    states: int
    bits: int
    paged: bool


# ftmem's --optimizer as bitsandbytes' classes (bitsandbytes@95f9af30 optim/adam.py,
# adamw.py, lion.py; Adam and AdamW keep the same states): AdamW / AdamW32bit (adamw.py l.9,
# l.126: optim_bits 32 l.18, l.172; is_paged=False l.21, l.138; fp32 state1/state2
# whatever the parameters' dtype, optimizer.py l.508-510; an int step l.506; one
# optimizer_update_32bit kernel per tensor l.549: no step temporaries), AdamW8bit / PagedAdamW8bit
# (PagedAdam8bit adam.py l.232), PagedAdamW / PagedAdamW32bit (PagedAdam l.179,
# PagedAdam32bit l.296), Lion / Lion32bit (lion.py l.8, l.99: optim_bits 32 l.15, l.136;
# is_paged=False l.18, l.108) and Lion8bit (l.55: 8 l.92, is_paged=False l.64), PagedLion /
# PagedLion32bit (l.143, l.228: optim_bits 32, is_paged=True l.183, l.265) and
# PagedLion8bit (l.187, is_paged=True l.224). ``lion-32bit`` is bitsandbytes' Lion (fp32
# state, its own kernel); ``lion`` is lion-pytorch's (the parameters' dtype, torch ops)
BNB_OPTIMIZERS = {
    "adamw-32bit": BnbOptimizer(2, 32, paged=False),
    "adamw-8bit": BnbOptimizer(2, 8, paged=False),
    "paged-adamw-8bit": BnbOptimizer(2, 8, paged=True),
    "paged-adamw": BnbOptimizer(2, 32, paged=True),
    "lion-32bit": BnbOptimizer(1, 32, paged=False),
    "lion-8bit": BnbOptimizer(1, 8, paged=False),
    "paged-lion": BnbOptimizer(1, 32, paged=True),
    "paged-lion-8bit": BnbOptimizer(1, 8, paged=True),
}
PAGED_OPTIMIZERS = frozenset(k for k, v in BNB_OPTIMIZERS.items() if v.paged)


def _adafactor_tensor_bytes(shape: tuple[int, ...]) -> int:
    # transformers Adafactor: factored second moment (row and column fp32 vectors) for
    # tensors of 2+ dims, a full fp32 second moment otherwise, plus an fp32 RMS scalar.
    if len(shape) >= 2:
        return 4 * (prod(shape[:-1]) + prod(shape[:-2]) * shape[-1]) + 4
    return 4 * prod(shape) + 4


def step_tensors_on_device(run: RunConfig) -> bool:
    """torch keeps Adam's `step` on the CPU unless fused/capturable; on the CPU it is local."""
    return run.device == "cpu" or run.optimizer_impl == "fused"


def galore_shapes(g: TensorGroup) -> tuple[int, int]:
    """(projected gradient, projector) elements of a GaLore-projected (out, in) weight
    (measured on galore_torch 1.0).

    galore_torch 1.0 ("std"): a tall gradient (out >= in) is projected on the right,
    (out, r), with an (r, in) projector; a wide one on the left, (r, in), with (out, r).
    """
    out_f, in_f = g.shape[-2], g.shape[-1]
    r, k = g.galore_rank, min(out_f, in_f)
    # an fp32 weight keeps a slice *view* of the SVD's square factor (U or Vh, k × k):
    # the whole factor stays alive; a 16-bit one gets a converted copy of the r rows
    projector = k * k if g.element_bytes == 4 else r * k
    return r * max(out_f, in_f), projector


def step_tensor_bytes(groups: Iterable[TensorGroup], run: RunConfig) -> int:
    """The per-tensor ``step`` scalars of torch Adam/AdamW held on the training device.

    Every rank keeps one per parameter tensor, sharded or not (galore_torch keeps a
    Python int). torchao's are ``torch.tensor(0.0)`` on the default device, the CPU."""
    if run.optimizer in TORCHAO_OPTIMIZERS and run.device == "cpu":
        return sum(STEP_TENSOR_BYTES * g.count for g in groups if g.trainable)
    if run.optimizer not in ("adamw", "adamw-fp32") or not step_tensors_on_device(run):
        return 0
    if run.method == "galore" or run.lora_fa:  # both count steps in a Python int
        return 0
    return sum(STEP_TENSOR_BYTES * g.count for g in groups if g.trainable)


def optimizer_state_bytes(groups: Iterable[TensorGroup], run: RunConfig) -> int:
    """Bytes of optimizer state held on the training device for the trainable tensors,
    paged ones (:func:`paged_state_bytes`) included."""
    total = 0
    any_8bit = False
    for g in groups:
        if not g.trainable or g.stateless:
            continue
        per, eight_bit = _tensor_state_bytes(g, run)
        total += per * g.count
        any_8bit = any_8bit or eight_bit
    if any_8bit:
        total += code_book_bytes(run)
    return total + step_tensor_bytes(groups, run)


def code_book_bytes(run: RunConfig) -> int:
    """bitsandbytes' shared quantisation maps of an 8-bit optimizer, once per run.

    ``fill_qmap`` makes the signed ``dynamic`` and the unsigned ``udynamic`` map on the
    CPU (optimizer.py l.157-159); Optimizer2State.init_state moves both to the
    parameter's device (l.515-516), Optimizer1State's only ``dynamic`` (l.686): Lion8bit
    holds one map on the GPU (its unused ``udynamic`` stays in host memory)."""
    opt = BNB_OPTIMIZERS.get(run.optimizer, BNB_OPTIMIZERS["adamw-8bit"])  # GaLore 8-bit
    return opt.states * BNB_CODE_BOOK_BYTES


def pages_states(g: TensorGroup, run: RunConfig) -> bool:
    """Whether bitsandbytes takes ``g``'s state buffers (``state1``, ``state2``) from
    managed memory: a paged optimizer on a CUDA device and a parameter of at least
    1e5 elements (BNB_PAGED_MIN_NUMEL; on the CPU bitsandbytes falls back to
    ``torch.zeros_like``, optimizer.py l.375-382). Its block scales (``absmax1/2``), the
    code books and the states of smaller parameters stay ``torch.zeros`` in torch's
    allocator."""
    return (
        run.optimizer in PAGED_OPTIMIZERS
        and run.device != "cpu"
        and g.trainable
        and g.numel >= BNB_PAGED_MIN_NUMEL
    )


def _paged_tensor_bytes(g: TensorGroup, run: RunConfig) -> int:
    """One tensor of ``g``'s state bytes in managed memory (0 where not paged)."""
    if not pages_states(g, run):
        return 0
    # 8-bit: uint8 state buffers (n >= 1e5 > min_8bit_size, so never fp32 here);
    # 32-bit (optim_bits 32): fp32 ones
    opt = BNB_OPTIMIZERS[run.optimizer]
    return opt.states * g.numel * (1 if opt.bits == 8 else 4)


def paged_state_bytes(groups: Iterable[TensorGroup], run: RunConfig) -> int:
    """Bytes of optimizer state in CUDA managed memory (bitsandbytes' paged optimizers):
    invisible to ``max_memory_allocated`` / ``max_memory_reserved``, resident on the GPU
    (in nvidia-smi's figure) once the step has touched them, moved to host RAM by the
    driver under memory pressure instead of failing."""
    return sum(_paged_tensor_bytes(g, run) * g.count for g in groups)


def allocator_state_bytes(groups: Iterable[TensorGroup], run: RunConfig) -> int:
    """Bytes of optimizer state in torch's allocator: all of it but the paged buffers."""
    return optimizer_state_bytes(groups, run) - paged_state_bytes(groups, run)


def state_bytes_per_tensor(groups: Iterable[TensorGroup], run: RunConfig) -> tuple[int, ...]:
    """Each trainable tensor's optimizer state bytes (all its state tensors), one entry
    per tensor in the groups' order: the allocator replay's shares of the states' sum
    (gpu.trace.plan_tensors). torch's Adam makes ``exp_avg`` and ``exp_avg_sq`` with
    ``torch.zeros_like(p, memory_format=torch.preserve_format)`` (torch/optim/adamw.py
    ``_init_group``, the same in v2.0.0 and 2.13): in the parameter's own dtype, so a
    bf16 embedding copy beside fp32 adapters has 2-byte states and they 4-byte ones.
    Paged buffers are left out (:func:`pages_states`): they are not the allocator's."""
    out: list[int] = []
    for g in groups:
        if g.trainable:
            own = _tensor_state_bytes(g, run)[0] - _paged_tensor_bytes(g, run)
            out += [own] * g.count
    return tuple(out)


def _tensor_state_bytes(g: TensorGroup, run: RunConfig) -> tuple[int, bool]:
    """One tensor of ``g``'s optimizer state bytes, and whether they are 8-bit blockwise
    (which adds bitsandbytes' shared code books once per run)."""
    opt = run.optimizer
    n, pb = g.numel, g.element_bytes
    projector = 0
    if g.galore_rank:
        # Adam's moments live in the projected space; the projector is kept in the
        # parameter's dtype
        n, projector = galore_shapes(g)
        projector *= pb
    eight_bit = False
    if opt in ("adamw", "adamw-fp32"):
        state = 4 if opt == "adamw-fp32" else pb
        per = 2 * n * state
    elif opt in BNB_OPTIMIZERS:
        per, eight_bit = _bnb_tensor_state_bytes(n, BNB_OPTIMIZERS[opt])
    elif opt in TORCHAO_OPTIMIZERS:
        per = torchao_state_bytes(n, pb, run)
    elif opt == "sgd":
        per = 0
    elif opt in ("sgd-momentum", "lion"):
        per = n * pb
    elif opt == "adafactor":
        per = _adafactor_tensor_bytes(g.shape)
    else:  # pragma: no cover - RunConfig validates the name
        raise AssertionError(opt)
    return per + projector + adalora_state_bytes(g, run), eight_bit


# AdaLoRA's RankAllocator.update_ipt, run by update_and_allocate after optimizer.step():
# ipt, exp_avg_ipt and exp_avg_unc = torch.zeros_like(p) for every parameter named
# "lora_" (lora_A, lora_E, lora_B; not ranknum), kept from the first step on (peft 0.21.2
# = huggingface/peft@5d602fdb src/peft/tuners/adalora/layer.py l.409-425). Each EMA update
# (beta·old + (1 - beta)·new) holds three temporaries of the parameter's size at once.
ADALORA_ALLOCATOR_STATES = 3
ADALORA_ALLOCATOR_TEMPORARIES = 3


def _adalora_scored(g: TensorGroup, run: RunConfig) -> bool:
    return (
        run.method == "adalora"
        and g.trainable
        and g.adapter
        and g.name.rsplit(".", 1)[-1] in ("lora_A", "lora_E", "lora_B")
    )


# AdaMSS's ASA (peft 0.21.2 tuners/adamss/layer.py update_importance, called by
# model.py update_and_allocate after optimizer.step() on every step of its warm-up):
# exp_avg_ipt and exp_avg_unc = zeros_like(p) for every adamss_A and adamss_B, reset to
# None only after a mask interval's pruning; each update holds |p · g|, the difference and
# its absolute value of one parameter at a time
ASA_STATES = 2
ASA_TEMPORARIES = 3


def _asa_scored(g: TensorGroup, run: RunConfig) -> bool:
    return run.method == "adamss" and bool(run.adamss_asa) and g.trainable and g.adapter


def adalora_state_bytes(g: TensorGroup, run: RunConfig) -> int:
    """One tensor's rank-allocator state: AdaLoRA's three tensors like the parameter,
    AdaMSS's ASA two."""
    if _asa_scored(g, run):
        return ASA_STATES * g.numel * g.element_bytes
    return ADALORA_ALLOCATOR_STATES * g.numel * g.element_bytes if _adalora_scored(g, run) else 0


def adalora_step_temporary_bytes(groups: Iterable[TensorGroup], run: RunConfig) -> int:
    """update_ipt's (AdaLoRA) or update_importance's (AdaMSS's ASA) temporaries after the
    optimizer step, one parameter at a time."""
    return max(
        (
            (ADALORA_ALLOCATOR_TEMPORARIES if _adalora_scored(g, run) else ASA_TEMPORARIES)
            * g.numel
            * g.element_bytes
            for g in groups
            if _adalora_scored(g, run) or _asa_scored(g, run)
        ),
        default=0,
    )


def _bnb_tensor_state_bytes(n: int, opt: BnbOptimizer) -> tuple[int, bool]:
    """A bitsandbytes optimizer's state bytes for a tensor of ``n`` values, and whether
    they are 8-bit: 32-bit (optim_bits 32, or fewer than min_8bit_size values): fp32
    buffers whatever the parameter's dtype, an int step, no block scales; 8-bit: uint8
    buffers and an fp32 absmax per 256 values each (Optimizer2State.init_state,
    optimizer.py l.492-532; Optimizer1State.init_state l.664-698: one buffer)."""
    if opt.bits == 32 or n < BNB_MIN_8BIT_SIZE:
        return opt.states * n * 4, False
    return opt.states * (n + 4 * ceil_div(n, BNB_BLOCK)), True


def optimizer_step_temporary_bytes(groups: Iterable[TensorGroup], run: RunConfig) -> int:
    """Transient bytes allocated inside ``optimizer.step()`` at its peak.

    torch AdamW, foreach (default on CUDA): ``_foreach_sqrt`` of all second moments of
    a dtype group lives until ``addcdiv_`` - one state-sized buffer per group; torch < 2.1
    adds a second one (its out-of-place denominator).
    for-loop (the CPU default): ``exp_avg_sq.sqrt() / bias_correction2_sqrt`` holds two
    temporaries of the largest tensor. fused and bitsandbytes kernels keep none. torchao's
    low-bit AdamW: one parameter's compiled step at a time (ftmem.torchao_optim).
    """
    trainable = [g for g in groups if g.trainable]
    if not trainable:
        return 0
    if run.method == "adalora":  # the rank allocator's update follows the step
        return max(
            _step_temporary_bytes(trainable, run), adalora_step_temporary_bytes(trainable, run)
        )
    return _step_temporary_bytes(trainable, run)


def _step_temporary_bytes(trainable: list[TensorGroup], run: RunConfig) -> int:
    if run.method == "galore":
        return _galore_step_temporary_bytes(trainable, run)
    if run.lora_fa:
        return lorafa_step_temporary_bytes(trainable, run)
    opt, impl = run.optimizer, run.optimizer_impl
    if opt in TORCHAO_OPTIMIZERS:
        return torchao_step_bytes(trainable, run)
    if opt in ("adamw", "adamw-fp32"):
        if impl == "fused":
            return 0
        if impl == "foreach":
            return sum(optimizer_step_temporary_tensors(trainable, run))
        state = lambda g: 4 if opt == "adamw-fp32" else g.element_bytes  # noqa: E731
        return max(2 * g.numel * state(g) for g in trainable)
    if opt == "adafactor":
        # per tensor: fp32 grad copy when 16-bit, update = grad**2 (+ eps), the
        # row/column outer product, and the fp32 parameter copy when 16-bit.
        return max((2 + 2 * (g.fmt != "fp32")) * 4 * g.numel for g in trainable)
    if opt == "lion":
        return max(2 * g.numel * g.element_bytes for g in trainable)
    return 0


def lorafa_step_temporary_bytes(trainable: list[TensorGroup], run: RunConfig) -> int:
    """peft's LoraFAOptimizer.step, one lora_B at a time (peft 0.21.2 optimizers/lorafa.py
    l.146-180): AA_T = A @ A.T and its pseudo-inverse (r × r, A's dtype), B's projected
    gradient grad_B (B's gradient dtype) and ``denom_B = exp_avg_sq_B.sqrt()``, all alive
    at ``B.addcdiv_``; any other trainable tensor (modules_to_save) steps the plain AdamW
    way, its ``denom`` one tensor of its size."""
    r = run.r

    def one(g: TensorGroup) -> int:
        if g.stateless:  # a lora_A that gets a gradient: only read, at its B
            return 0
        if g.name.endswith(".lora_B"):
            return 2 * g.numel * g.element_bytes + 2 * r * r * g.element_bytes
        return g.numel * g.element_bytes

    return max(one(g) for g in trainable)


def optimizer_step_temporary_tensors(
    groups: Iterable[TensorGroup], run: RunConfig
) -> tuple[int, ...]:
    """The temporaries alive at the step's peak, one per tensor, in the order they are
    made, where the optimizer makes one per parameter: torch's foreach AdamW; GaLore's
    SVD moment (:func:`_galore_step_tensors`); () for every other optimizer (its sum is
    then split by the replay, gpu.trace).

    ``_multi_tensor_adamw`` loops over (device, dtype) groups in the order their tensors
    first appear and, per group, makes ``exp_avg_sq_sqrt = torch._foreach_sqrt(...)`` (one
    state-sized tensor per parameter), divides and adds eps in place, and
    ``_foreach_addcdiv_``s it into the parameters. The list stays bound until the next
    group's ``_foreach_sqrt`` returns, so group i's square roots are made beside group
    i-1's: the peak is the largest S(i-1) + S(i), S a group's state bytes (torch 2.13
    torch/optim/adam.py ``_multi_tensor_adam``; measured on the CPU,
    tests/test_optim_foreach_groups.py). Before 2.1 (ftmem.versions) the denominator is a
    second list, ``denom = torch._foreach_add(exp_avg_sq_sqrt, eps)``, bound alike
    (pytorch/pytorch@c263bd43 = v2.0.0 torch/optim/adamw.py ``_multi_tensor_adamw``,
    non-capturable branch): group i's square roots are made beside group i-1's two
    lists (2·S(i-1) + S(i)), its denominators beside group i-1's denominators
    (S(i-1) + 2·S(i))."""
    if run.method == "galore":
        return _galore_step_tensors([g for g in groups if g.trainable], run)
    if run.optimizer not in ("adamw", "adamw-fp32"):
        return ()
    if run.optimizer_impl != "foreach" or run.lora_fa:  # (LoRA-FA: its own loop)
        return ()
    by_dtype: dict[str, list[int]] = {}  # bf16 and fp16 are groups of their own
    for g in groups:
        if g.trainable:
            fp32 = run.optimizer == "adamw-fp32"
            state = 4 if fp32 else g.element_bytes
            by_dtype.setdefault("fp32" if fp32 else g.fmt, []).extend([g.numel * state] * g.count)
    denom = torch_adamw_denom_out_of_place(run)
    best: list[int] = []
    previous: list[int] = []
    for current in by_dtype.values():
        if not denom:
            moments = [previous + current]
        else:  # the square roots' moment, then the denominators'
            moments = [previous + previous + current, previous + current + current]
        for live in moments:
            if sum(live) > sum(best):
                best = live
        previous = current
    return tuple(best)


def galore_step_moments(g: TensorGroup, run: RunConfig) -> tuple[int, int]:
    """(update, svd): the bytes one GaLore-projected tensor's step holds beyond its
    weight and full gradient at its two largest moments.

    The update (every step): galore_torch's GaLoreAdamW holds the projected gradient,
    ``exp_avg_sq.sqrt()`` and ``exp_avg / denom``, then projects the update back to the
    full shape and scales it (two full-size tensors) (jiaweizzhao/GaLore@2cc66f88
    galore_torch/adamw.py ``step``, projector.py ``project_back``). GaLoreAdamW8bit
    (galore_torch/adamw8bit.py ``step``, the same in v1.0) updates in place in
    bitsandbytes' kernel but copies: ``p.saved_data = p.data.clone()`` (a full weight,
    which replaces the weight when ``p.data`` is then bound to
    ``grad.clone()``), so beside the weight and full gradient it holds the projected
    gradient, its clone and the weight's clone; then ``p.grad = grad`` frees the full
    gradient and ``project_back`` makes its two full-size tensors: two projected
    tensors and one full-size tensor more than the weight and gradient at both moments.

    The SVD (when the projector is renewed: step 0 and every ``update_proj_gap``):
    ``get_orthogonal_matrix`` takes an fp32 copy of a 16-bit gradient and
    ``torch.linalg.svd(full_matrices=False)`` makes U (out × k), S and Vh (k × in) in
    fp32, k = min(out, in). On CUDA the solver works on its own column-major copy of
    that matrix: ``svd_cusolver`` passes ``cloneBatchedColumnMajor(A)`` to gesvdj
    (pytorch aten/src/ATen/native/cuda/linalg/BatchLinearAlgebraLib.cpp, every release
    since the gesvdj default) through the caching allocator. The CPU's LAPACK path makes
    the same copy inside the kernel, where the CPU measurement (a dispatch mode that
    sees op outputs) does not count it. cuSOLVER's workspace (``lwork`` from
    ``cusolverDn<t>gesvdj_bufferSize``, closed source) and LAPACK's are left out: no
    source sizes them.
    """
    pb = g.element_bytes
    low, _ = galore_shapes(g)
    if run.optimizer == "adamw-8bit":
        update = 2 * low * pb + g.numel * pb
    else:
        update = 3 * low * pb + 2 * g.numel * pb
    return update, sum(galore_svd_tensors(g, run))


def galore_svd_tensors(g: TensorGroup, run: RunConfig) -> tuple[int, ...]:
    """The SVD's tensors of a projected weight (:func:`galore_step_moments`), in the
    order they are requested: the fp32 copy of a 16-bit gradient, U, Vh and S (the
    op's outputs), then the solver's column-major copy of its input (CUDA only). Each
    is a request of its own to the caching allocator."""
    out_f, in_f = g.shape[-2], g.shape[-1]
    k = min(out_f, in_f)
    fp32_copy = g.numel * 4 if g.element_bytes != 4 else 0
    solver_copy = g.numel * 4 if run.device != "cpu" else 0
    sizes = (fp32_copy, 4 * out_f * k, 4 * k * in_f, 4 * k, solver_copy)
    return tuple(b for b in sizes if b)


def _galore_step_temporary_bytes(trainable: list[TensorGroup], run: RunConfig) -> int:
    """galore_torch's step, one tensor at a time in a Python loop (measured on the CPU;
    :func:`galore_step_moments`). The loop's variables still hold the previous
    tensor's denominator and update during the SVD. Other tensors: Adam's denominator
    and update. 8-bit states (bitsandbytes kernels) need no Adam temporaries.
    """
    eight_bit = run.optimizer == "adamw-8bit"
    update, svd, carry = 0, 0, 0
    for g in trainable:
        pb = g.element_bytes
        if not g.galore_rank:
            plain = 0 if eight_bit else 2 * g.numel * pb
            update, carry = max(update, plain), max(carry, plain)
            continue
        low, _ = galore_shapes(g)
        own_update, own_svd = galore_step_moments(g, run)
        svd = max(svd, own_svd)
        update = max(update, own_update)
        carry = max(carry, (g.numel + (0 if eight_bit else low)) * pb)
    if sum(g.count for g in trainable) == 1:
        carry = 0  # one tensor per optimizer (optimizer in backward): nothing carried
    return max(update, svd + carry if svd else 0)


def _galore_step_tensors(trainable: list[TensorGroup], run: RunConfig) -> tuple[int, ...]:
    """The SVD's moment one tensor at a time, when it is the step's largest
    (:func:`_galore_step_temporary_bytes`): what the loop's variables still hold of the
    tensor stepped before (its update and, with 32-bit moments, its denominator), then
    the SVD's own requests (:func:`galore_svd_tensors`); () otherwise."""
    eight_bit = run.optimizer == "adamw-8bit"
    carry: tuple[int, ...] = ()
    svd: tuple[int, ...] = ()
    for g in trainable:
        pb = g.element_bytes
        if not g.galore_rank:
            held: tuple[int, ...] = () if eight_bit else (g.numel * pb, g.numel * pb)
        else:
            low, _ = galore_shapes(g)
            held = (g.numel * pb,) if eight_bit else (g.numel * pb, low * pb)
            own = galore_svd_tensors(g, run)
            svd = own if sum(own) > sum(svd) else svd
        carry = held if sum(held) > sum(carry) else carry
    if sum(g.count for g in trainable) == 1:
        carry = ()
    tensors = (*carry, *svd)
    if not svd or sum(tensors) != _galore_step_temporary_bytes(trainable, run):
        return ()
    return tensors
