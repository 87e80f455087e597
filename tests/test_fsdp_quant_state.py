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


def _fsdp_rank(rank: int, port: int, out: str) -> None:
    """Two gloo ranks: a linear carrying a non-parameter tensor attribute, as Linear4bit
    carries its quant_state, wrapped by FSDP1; rank 0 writes what it holds after."""
    import json

    import torch
    import torch.distributed as dist
    import torch.distributed.fsdp._init_utils as init_utils
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    init_utils._check_module_states_for_sync_module_states = lambda _: None  # GPU-only check
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    state = torch.arange(32 * 64 // 64, dtype=torch.float32)  # "absmax": one per 64
    model[0].quant_state = state
    wrapped = FullyShardedDataParallel(
        model, device_id=torch.device("cpu"), sync_module_states=True, use_orig_params=False
    )
    if rank == 0:
        flat = next(wrapped.parameters())
        held = wrapped.module[0].quant_state
        with open(out, "w", encoding="utf-8") as f:
            json.dump([flat.numel(), held.numel(), held.data_ptr() == state.data_ptr()], f)
    dist.barrier()
    dist.destroy_process_group()


def test_torch_fsdp_shards_the_weight_not_the_attribute(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not built in")
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "held.json"
    mp.spawn(_fsdp_rank, args=(port, str(out)), nprocs=2)
    flat, held, same = json.loads(out.read_text(encoding="utf-8"))
    assert flat == 32 * 64 // 2  # the weight: rank 0's half of the flat parameter
    assert held == 32 and same  # the attribute: whole, the very tensor, on every rank
