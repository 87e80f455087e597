"""Run under a real transformers (its unpacked site first on PYTHONPATH, or the installed
one): is the LM head's input alive while the loss runs inside the causal LM's forward?

A tiny bf16 Mistral, everything frozen but one adapter-like matrix of the first layer (so
that the blocks need gradients and the head does not: nothing saves the head's input),
gradient checkpointing through transformers' own loop, one step with labels (HF Trainer's
compute_loss: the output dropped). A dispatch mode notes every live storage when
log_softmax runs; the LM head's input storage is found by a forward pre-hook that keeps
only a weak reference. Prints one JSON line: the release, the head input's bytes, whether
it was live at the log-softmax, and whether it was freed once the forward returned.
Used by tests/test_named_head_input.py; not part of ftmem.
"""

from __future__ import annotations

import json
import sys
import weakref

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import MistralConfig, MistralForCausalLM


class AtLogSoftmax(TorchDispatchMode):
    """The storages (their ``_cdata`` keys) referenced when the first log-softmax runs."""

    def __init__(self, watched: list[weakref.ref]) -> None:
        super().__init__()
        self.watched = watched
        self.live_at_loss: bool | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if self.live_at_loss is None and func.__name__.startswith("_log_softmax.default"):
            self.live_at_loss = bool(self.watched) and self.watched[0]() is not None
        return func(*args, **(kwargs or {}))


def probe(
    b: int = 2, s: int = 16, h: int = 64, vocab: int = 500, in_forward: bool = True
) -> dict[str, object]:
    """``in_forward``: the labels given to the model; else the loop's way (torchtune,
    LitGPT): the logits taken from the returned output, the loss computed after."""
    torch.manual_seed(0)
    cfg = MistralConfig(
        vocab_size=vocab,
        hidden_size=h,
        intermediate_size=2 * h,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    model = MistralForCausalLM(cfg).to(torch.bfloat16)
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("layers.0.self_attn.q_proj.weight"))
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()  # as peft does for a frozen base (reentrant checkpoints)
    model.train()
    watched: list[weakref.ref] = []
    sizes: list[int] = []

    def keep_weakly(_module, args):  # type: ignore[no-untyped-def]
        storage = args[0].untyped_storage()
        watched.append(weakref.ref(storage))
        sizes.append(storage.nbytes())

    model.lm_head.register_forward_pre_hook(keep_weakly)
    ids = torch.randint(0, vocab, (b, s))
    mode = AtLogSoftmax(watched)
    with mode:
        if in_forward:
            loss = model(input_ids=ids, labels=ids).loss  # the output dropped: compute_loss
        else:
            logits = model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
            del logits
    freed = watched[0]() is None
    loss.backward()
    return {
        "version": transformers.__version__,
        "head_input_bytes": sizes[0],
        "live_at_log_softmax": mode.live_at_loss,
        "freed_after_forward": freed,
    }


if __name__ == "__main__":
    print(json.dumps(probe(*(int(x) for x in sys.argv[1:5]))))
