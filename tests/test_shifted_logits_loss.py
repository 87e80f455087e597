"""transformers 4.46-4.48's ForCausalLMLoss: the logits shifted, not the labels.

The source (4.46.0, 4.48.1 and 4.48.3 loss/loss_utils.py:32-48): ``logits = logits.float()``
(T·V·4), ``shift_logits = logits[..., :-1, :].contiguous()`` (an fp32 copy of the R = T - b
shifted rows), cross_entropy over them (its fp32 log-softmax, R·V·4, saved), while the
model's forward still names its 16-bit logits (4.48.1 models/mistral/modeling_mistral.py
:848-860). 4.49.0 pads the labels and takes the unshifted logits: no copy, T rows.

The always-run tests write the bytes from those lines by hand; the opt-in one runs
tests/transformers4_loss_probe.py under the real 4.48.1 and 4.49.0 (unpacked wheels named
by FTMEM_TRANSFORMERS4_SITES, skipped when absent: CI has no network) and compares the
vocabulary-wide tensors live at the forward's and the backward's largest moments with
ftmem's loss moments.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ftmem.arch import Architecture
from ftmem.estimate import estimate_step
from ftmem.ops import loss_requests
from ftmem.ops.loss import Loss
from ftmem.presets import get_model
from ftmem.profiles import framework_run
from ftmem.run import RunConfig
from ftmem.versions import head_upcasts, masked_shift, shifted_logits_loss
from tests.transformers4_sites import run_probe

FP32, BF16, INT64 = 4, 2, 8
B, S, V = 3, 40, 2000  # the probe's step: a vocabulary that dwarfs the tiny model
T, R = B * S, B * S - B


def mistral() -> Architecture:
    """The probe's tiny Mistral (untied head)."""
    return Architecture(
        name="tiny-mistral",
        family="mistral",
        vocab_size=V,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
    )


def run(version: str | None, **settings: object) -> RunConfig:
    base: dict[str, object] = dict(method="lora", precision="bf16", batch_size=B, seq_len=S)
    return RunConfig(**(base | settings), device="cpu", transformers_version=version)


def test_the_releases_that_shift_the_logits():
    for version in ("4.46.0", "4.47.1", "4.48.1", "4.48.3"):
        assert shifted_logits_loss(run(version))
        assert Loss.kind(run(version)) == "upcast-shifted"
    for version in ("4.45.2", "4.49.0", "5.24.0", None):
        assert not shifted_logits_loss(run(version))
        assert Loss.kind(run(version)) == "standard"
    # the model's own shifted loss and a preference objective's are not ForCausalLMLoss
    assert Loss.kind(run("4.48.1", loss="shifted")) == "shifted"
    assert not shifted_logits_loss(run("4.48.1", objective="dpo", loss="standard"))


def test_forward_moment_holds_logits_upcast_and_shifted_copy():
    """Beyond the saved log-softmax: T·V·2 + T·V·4 + R·V·4 (4.48.1) against T·V·2 + T·V·4
    (4.49.0); the cross-entropy takes R rows against T."""
    arch, e = mistral(), BF16
    assert Loss.forward_transient(arch, run("4.48.1"), e, T) == T * V * (e + FP32) + R * V * FP32
    assert Loss.forward_transient(arch, run("4.49.0"), e, T) == T * V * (e + FP32)
    assert Loss.rows(run("4.48.1")) == R
    assert Loss.rows(run("4.49.0")) == T


def test_the_step_moves_by_the_shifted_copy():
    """The whole step on the CPU: the forward's peak (the loss's) rises by the shifted
    copy less the B rows the log-softmax and labels no longer have; the backward's (nll's
    and log_softmax's gradients beside the saved log-softmax: 3 x rows x V x 4) falls
    by those rows."""
    new, old = (estimate_step(mistral(), run(v)).memory.phases for v in ("4.48.1", "4.49.0"))
    assert new.forward - old.forward == R * V * FP32 - B * V * FP32 - B * INT64
    assert new.backward - old.backward == -3 * B * V * FP32 - B * INT64


def test_request_program_keeps_the_logits():
    """The allocator replay's program: the 16-bit logits live beside their fp32 copy, the
    shifted copy and the log-softmax; the model returns the 16-bit logits (what a loop that
    holds the output keeps)."""
    program = loss_requests._upcast_shifted_loss(T, R, V, BF16, hold=True, keep_logits=True)
    forward, _ = program.phases()
    sizes: list[int] = []
    peak = loss_requests.peak_of(forward, sizes)
    assert peak == T * V * (BF16 + FP32) + 2 * R * V * FP32 + R * INT64 + FP32
    assert sizes[program.output] == T * V * BF16


@pytest.mark.parametrize("version", ["4.47.1", "4.48.1", "4.49.0"])
def test_vocabulary_wide_tensors_under_the_real_release(version):
    """What the probe's step holds that is as wide as the vocabulary, at each phase's
    largest moment, against ftmem's loss moments (the saved log-softmax R·V·4 beside the
    forward's transient; beside the backward's gradients). 4.47.1: Mistral's own
    upcast-shifted loss, its bf16 logits freed at the upcast (measured: fp32 logits,
    shifted copy and log-softmax alone at the forward's peak)."""
    probe = Path(__file__).with_name("transformers4_loss_probe.py")
    got = run_probe(version, probe, str(B), str(S), str(V))
    arch = mistral()
    cfg = framework_run(arch, run(version))
    rows = Loss.rows(cfg)
    log_softmax = rows * V * FP32
    forward = Loss.forward_transient(arch, cfg, BF16, T) + log_softmax
    assert sum(item[-1] for item in got["forward"]) == forward
    backward = log_softmax + (
        Loss.upcast_shifted_backward(cfg, V, BF16, T) if rows == R else 2 * T * V * FP32
    )
    assert sum(item[-1] for item in got["backward"]) == backward
    shifted = [item for item in got["forward"] if item[0] == [B, S - 1, V]]
    assert bool(shifted) == (rows == R)


# the families whose forward upcasts, then shifts, before 4.46 and only then
LLAMA_LIKE = ("llama", "mixtral", "gemma", "gemma2", "phi", "phi3", "qwen2", "cohere", "olmoe")

# (family, release) -> the loss its causal LM runs there, read from the releases' own
# lines (ftmem.versions.OWN_SHIFTED_LOSS, GPT_NEOX_OWN_SHIFTED_LOSS, GRANITE_ and
# MISTRAL_OWN_UPCAST_LOSS, STARCODER2_OWN_UPCAST_LOSS): GPT-2, Falcon, GPTBigCode and
# StableLM shift a copy of their 16-bit logits in every release before 4.48.3 (4.36.2,
# 4.40.0, 4.45.2, 4.46.0-4.48.2 read), GPT-NeoX before 4.49.0; Granite and Mistral upcast,
# then shift, in 4.46.0 and 4.47.1 (StarCoder2 in 4.46.x) and call self.loss_function
# from 4.48.0 (4.47.0). "standard": --loss standard stays the run's loss.
OWN_LOSSES = [
    *[(f, v, "shifted") for f in ("gpt2", "falcon", "gpt_bigcode", "stablelm") for v in
      ("4.36.2", "4.40.0", "4.45.2", "4.46.0", "4.47.1", "4.48.1", "4.48.2")],
    *[(f, "4.48.3", "standard") for f in ("gpt2", "falcon", "gpt_bigcode", "stablelm")],
    *[("gpt_neox", v, "shifted") for v in ("4.40.0", "4.45.2", "4.47.1", "4.48.3")],
    *[(f, "4.49.0", "standard") for f in ("gpt2", "gpt_neox", "falcon", "stablelm")],
    *[(f, v, "upcast-shifted") for f in ("granite", "mistral") for v in ("4.45.2", "4.46.0", "4.47.1")],
    *[(f, "4.48.1", "standard") for f in ("granite", "mistral")],
    *[("starcoder2", v, "upcast-shifted") for v in ("4.40.0", "4.45.2", "4.46.3")],
    ("starcoder2", "4.47.0", "standard"),
    ("llama", "4.47.1", "standard"),
    # before 4.46 the Llama-like families upcast, then shift, in their own forward
    # (ftmem.versions.UPCAST_IN_FORWARD_LOSS: llama 4.36.2 :1200-1205, 4.40.0 :1228-1233,
    # 4.45.2 :1214-1221; the others' lines there), and call self.loss_function from 4.46.0
    *[(f, v, "upcast-shifted") for f in LLAMA_LIKE for v in ("4.36.2", "4.40.0", "4.45.2")],
    *[(f, v, "standard") for f in LLAMA_LIKE for v in ("4.46.0", "4.48.1", "4.49.0")],
]  # fmt: skip


@pytest.mark.parametrize(("family", "version", "loss"), OWN_LOSSES)
def test_models_that_keep_their_own_loss_in_those_releases(family, version, loss):
    """ForCausalLMLoss's shifted fp32 copy only where the model calls it."""
    from tests.conftest import tiny

    arch = tiny(family)
    resolved = framework_run(arch, run(version))
    assert resolved.loss == loss
    # ForCausalLMLoss's 16-bit logits beside the fp32 copy: 4.46-4.48's standard loss
    in_releases = version.startswith(("4.46.", "4.47.", "4.48."))
    assert Loss.keeps_logits(resolved) == (loss == "standard" and in_releases)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "falcon", "gpt_bigcode", "stablelm"])
@pytest.mark.parametrize("version", [None, "4.40.0"])
def test_upcast_shifted_is_the_16_bit_shifted_loss_where_the_forward_never_upcast(family, version):
    """--loss upcast-shifted names transformers < 4.46's loss in the model's forward: for
    the families whose forward never upcast (GPT-2's ``lm_logits[..., :-1, :]
    .contiguous()`` into CrossEntropyLoss, 4.40.0 models/gpt2/modeling_gpt2.py:1334-1338)
    that is the 16-bit shifted loss; the Llama-like families keep the upcast one, and a
    loop's own (torchtune 0.1's recipe) is not the model's."""
    from tests.conftest import tiny

    assert framework_run(tiny(family), run(version, loss="upcast-shifted")).loss == "shifted"
    llama = framework_run(tiny("llama"), run(version, loss="upcast-shifted"))
    assert llama.loss == "upcast-shifted"
    if version is None:  # (torchtune runs its own model code: no transformers release)
        loop = run(version, loss="upcast-shifted", framework="torchtune")
        assert framework_run(tiny(family), loop).loss == "upcast-shifted"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_t5_keeps_its_own_unshifted_loss(method):
    """T5ForConditionalGeneration computes its own loss in every 4.x release, never
    ForCausalLMLoss: ``CrossEntropyLoss(ignore_index=-100)`` on
    ``lm_logits.view(-1, lm_logits.size(-1))``, unshifted and in the logits' dtype (4.46.0,
    4.47.1 and 4.48.3 models/t5/modeling_t5.py:1924-1927; its decoder's input is the
    labels shifted right instead). The encoder-decoder step takes its loss over every
    decoder position in the logits' dtype (seq2seq.py) whatever the release: the same
    estimate at 4.47.1 as without a release."""
    arch = get_model("t5-small")
    settings = dict(method=method, seq_len=64, target_len=32)
    at_447 = estimate_step(arch, run("4.47.1", **settings)).memory
    assert at_447 == estimate_step(arch, run(None, **settings)).memory
    assert framework_run(arch, run("4.47.1", **settings)).loss == "standard"


# (preset, release, the loss its forward computes) read in the wheels (versions.py,
# VISION_OWN_LOSS): LLaVA selects fp32 rows before 4.46 (its Llama upcasts whatever the
# labels), 16-bit ones from 4.46 until 4.52.1's self.loss_function; Qwen2-VL upcasts and
# shifts until 4.52; Mllama's fp32 head output is shifted until 4.49's ForCausalLMLoss.
IMAGE_TEXT_LOSSES = [
    ("llava-1.5-7b", "4.36.2", "upcast-shifted"),
    ("llava-1.5-7b", "4.40.0", "upcast-shifted"),
    ("llava-1.5-7b", "4.45.2", "upcast-shifted"),
    ("llava-1.5-7b", "4.46.0", "shifted"),
    ("llava-1.5-7b", "4.47.1", "shifted"),
    ("llava-1.5-7b", "4.48.3", "shifted"),
    ("llava-1.5-7b", "4.49.0", "shifted"),
    ("llava-1.5-7b", "4.51.0", "shifted"),
    ("llava-1.5-7b", "4.52.1", "standard"),
    ("qwen2-vl-2b", "4.45.2", "upcast-shifted"),
    ("qwen2-vl-2b", "4.48.1", "upcast-shifted"),
    ("qwen2-vl-2b", "4.49.0", "upcast-shifted"),
    ("qwen2-vl-2b", "4.51.0", "upcast-shifted"),
    ("qwen2-vl-2b", "4.52.1", "standard"),
    ("llama3.2-11b-vision", "4.45.2", "upcast-shifted"),
    ("llama3.2-11b-vision", "4.48.1", "upcast-shifted"),
    ("llama3.2-11b-vision", "4.49.0", "standard"),
]


@pytest.mark.parametrize(("preset", "version", "loss"), IMAGE_TEXT_LOSSES)
def test_image_text_models_keep_their_own_loss(preset, version, loss):
    """LLaVA's, Qwen2-VL's and Mllama's forwards compute their own loss (versions.py,
    VISION_OWN_LOSS); no release given: the current standard loss."""
    arch = get_model(preset)
    assert framework_run(arch, run(version)).loss == loss
    assert framework_run(arch, run(None)).loss == "standard"
    # a preference objective reads the logits itself, and an explicit loss is the user's
    assert framework_run(arch, run(version, objective="dpo")).loss == "standard"
    assert framework_run(arch, run(version, loss="chunked")).loss == "chunked"


@pytest.mark.parametrize(
    ("version", "loss"), [("4.49.0", "standard"), ("4.50.0", "shifted"), ("4.52.1", "standard")]
)
def test_mistral3_is_llavas_16_bit_selection(version, loss):
    """Mistral 3 (4.50.0 on) runs LLaVA's 4.46+ loss until 4.52.1's self.loss_function
    (models/mistral3/modeling_mistral3.py 4.50.0 :497-501); before 4.50 it did not exist."""
    llava = get_model("llava-1.5-7b")
    assert llava.vision is not None
    arch = llava.model_copy(
        update={"vision": llava.vision.model_copy(update={"projector": "mistral3"})}
    )
    assert framework_run(arch, run(version)).loss == loss


def test_llava_over_a_family_that_never_upcast_selects_16_bit_rows():
    """Before 4.46 LLaVA's rows are fp32 because its Llama upcast; over a language model
    whose forward never upcast (GPT-2's, OWN_SHIFTED_LOSS) they stay 16-bit."""
    llava = get_model("llava-1.5-7b")
    gpt2_text = llava.model_copy(update={"family": "gpt2"})
    assert framework_run(gpt2_text, run("4.40.0")).loss == "shifted"
    assert framework_run(llava, run("4.40.0")).loss == "upcast-shifted"


def test_gpt2_step_is_its_own_shifted_loss():
    """GPT-2 under 4.48.1: its forward's loss holds the bf16 logits (T·V·2), the contiguous
    bf16 copy of the shifted rows (R·V·2) and saves cross_entropy's bf16 log-softmax (R·V·2):
    no fp32 copy (4.48.1 models/gpt2/modeling_gpt2.py:1088-1095); the whole step as the
    shifted loss's."""
    from tests.conftest import tiny

    arch = tiny("gpt2", vocab_size=V)
    cfg = framework_run(arch, run("4.48.1"))
    assert Loss.forward_transient(arch, cfg, BF16, T) == T * V * BF16 + R * V * BF16
    assert Loss.shifted_log_softmax_bytes(cfg, BF16) == BF16
    own = estimate_step(arch, run("4.48.1")).memory.phases
    assert own == estimate_step(arch, run("4.48.1", loss="shifted")).memory.phases


@pytest.mark.parametrize("version", ["4.40.0", "4.47.1", "4.48.1"])
def test_gpt2_vocabulary_wide_tensors_under_the_real_release(version):
    """The probe's GPT-2 under a real release before 4.48.3: the vocabulary-wide tensors
    at the forward's and the backward's largest moments against ftmem's shifted loss (the
    transients beside the saved bf16 log-softmax; in backward its two gradients,
    Loss.shifted_backward, measured 3·R·V·2 in all)."""
    from tests.conftest import tiny

    probe = Path(__file__).with_name("transformers4_loss_probe.py")
    got = run_probe(version, probe, str(B), str(S), str(V), "gpt2")
    arch = tiny("gpt2", vocab_size=V)
    cfg = framework_run(arch, run(version))
    assert cfg.loss == "shifted"
    forward = Loss.forward_transient(arch, cfg, BF16, T) + R * V * BF16
    assert sum(item[-1] for item in got["forward"]) == forward
    assert {item[1] for item in got["forward"]} == {"torch.bfloat16"}
    backward = Loss.shifted_backward(cfg, V, BF16, T) + R * V * BF16
    assert sum(item[-1] for item in got["backward"]) == backward


def test_an_explicit_loss_stays_the_users_before_446():
    """--loss chunked, fused, shifted: the user's choice, whatever the release; the own
    loss replaces the default (``standard``) only."""
    from tests.conftest import tiny

    for loss in ("chunked", "fused", "shifted", "upcast-shifted"):
        assert framework_run(tiny("llama"), run("4.40.0", loss=loss)).loss == loss
    # a preference objective reads the logits itself
    assert framework_run(tiny("llama"), run("4.40.0", objective="dpo")).loss == "standard"


# (family, release) measured under the real wheel: the releases each family's causal LM
# exists in among 4.36.2, 4.40.0 and 4.45.2 (Cohere's logit scale, 16-bit before the
# upcast in 4.40.0 and fp32 after it in 4.45.2, is no part of either largest moment)
UPCAST_MEASURED = [
    ("llama", "4.36.2"), ("mixtral", "4.36.2"), ("phi", "4.36.2"),
    ("llama", "4.40.0"), ("gemma", "4.40.0"), ("phi", "4.40.0"), ("qwen2", "4.40.0"),
    ("starcoder2", "4.40.0"), ("mistral", "4.40.0"), ("cohere", "4.40.0"),
    ("llama", "4.45.2"), ("phi3", "4.45.2"), ("qwen2", "4.45.2"), ("olmoe", "4.45.2"),
    ("cohere", "4.45.2"), ("gemma2", "4.45.2"),
]  # fmt: skip


@pytest.mark.parametrize(("family", "version"), UPCAST_MEASURED)
def test_upcast_shifted_vocabulary_wide_tensors_under_the_real_release(family, version):
    """The probe's tiny causal LM of ``family`` under a real release before 4.46, with the
    default loss: at the forward's largest moment the fp32 logits (T·V·4), their shifted
    copy and the saved log-softmax (R·V·4 each), no 16-bit logits (dead at the upcast);
    at the backward's, 3·R·V·4 (Loss.upcast_shifted_backward beside the log-softmax).
    Both against ftmem's loss moments for the run at that release."""
    from tests.conftest import tiny

    probe = Path(__file__).with_name("transformers4_loss_probe.py")
    got = run_probe(version, probe, str(B), str(S), str(V), family)
    arch = tiny(family, vocab_size=V)
    cfg = framework_run(arch, run(version))
    assert cfg.loss == "upcast-shifted"
    # (Phi's LM head bias, a parameter of V values, is no activation)
    fwd = [item for item in got["forward"] if len(item[0]) > 1]
    bwd = [item for item in got["backward"] if len(item[0]) > 1]
    # Gemma 2 soft-caps the 16-bit logits before the upcast: tanh's output saved (T·V·2)
    softcap = T * V * BF16 if arch.final_logit_softcapping else 0
    assert {item[1] for item in fwd} == {"torch.float32"} | (
        {"torch.bfloat16"} if softcap else set()
    )
    saved = R * V * FP32 + softcap  # the log-softmax, the tanh
    assert sum(item[-1] for item in fwd) == Loss.forward_transient(arch, cfg, BF16, T) + saved
    backward = Loss.upcast_shifted_backward(cfg, V, BF16, T) + saved
    assert sum(item[-1] for item in bwd) == backward


@pytest.mark.parametrize("batch", [B, 1])
@pytest.mark.parametrize("version", ["4.40.0", "4.45.2", "4.47.1"])
def test_llava_vocabulary_wide_tensors_under_the_real_release(version, batch):
    """The probe's tiny LLaVA (one 4-feature image a sequence: ``batch`` x 43 positions)
    under a real release, with an all-ones attention mask (its boolean selection takes
    every shifted row, R = T − b): before 4.46 the fp32 logits of its Llama (T·V·4, no
    bf16 ones), the fp32 selected rows and the log-softmax (R·V·4 each) at the forward's
    peak, 3·R·V·4 in backward: ftmem's upcast-shifted loss; at 4.47.1 the same in bf16
    (no autocast on the CPU): its shifted loss. One sequence's selection is a copy too
    (an advanced index always allocates; versions.masked_shift)."""
    probe = Path(__file__).with_name("transformers4_loss_probe.py")
    got = run_probe(version, probe, str(batch), str(S), str(V), "llava")
    seq = S + 3  # the image token's place holds its 4 features
    t, r = batch * seq, batch * seq - batch
    llava = get_model("llava-1.5-7b").model_copy(update={"vocab_size": V})
    cfg = framework_run(llava, run(version, seq_len=seq, batch_size=batch))
    fwd = sum(item[-1] for item in got["forward"])
    bwd = sum(item[-1] for item in got["backward"])
    selected = [item for item in got["forward"] if item[0] == [r, V]]
    assert len(selected) == 2  # the selected rows and their log-softmax, at either batch
    if version < "4.46":
        assert cfg.loss == "upcast-shifted"
        assert {item[1] for item in got["forward"]} == {"torch.float32"}
        assert fwd == Loss.forward_transient(llava, cfg, BF16, t) + r * V * FP32
        assert bwd == Loss.upcast_shifted_backward(cfg, V, BF16, t) + r * V * FP32
    else:
        assert cfg.loss == "shifted"
        assert {item[1] for item in got["forward"]} == {"torch.bfloat16"}
        assert fwd == Loss.forward_transient(llava, cfg, BF16, t) + r * V * BF16
        assert bwd == Loss.shifted_backward(cfg, V, BF16, t) + r * V * BF16


@pytest.mark.parametrize(
    ("preset", "version", "masked"),
    [
        ("llava-1.5-7b", "4.40.0", True),
        ("llava-1.5-7b", "4.47.1", True),
        ("llava-1.5-7b", "4.52.1", False),  # self.loss_function: no selection
        ("llava-1.5-7b", None, False),
        ("qwen2-vl-2b", "4.47.1", False),  # upcast, then a plain slice
        ("llama3.2-11b-vision", "4.45.2", False),  # a plain slice of the fp32 logits
    ],
)
def test_one_sequence_keeps_its_selected_copy(preset, version, masked):
    """LLaVA's ``logits[..., :-1, :][shift_attention_mask != 0]`` (llava 4.45.2 :539-541,
    4.47.1 :567-576) is an advanced index: a new tensor of the R = T − 1 selected rows
    for one sequence too, where a plain slice's ``contiguous()`` returns a view
    (Loss.shifted_copy). The forward's loss moment for b = 1, written from those lines:
    before 4.46 the fp32 logits and the fp32 rows (T·V·4 + R·V·4, the bf16 logits dead
    at the upcast: the cast moment T·V·(2 + 4) less the saved item is smaller); at 4.47.1
    the bf16 logits and the bf16 rows. The models that slice keep no copy at b = 1."""
    arch = get_model(preset).model_copy(update={"vocab_size": V})
    cfg = framework_run(arch, run(version, batch_size=1, seq_len=S))
    t, r = S, S - 1
    assert masked_shift(arch, cfg) == masked
    got = Loss.forward_transient(arch, cfg, BF16, t)
    if cfg.loss == "upcast-shifted":
        assert got == t * V * FP32 + (r * V * FP32 if masked else 0)
    elif cfg.loss == "shifted":
        assert got == t * V * BF16 + (r * V * BF16 if masked else 0)
    # the allocator replay's program: the cast (bf16 and fp32 logits), then the fp32
    # logits beside the selected rows, the log-softmax and total_weight (one sequence's
    # labels a view)
    program = loss_requests._upcast_shifted_loss(t, r, V, BF16, masked=masked)
    forward, _ = program.phases()
    copy = r * V * FP32 if masked else 0
    after = t * V * FP32 + copy + r * V * FP32 + FP32
    assert loss_requests.peak_of(forward, []) == max(t * V * (BF16 + FP32), after)


@pytest.mark.parametrize(
    ("version", "loss"),
    [
        ("4.49.0", "standard"),  # no Gemma 3 yet
        ("4.50.0", "standard"),  # its 16-bit logits beside the upcast: not modelled
        ("4.51.0", "standard"),
        ("4.52.1", "upcast-shifted"),
        ("4.53.0", "upcast-shifted"),
        ("4.57.0", "upcast-shifted"),
    ],
)
def test_gemma3_upcasts_and_selects_from_452(version, loss):
    """Gemma 3's forward from 4.52 (gemma3/modeling_gemma3.py 4.52.1 :1365-1377, 4.53.0
    :1103-1116, 4.57.0 :1120-1133): ``logits = self.lm_head(...)``, ``logits =
    logits.float()`` (the bf16 logits die as the name is rebound), the attended shifted
    rows selected by a boolean index (a copy at any batch). For one sequence of T
    positions (R = T − 1), beyond the saved fp32 log-softmax: the fp32 logits and the
    fp32 rows, T·V·4 + R·V·4."""
    llava = get_model("llava-1.5-7b").model_copy(update={"vocab_size": V})
    assert llava.vision is not None
    arch = llava.model_copy(
        update={"vision": llava.vision.model_copy(update={"projector": "pooled"})}
    )
    cfg = framework_run(arch, run(version, batch_size=1, seq_len=S))
    assert cfg.loss == loss
    assert masked_shift(arch, cfg) == (loss == "upcast-shifted")
    if loss == "upcast-shifted":
        t, r = S, S - 1
        assert Loss.forward_transient(arch, cfg, BF16, t) == t * V * FP32 + r * V * FP32


@pytest.mark.parametrize(
    ("version", "fp32_head"), [("4.49.0", True), ("4.51.0", True), ("4.52.1", False)]
)
def test_mllama_standard_loss_on_its_fp32_head_output(version, fp32_head):
    """Mllama's language model upcasts in its head (``self.lm_head(...).float()``,
    mllama/modeling_mllama.py 4.49.0 :1963), and 4.49-4.51 hand those fp32 logits to
    ForCausalLMLoss, whose ``logits.float()`` copies nothing (versions.head_upcasts): at
    the forward's largest moment the fp32 logits beside the saved log-softmax (T·V·4
    beyond it), no 16-bit ones; the cast (T·V·(2 + 4)) precedes the log-softmax and is
    smaller. 4.52.1's own 16-bit head: the standard loss's T·V·(2 + 4)."""
    arch = get_model("llama3.2-11b-vision").model_copy(update={"vocab_size": V})
    cfg = framework_run(arch, run(version))
    assert cfg.loss == "standard"
    assert head_upcasts(arch, cfg) == fp32_head
    got = Loss.forward_transient(arch, cfg, BF16, T)
    assert got == (T * V * FP32 if fp32_head else T * V * (BF16 + FP32))
    # the allocator replay's program: the cast, then the fp32 logits, the labels' copy,
    # the log-softmax and total_weight
    program = loss_requests._causal_lm_loss(T, V, BF16, fp32_head=fp32_head)
    forward, _ = program.phases()
    sizes: list[int] = []
    after = T * V * FP32 * 2 + T * INT64 + FP32 + (0 if fp32_head else T * V * BF16)
    assert loss_requests.peak_of(forward, sizes) == max(T * V * (BF16 + FP32), after)
    # the model returns the fp32 logits (a loop that holds its output keeps them)
    held = loss_requests._causal_lm_loss(T, V, BF16, hold=True, fp32_head=fp32_head)
    loss_requests.peak_of(held.phases()[0], sizes := [])
    assert sizes[held.output] == T * V * (FP32 if fp32_head else BF16)


def test_mllama_vocabulary_wide_tensors_under_4_49():
    """The probe's MllamaForCausalLM (what MllamaForConditionalGeneration runs the loss
    through in 4.49.0) under the real release: fp32 logits and log-softmax only at the
    forward's peak (T·V·4 each), the log-softmax and two fp32 gradients in backward."""
    probe = Path(__file__).with_name("transformers4_loss_probe.py")
    got = run_probe("4.49.0", probe, str(B), str(S), str(V), "mllama")
    arch = get_model("llama3.2-11b-vision").model_copy(update={"vocab_size": V})
    cfg = framework_run(arch, run("4.49.0"))
    log_softmax = T * V * FP32
    assert {item[1] for item in got["forward"]} == {"torch.float32"}
    assert sum(item[-1] for item in got["forward"]) == (
        Loss.forward_transient(arch, cfg, BF16, T) + log_softmax
    )
    assert sum(item[-1] for item in got["backward"]) == log_softmax + 2 * T * V * FP32


@pytest.mark.parametrize("batch", [B, 1])
def test_gemma3_vocabulary_wide_tensors_under_4_53(batch):
    """The probe's tiny Gemma 3 (LLaVA's tiny tower as SigLIP, 4 image tokens: ``batch`` x
    43 positions, all-ones attention mask) under the real 4.53.0: the fp32 logits (no
    bf16 ones), the fp32 selected rows and the log-softmax at the forward's peak, 3·R·V·4
    in backward, the selected rows a copy for one sequence too: ftmem's upcast-shifted
    loss with the masked copy (versions.masked_shift)."""
    probe = Path(__file__).with_name("transformers4_loss_probe.py")
    got = run_probe("4.53.0", probe, str(batch), str(S), str(V), "gemma3")
    seq = S + 3
    t, r = batch * seq, batch * seq - batch
    llava = get_model("llava-1.5-7b").model_copy(update={"vocab_size": V})
    assert llava.vision is not None
    arch = llava.model_copy(
        update={"vision": llava.vision.model_copy(update={"projector": "pooled"})}
    )
    cfg = framework_run(arch, run("4.53.0", seq_len=seq, batch_size=batch))
    assert cfg.loss == "upcast-shifted"
    assert {item[1] for item in got["forward"]} == {"torch.float32"}
    fwd = sum(item[-1] for item in got["forward"])
    assert fwd == Loss.forward_transient(arch, cfg, BF16, t) + r * V * FP32
    bwd = sum(item[-1] for item in got["backward"])
    assert bwd == Loss.upcast_shifted_backward(cfg, V, BF16, t) + r * V * FP32
