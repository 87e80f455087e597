"""Run under a real transformers 4.x (its site first on PYTHONPATH): one tiny Llama decoder
layer's forward under ``torch.no_grad`` (a checkpointed layer's first forward), every op
output's storage logged as it is allocated and freed.

Prints one JSON line: the transformers and torch versions, the events after the layer's
input, weights and rotary tables were registered (``("alloc", bytes)`` / ``("free", k)``
for the k-th allocation), and whether this torch's CPU sdpa kernel lays its output out as
a contiguous query (``output_follows_query``). The tracker is ftmem's, loaded from its file
(ftmem's package needs more than the old environment may have). Used by
tests/test_nograd_requests.py; not part of ftmem.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

TRACKER = Path(__file__).resolve().parents[1] / "src" / "ftmem" / "measure" / "tracker.py"


def load_tracker():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("probe_tracker", TRACKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LiveBytesTracker


def output_follows_query() -> bool:
    """Whether sdpa's output for a contiguous (b, heads, s, d) query is contiguous too."""
    q = torch.randn(1, 2, 8, 16, dtype=torch.bfloat16)
    out = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    return bool(out.is_contiguous())


def main() -> None:
    b, s, hidden, intermediate, heads, kv_heads = (int(x) for x in sys.argv[1:7])
    cfg = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=1,
        vocab_size=100,
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(cfg, 0).to(torch.bfloat16)
    x = torch.randn(b, s, hidden, dtype=torch.bfloat16)
    positions = torch.arange(s)[None].expand(b, s)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, positions)
    events: list[tuple[str, int]] = []
    tracker = load_tracker()(events)
    with torch.no_grad(), tracker:
        tracker.track(x, cos, sin, positions, [p for p in layer.parameters()])
        before = len(events)
        out = layer(x, position_embeddings=(cos, sin), attention_mask=None, position_ids=positions)
        del out
    print(
        json.dumps(
            {
                "version": transformers.__version__,
                "torch": torch.__version__,
                "skip": before,
                "events": events[before:],
                "output_follows_query": output_follows_query(),
            }
        )
    )


if __name__ == "__main__":
    main()
