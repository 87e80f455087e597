"""Physical bounds on every number that reaches the arithmetic, in one place.

A number past its bound is a typo or a hostile file, never a real run: each bound sits
well above the largest thing of its kind ever built (its reason says which), so a real
model or machine is never refused, while 10^30 GiB of GPU memory, a million layers or a
200-digit hidden size are, in one sentence that names the bound, before any arithmetic
can overflow or run for ever.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from ftmem.errors import InvalidInputError
from ftmem.validation import Model, model_validator


@dataclass(frozen=True, slots=True)
class Bound:
    """An upper bound with the name errors give it and why it is where it is."""

    name: str  # "the layer bound": what errors call it
    limit: int
    unit: str  # what the limit counts, for the message ("layers", "bytes"; "" for widths)
    reason: str  # one line: the largest real thing of the kind, with its source
    label: str = ""  # the limit as people write it ("1 TiB"), when not its count

    def problem(self, what: str, value: int) -> str | None:
        """What is wrong with ``value`` (``what`` names the option or config key), as
        a sentence without its full stop, or None when it is within the bound."""
        if value <= self.limit:
            return None
        limit = self.label or self._amount(self.limit)
        return f"{what} is {self._amount(value)}, over {self.name} of {limit} ({self.reason})"

    def check(self, what: str, value: int) -> int:
        """``value`` if it is within the bound, else the error :meth:`problem` names."""
        problem = self.problem(what, value)
        if problem:
            raise InvalidInputError(problem + ".")
        return value

    def _amount(self, value: int) -> str:
        return f"{shown(value)} {self.unit}".rstrip()


def shown(value: int) -> str:
    """An integer as the user can read it: exact up to 16 digits, else its magnitude
    (the digits of a 300-digit number are noise, and printing them can take long)."""
    if abs(value) < 10**16:
        return f"{value:,}"
    digits = int(abs(value).bit_length() * math.log10(2))  # str() past 4,300 digits fails
    return f"about {'-' if value < 0 else ''}10^{digits}"


GPU_MEMORY = Bound(
    "the GPU memory bound",
    2**40,
    "bytes",
    "no accelerator has shipped with more than 288 GB: AMD Instinct MI355X, NVIDIA B300",
    "1 TiB",
)
HOST_MEMORY = Bound(
    "the host memory bound",
    2**52,
    "bytes",
    "all that the 52-bit physical addresses of x86-64 and Arm64 can reach",
    "4 PiB",
)
LAYERS = Bound(
    "the layer bound",
    2**12,
    "layers",
    "4x the deepest transformer trained: DeepNet's 1,000 layers, Wang et al. 2022",
)
WIDTH = Bound(
    "the width bound",
    2**20,
    "",
    "one dimension of a weight matrix: 14x the widest published, PaLM's 73,728-wide MLP, "
    "and 4x the largest vocabulary, Gemma 3's 262k tokens",
)
EXPERTS = Bound(
    "the expert bound",
    2**14,
    "experts",
    "8x the most experts per layer trained: Switch-C's 2,048, Fedus et al. 2021",
)
PARAMETERS = Bound(
    "the parameter bound",
    2**50,
    "parameters",
    "6x the largest model a system was built to train: BaGuaLu's 174 trillion, Ma et al. 2022",
)
TOKENS = Bound(
    "the token bound",
    2**31,
    "tokens",
    "200x the longest context any model was trained for, Llama 4 Scout's 10 million",
)
SEQUENCES = Bound(
    "the sequence bound",
    TOKENS.limit,
    "sequences",
    "each sequence holds at least one token, and the token bound is 2^31",
)
IMAGES = Bound(
    "the image bound",
    TOKENS.limit,
    "images",
    "each image puts at least one token in its sequence, and the token bound is 2^31",
)
PIXELS = Bound(
    "the pixel bound",
    2**20,
    "pixels",
    "1,000x the side of the largest square image Qwen2-VL's processor keeps by default: "
    "max_pixels = 28 x 28 x 1,280, about 1,002 x 1,002, in transformers 5.24's "
    "image_processing_qwen2_vl.py",
)
MICRO_BATCHES = Bound(
    "the accumulation bound",
    2**20,
    "micro-batches",
    "a million micro-batches of one 512-token sequence are 30x the largest published "
    "global batch, Llama 3 405B's 16 million tokens",
)
GPUS = Bound(
    "the GPU count bound",
    2**17,
    "GPUs",
    "8x the most GPUs one published training run used, Llama 3 405B's 16,384 H100s",
)
ADAPTERS = Bound(
    "the adapter bound",
    2**16,
    "adapters",
    "32x the 2,000 LoRA adapters S-LoRA serves from one GPU, Sheng et al. 2023",
)
MERGED_MODELS = Bound(
    "the merged-model bound",
    2**10,
    "models",
    "14x the 72 fine-tuned CLIP ViT-B/32 models of Wortsman et al. 2022's uniform model soup",
)
MEASURED_STEPS = Bound(
    "the measured-step bound",
    100,
    "steps",
    "from step 2 on every step repeats the same peak, and each runs the model for real",
)
MEASURED_RANKS = Bound(
    "the measured-rank bound",
    64,
    "ranks",
    "each rank builds its model shard on this machine's CPU; two show the sharding",
)
PLAN_ROWS = Bound(
    "the row bound",
    1_000,
    "rows",
    "a plan offers a few dozen ways to fit at most",
)

PRESET_NAME = Bound(
    "the name bound",
    128,
    "characters",
    "a Hugging Face Hub repository id has at most 96 characters a side "
    "(huggingface_hub utils/_validators.py), a shipped preset id 128",
)


def flag_as_count(data: object, counts: Iterable[str]) -> str | None:
    """What is wrong when a settings mapping gives one of its ``counts`` as true/false (a
    YAML ``batch_size: yes``), in a sentence that names its option."""
    if isinstance(data, dict):
        for name in counts:
            if isinstance(data.get(name), bool):
                return f"{option_name(name)} must be a number, not {str(data[name]).lower()}"
    return None


def option_name(field: str) -> str:
    """The CLI option of a settings field: ``lora_r`` is ``--lora-r``."""
    return "--" + field.replace("_", "-")


class BoundedSettings(Model):
    """Settings whose counts each have a physical bound (``BOUNDS``: field name to its
    bound); errors name the field as its CLI option."""

    BOUNDS: ClassVar[dict[str, Bound]] = {}

    @model_validator(mode="before")
    @classmethod
    def _counts_not_flags(cls, data: object) -> object:
        """A count given as true/false (a YAML ``batch_size: yes``) is refused in a
        sentence that names its option, before the field checks."""
        problem = flag_as_count(data, cls.BOUNDS)
        if problem:
            raise ValueError(problem)
        return data

    @model_validator(mode="after")
    def _within_bounds(self) -> None:
        for name, bound in self.BOUNDS.items():
            value = getattr(self, name)
            problem = None if value is None else bound.problem(option_name(name), value)
            if problem:
                raise ValueError(problem)
