"""The run's allocations in order (gpu/trace.py) against the timeline (phases.py).

Two formulations of the same step: the timeline sums the live bytes of each moment; the
trace lists every request and free as PyTorch makes them. Replaying the trace and
counting live bytes must reach exactly the timeline's peak (neither rounds), for every
method, policy and layout; the allocator model then sees the very requests the estimate
counts.
"""

from __future__ import annotations

import random

import pytest

from ftmem.api import parallel_config, run_config
from ftmem.distill import Teacher
from ftmem.errors import InvalidInputError
from ftmem.estimate import _tensors
from ftmem.gpu.allocator import CachingAllocator, replay, replay_streams
from ftmem.gpu.trace import _head_requests, replay_run, run_events, step_events
from ftmem.ops import loss_requests
from ftmem.parallel import parallel_step
from ftmem.phases import find_peak
from ftmem.presets import get_model
from ftmem.step import step_parts

SETTINGS = [
    {"method": "full"},
    {"method": "full", "precision": "bf16-mixed"},
    {"method": "full", "grad_accum": 4},
    {"method": "full", "optimizer_in_backward": True},
    {"method": "full", "grad_ckpt": True},
    {"method": "lora"},
    {"method": "lora", "grad_ckpt": True},
    {"method": "lora", "activation_offload": True},
    # offloaded: the trained blocks' gradients by their largest moment, and frozen blocks
    # below that autograd never reaches (no workspace of theirs)
    {"method": "full", "activation_offload": True},
    {"method": "freeze", "trainable_layers": 2, "activation_offload": True},
    {"method": "qlora"},
    {"method": "dora"},
    {"method": "relora"},
    {"method": "galore"},
    {"method": "freeze", "trainable_layers": 2},
    # a frozen reference copy beside the plan's weights: in the plan's dtypes (TRL), in
    # the compute dtype beside fp32 trainable weights (LLaMA-Factory)
    {"method": "full", "objective": "dpo"},
    {"method": "freeze", "trainable_layers": 2, "objective": "dpo", "framework": "llama-factory"},
]
MODELS = ["llama2-7b", "gpt2", "gemma-2b", "qwen2.5-0.5b", "mixtral-8x7b", "flan-t5-base"]
LAYOUTS = [
    {"gpus": 8, "strategy": "zero3"},
    {"gpus": 8, "strategy": "zero2"},
    {"gpus": 8, "strategy": "fsdp"},
    {"gpus": 4, "strategy": "ddp"},
    {"gpus": 8, "pp": 2, "strategy": "zero1"},
    {"gpus": 8, "tp": 2},
    {"gpus": 8, "strategy": "zero3", "offload_params": "cpu", "offload_optimizer": "cpu"},
]


def replay_live(events: list[tuple[str, int]]) -> tuple[int, int]:
    """(the most bytes live at once, the bytes live at the end), freeing only what lives."""
    sizes: list[int] = []
    live = best = 0
    freed: set[int] = set()
    for kind, value in events:
        if kind in ("reset_peaks", "empty_cache"):  # neither frees what lives
            continue
        if kind.startswith("alloc"):
            sizes.append(value)
            live += value
            best = max(best, live)
        else:
            assert kind == "free" and value < len(sizes) and value not in freed, (kind, value)
            freed.add(value)
            live -= sizes[value]
    return best, live


def _applicable(model: str, settings: dict) -> bool:
    seq2seq_refuses = settings["method"] in ("galore", "relora", "qlora", "dora") or any(
        settings.get(k) for k in ("optimizer_in_backward", "activation_offload", "objective")
    )
    return not (model.startswith("flan") and seq2seq_refuses)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_the_trace_reaches_the_timeline_peak(model, settings):
    if not _applicable(model, settings):
        pytest.skip("not a method ftmem models for encoder-decoders")
    arch, run = get_model(model), run_config(**settings, seq_len=256, batch_size=2)
    parts = step_parts(arch, run)
    events = step_events(parts.sizes, _tensors(parts, parts.sizes))
    best, left = replay_live(events)
    assert best == find_peak(parts.sizes).at_peak.total
    # after two steps only the weights and the optimizer states remain
    assert left == parts.sizes.weights + parts.sizes.states


def test_the_trace_reaches_a_vision_towers_backward():
    """Mistral 3's checkpointed Pixtral tower under eager attention: two 1540 px images
    are one sequence of 24,200 patches, whose fp32 softmax backward outweighs the text's
    at 8,192 tokens: the step's peak is the tower's backward, after the blocks'."""
    arch = get_model("mistral-small-3.1-24b")
    run = run_config(method="lora", images=2, seq_len=8192, grad_ckpt=True, attn="eager")
    parts = step_parts(arch, run)
    peak = find_peak(parts.sizes).at_peak
    # (beside the pixels the loop holds: saved by no node, counted with the temporaries)
    assert peak.temporaries == parts.sizes.vision_backward + parts.sizes.loop_held
    best, _ = replay_live(step_events(parts.sizes, _tensors(parts, parts.sizes)))
    assert best == peak.total


# Families the grid above leaves out, with images where the model has a tower (the
# vision tower's and its adapters' gradients come after the blocks': several tensors,
# MethodPlan.gradient_after_blocks), on one GPU; eager attention puts the peak early in
# the backward, before those gradients exist
FAMILY_RUNS = [
    ("mistral-small-3.1-24b", {}),
    ("mistral-small-3.1-24b", {"images": 1, "attn": "eager"}),
    ("llava-1.5-7b", {"images": 1, "attn": "eager"}),
    ("gemma3-4b-vision", {"images": 1}),
    ("qwen2.5-vl-3b", {"images": 1, "attn": "eager"}),
    ("qwen2-vl-2b", {"images": 1}),
    ("llama3.2-11b-vision", {"images": 1}),
    ("qwen3-30b-a3b", {}),
    ("gpt2", {}),  # wte and wpe: two gradients after the blocks
    # a dense first block below sparse ones: the blocks' gradients differ, each block's
    # own in the timeline and the replay (test_each_blocks_gradient_is_its_parameters)
    ("deepseek-v2-lite", {}),
    ("moonlight-16b-a3b", {}),
]
FAMILY_SETTINGS = [
    {"method": "full"},
    {"method": "full", "grad_ckpt": True},
    {"method": "lora"},
    {"method": "lora", "grad_ckpt": True},
    {"method": "lora", "grad_ckpt": True, "grad_accum": 4},
]


@pytest.mark.parametrize(("model", "extra"), FAMILY_RUNS, ids=lambda x: str(x))
@pytest.mark.parametrize("settings", FAMILY_SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_the_replay_of_each_family_reaches_the_timeline_peak(model, extra, settings):
    """The replay's allocated peak is the timeline's, byte for byte, and after two steps
    the weights, the optimizer states and what the loop holds remain. The replay reads
    its passes per step from the step itself (gpu.trace.passes_per_step: two under
    accumulation, else one), not from its caller: a second pass replayed for a step
    without accumulation held the first pass's gradients through its forward, beyond
    the timeline's peak (mistral-small-3.1-24b LoRA: by its 19,660,800 B of gradients)."""
    arch = get_model(model)
    run = run_config(**settings, **extra, seq_len=4096, batch_size=1)
    parts = step_parts(arch, run)
    best, left = replay_live(step_events(parts.sizes, _tensors(parts, parts.sizes)))
    assert best == find_peak(parts.sizes).at_peak.total
    s = parts.sizes
    assert left == s.weights + s.states + s.loop_held


@pytest.mark.parametrize("model", ["deepseek-v2-lite", "moonlight-16b-a3b"])
def test_each_blocks_gradient_is_its_parameters(model):
    """Full finetuning in bf16: each block's backward requests its own gradient, the bytes
    of the parameters transformers gives that block (built on the meta device from the
    published config.json, the router in fp32 as its _keep_in_fp32_modules_strict says):
    the dense first block's 162 MB (Moonlight: 166 MB), each sparse block's 1.17 GB, not
    their average. The gradients made in backward are the post-stream requests (the
    grad_stream label), top block first after the head side's."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ftmem.gpu.allocator import POST_STREAM_ALLOC
    from tests.test_deepseek import CONFIGS

    cfg = dict(CONFIGS[model])
    config = transformers.CONFIG_MAPPING[cfg.pop("model_type")](**cfg)
    with torch.device("meta"):
        hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    blocks = [sum(p.numel() * p.element_size() for p in b.parameters()) for b in hf.model.layers]
    assert len(set(blocks)) == 2  # (the dense block and the sparse ones)
    parts = step_parts(get_model(model), run_config(method="full", seq_len=1024, batch_size=1))
    events = step_events(parts.sizes, _tensors(parts, parts.sizes), grad_stream=True)
    made = [size for op, size in events if op == POST_STREAM_ALLOC]
    top_first = blocks[::-1]
    first_step = made[: len(made) // 2]
    starts = [i for i in range(len(first_step)) if first_step[i : i + len(blocks)] == top_first]
    assert len(starts) == 1
    assert parts.sizes.gradients.by_block == tuple(blocks)


@pytest.mark.parametrize("model", ["llama2-7b", "flan-t5-base"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda p: "-".join(map(str, p.values())))
@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_trace_of_a_rank_reaches_its_peak(model, layout, method):
    arch = get_model(model)
    if arch.encoder_decoder and (layout.get("tp") or layout.get("pp")):
        pytest.skip("encoder-decoders are modelled on data-parallel ranks only")
    run = run_config(method=method, seq_len=256, batch_size=2, grad_ckpt=method == "lora")
    step = parallel_step(arch, run, parallel_config(**layout))
    sizes = step.ranks[step.worst].sizes
    best, _ = replay_live(step_events(sizes, _tensors(step.parts, sizes)))
    assert best == step.peak.at_peak.total


def test_the_trace_of_a_first_stage_reaches_its_mask_build():
    """ColossalAI's ring_attn, first pipeline stage, a 64k sequence with pad tokens: the
    padded-causal mask its model forward builds before the first block (StepSizes.
    forward_start) is that stage's peak (tests/test_sequence_parallel.py); the replay
    requests it beside the other micro-batches' activations and the embedding side's."""
    run = run_config(
        method="full",
        precision="bf16",
        seq_len=65536,
        batch_size=1,
        grad_accum=8,
        grad_ckpt=True,
        padding="max-length",
    )
    layout = parallel_config(gpus=8, strategy="colossalai-zero1", sp_mode="ring_attn", cp=2, pp=4)
    step = parallel_step(get_model("llama3.1-8b"), run, layout)
    sizes = step.ranks[0].sizes
    peak = find_peak(sizes).at_peak
    assert sizes.forward_start and peak.temporaries == sizes.forward_start
    best, _ = replay_live(step_events(sizes, _tensors(step.parts, sizes)))
    assert best == peak.total


def test_the_offloaded_loss_reserves_what_the_plain_one_does():
    """The causal-LM loss's requests through the caching allocator, with and without
    activation offload (ops.loss_requests: the same tensors; offloaded, the saved
    log-softmax dies as the forward ends and each backward node brings back a copy).
    By hand, L = T·V·2 = 32 MiB (bf16 logits; large-pool blocks in whole 2 MiB):
    the forward's logits L, fp32 copy 2L and log-softmax 2L are three segments, 5L.
    Plain: the nll zeros take the copy's freed block, the log-softmax's gradient needs
    a new 2L segment (the logits' L is too small): 7L. Offloaded: NllLossBackward0's
    copy and zeros take the two freed 2L blocks, LogSoftmaxBackward0's copy the first
    again, its gradient the new 2L segment: 7L. The labels and scalars share one 2 MiB
    small-pool segment. Allocated: 6L at the log-softmax's backward (plain: the saved
    log-softmax, the zeros and the gradient beside the labels; offloaded: the zeros,
    the copy and the gradient). As the two moments the replay had before (the
    logits' 5L and the labels, then the backward's 6L in a new segment), the loss
    reserved 11L and 2 MiB."""
    T, V = 512, 32768
    L, MiB = T * V * 2, 2**20
    plain = replay([*sum(loss_requests.causal_lm_loss(T, V, 2), ())])
    offloaded = replay([*sum(loss_requests.causal_lm_loss(T, V, 2, offloaded=True), ())])
    assert plain.peak_reserved == offloaded.peak_reserved == 7 * L + 2 * MiB
    assert offloaded.peak_allocated == 6 * L
    assert plain.peak_allocated == 6 * L + T * 8 + 512  # the labels' and the scalar's blocks


@pytest.mark.parametrize("model", ["llama2-7b", "gpt2", "qwen2.5-0.5b"])
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_an_offloaded_run_replays_its_loss_tensor_by_tensor(model, method):
    """Activation offload: the replay lays the loss out as its requests (those of the
    run without offload, tests/test_loss_requests.py), still at the timeline's peak,
    and the estimate's reserved peak holds its allocated one."""
    import ftmem

    settings = {"method": method, "seq_len": 512, "batch_size": 1, "activation_offload": True}
    parts = step_parts(get_model(model), run_config(**settings))
    tensors = _tensors(parts, parts.sizes)
    assert _head_requests(parts.sizes, tensors) is not None
    best, _ = replay_live(step_events(parts.sizes, tensors))
    assert best == find_peak(parts.sizes).at_peak.total
    m = ftmem.estimate(model, gpu="h100", **settings).memory
    assert m.peak_reserved_bytes >= m.peak_allocated_bytes


def test_kept_workspaces_are_requested_once_and_never_freed():
    arch, run = get_model("gpt2"), run_config(method="lora", seq_len=128)
    parts = step_parts(arch, run)
    tensors = _tensors(parts, parts.sizes)
    plain = replay_live(step_events(parts.sizes, tensors))
    kept = ((8_519_680,), (8_519_680, 2**20))
    best, left = replay_live(step_events(parts.sizes, tensors, kept_workspaces=kept))
    assert left == plain[1] + 2 * 8_519_680 + 2**20
    assert best <= plain[0] + 2 * 8_519_680 + 2**20


def test_the_trace_of_a_distillation_step_reaches_its_peak():
    """The teacher's weights, beyond the plan's, are laid out too."""
    arch, run = get_model("llama2-7b"), run_config(method="lora", seq_len=256, batch_size=2)
    teacher = Teacher(get_model("llama2-13b"), "bf16")
    parts = step_parts(arch, run, teacher)
    events = step_events(parts.sizes, _tensors(parts, parts.sizes))
    best, left = replay_live(events)
    assert best == find_peak(parts.sizes).at_peak.total
    assert left == parts.sizes.weights + parts.sizes.states


@pytest.mark.parametrize(
    "settings",
    [
        {"method": "lora", "teacher": "llama2-13b"},
        {"method": "full", "objective": "dpo"},
        # (LitGPT has no DPO recipe: --objective dpo there is refused, and skipped here)
        {"method": "qlora", "framework": "litgpt"},
    ],
    ids=["teacher", "reference-copy", "quantised-loading"],
)
def test_the_run_loads_every_weight_beyond_the_plan_as_stored(settings):
    """Loading (run_phases) holds every weight tensor the trace lays out: a teacher's or a
    reference copy's too, each loaded as stored (no quantising transient)."""
    from ftmem import api

    try:
        est = api.estimate("llama2-7b", gpu="h100", **settings)
    except InvalidInputError:
        pytest.skip("not a combination ftmem models")
    loading = next(m for m in est.memory.run_peak.moments if m.name == "loading")
    assert loading.allocated_bytes >= est.memory.weights_bytes


OPTIONS = [
    {},
    {"expandable_segments": True},
    {"max_split_size_mb": 64},
    {"roundup_power2_divisions": 4},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o)) or "default")
@pytest.mark.parametrize(
    "layout",
    [None, {"gpus": 8, "strategy": "fsdp"}, {"gpus": 8, "strategy": "zero3"}],
    ids=["one-gpu", "fsdp", "zero3"],
)
@pytest.mark.parametrize("settings", SETTINGS[:10], ids=lambda s: "-".join(map(str, s.values())))
def test_the_run_replayed_as_requested_is_the_replay_of_its_events(settings, layout, options):
    """replay_run drives the allocators as the requests are made; its statistics are
    those of the event list replayed afterwards (gpu.allocator.replay_streams), request
    for request, on one stream and on FSDP's two."""
    arch = get_model("gpt2")
    run = run_config(**settings, seq_len=256, batch_size=2)
    if layout is None:
        parts = step_parts(arch, run)
        sizes = parts.sizes
    else:
        step = parallel_step(arch, run, parallel_config(**layout))
        parts, sizes = step.parts, step.ranks[step.worst].sizes
    steps = ((sizes, _tensors(parts, sizes)),) * 2
    kept = ((8_519_680,), (8_519_680, 2**20))
    fsdp = layout is not None and layout["strategy"] == "fsdp"
    args = (steps, kept, fsdp)
    assert replay_run(*args, **options) == replay_streams(run_events(*args), **options)


@pytest.mark.parametrize("seed", range(40))
def test_a_moment_leaves_the_allocator_as_a_malloc_and_its_free_do(seed):
    """CachingAllocator.moment's shortcut (a cached block split off and merged back
    leaves the pools as they were) against malloc + free, on random request sequences:
    every statistic along the way and the pools' contents at the end."""
    rng = random.Random(seed)
    sizes = [
        rng.choice(
            (rng.randrange(1, 4096), rng.randrange(1, 3 * 2**20), rng.randrange(1, 64 * 2**20))
        )
        for _ in range(300)
    ]
    short, long = CachingAllocator(), CachingAllocator()
    live: list[tuple[int, int]] = []
    for size in sizes:
        roll = rng.random()
        if roll < 0.3:
            short.moment(size)
            long.free(long.malloc(size))
        elif roll < 0.7 or not live:
            live.append((short.malloc(size), long.malloc(size)))
        else:
            a, b = live.pop(rng.randrange(len(live)))
            short.free(a)
            long.free(b)
        assert short.stats() == long.stats()
    assert [(s, a) for s, a, _ in short._free[True] + short._free[False]] == [
        (s, a) for s, a, _ in long._free[True] + long._free[False]
    ]


def test_the_step_tensors_are_the_plans_each_time():
    """What depends on the plan alone is computed once per plan (gpu.trace._plan_lists,
    _split, cached): estimating the same plan again, with and without a reference copy
    beside it, still lays out one tensor per parameter tensor of the plan (twice with
    the copy, which DPO keeps in the plan's dtypes) and states summing to the step's,
    never a list an earlier estimate extended."""
    arch = get_model("llama2-7b")
    for settings in ({"objective": "dpo"}, {}, {"objective": "dpo"}, {}):
        run = run_config(method="full", seq_len=256, batch_size=2, **settings)
        parts = step_parts(arch, run)
        t = _tensors(parts, parts.sizes)
        groups = parts.plan.groups
        copies = 2 if settings else 1
        assert len(t.weights) == copies * sum(g.count for g in groups)
        assert sum(t.weights) == copies * sum(g.nbytes for g in groups)
        assert sum(t.states) == parts.sizes.states
        # Adam's two moments per trainable tensor
        assert len(t.states) == 2 * sum(g.count for g in groups if g.trainable)
