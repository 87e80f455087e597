"""K-EXAONE (exaone_moe) and FlexOlmo (flex_olmo): their config.json read, counted as
transformers builds them on the meta device, and what ftmem refuses rather than
mis-reads. (Their memory: tests/accuracy, the cases matching ^(exaonemoe|flexolmo)-.)"""

from __future__ import annotations

import pytest

from ftmem.arch import count_params
from ftmem.errors import ConfigError, InvalidInputError
from ftmem.run import RunConfig
from tests.family_configs import read_config, transformers_count

from .conftest import tiny

# a K-EXAONE-shaped stack at a small width: a hybrid of three sliding layers to one
# global (the published "LLLG" pattern, written out in layer_types), one dense block
# below fifteen sparse ones (mlp_layer_types), 16 routed experts top-4, one shared
K_EXAONE_SMALL = {
    "model_type": "exaone_moe",
    "vocab_size": 1000,
    "hidden_size": 256,
    "intermediate_size": 768,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 16,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "num_experts": 16,
    "num_experts_per_tok": 4,
    "num_shared_experts": 1,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "n_group": 1,
    "topk_group": 1,
    "sliding_window": 128,
    "sliding_window_pattern": "LLLG",
    "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
    "mlp_layer_types": ["dense"] + ["sparse"] * 15,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
K_EXAONE_SMALL["layer_types"] = K_EXAONE_SMALL["layer_types"] * 4


def test_k_exaone_counts_as_transformers_builds_it(tmp_path):
    """The layer types and MLP types written out: 12 of 16 layers slide, one block is
    dense (768 wide), the experts 64 wide with one shared expert of that width; the count
    is transformers' on the meta device (the fp32 router weight counted, its correction
    bias a buffer)."""
    # (a stray attention_bias: ExaoneMoeAttention's projections have no bias whatever it says)
    cfg = {**K_EXAONE_SMALL, "is_moe_layer": [False] + [True] * 15, "attention_bias": True}
    arch = read_config(tmp_path, cfg)
    assert (arch.sliding_window, arch.sliding_layers, arch.qk_norm) == (128, 12, True)
    assert (arch.dense_layers, arch.dense_intermediate_size) == (1, 768)
    assert (arch.num_experts, arch.experts_per_token, arch.intermediate_size) == (16, 4, 64)
    assert (arch.shared_experts_size, arch.router_renormalises) == (64, True)
    assert count_params(arch) == transformers_count(cfg)


def test_k_exaone_takes_its_config_class_defaults(tmp_path):
    """ExaoneMoeConfig's defaults where config.json leaves the keys out (configuration_
    exaone_moe.py): 64 experts of 1024, top-8, one shared, the first block dense, a window
    of 4096 on all but every fourth layer (its int window is never null), renormalised."""
    keys = ("num_experts", "num_experts_per_tok", "num_shared_experts", "moe_intermediate_size")
    drop = {*keys, "mlp_layer_types", "layer_types", "sliding_window", "sliding_window_pattern"}
    drop |= {"norm_topk_prob"}
    cfg = {k: v for k, v in K_EXAONE_SMALL.items() if k not in drop}
    arch = read_config(tmp_path, cfg)
    assert (arch.num_experts, arch.experts_per_token, arch.intermediate_size) == (64, 8, 1024)
    assert (arch.shared_experts_size, arch.dense_layers, arch.router_renormalises) == (
        1024,
        1,
        True,
    )
    assert (arch.sliding_window, arch.sliding_layers) == (4096, 12)
    assert count_params(arch) == transformers_count(cfg)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # ftmem's dense blocks are the lowest ones
        (
            {"mlp_layer_types": ["sparse", "dense"] + ["sparse"] * 14},
            "puts a dense block after a sparse one",
        ),
        (
            {"mlp_layer_types": ["dense"] * 3},
            "mlp_layer_types must list .dense. or .sparse. for each of the 16",
        ),
        ({"mlp_layer_types": ["dense"] * 16}, "leave no block with experts"),
        ({"mlp_layer_types": None, "first_k_dense_replace": 16}, "leave no block"),
        ({"num_shared_experts": 0}, "num_shared_experts must be positive"),
        ({"layer_types": None, "sliding_window_pattern": "LLLG"}, "sliding_window_pattern"),
        # another runtime's key naming the last block dense too (first_last_k_dense_replace)
        ({"is_moe_layer": [False] + [True] * 14 + [False]}, "is_moe_layer"),
    ],
)
def test_what_k_exaone_refuses(tmp_path, changes, message):
    """Layouts ftmem does not model, and keys transformers itself could not build from (a
    pattern string without layer_types: ``(i + 1) % "LLLG"``), are refused in one
    sentence."""
    cfg = {k: v for k, v in {**K_EXAONE_SMALL, **changes}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        read_config(tmp_path, cfg)


def test_k_exaone_all_linear_lora_is_refused():
    """peft rewrites the dense and shared MLPs' gate/up/down targets onto the experts
    (transformers 5.25 conversion_mapping.py: exaone_moe takes qwen2_moe's pattern): the
    all-linear LoRA is refused, not mis-estimated."""
    from ftmem.estimate import estimate_step

    run = RunConfig(method="lora", lora_targets="all-linear", precision="bf16")
    with pytest.raises(InvalidInputError, match="all-linear"):
        estimate_step(tiny("exaone_moe"), run)


# FlexOlmoConfig's defaults, the shape of allenai/FlexOlmo-7x7B-1T (its auto_docstring
# checkpoint), with the experts' count under its attribute_map name
FLEX_OLMO = {
    "model_type": "flex_olmo",
    "vocab_size": 100352,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_local_experts": 7,
    "num_experts_per_tok": 5,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def test_flex_olmo_counts_as_transformers_builds_it(tmp_path):
    """OLMo 2's attention (q/k norms across the whole projection) and block over 7 experts
    of 11008 top-5, no shared expert, no dense block: transformers' count on the meta
    device; a stray sliding_window slides nothing (FlexOlmoModel's full causal mask)."""
    arch = read_config(tmp_path, {**FLEX_OLMO, "sliding_window": 4096})
    assert (arch.num_experts, arch.experts_per_token, arch.intermediate_size) == (7, 5, 11008)
    assert (arch.router_renormalises, arch.sliding_window, arch.qk_norm) == (False, None, True)
    assert (arch.shared_experts_size, arch.dense_layers) == (0, 0)
    assert count_params(arch) == transformers_count(FLEX_OLMO)


def test_granitemoe_swa_is_refused_with_its_reason(tmp_path):
    """GraniteMoE-SWA's attention sink (an LSE scaling of each head's output, eager only)
    is an op ftmem has not measured: refused in one sentence that says why."""
    with pytest.raises(ConfigError, match=r"logsumexp minus a learned sink.*--traced"):
        read_config(tmp_path, {"model_type": "granitemoe_swa", "hidden_size": 64})


@pytest.mark.parametrize(
    ("changes", "grad_blocks", "kept"),
    [
        # every layer global: none turns q and k (NoPE), whatever trains
        ({}, None, 0),
        # two sliding layers under a full one: the shared cos and sin (50 positions x 24
        # dims x 4 B each) are kept where a sliding block trains
        ({"sliding_window": 16, "sliding_layers": 2}, None, 2 * 50 * 24 * 4),
        ({"sliding_window": 16, "sliding_layers": 2}, 2, 2 * 50 * 24 * 4),
        # only the top block, a full one, trains: nothing keeps them
        ({"sliding_window": 16, "sliding_layers": 2}, 1, 0),
    ],
)
def test_k_exaone_keeps_the_rotary_tables_only_for_its_sliding_layers(changes, grad_blocks, kept):
    """ExaoneMoeAttention turns q and k on the sliding layers only (``if
    self.sliding_window is None or self.is_sliding``, with a window never None): measured
    in tests/accuracy's hybrid cases (frozen below one and two blocks, fp32)."""
    from ftmem.ops.embedding import Embedding

    arch = tiny("exaone_moe", **changes)
    run = RunConfig(method="full", precision="fp32", batch_size=3, seq_len=50)
    saved = Embedding.rotary_saved(arch, run, 150, 4, grad_blocks)
    assert sum(x.nbytes for x in saved) == kept
