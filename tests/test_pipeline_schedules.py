"""Pipeline schedules under ColossalAI: 1F1B and interleaved 1F1B (``--pp-chunks``), and
the micro-batches' edge tensors its schedules keep, against hand derivations from
hpcaitech/ColossalAI 4f9953be335e (pipeline/schedule/one_f_one_b.py,
interleaved_pp.py) and Narayanan et al. 2021 (arXiv:2104.04473, §2.2.2: the interleaved
schedule's first stage holds (1 + (p − 1)/(p·v)) times 1F1B's activations)."""

from fractions import Fraction

import pytest

from ftmem import estimate
from ftmem.api import parallel_config, run_config
from ftmem.errors import InvalidInputError
from ftmem.parallel import parallel_step
from ftmem.present.emit import emit_config
from ftmem.presets import get_model
from tests.test_colossalai import PLUGIN_ARGUMENTS, _plugin_call

H, L = 4096, 32  # Llama-2-7B
E = 2


def _step(pp=4, v=1, m=8, gpus=8, strategy="colossalai-zero1", **kw):
    kw.setdefault("seq_len", 1024)
    run = run_config(method="full", precision="bf16", grad_accum=m, **kw)
    par = parallel_config(gpus=gpus, strategy=strategy, pp=pp, pp_chunks=v)
    return parallel_step(get_model("llama2-7b"), run, par)


def _warmup(pp: int, v: int, k: int, m: int) -> int:
    """interleaved_pp.py:437-440, written again: forwards before the first backward."""
    return min((pp - k - 1) * 2 + (v - 1) * pp, m * v)


@pytest.mark.parametrize(("pp", "v"), [(2, 2), (4, 2), (4, 4), (8, 2)])
def test_first_stage_holds_narayanans_share_more_than_1f1b(pp, v):
    """Stage 0 holds warmup + 1 chunk micro-batches of L/(pp·v) blocks: with enough
    micro-batches, (1 + (pp − 1)/(pp·v)) × the 1F1B first stage's pp micro-batches of
    L/pp blocks."""
    m = 4 * pp
    one = _step(pp=pp, v=1, m=m).ranks[0]
    inter = _step(pp=pp, v=v, m=m).ranks[0]
    assert one.micro_batches == pp
    assert inter.micro_batches == _warmup(pp, v, 0, m) + 1
    block = one.sizes.activations.per_block[0]

    def blocks_held(r):
        a = r.sizes.activations
        below = r.sizes.activations.below
        boundary = a.held - (r.micro_batches - 1) * (sum(a.per_block) + below)
        return Fraction(a.total - a.above - boundary - r.micro_batches * below, block)

    assert blocks_held(inter) / blocks_held(one) == 1 + Fraction(pp - 1, pp * v)


def test_every_stage_warmup_and_few_micro_batches():
    """Stage k: 2(pp − k − 1) + (v − 1)·pp warm-up forwards, +1 in the steady state;
    with m·v chunk micro-batches or fewer to run, all of them forward first."""
    for k, r in enumerate(_step(pp=4, v=2, m=8).ranks):
        assert r.micro_batches == _warmup(4, 2, k, 8) + 1
        assert len(r.sizes.activations.per_block) == L // 8
    few = _step(pp=4, v=2, m=4).ranks[0]  # warm-up 10 > m·v = 8
    assert few.micro_batches == 8


def test_colossalai_pipeline_keeps_each_micro_batchs_edges():
    """ColossalAI's 1F1B keeps each in-flight micro-batch's received input (not the first
    stage) and output (not the last) whole, bf16 b·s·h each: a middle stage 2 per
    micro-batch; Llama's RMSNorm saves an fp32 copy, not the input itself."""
    T = 1024
    edge = T * H * E
    r = _step(pp=4, v=1, m=8).ranks
    for k, rank in enumerate(r):
        a = rank.sizes.activations
        edges = (0 if k == 0 else 1) + (0 if k == 3 else 1)
        # (below: the first stage's embedding side; a later one's rotary cos and sin)
        others = (rank.micro_batches - 1) * (sum(a.per_block) + a.below)
        assert a.held - others == rank.micro_batches * edges * edge


def test_deepspeed_pipeline_has_no_edge_term():
    r = _step(pp=4, v=1, m=8, strategy="zero1").ranks[1]
    a = r.sizes.activations
    assert a.held == (r.micro_batches - 1) * sum(a.per_block)


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"pp": 1, "pp_chunks": 2}, "add --pp 2 or more"),
        ({"pp": 4, "pp_chunks": 2, "strategy": "zero1"}, "1F1B only"),
        ({"pp": 4, "pp_chunks": 3, "grad_accum": 8}, "equal chunks"),
        ({"pp": 4, "pp_chunks": 2, "grad_accum": 6}, "multiple of the 4 stages"),
        (
            {"pp": 4, "pp_chunks": 2, "grad_accum": 8, "method": "freeze", "trainable_layers": 4},
            "blocks all train alike",
        ),
    ],
)
def test_refusals(kw, words):
    kw.setdefault("strategy", "colossalai-zero1")
    kw.setdefault("method", "full")
    with pytest.raises((InvalidInputError, ValueError), match=words):
        estimate("llama2-7b", precision="bf16", gpus=8, **kw)


def test_emit_interleaved():
    est = estimate(
        "llama2-7b", method="full", precision="bf16", gpus=8, strategy="colossalai-zero1",
        pp=4, pp_chunks=2, grad_accum=8,
    )  # fmt: skip
    name, args = _plugin_call(emit_config(est, "colossalai"))
    assert set(args) <= PLUGIN_ARGUMENTS[name]
    assert args["pp_style"] == "interleaved" and args["num_model_chunks"] == 2
