"""The whole option space of the CLI: every option crossed with every other.

Pairwise (all-pairs) coverage over the choices of every option of ``estimate`` (and
``serve`` and ``compare``), plus hypothesis over the numbers. Every run, in-process
through :func:`ftmem.cli.main`, must keep the CLI's contract:

* exit 0 with valid output (``--format json`` parses, ``yaml`` loads, ``--emit`` is a
  config the engine reads);
* exit 1 only for "does not fit" (``--check`` with a GPU, the JSON saying ``fits: false``);
* exit 2 with exactly one line on stderr and nothing on stdout;
* in bounded time and output size, and never a traceback.

The rows are generated in two ways. *Accepted* rows respect the rules the tools
themselves impose (written below from their documentation, one rule per line, the
source named): each must be estimated (exit 0 or 1). A refusal there is either a
combination ftmem refuses without reason (``--gpus 2 --strategy fsdp --offload-params
cpu`` once was) or a rule missing here: both worth a look. *Unconstrained* rows cross
the same choices without rules: there most runs are refusals, and each must be one
sentence.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import time
from collections.abc import Callable, Iterable

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftmem.cli import main
from ftmem.presets import model_presets

OMIT = "(default)"  # the option is not given
MAX_SECONDS = 10.0  # per run, on a slow CI core (a run takes ~0.05 s here)
MAX_OUTPUT = 200_000  # characters on stdout

# One model of each family and kind (decoder, encoder-decoder, MoE, tied, biased)
MODELS = [
    "falcon-7b", "flan-t5-small", "t5-small", "gemma-2b", "gemma2-9b", "gpt2", "llama2-7b",
    "llama3-8b", "mistral-7b", "mixtral-8x7b", "phi3-mini", "qwen2.5-0.5b",
]  # fmt: skip

LORA = {"lora", "rslora", "longlora", "relora", "qlora", "dora"}
PROMPT = {"prompt-tuning", "prefix-tuning", "p-tuning"}
METHODS = sorted(
    {"full", "freeze", "partial", "galore", "bitfit", "adapter", "ia3"} | LORA | PROMPT
)
DEEPSPEED = {"zero1", "zero2", "zero3"}
FSDP = {"fsdp", "fsdp-hybrid", "fsdp-grad-op", "fsdp-no-shard"}

# Every option of `estimate` with choices, each with all its values (flags: given or not).
ESTIMATE: dict[str, list[str]] = {
    "model": MODELS,
    "--method": METHODS,
    "--precision": ["fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"],
    "--optimizer": [
        "adamw", "adamw-fp32", "adamw-8bit", "paged-adamw-8bit", "sgd", "sgd-momentum",
        "adafactor", "lion",
    ],
    "--optimizer-impl": ["foreach", "for-loop", "fused"],
    "--attn": ["eager", "sdpa", "flash"],
    "--loss": ["standard", "chunked", "fused"],
    "--autocast": [OMIT, "--autocast", "--no-autocast"],
    "--grad-ckpt": [OMIT, "--grad-ckpt", "--no-grad-ckpt"],
    "--activation-offload": [OMIT, "--activation-offload"],
    "--optimizer-in-backward": [OMIT, "--optimizer-in-backward"],
    "--quant": [OMIT, "nf4", "fp4", "int8", "int4"],
    "--double-quant": [OMIT, "--double-quant", "--no-double-quant"],
    "--compute-dtype": [OMIT, "bf16", "fp16", "fp32"],
    "--adapter-dtype": [OMIT, "auto", "fp32", "bf16", "fp16"],
    "--lora-targets": [OMIT, "all-linear", "attention", "q,v", "k,o"],
    "--lora-modules-to-save": [OMIT, "embed", "head", "embed,head"],
    "--adapter-placement": [OMIT, "houlsby", "pfeiffer"],
    "--ia3-targets": [OMIT, "k,v", "q,o"],
    "--prompt-encoder": [OMIT, "mlp", "lstm"],
    "--prefix-projection": [OMIT, "--prefix-projection", "--no-prefix-projection"],
    "--trainable-layers": [OMIT, "1", "3"],
    "--trainable-modules": [OMIT, "attn|Attention", "norm|layer_norm|ln_"],
    "--galore-targets": [OMIT, "attention", "all-linear"],
    "--accounting": ["phases", "simple"],
    "--gpu": [OMIT, "rtx4090", "h100-80gb"],
    "--gpus": [OMIT, "1", "2", "8"],
    "--nodes": ["1", "2"],
    "--strategy": [OMIT, "single", "ddp", *sorted(DEEPSPEED), *sorted(FSDP)],
    "--tp": ["1", "2"],
    "--pp": ["1", "2"],
    "--cp": ["1", "2"],
    "--offload-optimizer": [OMIT, "none", "cpu", "nvme"],
    "--offload-params": [OMIT, "none", "cpu", "nvme"],
    "--teacher": [OMIT, "gpt2", "llama2-7b"],
    "--teacher-weights": [OMIT, "bf16", "fp8", "int8", "nf4", "int4"],
    "--emit": [OMIT, "deepspeed", "accelerate", "fsdp"],
    "--format": ["json", "yaml", "csv", "markdown", "table"],
    "--check": [OMIT, "--check"],
    "--units": ["GiB", "GB"],
}  # fmt: skip

FLAGS = {
    name for name, values in ESTIMATE.items() if any(v.startswith("--") for v in values)
}

# Method-specific options and the methods that take them (`ftmem estimate --help`).
ONLY_FOR: dict[str, set[str]] = {
    "--quant": {"qlora"},
    "--double-quant": {"qlora"},
    "--compute-dtype": {"qlora"},
    "--lora-targets": LORA,
    "--lora-modules-to-save": LORA,
    "--adapter-placement": {"adapter"},
    "--ia3-targets": {"ia3"},
    "--prompt-encoder": {"p-tuning"},
    "--prefix-projection": {"prefix-tuning"},
    "--trainable-layers": {"freeze"},
    "--trainable-modules": {"partial"},
    "--galore-targets": {"galore"},
}
SEQ2SEQ_METHODS = {"full", "freeze", "galore", "lora", "rslora", "dora", "qlora"}
PREFIX_FAMILIES = {"llama", "mistral", "mixtral", "qwen2", "gemma", "gemma2", "phi3", "gpt2"}


def _pair_ok(a: str, x: str, b: str, y: str) -> bool:
    """Whether two option values can appear in one accepted run: the rules between two
    options, each from the tool that imposes it."""
    v = {a: x, b: y}

    def both(p: str, q: str) -> bool:
        return p in v and q in v

    # peft / bitsandbytes: an option of one method is meaningless with another
    for option, methods in ONLY_FOR.items():
        if both(option, "--method") and v[option] != OMIT and v["--method"] not in methods:
            return False
    if a in ONLY_FOR and b in ONLY_FOR and OMIT not in (x, y) and not ONLY_FOR[a] & ONLY_FOR[b]:
        return False  # options of two different methods
    if both("--method", "--trainable-modules"):  # partial needs its patterns
        if v["--method"] == "partial" and v["--trainable-modules"] == OMIT:
            return False
    if both("--method", "--optimizer"):  # galore_torch has GaLoreAdamW and its 8-bit twin
        if v["--method"] == "galore" and v["--optimizer"] not in ("adamw", "adamw-8bit"):
            return False
    for option in ("--method", "--prefix-projection"):  # peft: no checkpointing under a prefix
        if both(option, "--grad-ckpt") and v["--grad-ckpt"] == "--grad-ckpt":
            if v[option] in ("prefix-tuning", "--prefix-projection", "--no-prefix-projection"):
                return False
    if both("--quant", "--double-quant"):  # double quantisation is bitsandbytes'
        if v["--quant"] == "int4" and v["--double-quant"] != OMIT:
            return False
    if both("--precision", "--autocast"):  # autocast needs a 16-bit compute dtype
        if v["--precision"] == "fp32" and v["--autocast"] == "--autocast":
            return False
        if v["--precision"].endswith("-mixed") and v["--autocast"] == "--no-autocast":
            return False
    if both("--teacher", "--teacher-weights"):
        if v["--teacher"] == OMIT and v["--teacher-weights"] != OMIT:
            return False
    # DeepSpeed's pipeline engine runs ZeRO stage 0 or 1 only
    if both("--strategy", "--pp") and v["--strategy"] in ("zero2", "zero3") and v["--pp"] != "1":
        return False
    # offload: DeepSpeed ZeRO or FSDP; weights: ZeRO-3 or FSDP; FSDP to the CPU only
    for option, strategies in (
        ("--offload-optimizer", DEEPSPEED | FSDP),
        ("--offload-params", {"zero3"} | FSDP),
    ):
        if both(option, "--strategy") and v[option] not in (OMIT, "none"):
            if v["--strategy"] not in strategies:
                return False
            if v["--strategy"] in FSDP and v[option] == "nvme":
                return False
    if both("--offload-optimizer", "--offload-params"):  # FSDP's CPUOffload is one switch
        if v["--offload-optimizer"] == "nvme" and v["--offload-params"] == "cpu":
            return False
    # what ftmem models on one GPU only (the phases of sharded steps need the default)
    multi = {"--strategy": {"ddp", *DEEPSPEED, *FSDP}, "--gpus": {"2", "8"}, "--nodes": {"2"}}
    multi |= {k: {"2"} for k in ("--tp", "--pp", "--cp")}
    multi |= {k: {"cpu", "nvme"} for k in ("--offload-optimizer", "--offload-params")}
    one_gpu = {
        "--accounting": {"simple"},
        "--optimizer-in-backward": {"--optimizer-in-backward"},
        "--teacher": {"gpt2", "llama2-7b"},
        "--teacher-weights": set(ESTIMATE["--teacher-weights"]) - {OMIT},
    }
    for m, m_values in multi.items():
        for o, o_values in one_gpu.items():
            if both(m, o) and v[m] in m_values and v[o] in o_values:
                return False
    if both("--strategy", "--gpus") and v["--strategy"] == "single" and v["--gpus"] in ("2", "8"):
        return False
    if both("--strategy", "--nodes") and v["--strategy"] == "single" and v["--nodes"] != "1":
        return False
    if both("--strategy", "--tp") or both("--strategy", "--pp") or both("--strategy", "--cp"):
        if v["--strategy"] == "single" and "2" in (v.get("--tp"), v.get("--pp"), v.get("--cp")):
            return False
    # --emit: a DeepSpeed config for ZeRO, an FSDP one for FSDP, none for a pipeline
    if both("--emit", "--strategy") and v["--emit"] != OMIT:
        wanted = {"deepspeed": DEEPSPEED, "fsdp": FSDP, "accelerate": {"ddp"} | DEEPSPEED | FSDP}
        if v["--strategy"] not in wanted[v["--emit"]] | {OMIT}:
            return False
        if v["--emit"] == "deepspeed" and v["--strategy"] == OMIT:
            return False
        if v["--emit"] == "fsdp" and v["--strategy"] == OMIT:
            return False
    if both("--emit", "--offload-optimizer") or both("--emit", "--offload-params"):
        offload = v.get("--offload-optimizer", v.get("--offload-params"))
        if v["--emit"] == "fsdp" and offload == "nvme":
            return False
    if both("--emit", "--pp") and v["--emit"] != OMIT and v["--pp"] != "1":
        return False
    if both("--emit", "--accounting") and v["--emit"] != OMIT and v["--accounting"] == "simple":
        return False
    for o, o_values in one_gpu.items():
        if both("--emit", o) and v["--emit"] != OMIT and v[o] in o_values:
            return False
    if both("model", a if a != "model" else b):
        return _model_ok(v["model"], *next((k, w) for k, w in v.items() if k != "model"))
    return True


def _model_ok(model: str, option: str, value: str) -> bool:
    """Rules between one model and one option value."""
    arch = model_presets()[model]
    if arch.encoder_decoder:
        # what ftmem's encoder-decoder path models (docs/seq2seq.md): data parallel only
        refused = {
            "--method": set(METHODS) - SEQ2SEQ_METHODS,
            "--loss": {"chunked", "fused"},
            "--activation-offload": {"--activation-offload"},
            "--optimizer-in-backward": {"--optimizer-in-backward"},
            "--lora-modules-to-save": {"embed", "head", "embed,head"},
            "--quant": {"int4"},
            "--attn": {"flash"},  # transformers' T5 has no FlashAttention path
            "--tp": {"2"},
            "--pp": {"2"},
            "--cp": {"2"},
            "--teacher": {"gpt2", "llama2-7b"},
        }
        if value in refused.get(option, ()):
            return False
    if option == "--tp" and value == "2":  # Megatron splits heads and MLP columns evenly
        return all(n % 2 == 0 for n in (arch.num_heads, arch.kv_heads, arch.intermediate_size))
    if option == "--pp" and value == "2":
        return arch.num_layers % 2 == 0
    if option == "--method":
        if value == "bitfit" and not arch.has_biases:
            return False
        if value == "prefix-tuning" and arch.family not in PREFIX_FAMILIES:
            return False
        if value == "adapter" and arch.is_moe:  # no MLP output linear after the experts
            return False
    if option == "--lora-modules-to-save" and value != OMIT and arch.tie_embeddings:
        return False
    if option == "--teacher" and value != OMIT:  # logit distillation needs one tokenizer
        return model_presets()[value].vocab_size == arch.vocab_size
    return True


def _row_ok(row: dict[str, str]) -> bool:
    """Rules over more than two options."""
    g = {k: row.get(k, OMIT) for k in ESTIMATE}
    gpus = 1 if g["--gpus"] == OMIT else int(g["--gpus"])
    world = gpus * int(g["--nodes"])
    tp, pp, cp = int(g["--tp"]), int(g["--pp"]), int(g["--cp"])
    if world % (tp * pp * cp):  # the GPUs split into tp × pp × cp groups
        return False
    strategy = g["--strategy"]
    if strategy == OMIT and world > 1:
        strategy = "ddp"
    if strategy == "single" and world > 1:
        return False
    if strategy == "fsdp-hybrid" and (world // (tp * pp * cp)) % int(g["--nodes"]):
        return False  # hybrid: each node holds one replica
    offload_opt, offload_params = g["--offload-optimizer"], g["--offload-params"]
    if strategy in FSDP and offload_opt == "cpu" and offload_params != "cpu":
        return False  # FSDP cannot move the optimizer alone (CPUOffload moves weights too)
    if strategy == OMIT and world == 1 and "cpu" in (offload_opt, offload_params):
        return False
    if g["--emit"] != OMIT and strategy in (OMIT, "single"):
        return False
    if g["--emit"] == "accelerate" and (tp > 1 or cp > 1) and strategy not in FSDP:
        return False  # Accelerate composes tensor/context parallel with FSDP only
    return True


# options that others depend on, chosen first in each row
FIRST = ("model", "--method", "--strategy", "--precision", "--teacher")
# the options the rules over many options involve: what a row's repair may change
SPREAD = (
    "--gpus", "--nodes", "--tp", "--pp", "--cp", "--strategy", "--offload-optimizer",
    "--offload-params", "--emit",
)  # fmt: skip


# -- an all-pairs generator -----------------------------------------------------------------


def all_pairs(
    domains: dict[str, list[str]],
    pair_ok: Callable[[str, str, str, str], bool] = lambda *_: True,
    row_ok: Callable[[dict[str, str]], bool] = lambda _: True,
    repairable: tuple[str, ...] = (),
    first: tuple[str, ...] = (),
    seed: int = 0,
) -> tuple[list[dict[str, str]], set[tuple]]:
    """Rows that together hold every allowed pair of values of two options (greedy, as
    AETG: seed each row with an uncovered pair, then give every other option the value
    that covers most uncovered pairs with the values already chosen). A row that breaks
    a rule over more options (``row_ok``) is repaired by a short random walk over the
    ``repairable`` options. The ``first`` options are chosen before the others (those
    that others depend on: the method before its options). Returns the rows and the allowed pairs no valid row could
    hold (to be reported, not hidden)."""
    names = list(domains)
    position = {n: i for i, n in enumerate(names)}
    rng = random.Random(seed)

    def key(a: str, x: str, b: str, y: str) -> tuple:
        return ((a, x), (b, y)) if position[a] < position[b] else ((b, y), (a, x))

    forbidden = set()
    uncovered = set()
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for x in domains[a]:
                for y in domains[b]:
                    (uncovered if pair_ok(a, x, b, y) else forbidden).add(key(a, x, b, y))

    def fits(row: dict[str, str], n: str, value: str) -> bool:
        return all(key(n, value, m, w) not in forbidden for m, w in row.items() if m != n)

    rows: list[dict[str, str]] = []
    infeasible: set[tuple] = set()
    tries: dict[tuple, int] = {}
    stuck: dict[tuple, list[str]] = {}
    while uncovered:
        seed_pair = min(uncovered)
        (a, x), (b, y) = seed_pair
        row = {a: x, b: y}
        # an option that found no value last time goes first on the next try
        early = [*stuck.get(seed_pair, []), *(n for n in first if n not in stuck.get(seed_pair, []))]
        rest = [n for n in names if n not in row and n not in early]
        rng.shuffle(rest)
        rest = [n for n in early if n not in row] + rest
        for n in rest:
            best, best_gain = None, -1
            for value in domains[n]:
                if not fits(row, n, value):
                    continue
                gain = sum(key(n, value, m, w) in uncovered for m, w in row.items())
                if gain > best_gain or (gain == best_gain and rng.random() < 0.5):
                    best, best_gain = value, gain
            if best is None:
                stuck.setdefault(seed_pair, []).append(n)
                break
            row[n] = best
        walk = [n for n in repairable if n not in (a, b)]
        for _ in range(40 if len(row) == len(names) and walk else 0):
            if row_ok(row):
                break
            n = rng.choice(walk)
            row[n] = rng.choice([v for v in domains[n] if fits(row, n, v)] or [row[n]])
        if len(row) == len(names) and row_ok(row):
            held = {key(p, u, q, w) for p, u in row.items() for q, w in row.items() if p != q}
            uncovered -= held
            rows.append({n: row[n] for n in names})
            continue
        tries[seed_pair] = tries.get(seed_pair, 0) + 1
        if tries[seed_pair] >= 8:
            uncovered.discard(seed_pair)
            infeasible.add(seed_pair)
    return rows, infeasible


def argv_of(command: str, row: dict[str, str]) -> list[str]:
    argv = [command]
    if "model" in row:
        argv.append(row["model"])
    for name, value in row.items():
        if name == "model" or value == OMIT:
            continue
        argv += [value] if name in FLAGS else [name, value]
    return argv


# -- running one command and checking the contract ----------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    return (code if isinstance(code, int) else 2), out.getvalue(), err.getvalue(), (
        time.perf_counter() - start
    )


def contract_broken(argv: list[str], code: int, out: str, err: str, seconds: float) -> str | None:
    """What is wrong with one run, or None."""
    if seconds > MAX_SECONDS:
        return f"took {seconds:.1f} s"
    if len(out) > MAX_OUTPUT:
        return f"printed {len(out):,} characters"
    if code == 2:
        if out:
            return "exit 2 with output on stdout"
        if not err.startswith("Error: ") or err.count("\n") != 1 or not err.endswith("\n"):
            return f"exit 2 without exactly one line on stderr: {err[:300]!r}"
        return None
    if code not in (0, 1):
        return f"exit {code}"
    if err:
        return f"exit {code} with stderr: {err[:300]!r}"
    if not out.strip() and "--quiet" not in argv:
        return f"exit {code} with no output"
    fmt = argv[argv.index("--format") + 1] if "--format" in argv else "table"
    emit = argv[argv.index("--emit") + 1] if "--emit" in argv else None
    try:
        if emit == "deepspeed":
            data = json.loads(out)
            assert "zero_optimization" in data
        elif emit is not None:
            assert isinstance(yaml.safe_load(out), dict)
        elif fmt == "json":
            data = json.loads(out)
            if argv[0] == "estimate":
                assert data["memory"]["total_bytes"] > 0
                if code == 1:
                    assert data["fits"] is False
        elif fmt == "yaml":
            assert isinstance(yaml.safe_load(out), dict)
        elif fmt == "csv":
            assert len(list(csv.reader(io.StringIO(out)))) >= 2
    except (AssertionError, ValueError, KeyError, yaml.YAMLError) as exc:
        return f"exit {code} with unreadable {emit or fmt} output ({type(exc).__name__})"
    if code == 1 and "--check" not in argv and argv[0] == "estimate":
        return "exit 1 without --check"
    return None


def check_all(argvs: Iterable[list[str]]) -> tuple[list[str], list[tuple[list[str], int, str]]]:
    """Run each argv; the contract breaks (with the exception for a traceback) and the
    outcomes."""
    broken, outcomes = [], []
    for argv in argvs:
        try:
            code, out, err, seconds = run_cli(argv)
        except Exception as exc:  # a traceback: the worst break
            broken.append(f"{' '.join(argv)}\n    raised {type(exc).__name__}: {exc}")
            continue
        problem = contract_broken(argv, code, out, err, seconds)
        if problem:
            broken.append(f"{' '.join(argv)}\n    {problem}")
        outcomes.append((argv, code, err.strip()))
    return broken, outcomes


# -- estimate: accepted rows and unconstrained rows -----------------------------------------


@pytest.fixture(scope="module")
def accepted_rows():
    return all_pairs(ESTIMATE, _pair_ok, _row_ok, SPREAD, FIRST, seed=19)


def test_the_generator_covers_every_allowed_pair(accepted_rows):
    """The all-pairs rows hold every pair the rules allow (checked here, independently of
    the generator's bookkeeping), and no allowed pair was found impossible."""
    rows, infeasible = accepted_rows
    names = list(ESTIMATE)
    held = {
        (a, r[a], b, r[b]) for r in rows for i, a in enumerate(names) for b in names[i + 1 :]
    }
    wanted = {
        (a, x, b, y)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        for x in ESTIMATE[a]
        for y in ESTIMATE[b]
        if _pair_ok(a, x, b, y)
    }
    missing = wanted - held
    assert missing == {(a, x, b, y) for (a, x), (b, y) in infeasible}
    # each pair no row holds is truly impossible: some third option has no value that
    # goes with both of its values
    for (a, x), (b, y) in infeasible:
        assert any(
            not any(_pair_ok(a, x, c, z) and _pair_ok(b, y, c, z) for z in ESTIMATE[c])
            for c in names
            if c not in (a, b)
        ), (a, x, b, y)
    assert all(_row_ok(r) for r in rows)
    assert all(
        _pair_ok(a, r[a], b, r[b]) for r in rows for i, a in enumerate(names) for b in names[i + 1 :]
    )


def test_every_accepted_combination_is_estimated(accepted_rows):
    rows, _ = accepted_rows
    broken, outcomes = check_all(argv_of("estimate", r) for r in rows)
    refused = [f"{' '.join(a)}\n    {e}" for a, code, e in outcomes if code == 2]
    assert not broken, "\n".join(broken[:20])
    assert not refused, f"{len(refused)} of {len(rows)} refused:\n" + "\n".join(refused[:20])


def test_every_combination_keeps_the_contract():
    """The same choices without the rules: refusals are one sentence, the rest valid."""
    rows, _ = all_pairs(ESTIMATE, seed=7)
    broken, outcomes = check_all(argv_of("estimate", r) for r in rows)
    assert not broken, "\n".join(broken[:20])
    assert any(code == 0 for _, code, _ in outcomes)
