"""The fast path of `ftmem estimate` (ftmem.cli.fast) prints what the typer app prints.

Three checks: its table of flags is typer's own command read back (name, flags, on/off,
choices, default, no callback, no environment variable), so the two cannot drift apart;
a corpus of command lines, run through the entry point (fast path) and through the typer
app (ftmem.cli.root.main), gives the same stdout, stderr and exit code, byte for byte;
every command line the fast path must not read is handed to typer (parse_estimate
returns None), and is then answered as before.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest

import ftmem
from ftmem.cli import fast
from ftmem.cli.fast import parse_estimate

# typer's estimate options the fast path leaves to typer, each for its reason
LEFT_TO_TYPER = {
    "emit": "writes or prints an engine config",
    "emit_to": "writes a file",
    "traced": "runs transformers",
    "from_config": "flags told from the config's settings by typer's context",
    "launcher": "as --from",
}


def _estimate_command():
    import typer

    from ftmem.cli import app

    return typer.main.get_command(app).commands["estimate"]


def test_the_fast_flags_are_typers():
    """Every flag the fast path reads is one of typer's `estimate` options, with the same
    name, meaning (on / off, choices, number, text) and default; each typer option it
    does not read is one it must leave (LEFT_TO_TYPER) or a float (typer reads "1e3",
    "nan"); nothing typer does besides parsing (callbacks, environment, prompts,
    repeated values) applies to any of them."""
    command = _estimate_command()
    assert not command.context_settings  # no token normalising, no unknown options let by
    assert command.allow_interspersed_args and not command.ignore_unknown_options
    flags = fast._flags()
    defaults = {s.name: s.default for g in fast.ESTIMATE_GROUPS for s in g} | fast.OWN_DEFAULTS
    seen = set()
    for param in command.params:
        if param.param_type_name == "argument":
            assert param.name == "model" and param.nargs == 1
            continue
        annotation = param.type_descriptor.annotation
        opts = [*param.opts, *param.secondary_opts]
        read = [o for o in opts if o in flags]
        if not read:
            assert param.name in LEFT_TO_TYPER or annotation is float, param.name
            continue
        assert read == opts, param.name  # all of an option's flags, or none
        assert param.envvar is None and param.callback is None and not param.is_eager
        assert not param.multiple and param.nargs == 1 and not param.count
        assert param.prompt is None
        assert param.default == defaults[param.name], param.name
        for opt in opts:
            name, action = flags[opt]
            seen.add(opt)
            assert name == param.name
            if annotation is bool:
                assert param.is_flag and action is (opt in param.opts)
            elif get_origin(annotation) is Literal:
                choices = get_args(annotation)
                assert all(action(c) == c for c in choices)
                assert action(choices[0].upper() + "x") is fast._ABSENT
            else:
                assert action is {int: fast._count, str: fast._text}[annotation], param.name
    assert seen == set(flags)  # no flag typer does not have


PRESETS = [
    "llama2-13b",
    "llama2-7b",
    "gpt2",
    "mistral-7b",
    "mixtral-8x7b",
    "qwen2.5-7b",
    "gemma3-4b-vision",
    "llava-1.5-7b",
    "flan-t5-base",
    "phi-2",
    "qwen3-30b-a3b",
    "pythia-160m",
]
METHODS = ["full", "lora", "qlora", "freeze", "dora", "ia3", "prompt-tuning", "galore"]
PRECISIONS = ["bf16", "fp16", "fp32", "bf16-mixed"]
GPUS = ["rtx4090", "a100-80gb", "t4", "h100-80gb", "l4"]


def _fast_corpus() -> list[list[str]]:
    """Command lines the fast path reads: presets, methods, precisions and GPUs crossed
    at random (seeded), each with some of the other options it reads."""
    rng = random.Random(19)
    extras = [
        [],
        ["--format", "json"],
        ["--format", "yaml"],
        ["--format", "markdown"],
        ["--format", "csv"],
        ["--units", "GB"],
        ["--quiet"],
        ["-q", "--check"],
        ["--check"],
        ["--batch-size", "4", "--seq-len", "2048"],
        ["--grad-ckpt", "--optimizer", "adamw-8bit"],
        ["--no-dropout", "--attn", "eager"],
        ["--gpus", "4", "--strategy", "zero3"],
        ["--gpus", "8", "--strategy", "fsdp", "--offload-optimizer", "cpu"],
        ["--lora-r", "16", "--lora-targets", "all-linear"],
        ["--fewest-gpus"],
        ["--gpu-memory", "24GiB"],
        ["--overhead", "1GiB"],
        ["--seq-len", "0"],  # refused by ftmem itself: the same sentence either way
        ["--quant", "int4", "--strategy", "zero2"],
    ]
    lines = [["estimate", "llama2-13b", "--method", "qlora", "--gpu", "rtx4090"]]
    combos = list(itertools.product(PRESETS, METHODS, PRECISIONS, GPUS))
    for preset, method, precision, gpu in rng.sample(combos, 70):
        extra = extras[rng.randrange(len(extras))]
        line = [preset, "--method", method, "--precision", precision, "--gpu", gpu, *extra]
        lines.append(["estimate", *line])
    # the model after its options, no GPU, an unknown model and GPU (ftmem's own errors)
    lines += [
        ["estimate", "--gpu", "t4", "gpt2"],
        ["estimate", "gpt2"],
        ["estimate", "nope-model", "--gpu", "t4"],
        ["estimate", "gpt2", "--gpu", "nope-gpu"],
        ["estimate", "gpt2", "--gpu-memory", "lots"],
        ["estimate", "llama2-7b", "--method", "qlora", "--quant", "int4", "--strategy", "zero2"],
        ["estimate", "llama2-70b", "--gpu", "t4", "--check"],
        ["estimate", "llama2-70b", "--gpu", "t4", "--check", "--quiet"],
        ["estimate", "gpt2", "--gpus", "99999999999999999"],
    ]
    return lines


# command lines the fast path must hand to typer: help, typer's own refusals and
# conversions, and what it leaves to typer by design
FALLBACK = [
    ["estimate"],
    # TRL's defaults are applied where typer's context says a flag was not given
    ["estimate", "llama2-7b", "--framework", "trl", "--batch-size", "2"],
    ["estimate", "--help"],
    ["estimate", "gpt2", "--help"],
    ["estimate", "gpt2", "-h"],
    ["estimate", "gpt2", "--method", "bogus"],
    ["estimate", "gpt2", "--method", "QLORA"],
    ["estimate", "gpt2", "--format", "xml"],
    ["estimate", "gpt2", "--units", "gib"],
    ["estimate", "gpt2", "--batch-size", "-1"],
    ["estimate", "gpt2", "--batch-size", "4.0"],
    ["estimate", "gpt2", "--batch-size", "1e3"],
    ["estimate", "gpt2", "--batch-size", "04"],
    ["estimate", "gpt2", "--batch-size", "+4"],
    ["estimate", "gpt2", "--batch-size", " 4"],
    ["estimate", "gpt2", "--batch-size", "٤"],
    ["estimate", "gpt2", "--batch-size", ""],
    ["estimate", "gpt2", "--batch-size"],
    ["estimate", "gpt2", "--gpu"],
    ["estimate", "gpt2", "--gpu", ""],
    ["estimate", "gpt2", "--gpu", "--check"],
    ["estimate", "gpt2", "--gpu=t4"],
    ["estimate", "gpt2", "--method", "lora", "--method", "qlora"],
    ["estimate", "gpt2", "--grad-ckpt", "--no-grad-ckpt"],
    ["estimate", "gpt2", "-q", "--quiet"],
    ["estimate", "gpt2", "-qq"],
    ["estimate", "gpt2", "--lora-alpha", "16"],
    ["estimate", "gpt2", "--lora-dropout", "nan"],
    ["estimate", "gpt2", "--emit", "deepspeed"],
    ["estimate", "gpt2", "--emit-to", "x.json"],
    ["estimate", "gpt2", "--from", "no-such-config.yaml"],
    ["estimate", "gpt2", "--launcher", "no-such-launcher.yaml"],
    ["estimate", "gpt2", "gpt2-medium"],
    ["estimate", "gpt2", "--"],
    ["estimate", "--", "gpt2"],
    ["estimate", "-", "--gpu", "t4"],
    ["estimate", "gpt2", "--gpus"],
    ["estimate", "gpt2", "--METHOD", "qlora"],
    ["estimate", "gpt2", "--meth", "qlora"],
    ["estimate", "gpt2\udcff", "--gpu", "t4"],
    ["estimate", "gpt2", "--gpu", "t4\udcff"],
    ["--version"],
    ["--help"],
    ["models"],
    ["Estimate", "gpt2"],
]


def _run(entry, argv: list[str], capsys) -> tuple[str, str, object]:
    try:
        entry(list(argv))
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return out, err, code


def _typer_main():
    from ftmem.cli.root import main

    return main


def test_the_corpus_is_read_by_the_fast_path():
    corpus = _fast_corpus()
    assert len(corpus) >= 80
    assert all(parse_estimate(argv) is not None for argv in corpus)


def test_the_fast_path_prints_what_typer_prints(capsys, monkeypatch):
    """Each command line of the corpus: the entry point (fast path) and the typer app
    print the same bytes on stdout and stderr and exit with the same code."""
    from ftmem.cli import main

    monkeypatch.setenv("COLUMNS", "100")
    full = _typer_main()
    codes = set()
    for argv in _fast_corpus():
        expected = _run(full, argv, capsys)
        got = _run(main, argv, capsys)
        assert got == expected, argv
        codes.add(expected[2])
    assert codes == {0, 1, 2}  # fits, does not fit (--check), refused by ftmem


@pytest.mark.parametrize("argv", FALLBACK, ids=lambda a: " ".join(a)[:60])
def test_what_the_fast_path_does_not_read_goes_to_typer(argv, capsys):
    """Everything else is typer's to parse: help, its error messages and conversions
    stay its own, answered exactly as before."""
    from ftmem.cli import main

    assert parse_estimate(argv) is None
    assert _run(main, argv, capsys) == _run(_typer_main(), argv, capsys)


def test_shell_completion_goes_to_typer(monkeypatch):
    monkeypatch.setenv("_FTMEM_COMPLETE", "complete_bash")
    assert parse_estimate(["estimate", "gpt2"]) is None


def test_what_is_not_text_goes_to_typer():
    assert parse_estimate(["estimate", "gpt2", "--batch-size", 4]) is None  # type: ignore[list-item]
    assert parse_estimate(["estimate", b"gpt2"]) is None  # type: ignore[list-item]


def test_traced_goes_to_typer():
    # not run here: a traced step builds the model with transformers (tests/test_traced.py)
    assert parse_estimate(["estimate", "gpt2", "--traced"]) is None


def _env() -> dict[str, str]:
    src = str(Path(ftmem.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("FTMEM_PRESETS", None)
    return env


CODE = """
import sys
argv = sys.argv[2:]
if sys.argv[1] == "fast":
    from ftmem.cli import main
else:
    from ftmem.cli.root import main
main(argv)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["estimate", "llama2-13b", "--method", "qlora", "--gpu", "rtx4090"],
        ["estimate", "llama2-70b", "--gpu", "t4", "--check", "--format", "json"],
        ["estimate", "gpt2", "--gpu", "nope-gpu"],
    ],
    ids=["table", "json-check", "error"],
)
def test_a_process_prints_the_same(argv):
    """In a process of its own (the streams as the user's, the exit status the shell
    sees): the same bytes and status. (That it loads no typer: tests/test_startup.py.)"""
    runs = [
        subprocess.run(
            [sys.executable, "-c", CODE, how, *argv], env=_env(), capture_output=True, timeout=120
        )
        for how in ("fast", "typer")
    ]
    assert [(r.returncode, r.stdout, r.stderr) for r in runs[:1]] == [
        (r.returncode, r.stdout, r.stderr) for r in runs[1:]
    ]
