"""FSDP1 under transformers' reentrant checkpoint around each decoder unit gathers one
block at a time: BACKWARD_PRE prefetch never fires (parallel.fsdp1_unprefetched).

transformers before 4.52 calls ``checkpoint(decoder_layer.__call__, hidden_states, ...)``
(4.48.1 models/llama/modeling_llama.py:577), so under FSDP1 the checkpoint wraps the unit
and the unit's first forward runs without grad. FSDP1 prefetches a unit in backward only
once a grad-enabled forward has flagged it (``_needs_pre_backward_unshard``), which here
happens in the unit's own recompute, after the unit above has looked for it. The measured
half runs torch's FSDP1 on two gloo ranks on the CPU (tiny Llama, peft LoRA, peft's
auto-wrap policy, BACKWARD_PRE) and counts the decoder units whose unsharded flat parameter
is allocated at every hook of the step, with the checkpoint around each unit as
transformers 4.48 calls it and inside it as the installed transformers does.
"""

from __future__ import annotations

from typing import Any

import pytest

from ftmem.api import parallel_config, run_config
from ftmem.parallel import parallel_step
from ftmem.sources import architecture_from_config
from tests.fsdp1_nesting import checkpointed_around

H, I, S, V, LAYERS, BATCH, KV = 512, 1024, 64, 64, 4, 2, 256
CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": H,
    "intermediate_size": I,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": V,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "hidden_act": "silu",
}
SETTINGS = {
    "method": "lora",
    "precision": "bf16",
    "grad_ckpt": True,
    "batch_size": BATCH,
    "seq_len": S,
    "lora_r": 4,
    "lora_alpha": 4,
    "lora_targets": "q,k,v,o",
    "lora_dropout": 0.1,
    "attn": "sdpa",
    "device": "cpu",
}
# by hand: one decoder block in bf16 (q, o: H·H; k, v: H·KV; gate, up, down: H·I; two
# norms) with its fp32 LoRA r 4 adapters (A r·H for q, k, v, o; B out·r: H, KV, KV, H);
# the root unit: embedding, LM head, final norm in bf16
BASE_BLOCK = (2 * H * H + 2 * H * KV + 3 * H * I + 2 * H) * 2
BLOCK = BASE_BLOCK + 4 * (4 * H + 2 * H + 2 * KV) * 4
ROOT = (2 * V * H + H) * 2


def _comm(transformers_version: str | None, **settings: object):  # -> Communication
    arch = architecture_from_config(CONFIG, "tiny-llama", "test")
    merged = {**SETTINGS, **settings}
    if merged["method"] != "lora":
        merged = {k: v for k, v in merged.items() if not k.startswith("lora_")}
    run = run_config(**merged, transformers_version=transformers_version)
    return parallel_step(arch, run, parallel_config(gpus=2, strategy="fsdp")).ranks[0].sizes.comm


def test_one_block_gathered_by_hand() -> None:
    comm = _comm("4.48.1")
    assert (comm.forward, comm.backward) == (ROOT + BLOCK, ROOT + BLOCK)
    assert (comm.head_forward, comm.loss_backward, comm.head_backward) == (ROOT, ROOT, ROOT)


@pytest.mark.parametrize(
    ("version", "blocks"),
    [("4.52.0", 1), (None, 2)],
    ids=["transformers-4.52", "current"],
)
def test_prefetch_with_the_checkpoint_inside(version: str | None, blocks: int) -> None:
    """The checkpoint inside the layer (GradientCheckpointingLayer): the first forward
    runs with grad, so BACKWARD_PRE prefetches in backward. Under FSDP1 (transformers
    4.52) with peft's auto-wrap policy it prefetches the unit's own last LoRA leaf, not
    the unit below: one decoder unit (parallel.fsdp1_lora_backward, measured in
    tests/test_fsdp_units_in_flight.py); FSDP2 (the installed release) keeps two."""
    assert _comm(version).backward == ROOT + blocks * BLOCK


def test_full_finetuning_is_unprefetched_too() -> None:
    """Nothing of it depends on frozen units (measured below with LoRA only; the flag is
    set on any unit's outputs the same way)."""
    comm = _comm("4.48.1", method="full")
    assert comm.backward - comm.head_backward == BASE_BLOCK


def _tiny_fsdp1_lora(rank: int, port: int, around: bool):  # -> (FSDP model, decoder units)
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch import nn
    from torch.distributed.fsdp import BackwardPrefetch, ShardingStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from transformers import LlamaConfig, LlamaForCausalLM

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=H,
        intermediate_size=I,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=V,
        max_position_embeddings=256,
    )
    model: Any = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.config.use_cache = False
    if not around:  # the installed transformers: the checkpoint inside the layer's call
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=4, target_modules=targets))
    model.train()
    model = FSDP(
        model,
        auto_wrap_policy=fsdp_auto_wrap_policy(model),
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        backward_prefetch=BackwardPrefetch.BACKWARD_PRE,
        device_id=torch.device("cpu"),
        use_orig_params=False,
    )
    layers = next(m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == LAYERS)
    units = list(layers)
    if around:
        for i in range(LAYERS):
            layers[i] = checkpointed_around(layers[i])
    return model, units


def _gathered_rank(rank: int, port: int, around: bool, out: str) -> None:
    """Rank 0 writes the most decoder units gathered at once in forward, at the head side
    (between the last block's forward and the top block's backward) and in backward."""
    import json

    import torch
    import torch.distributed as dist
    import torch.distributed.fsdp._runtime_utils as runtime

    model, units = _tiny_fsdp1_lora(rank, port, around)
    most = {"forward": 0, "head": 0, "backward": 0}
    phase = ["forward"]

    def look(*_: object) -> None:
        n = sum(u._handle.flat_param._full_param_padded.untyped_storage().size() > 0 for u in units)
        most[phase[0]] = max(most[phase[0]], n)

    for unit in units:  # inside each unit's forward, both passes
        unit._fsdp_wrapped_module.register_forward_pre_hook(look)
        unit._fsdp_wrapped_module.register_forward_hook(look)
    original = runtime._pre_backward_hook

    def pre_backward(state, module, handle, grad, *rest):  # every unit's, the root's first
        result = original(state, module, handle, grad, *rest)
        if state._is_root:
            look()
            phase[0] = "backward"
        look()
        return result

    runtime._pre_backward_hook = pre_backward
    x = torch.randint(0, V, (BATCH, S))
    for _ in range(2):  # the second step is the one counted (the first records the order)
        most.update(forward=0, head=0, backward=0)
        phase[0] = "forward"
        loss = model(input_ids=x, labels=x).loss
        phase[0] = "head"
        look()
        loss.backward()
        model.zero_grad(set_to_none=True)
    if rank == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(most, f)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("around", [True, False], ids=["transformers-4.48", "inside"])
def test_units_gathered_as_modelled(tmp_path, around: bool) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not built in")
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "gathered.json"
    mp.spawn(_gathered_rank, args=(port, around, str(out)), nprocs=2)
    got = json.loads(out.read_text(encoding="utf-8"))

    comm = _comm("4.48.1" if around else None)
    blocks_backward = (comm.backward - ROOT) // BLOCK
    assert got["backward"] == blocks_backward == (1 if around else 2)
    # with the checkpoint inside, the run is the installed transformers': FSDP2 by default,
    # two in forward (FSDP1's one: tests/test_fsdp_units_in_flight.py)
    if around:
        assert got["forward"] == (comm.forward - ROOT) // BLOCK == 1
        assert got["head"] == (comm.loss_backward - ROOT) // BLOCK == 0
