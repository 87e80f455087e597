"""GRPO ``--vllm server``: the GPUs of TRL's generation server, beside the training GPUs.

With ``use_vllm=True, vllm_mode="server"`` TRL's trainer sends its prompts to a server
started apart, ``trl vllm-serve --model M --tensor-parallel-size T --data-parallel-size D
--gpu-memory-utilization g`` (trl 1.16.0 trl/scripts/vllm_serve.py ScriptArguments,
build_command: ``vllm serve`` with those flags; defaults T = D = 1, g = 0.9). GRPOConfig's
own ``vllm_gpu_memory_utilization`` and ``vllm_tensor_parallel_size`` apply to colocate
only (trl 1.16.0 trl/trainer/grpo_config.py docstring). The server runs D engines of T
GPUs each, T x D GPUs, and on each GPU vLLM reserves g of the card and gives the KV
cache what its weights and its profiling forward leave of that share
(vllm-project/vllm@0012cf691b7e vllm/v1/worker/gpu_worker.py
Worker.determine_available_memory: ``total_gpu_memory * gpu_memory_utilization -
peak_memory``, the peak counting the non-torch memory: the CUDA context).

Per server GPU (ftmem.serve's parts, not a second model of serving):

* the weights: serve.weight_bytes (16-bit: vLLM's dtype auto) over T, but for the
  norms, routers and sinks every tensor-parallel rank keeps whole;
* the profiling forward: vLLM's profile_run, a dummy forward over max_num_batched_tokens
  tokens split into min(max_num_seqs, tokens) requests, with one row of logits each
  (serve.prefill_bytes over that chunk); ``vllm serve``'s defaults are 8192 tokens and
  1024 sequences on a GPU of 70 GiB or more that is not an A100, else 2048 and 256
  (vllm/engine/arg_utils.py EngineArgs.get_batch_defaults, OPENAI_API_SERVER);
* the CUDA context and BLAS workspaces (serve.serving_overhead);
* the KV cache: the rest of the share, per token 2 x layers x max(1, kv_heads // T) x
  head_size x 2 bytes (vllm/config/model.py ModelConfig.get_num_kv_heads: the KV heads
  split over T, replicated below one per GPU; latent attention keeps its whole latent
  on each GPU).
"""

from __future__ import annotations

from ftmem.arch import Architecture, layout
from ftmem.dtypes import FP32, ceil_div, tensor_bytes
from ftmem.errors import InvalidInputError
from ftmem.hardware import Gpu
from ftmem.result import VllmServerInfo
from ftmem.run import RunConfig
from ftmem.serve import ServeConfig, kv_bytes_per_token, prefill_bytes, serving_overhead
from ftmem.serve import weight_bytes as serve_weight_bytes
from ftmem.units import format_bytes

GIB = 2**30
# vllm/engine/arg_utils.py EngineArgs.get_batch_defaults, UsageContext.OPENAI_API_SERVER
LARGE_GPU = 70 * GIB
BATCHED_TOKENS = {True: 8192, False: 2048}  # max_num_batched_tokens: large GPU or not
MAX_SEQS = {True: 1024, False: 256}  # max_num_seqs
REPLICATED = (
    "norm",
    "router",
    "sink",
    "activation",
)  # vLLM's RMSNorm, ReplicatedLinear gate, sinks, xIELU


def large_gpu(gpu: Gpu | None) -> bool:
    """vLLM's larger batch defaults: 70 GiB or more and not an A100."""
    return gpu is not None and gpu.memory_bytes >= LARGE_GPU and "a100" not in gpu.name.lower()


def weights_per_gpu(arch: Architecture, tp: int) -> int:
    """One tensor-parallel rank's 16-bit weights: every tensor split over ``tp`` but the
    ones vLLM replicates (norms, the MoE router, attention sinks)."""
    lay = layout(arch)
    replicated = sum(tensor_bytes(p.numel, "bf16") for p in lay.outer if p.kind in REPLICATED)
    replicated += sum(
        p.count(arch.num_layers) * tensor_bytes(p.numel, "bf16")
        for p in lay.block
        if p.kind in REPLICATED
    )
    return ceil_div(serve_weight_bytes(arch, "bf16") - replicated, tp) + replicated


def kv_per_token_per_gpu(arch: Architecture, tp: int) -> int:
    """One token's keys and values on one rank, all layers (16-bit: kv_cache_dtype auto)."""
    whole = kv_bytes_per_token(arch, "bf16")
    if arch.latent_attention:
        return whole
    return whole // arch.kv_heads * max(1, arch.kv_heads // tp)


def profile_bytes(arch: Architecture, tokens: int, seqs: int) -> int:
    """vLLM's profiling forward: ``tokens`` over ``seqs`` requests, a logits row each."""
    rows = min(seqs, tokens)
    cfg = ServeConfig(sequences=rows, context=ceil_div(tokens, rows), prefill_chunk=tokens)
    return prefill_bytes(arch, cfg)


def check_heads(arch: Architecture, tp: int) -> None:
    """vLLM splits the attention heads over the tensor-parallel ranks evenly
    (vllm/config/parallel.py verify_with_model_config / ModelConfig.verify_with_parallel_config:
    "Total number of attention heads must be divisible by tensor parallel size")."""
    if arch.num_heads % tp:
        raise InvalidInputError(
            f"--vllm-tensor-parallel {tp}: vLLM needs the {arch.num_heads} attention heads "
            f"of {arch.name} to divide evenly over the tensor-parallel GPUs"
        )


def server_info(
    arch: Architecture, run: RunConfig, gpu: Gpu | None, world: int
) -> VllmServerInfo | None:
    """The server's GPUs for a GRPO run with ``--vllm server`` over ``world`` training
    GPUs (None otherwise), each of the same model as the training GPUs (``gpu``)."""
    if run.objective != "grpo" or run.vllm != "server":
        return None
    tp, dp = run.vllm_tensor_parallel or 1, run.vllm_data_parallel or 1
    check_heads(arch, tp)
    large = large_gpu(gpu)
    tokens, seqs = BATCHED_TOKENS[large], MAX_SEQS[large]
    weights = weights_per_gpu(arch, tp)
    profile = profile_bytes(arch, tokens, seqs)
    overhead = serving_overhead(gpu)
    per_token = kv_per_token_per_gpu(arch, tp)
    sequence = run.seq_len
    completions = run.generation_rows * world
    reserved = kv = kv_tokens = concurrent = fits = None
    if gpu is not None:
        reserved = int(gpu.memory_bytes * run.vllm_share)
        kv = reserved - weights - profile - overhead
        kv_tokens = max(kv, 0) // per_token
        concurrent = kv_tokens // sequence
        fits = concurrent >= 1
    return VllmServerInfo(
        gpus=tp * dp,
        tensor_parallel=tp,
        data_parallel=dp,
        memory_share=run.vllm_share,
        reserved_bytes=reserved,
        weights_bytes=weights,
        profile_bytes=profile,
        max_num_batched_tokens=tokens,
        overhead_bytes=overhead,
        kv_cache_bytes=kv,
        kv_bytes_per_token=per_token,
        kv_cache_tokens=kv_tokens,
        sequence_tokens=sequence,
        completions=completions,
        completions_per_engine=ceil_div(completions, dp),
        concurrent_completions=concurrent,
        fits=fits,
    )


def server_notes(arch: Architecture, info: VllmServerInfo, gpu: Gpu | None) -> list[str]:
    """What the server's figures say and leave out."""
    where = f"{info.gpus} more GPU{'s' if info.gpus > 1 else ''}"
    head = (
        f"vLLM server (trl vllm-serve --tensor-parallel-size {info.tensor_parallel} "
        f"--data-parallel-size {info.data_parallel} --gpu-memory-utilization "
        f"{info.memory_share}): {where} beside the training GPUs, each holding "
        f"{format_bytes(info.weights_bytes)} of weights"
    )
    if gpu is None or info.kv_cache_bytes is None or info.reserved_bytes is None:
        return [head + "; give --gpu for the share each reserves and its KV cache."]
    seqs = MAX_SEQS[large_gpu(gpu)]
    if not info.fits:
        need = info.weights_bytes + info.profile_bytes + info.overhead_bytes
        short = need + info.kv_bytes_per_token * info.sequence_tokens - info.reserved_bytes
        said = (
            f"; DOES NOT FIT: the {format_bytes(info.reserved_bytes)} share leaves no KV "
            f"cache for one {info.sequence_tokens}-token sequence ({format_bytes(short)} "
            "short: raise --vllm-memory-share or --vllm-tensor-parallel)."
        )
        return [head + said]
    per_engine = info.completions_per_engine
    at_once = min(info.concurrent_completions or 0, seqs)
    batches = ceil_div(per_engine, at_once)
    notes = [
        head + f", a {format_bytes(info.kv_cache_bytes)} KV cache "
        f"({info.kv_cache_tokens:,} tokens: {info.concurrent_completions:,} sequences of "
        f"{info.sequence_tokens}) in its {format_bytes(info.reserved_bytes)} share; "
        f"{per_engine} completions per engine per generation"
        + (
            f", about {batches} rounds as vLLM queues the rest (max_num_seqs {seqs})."
            if batches > 1
            else ", all at once."
        )
    ]
    context = arch.max_position_embeddings
    if context and info.kv_cache_tokens is not None and info.kv_cache_tokens < context:
        notes.append(
            f"vLLM server: its KV cache holds {info.kv_cache_tokens:,} tokens, fewer than "
            f"{arch.name}'s {context:,}-token context: `trl vllm-serve` refuses to start "
            "unless given --max-model-len (e.g. "
            f"{info.sequence_tokens}) (vllm/v1/core/kv_cache_utils.py "
            "check_enough_kv_cache_memory)."
        )
    row = format_bytes(seqs * arch.vocab_size * FP32)
    notes.append(
        "vLLM server, not counted: CUDA graphs (captured after the KV cache; "
        "--enforce-eager skips them), NCCL buffers between its tensor-parallel GPUs, the "
        f"sampler's temporaries in its profile (each fp32 copy of its {seqs} logits rows "
        f"{row}), which vLLM takes from the KV cache; the profiling forward is counted "
        "whole on each GPU."
    )
    return notes
