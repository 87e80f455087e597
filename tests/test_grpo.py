"""GRPO (--objective grpo, ftmem.grpo): what the estimate adds to SFT's step, stated by
hand from TRL's GRPOTrainer (huggingface/trl @f2cd57710ae3: trl/trainer/grpo_trainer.py
_generate_single_turn, _generate_and_score_completions, _get_per_token_logps_and_entropies,
_compute_loss; trl/trainer/utils.py selective_log_softmax, entropy_from_logits;
trl/trainer/grpo_config.py __post_init__) and transformers' generate() with a
DynamicCache. Measured against ftmem's loop of the trainer in tests/accuracy/cases.py
(_grpo; ftmem.measure.grpo)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ftmem import api
from ftmem.cli.root import app
from ftmem.errors import InvalidInputError
from ftmem.estimate import estimate_step
from ftmem.frameworks import read_framework_config
from ftmem.grpo import generation_moment, vllm_reserved_bytes
from ftmem.presets import get_gpu, model_presets
from ftmem.run import RunConfig
from ftmem.step import step_parts
from tests.conftest import tiny

LLAMA = tiny("llama")  # vocabulary 300, hidden 96, 2 blocks, 4 heads of 24, no GQA
B, S, C, V, H = 3, 50, 20, 300, 96


def _run(**settings) -> RunConfig:
    base = dict(batch_size=B, seq_len=S, device="cpu", precision="bf16")
    grpo = dict(objective="grpo", num_generations=3, completion_len=C)
    return RunConfig(**{**base, **grpo, **settings})


def _sft(**settings) -> RunConfig:
    return RunConfig(batch_size=B, seq_len=S, device="cpu", precision="bf16", **settings)


def test_the_loss_keeps_the_completions_log_softmax_instead_of_the_cross_entropy():
    sft = step_parts(LLAMA, _sft(method="lora")).activations
    grpo = step_parts(LLAMA, _run(method="lora")).activations
    # SFT: the fp32 log-softmax of every position, int64 labels and the mean's normaliser
    sft_loss = B * S * V * 4 + B * S * 8 + 4
    # GRPO: each completion's bf16 log-softmax over its C positions; gather's index, the
    # concatenated int64 ids (the frozen embedding keeps none); the dapo loss: exp's bf16
    # ratio, the two fp32 products torch.min keeps, the fp32 normaliser; the generation
    # batch's completion mask (int64) and advantages (fp32) that its views keep (R = 3)
    grpo_loss = B * C * V * 2 + B * S * 8 + (B * C * 2 + 2 * B * C * 4 + 4) + (3 * C * 8 + 3 * 4)
    assert grpo == sft - sft_loss + grpo_loss
    assert sft - grpo == 181_204 - 38_296


def test_the_lm_head_keeps_only_the_positions_logits_to_keep_asks_for():
    sft = step_parts(LLAMA, _sft(method="full")).activations
    grpo = step_parts(LLAMA, _run(method="full")).activations
    # the trained head saves its input: SFT all b x S positions; GRPO the C + 1 kept ones,
    # copied by the matmul's reshape (the slice of b > 1 sequences is not contiguous)
    head = B * S * H * 2 - B * (C + 1) * H * 2
    # the trained embedding keeps the ids itself: no gather index of GRPO's own
    sft_loss = B * S * V * 4 + B * S * 8 + 4
    grpo_loss = B * C * V * 2 + (B * C * 2 + 2 * B * C * 4 + 4) + (3 * C * 8 + 3 * 4)
    assert grpo == sft - head - sft_loss + grpo_loss


def test_the_logits_moment_holds_the_logits_and_the_entropies_chunks():
    head = step_parts(LLAMA, _run(method="lora")).sizes.head
    # the attention mask (int64), the held bf16 logits of C + 1 positions, the entropies'
    # reshape copy of the C sliced ones (b > 1) and one chunk's log-softmax, exp and
    # product (min(128, b·C) = 60 rows)
    assert head.logits_forward == B * S * 8 + B * (C + 1) * V * 2 + B * C * V * 2 + 3 * 60 * V * 2
    # backward: unbind's stacked gradient, the outer slice's copy, the inner slice's
    assert head.loss_backward == 2 * B * C * V * 2 + B * (C + 1) * V * 2


def test_generation_is_a_moment_before_the_training_forward():
    arch = model_presets()["llama2-7b"]  # 32 layers, 32 KV heads of 128, V 32,000
    run = RunConfig(
        method="lora", objective="grpo", batch_size=8, seq_len=1024, completion_len=1000
    )
    plan = step_parts(arch, run).plan
    R, S7, P = 8, 1024, 24
    # the last decoding step: the DynamicCache at S - 1 tokens (a key and a value per
    # layer), one layer's key remade one token longer by torch.cat, the step's bf16
    # logits, their fp32 copy and the sampling probabilities, the growing int64 ids (old
    # and new); beside them the prompt ids and mask (int64)
    cache = 2 * 32 * R * 32 * (S7 - 1) * 128 * 2
    decode = cache + cache // 64 + R * 32_000 * 2 + 2 * R * 32_000 * 4 + 2 * R * S7 * 8
    assert cache == 4_290_772_992  # 4.0 GiB
    assert generation_moment(arch, run, plan) == decode + 2 * R * P * 8
    sizes = step_parts(arch, run).sizes
    # the moment also holds the previous generation batch, still buffered: the loop's
    # held bytes leave its completion mask (R x C int64) and advantages (R fp32) to the
    # loss's saved items, which do not exist yet
    previous = R * 1000 * 8 + R * 4
    assert sizes.teacher_forward == decode + 2 * R * P * 8 + previous


def test_generation_can_be_the_peak():
    arch = model_presets()["llama2-7b"]
    run = RunConfig(
        method="lora",
        objective="grpo",
        batch_size=8,
        seq_len=1024,
        completion_len=1000,
        grad_ckpt=True,
        grad_accum=8,  # 64 prompts generated at once
    )
    run = run.model_copy(update={"device": "cpu"})  # (no CUDA workspaces in the peak)
    parts = step_parts(arch, run)
    est = estimate_step(arch, run).memory
    s = parts.sizes
    # the forward moment before the training forward: weights, states, the buffered
    # generation batch (loop_held, and its completion mask and advantages: 64 rows of
    # 1,000 int64 and one fp32) and generate()'s own tensors; no gradient yet (it runs
    # at the first micro-batch, after zero_grad(set_to_none=True))
    assert est.peak_phase == "forward"
    gen = generation_moment(arch, run, parts.plan)
    previous = 64 * 1000 * 8 + 64 * 4
    assert est.peak_allocated_bytes == s.weights + s.states + s.loop_held + previous + gen


def test_the_reference_is_a_frozen_copy_only_without_an_adapter_and_only_with_beta():
    def weights(**settings) -> int:
        return estimate_step(LLAMA, _run(**settings)).memory.weights_bytes

    full = weights(method="full")
    assert full == estimate_step(LLAMA, _sft(method="full")).memory.weights_bytes
    assert weights(method="full", kl_beta=0.04) == 2 * full  # create_model_from_path
    assert weights(method="full", kl_beta=0.0) == full  # beta 0: ref_model None
    lora = weights(method="lora")
    assert weights(method="lora", kl_beta=0.04) == lora  # use_adapter(..., None)


def test_vllm_generation_replaces_generate_and_reserves_its_share_when_colocated():
    run = _run(method="lora", vllm="colocate")
    # no generate(); vLLM's importance-sampling correction (on by default) makes the
    # trainer compute the policy's old log-probabilities under no_grad, b at a time: a
    # frozen block's forward over b·S = 150 tokens (the MLP's gate, up, activation and
    # product, 4 x 160 x 2 bytes a token, and four residual-width bf16 tensors) beside
    # the generation batch's concatenated ids and mask and its new buffer (ids and masks,
    # advantages, the old log-probabilities in bf16), and the previous generation batch's
    # completion mask and advantages, still buffered (the loop's held bytes leave them to
    # the loss's saved items)
    block = 150 * 4 * 160 * 2 + 4 * 150 * H * 2
    buffers = 2 * 3 * S * 8 + (2 * 3 * S * 8 + 3 * 4 + 3 * C * 2)
    previous = 3 * C * 8 + 3 * 4
    assert step_parts(LLAMA, run).sizes.teacher_forward == block + buffers + previous == 312_624
    assert vllm_reserved_bytes(run, 80 * 2**30) == int(80 * 2**30 * 0.3)
    shared = _run(method="lora", vllm="colocate", vllm_memory_share=0.5)
    assert vllm_reserved_bytes(shared, 1000) == 500
    assert vllm_reserved_bytes(_run(method="lora", vllm="server"), 1000) == 0
    assert vllm_reserved_bytes(_run(method="lora"), 1000) == 0
    note = next(n for n in estimate_step(LLAMA, run).notes if n.startswith("GRPO"))
    assert "vLLM engine holding 30%" in note


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(completion_len=50), "leaves no prompt.*give e.g. --seq-len 562"),
        (dict(num_generations=1, batch_size=1), "--num-generations 2 or more"),
        (dict(vllm_memory_share=0.5), "applies to --vllm colocate or server only"),
        (dict(loss="fused"), "drop --loss fused"),
    ],
)
def test_bad_grpo_settings_are_refused_in_one_sentence(settings, match):
    with pytest.raises(ValueError, match=match):
        _run(method="lora", **settings)


def test_the_generation_batch_holds_whole_groups():
    """Checked where the data-parallel ranks are known (tests/test_objectives_parallel.py
    for several GPUs)."""
    with pytest.raises(InvalidInputError, match=r"3 x 1 = 3 completions.*--num-generations 2"):
        estimate_step(LLAMA, _run(method="lora", num_generations=2))


def test_grpo_settings_belong_to_grpo():
    with pytest.raises(ValueError, match="--kl-beta only applies to --objective grpo"):
        _sft(method="lora", kl_beta=0.1)
    with pytest.raises(ValueError, match="--num-generations and --vllm only apply"):
        _sft(method="lora", num_generations=4, vllm="server")


def test_the_generation_batch_is_steps_per_generation_micro_batches():
    run = _run(method="lora", batch_size=2, num_generations=4, grad_accum=2)
    assert run.generation_rows == 4  # TRL: steps_per_generation = gradient_accumulation_steps
    run = _run(method="lora", batch_size=2, num_generations=4, steps_per_generation=6)
    assert run.generation_rows == 12


def test_cli_refuses_a_bad_grpo_run_with_exit_2():
    result = CliRunner().invoke(
        app,
        ["estimate", "llama2-7b", "--objective", "grpo", "--batch-size", "3", "--seq-len", "1024"],
    )
    assert result.exit_code == 2
    assert "whole groups of --num-generations 8" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["estimate", "llama2-7b", "--objective", "grpo"])
    assert result.exit_code == 2
    assert "--seq-len 512 leaves no prompt" in result.output


def test_a_grpo_config_is_read_as_the_grpo_objective(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text(
        "model_name_or_path: Qwen/Qwen2.5-0.5B\nreward_funcs: [accuracy_reward]\n"
        "num_generations: 4\nmax_completion_length: 256\nbeta: 0.04\n"
        "per_device_train_batch_size: 4\ngeneration_batch_size: 16\n"
        "use_vllm: true\nvllm_gpu_memory_utilization: 0.4\n"
    )
    cfg = read_framework_config(str(path))
    s = cfg.settings
    assert (s["objective"], s["num_generations"], s["completion_len"]) == ("grpo", 4, 256)
    assert (s["kl_beta"], s["steps_per_generation"]) == (0.04, 4)  # 16 / 4
    assert (s["vllm"], s["vllm_memory_share"]) == ("colocate", 0.4)  # vllm_mode's default
    assert s["seq_len"] == 256 + 512  # the prompt length assumed, said in a note
    assert any("512-token prompts" in n for n in cfg.notes)
    RunConfig(**{k: v for k, v in s.items() if k not in ("gpus", "nodes")})


def test_a_grpo_config_on_several_gpus_is_read_as_grpo_over_the_processes(tmp_path):
    """generation_batch_size counts every process's completions (GRPOConfig.__post_init__:
    steps_per_generation = generation_batch_size / (per_device batch x processes))."""
    path = tmp_path / "grpo.yaml"
    path.write_text(
        "model_name_or_path: Qwen/Qwen2.5-0.5B\nreward_funcs: [accuracy_reward]\n"
        "num_processes: 4\nper_device_train_batch_size: 2\ngeneration_batch_size: 16\n"
        "ds3_gather_for_generation: false\n"
    )
    cfg = read_framework_config(str(path))
    s = cfg.settings
    assert (s["objective"], s["gpus"], s["steps_per_generation"]) == ("grpo", 4, 2)  # 16 / 8
    assert s["ds3_gather_for_generation"] is False  # generate() through ZeRO-3's hooks


@pytest.mark.parametrize(
    "settings",
    [
        dict(method="lora"),
        dict(method="full", kl_beta=0.04),  # the frozen reference copy is replayed too
        dict(method="lora", grad_ckpt=True, grad_accum=8),  # generation is the peak
        dict(method="lora", precision="bf16-mixed", vllm="colocate"),
    ],
    ids=["lora", "full-reference", "generation-peak", "vllm-colocate"],
)
def test_the_allocator_trace_reaches_the_timeline_peak(settings):
    from ftmem.estimate import _tensors
    from ftmem.gpu.trace import step_events
    from ftmem.phases import find_peak
    from tests.test_gpu_trace import replay_live

    arch = model_presets()["llama2-7b"]
    base = dict(objective="grpo", batch_size=8, seq_len=1024, completion_len=512)
    parts = step_parts(arch, RunConfig(**{**base, **settings}))
    events = step_events(parts.sizes, _tensors(parts, parts.sizes))
    best, _ = replay_live(events)
    assert best == find_peak(parts.sizes).at_peak.total


def test_a_colocated_vllm_engine_takes_its_share_of_the_gpu():
    """vllm_gpu_memory_utilization × the GPU's memory, beyond the allocated peak: the
    same step as with a vLLM server (no generate() on this GPU either), plus the share."""
    common = dict(method="lora", objective="grpo", batch_size=8, seq_len=1024, completion_len=512)
    h100 = get_gpu("h100")
    colocate = api.estimate(
        "qwen2.5-1.5b", gpu="h100", vllm="colocate", vllm_memory_share=0.3, **common
    )
    server = api.estimate("qwen2.5-1.5b", gpu="h100", vllm="server", **common)
    share = int(h100.memory_bytes * 0.3)
    assert colocate.memory.beyond_allocated.vllm_engine == share
    assert colocate.memory.peak_allocated_bytes == server.memory.peak_allocated_bytes
    assert colocate.memory.total_bytes == server.memory.total_bytes + share
    assert colocate.headroom_bytes == server.headroom_bytes - share
    # without a GPU's size, or under the user's own --overhead, nothing is added
    assert (
        api.estimate("qwen2.5-1.5b", vllm="colocate", **common).memory.beyond_allocated.vllm_engine
        == 0
    )
    mine = api.estimate("qwen2.5-1.5b", gpu="h100", vllm="colocate", overhead="1GiB", **common)
    assert mine.memory.total_bytes == mine.memory.peak_allocated_bytes + 1024**3


@pytest.mark.parametrize(
    ("strategy", "settings"),
    [
        ("zero3", dict(method="lora")),  # the whole policy gathered, one request a tensor
        ("zero3", dict(method="full", kl_beta=0.04)),
        ("zero3", dict(method="lora", vllm="colocate")),  # a peft model gathered to sync
        ("zero3", dict(method="lora", ds3_gather_for_generation=False)),  # through the hooks
        ("fsdp", dict(method="full", kl_beta=0.04)),  # the whole reference for its forward
        ("zero2", dict(method="lora", grad_ckpt=True, grad_accum=8)),
    ],
    ids=[
        "zero3-lora",
        "zero3-reference",
        "zero3-vllm-sync",
        "zero3-hooked",
        "fsdp-reference",
        "zero2-gen",
    ],
)
def test_the_allocator_trace_of_a_rank_reaches_its_timeline_peak(strategy, settings):
    """A rank's requests, replayed live, peak where its timeline does: the moment before
    the forward with what the rank gathers for it (the parameters one by one under
    ZeRO-3), and no forward blocks beside them."""
    from ftmem.api import parallel_config
    from ftmem.estimate import _tensors
    from ftmem.gpu.trace import step_events
    from ftmem.parallel import parallel_step
    from tests.test_gpu_trace import replay_live

    arch = model_presets()["llama2-7b"]
    base = dict(objective="grpo", batch_size=8, seq_len=1024, completion_len=512)
    run = RunConfig(**{**base, **settings})
    step = parallel_step(arch, run, parallel_config(gpus=4, strategy=strategy))
    sizes = step.ranks[step.worst].sizes
    events = step_events(sizes, _tensors(step.parts, sizes))
    best, _ = replay_live(events)
    assert best == step.peak.at_peak.total
    if run.ds3_gather_for_generation is False:  # the forward's blocks, no request list
        assert sizes.before_requests == ()
    elif strategy == "zero3" and run.vllm is None and settings["method"] == "lora":
        # 7 matrices a block x 32 blocks + the embedding and the LM head, each whole
        assert len(sizes.before_requests) == 7 * 32 + 2


# num_iterations (TRL GRPOConfig, 1): _prepare_inputs generates every
# generate_every = steps_per_generation x num_iterations micro-batches and trains
# num_iterations passes over the buffered batch; _generate_and_score_completions computes
# the policy's old log-probabilities when gradient_accumulation_steps % generate_every != 0
# (grpo_trainer.py@f2cd57710ae3 l. 1571 and 2561-2576)
@pytest.mark.parametrize(
    ("grad_accum", "steps", "iterations", "old"),
    [
        (1, 1, 1, False),  # generation at every step, trained on once
        (1, 1, 2, True),  # the second pass runs after an optimizer step
        (2, 1, 2, False),  # both passes inside one optimizer step: the same weights
        (2, 2, 2, True),  # 2 % 4: the second pass is the next optimizer step's
        (4, 2, 2, False),  # 4 % 4
        (2, 4, 1, True),  # steps_per_generation > gradient_accumulation_steps
    ],
)
def test_old_log_probabilities_when_the_weights_change_within_a_generation_batch(
    grad_accum, steps, iterations, old
):
    from ftmem.grpo import old_logps

    run = _run(
        method="lora",
        batch_size=3,
        grad_accum=grad_accum,
        steps_per_generation=steps,
        num_iterations=iterations,
    )
    assert run.generate_every == steps * iterations
    assert old_logps(run) is old


def test_num_iterations_buffers_the_old_log_probabilities_for_the_whole_generation_batch():
    """They are computed b sequences at a time and concatenated (torch.cat): one R x C
    tensor in the logits' dtype (selective_log_softmax keeps it: bf16 here, fp32 under
    autocast), kept by the buffer until the next generation."""
    for precision, logit_bytes in (("bf16", 2), ("bf16-mixed", 4)):
        once = step_parts(LLAMA, _run(method="lora", precision=precision)).sizes
        twice = step_parts(LLAMA, _run(method="lora", precision=precision, num_iterations=2))
        R = 3  # b x steps_per_generation (1)
        assert twice.sizes.loop_held - once.loop_held == R * C * logit_bytes
        # the loss reads a view of them (log_ratio = logps - old: a subtraction saves
        # neither input), so it keeps what it keeps with the detached ones
        assert (
            twice.activations
            == step_parts(LLAMA, _run(method="lora", precision=precision)).activations
        )


def test_the_old_log_probabilities_forward_is_the_reference_forward_of_the_policy():
    """The same no_grad forward, b sequences at a time, after generation: under LoRA the
    reference is the policy with its adapter disabled, so beta 0.04 with one iteration and
    beta 0 with two make the same moment; both together add the second buffered R x C
    bf16 tensor to it (the old ones are computed first, then the reference's)."""
    from ftmem.grpo import reference_moment

    def moment(**settings) -> int:
        run = _run(method="lora", **settings)
        return reference_moment(LLAMA, run, step_parts(LLAMA, run).plan)

    assert moment() == 0  # beta 0, one iteration: neither runs
    # a frozen block's forward over b·S = 150 tokens (the MLP's gate, up, activation and
    # product, 4 x 160 x 2 bytes a token, and four residual-width bf16 tensors) beside the
    # generation batch's concatenated ids and mask and its new buffer (ids and masks,
    # advantages, the old log-probabilities in bf16), as with vLLM (test above)
    block = 150 * 4 * 160 * 2 + 4 * 150 * H * 2
    buffers = 2 * 3 * S * 8 + (2 * 3 * S * 8 + 3 * 4 + 3 * C * 2)
    assert moment(num_iterations=2) == block + buffers
    assert moment(num_iterations=2) == moment(kl_beta=0.04)
    assert moment(num_iterations=2, kl_beta=0.04) - moment(kl_beta=0.04) == 3 * C * 2


@pytest.mark.parametrize(
    ("grad_accum", "steps", "iterations", "gradients"),
    [
        (2, 1, 1, True),  # generation at micro-batches 0, 1, 2...: 1 is mid-accumulation
        (2, 1, 2, False),  # 0, 2, 4...: each the first of an optimizer step
        (2, 3, 1, True),  # 0, 3, 6...: 3 is the second micro-batch of the second step
        (2, 4, 1, False),
    ],
)
def test_generation_runs_beside_the_gradients_unless_it_starts_each_optimizer_step(
    grad_accum, steps, iterations, gradients
):
    """The timeline holds every gradient from the second micro-batch on; a generation
    that starts an optimizer step runs after zero_grad(set_to_none=True) with none, so
    the moment is charged its own tensors less the gradients the timeline adds."""
    from ftmem.grpo import generation_moment, read_by_loss, reference_moment

    run = _run(
        method="full",
        batch_size=3,
        grad_accum=grad_accum,
        steps_per_generation=steps,
        num_iterations=iterations,
    )
    parts = step_parts(LLAMA, run)
    own = max(
        generation_moment(LLAMA, run, parts.plan), reference_moment(LLAMA, run, parts.plan)
    ) + read_by_loss(run)
    total = parts.sizes.gradients.total
    assert parts.sizes.teacher_forward == (own if gradients else max(0, own - total))


def test_num_iterations_is_read_from_trl_and_axolotl_configs(tmp_path):
    """GRPOConfig.num_iterations; axolotl passes trl.num_iterations to it
    (axolotl-ai-cloud/axolotl src/axolotl/core/trainers/grpo/__init__.py
    GRPOStrategy.set_training_args_kwargs)."""
    path = tmp_path / "grpo.yaml"
    path.write_text(
        "model_name_or_path: Qwen/Qwen2.5-0.5B\nreward_funcs: [accuracy_reward]\n"
        "num_generations: 4\nper_device_train_batch_size: 4\nnum_iterations: 2\n"
    )
    cfg = read_framework_config(str(path))
    assert cfg.settings["num_iterations"] == 2
    assert not any("num_iterations" in n for n in cfg.notes)
    path = tmp_path / "axo.yml"
    path.write_text(
        "base_model: meta-llama/Llama-2-7b-hf\nrl: grpo\nadapter: lora\n"
        "trl:\n  num_generations: 4\n  max_completion_length: 256\n  num_iterations: 3\n"
    )
    assert read_framework_config(str(path)).settings["num_iterations"] == 3


def test_num_iterations_belongs_to_grpo_and_the_cli():
    with pytest.raises(ValueError, match="--num-iterations only applies to --objective grpo"):
        _sft(method="lora", num_iterations=2)
    args = ["estimate", "llama2-7b", "--objective", "grpo", "--method", "lora"]
    args += ["--batch-size", "8", "--seq-len", "1024", "--num-iterations", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "old log-probabilities" in " ".join(result.output.split())


@pytest.mark.accuracy
def test_num_iterations_measured_against_the_estimate():
    """ftmem's loop of the trainer (ftmem.measure.grpo) with num_iterations 2 and one
    micro-batch a step: generation at micro-batches 0, 2, 4... (the measured step is the
    third, so it generates), the old log-probabilities computed and buffered. Both the
    estimate and the measurement grow by the buffered R x C bf16 tensor (3 x 20 x 2)
    over one iteration, and the estimate stays within the accuracy suite's tolerance."""
    pytest.importorskip("peft")
    from ftmem.measure import measure

    from .accuracy.cases import PEAK_TOLERANCE

    def both(iterations: int, steps: int) -> tuple[int, int]:
        run = _run(method="lora", optimizer_impl="for-loop", num_iterations=iterations)
        est = estimate_step(LLAMA, run).memory.peak_allocated_bytes
        return est, measure(LLAMA, run, steps=steps).peak_allocated_bytes

    est1, got1 = both(1, 2)
    est2, got2 = both(2, 3)
    assert est2 - est1 == got2 - got1 == 3 * C * 2
    assert abs(est2 - got2) / got2 <= PEAK_TOLERANCE


def test_eager_decoding_repeats_the_largest_layers_key_and_value():
    # transformers 5.24 eager_attention_forward: repeat_kv(key), repeat_kv(value) when
    # heads share key/value heads. Tiny gpt-oss: 4 heads over 2 key/value heads of 32,
    # one full layer and one sliding layer (window 16); 16 rows, 20 prompt tokens, the
    # last step at 99 cached tokens, bf16.
    from ftmem.grpo import eager_decode_attention_bytes

    arch = tiny("gpt_oss")
    run = _run(method="lora", batch_size=1, num_generations=4, grad_accum=16, seq_len=100)
    R, e, hs = 16, 2, 32
    cache = R * 2 * 2 * hs * e * (99 + 16)  # full layer at 99 tokens, sliding at its window
    repeated = 2 * R * 4 * 99 * hs * e  # key and value, to all 4 heads
    assert eager_decode_attention_bytes(arch, run, R, 20, 99, e) == cache + repeated
    # sdpa packs the single query; one key/value head per head copies nothing
    assert eager_decode_attention_bytes(LLAMA, _run(method="lora", attn="eager"), R, 20, 99, e) == 0
    sdpa = _run(method="lora", attn="sdpa")
    assert eager_decode_attention_bytes(tiny("mistral"), sdpa, R, 20, 99, e) == 0
