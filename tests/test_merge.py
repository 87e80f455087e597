"""Model merging: the result's size by hand (SOLAR's published count) and the merge's
memory against ftmem's reference merges measured on the CPU."""

from __future__ import annotations

import pytest

from ftmem.arch import count_params
from ftmem.errors import InvalidInputError
from ftmem.merge import MergeConfig, merge_estimate, parse_slices
from ftmem.presets import get_model
from tests.conftest import tiny


def test_solar_depth_up_scaling_is_solar_10_7b() -> None:
    """SOLAR 10.7B is Mistral-7B's blocks 0-24 and 8-32 stacked (48 blocks):
    10,731,524,096 parameters (upstage/SOLAR-10.7B-v1.0)."""
    est = merge_estimate(get_model("mistral-7b"), MergeConfig(kind="stack", layers="0-24,8-32"))
    assert est.result.num_layers == 48
    assert est.result_params == 10_731_524_096
    assert est.result_bytes == 2 * 10_731_524_096


def test_weighted_merge_by_hand() -> None:
    """Three bf16 Mistral-7B models merged in memory: all three, the output, and the
    largest tensor's fp32 arithmetic (the embedding, 32000 × 4096: three fp32 copies
    stacked, their weighted copy, the fp32 sum and its bf16 cast)."""
    n, k = 7_241_732_096, 3
    est = merge_estimate(get_model("mistral-7b"), MergeConfig(models=k, streamed=False))
    largest = 32000 * 4096  # the embedding (and the LM head) is the largest tensor
    assert est.peak_bytes == k * n * 2 + n * 2 + largest * (2 * k * 4 + 4 + 2)
    streamed = merge_estimate(get_model("mistral-7b"), MergeConfig(models=k, shard_bytes=0))
    assert streamed.peak_bytes == largest * (k * 2 + 2 * k * 4 + 4 + 2)


@pytest.mark.parametrize("family", ["llama", "gpt2", "mixtral"])
def test_against_reference_merges(family: str) -> None:
    pytest.importorskip("torch")
    from ftmem.measure.merge import measure_merge

    arch = tiny(family)
    for cfg in (MergeConfig(models=3, shard_bytes=0), MergeConfig(models=2, dtype="fp32")):
        got = measure_merge(arch, cfg.model_copy(update={"shard_bytes": 0}))
        assert merge_estimate(arch, cfg.model_copy(update={"shard_bytes": 0})).peak_bytes == (
            pytest.approx(got, rel=0.005)
        )
    stack = MergeConfig(kind="stack", layers="0-2,0-1", streamed=False)
    assert merge_estimate(arch, stack).peak_bytes == measure_merge(arch, stack)
    # in memory, weighted: an upper bound by at most the largest tensor's arithmetic
    soup = MergeConfig(models=3, streamed=False)
    est, got = merge_estimate(arch, soup), measure_merge(arch, soup)
    assert got <= est.peak_bytes <= got + est.working_bytes


def test_the_largest_published_uniform_soup_is_accepted() -> None:
    # Wortsman et al. 2022 averaged 72 fine-tuned CLIP ViT-B/32 models (a cap of 64 refused it);
    # each is read whole, so the inputs are 72 copies of the model in its dtype
    arch = get_model("mistral-7b")
    est = merge_estimate(arch, MergeConfig(models=72))
    assert est.inputs_bytes == 72 * count_params(arch) * 2


def test_bad_merges_are_one_sentence() -> None:
    with pytest.raises(InvalidInputError, match="outside the model's 32 blocks"):
        parse_slices("0-40", 32)
    with pytest.raises(InvalidInputError, match="not a range"):
        parse_slices("0:24", 32)
    with pytest.raises(InvalidInputError, match="needs --layers"):
        merge_estimate(get_model("mistral-7b"), MergeConfig(kind="stack"))
    with pytest.raises(InvalidInputError, match="stack merges"):
        merge_estimate(get_model("mistral-7b"), MergeConfig(layers="0-8"))


def test_cli_merge() -> None:
    import json

    from typer.testing import CliRunner

    from ftmem.cli import app

    res = CliRunner().invoke(
        app, ["merge", "mistral-7b", "--layers", "0-24,8-32", "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["result_params"] == 10_731_524_096
    bad = CliRunner().invoke(app, ["merge", "mistral-7b", "--layers", "0-99"])
    assert bad.exit_code == 2 and "outside" in bad.output
