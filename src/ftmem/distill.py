"""Knowledge distillation: a frozen teacher beside the student in training.

The step this models (ftmem's reference loop, ``ftmem.measure``): the teacher runs
first, under ``torch.no_grad()`` and without a KV cache, and returns its logits; the
student runs with its labels; the loss is the student's cross-entropy plus the
temperature-scaled KL divergence between the two distributions, in fp32::

    kl_div(log_softmax(student / τ), softmax(teacher / τ)) · τ²

What it adds to the student's own step: the teacher's weights (in their serving
format), its forward's transients (no activations are kept), its logits until the
loss is formed, and the KL term's two fp32 distributions, kept for backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftmem.arch import Architecture
from ftmem.dtypes import FP32
from ftmem.errors import InvalidInputError
from ftmem.run import RunConfig
from ftmem.serve import ServeConfig, WeightFormat, prefill_bytes, weight_bytes


@dataclass(frozen=True, slots=True)
class Teacher:
    arch: Architecture
    weights: WeightFormat = "bf16"


@dataclass(frozen=True, slots=True)
class DistillSizes:
    weights: int  # the teacher's weights
    teacher_forward: int  # the teacher forward's largest moment, its logits included
    kept: int  # until the loss backward: the KL's two fp32 distributions
    loss_forward: int  # at the loss: teacher logits, the KL term's transient fp32 copies
    loss_backward: int  # beyond the cross-entropy's own backward


def distill_sizes(teacher: Teacher, student: Architecture, run: RunConfig) -> DistillSizes:
    t = teacher.arch
    if t.vocab_size != student.vocab_size:
        raise InvalidInputError(
            f"The teacher's vocabulary ({t.vocab_size:,}) differs from the student's "
            f"({student.vocab_size:,}): logit distillation needs the same tokenizer."
        )
    T, V = run.batch_size * run.seq_len, student.vocab_size
    logit_bytes = 4 if teacher.weights == "fp32" else 2
    logits = T * V * logit_bytes
    # the prefill moments of one forward over the whole batch (serve's derivation), with
    # every position's logits instead of the last ones
    cfg = ServeConfig(weights=teacher.weights, sequences=run.batch_size, context=run.seq_len)
    forward = prefill_bytes(t, cfg) - run.batch_size * V * FP32 + logits
    return DistillSizes(
        weights=weight_bytes(t, teacher.weights),
        teacher_forward=forward,
        # the student's log-probabilities and the teacher's probabilities (fp32)
        kept=2 * T * V * FP32,
        # at the loss: the teacher's logits (dropped once the loss is formed) and the
        # fp32 copy of one side's logits divided by τ
        loss_forward=logits + 2 * T * V * FP32,
        # the KL branch's fp32 gradients come after the cross-entropy's are freed
        # (measured): nothing beyond them
        loss_backward=0,
    )
