"""The CLI's contract under a hostile environment and hostile text: exit 0 with valid
output, 1 only for "does not fit", 2 with one sentence on stderr and nothing on stdout;
never a traceback, never a hang, never a raw control character on the terminal.

Runs that depend on the process's own streams (encoding, a closed or full stdout, a pipe
closed by its reader, COLUMNS) start ``python -m ftmem.cli``; the rest call ``main``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from ftmem.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
HOSTILE_NAME = "\x1b[31mRED\x1b]0;pwned\x07 [/bold] :smile: \u202eevil\x9b"


def python(*args: str, env: dict[str, str] | None = None, timeout: float = 120, **kw):
    """``python ARGS`` in a fresh process with this checkout's ftmem (bytes out, so
    encodings show)."""
    path = os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])
    full_env = {k: v for k, v in os.environ.items() if k != "GITHUB_ACTIONS"}
    full_env.update(PYTHONPATH=path, **(env or {}))
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, *args],
        stderr=subprocess.PIPE,
        env=full_env,
        timeout=timeout,
        check=False,
        **kw,
    )


def cli(*args: str, **kw):
    """``python -m ftmem.cli ARGS`` in a fresh process."""
    return python("-m", "ftmem.cli", *args, **kw)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def one_sentence(err: str | bytes) -> str:
    """stderr holds exactly one line, an error sentence, and no traceback."""
    text = err.decode() if isinstance(err, bytes) else err
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("Error: ") and lines[0].endswith((".", "?", ")")), lines[0]
    return lines[0]


# -- the environment -------------------------------------------------------------------------


def test_ascii_terminal_gets_ascii_lookalikes():
    res = cli("estimate", "llama2-7b", "--gpu", "rtx4090", env={"PYTHONIOENCODING": "ascii"})
    assert res.returncode == 0, res.stderr
    assert res.stderr == b""
    text = res.stdout.decode("ascii")  # raises if a single byte is not ASCII
    # the title's "batch 1 × seq 512 · attn" in ASCII
    assert "batch 1 x seq 512 - attn" in " ".join(text.split())
    assert "Weights" in text and "NOT FIT on NVIDIA" in text  # 7B full: 66 GiB > 24
    help_res = cli("--help", env={"PYTHONIOENCODING": "ascii"})
    assert help_res.returncode == 0 and help_res.stdout.decode("ascii").strip()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_stdout_to_a_full_disk_is_one_sentence():
    with open("/dev/full", "w") as full:
        res = cli("estimate", "llama2-7b", "--gpu", "rtx4090", stdout=full)
    assert res.returncode == 2
    assert "No space left on device" in one_sentence(res.stderr)


def test_closed_stdout_is_one_sentence_unless_nothing_is_printed():
    def close_stdout() -> None:  # in the child, before python starts: `>&-`
        os.close(1)

    res = cli("gpus", stdout=None, preexec_fn=close_stdout)
    assert res.returncode == 2
    assert "standard output is closed" in one_sentence(res.stderr)
    quiet = cli("estimate", "gpt2", "--gpu", "rtx4090", "-q", stdout=None, preexec_fn=close_stdout)
    assert quiet.returncode == 0 and quiet.stderr == b""


def test_pipe_closed_by_its_reader_exits_141_silently():
    read_end, write_end = os.pipe()
    os.close(read_end)  # `ftmem models | head -0`: nobody reads
    try:
        res = cli("models", stdout=write_end)
    finally:
        os.close(write_end)
    assert res.returncode == 128 + 13  # what a shell reports for a process killed by SIGPIPE
    assert res.stderr == b""


def test_interrupt_exits_130(capsys, monkeypatch):
    import ftmem.presets

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(ftmem.presets, "gpu_presets", interrupted)
    code, out, err = run_main(capsys, "gpus")
    assert code == 130 and out == "" and err.strip() == "Aborted."


def test_a_100000_character_model_name_gives_a_short_error(capsys):
    code, out, err = run_main(capsys, "estimate", "x" * 100_000)
    assert code == 2 and out == ""
    line = one_sentence(err)
    assert len(line) < 300 and "100,000 characters" in line


@pytest.mark.parametrize("columns", ["0", "1", "-3", "abc", "99999999999"])
def test_absurd_columns_still_print_a_table(columns):
    res = cli("estimate", "llama2-7b", "--gpu", "rtx4090", env={"COLUMNS": columns})
    assert res.returncode == 0, res.stderr
    text = res.stdout.decode()
    assert "Optimizer states" in text and "FIT on NVIDIA" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 1000
    help_res = cli("--help", env={"COLUMNS": columns})
    assert help_res.returncode == 0 and b"estimate" in help_res.stdout


def test_a_library_warning_does_not_reach_stderr():
    code = (
        "import warnings, ftmem.presets as p\n"
        "real = p.gpu_presets\n"
        "def noisy():\n"
        "    warnings.warn('this API changes in v9', FutureWarning)\n"
        "    return real()\n"
        "p.gpu_presets = noisy\n"
        "from ftmem.cli import main\n"
        "main(['gpus'])\n"
    )
    res = python("-c", code, timeout=120)
    assert res.returncode == 0 and res.stderr == b"", res.stderr


# -- user text shown inert ----------------------------------------------------------------------


@pytest.fixture
def hostile_config(tmp_path: Path) -> Path:
    """A small Llama config whose name would recolour the terminal, retitle its window,
    reverse the text after it and, read as rich markup, raise."""
    cfg = {
        "model_type": "llama",
        "_name_or_path": HOSTILE_NAME,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 100,
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def _inert(text: str) -> None:
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", text), repr(text)


@pytest.mark.parametrize(
    "args",
    [
        ["estimate", "--gpu", "rtx4090"],
        ["estimate", "--format", "csv"],
        ["estimate", "--format", "markdown"],
        ["estimate", "--format", "yaml"],
        ["explain"],
        ["serve", "--context", "64"],
        ["plan", "--gpu", "rtx4090"],
        ["compare-methods"],
    ],
    ids=lambda a: "-".join(a[:3]),
)
def test_config_names_reach_the_terminal_inert(capsys, hostile_config, args):
    code, out, err = run_main(capsys, args[0], str(hostile_config), *args[1:])
    assert code in (0, 1), err
    _inert(out)
    _inert(err)
    assert "RED" in out
    if args[1:2] != ["--format"]:
        assert "\\u001b[31mRED" in out  # shown, as an escape
        assert "[/bold]" in out and ":smile:" in out  # neither markup nor emoji


def test_json_keeps_the_exact_name(capsys, hostile_config):
    for args in (["estimate"], ["serve", "--context", "64"]):
        code, out, _ = run_main(capsys, args[0], str(hostile_config), *args[1:], "--format", "json")
        assert code == 0
        _inert(out)
        data = json.loads(out)
        name = data["model"]["name"] if args[0] == "estimate" else data["model"]
        assert name == HOSTILE_NAME  # the escapes are JSON's own: the value round-trips


def test_an_argument_with_escapes_is_shown_inert_in_the_error(capsys):
    code, out, err = run_main(capsys, "estimate", "llama\x1b[2J\x1b]0;x\x07")
    assert code == 2 and out == ""
    _inert(err)
    assert "\\u001b[2J" in one_sentence(err)


# -- contracts -----------------------------------------------------------------------------------

# Llama-2-7B (6.74e9 parameters) with ZeRO-3 and the optimizer offloaded: the host holds
# the fp32 master weights and both Adam moments, 12 bytes a parameter, about 81 GB a node
# whatever the GPU count; 8 GiB of host RAM cannot hold it, 2 TiB can.
OFFLOAD = ["estimate", "llama2-7b", "--gpu", "a100-80gb", "--gpus", "8", "--strategy", "zero3",
           "--offload-optimizer", "cpu"]  # fmt: skip


def test_check_fails_when_host_ram_does_not_fit(capsys):
    code, out, _ = run_main(capsys, *OFFLOAD, "--host-memory", "8GiB", "--check", "-q")
    assert code == 1 and out == ""
    code, out, _ = run_main(capsys, *OFFLOAD, "--host-memory", "2TiB", "--check", "-q")
    assert code == 0 and out == ""
    code, out, _ = run_main(capsys, *OFFLOAD, "--host-memory", "8GiB", "--format", "json")
    data = json.loads(out)
    assert data["fits"] is True  # so the exit 1 above came from the host, not the GPU
    assert data["parallel"]["host_bytes_per_node"] > 12 * 6.7e9


def test_emit_honours_quiet_and_check(capsys):
    spread = ["--gpu", "a100-80gb", "--gpus", "2", "--strategy", "zero3", "--emit", "deepspeed"]
    code, out, err = run_main(capsys, "estimate", "llama2-7b", *spread, "-q")
    assert (code, out, err) == (0, "", "")
    # Llama-2-70B full finetuning: 16 bytes a parameter (weights, gradients, Adam) over
    # two GPUs is 560 GB each, far over 80 GB
    code, out, _ = run_main(capsys, "estimate", "llama2-70b", *spread, "--check")
    assert code == 1
    assert json.loads(out)["zero_optimization"]["stage"] == 3


BUDGETS = """\
runs:
  - name: "too big\\x01\\x1b[31m, with: colon 100%\\r\\nline"
    model: llama2-7b
    gpu: rtx4090
  - name: fine
    model: gpt2
    gpu: rtx4090
"""


def test_junit_with_control_characters_is_valid_xml(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("b.yaml").write_text(BUDGETS)
    code, _, _ = run_main(capsys, "check", "b.yaml", "--junit", "report.xml")
    assert code == 1
    root = ET.parse("report.xml").getroot()  # raises on a control character
    names = [case.get("name") for case in root.iter("testcase")]
    assert names[1] == "fine"
    assert names[0].startswith("too big") and "\\u0001" in names[0]


def test_junit_dash_is_stdout_alone(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("b.yaml").write_text(BUDGETS)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, err = run_main(capsys, "check", "b.yaml", "--junit", "-")
    assert code == 1
    root = ET.fromstring(out)  # the whole of stdout is the report
    assert root.tag == "testsuite" and root.get("failures") == "1"
    assert not Path("-").exists()
    assert err.count("::error ") == 1 and err.count("::notice ") == 1  # annotations moved
    code, out, err = run_main(capsys, "check", "b.yaml", "--junit", "-", "--json", "-")
    assert code == 2 and out == ""
    one_sentence(err)


def _parse_workflow_command(line: str) -> tuple[str, dict[str, str], str]:
    """A workflow command read as GitHub's runner reads it (ActionCommand.TryParseV2 in
    actions/runner, src/Runner.Common/ActionCommand.cs): the command info ends at the
    next '::', properties are split at ',' and '=', then unescaped in the runner's order."""

    def unescape(text: str, codes: str) -> str:
        table = {"\r": "%0D", "\n": "%0A", ":": "%3A", ",": "%2C", "%": "%25"}
        for ch in codes:
            text = text.replace(table[ch], ch)
        return text

    assert line.startswith("::")
    end = line.index("::", 2)
    name, _, props = line[2:end].partition(" ")
    pairs = dict(p.split("=", 1) for p in props.strip().split(",") if p)
    properties = {k: unescape(v, "\r\n:,%") for k, v in pairs.items()}
    return name, properties, unescape(line[end + 2 :], "\r\n%")


def test_github_annotations_escape_properties_and_data(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = "odd, name: 100%.yaml"
    Path(path).write_text(BUDGETS)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    code, out, _ = run_main(capsys, "check", path)
    assert code == 1
    commands = [line for line in out.splitlines() if line.startswith("::")]
    assert len(commands) == 2
    for line in commands:
        _inert(line)
        _, props, _ = _parse_workflow_command(line)
        assert props["file"] == path  # the ',' and ':' did not end the value
        assert set(props) == {"file", "line", "title"}
    error = _parse_workflow_command(commands[0])
    assert error[0] == "error" and error[1]["line"] == "2"
    # the run name's CR is shown as an escape; its LF, escaped as %0A, is a line break in
    # the annotation, not the end of the command (else there would be three lines)
    assert "colon 100%\\u000d\nline: does not fit" in error[2]


def test_a_broken_preset_is_one_line(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "gpus").mkdir()
    (tmp_path / "models" / "acme.yaml").write_text(
        "id: acme\nname: [unclosed\nfamily: llama\n  bad: indent\n"
    )
    res = cli("estimate", "acme", env={"FTMEM_PRESETS": str(tmp_path)})
    assert res.returncode == 2 and res.stdout == b""
    assert "acme.yaml, line" in one_sentence(res.stderr)


# -- regular expressions from users --------------------------------------------------------------

# How many paths a backtracking matcher may take over a name of n characters, counted by
# hand: searching tries n + 1 starts; each unbounded repeat of one character picks one of
# n + 1 lengths. The longest preset parameter name (Flan-T5's relative attention bias) has
# 68 characters, and the bound is 1e6 paths.
N = 68


@pytest.mark.parametrize(
    ("pattern", "paths"),
    [
        ("self_attn", N + 1),
        (r"layers\.3[01]\.", N + 1),
        ("model.layers.2[0-9]+.mlp.*", (N + 1) ** 3),  # axolotl's unfrozen_parameters style
        (".*.*j", (N + 1) ** 3),  # 328,509 (k_proj, q_proj... end in j)
        (r"(\.weight)?norm", 2 * (N + 1)),  # an optional group is not a repeated one
    ],
)
def test_patterns_within_the_bound_are_accepted(capsys, pattern, paths):
    assert paths <= 1_000_000
    code, out, err = run_main(
        capsys, "estimate", "llama2-7b", "--method", "partial", "--trainable-modules", pattern,
        "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["model"]["n_trainable_params"] > 0


@pytest.mark.parametrize(
    "pattern",
    [
        "(.*.*)*z",  # 2^n: the classic
        "(a+)+b",
        "(a|aa)*c",
        ".*.*.*z",  # (n + 1)^4 = 22.7 million paths
        "(?:.*){3}z",
        "a" * 300,  # over 256 characters
    ],
)
def test_patterns_that_could_hang_are_refused_at_once(pattern):
    res = cli("estimate", "llama2-7b", "--method", "partial", "--trainable-modules", pattern,
              timeout=60)  # fmt: skip
    assert res.returncode == 2 and res.stdout == b""
    line = one_sentence(res.stderr)
    assert "--trainable-modules" in line


def test_costly_accepted_pattern_is_searched_in_every_name_in_time():
    """Near the bound, searched in every parameter name of the preset with the most
    (GPT-3 175B: 96 blocks of 12), finishing well inside a hang guard."""
    code = (
        "from ftmem.methods import partial_trainable\n"
        "from ftmem.presets import get_model\n"
        "partial_trainable(get_model('gpt3-175b'), '.*.*a?Z,lm_head')\n"
    )
    res = python("-c", code, timeout=60)
    # no name has a 'Z': the error says so, after every name was searched
    assert b"matches no parameter" in res.stderr, res.stderr


# -- serving uses the estimate's position check ----------------------------------------------------


def test_serve_refuses_contexts_past_learned_positions(capsys):
    # GPT-2's config.json: "n_positions": 1024 (a learned table, nothing beyond it)
    code, out, err = run_main(capsys, "serve", "gpt2", "--context", "100000")
    assert code == 2 and out == ""
    assert "1024 learned positions" in one_sentence(err)
    code, out, err = run_main(capsys, "estimate", "gpt2", "--seq-len", "100000")
    assert code == 2 and "1024 learned positions" in err  # the same check
    code, out, _ = run_main(capsys, "serve", "gpt2", "--context", "1024")
    assert code == 0


def test_serve_max_context_stops_at_the_positions(capsys):
    # 124M parameters in bf16 (250 MB) and 1,024 tokens of KV cache (2 × 12 layers × 768
    # × 2 bytes = 36 KiB a token, 36 MiB) fit a 24 GB card many times over
    code, out, _ = run_main(capsys, "serve", "gpt2", "--max-context", "--gpu", "rtx4090")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("Longest context"))
    assert re.search(r": 1,024 tokens \(all of .*positions\)\.$", line), line
    code, out, _ = run_main(capsys, "serve", "gpt2", "--format", "json")
    assert code == 0 and json.loads(out)["config"]["context"] == 1024  # the default fits


# -- preset listings: ids whole ----------------------------------------------------------------------


def _cells(text: str) -> set[str]:
    return {cell.strip() for line in text.splitlines() for cell in re.split("[│┃|]", line)}


@pytest.mark.parametrize("columns", ["100", "80", "40", "20"])
def test_every_preset_id_appears_whole(columns):
    from ftmem.arch import count_params
    from ftmem.presets import gpu_presets, model_presets

    models = cli("models", env={"COLUMNS": columns})
    assert models.returncode == 0, models.stderr
    cells = _cells(models.stdout.decode())
    for preset_id, arch in model_presets().items():
        assert preset_id in cells, preset_id
        assert f"{count_params(arch):,}" in cells  # exact counts are copied too
    gpus = cli("gpus", env={"COLUMNS": columns})
    assert gpus.returncode == 0, gpus.stderr
    cells = _cells(gpus.stdout.decode())
    assert all(gpu_id in cells for gpu_id in gpu_presets())
    if int(columns) >= 80:
        assert "name" in cells  # the names are left out only on narrow terminals


def test_warnings_filters_are_restored_after_main(capsys):
    before = list(warnings.filters)
    run_main(capsys, "gpus")
    assert warnings.filters == before


def test_budget_run_names_appear_whole(capsys, monkeypatch):
    sample = Path(__file__).resolve().parents[1] / "docs" / "examples" / "budgets.yaml"
    import yaml

    runs = yaml.safe_load(sample.read_text())["runs"]
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_main(capsys, "check", str(sample))
    assert code == 0
    cells = _cells(out)
    assert all(run["name"] in cells and run["model"] in cells for run in runs)


@pytest.mark.parametrize("ref", [b"\xff\xfe\x00not text", b"../../elsewhere", b""])
def test_a_cache_entry_whose_ref_is_not_a_commit_is_one_sentence(capsys, tmp_path, ref):
    # huggingface_hub itself fails when refs/main names no snapshot; so do we, in one line
    entry = tmp_path / "models--acme--tiny"
    snapshot = entry / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 3, "num_attention_heads": 4, "vocab_size": 100}  # fmt: skip
    (snapshot / "config.json").write_text(json.dumps(cfg))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_bytes(ref)
    code, out, err = run_main(capsys, "estimate", str(entry), "--format", "json")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "refs/main" in err


def test_a_cache_entry_with_a_good_ref_uses_its_snapshot(capsys, tmp_path):
    entry = tmp_path / "models--acme--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (entry / "snapshots" / commit).mkdir(parents=True)
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 3, "num_attention_heads": 4, "vocab_size": 100}  # fmt: skip
    (entry / "snapshots" / commit / "config.json").write_text(json.dumps(cfg))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit + "\n")
    code, out, err = run_main(capsys, "estimate", str(entry), "--format", "json")
    assert code == 0, err
    # 3 layers of 4*64*64 attention + 3*64*128 MLP + 2 norms of 64, two 100x64 tables, final norm
    expected = 3 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 2 * 100 * 64 + 64
    assert json.loads(out)["model"]["n_params"] == expected


def test_python_dash_m_ftmem_runs_the_command():
    # `python -m ftmem` was "No module named ftmem.__main__" (exit 1, a traceback-like line)
    done = python("-m", "ftmem", "estimate", "nope")
    assert done.returncode == 2 and done.stdout == b""
    assert one_sentence(done.stderr).startswith("Error: Unknown model 'nope'")
    assert python("-m", "ftmem", "estimate", "gpt2", "-q").returncode == 0
