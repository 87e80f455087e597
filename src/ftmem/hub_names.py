"""Hub ids without the Hub: a re-upload or a quantised variant of a preset's repository
(``NousResearch/Llama-2-7b-hf``, ``TheBloke/Llama-2-7B-Chat-GPTQ``,
``unsloth/llama-3-8b-Instruct-bnb-4bit``) named by a user who is offline, matched to
the preset whose Hub aliases have the same model name once the uploader's format
suffixes are taken off (issue 17).

Only a name that leads to exactly one preset is matched; the estimate then says which
preset it took and what the suffix implied about the weights' format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from ftmem.quantized_base import INT4_GROUP, QuantizedBase

# Suffixes uploaders append to a model's name, with the base format each names: TheBloke's
# GPTQ and AWQ main branches are 4-bit with groups of 128; unsloth's bnb-4bit uploads
# are nf4 with double quantisation; GGUF is llama.cpp's format, which transformers
# dequantises on loading.
_NAME = "its repository's name"
_FORMATS: dict[str, QuantizedBase] = {
    "gptq": QuantizedBase("gptq", "int4", group_size=INT4_GROUP, said_by=_NAME),
    "awq": QuantizedBase("awq", "int4", group_size=INT4_GROUP, said_by=_NAME),
    "bnb-4bit": QuantizedBase("bitsandbytes", "nf4", double_quant=True, said_by=_NAME),
    "bnb-8bit": QuantizedBase("bitsandbytes", "int8", said_by=_NAME),
    "gguf": QuantizedBase("gguf", None, said_by=_NAME),
}
# Suffixes that leave the weights as they were (a repackaging, a dtype, the uploader)
_SAME = ("hf", "fp16", "bf16", "unsloth", "sharded")
_SUFFIX = re.compile(
    r"[-_.](" + "|".join(re.escape(s) for s in (*_FORMATS, *_SAME)) + r")$", re.IGNORECASE
)


@dataclass(frozen=True)
class Reupload:
    """A Hub id matched to a preset: which, through which of its names, and the base
    format its name implies (None: the preset's own weights)."""

    preset_id: str
    matched: str  # the preset's Hub alias with the same model name
    base: QuantizedBase | None

    def note(self, repo_id: str) -> str:
        return (
            f"{repo_id} is not in the local Hugging Face cache; estimated as the preset "
            f"{self.preset_id} ({self.matched}), of which its name says it is a re-upload."
        )


def model_name(repo_id: str) -> tuple[str, QuantizedBase | None]:
    """The model name of a Hub id without its uploader's suffixes, lower case, and the
    format the suffixes named."""
    name = repo_id.rsplit("/", 1)[-1].lower()
    base = None
    while match := _SUFFIX.search(name):
        suffix = match.group(1).replace("_", "-")
        base = _FORMATS.get(suffix, base)
        name = name[: match.start()]
    return name.removeprefix("meta-"), base


@cache
def _by_name() -> dict[str, set[tuple[str, str]]]:
    """Model name -> the (preset id, Hub alias) pairs that have it."""
    from ftmem.presets import preset_aliases

    out: dict[str, set[tuple[str, str]]] = {}
    for preset_id, aliases in preset_aliases().items():
        for alias in aliases:
            if "/" in alias:
                out.setdefault(model_name(alias)[0], set()).add((preset_id, alias))
    return out


def reupload_of(repo_id: str) -> Reupload | None:
    """The preset a Hub id re-uploads, if its model name leads to exactly one."""
    name, base = model_name(repo_id)
    found = _by_name().get(name, set())
    if len({preset for preset, _ in found}) != 1:
        return None
    preset_id, alias = sorted(found)[0]
    return Reupload(preset_id, alias, base)
