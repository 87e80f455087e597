"""GRPO --vllm server (ftmem.vllm_server): the generation server's GPUs, stated by hand
from the sources that size them:

* trl 1.16.0 trl/scripts/vllm_serve.py ScriptArguments (tensor_parallel_size 1,
  data_parallel_size 1, gpu_memory_utilization 0.9) and build_command (``vllm serve``
  with those flags); trl/trainer/grpo_config.py: vllm_gpu_memory_utilization and
  vllm_tensor_parallel_size are colocate-only;
* vllm-project/vllm@0012cf691b7e vllm/v1/worker/gpu_worker.py determine_available_memory:
  KV cache = total x gpu_memory_utilization - the profiled peak (weights, the profiling
  forward, the non-torch memory);
* vllm/config/model.py get_num_kv_heads: max(1, kv_heads // tp) KV heads per GPU, 1 for
  latent attention; vllm/engine/arg_utils.py get_batch_defaults: ``vllm serve`` profiles
  8192 tokens over 1024 sequences on a GPU of >= 70 GiB that is not an A100, else 2048
  over 256;
* axolotl@067b021c8b87 src/axolotl/cli/vllm_serve.py: the `vllm:` section's
  tensor_parallel_size, data_parallel_size and gpu_memory_utilization.

Model shapes from the Hugging Face configs: Qwen2.5-7B 28 layers, 28 heads, 4 KV heads of
128, hidden 3584, 7,615,616,512 parameters; Llama-3.1-8B 32 layers, 32 heads, 8 KV heads
of 128; DeepSeek-V2-Lite kv_lora_rank 512, qk_rope_head_dim 64, 27 layers.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ftmem import api
from ftmem.cli.root import app
from ftmem.errors import InvalidInputError
from ftmem.frameworks import read_framework_config
from ftmem.presets import get_gpu, get_model
from ftmem.run import RunConfig
from ftmem.serve import ServeConfig, prefill_bytes, serving_overhead
from ftmem.vllm_server import kv_per_token_per_gpu, large_gpu, weights_per_gpu

COMMON = dict(method="lora", objective="grpo", batch_size=8, seq_len=1024, completion_len=512)
QWEN7_PARAMS = 7_615_616_512
# the tensors vLLM keeps whole on every tensor-parallel GPU: two RMSNorm weights per
# layer and the final one, 3584 each
QWEN7_NORMS = (28 * 2 + 1) * 3584


def test_kv_heads_split_over_the_tensor_parallel_gpus_and_replicate_below_one():
    qwen, llama = get_model("qwen2.5-7b"), get_model("llama3.1-8b")
    # 2 (key, value) x layers x KV heads on this GPU x head size x 2 bytes
    assert kv_per_token_per_gpu(qwen, 1) == 2 * 28 * 4 * 128 * 2  # 57,344
    assert kv_per_token_per_gpu(qwen, 2) == 2 * 28 * 2 * 128 * 2
    assert kv_per_token_per_gpu(llama, 16) == 2 * 32 * 1 * 128 * 2  # 8 heads: 1 each, shared
    # latent attention: the whole latent and rotary key on every GPU, whatever tp
    lite = get_model("deepseek-v2-lite")
    assert kv_per_token_per_gpu(lite, 4) == kv_per_token_per_gpu(lite, 1) == 27 * (512 + 64) * 2


def test_weights_split_over_tensor_parallel_but_the_norms():
    qwen = get_model("qwen2.5-7b")
    assert weights_per_gpu(qwen, 1) == QWEN7_PARAMS * 2
    assert weights_per_gpu(qwen, 2) == (QWEN7_PARAMS - QWEN7_NORMS) * 2 // 2 + QWEN7_NORMS * 2
    assert weights_per_gpu(qwen, 4) == (QWEN7_PARAMS - QWEN7_NORMS) * 2 // 4 + QWEN7_NORMS * 2


@pytest.mark.parametrize(
    ("gpu", "large"),
    [("h100", True), ("h200", True), ("a100-80gb", False), ("a100-40gb", False), ("l4", False)],
)
def test_vllm_serves_larger_batches_on_large_gpus_but_the_a100(gpu, large):
    assert large_gpu(get_gpu(gpu)) is large


def test_the_server_gpus_hold_their_weights_and_a_kv_cache_that_fills_the_share():
    est = api.estimate(
        "qwen2.5-7b",
        gpu="h100",
        gpus=4,
        vllm="server",
        vllm_tensor_parallel=2,
        vllm_data_parallel=2,
        **COMMON,
    )
    v = est.vllm_server
    assert v is not None
    h100 = get_gpu("h100")
    assert (v.gpus, v.tensor_parallel, v.data_parallel, v.memory_share) == (4, 2, 2, 0.9)
    weights = (QWEN7_PARAMS - QWEN7_NORMS) * 2 // 2 + QWEN7_NORMS * 2
    # the profiling forward: 8192 tokens as 1024 requests of 8, one fp32 logits row each
    profile = prefill_bytes(
        get_model("qwen2.5-7b"), ServeConfig(sequences=1024, context=8, prefill_chunk=8192)
    )
    assert profile >= 1024 * 152_064 * 4
    reserved = int(h100.memory_bytes * 0.9)
    kv = reserved - weights - profile - serving_overhead(h100)
    assert (v.reserved_bytes, v.weights_bytes, v.profile_bytes) == (reserved, weights, profile)
    assert v.kv_cache_bytes == kv
    assert v.kv_cache_tokens == kv // (2 * 28 * 2 * 128 * 2)
    assert v.concurrent_completions == v.kv_cache_tokens // 1024
    # 8 completions per micro-batch on each of 4 training GPUs, split over 2 engines
    assert (v.completions, v.completions_per_engine) == (32, 16)
    assert v.fits is True


def test_the_training_gpus_estimate_is_the_same_with_or_without_the_server_figures():
    """The server is beside the training GPUs: nothing of it is on them."""
    one = api.estimate("qwen2.5-1.5b", gpu="h100", vllm="server", **COMMON)
    two = api.estimate("qwen2.5-1.5b", gpu="h100", vllm="server", vllm_tensor_parallel=2, **COMMON)
    assert one.memory == two.memory
    assert one.vllm_server is not None and two.vllm_server is not None
    assert two.vllm_server.weights_bytes < one.vllm_server.weights_bytes


def test_a_model_whose_weights_exceed_the_share_does_not_fit_the_server():
    # Qwen2.5-72B: about 145 GB of 16-bit weights against 0.9 x 79.2 GiB of one H100
    est = api.estimate("qwen2.5-72b", gpu="h100", vllm="server", **COMMON)
    v = est.vllm_server
    assert v is not None and v.kv_cache_bytes is not None
    assert v.weights_bytes > 140 * 10**9
    assert v.kv_cache_bytes < 0 and v.kv_cache_tokens == 0 and v.fits is False
    assert any("DOES NOT FIT" in n for n in est.notes)
    # over 4 tensor-parallel GPUs (64 heads and 8 KV heads divide) it does
    four = api.estimate("qwen2.5-72b", gpu="h100", vllm="server", vllm_tensor_parallel=4, **COMMON)
    assert four.vllm_server is not None and four.vllm_server.fits is True


def test_without_a_gpu_the_server_reports_what_needs_no_card_size():
    v = api.estimate("qwen2.5-7b", vllm="server", **COMMON).vllm_server
    assert v is not None
    assert v.weights_bytes == QWEN7_PARAMS * 2
    assert v.max_num_batched_tokens == 2048  # vLLM's defaults without a large GPU
    assert (v.reserved_bytes, v.kv_cache_bytes, v.fits) == (None, None, None)


def test_no_server_field_without_a_server():
    for vllm in (None, "colocate"):
        est = api.estimate("qwen2.5-1.5b", gpu="h100", vllm=vllm, **COMMON)
        assert est.vllm_server is None
        assert "vllm_server" not in json.loads(est.model_dump_json())


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(vllm="colocate", vllm_tensor_parallel=2), "apply to --vllm server only"),
        (dict(vllm_data_parallel=2), "apply to --vllm server only"),
        (dict(vllm_memory_share=0.5), "colocate or server only"),
    ],
)
def test_server_flags_apply_to_a_server_only(settings, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**{**COMMON, **settings})


def test_vllm_refuses_heads_that_do_not_divide_over_the_tensor_parallel_gpus():
    with pytest.raises(InvalidInputError, match="28 attention heads"):
        api.estimate("qwen2.5-7b", gpu="h100", vllm="server", vllm_tensor_parallel=8, **COMMON)


def test_the_cli_shows_the_server_table_and_json():
    args = ["estimate", "qwen2.5-7b", "--gpu", "h100", "--objective", "grpo", "--method"]
    args += ["lora", "--batch-size", "8", "--seq-len", "1024", "--vllm", "server"]
    args += ["--vllm-tensor-parallel", "2", "--vllm-memory-share", "0.8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "vLLM server, per GPU" in result.output
    assert "2 (tp 2 × dp 1)" in result.output
    result = CliRunner().invoke(app, [*args, "--format", "json"])
    server = json.loads(result.output)["vllm_server"]
    assert (server["gpus"], server["memory_share"]) == (2, 0.8)
    assert server["reserved_bytes"] == int(get_gpu("h100").memory_bytes * 0.8)


def test_a_trl_server_config_says_the_server_is_set_apart(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text(
        "model_name_or_path: Qwen/Qwen2.5-0.5B\nreward_funcs: [accuracy_reward]\n"
        "per_device_train_batch_size: 8\nuse_vllm: true\nvllm_mode: server\n"
        "vllm_gpu_memory_utilization: 0.4\n"
    )
    cfg = read_framework_config(str(path))
    assert cfg.settings["vllm"] == "server"
    assert "vllm_memory_share" not in cfg.settings  # TRL reads it for colocate only
    assert any("trl vllm-serve" in n for n in cfg.notes)


def test_an_axolotl_config_gives_the_server_its_vllm_section(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text(
        "base_model: Qwen/Qwen2.5-0.5B\nrl: grpo\nmicro_batch_size: 8\nsequence_len: 512\n"
        "trl:\n  use_vllm: true\n  num_generations: 8\n"
        "vllm:\n  tensor_parallel_size: 2\n  data_parallel_size: 3\n"
        "  gpu_memory_utilization: 0.85\n"
    )
    cfg = read_framework_config(str(path))
    s = cfg.settings
    assert s["vllm"] == "server"  # axolotl's default mode
    assert (s["vllm_tensor_parallel"], s["vllm_data_parallel"]) == (2, 3)
    assert s["vllm_memory_share"] == 0.85
    assert not any("vLLM engine that generates" in n for n in cfg.notes)
