"""LitGPT's shipped finetune configs (tests/fixtures/frameworks/litgpt, verbatim, see
SOURCES.md) read as LitGPT runs them. Each expected mapping is written by hand from the
file and from LitGPT's own defaults (Lightning-AI/litgpt@2685705: finetune/*.py setup(),
args.py, utils.py), not copied from the reader's output."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftmem import estimate
from ftmem.errors import ConfigError, FtmemError
from ftmem.frameworks import litgpt, read_framework_config

from .conftest import assert_nothing_unread, page_keys

FIXTURES = Path(__file__).parent / "fixtures" / "frameworks" / "litgpt"
DOC = Path(__file__).resolve().parents[1] / "docs" / "frameworks" / "litgpt.md"

EXPECTED = {
    # lora_r 32, alpha 16, dropout 0.05, lora_query + lora_value; bf16-true (adapters in
    # bf16 too: Fabric builds the model in it); micro 2, global 8 on 1 GPU: 4 micro-batches
    "llama-2-7b-lora.yaml": (
        "meta-llama/Llama-2-7b-hf",
        dict(method="lora", lora_r=32, lora_alpha=16, lora_dropout=0.05, lora_targets="q,v",
             precision="bf16", adapter_dtype="bf16", batch_size=2, grad_accum=4, seq_len=512),
    ),
    # quantize bnb.nf4 (no -dq: no double quantisation); LitGPT then takes bitsandbytes'
    # PagedAdamW (fp32 states, its own kernel per tensor)
    "llama-3.1-8b-qlora.yaml": (
        "meta-llama/Meta-Llama-3.1-8B",
        dict(method="qlora", quant="nf4", double_quant=False, lora_r=32, lora_alpha=16,
             lora_dropout=0.05, lora_targets="q,v", precision="bf16", adapter_dtype="bf16",
             optimizer="paged-adamw", batch_size=2, grad_accum=4,
             seq_len=512),
    ),
    # no lora_* keys: full finetuning; devices 1; global 8 / micro 4 = 2
    # every lora_* switch on (query, key, value, projection, mlp): every linear of the
    # blocks, phi-2's fc1 / fc2 too (read as gate,up,down before: no gate, refused);
    # lora_head: true adds the head's LoRA (lm_head); global 8 // micro 4 on one device: 2
    # accumulation steps
    "phi-2-lora.yaml": (
        "microsoft/phi-2",
        dict(method="lora", lora_r=8, lora_alpha=16, lora_dropout=0.05,
             lora_targets="all-linear,lm_head", precision="bf16", adapter_dtype="bf16", batch_size=4,
             grad_accum=2, seq_len=512),
    ),
    "phi-3-full.yaml": (
        "microsoft/Phi-3-mini-4k-instruct",
        dict(precision="bf16", batch_size=4, grad_accum=2, seq_len=512),
    ),
    "llama-3.2-1b-full.yaml": (
        "meta-llama/Llama-3.2-1B",
        dict(precision="bf16", batch_size=4, grad_accum=16, seq_len=512),
    ),
    # devices 4: FSDPStrategy (FULL_SHARD), every Block checkpointed; global 64 over
    # 4 GPUs at micro 4: 4 micro-batches per step
    "llama-3.1-8b-full.yaml": (
        "meta-llama/Meta-Llama-3.1-8B",
        dict(precision="bf16", gpus=4, nodes=1, strategy="fsdp", grad_ckpt=True, batch_size=4,
             grad_accum=4, seq_len=512),
    ),
    # devices 2, global 8 over 2 GPUs at micro 4: 1
    "phi-2-full.yaml": (
        "microsoft/phi-2",
        dict(precision="bf16", gpus=2, nodes=1, strategy="fsdp", grad_ckpt=True, batch_size=4,
             grad_accum=1, seq_len=512),
    ),
}  # fmt: skip
# models that are not presets: the estimate says so in one sentence
UNRESOLVED: set[str] = set()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_maps_to_the_settings_litgpt_runs(name):
    model, settings = EXPECTED[name]
    cfg = read_framework_config(str(FIXTURES / name))
    assert cfg.framework == "litgpt" and cfg.model == model
    assert cfg.settings == {"framework": "litgpt", **settings}
    assert_nothing_unread(cfg, litgpt)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_config_estimates_or_names_the_model_it_lacks(name):
    model, settings = EXPECTED[name]
    if name in UNRESOLVED:
        with pytest.raises(FtmemError, match="Unknown model"):
            estimate(model, framework="litgpt", **settings)
        return
    est = estimate(model, framework="litgpt", **settings)
    assert est.memory.peak_allocated_bytes > 0


def test_devices_shard_the_full_run_per_gpu():
    """The issue's case: LitGPT's 4-GPU full finetune of Llama 3.1 8B holds a quarter of
    the weights, gradients and AdamW states per GPU (16 bytes x 8.03B / 4 = 32 GB), not
    the 120 GB of one GPU."""
    _, settings = EXPECTED["llama-3.1-8b-full.yaml"]
    sharded = estimate("meta-llama/Meta-Llama-3.1-8B", framework="litgpt", **settings)
    alone = {k: v for k, v in settings.items() if k not in ("gpus", "nodes", "strategy")}
    single = estimate("meta-llama/Meta-Llama-3.1-8B", framework="litgpt", **alone)
    assert sharded.memory.peak_allocated_bytes < single.memory.peak_allocated_bytes / 2


def _write(tmp_path: Path, text: str, name: str = "train.yaml") -> str:
    path = tmp_path / name
    path.write_text("checkpoint_dir: checkpoints/meta-llama/Llama-2-7b-hf\n" + text)
    return str(path)


def test_defaults_where_the_file_is_silent(tmp_path):
    """lora.py setup(): r 8, alpha 16, dropout 0.05, query and value; TrainArgs(micro 1,
    global 16); precision get_default_supported_precision(training=True): bf16-mixed."""
    cfg = read_framework_config(_write(tmp_path, "lora_r: 8\n"))
    s = cfg.settings
    assert (s["precision"], s["batch_size"], s["grad_accum"]) == ("bf16-mixed", 1, 16)
    assert (s["lora_alpha"], s["lora_dropout"], s["lora_targets"]) == (16, 0.05, "q,v")
    assert any("precision bf16-mixed" in a for a in cfg.assumed)
    assert any("max_seq_length is not set" in n and "--seq-len" in n for n in cfg.notes)


def test_devices_auto_and_nodes(tmp_path):
    cfg = read_framework_config(_write(tmp_path, "devices: auto\n"))
    assert "gpus" not in cfg.settings and "strategy" not in cfg.settings
    assert any("devices: auto" in n and "--gpus" in n for n in cfg.notes)
    text = "devices: 8\nnum_nodes: 2\ntrain: {global_batch_size: 64, micro_batch_size: 2}\n"
    s = read_framework_config(_write(tmp_path, text)).settings
    assert (s["gpus"], s["nodes"], s["strategy"], s["grad_accum"]) == (8, 2, "fsdp", 2)


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        ("precision: bf16-true\nquantize: bnb.nf4\nlora_r: 8\ndevices: 2\n", "t.yaml",
         "not supported for multi-GPU"),
        ("lora_r: 8\nquantize: bnb.nf4\n", "t.yaml", "default precision, bf16-mixed"),
        ("precision: bf16-true\nquantize: bnb.nf4\ndevices: 2\n", "adapter.yaml",
         "not supported for multi-GPU"),
        ("train: {max_norm: 1.0}\n", "t.yaml", "train.max_norm is refused"),
        ("train: {global_batch_size: 2, micro_batch_size: 4}\n", "t.yaml", "less than"),
        ("precision: bf16-true\nquantize: bnb.nf4\nlora_r: 8\noptimizer: SGD\n", "t.yaml",
         "only supports the AdamW"),
    ],
)  # fmt: skip
def test_configs_litgpt_refuses_are_one_sentence(tmp_path, text, name, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_framework_config(_write(tmp_path, text, name))


@pytest.mark.parametrize(
    ("name", "method"), [("adapter.yaml", "llama-adapter"), ("adapter_v2.yaml", "llama-adapter-v2")]
)
def test_adapter_files_set_the_llama_adapter_methods(tmp_path, name, method):
    """finetune_adapter / finetune_adapter_v2 (config files named after their script): the
    LLaMA-Adapter methods, quantize through Lightning's plugin with PagedAdamW as lora.py's
    (litgpt@26857050 litgpt/finetune/adapter.py setup(), instantiate_bnb_optimizer)."""
    text = "precision: bf16-true\nquantize: bnb.nf4-dq\ntrain: {micro_batch_size: 1}\n"
    s = read_framework_config(_write(tmp_path, text, name)).settings
    assert (s["method"], s["quant"], s["double_quant"]) == (method, "nf4", True)
    assert s["optimizer"] == "paged-adamw"  # bitsandbytes' 32-bit PagedAdamW
    s = read_framework_config(_write(tmp_path, "precision: bf16-true\n", name)).settings
    assert s["method"] == method and "quant" not in s


def test_pretraining_configs_are_refused_in_one_sentence():
    """config_hub/pretrain: model_name (a LitGPT config), no checkpoint_dir."""
    said = "pretrain-debug.yaml: a `litgpt pretrain` config (model_name 'pythia-14m'"
    with pytest.raises(ConfigError, match=re.escape(said)):
        read_framework_config(str(FIXTURES / "pretrain-debug.yaml"))


def test_optimizers(tmp_path):
    sgd = "optimizer: {class_path: torch.optim.SGD, init_args: {momentum: 0.9}}\n"
    assert read_framework_config(_write(tmp_path, sgd)).settings["optimizer"] == "sgd-momentum"
    fused = "optimizer: {class_path: torch.optim.AdamW, init_args: {fused: true}}\n"
    assert read_framework_config(_write(tmp_path, fused)).settings["optimizer_impl"] == "fused"
    cfg = read_framework_config(_write(tmp_path, "optimizer: RMSprop\n"))
    assert any("RMSprop is not modelled" in n for n in cfg.notes)


def test_docs_page_names_every_key_and_no_other():
    page = DOC.read_text()
    named = page_keys(page)
    train = {f"train.{k}" for k in litgpt.TRAIN_NO_EFFECT | set(litgpt.TRAIN_REFUSED)}
    train |= {"train.micro_batch_size", "train.global_batch_size", "train.max_seq_length"}
    known = litgpt.LITGPT_KEYS | litgpt.NO_MEMORY_EFFECT | train
    known |= {f"eval.{k}" for k in litgpt.EVAL_KEYS}
    assert known <= named, sorted(known - named)
    assert named <= known, sorted(named - known)


def test_lora_head_adds_the_head_target(tmp_path):
    """lora_head: true is LitGPT's LoRALinear on its LM head (litgpt@00af8b0d litgpt/lora.py
    GPT.__init__, r = lora_r): ftmem's lm_head target beside the block switches; alone
    (no block switch) nothing below the head would need a gradient: a note, no target."""
    text = "lora_r: 8\nlora_query: true\nlora_value: true\nlora_head: true\n"
    s = read_framework_config(_write(tmp_path, text)).settings
    assert s["lora_targets"] == "q,v,lm_head"
    text = "lora_r: 8\nlora_query: false\nlora_value: false\nlora_head: true\n"
    cfg = read_framework_config(_write(tmp_path, text))
    assert "lora_targets" not in cfg.settings
    assert any("lora_head without any block switch" in n for n in cfg.notes)
    # the estimate runs with it (methods._check_head_lora lets LitGPT's chunked head through)
    text = "lora_r: 8\nlora_head: true\nprecision: bf16-true\ntrain: {max_seq_length: 512}\n"
    cfg = read_framework_config(_write(tmp_path, text))
    est = estimate("meta-llama/Llama-2-7b-hf", **cfg.settings)
    assert est.memory.peak_allocated_bytes > 0
