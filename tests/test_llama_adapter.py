"""LitGPT's LLaMA-Adapter and Adapter v2 (methods llama-adapter, llama-adapter-v2).

Trainable counts are derived here from Lightning-AI/litgpt@0f021f3a lit_gpt/adapter.py and
adapter_v2.py (adapter_filter) and checked against the counts LitGPT printed in
tutorials/resource-tables.md ("Finetuning with Adapter on 1 GPU"). What the adapters keep
for backward is measured on the CPU with autograd's saved-tensor hooks on a transcription of
LitGPT's forward (CausalSelfAttention.scaled_dot_product_attention's gate, AdapterV2Linear),
and compared with ftmem.adapters.llama_adapter's formulas and the estimate's block items.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftmem import estimate
from ftmem.adapters.llama_adapter import LlamaAdapter
from ftmem.api import _architecture, run_config
from ftmem.errors import InvalidInputError
from ftmem.methods import plan_method
from ftmem.ops.context import LayerContext
from tests.saved_storages import saved_storages

torch = pytest.importorskip("torch")

# StableLM-Base-Alpha-3B as LitGPT builds it (GPT-NeoX blocks, LayerNorms, biased linears,
# padded vocabulary 50,688; its calibration config.json)
STABLELM = {
    "architectures": ["GPTNeoXForCausalLM"],
    "model_type": "gpt_neox",
    "hidden_act": "gelu",
    "hidden_size": 4096,
    "intermediate_size": 16384,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "vocab_size": 50688,
    "max_position_embeddings": 4096,
    "rotary_pct": 0.25,
    "use_parallel_residual": True,
    "layer_norm_eps": 1e-5,
    "attention_bias": True,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}
LITGPT = dict(framework="litgpt", precision="bf16", attn="sdpa", device="cuda")


@pytest.fixture
def stablelm(tmp_path: Path) -> str:
    path = tmp_path / "stablelm" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(STABLELM))
    return str(path)


def _v1(h: int, heads: int, layers: int, length: int = 10, start: int = 2) -> int:
    """adapter_wte (length × h) and gating_factor (1, 1, heads, 1) per gated block."""
    return (layers - start) * (length * h + heads)


def test_llama_adapter_counts_are_litgpts_published_ones(stablelm: str) -> None:
    """resource-tables.md: StableLM Alpha 573,888, Llama 2 7B 1,229,760 (prompt 10, blocks
    from 2)."""
    assert _v1(4096, 32, 16) == 573_888
    assert _v1(4096, 32, 32) == 1_229_760
    got = estimate(stablelm, method="llama-adapter", **LITGPT).model.n_trainable_params
    assert got == 573_888
    got = estimate("llama2-7b", method="llama-adapter", **LITGPT).model.n_trainable_params
    assert got == 1_229_760


def test_adapter_v2_counts_are_litgpts_published_ones(stablelm: str) -> None:
    """v2 adds adapter_bias and adapter_scale (out,) to every linear (the fused qkv, the
    attention's proj, the MLP's fc / fc_1, fc_2, proj, and the LM head) and trains norm_1,
    norm_2 and ln_f (LayerNorm: weight and bias; RMSNorm: weight). Published: 2,125,248 and
    4,279,744."""
    h, f = 4096, 16384
    per_block = 2 * (3 * h + h + f + h) + 2 * (2 * h)  # scales and biases, two LayerNorms
    stable = _v1(h, 32, 16) + 16 * per_block + 2 * h + 2 * 50688
    assert stable == 2_125_248
    f = 11008
    per_block = 2 * (3 * h + h + 2 * f + h) + 2 * h  # gated MLP, two RMSNorms
    llama = _v1(h, 32, 32) + 32 * per_block + h + 2 * 32000
    assert llama == 4_279_744
    got = estimate(stablelm, method="llama-adapter-v2", **LITGPT).model.n_trainable_params
    assert got == stable
    got = estimate("llama2-7b", method="llama-adapter-v2", **LITGPT).model.n_trainable_params
    assert got == llama


def test_prompt_length_and_start_layer() -> None:
    est = estimate(
        "llama2-7b",
        method="llama-adapter",
        framework="litgpt",
        adapter_prompt_length=4,
        adapter_start_layer=30,
    )
    assert est.model.n_trainable_params == _v1(4096, 32, 32, 4, 30)
    est = estimate("llama2-7b", method="llama-adapter", framework="litgpt", adapter_start_layer=0)
    assert est.model.n_trainable_params == _v1(4096, 32, 32, 10, 0)


def test_refusals_are_one_sentence() -> None:
    with pytest.raises(InvalidInputError, match="leaves none of Llama-2-7B's 32 blocks"):
        estimate("llama2-7b", method="llama-adapter", framework="litgpt", adapter_start_layer=32)
    with pytest.raises(InvalidInputError, match="only applies to llama-adapter"):
        estimate("llama2-7b", method="lora", adapter_prompt_length=4)
    with pytest.raises(InvalidInputError, match="dense MLPs"):
        estimate("mixtral-8x7b", method="llama-adapter", framework="litgpt")


# peft's adaption_prompt (peft 0.21.2 src/peft/tuners/adaption_prompt/layer.py
# AdaptedAttention.forward) is not LitGPT's adapter memory-wise: a (1, n, h) prompt
# parameter per wrapped attention that trains (k_proj and v_proj run on it every forward,
# their outputs repeated over the batch), the query states recomputed (q_proj and the
# rotary again), eager fp32 softmax scores over the prompt, and o_proj run a second time;
# LitGPT caches its prompt keys and values without a graph and runs the gate over sdpa
# (that one is --method adaption-prompt: tests/test_adaption_prompt.py).
@pytest.mark.parametrize(
    ("framework", "what"),
    [
        ("hf", "under --framework hf use --method adaption-prompt, peft's adaption_prompt"),
        ("axolotl", "under --framework axolotl it would be peft's adaption_prompt, modelled as"),
        ("unsloth", "under --framework unsloth it would be peft's adaption_prompt, modelled as"),
        ("torchtune", "torchtune has no LLaMA-Adapter recipe"),
    ],
)
@pytest.mark.parametrize("method", ["llama-adapter", "llama-adapter-v2"])
def test_refused_outside_litgpt(framework, what, method) -> None:
    with pytest.raises(InvalidInputError, match=f"is LitGPT's .*give --framework litgpt; {what}"):
        estimate("llama2-7b", method=method, framework=framework)


@pytest.mark.parametrize("preset", ["t5-small", "deepseek-v2-lite", "qwen2-vl-2b", "llava-1.5-7b"])
def test_refused_for_models_litgpts_adapter_cannot_build(preset) -> None:
    """Encoder-decoders, MLA and image-text models (MoE above): one sentence, no estimate."""
    with pytest.raises(InvalidInputError) as refused:
        estimate(preset, method="llama-adapter", framework="litgpt")
    assert "\n" not in str(refused.value)


def test_cli_refusal_exits_2(capsys) -> None:
    from ftmem.cli import main

    with pytest.raises(SystemExit) as done:
        main(["estimate", "llama2-7b", "--method", "llama-adapter"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "give --framework litgpt" in err and "Traceback" not in err


@pytest.mark.parametrize("setting", [{"double_quant": True}, {"compute_dtype": "fp16"}])
def test_quantised_base_settings_need_quant(setting) -> None:
    """Without --quant the adapter's base is 16-bit (RunConfig.quant_format): a
    quantised base's own setting would change nothing, so it is refused, not ignored."""
    with pytest.raises(InvalidInputError, match="give --quant too"):
        estimate("llama2-7b", method="llama-adapter-v2", framework="litgpt", **setting)
    quantised = estimate(
        "llama2-7b", method="llama-adapter-v2", framework="litgpt", quant="nf4", **setting
    )
    assert quantised.run.quant_format == "nf4"


def _saved_bytes(fn, params: tuple[torch.Tensor, ...]) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs, parameters left
    out (they are the weights, not activations)."""
    return sum(saved_storages(fn, params))


def test_gate_keeps_the_prompt_attention_output() -> None:
    """litgpt adapter.py: ``y + self.gating_factor * ay``, ay the (b, s, heads, head_dim)
    attention over the cached (detached) prompt keys. In the lowest gated block q needs
    no gradient: only the multiply keeps ay, for the gate's gradient."""
    b, s, nh, hs, n = 2, 24, 4, 8, 10
    dt = torch.bfloat16
    gate = torch.nn.Parameter(torch.zeros(1, 1, nh, 1, dtype=dt))
    q = torch.randn(b, nh, s, hs, dtype=dt)
    ak, av = torch.randn(1, nh, n, hs, dtype=dt), torch.randn(1, nh, n, hs, dtype=dt)
    y = torch.randn(b, s, nh, hs, dtype=dt)

    def forward() -> None:
        amask = torch.ones(s, n, dtype=torch.bool)
        ay = torch.nn.functional.scaled_dot_product_attention(
            q, ak.expand(b, -1, -1, -1), av.expand(b, -1, -1, -1), attn_mask=amask
        ).transpose(1, 2)
        (y + gate * ay).float().sum().backward()

    measured = _saved_bytes(forward, (gate,))
    ctx = _context(b, s, nh, hs)
    assert sum(x.nbytes for x in LlamaAdapter.gate_saved(ctx, q_grad=False)) == measured


def test_adapter_v2_linear_keeps_its_pre_scale_output() -> None:
    """litgpt adapter_v2.py AdapterV2Linear: ``adapter_scale * (linear(x) + adapter_bias)``
    over a frozen linear whose input needs a gradient: the frozen weight is kept (a
    parameter), and the sum, b·s·out, for the scale's gradient."""
    b, s, i, o = 2, 24, 32, 48
    dt = torch.bfloat16
    linear = torch.nn.Linear(i, o, dtype=dt).requires_grad_(False)
    bias = torch.nn.Parameter(torch.zeros(o, dtype=dt))
    scale = torch.nn.Parameter(torch.ones(o, dtype=dt))
    x = torch.randn(b, s, i, dtype=dt, requires_grad=True)

    def forward() -> None:
        (scale * (linear(x) + bias)).float().sum().backward()

    measured = _saved_bytes(forward, (linear.weight, linear.bias, bias, scale))
    assert measured == b * s * o * 2


def _context(b: int, s: int, heads: int, head_dim: int) -> LayerContext:
    """The LayerContext of a bf16 run of b sequences of s tokens on Llama-2-7B narrowed to
    ``heads`` heads of ``head_dim`` (the formulas read its shapes and element size)."""
    run = run_config(
        method="llama-adapter", framework="litgpt", precision="bf16", batch_size=b, seq_len=s
    )
    width = heads * head_dim
    arch = _architecture("llama2-7b").model_copy(
        update={"hidden_size": width, "num_attention_heads": heads, "num_key_value_heads": heads}
    )
    assert arch.q_size == width
    return LayerContext(arch, run, plan_method(arch, run), b * s)


def test_estimate_block_items_by_hand() -> None:
    """The top block of llama-adapter keeps the gate's ay (b·s·h·2 bytes in bf16) and, its
    q needing a gradient, the kernel's logsumexp (b·heads·s rounded up to 32, fp32) and the
    float mask (s × 10 keys padded to 16); v2's top block keeps every linear's pre-scale
    output: b·s·(3h + h + 2f + h)·2 bytes for Llama 2."""
    b, s, h, nh, f = 1, 1000, 4096, 32, 11008
    est = estimate("llama2-7b", method="llama-adapter", batch_size=b, seq_len=s, **LITGPT)
    items = {x.what: x.bytes for x in est.memory.activations_per_block}
    assert items["adaption prompt: attention output (gate)"] == b * s * h * 2
    lse = b * nh * 1024 * 4
    assert items["adaption prompt: logsumexp, mask"] == lse + s * 16 * 2
    v2 = estimate("llama2-7b", method="llama-adapter-v2", batch_size=b, seq_len=s, **LITGPT)
    scaled = sum(x.bytes for x in v2.memory.activations_per_block if "adapter v2" in x.what)
    assert scaled == b * s * (3 * h + h + 2 * f + h) * 2
    outer = {x.what: x.bytes for x in v2.memory.activations_outer}
    assert outer["LM head adapter v2: pre-scale logits"] == b * s * 32000 * 2


class _PromptAttention(torch.nn.Module):
    """The adaption prompt's path of LitGPT's CausalSelfAttention.scaled_dot_product_attention
    (lit_gpt/adapter.py@0f021f3a l.119-148; litgpt/adapter.py@26857050 l.79-108, the same
    lines but ``self.qkv`` for ``self.attn``): the prompt's keys and values computed where
    ``adapter_kv_cache`` is None and cached on the module, the gated prompt attention."""

    def __init__(self, h: int, heads: int, groups: int, length: int) -> None:
        super().__init__()
        self.heads, self.groups, self.length, self.hs = heads, groups, length, h // heads
        self.qkv = torch.nn.Linear(h, (heads + 2 * groups) * self.hs).requires_grad_(False)
        self.adapter_wte = torch.nn.Embedding(length, h)
        self.gating_factor = torch.nn.Parameter(torch.full((1, 1, heads, 1), 0.5))
        self.adapter_kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        aT, hs = self.length, self.hs
        if self.adapter_kv_cache is not None:
            ak, av = self.adapter_kv_cache
        else:
            prefix = self.adapter_wte.weight.reshape(1, aT, self.heads * hs)
            aqkv = self.qkv(prefix)
            q_per_kv = self.heads // self.groups
            aqkv = aqkv.view(1, aT, self.groups, q_per_kv + 2, hs).permute(0, 2, 3, 1, 4)
            _, ak, av = aqkv.split((q_per_kv, 1, 1), dim=2)
            if self.groups != 1:
                ak = ak.repeat_interleave(q_per_kv, dim=2)
                av = av.repeat_interleave(q_per_kv, dim=2)
            ak = ak.view(1, -1, aT, hs)
            av = av.view(1, -1, aT, hs)
            self.adapter_kv_cache = (ak, av)
        amask = torch.ones(q.size(2), aT, dtype=torch.bool)
        ay = torch.nn.functional.scaled_dot_product_attention(q, ak, av, amask)
        return self.gating_factor * ay.transpose(1, 2)


@pytest.mark.parametrize("groups", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_the_prompt_gets_no_gradient_after_a_no_grad_first_forward(groups: int) -> None:
    """The scripts' sanity ``validate()`` (``@torch.no_grad()``) is the first forward: the
    cached k/v carry no graph, so training forwards give ``adapter_wte`` no gradient (the
    gate still gets one), while a first forward with grad would reach it. The cache's
    storages are what prompt_kv_cache_bytes counts per gated block, and the estimate
    counts no gradient for the prompt but keeps it in the printed trainable count."""
    from ftmem.adapters.llama_adapter import prompt_kv_cache_bytes
    from ftmem.precision import resolve_dtypes

    h, heads, n = 32, 4, 10
    q = torch.randn(2, heads, 6, h // heads)
    for validate_first in (True, False):
        module = _PromptAttention(h, heads, groups, n)
        if validate_first:
            with torch.no_grad():
                module(q)
        module(q).sum().backward()
        assert (module.adapter_wte.weight.grad is None) is validate_first
        assert module.gating_factor.grad is not None
    assert module.adapter_kv_cache is not None
    cached = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in module.adapter_kv_cache
    }
    arch = _architecture("llama2-7b").model_copy(
        update={"num_layers": 3, "hidden_size": h, "num_heads": heads, "num_kv_heads": groups}
    )
    run = run_config(
        method="llama-adapter", framework="litgpt", precision="fp32", adapter_start_layer=2
    )
    per_block = sum(cached.values())  # fp32, one gated block
    assert prompt_kv_cache_bytes(arch, run, resolve_dtypes(run)) == per_block
    assert per_block == (2 * n * h if groups > 1 else n * (h + 2 * h // heads)) * 4


def test_the_prompt_is_counted_trainable_but_has_no_gradient_or_state() -> None:
    """Llama 2 7B: the printed count stays LitGPT's 1,229,760; the gradients and AdamW
    states are the gates' alone (30 · 32 bf16 values; two states each); the weights add
    the cached k/v, 30 · 2 · 10 · 4096 · 2 bytes."""
    est = estimate("llama2-7b", method="llama-adapter", **LITGPT)
    assert est.model.n_trainable_params == 1_229_760
    plan = plan_method(_architecture("llama2-7b"), run_config(method="llama-adapter", **LITGPT))
    assert plan.n_trainable == 30 * 32
    assert est.memory.gradients_bytes == 30 * 32 * 2
    params = sum(g.nbytes for g in plan.groups)
    assert est.memory.weights_bytes - params == 30 * 2 * 10 * 4096 * 2
