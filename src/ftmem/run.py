"""The run description: every setting that changes memory, validated in one place."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

Method = Literal["full", "freeze", "lora", "qlora", "dora", "bitfit"]
Precision = Literal["fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed"]
AdapterDtype = Literal["auto", "fp32", "bf16", "fp16"]
Optimizer = Literal[
    "adamw",
    "adamw-fp32",
    "adamw-8bit",
    "paged-adamw-8bit",
    "sgd",
    "sgd-momentum",
    "adafactor",
    "lion",
]
Attention = Literal["eager", "sdpa", "flash"]
Quant = Literal["nf4", "fp4", "int8"]
Accounting = Literal["phases", "simple"]
OptimizerImpl = Literal["foreach", "for-loop", "fused"]

ADAPTER_METHODS: frozenset[str] = frozenset({"lora", "qlora", "dora"})


class RunConfig(BaseModel):
    """One training step's settings. Defaults are those of HF Trainer + peft."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "full"
    precision: Precision = "bf16"
    optimizer: Optimizer = "adamw"
    optimizer_impl: OptimizerImpl = Field(
        "foreach", description="torch picks foreach on CUDA, a for-loop on the CPU."
    )
    device: Literal["cuda", "cpu"] = Field(
        "cuda", description="Where the step runs; cpu only for checking against measurement."
    )
    batch_size: PositiveInt = 1
    seq_len: PositiveInt = 512
    grad_accum: PositiveInt = Field(1, description="Micro-batches per optimizer step.")
    grad_ckpt: bool = False
    attn: Attention = "sdpa"
    autocast: bool | None = Field(
        None, description="torch.autocast to 16-bit; default on for *-mixed, off otherwise."
    )
    # freeze
    trainable_layers: int | None = Field(None, ge=0, description="freeze: last N blocks train.")
    # LoRA family
    lora_r: PositiveInt | None = None
    lora_alpha: float | None = None
    lora_targets: str | None = None
    lora_dropout: float | None = Field(None, ge=0.0, lt=1.0)
    lora_modules_to_save: str | None = Field(
        None,
        description="peft modules_to_save: 'embed', 'head' or 'embed,head' (trainable copies).",
    )
    adapter_dtype: AdapterDtype = "auto"
    # quantised base (qlora)
    quant: Quant | None = None
    double_quant: bool | None = None
    compute_dtype: Literal["bf16", "fp16", "fp32"] | None = None
    # reporting
    accounting: Accounting = "phases"

    @model_validator(mode="after")
    def _combinations(self) -> RunConfig:
        lora_opts = {
            "--lora-r": self.lora_r,
            "--lora-alpha": self.lora_alpha,
            "--lora-targets": self.lora_targets,
            "--lora-dropout": self.lora_dropout,
            "--lora-modules-to-save": self.lora_modules_to_save,
        }
        if self.method not in ADAPTER_METHODS:
            given = [k for k, v in lora_opts.items() if v is not None]
            if given or self.adapter_dtype != "auto":
                opts = ", ".join(given or ["--adapter-dtype"])
                raise ValueError(
                    f"{opts} only apply to lora, qlora and dora, not --method {self.method}"
                )
        quant_opts = self.quant is not None or self.double_quant is not None or self.compute_dtype
        if self.method != "qlora" and quant_opts:
            raise ValueError(
                f"--quant, --double-quant and --compute-dtype only apply to --method qlora, "
                f"not --method {self.method}"
            )
        if self.lora_modules_to_save is not None:
            parts = {x.strip() for x in self.lora_modules_to_save.split(",") if x.strip()}
            if not parts or parts - {"embed", "head"}:
                raise ValueError(
                    "--lora-modules-to-save takes embed, head or embed,head "
                    f"(got {self.lora_modules_to_save!r})"
                )
        if self.lora_targets is not None and not self.lora_targets.strip(" ,"):
            raise ValueError("--lora-targets is empty; give e.g. q,v, attention or all-linear")
        if self.autocast and self.precision == "fp32":
            raise ValueError("--autocast needs a 16-bit compute dtype; use --precision bf16-mixed")
        if self.autocast is False and self.precision.endswith("-mixed"):
            raise ValueError(f"--precision {self.precision} means autocast; drop --no-autocast")
        if self.method != "freeze" and self.trainable_layers is not None:
            raise ValueError(
                f"--trainable-layers only applies to --method freeze, not {self.method}"
            )
        return self

    # Resolved values (what the report prints as the run actually estimated).
    @property
    def r(self) -> int:
        return self.lora_r or 8

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.r

    @property
    def targets(self) -> str:
        return self.lora_targets or "q,v"

    @property
    def modules_to_save(self) -> frozenset[str]:
        """Which outer modules get a trainable copy (peft modules_to_save)."""
        if not self.lora_modules_to_save:
            return frozenset()
        return frozenset(x.strip() for x in self.lora_modules_to_save.split(",") if x.strip())

    @property
    def dropout(self) -> float:
        return self.lora_dropout or 0.0

    @property
    def quant_format(self) -> Quant | None:
        if self.method != "qlora":
            return None
        return self.quant or "nf4"

    @property
    def uses_double_quant(self) -> bool:
        return self.method == "qlora" and (
            self.double_quant if self.double_quant is not None else True
        )

    @property
    def uses_autocast(self) -> bool:
        return self.autocast if self.autocast is not None else self.precision.endswith("-mixed")
