"""torchtune's code path (ftmem.profiles): per-layer compile, the compiled chunked loss and
activation offload around the model only. Each expected number is derived here from the
torchtune / PyTorch source the mechanism cites (calibration/notes/torchtune.md), on the
tiny Llama of conftest; defaults (framework hf, compile off) must not move."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ftmem.estimate import estimate_step
from ftmem.run import RunConfig
from tests.conftest import tiny

BF16, FP32, INT64 = 2, 4, 8
B, S = 3, 50  # micro-batch and length of every run here
T = B * S

LLAMA = tiny("llama")
H, I, L, V = LLAMA.hidden_size, LLAMA.intermediate_size, LLAMA.num_layers, LLAMA.vocab_size


def est(**settings: object):
    base = dict(batch_size=B, seq_len=S, precision="bf16", attn="sdpa")
    return estimate_step(LLAMA, RunConfig(**{**base, **settings})).memory


def per_layer_saving(norm_weights_train: bool) -> int:
    """Bytes per token per layer a compiled torchtune layer keeps less than eager.

    torchtune RMSNorm.forward (torchtune/modules/rms_norm.py@1814feb17a90): x.float(),
    x_fp32 * rsqrt(...), .type_as(x), * scale. Eager autograd keeps the fp32 copy (4h) and,
    for the scale's gradient, the normalised bf16 tensor (2h); the compiled layer keeps the
    bf16 input (2h) and rebuilds both (the fp32 rstd is kept either way). FeedForward
    (torchtune/modules/feed_forward.py@1814feb17a90): silu(w1(x)) * w3(x); the compiled
    layer recomputes the SiLU output (I elements, bf16)."""
    norm = 4 * H + (2 * H if norm_weights_train else 0) - 2 * H
    return 2 * norm + 2 * I


def test_per_layer_compile_full_finetune_keeps_8h_plus_2i_less_per_token_and_layer():
    eager = est(method="full", framework="torchtune")
    compiled = est(method="full", framework="torchtune", compile=True)
    assert per_layer_saving(True) == 8 * H + 2 * I  # the note's (8h + 2I)
    saved_less = eager.activations_bytes - compiled.activations_bytes
    assert saved_less == L * T * per_layer_saving(True)


def test_per_layer_compile_lora_saves_only_the_fp32_copies_and_silu():
    # LoRA: the norms' scales are frozen, so eager keeps no normalised tensor to lose;
    # the bottom layer's input norm keeps nothing either way (the frozen embedding's
    # output needs no gradient)
    eager = est(method="lora", framework="torchtune", adapter_dtype="bf16")
    compiled = est(method="lora", framework="torchtune", adapter_dtype="bf16", compile=True)
    saved_less = eager.activations_bytes - compiled.activations_bytes
    bottom_input_norm = T * (4 * H - 2 * H)
    assert per_layer_saving(False) == 4 * H + 2 * I
    assert saved_less == L * T * per_layer_saving(False) - bottom_input_norm


def test_compile_on_llama_3_2_3b_matches_the_readme_flag_rows_derivation():
    # calibration/notes/torchtune.md: 40,960 B/token/layer x 8192 tokens x 28 layers
    # = 8.75 GiB, for the README's "+ Compile" row (60.0 -> 51.0 GiB measured)
    from ftmem import estimate

    cfg = Path(__file__).resolve().parents[1] / "calibration/configs/llama-3.2-3b/config.json"
    run = dict(method="full", precision="bf16", batch_size=2, seq_len=4096, gpu="a100-80gb")
    eager = estimate(str(cfg), framework="torchtune", **run).memory
    compiled = estimate(str(cfg), framework="torchtune", compile=True, **run).memory
    per_token_layer = 8 * 3072 + 2 * 8192
    assert per_token_layer == 40_960
    assert eager.peak_phase == compiled.peak_phase == "backward"
    drop = eager.peak_allocated_bytes - compiled.peak_allocated_bytes
    assert drop == per_token_layer * 2 * 4096 * 28


def test_compiled_chunked_loss_keeps_bf16_logits_and_two_row_statistics():
    # CEWithChunkedOutputLoss.compute_cross_entropy (logits.float() + F.cross_entropy) compiled
    # alone (torchtune/training/_compile.py@1814feb17a90 compile_loss): eager keeps the
    # fp32 log-softmax (4·T·V), the int64 labels and the mean's fp32 normaliser; compiled,
    # the bf16 chunk it was given (2·T·V), the fp32 amax and log-sum-exp of each row
    # (torch/_decomp/decompositions.py _log_softmax) and the labels
    eager_loss = T * V * FP32 + T * INT64 + FP32
    compiled_loss = T * V * BF16 + 2 * T * FP32 + T * INT64
    layers = L * T * per_layer_saving(True)
    eager = est(method="full", framework="torchtune", loss="chunked")
    compiled = est(method="full", framework="torchtune", loss="chunked", compile=True)
    saved_less = eager.activations_bytes - compiled.activations_bytes
    assert saved_less == layers + eager_loss - compiled_loss
    assert eager_loss - compiled_loss == 2 * T * V - 8 * T + 4  # the note's 2·b·s·V


def test_compiled_standard_loss_keeps_the_same_size():
    # compile_loss compiles a non-chunked loss whole: it keeps its fp32 input logits
    # instead of the fp32 log-softmax, the same size; only the layers change
    eager = est(method="full", framework="torchtune", loss="standard")
    compiled = est(method="full", framework="torchtune", loss="standard", compile=True)
    assert eager.activations_bytes - compiled.activations_bytes == L * T * per_layer_saving(True)


def test_with_checkpointing_compile_changes_only_the_recomputed_layer():
    # checkpointing keeps each layer's input either way; the compiled layer's recompute
    # keeps (8h + 2I)·T less, and its first norm's input is the checkpoint's own input
    # (one storage), which an eager bf16 RMSNorm's fp32 copy is not
    run = dict(method="full", framework="torchtune", grad_ckpt=True)
    eager, compiled = est(**run), est(**run, compile=True)
    assert eager.activations_bytes == compiled.activations_bytes
    # backward's largest moment is a layer's, its recompute alive: smaller by the compiled
    # layer's saving and by the input norm's bf16 input (already there as the kept input)
    # (in the bytes asked for: each phase also shows the allocator's block rounding)
    drop = eager.phases.backward - compiled.phases.backward
    blocks = eager.at_peak.block_rounding - compiled.at_peak.block_rounding
    assert drop - blocks == T * per_layer_saving(True) + T * H * BF16


def test_torchtune_offload_leaves_the_head_and_loss_on_the_gpu():
    # OffloadActivations is entered around the model's forward only, the loss runs after
    # it (recipes/full_finetune_single_device.py@1814feb17a90 _loss_step), and the LM head
    # runs under a NoOpManager (get_act_offloading_ctx_manager): on the GPU stay the head's
    # bf16 input (T·h) and the loss's tensors; everything else goes to the host
    run = dict(method="full", grad_ckpt=True, activation_offload=True, loss="chunked")
    hf = est(**run)
    tt = est(**run, framework="torchtune", compile=True)
    assert hf.activations_bytes == 0
    compiled_loss = T * V * BF16 + 2 * T * FP32 + T * INT64
    assert tt.activations_bytes == T * H * BF16 + compiled_loss


def test_defaults_unchanged_and_other_frameworks_stay_eager_with_a_note():
    assert RunConfig().compile is False
    for method in ("full", "lora"):
        plain = estimate_step(LLAMA, RunConfig(method=method, batch_size=B, seq_len=S))
        hf = estimate_step(LLAMA, RunConfig(method=method, batch_size=B, seq_len=S, compile=True))
        tt = estimate_step(
            LLAMA, RunConfig(method=method, batch_size=B, seq_len=S, framework="torchtune")
        )

        # the step itself is the same (the run around it, loading and the window the
        # framework's figure covers, is run_phases' and may differ)
        def step(m):
            return (m.at_peak, m.phases, m.activations_bytes, m.activations_per_block)

        assert step(plain.memory) == step(hf.memory) == step(tt.memory)
        assert not any("compile" in n for n in plain.notes)
        assert any("not modelled" in n and "compile" in n for n in hf.notes)


def test_torchtune_config_compile_true_sets_the_run_setting(tmp_path: Path):
    from ftmem.frameworks import read_framework_config

    cfg = tmp_path / "tt.yaml"
    cfg.write_text(
        textwrap.dedent(
            """\
            model:
              _component_: torchtune.models.llama3_2.llama3_2_3b
            batch_size: 2
            compile: True
            loss:
              _component_: torchtune.modules.loss.CEWithChunkedOutputLoss
            """
        )
    )
    read = read_framework_config(str(cfg))
    assert read.settings.get("compile") is True and read.settings.get("loss") == "chunked"
    assert not any("compile" in n for n in read.notes)


@pytest.mark.parametrize("flag", ["--compile"])
def test_cli_takes_compile(flag: str):
    from typer.testing import CliRunner

    from ftmem.cli import app

    cfg = Path(__file__).resolve().parents[1] / "calibration/configs/llama-3.2-1b/config.json"
    args = ["estimate", str(cfg), "--framework", "torchtune", "--method", "full", flag]
    res = CliRunner().invoke(app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    assert '"compile": true' in res.output


def _head_sizes(framework: str, **settings: object):
    from ftmem.step import step_parts

    base = dict(batch_size=B, seq_len=S, precision="bf16", attn="sdpa", method="lora")
    run = RunConfig(**{**base, "framework": framework, "loss": "upcast-shifted", **settings})
    return step_parts(LLAMA, run).sizes


def test_torchtune_01s_loop_holds_its_shifted_copy_and_copies_the_transposed_input():
    # recipes/lora_finetune_single_device.py@ff594c231 train: `logits = self._model(x)`
    # (fp32), `logits = logits[..., :-1, :].contiguous()`, `.transpose(1, 2)` into
    # nn.CrossEntropyLoss; the name holds the shifted copy (R·V·4) until the next forward
    # returns. In forward, beyond the saved item (fp32 log-softmax, labels, total_weight)
    # and that copy: the cast (bf16 logits beside their fp32 copy, the previous copy
    # still held), the fp32 logits beside this copy, CUDA's contiguous copy of the
    # transposed input (its total_weight not made yet). Backward: transformers < 4.46's.
    R = T - B
    saved = R * V * FP32 + R * INT64 + FP32
    tt, hf = _head_sizes("torchtune"), _head_sizes("hf")
    assert tt.loop_held == R * V * FP32 and hf.loop_held == 0
    expected = max(T * V * (BF16 + FP32) - saved, T * V * FP32 - saved, R * V * FP32 - FP32)
    assert tt.head.logits_forward == expected
    assert hf.head.logits_forward == max(T * V * (BF16 + FP32), T * V * FP32 + R * V * FP32)
    assert tt.head.loss_backward == hf.head.loss_backward
    requests = tt.head.requests
    assert requests is not None and requests.into_next_forward  # (tests/test_loss_requests.py)


def test_torchtune_01s_lora_on_the_output_is_modelled_on_its_loop_loss_only():
    # torchtune/modules/peft/lora.py@ff594c231 LoRALinear.forward: out + (alpha / rank) *
    # lora_b(lora_a(dropout(x))), peft's ops; apply_lora_to_output=True
    from ftmem.errors import InvalidInputError

    # (its adapters in bf16: recipes/lora_finetune_single_device.py@ff594c231 builds
    # the model under set_default_dtype(bf16))
    targets = dict(lora_targets="q,v,lm_head", adapter_dtype="bf16")
    tt = _head_sizes("torchtune", **targets)
    assert tt.loop_held == (T - B) * V * FP32
    requests = tt.head.requests  # the adapted head's tensors one by one as well
    assert requests is not None and requests.into_next_forward
    # fp32 adapters promote the sum: laid out as the moments only
    assert _head_sizes("torchtune", lora_targets="q,v,lm_head").head.requests is None
    with pytest.raises(InvalidInputError, match="upcast-shifted"):
        _head_sizes("hf", **targets)
