"""The CLI's stored preset values (ftmem.preset_values): a preset's text parsed by an
earlier run gives the same values without PyYAML, every shipped preset survives the
store unchanged, and nothing is stored outside the ``with`` block."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ftmem
from ftmem import preset_values as pv
from ftmem.errors import ConfigError
from ftmem.presets import presets_dir
from ftmem.textfiles import parse_yaml, read_text

TEXT = "id: tiny\naliases: [t-1]\nhidden_size: 64\ntie_embeddings: false\nrope_theta: 1.0e4\n"


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh, empty store in a temporary folder."""
    path = tmp_path / "__pycache__" / "preset_values.test.marshal"
    monkeypatch.setattr(pv, "store_path", lambda name: path)
    monkeypatch.setattr(pv, "_STORED", None)
    monkeypatch.setattr(pv, "_ADDED", {})
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    return path


def _no_yaml(monkeypatch):
    def refused(text, where):
        raise AssertionError(f"{where} parsed again")

    monkeypatch.setattr(pv, "parse_yaml", refused)


def test_a_stored_text_is_not_parsed_again(store, monkeypatch):
    with pv.stored_presets():
        first = pv.parsed_preset(TEXT, "tiny.yaml")
    assert store.is_file() and not pv._ADDED
    monkeypatch.setattr(pv, "_STORED", None)  # a later process: reads the file
    _no_yaml(monkeypatch)
    with pv.stored_presets():
        again = pv.parsed_preset(TEXT, "tiny.yaml")
    assert first == again == parse_yaml(TEXT, "tiny.yaml")
    assert repr(again) == repr(first)  # 1.0e4 a float, false a bool: types kept


def test_every_shipped_preset_is_stored_as_parsed():
    """marshal keeps what the safe loader gives a preset: the same values of the same
    types (repr tells True from 1 and 10000.0 from 10000), in the same order."""
    files = sorted(presets_dir().glob("*/*.yaml"))
    assert len(files) > 100
    for path in files:
        parsed = parse_yaml(read_text(path, "preset", 1 << 20), path.name)
        assert pv._writable(parsed), path.name
        assert repr(marshal.loads(marshal.dumps(parsed))) == repr(parsed), path.name


def test_another_parser_reads_the_file_as_empty(store, monkeypatch):
    with pv.stored_presets():
        pv.parsed_preset(TEXT, "tiny.yaml")
    monkeypatch.setattr(pv, "_STORED", None)
    monkeypatch.setattr(pv, "_parser_stamp", lambda: ("elsewhere/yaml/__init__.py", 1, 2))
    assert pv._stored() == {}


def test_only_inside_the_block(store, monkeypatch):
    assert pv.parsed_preset(TEXT, "tiny.yaml") == parse_yaml(TEXT, "tiny.yaml")
    assert not pv._ADDED and not store.exists()  # a program importing ftmem: nothing kept
    with pv.stored_presets():
        with pv.stored_presets():  # nested: the outer one writes
            pv.parsed_preset(TEXT, "tiny.yaml")
        assert not store.exists()
    assert store.exists()


def test_errors_and_dates_are_not_stored(store):
    with pv.stored_presets():
        with pytest.raises(ConfigError, match=r"bad\.yaml, line 2: did not find expected"):
            pv.parsed_preset("id: [unclosed", "bad.yaml")
        dated = pv.parsed_preset("id: d\nreleased: 2024-01-02\n", "d.yaml")
    assert str(dated["released"]) == "2024-01-02"  # a date: parsed, returned, not stored
    assert not store.exists() and not pv._ADDED


def test_not_written_without_bytecode(store, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    with pv.stored_presets():
        pv.parsed_preset(TEXT, "tiny.yaml")
    assert not store.exists()


CODE = """
import sys
from ftmem.cli import main
try:
    main(["estimate", "llama2-13b", "--method", "qlora", "--gpu", "rtx4090"])
except SystemExit:
    pass
print("YAML", "yaml" in sys.modules)
"""


def test_the_cli_reads_a_preset_it_has_read_before_without_pyyaml(tmp_path):
    """The first run parses the two presets with PyYAML and stores them (next to the
    bytecode: here a private PYTHONPYCACHEPREFIX); the second imports no PyYAML."""
    src = str(Path(ftmem.__file__).resolve().parents[1])
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "FTMEM_PRESETS")
    }
    env.update(PYTHONPATH=src, PYTHONPYCACHEPREFIX=str(tmp_path))
    seen = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert "FITS" in done.stdout
        seen.append(done.stdout.split("YAML", 1)[1].split())
    assert seen == [["True"], ["False"]]
