"""What-if for calibration/notes/qwen.md: ftmem's phases plus the mechanisms cited there and in
deepspeed.md, each a formula in the run's terms; no constant is fitted to the rows.

Run from the repository root: python calibration/notes/qwen_whatif.py
"""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, "src")
import ftmem

R = 64  # lora_r of every LoRA row (finetune.py LoraArguments)
# h, MLP width f' (= intermediate_size / 2 in Qwen-1's config), blocks, vocabulary
DIMS = {
    "qwen1-1.8b": (2048, 5504, 24, 151936),
    "qwen1-7b": (4096, 11008, 32, 151936),
    "qwen1-14b": (5120, 13696, 40, 152064),
}
# ZeRO-3 sub-group 0 of Qwen-1 1.8B (wte + 14 blocks) and its psi (deepspeed.md)
N_SG0, PSI_1P8B = 311_164_928 + 14 * 50_604_032, 1_836_828_672


def terms(model: str, s: dict) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Each mechanism's bytes and the phases it applies to."""
    h, f, L, V = DIMS[model]
    psi = L * R * (9 * h + 3 * f)  # LoRA on the fused c_attn (qwen.md M4)
    extra_adapters = 2 * R * h * L  # the stand-in's separate q, k, v adapters
    tv = s["seq_len"] * V
    out: dict[str, tuple[int, tuple[str, ...]]] = {}
    all3 = ("forward", "backward", "optimizer")
    if s["method"] in ("lora", "qlora"):
        out["lora_standin"] = (-16 * extra_adapters, all3)
    if s["method"] == "qlora":
        block = 3 * h * h + h * h + 3 * h * f
        out["gptq_saved_fp16+unpack"] = (2 * block + 5 * 3 * h * h, ("backward",))  # M10
        out["zero2_second_grad_buf"] = (2 * psi, ("backward",))
        out["loss_fp16_no_upcast"] = (-4 * tv, ("forward", "backward"))  # M7
    if s["method"] == "full":
        out["loss_bf16_no_upcast"] = (-4 * tv, ("forward", "backward"))
        out["zero3_subgroup_step"] = (6 * N_SG0 - 4 * PSI_1P8B, ("optimizer",))
    if s["method"] == "lora":
        out["no_bf16_head_copy"] = (-2 * V * h, ("forward", "backward"))  # M2
        fp32_states = 4 * psi
        bf16_states = 2 * 2 * V * h if s.get("lora_modules_to_save") else 0
        step = 2 * bf16_states + fp32_states - max(bf16_states, fp32_states)
        out["torch2.0_adamw_denom"] = (step if bf16_states else fp32_states, ("optimizer",))
    return out


def main() -> None:
    settings = yaml.safe_load(Path("calibration/settings/qwen.yaml").read_text())
    published = {e["id"]: e for e in yaml.safe_load(Path("calibration/published.yaml").read_text())}
    print(
        f"{'id':28s} {'meas':>5s} {'ftmem':>6s} {'err':>7s} | {'what-if':>7s} {'err':>7s}  terms (GB)"
    )
    for e in settings:
        s = e["settings"]
        est = ftmem.estimate(f"calibration/configs/{e['model']}/config.json", gpu="a100-80gb", **s)
        phases = dict(est.memory.phases)
        added = terms(e["model"], s)
        for nbytes, where in added.values():
            for phase in where:
                phases[phase] += nbytes
        meas = float(published[e["id"]]["measured_peak"]["value"]) * 1e9
        old, new = est.memory.peak_allocated_bytes, max(phases.values())
        shown = " ".join(f"{k}={v / 1e9:+.2f}" for k, (v, _) in added.items())
        print(
            f"{e['id']:28s} {meas / 1e9:5.1f} {old / 1e9:6.2f} {(old - meas) / meas:+7.1%} | "
            f"{new / 1e9:7.2f} {(new - meas) / meas:+7.1%}  {shown}"
        )


if __name__ == "__main__":
    main()
