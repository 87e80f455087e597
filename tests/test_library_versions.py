"""Library versions as mechanisms (ftmem.versions): each expected size is derived here
from the cited library code, and a run that names no version (or a current one) keeps the
estimate it had before the switches existed."""

from __future__ import annotations

import pytest

from ftmem import estimate
from ftmem.cli import main
from ftmem.versions import older_than, release

from .conftest import tiny

# tiny("llama"): h = 96, 4 heads of 24 (q = 96), MLP f = 160, L = 2 blocks, V = 300
H, F, L, V = 96, 160, 2, 300
B, S = 2, 64
T = B * S
# the optimizer step without the CUDA workspaces, which depend on torch's version too
CPU_FOREACH: dict = dict(device="cpu", optimizer_impl="foreach")


def _memory(**settings: object) -> dict:
    return estimate(tiny("llama"), batch_size=B, seq_len=S, **settings).memory.model_dump()


@pytest.mark.parametrize("version", [None, "0.43.2", "0.50.1", "1.0"])
def test_current_bitsandbytes_changes_nothing(version):
    base = dict(method="qlora", quant="nf4", lora_targets="q,v")
    assert _memory(**base, bnb_version=version) == _memory(**base)


def test_bnb_before_0_43_2_keeps_each_4bit_linears_input():
    """bitsandbytes@0.42.0 MatMul4Bit.forward: ``ctx.tensors = (A, B)`` when the input
    needs a gradient, A = ``x.to(compute_dtype)`` (Linear4bit.forward; the same bf16
    tensor for q, k and v, for gate and up). Block 0's q/k/v input needs no gradient
    (frozen embedding and norm); o_proj's input is the attention kernel's output, which
    SDPA keeps anyway; the adapters on q and v keep their own fp32 copies, not x."""
    base = dict(method="qlora", quant="nf4", lora_targets="q,v", precision="bf16")
    new = estimate(tiny("llama"), batch_size=B, seq_len=S, **base).memory
    old = estimate(tiny("llama"), batch_size=B, seq_len=S, bnb_version="0.42.0", **base).memory
    per_block = 2 * T * H + 2 * T * F  # gate/up input, down input (bf16)
    qkv = 2 * T * H  # blocks 1..L-1
    assert old.activations_bytes - new.activations_bytes == L * per_block + (L - 1) * qkv


def test_torchtune_nf4_is_torchao_not_bitsandbytes():
    base = dict(method="qlora", quant="nf4", framework="torchtune")
    assert _memory(**base, bnb_version="0.42.0") == _memory(**base)


def test_bnb_before_0_45_keeps_int8_column_copies():
    """bitsandbytes@0.44.1 MatMul8bitLt.forward: ``F.double_quant(A)`` gives CAt (int8,
    one byte per input element) and SCAt (fp32 per input column); ``ctx.tensors = (CAt,
    subA, A)`` whenever the input needs a gradient, for each int8 linear (81e6345d / 0.45
    computes CAt only when the weight needs a gradient). Needing a gradient: o, gate, up
    and down in every block (the adapted q makes the attention output need one), q/k/v
    from block 1 on (block 0's input comes from the frozen embedding)."""
    base = dict(method="qlora", quant="int8", lora_targets="q", precision="bf16")
    new = estimate(tiny("llama"), batch_size=B, seq_len=S, **base).memory
    old = estimate(tiny("llama"), batch_size=B, seq_len=S, bnb_version="0.44.1", **base).memory

    def column_copy(in_features: int) -> int:
        return T * in_features + 4 * in_features

    per_block = column_copy(H) + 2 * column_copy(H) + column_copy(F)  # o; gate, up; down
    qkv = 3 * column_copy(H)
    assert old.activations_bytes - new.activations_bytes == L * per_block + (L - 1) * qkv
    assert _memory(**base, bnb_version="0.45.0") == _memory(**base)


def test_torch_2_0_foreach_adamw_keeps_sqrt_and_denom():
    """torch v2.0.0 (pytorch/pytorch@c263bd43) torch/optim/adamw.py _multi_tensor_adamw:
    ``exp_avg_sq_sqrt = torch._foreach_sqrt(v)``, ``denom = torch._foreach_add(
    exp_avg_sq_sqrt, eps)``: two state-sized lists for the one bf16 group; 2.1 adds eps in
    place (one list). Full finetuning, pure bf16: S = 2 bytes per parameter."""
    n = 2 * V * H + L * (4 * H * H + 3 * H * F + 2 * H) + H
    new = estimate(tiny("llama"), method="full", precision="bf16", **CPU_FOREACH)
    old = estimate(
        tiny("llama"), method="full", precision="bf16", torch_version="2.0.1", **CPU_FOREACH
    )
    assert new.model.n_params == n
    assert old.memory.phases.optimizer - new.memory.phases.optimizer == 2 * n


def test_torch_2_0_foreach_adamw_two_dtype_groups():
    """Two (device, dtype) groups in one _multi_tensor_adamw call (torch v2.0.0): the
    second group's sqrt is allocated while the first group's sqrt and denom are still
    bound (2·S1 + S2), its denom while the first denom is (S1 + 2·S2): peak S1 + S2 +
    max(S1, S2). Later torch keeps one list per group, also bound until the next group's
    is made: S1 + S2 (measured, tests/test_optim_foreach_groups.py), so 2.0 holds
    max(S1, S2) more. fp32 LoRA adapters (q, v; r = 8) and bf16 trainable copies of the
    embedding and the head (peft modules_to_save)."""
    r = 8
    settings = dict(method="lora", precision="bf16", adapter_dtype="fp32", lora_r=r, **CPU_FOREACH)
    settings |= dict(lora_targets="q,v", lora_modules_to_save="embed,head")
    s_fp32 = 4 * L * 2 * (r * H + r * H)  # q and v: A (r x h) and B (h x r), fp32
    s_bf16 = 2 * 2 * V * H  # the two V x h copies, bf16
    new = estimate(tiny("llama"), **settings).memory
    old = estimate(tiny("llama"), torch_version="2.0.0", **settings).memory
    assert new.temporaries_bytes >= s_fp32 + s_bf16
    assert old.phases.optimizer - new.phases.optimizer == max(s_fp32, s_bf16)


@pytest.mark.parametrize("version", [None, "2.1.0", "2.4", "2.13.0+cu130"])
def test_torch_2_1_and_later_keep_the_adamw_step(version):
    settings = dict(method="lora", lora_modules_to_save="embed,head", **CPU_FOREACH)
    got = estimate(tiny("llama"), torch_version=version, **settings).memory.phases.optimizer
    assert got == estimate(tiny("llama"), **settings).memory.phases.optimizer


def _nf4_weights(**settings: object) -> int:
    arch = tiny("llama", hidden_size=256, intermediate_size=512, vocab_size=64)
    base = dict(method="qlora", quant="nf4", lora_targets="q", lora_r=4)
    return estimate(arch, **base, **settings).memory.weights_bytes


def test_torchtune_nf4_is_torchao_storage():
    """torchao NF4Tensor.from_tensor (pytorch/ao@ff288954 = v0.1 and @99c8d52c = v0.6.1
    torchao/dtypes/nf4tensor.py): quantized_data uint8 (n/2), quantized_scalers int8 (one
    per block of 64), quantization_factor bf16 (one per 256 scalers; before v0.3 a view
    of one bf16 per block, 9dbc5542), scaler_mean bf16, the nf4 code book (16 bf16);
    against bitsandbytes' nf4 + double quant (QLoRA: 8-bit absmax, fp32 per 256, fp32
    offset, 256-entry fp32 nested code book, 16-entry fp32 code book)."""
    h, f, L = 256, 512, 2
    sizes = [h * h] * 4 + [h * f] * 3

    def bnb(n: int) -> int:
        return n // 2 + n // 64 + 4 * (n // 64 // 256) + 4 + 256 * 4 + 16 * 4

    def torchao(n: int, per_block: bool) -> int:
        return n // 2 + n // 64 + 2 * (n // 64 if per_block else n // 64 // 256) + 2 + 16 * 2

    # torchtune's rotary cache buffer sits beside the weights: one fp32 (positions,
    # head_dim / 2, 2) table, one per layer under torchtune 0.1 (its deep-copied layers)
    arch = tiny("llama", hidden_size=256, intermediate_size=512, vocab_size=64)
    table = arch.max_position_embeddings * (arch.hidden_size // arch.num_heads) * 4
    now = _nf4_weights(framework="torchtune")
    storage = L * sum(torchao(n, False) - bnb(n) for n in sizes)
    assert now - _nf4_weights() == storage + table
    v01 = _nf4_weights(framework="torchtune", torchao_version="0.1")
    per_block = L * sum(2 * (n // 64) - 2 * (n // 64 // 256) for n in sizes)
    assert v01 - now == per_block + (L - 1) * table
    assert _nf4_weights(framework="torchtune", torchao_version="0.3.0") == now
    assert _nf4_weights(torchao_version="0.1") == _nf4_weights()  # bitsandbytes: no effect


def test_versions_read_patch_and_suffix():
    assert release("0.43.1") == (0, 43, 1)
    assert release("2.1.0+cu121") == (2, 1, 0)
    assert release("0.44.0rc1") == (0, 44, 0)
    assert release("2.0") == (2, 0, 0)
    assert release(None) is None
    assert older_than("0.43.1", (0, 43, 2)) and not older_than("0.43.2", (0, 43, 2))
    assert older_than("2.0.1", (2, 1)) and not older_than("2.1", (2, 1))
    assert not older_than(None, (2, 1))


def test_cli_takes_bnb_version_and_refuses_a_bad_one(capsys):
    with pytest.raises(SystemExit) as ok:
        main(["estimate", "gpt2", "--bnb-version", "0.42.0", "--format", "json"])
    assert ok.value.code in (0, None)
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:
        main(["estimate", "gpt2", "--bnb-version", "new"])
    out, err = capsys.readouterr()
    assert bad.value.code == 2 and out == ""
    assert err.startswith("Error: --bnb-version") and len(err.strip().splitlines()) == 1


def test_falcon_before_5_25_runs_its_own_fp32_attention():
    """transformers 5.25 moved Falcon to the shared attention interface; a run that says
    5.24 keeps 5.24's path. The truth for each is a CPU measurement of the accuracy case
    falcon-method=full-precision=fp32: 2,163,636 B saved under transformers 5.24.0
    (docs/accuracy.md as generated at commit 391d327) and 1,959,604 B under 5.25.0 (the
    accuracy suite measures it on every run)."""
    from .accuracy.cases import CASES

    case = next(c for c in CASES if c.id == "falcon-method=full-precision=fp32")
    arch, run = case.arch(), case.run()
    settings = run.model_dump(exclude={"transformers_version"})
    old = estimate(arch, **settings, transformers_version="5.24.0").memory
    new = estimate(arch, **settings).memory
    assert abs(old.activations_bytes / 2_163_636 - 1) < 1e-3
    assert abs(new.activations_bytes / 1_959_604 - 1) < 1e-3
