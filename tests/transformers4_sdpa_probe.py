"""Run under a real transformers 4.x (its unpacked wheel first on PYTHONPATH): what each
layer of a tiny GQA Llama hands to scaled_dot_product_attention in one training forward.

Prints one JSON line: per call, the key/value shape and storage bytes, whether they share
storage with the k/v projections' outputs, and the mask's shape, dtype, storage bytes and
storage pointer (to tell a per-layer copy from a view of one model-level mask).
Used by tests/test_transformers4_sdpa.py; not part of ftmem.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

calls: list[dict[str, object]] = []
real_sdpa = F.scaled_dot_product_attention


def storage(t: torch.Tensor) -> tuple[int, int]:
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


def recording_sdpa(q, k, v, attn_mask=None, *args, **kwargs):  # type: ignore[no-untyped-def]
    mask = None
    if attn_mask is not None:
        ptr, nbytes = storage(attn_mask)
        mask = {
            "shape": list(attn_mask.shape),
            "dtype": str(attn_mask.dtype),
            "bytes": nbytes,
            "ptr": ptr,
        }
    calls.append(
        {
            "key": list(k.shape),
            "key_bytes": storage(k)[1],
            "value_bytes": storage(v)[1],
            "enable_gqa": bool(kwargs.get("enable_gqa", False)),
            "mask": mask,
        }
    )
    return real_sdpa(q, k, v, attn_mask, *args, **kwargs)


def main() -> None:
    b, s, heads, kv_heads, layers = (int(x) for x in sys.argv[1:6])
    F.scaled_dot_product_attention = recording_sdpa
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=16 * heads,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        attn_implementation="sdpa",
    )
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.config._attn_implementation = "sdpa"
    model.train()
    ids = torch.randint(0, 128, (b, s))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    print(json.dumps({"version": transformers.__version__, "calls": calls}))


if __name__ == "__main__":
    main()
