"""Size LitGPT's memory mechanisms for each LitGPT calibration row (analysis aid, not the product).

Usage: PYTHONPATH=src python scripts/calibration_litgpt_mechanisms.py

Each mechanism is derived in calibration/notes/litgpt.md from LitGPT, Lightning and bitsandbytes
source at the rows' commits (M-numbers as there). The sum is added to ftmem's current allocated
peak to show how much of each row's miss the mechanisms would explain. Additive: it ignores that
some of them replace, rather than add to, what ftmem already counts (its loss temporaries).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

import ftmem

ROOT = Path(__file__).resolve().parent.parent / "calibration"
GIB = 2**30
REFUSED = {"phi-1_5", "stablelm-base-alpha-3b"}  # model types ftmem does not build yet


def shape(model: str) -> dict:
    c = json.loads((ROOT / "configs" / model / "config.json").read_text())
    d, nh = c["hidden_size"], c["num_attention_heads"]
    kvh = c.get("num_key_value_heads") or (1 if c.get("multi_query") else nh)
    return {
        "d": d,
        "L": c["num_hidden_layers"],
        "nh": nh,
        "hs": c.get("head_dim") or d // nh,
        "kvh": kvh,
        "I": c.get("intermediate_size") or 4 * d,
        "V": c["vocab_size"],
        "tied": bool(c.get("tie_word_embeddings")),
        "softcap": c.get("attn_logit_softcapping"),
    }


def nf4_bytes(double_quant: bool) -> float:
    """bitsandbytes 4-bit bytes per weight: packed nibbles + absmax per 64 (fp32, or uint8 + fp32 per 256)."""
    return 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)


def deltas(model: str, s: dict) -> dict[str, float]:
    a = shape(model)
    b, t = s["batch_size"], s["seq_len"]
    n = b * t
    d, layers, nh, hs, kvh, inter, v = a["d"], a["L"], a["nh"], a["hs"], a["kvh"], a["I"], a["V"]
    qd, kv = nh * hs, kvh * hs
    quant = s["method"] == "qlora"
    w4 = nf4_bytes(bool(s.get("double_quant")))
    out: dict[str, float] = {}
    if quant:  # M1: MatMul4Bit keeps A (block 0's qkv input excluded, LM head input added)
        out["M1"] = layers * 2 * n * (d + qd + d + inter)
        # M2: LM head 4-bit instead of bf16 (when ftmem holds a separate one) + fp16/bf16 dequant
        out["M2"] = (0 if a["tied"] else -(2 - w4) * v * d) + 4 * v * d
    if a["tied"]:  # M3: LitGPT never ties the LM head
        out["M3"] = v * d * (w4 if quant else 2)
    if model == "falcon-7b":  # M4: SDPA (bf16 q, k, v, out) where ftmem models eager fp32
        eager = 3 * 4 * n * qd + 4 * b * nh * t * t
        sdpa = 3 * 2 * n * qd + 2 * n * qd + 4 * b * nh * t
        out["M4 falcon"] = layers * (sdpa - eager)
    elif kvh != nh:  # M4: k, v expanded to all heads before SDPA
        out["M4"] = layers * 4 * n * (qd - kv)
    if a["softcap"]:  # M4: Gemma-2's eager softcapped attention
        out["M4 softcap"] = layers * 8 * b * nh * t * t
    targets = (s.get("lora_targets") or "").split(",")
    attn = len([x for x in targets if x in ("q", "k", "v")])
    if model == "phi-3-mini-4k" and "gate" in targets:  # M5: fc_1, fc_2 split (HF fuses gate_up)
        out["M5"] = layers * 3 * n * d
    elif s["method"] != "full" and attn > 1 and s.get("lora_dropout"):  # M5: one qkv dropout
        out["M5"] = -layers * (attn - 1) * 3 * n * d
    out["M6"] = 4 * n * v  # M6: Fabric's fp32 logits kept beside the fp32 log-softmax
    return out


def main() -> None:
    rows = {r["id"]: r for r in yaml.safe_load((ROOT / "published.yaml").read_text())}
    print("| row | measured | ftmem | error | +mech | error after | ftmem tmp | mechanisms |")
    print("|---|---|---|---|---|---|---|---|")
    for entry in yaml.safe_load((ROOT / "settings" / "litgpt.yaml").read_text()):
        if entry["model"] in REFUSED:
            continue
        s = entry["settings"]
        config = ROOT / "configs" / entry["model"] / "config.json"
        est = ftmem.estimate(str(config), gpu=entry["gpu"], **s)
        got = est.memory.peak_allocated_bytes
        peak = rows[entry["id"]]["measured_peak"]
        meas = peak["value"] * (1e9 if peak["unit"] == "GB" else GIB)
        dl = deltas(entry["model"], s)
        add = sum(dl.values())
        parts = ", ".join(f"{k} {x / GIB:+.2f}" for k, x in dl.items())
        print(
            f"| {entry['id']} | {meas / GIB:.2f} | {got / GIB:.2f} | {(got - meas) / meas:+.1%} "
            f"| {add / GIB:+.2f} | {(got + add - meas) / meas:+.1%} "
            f"| {est.memory.at_peak.temporaries / GIB:.2f} | {parts} |"
        )


if __name__ == "__main__":
    main()
