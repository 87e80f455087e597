"""ColossalAI's booster plugins as strategies, against hand derivations from ColossalAI's
source (hpcaitech/ColossalAI 4f9953be335e; file:line in src/ftmem/colossalai.py)."""

import ast
from math import ceil

import pytest

from ftmem import estimate
from ftmem.api import parallel_config, run_config
from ftmem.errors import InvalidInputError
from ftmem.parallel import parallel_step
from ftmem.present.emit import emit_config
from ftmem.presets import get_model

PSI_7B = 6_738_415_616  # Llama-2-7B, published count
H, F, L, V = 4096, 11008, 32, 32000
EMBED = V * H  # the largest tensors: the embedding and the LM head, 131,072,000 each
BUCKET = 12 * 2**20  # reduce_bucket_size_in_m=12 (low_level_zero_plugin.py:451)


def _full(strategy: str, gpus: int = 8, **kw):
    kw.setdefault("precision", "bf16")
    return estimate(
        "llama2-7b", method=kw.pop("method", "full"), gpus=gpus, strategy=strategy, **kw
    )


@pytest.mark.parametrize("stage", [1, 2])
def test_low_level_zero_model_states(stage):
    """16-bit weights whole; stage 1 the whole reduced 16-bit gradient on every rank, stage 2
    its shard; fp32 master + Adam's two fp32 states over the 8 ranks (12 bytes each)."""
    est = _full(f"colossalai-zero{stage}")
    m = est.memory
    assert est.parallel.engine == "ColossalAI LowLevelZeroPlugin"
    assert m.weights_bytes == 2 * PSI_7B
    assert m.gradients_bytes == (2 * PSI_7B if stage == 1 else ceil(2 * PSI_7B / 8))
    assert m.optimizer_states_bytes == ceil(12 * PSI_7B / 8)


def test_low_level_zero_step_holds_the_fp32_gradient_shard():
    """At the step each rank converts its gradient shard to fp32 (4Ψ/N) beside the 16-bit
    one (low_level_optim.py:565-568); the all-gather after it is smaller here:
    2·((8 + 2)·B + 45,088,768) = 341,835,776 bytes (every block tensor's shard is under one
    bucket; the embedding's and the head's 16,384,000-element shards are not)."""
    m = _full("colossalai-zero2").memory
    assert m.peak_phase == "optimizer"
    assert m.at_peak.temporaries == 4 * PSI_7B // 8
    small_shards = (PSI_7B - 2 * EMBED) // 8
    assert small_shards > BUCKET
    gather = 2 * ((8 + 2) * BUCKET + min(8 * BUCKET, F * H))
    assert gather == 341_835_776 < 4 * PSI_7B // 8


@pytest.mark.parametrize(("stage", "flats"), [(1, 2), (2, 2 + 1 / 8)])
def test_reduce_buckets_take_the_largest_gradient_whole(stage, flats):
    """A gradient larger than the 12·2^20-element bucket is reduced alone: the LM head's
    131,072,000 elements; two flat copies in flight (overlap_communication), stage 2 also
    the received slice."""
    m = _full(f"colossalai-zero{stage}").memory
    assert m.communication_bytes == int(2 * flats * EMBED)


def test_deepspeed_zero2_has_the_same_states_and_smaller_buckets():
    cai, ds = _full("colossalai-zero2").memory, _full("zero2").memory
    assert (cai.weights_bytes, cai.gradients_bytes, cai.optimizer_states_bytes) == (
        ds.weights_bytes,
        ds.gradients_bytes,
        ds.optimizer_states_bytes,
    )
    assert ds.communication_bytes == 2 * 2 * H * H  # HF's auto bucket: hidden², twice
    assert cai.communication_bytes > ds.communication_bytes


def test_fp32_low_level_zero_still_clones_a_master():
    """fp32: the master shard is a clone (low_level_optim.py:291-292): 4 + 8 bytes per
    element over N, where DeepSpeed in fp32 keeps the states only."""
    cai = _full("colossalai-zero1", gpus=4, precision="fp32").memory
    ds = _full("zero1", gpus=4, precision="fp32").memory
    assert cai.weights_bytes == 4 * PSI_7B
    assert cai.optimizer_states_bytes == ceil(12 * PSI_7B / 4)
    assert ds.optimizer_states_bytes == ceil(8 * PSI_7B / 4)


def test_cpu_offload_keeps_the_16bit_gradients_on_the_gpu():
    """cpu_offload: master, Adam and the step's fp32 gradients on the host, 16 bytes per
    element of each rank's shard, unpinned; the 16-bit gradient shard stays on the GPU
    (DeepSpeed's ZeRO-2 offload sends it to the host)."""
    est = _full("colossalai-zero2", offload_optimizer="cpu")
    m, p = est.memory, est.parallel
    assert m.gradients_bytes == ceil(2 * PSI_7B / 8)
    assert m.optimizer_states_bytes == 0
    assert p.host_bytes_per_gpu == 16 * PSI_7B // 8
    assert p.host_bytes_per_node == 16 * PSI_7B  # 100.41 GiB on 8 GPUs
    assert _full("zero2", offload_optimizer="cpu").memory.gradients_bytes == 0


def test_hybrid_parallel_tp2_pp2_zero1():
    """HybridParallelPlugin(tp_size=2, pp_size=2, zero_stage=1) on 8 GPUs: dp = 2; each
    rank holds 16 blocks split in two and half the vocabulary, its whole 16-bit
    gradient, and 12 bytes per element over dp."""
    arch = get_model("llama2-7b")
    run = run_config(method="full", precision="bf16", batch_size=1, grad_accum=4)
    par = parallel_config(gpus=8, strategy="colossalai-zero1", tp=2, pp=2)
    step = parallel_step(arch, run, par)
    block = (4 * H * H + 3 * H * F) // 2 + 2 * H
    first = 16 * block + EMBED // 2
    last = 16 * block + H + EMBED // 2
    for rank, psi in zip(step.ranks, (first, last), strict=True):
        assert rank.sizes.weights == 2 * psi
        assert rank.sizes.gradients.total == 2 * psi
        assert rank.sizes.states == 12 * psi // 2
    assert par.engine == "ColossalAI HybridParallelPlugin"


def test_zero_stage_0_keeps_an_fp32_master_of_everything():
    """zero_stage=0 in bf16: MixedPrecisionOptimizer keeps an fp32 master of every
    trainable local tensor and swaps each 16-bit gradient for an fp32 one at the step
    (+2 bytes each); torch DDP's buckets hold a copy of the gradients (pp = 1)."""
    m = _full("colossalai-3d", gpus=2, tp=2).memory
    psi = (L * (4 * H * H + 3 * H * F) // 2) + (2 * L + 1) * H + EMBED
    assert m.weights_bytes == 2 * psi
    assert m.optimizer_states_bytes == 12 * psi
    assert m.communication_bytes == 2 * psi
    assert m.at_peak.temporaries == 2 * psi


def test_shardformer_pads_the_vocabulary_to_64_per_rank():
    """GPT-2's 50,257 rows over tp 2: ColossalAI pads to a multiple of 64·2 (25,152 rows
    a rank, shardformer/layer/embedding.py:303-305); Megatron to 128·2 (25,216)."""
    arch, run = get_model("gpt2"), run_config(method="full", precision="bf16")
    cai = parallel_step(arch, run, parallel_config(gpus=2, strategy="colossalai-3d", tp=2))
    megatron = parallel_step(arch, run, parallel_config(gpus=2, strategy="ddp", tp=2))
    assert cai.arch.vocab_size == ceil(50257 / 128) * 64 == 25_152
    assert megatron.arch.vocab_size == ceil(50257 / 256) * 128 == 25_216


def test_sequence_parallel_widens_the_zero_group():
    """all_to_all sequence parallelism shards ZeRO over dp × sp (mixed_dp_group,
    hybrid_parallel_plugin.py:1198-1200): 8 GPUs with cp 2 shard over 8, not 4."""
    est = _full("colossalai-zero2", cp=2, seq_len=1024)
    assert est.parallel.shard_group == 8
    assert est.memory.optimizer_states_bytes == ceil(12 * PSI_7B / 8)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"strategy": "colossalai-zero2", "pp": 2}, "zero_stage 0 or 1"),
        ({"strategy": "colossalai-zero2", "offload_optimizer": "nvme"}, "CPU only"),
        ({"strategy": "colossalai-gemini", "method": "lora"}, "support_lora"),
        ({"strategy": "colossalai-gemini", "precision": "fp32"}, "fp16 or bf16"),
        ({"strategy": "colossalai-gemini", "optimizer": "sgd"}, "HybridAdam"),
        ({"strategy": "colossalai-gemini", "pp": 2}, "no pipeline"),
        ({"strategy": "colossalai-gemini", "offload_params": "cpu"}, "offload_optim_frac"),
        ({"strategy": "colossalai-zero1", "tp": 2, "precision": "fp32"}, "refuses fp32"),
        ({"strategy": "colossalai-zero1", "tp": 2, "method": "lora"}, "tp_size == 1"),
        (
            {"strategy": "colossalai-3d", "offload_optimizer": "cpu"},
            "colossalai-zero1, colossalai-zero2",
        ),
    ],
)
def test_what_the_plugins_refuse(kw, words):
    kw.setdefault("precision", "bf16")
    with pytest.raises((InvalidInputError, ValueError), match=words):
        estimate("llama2-7b", method=kw.pop("method", "full"), gpus=4, **kw)


# --- --emit colossalai ------------------------------------------------------------------

# Each plugin's __init__ arguments at 4f9953be335e (booster/plugin/*.py), of those ftmem
# writes: an emitted name outside these would be a TypeError in the user's script.
PLUGIN_ARGUMENTS = {
    "LowLevelZeroPlugin": {
        "stage",
        "precision",
        "reduce_bucket_size_in_m",
        "cpu_offload",
        "max_norm",
        "overlap_communication",
    },
    "HybridParallelPlugin": {
        "tp_size",
        "pp_size",
        "zero_stage",
        "precision",
        "max_norm",
        "zero_bucket_size_in_m",
        "cpu_offload",
        "microbatch_size",
        "pp_style",
        "num_model_chunks",
        "sp_size",
        "enable_sequence_parallelism",
        "sequence_parallelism_mode",
        "enable_flash_attention",
    },
    "GeminiPlugin": {
        "precision",
        "placement_policy",
        "shard_param_frac",
        "offload_optim_frac",
        "offload_param_frac",
        "enable_gradient_accumulation",
        "max_norm",
        "tp_size",
        "enable_sequence_parallelism",
        "enable_flash_attention",
    },
    "TorchDDPPlugin": {"bucket_cap_mb"},
    "TorchFSDPPlugin": {"sharding_strategy", "auto_wrap_policy", "mixed_precision", "cpu_offload"},
}
# MoeHybridParallelPlugin takes HybridParallelPlugin's arguments and ep_size
PLUGIN_ARGUMENTS["MoeHybridParallelPlugin"] = PLUGIN_ARGUMENTS["HybridParallelPlugin"] | {"ep_size"}


def _plugin_call(text: str) -> tuple[str, dict[str, object]]:
    tree = ast.parse(text)  # the snippet is Python
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in PLUGIN_ARGUMENTS:
            return node.func.id, {
                k.arg: ast.literal_eval(k.value)
                if isinstance(k.value, ast.Constant)
                else ast.unparse(k.value)
                for k in node.keywords
            }
    raise AssertionError("no plugin call")


@pytest.mark.parametrize(
    ("kw", "plugin", "expected"),
    [
        (
            {"strategy": "colossalai-zero2", "offload_optimizer": "cpu"},
            "LowLevelZeroPlugin",
            {"stage": 2, "precision": "bf16", "reduce_bucket_size_in_m": 12, "cpu_offload": True},
        ),
        (
            {"strategy": "colossalai-zero1", "pp": 2, "grad_accum": 4, "method": "lora"},
            "HybridParallelPlugin",
            {"tp_size": 1, "pp_size": 2, "zero_stage": 1, "microbatch_size": 1},
        ),
        (
            {"strategy": "colossalai-3d", "tp": 2, "cp": 2, "seq_len": 1024},
            "HybridParallelPlugin",
            {
                "tp_size": 2,
                "zero_stage": 0,
                "sp_size": 2,
                "sequence_parallelism_mode": "all_to_all",
            },
        ),
        ({"strategy": "ddp"}, "TorchDDPPlugin", {"bucket_cap_mb": 25}),
        (
            {"strategy": "fsdp-grad-op"},
            "TorchFSDPPlugin",
            {"sharding_strategy": "ShardingStrategy.SHARD_GRAD_OP"},
        ),
    ],
)
def test_emit_colossalai_writes_the_estimated_plugin(kw, plugin, expected):
    kw.setdefault("precision", "bf16")
    est = estimate("llama2-7b", method=kw.pop("method", "full"), gpus=4, **kw)
    name, args = _plugin_call(emit_config(est, "colossalai"))
    assert name == plugin
    assert set(args) <= PLUGIN_ARGUMENTS[plugin]
    assert expected.items() <= args.items()


def test_emit_colossalai_lora_goes_through_enable_lora():
    est = estimate(
        "llama2-7b", method="lora", precision="bf16", gpus=2, strategy="colossalai-zero2"
    )
    text = emit_config(est, "colossalai")
    assert "booster.enable_lora(model, lora_config=LoraConfig(r=8" in text
    assert "'q_proj', 'v_proj'" in text


def test_emit_colossalai_names_the_expert_parameters_it_counted():
    """LoRA on the experts is no target module: the emitted script says which expert
    parameters the estimate counts, and leaves them out of target_modules."""
    est = estimate(
        "olmoe-1b-7b", method="lora", lora_targets="all-linear", gpus=2, strategy="colossalai-zero2"
    )
    text = emit_config(est, "colossalai")
    assert "target_modules=['k_proj', 'o_proj', 'q_proj', 'v_proj']" in text
    said = "mlp.gate.weight, mlp.experts.gate_up_proj, mlp.experts.down_proj"
    assert f"(peft target_parameters): {said}" in text


def test_emit_colossalai_refuses_zero3():
    est = _full("zero3", gpus=2)
    with pytest.raises(InvalidInputError, match="colossalai-gemini"):
        emit_config(est, "colossalai")


# --- GeminiPlugin: the chunk layout (tests/test_gemini.py checks it against ColossalAI's
# own search and GeminiDDP), and what a rank keeps of it --------------------------------

# Llama-2-7B on 8 ranks: ColossalAI's search gives chunks of 45,101,056 elements; each
# block packs into five ([q, k], [v, o], [gate], [up], [down, two norms]), the final norm
# fills the last one, the embedding and the LM head (larger than a chunk) get their own.
CHUNK_7B = 45_101_056
C_7B = 5 * L * CHUNK_7B + 2 * EMBED


def test_gemini_keeps_a_shard_of_every_chunk():
    """2·C/N of 16-bit chunks (which also take the reduced gradients), 4·C/N of fp32
    masters and 8·C/N of Adam states (every chunk's shard holds real elements); the
    pinned host copies of the 16-bit and fp32 shards, 6·C/N, with nothing offloaded."""
    assert C_7B == 7_478_312_960
    est = _full("colossalai-gemini")
    m, p = est.memory, est.parallel
    assert p.engine == "ColossalAI GeminiPlugin"
    assert m.weights_bytes == p.weights_sharded_bytes == 2 * C_7B // 8
    assert m.gradients_bytes == 0
    assert m.optimizer_states_bytes == 12 * C_7B // 8
    assert p.host_bytes_per_gpu == 6 * C_7B // 8


def test_gemini_offload_fractions():
    """offload_optim_frac=1: masters, states (and the reduced gradients) on the host, the
    Adam states unpinned beside the pinned shards; offload_param_frac=1: the 16-bit
    chunks too."""
    opt = _full("colossalai-gemini", offload_optimizer="cpu")
    assert opt.memory.optimizer_states_bytes == 0
    assert opt.memory.weights_bytes == 2 * C_7B // 8
    assert opt.parallel.host_bytes_per_gpu == (6 + 8) * C_7B // 8
    both = _full("colossalai-gemini", offload_optimizer="cpu", offload_params="cpu")
    assert both.memory.weights_bytes == 0
    assert both.parallel.host_bytes_per_gpu == (6 + 8) * C_7B // 8


def test_gemini_with_accumulation_keeps_gradient_chunks():
    """enable_gradient_accumulation: no reuse of the 16-bit chunk, a gradient shard of
    2·C/N on the GPU and its pinned copy on the host."""
    est = _full("colossalai-gemini", grad_accum=4)
    assert est.memory.gradients_bytes == 2 * C_7B // 8
    assert est.parallel.host_bytes_per_gpu == 8 * C_7B // 8


def test_gemini_leaves_frozen_weights_whole():
    """Frozen tensors are not chunked: whole, in 16-bit, on every GPU (gemini_ddp.py:
    826-832). Training the top 4 blocks of Llama-2-7B alone leaves 28 blocks, the
    embedding, the final norm and the LM head whole."""
    est = _full("colossalai-gemini", method="freeze", trainable_layers=4)
    frozen = 28 * (4 * H * H + 3 * H * F + 2 * H) + 2 * EMBED + H
    assert est.parallel.weights_replicated_bytes == 2 * frozen


def test_plan_offers_gemini_to_a_low_level_zero_run():
    from ftmem.api import plan

    result = plan(
        "llama2-7b",
        method="full",
        precision="bf16",
        gpus=8,
        strategy="colossalai-zero2",
        gpu="rtx4090",
        seq_len=1024,
    )
    changes = [c.what for row in result.fitting for c in row.changes]
    assert any("GeminiPlugin" in c for c in changes), changes


def test_the_refusal_quoted_in_the_docs_is_the_tools(capsys):
    """docs/parallel.md quotes what ftmem answers to Gemini with LoRA: the same sentence."""
    from pathlib import Path

    from ftmem.cli import main

    doc = (Path(__file__).parents[1] / "docs" / "parallel.md").read_text()
    _, _, rest = doc.partition("<!-- ftmem-refusal: ")
    cmd, _, rest = rest.partition(" -->\n> ")
    quoted = rest.splitlines()[0]
    with pytest.raises(SystemExit) as exit_info:
        main(cmd.split())
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and out == ""
    assert err.strip() == f"Error: {quoted}"


# --- MoeHybridParallelPlugin: experts split over the data-parallel ranks ---------------

# Mixtral-8x7B: 32 layers of 8 experts, each gate + up (2 × 14,336 × 4,096) and down
# (4,096 × 14,336); everything else is shared.
PSI_MIXTRAL = 46_702_792_704
EXPERTS_MIXTRAL = 32 * 8 * 3 * 14336 * 4096


@pytest.mark.parametrize("strategy", ["colossalai-zero1", "colossalai-zero2"])
def test_expert_parallel_keeps_a_quarter_of_the_experts(strategy):
    """ep 4 on 8 GPUs: each rank holds 2 of 8 experts a layer, in 16-bit, with their whole
    gradients (the MoE plugin runs ZeRO-2 as ZeRO-1); expert states shard over the
    dp / ep = 2 ranks with the same experts, the rest over 8: 12 bytes per element of
    the whole model over 8, as without expert parallelism."""
    est = estimate("mixtral-8x7b", method="full", precision="bf16", gpus=8, strategy=strategy, ep=4)
    m = est.memory
    local = PSI_MIXTRAL - EXPERTS_MIXTRAL + EXPERTS_MIXTRAL // 4
    assert est.parallel.engine == "ColossalAI MoeHybridParallelPlugin"
    assert est.parallel.expert_parallel == 4
    assert m.weights_bytes == 2 * local
    assert m.gradients_bytes == 2 * local
    assert m.optimizer_states_bytes == ceil(12 * PSI_MIXTRAL / 8)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"model": "llama2-7b", "ep": 2}, "dense"),
        ({"ep": 16, "gpus": 16}, "its 8 experts"),
        ({"ep": 4, "gpus": 2}, "must divide the 2 data-parallel"),
        ({"ep": 2, "strategy": "zero2"}, "MoeHybridParallelPlugin"),
        ({"ep": 2, "strategy": "colossalai-gemini"}, "colossalai-zero1 with --ep"),
    ],
)
def test_expert_parallel_refusals(kw, words):
    kw = {"model": "mixtral-8x7b", "gpus": 8, "strategy": "colossalai-zero1", **kw}
    with pytest.raises((InvalidInputError, ValueError), match=words):
        estimate(kw.pop("model"), method="full", precision="bf16", **kw)


def test_emit_moe_plugin():
    est = estimate(
        "mixtral-8x7b", method="full", precision="bf16", gpus=8, strategy="colossalai-zero2", ep=4
    )
    name, args = _plugin_call(emit_config(est, "colossalai"))
    assert name == "MoeHybridParallelPlugin"
    assert args["ep_size"] == 4 and args["zero_stage"] == 1


# GeminiPlugin's static fractions are taken of an inflated total: each chunk's bytes once
# per tensor it holds (placement_policy.py:89). Llama-2-7B: 9 tensors a block in 16-bit
# chunks of CHUNK_7B, the final norm in the last one, the embedding and the head alone.
INFLATED_7B = 2 * (L * 9 * CHUNK_7B + CHUNK_7B + 2 * EMBED)


def test_gemini_offload_fraction_offloads_whole_chunks_of_the_inflated_total():
    """offload_optim_frac 0.25: chunks go to the host until a quarter of the inflated
    total is reached (the test before each chunk: ceil), ftmem taking the smallest first
    (ColossalAI's set order is arbitrary): 74 of the 160 regular chunks, 0.4 of the real
    bytes. Their masters and states leave the GPU; the Adam states join the pinned shards
    on the host."""
    k = -(-INFLATED_7B // 4 // (2 * CHUNK_7B))
    assert k == 74
    est = _full("colossalai-gemini", gemini_offload_optim_frac=0.25)
    on_gpu = C_7B - k * CHUNK_7B
    assert est.memory.optimizer_states_bytes == 12 * on_gpu // 8
    assert est.parallel.host_bytes_per_gpu == 6 * C_7B // 8 + 8 * k * CHUNK_7B // 8
    assert est.parallel.gemini_offload_optim_frac == 0.25


def test_gemini_shard_fraction_keeps_the_newest_chunks_gathered():
    """shard_param_frac 0.9: the newest chunks whose whole size fits in a tenth of the
    inflated total stay gathered: the LM head's and 26 regular ones; the rest sharded."""
    budget = INFLATED_7B // 10
    kept = (budget - 2 * EMBED) // (2 * CHUNK_7B)
    assert kept == 26
    whole = EMBED + kept * CHUNK_7B
    est = _full("colossalai-gemini", gemini_shard_param_frac=0.9)
    assert est.memory.weights_bytes == 2 * whole + 2 * (C_7B - whole) // 8


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"strategy": "colossalai-zero2", "gemini_offload_optim_frac": 0.5}, "GeminiPlugin's"),
        (
            {"gemini_offload_optim_frac": 0.5, "offload_optimizer": "cpu"},
            "give one of them",
        ),
        (
            {"gemini_offload_optim_frac": 0.5, "offload_params": "cpu"},
            "placement_policy.py:59-61",
        ),
        ({"gemini_shard_param_frac": 1.5}, "less than or equal to 1"),
    ],
)
def test_gemini_fraction_refusals(kw, words):
    kw = {"strategy": "colossalai-gemini", **kw}
    with pytest.raises((InvalidInputError, ValueError), match=words):
        _full(**kw)


def test_emit_gemini_fractions():
    est = _full("colossalai-gemini", gemini_offload_optim_frac=0.25, gemini_shard_param_frac=0.9)
    name, args = _plugin_call(emit_config(est, "colossalai"))
    assert name == "GeminiPlugin"
    assert (args["offload_optim_frac"], args["shard_param_frac"]) == (0.25, 0.9)


def test_gemini_auto_placement_moves_the_optimizer_to_the_host():
    """placement_policy='auto': every chunk's masters, Adam states and reduced gradients
    on the host (setup_grads_device, placement_policy.py:224-234): the pinned shards
    (6·C/N) and the Adam states (8·C/N); with room on the GPU, every 16-bit chunk stays
    gathered there (released only under pressure): 2·C."""
    est = _full("colossalai-gemini", gemini_placement="auto", gpu="h100-80gb")
    assert est.memory.optimizer_states_bytes == 0
    assert est.memory.weights_bytes == 2 * C_7B
    assert est.parallel.host_bytes_per_gpu == 14 * C_7B // 8
    assert est.parallel.gemini_placement == "auto"


def test_gemini_auto_placement_fills_nine_tenths_of_the_device():
    """Where every chunk does not fit, auto placement keeps as many as 0.9 × the device
    less the non-model memory leaves room for (steady_cuda_cap_ratio 0.9,
    placement_policy.py:182-186): Llama-2-13B's 2·C ≈ 26 GB on a 24 GB card peaks at 0.9
    of it (within the step's other moments)."""
    from ftmem.api import resolve_gpu

    cap = resolve_gpu("rtx4090").memory_bytes
    est = estimate(
        "llama2-13b",
        method="full",
        precision="bf16",
        gpus=8,
        strategy="colossalai-gemini",
        gemini_placement="auto",
        gpu="rtx4090",
        seq_len=2048,
        grad_ckpt=True,
    )
    assert est.memory.weights_bytes < 2 * 13_015_864_320
    assert abs(est.memory.peak_allocated_bytes - 0.9 * cap) < 0.005 * cap


def test_gemini_auto_refusals_and_emit():
    with pytest.raises((InvalidInputError, ValueError), match="auto placement decides"):
        _full("colossalai-gemini", gemini_placement="auto", offload_optimizer="cpu")
    with pytest.raises((InvalidInputError, ValueError), match="GeminiPlugin's"):
        _full("colossalai-zero2", gemini_placement="auto")
    est = _full("colossalai-gemini", gemini_placement="auto")
    name, args = _plugin_call(emit_config(est, "colossalai"))
    assert (name, args["placement_policy"]) == ("GeminiPlugin", "auto")
    assert "offload_optim_frac" not in args
