"""A third adversarial sweep (issue 19): inputs a new user can give that once crashed,
ran on for ever, printed without bound or were answered as if valid.

Each must now exit 2 with one ``Error:`` line and nothing on stdout, or, where marked,
be answered with a bounded output.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftmem import sources
from tests.test_bad_inputs_sweep2 import refused, run
from tests.test_option_space import NUMERIC, check_all, floats, integers, run_cli

PRESETS = Path(__file__).resolve().parents[1] / "presets"


# -- compare: a setting no cell can take is the user's mistake, not a table of n/a --------


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--batch-size", "0", "--batch-size"),
        ("--lora-r", "-1", "--lora-r"),
        ("--seq-len", "9" * 30, "--seq-len"),
    ],
)
def test_compare_refuses_a_setting_every_cell_refuses(capsys, option, value, named):
    # it printed a matrix of n/a (JSON nulls) and exit 0
    assert named in refused(capsys, "compare", "gpt2", option, value)
    assert named in refused(capsys, "compare", "gpt2", option, value, "--format", "json")


def test_compare_still_answers_when_some_cells_run(capsys):
    # a method the model cannot take stays n/a beside the ones it can
    code, out, _ = run(
        capsys, "compare", "t5-small", "--methods", "full,prompt-tuning", "--gpus", "rtx4090",
        "--format", "json",
    )  # fmt: skip
    assert code == 0
    cells = {c["method"]: c["total_bytes"] for c in json.loads(out)}
    assert cells["full"] > 0


# -- max: the searched setting's given value is replaced, but a wrong one is still named ---


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--batch-size", "-1"], "--batch-size"),
        (["--batch-size", "0"], "--batch-size"),
        (["--for", "seq-len", "--seq-len", "0"], "--seq-len"),
        (["--for", "lora-r", "--method", "lora", "--lora-r", "0"], "--lora-r"),
    ],
)
def test_max_names_a_wrong_value_of_what_it_searches(capsys, args, named):
    # answered as if the value had not been given
    assert named in refused(capsys, "max", "gpt2", "--gpu", "rtx4090", *args)


def test_max_replaces_a_valid_value_of_what_it_searches(capsys):
    given = run(capsys, "max", "gpt2", "--gpu", "rtx4090", "--batch-size", "4", "--format", "json")
    alone = run(capsys, "max", "gpt2", "--gpu", "rtx4090", "--format", "json")
    assert given == alone and given[0] == 0


# -- tokens per step: the eval and generation batches within the token bound too -------


@pytest.mark.parametrize(
    ("args", "product"),
    [
        (["--batch-size", "10000000"], "--batch-size × --seq-len"),
        (["--eval-batch-size", "2147483648"], "--eval-batch-size × --seq-len"),
        (
            ["--generate-batch-size", "100000", "--generate-len", "100000"],
            "--generate-batch-size × (--seq-len + --generate-len)",
        ),
    ],
)
def test_tokens_per_step_are_within_the_token_bound(capsys, args, product):
    # an eval batch of 2^31 sequences was estimated at 514 million GiB, exit 0
    line = refused(capsys, "estimate", "gpt2", *args)
    assert f"the tokens per step ({product})" in line
    assert "the token bound of 2,147,483,648 tokens" in line


def test_eval_and_generation_batches_under_the_bound_are_estimated(capsys):
    code, out, _ = run(
        capsys, "estimate", "gpt2", "--eval-batch-size", "8", "--generate-batch-size", "8",
        "--generate-len", "256", "--format", "json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["memory"]["total_bytes"] > 0


def test_an_allocator_number_that_is_not_ascii_digits_is_one_sentence(capsys):
    # "²" is a digit to str.isdigit and not to int(): int()'s own message reached the user
    line = refused(capsys, "estimate", "gpt2", "--alloc-conf", "max_split_size_mb:²")
    assert "max_split_size_mb takes a whole number" in line


# -- a config.json's name: any length, any type -------------------------------------------

TINY = {
    "model_type": "gpt2", "vocab_size": 100, "n_embd": 64, "n_layer": 2, "n_head": 4,
    "n_positions": 1024,
}  # fmt: skip


def test_a_huge_name_in_config_json_is_shown_bounded(capsys, tmp_path):
    # _name_or_path of 200,000 characters: printed in full, twice by `serve` (400 kB)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "_name_or_path": "x" * 200_000}))
    for command in ("estimate", "serve", "merge"):
        code, out, err = run(capsys, command, str(tmp_path), "--format", "json")
        assert (code, err) == (0, "")
        assert len(out) < 20_000, (command, len(out))
        model = json.loads(out)["model"]
        name = model["name"] if command == "estimate" else model
        assert name == "x" * 48 + "…" + "x" * 16 + " (200,000 characters)"


@pytest.mark.parametrize("name", [5, True, ["x"], {"a": 1}, "", "   "])
def test_a_name_that_is_not_text_is_the_folders(capsys, tmp_path, name):
    folder = tmp_path / "acme-tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**TINY, "_name_or_path": name}))
    code, out, _ = run(capsys, "estimate", str(folder), "--format", "json")
    assert code == 0
    assert json.loads(out)["model"]["name"] == "acme-tiny"


# -- user presets: names within a bound ---------------------------------------------------


def _user_presets(tmp_path, monkeypatch, kind: str, data: dict) -> None:
    (tmp_path / kind).mkdir()
    (tmp_path / kind / "acme.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("FTMEM_PRESETS", str(tmp_path))


@pytest.mark.parametrize("field", ["id", "aliases"])
def test_a_model_preset_name_past_the_name_bound_is_refused(capsys, tmp_path, monkeypatch, field):
    # a 5,000-character id printed 645 kB in `ftmem models`, whose id column is never cut
    gpt2 = yaml.safe_load((PRESETS / "models" / "gpt2.yaml").read_text())
    long = "x" * 129
    data = {**gpt2, "id": "acme", "aliases": []}
    data[field] = long if field == "id" else [long]
    _user_presets(tmp_path, monkeypatch, "models", data)
    line = refused(capsys, "models")
    assert "the name bound of 128 characters" in line and "129 characters" in line


def test_a_model_preset_name_at_the_bound_is_read(capsys, tmp_path, monkeypatch):
    gpt2 = yaml.safe_load((PRESETS / "models" / "gpt2.yaml").read_text())
    _user_presets(tmp_path, monkeypatch, "models", {**gpt2, "id": "a" * 128, "aliases": []})
    code, out, _ = run(capsys, "estimate", "a" * 128, "--format", "json")
    assert code == 0 and json.loads(out)["memory"]["total_bytes"] > 0


def test_a_gpu_preset_id_past_the_name_bound_is_refused(capsys, tmp_path, monkeypatch):
    gpu = {"id": "g" * 129, "name": "G", "memory_bytes": 2**34, "source": "test"}
    _user_presets(tmp_path, monkeypatch, "gpus", gpu)
    assert "the name bound" in refused(capsys, "gpus")


# -- a Hub id whose cache entry's refs/main huggingface_hub cannot read ------------------


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding acme/tiny's entry; its refs/main is the
    test's to write."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    sources._hub_lookup.cache_clear()
    entry = tmp_path / "models--acme--tiny"
    (entry / "snapshots" / "abc").mkdir(parents=True)
    (entry / "snapshots" / "abc" / "config.json").write_text(json.dumps(TINY))
    (entry / "refs").mkdir()
    yield entry / "refs" / "main"
    sources._hub_lookup.cache_clear()


def test_a_hub_ids_ref_that_is_not_utf8_is_one_sentence(capsys, hub_cache):
    # huggingface_hub's try_to_load_from_cache raised UnicodeDecodeError: a traceback
    hub_cache.write_bytes(b"\xff\xfe")
    assert "not UTF-8" in refused(capsys, "estimate", "acme/tiny")


def test_a_hub_ids_ref_that_is_a_fifo_is_not_waited_on(capsys, hub_cache):
    # huggingface_hub opened it and waited for a writer for ever
    os.mkfifo(hub_cache)
    assert "not a regular file" in refused(capsys, "estimate", "acme/tiny")


def test_a_hub_ids_readable_ref_is_still_read(capsys, hub_cache):
    hub_cache.write_text("abc")
    code, out, _ = run(capsys, "estimate", "acme/tiny", "--format", "json")
    assert code == 0 and json.loads(out)["memory"]["total_bytes"] > 0


# -- no home folder: a container's bare --user without HOME -------------------------------


@pytest.fixture
def no_home(monkeypatch):
    """HOME unset and the uid without a password entry: pathlib's expanduser raises
    RuntimeError for ``~``."""
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("FTMEM_PRESETS", raising=False)

    def unknown(uid):
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", unknown)
    with pytest.raises(RuntimeError):
        Path("~").expanduser()


def test_without_a_home_folder_a_preset_is_estimated(capsys, no_home):
    # every model lookup looked for ~/.config/ftmem/presets: a traceback
    code, out, err = run(capsys, "estimate", "gpt2", "--format", "json")
    assert (code, err) == (0, "")
    assert json.loads(out)["memory"]["total_bytes"] > 0


def test_a_model_in_an_unknown_home_is_an_unknown_model(capsys):
    assert "Unknown model" in refused(capsys, "estimate", "~nonexistent-user-ftmem/x")


def test_presets_in_an_unknown_home_are_named(capsys, monkeypatch):
    monkeypatch.setenv("FTMEM_PRESETS", "~nonexistent-user-ftmem/presets")
    assert "FTMEM_PRESETS names ~nonexistent-user-ftmem" in refused(capsys, "estimate", "gpt2")


# -- measure: the step must fit this machine's RAM ----------------------------------------


def test_measure_refuses_a_step_past_the_hosts_ram(capsys, monkeypatch):
    # `ftmem measure llama2-70b` built a 70B model on a 23 GiB machine: it ran on for ever
    real = os.sysconf
    monkeypatch.setattr(
        os, "sysconf", lambda name: 256 if name == "SC_PHYS_PAGES" else real(name)
    )  # a machine of 256 pages (1 MiB with 4 KiB pages): gpt2's step cannot fit
    line = refused(capsys, "measure", "gpt2")
    assert "RAM bound" in line and "--fake" in line


# -- property: the commands that run many estimates keep the contract with any number ----

COMPARE_NUMBERS = {  # option: the method it applies to, as in test_option_space.NUMERIC
    o: NUMERIC[o] for o in NUMERIC if o not in ("--gpus", "--nodes", "--tp", "--pp", "--cp")
    and NUMERIC[o][1] != "size"
}  # fmt: skip


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_compare_keeps_the_contract_with_any_number(data):
    """compare and compare-methods with one numeric setting at ordinary and absurd
    values: an exit 0 has at least one estimated cell (a bad setting is refused, not
    shown as a table of n/a)."""
    option = data.draw(st.sampled_from(sorted(COMPARE_NUMBERS)))
    method, kind = COMPARE_NUMBERS[option]
    value = data.draw(integers) if kind == "int" else repr(float(data.draw(floats)))
    command = data.draw(st.sampled_from(["compare", "compare-methods"]))
    argv = [command, data.draw(st.sampled_from(["gpt2", "t5-small"])), option, value]
    argv += ["--methods", f"full,{method}", "--format", "json"]
    broken, outcomes = check_all([argv])
    assert not broken, broken[0]
    ((_, code, _),) = outcomes
    if code == 0 and command == "compare":
        code, out, _, _ = run_cli(argv)
        assert any(c["total_bytes"] for c in json.loads(out)), argv


# -- frameworks with their own training code: only what they implement (stop 45) --------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--framework", "torchtune", "--method", "ia3"], "has no --method ia3"),
        (["--framework", "torchtune", "--method", "galore"], "has no --method galore"),
        (["--framework", "litgpt", "--method", "loha"], "has no --method loha"),
        (["--framework", "litgpt", "--method", "prompt-tuning"], "has no --method prompt-tuning"),
        (["--framework", "fsdp_qlora", "--method", "lokr"], "has no --method lokr"),
        (["--framework", "unsloth", "--method", "ia3"], "has no --method ia3"),
        (["--framework", "unsloth", "--method", "galore"], "has no --method galore"),
        (["--framework", "torchtune", "--method", "qlora", "--quant", "int8"], "--quant int8"),
        (["--framework", "litgpt", "--method", "qlora", "--quant", "int4"], "--quant int4"),
        (["--framework", "fsdp_qlora", "--method", "qlora", "--quant", "fp4"], "--quant fp4"),
        (["--framework", "litgpt", "--method", "lora", "--objective", "dpo"], "--objective dpo"),
        (
            ["--framework", "torchtune", "--method", "lora", "--objective", "orpo"],
            "--objective orpo",
        ),
        # torchtune dropped IPOLoss (v0.3.1) and SimPOLoss (v0.6.0) from rlhf.loss
        (["--framework", "torchtune", "--objective", "ipo"], "--objective ipo"),
        (["--framework", "torchtune", "--objective", "simpo"], "--objective simpo"),
        # axolotl builds peft's LoraConfig (adapter lora / qlora) and nothing else of peft's
        (["--framework", "axolotl", "--method", "ia3"], "has no --method ia3"),
        (["--framework", "axolotl", "--method", "loha"], "has no --method loha"),
        (["--framework", "axolotl", "--method", "prompt-tuning"], "has no --method prompt-tuning"),
        (["--framework", "axolotl", "--method", "adapter"], "has no --method adapter"),
        (["--framework", "axolotl", "--method", "longlora"], "has no --method longlora"),
        (
            ["--framework", "axolotl", "--objective", "apo-zero-unpaired", "--batch-size", "2"],
            "--objective apo-zero-unpaired",
        ),
        # LLaMA-Factory's finetuning_type: lora, oft, freeze, full
        (["--framework", "llama-factory", "--method", "ia3"], "has no --method ia3"),
        (["--framework", "llama-factory", "--method", "lokr"], "has no --method lokr"),
        (["--framework", "llama-factory", "--method", "p-tuning"], "has no --method p-tuning"),
        (["--framework", "llama-factory", "--method", "bitfit"], "has no --method bitfit"),
        (["--framework", "llama-factory", "--method", "relora"], "has no --method relora"),
        (["--framework", "llama-factory", "--method", "longlora"], "has no --method longlora"),
        (
            ["--framework", "llama-factory", "--objective", "grpo", "--seq-len", "1024"],
            "--objective grpo",
        ),
    ],
)
def test_a_method_the_framework_does_not_implement_is_refused(capsys, args, named):
    # estimated as if the framework ran peft's adapter or TRL's trainer: a number for a
    # run nobody can launch
    line = refused(capsys, "estimate", "llama3.2-1b", *args)
    assert named in line and "--framework hf" in line


@pytest.mark.parametrize(
    "args",
    [
        ["--framework", "torchtune", "--method", "dora"],
        ["--framework", "torchtune", "--method", "qlora", "--objective", "dpo"],
        ["--framework", "litgpt", "--method", "qlora", "--quant", "int8"],
        ["--framework", "litgpt", "--method", "llama-adapter-v2"],
        ["--framework", "fsdp_qlora", "--method", "qlora"],
        ["--framework", "unsloth", "--method", "rslora"],
        ["--framework", "unsloth", "--method", "full"],
        ["--framework", "torchtune", "--objective", "dpo"],
        ["--framework", "axolotl", "--method", "relora"],
        ["--framework", "axolotl", "--method", "galore"],
        ["--framework", "axolotl", "--method", "partial", "--trainable-modules", "self_attn"],
        ["--framework", "axolotl", "--method", "qlora", "--quant", "int4"],
        ["--framework", "axolotl", "--method", "lora", "--objective", "simpo"],
        ["--framework", "axolotl", "--objective", "grpo", "--seq-len", "1024", "--batch-size", "8"],
        ["--framework", "llama-factory", "--method", "freeze"],
        ["--framework", "llama-factory", "--method", "galore"],
        ["--framework", "llama-factory", "--method", "rslora"],
        ["--framework", "llama-factory", "--method", "qlora", "--quant", "int8"],
        ["--framework", "llama-factory", "--method", "lora", "--objective", "kto"],
        ["--framework", "llama-factory", "--method", "lora", "--objective", "orpo"],
    ],
)
def test_what_the_framework_implements_still_runs(capsys, args):
    code, out, err = run(capsys, "estimate", "llama3.2-1b", *args, "--format", "json")
    assert (code, err) == (0, "") and json.loads(out)["memory"]["total_bytes"] > 0


# -- a training config given where the model goes: say --from (stop 45) ------------------


def test_a_yaml_training_config_as_the_model_points_to_from(capsys):
    # "... is not valid JSON (line 1: Expecting value)."
    path = str(
        PRESETS.parent / "tests" / "fixtures" / "frameworks" / "axolotl" / "llama-3-qlora.yml"
    )
    assert f"--from {path}" in refused(capsys, "estimate", path)


def test_a_json_training_config_as_the_model_points_to_from(capsys, tmp_path):
    # "config.json has model_type null, which ftmem does not model yet ..."
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"model_name_or_path": "gpt2", "per_device_train_batch_size": 2}))
    assert f"--from {path}" in refused(capsys, "estimate", str(path))


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["estimate", "--from", ""], "training config"),
        (["plan", "--from", " ", "--gpu", "rtx4090"], "training config"),
        (["estimate", "gpt2", "--launcher", ""], "launcher config"),
        (["check", ""], "budgets file"),
    ],
)
def test_an_empty_file_path_is_named_as_empty(capsys, args, what):
    # ". is not a regular file; give the training config itself."
    assert f"the {what}'s path is empty" in refused(capsys, *args)


# -- the API: a GPU given as a number is refused, not an AttributeError (stop 45) --------


@pytest.mark.parametrize("gpu", [24, 80.0, True, ["h100"], b"h100"])
def test_api_refuses_a_gpu_that_is_not_a_name(gpu):
    from ftmem import api
    from ftmem.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="gpu must be a GPU preset id") as info:
        api.estimate("gpt2", gpu=gpu)
    assert "\n" not in str(info.value) and "gpu_memory" in str(info.value)


# -- measure --fake over a step that reads a tensor's value (stop 45) --------------------


@pytest.mark.parametrize("method", ["loha", "adalora"])
def test_measure_fake_names_a_data_dependent_step(capsys, method):
    # "Error: aten._local_scalar_dense.default": peft's forward branches on
    # torch.rand(1) > module_dropout, which FakeTensorMode cannot evaluate
    pytest.importorskip("peft")
    code, out, err = run(
        capsys, "measure", "llama3.2-1b", "--method", method, "--fake", "--seq-len", "16"
    )  # fmt: skip
    # (the last line: in a pytest process torch may log its own pytree notices first)
    line = err.splitlines()[-1]
    assert code == 2 and out == "" and "Traceback" not in err
    assert line.startswith("Error: fake tensors cannot run this step") and "without --fake" in line


def test_measure_keeps_bitsandbytes_import_notice_off_stderr():
    # bitsandbytes >= 0.48 on AVX512-BF16 CPUs logs a kernels-community warning at import:
    # a second line on stderr under every `ftmem measure`
    import logging

    from ftmem.cli.measure import measure_errors

    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with measure_errors():
        assert not logger.isEnabledFor(logging.WARNING)
    assert logger.isEnabledFor(logging.WARNING)


# -- --from FILE --framework OTHER: the file's program, not another (stop 45) ------------

FIXTURES = PRESETS.parent / "tests" / "fixtures" / "frameworks"


@pytest.mark.parametrize(
    ("file", "framework"),
    [
        ("axolotl/llama-3-qlora.yml", "litgpt"),
        ("llama-factory/qwen3_lora_sft.yaml", "fsdp_qlora"),
        ("torchtune/dev_3B_full_grpo.yaml", "hf"),
        ("trl/sft_qlora_handwritten.yaml", "torchtune"),
    ],
)
def test_a_framework_that_contradicts_the_config_is_refused(capsys, file, framework):
    # an axolotl file under --framework litgpt was estimated as LitGPT's step on
    # axolotl's settings (exit 0); a torchtune GRPO file under hf said "Generation_prompts
    # (forward_batch_size) is torchtune's GRPO recipe's"
    path = str(FIXTURES / file)
    line = refused(capsys, "estimate", "--from", path, "--framework", framework)
    assert f"--framework {framework} contradicts {path}" in line and "drop --framework" in line


@pytest.mark.parametrize(
    ("file", "framework"),
    [
        ("axolotl/llama-3-qlora.yml", "axolotl"),
        ("axolotl/llama-3-qlora.yml", "hf"),  # HF Trainer's code path (test_framework_trl_option)
        ("trl/sft_qlora_handwritten.yaml", "unsloth"),  # Unsloth's recipes take TRL's config
        ("trl/sft_qlora_handwritten.yaml", "trl"),
    ],
)
def test_a_framework_that_fits_the_config_still_runs(capsys, file, framework):
    code, out, _ = run(capsys, "estimate", "--from", str(FIXTURES / file), "--framework", framework)
    assert code == 0 and out


def test_compare_methods_compares_what_the_framework_implements(capsys):
    # under --framework litgpt, ten of its thirteen default rows were the same refusal
    code, out, err = run(
        capsys, "compare-methods", "llama3.2-1b", "--framework", "litgpt", "--format", "json"
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert [row["method"] for row in json.loads(out)] == ["inference", "full", "lora", "qlora"]


@pytest.mark.parametrize(
    ("framework", "methods"),
    [
        ("axolotl", ["full", "freeze", "galore", "lora", "qlora", "dora"]),
        ("llama-factory", ["full", "freeze", "galore", "lora", "qlora", "dora"]),
    ],
)
def test_compare_methods_under_a_trainer_front_end_lists_what_it_runs(capsys, framework, methods):
    # under --framework axolotl, ia3, loha and the prompt methods were estimated as rows
    code, out, err = run(
        capsys, "compare-methods", "llama3.2-1b", "--framework", framework, "--format", "json"
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert [row["method"] for row in json.loads(out)] == ["inference", *methods]


@pytest.mark.parametrize(
    "path",
    sorted([*(FIXTURES / "axolotl").glob("*.y*ml"), *(FIXTURES / "llama-factory").glob("*.y*ml")]),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_the_front_ends_fixture_configs_are_still_accepted(capsys, path):
    # each file's method and objective are among what its framework implements (files
    # that are no training run, such as an inference config, keep their own refusal)
    code, _, err = run(capsys, "estimate", "--from", str(path), "--format", "json")
    assert code == 0 or " has no --" not in err, err


# -- record and merge: figures and ranges that cannot be (stop 45) -----------------------


def test_record_refuses_a_reserved_peak_below_the_allocated_one(capsys):
    # written as a record (exit 0): max_memory_reserved() is never below max_memory_allocated()
    line = refused(
        capsys, "record", "gpt2", "--measured-allocated", "1GiB", "--measured-reserved", "0.5GiB"
    )  # fmt: skip
    assert "--measured-reserved" in line and "swapped" in line
    code, out, _ = run(
        capsys, "record", "gpt2", "--measured-allocated", "1GiB", "--measured-reserved", "1GiB"
    )  # fmt: skip
    assert code == 0 and json.loads(out)


@pytest.mark.parametrize("layers", ["5-2", "5-5"])
def test_merge_names_a_reversed_slice_as_such(capsys, layers):
    # "5-2 is outside the model's 12 blocks (0-12)", though 5 and 2 are both inside
    assert "holds no block" in refused(capsys, "merge", "gpt2", "--layers", layers)


@pytest.mark.parametrize("framework", ["litgpt", "fsdp_qlora"])
def test_a_teacher_under_a_framework_without_distillation_is_refused(capsys, framework):
    # estimated as ftmem's reference distillation loop inside LitGPT's step (exit 0)
    line = refused(
        capsys, "estimate", "llama3.2-1b", "--method", "lora", "--teacher", "llama3.2-3b",
        "--framework", framework,
    )  # fmt: skip
    assert "has no knowledge distillation" in line and "drop --teacher" in line
