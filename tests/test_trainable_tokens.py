"""peft's trainable tokens: what trains, what the wrapped embedding keeps and holds, how it
is read and refused.

Trainable counts are checked against peft's own ``get_nb_trainable_parameters`` on tiny
untied models and against PEFT's MetaMathQA result for Llama-3.2-3B; memory against
measurement in tests/accuracy (cases ``method=trainable-tokens``) and one peft
TrainableTokensLayer around an nn.Embedding measured alone here.
"""

from __future__ import annotations

import dataclasses
import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

SETTINGS = [
    {"method": "trainable-tokens"},
    {"method": "trainable-tokens", "trainable_token_ids": "5"},
    {"method": "trainable-tokens", "trainable_token_ids": "7,3,250", "adapter_dtype": "bf16"},
]


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s.values())))
def test_counts_match_peft(family: str, settings: dict) -> None:
    assert_counts_match_peft(family, settings)


def test_llama_3_2_3b_count_is_the_published_one() -> None:
    """One delta row (h = 3072) per token id, bos and eos: 2 · 3072 = 6,144, the
    num_trainable_params of PEFT's trainable_tokens--llama-3.2-3B-sos+eos result
    (huggingface/peft@5d602fdbff04 method_comparison/MetaMathQA/results/); its total,
    3,212,755,968, is the base's plus 6,144 once (the tied head shares the embedding's
    delta: peft's tied_adapter)."""
    from ftmem.methods import plan_method
    from ftmem.run import RunConfig
    from ftmem.sources import resolve_model

    est = estimate("llama-3.2-3b", method="trainable-tokens", trainable_token_ids="128000,128001")
    assert est.model.n_trainable_params == 2 * 3072 == 6_144
    assert est.model.n_params + 6_144 == 3_212_755_968
    run = RunConfig(method="trainable-tokens", trainable_token_ids="128000,128001")
    assert plan_method(resolve_model("llama-3.2-3b"), run).n_params == 3_212_755_968


def _one_embedding(V: int, h: int, T: int, ids: list[int], base: str, adapter: str) -> dict:
    """One peft TrainableTokensLayer around an nn.Embedding, run alone on ftmem's
    live-storage tracker: what the forward keeps, its peak beyond them, the backward's."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from ftmem.measure.tracker import LiveBytesTracker

    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}
    model = torch.nn.Sequential()
    model.add_module("embed_tokens", torch.nn.Embedding(V, h))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(
            model.to(dt[base]),
            peft.TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=ids),
        )
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if "trainable_tokens" in name:
            t.data = t.data.to(dt[adapter])
    x = torch.randint(0, V, (2, T // 2))
    with LiveBytesTracker() as tracker:
        tracker.track(x, *model.parameters(), *model.buffers())
        start = tracker.current
        y = model(x)
        forward_peak, kept = (
            tracker.peak - start,
            tracker.current - start - T * h * (2 if base == "bf16" else 4),
        )
        grad = torch.ones_like(y)
        tracker.peak = before = tracker.current
        y.backward(grad)
        backward_peak = tracker.peak - before
    return dict(kept=kept, forward=forward_peak, backward=backward_peak)


@pytest.mark.parametrize(
    ("V", "h", "T", "ids"), [(300, 96, 64, [1, 2]), (512, 64, 32, [5, 9, 400])]
)
@pytest.mark.parametrize("dtypes", [("bf16", "fp32"), ("bf16", "bf16"), ("fp32", "fp32")])
def test_one_embedding_matches_its_measurement(
    V: int, h: int, T: int, ids: list[int], dtypes: tuple[str, str]
) -> None:
    """Kept: the index and, where the dtypes differ, delta's cast (trainable_tokens.saved;
    the ids are the caller's). Forward peak: the V × h copy and the output, beyond those
    (forward_moment, less the output counted as kept here). Backward peak, the output's
    gradient given: the dense V × h gradient and index_select's n rows (backward_moment,
    less the output's gradient, which the caller holds here) and the delta's gradient once
    cast, whichever is later."""
    from ftmem.adapters import trainable_tokens
    from ftmem.methods import plan_method
    from ftmem.run import RunConfig
    from tests.test_peft_methods import tiny

    base, adapter = dtypes
    got = _one_embedding(V, h, T, ids, base, adapter)
    arch = dataclasses.replace(tiny("llama"), vocab_size=V, hidden_size=h)
    spec = ",".join(map(str, ids))
    run = RunConfig(
        method="trainable-tokens", precision=base, adapter_dtype=adapter, trainable_token_ids=spec
    )
    plan = plan_method(arch, run)
    we = 2 if base == "bf16" else 4
    saved = sum(s.nbytes for s in trainable_tokens.saved(arch, run, plan))
    assert got["kept"] == saved
    assert got["forward"] == saved + trainable_tokens.forward_moment(arch, run, plan, T)
    assert got["backward"] == trainable_tokens.backward_moment(arch, run, plan, T) - T * h * we


def test_blocks_keep_what_prompt_tuning_keeps() -> None:
    """The embedding output needs a gradient: every block keeps what a frozen block with
    an input gradient keeps, as prompt tuning's one virtual token less (Llama-2-7B, 512
    tokens); beyond them the embedding's token ids (T int64, which prompt tuning's frozen
    embedding does not keep; its encoder keeps its one virtual token's id instead) and the
    trainable tokens' index (2 int64) and fp32 rows' bf16 cast (2 × 4096)."""
    T = 512
    tokens = estimate("llama2-7b", method="trainable-tokens", seq_len=T).memory
    prompt = estimate("llama2-7b", method="prompt-tuning", virtual_tokens=1, seq_len=T - 1)
    own = T * 8 - 8 + 2 * 8 + 2 * 4096 * 2
    assert tokens.activations_bytes == prompt.memory.activations_bytes + own


def test_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    tt = ["--method", "trainable-tokens"]
    cases = [
        (["--method", "lora", "--trainable-token-ids", "3"], "only applies to trainable-tokens"),
        ([*tt, "--trainable-token-ids", "0"], "takes a count from 1"),
        ([*tt, "--trainable-token-ids", "x"], "neither a count nor a list"),
        ([*tt, "--trainable-token-ids", "5,5"], "names a token id twice"),
        ([*tt, "--trainable-token-ids", "128000"], "has 32,000 tokens"),
        ([*tt, "--framework", "litgpt"], "has no --method trainable-tokens"),
    ]
    for args, expected in cases:
        assert expected in one_sentence(["estimate", "llama2-7b", *args], capsys)
    err = one_sentence(["estimate", "llama-3.2-3b", *tt, "--loss", "fused"], capsys)
    assert "tied head with --loss fused is not modelled" in err
    for model in ("deepseek-v3", "gpt-oss-20b", "gemma-2-9b", "gpt2"):
        err = one_sentence(["estimate", model, *tt], capsys)
        assert "is not modelled; use a Llama-, Mistral- or Qwen-like model" in err
    err = one_sentence(["estimate", "flan-t5-base", *tt], capsys)
    assert "is an encoder-decoder" in err


def test_live_peft_trainable_tokens_model_is_read() -> None:
    """A peft trainable-tokens model handed to the live integration reads as --method
    trainable-tokens with its token ids."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    for ids, spec in (([3, 9], "3,9"), ([4], "4,")):
        config = peft.TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=ids)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = peft.get_peft_model(tiny_llama(), config)
        s = read_run(model, args, given={"seq_len": 16}).settings
        assert (s["method"], s["trainable_token_ids"]) == ("trainable-tokens", spec)
