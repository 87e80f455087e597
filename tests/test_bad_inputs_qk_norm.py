"""Per-head q/k norms (Architecture.qk_norm) that transformers cannot build: refused in
one sentence by `ftmem measure`, not an AssertionError from the parameter-count check."""

from __future__ import annotations

import pytest

from ftmem.cli import main

PRESET = (
    "id: {id}\nname: {id}\nfamily: {family}\nvocab_size: 300\nhidden_size: 96\n"
    "num_layers: 2\nnum_heads: 4\nintermediate_size: 160\nqk_norm: {qk}\n"
)


@pytest.mark.parametrize(
    ("family", "qk", "says"),
    [("llama", "true", "has no per-head q/k norms"), ("qwen3", "false", "has per-head")],
)
def test_measure_refuses_q_k_norms_transformers_cannot_build(
    family, qk, says, tmp_path, monkeypatch, capsys
):
    pytest.importorskip("transformers")
    (tmp_path / "models").mkdir()
    (tmp_path / "gpus").mkdir()
    (tmp_path / "models" / "m.yaml").write_text(PRESET.format(id="qk-m", family=family, qk=qk))
    monkeypatch.setenv("FTMEM_PRESETS", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["measure", "qk-m", "--method", "lora", "--seq-len", "8", "--batch-size", "1"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], err
