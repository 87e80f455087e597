"""FSDP leaves a bitsandbytes 4-bit weight's quant_state whole on every rank
(parallel.bnb_quant_state_bytes; calibration/notes/fsdp_qlora.md F2).

The source: FSDP flattens and shards ``module.parameters()`` only; bitsandbytes 0.43.0
``Params4bit._quantize`` hangs the ``QuantState`` on the module (``self.module.quant_state
= quant_state``, bitsandbytes/nn/modules.py:288-290), a plain attribute; Answer.AI's
train.py quantises on every rank because "FSDP only syncs parameters and buffers, so the
quant_state isn't copied" (AnswerDotAI/fsdp_qlora@50efa1e train.py:197-207). The
bytes are derived by hand from bitsandbytes' ``quantize_4bit`` (blocksize 64,
``compress_statistics``: ``quantize_blockwise`` of the absmaxes in blocks of 256 with the
8-bit dynamic code); the PyTorch half runs FSDP1 on two gloo ranks on the CPU.
"""

from __future__ import annotations

import pytest

from ftmem.api import parallel_config, run_config
from ftmem.dtypes import quant_state_bytes
from ftmem.parallel import parallel_step
from ftmem.presets import get_model
from tests import fsdp_gloo as gloo


def _q_proj_state() -> int:
    """Llama-2-7B's q_proj (4096 x 4096) under double quantisation, by hand."""
    n = 4096 * 4096
    blocks = n // 64  # one absmax per 64 values: 262,144
    qabsmax = blocks  # the absmaxes quantised to uint8
    nested_absmax = 4 * (blocks // 256)  # fp32, one per 256 absmaxes
    offset = 4  # absmax.mean(), fp32
    nested_code = 4 * 256  # the 8-bit dynamic map, fp32
    nf4_code = 4 * 16  # the NF4 code book, fp32
    return qabsmax + nested_absmax + offset + nested_code + nf4_code


def test_the_quant_state_bytes_by_hand():
    assert quant_state_bytes(4096 * 4096, "nf4", double_quant=True) == _q_proj_state()
    # without double quantisation: an fp32 absmax per 64 values and the code book
    assert quant_state_bytes(4096 * 4096, "nf4", double_quant=False) == 4 * 262_144 + 64


@pytest.mark.parametrize("offload", [False, True], ids=["on-gpu", "cpu-offload"])
def test_fsdp_rank_keeps_every_layers_quant_state_whole(offload):
    """Llama-2-7B QLoRA (all seven block linears 4-bit, lm_head bf16) on 2 GPUs: each rank
    holds 32 layers x (4 attention linears + 3 MLP linears) quant_states whole; CPU offload
    moves the shards to the host, the quant_states stay (train.py keeps them on the GPU)."""
    arch = get_model("llama-2-7b")
    run = run_config(method="qlora", precision="bf16", framework="fsdp_qlora")
    extra = {"offload_params": "cpu", "offload_optimizer": "cpu"} if offload else {}
    rank = parallel_step(arch, run, parallel_config(gpus=2, strategy="fsdp", **extra)).ranks[0]
    mlp = quant_state_bytes(11008 * 4096, "nf4")
    assert rank.weights_replicated == 32 * (4 * _q_proj_state() + 3 * mlp)
    if offload:
        assert rank.weights_sharded == 0
    # the same run replicated (DDP) holds the same weights whole: FSDP saves only the rest
    whole = parallel_step(arch, run, parallel_config(gpus=2, strategy="ddp")).ranks[0]
    rest = whole.weights_replicated - rank.weights_replicated
    if not offload:
        assert rank.weights_sharded == -(-rest // 2)


def _held() -> tuple[int, int, bool]:
    """A linear carrying a non-parameter tensor attribute, as Linear4bit carries its
    quant_state, wrapped by FSDP1: what the rank holds after (its flat parameter's
    elements, the attribute's, whether the attribute is the very tensor it was)."""
    import torch
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel

    gloo.allow_sync_module_states_on_the_cpu()
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    state = torch.arange(32 * 64 // 64, dtype=torch.float32)  # "absmax": one per 64
    model[0].quant_state = state
    wrapped = FullyShardedDataParallel(
        model, device_id=torch.device("cpu"), sync_module_states=True, use_orig_params=False
    )
    flat = next(wrapped.parameters())
    held = wrapped.module[0].quant_state
    return flat.numel(), held.numel(), held.data_ptr() == state.data_ptr()


def test_torch_fsdp_shards_the_weight_not_the_attribute(tmp_path):
    flat, held, same = gloo.on_two_ranks(tmp_path, _held)
    assert flat == 32 * 64 // 2  # the weight: rank 0's half of the flat parameter
    assert held == 32 and same  # the attribute: whole, the very tensor, on every rank
