"""User presets (FTMEM_PRESETS) that are wrong in every way a user can make them wrong:
each gives exit 2 and one sentence naming the file, never a traceback or a hang. And the
lookup's shortcuts (a shipped preset read by its file name, each file parsed once) keep
the documented rule: a user preset with a shipped id replaces it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ftmem.presets as presets
from ftmem.cli import main
from ftmem.presets import get_gpu, get_model, model_presets

SHIPPED_MODELS = sorted((Path(__file__).resolve().parents[1] / "presets" / "models").glob("*.yaml"))

# a valid model preset body (Llama-2-7B's shape), without its id
BODY = (
    "name: Acme-7B\nfamily: llama\nvocab_size: 32000\nhidden_size: 4096\nnum_layers: 32\n"
    "num_heads: 32\nintermediate_size: 11008\n"
)


@pytest.fixture
def user(tmp_path, monkeypatch):
    """An empty user presets folder in FTMEM_PRESETS; returns its models/ folder."""
    (tmp_path / "models").mkdir()
    (tmp_path / "gpus").mkdir()
    monkeypatch.setenv("FTMEM_PRESETS", str(tmp_path))
    return tmp_path / "models"


def _one_sentence(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert out == ""
    assert err.startswith("Error: ")
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# (file name, its text, what the error says)
BAD_MODEL_PRESETS: list[tuple[str, str | bytes, str]] = [
    ("no-id", BODY, "has no 'id'"),
    ("empty-id", "id: ''\n" + BODY, "has no 'id'"),
    ("id-list", "id: [a, b]\n" + BODY, "has no 'id' (list given)"),
    ("id-mapping", "id: {a: 1}\n" + BODY, "has no 'id' (dict given)"),
    ("aliases-number", "id: acme\naliases: 5\n" + BODY, "'aliases' must be a list"),
    ("aliases-text", "id: acme\naliases: acme-7b\n" + BODY, "'aliases' must be a list"),
    ("alias-mapping", "id: acme\naliases: [{a: 1}]\n" + BODY, "'aliases' must be a list"),
    ("not-mapping", "- 1\n- 2\n", "must hold a YAML mapping"),
    ("empty", "", "must hold a YAML mapping"),
    ("number-key", "id: acme\n1: 2\n" + BODY, "is invalid (1: Keys should be strings"),
    ("bad-field", "id: acme\n" + BODY.replace("32000", "-1"), "is invalid (vocab_size"),
    ("unclosed-list", "id: acme\naliases: [a\n" + BODY, "line 3"),
    ("tab-indent", "id: acme\n\tname: x\n", "line 2: found a tab character"),
    ("unclosed-quote", 'id: "acme\n', "found unexpected end of stream"),
    ("deep", "id: " + "[" * 100 + "]" * 100 + "\n", "nests deeper than 64 levels"),
    ("not-utf8", b"id: \xff\xfe\n", "is not UTF-8 text"),
]


@pytest.mark.parametrize(
    ("name", "text", "expected"), BAD_MODEL_PRESETS, ids=[c[0] for c in BAD_MODEL_PRESETS]
)
def test_a_bad_user_model_preset_is_one_sentence(user, capsys, name, text, expected):
    path = user / f"{name}.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    err = _one_sentence(["estimate", "llama2-7b"], capsys)
    assert str(path) in err
    assert expected in err


def test_a_user_gpu_preset_without_id_is_one_sentence(user, capsys):
    gpu = user.parent / "gpus" / "lab.yaml"
    gpu.write_text("name: Lab card\nmemory_bytes: 42949672960\nsource: our sheet\n")
    err = _one_sentence(["estimate", "llama2-7b", "--gpu", "rtx4090"], capsys)
    assert f"{gpu} is invalid (id: Field required)" in err


def test_a_broken_link_and_a_folder_are_refused(user, capsys):
    (user / "gone.yaml").symlink_to(user / "nowhere.yaml")
    assert "gone.yaml is a broken link" in _one_sentence(["estimate", "llama2-7b"], capsys)
    (user / "gone.yaml").unlink()
    (user / "folder.yaml").mkdir()
    assert "folder.yaml is not a regular file" in _one_sentence(["estimate", "gpt2"], capsys)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_user_preset_does_not_hang(user):
    """Opening a FIFO for reading blocks until a writer comes: run in a child process
    with a deadline, so a regression fails instead of hanging the suite."""
    os.mkfifo(user / "pipe.yaml")
    src = str(Path(presets.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "from ftmem.cli import main; main(['estimate', 'llama2-7b'])"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"Error: {user / 'pipe.yaml'} is not a regular file; give the preset itself."
    )


# --- the shortcuts keep the rule -----------------------------------------------------


def test_a_user_preset_replaces_the_shipped_one_of_its_id(user):
    # a file of another name that takes the shipped id; hidden 4992 is nobody's
    (user / "mine.yaml").write_text("id: llama2-13b\n" + BODY.replace("4096", "4992"))
    assert get_model("llama2-13b").hidden_size == 4992
    assert get_model("LLaMA-2-13B").hidden_size == 4992  # a shipped alias of that id
    assert model_presets()["llama2-13b"].hidden_size == 4992


def test_a_user_alias_wins_over_a_shipped_id(user):
    (user / "acme.yaml").write_text("id: acme\naliases: [llama2-7b]\n" + BODY)
    assert get_model("llama2-7b").name == "Acme-7B"
    assert get_model("llama2-13b").name == "Llama-2-13B"  # the others are untouched


def test_a_user_gpu_preset_replaces_the_shipped_one(user):
    (user.parent / "gpus" / "card.yaml").write_text(
        "id: rtx4090\nname: Our 4090\nmemory_bytes: 1000000000\nsource: us\n"
    )
    assert get_gpu("RTX4090").memory_bytes == 10**9


def test_an_edited_user_preset_is_read_again(user):
    path = user / "acme.yaml"
    path.write_text("id: acme\n" + BODY)
    assert get_model("acme").hidden_size == 4096
    path.write_text("id: acme\n" + BODY.replace("4096", "2048"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later edit
    assert get_model("acme").hidden_size == 2048


def test_each_shipped_file_is_parsed_at_most_once(tmp_path, monkeypatch):
    """The issue: finding one model parsed the whole folder twice (74 parses)."""
    monkeypatch.delenv("FTMEM_PRESETS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/ftmem/presets either
    parsed: list[str] = []
    real = presets.parsed_preset

    def counting(text, where):
        parsed.append(where)
        return real(text, where)

    monkeypatch.setattr(presets, "parsed_preset", counting)
    for cache in (presets._parsed, presets._model_entry, presets._gpu_entry):
        cache.cache_clear()
    get_model("llama2-13b")
    assert parsed == ["llama2-13b.yaml"]  # the file of that name only
    get_model("llama-2-13b")  # an alias: the rest are read, once
    model_presets()
    get_model("meta-llama/Llama-2-13b-hf")
    assert sorted(parsed) == sorted(p.name for p in SHIPPED_MODELS)
