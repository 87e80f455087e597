"""Sliding-window layers' KV cache (issue 17): which layers slide, read from config.json
as transformers 5.24 builds its DynamicCache (cache_utils.py get_layer_types_and_kwargs,
DynamicSlidingWindowLayer), and what GRPO's generate() and ``ftmem serve`` count.

The truths: the layer objects of ``DynamicCache(config=...)`` for the same config; the
storage a CPU ``generate()`` leaves in the cache; hand derivations written here from
cache_utils.py (DynamicSlidingWindowLayer.update: ``cat([keys, new])``, then the view
``[:, :, -w + 1:]``; DynamicLayer.update: ``self.keys = cat(...)``, then the values)."""

from __future__ import annotations

import pytest

from ftmem.grpo import generation_moment, sliding_tokens
from ftmem.presets import get_model, model_presets
from ftmem.run import RunConfig
from ftmem.sources import architecture_from_config
from ftmem.step import step_parts
from tests.conftest import tiny

SMALL = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    num_hidden_layers=7,
)
EXPERTS = dict(num_local_experts=4, num_experts_per_tok=2)

# (model_type, config.json keys, sliding layers of 7 counted by hand from each config
# class's pattern in transformers 5.24)
CONFIGS = {
    # (i + 1) % 2: layers 0, 2, 4, 6
    "gemma2": ("gemma2", dict(sliding_window=8), 4),
    # (i + 1) % 6 != 0: all but layer 5; with a pattern of 3, all but 2 and 5
    "gemma3": ("gemma3_text", dict(sliding_window=8), 6),
    "gemma3-pattern-3": ("gemma3_text", dict(sliding_window=8, sliding_window_pattern=3), 5),
    # (i + 1) % 2, as Gemma 2
    "gpt_oss": ("gpt_oss", dict(sliding_window=8, **EXPERTS), 4),
    # no layer_types in the config class: every layer with a window slides
    "mistral": ("mistral", dict(sliding_window=8), 7),
    "mixtral": ("mixtral", dict(sliding_window=8, **EXPERTS), 7),
    "phi3": ("phi3", dict(sliding_window=8), 7),
    "starcoder2": ("starcoder2", dict(sliding_window=8), 7),
    "qwen3_moe": (
        "qwen3_moe",
        dict(
            use_sliding_window=True,
            sliding_window=8,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
        ),
        7,
    ),
    # i >= max_window_layers slides: layers 5 and 6
    "qwen2": ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=5), 2),
    "qwen3": ("qwen3", dict(use_sliding_window=True, sliding_window=8, max_window_layers=3), 4),
    # the flag off: no window at all
    "qwen2-off": ("qwen2", dict(use_sliding_window=False, sliding_window=8), 0),
    # the layers without the rotary ((i + 1) % 4 == 0: layer 3)
    "smollm3": ("smollm3", dict(use_sliding_window=True, sliding_window=8), 1),
    # (i + 1) % 4 != 0: all but layer 3
    "exaone4": ("exaone4", dict(sliding_window=8), 6),
    # ExaoneMoeConfig's same pattern (its first block dense by default)
    "exaone_moe": (
        "exaone_moe",
        dict(sliding_window=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
        6,
    ),
}


def _cache_sliding_layers(config) -> int:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicSlidingWindowLayer

    layers = DynamicCache(config=config).layers
    return sum(1 for layer in layers if isinstance(layer, DynamicSlidingWindowLayer))


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_sliding_layers_are_the_ones_transformers_cache_keeps_at_the_window(case):
    """config.json as written (the class's default pattern) and as transformers saves it
    (``layer_types`` written out): ftmem counts the DynamicCache's sliding layers."""
    transformers = pytest.importorskip("transformers")
    model_type, keys, by_hand = CONFIGS[case]
    written = {"model_type": model_type, **SMALL, **keys}
    config = transformers.AutoConfig.for_model(**written)
    assert _cache_sliding_layers(config) == by_hand
    saved = {k: v for k, v in config.to_dict().items() if v is not None}
    for cfg in (written, saved):
        arch = architecture_from_config(cfg, case, "test")
        assert arch.sliding_layers == by_hand
        assert arch.full_layers == 7 - by_hand


def test_layer_types_decide_over_the_pattern():
    """A config.json's own layer_types name the sliding layers, whatever the class's
    default pattern (here Gemma 2's alternation, overridden)."""
    types = ["full_attention"] * 5 + ["sliding_attention"] * 2
    cfg = {"model_type": "gemma2", **SMALL, "sliding_window": 8, "layer_types": types}
    assert architecture_from_config(cfg, "g", "test").sliding_layers == 2


def test_a_family_not_checked_counts_every_layer_in_full():
    """Llama's config class has no window; a window in its config.json is kept for the
    attention's mask but no layer's cache is counted at it (the safe side)."""
    cfg = {"model_type": "llama", **SMALL, "sliding_window": 8}
    arch = architecture_from_config(cfg, "l", "test")
    assert (arch.sliding_window, arch.sliding_layers) == (8, 0)


def test_sliding_layers_need_a_window_and_fit_the_stack():
    with pytest.raises(ValueError, match="sliding_layers"):
        tiny("llama", sliding_layers=1)
    with pytest.raises(ValueError, match="sliding_layers"):
        tiny("gpt_oss", sliding_layers=3)  # 2 layers


@pytest.mark.parametrize(
    "name", sorted(n for n, a in model_presets().items() if a.sliding_window is not None)
)
def test_a_preset_builds_the_sliding_layers_it_counts(name):
    """The transformers config ``ftmem measure`` builds for a preset has as many sliding
    cache layers as the preset counts."""
    pytest.importorskip("transformers")
    from ftmem.measure.build import hf_config

    arch = get_model(name)
    assert _cache_sliding_layers(hf_config(arch)) == arch.sliding_layers


def test_gpt_oss_20b_counts_half_its_layers_at_the_window():
    """gpt-oss-20b's config.json: layer_types alternate, 12 of 24 layers sliding."""
    arch = get_model("gpt-oss-20b")
    assert (arch.sliding_layers, arch.full_layers, arch.sliding_window) == (12, 12, 128)


# A tiny gpt-oss: 2 layers, layer 0 sliding (window 4), 2 KV heads of 32; bf16
R, P, W = 3, 6, 4
PER_TOKEN = R * 2 * 32 * 2  # one layer's key (or value) per token: rows x kv heads x head x 2


def _generated_cache_bytes(new_tokens: int) -> tuple[int, int]:
    """(sliding layer, full layer) bytes of key and value storage the cache holds after a
    CPU generate() of ``new_tokens`` on R prompts of P tokens."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ftmem.measure.build import hf_config

    config = hf_config(tiny("gpt_oss", sliding_window=W, sliding_layers=1), "eager")
    config.use_cache = True
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16).eval()
    ids = torch.randint(0, 300, (R, P))
    cache = transformers.DynamicCache(config=config)
    model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        cache=cache,
        eos_token_id=None,
        pad_token_id=0,
    )
    sliding, full = (
        layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
        for layer in cache.layers
    )
    return sliding, full


@pytest.mark.parametrize(
    ("new_tokens", "sliding_by_hand", "full_by_hand"),
    [
        # prefill only: the sliding layer's view of its P-token cat keeps all of it
        (1, P, P),
        # one decoding step: its cat is the view's w - 1 tokens and the new one (w)
        (2, W, P + 1),
        # the last step's cache holds S - 1 = P + C - 1 tokens on the full layer
        (5, W, P + 4),
    ],
)
def test_generate_leaves_the_window_on_sliding_layers(new_tokens, sliding_by_hand, full_by_hand):
    """Measured: the storage of the cache's keys and values after generate() (a key and
    a value each) is what ``sliding_tokens`` counts, and the full layer's S - 1."""
    arch = tiny("gpt_oss", sliding_window=W, sliding_layers=1)
    sliding, full = _generated_cache_bytes(new_tokens)
    assert (sliding, full) == (2 * PER_TOKEN * sliding_by_hand, 2 * PER_TOKEN * full_by_hand)
    cached = P + new_tokens - 1
    assert sliding_tokens(arch, P, cached) == sliding_by_hand


def _step_peak(steps_before: int) -> int:
    """Measured: the largest live bytes of the cache's storages while one decoding step
    updates every layer in order (each layer's returned keys and values dropped before
    the next, as attention lets them go; the step's new keys and values not counted),
    after a prefill of P tokens and ``steps_before`` decoding steps."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import DynamicCache

    from ftmem.measure.build import hf_config
    from ftmem.measure.tracker import LiveBytesTracker

    cache = DynamicCache(config=hf_config(tiny("gpt_oss", sliding_window=W, sliding_layers=1)))

    def states(tokens: int) -> list[list[torch.Tensor]]:
        return [[torch.zeros(R, 2, tokens, 32, dtype=torch.bfloat16)] * 2 for _ in range(2)]

    def step(new: list[list[torch.Tensor]]) -> None:
        for i in range(2):
            keys_values = cache.update(*new[i], i)
            del keys_values

    step(states(P))
    for _ in range(steps_before):
        step(states(1))
    kept = [(layer.keys, layer.values) for layer in cache.layers]
    new = states(1)  # the step's own keys and values, made before: not counted
    tracker = LiveBytesTracker()
    tracker.track(kept)
    del kept
    with tracker:
        step(new)
    return tracker.peak


@pytest.mark.parametrize(
    ("steps_before", "by_hand", "slack"),
    [
        # the first step (cache to P + 1 = 7): full layer at 7, sliding layer at its old
        # P = 6, and the sliding layer's new window (4 key + 4 value); the measure has
        # the full layer at 6 at that moment (2 tokens' key and value fewer)
        (0, (2 * 7 + 2 * 6) + 2 * 4, 2),
        # a later step (cache 9 to 10): full layer at 10, sliding at 4, one full key
        # (counted at 10: the old holds 9) beside it, over the sliding update's 2 x 4
        (3, (2 * 10 + 2 * 4) + 10, 1),
    ],
)
def test_a_decoding_steps_cache_peak(steps_before, by_hand, slack):
    """decode_step_bytes against the measured peak of a step's cache updates: equal to
    the hand count, which is the measure plus the later layers counted one token long."""
    from ftmem.grpo import decode_step_bytes

    arch = tiny("gpt_oss", sliding_window=W, sliding_layers=1)
    tokens = P + steps_before + 1
    assert decode_step_bytes(arch, R, P, tokens, 2) == PER_TOKEN * by_hand
    assert _step_peak(steps_before) == PER_TOKEN * (by_hand - slack)


def test_grpo_generation_counts_the_window_on_sliding_layers():
    """gpt-oss-20b (12 sliding layers of 24, window 128, 8 KV heads of 64, V 201,088), 16
    prompts of 96 tokens, 4,000 new each, LoRA in bf16: the last decoding step is the
    moment. Its cache: the full layers at S - 1 = 4,095 tokens, the sliding ones at the
    window's 128 (their last cat), plus the larger of one full layer's old key (counted
    at S - 1) and one sliding layer's old key and value (128 tokens each); the step's
    bf16 logits, their fp32 copy and the sampling probabilities, the growing int64 ids
    (old and new); beside them the prompts' ids and mask."""
    arch = get_model("gpt-oss-20b")
    R16, S, C, V = 16, 4096, 4000, 201_088
    P16 = S - C
    run = RunConfig(
        method="lora", objective="grpo", batch_size=16, seq_len=S, completion_len=C
    ).model_copy(update={"device": "cpu"})
    plan = step_parts(arch, run).plan
    per_token_layer = R16 * 2 * 8 * 64 * 2  # key and value, bf16
    one_key = per_token_layer * (S - 1) // 2
    grown = per_token_layer * (12 * (S - 1) + 12 * 128)
    cache = grown + max(one_key, per_token_layer * 128)
    # gpt-oss attends eagerly: a full layer's attention copies its key and value to all
    # 64 query heads (repeat_kv), beside the grown cache: the larger moment here
    attention = grown + 2 * R16 * 64 * (S - 1) * 64 * 2
    assert attention > cache
    decode = attention + R16 * V * 2 + 2 * R16 * V * 4 + 2 * R16 * S * 8
    assert generation_moment(arch, run, plan) == decode + 2 * R16 * P16 * 8
    # every layer at S - 1, as before the window was counted: 12 x 3,967 tokens more
    every_layer = per_token_layer * 24 * (S - 1) + one_key
    assert every_layer - cache == per_token_layer * 12 * (S - 1 - 128)


def test_serve_counts_every_token_and_says_what_decoding_leaves():
    """``ftmem serve`` counts the cache right after a prefill of the whole context, every
    token on every layer; its note gives what generating to the context leaves.
    gpt-oss-20b, one sequence of 32,768 tokens, bf16: a layer's key and value per token
    2 x 8 KV heads x 64 x 2 = 2,048 bytes; 24 layers x 32,768 tokens counted; the end
    of a generation holds 12 full layers at 32,768 and 12 sliding ones at 128:
    2,048 x 394,752 = 808,452,096 bytes (771.00 MiB)."""
    from ftmem.serve import ServeConfig, estimate_serving

    est = estimate_serving(get_model("gpt-oss-20b"), ServeConfig(context=32768))
    assert est.kv_cache_bytes == 2048 * 24 * 32768
    (note,) = (n for n in est.notes if "window" in n)
    assert "on 12 of its 24 layers" in note
    assert "771.00 MiB at the end" in note
