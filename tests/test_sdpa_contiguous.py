"""transformers 4.48-4.55's sdpa_attention_forward makes q, k and v contiguous before the
kernel (versions.TRANSFORMERS_SDPA_CONTIGUOUS): what a training step keeps.

The truth: PyTorch on the CPU, the installed transformers 5.25's tiny Llama and Phi-3 with
their sdpa function replaced by a transcription of 4.48.1's (integrations/sdpa_attention.py
:18-59; the models' attention around it is 4.48.1's: projections, rotary, the call,
``reshape(...).contiguous()``, o_proj), full bf16 training, one step. With ``cache`` the
transcription first keeps the caller's rotary k and v as 4.48's DynamicCache does on its
first update (cache_utils.py:441-442: the tensors themselves), held with the model's
output. Measured: the storages autograd saved and the live bytes at the end of the
forward (loss included), above what was alive before; each against the same step with
5.25's own sdpa function (no copies, no cache), and the difference against the estimate's
activations under transformers 4.53.0 less those with no release named.

The hand derivation per layer (T = b·s tokens, e = 2): the kernel keeps the copies it is
given in place of the caller's tensors, the same bytes, except where 5.25 gives the
kernel its GQA keys and values unrepeated (enable_gqa) and 4.48 repeats them per head
(one kv head: repeat_kv's stride-0 view, which ``.contiguous()`` copies per head):
2·T·(q − kv)·e. The CPU kernel of torch 2.13 lays its output out as its query (as CUDA's
flash kernel does), so the output's ``transpose(1, 2).contiguous()`` is a copy, the
o_proj input that full training keeps beside the kernel's own output: T·q·e. Phi-3's v is
a view of qkv_proj's output, which the kernel no longer keeps once v is copied:
−T·(q + kv)·e; its query is already contiguous (the partial rotary's cat), and so is the
kernel's output (5.25 copies it too: Family.o_proj_reads_kernel_output), and so is its
rotary k, which the kernel keeps itself unless repeat_kv copies it. The cache keeps the
rotary k and v beside the copies: 2·T·kv·e; for Phi-3 the whole qkv output, and k where
it is repeated.
"""

from __future__ import annotations

import pytest

from ftmem.api import run_config
from ftmem.sources import architecture_from_config
from ftmem.step import step_parts
from ftmem.versions import older_than

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
F = torch.nn.functional

L, HEADS, HEAD_DIM, B, S = 2, 4, 16, 2, 16
T, E = B * S, 2
Q = HEADS * HEAD_DIM
LLAMA = {
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": Q,
    "intermediate_size": 96,
    "num_hidden_layers": L,
    "num_attention_heads": HEADS,
    "head_dim": HEAD_DIM,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}
PHI3 = {
    **LLAMA,
    "model_type": "phi3",
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "pad_token_id": 0,
    "bos_token_id": 0,
    "eos_token_id": 0,
}


def _repeat_kv(hidden_states, n_rep: int):
    """4.48.1 integrations/sdpa_attention.py repeat_kv (:6-15): expand, then reshape."""
    batch, kv_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, kv_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, kv_heads * n_rep, slen, head_dim)


def _sdpa_4_48(cache: list | None):
    """4.48.1's sdpa_attention_forward without a mask; ``cache`` takes the caller's keys
    and values first, as 4.48's DynamicCache.update does before the call."""

    def sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
        **kwargs,
    ):  # fmt: skip
        if cache is not None:
            cache.append((key, value))
        if hasattr(module, "num_key_value_groups"):
            key = _repeat_kv(key, module.num_key_value_groups)
            value = _repeat_kv(value, module.num_key_value_groups)
        query = query.contiguous()
        key = key.contiguous()
        value = value.contiguous()
        if is_causal is None:
            is_causal = attention_mask is None and query.shape[2] > 1
        attn_output = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
            is_causal=is_causal,
        )  # fmt: skip
        attn_output = attn_output.transpose(1, 2).contiguous()
        return attn_output, None

    return sdpa_attention_forward


def measured(config: dict, copies: bool, cache: bool, monkeypatch) -> tuple[int, int]:
    """(saved bytes, live bytes at the end of the forward) of one full bf16 step."""
    from transformers.modeling_utils import AttentionInterface

    from ftmem.measure.tracker import LiveBytesTracker

    held: list | None = [] if cache else None
    if copies:
        monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", _sdpa_4_48(held))
    torch.manual_seed(0)
    hf_config = transformers.AutoConfig.for_model(**config, attn_implementation="sdpa")
    model = transformers.AutoModelForCausalLM.from_config(hf_config).to(torch.bfloat16)
    model.train()
    ids = torch.randint(0, config["vocab_size"], (B, S))
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if (storage := t.untyped_storage())._cdata not in weights:
            saved[storage._cdata] = storage.nbytes()
        return t

    tracker = LiveBytesTracker()
    tracker.track(*model.parameters(), ids)
    with tracker:
        before = tracker.current
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=ids, labels=ids, use_cache=False)
        end_of_forward = tracker.current - before
        out.loss.backward()
    del held
    return sum(saved.values()), end_of_forward


def estimated_activations(config: dict, version: str | None) -> int:
    arch = architecture_from_config(config, f"tiny-{config['model_type']}", "test")
    run = run_config(
        method="full", precision="bf16", batch_size=B, seq_len=S, device="cpu", attn="sdpa",
        transformers_version=version,
    )  # fmt: skip
    return step_parts(arch, run).sizes.activations.total


def by_hand(model_type: str, kv_heads: int, version: str) -> tuple[int, int]:
    """(saved, cache) bytes the copies add over 5.25, all layers."""
    kv = kv_heads * HEAD_DIM
    # repeat_kv's copy, or for one kv head its stride-0 view made contiguous per head
    repeat = kv_heads < HEADS and older_than(version, (4, 54, 0))
    if model_type == "phi3":  # the kernel keeps the head-major k itself unless repeated
        saved = -T * (Q + kv) * E + (2 * T * (Q - kv) * E if repeat else 0)
        return L * saved, L * ((T * kv * E if repeat else 0) + T * (Q + 2 * kv) * E)
    saved = T * Q * E + (2 * T * (Q - kv) * E if repeat else 0)
    return L * saved, L * 2 * T * kv * E


@pytest.mark.parametrize("kv_heads", [HEADS, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("config", [LLAMA, PHI3], ids=["llama", "phi3"])
def test_the_copies_against_torch_and_the_estimate(config, kv_heads, monkeypatch):
    config = {**config, "num_key_value_heads": kv_heads}
    base_saved, base_live = measured(config, copies=False, cache=False, monkeypatch=monkeypatch)
    saved, _ = measured(config, copies=True, cache=False, monkeypatch=monkeypatch)
    _, live = measured(config, copies=True, cache=True, monkeypatch=monkeypatch)
    more_saved, cache = by_hand(config["model_type"], kv_heads, "4.53.0")
    assert saved - base_saved == more_saved
    assert live - base_live == more_saved + cache
    moved = estimated_activations(config, "4.53.0") - estimated_activations(config, None)
    assert moved == more_saved + cache


def test_from_4_56_the_estimate_is_5_25s():
    """4.56.0 drops the three copies (huggingface/transformers#40315)."""
    config = {**LLAMA, "num_key_value_heads": HEADS}
    assert estimated_activations(config, "4.56.0") == estimated_activations(config, None)
