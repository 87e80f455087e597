"""torch's FSDP on two gloo ranks on the CPU, as the tests that measure it share it: the
process group and the spawn, a tiny bf16 Llama and FSDP1 around it as HF Trainer wraps it,
the count of decoder units gathered at once, transformers < 4.52's checkpoint around a unit,
and ftmem's estimate of the same run on rank 0.

A test's rank function is a module-level function (the spawned ranks import it by name)
that runs with the process group up and returns what rank 0 reports, as JSON.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from ftmem.api import parallel_config, run_config
from ftmem.parallel import RankMemory, parallel_step
from ftmem.sources import architecture_from_config

WORLD = 2


def on_two_ranks(tmp_path: Path, rank_fn: Any, *args: Any, needs: tuple[str, ...] = ()) -> Any:
    """``rank_fn(*args)`` on two gloo ranks; what rank 0 returned. Skipped where
    torch.distributed is not built in or a package in ``needs`` is missing."""
    torch = pytest.importorskip("torch")
    for name in needs:
        pytest.importorskip(name)
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not built in")
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.json"
    for attempt in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        try:
            mp.spawn(_rank, args=(port, str(out), rank_fn, args), nprocs=WORLD)
            break
        except mp.ProcessExitedException:
            # a rank killed by a signal before it reported (gloo aborting, once in CI
            # under two xdist workers; the free port may be taken between the probe and
            # the store's bind) is the machine's, not the rank's answer: one more try. A
            # rank that raises (ProcessRaisedException) fails at once.
            if attempt:
                raise
    return json.loads(out.read_text(encoding="utf-8"))


def _rank(rank: int, port: int, out: str, rank_fn: Any, args: tuple[Any, ...]) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    reported = rank_fn(*args)
    if rank == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump(reported, f)
    dist.barrier()  # neither rank tears gloo down while the other still talks
    dist.destroy_process_group()


def allow_sync_module_states_on_the_cpu() -> None:
    """FSDP1's sync_module_states refuses CPU tensors (a GPU-only check); the broadcast
    itself runs on gloo."""
    import torch.distributed.fsdp._init_utils as init_utils

    init_utils._check_module_states_for_sync_module_states = lambda _: None


def llama_config(hidden: int, intermediate: int, layers: int, vocab: int) -> dict[str, Any]:
    """A tiny Llama's config.json (4 heads, 2 key/value heads, untied, bf16): what ftmem
    estimates and, through bf16_llama, what the ranks build."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
    }


# what bf16_llama gives LlamaConfig; the rest of llama_config is its default
_SHAPE = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "max_position_embeddings",
)


def bf16_llama(config: dict[str, Any]) -> Any:
    """LlamaForCausalLM of ``config``'s shape, seeded, in bf16, without the KV cache."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{key: config[key] for key in _SHAPE}))
    model = model.to(torch.bfloat16)
    model.config.use_cache = False
    return model


# with_lora's adapters as ftmem's settings (the dropout apart)
LORA_SETTINGS = {"lora_r": 4, "lora_alpha": 4, "lora_targets": "q,k,v,o"}


def with_lora(model: Any, dropout: float = 0.0, autocast_adapter_dtype: bool = True) -> Any:
    """peft LoRA r 4 (alpha 4) on the attention projections q, k, v, o."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    lora = LoraConfig(r=4, lora_alpha=4, lora_dropout=dropout, target_modules=targets)
    return get_peft_model(model, lora, autocast_adapter_dtype=autocast_adapter_dtype)


def fsdp1(model: Any, policy: Any, **options: Any) -> Any:
    """torch's FullyShardedDataParallel around ``model`` on the CPU, FULL_SHARD, units by
    ``policy``; the other FSDP options as given."""
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    return FullyShardedDataParallel(
        model,
        auto_wrap_policy=policy,
        sharding_strategy=ShardingStrategy.FULL_SHARD,
        device_id=torch.device("cpu"),
        **options,
    )


def decoder_layers(model: Any, layers: int) -> Any:
    """The wrapped model's ModuleList of its ``layers`` decoder layers (each an FSDP unit)."""
    from torch import nn

    return next(m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == layers)


def checkpointed_around(unit: Any) -> Any:
    """``unit`` inside a reentrant checkpoint, as transformers 4.48's decoder loop calls a
    layer: ``checkpoint(decoder_layer.__call__, hidden_states, ...)``, so under FSDP1 the
    checkpoint wraps the unit instead of running inside it as transformers 5's layers do."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    class AroundUnit(nn.Module):
        def __init__(self, unit: nn.Module) -> None:
            super().__init__()
            self.unit = unit

        def forward(self, hidden_states, position_embeddings=None, **kwargs):
            def call(h, cos, sin):
                return self.unit(h, position_embeddings=(cos, sin), **kwargs)

            cos, sin = position_embeddings
            return checkpoint(call, hidden_states, cos, sin, use_reentrant=True)

    return AroundUnit(unit)


class GatheredUnits:
    """The most FSDP1 decoder units whose unsharded flat parameter is allocated at once,
    keyed ``phase:place``. Phases: "forward", "head" (from the logits to the root's
    pre-backward hook) and "backward" (the recompute's forwards included). Places:
    "layer" (the forward hooks of the modules given to ``watch``), "logits", and FSDP1's
    pre-backward hooks: "root" (seen last in the head phase and first in backward) and
    "pre_backward" (every other unit's)."""

    def __init__(self, units: list[Any]) -> None:
        self.units = units
        self.phase = "forward"
        self.most: dict[str, int] = {}

    def look(self, place: str) -> None:
        n = sum(
            u._handle.flat_param._full_param_padded.untyped_storage().size() > 0 for u in self.units
        )
        key = f"{self.phase}:{place}"
        self.most[key] = max(self.most.get(key, 0), n)

    def watch(self, modules: list[Any]) -> None:
        for module in modules:
            module.register_forward_pre_hook(lambda *_: self.look("layer"))
            module.register_forward_hook(lambda *_: self.look("layer"))

    def follow_pre_backward(self) -> None:
        """Look after each FSDP1 pre-backward hook (the root's first)."""
        import torch.distributed.fsdp._runtime_utils as runtime

        original = runtime._pre_backward_hook

        def pre_backward(state, module, handle, grad, *rest):
            result = original(state, module, handle, grad, *rest)
            if state._is_root:
                self.look("root")
                self.phase = "backward"
            self.look("root" if state._is_root else "pre_backward")
            return result

        runtime._pre_backward_hook = pre_backward

    def second_step(self, model: Any, ids: Any) -> dict[str, int]:
        """Two steps on ``ids``; the second one's counts (the first records FSDP's order)."""
        for _ in range(2):
            self.most.clear()
            self.phase = "forward"
            loss = model(input_ids=ids, labels=ids).loss
            self.phase = "head"
            self.look("logits")
            loss.backward()
            model.zero_grad(set_to_none=True)
        return dict(self.most)


def most_by_phase(most: dict[str, int]) -> dict[str, int]:
    """GatheredUnits' counts, the most of each phase over its places."""
    phases: dict[str, int] = {}
    for key, n in most.items():
        phase = key.split(":")[0]
        phases[phase] = max(phases.get(phase, 0), n)
    return phases


def estimated_rank0(
    config: dict[str, Any],
    settings: dict[str, Any],
    strategy: str = "fsdp",
    fsdp_version: int | None = None,
    **run: Any,
) -> RankMemory:
    """ftmem's rank 0 of the run on two GPUs: ``settings`` with ``run`` over them (the
    LoRA settings dropped when the method is not LoRA)."""
    arch = architecture_from_config(config, "tiny-llama", "test")
    merged = {**settings, **run}
    if merged["method"] != "lora":
        merged = {k: v for k, v in merged.items() if not k.startswith("lora_")}
    par = parallel_config(gpus=WORLD, strategy=strategy, fsdp_version=fsdp_version)
    return parallel_step(arch, run_config(**merged), par).ranks[0]
