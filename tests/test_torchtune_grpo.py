"""torchtune's GRPO recipe (ftmem.torchtune_grpo): the reader on the shipped configs
(tests/fixtures/frameworks/torchtune/dev_*grpo.yaml, copied verbatim; SOURCES.md), the
moments derived by hand from the recipe's tensors, and the estimate against the CPU
loop that replays the recipe (ftmem.measure.torchtune_grpo)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

from ftmem import torchtune_grpo as tg
from ftmem.estimate import estimate_step
from ftmem.frameworks import read_framework_config, torchtune
from ftmem.presets import model_presets
from ftmem.run import RunConfig
from ftmem.step import step_parts
from tests.conftest import assert_nothing_unread, tiny

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "frameworks" / "torchtune"

# by hand from each file: batch_size 1 prompt x grpo_samples 16 = 16 completions trained
# at once, max_generated_tokens 512, forward_batch_size 1, activation checkpointing,
# fused AdamW, bf16; the recipe's policy never reshards after forward (fsdp-grad-op);
# both headers launch it with `tune run --nproc_per_node 4`
GRPO = dict(
    precision="bf16", framework="torchtune", objective="grpo", batch_size=16,
    num_generations=16, completion_len=512, generation_prompts=1, grad_ckpt=True,
    optimizer="adamw", optimizer_impl="fused", strategy="fsdp-grad-op", gpus=4,
)  # fmt: skip
EXPECTED = {
    # tokenizer.max_seq_len null: 512 prompt tokens assumed (ftmem's default) + 512
    "dev_3B_full_grpo": ("llama3.2-3b", dict(GRPO, seq_len=512 + 512)),
    # tokenizer.max_seq_len 1024: prompts of up to 1024 tokens + 512 generated
    "dev_qwen3B_sync_grpo": ("qwen2.5-3b", dict(GRPO, seq_len=1024 + 512)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_shipped_grpo_configs_are_read_as_the_recipe(name):
    cfg = read_framework_config(str(FIXTURES / f"{name}.yaml"))
    model, settings = EXPECTED[name]
    assert cfg.model == model
    assert cfg.settings == settings
    assert_nothing_unread(cfg, torchtune)
    # the old note (estimated as supervised finetuning) is gone
    assert not any("supervised finetuning" in n for n in cfg.notes)


def test_a_null_max_seq_len_says_the_prompt_length_it_assumes():
    notes = read_framework_config(str(FIXTURES / "dev_3B_full_grpo.yaml")).notes
    assert any("512 prompt tokens" in n and "--seq-len" in n for n in notes)


def test_the_async_recipe_is_said_not_modelled():
    cfg = read_framework_config(str(FIXTURES / "dev_qwen3B_async_grpo.yaml"))
    assert cfg.settings.get("objective") is None
    assert any("asynchronous" in n and "supervised finetuning" in n for n in cfg.notes)


def test_ppo_epochs_and_fsdp_reshard_are_noted(tmp_path):
    text = (FIXTURES / "dev_qwen3B_sync_grpo.yaml").read_text()
    text = text.replace("ppo_epochs: 1", "ppo_epochs: 2\nfsdp_reshard_after_forward: True")
    path = tmp_path / "grpo.yaml"
    path.write_text(text)
    cfg = read_framework_config(str(path))
    assert cfg.settings["strategy"] == "fsdp-grad-op"
    assert any("ppo_epochs 2" in n for n in cfg.notes)
    assert any("reshard_after_forward=False" in n for n in cfg.notes)


def test_the_shipped_config_estimates_on_every_gpu_count():
    from ftmem.parallel import ParallelConfig

    cfg = read_framework_config(str(FIXTURES / "dev_qwen3B_sync_grpo.yaml"))
    arch = model_presets()["qwen2.5-3b"]
    settings = {k: v for k, v in cfg.settings.items() if k not in ("strategy", "gpus")}
    run = RunConfig(**settings)

    def on(gpus: int):
        par = ParallelConfig(strategy="fsdp-grad-op", gpus=gpus)
        return estimate_step(arch, run, par=par).memory

    one, four = on(1), on(4)
    assert four.peak_allocated_bytes < one.peak_allocated_bytes
    assert one.peak_reserved_bytes >= one.peak_allocated_bytes


# -- the moments by hand ----------------------------------------------------------------

QWEN = {k: v for k, v in dict(GRPO, seq_len=1536).items() if k not in ("strategy", "gpus")}


def test_the_static_kv_cache_is_rows_by_the_whole_length():
    """Qwen2.5-3B (36 layers, 2 key/value heads of 128), 16 rows, 1024 + 512 tokens:
    kv_cache.py's k_cache and v_cache in bf16 and the int64 cache_pos, per layer."""
    arch = model_presets()["qwen2.5-3b"]
    assert (arch.num_layers, arch.kv_heads, arch.head_size) == (36, 2, 128)
    by_hand = 36 * (2 * 16 * 2 * 1536 * 128 * 2 + 1536 * 8)
    assert tg.kv_cache_bytes(arch, 16, 1536, 2) == by_hand


def test_the_training_logits_and_the_kept_log_softmaxes():
    """N = 16 sequences of L = 1536, C = 512, V = 151936, h = 2048: beyond every saved
    tensor (the N log-softmaxes over C, N·C·V·4, counted whole), the larger of the cast
    (the bf16 logits beside their fp32 copy and the last layer's output, before any
    log-softmax exists) and the fp32 logits with the last sequence's division (N·L·V·4 +
    C·V·4). With L > 2C the cast is the larger."""
    arch = model_presets()["qwen2.5-3b"]
    run = RunConfig(**QWEN)
    plan = step_parts(arch, run).plan
    V = 151936
    assert (arch.vocab_size, arch.hidden_size) == (V, 2048)
    kept = 16 * 512 * V * 4
    cast = 16 * 1536 * V * (2 + 4) + 16 * 1536 * 2048 * 2 - kept
    assert cast > 16 * 1536 * V * 4 + 512 * V * 4
    assert tg.logits_forward(arch, run, plan) == cast
    saved = [s for s in tg.loss_saved(arch, run, plan, True) if "log-softmax" in s.what]
    assert saved[0].nbytes == kept
    # backward: the larger of the summed slices' gradients (the buffer, the new slice's
    # and their sum beside the 14 log-softmaxes not reached yet) and the cast's backward
    # (the fp32 gradient of every position beside its bf16 copy, every log-softmax freed)
    summed = 3 * kept - 2 * 512 * V * 4
    cast_backward = 16 * 1536 * V * (4 + 2) - kept
    assert cast_backward > summed
    assert tg.loss_backward(arch, run, plan) == cast_backward


def test_the_generation_rows_are_forward_batch_size_prompts():
    base = dict(QWEN, batch_size=64)  # 4 prompts x 16
    assert RunConfig(**base).generation_rows == 16
    assert RunConfig(**{**base, "generation_prompts": 2}).generation_rows == 32
    assert RunConfig(**{**base, "generation_prompts": 8}).generation_rows == 64


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (dict(batch_size=12), "multiple of --num-generations"),
        (dict(method="lora"), "full finetuning"),
        (dict(steps_per_generation=2), "TRL's"),
        (dict(loss="logprob-tiles"), "full logits"),
    ],
)
def test_what_the_recipe_cannot_run_is_refused(change, words):
    with pytest.raises(ValueError, match=words):
        RunConfig(**{**QWEN, **change})


def test_generation_prompts_belong_to_torchtune():
    with pytest.raises(ValueError, match="forward_batch_size"):
        RunConfig(objective="grpo", seq_len=1024, generation_prompts=2)


def test_the_allocator_trace_reaches_the_timeline_peak():
    """The recipe's empty_cache calls are events of the trace; what is allocated is
    unchanged by them."""
    from ftmem.estimate import _tensors
    from ftmem.gpu.trace import step_events
    from ftmem.phases import find_peak
    from tests.test_gpu_trace import replay_live

    arch = model_presets()["llama3.2-3b"]
    settings = {k: v for k, v in QWEN.items() if k != "strategy"}
    run = RunConfig(**dict(settings, seq_len=768, completion_len=256))
    parts = step_parts(arch, run)
    events = step_events(parts.sizes, _tensors(parts, parts.sizes))
    assert ("empty_cache", 0) in events
    best, _ = replay_live(events)
    assert best == find_peak(parts.sizes).at_peak.total


# -- measured on the CPU ------------------------------------------------------------------

TOLERANCE = 0.05


def _measured_and_estimated(B, G, f, P, C, kv, V):
    """The recipe's loop on transformers' tiny Llama run as torchtune's decoder (its
    attention's expand, its unembed), the second step measured (the first made the
    optimizer states and the previous trajectory the loop still holds), beside the
    estimate's moments: generation and scoring (each its own moment before the training
    forward) and the training forward and backward (phases.find_peak without them)."""
    import torch

    from ftmem.measure.build import build_model
    from ftmem.measure.torchtune_grpo import RecipeShape, as_torchtune, measure_recipe
    from ftmem.measure.tracker import LiveBytesTracker
    from ftmem.phases import find_peak

    arch = tiny("llama", vocab_size=V, num_kv_heads=kv)
    run = RunConfig(
        **dict(
            QWEN,
            batch_size=B * G,
            num_generations=G,
            generation_prompts=f,
            seq_len=P + C,
            completion_len=C,
        )
    )
    parts = step_parts(arch, run)
    s = parts.sizes
    base = s.weights + s.states + s.loop_held
    training = find_peak(dataclasses.replace(s, teacher_forward=0)).phases
    est = dict(
        generation=base + tg.generation_moment(arch, run, parts.plan),
        scoring=base + tg.scoring_moment(arch, run, parts.plan),
        forward=training.forward,
        backward=training.backward,
    )
    sft = RunConfig(precision="bf16", grad_ckpt=True, batch_size=B * G, seq_len=P + C)
    model = as_torchtune(build_model(arch, sft).model)
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    # the reference decoder's own rotary cache is not modelled (release_buffers
    # .framework_rotary_cache_bytes counts the policy's): left out here, said there
    del reference.rope_cache
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    shape = RecipeShape(B, G, f, P, C)
    loop: dict = {}
    with LiveBytesTracker() as tracker:
        tracker.track(list(model.parameters()), list(reference.parameters()))
        tracker.track(list(model.buffers()), list(reference.buffers()))
        measure_recipe(model, reference, optimizer, shape, tracker, loop)
        tracker.reset_peak()
        got = measure_recipe(model, reference, optimizer, shape, tracker, loop)
    measured = dict(
        generation=got.generation, scoring=got.scoring, forward=got.forward, backward=got.backward
    )
    return est, measured


@pytest.mark.parametrize(
    "shape",
    [
        (1, 4, 1, 16, 24, 4, 2048),  # long completions: scoring and the backward lead
        (2, 4, 1, 64, 8, 4, 300),  # two generation chunks, a long prompt: generation leads
        (4, 2, 2, 16, 24, 4, 2048),  # two prompts per generate()
    ],
    ids=["long-completion", "two-chunks", "two-prompts"],
)
def test_the_moments_match_the_recipe_measured_on_the_cpu(shape):
    pytest.importorskip("transformers")
    est, measured = _measured_and_estimated(*shape)
    for moment, got in measured.items():
        assert abs(est[moment] - got) / got <= TOLERANCE, (moment, est[moment], got)


def test_generation_and_scoring_with_shared_key_value_heads():
    """torchtune's attention expands the whole cache to every query head (attention.py
    l. 284-290): measured with two key/value heads for four query heads. (The training
    step's recompute keeps the expanded copies too, which ftmem's transformers-layout
    activations do not: that moment is left to the tests above.)"""
    pytest.importorskip("transformers")
    est, measured = _measured_and_estimated(2, 4, 1, 64, 8, 2, 300)
    for moment in ("generation", "scoring"):
        got = measured[moment]
        assert abs(est[moment] - got) / got <= TOLERANCE, (moment, est[moment], got)


def test_the_recipes_empty_cache_calls_return_the_cache_to_the_driver():
    """The same requests replayed with and without the recipe's empty_cache() events:
    the same bytes allocated, no more reserved with them (here, less: the generation's
    and the logits' segments are released before the next part asks for its own)."""
    from ftmem.estimate import _tensors
    from ftmem.gpu.trace import replay_run

    arch = model_presets()["qwen2.5-3b"]
    parts = step_parts(arch, RunConfig(**QWEN))
    t = _tensors(parts, parts.sizes)
    kept = dataclasses.replace(parts.sizes, empties_cache=False)
    released = replay_run([(parts.sizes, t), (parts.sizes, t)])
    cached = replay_run([(kept, t), (kept, t)])
    assert released.peak_allocated == cached.peak_allocated
    assert released.peak_reserved < cached.peak_reserved
