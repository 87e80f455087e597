"""An RMSNorm's saved tensors as the allocator sees them (ops.saved.Saved.parts).

The truth: transformers' LlamaRMSNorm run on the CPU, its saved tensors collected with
autograd's saved-tensor hooks, one entry per storage. Its ``x.float()`` and
``rsqrt(mean(x²) + eps)`` are two tensors (MulBackward0 saves both), so the allocator
gets two requests: T·h·4 bytes in the large pool and T·4 in the small one (up to 1 MiB,
c10/cuda/CUDACachingAllocator.cpp kSmallSize). One request of their sum fits neither a
block the fp32 input fits exactly nor the small pool: the fsdp_qlora Llama-2-7B batch-12
replay put the final norm's 384.09 MiB request in a 3000 MiB segment beside a free
384 MiB one (calibration/notes/carryover.md).
"""

from __future__ import annotations

import torch
from transformers.models.cohere.modeling_cohere import CohereLayerNorm
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3RMSNorm
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
from transformers.models.stablelm.modeling_stablelm import StableLmLayerNormPerHead
from transformers.models.t5.modeling_t5 import T5LayerNorm

from ftmem.api import run_config
from ftmem.estimate import _tensors
from ftmem.ops.saved import Kind, Saved
from ftmem.presets import get_model
from ftmem.step import step_parts
from tests.saved_storages import saved_storages

B, S = 2, 64


def _saved_storages(h: int) -> list[int]:
    """The bytes of each storage LlamaRMSNorm saves for backward on a bf16 input that
    needs a gradient, its weight frozen (LoRA's), the weight itself left out."""
    norm = LlamaRMSNorm(h).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(B, S, h, dtype=torch.bfloat16, requires_grad=True)
    return saved_storages(lambda: norm(x), norm.parameters())


def test_the_rms_norm_saves_its_fp32_input_and_rstd_apart():
    arch = get_model("llama-2-7b")
    run = run_config(method="lora", precision="bf16", batch_size=B, seq_len=S)
    T, h = B * S, arch.hidden_size
    assert _saved_storages(h) == [T * 4, T * h * 4]
    parts = step_parts(arch, run)
    norms = [s for s in parts.typical_block if s.kind is Kind.NORM_INPUT]
    assert norms and all(s.requests() == (T * h * 4, T * 4) for s in norms)
    # the replay's block requests both, one after the other (input first, as made)
    block = _tensors(parts, parts.sizes).block_saved
    at = block.index(T * h * 4)
    assert block[at + 1] == T * 4


def test_an_item_rescaled_since_is_one_request():
    """A rank's share of an item (its bytes divided) no longer adds up to its parts: one
    request of its bytes."""
    item = Saved("norm", 10, parts=(8, 2))
    assert item.requests() == (8, 2)
    assert item._replace(nbytes=5).requests() == (5,)
    assert Saved("one tensor", 7).requests() == (7,)


# The other norms (transformers 5.25.0, each module built as the model builds it, random
# weights, frozen as LoRA leaves them): the storages they save on a 16-bit input that
# needs a gradient against the requests of ftmem's item for that norm.


def _storages(module: torch.nn.Module, x: torch.Tensor) -> list[int]:
    """The bytes of each storage ``module(x)`` saves for backward, its parameters left
    out (``x`` a view counts as its base's storage, as the allocator sees it)."""
    return saved_storages(lambda: module(x), module.parameters())


def _requests(name: str, label: str, device: str = "cuda", **update) -> list[int]:
    """The requests of the block item whose name starts with ``label``."""
    arch = get_model(name)
    if update:
        arch = arch.model_copy(update=update)
    run = run_config(method="lora", precision="bf16", batch_size=B, seq_len=S, device=device)
    items = [s for s in step_parts(arch, run).typical_block if s.what.startswith(label)]
    assert len(items) == 1, [s.what for s in step_parts(arch, run).typical_block]
    return sorted(items[0].requests())


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(B, S, *shape, dtype=torch.bfloat16, requires_grad=True)


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    return module.to(torch.bfloat16).requires_grad_(False)


def test_qwen3_q_and_k_norms_save_fp32_input_and_rstd_apart():
    """Qwen3RMSNorm(head_dim) on the projection's (b, s, heads, head_dim) view
    (models/qwen3/modeling_qwen3.py Qwen3Attention.forward): the fp32 copy and one rstd
    a row, T·heads rows."""
    arch = get_model("qwen3-0.6b")
    for role, heads in (("q", arch.num_heads), ("k", arch.kv_heads)):
        norm = _frozen(Qwen3RMSNorm(arch.head_size))
        measured = _storages(norm, _x(heads, arch.head_size))
        assert measured == _requests("qwen3-0.6b", f"{role} norm: fp32 input")


def test_olmo2_q_norm_spans_the_projection():
    """Olmo2RMSNorm(heads·head_dim) on the whole projection (Olmo2Attention.forward)."""
    arch = get_model("olmo2-1124-7b")
    norm = _frozen(Olmo2RMSNorm(arch.q_size))
    assert _storages(norm, _x(arch.q_size)) == _requests("olmo2-1124-7b", "q norm: fp32")


def test_gemma3_q_norm_saves_its_fp32_one_plus_weight_apart():
    """Gemma3RMSNorm: ``output * (1.0 + self.weight.float())`` keeps the fp32 (1 + w)
    beside the fp32 input and rstd: three storages."""
    arch = get_model("gemma3-1b")
    norm = _frozen(Gemma3RMSNorm(arch.head_size))
    measured = _storages(norm, _x(arch.num_heads, arch.head_size))
    assert measured == _requests("gemma3-1b", "q norm: fp32")


def test_deepseek_latent_norms_save_fp32_input_and_rstd_apart():
    """DeepseekV3RMSNorm (models/deepseek_v3/modeling_deepseek_v3.py, Llama's) on the
    q_a and kv_a latents (ops.latent_attention._latent_norm)."""
    for label, width in (("q_a_layernorm", 1536), ("kv_a_layernorm", 512)):
        norm = _frozen(DeepseekV3RMSNorm(width))
        assert _storages(norm, _x(width)) == _requests("deepseek-v3", label)


def test_the_residual_layer_norm_saves_input_mean_and_rstd_apart():
    """nn.LayerNorm (Phi's, GPT-NeoX's, Falcon's): native_layer_norm's input and its
    (T, 1) mean and rstd, in the 16-bit input's dtype on the CPU."""
    h = get_model("phi-2").hidden_size
    norm = _frozen(torch.nn.LayerNorm(h))
    assert _storages(norm, _x(h)) == _requests("phi-2", "input norm: input", "cpu")


def test_stablelm_per_head_layer_norms_share_their_input():
    """StableLmLayerNormPerHead: one nn.LayerNorm a head on ``torch.split`` views of the
    transposed projection output (one storage), each with its own mean and rstd
    (models/stablelm/modeling_stablelm.py)."""
    arch = get_model("stablelm-2-12b")
    heads, d = arch.num_heads, arch.head_size
    norm = _frozen(StableLmLayerNormPerHead(d, heads))
    q = _x(heads * d).view(B, S, heads, d).transpose(1, 2)
    assert _storages(norm, q) == _requests("stablelm-2-12b", "q norm: input", "cpu")


def test_phi_q_layer_norm_is_one_call_over_every_head():
    """Phi's ``qk_layernorm``: one nn.LayerNorm(head_dim) on the (b, s, heads, head_dim)
    view (models/phi/modeling_phi.py PhiAttention.forward)."""
    arch = get_model("phi-2")
    heads, d = arch.num_heads, arch.head_size
    norm = _frozen(torch.nn.LayerNorm(d))
    measured = _storages(norm, _x(heads * d).view(B, S, heads, d))
    assert measured == _requests("phi-2", "q norm: input", "cpu", qk_norm=True)


def test_t5_norm_saves_fp32_copy_input_and_rstd_apart():
    """T5LayerNorm: pow() keeps the fp32 copy, ``hidden_states * rsqrt`` the input
    itself and the rstd (models/t5/modeling_t5.py)."""
    h = get_model("flan-t5-small").hidden_size
    norm = _frozen(T5LayerNorm(h))
    assert _storages(norm, _x(h)) == _requests("flan-t5-small", "self-attention norm")


def test_cohere_q_norm_saves_two_centred_copies_rstd_and_its_weights_cast():
    """CohereLayerNorm((heads, head_dim)) (models/cohere/modeling_cohere.py): the centred
    fp32 input twice (``(hidden_states - mean)`` for pow and again for the product),
    the rstd, and ``self.weight.to(torch.float32)``, a copy of the 16-bit weights that
    the product keeps for the input's gradient."""
    arch = get_model("command-r-plus")
    heads, d = arch.num_heads, arch.head_size
    norm = _frozen(CohereLayerNorm((heads, d)))
    assert _storages(norm, _x(heads, d)) == _requests("command-r-plus", "q norm: fp32")


def test_cohere_residual_norm_keeps_its_weights_cast_too():
    """The residual CohereLayerNorm(hidden_size): the same code, one weight vector."""
    h = get_model("command-r-plus").hidden_size
    norm = _frozen(CohereLayerNorm(h))
    assert _storages(norm, _x(h)) == _requests("command-r-plus", "input norm: fp32")
