"""Which dtype each kind of tensor has under a precision regime."""

from __future__ import annotations

from dataclasses import dataclass

from ftmem.dtypes import BYTES_PER_ELEMENT, Dtype, StorageFormat
from ftmem.run import GATED_PROMPT_METHODS, RunConfig


@dataclass(frozen=True, slots=True)
class Dtypes:
    """Resolved dtypes of one run (what the report states as the precision regime)."""

    base: Dtype  # frozen/trainable base weights outside quantised linears
    quantized: StorageFormat | None  # quantised linear weights (qlora), else None
    compute: Dtype  # activations: dtype of matmul inputs/outputs
    adapter: Dtype  # LoRA/DoRA parameters
    autocast: bool
    # the dtype a 4-bit linear computes in (bnb_4bit_compute_dtype); bitsandbytes stores
    # the linear's bias in it from the first forward on
    four_bit_compute: Dtype = "bf16"
    # the token embedding's and LM head's dtype where it is not ``base``: TRL 0.7.5-0.21's
    # SFTTrainer casts them of a 4-bit base back to bf16 after peft's fp32 upcast
    # (huggingface/trl trl/trainer/utils.py@v0.13.0 peft_module_casting_to_bf16, l.872-879)
    ends: Dtype | None = None

    @property
    def residual_bytes(self) -> int:
        """Element size of the residual stream: the dtype of the non-quantised weights
        (fp32 under autocast with fp32 parameters)."""
        return BYTES_PER_ELEMENT[self.base]

    @property
    def head(self) -> Dtype:
        """The dtype of the token embedding and the LM head weights."""
        return self.ends or self.base

    @property
    def first_input_bytes(self) -> int:
        """Element size of the first block's input: the token embedding's output, in its
        weight's dtype (bf16 under TRL's cast; the 4-bit linears' outputs take their
        input's dtype, so the stream is fp32 again after the first fp32 norm)."""
        return BYTES_PER_ELEMENT[self.head]

    @property
    def casts_head(self) -> bool:
        """Whether autocast makes a 16-bit copy of the LM head weight for its matmul."""
        return self.autocast and self.head != self.compute

    @property
    def four_bit_outputs_fp32(self) -> bool:
        """bitsandbytes' 4-bit linears answer in their input's dtype: under autocast with
        fp32 non-quantised weights (an fp32 residual stream) their outputs are fp32."""
        return self.quantized in ("nf4", "fp4") and self.autocast and self.base == "fp32"

    @property
    def casts_weights(self) -> bool:
        """Whether autocast makes 16-bit copies of the base weights: only of weights in
        another dtype (aten/src/ATen/autocast_mode.h, cached_cast: a tensor already in
        the autocast dtype is used as it is), so not of a bf16 model under bf16 autocast
        (HF Trainer's --bf16 on a model loaded in bf16)."""
        return self.autocast and self.base != self.compute

    def describe(self) -> str:
        ends = f"{self.ends} embedding and head, " if self.ends else ""
        base = (
            f"{self.quantized} linears, {ends}{self.base} rest"
            if self.quantized
            else f"{self.base} weights"
        )
        cast = ", autocast" if self.autocast else ""
        return f"{base}, {self.compute} compute{cast}"


def resolve_dtypes(run: RunConfig) -> Dtypes:
    """fp32: all fp32. bf16/fp16: everything 16-bit. *-mixed: fp32 params + autocast.

    Adapters follow peft: with ``adapter_dtype=auto`` a 16-bit base gets fp32 adapters
    (peft's ``autocast_adapter_dtype=True``).
    """
    half: Dtype = "fp16" if run.precision.startswith("fp16") else "bf16"
    base: Dtype = half if run.precision in ("bf16", "fp16") else "fp32"
    autocast = run.uses_autocast
    compute: Dtype = half if (autocast or base != "fp32") else "fp32"
    adapter: Dtype
    if run.method in GATED_PROMPT_METHODS:
        # LitGPT builds the adapter with the model, in Fabric's precision; peft's adaption
        # prompt takes q_proj's (GPT-2: c_proj's) weight dtype, and is no BaseTuner, so
        # autocast_adapter_dtype never upcasts it (peft 0.21.2 tuners/adaption_prompt/
        # layer.py AdaptedAttention.__init__, model.py AdaptionPromptModel)
        adapter = base
    elif run.adapter_dtype == "auto":
        adapter = "fp32"
    else:
        adapter = run.adapter_dtype
    return Dtypes(
        base=base,
        quantized=run.quant_format,
        compute=compute,
        adapter=adapter,
        autocast=autocast,
        four_bit_compute=run.compute_dtype or compute,
        ends="bf16" if run.trl_bf16_cast else None,
    )
