"""A checkpoint shipped quantised: config.json's ``quantization_config``, read for the
format of the base weights a LoRA trains on (issue 17).

transformers loads such a base in its quantised form and trains adapters only on it
(``Trainer`` refuses a purely quantised model: transformers 5.24,
trainer_utils.py ``validate_quantization_for_training``); so a LoRA on it is a QLoRA whose base came quantised:
- GPTQ and AWQ at 4 bits: int4 weights with group scales (``--quant int4``);
- bitsandbytes: ``load_in_4bit`` with ``bnb_4bit_quant_type`` nf4 / fp4 and
  ``bnb_4bit_use_double_quant``, or ``load_in_8bit`` (``--quant nf4|fp4|int8``);
- MXFP4 (gpt-oss's experts), which transformers does not train, is dequantised to bf16
  for finetuning (``Mxfp4Config(dequantize=True)``): a note, the run's own dtypes;
- other formats (FP8, compressed-tensors, GPTQ at 3 or 8 bits…) are named in a
  note and estimated in the run's own dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftmem.dtypes import INT4_GROUP
from ftmem.errors import ConfigError
from ftmem.families._config import wrong
from ftmem.run import Quant

# quant_method values whose 4-bit form is ftmem's "int4" base (transformers'
# QuantizationMethod names: quantizers/auto.py)
INT4_METHODS = ("gptq", "awq")
ADAPTERS = ("lora", "qlora")


@dataclass(frozen=True)
class QuantizedBase:
    """The base's format as config.json's quantization_config gives it."""

    method: str  # quant_method as written (gptq, awq, bitsandbytes, fp8, mxfp4...)
    quant: Quant | None  # the run's --quant for a LoRA on it; None: not modelled
    double_quant: bool | None = None  # bitsandbytes' nested quantisation of the scales
    group_size: int | None = None  # GPTQ/AWQ: inputs per scale and zero (-1: a whole row)
    said_by: str = "config.json's quantization_config"

    @property
    def described(self) -> str:
        if self.quant is None:
            return f"{self.method}-quantised"
        if self.method == "bitsandbytes":
            nested = " with double quantisation" if self.double_quant else ""
            return f"bitsandbytes {self.quant}{nested}"
        return f"{self.method.upper()} 4-bit"


def quantized_base(cfg: dict[str, Any]) -> QuantizedBase | None:
    """The base's format from config.json's ``quantization_config`` (None: none)."""
    quant = cfg.get("quantization_config")
    if quant is None:
        return None
    if not isinstance(quant, dict):
        raise wrong("quantization_config", "an object", quant)
    method = quant.get("quant_method")
    if method is not None and not isinstance(method, str):
        raise wrong("quantization_config.quant_method", "a string", method)
    method = (method or "bitsandbytes").lower()
    if method in INT4_METHODS:
        bits = quant.get("bits", quant.get("w_bit", 4))
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise wrong("quantization_config.bits", "a whole number", bits)
        group = quant.get("group_size", quant.get("q_group_size", INT4_GROUP))
        if isinstance(group, bool) or not isinstance(group, int):
            raise wrong("quantization_config.group_size", "a whole number", group)
        return QuantizedBase(method, "int4" if bits == 4 else None, group_size=group)
    if method == "bitsandbytes":
        return _bitsandbytes(quant)
    return QuantizedBase(method, None)


def _bitsandbytes(quant: dict[str, Any]) -> QuantizedBase:
    four, eight = (_flag(quant, k) for k in ("load_in_4bit", "load_in_8bit"))
    if eight and not four:
        return QuantizedBase("bitsandbytes", "int8")
    if not four:
        return QuantizedBase("bitsandbytes", None)
    kind = quant.get("bnb_4bit_quant_type", "fp4")  # BitsAndBytesConfig's default
    if kind not in ("nf4", "fp4"):
        raise wrong("quantization_config.bnb_4bit_quant_type", "nf4 or fp4", kind)
    return QuantizedBase("bitsandbytes", kind, _flag(quant, "bnb_4bit_use_double_quant"))


def _flag(quant: dict[str, Any], key: str) -> bool:
    value = quant.get(key, False)
    if not isinstance(value, bool):
        raise wrong(f"quantization_config.{key}", "true or false", value)
    return value


def on_quantized_base(
    base: QuantizedBase | None, settings: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The run's settings on this base, and what was done, as notes: a LoRA on a
    modelled quantised base becomes a QLoRA with the base's format; other methods keep
    a 16-bit base, said in a note."""
    if base is None:
        return settings, []
    said = f"{base.said_by}: the base is {base.described}"
    if base.method == "mxfp4":
        # transformers 5.24 quantizers/quantizer_mxfp4.py: is_trainable is False, and
        # without its triton kernels it dequantises the experts to bf16 on loading
        return settings, [
            f"{said}; transformers does not train MXFP4 weights (finetuning loads them with "
            "Mxfp4Config(dequantize=True), a bf16 model): estimated with the run's own dtypes."
        ]
    if base.quant is None:
        return settings, [
            f"{said}; ftmem does not model training on that format: estimated with the "
            "run's own dtypes."
        ]
    method = settings.get("method") or "full"
    if method not in ADAPTERS:
        return settings, [
            f"{said}; transformers trains adapters only on quantised weights, so --method "
            f"{method} is estimated on a 16-bit copy of the model (a LoRA on the shipped "
            "base: --method lora)."
        ]
    given = settings.get("quant")
    if given is not None and given != base.quant:
        raise ConfigError(
            f"--quant {given} does not match the base, {base.described} ({base.said_by}); "
            "drop --quant: the base's own format is taken."
        )
    out = {**settings, "method": "qlora", "quant": base.quant}
    if base.double_quant is not None and out.get("double_quant") is None:
        out["double_quant"] = base.double_quant
    flags = f"--method qlora --quant {base.quant}"
    notes = [f"{said}; the LoRA trains on it as shipped ({flags})."]
    if base.group_size not in (None, INT4_GROUP):
        notes.append(
            f"Its group_size is {base.group_size}; ftmem counts one fp16 scale and 4-bit zero "
            f"per {INT4_GROUP} inputs, so those constants read "
            + ("high." if base.group_size == -1 or base.group_size > INT4_GROUP else "low.")
        )
    return out, notes
