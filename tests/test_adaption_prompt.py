"""peft's adaption prompt (--method adaption-prompt): its counts against peft's own, what
each gated attention keeps for backward against what torch saves on peft's module (CPU),
and the runs it refuses. The whole step is in the accuracy cases (tests/accuracy/cases.py
_adaption_prompt)."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest

from ftmem import estimate
from ftmem.adapters.adaption_prompt import AdaptionPrompt
from ftmem.methods import plan_method
from ftmem.ops.context import LayerContext
from ftmem.run import RunConfig
from tests.conftest import tiny
from tests.test_peft_methods import assert_counts_match_peft, one_sentence

AP = {"method": "adaption-prompt"}


@pytest.mark.parametrize("family", ["llama", "mistral", "gpt2"])
@pytest.mark.parametrize("extra", [{}, {"adapter_layers": 1, "adapter_prompt_length": 3}])
def test_counts_are_peft_own(family: str, extra: dict) -> None:
    assert_counts_match_peft(family, {**AP, **extra})


def test_llama2_7b_by_hand() -> None:
    """peft's LLaMA-Adapter example (adapter_len 10, adapter_layers 30): per gated block
    a 10 × 4096 prompt and a one-element gate, 30 × (10 × 4096 + 1) = 1,228,830 trained;
    bf16 like the base (peft builds them in q_proj's dtype), so their gradients are
    2 bytes each."""
    est = estimate("llama2-7b", method="adaption-prompt", adapter_layers=30)
    assert est.model.n_trainable_params == 1_228_830
    assert est.memory.gradients_bytes == 1_228_830 * 2


def _saved_per_gated_block(family: str, run: RunConfig) -> list[int]:
    """Bytes of the storages each peft AdaptedAttention saves for backward after its
    wrapped attention returns (the prompt's part) and nothing saved before, in block
    order, measured with saved_tensors_hooks on the model measure.build makes (the
    parameters left out)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from peft.tuners.adaption_prompt.layer import AdaptedAttention, AdaptedAttentionGPT

    from ftmem.measure.build import build_model

    arch = tiny(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(arch, run).model
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    current: list[int | None] = [None]
    wrapped = [m for m in model.modules() if isinstance(m, AdaptedAttention | AdaptedAttentionGPT)]
    for i, module in enumerate(wrapped):
        inner = module.model.forward

        def inner_forward(*args, _inner=inner, _i=i, **kwargs):
            current[0] = None
            out = _inner(*args, **kwargs)
            current[0] = _i  # what follows is the prompt's attention
            return out

        module.model.forward = inner_forward
        module.register_forward_hook(lambda *_: current.__setitem__(0, None))
    seen: set[int] = set()  # (every storage saved so far: the rotary tables, the norm's
    per_block = [0] * len(wrapped)  # output, saved by the attention first, are not new)

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if current[0] is not None and ptr not in params and ptr not in seen:
            per_block[current[0]] += t.untyped_storage().nbytes()
        seen.add(ptr)
        return t

    ids = torch.randint(0, arch.vocab_size, (run.batch_size, run.seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return per_block


@pytest.mark.parametrize(
    ("family", "precision", "batch"),
    [
        ("llama", "bf16", 3),
        ("llama", "fp32", 3),
        ("mistral", "bf16", 3),  # (grouped keys: repeat_interleave's copy, unsaved)
        ("gpt2", "bf16", 3),
        ("gpt2", "bf16", 1),  # (q a view of c_attn's whole output)
    ],
)
def test_each_gated_attention_keeps_what_the_estimate_says(
    family: str, precision: str, batch: int
) -> None:
    run = RunConfig(
        **AP, precision=precision, batch_size=batch, seq_len=20, device="cpu",
        adapter_prompt_length=6,
    )  # fmt: skip
    arch = tiny(family)
    ctx = LayerContext(arch, run, plan_method(arch, run), batch * 20)
    measured = _saved_per_gated_block(family, run)
    # the lowest gated block's input needs no gradient (nothing below trains): its q
    # needs none, so its keys stay unsaved; the block above keeps them
    expected = [
        sum(s.nbytes for s in AdaptionPrompt.saved(ctx, q_grad)) for q_grad in (False, True)
    ]
    assert measured == expected


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["qwen2.5-7b"], "runs on Llama, Mistral and GPT-2 models only"),
        (["llava-1.5-7b"], "is modelled on text-only models; LLaVA-1.5-7B is an image-text"),
        (["mistral-nemo-12b"], "hidden size (5120) is not heads × head_dim (32 × 128)"),
        (["llama2-7b", "--adapter-layers", "33"], "--adapter-layers 33 is more than"),
        (["llama2-7b", "--adapter-start-layer", "3"], "--adapter-start-layer only applies"),
        (["llama2-7b", "--precision", "bf16-mixed"], "Adaption prompt under autocast"),
        (["llama2-7b", "--quant", "nf4"], "--quant only applies to qlora"),
        (["llama2-7b", "--gpus", "2", "--tp", "2"], "modelled on data-parallel ranks"),
        (["llama2-7b", "--gpus", "2", "--pp", "2"], "drop --tp, --pp and --cp"),
        (["llama2-7b", "--framework", "litgpt"], "has no --method adaption-prompt"),
    ],
)
def test_refusals_are_one_sentence(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = one_sentence(["estimate", args[0], "--method", "adaption-prompt", *args[1:]], capsys)
    assert said in err


def test_litgpt_adapter_elsewhere_points_at_peft_own(capsys: pytest.CaptureFixture[str]) -> None:
    """A user who asks for LLaMA-Adapter under a transformers framework is sent to the
    peft spelling."""
    err = one_sentence(["estimate", "llama2-7b", "--method", "llama-adapter"], capsys)
    assert "use --method adaption-prompt, peft's adaption_prompt" in err


def test_live_peft_adaption_prompt_model_is_read() -> None:
    """A peft adaption-prompt model handed to the live integration reads as --method
    adaption-prompt with its adapter_len and adapter_layers."""
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from ftmem.integrations.live import read_run
    from tests.test_integrations_hf import tiny_llama

    args = SimpleNamespace(per_device_train_batch_size=2, gradient_accumulation_steps=1)
    config = peft.AdaptionPromptConfig(adapter_len=4, adapter_layers=1, task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(tiny_llama(), config)
    s = read_run(model, args, given={"seq_len": 16}).settings
    got = (s["method"], s["adapter_prompt_length"], s["adapter_layers"])
    assert got == ("adaption-prompt", 4, 1)
