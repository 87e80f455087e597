"""The moments of a run outside the training step (ftmem.run_phases) and --peak-of.

Each expected number is derived here from the library code the module cites, written
out line by line, or taken from a derivation published in calibration/notes/.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ftmem
from ftmem.api import _architecture
from ftmem.gpu.allocator import replay
from ftmem.methods import plan_method
from ftmem.profiles import PROFILES
from ftmem.run import RunConfig
from ftmem.run_phases import (
    eval_tensors,
    generation_tensors,
    loading_peak,
    merge_tensors,
    quantise_transient,
    resolved_peak_of,
)

CONFIGS = Path(__file__).resolve().parents[1] / "calibration" / "configs"
LLAMA2_7B = str(CONFIGS / "llama-2-7b" / "config.json")
MLP = 11008 * 4096  # Llama-2-7B gate/up/down: the largest quantised linear


def _mlp_group(method: str = "qlora", **settings: object):
    arch = _architecture(LLAMA2_7B)
    run = RunConfig(method=method, **settings)
    plan = plan_method(arch, run)
    return next(g for g in plan.groups if g.numel == MLP and not g.trainable), run


def test_hf_bnb_quantises_from_a_16_bit_copy_on_the_gpu():
    # bitsandbytes@005a63c2 Params4bit._quantize: w = self.data.contiguous().to(device)
    # (the checkpoint's bf16 tensor, 2 bytes an element), then quantize_4bit(w)
    g, run = _mlp_group()
    assert quantise_transient(g, run, PROFILES["hf"]) == (2 * MLP,)


def test_lightning_bnb_plugin_quantises_from_an_fp16_copy_of_a_bf16_weight():
    # _Linear4bit.quantize: the bf16 weight built on the GPU, w = weight.to("cuda", half)
    g, run = _mlp_group()
    assert sum(quantise_transient(g, run, PROFILES["litgpt"])) == 2 * MLP + 2 * MLP


def test_torchao_v01_nf4_search_is_66_bytes_an_element_over_the_bf16_source():
    # torchao@ff288954 nf4tensor.py: scaled_blocks = blocks / scales (bf16, 2n);
    # quantize_tensor_nearest: (value.unsqueeze(-1) - nf4) with 16 bf16 codes (32n) and
    # its .abs() (32n) alive together; the bf16 source (2n) is alive throughout
    g, run = _mlp_group(torchao_version="0.1")
    source, scaled, diff, absdiff = 2 * MLP, 2 * MLP, 16 * 2 * MLP, 16 * 2 * MLP
    assert (
        sum(quantise_transient(g, run, PROFILES["torchtune"])) == source + scaled + diff + absdiff
    )
    assert scaled + diff + absdiff == 66 * MLP  # calibration/notes/torchtune.md: 2.98 GB
    assert round(66 * MLP / 1e9, 2) == 2.98


def test_torchao_from_0_2_searches_in_chunks_of_a_mebi_element():
    # torchao@6081796bc: quantized_blocks = torch.empty(numel, uint8) and the search on
    # CHUNK_SIZE = 1024**2 elements at a time
    g, run = _mlp_group(torchao_version="0.2.0")
    chunk = 1024**2
    expected = 2 * MLP + 2 * MLP + MLP + 2 * 16 * 2 * chunk
    assert sum(quantise_transient(g, run, PROFILES["torchtune"])) == expected


def test_gptq_and_unquantised_weights_load_without_a_transient():
    g, run = _mlp_group("lora")
    assert quantise_transient(g, run, PROFILES["hf"]) == ()


def test_loading_peak_is_each_transient_beside_the_weights_loaded_so_far():
    weights, transients = (10, 20, 30), ((100,), (), (5,))
    # after the 1st: 10 + 100; after the 3rd: 60 + 5
    assert loading_peak(weights, transients) == 110
    assert loading_peak((10, 20), ((), ())) == 30


def test_hf_evaluation_holds_the_logits_their_fp32_upcast_and_the_log_softmax():
    # transformers@0114da07 ForCausalLMLoss: logits (bf16) -> logits.float() -> cross_entropy
    arch = _architecture(LLAMA2_7B)
    run = RunConfig(method="lora", batch_size=8, seq_len=512)
    n = 8 * 512 * 32000
    assert sum(eval_tensors(arch, run, PROFILES["hf"], 8)) == 2 * n + 4 * n + 4 * n


def test_litgpt_validate_holds_fp32_logits_a_reshape_copy_and_the_log_softmax():
    # notes/litgpt.md M10: ~12*B*T*V (Fabric's fp32 output, the slice's copy when B > 1)
    arch = _architecture(LLAMA2_7B)
    run = RunConfig(method="lora", batch_size=4, seq_len=256)
    assert sum(eval_tensors(arch, run, PROFILES["litgpt"], 4)) == 12 * 4 * 256 * 32000


def test_hf_generation_kv_cache_matches_the_peft_note():
    # notes/peft.md: Llama-3.2-3B, 2*L*8*128*2 = 114,688 B a token, 50 x 800 = 4.6 GB
    arch = _architecture(str(CONFIGS / "llama-3.2-3b" / "config.json"))
    run = RunConfig(method="lora")
    tensors = generation_tensors(arch, run, PROFILES["hf"], 50, 800)
    kv = sum(tensors[: 2 * arch.num_layers])  # a k and a v per layer
    assert kv == 114_688 * 50 * 800
    assert round(kv / 1e9, 1) == 4.6


def test_litgpt_kv_cache_matches_the_litgpt_note():
    # notes/litgpt.md M10: Llama-2-13B, batch 1, 1304 tokens: 1.07 GB (+ a bool mask T^2)
    arch = _architecture(str(CONFIGS / "llama-2-13b" / "config.json"))
    tensors = generation_tensors(arch, RunConfig(method="lora"), PROFILES["litgpt"], 1, 1304)
    kv, mask = sum(tensors[: 2 * arch.num_layers]), tensors[2 * arch.num_layers]
    assert round(kv / 1e9, 2) == 1.07
    assert mask == 1304 * 1304


def test_merging_into_a_4_bit_base_dequantises_and_requantises():
    # peft@628ad7c0 lora/bnb.py Linear4bit.merge: lora_data (fp32 adapters, 4n), output
    # = dequantize (bf16, 2n), w_data = output + lora_data (fp32, 4n), Params4bit(
    # w_data.to("cpu")).to(device): its GPU copy (4n)
    arch = _architecture(LLAMA2_7B)
    run = RunConfig(method="qlora", lora_targets="all-linear", adapter_dtype="fp32")
    plan = plan_method(arch, run)
    assert sum(merge_tensors(plan)) == (4 + 2 + 4 + 4) * MLP


@pytest.mark.parametrize(
    ("framework", "device", "expected"),
    [
        ("litgpt", "cuda", "run"),
        ("torchtune", "cuda", "step"),
        ("hf", "cuda", "run"),
        ("litgpt", "cpu", "step"),
    ],
)
def test_peak_of_defaults_to_what_each_framework_measures(framework, device, expected):
    run = RunConfig(method="lora", framework=framework, device=device)
    assert resolved_peak_of(run, PROFILES[framework]) == expected


TORCHTUNE_QLORA = dict(
    gpu="a100-80gb",
    method="qlora",
    batch_size=2,
    seq_len=512,
    lora_r=8,
    grad_ckpt=True,
    adapter_dtype="bf16",
    framework="torchtune",
    torchao_version="0.1",
)


def test_torchtune_step_window_keeps_the_cache_loading_left():
    step = ftmem.estimate(LLAMA2_7B, **TORCHTUNE_QLORA).memory
    loading = next(m for m in step.run_peak.moments if m.name == "loading")
    assert step.run_peak.peak_of == "step" and step.run_peak.moment == "step"
    # allocated is the step's; reserved cannot be below what loading's peak reserved
    assert step.peak_allocated_bytes == step.run_peak.step_allocated_bytes
    assert loading.allocated_bytes > step.peak_allocated_bytes
    assert step.peak_reserved_bytes >= loading.allocated_bytes


def test_run_window_takes_the_loading_peak_when_it_is_the_largest():
    run = ftmem.estimate(LLAMA2_7B, **TORCHTUNE_QLORA, peak_of="run").memory
    loading = next(m for m in run.run_peak.moments if m.name == "loading")
    assert run.run_peak.moment == "loading"
    assert run.peak_allocated_bytes == loading.allocated_bytes
    assert run.peak_reserved_bytes >= run.peak_allocated_bytes


def test_the_cpu_measures_the_step_only():
    m = ftmem.estimate(LLAMA2_7B, method="lora", device="cpu", framework="litgpt").memory
    assert m.run_peak is None
    assert m.peak_allocated_bytes == m.peak_reserved_bytes == m.device_bytes


def test_a_reset_after_loading_keeps_reserved_but_drops_allocated():
    # c10 CUDACachingAllocator resetPeakStats sets the peaks to the current values and
    # frees nothing: a 100 MiB transient freed before the reset stays reserved
    events = [("alloc", 100 * 2**20), ("alloc", 2**20), ("free", 0), ("reset_peaks", 0)]
    stats = replay(events)
    assert stats.peak_allocated == 2**20
    assert stats.peak_reserved >= 100 * 2**20


def test_the_table_says_when_the_runs_peak_is_outside_the_step():
    from ftmem.present.estimate import markdown

    est = ftmem.estimate(LLAMA2_7B, **TORCHTUNE_QLORA, peak_of="run")
    text = markdown(est)
    assert "loading, outside the step" in text
    assert "Training step's peak" in text


def test_torchtune_load_state_dict_quantises_each_nf4_weight_again_and_swaps_it_in():
    # torchtune@0914d5cfb _register_nf4_dispatch_ops.py inplace_copy: ref = to_nf4(src on
    # the GPU); dest.quantized_data = ref.quantized_data (the init pass's buffers freed)
    from ftmem.gpu.trace import RunOutside, _EventLog, _load, _Recorder

    log = _EventLog()
    program = (("alloc", 7), ("weight", 0), ("free", 0))
    _load(_Recorder(log), RunOutside(loading=(program, ()), requantise=True), (3, 5))
    assert log.events == [
        ("alloc", 7), ("alloc", 3), ("free", 0),  # init: transient, weight, transient freed
        ("alloc", 5),  # an unquantised weight: no transient
        ("alloc", 7), ("alloc", 3), ("free", 3), ("free", 1),  # load: anew, old freed
    ]  # fmt: skip


def test_torchao_v01_program_follows_the_code_order_and_frees_everything():
    # the weight is allocated after the search's 32n blocks are freed (the packing comes
    # last), and every transient of the program is freed
    from ftmem.run_phases import quantise_program

    g, run = _mlp_group(torchao_version="0.1")
    program = quantise_program(g, run, PROFILES["torchtune"])
    allocs = [size for op, size in program if op == "alloc"]
    freed = sorted(j for op, j in program if op == "free")
    assert freed == list(range(len(allocs)))
    weight_at = program.index(("weight", 0))
    assert ("free", 5) in program[:weight_at]  # |value - nf4| freed before the weight
    assert max(allocs) == 32 * MLP
