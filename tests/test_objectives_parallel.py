"""Preference objectives on several GPUs: the frozen reference copy on each rank, as
TRL's trainers prepare it (trl/models/utils.py@f2cd57710ae3: prepare_deepspeed,
prepare_fsdp; accelerate's prepare_model(evaluation_mode=True)), against hand
derivations. The policy's part is the SFT run's (tests/test_parallel.py)."""

from math import ceil

import pytest

from ftmem import estimate
from ftmem.errors import InvalidInputError

PSI_7B = 6_738_415_616  # Llama-2-7B
H, L = 4096, 32
NORMS_7B = (2 * L + 1) * H


def _run(strategy: str, method: str = "full", **kw):
    return estimate(
        "llama2-7b",
        method=method,
        precision="bf16",
        objective="dpo",
        gpus=8,
        strategy=strategy,
        seq_len=1024,
        **kw,
    )


def _sft(strategy: str, method: str = "full"):
    return estimate("llama2-7b", method=method, precision="bf16", gpus=8, strategy=strategy)


@pytest.mark.parametrize("strategy", ["ddp", "zero1", "zero2", "colossalai-zero2"])
def test_data_parallel_and_zero12_keep_the_whole_reference(strategy):
    """DDP: the reference moved whole to each GPU; ZeRO-1/2: TRL's stage-0 engine for it,
    whole in 16-bit; ColossalAI: a second boosted model without an optimizer: 2Ψ more
    on every GPU than the SFT run."""
    dpo, sft = _run(strategy).memory, _sft(strategy).memory
    assert dpo.weights_bytes == sft.weights_bytes + 2 * PSI_7B
    assert dpo.optimizer_states_bytes == sft.optimizer_states_bytes


def test_zero3_shards_the_reference_with_deepspeeds_default_threshold():
    """ZeRO-3: the reference is a stage-3 inference engine with DeepSpeed's default
    persistence threshold (1e5 elements: the 65 norms stay whole, as under HF's 'auto'
    10·h = 40,960 for the policy); its shard is 2(Ψ − norms)/8."""
    dpo, sft = _run("zero3").memory, _sft("zero3").memory
    assert dpo.weights_bytes == sft.weights_bytes + 2 * NORMS_7B + ceil(2 * (PSI_7B - NORMS_7B) / 8)


def test_fsdp_gathers_the_whole_reference_for_its_forward():
    """TRL's prepare_fsdp calls fully_shard on the root alone: the reference is one unit,
    sharded at rest (2Ψ/8) and gathered whole (2Ψ) for each of its forwards."""
    dpo, sft = _run("fsdp"), _sft("fsdp")
    assert dpo.memory.weights_bytes == sft.memory.weights_bytes + ceil(2 * PSI_7B / 8)
    assert dpo.memory.communication_bytes >= 2 * PSI_7B


def test_lora_has_no_reference_copy_on_any_strategy():
    """Under peft the reference is the policy with its adapter disabled: no copy."""
    for strategy in ("ddp", "zero2", "zero3", "fsdp"):
        assert (
            _run(strategy, "lora").memory.weights_bytes
            == _sft(strategy, "lora").memory.weights_bytes
        )


def test_precomputed_reference_has_no_copy():
    assert (
        _run("zero2", precompute_ref=True).memory.weights_bytes
        == _sft("zero2").memory.weights_bytes
    )


def test_model_parallel_is_refused():
    with pytest.raises(InvalidInputError, match="runs data parallel"):
        _run("zero1", tp=2)


# --- GRPO on several GPUs (TRL's GRPOTrainer under Accelerate) ---------------------------


def _grpo(strategy: str | None, method: str = "lora", gpus: int = 4, **kw):
    settings = dict(
        method=method,
        precision="bf16",
        objective="grpo",
        seq_len=1024,
        batch_size=8,
        grad_ckpt=True,
        gpu="h100",
        **({"lora_r": 16} if method == "lora" else {}),
    )
    settings.update(kw)
    if strategy is not None:
        settings.update(gpus=gpus, strategy=strategy)
    return estimate("llama2-7b", **settings)


def _before(est) -> int:
    """The moment before the training forward (generation, or the no_grad forwards), as
    the timeline's forward phase holds it: the step's forward peak, where it is, in the
    bytes asked for (the allocator's block rounding, which every phase shows, is a
    mechanism of its own: gpu/device.py)."""
    return est.memory.phases.forward - est.memory.at_peak.block_rounding


def _transient(est) -> int:
    m = est.memory
    return _before(est) - m.weights_bytes - m.optimizer_states_bytes


def test_ddp_and_zero2_generate_as_one_gpu_does():
    """The policy is whole on every rank: generate() needs nothing gathered, and each
    rank generates its own b x steps_per_generation completions (per_device batch)."""
    one = _grpo(None)
    for strategy in ("ddp", "zero2"):
        many = _grpo(strategy)
        assert many.memory.peak_phase == one.memory.peak_phase
        # the same generation: beyond the weights and states it holds (ZeRO-2: the
        # adapters in 16 bits, their fp32 masters and states sharded), the moment before
        # the step is the one GPU's, give or take DDP's gradient buckets (fp32 adapters)
        lora = 2 * 2 * 16 * H * L
        assert one.memory.weights_bytes - many.memory.weights_bytes == (
            0 if strategy == "ddp" else 2 * lora
        )
        assert abs(_transient(many) - _transient(one)) <= 4 * lora


def test_zero3_gathers_the_whole_policy_to_generate():
    """ds3_gather_for_generation (True by default): GatheredParameters over every
    parameter, so generate() runs beside the whole 16-bit policy. With LoRA r 16 under
    HF's 'auto' persistence threshold (10·h = 40,960 elements) the 65 norms stay whole
    and the adapters (16 x 4096 = 65,536 elements each) are sharded: gathered beyond the
    resident copy = 2(Ψ − norms) + 2·(LoRA parameters) bytes (the engine holds the
    adapters in 16 bits, their fp32 masters in the optimizer). Each rank generates its
    own 8 completions (per-device batch x steps per generation 1), as on one GPU."""
    lora = 2 * 2 * 16 * H * L  # q_proj and v_proj: A (16 x 4096) and B (4096 x 16)
    whole = 2 * (PSI_7B - NORMS_7B) + 2 * lora
    z3 = _grpo("zero3", gpus=4)
    big = _grpo("zero3", gpus=4, completion_len=128)  # the same gathering, a smaller cache
    one = _grpo(None)
    one_short = _grpo(None, completion_len=128)
    assert z3.memory.peak_phase == "forward"
    # generation's own bytes are the one-GPU run's: the difference between two lengths
    # is the same, and what is added is the gathered policy beside each rank's own part
    assert _before(z3) - _before(big) == _before(one) - _before(one_short)
    assert z3.memory.at_peak.weights == NORMS_7B * 2 + ceil(whole / 4)
    # hooks removed under GatheredParameters: no block gathered beside the whole policy
    assert _transient(z3) - _transient(one) == whole


def test_zero3_and_fsdp_gather_the_reference_before_the_step():
    """Full finetuning with beta 0.04: the frozen reference's forward runs after
    generation, before the training forward, so what it gathers (two blocks under
    ZeRO-3; all of it, 2Ψ, under FSDP where TRL wraps it with fully_shard on the root
    alone) is charged there, not at the LM head as DPO's is."""
    fsdp = _grpo("fsdp", method="full", gpus=8, kl_beta=0.04)
    no_ref = _grpo("fsdp", method="full", gpus=8)
    assert _transient(fsdp) >= 2 * PSI_7B
    assert fsdp.memory.weights_bytes == no_ref.memory.weights_bytes + ceil(2 * PSI_7B / 8)
    # the LM head's moment carries no reference: same communication as without one
    assert fsdp.memory.phases.backward == pytest.approx(
        no_ref.memory.phases.backward + ceil(2 * PSI_7B / 8), abs=2**20
    )


def test_the_generation_batch_holds_whole_groups_over_the_ranks():
    """TRL: generation_batch_size = per_device_train_batch_size x processes x
    steps_per_generation must divide by num_generations."""
    with pytest.raises(InvalidInputError, match=r"4 x 1 = 4 completions.*--num-generations 8"):
        _grpo(None, batch_size=4)
    _grpo("zero2", gpus=2, batch_size=4)  # 4 x 1 x 2 GPUs = 8: whole groups
    with pytest.raises(InvalidInputError, match=r"3 x 1 x 2 GPUs = 6 completions"):
        _grpo("zero2", gpus=2, batch_size=3)


def test_grpo_outside_trls_layouts_is_refused():
    with pytest.raises(InvalidInputError, match="runs data parallel"):
        _grpo("zero1", gpus=4, tp=2)
    with pytest.raises(InvalidInputError, match="ColossalAI's own GRPO is not modelled"):
        _grpo("colossalai-zero2", gpus=4)


def test_the_objectives_note_is_said_on_several_gpus_as_on_one():
    for objective, start in (("dpo", "DPO: chosen and rejected"), ("grpo", "GRPO (TRL")):
        settings = dict(method="lora", objective=objective, seq_len=1024, batch_size=8)
        one = estimate("llama2-7b", **settings)
        many = estimate("llama2-7b", gpus=4, strategy="zero3", **settings)
        said = [n for n in one.notes if n.startswith(start)]
        assert said and said == [n for n in many.notes if n.startswith(start)]


def test_zero3_gathers_a_peft_policy_whole_to_sync_it_to_vllm():
    """With vLLM, generate() runs in the engine; under ZeRO-3 a peft model is gathered
    whole to merge its adapters and push the weights (vllm_generation.py sync_weights:
    gather_params(model.parameters()), merge_adapter): the same 2(Ψ − norms) + 2·lora
    bytes as generation's gathering, as the moment's communication."""
    lora = 2 * 2 * 16 * H * L
    whole = 2 * (PSI_7B - NORMS_7B) + 2 * lora
    synced = _grpo("zero3", gpus=4, vllm="colocate")
    assert synced.memory.peak_phase == "forward"
    assert synced.memory.at_peak.communication == whole


def test_zero3_without_gathering_generates_through_the_hooks_as_its_forward_gathers():
    """ds3_gather_for_generation false: TRL yields the model with DeepSpeed's hooks
    (trl/models/utils.py@f2cd57710ae3 _unwrap_model_for_generation: ``if not
    gather_deepspeed3_params: yield accelerator.unwrap_model(model)``), so each decoding
    step fetches each module's parameters before its forward and releases them after
    it, the next ones prefetched (deepspeedai/DeepSpeed@v0.19.5
    deepspeed/runtime/zero/partitioned_param_coordinator.py fetch_sub_module,
    release_sub_module): the moment gathers what the training forward does, the block
    being computed and the next (BLOCKS_IN_FLIGHT), not the whole policy. One Llama-2-7B
    block in bf16: q, k, v, o (4 x 4096²), gate, up, down (3 x 4096 x 11,008), its two
    norms, and LoRA r 16 on q_proj and v_proj (2 x 2 x 16 x 4096), 2 bytes each."""
    block = 2 * (4 * H * H + 3 * H * 11_008 + 2 * H) + 2 * (2 * 2 * 16 * H)
    assert block == 405_291_008
    hooked = _grpo("zero3", gpus=4, ds3_gather_for_generation=False)
    gathered = _grpo("zero3", gpus=4)
    one = _grpo(None)
    assert hooked.memory.peak_phase == "forward"
    assert hooked.memory.at_peak.communication == 2 * block
    assert _transient(hooked) - _transient(one) == 2 * block
    lora = 2 * 2 * 16 * H * L
    whole = 2 * (PSI_7B - NORMS_7B) + 2 * lora
    assert _transient(gathered) - _transient(hooked) == whole - 2 * block
    said = " ".join(hooked.notes)
    assert "ds3_gather_for_generation false" in said and "stage3_max_reuse_distance" in said
    # explicitly true is TRL's default
    assert _grpo("zero3", gpus=4, ds3_gather_for_generation=True).memory == gathered.memory


def test_fsdp_syncs_vllm_one_unit_at_a_time_in_its_stored_dtype():
    """FSDP1's sync of the policy to vLLM (trl 1.16.0 trl/generation/vllm_generation.py
    _iter_fsdp1_params): post-order over the FSDP units, each unit's own parameters under
    ``summon_full_params(module, recurse=False)``, released before the next: the largest
    unit whole, in its stored dtype (torch 2.13 _flat_param.py ``_force_full_precision``
    in SUMMON_FULL_PARAMS). Llama-2-7B: the root unit (embed_tokens and lm_head, 32,000 x
    4096 each, and the final norm) outweighs a block (4 x 4096² + 3 x 4096 x 11,008 + 2 x
    4096), so its 262,148,096 elements are charged, where one parameter at a time would
    charge the largest tensor (32,000 x 4096). With fp32 weights (bf16-mixed), 4 bytes
    each, not MixedPrecision's 2."""
    from ftmem.parallel import _fsdp_sync
    from ftmem.presets import get_model
    from ftmem.run import RunConfig
    from ftmem.step import step_parts

    arch = get_model("llama2-7b")
    root = 2 * 32_000 * H + H
    block = 4 * H * H + 3 * H * 11_008 + 2 * H
    assert root > block
    for precision, size in (("bf16", 2), ("bf16-mixed", 4)):
        run = RunConfig(method="full", precision=precision, objective="grpo", seq_len=1024)
        groups = step_parts(arch, run).plan.groups
        assert _fsdp_sync(arch, groups) == root * size
    synced = _grpo("fsdp", gpus=4, vllm="server")
    assert any("one FSDP unit at a time" in n for n in synced.notes)
