"""Make it fit: try the levers in order of what they cost, cheapest combinations first.

Each lever changes some settings of the run and costs something: step time, quality,
money. A candidate is a combination of lever choices; its penalty is the sum of theirs
(a rough rank of invasiveness, not a unit). Candidates are evaluated cheapest first,
and one that only adds changes to a candidate that already fits is skipped, so each
row of the plan is a different way to fit, least invasive first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ftmem.colossalai import COLOSSALAI, GEMINI, HYBRID_AMP, LOW_LEVEL_ZERO
from ftmem.errors import FtmemError
from ftmem.estimate import screening
from ftmem.profiles import profile_of
from ftmem.result import Estimate
from ftmem.run import ADAPTER_METHODS, RunConfig

Settings = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    lever: str
    what: str  # what the user changes, in words
    updates: tuple[tuple[str, Any], ...]  # the settings it sets
    penalty: int


@dataclass(frozen=True, slots=True)
class Lever:
    name: str
    cost: str  # rule of thumb, with its source
    options: Callable[[Settings], list[Change]]
    # every option only removes memory from the step, whatever else changes: where a
    # combination with it pulled too does not fit, the combination does not either
    only_lowers: bool = False


@dataclass(frozen=True, slots=True)
class Candidate:
    changes: tuple[Change, ...]
    estimate: Estimate

    @property
    def penalty(self) -> int:
        return sum(c.penalty for c in self.changes)


@dataclass(frozen=True, slots=True)
class Plan:
    baseline: Estimate
    fitting: tuple[Candidate, ...]  # least invasive first
    evaluated: int
    searched: int  # candidates in the search space


def _change(lever: str, what: str, penalty: int, **updates: Any) -> Change:
    return Change(lever, what, tuple(sorted(updates.items())), penalty)


def _run(s: Settings) -> RunConfig:
    """The run's settings as a RunConfig, to ask its properties (needs_reference...);
    unchecked: the baseline's estimate has checked them."""
    return RunConfig.model_construct(**_run_fields(s))


def _run_fields(s: Settings) -> Settings:
    return {k: v for k, v in s.items() if k in RunConfig.model_fields}


def _refused(s: Settings) -> bool:
    """Whether the run's settings fail RunConfig's checks (a lever's option the run's
    other settings exclude: the fused loss under a preference objective...)."""
    try:
        RunConfig.model_validate(_run_fields(s))
    except (ValueError, FtmemError):
        return True
    return False


def _one_gpu_only(s: Settings) -> bool:
    """A run ftmem models on one GPU only (estimate._one_gpu_only): a teacher's. Levers
    that spread it (ZeRO, offload) would be refused."""
    return s.get("teacher") is not None


# The trainers that can compute the reference's log-probabilities before training:
# TRL's DPOConfig.precompute_ref_log_probs (huggingface/trl trl/trainer/dpo_trainer.py
# @f2cd57710ae3 _precompute_ref_logps), which axolotl (precompute_ref_log_probs) and
# Unsloth (TRL's DPOTrainer, patched) pass on. LLaMA-Factory's CustomDPOTrainer sets
# precompute_ref_log_probs = False (src/llamafactory/train/dpo/trainer.py __init__);
# torchtune's DPO recipes run the reference in every step (recipes/full_dpo_distributed.py
# @01a134132814 setup loads it with _setup_reference_model).
PRECOMPUTES_REFERENCE = frozenset({"hf", "axolotl", "unsloth"})


def _precompute_ref(s: Settings) -> list[Change]:
    """Where the run has a reference in its step that precomputing removes (not grpo's:
    its completions are generated during training)."""
    if s.get("framework", "hf") not in PRECOMPUTES_REFERENCE or not _run(s).needs_reference:
        return []
    if _run({**s, "precompute_ref": True}).needs_reference:
        return []
    return [
        _change(
            "reference",
            "precompute the reference log-probabilities (--precompute-ref / TRL "
            "precompute_ref_log_probs)",
            0,
            precompute_ref=True,
        )
    ]


def _attention(s: Settings) -> list[Change]:
    if s.get("attn", "sdpa") != "eager":
        return []
    return [_change("attention", "sdpa attention instead of eager", 0, attn="sdpa")]


def _sequence_parallel(s: Settings) -> list[Change]:
    """ColossalAI with tensor parallelism and no sequence parallelism: split_gather splits
    the norms and the residual stream over the TP ranks (the shardformer policy decides
    whether the model takes it: a refused combination is skipped)."""
    if s.get("strategy") not in COLOSSALAI or (s.get("tp") or 1) < 2:
        return []
    if s.get("sp_mode") is not None or (s.get("cp") or 1) > 1:
        return []
    what = "split the sequence over the TP ranks (ColossalAI split_gather)"
    return [_change("sequence", what, 1, sp_mode="split_gather")]


def _checkpointing(s: Settings) -> list[Change]:
    if s.get("grad_ckpt"):
        return []
    return [_change("checkpointing", "gradient checkpointing", 2, grad_ckpt=True)]


def _micro_batch(s: Settings) -> list[Change]:
    b, ga = s.get("batch_size", 1), s.get("grad_accum", 1)
    out = []
    for d in range(b - 1, 0, -1):
        if b % d == 0:
            steps = ga * b // d
            penalty = 1 + (b // d).bit_length() - 2  # one per halving, rounded
            out.append(
                _change(
                    "micro-batch",
                    f"micro-batch {d} × {steps} accumulation steps (same effective batch {b * ga})",
                    max(1, penalty),
                    batch_size=d,
                    grad_accum=steps,
                )
            )
    return out


def _optimizer(s: Settings) -> list[Change]:
    if s.get("optimizer", "adamw") not in ("adamw", "adamw-fp32"):
        return []
    return [_change("optimizer", "8-bit AdamW (bitsandbytes)", 3, optimizer="adamw-8bit")]


# bitsandbytes' paged twin of an optimizer with the same states (ftmem.optim.BNB_OPTIMIZERS):
# torch AdamW keeps its states in the parameters' dtype, fp32 with fp32 weights, as
# PagedAdamW (optim_bits 32) does; bitsandbytes' Lion and Lion8bit keep PagedLion's states
PAGED_TWIN = {
    "adamw-fp32": "paged-adamw",
    "adamw-32bit": "paged-adamw",
    "adamw-8bit": "paged-adamw-8bit",
    "lion-32bit": "paged-lion",
    "lion-8bit": "paged-lion-8bit",
}
FP32_WEIGHTS = frozenset({"fp32", "bf16-mixed", "fp16-mixed"})
PAGED_METHODS = frozenset({"full", "freeze", "partial"})  # adapters are rarely 1e5+ values


def _paging(s: Settings) -> list[Change]:
    """The paged twin of the run's optimizer (after the optimizer lever): its states of
    tensors of 1e5+ values leave the allocator for CUDA managed memory, which the driver
    pages to host RAM when the GPU is full (ftmem.gpu.managed)."""
    opt = s.get("optimizer", "adamw")
    if opt == "adamw" and s.get("precision", "bf16") in FP32_WEIGHTS:
        opt = "adamw-fp32"
    if opt not in PAGED_TWIN or s.get("method", "full") not in PAGED_METHODS:
        return []
    twin = PAGED_TWIN[opt]
    what = f"bitsandbytes' paged optimizer ({twin}: states beyond the GPU's room in host RAM)"
    impl = {"optimizer_impl": "foreach"} if s.get("optimizer_impl") == "fused" else {}
    return [_change("paging", what, 1, optimizer=twin, **impl)]


def _loss(s: Settings) -> list[Change]:
    if s.get("loss", "standard") != "standard" or s.get("objective", "sft") != "sft":
        return []  # a preference objective is modelled with the standard loss only
    if profile_of(_run(s)).fused_loss_chunk_bytes is not None:
        return []  # the framework's forward fuses the loss already (Unsloth's)
    return [_change("loss", "Liger's fused linear cross-entropy (no full logits)", 1, loss="fused")]


def _activation_offload(s: Settings) -> list[Change]:
    if s.get("activation_offload"):
        return []
    return [
        _change("activations", "offload saved activations to host RAM", 4, activation_offload=True)
    ]


def _in_backward(s: Settings) -> list[Change]:
    single = (s.get("gpus") or 1) * (s.get("nodes") or 1) == 1
    if s.get("optimizer_in_backward") or s.get("grad_accum", 1) > 1 or not single:
        return []
    if s.get("method", "full") not in ("full", "freeze", "partial", "galore"):
        return []  # adapters' gradients are small: nothing to gain
    return [_change("in-backward", "optimizer step in backward (no gradient buffer)", 2,
                    optimizer_in_backward=True)]  # fmt: skip


LORA_RECIPE = {"lora_r": 16, "lora_targets": "all-linear"}  # QLoRA paper's choice of targets


def _method(s: Settings) -> list[Change]:
    method = s.get("method", "full")
    if method in ("full", "freeze"):
        # under peft the reference is the model with the adapter disabled: its frozen
        # copy goes (step.reference_weights)
        no_copy = ""
        if _run(s).needs_reference:
            no_copy = " (no frozen reference copy: the reference is the adapter disabled)"
        galore = []
        if s.get("optimizer", "adamw") in ("adamw", "adamw-8bit"):
            galore = [_change("method", "GaLore (rank 128): full-rank training, projected "
                              "Adam states", 5, method="galore")]  # fmt: skip
        return [
            *galore,
            _change(
                "method",
                f"LoRA r 16 on all linear layers instead of full{no_copy}",
                6,
                method="lora",
                **LORA_RECIPE,
            ),
            _change(
                "method",
                f"QLoRA (NF4 base) r 16 on all linear layers{no_copy}",
                8,
                method="qlora",
                **LORA_RECIPE,
            ),
        ]
    if method in ("lora", "rslora", "dora"):
        return [_change("method", "QLoRA: the same adapters on an NF4 base", 3, method="qlora")]
    return []


def _rank(s: Settings) -> list[Change]:
    if s.get("method") not in ADAPTER_METHODS:
        return []
    r = s.get("lora_r") or 8
    return [
        _change("rank", f"LoRA rank {r // f}", k, lora_r=r // f)
        for k, f in ((1, 2), (2, 4))
        if r // f >= 4
    ]


def _context(s: Settings) -> list[Change]:
    seq = s.get("seq_len", 512)
    return [
        _change("context", f"sequence length {seq // f}", p, seq_len=seq // f)
        for p, f in ((6, 2), (9, 4))
        if seq // f >= 128
    ]


def _more_gpus(s: Settings) -> list[Change]:
    if (s.get("gpus") or 1) > 1 or s.get("strategy") not in (None, "single") or _one_gpu_only(s):
        return []
    return [
        _change("gpus", f"{n} GPUs with ZeRO-3", 3 + k, gpus=n, strategy="zero3")
        for k, n in enumerate((2, 4, 8))
    ]


def _shard_weights(s: Settings) -> list[Change]:
    """ZeRO stages 1 and 2 keep the 16-bit weights whole on every GPU; the engine's next
    stage shards them too (not under a pipeline, which neither ZeRO-3 nor Gemini takes)."""
    strategy = s.get("strategy")
    if (s.get("pp") or 1) > 1 or _one_gpu_only(s):
        return []
    if strategy in ("zero1", "zero2"):
        return [_change("sharding", "shard the weights too (ZeRO-3)", 2, strategy="zero3")]
    if (
        strategy in LOW_LEVEL_ZERO
        and s.get("method", "full") not in ADAPTER_METHODS
        and (s.get("cp") or 1) == 1
    ):
        return [
            _change(
                "sharding",
                "shard the weights too (ColossalAI GeminiPlugin)",
                2,
                strategy=GEMINI,
            )
        ]
    return []


def _offload(s: Settings) -> list[Change]:
    if s.get("offload_optimizer") not in (None, "none") or _one_gpu_only(s):
        return []
    strategy = s.get("strategy") or "zero3"
    if strategy in ("single", "ddp"):
        strategy = "zero3"
    if strategy in COLOSSALAI:
        # zero_stage 0 has no cpu_offload: the stage that has, on the same layout
        strategy = "colossalai-zero1" if strategy == HYBRID_AMP else strategy
        where = "offload_optim_frac=1" if strategy == GEMINI else "cpu_offload"
        return [
            _change(
                "offload",
                f"optimizer on the CPU (ColossalAI {where})",
                7,
                strategy=strategy,
                offload_optimizer="cpu",
            )
        ]
    if strategy.startswith("fsdp"):
        return [
            _change("offload", "FSDP CPU offload", 7, offload_params="cpu", offload_optimizer="cpu")
        ]
    return [
        _change(
            "offload",
            "optimizer on the CPU (ZeRO-Offload)",
            7,
            strategy=strategy,
            offload_optimizer="cpu",
        )
    ]


LEVERS: tuple[Lever, ...] = (
    # first: no other lever changes what it reads, so its options are asked once
    Lever(
        "reference",
        "none on the result: the frozen reference's log-probabilities, computed once before "
        "training by a no-grad pass over the training set (TRL's _precompute_ref_logps) "
        "instead of in every step: no reference forward in the step, no frozen copy of the "
        "model; not with a reference that moves (TRL's sync_ref_model) or Liger's fused DPO "
        "loss",
        _precompute_ref,
        only_lowers=True,  # the reference's weights and forward go (step._with_reference)
    ),
    Lever("attention", "none: the same math in a fused kernel, usually faster", _attention),
    Lever(
        "sequence",
        "none on the result; a reduce-scatter and an all-gather in place of each all-reduce, "
        "the same volume (Korthikanti et al. 2022, arXiv:2205.05198)",
        _sequence_parallel,
    ),
    Lever(
        "loss",
        "none: the same loss, computed in chunks (Liger-Kernel, Hsu et al. 2024, "
        "arXiv:2410.10989); needs liger-kernel",
        _loss,
    ),
    Lever(
        "checkpointing",
        "≈ +33 % step time: one more forward per step (backward ≈ 2 forwards; Chen et al. "
        "2016, arXiv:1604.06174)",
        _checkpointing,
    ),
    Lever(
        "micro-batch",
        "same effective batch and result; smaller matmuls use the GPU less well",
        _micro_batch,
    ),
    Lever(
        "optimizer",
        "8-bit states matched 32-bit Adam in Dettmers et al. 2022 (arXiv:2110.02861); needs "
        "bitsandbytes",
        _optimizer,
    ),
    Lever(
        "paging",
        "none on the result; when the GPU has no room for all the states, the driver moves "
        "pages over PCIe in every step: slower steps; needs bitsandbytes",
        _paging,
    ),
    Lever(
        "method",
        "adapters only: close to full finetuning on many tasks, below it on some (Hu et al. "
        "2021, arXiv:2106.09685; Biderman et al. 2024, arXiv:2405.09673); QLoRA matched 16-bit "
        "LoRA (Dettmers et al. 2023, arXiv:2305.14314) with slower steps (dequantisation); "
        "GaLore keeps full-rank updates (Zhao et al. 2024, arXiv:2403.03507), an SVD every "
        "200 steps",
        _method,
    ),
    Lever("rank", "fewer adapter parameters: less capacity", _rank),
    Lever("context", "trains on shorter sequences: the model sees less context", _context),
    Lever(
        "sharding",
        "the weights gathered block by block every step: ≈ 1.5× ZeRO-2's communication "
        "(Rajbhandari et al. 2020)",
        _shard_weights,
    ),
    Lever(
        "gpus",
        "more GPUs; ZeRO-3 gathers every layer each step: ≈ 1.5× DDP's communication "
        "(Rajbhandari et al. 2020)",
        _more_gpus,
    ),
    Lever(
        "in-backward",
        "none on the result with one micro-batch per step; no gradient accumulation, "
        "gradient clipping per tensor only (torchtune's optimizer_in_bwd)",
        _in_backward,
    ),
    Lever(
        "activations",
        "host transfers of every activation, partly overlapped with compute: slower steps "
        "(torchtune's activation offloading)",
        _activation_offload,
    ),
    Lever(
        "offload",
        "optimizer step on the CPU and PCIe transfers: much slower steps (Ren et al. 2021, "
        "arXiv:2101.06840); needs host RAM",
        _offload,
    ),
)
LEVER_COST = {lever.name: lever.cost for lever in LEVERS}


def _combinations(settings: Settings, levers: tuple[Lever, ...]) -> Iterator[tuple[Change, ...]]:
    """Every combination of lever choices; a lever's options follow the earlier choices
    (the rank lever sees the method the method lever chose)."""
    if not levers:
        yield ()
        return
    first, rest = levers[0], levers[1:]
    for choice in [None, *first.options(settings)]:
        applied = settings if choice is None else {**settings, **dict(choice.updates)}
        for tail in _combinations(applied, rest):
            yield tail if choice is None else (choice, *tail)


def _apply(settings: Settings, changes: tuple[Change, ...]) -> Settings:
    out = dict(settings)
    for c in changes:
        out.update(c.updates)
    return out


def _dominated(combo: tuple[Change, ...], found: list[dict[str, int]]) -> bool:
    """Does ``combo`` pull, at least as hard, every lever of a way that already fits?
    (Within a lever a higher penalty is a stronger pull: fewer tokens, more GPUs.)"""
    pulls = {c.lever: c.penalty for c in combo}
    return any(all(pulls.get(lv, -1) >= p for lv, p in f.items()) for f in found)


def make_plan(
    estimate_with: Callable[[Settings], Estimate],
    settings: Settings,
    rows: int = 8,
    max_evaluations: int = 2000,
) -> Plan:
    """The least invasive ways to make ``settings`` fit, by ``estimate_with(settings)``.
    The candidates are estimated under ftmem.estimate.screening: the plan shows only
    those that fit, and a run that cannot fit needs no allocator replay to say so."""
    baseline = estimate_with(settings)
    if baseline.fits is None:
        raise FtmemError("`ftmem plan` needs a GPU: give --gpu or --gpu-memory.")
    with screening():
        return _search(estimate_with, settings, baseline, rows, max_evaluations)


def _search(
    estimate_with: Callable[[Settings], Estimate],
    settings: Settings,
    baseline: Estimate,
    rows: int,
    max_evaluations: int,
) -> Plan:
    combos = sorted(
        (c for c in _combinations(settings, LEVERS) if c),
        key=lambda c: (sum(x.penalty for x in c), len(c)),
    )
    if not baseline.fits and not _strongest_fits(estimate_with, settings):
        # every candidate needs at least what all levers at once need (each lever at its
        # strongest only lowers the peak): none fits, and none need be estimated
        return Plan(baseline, (), 2, len(combos) + 1)
    fitting: list[Candidate] = []
    if baseline.fits:
        fitting.append(Candidate((), baseline))
    found: list[dict[str, int]] = [{}] if baseline.fits else []
    estimates: dict[frozenset[tuple[str, Any]], Estimate | None] = {}
    evaluated = [1]  # the baseline; a combination the layout rules refuse is not counted

    def estimated(combo: tuple[Change, ...]) -> Estimate | None:
        """The combination's estimate, once; None where the layout rules refuse it."""
        key = frozenset((c.lever, c.updates) for c in combo)
        if key not in estimates:
            try:
                estimates[key] = estimate_with(_apply(settings, combo))
                evaluated[0] += 1
            except FtmemError:
                estimates[key] = None
        return estimates[key]

    for combo in combos:
        if len(fitting) >= rows or evaluated[0] >= max_evaluations:
            break
        if _dominated(combo, found):
            continue  # adds to, or pushes further, a way that already fits
        lowered = _with_only_lowering(settings, combo)
        if lowered != combo:
            # estimated first (it comes later in the order; then from here): where even
            # its allocated peak does not fit, neither does ``combo``'s
            low = estimated(lowered)
            if low is not None and _short_beyond_cache(low):
                continue
        est = estimated(combo)
        if est is not None and est.fits:
            fitting.append(Candidate(combo, est))
            found.append({c.lever: c.penalty for c in combo})
    if not fitting and evaluated[0] >= max_evaluations:
        # the search stopped before the first way that fits: one found from the other
        # end, every lever at once with each lever dropped again where the rest still fits
        greedy = _fewest_from_strongest(settings, estimated)
        fitting += [greedy] if greedy is not None else []
    return Plan(baseline, tuple(fitting), evaluated[0], len(combos) + 1)


def _strongest_changes(
    settings: Settings, accepted: Callable[[Settings], bool] | None = None
) -> tuple[Change, ...]:
    """Each lever's strongest option that ``accepted`` takes (default: RunConfig's
    checks), the levers in order, each seeing the earlier choices."""
    out: list[Change] = []
    current = dict(settings)
    for lever in LEVERS:
        for option in sorted(lever.options(current), key=lambda c: -c.penalty):
            pulled = {**current, **dict(option.updates)}
            if accepted(pulled) if accepted is not None else not _refused(pulled):
                out.append(option)
                current = pulled
                break
    return tuple(out)


def _fewest_from_strongest(
    settings: Settings, estimated: Callable[[tuple[Change, ...]], Estimate | None]
) -> Candidate | None:
    """A way that fits, from every lever at once: each change dropped in turn, most
    invasive first, where the others still fit without it (one estimate per change)."""
    combo = _strongest_changes(settings)
    est = estimated(combo)
    if est is None or not est.fits:
        return None
    for change in sorted(combo, key=lambda c: -c.penalty):
        fewer = tuple(c for c in combo if c is not change)
        if _refused(_apply(settings, fewer)):
            continue
        smaller = estimated(fewer)
        if smaller is not None and smaller.fits:
            combo, est = fewer, smaller
    return Candidate(combo, est)


def _short_beyond_cache(est: Estimate) -> bool:
    """Whether every run that allocates at least ``est``'s peak is short of the GPU: short
    by more than its allocator cache (reserved − allocated) and its block rounding. Both
    are the part of the total that can grow when a run asks for less (another sequence
    of blocks for the caching allocator to reuse or leave unsplit: ftmem.gpu.device), so
    a lever that only lowers the bytes asked for can still raise the total a little."""
    short = -(est.headroom_bytes or 0)
    m = est.memory
    return short > m.beyond_allocated.allocator_cache + m.at_peak.block_rounding


def _with_only_lowering(settings: Settings, combo: tuple[Change, ...]) -> tuple[Change, ...]:
    """``combo`` with every lever that only lowers memory (Lever.only_lowers) pulled too,
    in the order of LEVERS as _combinations builds it."""
    pulled = {c.lever for c in combo}
    if all(lever.name in pulled for lever in LEVERS if lever.only_lowers):
        return combo
    out: list[Change] = []
    current = dict(settings)
    for lever in LEVERS:
        choice = next((c for c in combo if c.lever == lever.name), None)
        if choice is None and lever.only_lowers:
            choice = max(lever.options(current), key=lambda c: c.penalty, default=None)
        if choice is not None:
            out.append(choice)
            current.update(choice.updates)
    return tuple(out)


def _strongest_fits(estimate_with: Callable[[Settings], Estimate], settings: Settings) -> bool:
    """Whether every lever at once fits. Where the estimator refuses that combination
    (a rule RunConfig's checks do not hold: grpo refuses activation offloading), each
    lever's strongest option it accepts, one estimate an option; True where even that
    is refused: the search then decides."""
    try:
        return bool(estimate_with(all_levers_at_once(settings)).fits)
    except FtmemError:
        pass

    def taken(s: Settings) -> bool:
        try:
            estimate_with(s)
        except FtmemError:
            return False
        return True

    try:
        return bool(estimate_with(all_levers_at_once(settings, taken)).fits)
    except FtmemError:
        return True


def all_levers_at_once(
    settings: Settings, accepted: Callable[[Settings], bool] | None = None
) -> Settings:
    """Every lever at its strongest that the run's settings accept (a combination with
    one they refuse is refused too): if this does not fit, nothing in the plan will.
    ``accepted`` judges a combination (default: RunConfig's checks)."""
    if accepted is None:
        checked = not _refused(settings)  # else the estimate's own reading decides

        def accepted(s: Settings) -> bool:
            return not (checked and _refused(s))

    return _apply(settings, _strongest_changes(settings, accepted))
