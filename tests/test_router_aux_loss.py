"""The router's load-balancing loss (config.json's output_router_logits, --router-aux-loss)
and OLMoE's clip_qkv: what transformers saves for them, measured, and how ftmem reads them.
The whole-step numbers are the accuracy cases' (tests/accuracy/cases.py
_router_aux_loss_and_clip)."""

from __future__ import annotations

import json

import pytest

from ftmem.cli import main
from ftmem.estimate import estimate_step
from ftmem.run import RunConfig
from ftmem.sources import resolve_model
from tests.conftest import tiny

# mistralai/Mixtral-8x7B-v0.1's config.json shapes (HF, main), output_router_logits as given
MIXTRAL = {
    "model_type": "mixtral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1e6,
    "router_aux_loss_coef": 0.02,
    "output_router_logits": False,
}


def _graph_saved_bytes(out) -> int:
    """Bytes of the distinct storages the nodes reachable from ``out`` keep for backward
    (what the accuracy cases measure: ftmem.measure.saved walks the graph)."""
    from ftmem.measure.saved import walk_saved

    return sum(t.nbytes for t in walk_saved(out.grad_fn, set()))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_balancing_loss_keeps_one_softmax_per_layer(dtype):
    """transformers 5.24's load_balancing_loss_func (Mixtral's; Qwen3-MoE's, OLMoE's and
    gpt-oss's are copies) over L layers of (T, E) logits keeps each layer's softmax
    output, (T, E) in the logits' dtype, and the (E,) fp32 token shares the final
    product multiplies by: L·T·E·elem + E·4 bytes, nothing else of size T."""
    torch = pytest.importorskip("torch")
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    L, T, E, k = 3, 40, 8, 2
    dt = getattr(torch, dtype)
    logits = tuple(torch.randn(T, E, dtype=dt, requires_grad=True) for _ in range(L))
    got = _graph_saved_bytes(load_balancing_loss_func(logits, E, k))
    elem = torch.empty((), dtype=dt).element_size()
    assert got == L * T * E * elem + E * 4
    from ftmem.ops.router_aux import RouterAuxLoss

    run = RunConfig(precision="fp32" if dtype == "float32" else "bf16", router_aux_loss=True)
    arch = tiny("mixtral", num_experts=E, experts_per_token=k, router_aux_loss=True)
    assert RouterAuxLoss.kept(arch, run, _plan(arch, run), T) == T * E * elem


def _plan(arch, run):
    from ftmem.methods import plan_method

    return plan_method(arch, run)


def test_clamp_in_place_keeps_a_copy_of_its_input():
    """OlmoeAttention's ``query_states.clamp_(min=-c, max=c)``: an in-place clamp on a
    tensor that needs a gradient saves a copy of its input (a new storage of its size),
    what Attention.clamp_saved counts per clamped tensor."""
    torch = pytest.importorskip("torch")
    x = torch.randn(30, 16, dtype=torch.bfloat16, requires_grad=True)
    y = x * 2  # (a product by a number saves nothing)
    y.clamp_(min=-1.0, max=1.0)
    assert _graph_saved_bytes(y) == 30 * 16 * 2


def test_config_json_turns_it_on_and_the_run_overrides(tmp_path):
    """output_router_logits true in config.json: each of the 32 MoE blocks keeps T·E
    bf16 elements (T = 2 × 1024 tokens, E = 8) from its forward to its backward:
    32 × 2,048 × 8 × 2 = 1,048,576 bytes more activations, by hand; the run's
    router_aux_loss false takes it off again."""
    (tmp_path / "config.json").write_text(json.dumps({**MIXTRAL, "output_router_logits": True}))
    on = resolve_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(MIXTRAL))
    off = resolve_model(str(tmp_path))
    assert (on.router_aux_loss, off.router_aux_loss) == (True, False)
    run = RunConfig(method="lora", precision="bf16", batch_size=2, seq_len=1024)
    with_aux = estimate_step(on, run).memory.activations_bytes
    without = estimate_step(off, run).memory.activations_bytes
    assert with_aux - without == 32 * 2048 * 8 * 2 == 1_048_576
    forced_off = run.model_copy(update={"router_aux_loss": False})
    assert estimate_step(on, forced_off).memory.activations_bytes == without
    forced_on = run.model_copy(update={"router_aux_loss": True})
    assert estimate_step(off, forced_on).memory.activations_bytes == with_aux


def test_deepseek_reads_no_aux_loss(tmp_path):
    """DeepSeek-V2/V3's causal LMs in transformers 5.24 compute no load-balancing loss
    (no output_router_logits in modeling_deepseek_v3.py): the key changes nothing."""
    arch = resolve_model("deepseek-v2-lite")
    assert not arch.router_aux_loss
    assert not arch.traits.router_aux_loss


def test_cli_flag_and_json(tmp_path, capsys):
    """--router-aux-loss on a config without it; the JSON run says so, and leaves the
    key out when the run does not set it (estimates stay as they were)."""
    (tmp_path / "config.json").write_text(json.dumps(MIXTRAL))
    base = ["estimate", str(tmp_path / "config.json"), "--method", "lora", "--format", "json"]
    outs = []
    for extra in ([], ["--router-aux-loss"], ["--no-router-aux-loss"]):
        with pytest.raises(SystemExit) as done:
            main([*base, *extra])
        assert done.value.code == 0
        outs.append(json.loads(capsys.readouterr().out))
    plain, on, off = outs
    assert "router_aux_loss" not in plain["run"]
    assert on["run"]["router_aux_loss"] is True and off["run"]["router_aux_loss"] is False
    acts = [o["memory"]["activations_bytes"] for o in outs]
    assert acts[0] == acts[2] < acts[1]


def test_olmoe_reads_clip_qkv(tmp_path):
    """clip_qkv read into qkv_clip and written back for transformers."""
    pytest.importorskip("transformers")
    from ftmem.measure.build import hf_config

    arch = tiny("olmoe", qkv_clip=8.0)
    hf_config(arch).to_json_file(tmp_path / "config.json")
    assert resolve_model(str(tmp_path)).qkv_clip == 8.0
    with pytest.raises(ValueError, match="does not clamp"):
        tiny("qwen3_moe", qkv_clip=8.0)
