"""PEFT's method_comparison loop (profiles.PEFT_MC): it keeps the model's whole output into
the next forward (step.loop_output), and its padded batches give sdpa a mask
(ops/attention.padding_mask).

The source: peft@5d602fdb method_comparison/MetaMathQA/run.py train: ``batch =
tokenizer.pad(batch, ...)``, ``outputs = model(**batch, num_items_in_batch=...)``, ``loss =
outputs.loss``, backward, clip, step; ``outputs`` is rebound only when the next step's
forward returns. A training forward of transformers without checkpointing builds a
DynamicCache (use_cache is config.json's default True) and returns it beside the logits;
with a padding mask, transformers repeats GQA keys and values per head for sdpa.

The truths: PyTorch measurements on tiny Llamas (the bytes of a training output, logits and
every cache tensor, with and without checkpointing; the storages alive after a padded
forward against an unpadded one) and the hand derivations written in each test.
"""

from __future__ import annotations

import pytest

from ftmem.api import run_config
from ftmem.arch import Architecture
from ftmem.phases import find_peak
from ftmem.presets import get_model
from ftmem.sources import architecture_from_config
from ftmem.step import loop_output, step_parts

B, S = 2, 24
TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


def _measured_output_bytes(grad_ckpt: bool, cfg: dict = TINY_LLAMA) -> int:
    """The bytes a training forward's output holds: its logits and its cache's tensors."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**cfg)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    if grad_ckpt:
        model.gradient_checkpointing_enable()
    model.train()
    ids = torch.randint(0, cfg["vocab_size"], (B, S))
    out = model(input_ids=ids, labels=ids)
    held = out.logits.nbytes
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is not None:
        held += sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    out.loss.backward()  # the backward frees saved tensors, not the output's
    return held


def _tiny() -> Architecture:
    return architecture_from_config(TINY_LLAMA, "tiny-llama", "test")


@pytest.mark.parametrize("grad_ckpt", [False, True], ids=["plain", "checkpointed"])
def test_the_held_output_is_what_transformers_returns(grad_ckpt):
    run = run_config(
        framework="peft-mc", method="lora", precision="bf16", batch_size=B, seq_len=S,
        grad_ckpt=grad_ckpt,
    )  # fmt: skip
    assert loop_output(_tiny(), run, 2, B * S) == _measured_output_bytes(grad_ckpt)


def test_the_forward_holds_the_last_output_and_the_masked_kernel_inputs():
    arch = get_model("llama-3.2-3b")
    settings = {"method": "lora", "precision": "bf16", "batch_size": 4, "seq_len": 256}
    held = find_peak(step_parts(arch, run_config(framework="peft-mc", **settings)).sizes)
    dropped = find_peak(step_parts(arch, run_config(framework="hf", **settings)).sizes)
    # Llama-3.2-3B: V 128,256; 28 layers of 24 heads and 8 kv heads x 128; bf16
    logits = 4 * 256 * 128_256 * 2
    cache = 4 * 256 * 2 * 8 * 128 * 2 * 28
    # the padded batch: k and v repeated to 24 heads, the additive mask (256 = 32 x 8)
    masked = (2 * 4 * 256 * 24 * 128 * 2 + 4 * 256 * 256 * 2) * 28
    assert held.phases.forward == dropped.phases.forward + logits + cache + masked


GQA_LLAMA = {**TINY_LLAMA, "hidden_size": 96, "num_attention_heads": 6, "head_dim": 16}


def _measured_alive_after_forward(padded: bool) -> int:
    """What a training forward leaves alive for its backward: the storages autograd saved
    and the output's cache (one count per storage)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(**GQA_LLAMA)
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.train()
    ids = torch.randint(0, GQA_LLAMA["vocab_size"], (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    if padded:
        mask[1:, S - 5 :] = 0  # right padding: the first sequence is the longest
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, attention_mask=mask, labels=ids)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def test_a_padding_mask_keeps_gqa_keys_and_values_repeated_and_the_mask():
    """Against the same batch without padding (transformers leaves sdpa its causal flag and
    GQA: the kernel keeps the cache's keys and values), a padded one keeps k and v
    repeated to every query head (2·T·q·e per layer) and the additive mask (b·s·s·e; S is
    a multiple of 8, so CUDA's padding of its last dimension adds nothing). peft-mc's
    forward holds that and the last pass's output beside HF Trainer's."""
    arch = architecture_from_config(GQA_LLAMA, "tiny-gqa", "test")
    settings = {"method": "full", "precision": "bf16", "batch_size": B, "seq_len": S}
    hf = find_peak(step_parts(arch, run_config(**settings)).sizes)
    padded = find_peak(step_parts(arch, run_config(framework="peft-mc", **settings)).sizes)
    masked = _measured_alive_after_forward(True) - _measured_alive_after_forward(False)
    L, T, q, e = 3, B * S, 96, 2
    assert masked == L * (2 * T * q * e + B * S * S * e)
    held = _measured_output_bytes(False, GQA_LLAMA)
    assert padded.phases.forward - hf.phases.forward == masked + held


def test_one_sequence_has_no_padding():
    arch = architecture_from_config(GQA_LLAMA, "tiny-gqa", "test")
    settings = {"method": "full", "precision": "bf16", "batch_size": 1, "seq_len": S}
    hf = find_peak(step_parts(arch, run_config(**settings)).sizes)
    peft = find_peak(step_parts(arch, run_config(framework="peft-mc", **settings)).sizes)
    assert peft.phases.forward - hf.phases.forward == loop_output(
        arch, run_config(framework="peft-mc", **settings), 2, S
    )
