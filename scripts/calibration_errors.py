"""ftmem's peak against the published calibration rows transcribed in calibration/settings/.

Usage: PYTHONPATH=src python scripts/calibration_errors.py calibration/settings/litgpt.yaml [...]

For each entry: the published metric, the measured peak in bytes (GB = 1e9, GiB = 2**30),
ftmem's peak_allocated_bytes and total_bytes, and the relative error of the allocated peak,
(ftmem - measured) / measured. Entries ftmem refuses print the refusal instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

import ftmem
from ftmem.errors import FtmemError

UNIT_BYTES = {"GB": 10**9, "GiB": 2**30, "G?": 2**30}  # 'G?': GaLore's README '22.8G', read as GiB


def metric_class(text: str) -> str:
    """The published metric as one of ftmem's classes (allocated, reserved, device)."""
    low = text.lower()
    if "allocated" in low and "reserved" not in low:
        return "allocated"
    if "reserved" in low:
        return "reserved"
    if "nvidia-smi" in low:
        return "device"
    return "not stated"


def measured_bytes(row: dict) -> int:
    peak = row["measured_peak"]
    return round(float(peak["value"]) * UNIT_BYTES[peak["unit"]])


def main(paths: list[str]) -> None:
    root = Path(__file__).resolve().parent.parent / "calibration"
    rows = {r["id"]: r for r in yaml.safe_load((root / "published.yaml").read_text())}
    print(
        "| id | metric | measured GiB | ftmem alloc GiB | ftmem total GiB | error | vs allocated |"
    )
    print("|---|---|---|---|---|---|---|")
    for path in paths:
        for entry in yaml.safe_load(Path(path).read_text()):
            row = rows[entry["id"]]
            metric = metric_class(row["measured_peak"]["metric"])
            got = measured_bytes(row)
            config = root / "configs" / entry["model"] / "config.json"
            try:
                est = ftmem.estimate(str(config), gpu=entry["gpu"], **entry["settings"])
            except FtmemError as exc:
                print(f"| {entry['id']} | {metric} | {got / 2**30:.2f} | refused: {exc} | | | |")
                continue
            alloc = est.memory.peak_allocated_bytes
            total = est.memory.total_bytes
            err = (alloc - got) / got
            # some posts give the allocated peak beside the reserved one (GiB)
            also = row["measured_peak"].get("allocated_gib")
            vs_alloc = f"{(alloc - also * 2**30) / (also * 2**30):+.1%}" if also else ""
            print(
                f"| {entry['id']} | {metric} | {got / 2**30:.2f} | {alloc / 2**30:.2f} "
                f"| {total / 2**30:.2f} | {err:+.1%} | {vs_alloc} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
