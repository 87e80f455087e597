"""`ftmem estimate --traced`: a model ftmem does not model, built by transformers from
its config.json, one step on fake tensors (issue 17). Checked against the same step run
for real on the CPU, the allocator's rules, and ftmem's own estimate where it has one."""

from __future__ import annotations

import json
from itertools import accumulate

import pytest
from typer.testing import CliRunner

from ftmem.api import run_config
from ftmem.cli import app

pytest.importorskip("peft")
pytest.importorskip("transformers")

from ftmem.measure.traced import lora_targets, trace

runner = CliRunner()

# Tiny configs traced by transformers itself: multi-head latent attention with shared and
# routed experts and a dense first layer (DeepSeek-V3, which ftmem models too since; traced
# here as any config.json can be), and model types ftmem has no family for: attention sinks
# with alternating windows and biased experts (gpt-oss), learned positions and ReLU (OPT).
UNMODELLED = {
    "deepseek_v3": dict(
        model_type="deepseek_v3",
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=3,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_group=2,
        topk_group=1,
    ),
    "gpt_oss": dict(
        model_type="gpt_oss",
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=32,
    ),
    "opt": dict(
        model_type="opt",
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        ffn_dim=128,
        num_attention_heads=4,
        word_embed_proj_dim=64,
        max_position_embeddings=256,
        dropout=0.1,
    ),
}
FIELDS = (
    "n_params",
    "n_trainable_params",
    "weights_bytes",
    "gradients_bytes",
    "optimizer_states_bytes",
    "activations_bytes",
    "phase_peaks",
)


@pytest.mark.parametrize(
    ("model_type", "settings"),
    [
        ("deepseek_v3", dict(method="full", precision="bf16")),
        ("gpt_oss", dict(method="lora", precision="bf16", lora_targets="all-linear")),
        # peft's ParamWrapper on the 3-D expert weights (target_parameters)
        ("gpt_oss", dict(method="lora", precision="bf16", lora_targets="experts,q")),
        ("opt", dict(method="full", precision="fp32", grad_ckpt=True)),
        ("opt", dict(method="dora", precision="bf16-mixed")),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())),
)
def test_fake_step_is_the_real_step(model_type, settings):
    """Every byte the traced step reports, phase peaks included, is what the same step
    allocates when it runs for real on the CPU."""
    run = run_config(batch_size=2, seq_len=48, **settings)
    cfg = UNMODELLED[model_type]
    fake = trace(dict(cfg), model_type, run, None).measured
    real = trace(dict(cfg), model_type, run, None, fake=False).measured
    assert {f: getattr(fake, f) for f in FIELDS} == {f: getattr(real, f) for f in FIELDS}
    assert fake.gradients_bytes > 0 and fake.activations_bytes > 0


def test_the_event_log_replays_the_tracked_step():
    """The allocations and frees logged for the allocator add up, in order, to the
    tracker's live bytes: their running total peaks where the step did; replayed through
    the caching allocator each request takes a multiple of 512 B (kMinBlockSize) beside
    the two kept BLAS workspaces."""
    from ftmem.gpu.allocator import replay
    from ftmem.gpu.device import cuda_runtime, kept_per_thread
    from ftmem.measure import traced as traced_module
    from ftmem.presets import get_gpu

    run = run_config(method="full", precision="bf16", batch_size=2, seq_len=48)
    config, _ = traced_module._hf_config(dict(UNMODELLED["gpt_oss"]), run)
    got, _, events = traced_module._step(config, run, [], 2, True)
    sizes: dict[int, int] = {}
    deltas = []
    for kind, value in events:
        if kind == "alloc":
            sizes[len(sizes)] = value
            deltas.append(value)
        else:
            deltas.append(-sizes[value])
    assert max(accumulate(deltas)) == max(got.phase_peaks.values())

    rounded = [(d + 511) // 512 * 512 if d > 0 else -((-d + 511) // 512 * 512) for d in deltas]
    kept = sum(sum(t) for t in kept_per_thread(cuda_runtime(get_gpu("h100"), None)))
    shifted = [("alloc", kept)] + [(k, v + 1 if k == "free" else v) for k, v in events]
    assert replay(shifted).peak_allocated == kept + max(accumulate(rounded))


def test_on_a_gpu_the_three_figures_follow_the_replay():
    from ftmem.gpu.device import cuda_runtime
    from ftmem.presets import get_gpu

    run = run_config(method="lora", precision="bf16", batch_size=2, seq_len=48)
    gpu = get_gpu("h100")
    t = trace(dict(UNMODELLED["deepseek_v3"]), "ds", run, gpu)
    rt = cuda_runtime(gpu, None)
    assert t.peak_allocated_bytes >= t.measured.peak_allocated_bytes + rt.allocated_bytes
    assert t.peak_reserved_bytes >= t.peak_allocated_bytes
    assert t.peak_reserved_bytes % (2 * 2**20) == 0  # segments: 2 MiB small, 20 MiB large
    assert t.device_bytes == t.peak_reserved_bytes + rt.outside_allocator_bytes
    assert t.fits is True


def test_a_modelled_family_traces_to_the_estimate(tmp_path):
    """Where ftmem has the family, the trace and the estimate agree: weights, gradients
    and states to the byte; saved activations to the byte when the step runs for real,
    and on fake tensors but for the attention kernel's (FAKE_ATTENTION_NOTE: the CPU
    flash kernel's fake keeps more than the real one)."""
    from ftmem.estimate import estimate_step
    from ftmem.measure.build import hf_config
    from tests.conftest import tiny

    arch = tiny("llama")
    hf_config(arch).to_json_file(tmp_path / "config.json")
    settings = dict(method="full", precision="fp32", batch_size=2, seq_len=64)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    res = runner.invoke(app, ["estimate", str(tmp_path), "--traced", "--format", "json", *flags])
    assert res.exit_code == 0, res.stderr
    got = json.loads(res.stdout)
    # the CPU's run: AdamW's step counts are tensors in its states there
    run = run_config(optimizer_impl="for-loop", device="cpu", **settings)
    est = estimate_step(arch, run).memory
    assert got["weights_bytes"] == est.weights_bytes
    assert got["gradients_bytes"] == est.gradients_bytes
    assert got["optimizer_states_bytes"] == est.optimizer_states_bytes
    assert got["traced"] is True and got["parameters"] == got["trainable_parameters"]

    cfg = hf_config(arch).to_dict()
    real = trace(dict(cfg), "tiny", run, None, fake=False).measured
    fake = trace(dict(cfg), "tiny", run, None).measured
    assert real.activations_bytes == est.activations_bytes
    assert fake.activations_bytes == got["activations_bytes"]
    differ = {
        op
        for op in {*real.activations_by_op, *fake.activations_by_op}
        if real.activations_by_op.get(op) != fake.activations_by_op.get(op)
    }
    assert differ <= {"ScaledDotProductFlashAttentionForCpuBackward0"}


def test_the_table_says_traced_with_its_time_and_notes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(UNMODELLED["gpt_oss"]))
    res = runner.invoke(
        app,
        [
            "estimate",
            str(tmp_path),
            "--traced",
            "--method",
            "lora",
            "--precision",
            "bf16",
            "--gpu",
            "h100",
            "--seq-len",
            "32",
        ],
    )
    assert res.exit_code == 0, res.stderr
    out = " ".join(res.stdout.split())
    assert "(gpt_oss): lora · bf16 · batch 1 × 32 · traced" in out
    assert "Traced in " in out and "LoRA adapted: q_proj, v_proj." in out
    assert "peak reserved" in out and "device (nvidia-smi)" in out
    assert "Not seen: scratch memory inside kernels" in out


def test_an_unmodelled_model_type_is_refused_with_the_way_to_trace_it(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(UNMODELLED["opt"]))
    res = runner.invoke(app, ["estimate", str(tmp_path)])
    assert res.exit_code == 2 and res.stdout == ""
    assert "add --traced" in res.stderr and 'pip install "ftmem[measure]"' in res.stderr


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        ("gpt_oss", ["--method", "qlora"], "--traced runs full, freeze, partial"),
        ("gpt_oss", ["--optimizer", "adamw-8bit"], "cannot run --optimizer adamw-8bit"),
        ("gpt_oss", ["--gpus", "2"], "--traced runs one GPU's step"),
        ("gpt_oss", ["--format", "csv"], "--traced prints a table or JSON"),
        ("gpt_oss", ["--emit", "deepspeed"], "drop --fewest-gpus and --emit"),
        ("gpt_oss", ["--precision", "fp32"], "trace it with --precision bf16"),
        (
            "gpt_oss",
            ["--method", "lora", "--lora-targets", "nope"],
            "no linear or expert parameter named nope",
        ),
        ("gpt_oss", ["--method", "dora", "--lora-targets", "experts"], "peft refuses this LoRA"),
        ("unknown", [], "which this transformers does not build either"),
        ("remote", [], "its auto_map names its own code"),
    ],
)
def test_bad_traced_runs_are_one_sentence(tmp_path, config, args, message):
    cfg = UNMODELLED.get(config) or {"model_type": "no_such_model_type", "hidden_size": 8}
    if config == "remote":
        cfg = {**cfg, "auto_map": {"AutoConfig": "configuration_x.XConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    res = runner.invoke(app, ["estimate", str(tmp_path), "--traced", "--seq-len", "16", *args])
    assert res.exit_code == 2, res.stdout
    assert res.stdout == ""
    assert message in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


LEAVES = {"q_proj", "o_proj", "gate_up_proj", "down_proj"}
EXPERTS = {"experts.gate_up_proj", "experts.down_proj"}


@pytest.mark.parametrize(
    ("spec", "modules", "params"),
    [
        ("all-linear", ("down_proj", "gate_up_proj", "o_proj", "q_proj"), ()),
        ("attention", ("o_proj", "q_proj"), ()),
        ("q,v", ("q_proj",), ()),
        ("up", ("gate_up_proj",), ("experts.gate_up_proj",)),
        ("down,o_proj", ("down_proj", "o_proj"), ("experts.down_proj",)),
        ("experts", (), ("experts.down_proj", "experts.gate_up_proj")),
        ("q,experts.down_proj", ("q_proj",), ("experts.down_proj",)),
    ],
)
def test_lora_targets_by_role_or_name(spec, modules, params):
    assert lora_targets(spec, LEAVES, EXPERTS) == (modules, params)


def test_all_linear_leaves_the_experts_and_says_how_to_adapt_them():
    run = run_config(method="lora", precision="bf16", batch_size=1, seq_len=16, lora_targets="q")
    t = trace(dict(UNMODELLED["gpt_oss"]), "gpt-oss", run, None)
    assert t.adapted == ("q_proj",)
    assert any("--lora-targets experts" in n for n in t.notes)


def test_a_convolution_kernel_is_no_expert():
    """Qwen3.5's Gated DeltaNet layers hold a 3-D conv1d kernel: no MoE note for them."""
    config = dict(
        model_type="qwen3_5_text",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
    )
    run = run_config(method="lora", precision="bf16", batch_size=1, seq_len=16)
    t = trace(config, "qwen3.5-tiny", run, None)
    assert t.adapted == ("q_proj", "v_proj")
    assert not any("experts" in n for n in t.notes)
