"""The Python API: ``ftmem.estimate``, ``ftmem.plan`` and ``ftmem.largest`` give what the
CLI's estimate, plan and max print (docs/api.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from ftmem.arch import Architecture, position_note
from ftmem.display import clipped
from ftmem.errors import InvalidInputError, SettingsError
from ftmem.estimate import estimate_step
from ftmem.framework_support import METHODS as FRAMEWORK_METHODS
from ftmem.framework_support import check_teacher_support
from ftmem.hardware import Gpu, custom_gpu
from ftmem.limits import GPU_MEMORY, GPUS, HOST_MEMORY, TOKENS, flag_as_count
from ftmem.methods import smallest_adapted_width
from ftmem.parallel import ParallelConfig
from ftmem.presets import get_gpu
from ftmem.quantized_base import on_quantized_base
from ftmem.result import Estimate
from ftmem.run import ADAPTER_METHODS, Method, RunConfig, settings_for, smallest_batch
from ftmem.seq2seq import SEQ2SEQ_METHODS
from ftmem.sources import config_of, quantized_base_of, resolve_model, source_notes
from ftmem.units import parse_size
from ftmem.validation import InvalidFields, Model

# Imported where used, not here: `ftmem estimate` needs none of them (CLI start-up time)
if TYPE_CHECKING:
    from collections.abc import Callable

    from ftmem.distill import Teacher
    from ftmem.measure.traced import Traced
    from ftmem.merge import MergeConfig
    from ftmem.plan import Plan
    from ftmem.search import Largest
    from ftmem.serve import ServeConfig

MAX_TOKENS_PER_STEP = TOKENS.limit
MAX_GPUS = GPUS.limit

M = TypeVar("M", bound=Model)
# estimate() settings that describe how the run is spread, not the run itself
PARALLEL_SETTINGS = (set(ParallelConfig.model_fields) - {"host_memory_bytes"}) | {"host_memory"}


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def _validated(model: type[M], settings: dict[str, Any]) -> M:
    """Build a settings model, every validation error named in one sentence."""
    clean = {k: v for k, v in settings.items() if v is not None}
    try:
        return model(**clean)
    except InvalidFields as exc:
        raise SettingsError([_problem(err) for err in exc.errors()]) from None


def _problem(err: Any) -> str:
    """One field's problem as the option it concerns, what is wrong and the value given."""
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # a check across fields: its own sentence
        return msg[0].upper() + msg[1:]
    if err["type"] == "extra_forbidden":
        return f"Unknown setting '{loc}'"
    return f"{_option(loc)}: {msg} (got {err.get('input')!r})"


def run_config(**settings: Any) -> RunConfig:
    """Validate run settings into a RunConfig, errors as one sentence."""
    run = _validated(RunConfig, settings)
    for product, options, tokens in _tokens_per_step(run):
        problem = TOKENS.problem(f"the tokens per step ({product})", tokens)
        if problem:
            raise InvalidInputError(f"{problem}; check {options}.")
    return run


def _tokens_per_step(run: RunConfig) -> list[tuple[str, str, int]]:
    """The tokens each kind of step holds at once, the product and the options that make
    them: each within the token bound (an eval batch of 2^31 gave 514 million GiB)."""
    batch, seq = run.batch_size, run.seq_len
    steps = [("--batch-size × --seq-len", "--batch-size and --seq-len", batch * seq)]
    if run.positions != seq:  # prompt and P-tuning's virtual tokens lengthen every sequence
        steps[0] = (
            "--batch-size × (--seq-len + --virtual-tokens)",
            "--batch-size, --seq-len and --virtual-tokens",
            batch * run.positions,
        )
    if run.target_len:
        steps.append(
            ("--batch-size × --target-len", "--batch-size and --target-len", batch * run.target_len)
        )
    if run.eval_batch_size:
        steps.append(
            ("--eval-batch-size × --seq-len", "--eval-batch-size", run.eval_batch_size * seq)
        )
    if run.generate_batch_size:
        length = seq + (run.generate_len or 0)
        steps.append(
            (
                "--generate-batch-size × (--seq-len + --generate-len)",
                "--generate-batch-size and --generate-len",
                run.generate_batch_size * length,
            )
        )
    return steps


def parallel_config(
    *, host_memory: str | int | None = None, bucket_elements: int | None = None, **settings: Any
) -> ParallelConfig:
    """Validate the multi-GPU settings (gpus, nodes, strategy, tp, pp, cp, ep, offload)."""
    if host_memory is not None:
        settings["host_memory_bytes"] = parse_size(host_memory, HOST_MEMORY, "--host-memory")
    flag = flag_as_count(settings, ("gpus", "nodes", "tp", "pp", "cp", "ep"))
    if flag:  # a budgets file's `gpus: true`, said as the option's own sentence
        raise InvalidInputError(flag + ".")
    for name in ("gpus", "nodes", "tp", "pp", "cp", "ep"):  # each, before their product
        if isinstance(settings.get(name), int):
            GPUS.check(_option(name), settings[name])
    settings["bucket_elements"] = bucket_elements
    par = _validated(ParallelConfig, settings)
    if par.world > MAX_GPUS:
        raise InvalidInputError(
            f"{par.world:,} GPUs is beyond any cluster ftmem plans for (at most {MAX_GPUS:,})."
        )
    return par


def merge_config(**settings: Any) -> MergeConfig:
    """Validate the merge settings (``ftmem merge``), errors as one sentence."""
    from ftmem.merge import MergeConfig

    return _validated(MergeConfig, settings)


def serve_config(**settings: Any) -> ServeConfig:
    """Validate the serving settings (``ftmem serve``), errors as one sentence."""
    from ftmem.serve import ServeConfig

    return _validated(ServeConfig, settings)


def resolve_gpu(gpu: str | Gpu | None = None, gpu_memory: str | int | None = None) -> Gpu | None:
    if gpu is not None and gpu_memory is not None:
        raise InvalidInputError("Give either --gpu or --gpu-memory, not both.")
    if gpu_memory is not None:
        return custom_gpu(parse_size(gpu_memory, GPU_MEMORY, "--gpu-memory"))
    if isinstance(gpu, Gpu) or gpu is None:
        return gpu
    if not isinstance(gpu, str):  # (gpu=24 meant gpu_memory: an AttributeError before)
        raise InvalidInputError(
            f"gpu must be a GPU preset id (`ftmem gpus`) or a Gpu, not {clipped(repr(gpu))}; "
            "give a memory size as gpu_memory."
        )
    return get_gpu(gpu)


def estimate(
    model: str | Architecture,
    *,
    gpu: str | Gpu | None = None,
    gpu_memory: str | int | None = None,
    overhead: str | int | None = None,
    **settings: Any,
) -> Estimate:
    """Estimate one training step of ``model`` (preset id, config.json path or Architecture).

    ``settings`` are the fields of :class:`~ftmem.run.RunConfig` (method, precision,
    optimizer, batch_size, seq_len, grad_ckpt, attn, lora_r, ...). With several GPUs
    (``gpus`` per node × ``nodes``), a ``strategy`` (ddp, zero1-3, fsdp...), model
    parallelism (``tp``, ``pp``, ``cp``) or offload, the memory is per GPU, for the
    rank that holds the most; ``Estimate.parallel`` has the rest.
    """
    arch = _architecture(model)
    settings, source = with_framework_defaults(
        model if isinstance(model, str) else arch.name, settings
    )
    source = [*(source_notes(model) if isinstance(model, str) else []), *source]
    if isinstance(model, str):
        settings, said = on_quantized_base(quantized_base_of(model), settings)
        source += said
    spread = {k: settings.pop(k) for k in list(settings) if k in PARALLEL_SETTINGS}
    distill = _teacher(settings.pop("teacher", None), settings.pop("teacher_weights", None))
    run, par = _run_and_spread(settings, spread)
    if distill is not None:
        try:
            check_teacher_support(run.framework)
        except ValueError as exc:
            raise InvalidInputError(f"{exc}.") from None
    positions = run.positions + run.prefix_len
    what = f"--seq-len {run.seq_len}" + (
        f" + {run.n_virtual} virtual tokens" if run.n_virtual else ""
    )
    beyond = position_note(arch, positions, what)
    notes: list[str] = list(source) + ([beyond] if beyond else [])
    if run.method in ADAPTER_METHODS:
        smallest = smallest_adapted_width(arch, run)
        if run.r > smallest:
            raise InvalidInputError(
                f"--lora-r {run.r} exceeds the smallest adapted dimension ({smallest}): "
                "a rank that high is not low-rank; use full finetuning instead."
            )
    overhead_bytes = (
        None
        if overhead is None
        # False == 0 to Python: a budgets file's `overhead: false` is refused by parse_size
        else (
            0
            if overhead in (0, "0") and not isinstance(overhead, bool)
            else parse_size(overhead, GPU_MEMORY, "--overhead")
        )
    )
    est = estimate_step(arch, run, resolve_gpu(gpu, gpu_memory), overhead_bytes, par, distill)
    return est.model_copy(update={"notes": [*notes, *est.notes]}) if notes else est


def with_framework_defaults(
    model: str, settings: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """``framework="trl"``: the settings over TRL's defaults for the objective's trainer
    (what ``--from`` a TRL config silent on them gives), on HF Trainer's code path, and
    the notes that list them; any other framework's settings as given."""
    if settings.get("framework") != "trl":
        return settings, []
    from ftmem.frameworks import trl_defaults, under_flags

    fw = trl_defaults(model, settings.get("objective") or "sft")
    merged, dropped = under_flags(fw, {k: v for k, v in settings.items() if k != "framework"})
    return merged, [*fw.notes, *dropped]


def traced(
    model: str,
    *,
    gpu: str | Gpu | None = None,
    gpu_memory: str | int | None = None,
    **settings: Any,
) -> Traced:
    """A traced answer (``ftmem estimate --traced``): transformers builds ``model`` (a
    preset, a config.json path or a Hub id, of any causal LM it has) and one training
    step runs on fake tensors at full size; on a ``gpu``, replayed through the CUDA
    caching allocator. Needs torch, transformers and peft (``ftmem[measure]``)."""
    spread = {k: settings.pop(k) for k in list(settings) if k in PARALLEL_SETTINGS}
    if settings.pop("teacher", None) is not None or settings.pop("teacher_weights", None):
        raise InvalidInputError("--traced runs no distillation teacher; drop --teacher.")
    if settings.pop("overhead", None) is not None:
        raise InvalidInputError("--traced replays the allocator itself; drop --overhead.")
    run, par = _run_and_spread(settings, spread)
    offloaded = par.offload_optimizer != "none" or par.offload_params != "none"
    if par.world > 1 or par.model_parallel > 1 or offloaded:
        raise InvalidInputError(
            "--traced runs one GPU's step; drop --gpus, --nodes, --tp, --pp, --cp and offload."
        )
    hardware = resolve_gpu(gpu, gpu_memory)
    if not isinstance(model, str):
        raise InvalidInputError("--traced takes a model name: a preset id, a path or a Hub id.")
    found = config_of(model)
    if found is None:  # a preset: the config transformers would write for it
        arch = resolve_model(model)
        cfg, name = None, arch.name
    else:
        cfg, name, _ = found
    try:
        from ftmem.measure.build import hf_config_kwargs
        from ftmem.measure.traced import trace
    except ImportError as exc:
        raise InvalidInputError(
            f"--traced needs torch, transformers and peft ({exc.name} is missing): "
            'pip install "ftmem[measure]".'
        ) from None
    if cfg is None:
        model_type, kwargs = hf_config_kwargs(arch)
        cfg = {"model_type": model_type, **kwargs}
    got = trace(dict(cfg), name, run, hardware)
    base = quantized_base_of(model) if found is not None else None
    if base is None:
        return got
    said = (
        f"{base.said_by}: the base is {base.described}; traced unquantised, in the run's "
        "dtypes (transformers builds a config's model without its quantisation)."
    )
    return replace(got, notes=(said, *got.notes))


def _run_and_spread(
    settings: dict[str, Any], spread: dict[str, Any]
) -> tuple[RunConfig, ParallelConfig]:
    """The run and how it is spread over GPUs, validated together: what is wrong in
    either is named in one error (the run's problems first)."""
    problems: list[str] = []
    run = par = None
    try:
        run = run_config(**settings)
    except InvalidInputError as exc:
        problems += getattr(exc, "problems", None) or [str(exc).removesuffix(".")]
    try:
        par = parallel_config(**spread)
    except InvalidInputError as exc:
        problems += getattr(exc, "problems", None) or [str(exc).removesuffix(".")]
    if problems:
        raise SettingsError(problems)
    assert run is not None and par is not None  # each raised or was built
    return run, par


def _architecture(model: object, what: str = "the model") -> Architecture:
    """A model given by name or as an Architecture; anything else (a budgets file's
    ``teacher: true``, a number) is refused in one sentence, not an AttributeError."""
    if isinstance(model, Architecture):
        return model
    if not isinstance(model, str):
        shown = clipped(repr(model))
        raise InvalidInputError(
            f"{what} must be a model name (a preset id or a path), not {shown}."
        )
    return resolve_model(model)


def _teacher(model: str | Architecture | None, weights: str | None) -> Teacher | None:
    """The distillation teacher (``teacher=``, ``teacher_weights=``), validated."""
    if model is None:
        if weights is not None:
            raise InvalidInputError("--teacher-weights needs --teacher MODEL.")
        return None
    from ftmem.distill import Teacher
    from ftmem.serve import ServeConfig

    arch = _architecture(model, "--teacher")
    cfg = _validated(ServeConfig, {"weights": weights or "bf16"})
    return Teacher(arch, cfg.weights)


def plan(
    model: str | Architecture,
    *,
    gpu: str | Gpu | None = None,
    gpu_memory: str | int | None = None,
    overhead: str | int | None = None,
    rows: int = 8,
    **settings: Any,
) -> Plan:
    """The least invasive changes that make the run fit the GPU (``ftmem plan``)."""
    from ftmem.plan import make_plan  # (not for an estimate: CLI start-up)

    at = _searched(_architecture(model), gpu, gpu_memory, overhead)
    return make_plan(at, dict(settings), rows=rows)


def _searched(
    arch: Architecture, gpu: str | Gpu | None, gpu_memory: str | int | None, overhead: Any
) -> Callable[[dict[str, Any]], Estimate]:
    """:func:`estimate` of ``arch`` for a search's candidates: the GPU read as the first
    estimate reads it (its refusals the same), then passed on as read (get_gpu looks at
    the preset folders each time, for a file changed between calls: a fifth of a
    screened candidate's time)."""
    hw: dict[str, Any] = dict(gpu=gpu, gpu_memory=gpu_memory, overhead=overhead)

    def at(settings: dict[str, Any]) -> Estimate:
        est = estimate(arch, **hw, **settings)
        if hw["gpu_memory"] is not None or isinstance(hw["gpu"], str):
            hw.update(gpu=resolve_gpu(hw["gpu"], hw["gpu_memory"]), gpu_memory=None)
        return est

    return at


# What `ftmem compare-methods` compares by default: one of each kind of method.
COMPARED_METHODS = (
    "full",
    "freeze",
    "galore",
    "lora",
    "qlora",
    "dora",
    "adapter",
    "ia3",
    "loha",
    "prompt-tuning",
    "prefix-tuning",
    "p-tuning",
    "bitfit",
)


def compare_methods(
    model: str | Architecture,
    methods: tuple[str, ...] | list[str] | None = None,
    *,
    gpu: str | Gpu | None = None,
    gpu_memory: str | int | None = None,
    overhead: str | int | None = None,
    **settings: Any,
) -> dict[str, Estimate | str]:
    """The same run under several finetuning methods (``ftmem compare-methods``).

    Settings that only some methods take (``lora_r``, ``virtual_tokens``...) go to
    those methods only. A method the model cannot use (BitFit without biases, prefix
    tuning on Falcon) gets the one-sentence reason instead of an estimate. An unknown
    method name, or settings that no method accepts, are errors.
    """
    arch = _architecture(model)
    chosen = list(methods or COMPARED_METHODS)
    if methods is None and not arch.has_biases:
        chosen.remove("bitfit")
    if methods is None and arch.encoder_decoder:
        chosen = [m for m in chosen if m in SEQ2SEQ_METHODS]
    offered = FRAMEWORK_METHODS.get(settings.get("framework") or "hf")
    if methods is None and offered is not None:  # (LitGPT's: a row of refusals each else)
        chosen = [m for m in chosen if m in offered]
    out: dict[str, Estimate | str] = {}
    for m in chosen:
        run_config(method=m)  # an unknown name fails here, as one sentence
        try:
            out[m] = estimate(
                arch,
                gpu=gpu,
                gpu_memory=gpu_memory,
                overhead=overhead,
                **settings_for(m, {**settings, "method": m}),
            )
        except InvalidInputError as exc:
            out[m] = str(exc)
    if all(isinstance(v, str) for v in out.values()):
        # nothing ran: the settings themselves are wrong, not one method
        raise InvalidInputError(next(iter(out.values())))
    return out


SEARCHABLE_SETTINGS = {"batch_size": 2**16, "seq_len": 2**21, "target_len": 2**21, "lora_r": None}


def search_bound(arch: Architecture, what: str, settings: dict[str, Any]) -> int:
    """The largest value ``ftmem max`` tries for ``what``."""
    if what not in SEARCHABLE_SETTINGS:
        raise InvalidInputError(
            f"what must be one of {', '.join(SEARCHABLE_SETTINGS)}, not {what!r}."
        )
    if what == "lora_r":
        if settings.get("method") not in ADAPTER_METHODS:
            methods = [m for m in get_args(Method) if m in ADAPTER_METHODS]
            raise InvalidInputError(f"--for lora-r needs --method {' / '.join(methods)}.")
        if settings.get("method") == "gralora" or settings.get("lora_bd_blocks"):
            # the search tries every rank; theirs must be a multiple of their blocks
            raise InvalidInputError(
                "--for lora-r tries every rank, and GraLoRA's and BD-LoRA's rank must be a "
                "multiple of their blocks: estimate the ranks you want with --lora-r."
            )
        probe = run_config(**{k: v for k, v in settings.items() if k in ("method", "lora_targets")})
        return smallest_adapted_width(arch, probe)
    if what == "target_len" and not arch.encoder_decoder:
        raise InvalidInputError(
            f"--for target-len is for encoder-decoder models (T5); {arch.name} is decoder-only: "
            "use --for seq-len."
        )
    if what == "seq_len" and arch.position_embedding == "learned":
        return arch.max_position_embeddings
    bound = SEARCHABLE_SETTINGS[what]
    assert bound is not None
    return bound


def largest(
    model: str | Architecture,
    what: str,
    *,
    gpu: str | Gpu | None = None,
    gpu_memory: str | int | None = None,
    overhead: str | int | None = None,
    **settings: Any,
) -> Largest:
    """The largest ``batch_size``, ``seq_len`` or ``lora_r`` that fits (``ftmem max``)."""
    from ftmem.search import largest_fitting

    arch = _architecture(model)
    highest = search_bound(arch, what, settings)
    if settings.get(what) is not None:  # replaced by the search, but a mistake all the same
        _validated(RunConfig, {"method": settings.get("method"), what: settings[what]})
    at = _searched(arch, gpu, gpu_memory, overhead)
    lowest = 1
    if what == "batch_size":
        lowest = smallest_batch(settings.get("objective", "sft"), settings.get("framework", "hf"))
    return largest_fitting(lambda n: at({**settings, what: n}), lowest, highest)
