"""Buffers that transformers 4 releases register beside a model's parameters and 5 does
not: each attention layer's rotary cos and sin tables for every position, and the
model's (positions × positions) causal mask of 4.38. They live on the GPU for the whole
run like the weights (registered buffers move with the model and are never sharded by
FSDP, which only broadcasts them), whatever the batch and the length.

Which releases register them, per family, is data (``Family.rotary_cache_releases``,
``Family.causal_mask_buffer``, the ranges cited in ftmem.versions); a run without
``transformers_version`` is the current release, which registers none. A framework's own
rotary module may register its table too (Profile.rotary_cache_buffer: torchtune's), and
LitGPT's LLaMA-Adapter caches its prompts' keys and values on its modules
(adapters.llama_adapter.prompt_kv_cache_bytes). peft's VeRA registers its one pair of
shared projections as buffers (adapters.vera.projection_bytes), FourierFT its spectral
indices as plain tensors (adapters.lycoris.fourier_index_bytes), SHiRA its sparse
positions likewise (adapters.shira.index_bytes); BOFT and OFT register
theirs on every adapted linear (adapter_buffer_bytes).
"""

from __future__ import annotations

from ftmem.adapters.adamss import buffer_bytes as adamss_buffer_bytes
from ftmem.adapters.boft import buffer_bytes as boft_buffer_bytes
from ftmem.adapters.delora import buffer_bytes as delora_buffer_bytes
from ftmem.adapters.glora import buffer_bytes as glora_buffer_bytes
from ftmem.adapters.llama_adapter import prompt_kv_cache_bytes
from ftmem.adapters.lycoris import fourier_index_bytes
from ftmem.adapters.oft import buffer_bytes as oft_buffer_bytes
from ftmem.adapters.osf import buffer_bytes as osf_buffer_bytes
from ftmem.adapters.psoft import buffer_bytes as psoft_buffer_bytes
from ftmem.adapters.randlora import basis_bytes
from ftmem.adapters.shira import index_bytes as shira_index_bytes
from ftmem.adapters.supertuning import buffer_bytes as supertuning_buffer_bytes
from ftmem.adapters.tinylora import buffer_bytes as tinylora_buffer_bytes
from ftmem.adapters.trainable_tokens import buffer_bytes as trainable_tokens_buffer_bytes
from ftmem.adapters.unilora import buffer_bytes as unilora_buffer_bytes
from ftmem.adapters.vera import projection_bytes
from ftmem.arch import Architecture
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32
from ftmem.methods import MethodPlan
from ftmem.precision import Dtypes
from ftmem.profiles import profile_of
from ftmem.run import RunConfig
from ftmem.torchtune_init import TORCHTUNE_01_TORCHAO_BEFORE
from ftmem.versions import older_than, within


def rotary_table_bytes(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """Every layer's cos and sin for every position: 2 × max_position_embeddings × rotary
    dims elements per layer, in the default dtype while the model is built (4.37.2
    models/llama/modeling_llama.py:133-146 ``dtype=torch.get_default_dtype()``), which
    from_pretrained sets to its torch_dtype: the non-quantised weights' dtype. A framework
    that builds a quantised model from its config without a dtype keeps them fp32
    (Profile.builds_quantised_model_fp32)."""
    if arch.position_embedding != "rotary":
        return 0
    if not within(run.transformers_version, arch.traits.rotary_cache_releases):
        return 0
    fp32 = dtypes.quantized is not None and profile_of(run).builds_quantised_model_fp32
    element = FP32 if fp32 else BYTES_PER_ELEMENT[dtypes.base]
    return arch.num_layers * 2 * arch.max_position_embeddings * arch.rotary_size * element


def causal_mask_bytes(arch: Architecture, run: RunConfig) -> int:
    """The model's (max_position_embeddings, max_position_embeddings) causal mask buffer
    where the release registers one (int64 or bool: integer buffers keep their dtype
    through model.to(dtype))."""
    positions = arch.max_position_embeddings
    for releases, element in arch.traits.causal_mask_buffer:
        if within(run.transformers_version, releases):
            return positions * positions * element
    return 0


def last_cos_sin_bytes(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """Llama's 4.38.0/4.38.1 rotary modules keep the cos and sin of their last forward as
    attributes (Family.last_cos_sin_releases: versions.LLAMA_LAST_COS_SIN_KEPT): 2 × s × rotary dims per layer in the
    compute dtype, alive from the first forward on. Without checkpointing the same
    tensors are also the layers' saved cos/sin during the step (counted twice there, at
    most that much, on the safe side)."""
    if arch.position_embedding != "rotary":
        return 0
    if not within(run.transformers_version, arch.traits.last_cos_sin_releases):
        return 0
    element = BYTES_PER_ELEMENT[dtypes.compute]
    return arch.num_layers * 2 * run.positions * arch.rotary_size * element


def framework_rotary_cache_bytes(arch: Architecture, run: RunConfig) -> int:
    """The framework's own rotary cache (Profile.rotary_cache_buffer): torchtune's
    ``build_rope_cache`` registers a non-persistent fp32 ``cache`` of (max_seq_len,
    dim / 2, 2), cos and sin for every position (torchtune/modules/position_embeddings.py
    and torchtune/models/llama3_1/_position_embeddings.py @1814feb17a90), on the GPU
    (the recipes build the model under ``with self._device``; FSDP recipes call
    ``rope_init()`` again on each rank after the meta-device build). The builders pass
    config.json's max_position_embeddings as max_seq_len (131,072 for Llama 3.1/3.2:
    64 MiB at head_dim 128). One module serves every layer (e.g.
    torchtune/models/llama3_2/_component_builders.py@1814feb17a90 l.87); torchtune 0.1
    builds one layer and deep-copies it per layer, each copy with its own cache
    (torchtune/modules/transformer.py@0914d5cfb _get_clones, ftmem.torchtune_init). A
    recipe's frozen reference model (GRPO's, full DPO's) is a second decoder with its own
    cache: not counted (step.reference_weights counts parameters only)."""
    if not profile_of(run).rotary_cache_buffer or arch.position_embedding != "rotary":
        return 0
    table = arch.max_position_embeddings * arch.rotary_size * FP32
    copies = arch.num_layers if older_than(run.torchao_version, TORCHTUNE_01_TORCHAO_BEFORE) else 1
    return copies * table


def release_buffer_bytes(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> int:
    """All the buffers the run's transformers release registers that 5 does not, the
    cos/sin 4.38.0's rotary modules keep, the framework's own rotary cache and
    LLaMA-Adapter's cached prompt keys and values."""
    return (
        rotary_table_bytes(arch, run, dtypes)
        + causal_mask_bytes(arch, run)
        + last_cos_sin_bytes(arch, run, dtypes)
        + framework_rotary_cache_bytes(arch, run)
        + prompt_kv_cache_bytes(arch, run, dtypes)
        + projection_bytes(arch, run, dtypes)
        + basis_bytes(arch, run, dtypes)
        + fourier_index_bytes(arch, run)
        + shira_index_bytes(arch, run)
    )


def adapter_buffer_bytes(plan: MethodPlan, run: RunConfig, layers: int) -> int:
    """The buffers peft's BOFT, OFT, PSOFT and DeLoRA register on each adapted linear beside
    the weights: BOFT's fp32 boft_P permutations (none where the framework leaves them on the
    host), OFT's int64 block indices, PSOFT's frozen A and B and indices, DeLoRA's w_norm
    (``layers``: the model's)."""
    total = boft_buffer_bytes(plan, run, layers) + oft_buffer_bytes(plan, run, layers)
    total += psoft_buffer_bytes(plan, run, layers) + tinylora_buffer_bytes(plan, run, layers)
    total += unilora_buffer_bytes(plan, run, layers)
    total += glora_buffer_bytes(plan, run, layers)  # (GLoRA's zero C, D, E)
    total += trainable_tokens_buffer_bytes(plan, run)  # (the original rows)
    total += osf_buffer_bytes(plan, run, layers)  # (OSF's frozen SVD factors)
    total += supertuning_buffer_bytes(plan, run, layers)  # (Super-Tuning's int32 indices)
    total += adamss_buffer_bytes(plan, run, layers)  # (AdaMSS's SVD projection)
    return total + delora_buffer_bytes(plan, run, layers)


def stage_buffer_bytes(arch: Architecture, run: RunConfig, plan: MethodPlan, stages: int) -> int:
    """What one rank keeps of them whole (no engine shards buffers): a pipeline stage its
    layers' share of the rotary tables and of BOFT's and OFT's buffers, the causal mask as
    the model registers it, the framework's shared rotary cache."""
    dtypes = plan.dtypes
    per_layer = rotary_table_bytes(arch, run, dtypes) + last_cos_sin_bytes(arch, run, dtypes)
    per_layer += adapter_buffer_bytes(plan, run, arch.num_layers)
    per_layer += prompt_kv_cache_bytes(arch, run, dtypes)  # (its gated blocks' share, roughly)
    per_layer += fourier_index_bytes(arch, run) + shira_index_bytes(arch, run)
    shared = causal_mask_bytes(arch, run) + framework_rotary_cache_bytes(arch, run)
    # (VeRA's pair, RandLoRA's bases: every stage slices them)
    shared += projection_bytes(arch, run, dtypes) + basis_bytes(arch, run, dtypes)
    return per_layer // stages + shared
