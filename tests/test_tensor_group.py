"""TensorGroup.counted, the fast copy with another count that the multi-GPU split and the
optimizer-in-backward moment use, keeps every other field: compared with
dataclasses.replace (the slow, general copy) on a group whose fields all differ from their
defaults."""

from __future__ import annotations

from dataclasses import fields, replace

from ftmem.methods import TensorGroup


def test_counted_keeps_every_field_but_the_count() -> None:
    g = TensorGroup(
        name="layers.q_proj.lora_A",
        shape=(8, 64),
        count=4,
        fmt="bf16",
        trainable=True,
        adapter=True,
        double_quant=False,
        in_block=False,
        galore_rank=2,
        layout="torchao",
        per_block=2,
        idle=True,
        stateless=True,
        grad_numel=1024,
    )
    defaults = TensorGroup(name="x", shape=(1,), count=1, fmt="fp32", trainable=False)
    differing = {
        f.name
        for f in fields(TensorGroup)
        if f.init and getattr(g, f.name) != getattr(defaults, f.name)
    }
    assert differing == {f.name for f in fields(TensorGroup) if f.init}  # every field exercised
    two = g.counted(2)
    assert two == replace(g, count=2)
    assert hash(two) == hash(replace(g, count=2))
    assert two.stateless and two.grad_numel == 1024


def test_lora_fa_a_without_states_on_every_pipeline_stage() -> None:
    """PEFT's benchmark loop gives LoRA-FA's lora_A its gradient back, never its optimizer
    states (profiles.Profile.lora_fa_a_regains_grad): on two pipeline stages of Llama-3.2-3B
    (28 blocks, 14 a stage, every adapter inside the blocks) each stage holds half of the
    one-GPU states, lora_B's only (before the fix, A's states came back per stage: 9,175,040
    B against 3,670,016)."""
    from ftmem import estimate

    args = {"method": "lora", "lora_fa": True, "framework": "peft-mc"}
    one = estimate("llama3.2-3b", **args).memory.optimizer_states_bytes
    staged = estimate("llama3.2-3b", gpus=2, strategy="ddp", pp=2, **args).memory
    assert staged.optimizer_states_bytes * 2 == one
