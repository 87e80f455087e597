"""TRL configs and HF TrainingArguments (--from): each file maps to the settings written
here by hand from the file and from TRL's (or TrainingArguments') own defaults, each
default listed with its source and the TRL releases it holds for.

TRL's defaults, read by hand from huggingface/trl @f2cd57710ae345ea6428ae95363267fcf38a3dc8
and its history (git log -S on the configs):
- per_device_train_batch_size 8 (TrainingArguments; TRL never overrides it)
- gradient_checkpointing true from v0.22.0 (a222aeb46, _BaseConfig since v0.29.0)
- bf16 true unless fp16 from v0.19.0 (32ffa1170, 4c92de000)
- the model loads in float32 unless dtype is given, from v0.27.0 (4d52e0249)
- max_length 1024 (SFT, DPO, KTO; v0.15.0 spelled it max_seq_length), none for GRPO
- SFT loss_type chunked_nll from v1.7.0 (b58947c7e), nll with use_liger_kernel; from v1.15.0
  every loss_type runs SFTTrainer's log-probability tiles (--loss logprob-tiles; trl 1.16.0
  trl/trainer/sft_trainer.py:1144), Liger's loss off
- ModelConfig: lora_r 16, lora_alpha 32, lora_dropout 0.05, nf4, no nested quantisation
- DPO / KTO: disable_dropout true; GRPO: false (trl 1.16.0 trl/trainer/grpo_config.py:453)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ftmem import estimate
from ftmem.errors import ConfigError
from ftmem.frameworks import hf_trainer, read_framework_config
from ftmem.frameworks.shared import NO_MEMORY_EFFECT
from ftmem.textfiles import parse_yaml

from .conftest import page_keys

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "frameworks" / "trl"
PAGE = ROOT / "docs" / "frameworks" / "trl.md"

# what `trl sft --config` runs for a file that names only the model and the data: every
# memory setting is TRL's default (the weights float32, bf16 autocast over them)
TRL_SFT_DEFAULTS = dict(
    framework="hf", precision="bf16-mixed", batch_size=8, grad_ckpt=True, optimizer="adamw",
    optimizer_impl="fused", seq_len=1024, loss="logprob-tiles",
)  # fmt: skip
# SFTConfig's packing False and padding_free False (trl/trainer/sft_config.py@f2cd5771):
# DataCollatorForLanguageModeling pads each batch to its longest, mask and all
SFT_PADDED = dict(lengths="padded", padding="longest")

EXPECTED = {
    # model_name_or_path, dataset_name, report_to, learning_rate, lr_scheduler_type
    "example_config.yaml": ("Qwen/Qwen2.5-0.5B", {**TRL_SFT_DEFAULTS, **SFT_PADDED}),
    # accelerate_config: zero2 is TRL's profile trl/accelerate_configs/zero2.yaml:
    # DEEPSPEED zero_stage 2, no offload, num_processes 8, num_machines 1
    "clis_sft_accelerate_zero2.yaml": (
        "Qwen/Qwen2.5-0.5B",
        {**TRL_SFT_DEFAULTS, **SFT_PADDED, "strategy": "zero2", "gpus": 8, "nodes": 1},
    ),
    # "# dpo_config.yaml", the file `trl dpo --config` takes (clis.md): DPOConfig's
    # defaults (DPO's loss_type sigmoid: --objective dpo; disable_dropout true), read
    # as SFT before
    "clis_dpo_block.yaml": (
        "Qwen/Qwen2.5-0.5B",
        {**TRL_SFT_DEFAULTS, "objective": "dpo", "model_dropout": False},
    ),
    # "# kto_config.yaml": KTOConfig's defaults (loss_type kto: --objective kto)
    "clis_kto_block.yaml": (
        "Qwen/Qwen2.5-0.5B",
        {**TRL_SFT_DEFAULTS, "objective": "kto", "model_dropout": False},
    ),
    # "# reward_config.yaml": RewardTrainer is not modelled: SFT's defaults, with a note
    "clis_reward_block.yaml": ("Qwen/Qwen2.5-0.5B", {**TRL_SFT_DEFAULTS, **SFT_PADDED}),
    # reward_funcs: `trl grpo`, on num_processes 4 of one machine; GRPOConfig's defaults:
    # num_generations 8, max_completion_length 512, no max_length (512-token prompts
    # assumed, said), TRL >= 1.16's fused LM head; the model's dropout kept
    # (GRPOConfig.disable_dropout False)
    "clis_grpo_num_processes.yaml": (
        "Qwen/Qwen2.5-0.5B",
        dict(framework="hf", precision="bf16-mixed", batch_size=8, grad_ckpt=True,
             optimizer="adamw", optimizer_impl="fused", gpus=4, nodes=1, objective="grpo",
             num_generations=8, completion_len=512, seq_len=1024, loss="logprob-tiles"),
    ),
    # use_peft + load_in_4bit: QLoRA, nf4 without nested quantisation (ModelConfig), the
    # compute dtype TRL passes is the model's dtype (bfloat16); lora_dropout ModelConfig's
    "sft_qlora_handwritten.yaml": (
        "Qwen/Qwen2.5-7B",
        dict(framework="hf", method="qlora", quant="nf4", double_quant=False, lora_r=32,
             lora_alpha=16, lora_dropout=0.05, lora_targets="all-linear", precision="bf16",
             autocast=True, compute_dtype="bf16", attn="flash", seq_len=2048, batch_size=2,
             grad_accum=8, eval_batch_size=4, grad_ckpt=True, optimizer="adamw",
             optimizer_impl="fused", loss="logprob-tiles", **SFT_PADDED),
    ),
}  # fmt: skip

# the keys of each file that change memory (by hand): each must be read, not noted
MEMORY_KEYS = {
    "example_config.yaml": {"model_name_or_path"},
    "clis_sft_accelerate_zero2.yaml": {"model_name_or_path", "accelerate_config"},
    "clis_grpo_num_processes.yaml": {"model_name_or_path", "num_processes"},
    "clis_dpo_block.yaml": {"model_name_or_path"},
    "clis_kto_block.yaml": {"model_name_or_path"},
    "clis_reward_block.yaml": {"model_name_or_path"},
    "sft_qlora_handwritten.yaml": {
        "model_name_or_path", "use_peft", "load_in_4bit", "lora_r", "lora_alpha",
        "lora_target_modules", "dtype", "attn_implementation", "max_length",
        "per_device_train_batch_size", "gradient_accumulation_steps", "eval_strategy",
        "per_device_eval_batch_size",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_maps_to_trl_settings(name):
    model, settings = EXPECTED[name]
    cfg = read_framework_config(str(FIXTURES / name))
    assert (cfg.framework, cfg.model) == ("trl", model)
    assert cfg.settings == settings


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_keys_are_read_or_noted(name):
    data = parse_yaml((FIXTURES / name).read_text(), name)
    cfg = read_framework_config(str(FIXTURES / name))
    assert MEMORY_KEYS[name] <= hf_trainer.HF_TRAINER_KEYS
    noted = " ".join(cfg.notes)
    for key in data:
        assert key in hf_trainer.HF_TRAINER_KEYS or re.search(rf"\b{key}\b", noted), key


def test_each_trl_default_is_listed_with_its_source_and_release():
    cfg = read_framework_config(str(FIXTURES / "example_config.yaml"))
    listed = {entry.split(" ", 1)[0]: entry for entry in cfg.assumed}
    releases = {
        "grad_ckpt": "TRL >= 0.22",
        "dtype": "TRL >= 0.27",
        "bf16": "TRL >= 0.19",
        "seq_len": "TRL >= 0.16",
        "loss": "TRL >= 1.15",
    }
    for setting, release in releases.items():
        assert release in listed[setting], listed[setting]
        assert "huggingface/trl trl/trainer/" in listed[setting]
    for setting in ("batch_size", "optimizer", "optimizer_impl"):
        assert "transformers src/transformers/training_args.py" in listed[setting]
    assert any(n.startswith("trl defaults where the file is silent") for n in cfg.notes)


def write(tmp_path: Path, data: dict, name: str = "args.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else "\n".join(
        f"{k}: {json.dumps(v)}" for k, v in data.items()
    ))  # fmt: skip
    return str(path)


def test_plain_training_arguments_keep_hf_defaults(tmp_path):
    # no key only TRL has, JSON: TrainingArguments (transformers' own example scripts)
    cfg = read_framework_config(write(tmp_path, {"model_name_or_path": "gpt2", "do_train": True}))
    assert cfg.settings == dict(
        framework="hf", batch_size=8, grad_ckpt=False, precision="bf16", optimizer="adamw",
        optimizer_impl="fused",
    )  # fmt: skip
    assert any("give --seq-len" in n for n in cfg.notes)
    assert any(n.startswith("Read as HF TrainingArguments") for n in cfg.notes)


def test_the_file_beats_trl_defaults(tmp_path):
    cfg = read_framework_config(write(tmp_path, {
        "model_name_or_path": "gpt2", "packing": True, "gradient_checkpointing": False,
        "fp16": True, "max_length": 256, "per_device_train_batch_size": 2,
        "use_liger_kernel": True, "torch_dtype": "float16",
    }))  # fmt: skip
    s = cfg.settings
    assert "grad_ckpt" not in s  # false: ftmem's default, TRL's true not assumed
    assert (s["precision"], s["seq_len"], s["batch_size"]) == ("fp16-mixed", 256, 2)
    assert s["loss"] == "logprob-tiles"  # TRL >= 1.15: Liger's loss off in SFT
    assert not any(e.startswith(("grad_ckpt", "seq_len", "loss")) for e in cfg.assumed)
    assert any(e.startswith("bf16 false") for e in cfg.assumed)  # TRL: bf16 unless fp16


def test_nested_quantisation_and_quant_type_are_read(tmp_path):
    cfg = read_framework_config(write(tmp_path, {
        "model_name_or_path": "gpt2", "use_peft": True, "load_in_4bit": True,
        "use_bnb_nested_quant": True, "bnb_4bit_quant_type": "fp4",
    }, "qlora.yaml"))  # fmt: skip
    s = cfg.settings
    assert (s["method"], s["quant"], s["double_quant"]) == ("qlora", "fp4", True)
    assert s["compute_dtype"] == "fp32"  # TRL passes dtype (float32 by default) to bnb
    assert (s["lora_r"], s["lora_alpha"], s["lora_dropout"]) == (16, 32, 0.05)


def test_max_length_null_is_no_truncation(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("model_name_or_path: gpt2\nmax_length: null\n")
    cfg = read_framework_config(str(path))
    assert "seq_len" not in cfg.settings
    assert any(n.startswith("max_length null") for n in cfg.notes)


def test_preference_trainers_are_told_apart(tmp_path):
    dpo = read_framework_config(write(tmp_path, {"model_name_or_path": "gpt2", "beta": 0.1}))
    assert dpo.settings["model_dropout"] is False
    # DPOTrainer since TRL 1.16: the fused LM head's tiles (dpo_trainer.py:960)
    assert dpo.settings["loss"] == "logprob-tiles"
    listed = next(a for a in dpo.assumed if a.startswith("loss "))
    assert "TRL >= 1.16" in listed and "--loss standard" in listed
    assert dpo.settings["seq_len"] == 1024  # DPOConfig.max_length
    assert any("TRL DPO" in n for n in dpo.notes)
    assert dpo.settings["objective"] == "dpo"  # DPOConfig.loss_type ["sigmoid"]
    kto = read_framework_config(write(tmp_path, {"model_name_or_path": "gpt2",
                                                 "desirable_weight": 1.0}))  # fmt: skip
    assert any("TRL KTO" in n for n in kto.notes)
    assert kto.settings["objective"] == "kto"  # KTOConfig.loss_type "kto"


@pytest.mark.parametrize(
    ("name", "trainer"),
    [("clis_dpo_block.yaml", "DPO"), ("clis_kto_block.yaml", "KTO"),
     ("clis_reward_block.yaml", "SFT")],
)  # fmt: skip
def test_the_trainer_the_file_is_named_for(name, trainer, tmp_path):
    """TRL's CLI docs name each file by its command (its first line, `# dpo_config.yaml`);
    the same keys under a file named so say the same, and keys only one trainer takes
    still win over the name."""
    cfg = read_framework_config(str(FIXTURES / name))
    note = next(n for n in cfg.notes if n.startswith("Read as a TRL"))
    assert f"TRL {trainer}Config" in note and "_config.yaml" in note
    if name == "clis_reward_block.yaml":
        assert "RewardTrainer's classification head" in note
    named = tmp_path / "dpo_config.yaml"
    named.write_text("model_name_or_path: gpt2\n")
    assert read_framework_config(str(named)).settings["objective"] == "dpo"
    named.write_text("model_name_or_path: gpt2\ndesirable_weight: 1.0\n")
    assert read_framework_config(str(named)).settings["objective"] == "kto"


@pytest.mark.parametrize(
    ("name", "text", "objective", "seq_len"),
    [
        # CPOConfig's own defaults: loss_type sigmoid, cpo_alpha 1.0, max_length 1024
        ("cpo_config.yaml", "beta: 0.1\n", "orpo", 1024),
        ("sft.yaml", "loss_type: simpo\ncpo_alpha: 0.0\nsimpo_gamma: 0.5\n", "simpo", 1024),
        ("sft.yaml", "loss_type: alphapo\nalpha: 0.25\nsimpo_gamma: 0.5\n", "simpo", 1024),
        # ORPOTrainer.__init__: max_length None becomes 512 (with a warning)
        ("orpo_config.yaml", "beta: 0.1\nmax_length: null\n", "orpo", 512),
    ],
)  # fmt: skip
def test_orpo_and_cpo_files(tmp_path, name, text, objective, seq_len):
    """TRL's ORPO and CPO configs (trl.experimental in TRL 1.16, read by TRL's example
    scripts): a CPOConfig by cpo_alpha / simpo_gamma or its name, an ORPOConfig by its
    name only (its beta is DPO's); orpo while cpo_alpha is not 0 (the chosen half's
    cross-entropy), simpo at 0 or with alphapo; the full logits (no fused head), no
    reference, dropout off; simpo_gamma and alpha change no memory."""
    path = tmp_path / name
    path.write_text("model_name_or_path: gpt2\n" + text)
    cfg = read_framework_config(str(path))
    s = cfg.settings
    assert (s["objective"], s["seq_len"], s["model_dropout"]) == (objective, seq_len, False)
    assert "loss" not in s and "precompute_ref" not in s
    assert cfg.not_read == []


def test_grpo_reward_model_is_noted_reward_functions_are_not(tmp_path):
    """`trl grpo`: reward_funcs are Python functions (trl/scripts/grpo.py's registry or an
    import path); reward_model_name_or_path loads a model beside the policy."""
    funcs = {"model_name_or_path": "gpt2", "reward_funcs": ["accuracy_reward"]}
    cfg = read_framework_config(write(tmp_path, funcs))
    assert not any("reward" in n and "not read" in n for n in cfg.notes)
    cfg = read_framework_config(write(tmp_path, {**funcs, "reward_model_name_or_path": "rm"}))
    assert any("the reward model rm" in n for n in cfg.notes)


def test_evaluation_inside_the_run(tmp_path):
    cfg = read_framework_config(write(tmp_path, {"model_name_or_path": "gpt2",
                                                 "eval_strategy": "steps"}))  # fmt: skip
    assert cfg.settings["eval_batch_size"] == 8  # per_device_eval_batch_size's default
    cfg = read_framework_config(write(tmp_path, {"model_name_or_path": "gpt2",
                                                 "per_device_eval_batch_size": 4}))  # fmt: skip
    assert "eval_batch_size" not in cfg.settings  # eval_strategy "no"


def test_memory_features(tmp_path):
    cfg = read_framework_config(write(tmp_path, {
        "model_name_or_path": "gpt2", "max_length": 512, "activation_offloading": True,
        "torch_compile": True, "use_peft": True, "use_rslora": True,
        "lora_modules_to_save": ["lm_head"], "neftune_noise_alpha": 5,
    }))  # fmt: skip
    s = cfg.settings
    assert (s["activation_offload"], s["compile"], s["method"]) == (True, True, "rslora")
    assert s["lora_modules_to_save"] == "head"
    assert any(n.startswith("neftune_noise_alpha") for n in cfg.notes)


def test_accelerate_config_file_and_unknown_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fsdp.yaml").write_text(
        "distributed_type: FSDP\nnum_processes: 4\nnum_machines: 1\n"
        "fsdp_config:\n  fsdp_version: 2\n  fsdp_offload_params: true\n"
    )
    cfg = read_framework_config(write(tmp_path, {"model_name_or_path": "gpt2",
                                                 "accelerate_config": "fsdp.yaml"}, "a.yaml"))  # fmt: skip
    s = cfg.settings
    assert (s["strategy"], s["gpus"], s["offload_params"]) == ("fsdp", 4, "cpu")
    with pytest.raises(ConfigError, match="neither a file nor one of TRL's profiles"):
        read_framework_config(write(tmp_path, {"model_name_or_path": "gpt2",
                                               "accelerate_config": "zero9"}, "b.yaml"))  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "version"),
    [
        # TRL's profiles: trl/accelerate_configs/fsdp1.yaml and fsdp2.yaml@f2cd57710 name
        # fsdp_version 1 and 2
        ({"accelerate_config": "fsdp1"}, 1),
        ({"accelerate_config": "fsdp2"}, 2),
        # a file without fsdp_version: accelerate launch's default, 1
        ({"accelerate_config": "fsdp.yaml"}, 1),
        # the file's own FSDP: TrainingArguments' fsdp_config passes its version (5.x)
        ({"accelerate_config": "fsdp.yaml", "fsdp": "full_shard"}, None),
    ],
)
def test_the_launch_gives_the_fsdp_version(tmp_path, monkeypatch, keys, version):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\nnum_processes: 2\n")
    cfg = read_framework_config(write(tmp_path, {"model_name_or_path": "gpt2", **keys}, "a.yaml"))
    assert cfg.settings["strategy"] == "fsdp"
    assert cfg.settings.get("fsdp_version") == version


def test_the_files_deepspeed_drops_the_launchs_fsdp_version(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\nnum_processes: 2\n")
    (tmp_path / "z2.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    cfg = read_framework_config(write(tmp_path, {
        "model_name_or_path": "gpt2", "accelerate_config": "fsdp.yaml", "deepspeed": "z2.json",
    }, "a.yaml"))  # fmt: skip
    assert cfg.settings["strategy"] == "zero2" and "fsdp_version" not in cfg.settings


# -- the docs page cannot drift -----------------------------------------------------------


def _page_keys() -> set[str]:
    """The keys the page's tables name (first column, in backticks)."""
    return page_keys(PAGE.read_text().split("## Launcher configs")[0])


def test_the_page_names_every_key_the_reader_knows():
    text = PAGE.read_text()
    for key in hf_trainer.HF_TRAINER_KEYS | hf_trainer.NO_MEMORY_EFFECT:
        assert f"`{key}`" in text, key


def test_the_page_names_no_key_the_reader_does_not_know():
    known = hf_trainer.HF_TRAINER_KEYS | hf_trainer.NO_MEMORY_EFFECT | NO_MEMORY_EFFECT
    assert _page_keys() - known == set()


def test_transformers_5_checkpointing_keys(tmp_path):
    # plain TrainingArguments (JSON, no TRL key): activation_checkpointing is the new name
    cfg = read_framework_config(write(tmp_path, {
        "model_name_or_path": "gpt2", "activation_checkpointing": True,
        "activation_checkpointing_kwargs": {"offload": True, "every_n_layers": 2},
        "torch_compile_mode": "max-autotune", "use_liger_kernel": True,
        "liger_kernel_config": {"fused_linear_cross_entropy": False},
        "auto_find_batch_size": True, "ddp_bucket_cap_mb": 100,
    }))  # fmt: skip
    s = cfg.settings
    assert (s["grad_ckpt"], s["activation_offload"], s["compile"]) == (True, True, True)
    assert "loss" not in s  # Liger without its fused linear cross-entropy
    noted = " ".join(cfg.notes)
    for key in ("every_n_layers 2", "liger_kernel_config", "auto_find_batch_size"):
        assert key in noted
    assert "ddp_bucket_cap_mb" in next(n for n in cfg.notes if "no effect on memory" in n)
    # without checkpointing, the kwargs' offload has nothing to offload
    cfg = read_framework_config(write(tmp_path, {
        "model_name_or_path": "gpt2", "activation_checkpointing_kwargs": {"offload": True},
    }))  # fmt: skip
    assert "activation_offload" not in cfg.settings


def test_target_parameters_on_the_experts_join_the_targets(tmp_path):
    # TRL's ModelConfig.lora_target_parameters, peft's target_parameters (the gpt-oss
    # recipe's experts of one layer beside all-linear)
    cfg = read_framework_config(write(tmp_path, {
        "model_name_or_path": "openai/gpt-oss-20b", "use_peft": True,
        "lora_target_modules": ["all-linear"], "lora_dropout": 0.0,
        "lora_target_parameters": ["23.mlp.experts.gate_up_proj", "23.mlp.experts.down_proj"],
    }, "sft.yaml"))  # fmt: skip
    assert cfg.settings["lora_targets"] == (
        "all-linear,23.mlp.experts.gate_up_proj,23.mlp.experts.down_proj"
    )


MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"
ON = {"output_router_logits": True}


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        # SFTTrainer (trl@f2cd5771 sft_trainer.py l.1357-1366): a non-zero coefficient turns
        # the loss on for an MoE model, 0 writes output_router_logits false into the config
        ("sft_config.yaml", {"router_aux_loss_coef": 0.01}, True),
        ("sft_config.yaml", {"router_aux_loss_coef": 0.0}, False),
        ("sft_config.yaml", {"router_aux_loss_coef": 0, "model_init_kwargs": ON}, False),
        # DPOTrainer (dpo_trainer.py l.880-884, l.1338-1339): non-zero passes
        # output_router_logits=True to the forward; 0 leaves the config's, which
        # model_init_kwargs sets (from_pretrained hands it to the config)
        ("dpo_config.yaml", {"router_aux_loss_coef": 0.001}, True),
        ("dpo_config.yaml", {"router_aux_loss_coef": 0, "model_init_kwargs": ON}, True),
        ("dpo_config.yaml", {"router_aux_loss_coef": 0}, None),
        # the coefficient silent: TRL's default 0.001 decides once the config is stated
        ("sft_config.yaml", {"model_init_kwargs": {"output_router_logits": False}}, True),
        # neither key: TRL's default 0.001 turns it on for the MoE model (SFTTrainer writes
        # aux_loss_enabled into the config; DPOTrainer passes it to the forward)
        ("sft_config.yaml", {}, True),
        ("dpo_config.yaml", {}, True),
    ],
)
def test_router_aux_loss_as_trl_trainers_set_it(tmp_path, name, data, expected):
    cfg = read_framework_config(write(tmp_path, {"model_name_or_path": MIXTRAL, **data}, name))
    assert cfg.settings.get("router_aux_loss") == expected
    assert "router_aux_loss_coef" not in cfg.ignored
    if "router_aux_loss_coef" not in data:
        assert any(a.startswith("router_aux_loss_coef 0.001") for a in cfg.assumed)


def test_trl_default_coefficient_says_nothing_on_a_dense_model(tmp_path):
    # TRL's default turns the loss on only where a config has output_router_logits
    cfg = read_framework_config(
        write(tmp_path, {"model_name_or_path": "meta-llama/Llama-2-7b-hf"}, "sft_config.yaml")
    )
    assert "router_aux_loss" not in cfg.settings
    assert not any("router" in n for n in cfg.notes + cfg.assumed)


def test_router_aux_loss_coef_on_a_dense_model_adds_nothing(tmp_path):
    cfg = read_framework_config(write(tmp_path, {
        "model_name_or_path": "meta-llama/Llama-2-7b-hf", "router_aux_loss_coef": 0.01,
    }, "sft_config.yaml"))  # fmt: skip
    assert "router_aux_loss" not in cfg.settings
    assert any("not of llama models" in n for n in cfg.notes)
    assert estimate(cfg.model, **cfg.settings).memory.peak_allocated_bytes > 0
