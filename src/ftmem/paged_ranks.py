"""bitsandbytes' paged optimizer states on one rank of a multi-GPU run.

bitsandbytes pages a state buffer by the size of the tensor its optimizer is handed
(``p.numel() >= 1e5``, ftmem.optim.pages_states), and each engine hands it different
tensors (``Hands``):

* ``whole``: DDP (and FSDP's NO_SHARD) leave every rank the model's own parameters, so
  each rank pages as one GPU does.
* ``flat``: DeepSpeed's ZeRO wraps a client optimizer (HF Trainer allows it:
  transformers 5.25 integrations/deepspeed.py l.591 ``zero_allow_untested_optimizer``)
  and gives it one flat fp32 partition per parameter group instead of the parameters
  (deepspeedai/DeepSpeed@edaa7221 runtime/zero/stage_1_and_2.py l.509-516
  ``param_group['params'] = [self.single_partition_of_fp32_groups[i]]``; ZeRO-3 one flat
  sub-group at a time, stage3.py l.1202-1210): a partition of 1e5+ values has all its
  states paged, the 8-bit ones' absmax vectors apart.
* ``shards``: FSDP1 hands the optimizer each parameter's local piece of its unit's
  sharded flat parameter (about numel / N values; use_orig_params=False: the unit's flat
  shard itself, whose norms then page too, a few hundred kilobytes): a piece of 1e5+
  values is paged.

FSDP2's parameters are DTensors, which bitsandbytes does not handle: ``get_state_buffer``
sizes a paged buffer by the DTensor's global shape and its kernels get DTensors
(bitsandbytes@95f9af30 has no DTensor code; bitsandbytes issue #1633, open: an illegal
memory access in the 8-bit step under FSDP2; torchtune issue #1856, all its bnb
optimizers in its FSDP2 recipes): such runs are refused (:func:`check_fsdp2`).

ZeRO-Offload takes a bitsandbytes (or torchao) optimizer only as a client optimizer, and
DeepSpeed refuses any client optimizer but its own DeepSpeedCPUAdam / DeepSpeedCPULion
once ``offload_optimizer`` is cpu or nvme, unless the config sets
``"zero_force_ds_cpu_optimizer": false`` (deepspeedai/DeepSpeed@edaa7221
runtime/engine.py l.2040-2044 ``ZeRORuntimeException``; the key defaults to true,
runtime/constants.py l.77-78). Accelerate (HF Trainer's, so axolotl's and LLaMA-Factory's
path, where transformers 5.25 integrations/deepspeed.py l.578-591 hands its ``optim`` as
the client optimizer when the DeepSpeed config names none) avoids it: with the key true it
swaps the client optimizer for DeepSpeed's own before ``deepspeed.initialize`` (accelerate
1.16.0 accelerator.py l.2336-2344 ``map_pytorch_optim_to_deepspeed``, utils/deepspeed.py
l.29-96: DeepSpeedCPULion for bitsandbytes' 32-bit ``Lion`` / ``Lion32bit``,
DeepSpeedCPUAdam for every other class) (:func:`accelerate_cpu_optimizer`). Elsewhere
(Lightning's DeepSpeedStrategy passes the optimizer as given) the run is refused
(:func:`check_zero_offload`). With the key false, the optimizer is handed the host's fp32
partition (stage_1_and_2.py l.491-516: on the CPU with ``cpu_offload``) and steps it on
the CPU: bitsandbytes pages nothing there (``get_state_buffer``), and its states are host
RAM like DeepSpeed's own. bitsandbytes has CPU kernels for its 8-bit blockwise update
from 0.50.0 (backends/cpu/ops.py l.469, bitsandbytes PR #1901).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from ftmem.dtypes import ceil_div
from ftmem.errors import InvalidInputError
from ftmem.methods import TensorGroup
from ftmem.optim import (
    BNB_OPTIMIZERS,
    BNB_PAGED_MIN_NUMEL,
    PAGED_OPTIMIZERS,
    paged_state_bytes,
)
from ftmem.run import RunConfig
from ftmem.torchao_optim import TORCHAO_OPTIMIZERS
from ftmem.versions import older_than

# the first bitsandbytes release with CPU kernels for its optimizers' 8-bit blockwise
# update (bitsandbytes@45bd3146, "Enable CPU Optimizer Support", PR #1901: backends/cpu/
# ops.py ``_optimizer_update_8bit_blockwise_cpu``; 0.49.2 registers a CPU-capable 32-bit
# update only, backends/default/ops.py l.536)
BNB_CPU_OPTIMIZERS = (0, 50, 0)

Hands = Literal["whole", "flat", "shards"]


def check_fsdp2(run: RunConfig) -> None:
    """Refuse a bitsandbytes optimizer on FSDP2's DTensor parameters (module docstring)."""
    if run.optimizer in BNB_OPTIMIZERS and run.device != "cpu":
        raise InvalidInputError(
            f"--optimizer {run.optimizer} is bitsandbytes', whose optimizers do not run on "
            "FSDP2's DTensor parameters (bitsandbytes issue #1633); use --fsdp-version 1, "
            "a DeepSpeed strategy or a torch optimizer."
        )


# the frameworks that run DeepSpeed through Accelerate (HF Trainer)
ACCELERATE_FRAMEWORKS = frozenset({"hf", "axolotl", "llama-factory", "unsloth"})
# bitsandbytes' 32-bit Lion, which Accelerate steps with DeepSpeedCPULion (one fp32 state)
BNB_32BIT_LION = frozenset({"lion-32bit", "paged-lion"})


def _client(run: RunConfig) -> bool:
    return run.optimizer in BNB_OPTIMIZERS or run.optimizer in TORCHAO_OPTIMIZERS


def accelerate_cpu_optimizer(run: RunConfig, forced: bool) -> str | None:
    """The optimizer Accelerate runs in place of a client one under ZeRO-Offload while
    ``zero_force_ds_cpu_optimizer`` is on (module docstring), as ftmem's --optimizer
    under DeepSpeed, whose optimizer steps the fp32 master: DeepSpeedCPULion ``lion``
    (one fp32 state per value), DeepSpeedCPUAdam ``adamw`` (two); None where nothing is
    swapped."""
    if not forced or not _client(run) or run.framework not in ACCELERATE_FRAMEWORKS:
        return None
    return "lion" if run.optimizer in BNB_32BIT_LION else "adamw"


def check_zero_offload(run: RunConfig, forced: bool) -> None:
    """Refuse a client optimizer under ZeRO-Offload while DeepSpeed's
    ``zero_force_ds_cpu_optimizer`` is on, and bitsandbytes' 8-bit states on the CPU
    before its CPU kernels (module docstring)."""
    opt = BNB_OPTIMIZERS.get(run.optimizer)
    if not forced and opt and opt.bits == 8 and older_than(run.bnb_version, BNB_CPU_OPTIMIZERS):
        raise InvalidInputError(
            f"bitsandbytes {run.bnb_version} has no CPU kernel for --optimizer "
            f"{run.optimizer}'s 8-bit states (from 0.50.0, bitsandbytes PR #1901), which "
            "ZeRO-Offload steps on the CPU: use bitsandbytes 0.50 or a 32-bit optimizer."
        )
    if forced and _client(run):
        owner = "bitsandbytes'" if run.optimizer in BNB_OPTIMIZERS else "torchao's"
        raise InvalidInputError(
            f"DeepSpeed refuses --optimizer {run.optimizer} ({owner}, a client optimizer) "
            f"with --offload-optimizer under --framework {run.framework}, which does not "
            "swap it for DeepSpeed's CPU optimizer as Accelerate does, unless its config "
            'sets "zero_force_ds_cpu_optimizer": false (runtime/engine.py, '
            "ZeRORuntimeException): add --no-zero-force-ds-cpu-optimizer to step it on the "
            "CPU, or use --optimizer adamw (DeepSpeedCPUAdam)."
        )


def zero_offload_notes(run: RunConfig, forced: bool) -> list[str]:
    """What ZeRO-Offload does with a client optimizer: Accelerate's swap
    (:func:`accelerate_cpu_optimizer`), or, with ``zero_force_ds_cpu_optimizer: false``,
    the optimizer stepping on the host."""
    swapped = accelerate_cpu_optimizer(run, forced)
    if swapped:
        ds = "DeepSpeedCPULion" if swapped == "lion" else "DeepSpeedCPUAdam"
        return [
            f"ZeRO-Offload under Accelerate (HF Trainer): {run.optimizer} is replaced by "
            f"{ds} (map_pytorch_optim_to_deepspeed, while zero_force_ds_cpu_optimizer is "
            "true), whose states are in host RAM; estimated with its states."
        ]
    if forced or not _client(run):
        return []
    return [
        f"ZeRO-Offload with zero_force_ds_cpu_optimizer false: DeepSpeed hands "
        f"{run.optimizer} the host's fp32 partition, so it steps on the CPU with its states "
        "in host RAM (none paged, none on the GPU)."
    ]


def rank_paged_bytes(
    groups: Iterable[TensorGroup], run: RunConfig, hands: Hands, shards: int
) -> int:
    """The paged state bytes one rank holds when its engine hands the optimizer
    ``hands`` (module docstring) over ``shards`` ranks."""
    if run.optimizer not in PAGED_OPTIMIZERS or run.device == "cpu":
        return 0
    trainable = [g for g in groups if g.trainable]
    if hands == "whole":
        return paged_state_bytes(trainable, run)
    opt = BNB_OPTIMIZERS[run.optimizer]
    per_value = opt.states * (1 if opt.bits == 8 else 4)
    if hands == "flat":
        partition = ceil_div(sum(g.total_numel for g in trainable), shards)
        return per_value * partition if partition >= BNB_PAGED_MIN_NUMEL else 0
    pieces = ((ceil_div(g.numel, shards), g.count) for g in trainable)
    return sum(per_value * n * count for n, count in pieces if n >= BNB_PAGED_MIN_NUMEL)
