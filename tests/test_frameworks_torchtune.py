"""The torchtune reader on shipped recipe configs (tests/fixtures/frameworks/torchtune,
copied verbatim; SOURCES.md names each file's origin). Each expectation is written from
the file and torchtune's defaults, not from the reader's output."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftmem.errors import ConfigError
from ftmem.frameworks import read_framework_config, torchtune
from ftmem.frameworks.distributed import LAUNCHER_NOTE
from ftmem.frameworks.shared import NO_MEMORY_EFFECT

from .conftest import assert_nothing_unread, page_keys

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "frameworks" / "torchtune"
DOC = ROOT / "docs" / "frameworks" / "torchtune.md"

# what every LoRA fixture says: lora_attn_modules [q_proj, v_proj, output_proj] and
# apply_lora_to_mlp True, rank 8, alpha 16, dtype bf16 (adapters built in it)
LORA = dict(lora_targets="q,v,o,gate,up,down", lora_r=8, lora_alpha=16, adapter_dtype="bf16")
FUSED_ADAMW = dict(optimizer="adamw", optimizer_impl="fused")

# fixture -> (model preset, settings): by hand from the file
EXPECTED = {
    "llama3_1_8B_lora_single_device": (
        "llama3.1-8b",
        dict(method="lora", **LORA, batch_size=2, grad_accum=8, grad_ckpt=True,
             **FUSED_ADAMW, loss="linear-chunked"),
    ),
    "llama3_1_8B_qlora_single_device": (
        "llama3.1-8b",
        dict(method="qlora", **LORA, batch_size=2, grad_accum=8, grad_ckpt=True,
             **FUSED_ADAMW, loss="linear-chunked"),
    ),
    "llama3_1_8B_full_single_device": (
        "llama3.1-8b",
        dict(batch_size=2, grad_accum=1, grad_ckpt=True, optimizer="paged-adamw-8bit",
             optimizer_in_backward=True, loss="linear-chunked"),
    ),
    "llama3_1_70B_full": (
        "llama3.1-70b",
        # full_finetune_distributed with fsdp_cpu_offload: True; its header launches it
        # with `tune run --nproc_per_node 8`; custom_sharded_layers ['tok_embeddings',
        # 'output']: the ends as units of their own
        dict(batch_size=2, grad_accum=1, grad_ckpt=True, optimizer="adamw",
             loss="linear-chunked", strategy="fsdp", offload_params="cpu",
             offload_optimizer="cpu", gpus=8, fsdp_sharded_ends=True),
    ),
    "llama3_8B_dora": (
        "llama3-8b",
        dict(method="dora", **LORA, batch_size=2, grad_accum=1, **FUSED_ADAMW,
             loss="linear-chunked", strategy="fsdp", gpus=2),  # --nproc_per_node 2
    ),
    "qwen2_5_7B_lora": (
        "qwen2.5-7b",
        dict(method="lora", **LORA, batch_size=2, grad_accum=8, **FUSED_ADAMW,
             loss="linear-chunked", strategy="fsdp", gpus=2),  # --nproc_per_node 2
    ),
    "qwen3_8B_full": (
        "qwen3-8b",
        dict(batch_size=2, grad_accum=8, grad_ckpt=True, **FUSED_ADAMW,
             loss="linear-chunked", strategy="fsdp", gpus=4),  # --nproc_per_node 4
    ),
    "llama3_1_8B_lora_dpo_single_device": (
        "llama3.1-8b",
        # DPOLoss: --objective dpo (the reference: the adapters disabled); it is not a
        # cross-entropy: the loss stays ftmem's standard one
        dict(method="lora", **LORA, seq_len=1024, batch_size=4, grad_accum=8,
             grad_ckpt=True, objective="dpo", **FUSED_ADAMW),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_maps_to_settings(name):
    cfg = read_framework_config(str(FIXTURES / f"{name}.yaml"))
    model, settings = EXPECTED[name]
    assert cfg.framework == "torchtune"
    assert cfg.model == model
    # every fixture says `packed: False`: padded_collate_sft pads each batch to its longest
    expected = {**settings, "precision": "bf16", "framework": "torchtune", "lengths": "padded"}
    assert cfg.settings == expected
    assert_nothing_unread(cfg, torchtune)


@pytest.mark.parametrize(
    "name",
    [n for n, (_, s) in EXPECTED.items() if "seq_len" not in s],
)
def test_missing_max_seq_len_is_said_loudly(name):
    """null or absent: torchtune truncates nothing; the note names the key and --seq-len."""
    notes = read_framework_config(str(FIXTURES / f"{name}.yaml")).notes
    assert any("tokenizer.max_seq_len" in n and "--seq-len" in n for n in notes)


@pytest.mark.parametrize(
    ("name", "command"),
    [("llama3_1_70B_full", "tune run --nproc_per_node 8"),
     ("qwen2_5_7B_lora", "tune run --nnodes 1 --nproc_per_node 2"),
     ("llama3_8B_dora", "tune run --nnodes 1 --nproc_per_node 2")],
)  # fmt: skip
def test_distributed_recipes_take_the_gpus_of_their_headers_command(name, command):
    """The header's launch command is the GPU count, said with its source; was "give
    --gpus" only (a 70B full run estimated as if on one GPU of eight)."""
    cfg = read_framework_config(str(FIXTURES / f"{name}.yaml"))
    assert LAUNCHER_NOTE not in cfg.notes
    assert any(command in a and "give --gpus" in a for a in cfg.assumed)


def test_a_distributed_recipe_without_a_launch_command_asks_for_the_gpus(tmp_path):
    cfg = read_framework_config(_write(tmp_path, "fsdp_cpu_offload: True\n"))
    assert "gpus" not in cfg.settings and LAUNCHER_NOTE in cfg.notes


def test_dpo_is_estimated_as_dpo():
    cfg = read_framework_config(str(FIXTURES / "llama3_1_8B_lora_dpo_single_device.yaml"))
    assert cfg.settings["objective"] == "dpo"  # loss: torchtune.rlhf.loss.DPOLoss
    assert not any("supervised finetuning" in n for n in cfg.notes)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("llama3_8B_qdora_single_device", ("model.use_dora", "4-bit")),
        ("eleuther_evaluation", ("eleuther_eval", "not a training")),
    ],
)
def test_refused_configs_say_why(name, words):
    with pytest.raises(ConfigError) as err:
        read_framework_config(str(FIXTURES / f"{name}.yaml"))
    assert all(w in str(err.value) for w in words)


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  _component_: torchtune.models.llama3_1.lora_llama3_1_8b\n"
        "optimizer:\n  _component_: torch.optim.AdamW\n" + text
    )
    return str(path)


def test_interpolations_of_the_files_own_keys_are_resolved(tmp_path):
    cfg = read_framework_config(
        _write(
            tmp_path,
            "bs: 3\nseq: {len: 2048}\nbatch_size: ${bs}\n"
            "tokenizer:\n  max_seq_len: ${seq.len}\n"
            "run_val_every_n_steps: 10\ndataset_val: {}\nbatch_size_val: ${batch_size}\n",
        )
    )
    assert (cfg.settings["batch_size"], cfg.settings["seq_len"]) == (3, 2048)
    assert cfg.settings["eval_batch_size"] == 3  # validation at ${batch_size}


def test_fsdp_reshard_after_forward_false_keeps_weights_gathered(tmp_path):
    cfg = read_framework_config(_write(tmp_path, "fsdp_reshard_after_forward: False\n"))
    assert cfg.settings["strategy"] == "fsdp-grad-op"


def test_packing_without_a_length_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset\.packed"):
        read_framework_config(_write(tmp_path, "dataset:\n  packed: True\n"))


# the list of datasets of torchtune's ConcatDataset docstring (torchtune/datasets/_concat.py
# @bd2a0fc7c314, "passing in a list of datasets to the YAML config"), which the recipes
# instantiate as one ConcatDataset (recipes/lora_finetune_single_device.py _setup_data)
CONCAT = """dataset:
  - _component_: torchtune.datasets.instruct_dataset
    source: vicgalle/alpaca-gpt4
    split: train
    train_on_input: True
    packed: {first}
  - _component_: torchtune.datasets.grammar_dataset
    split: train[:1%]
    train_on_input: False
    packed: True
"""


def test_a_list_of_datasets_is_one_concat_dataset(tmp_path):
    """Refused as "dataset must be a mapping" before: every one packed packs to
    max_seq_len, as one packed dataset does; a mix is what ConcatDataset refuses."""
    text = CONCAT.format(first="True") + "tokenizer:\n  max_seq_len: 2048\n"
    cfg = read_framework_config(_write(tmp_path, text))
    assert cfg.settings["seq_len"] == 2048
    assert not any("an upper bound" in n for n in cfg.notes)  # packed: exactly that length
    with pytest.raises(ConfigError, match="mixes packed and unpacked"):
        read_framework_config(_write(tmp_path, CONCAT.format(first="False")))


def test_unpacked_batches_are_padded_to_their_longest_and_packed_ones_are_not(tmp_path):
    """torchtune's collate pads each unpacked batch to its longest sample
    (torchtune/data/_collate.py@bd2a0fc7c314 padded_collate_sft); packing fills every row
    to max_seq_len, one shape for the whole run."""
    tokenizer = "tokenizer:\n  max_seq_len: 512\n"
    unpacked = read_framework_config(_write(tmp_path, "dataset:\n  packed: False\n" + tokenizer))
    assert unpacked.settings["lengths"] == "padded"
    assert any(n.startswith("lengths padded") for n in unpacked.notes)
    packed = read_framework_config(_write(tmp_path, "dataset:\n  packed: True\n" + tokenizer))
    assert "lengths" not in packed.settings
    # packed rows: a BlockMask for flex attention and input_pos for the rotary
    # (padded_collate_packed, torchtune/data/_collate.py@1814feb17a90)
    assert packed.settings["padding"] == "packed-flex"
    assert "padding" not in unpacked.settings


def test_a_builder_without_a_preset_names_itself(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  _component_: torchtune.models.llama3_2_vision.lora_llama3_2_vision_11b\n"
        "loss: {}\n"
    )
    cfg = read_framework_config(str(path))
    assert cfg.model is None
    assert any("lora_llama3_2_vision_11b" in n for n in cfg.notes)


def _doc_keys() -> set[str]:
    """The keys the page's tables name in their first column."""
    return {key.split(".")[0] for key in page_keys(DOC.read_text(encoding="utf-8"))}


def test_the_docs_page_names_every_key_the_reader_knows():
    named = _doc_keys()
    known = torchtune.TORCHTUNE_KEYS | torchtune.GRPO_KEYS | torchtune.NO_MEMORY_EFFECT
    assert known - named == set()
    assert named - known - NO_MEMORY_EFFECT == set()


def test_dtype_null_is_fp32_and_absent_is_said(tmp_path):
    """torchtune's get_dtype(None) is fp32; an absent dtype stops the recipe."""
    null = read_framework_config(_write(tmp_path, "dtype: null\n"))
    assert null.settings["precision"] == "fp32"
    assert "adapter_dtype" not in null.settings
    absent = read_framework_config(_write(tmp_path, ""))
    assert absent.settings["precision"] == "bf16"
    assert any(n.startswith("dtype is absent") for n in absent.notes)


@pytest.mark.parametrize(
    ("builder", "preset"),
    [
        # builders named in the shipped configs (recipes/configs at bd2a0fc7), by hand
        ("qwen2_5.qwen2_5_1_5b_instruct", "qwen2.5-1.5b"),
        ("qwen2_5.lora_qwen2_5_0_5b", "qwen2.5-0.5b"),
        ("qwen2_5.lora_qwen2_5_72b_instruct", "qwen2.5-72b"),
        ("qwen3.qwen3_0_6b_instruct", "qwen3-0.6b"),
        ("qwen3.lora_qwen3_8b_base", "qwen3-8b"),
        ("phi3.qlora_phi3_mini", "phi3-mini"),
        ("gemma.qlora_gemma_7b", "gemma-7b"),
        ("llama2.lora_llama2_13b", "llama2-13b"),
        ("mistral.mistral_7b", "mistral-7b"),
        ("llama3_1.qlora_llama3_1_405b", "llama3.1-405b"),
        ("llama3_2.lora_llama3_2_1b", "llama3.2-1b"),
        ("llama3_2.qlora_llama3_2_3b", "llama3.2-3b"),
        ("llama3_3.lora_llama3_3_70b", "llama3.3-70b"),
        ("qwen2.lora_qwen2_0_5b", "qwen2-0.5b"),
        ("qwen2.qwen2_1_5b", "qwen2-1.5b"),
        ("qwen2.lora_qwen2_7b", "qwen2-7b"),
        ("gemma2.qlora_gemma2_2b", "gemma2-2b"),
        ("gemma2.lora_gemma2_27b", "gemma2-27b"),
        ("phi4.lora_phi4_14b", "phi-4"),
        ("llama4.llama4_scout_17b_16e", None),
    ],
)
def test_shipped_builders_resolve_to_a_preset_or_say_so(tmp_path, builder, preset):
    path = tmp_path / "run.yaml"
    path.write_text(f"model:\n  _component_: torchtune.models.{builder}\nloss: {{}}\n")
    cfg = read_framework_config(str(path))
    assert cfg.model == preset
    leaf = builder.split(".")[1]
    assert (preset is None) == any(f"model builder {leaf}" in n for n in cfg.notes)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("batch_size: ${oc.env:BS}\n", "batch_size"),
        ("batch_size: ${missing}\n", "batch_size"),
        ("loss: ${eval:'1+1'}\n", "loss"),
        ("tokenizer:\n  max_seq_len: ${oc.env:SEQ}\n", "tokenizer.max_seq_len"),
    ],
)
def test_an_interpolation_ftmem_cannot_resolve_names_its_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        read_framework_config(_write(tmp_path, text))
    assert f": {key} is " in str(err.value) and "interpolation" in str(err.value)


def test_distillation_is_not_estimated_silently_as_sft(tmp_path):
    """knowledge_distillation_* configs: the student's model, a teacher_model and kd_loss."""
    cfg = read_framework_config(
        _write(
            tmp_path,
            "teacher_model:\n  _component_: torchtune.models.qwen2.qwen2_1_5b\n"
            "kd_loss:\n  _component_: torchtune.modules.loss.ForwardKLWithChunkedOutputLoss\n",
        )
    )
    assert any("knowledge distillation" in n and "not counted" in n for n in cfg.notes)


def test_qdora_from_a_qlora_builder_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  _component_: torchtune.models.llama3_1.qlora_llama3_1_8b\n"
        "  use_dora: True\nloss: {}\n"
    )
    with pytest.raises(ConfigError, match=r"model\.use_dora on a 4-bit base"):
        read_framework_config(str(path))


def test_offloading_without_checkpointing_is_said(tmp_path):
    """torchtune's recipes raise RuntimeError on it."""
    cfg = read_framework_config(_write(tmp_path, "enable_activation_offloading: True\n"))
    assert any("refuse to start" in n for n in cfg.notes)


def test_ppo_recipes_are_refused(tmp_path):
    """torchtune's PPO recipes (recipes/configs/mistral/7B_full_ppo_low_memory.yaml) name
    a policy_model and a value model, no model: four models, refused in one sentence."""
    path = tmp_path / "ppo.yaml"
    path.write_text(
        "policy_model:\n  _component_: torchtune.models.mistral.mistral_7b\n"
        "valmod:\n  _component_: torchtune.models.mistral.mistral_reward_7b\n"
    )
    with pytest.raises(ConfigError, match="PPO config"):
        read_framework_config(str(path))


def test_lora_on_the_output_is_lm_head(tmp_path):
    """apply_lora_to_output: True makes the output projection a LoRALinear (torchtune
    torchtune/modules/peft/lora.py@ff594c231), peft's LoRA on lm_head; False adds nothing."""
    name = "llama3_1_8B_lora_single_device.yaml"
    text = (FIXTURES / name).read_text(encoding="utf-8")
    assert "apply_lora_to_output: False" in text
    on = tmp_path / name
    on.write_text(text.replace("apply_lora_to_output: False", "apply_lora_to_output: True"))
    cfg = read_framework_config(str(on))
    assert cfg.settings["lora_targets"] == LORA["lora_targets"] + ",lm_head"
    assert not any("apply_lora_to_output" in n for n in cfg.notes)


@pytest.mark.parametrize("framework", ["torchtune", "litgpt"])
@pytest.mark.parametrize("library", ["transformers", "peft"])
def test_a_library_release_the_framework_does_not_run_is_refused(
    framework, library, capsys, monkeypatch
):
    """torchtune and LitGPT build their own models and adapters: a transformers or peft
    release changed the estimate through transformers' sdpa and loss rules (torchtune
    LoRA, Llama-2-7B, 4 x 2048 tokens: 55.75 GiB at 4.47, 59.75 at 4.49) though neither
    library runs. One sentence and exit 2, naming the option."""
    from ftmem.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    argv = ["estimate", "llama2-7b", "--method", "lora", "--framework", framework]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, f"--{library}-version", "4.49.0"])
    out, err = capsys.readouterr()
    assert (exit_info.value.code, out) == (2, "")
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert f"--{library}-version does not apply to --framework {framework}" in lines[0]
