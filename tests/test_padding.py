"""--padding: pad tokens in the batch, marked by its attention_mask (ops/attention.padding_mask).

The truth: PyTorch on the CPU against transformers 5.24, tiny Llamas with GQA, MHA and MQA.
The same batch runs twice, once with every position attended and once with the last
sequence's last 5 positions padded (right padding), with use_cache=False as HF Trainer
(transformers 5.24 TrainingArguments.use_cache, False) and TRL's SFTTrainer
(trl@f2cd5771 sft_trainer.py compute_loss) call the model. What autograd saved and the
forward's and backward's peaks move by the same bytes, and the estimate's phases move
by them too. The hand derivation: per layer sdpa
keeps the additive mask, b·s·s in the compute dtype (torch converts the boolean mask per
call), and with GQA keys and values repeated to every query head (2·T·q·e) instead of
the kv heads' own (2·T·kv·e); one kv head repeats as a view, as many as the heads need no
repeat. Eager attention builds its float mask either way: nothing moves.
"""

from __future__ import annotations

import json

import pytest

from ftmem.api import run_config
from ftmem.arch import Architecture
from ftmem.dtypes import INDEX_BYTES
from ftmem.phases import find_peak
from ftmem.sources import architecture_from_config
from ftmem.step import step_parts

L, HEADS, HEAD_DIM = 3, 6, 16
LLAMA = {
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": HEADS * HEAD_DIM,
    "intermediate_size": 128,
    "num_hidden_layers": L,
    "num_attention_heads": HEADS,
    "head_dim": HEAD_DIM,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}
E = 2  # bf16


def _config(kv_heads: int) -> dict:
    return {**LLAMA, "num_key_value_heads": kv_heads}


def measured_step(kv_heads: int, shape: tuple[int, int], attn: str = "sdpa", **inputs):
    """(bytes autograd saved beside the weights, forward peak, backward peak) of one
    training step of the tiny Llama on random ids of ``shape`` with the other ``inputs``
    (attention_mask, position_ids), above what was alive before it; the peaks from
    ftmem's dispatch tracker."""
    return measured_config_step(_config(kv_heads), shape, attn, **inputs)


def measured_config_step(config: dict, shape: tuple[int, int], attn: str = "sdpa", **inputs):
    """measured_step for the model of any tiny config.json."""
    return measured_kernel_step(config, shape, attn, **inputs)[:3]


def measured_kernel_step(config: dict, shape: tuple[int, int], attn: str = "sdpa", **inputs):
    """measured_config_step, and the live bytes at each attention kernel's backward (top
    block first), above what was alive before the step."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ftmem.measure.tracker import LiveBytesTracker

    class KernelTracker(LiveBytesTracker):
        def __init__(self) -> None:
            super().__init__()
            self.kernels: list[int] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = super().__torch_dispatch__(func, types, args, kwargs)
            if "attention" in str(func) and "backward" in str(func):
                self.kernels.append(self.current)
            return out

    torch.manual_seed(0)
    hf_config = transformers.AutoConfig.for_model(**config, attn_implementation=attn)
    model = transformers.AutoModelForCausalLM.from_config(hf_config).to(torch.bfloat16)
    model.train()
    ids = torch.randint(0, config["vocab_size"], shape)
    saved: dict[int, int] = {}
    # the weights the matmuls save are the model's, not activations
    weights = {p.untyped_storage()._cdata for p in model.parameters()}

    def pack(t):
        if (storage := t.untyped_storage())._cdata not in weights:
            saved[storage._cdata] = storage.nbytes()
        return t

    tracker = KernelTracker()
    tracker.track(*model.parameters(), ids, *(t for t in inputs.values() if t is not None))
    with tracker:
        before = tracker.current
        tracker.reset_peak()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(input_ids=ids, labels=ids, use_cache=False, **inputs).loss
        forward = tracker.peak - before
        tracker.reset_peak()
        loss.backward()
        backward = tracker.peak - before
    kernels = [k - before for k in tracker.kernels]
    return sum(saved.values()), forward, backward, kernels


def _measured(kv_heads: int, b: int, s: int, padded: bool, attn: str = "sdpa") -> tuple[int, ...]:
    """The step with every position attended, or the last sequence 5 tokens shorter."""
    torch = pytest.importorskip("torch")
    mask = torch.ones(b, s, dtype=torch.long)
    if padded:
        mask[-1, s - 5 :] = 0  # right padding
    return measured_step(kv_heads, (b, s), attn, attention_mask=mask)


def _tiny(kv_heads: int) -> Architecture:
    return architecture_from_config(_config(kv_heads), f"tiny-kv{kv_heads}", "test")


def _estimated(kv_heads: int, b: int, s: int, padding: str, **settings) -> tuple[int, int]:
    """(forward, backward) phase peaks of the estimate, on the CPU as measured."""
    run = run_config(
        method="full", precision="bf16", batch_size=b, seq_len=s, device="cpu",
        padding=padding, **settings,
    )  # fmt: skip
    phases = find_peak(step_parts(_tiny(kv_heads), run).sizes).phases
    return phases.forward, phases.backward


def moved_by(after: tuple[int, ...], before: tuple[int, ...]) -> list[int]:
    return [a - b for a, b in zip(after, before, strict=True)]


def _by_hand(kv_heads: int, b: int, s: int) -> int:
    T, q, kv = b * s, HEADS * HEAD_DIM, kv_heads * HEAD_DIM
    mask = b * s * s * E
    repeated = 2 * T * q * E - 2 * T * kv * E if 1 < kv_heads < HEADS else 0
    return L * (mask + repeated)


@pytest.mark.parametrize("kv_heads", [2, 6, 1], ids=["gqa", "mha", "mqa"])
@pytest.mark.parametrize("s", [24, 21], ids=["s24", "s21"])
def test_a_padded_batch_keeps_the_mask_and_gqa_repeats(kv_heads, s):
    b = 2
    padded, unpadded = _measured(kv_heads, b, s, True), _measured(kv_heads, b, s, False)
    moved = moved_by(padded, unpadded)
    assert moved == [_by_hand(kv_heads, b, s)] * 3  # saved, forward peak, backward peak
    longest, none = _estimated(kv_heads, b, s, "longest"), _estimated(kv_heads, b, s, "none")
    assert moved_by(longest, none) == moved[1:]


# Fused rotary projections (ops/attention.fused_rotary_mask_derived): Phi-3's qkv_proj,
# GPT-NeoX's query_key_value. Without a mask sdpa keeps v, a view of the projection's
# output, and with it the whole output; with one, GQA's repeat_kv copies k and v (the
# output is then kept by nothing), while one kv head, or as many as the heads, leaves v a
# view. (6 heads over 3 kv heads: with 2 the repeated copies would weigh what the output
# and the rotary k weigh, and the test could not tell them apart.)
PHI3 = {
    **LLAMA,
    "model_type": "phi3",
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "pad_token_id": 0,  # Phi3Config's 32000 is outside the tiny vocabulary
    "bos_token_id": 0,
    "eos_token_id": 0,
}
NEOX = {
    "model_type": "gpt_neox",
    "vocab_size": 512,
    "hidden_size": HEADS * HEAD_DIM,
    "intermediate_size": 128,
    "num_hidden_layers": L,
    "num_attention_heads": HEADS,
    "max_position_embeddings": 128,
    "rotary_pct": 0.25,
    "hidden_dropout": 0.0,
    "tie_word_embeddings": False,
}
# GPT-2's c_attn: learned positions, q, k and v all views of the output the kernel keeps
GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 512,
    "n_embd": HEADS * HEAD_DIM,
    "n_layer": L,
    "n_head": HEADS,
    "n_positions": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}
FUSED = {
    "phi3-gqa": ({**PHI3, "num_key_value_heads": 3}, 3),
    "phi3-mha": ({**PHI3, "num_key_value_heads": HEADS}, HEADS),
    "phi3-mqa": ({**PHI3, "num_key_value_heads": 1}, 1),
    "gptneox": (NEOX, HEADS),
    "gpt2": (GPT2, HEADS),
}


def _fused_by_hand(kv_heads: int, b: int, s: int) -> int:
    T, q, kv = b * s, HEADS * HEAD_DIM, kv_heads * HEAD_DIM
    mask = b * s * s * E
    if not 1 < kv_heads < HEADS:
        return L * mask
    # rotary q, repeated k and v, in place of rotary q and k and the whole qkv output
    return L * (mask + 3 * T * q * E - (T * (q + kv) + T * (q + 2 * kv)) * E)


@pytest.mark.parametrize("name", list(FUSED))
@pytest.mark.parametrize("s", [24, 21], ids=["s24", "s21"])
def test_a_fused_rotary_projection_keeps_the_mask_and_gqa_copies(name, s):
    config, kv_heads = FUSED[name]
    b, torch = 2, pytest.importorskip("torch")
    unpadded = torch.ones(b, s, dtype=torch.long)
    padded = unpadded.clone()
    padded[-1, s - 5 :] = 0
    moved = moved_by(
        measured_config_step(config, (b, s), attention_mask=padded),
        measured_config_step(config, (b, s), attention_mask=unpadded),
    )
    by_hand = _fused_by_hand(kv_heads, b, s)
    if name == "gpt2":
        # saved and the forward's peak by the mask; the backward's peak by the mask, or not
        # at all where it is the embedding's gradient after the blocks (s = 21): the
        # estimate's phases are checked against the measurement below
        assert moved[:2] == [by_hand] * 2 and moved[2] in (0, by_hand)
    else:
        assert moved == [by_hand] * 3  # saved, forward peak, backward peak
    arch = architecture_from_config(config, f"tiny-{name}", "test")
    run = {"method": "full", "precision": "bf16", "batch_size": b, "seq_len": s, "device": "cpu"}
    phases = [
        find_peak(step_parts(arch, run_config(padding=padding, **run)).sizes).phases
        for padding in ("longest", "none")
    ]
    estimated = [(p.forward, p.backward) for p in phases]
    assert moved_by(*estimated) == moved[1:]


# The attention kernel's backward (transients.attention_kernel_moment): with a mask,
# transformers repeats grouped keys and values per query head, and one kv head's
# stride-0 expand too reaches the kernel at every head, so its backward returns k's and
# v's gradients there, 2·T·(q - kv)·e above the same batch unpadded (sdpa's enable_gqa:
# at the kv heads). Sized so that this moment is the padded backward's peak: the
# multi-query GPTBigCode (learned positions, q, k and v views of c_attn's output, the
# mask all it saves more) and a grouped Llama whose heads are wider than its hidden size.
BIGCODE_MQA = {
    "model_type": "gpt_bigcode",
    "vocab_size": 64,
    "n_embd": HEADS * HEAD_DIM,
    "n_layer": L,
    "n_head": HEADS,
    "n_inner": 128,
    "n_positions": 128,
    "multi_query": True,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}
WIDE_HEADS, KV_HEADS = 8, 2
LLAMA_GQA = {
    **LLAMA,
    "vocab_size": 32,
    "hidden_size": 32,
    "intermediate_size": 32,
    "num_attention_heads": WIDE_HEADS,
    "num_key_value_heads": KV_HEADS,
}
KERNEL_PEAK = {
    "bigcode-mqa": (BIGCODE_MQA, HEADS, 1),
    "llama-gqa": (LLAMA_GQA, WIDE_HEADS, KV_HEADS),
}


def _estimated_above_inputs(config: dict, b: int, s: int, padding: str) -> tuple[int, int]:
    """(forward, backward) phase peaks of the estimate above the weights, the optimizer
    states and the token ids (alive before the measured step)."""
    arch = architecture_from_config(config, "tiny-kernel", "test")
    run = run_config(
        method="full", precision="bf16", batch_size=b, seq_len=s, device="cpu", padding=padding
    )
    sizes = step_parts(arch, run).sizes
    phases = find_peak(sizes).phases
    base = sizes.weights + sizes.states + b * s * INDEX_BYTES
    return phases.forward - base, phases.backward - base


@pytest.mark.parametrize("name", list(KERNEL_PEAK))
def test_a_padded_batch_peaks_in_the_attention_kernels_backward(name):
    config, heads, kv_heads = KERNEL_PEAK[name]
    b, s, torch = 2, 24, pytest.importorskip("torch")
    unpadded = torch.ones(b, s, dtype=torch.long)
    padded = unpadded.clone()
    padded[-1, s - 5 :] = 0
    *steps, kernels = measured_kernel_step(config, (b, s), attention_mask=padded)
    *plain_steps, plain_kernels = measured_kernel_step(config, (b, s), attention_mask=unpadded)
    assert steps[2] == max(kernels)  # the padded backward's peak is a kernel's backward
    # by hand: k's and v's gradients at every query head, beside what the layers not yet
    # through their backward keep (the top block's first): the mask, and GQA's repeated
    # k and v (one kv head's repeat is a view)
    T, q, kv = b * s, heads * HEAD_DIM, kv_heads * HEAD_DIM
    gradients = 2 * T * (q - kv) * E
    kept = b * s * s * E + (gradients if kv_heads > 1 else 0)
    assert moved_by(kernels, plain_kernels) == [gradients + (L - i) * kept for i in range(L)]
    longest = _estimated_above_inputs(config, b, s, "longest")
    none = _estimated_above_inputs(config, b, s, "none")
    assert moved_by(longest, none)[0] == moved_by(steps, plain_steps)[1]  # the forward's peak
    # the backward's: within 0.1 % (before the kernel's moment, -4.2 % and -2.6 %)
    assert longest[1] == pytest.approx(steps[2], rel=1e-3)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_kernels_key_and_value_gradients_by_device(device):
    """Derived from the kernels' sources (ops/attention.Attention.kernel_gradients): with a
    mask, k and v reach the kernel at every query head on both devices (CUDA's
    memory-efficient kernel requires it); without one, sdpa's enable_gqa: the CPU's
    kernel writes their gradients at the kv heads (measured above), CUDA's flash
    backward at every query head first, then sums them into kv-sized ones."""
    from ftmem.ops.attention import Attention

    b, s = 2, 24
    arch = architecture_from_config(LLAMA_GQA, "tiny-kernel", "test")
    T, q, kv = b * s, WIDE_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    run = {"method": "full", "precision": "bf16", "batch_size": b, "seq_len": s, "device": device}
    padded = Attention.kernel_gradients(arch, run_config(padding="longest", **run), E, T)
    plain = Attention.kernel_gradients(arch, run_config(padding="none", **run), E, T)
    assert padded == 3 * T * q * E
    assert plain == T * q * E + 2 * T * (kv if device == "cpu" else q + kv) * E
    eager = run_config(padding="longest", attn="eager", **run)
    assert Attention.kernel_gradients(arch, eager, E, T) == 0  # its score gradients instead


def test_eager_attention_builds_its_mask_either_way():
    b, s = 2, 24
    assert _measured(2, b, s, True, "eager") == _measured(2, b, s, False, "eager")
    assert _estimated(2, b, s, "longest", attn="eager") == _estimated(2, b, s, "none", attn="eager")


def test_one_sequence_padded_to_max_length_has_a_mask():
    # padding="max_length" pads a batch of one too: transformers builds the mask
    moved = moved_by(_measured(2, 1, 24, True), _measured(2, 1, 24, False))
    # (the backward's peak is its end, the saved tensors freed and every gradient made)
    assert moved == [_by_hand(2, 1, 24)] * 2 + [0]
    longest, none = _estimated(2, 1, 24, "max-length"), _estimated(2, 1, 24, "none")
    assert moved_by(longest, none) == moved[1:]


def test_one_sequence_padded_to_its_longest_has_none():
    from ftmem.api import estimate

    assert _estimated(2, 1, 24, "longest") == _estimated(2, 1, 24, "none")
    notes = estimate("llama-3.2-1b", batch_size=1, padding="longest").notes
    assert any("no pad tokens" in n for n in notes)


def test_flash_attention_unpads_and_is_unchanged():
    from ftmem.api import estimate

    assert _estimated(2, 2, 24, "longest", attn="flash") == _estimated(
        2, 2, 24, "none", attn="flash"
    )
    notes = estimate("llama-3.2-1b", batch_size=2, padding="longest", attn="flash").notes
    assert any("unpads" in n for n in notes)


def test_cuda_pads_the_masks_last_dimension_to_8():
    """CUDA's memory-efficient kernel keeps the mask padded to a multiple of 8 (s 21 -> 24)."""
    run = {"method": "full", "precision": "bf16", "batch_size": 2, "seq_len": 21}
    arch = _tiny(6)
    longest = find_peak(step_parts(arch, run_config(padding="longest", **run)).sizes)
    none = find_peak(step_parts(arch, run_config(padding="none", **run)).sizes)
    assert longest.phases.forward - none.phases.forward == L * 2 * 21 * 24 * E


def test_peft_mc_pads_by_default_and_padding_none_turns_it_off():
    from ftmem.step import loop_output

    arch = _tiny(2)
    run = {"method": "lora", "precision": "bf16", "batch_size": 2, "seq_len": 24, "device": "cpu"}
    hf = find_peak(step_parts(arch, run_config(**run)).sizes).phases.forward
    off = run_config(framework="peft-mc", padding="none", **run)
    assert find_peak(step_parts(arch, off).sizes).phases.forward == hf + loop_output(
        arch, off, E, 48
    )
    on = find_peak(step_parts(arch, run_config(framework="peft-mc", **run)).sizes)
    assert on.phases.forward > hf + loop_output(arch, off, E, 48)


def test_the_setting_is_left_out_of_results_unless_given():
    assert "padding" not in run_config().model_dump(exclude_none=False)
    assert run_config(padding="none").model_dump()["padding"] == "none"


# -- the command line ----------------------------------------------------------------------


def _cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    from ftmem.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_help_lists_the_choices(capsys, monkeypatch):
    code, out, _ = _cli(["estimate", "--help"], capsys, monkeypatch)
    assert code == 0
    line = next(line for line in out.splitlines() if "--padding" in line)
    assert "<none|longest|max-length|packed|packed-flex>" in line


def test_a_bad_value_is_one_line_and_exit_2(capsys, monkeypatch):
    code, out, err = _cli(["estimate", "llama-3.2-1b", "--padding", "right"], capsys, monkeypatch)
    assert (code, out) == (2, "")
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1
    assert (
        "--padding" in lines[0] and "none, longest, max-length, packed or packed-flex" in lines[0]
    )


def test_json_says_the_padding_given(capsys, monkeypatch):
    argv = ["estimate", "llama-3.2-1b", "--batch-size", "2", "--padding", "longest"]
    code, out, _ = _cli([*argv, "--format", "json"], capsys, monkeypatch)
    assert code == 0
    assert json.loads(out)["run"]["padding"] == "longest"


# -- read from a training config ------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, padding",
    [
        ({"packing": False}, "longest"),  # TRL's collator pads to the batch's longest
        ({"group_by_length": True}, "longest"),  # grouped "to minimize padding"
        # flattened into one row: no pad tokens, a packed mask (tests/test_packed_mask.py)
        ({"packing": False, "padding_free": True}, "packed"),
        ({"packing": True}, "packed"),
        ({}, None),  # silent: the default, not TRL's
    ],
)
def test_trl_and_trainer_configs_say_it_explicitly(tmp_path, keys, padding):
    from ftmem.frameworks import read_framework_config

    path = tmp_path / "sft.json"
    path.write_text(
        json.dumps({"model_name_or_path": "x", "per_device_train_batch_size": 4, **keys})
    )
    assert read_framework_config(str(path)).settings.get("padding") == padding


@pytest.mark.parametrize(
    "text, padding",
    [
        ("sample_packing: false\n", "longest"),  # DataCollatorForSeq2Seq(padding=True)
        ("sample_packing: false\npad_to_sequence_len: true\n", "max-length"),
        ("pad_to_sequence_len: true\n", "max-length"),
        ("sample_packing: true\npad_to_sequence_len: true\n", None),  # packed
        ("sample_packing: false\nrl: dpo\n", None),  # the rl trainers' own collators
        ("", None),
    ],
)
def test_axolotl_configs_say_it_explicitly(tmp_path, text, padding):
    from ftmem.frameworks import read_framework_config

    path = tmp_path / "axo.yml"
    path.write_text("base_model: meta-llama/Llama-2-7b-hf\nmicro_batch_size: 2\n" + text)
    assert read_framework_config(str(path)).settings.get("padding") == padding
