"""LLaMA-Factory's shipped configs (tests/fixtures/frameworks/llama-factory, verbatim, see
SOURCES.md), both formats, read as LLaMA-Factory runs them. Each expected mapping is
written by hand from the file and from LLaMA-Factory's defaults
(hiyouga/LLaMA-Factory@ff6d4d1: hparams/*.py, model/adapter.py init_adapter, v1/config/*.py,
v1/plugins/model_plugins/*.py), not copied from the reader's output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app
from ftmem.errors import ConfigError, FtmemError
from ftmem.frameworks import detect, llama_factory, read_framework_config
from ftmem.frameworks.shared import read_mapping

from .conftest import assert_nothing_unread, page_keys

FIXTURES = Path(__file__).parent / "fixtures" / "frameworks" / "llama-factory"
DOC = Path(__file__).resolve().parents[1] / "docs" / "frameworks" / "llama-factory.md"
QWEN3_4B_2507 = "Qwen/Qwen3-4B-Instruct-2507"
# v0 LoRA: lora_rank 8, no lora_alpha (2 x rank), lora_target all; bf16: autocast over
# the checkpoint's bf16 weights; adapters upcast to fp32 (ftmem's default adapter dtype)
V0_LORA = dict(method="lora", lora_r=8, lora_alpha=16, lora_targets="all-linear", seq_len=2048,
               batch_size=1, grad_accum=8, grad_ckpt=True, precision="bf16", autocast=True)  # fmt: skip
# v1: no dist_config sizes; bf16 (default true) with FSDP2's bf16 MixedPrecisionPolicy
V1_LORA = dict(method="lora", lora_r=16, lora_alpha=32, lora_dropout=0.05,
               lora_targets="all-linear", strategy="fsdp", precision="bf16", autocast=True,
               batch_size=1, seq_len=2048, grad_ckpt=True)  # fmt: skip

EXPECTED = {
    "qwen3_lora_sft.yaml": (QWEN3_4B_2507, V0_LORA),
    # quantization_bit 4, quantization_method bnb: QLoRA (nf4, double quantisation: the
    # defaults of ModelArguments and of ftmem)
    "qwen3_lora_sft_otfq.yaml": (QWEN3_4B_2507, {**V0_LORA, "method": "qlora"}),
    # stage dpo, pref_loss sigmoid: --objective dpo (the reference: the adapter disabled)
    "qwen3_lora_dpo.yaml": (QWEN3_4B_2507, {**V0_LORA, "objective": "dpo"}),
    # full + ZeRO-3 (ds_z3_config.json: stage 3): init_adapter leaves the weights as
    # loaded (no fp32 upcast under ZeRO-3); DeepSpeed's bf16 engine
    "qwen3_full_sft.yaml": (
        QWEN3_4B_2507,
        dict(method="full", strategy="zero3", seq_len=2048, batch_size=1, grad_accum=2,
             grad_ckpt=True, precision="bf16", autocast=True),
    ),
    # freeze, the last 8 blocks (use_llama_pro: noted); a local model folder
    "llama3_freeze_sft.yaml": (
        "models/llama3-8b-pro",
        dict(method="freeze", trainable_layers=8, seq_len=2048, batch_size=1, grad_accum=8,
             grad_ckpt=True, precision="bf16", autocast=True),
    ),
    # GaLore over full finetuning, rank 128, every linear, layer-wise (optimizer in
    # backward); pure_bf16: bf16 weights, no upcast, no autocast
    "llama3_galore_full_sft.yaml": (
        "meta-llama/Meta-Llama-3-8B-Instruct",
        dict(method="galore", galore_rank=128, galore_targets="all-linear",
             optimizer_in_backward=True, seq_len=2048, batch_size=1, grad_accum=1,
             grad_ckpt=True, precision="bf16"),
    ),
    "v1_train_lora_sft.yaml": ("Qwen/Qwen3-4B", V1_LORA),
    # v1 QLoRA: bnb 4 bits, BnbParams.compute_dtype float16
    "v1_quantization.yaml": (
        "Qwen/Qwen3-0.6B", {**V1_LORA, "method": "qlora", "compute_dtype": "fp16"}
    ),
    # v1 full: model.to(float32), FSDP2 computes in bf16 (MixedPrecisionPolicy)
    "v1_train_full_fsdp2.yaml": (
        "Qwen/Qwen3-0.6B",
        dict(strategy="fsdp", precision="bf16-mixed", batch_size=1, seq_len=2048, grad_ckpt=True),
    ),
    # full + HF TrainingArguments' fsdp [full_shard, auto_wrap] (LLaMA-Factory's
    # TrainingArguments extend them): FSDP; no ZeRO-3, so init_adapter's fp32 upcast,
    # bf16 as autocast over it; fp8 (Accelerate's FP8) noted, estimated in bf16
    "llama3_fp8_fsdp_sft.yaml": (
        "meta-llama/Meta-Llama-3-8B-Instruct",
        dict(method="full", strategy="fsdp", seq_len=1024, batch_size=1, grad_accum=8,
             grad_ckpt=True, precision="bf16-mixed"),
    ),
    # LoRA as qwen3_lora_sft.yaml, with ray_num_workers 4 ("Number of GPUs to use")
    "qwen3_lora_sft_ray.yaml": (QWEN3_4B_2507, {**V0_LORA, "gpus": 4}),
    # full, DeepSpeed stage 0 (noted: no ZeRO strategy), so the fp32 upcast with bf16
    # autocast; use_asft_loss's reference model noted; a local model folder
    "qwen2_full_asft.yaml": (
        "models/Qwen2.5-7B",
        dict(method="full", seq_len=2048, batch_size=4, grad_accum=8, grad_ckpt=True,
             precision="bf16-mixed"),
    ),
    # full with bf16: the upcast; Adam-mini / Muon noted (estimated with AdamW)
    "adam_mini_qwen2_full_sft.yaml": (
        "Qwen/Qwen2-1.5B-Instruct",
        dict(method="full", seq_len=2048, batch_size=1, grad_accum=8, grad_ckpt=True,
             precision="bf16-mixed"),
    ),
    "muon_qwen2_full_sft.yaml": (
        "Qwen/Qwen2-1.5B-Instruct",
        dict(method="full", seq_len=2048, batch_size=1, grad_accum=8, grad_ckpt=True,
             precision="bf16-mixed"),
    ),
    # mixture_of_depths: convert (noted); optim paged_adamw_8bit; pure_bf16: no upcast
    "mod_llama3_full_sft.yaml": (
        "meta-llama/Meta-Llama-3-8B-Instruct",
        dict(method="full", seq_len=2048, batch_size=1, grad_accum=8, grad_ckpt=True,
             optimizer="paged-adamw-8bit", precision="bf16"),
    ),
    # use_badam (noted): no fp32 upcast; neither bf16 nor fp16: the checkpoint's 16 bits
    "badam_llama3_full_sft.yaml": (
        "meta-llama/Meta-Llama-3-8B-Instruct",
        dict(method="full", seq_len=2048, batch_size=1, grad_accum=8, grad_ckpt=True,
             precision="bf16"),
    ),
}  # fmt: skip
# models that are not presets: the estimate says so in one sentence
UNRESOLVED = {"llama3_freeze_sft.yaml"}


@pytest.fixture(autouse=True)
def _in_fixture_folder(monkeypatch):
    """LLaMA-Factory runs from its root, where `deepspeed: examples/deepspeed/...` lies."""
    monkeypatch.chdir(FIXTURES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_maps_to_the_settings_llama_factory_runs(name):
    model, settings = EXPECTED[name]
    cfg = read_framework_config(str(FIXTURES / name))
    assert cfg.framework == "llama-factory" and cfg.model == model
    assert cfg.settings == {"framework": "llama-factory", **settings}
    assert_nothing_unread(cfg, llama_factory)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_estimates_or_names_the_model_it_lacks(name):
    model, settings = EXPECTED[name]
    run = {"framework": "llama-factory", **settings}
    if "strategy" in run:
        run["gpus"] = 2
    if name in UNRESOLVED:
        with pytest.raises(FtmemError, match="Unknown model"):
            estimate(model, **run)
        return
    assert estimate(model, **run).memory.peak_allocated_bytes > 0


def test_v1_format_is_detected_as_llama_factory():
    for name in ("v1_train_lora_sft.yaml", "v1_train_full_fsdp2.yaml", "v1_quantization.yaml"):
        assert detect(read_mapping(FIXTURES / name)) == "llama-factory"


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("llama3_freeze_sft.yaml", "casts the trainable blocks to fp32"),
        ("llama3_freeze_sft.yaml", "use_llama_pro"),
        ("v1_train_lora_sft.yaml", "--gpus"),
        ("v1_train_lora_sft.yaml", "the stage is the command"),
        ("llama3_fp8_fsdp_sft.yaml", "fp8: FP8 training"),
        ("qwen3_lora_sft_ray.yaml", "ray_num_workers 4"),
        ("qwen2_full_asft.yaml", "ASFT's reference model"),
        ("qwen2_full_asft.yaml", "stage 0: DeepSpeed's engine without ZeRO"),
        ("adam_mini_qwen2_full_sft.yaml", "use_adam_mini: Adam-mini"),
        ("muon_qwen2_full_sft.yaml", "use_muon: Muon"),
        ("mod_llama3_full_sft.yaml", "mixture_of_depths"),
        ("badam_llama3_full_sft.yaml", "use_badam"),
        # checkpointing is on by default, reentrant by default (use_reentrant_gc true)
        ("qwen3_lora_sft.yaml", "use_reentrant_gc true"),
    ],
)
def test_what_is_not_modelled_is_said(name, note):
    assert any(note in n for n in read_framework_config(str(FIXTURES / name)).notes)


def _write(tmp_path: Path, text: str) -> str:
    """A v0 config (stage: with model_name_or_path is what tells LLaMA-Factory's apart)."""
    path = tmp_path / "lf.yaml"
    stage = "" if "stage:" in text else "stage: sft\n"
    path.write_text("model_name_or_path: meta-llama/Llama-2-7b-hf\n" + stage + text)
    return str(path)


def test_full_finetuning_upcasts_unless_pure_bf16(tmp_path):
    """init_adapter: trainable weights fp32 (bf16: HF Trainer's autocast over them) unless
    pure_bf16; without bf16 / fp16 the step runs in fp32."""
    s = read_framework_config(_write(tmp_path, "finetuning_type: full\nbf16: true\n")).settings
    assert s["precision"] == "bf16-mixed" and "autocast" not in s
    s = read_framework_config(_write(tmp_path, "finetuning_type: full\n")).settings
    assert s["precision"] == "fp32"
    s = read_framework_config(_write(tmp_path, "finetuning_type: full\npure_bf16: true\n")).settings
    assert s["precision"] == "bf16" and "autocast" not in s
    s = read_framework_config(_write(tmp_path, "lora_rank: 8\npure_bf16: true\n")).settings
    assert s["adapter_dtype"] == "bf16"


def test_defaults_where_the_file_is_silent(tmp_path):
    """finetuning_type lora, lora_rank 8, lora_alpha 2 x rank, lora_target all, cutoff_len
    2048, per_device_train_batch_size 8 (transformers), freeze_trainable_layers 2."""
    cfg = read_framework_config(_write(tmp_path, ""))
    s = cfg.settings
    assert (s["method"], s["lora_r"], s["lora_alpha"], s["lora_targets"]) == (
        "lora", 8, 16, "all-linear")  # fmt: skip
    assert (s["seq_len"], s["batch_size"]) == (2048, 8)
    assert any(a.startswith("finetuning_type lora") for a in cfg.assumed)
    freeze = read_framework_config(_write(tmp_path, "finetuning_type: freeze\n")).settings
    assert freeze["trainable_layers"] == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("quantization_bit: 4\nquantization_method: hqq\n", {"method": "lora", "quant": None}),
        ("quantization_bit: 8\n", {"method": "qlora", "quant": "int8"}),
        ("quantization_bit: 4\nquantization_type: fp4\ndouble_quantization: false\n",
         {"quant": "fp4", "double_quant": False}),
        ("stage: dpo\nenable_liger_kernel: true\n", {"loss": None, "objective": "dpo"}),
        ("stage: dpo\npref_loss: ipo\n", {"objective": "ipo"}),
        ("stage: dpo\npref_loss: orpo\n", {"objective": "orpo"}),
        ("stage: dpo\npref_loss: simpo\n", {"objective": "simpo"}),
        ("stage: dpo\npref_loss: kto_pair\n", {"objective": "dpo"}),
        ("stage: kto\n", {"objective": "kto"}),
        ("stage: sft\nenable_liger_kernel: true\n", {"loss": "fused"}),
        ("flash_attn: fa3\n", {"attn": "flash"}),
        ("finetuning_type: full\nuse_galore: true\n", {"galore_rank": 16}),
    ],
)  # fmt: skip
def test_keys_as_llama_factory_reads_them(tmp_path, text, expected):
    s = read_framework_config(_write(tmp_path, text)).settings
    assert {k: s.get(k) for k in expected} == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("finetuning_type: oft\n", "not modelled"),
        ("quantization_bit: 3\n", "only accepts 4-bit or 8-bit"),
        ("stage: grpo\n", "stage must be one of"),
    ],
)
def test_configs_llama_factory_refuses_are_one_sentence(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_framework_config(_write(tmp_path, text))


def test_docs_page_names_every_key_and_no_other():
    page = DOC.read_text()
    named = page_keys(page)
    known = llama_factory.LLAMA_FACTORY_KEYS | llama_factory.V1_KEYS
    known |= llama_factory.NO_MEMORY_EFFECT
    assert known <= named, sorted(known - named)
    assert named <= known, sorted(named - known)


@pytest.mark.parametrize(
    ("text", "unsloth"),
    [
        ("use_unsloth: true\nquantization_bit: 4\n", True),
        ("use_unsloth: true\ndisable_gradient_checkpointing: true\n", True),
        ("use_unsloth: true\nquantization_bit: 8\n", False),  # Unsloth loads 16-bit then
        ("use_unsloth: true\nfinetuning_type: full\n", False),
        ("use_unsloth: true\nstage: dpo\n", False),
        ("use_unsloth_gc: true\n", False),
    ],
)
def test_use_unsloth_follows_unsloths_path(tmp_path, text, unsloth):
    """use_unsloth with LoRA at stage sft / pt: FastLanguageModel.from_pretrained and
    get_unsloth_peft_model, both with use_gradient_checkpointing="unsloth"
    (hiyouga/LLaMA-Factory src/llamafactory/model/model_utils/unsloth.py@ff6d4d12eeb0);
    elsewhere, and for use_unsloth_gc (LLaMA-Factory's own copy), a note."""
    cfg = read_framework_config(_write(tmp_path, text))
    if unsloth:
        assert cfg.settings["framework"] == "unsloth" and cfg.settings["grad_ckpt"] is True
        assert not any("not modelled" in n for n in cfg.notes)
    else:
        assert cfg.settings["framework"] == "llama-factory"
        assert any("not modelled" in n for n in cfg.notes)


@pytest.mark.parametrize(
    ("name", "what"),
    [
        # examples/inference: `llamafactory-cli chat` (infer_backend)
        ("inference_qwen3_lora_sft.yaml", "an inference config"),
        # examples/merge_lora: `llamafactory-cli export` (export_dir)
        ("merge_lora_qwen3_lora_sft.yaml", "an export config"),
        # examples/extras/nlg_eval: do_predict, no do_train (run_sft trains only with it)
        ("llama3_lora_predict.yaml", "a prediction config"),
    ],
)
def test_configs_that_train_nothing_are_refused(name, what):
    """Read as TRL / a LoRA SFT run before (batch 8, 1,024 tokens of training for a chat
    config): each is one sentence that says what it is."""
    with pytest.raises(ConfigError, match=what):
        read_framework_config(str(FIXTURES / name))
    assert detect(read_mapping(FIXTURES / name)) == "llama-factory"


def _write_model(tmp_path: Path, model: str, text: str) -> str:
    path = tmp_path / "lf.yaml"
    path.write_text(f"model_name_or_path: {model}\nstage: sft\nfinetuning_type: lora\n{text}")
    return str(path)


@pytest.mark.parametrize(
    ("model", "coef", "expected", "note"),
    [
        # configure_moe (model/model_utils/moe.py l.160-180 @ff6d4d1) sets
        # output_router_logits for mixtral, olmoe, qwen3_moe among others
        ("mistralai/Mixtral-8x7B-v0.1", "0.001", True, None),
        ("Qwen/Qwen3-30B-A3B", "0.01", True, None),
        ("allenai/OLMoE-1B-7B-0924", "0.001", True, None),
        # gpt_oss is not in its list: config.json's (false) stays
        ("openai/gpt-oss-20b", "0.001", None, "does not turn on output_router_logits for gpt_oss"),
        # a dense model: not in the list either, nothing to refuse
        ("meta-llama/Llama-2-7b-hf", "0.001", None, "for llama models"),
        # 0 (or absent): configure_moe returns at once (moe.py l.161)
        ("mistralai/Mixtral-8x7B-v0.1", "0", None, None),
        # a model whose config is not at hand: left as its config.json says, said so
        ("no-such-moe-model", "0.001", None, "cannot tell whether no-such-moe-model"),
    ],
)
def test_moe_aux_loss_coef_turns_the_router_aux_loss_on(tmp_path, model, coef, expected, note):
    cfg = read_framework_config(_write_model(tmp_path, model, f"moe_aux_loss_coef: {coef}\n"))
    assert cfg.settings.get("router_aux_loss") == expected
    said = [n for n in cfg.notes if "moe_aux_loss_coef" in n]
    assert (said == []) == (note is None)
    if note:
        assert note in said[0]
    assert "moe_aux_loss_coef" not in cfg.ignored


def test_moe_aux_loss_coef_is_the_router_aux_loss_setting(tmp_path):
    """The file's key and --router-aux-loss give the same estimate."""
    model = "mistralai/Mixtral-8x7B-v0.1"
    plain = read_framework_config(_write_model(tmp_path, model, "cutoff_len: 512\n")).settings
    text = "cutoff_len: 512\nmoe_aux_loss_coef: 0.001\n"
    read = read_framework_config(_write_model(tmp_path, model, text)).settings
    assert read == {**plain, "router_aux_loss": True}
    by_flag = estimate(model, **plain, router_aux_loss=True).memory
    assert estimate(model, **read).memory == by_flag
    assert by_flag.activations_bytes > estimate(model, **plain).memory.activations_bytes


@pytest.mark.parametrize(
    ("text", "padding", "note"),
    [
        # SFTDataCollatorWith4DAttentionMask pads to the longest in the batch, rounded up to
        # a multiple of 8 (train/sft/workflow.py l.62-65 @ff6d4d1)
        ("packing: false\nper_device_train_batch_size: 4\n", "longest", None),
        # batch 1: only the multiple-of-8 rounding pads; said, not counted
        ("packing: false\nper_device_train_batch_size: 1\n", None, "multiple of 8"),
        # packed (or neat-packed) rows are cutoff_len long: no pad tokens estimated
        ("packing: true\nper_device_train_batch_size: 4\n", None, None),
        ("packing: false\nneat_packing: true\nper_device_train_batch_size: 4\n", None, None),
        # silence keeps ftmem's default (explicit statements only)
        ("per_device_train_batch_size: 4\n", None, None),
        # stage pt: DataCollatorForLanguageModeling (train/pt/workflow.py l.48), not read
        ("stage: pt\npacking: false\nper_device_train_batch_size: 4\n", None, None),
    ],
)
def test_unpacked_sft_batches_are_padded_to_the_longest(tmp_path, text, padding, note):
    cfg = read_framework_config(_write(tmp_path, text))
    assert cfg.settings.get("padding") == padding
    said = [n for n in cfg.notes if n.startswith("packing false")]
    assert (said == []) == (note is None)
    if note:
        assert note in said[0]


def test_json_config_block_lists_the_keys_as_read(tmp_path):
    text = "cutoff_len: 512\nmoe_aux_loss_coef: 0.001\npacking: false\nper_device_train_batch_size: 2\n"
    path = _write_model(tmp_path, "mistralai/Mixtral-8x7B-v0.1", text)
    res = CliRunner().invoke(app, ["estimate", "--from", path, "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    config = out["config"]
    assert config["settings"]["router_aux_loss"] is True
    assert config["settings"]["padding"] == "longest"
    assert (out["run"]["router_aux_loss"], out["run"]["padding"]) == (True, "longest")
    ignored = config["ignored_no_effect"] + config["ignored_not_read"]
    assert not {"moe_aux_loss_coef", "packing"} & set(ignored)
