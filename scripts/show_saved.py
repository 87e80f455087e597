#!/usr/bin/env python
"""Print what ONE decoder block saves for backward, grouped by autograd op.

For a tiny model of a family (shapes overridable), a precision, a method and an
attention implementation: one forward pass (+ loss) is run, the autograd graph is
walked, and every tensor saved by a node created inside the chosen block is listed
with its op, attribute, shape, dtype and bytes. Each storage is counted once (a
storage saved by several ops is counted on the first, later ones show "shared");
parameters and buffers show "param" and count 0. The origin column says whether the
storage was produced inside the block or came in from outside (the block input,
rotary cos/sin, the attention mask).

    PYTHONPATH=src python scripts/show_saved.py --family llama --precision bf16-mixed
    PYTHONPATH=src python scripts/show_saved.py --family gpt2 --method lora --attn eager
    PYTHONPATH=src python scripts/show_saved.py --family mixtral --seq 64 --batch 2

Use distinct sizes (batch, seq, hidden, heads, head_dim, ffn, vocab) so that every
dimension of a shape can be told apart.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ftmem.arch import Architecture
from ftmem.run import RunConfig

# Tiny stand-ins for each family (structure of the real models, small shapes).
FAMILIES: dict[str, dict[str, object]] = {
    "llama": {},
    "mistral": {"sliding_window": 4096},
    "mixtral": {"num_experts": 4, "experts_per_token": 2},
    "gpt_oss": {
        "num_experts": 4,
        "experts_per_token": 2,
        "attention_qkv_bias": True,
        "attention_out_bias": True,
    },
    "qwen2": {"attention_qkv_bias": True},
    "gemma": {"activation": "gelu_tanh", "tie_embeddings": True},
    "gemma2": {
        "activation": "gelu_tanh",
        "tie_embeddings": True,
        "norms_per_block": 4,
        "sliding_window": 4096,
        "final_logit_softcapping": 30.0,
    },
    "phi3": {},
    "gpt2": {
        "mlp": "plain",
        "activation": "gelu_tanh",
        "norm": "layernorm",
        "attention_qkv_bias": True,
        "attention_out_bias": True,
        "mlp_bias": True,
        "tie_embeddings": True,
        "position_embedding": "learned",
    },
    "falcon": {
        "mlp": "plain",
        "activation": "gelu",
        "norm": "layernorm",
        "norms_per_block": 1,
        "parallel_attn_mlp": True,
        "tie_embeddings": True,
    },
}
NO_GQA = {"gpt2"}  # families without grouped KV heads
FIXED_HEAD_DIM = {"gpt2", "falcon"}  # head_dim = hidden / heads


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="llama", choices=sorted(FAMILIES))
    ap.add_argument(
        "--precision", default="bf16", choices=["fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"]
    )
    ap.add_argument("--autocast", action="store_true", help="autocast with plain bf16/fp16")
    ap.add_argument("--method", default="full")
    ap.add_argument("--ia3-targets", default=None, help="IA³ targets (default k,v,down)")
    ap.add_argument("--virtual-tokens", type=int, default=None, help="prompt methods")
    ap.add_argument("--settings", default="", help="more RunConfig settings: key=value,...")
    ap.add_argument("--attn", default="sdpa", choices=["eager", "sdpa", "flash"])
    ap.add_argument("--targets", default=None, help="LoRA targets (q,v / attention / all-linear)")
    ap.add_argument("--r", type=int, default=None, help="LoRA rank")
    ap.add_argument("--adapter-dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--quant", default=None, choices=["nf4", "fp4", "int8"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=None)
    ap.add_argument("--ffn", type=int, default=176)
    ap.add_argument("--vocab", type=int, default=320)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--block", type=int, default=1, help="which block to show (default 1)")
    ap.add_argument("--device", default="cpu")
    return ap.parse_args(argv)


def make_arch(a: argparse.Namespace) -> Architecture:
    fam = a.family
    kw: dict[str, object] = {
        "name": f"tiny-{fam}",
        "family": fam,
        "vocab_size": a.vocab,
        "hidden_size": a.hidden,
        "num_layers": a.layers,
        "num_heads": a.heads,
        "intermediate_size": a.ffn,
        "max_position_embeddings": max(128, a.seq),
        **FAMILIES[fam],
    }
    if fam not in NO_GQA:
        kw["num_kv_heads"] = a.kv_heads
    if fam == "falcon" and a.kv_heads not in (1, a.heads):
        kw["norms_per_block"] = 2  # grouped KV heads: Falcon-40B's new decoder architecture
    if a.head_dim is not None and fam not in FIXED_HEAD_DIM:
        kw["head_dim"] = a.head_dim
    return Architecture(**kw)


def make_run(a: argparse.Namespace) -> RunConfig:
    kw: dict[str, object] = {
        "method": a.method,
        "precision": a.precision,
        "attn": a.attn,
        "batch_size": a.batch,
        "seq_len": a.seq,
        "optimizer": "sgd",
    }
    if a.autocast:
        kw["autocast"] = True
    if a.method in ("lora", "dora", "qlora"):
        kw.update(lora_targets=a.targets, lora_r=a.r, adapter_dtype=a.adapter_dtype)
    if a.method == "qlora":
        kw["quant"] = a.quant
    if a.ia3_targets:
        kw["ia3_targets"] = a.ia3_targets
    if a.virtual_tokens:
        kw["virtual_tokens"] = a.virtual_tokens
    for item in filter(None, a.settings.split(",")):
        key, _, value = item.partition("=")
        kw[key] = {"true": True, "false": False}.get(value, value)
    return RunConfig(**kw)


def fmt_bytes(n: int) -> str:
    return f"{n:,}"


def main(argv: list[str] | None = None) -> int:  # noqa: C901 (debt: one branch per option)
    a = parse_args(argv)
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from ftmem.measure.build import build_model, find_blocks
    from ftmem.measure.saved import next_sequence_nr, walk_saved, weight_storage_ptrs
    from ftmem.measure.tracker import storage_key

    arch, run = make_arch(a), make_run(a)
    built = build_model(arch, run, device=a.device, seed=0)
    model = built.model
    found = find_blocks(model)
    if found is None:
        raise SystemExit("no decoder-block list found in the model")
    prefix, blocks = found
    if not 0 <= a.block < len(blocks):
        raise SystemExit(f"--block must be in 0..{len(blocks) - 1}")
    block = blocks[a.block]

    region = {"now": "outside"}
    origin: dict[int, str] = {}  # storage ptr -> where it was produced
    seq = {"start": 0, "end": 0}

    class Origins(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    key = storage_key(t)
                    if key is not None and key[0] not in origin:  # views keep their origin
                        origin[key[0]] = region["now"]
                        weakref.finalize(t.untyped_storage(), origin.pop, key[0], None)
            return out

    def pre(_mod, _args, _kwargs=None):
        region["now"] = "block"
        seq["start"] = next_sequence_nr()

    def post(_mod, _args, _out):
        seq["end"] = next_sequence_nr()
        region["now"] = "after"

    h1 = block.register_forward_pre_hook(pre)
    h2 = block.register_forward_hook(post)
    ids = torch.randint(
        0,
        arch.vocab_size,
        (run.batch_size, run.seq_len),
        generator=torch.Generator().manual_seed(0),
    ).to(a.device)
    ac = (
        torch.autocast(device_type=torch.device(a.device).type, dtype=built.autocast_dtype)
        if built.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with warnings.catch_warnings(), ac, Origins():
        warnings.simplefilter("ignore")
        loss = model(input_ids=ids, labels=ids).loss
    h1.remove()
    h2.remove()

    weights = weight_storage_ptrs(model)
    saved = walk_saved(loss.grad_fn, weights, (seq["start"], seq["end"]))

    B, S = run.batch_size, run.seq_len
    print(
        f"{arch.name}: hidden {arch.hidden_size}, heads {arch.num_heads}, kv {arch.kv_heads}, "
        f"head_dim {arch.head_size}, ffn {arch.intermediate_size}, vocab {arch.vocab_size}"
        + (f", experts {arch.num_experts} top-{arch.experts_per_token}" if arch.is_moe else "")
    )
    autocast = str(built.autocast_dtype).replace("torch.", "") if built.autocast_dtype else ""
    adapters = run.method in ("lora", "dora", "qlora")
    print(
        f"run: method {run.method}, precision {run.precision}"
        + (f" + autocast {autocast}" if autocast else "")
        + f", attn {built.attn_implementation}, batch {B}, seq {S} (tokens {B * S})"
        + (f", targets {run.targets}, r {run.r}" if adapters else "")
    )
    for note in built.notes:
        print(f"note: {note}")
    print(
        f"block {a.block} of {len(blocks)} ({prefix}.{a.block}), autograd nodes "
        f"{seq['start'] + 1}..{seq['end'] - 1}\n"
    )

    # group by op, in order of first appearance
    groups: dict[str, list] = {}
    for s in saved:
        groups.setdefault(s.op, []).append(s)
    header = f"  {'attr':<22} {'shape':<22} {'dtype':<9} {'bytes':>12}  origin"
    total = 0
    totals_by_op: dict[str, int] = {}
    for op, items in groups.items():
        op_total = sum(s.nbytes for s in items)
        totals_by_op[op] = op_total
        total += op_total
        print(f"{op}  ({len(items)} saved, {fmt_bytes(op_total)} B)")
        print(header)
        for s in items:
            if s.ptr in weights:
                size, where = "param", "weight"
            elif s.nbytes == 0:
                size, where = f"shared {fmt_bytes(s.storage_nbytes)}", origin.get(s.ptr, "outside")
            else:
                size, where = fmt_bytes(s.nbytes), origin.get(s.ptr, "outside")
            shape = "(" + ", ".join(map(str, s.shape)) + ")"
            print(f"  {s.attr:<22} {shape:<22} {s.dtype:<9} {size:>12}  {where}")
        print()

    print("by op (each storage once):")
    for op, n in sorted(totals_by_op.items(), key=lambda kv: -kv[1]):
        if n:
            print(f"  {op:<50} {fmt_bytes(n):>12} B  {n / (B * S):10.1f} B/token")
    from_outside = sum(s.nbytes for s in saved if s.nbytes and origin.get(s.ptr) != "block")
    print(
        f"\nblock total: {fmt_bytes(total)} B = {total / (B * S):.1f} B/token"
        f" = {total / (B * S * arch.hidden_size):.2f} B per token per hidden unit"
    )
    print(
        f"  of which produced outside the block (its input, cos/sin, masks): "
        f"{fmt_bytes(from_outside)} B"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
