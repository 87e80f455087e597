"""Run under a real transformers 4.x (its unpacked wheel first on PYTHONPATH): a tiny
GPTBigCodeForCausalLM (multi-query, tied embeddings) in bf16 with the release's own
gradient checkpointing, trained as HF Trainer does (the model's own loss from labels, the
output dropped after it, backward, AdamW, zero_grad(set_to_none=True)), with the config's
use_cache on and off.

Prints one JSON line: the release, and per use_cache the last step's live tensor bytes,
phase by phase (forward with the loss, backward, optimizer step), followed by
ftmem's LiveBytesTracker (loaded from its file: nothing else of ftmem is imported).
Used by tests/accuracy/test_returned_cache.py; not part of ftmem.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
import transformers
from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

TRACKER = Path(__file__).parents[1] / "src" / "ftmem" / "measure" / "tracker.py"


def tracker_class() -> type:
    spec = importlib.util.spec_from_file_location("probe_tracker", TRACKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LiveBytesTracker


def step_phases(shape: dict, use_cache: bool, steps: int = 2) -> dict[str, int]:
    torch.manual_seed(0)
    b, s = shape["batch_size"], shape["seq_len"]
    config = GPTBigCodeConfig(
        n_embd=shape["hidden_size"],
        n_layer=shape["num_layers"],
        n_head=shape["num_heads"],
        n_inner=shape["intermediate_size"],
        n_positions=shape["max_position_embeddings"],
        vocab_size=shape["vocab_size"],
        multi_query=True,
        activation_function="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=use_cache,
        attn_implementation="sdpa",
    )
    model = GPTBigCodeForCausalLM(config).to(torch.bfloat16)
    model.gradient_checkpointing_enable()  # the release's default: reentrant
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=False)
    ids = torch.randint(0, shape["vocab_size"], (b, s))
    tracker = tracker_class()()
    tracker.track(list(model.parameters()), list(model.buffers()), ids)
    phases: dict[str, int] = {}
    with tracker:
        for step in range(steps):
            tracker.reset_peak()
            outputs = model(input_ids=ids, labels=ids)
            loss = outputs["loss"]
            del outputs  # HF Trainer's compute_loss returns the loss alone
            phases["forward"] = tracker.peak
            tracker.reset_peak()
            loss.backward()
            phases["backward"] = tracker.peak
            tracker.reset_peak()
            optimizer.step()
            if step == 0:
                states = [v for st in optimizer.state.values() for v in st.values()]
                tracker.track([v for v in states if isinstance(v, torch.Tensor)])
            model.zero_grad(set_to_none=True)
            phases["optimizer"] = tracker.peak
            del loss
    return phases


if __name__ == "__main__":
    shape = json.loads(sys.argv[1])
    got = {str(cache): step_phases(shape, cache) for cache in (True, False)}
    print(json.dumps({"version": transformers.__version__, "phases": got}))
