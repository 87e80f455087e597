"""A fingerprint of every estimate over a wide grid, to show a refactor or a speed-up
leaves the numbers alone.

    python scripts/fingerprint_estimates.py OUT.jsonl [--accuracy] [--wide]

Writes one line per case (the settings, then the whole Estimate as JSON, or the error
it raised) over every preset × methods × precisions × checkpointing × two shapes on one
GPU, the same presets spread over 8 GPUs under each strategy, and single options
(optimizers, attention, loss, offload, quantisation, distillation...) on their own; prints
the count and the SHA-256 of the file. Run it before and after a change: the two
digests must match. It also prints the digest of a hashed sample of the grid (about
one case in four), which the test suite checks by default. ``--accuracy`` adds the digest of the accuracy suite's tiny
configurations, estimated (both are checked by tests/test_fingerprint.py); ``--wide``
that of a larger grid of multi-GPU layouts and activation offload (a few minutes).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from ftmem.distill import Teacher
from ftmem.errors import FtmemError
from ftmem.estimate import estimate_step
from ftmem.parallel import ParallelConfig
from ftmem.presets import get_gpu, get_model, model_presets
from ftmem.run import RunConfig

METHODS = (
    "full",
    "freeze",
    "galore",
    "lora",
    "qlora",
    "dora",
    "bitfit",
    "adapter",
    "ia3",
    "prompt-tuning",
    "prefix-tuning",
    "p-tuning",
)
PRECISIONS = ("bf16", "bf16-mixed", "fp16-mixed", "fp32")
SHAPES = ((1, 512), (4, 2048))
SPREADS: tuple[dict[str, Any], ...] = (
    {"strategy": "ddp"},
    {"strategy": "zero1"},
    {"strategy": "zero2"},
    {"strategy": "zero3"},
    {"strategy": "fsdp"},
    {"strategy": "zero3", "offload_optimizer": "cpu", "offload_params": "cpu"},
    {"strategy": "zero1", "pp": 2},
    {"strategy": "ddp", "tp": 2},
)
SINGLE_OPTIONS: tuple[dict[str, Any], ...] = (
    {"optimizer": "adamw-8bit"},
    {"optimizer": "paged-adamw-8bit"},
    {"optimizer": "sgd"},
    {"optimizer": "sgd-momentum"},
    {"optimizer": "adafactor"},
    {"optimizer": "lion"},
    {"optimizer_impl": "fused"},
    {"optimizer_impl": "for-loop"},
    {"attn": "eager"},
    {"attn": "flash"},
    {"loss": "chunked"},
    {"loss": "fused"},
    {"loss": "logprob-tiles"},
    {"objective": "dpo"},
    {"objective": "kto", "batch_size": 2},
    {"objective": "grpo", "seq_len": 1024, "batch_size": 8, "kl_beta": 0.04},
    {"method": "qlora", "framework": "unsloth", "grad_ckpt": True},
    {"activation_offload": True},
    {"grad_accum": 4},
    {"accounting": "simple"},
    {"optimizer_in_backward": True},
    {"method": "qlora", "quant": "fp4"},
    {"method": "qlora", "quant": "int8"},
    {"method": "qlora", "quant": "int4"},
    {"method": "lora", "lora_targets": "all-linear", "lora_dropout": 0.1},
    {"method": "lora", "lora_modules_to_save": "embed,head"},
    {"method": "dora", "precision": "bf16-mixed", "grad_ckpt": True},
    {"method": "partial", "trainable_modules": "self_attn"},
    {"method": "freeze", "trainable_layers": 2},
    {"method": "rslora"},
    {"method": "longlora"},
    {"method": "relora"},
    {"method": "adapter", "adapter_placement": "pfeiffer"},
    {"method": "prefix-tuning", "prefix_projection": True},
    {"device": "cpu", "precision": "fp32"},
)


# (description, architecture, run settings, spread settings, teacher)
Case = tuple[dict[str, Any], Any, dict[str, Any], dict[str, Any] | None, Any]


def cases() -> Iterator[Case]:
    """(description, architecture, run, spread, teacher) for every case."""
    presets = sorted(model_presets().items())
    for (name, arch), method, precision, ckpt, (b, s) in itertools.product(
        presets, METHODS, PRECISIONS, (False, True), SHAPES
    ):
        settings = dict(method=method, precision=precision, grad_ckpt=ckpt, batch_size=b, seq_len=s)
        yield {"model": name, **settings}, arch, settings, None, None
    for (name, arch), method, precision, ckpt, spread in itertools.product(
        presets, ("full", "lora", "qlora"), ("bf16", "bf16-mixed"), (False, True), SPREADS
    ):
        settings = dict(method=method, precision=precision, grad_ckpt=ckpt, batch_size=2)
        par = {"gpus": 8, **spread}
        yield {"model": name, **settings, **par}, arch, settings, par, None
    for (name, arch), option in itertools.product(presets, SINGLE_OPTIONS):
        yield {"model": name, **option}, arch, dict(option), None, None
    teacher = Teacher(get_model("llama2-13b"), "bf16")
    for name, arch in presets:
        settings = {"method": "lora", "precision": "bf16-mixed"}
        yield {"model": name, **settings, "teacher": "llama2-13b"}, arch, settings, None, teacher


# The wide grid (``--wide``, a few minutes): multi-GPU layouts the grid above leaves
# out, and activation offload with checkpointing, accumulation and frozen blocks.
WIDE_SPREADS = (
    {"strategy": "fsdp-grad-op"},
    {"strategy": "fsdp-hybrid", "nodes": 2},
    {"strategy": "fsdp-no-shard"},
    {"strategy": "fsdp", "offload_params": "cpu"},
    {"strategy": "fsdp", "nodes": 2},
    {"strategy": "zero2", "offload_optimizer": "cpu"},
    {"strategy": "zero2", "offload_optimizer": "nvme"},
    {"strategy": "zero3", "offload_optimizer": "nvme", "offload_params": "nvme"},
    {"strategy": "zero3", "offload_optimizer": "cpu"},
    {"strategy": "zero1", "offload_optimizer": "cpu"},
    {"strategy": "zero1", "pp": 4},
    {"strategy": "ddp", "pp": 2, "tp": 2},
    {"strategy": "ddp", "cp": 2},
    {"strategy": "fsdp", "cp": 2, "tp": 2},
    {"strategy": "zero3", "bucket_elements": 12345},
    {"strategy": "fsdp", "host_memory_bytes": 10**9, "offload_params": "cpu"},
)
WIDE_METHODS = (
    ("full", {}),
    ("freeze", {}),
    ("galore", {}),
    ("lora", {}),
    ("qlora", {}),
    ("dora", {}),
    ("bitfit", {}),
    ("ia3", {}),
    ("adapter", {}),
    ("prompt-tuning", {}),
    ("partial", {"trainable_modules": "mlp|lm_head|embed"}),
    ("longlora", {}),
)
OFFLOAD_SPREADS = (
    None,
    {"strategy": "zero1", "pp": 2},
    {"strategy": "fsdp"},
    {"strategy": "zero3"},
    {"strategy": "ddp", "pp": 4, "tp": 2},
)


def wide_cases() -> Iterator[Case]:
    presets = sorted(model_presets().items())
    for (name, arch), (method, extra), precision, ckpt, accum, spread in itertools.product(
        presets,
        WIDE_METHODS,
        ("bf16-mixed", "fp32", "fp16-mixed"),
        (False, True),
        (1, 4),
        WIDE_SPREADS,
    ):
        settings = dict(
            method=method, precision=precision, grad_ckpt=ckpt, batch_size=2, grad_accum=accum
        )
        par = {"gpus": 8, **spread}
        yield {"model": name, **settings, **extra, **par}, arch, {**settings, **extra}, par, None
    for (name, arch), (method, extra), precision, ckpt, accum, spread in itertools.product(
        presets, WIDE_METHODS[:6], ("bf16-mixed", "bf16"), (False, True), (1, 4), OFFLOAD_SPREADS
    ):
        settings = dict(
            method=method,
            precision=precision,
            grad_ckpt=ckpt,
            activation_offload=True,
            batch_size=2,
            grad_accum=accum,
            **extra,
        )
        par = None if spread is None else {"gpus": 8, **spread}
        yield {"model": name, **settings, **(par or {})}, arch, settings, par, None


def accuracy_cases() -> Iterator[Case]:
    """The measured accuracy suite's configurations (tiny models, every family and
    method), estimated only: the grid above runs the presets."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # run as a script: the tests package sits beside scripts/
        sys.path.insert(0, root)
    from tests.accuracy.cases import CASES

    for case in CASES:
        settings = case.run().model_dump(exclude_defaults=True)
        yield {"accuracy case": case.id}, case.arch(), settings, None, None


SAMPLE_EVERY = 4


def sampled(cases: Iterable[Case], every: int = SAMPLE_EVERY) -> Iterator[Case]:
    """About one case in ``every``, chosen by a hash of its description (spread over
    presets, methods and options alike, unlike every n-th case of the nested grid):
    the test suite's quick fingerprint; the whole grid runs with FTMEM_SLOW=1."""
    for case in cases:
        key = json.dumps(case[0], sort_keys=True).encode()
        if int.from_bytes(hashlib.sha256(key).digest()[:4], "big") % every == 0:
            yield case


def fingerprint(cases: Iterable[Case], out: TextIO | None = None) -> tuple[int, str]:
    """(count, SHA-256) of every case's whole estimate (or the error it raised), each line
    also written to ``out``."""
    gpu = get_gpu("a100-80gb")
    digest = hashlib.sha256()
    n = 0
    for desc, arch, settings, par, teacher in cases:
        try:
            run = RunConfig(**settings)
            spread = None if par is None else ParallelConfig(**par)
            result = estimate_step(arch, run, gpu, None, spread, teacher).model_dump_json()
        except (FtmemError, ValueError) as exc:
            result = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        line = json.dumps(desc, sort_keys=True) + "\t" + result + "\n"
        if out is not None:
            out.write(line)
        digest.update(line.encode())
        n += 1
    return n, digest.hexdigest()


def main() -> None:
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        n, digest = fingerprint(cases(), out)
    print(f"{n} cases, sha256 {digest}")
    n, digest = fingerprint(sampled(cases()))
    print(f"{n} sampled cases, sha256 {digest}")
    if "--wide" in sys.argv[2:]:
        n, digest = fingerprint(wide_cases())
        print(f"{n} wide cases, sha256 {digest}")
    if "--accuracy" in sys.argv[2:]:
        n, digest = fingerprint(accuracy_cases())
        print(f"{n} accuracy cases, sha256 {digest}")


if __name__ == "__main__":
    main()
