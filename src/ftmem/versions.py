"""Library releases whose code holds memory differently from the current one.

Each switch names the commit that changed the behaviour and the first release that
shipped it. A version the run does not give means the current release (the one ftmem is
measured with), so an estimate without versions is what it was before these switches.
"""

from __future__ import annotations

import re

from ftmem.run import RunConfig

# bitsandbytes MatMul4Bit.forward kept the activation it multiplies in `ctx.tensors =
# (A, B)` although backward never uses it (bitsandbytes-foundation/bitsandbytes@0.42.0
# bitsandbytes/autograd/_functions.py MatMul4Bit.forward, same at 0.41.0 and 0.43.1);
# commit 9e753741 "fix QLoRA mem bug: delete useless buffered activation (#1270)" keeps
# `(None, B)`, first released in 0.43.2 (`git tag --contains 9e753741`).
BNB_4BIT_DROPS_INPUT = (0, 43, 2)
# bitsandbytes MatMul8bitLt.forward quantised its input both row- and column-wise
# (`F.double_quant`) and kept the column-wise int8 copy CAt and its fp32 column
# statistics SCAt beside A whenever the input needed a gradient (@0.44.1
# bitsandbytes/autograd/_functions.py MatMul8bitLt.forward: `ctx.tensors = (CAt, subA,
# A)`); commit 81e6345d "LLM.int8() Refactoring: Part 1 (#1401)" computes CAt only when
# the weight needs a gradient (`if ctx.needs_input_grad[1]`), first released in 0.45.0.
BNB_INT8_DROPS_COLUMN_COPY = (0, 45, 0)
# torch AdamW, foreach: `denom = torch._foreach_add(exp_avg_sq_sqrt, eps)` out of place
# (pytorch/pytorch@c263bd43 = v2.0.0, also e9ebda29 = v2.0.1, torch/optim/adamw.py
# _multi_tensor_adamw); PR #104898 "[foreach][AdamW] Minimize intermediates to save
# peak memory" adds eps in place, first in v2.1.0 (@7bcf7da3, same function).
TORCH_ADAMW_INPLACE_DENOM = (2, 1)

# torchao NF4Tensor.double_quantize_scalers: `quantization_factor = 256 / (2 *
# scaler_absmax)` on a scaler_absmax expanded to (n_scaler_blocks, 256) is computed dense,
# one bf16 per block, and `quantization_factor[:, 0]` kept a view of that whole storage
# (pytorch/ao@ff288954 = v0.1 torchao/dtypes/nf4tensor.py, same at v0.2.0); commit
# 9dbc5542 "[NF4][FSDP] return contiguous `quantization_factor` (#298)" returns a
# `.contiguous()` copy of the n_scaler_blocks values, first released in v0.3.0.
TORCHAO_NF4_CONTIGUOUS_FACTOR = (0, 3, 0)

# transformers 4.x builds each MoE expert as its own module of nn.Linears (4.48.1
# models/mixtral/modeling_mixtral.py MixtralBlockSparseTop2MLP: w1, w2, w3 =
# nn.Linear(..., bias=False); MixtralSparseMoeBlock: gate = nn.Linear(hidden, experts),
# experts = nn.ModuleList) and loops over the experts in forward; transformers 5 stores
# them as fused 3-D parameters run by grouped matmuls (5.24 modeling_mixtral.py
# MixtralExperts, integrations/moe.py), which bitsandbytes, replacing nn.Linear modules
# only (4.48.1 integrations/bitsandbytes.py _replace_with_bnb_linear), leaves unquantised.
TRANSFORMERS_FUSED_EXPERTS = (5, 0, 0)

_RELEASE = re.compile(r"\s*(\d+)\.(\d+)(?:\.(\d+))?")


def release(version: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a version string such as "0.43.1" or "2.1.0+cu121";
    None when not given or unreadable."""
    match = _RELEASE.match(version or "")
    if not match:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def older_than(version: str | None, first_fixed: tuple[int, ...]) -> bool:
    """Whether a given version predates the release ``first_fixed``."""
    parsed = release(version)
    return parsed is not None and parsed < (*first_fixed, 0, 0)[:3]


def bnb_runs_quantised_linears(run: RunConfig) -> bool:
    """bitsandbytes runs the quantised linears, except under torchtune, whose NF4 base is
    torchao's NF4Tensor (pytorch/torchtune torchtune/modules/peft/lora.py LoRALinear)."""
    return run.framework != "torchtune"


def bnb_4bit_keeps_input(run: RunConfig) -> bool:
    """A 4-bit linear keeps its input until backward (bitsandbytes < 0.43.2)."""
    return bnb_runs_quantised_linears(run) and older_than(run.bnb_version, BNB_4BIT_DROPS_INPUT)


def bnb_int8_keeps_column_copy(run: RunConfig) -> bool:
    """An int8 linear keeps a column-wise int8 copy of its input (bitsandbytes < 0.45)."""
    return bnb_runs_quantised_linears(run) and older_than(
        run.bnb_version, BNB_INT8_DROPS_COLUMN_COPY
    )


def nf4_layout(run: RunConfig) -> str:
    """Whose NF4 storage the quantised weights have: bitsandbytes' (dtypes.py), torchao's
    NF4Tensor under torchtune, or torchao < 0.3's, which keeps a scale factor per block."""
    if bnb_runs_quantised_linears(run):
        return "bitsandbytes"
    if older_than(run.torchao_version, TORCHAO_NF4_CONTIGUOUS_FACTOR):
        return "torchao-factor-per-block"
    return "torchao"


def torch_adamw_denom_out_of_place(run: RunConfig) -> bool:
    """foreach AdamW allocates its denominator beside the square root (torch < 2.1)."""
    return older_than(run.torch_version, TORCH_ADAMW_INPLACE_DENOM)


def per_expert_linears(run: RunConfig) -> bool:
    """MoE experts are nn.Linear modules, one per expert (transformers < 5)."""
    return older_than(run.transformers_version, TRANSFORMERS_FUSED_EXPERTS)
