"""Granite (GraniteForCausalLM): Llama's block with four scalar multipliers (embedding,
residual, attention scale, logits divisor). A product with a Python scalar saves no
tensor for backward, so the saved activations are Llama's; the logits' division makes
one more (tokens × vocab) tensor in the forward (measured in tests/accuracy). The
embedding multiplier's product is a new tensor beside the embeddings' output: with
checkpointing both live through the backward (step.embedding_leaf_apart)."""

from __future__ import annotations

from ftmem.families import Family
from ftmem.families._config import LlamaKeys
from ftmem.families._llama import LLAMA_NAMES, llama_map
from ftmem.versions import GRANITE_OWN_UPCAST_LOSS, TRANSFORMERS_SDPA_CONTIGUOUS

FAMILY = Family(
    name="granite",
    model_types=("granite",),
    decoder_layer="GraniteDecoderLayer",
    config=llama_map("granite", LlamaKeys(optional=("attention_bias", "mlp_bias"))),
    names=LLAMA_NAMES,
    # GraniteModel.forward: ``inputs_embeds = inputs_embeds * self.embedding_multiplier``
    # (transformers 5.25 modeling_granite.py l.388), after embed_tokens
    embeddings_scaled_apart=True,
    sdpa_contiguous_releases=TRANSFORMERS_SDPA_CONTIGUOUS,
    own_loss_releases=((GRANITE_OWN_UPCAST_LOSS, "upcast-shifted"),),
)
