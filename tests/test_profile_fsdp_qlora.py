"""Answer.AI's fsdp_qlora loop holds the model's output through the backward and the
optimizer step (profiles.FSDP_QLORA.output_held_through_step).

The source: AnswerDotAI/fsdp_qlora@3616227 train.py:803-848 (fsdp_main's loop):
``output = model(input_ids, labels=labels, attention_mask=None)``, ``loss =
output.loss``, ``loss.backward()``, ``optimizer.step()``, then ``output = None`` "so
more memory frees up before the next forward pass". The hand derivation: the output's
logits (T·V·4 with transformers < 4.46's upcast, T·V·e with transformers 5's loss) are
alive at every moment from the loss on, and at none of the forward's before it; so
against the same step under HF Trainer (whose compute_loss drops the output before the
backward) the backward's and the optimizer's largest moments are exactly those bytes
larger and the forward's is the same.
"""

from __future__ import annotations

import pytest

from ftmem.api import run_config
from ftmem.phases import find_peak
from ftmem.presets import get_model
from ftmem.step import step_parts

B, S = 2, 256


@pytest.mark.parametrize(
    ("loss", "logit_bytes"), [("upcast-shifted", 4), ("standard", 2)], ids=["upcast", "standard"]
)
@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_loop_holds_the_output_from_the_loss_through_the_step(loss, logit_bytes, method):
    arch = get_model("qwen2.5-0.5b")
    settings = {"method": method, "precision": "bf16", "batch_size": B, "seq_len": S, "loss": loss}
    held = find_peak(step_parts(arch, run_config(framework="fsdp_qlora", **settings)).sizes)
    dropped = find_peak(step_parts(arch, run_config(framework="hf", **settings)).sizes)
    output = B * S * arch.vocab_size * logit_bytes
    assert held.phases.forward == dropped.phases.forward
    assert held.phases.backward == dropped.phases.backward + output
    assert held.phases.optimizer == dropped.phases.optimizer + output


def test_a_path_that_returns_no_logits_holds_none():
    """Liger's fused loss returns no logits: nothing is held beyond HF Trainer's step."""
    arch = get_model("qwen2.5-0.5b")
    settings = {"method": "lora", "batch_size": B, "seq_len": S, "loss": "fused"}
    held = step_parts(arch, run_config(framework="fsdp_qlora", **settings)).sizes
    assert held.output_held == 0
