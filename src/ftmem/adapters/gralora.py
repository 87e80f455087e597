"""peft's GraLoRA (Granular LoRA, peft tuners/gralora): each adapted linear's input and
output split into k sub-blocks, a rank-r LoRA per (input block, output block) pair at r/k
per pair.

peft 0.21.2 tuners/gralora/layer.py (the same at huggingface/peft@5d602fdbff04, the
MetaMathQA release): ``gralora_A`` is one ``(k, in/k, r)`` tensor and ``gralora_B`` one
``(k, r, out/k)`` (update_layer l.66-157): r · (in + out) values, LoRA's count at the same
rank. Linear.forward (l.320-388) casts the input to the adapter dtype, multiplies each
input block by its A (``einsum("blni,nir->blnr")``: k · r outputs per token), regroups that
output by output block (view, permute, reshape: a copy) and multiplies it by B. Measured on
a peft up/down pair (tests/test_gralora.py): autograd keeps LoRA's input cast (a view) and
the regrouped A output, T · k · r wide where LoRA's is T · r; the sum (the adapter's fp32
output, its cast, the scaled copy added in place) holds what LoRA's does.

Under autocast (measured on the CPU, modelled for CUDA; calibration/notes/peft.md,
"Autocast, stop 47"): the einsums keep what LoRA's matmuls keep (a 16-bit copy of the
input and of each factor, the 16-bit A output), and Linear.forward ends with
``result.to(previous_dtype)`` (l.386), so an adapted linear answers in its input's dtype
(fp32 over fp32 weights), where LoRA's answers in the base output's
(adapters/answer_dtype.py).
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.errors import InvalidInputError
from ftmem.run import RunConfig


def a_output_width(run: RunConfig) -> int:
    """Width of what the adapter's second product keeps per token: LoRA's r, GraLoRA's k · r."""
    return run.r * run.gralora_blocks if run.method == "gralora" else run.r


def shapes(lin: Linear, r: int, k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """gralora_A's and gralora_B's shapes on ``lin`` (update_layer l.119-123)."""
    return (k, lin.in_features // k, r), (k, r, lin.out_features // k)


def check_divisible(adapted: tuple[Linear, ...], r: int, k: int) -> None:
    """What GraloraConfig.__post_init__ and update_layer refuse: k must divide the rank and
    every adapted linear's inputs and outputs."""
    for lin in adapted:
        if r % k or lin.in_features % k or lin.out_features % k:
            raise InvalidInputError(
                f"--gralora-k {k} must divide the rank ({r}) and {lin.module}'s "
                f"{lin.in_features} inputs and {lin.out_features} outputs (peft refuses it); "
                "choose another --gralora-k or --lora-r."
            )
