"""What the surface property tests (tests/test_surface_*.py) found, each kept as an example
of its own."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ftmem.cli import main
from ftmem.sources import HUB_ID


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", ["./nothing", "a--b/c", "org/name.git", "org/-x", "é/x"])
def test_a_name_the_hub_refuses_as_an_id_is_an_unknown_model(name):
    # huggingface_hub's validate_repo_id raised HFValidationError from the cache lookup
    code, out, err = _run(["estimate", name])
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert f"Unknown model '{name}'" in err


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab_-./é9", min_size=1, max_size=12).filter(lambda t: t.count("/") == 1))
def test_hub_ids_are_what_huggingface_hub_accepts(repo_id):
    validators = pytest.importorskip("huggingface_hub.utils")
    try:
        validators.validate_repo_id(repo_id)
        accepted = True
    except validators.HFValidationError:
        accepted = False
    assert bool(HUB_ID.fullmatch(repo_id)) == accepted


@pytest.mark.parametrize("model_type", [[], {}, 5, True])
def test_a_model_type_that_is_not_text_beside_a_text_config_is_one_sentence(tmp_path, model_type):
    # it was looked up in a dict of multimodal types: TypeError (unhashable type: 'list')
    config = {"model_type": model_type, "vocab_size": None, "text_config": {}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, out, err = _run(["estimate", str(tmp_path)])
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "model_type must be a string" in err


PRESETS = Path(__file__).resolve().parents[1] / "presets"


@pytest.mark.parametrize(
    ("preset", "mlp", "kind"), [("gpt2", None, "plain"), ("gpt2", "gated", "plain"),
                                ("llama2-7b", "plain", "gated")]
)  # fmt: skip
def test_a_user_preset_whose_mlp_is_not_its_familys_is_one_sentence(
    tmp_path, monkeypatch, preset, mlp, kind
):
    # a GPT-2 preset without `mlp` (gated by default) looked for a gate projection that
    # GPT-2 does not have while its parameters were counted: KeyError 'gate'
    data = {**yaml.safe_load((PRESETS / "models" / f"{preset}.yaml").read_text()), "id": "acme"}
    data["aliases"] = []
    data.pop("mlp", None)
    if mlp is not None:
        data["mlp"] = mlp
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "acme.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FTMEM_PRESETS", str(tmp_path))
    for argv in (["models"], ["estimate", "acme"]):
        code, out, err = _run(argv)
        assert (code, out) == (2, "") and err.count("\n") == 1, err
        assert f"give mlp: {kind}" in err


def test_virtual_tokens_are_within_the_token_bound_not_an_unnamed_cap():
    # `le=4096` refused 4,097 virtual tokens as "Input should be less than or equal to 4096"
    # (no bound named); the token bound now applies to the positions each sequence takes
    code, out, err = _run(
        ["estimate", "llama2-7b", "--method", "prompt-tuning", "--virtual-tokens", "4097",
         "--format", "json"]
    )  # fmt: skip
    assert code == 0 and json.loads(out)["memory"]["total_bytes"] > 0, err
    code, out, err = _run(
        ["estimate", "llama2-7b", "--method", "p-tuning", "--virtual-tokens", str(2**31)]
    )
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "--seq-len + --virtual-tokens" in err and "the token bound of 2,147,483,648" in err


@pytest.mark.parametrize("targets", ["", " , "])
def test_serve_refuses_empty_lora_targets_in_one_sentence(targets):
    # the adapters' RunConfig refused them past serve's checks: InvalidFields, a traceback
    code, out, err = _run(["serve", "gpt2", "--lora-adapters", "1", "--lora-targets", targets])
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "--lora-targets is empty" in err
