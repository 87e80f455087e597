"""peft's BD-LoRA (LoraConfig ``use_bdlora``, a BdLoraConfig): LoRA with a block-diagonal
lora_A or lora_B, so that a tensor-parallel server can shard the adapter with its linear.

peft 0.21.2 tuners/lora/variants.py BlockDiagonalLinear keeps only the diagonal blocks, as
one ``(out, in // nblocks)`` weight, and multiplies them with one einsum (``bim,inm->bin``
over a reshaped view of the input). Measured on a peft Linear (tests/test_bdlora_mica.py):
the einsum keeps the same tensors as LoRA's matmul (its input, r or in wide, as a view,
and the weight), so BD-LoRA changes the adapter's parameters, gradients and optimizer
states, not its activations.

Which factor is block-diagonal follows BdLoraConfig's guidance, as PEFT's MetaMathQA
experiment sets it (lora/llama-3.2-3B-rank14-target-mlp-bdlora/adapter_config.json at
huggingface/peft@5d602fdbff04): lora_A on the row-sharded linears (o, down), lora_B on the
column-sharded ones (q, k, v, gate, up, and any other).
"""

from __future__ import annotations

from ftmem.arch import Linear
from ftmem.errors import InvalidInputError

# the row-parallel projections (their input is sharded): lora_A block-diagonal there
ROW_SHARDED_ROLES = frozenset({"o", "down"})


def a_is_block_diagonal(lin: Linear) -> bool:
    """lora_A block-diagonal (o, down); otherwise lora_B."""
    return bool(ROW_SHARDED_ROLES & set(lin.roles))


def shapes(lin: Linear, r: int, blocks: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """lora_A's and lora_B's weight shapes on ``lin``: BlockDiagonalLinear(in, out, n)
    stores ``(out, in // n)`` (variants.py l.945); A maps in -> r, B maps r -> out."""
    if a_is_block_diagonal(lin):
        return (r, lin.in_features // blocks), (lin.out_features, r)
    return (r, lin.in_features), (lin.out_features, r // blocks)


def check_divisible(adapted: tuple[Linear, ...], r: int, blocks: int) -> None:
    """BlockDiagonalLinear refuses a width its blocks do not divide (variants.py l.940):
    the rank and the block-diagonal factor's other side."""
    for lin in adapted:
        side = lin.in_features if a_is_block_diagonal(lin) else lin.out_features
        if r % blocks or side % blocks:
            raise InvalidInputError(
                f"--lora-bd-blocks {blocks} must divide the rank ({r}) and {lin.module}'s "
                f"{side} {'inputs' if a_is_block_diagonal(lin) else 'outputs'} (peft refuses "
                "it); choose another --lora-bd-blocks or --lora-r."
            )
