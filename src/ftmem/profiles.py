"""The training frameworks' own code paths, where they differ from HF Trainer + PEFT
over transformers (the path ftmem's defaults describe).

A profile is data, like a model family (families/): each field names one mechanism by
which the framework's step holds memory differently, with the source it comes from
(repository, file, commit). The core reads ``profile_of(run)`` and never names a
framework. ``RunConfig.framework`` chooses the profile; ``--from`` sets it from the
config it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftmem.run import RunConfig


@dataclass(frozen=True, slots=True)
class Profile:
    """One framework's code path; the defaults are HF Trainer's."""

    name: str
    notes: tuple[str, ...] = ()  # what the estimate says of this path


HF = Profile("hf")

PROFILES: dict[str, Profile] = {
    "hf": HF,
    # axolotl and LLaMA-Factory drive HF Trainer over transformers + peft
    "axolotl": Profile("axolotl"),
    "llama-factory": Profile("llama-factory"),
    "litgpt": Profile("litgpt"),
    "torchtune": Profile("torchtune"),
    "unsloth": Profile("unsloth"),
}


def profile_of(run: RunConfig) -> Profile:
    return PROFILES[run.framework]
