"""The whole single-GPU LoRA table of Qwen-1's README against ftmem's device figure, for
calibration/notes/qwen.md (issue 16): the 12 calibrated cells (1.8B LoRA, 7B/14B LoRA (emb)
at 256 and 8192) and the 24 others of the same table under the same settings (1.8B
LoRA (emb), 7B/14B LoRA, the other lengths), which the calibration set does not hold.

"LoRA" is a Chat model without trainable embedding and head, "LoRA (emb)" a base model
with `modules_to_save=["wte", "lm_head"]` (README@e8e15962 "Profiling of Memory and
Speed"; finetune.py@e8e15962 l.323-326). Every cell takes the settings of
calibration/settings/qwen.yaml's qwen1-7b-loraemb-seq256 with its length, and without
`lora_modules_to_save` for the LoRA cells. The figures are read as thousands of MiB, as the
calibration set reads them. No constant is fitted.

Run from the repository root: python calibration/notes/qwen_readme_grid.py
"""

import sys
from pathlib import Path

import yaml

sys.path.insert(0, "src")
import ftmem

GIB = 2**30
LENGTHS = (256, 512, 1024, 2048, 4096, 8192)
# QwenLM/Qwen README, "Profiling of Memory and Speed": 7B/14B rows @e6f2a7af, 1.8B @e8e15962
README = {
    ("qwen1-1.8b", "LoRA"): (6.7, 7.4, 8.4, 11.0, 16.2, 21.8),
    ("qwen1-1.8b", "LoRA (emb)"): (13.7, 14.0, 14.0, 15.1, 19.7, 27.7),
    ("qwen1-7b", "LoRA"): (20.1, 20.4, 21.5, 23.8, 29.7, 36.6),
    ("qwen1-7b", "LoRA (emb)"): (33.7, 34.1, 35.2, 35.1, 39.2, 48.5),
    ("qwen1-14b", "LoRA"): (34.6, 35.1, 35.3, 37.4, 42.5, 55.2),
    ("qwen1-14b", "LoRA (emb)"): (51.2, 51.1, 51.5, 54.1, 56.8, 67.7),
}


def main() -> None:
    rows = {e["id"]: e for e in yaml.safe_load(Path("calibration/settings/qwen.yaml").read_text())}
    base = dict(rows["qwen1-7b-loraemb-seq256"]["settings"])
    print("| model | method | tokens | measured GiB | device | gap | allocated | reserved |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, method), values in README.items():
        for seq, value in zip(LENGTHS, values, strict=True):
            settings = {**base, "seq_len": seq}
            if method == "LoRA":
                settings.pop("lora_modules_to_save")
            config = f"calibration/configs/{model}/config.json"
            m = ftmem.estimate(config, gpu="a100-80gb", **settings).memory
            measured = value * 1000 / 1024
            device = m.device_bytes / GIB
            print(
                f"| {model} | {method} | {seq} | {measured:.2f} | {device:.2f} | "
                f"{measured - device:+.2f} | {m.peak_allocated_bytes / GIB:.2f} | "
                f"{m.peak_reserved_bytes / GIB:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
