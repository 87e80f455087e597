"""Qwen-1 (model_type "qwen", remote code): its config.json read, its parameter counts
against the published one and a re-implementation of the model (tests/qwen1_reference.py,
following modeling_qwen.py at zhangningboo/Qwen-7B@e7a368b077), its LoRA on the fused
c_attn, its own loss, and tiny CPU steps measured against the estimate."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ftmem.arch import count_params
from ftmem.errors import ConfigError
from ftmem.estimate import estimate_step
from ftmem.run import RunConfig
from ftmem.sources import resolve_model
from tests.qwen1_reference import QWEN_7B


def _config(tmp_path, **changes):
    (tmp_path / "config.json").write_text(json.dumps({**QWEN_7B, **changes}))
    return resolve_model(str(tmp_path))


def _by_hand(h: int, layers: int, width: int, vocab: int) -> int:
    """QWenBlock: c_attn h x 3h + bias 3h, attn.c_proj h x h, w1 and w2 h x width,
    mlp.c_proj width x h, ln_1 and ln_2; wte, lm_head, ln_f."""
    block = 3 * h * h + 3 * h + h * h + 3 * h * width + 2 * h
    return layers * block + 2 * vocab * h + h


def test_qwen_7b_counts_as_published(tmp_path):
    """model.safetensors.index.json of Qwen/Qwen-7B (its mirror zhangningboo/Qwen-7B@ffe04dd57f)
    gives total_size 15,442,649,088 bytes of bf16 weights: 7,721,324,544 parameters."""
    arch = _config(tmp_path)
    assert arch.family == "qwen"
    assert count_params(arch) == 15_442_649_088 // 2
    assert count_params(resolve_model("qwen1-7b")) == 15_442_649_088 // 2
    assert resolve_model("Qwen/Qwen-7B-Chat").name == "Qwen-7B"


@pytest.mark.parametrize(
    ("preset", "h", "layers", "width", "vocab"),
    [("qwen1-1.8b", 2048, 24, 5504, 151936), ("qwen1-14b", 5120, 40, 13696, 152064)],
)
def test_presets_count_by_hand(preset, h, layers, width, vocab):
    assert count_params(resolve_model(preset)) == _by_hand(h, layers, width, vocab)


def test_the_reimplementation_counts_as_the_estimate(tmp_path):
    torch = pytest.importorskip("torch")
    from tests.qwen1_reference import QWenConfig, QWenLMHeadModel

    cfg = QWenConfig(151936, 256, 3, 2, 128, 1376)
    arch = _config(tmp_path, **{k: v for k, v in dataclasses.asdict(cfg).items()})
    with torch.device("meta"):
        model = QWenLMHeadModel(cfg)
    assert count_params(arch) == sum(p.numel() for p in model.parameters())
    names = {n for n, _ in model.named_parameters()}
    assert "transformer.h.0.attn.c_attn.bias" in names
    assert "transformer.h.0.attn.c_proj.bias" not in names


def test_what_qwen_refuses(tmp_path):
    with pytest.raises(ConfigError, match="kv_channels"):
        _config(tmp_path, kv_channels=64)
    with pytest.raises(ConfigError, match="attn_dropout_prob"):
        _config(tmp_path, attn_dropout_prob=0.1)


def test_lora_on_the_fused_c_attn_is_4rh(tmp_path):
    """peft's LoRA on c_attn: A h x r, B r x 3h (4rh), every other linear r(in + out):
    L·r·(9h + 3f′) with Qwen's targets c_attn, c_proj (both), w1, w2."""
    arch = _config(tmp_path)
    r, h, f = 64, 4096, 11008
    for targets in ("c_attn,c_proj,w1,w2", "q,k,v,o,gate,up,down"):
        run = RunConfig(method="lora", lora_r=r, lora_targets=targets, precision="bf16")
        assert estimate_step(arch, run).model.n_trainable_params == 32 * r * (9 * h + 3 * f)


def test_its_own_loss_is_the_default(tmp_path):
    """QWenLMHeadModel.forward computes the loss from the labels: --loss standard runs its
    shifted 16-bit loss; another loss asked for stays."""
    arch = _config(tmp_path)

    def run(**loss: str) -> tuple[int, int]:
        m = estimate_step(arch, RunConfig(method="lora", seq_len=2048, **loss)).memory
        return m.activations_bytes, m.peak_allocated_bytes

    assert run() == run(loss="shifted")
    assert run(loss="chunked") != run(loss="shifted")


def test_the_estimate_says_what_its_code_does(tmp_path):
    notes = estimate_step(_config(tmp_path), RunConfig(method="lora")).notes
    assert any("casts itself to bf16" in n and "--loss shifted" in n for n in notes)


def test_autogptq_torch_path_keeps_each_dequantised_weight():
    """AutoGPTQ v0.4.2's qlinear_cuda_old (exllama disabled, 128 or more rows a call):
    `torch.matmul(x.half(), weight)` keeps the fp16 weight, in x out x 2 bytes, of every
    quantised linear whose input needs a gradient: all of Qwen-7B's 32 blocks but the
    first's c_attn (its input, the first norm's output, needs none without checkpointing).
    Below 128 rows its CUDA kernel runs and keeps nothing."""
    arch = resolve_model("qwen1-7b")
    h, f = 4096, 11008
    per_block = h * 3 * h + h * h + 3 * h * f  # c_attn, attn.c_proj, w1, w2, mlp.c_proj
    base = {"method": "qlora", "quant": "int4", "precision": "fp16", "compute_dtype": "fp16"}
    base |= {"lora_targets": "all-linear", "batch_size": 1}

    def acts(seq_len: int, **kernel: str) -> int:
        run = RunConfig(**base, seq_len=seq_len, **kernel)
        return estimate_step(arch, run).memory.activations_bytes

    kept = acts(256, gptq_kernel="cuda-old") - acts(256)
    assert kept == 2 * (32 * per_block - h * 3 * h)
    assert acts(127, gptq_kernel="cuda-old") == acts(127)
    with pytest.raises(ValueError, match="--quant int4"):
        RunConfig(method="qlora", gptq_kernel="cuda-old")
