"""Checks on the shipped presets (presets/models, presets/gpus).

Every YAML file is loaded on its own (one test id per file), so a broken preset names
itself. Parameter counts are compared with published figures where a preset records one,
and Llama-2-7B is also derived by hand, module by module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ftmem.arch import Architecture, count_params, layout
from ftmem.hardware import Gpu
from ftmem.presets import model_from_mapping

PRESETS = Path(__file__).resolve().parents[1] / "presets"
MODEL_FILES = sorted((PRESETS / "models").rglob("*.yaml"))
GPU_FILES = sorted((PRESETS / "gpus").rglob("*.yaml"))

MIN_MODEL_PRESETS = 27
MIN_GPU_PRESETS = 15

# The marketing label of each GPU preset, in GiB-sized units ("80GB" -> 80). The memory
# the driver reports must lie a little below label x 2^30: between 85% and 100% of it.
GPU_LABEL_GIB = {
    "a100-40gb": 40,
    "a100-80gb": 80,
    "h100-80gb": 80,
    "h200": 141,
    "l4": 24,
    "l40s": 48,
    "a10g": 24,
    "rtx-a6000": 48,
    "rtx3090": 24,
    "rtx4090": 24,
    "rtx5090": 32,
    "t4": 16,
    "v100-16gb": 16,
    "v100-32gb": 32,
    "mi300x": 192,
}


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def _model(path: Path) -> tuple[str, tuple[str, ...], Architecture]:
    return model_from_mapping(_load(path), path.name)


def _gpu(path: Path) -> Gpu:
    return Gpu(**_load(path))


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


# --- inventory ----------------------------------------------------------------------


def test_enough_model_presets() -> None:
    assert len(MODEL_FILES) >= MIN_MODEL_PRESETS, [p.name for p in MODEL_FILES]


def test_enough_gpu_presets() -> None:
    assert len(GPU_FILES) >= MIN_GPU_PRESETS, [p.name for p in GPU_FILES]


def test_every_gpu_preset_has_a_label() -> None:
    ids = {_gpu(p).id for p in GPU_FILES}
    assert ids == set(GPU_LABEL_GIB), (
        f"missing labels: {sorted(ids - set(GPU_LABEL_GIB))}; "
        f"labels without a preset: {sorted(set(GPU_LABEL_GIB) - ids)}"
    )


# --- model presets ------------------------------------------------------------------


@pytest.mark.parametrize("path", MODEL_FILES, ids=_ids(MODEL_FILES))
def test_model_preset_loads_and_is_named_after_its_id(path: Path) -> None:
    preset_id, _, arch = _model(path)
    assert preset_id == path.stem
    assert count_params(arch) > 0


@pytest.mark.parametrize("path", MODEL_FILES, ids=_ids(MODEL_FILES))
def test_model_preset_has_source(path: Path) -> None:
    _, _, arch = _model(path)
    assert arch.source and arch.source.strip()


@pytest.mark.parametrize("path", MODEL_FILES, ids=_ids(MODEL_FILES))
def test_model_count_matches_published(path: Path) -> None:
    _, _, arch = _model(path)
    if arch.published_params is None:
        pytest.skip("no published exact count recorded")
    assert arch.published_params_source and arch.published_params_source.strip()
    assert count_params(arch) == arch.published_params


@pytest.mark.parametrize("path", MODEL_FILES, ids=_ids(MODEL_FILES))
def test_model_preset_is_internally_consistent(path: Path) -> None:
    _, _, arch = _model(path)
    assert arch.experts_per_token <= arch.num_experts
    if arch.head_dim is None:
        assert arch.hidden_size % arch.num_heads == 0
    if arch.position_embedding == "learned":
        assert arch.traits.names.positions, "only a layout with a position table has them"


# --- GPU presets --------------------------------------------------------------------


@pytest.mark.parametrize("path", GPU_FILES, ids=_ids(GPU_FILES))
def test_gpu_preset_loads_and_is_named_after_its_id(path: Path) -> None:
    assert _gpu(path).id == path.stem


@pytest.mark.parametrize("path", GPU_FILES, ids=_ids(GPU_FILES))
def test_gpu_preset_has_source(path: Path) -> None:
    assert _gpu(path).source.strip()


@pytest.mark.parametrize("path", GPU_FILES, ids=_ids(GPU_FILES))
def test_gpu_memory_is_reported_not_labelled(path: Path) -> None:
    gpu = _gpu(path)
    label_bytes = GPU_LABEL_GIB[gpu.id] * 2**30
    assert 0.85 * label_bytes <= gpu.memory_bytes <= label_bytes, (
        f"{gpu.id}: {gpu.memory_bytes:,} bytes is {gpu.memory_bytes / label_bytes:.3f} "
        f"of the {GPU_LABEL_GIB[gpu.id]} GiB label"
    )


def test_precision_flags() -> None:
    gpus = {g.id: g for g in map(_gpu, GPU_FILES)}
    for name in ("t4", "v100-16gb", "v100-32gb"):
        assert not gpus[name].bf16, name
    for name in ("h100-80gb", "h200", "l4", "l40s", "rtx4090", "rtx5090", "mi300x"):
        assert gpus[name].fp8, name
    assert gpus["mi300x"].vendor == "amd"


# --- names --------------------------------------------------------------------------


def test_model_ids_and_aliases_are_unique() -> None:
    owner: dict[str, str] = {}
    for path in MODEL_FILES:
        preset_id, aliases, _ = _model(path)
        for name in (preset_id, *aliases):
            key = name.lower()
            assert key not in owner, f"{name!r} is used by {owner[key]} and {preset_id}"
            owner[key] = preset_id


def test_gpu_ids_and_aliases_are_unique() -> None:
    owner: dict[str, str] = {}
    for gpu in map(_gpu, GPU_FILES):
        for name in (gpu.id, *gpu.aliases):
            key = name.lower()
            assert key not in owner, f"{name!r} is used by {owner[key]} and {gpu.id}"
            owner[key] = gpu.id


# --- Llama-2-7B by hand -------------------------------------------------------------


def test_llama2_7b_by_hand() -> None:
    _, _, arch = _model(PRESETS / "models" / "llama2-7b.yaml")
    hidden, ffn, vocab, layers = 4096, 11008, 32000, 32
    assert (arch.hidden_size, arch.intermediate_size, arch.vocab_size, arch.num_layers) == (
        hidden,
        ffn,
        vocab,
        layers,
    )

    embed_tokens = 32000 * 4096  # model.embed_tokens.weight
    per_layer = (
        4 * 4096 * 4096  # q_proj, k_proj, v_proj, o_proj (32 heads x 128, no GQA, no biases)
        + 3 * 4096 * 11008  # gate_proj, up_proj, down_proj
        + 2 * 4096  # input_layernorm, post_attention_layernorm (RMSNorm: weight only)
    )
    final_norm = 4096  # model.norm.weight
    lm_head = 32000 * 4096  # lm_head.weight (not tied)

    assert embed_tokens == 131_072_000
    assert per_layer == 202_383_360
    total = embed_tokens + 32 * per_layer + final_norm + lm_head
    assert total == 6_738_415_616
    assert count_params(arch) == total

    lay = layout(arch)
    assert lay.block_params == per_layer
    assert lay.outer_params == embed_tokens + final_norm + lm_head
