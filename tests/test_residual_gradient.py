"""The gradient arriving at a decoder block: the residual stream's dtype, not fp32.

The truth: PyTorch on the CPU (tiny Llama and GPT-2, LoRA, as ftmem.measure builds them),
the gradient of each block's output as backward hands it to the block. The causal LM's
loss upcasts the logits (transformers 5.25 loss/loss_utils.py ForCausalLMLoss
``logits = logits.float()``); that cast's backward (ToCopyBackward0) returns the logits'
gradient in their own dtype, so in a bf16 model every gradient after the LM head is bf16.
Under autocast over fp32 weights the residual stream is fp32 (the fp32 embeddings and each
residual add), and so is its gradient. The MLP's backward moment counts that gradient
beside its own (MLP.backward_workspace): in the residual dtype (the starcoder2
checkpointed case read +2.1 % with it at fp32's 4 bytes).
"""

from __future__ import annotations

import pytest

from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import plan_method
from ftmem.ops.mlp import MLP
from ftmem.precision import resolve_dtypes
from ftmem.run import RunConfig
from tests.conftest import tiny

B, S = 2, 12


def _run(precision: str) -> RunConfig:
    return RunConfig(method="lora", precision=precision, batch_size=B, seq_len=S, device="cpu")


def _block_output_gradient_bytes(family: str, precision: str) -> set[int]:
    """The element sizes of the gradients backward hands to each block's output."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from ftmem.measure.build import build_model, find_blocks

    arch, run = tiny(family), _run(precision)
    model = build_model(arch, run).model
    sizes: set[int] = set()

    def keep(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        out.register_hook(lambda g: sizes.add(g.element_size()))

    blocks = find_blocks(model)
    assert blocks is not None
    hooks = [block.register_forward_hook(keep) for block in blocks[1]]
    ids = torch.randint(0, arch.vocab_size, (B, S))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=run.uses_autocast):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    for h in hooks:
        h.remove()
    return sizes


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("precision", ["bf16", "bf16-mixed", "fp32"])
def test_the_incoming_gradient_is_in_the_residual_dtype(family: str, precision: str):
    measured = _block_output_gradient_bytes(family, precision)
    assert measured == {resolve_dtypes(_run(precision)).residual_bytes}
    assert measured == {2 if precision == "bf16" else 4}


@pytest.mark.parametrize("precision", ["bf16", "bf16-mixed", "fp32"])
def test_the_mlp_moment_counts_the_incoming_gradient_at_its_size(precision: str):
    """By hand: a gated MLP's backward holds its two T·f gradients (compute dtype) and the
    incoming T·h one, 2 bytes an element in bf16, 4 under autocast and in fp32."""
    arch, run = tiny("llama"), _run(precision)
    T, f, h = B * S, arch.intermediate_size, arch.hidden_size
    e = BYTES_PER_ELEMENT[resolve_dtypes(run).compute]
    incoming = 2 if precision == "bf16" else 4
    workspace = MLP.backward_workspace(arch, run, plan_method(arch, run), e, T)
    assert workspace == 2 * T * f * e + T * h * incoming
