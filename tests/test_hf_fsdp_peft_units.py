"""HF Trainer's FSDP1 wraps every LoRA matrix as a unit of its own
(parallel.wraps_each_trainable_leaf, versions.hf_trainer_wraps_peft_leaves).

Before accelerate wraps a peft model under FSDP1, HF Trainer replaces the plugin's
auto-wrap policy with peft's: transformers 5.25.0 trainer.py:1774-1777 calls
distributed/fsdp.py:267-279 ``update_fsdp_plugin_peft``, which sets
``fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)`` (peft 0.21.2
utils/other.py:1271-1308: each leaf module with a trainable weight a unit, beside the
decoder layers); accelerate's ``set_auto_wrap_policy`` leaves a callable policy as it is
and ``prepare_model`` hands it to ``FullyShardedDataParallel`` (accelerate 1.16
accelerator.py:1904-1943). So each LoRA matrix has its own flat parameter: its own
gradient shard and its own optimizer states on a rank. Under FSDP2 the Trainer creates
the optimizer first and does not call it (trainer.py:1735-1737).

The measured half runs that code on two gloo ranks on the CPU: a tiny Llama with LoRA on
every projection, the installed transformers' ``update_fsdp_plugin_peft`` on a real
accelerate plugin, FSDP1 built with the plugin's policy and HF's default
``use_orig_params=True`` (training_args.py:2876-2878); rank 0 lists each unit's flat
parameter. ftmem's per-leaf units (gpu.trace.leaf_units) and the estimate's gradient
shards and optimizer states are checked against that list.
"""

from __future__ import annotations

from typing import Any

import pytest

from ftmem.api import parallel_config, run_config
from ftmem.estimate import _leaf_shards, _tensors
from ftmem.gpu.trace import leaf_units
from ftmem.methods import plan_method
from ftmem.parallel import parallel_step
from ftmem.sources import architecture_from_config
from tests import fsdp_gloo as gloo

# odd sizes, so that a matrix does not split evenly over the two ranks
H, I, LAYERS, R, V = 64, 94, 2, 3, 64
CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": H,
    "intermediate_size": I,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": V,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "hidden_act": "silu",
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _run(transformers_version: str | None = None, method: str = "lora", framework: str = "hf"):
    lora = {"lora_r": R, "lora_targets": "q,k,v,o,gate,up,down"} if method != "full" else {}
    return run_config(
        method=method,
        precision="fp32",
        framework=framework,
        **lora,
        batch_size=1,
        seq_len=16,
        device="cpu",
        transformers_version=transformers_version,
    )


def _units() -> list[dict]:
    """Per FSDP unit in module order: whether its flat parameter is trainable, its local
    shard's bytes and the decoder layer it lies in (None: outside)."""
    import types

    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.distributed.fsdp import update_fsdp_plugin_peft

    torch.manual_seed(0)
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    config = LlamaConfig(
        **{k: CONFIG[k] for k in keys},
        num_key_value_heads=CONFIG["num_key_value_heads"],
        vocab_size=V,
        max_position_embeddings=CONFIG["max_position_embeddings"],
        tie_word_embeddings=False,
    )
    model: Any = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=R, lora_alpha=R, target_modules=TARGETS)
    )
    # HF Trainer's plugin (TrainingArguments' default TRANSFORMER_BASED_WRAP), then its
    # peft update and accelerate's own policy step, as prepare_model runs them
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=1, auto_wrap_policy="TRANSFORMER_BASED_WRAP", use_orig_params=True
    )
    update_fsdp_plugin_peft(
        model, types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=plugin))
    )
    plugin.set_auto_wrap_policy(model)
    wrapped = FSDP(
        model,
        auto_wrap_policy=plugin.auto_wrap_policy,
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        use_orig_params=True,
        device_id=torch.device("cpu"),
    )
    layers = [m for m in wrapped.modules() if type(m).__name__ == "LlamaDecoderLayer"]
    inside = {id(sub): i for i, layer in enumerate(layers) for sub in layer.modules()}
    units = []
    for unit in wrapped.modules():
        if isinstance(unit, FSDP) and unit._handle is not None:
            flat = unit._handle.flat_param
            units.append(
                {
                    "trainable": flat.requires_grad,
                    "bytes": flat.numel() * flat.element_size(),
                    "layer": inside.get(id(unit)),
                }
            )
    return units


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> list[dict]:
    return gloo.on_two_ranks(tmp_path_factory.mktemp("units"), _units, needs=("peft", "accelerate"))


@pytest.mark.slow
def test_every_lora_matrix_is_a_unit_as_ftmem_counts(measured) -> None:
    """The trainable units the real policy makes: one per LoRA matrix (2 per target, 7
    targets, 2 layers), each rank 0's shard of ceil(n / 2) fp32 elements; ftmem's
    leaf_units at the shard count _leaf_shards gives an FSDP1 hf run."""
    trainable = [u for u in measured if u["trainable"]]
    assert len(trainable) == 2 * len(TARGETS) * LAYERS
    # the decoder units themselves hold only frozen weights (no gradient, no state)
    assert all(u["layer"] is not None for u in trainable)
    arch = architecture_from_config(CONFIG, "tiny-llama", "test")
    run = _run()
    shards = _leaf_shards(run, parallel_config(gpus=2, strategy="fsdp", fsdp_version=1))
    assert shards == 2
    assert sorted(leaf_units(plan_method(arch, run), shards)) == sorted(
        u["bytes"] for u in trainable
    )


@pytest.mark.slow
def test_the_estimate_holds_a_gradient_shard_and_states_per_unit(measured) -> None:
    """The rank's replayed tensors: one block's gradients as one shard per LoRA unit of
    that layer, and AdamW's two moments per unit (torch.optim.AdamW ``_init_group``:
    ``zeros_like`` per parameter; with use_orig_params each LoRA unit's one parameter)."""
    arch = architecture_from_config(CONFIG, "tiny-llama", "test")
    run = _run()
    par = parallel_config(gpus=2, strategy="fsdp", fsdp_version=1)
    step = parallel_step(arch, run, par)
    tensors = _tensors(step.parts, step.ranks[0].sizes, _leaf_shards(run, par), run)
    layer0 = sorted(u["bytes"] for u in measured if u["trainable"] and u["layer"] == 0)
    assert sorted(tensors.block_grads) == layer0
    units = sorted(b for u in measured if u["trainable"] for b in (u["bytes"],) * 2)
    # the rank's states total also counts each parameter's 4-byte ``step`` scalar
    # (optim.STEP_TENSOR_BYTES), and is split in proportion to the units (about 2 bytes
    # more per moment, the last taking the rounding)
    states = sorted(tensors.states)
    assert len(states) == len(units)
    assert sum(states) - sum(units) == 4 * len(units) // 2
    off = [got - held for got, held in zip(states, units, strict=True) if not 0 <= got - held <= 2]
    assert len(off) <= 1


@pytest.mark.parametrize(
    ("version", "fsdp_version", "method", "framework", "shards"),
    [
        (None, 1, "lora", "hf", 2),  # update_fsdp_plugin_peft (5.25 trainer.py:1774-1777)
        ("4.57.6", None, "qlora", "hf", 2),  # FSDP1 by default; _fsdp_qlora_plugin_updates
        ("4.39.0", None, "dora", "hf", 2),  # first release with it (trainer.py:1920-1922)
        ("4.38.2", None, "lora", "hf", 0),  # no peft policy: the decoder layers' units
        (None, 2, "lora", "hf", 0),  # FSDP2: not called (trainer.py:1735-1737)
        (None, None, "lora", "hf", 0),  # 5.25's default version, FSDP2
        ("4.57.6", None, "full", "hf", 0),  # not a peft model
        # AxolotlTrainer and LLaMA-Factory's trainers keep Trainer's training loop
        (None, 1, "lora", "axolotl", 2),
        (None, 1, "lora", "llama-factory", 2),
        (None, None, "lora", "litgpt", 0),  # Fabric's FSDPStrategy, Block units
        (None, None, "lora", "fsdp_qlora", 2),  # its own policy, FSDP1
    ],
)
def test_which_runs_wrap_each_lora_matrix(version, fsdp_version, method, framework, shards):
    run = _run(version, method, framework)
    par = parallel_config(gpus=2, strategy="fsdp", fsdp_version=fsdp_version)
    assert _leaf_shards(run, par) == shards


def test_no_shard_keeps_each_units_whole_parameter() -> None:
    run = _run("4.57.6")
    assert _leaf_shards(run, parallel_config(gpus=2, strategy="fsdp-no-shard")) == 1
