"""Gemma 4's per-layer inputs (E2B/E4B: hidden_size_per_layer_input; src/ftmem/ops/
per_layer_input.py): counts against transformers 5.25 on the meta device and by hand, the
config read both ways, the tensors derived from modeling_gemma4.py, and the runs not
measured refused in one sentence. Their step memory is measured in tests/accuracy
(ids ``perlayerinputsize``)."""

from __future__ import annotations

import json

import pytest

from ftmem.arch import count_params, layout
from ftmem.cli import main
from ftmem.errors import InvalidInputError
from ftmem.estimate import estimate_step
from ftmem.families import get
from ftmem.run import RunConfig
from ftmem.sources import resolve_model
from tests.conftest import tiny
from tests.test_gemma4 import DENSE


def _arch(tmp_path, cfg: dict):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return resolve_model(str(tmp_path))


def test_31b_shape_with_per_layer_inputs_counts_as_transformers_builds_it(tmp_path):
    """DENSE (30,146,837,760 by hand in tests/test_gemma4.py) with per-layer inputs of
    256 (Gemma4TextConfig's default): the table 262,144 × (60 · 256) = 4,026,531,840,
    the model's projection 5,376 × 15,360 = 82,575,360 and its norm 256; each block's
    gate and projection 2 · 5,376 · 256 and norm 5,376, 165,473,280 for 60:
    34,421,418,496 in all."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = {**DENSE, "hidden_size_per_layer_input": 256}
    arch = _arch(tmp_path, cfg)
    assert (arch.per_layer_input_size, arch.per_layer_input_vocab) == (256, None)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**cfg)
        )
    real = sum(p.numel() for p in model.parameters())
    assert count_params(arch) == real == 34_421_418_496
    names = {n for n, _ in model.named_parameters()}
    lay = layout(arch)
    mine = {p.name for p in lay.outer} | {f"model.layers.0.{p.name}" for p in lay.block}
    assert mine == {n for n in names if not n.startswith("model.layers.") or ".0." in n}


def test_config_class_defaults_count_as_transformers_builds_them(tmp_path):
    """Gemma4TextConfig's defaults alone (configuration_gemma4.py: 30 layers of 2304, per-
    layer inputs of 256 from a table of 262,144 rows, global layers 512 wide)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    arch = _arch(tmp_path, {"model_type": "gemma4_text"})
    assert arch.per_layer_input_size == 256
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(model_type="gemma4_text")
        )
    assert count_params(arch) == sum(p.numel() for p in model.parameters())


def test_own_table_height_is_read_and_built(tmp_path):
    """vocab_size_per_layer_input where it is not vocab_size, and the config ftmem
    measure builds for it (the table's rows: transformers' own count)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = {**DENSE, "hidden_size_per_layer_input": 128, "vocab_size_per_layer_input": 1000}
    arch = _arch(tmp_path, cfg)
    assert (arch.per_layer_input_size, arch.per_layer_input_vocab) == (128, 1000)
    small = tiny("gemma4", per_layer_input_size=16, per_layer_input_vocab=400)
    kw = get("gemma4").config.build(small)
    config = transformers.CONFIG_MAPPING["gemma4_text"](**kw, vocab_size=small.vocab_size)
    assert (config.hidden_size_per_layer_input, config.vocab_size_per_layer_input) == (16, 400)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(small) == sum(p.numel() for p in model.parameters())


def test_other_families_have_no_per_layer_inputs():
    with pytest.raises(ValueError, match="per-layer inputs"):
        tiny("gemma3", per_layer_input_size=16)


def _items(arch, settings: dict) -> dict[str, int]:
    from ftmem.activations import block_saved, outer_saved
    from ftmem.methods import plan_method
    from ftmem.ops.context import BlockState

    run = RunConfig(batch_size=3, seq_len=50, **settings)
    plan = plan_method(arch, run)
    full = run.method == "full"
    state = BlockState(input_requires_grad=full, weights_trainable=full, adapted=frozenset())
    items = block_saved(arch, run, plan, state, 150) + outer_saved(arch, run, plan, 150)[0]
    return {s.what: s.nbytes for s in items if "per-layer" in s.what}


def test_full_fp32_tensors_by_hand():
    """T = 150 tokens, hidden 64, width 16, 2 layers, fp32, everything trains
    (modeling_gemma4.py l.1408-1415 and l.1773-1784): the gate's input T·64·4, the
    activation's input and output and the projection's input T·16·4 each; the model's
    (T, 2, 16) inputs once, its norm's fp32 input, torch.pow's two per-row values and
    the normalised tensor (the projection's input is the first block's, an fp32 norm
    keeping its input itself). The post norm is ops.norm.Norm's."""
    arch = tiny("gemma4", per_layer_input_size=16)
    got = _items(arch, {"method": "full", "precision": "fp32"})
    rows = 150 * 2
    assert got == {
        "per-layer gate input": 150 * 64 * 4,
        "per-layer activation input": 150 * 16 * 4,
        "per-layer activation output": 150 * 16 * 4,
        "per-layer projection input": 150 * 16 * 4,
        "post per-layer input norm: fp32 input + rstd": 150 * 64 * 4 + 2 * 150 * 4,
        "post per-layer input norm: normalised": 150 * 64 * 4,
        "per-layer inputs": rows * 16 * 4,
        "per-layer projection norm": 2 * rows * 16 * 4 + 2 * rows * 4,
    }


def test_model_side_gradients_appear_after_the_blocks():
    """The per-layer table, projection and norm make the per-layer inputs before the
    first block (modeling_gemma4.py l.1705-1784) and every block reads a slice, so autograd
    reaches them only once the bottom block's backward is done: their gradients are not
    live during the blocks' backward (measured: the checkpointed full bf16 peak, at the
    bottom block's post per-layer norm backward, holds no gradient of theirs). Full bf16:
    a 300 × (2 · 16) table, a (2 · 16) × 64 projection and a 16-wide norm, 2 bytes each;
    the blocks' own and the token embedding's (tied: the head's, made first) are not."""
    from ftmem.methods import plan_method

    arch = tiny("gemma4", per_layer_input_size=16)
    plan = plan_method(arch, RunConfig(batch_size=3, seq_len=50, precision="bf16", grad_ckpt=True))
    after = {g.name: g.count * g.grad_bytes for g in plan.groups if plan.gradient_after_blocks(g)}
    assert after == {
        "model.embed_tokens_per_layer.weight": 300 * 2 * 16 * 2,
        "model.per_layer_model_projection.weight": 2 * 16 * 64 * 2,
        "model.per_layer_projection_norm.weight": 16 * 2,
    }


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"method": "oft"}, "--method oft"),
        ({"method": "qlora"}, "--method qlora"),
        ({"method": "lora", "lora_targets": "all-linear"}, "all-linear"),
        ({"method": "dora", "lora_targets": "all-linear"}, "all-linear"),
        ({"method": "ia3", "grad_ckpt": True}, "gradient checkpointing"),
        ({"method": "freeze", "grad_ckpt": True}, "gradient checkpointing"),
        ({"method": "dora", "grad_ckpt": True}, "gradient checkpointing"),
        ({"method": "lora", "activation_offload": True}, "offloaded activations"),
        ({"method": "lora", "framework": "unsloth"}, "--framework unsloth"),
        ({"method": "lora", "objective": "dpo"}, "--objective dpo"),
        ({"method": "prompt-tuning", "virtual_tokens": 4}, "--method prompt-tuning"),
    ],
)
def test_unmeasured_runs_are_refused(settings, words):
    arch = tiny("gemma4", per_layer_input_size=16)
    with pytest.raises(InvalidInputError, match=words):
        estimate_step(arch, RunConfig(batch_size=1, seq_len=64, **settings))


def test_serving_and_parallel_are_refused():
    from ftmem.parallel import ParallelConfig
    from ftmem.serve import ServeConfig, estimate_serving

    arch = tiny("gemma4", per_layer_input_size=16)
    with pytest.raises(InvalidInputError, match="ftmem serve"):
        estimate_serving(arch, ServeConfig())
    with pytest.raises(InvalidInputError, match="more than one GPU"):
        estimate_step(arch, RunConfig(batch_size=1, seq_len=64), par=ParallelConfig(gpus=2))


def test_cli_estimates_and_refuses_in_one_line(tmp_path, capsys):
    """The E2B-style config estimates; an unmeasured method exits 2 with one line."""
    (tmp_path / "config.json").write_text(
        json.dumps({**DENSE, "num_hidden_layers": 6, "hidden_size_per_layer_input": 256})
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", str(tmp_path), "--method", "lora"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["estimate", str(tmp_path), "--method", "oft"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and "per-layer inputs" in err and "Traceback" not in err


@pytest.mark.parametrize(("top_side", "top"), [(0, 9600), (5000, 4600), (20_000, 0)])
def test_top_block_counts_the_inputs_gradient_beyond_its_freed_tensors(top_side, top):
    """The per-layer inputs' gradient (checkpointed: the embeddings need one) is one
    zero-filled (T, layers, width) tensor, 150 × 2 × 16 × 2 B in bf16, held through every
    block's backward below the top; the top block makes it after its post per-layer
    norm's backward, and its later moments have freed its per-layer tensors."""
    from ftmem.methods import plan_method
    from ftmem.step import _per_layer_gradient

    arch = tiny("gemma4", per_layer_input_size=16)
    run = RunConfig(batch_size=3, seq_len=50, precision="bf16", grad_ckpt=True, method="lora")
    got = _per_layer_gradient(arch, run, plan_method(arch, run), top_side, ())
    assert got == (150 * 2 * 16 * 2, top)
