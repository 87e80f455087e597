"""peft's MiCA (Minor Component Adaptation, arXiv:2604.01694; LoraConfig
``init_lora_weights="mica"``): LoRA whose lora_B is set once to the base weight's r left
singular vectors of smallest singular value and then frozen; lora_A (zero at init) trains.

peft 0.21.2 tuners/lora/variants.py MiCALinearVariant.init registers lora_B as a frozen peft
weight (``_register_frozen_peft_weight``, l.1254-1276); ``set_adapter`` freezes it again
(tuners_utils.py l.2067), so PEFT's benchmark loop's ``disable_adapter()`` does not give it
its gradient back, unlike LoRA-FA's lora_A (measured: tests/test_bdlora_mica.py). Its forward
is LoRA's after peft's input cast (layer.py Linear.forward casts first). Frozen B changes:
no gradient and no optimizer state for B, and lora_B's matmul no longer keeps its input
(lora_A's r-wide output), which only B's gradient needs (measured on a peft Linear). The SVD
of ``mica_init`` runs once in ``get_peft_model``, before training: not a step's moment.
"""

from __future__ import annotations

from ftmem.run import RunConfig


def b_frozen(run: RunConfig) -> bool:
    """lora_B frozen: MiCA."""
    return bool(run.lora_mica)


def keeps_a_output(run: RunConfig) -> bool:
    """lora_B's matmul keeps lora_A's output only when B trains."""
    return not b_frozen(run)
