"""axolotl's shipped configs (tests/fixtures/frameworks/axolotl, verbatim, see SOURCES.md)
read as axolotl runs them. Each expected mapping is written by hand from the file and from
axolotl's own rules and defaults (axolotl-ai-cloud/axolotl@067b021c8b87:
src/axolotl/utils/schemas/*.py, utils/config/__init__.py resolve_dtype / normalize_config,
loaders/model.py, integrations/*), not copied from the reader's output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app
from ftmem.errors import ConfigError, FtmemError
from ftmem.frameworks import axolotl, read_framework_config

from .conftest import assert_nothing_unread, page_keys

FIXTURES = Path(__file__).parent / "fixtures" / "frameworks" / "axolotl"
DOC = Path(__file__).resolve().parents[1] / "docs" / "frameworks" / "axolotl.md"
AXO = "axolotl"
# bf16: auto on a GPU with bf16: bf16 weights under HF Trainer's bf16 autocast
BF16 = dict(precision="bf16", autocast=True)
# LoRA r 32, alpha 16, dropout 0.05 on every linear: the Llama-3 examples' adapter
LLAMA3_LORA = dict(lora_r=32, lora_alpha=16, lora_dropout=0.05, lora_targets="all-linear")

EXPECTED = {
    # adapter qlora + load_in_4bit; paged_adamw_32bit is bitsandbytes' PagedAdamW32bit
    # (fp32 states, paged); val_set_size 0: no evaluation
    "llama-3-qlora.yml": (
        "NousResearch/Meta-Llama-3-8B",
        dict(method="qlora", **LLAMA3_LORA, seq_len=4096, batch_size=2, grad_accum=4,
             grad_ckpt=True, optimizer="paged-adamw", attn="flash", **BF16),
    ),
    # adapter lora + load_in_8bit: LoRA over int8 linears; embed_tokens and lm_head
    # trained in full; val_set_size 0.05 and 4 evaluations an epoch at micro_batch_size
    "llama-3-lora-8b.yml": (
        "NousResearch/Meta-Llama-3-8B",
        dict(method="qlora", quant="int8", **LLAMA3_LORA, lora_modules_to_save="embed,head",
             seq_len=4096, batch_size=2, grad_accum=4, grad_ckpt=True, optimizer="adamw-8bit",
             attn="flash", eval_batch_size=2, **BF16),
    ),
    # full finetuning; CutCrossEntropyPlugin (fused loss); activation_offloading: legacy;
    # adamw_torch_8bit: torchao's AdamW8bit (block 256, its own); val_set_size 0.0; ZeRO-3
    # with both offloads (the JSON)
    "alst-llama3-8b-deepspeed-alst.yaml": (
        "meta-llama/Llama-3.1-8B",
        dict(seq_len=500_000, batch_size=1, grad_accum=1, grad_ckpt=True,
             activation_offload=True, loss="fused", attn="flash", optimizer="ao-adamw-8bit",
             **BF16),
    ),
    # gradient_checkpointing: offload = checkpointing + activation_offloading: true;
    # CutCrossEntropyPlugin; no lora_dropout: axolotl's 0.0; adamw_torch_4bit: torchao's
    # AdamW4bit with transformers' block_size 256 (the class's own is 128)
    "qwen3-32b-qlora.yaml": (
        "Qwen/Qwen3-32B",
        dict(method="qlora", lora_r=16, lora_alpha=32, lora_dropout=0.0,
             lora_targets="q_proj,k_proj,v_proj,o_proj,down_proj,up_proj", seq_len=2048,
             batch_size=1, grad_accum=2, grad_ckpt=True, activation_offload=True, loss="fused",
             attn="flash", optimizer="ao-adamw-4bit", optimizer_block_size=256, **BF16),
    ),
    # LigerPlugin with liger_fused_linear_cross_entropy; adamw_torch_fused; val_set_size
    # 0.02 with 2 evaluations an epoch at micro_batch_size 2
    "llama-3-fft-8b-liger-fsdp.yaml": (
        "NousResearch/Meta-Llama-3.1-8B",
        dict(seq_len=4096, batch_size=2, grad_accum=4, grad_ckpt=True, loss="fused",
             optimizer="adamw", optimizer_impl="fused", attn="flash", eval_batch_size=2,
             **BF16),
    ),
    # qlora (unfrozen_parameters beside it: noted); lora_dropout 0; val_set_size 0.0
    "gemma3-gemma-3-1b-qlora.yml": (
        "google/gemma-3-1b-it",
        dict(method="qlora", lora_r=32, lora_alpha=16, lora_dropout=0,
             lora_targets="all-linear", seq_len=2048, batch_size=1, grad_accum=4,
             grad_ckpt=True, optimizer="adamw-8bit", attn="flash", **BF16),
    ),
    # rl: dpo (the reference: the adapter disabled); LoRA over an 8-bit base; evaluation
    # at micro_batch_size 2
    "llama-3-instruct-dpo-lora-8b.yml": (
        "meta-llama/Meta-Llama-3-8B-Instruct",
        dict(method="qlora", quant="int8", **LLAMA3_LORA, seq_len=4096, batch_size=2,
             grad_accum=4, grad_ckpt=True, optimizer="adamw-8bit", attn="flash",
             eval_batch_size=2, objective="dpo", **BF16),
    ),
    # bf16: true; the Hub's vLLM FlashAttention-3 kernel; CutCrossEntropyPlugin;
    # activation_offloading: true; Mxfp4Config with dequantize: true (16-bit weights);
    # adamw_torch_8bit: torchao's AdamW8bit
    "gpt-oss-gpt-oss-20b-sft-lora-singlegpu.yaml": (
        "openai/gpt-oss-20b",
        dict(method="lora", lora_r=8, lora_alpha=16, lora_dropout=0.0,
             lora_targets="all-linear", seq_len=4096, batch_size=1, grad_accum=8,
             grad_ckpt=True, activation_offload=True, loss="fused", attn="flash",
             optimizer="ao-adamw-8bit", **BF16),
    ),
    # gptq: true with adapter lora: LoRA over int4 linears; bf16 and fp16 false, float16:
    # fp16 weights without autocast; no attention key (sdpa); evaluation at batch 1
    "llama-2-gptq-lora.yml": (
        "TheBloke/Llama-2-7B-GPTQ",
        dict(method="qlora", quant="int4", lora_r=8, lora_alpha=32, lora_dropout=0.05,
             lora_targets="k_proj,o_proj,q_proj,v_proj", seq_len=4096, batch_size=1,
             grad_accum=1, grad_ckpt=True, optimizer="adamw", optimizer_impl="fused",
             precision="fp16", eval_batch_size=1),
    ),
    # QLoRA (load_in_4bit) r 32 on every linear, adamw_bnb_8bit, flash_attention_2;
    # deepspeed_configs/zero2.json names no reduce_bucket_size: DeepSpeed's default 5e8
    # elements (deepspeed/runtime/zero/config.py DeepSpeedZeroConfig), not transformers'
    # hidden² (filled only where the JSON says "auto"); model_config output_router_logits
    # true: the load-balancing loss (Mixtral's model computes it)
    "mistral-mixtral-mixtral.yml": (
        "mistralai/Mixtral-8x7B-v0.1",
        dict(method="qlora", **LLAMA3_LORA, seq_len=4096, batch_size=1, grad_accum=2,
             grad_ckpt=True, optimizer="adamw-8bit", attn="flash",
             bucket_elements=500_000_000, router_aux_loss=True, **BF16),
    ),
    # use_ray, ray_num_workers 4 (resources_per_worker's default: one GPU each): 4 GPUs,
    # which the ZeRO-3 of deepspeed_configs/zero3.json shards over; LoRA r 16 on the
    # seven projections as listed; adamw_8bit; val_set_size 0.1 with 4 evaluations
    "llama-3-lora-1b-ray.yml": (
        "NousResearch/Llama-3.2-1B",
        dict(method="lora", lora_r=16, lora_alpha=32, lora_dropout=0.05,
             lora_targets="gate_proj,down_proj,up_proj,q_proj,v_proj,k_proj,o_proj",
             seq_len=2048, batch_size=2, grad_accum=2, grad_ckpt=True, optimizer="adamw-8bit",
             attn="flash", gpus=4, eval_batch_size=2, **BF16),
    ),
}  # fmt: skip
# the multi-GPU settings (frameworks.distributed's, tested there): what each file says
DISTRIBUTED = {
    "llama-3-lora-1b-ray.yml": dict(strategy="zero3"),
    # zero2.json: stage 2, offload_optimizer cpu
    "mistral-mixtral-mixtral.yml": dict(strategy="zero2", offload_optimizer="cpu"),
    # zero3_bf16_cpuoffload_all.json: "zero_force_ds_cpu_optimizer": false, so torchao's
    # AdamW8bit steps the offloaded states on the CPU (ftmem.paged_ranks)
    "alst-llama3-8b-deepspeed-alst.yaml": dict(
        strategy="zero3",
        offload_optimizer="cpu",
        offload_params="cpu",
        zero_force_ds_cpu_optimizer=False,
    ),
    "llama-3-fft-8b-liger-fsdp.yaml": None,  # FSDP with offload: frameworks.distributed's
}
UNRESOLVED: set[str] = set()  # every shipped model has an ftmem preset


@pytest.fixture(autouse=True)
def _in_fixture_folder(monkeypatch):
    """axolotl runs from its root, where `deepspeed: deepspeed_configs/...` lies."""
    monkeypatch.chdir(FIXTURES)


def _mine(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k not in ("strategy", "offload_optimizer",
            "offload_params", "zero_force_ds_cpu_optimizer")}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_maps_to_the_settings_axolotl_runs(name):
    model, settings = EXPECTED[name]
    cfg = read_framework_config(str(FIXTURES / name))
    assert cfg.framework == AXO and cfg.model == model
    assert _mine(cfg.settings) == {"framework": AXO, **settings}
    if (parallel := DISTRIBUTED.get(name)) is not None:
        assert {k: cfg.settings.get(k) for k in parallel} == parallel
    assert_nothing_unread(cfg, axolotl)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_estimates_or_names_the_model_it_lacks(name):
    cfg = read_framework_config(str(FIXTURES / name))
    run = dict(cfg.settings)
    if "strategy" in run:
        run["gpus"] = 8
    if name in UNRESOLVED:
        with pytest.raises(FtmemError, match="Unknown model"):
            estimate(cfg.model, **run)
        return
    assert estimate(cfg.model, **run).memory.peak_allocated_bytes > 0


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("alst-llama3-8b-deepspeed-alst.yaml", "Cut Cross-Entropy (CutCrossEntropyPlugin)"),
        ("alst-llama3-8b-deepspeed-alst.yaml", "give --gpus and --cp 8"),
        ("alst-llama3-8b-deepspeed-alst.yaml", "tiled_mlp"),
        ("qwen3-32b-qlora.yaml", "lora_qkv_kernel, lora_o_kernel, lora_mlp_kernel"),
        ("qwen3-32b-qlora.yaml", "lora_dropout 0.0 (lora_dropout;"),
        ("llama-3-fft-8b-liger-fsdp.yaml", "liger_rms_norm, liger_glu_activation, liger_rope"),
        ("gemma3-gemma-3-1b-qlora.yml", "unfrozen_parameters with an adapter"),
        ("gpt-oss-gpt-oss-20b-sft-lora-singlegpu.yaml", "use_kernels"),
        ("llama-2-gptq-lora.yml", "eval_batch_size 1 (micro_batch_size;"),
        ("mistral-mixtral-mixtral.yml", "reduce_bucket_size is absent"),
        ("llama-3-lora-1b-ray.yml", "use_ray with ray_num_workers 4"),
    ],
)
def test_what_is_not_modelled_or_assumed_is_said(name, note):
    assert any(note in n for n in read_framework_config(str(FIXTURES / name)).notes)


def test_zero2_reduce_buffers_are_deepspeeds_default_bucket():
    """ZeRO-2 with contiguous_gradients allocates torch.empty(reduce_bucket_size) of the
    model's 16-bit dtype per buffer, a second one with overlap_comm (DeepSpeed
    stage_1_and_2.py setup_buckets @edaa7221): zero2.json's overlap_comm true and the
    default 5e8 elements make 2 x 5e8 x 2 bytes, where hidden² (4096² for Mixtral) made
    2 x 16.8M x 2."""
    cfg = read_framework_config(str(FIXTURES / "mistral-mixtral-mixtral.yml"))
    est = estimate(cfg.model, **cfg.settings, gpus=8)
    assert est.parallel.reduce_bucket_elements == 500_000_000
    assert est.memory.communication_bytes == 2 * 500_000_000 * 2


def test_method_full_over_a_lora_config_drops_the_adapter_settings():
    res = CliRunner().invoke(
        app, ["estimate", "--from", "llama-3-lora-8b.yml", "--method", "full", "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["run"]["method"] == "full" and out["run"]["lora_r"] is None
    assert any("lora_r" in n and "Not taken from" in n for n in out["notes"])


def _read(tmp_path: Path, text: str) -> tuple[dict, list[str]]:
    path = tmp_path / "axo.yml"
    path.write_text("base_model: meta-llama/Llama-2-7b-hf\n" + text)
    cfg = read_framework_config(str(path))
    return cfg.settings, cfg.notes


def test_defaults_where_the_file_is_silent(tmp_path):
    """sequence_len 512 (config.py), micro_batch_size 1 and gradient_accumulation_steps 1
    (training.py), adamw_torch_fused, bf16 auto, lora_dropout 0.0 (peft.py)."""
    settings, notes = _read(tmp_path, "adapter: lora\n")
    assert settings == dict(method="lora", seq_len=512, batch_size=1, grad_accum=1,
                            optimizer="adamw", optimizer_impl="fused", lora_dropout=0.0,
                            framework=AXO, **BF16)  # fmt: skip
    assumed = next(n for n in notes if n.startswith("axolotl defaults where the file is silent"))
    assert "seq_len 512 (sequence_len;" in assumed and "utils/schemas/config.py" in assumed
    assert "optimizer_impl fused (adamw_torch_fused;" in assumed
    # normalize_config: gradient_accumulation_steps = batch_size // micro_batch_size
    settings, _ = _read(tmp_path, "batch_size: 16\nmicro_batch_size: 4\n")
    assert settings["grad_accum"] == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", dict(precision="bf16", autocast=True)),  # bf16 auto
        ("bf16: true\n", dict(precision="bf16", autocast=True)),
        ("bf16: false\n", dict(precision="fp32")),  # resolve_dtype: float32
        ("fp16: true\n", dict(precision="fp16", autocast=True)),  # auto turned off by fp16
        ("bf16: auto\nfp16: true\n", dict(precision="fp16", autocast=True)),
        ("bf16: false\nbfloat16: true\n", dict(precision="bf16")),  # no AMP
        ("bf16: false\nfloat16: true\n", dict(precision="fp16")),
    ],
)
def test_precision_as_axolotl_resolves_it(tmp_path, text, expected):
    settings, _ = _read(tmp_path, text)
    assert {k: settings.get(k) for k in ("precision", "autocast")} == {"autocast": None, **expected}


@pytest.mark.parametrize(
    ("text", "attn", "note"),
    [
        ("attn_implementation: flash_attention_3\n", "flash", None),
        ("attn_implementation: eager\n", "eager", None),
        ("attn_implementation: kernels-community/flash-attn3\n", "flash", None),
        ("attn_implementation: flex_attention\n", "sdpa", "flex_attention is not modelled"),
        ("attn_implementation: xformers\n", "sdpa", "xformers is not modelled"),
        # legacy switches: the most specific wins (enums.py LEGACY_ATTN_FLAG_TO_IMPL)
        ("flash_attention: true\nsdp_attention: true\n", "flash", None),
        ("sdp_attention: true\neager_attention: true\n", "sdpa", None),
        ("xformers_attention: true\nflash_attention: true\n", "sdpa", "xformers_attention"),
        ("gemma4_hybrid_attn_impl: true\n", "flash", None),
    ],
)
def test_attention(tmp_path, text, attn, note):
    settings, notes = _read(tmp_path, text)
    assert settings["attn"] == attn
    assert note is None or any(note in n for n in notes), notes


@pytest.mark.parametrize(
    ("text", "offload", "note"),
    [
        ("gradient_checkpointing: offload\n", True, None),
        ("gradient_checkpointing: offload_disk\n", True, "to disk"),
        ("gradient_checkpointing: true\nactivation_offloading: hidden_states\n", True,
         "hidden_states moves only the checkpointed blocks' inputs"),
        ("gradient_checkpointing: true\nactivation_offloading: legacy\n", True, None),
        ("gradient_checkpointing: true\n", None, None),
        ("gradient_checkpointing: true\ngradient_checkpointing_kwargs: {use_reentrant: true}\n",
         None, "use_reentrant: true: estimated as non-reentrant"),
        ("activation_offloading: true\n", True, "axolotl refuses it"),
    ],
)  # fmt: skip
def test_checkpointing_and_offload(tmp_path, text, offload, note):
    settings, notes = _read(tmp_path, text)
    assert settings.get("activation_offload") is offload
    assert settings.get("grad_ckpt") is (None if text.startswith("activation") else True)
    assert note is None or any(note in n for n in notes), notes


CCE = "  - axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin\n"


@pytest.mark.parametrize(
    ("text", "loss", "note"),
    [
        ("plugins:\n" + CCE, "fused", "Cut Cross-Entropy"),
        ("plugins:\n" + CCE + "cut_cross_entropy: false\n", None, None),
        ("cut_cross_entropy: true\n", None, "does nothing without"),
        ("plugins:\n  - axolotl.integrations.liger.LigerPlugin\n"
         "liger_fused_linear_cross_entropy: true\n", "fused", None),
        ("liger_fused_linear_cross_entropy: true\n", "fused", "which this file does not list"),
        ("plugins:\n  - axolotl.integrations.liger.LigerPlugin\nliger_cross_entropy: true\n",
         None, "liger_cross_entropy"),
        ("plugins:\n  - axolotl.integrations.grokfast.GrokfastPlugin\n", None,
         "GrokfastPlugin (keeps a moving average of every trainable gradient)"),
        ("plugins:\n  - my.own.Plugin\n", None, "my.own.Plugin is not modelled"),
    ],
)  # fmt: skip
def test_plugins(tmp_path, text, loss, note):
    settings, notes = _read(tmp_path, text)
    assert settings.get("loss") == loss
    assert note is None or any(note in n for n in notes), notes


def test_logging_plugins_are_quiet(tmp_path):
    _, notes = _read(tmp_path, "plugins:\n  - axolotl.integrations.swanlab.SwanLabPlugin\n")
    assert not any("plugins" in n for n in notes), notes


@pytest.mark.parametrize(
    ("text", "eval_batch"),
    [
        ("val_set_size: 0.05\nevals_per_epoch: 4\nmicro_batch_size: 3\n", 3),
        ("val_set_size: 0.05\neval_steps: 50\neval_batch_size: 8\n", 8),
        # one evaluation in a one-epoch run: normalize_config sets no eval_steps
        ("val_set_size: 0.05\nevals_per_epoch: 1\n", None),
        ("val_set_size: 0.0\nevals_per_epoch: 4\n", None),
        ("val_set_size: 0.05\n", None),  # HF's eval_strategy default "no"
    ],
)
def test_evaluation_as_axolotl_schedules_it(tmp_path, text, eval_batch):
    settings, _ = _read(tmp_path, text)
    assert settings.get("eval_batch_size") == eval_batch


def test_rl_names_what_it_leaves_out(tmp_path):
    # dpo, ipo, orpo and simpo are estimated (--objective); their rl note is gone
    for rl in ("dpo", "ipo", "orpo", "simpo"):
        settings, notes = _read(tmp_path, f"rl: {rl}\nadapter: lora\ncpo_alpha: 0\n")
        assert settings["objective"] == rl
        assert not any(n.startswith("rl:") for n in notes)
    settings, _ = _read(tmp_path, "rl: dpo\nprecompute_ref_log_probs: true\n")
    assert settings["precompute_ref"] is True
    # simpo without cpo_alpha (axolotl passes it only when set): CPOConfig's 1.0 adds the
    # chosen half's cross-entropy, ORPO's tensors (measured equal on TRL 1.16's trainers,
    # test_integrations_hf.py::test_orpo_and_cpo_trainers_with_lora); so does 0.5
    for text, said in (("", "cpo_alpha unset"), ("cpo_alpha: 0.5\n", "cpo_alpha 0.5")):
        settings, notes = _read(tmp_path, "rl: simpo\nadapter: lora\n" + text)
        assert settings["objective"] == "orpo"
        assert any(n.startswith(f"rl: simpo with {said}") for n in notes)
    # kto: KTOTrainer (loss_type kto), estimated as --objective kto
    settings, notes = _read(tmp_path, "rl: kto\nadapter: lora\n")
    assert settings["objective"] == "kto" and not any(n.startswith("rl:") for n in notes)
    # grpo: TRL's GRPOTrainer, its trl: section (GRPOStrategy.set_training_args_kwargs);
    # sequence_len (512 by default) is the prompt, the completion comes on top
    text = "rl: grpo\nadapter: lora\ntrl:\n  num_generations: 4\n  max_completion_length: 256\n"
    settings, notes = _read(tmp_path, text + "  beta: 0.04\n  use_vllm: true\n")
    assert (settings["objective"], settings["num_generations"]) == ("grpo", 4)
    assert (settings["completion_len"], settings["seq_len"]) == (256, 256 + 512)
    assert (settings["kl_beta"], settings["vllm"]) == (0.04, "server")
    assert not any("completions generated per prompt" in n for n in notes)
    # a reference loaded beside the adapter: still the SFT estimate and its note
    _, notes = _read(tmp_path, "rl: grpo\nadapter: lora\nrl_adapter_ref_model: true\n")
    assert any("completions generated per prompt" in n for n in notes)


def test_adapters_as_axolotl_loads_them(tmp_path):
    # _set_quantization_config quantises to 4 bits only for adapter: qlora
    settings, notes = _read(tmp_path, "adapter: lora\nload_in_4bit: true\n")
    assert settings["method"] == "lora" and any("16-bit base" in n for n in notes)
    settings, _ = _read(tmp_path, "adapter: lora\nrelora: true\n")
    assert settings["method"] == "relora"
    text = "adapter: qlora\nload_in_4bit: true\nbnb_config_kwargs: {bnb_4bit_quant_type: fp4, "
    settings, _ = _read(tmp_path, text + "bnb_4bit_use_double_quant: false}\n")
    assert (settings["quant"], settings["double_quant"]) == ("fp4", False)
    # peft's target_parameters on the routed experts join the targets (OpenAI's gpt-oss
    # recipe names the layers); another parameter is noted
    text = "adapter: lora\nlora_target_linear: true\nlora_target_parameters:\n"
    text += "  - 7.mlp.experts.gate_up_proj\n  - 7.mlp.experts.down_proj\n  - mlp.router.weight\n"
    settings, notes = _read(tmp_path, text)
    assert (
        settings["lora_targets"] == "all-linear,7.mlp.experts.gate_up_proj,7.mlp.experts.down_proj"
    )
    assert any("mlp.router.weight" in n and "not modelled" in n for n in notes)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("attn_implementation: sdpa\nflash_attention: true\n",
         "attn_implementation cannot be combined with flash_attention"),
        ("gradient_checkpointing: offload_cpu\n", "gradient_checkpointing must be true, false"),
        ("activation_offloading: ram\n", "activation_offloading must be true, false"),
        ("plugins: 3\n", "plugins must be a name or a list of names"),
        ("bnb_config_kwargs: {bnb_4bit_quant_type: nf3}\nadapter: qlora\n",
         "bnb_config_kwargs.bnb_4bit_quant_type must be one of nf4 or fp4"),
        ("bf16: full\n", "bf16 must be true, false or one of auto"),
        # peft's AdaptionPromptConfig has no defaults for either key
        ("adapter: llama-adapter\n", "adapter: llama-adapter needs peft_adapter.layers"),
        ("adapter: llama-adapter\npeft_adapter: {layers: 30}\n", "and peft_adapter.len"),
        ("adapter: mora\n", "adapter: mora is not modelled"),
    ],
)  # fmt: skip
def test_configs_axolotl_refuses_are_one_sentence(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        _read(tmp_path, text)
    assert "axo.yml" in str(err.value) and "\n" not in str(err.value)


def test_docs_page_names_every_key_and_no_other():
    page = DOC.read_text()
    named = page_keys(page)
    known = axolotl.AXOLOTL_KEYS | axolotl.NO_MEMORY_EFFECT
    assert known <= named, sorted(known - named)
    assert named <= known, sorted(named - known)


def test_removed_unsloth_keys_are_noted_not_modelled(tmp_path):
    """axolotl refuses unsloth_lora_mlp & co. (utils/schemas/validation.py
    check_deprecated_unsloth_fields): the run stays axolotl's, the keys are named."""
    text = "adapter: lora\nunsloth_lora_mlp: true\nunsloth_cross_entropy_loss: true\n"
    settings, notes = _read(tmp_path, text)
    assert settings["framework"] == AXO
    note = next(n for n in notes if n.startswith("unsloth_lora_mlp, unsloth_cross_entropy_loss"))
    assert "removed from axolotl" in note and "not modelled" in note


@pytest.mark.parametrize(
    ("base", "value", "expected", "note"),
    [
        # model_config overrides the loaded config (axolotl@067b021c loaders/utils.py
        # l.201-203): Mixtral's forward then adds the load-balancing loss
        ("mistralai/Mixtral-8x7B-v0.1", "true", True, None),
        ("mistralai/Mixtral-8x7B-v0.1", "false", False, None),
        # a dense Llama has no router: the override does nothing, nothing to refuse
        ("meta-llama/Llama-2-7b-hf", "true", None, "not of llama models"),
        ("meta-llama/Llama-2-7b-hf", "false", False, None),
    ],
)
def test_output_router_logits_is_the_router_aux_loss(tmp_path, base, value, expected, note):
    path = tmp_path / "axo.yml"
    path.write_text(f"base_model: {base}\nmodel_config:\n  output_router_logits: {value}\n")
    cfg = read_framework_config(str(path))
    assert cfg.settings.get("router_aux_loss") == expected
    assert (note is None) == (not any("output_router_logits" in n for n in cfg.notes))
    if note:
        assert any(note in n for n in cfg.notes)
    assert "model_config" not in cfg.ignored


def test_output_router_logits_moves_the_estimate_by_the_router_logits(tmp_path):
    """Read from the file, the loss adds what --router-aux-loss adds; by hand: each of
    Mixtral-8x7B's 32 blocks keeps a (tokens, 8 experts) tensor from its forward to its
    backward, in fp32 under axolotl's bf16 autocast (CUDA autocast runs softmax in fp32:
    autocast_mode.cpp KERNEL_CUDA2(softmax, ..., fp32_set_opt_dtype)); at micro_batch_size
    1 (axolotl's default) × 512 tokens: 32 · 512 · 8 · 4 = 524,288 B of activations."""
    path = tmp_path / "axo.yml"
    text = "base_model: mistralai/Mixtral-8x7B-v0.1\nadapter: qlora\nsequence_len: 512\n"
    path.write_text(text)
    plain = read_framework_config(str(path)).settings
    path.write_text(text + "model_config:\n  output_router_logits: true\n")
    read = read_framework_config(str(path)).settings
    model = "mistralai/Mixtral-8x7B-v0.1"
    with_file = estimate(model, **read).memory.activations_bytes
    assert with_file - estimate(model, **plain).memory.activations_bytes == 32 * 512 * 8 * 4


def test_llama_adapter_is_peft_s_adaption_prompt(tmp_path):
    """axolotl's adapter: llama-adapter builds peft's AdaptionPromptConfig from
    peft_adapter.layers and .len (loaders/adapter.py load_llama_adapter): --method
    adaption-prompt with those two settings, and nothing of LoRA's."""
    settings, _ = _read(
        tmp_path, "adapter: llama-adapter\npeft_adapter:\n  layers: 30\n  len: 10\n"
    )
    assert settings["method"] == "adaption-prompt"
    assert (settings["adapter_layers"], settings["adapter_prompt_length"]) == (30, 10)
    assert not {"lora_r", "lora_alpha", "lora_targets"} & set(settings)
