"""The arithmetic behind an estimate, step by step, the way a blog post shows it.

Every figure comes from the estimator (the tensor groups of the method, the estimate's
components); this module only puts them in sentences, with the formula that produced
each and, where one exists, the published formula it can be compared with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from ftmem.arch import Architecture, buffer_numel
from ftmem.dtypes import BYTES_PER_ELEMENT, is_quantized
from ftmem.methods import TensorGroup, plan_method
from ftmem.profiles import framework_arch
from ftmem.release_buffers import adapter_buffer_bytes, release_buffer_bytes
from ftmem.result import Estimate, Memory
from ftmem.run import RunConfig
from ftmem.units import UnitSystem, format_bytes, format_count

STATES_PER_PARAM = {  # optimizer values kept per trainable parameter
    "adamw": "2 (first and second moment)",
    "adamw-fp32": "2 fp32 (first and second moment)",
    "adamw-32bit": "2 fp32 (first and second moment), bitsandbytes",
    "adamw-8bit": "2 8-bit (with per-256-value block scales)",
    "paged-adamw-8bit": "2 8-bit (with per-256-value block scales)",
    "paged-adamw": "2 fp32, bitsandbytes",
    "lion-32bit": "1 fp32 (momentum), bitsandbytes",
    "lion-8bit": "1 8-bit (momentum, with per-256-value block scales), bitsandbytes",
    "paged-lion": "1 fp32 (momentum), bitsandbytes",
    "paged-lion-8bit": "1 8-bit (momentum, with per-256-value block scales)",
    "ao-adamw-8bit": "2 8-bit, torchao (with per-block fp32 scales)",
    "ao-adamw-4bit": "2 4-bit, torchao (with per-block fp32 scales)",
    "ao-adamw-fp8": "2 FP8 e4m3, torchao (with per-block fp32 scales)",
    "sgd": "0",
    "sgd-momentum": "1 (momentum)",
    "adafactor": "factored second moment (row and column vectors per matrix)",
    "lion": "1 (momentum)",
}


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)


def _b(n: int, units: UnitSystem) -> str:
    return format_bytes(n, units, digits=1 if units == "GB" else 2)


def explain(
    arch: Architecture,
    run: RunConfig,
    est: Estimate,
    units: UnitSystem,
    realistic: Estimate | None = None,
) -> list[Section]:
    """The derivation of ``est``; ``realistic`` (the phases accounting of the same run)
    is shown beside a simple-accounting estimate."""
    out = [_model_section(arch, est)]
    if est.parallel is None:
        out += _single_gpu_sections(arch, run, est, units)
    else:
        out.append(_parallel_section(est, units))
    out.append(_activations_section(arch, run, est, units))
    out.append(_peak_section(run, est, units, realistic))
    return out


def _model_section(arch: Architecture, est: Estimate) -> Section:
    L = arch.num_layers
    model = Section("The model")
    model.lines.append(
        f"{arch.name}: {est.model.n_params:,} parameters ({format_count(est.model.n_params)}), "
        f"{f'{L} encoder and {L} decoder' if arch.encoder_decoder else L} blocks, "
        f"hidden size {arch.hidden_size}, {arch.num_heads} attention heads "
        f"({arch.kv_heads} key/value heads), MLP width {arch.intermediate_size}, "
        f"vocabulary {arch.vocab_size:,}."
    )
    if arch.published_params:
        same = "the same as" if arch.published_params == est.model.n_params else "against"
        model.lines.append(
            f"Counted tensor by tensor: {same} the published {arch.published_params:,}."
        )
    return model


def _single_gpu_sections(
    arch: Architecture, run: RunConfig, est: Estimate, units: UnitSystem
) -> list[Section]:
    """Weights, what trains, gradients and optimizer states, from the method's tensors."""
    model = framework_arch(arch, run)
    plan = plan_method(model, run)  # as estimate_step plans it
    n_train = est.model.n_trainable_params
    trained = Section("What trains")
    share = n_train / est.model.n_params
    trained.lines.append(
        f"Method {run.method}: {n_train:,} trainable parameters ({share:.2%} of the model)."
    )
    idle = sum(g.total_numel for g in plan.groups if g.idle)
    if idle:
        trained.lines.append(
            f"{idle:,} of them get no gradient (LLaMA-Adapter's prompts, whose keys and "
            "values LitGPT caches at its first, no-grad forward): no gradient, no optimizer state."
        )
    return [
        _weights_section(
            plan.groups,
            est,
            units,
            (buffer_numel(arch), plan.dtypes.base),
            (run.transformers_version, release_buffer_bytes(model, run, plan.dtypes)),
            adapter_buffer_bytes(plan, run, model.num_layers),
        ),
        trained,
        _gradients_section(plan.groups, run, est, units),
        _states_section(run, est, units),
    ]


def _weights_section(
    groups: Iterable[TensorGroup],
    est: Estimate,
    units: UnitSystem,
    buffers: tuple[int, str],
    release: tuple[str | None, int] = (None, 0),
    adapter_buffers: int = 0,
) -> Section:
    """The weights by storage format, largest first, the blocks' registered buffers
    (elements, dtype), those of an older transformers release (version, bytes) and
    BOFT's and OFT's buffers (bytes)."""
    weights = Section("Weights")
    by_fmt: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for g in groups:
        by_fmt[g.fmt][0] += g.total_numel
        by_fmt[g.fmt][1] += g.nbytes
    for fmt, (numel, nbytes) in sorted(by_fmt.items(), key=lambda kv: -kv[1][1]):
        if not is_quantized(fmt):
            weights.lines.append(
                f"{format_count(numel)} parameters in {fmt} × {BYTES_PER_ELEMENT[fmt]} bytes "
                f"= {_b(nbytes, units)}"
            )
        else:
            each = "one byte" if fmt == "int8" else "half a byte"
            weights.lines.append(
                f"{format_count(numel)} parameters in {fmt}: {each} each plus the "
                f"quantisation constants = {_b(nbytes, units)}"
            )
    numel, dtype = buffers
    if numel:
        weights.lines.append(
            f"{format_count(numel)} entries of buffers the blocks register (Qwen-1's logn "
            f"tables) in {dtype} × {BYTES_PER_ELEMENT[dtype]} bytes "
            f"= {_b(numel * BYTES_PER_ELEMENT[dtype], units)}"
        )
    version, extra = release
    if extra:
        owner = (
            f"transformers {version} registers or keeps"
            if version
            else "the framework's modules register or keep"
        )
        weights.lines.append(
            f"buffers {owner} (rotary cos/sin tables of every "
            f"position, a causal mask, LLaMA-Adapter's cached prompt k/v, VeRA's and PVeRA's "
            f"shared projections, RandLoRA's shared bases, FourierFT's indices) = "
            f"{_b(extra, units)}"
        )
    if adapter_buffers:
        weights.lines.append(
            "buffers peft's adapters register on each adapted linear (BOFT's fp32 boft_P "
            "permutations, DeLoRA's fp32 weight column norms, OFT's int64 block indices) = "
            f"{_b(adapter_buffers, units)}"
        )
    weights.lines.append(f"Weights = {_b(est.memory.weights_bytes, units)}")
    return weights


def _gradients_section(
    groups: Iterable[TensorGroup], run: RunConfig, est: Estimate, units: UnitSystem
) -> Section:
    m = est.memory
    # (the parameters a gradient reaches: TensorGroup.idle ones have none)
    n_train = sum(g.total_numel for g in groups if g.trainable)
    grads = Section("Gradients")
    if run.accounting == "simple":
        grads.lines.append(
            f"One 16-bit gradient per trainable parameter: {format_count(n_train)} × 2 bytes "
            f"= {_b(m.gradients_bytes, units)}"
        )
    else:
        sizes = sorted({g.element_bytes for g in groups if g.trainable})
        each = " or ".join(f"{b}" for b in sizes) or "0"
        grads.lines.append(
            f"One gradient per trainable parameter, in its dtype ({each} bytes): "
            f"{format_count(n_train)} parameters = {_b(m.gradients_bytes, units)}"
        )
    return grads


def _states_section(run: RunConfig, est: Estimate, units: UnitSystem) -> Section:
    m = est.memory
    simple = run.accounting == "simple"
    states = Section("Optimizer states")
    states.lines.append(
        f"{run.optimizer}: {STATES_PER_PARAM[run.optimizer]} values per trainable parameter"
        + (", 16-bit each in the simple accounting" if simple else "")
        + f" = {_b(m.optimizer_states_bytes, units)}"
    )
    if simple:
        states.lines.append(
            f"Gradients + optimizer states = {_b(m.gradients_bytes + m.optimizer_states_bytes, units)}"
        )
    states.lines += _paged_split(m, units)
    return states


def _paged_split(m: Memory, units: UnitSystem) -> list[str]:
    """bitsandbytes' paged buffers among the states: resident on the GPU, and what the
    card has no room for, in host RAM (ftmem.gpu.managed)."""
    b = m.beyond_allocated
    paged = b.paged_optimizer_states + b.paged_to_host
    if not paged:
        return []
    host = (
        f", {_b(b.paged_to_host, units)} paged to host RAM (no room on the GPU: the "
        "driver moves them over PCIe every step)"
        if b.paged_to_host
        else ""
    )
    return [
        f"Of these, {_b(paged, units)} are bitsandbytes' paged buffers (of the tensors of "
        "1e5+ values the optimizer steps), in CUDA managed memory outside the allocated "
        f"and reserved peaks: {_b(b.paged_optimizer_states, units)} resident on the GPU"
        f"{host}; {_b(m.optimizer_states_bytes - paged, units)} in torch's allocator."
    ]


def _activations_section(
    arch: Architecture, run: RunConfig, est: Estimate, units: UnitSystem
) -> Section:
    """Saved tensors per block and outside the blocks, beside Korthikanti's GPT rule."""
    m = est.memory
    acts = Section("Activations (what autograd keeps for backward)")
    block = sum(i.bytes for i in m.activations_per_block)
    # a preference objective's chosen and rejected sequences: 2b per forward
    tokens = run.sequences * run.positions
    length = (
        f"({run.seq_len} + {run.n_virtual} virtual)"
        if run.positions != run.seq_len
        else (f"{run.seq_len}")
    )
    if arch.encoder_decoder:
        tokens = run.batch_size * run.decoder_len
        acts.lines.append(
            f"{arch.num_layers} encoder blocks read {run.batch_size} × {run.seq_len} input "
            f"positions, {arch.num_layers} decoder blocks {run.batch_size} × {run.decoder_len} "
            "target positions (self-attention, cross-attention over the encoder's output, "
            f"feed-forward). Per decoder block, in {est.run.compute_dtype}:"
        )
    else:
        acts.lines.append(
            f"Per block, for {run.sequences} × {length} = {tokens:,} positions in "
            f"{est.run.compute_dtype}:"
        )
    for item in m.activations_per_block:
        acts.lines.append(f"  {item.what}: {_b(item.bytes, units)}")
    acts.lines.append(
        f"  one {'decoder ' if arch.encoder_decoder else ''}block: {_b(block, units)}"
    )
    if run.grad_ckpt:
        acts.lines.append(
            "With gradient checkpointing each block keeps only its input; backward rebuilds one "
            "block at a time."
        )
    outer = sum(i.bytes for i in m.activations_outer)
    for item in m.activations_outer:
        acts.lines.append(f"  outside the blocks, {item.what}: {_b(item.bytes, units)}")
    acts.lines.append(
        f"Activations = {_b(m.activations_bytes, units)} (outside the blocks {_b(outer, units)})"
    )
    if not arch.encoder_decoder:  # (a decoder-only GPT rule)
        acts.lines.append(_korthikanti_line(arch, run, tokens, units))
    return acts


def _korthikanti_line(arch: Architecture, run: RunConfig, tokens: int, units: UnitSystem) -> str:
    h = arch.hidden_size
    korthikanti = tokens * h * (34 + 5 * arch.num_heads * run.seq_len / h)
    return (
        "For comparison, Korthikanti et al. 2022 (arXiv:2205.05198) give s·b·h·(34 + 5·a·s/h) "
        f"bytes per GPT block in 16-bit with the s² attention scores kept: "
        f"{_b(int(korthikanti), units)} here; sdpa/flash keep no s² scores, and these families "
        "differ from GPT-3 (gated MLP, fp32 RMSNorm inputs)."
    )


def _peak_section(
    run: RunConfig, est: Estimate, units: UnitSystem, realistic: Estimate | None
) -> Section:
    """The peak, what the GPU holds beyond it, and whether it fits the GPU."""
    peak = Section("The peak")
    if run.accounting == "simple":
        peak.lines += _simple_peak_lines(est, units, realistic)
    else:
        peak.lines += _phases_peak_lines(est, units)
    peak.lines.append(_beyond_line(est, units))
    if est.gpu is not None:
        verdict = "fits" if est.fits else "does not fit"
        peak.lines.append(
            f"{est.gpu['name']} has {_b(est.gpu['memory_bytes'], units)}: it {verdict} "
            f"({_b(abs(est.headroom_bytes or 0), units)} "
            f"{'headroom' if est.fits else 'short'})."
        )
    return peak


def _beyond_line(est: Estimate, units: UnitSystem) -> str:
    """What the GPU holds beyond the allocated peak, and the device total."""
    m, b = est.memory, est.memory.beyond_allocated
    per_gpu = " per GPU." if est.parallel else "."
    paged = (
        f" (with paged optimizer states resident in managed memory "
        f"{_b(b.paged_optimizer_states, units)})"
        if b.paged_optimizer_states
        else ""
    )
    if not (b.cuda_context or b.nccl):
        return (
            f"Beyond the allocated peak {_b(m.overhead_bytes, units)}: device total "
            f"{_b(m.total_bytes, units)}{paged}" + per_gpu
        )
    nccl = f" + NCCL's buffers {_b(b.nccl, units)}" if b.nccl else ""
    nccl += f" + the colocated vLLM engine {_b(b.vllm_engine, units)}" if b.vllm_engine else ""
    nccl += f" + paged optimizer states {_b(b.paged_optimizer_states, units)}" if paged else ""
    return (
        f"The caching allocator keeps {_b(b.allocator_cache, units)} more than is allocated "
        f"(replaying the step's requests through its rules): reserved "
        f"{_b(m.peak_reserved_bytes, units)}; with the CUDA context and libraries "
        f"{_b(b.cuda_context, units)}{nccl}, nvidia-smi shows {_b(m.total_bytes, units)}" + per_gpu
    )


def _simple_peak_lines(est: Estimate, units: UnitSystem, realistic: Estimate | None) -> list[str]:
    """The seed's sum, and beside it the phases accounting's peak when given."""
    m = est.memory
    lines = [
        "Simple accounting (the seed's rule): weights + gradients + optimizer states + "
        f"activations = {_b(m.weights_bytes, units)} + {_b(m.gradients_bytes, units)} + "
        f"{_b(m.optimizer_states_bytes, units)} + {_b(m.activations_bytes, units)} "
        f"≈ {_b(m.peak_allocated_bytes, units)}"
    ]
    if realistic is not None:
        r = realistic.memory
        lines.append(
            f"Beside it, the realistic peak of the step (phases accounting, the dtypes "
            f"PyTorch really uses): {_b(r.peak_allocated_bytes, units)} in {r.peak_phase} "
            f"(weights {_b(r.at_peak.weights, units)}, gradients "
            f"{_b(r.at_peak.gradients, units)}, optimizer states "
            f"{_b(r.at_peak.optimizer_states, units)}, activations "
            f"{_b(r.at_peak.activations, units)}, temporaries "
            f"{_b(r.at_peak.temporaries, units)})."
        )
    return lines


def _phases_peak_lines(est: Estimate, units: UnitSystem) -> list[str]:
    """The largest moment of each phase, and what is live at the peak."""
    m, ph, a = est.memory, est.memory.phases, est.memory.at_peak
    parts = [
        ("weights", a.weights),
        ("gradients", a.gradients),
        ("optimizer states", a.optimizer_states),
        ("activations", a.activations),
        ("temporaries", a.temporaries),
        ("gathered weights and buckets", a.communication),
        ("BLAS workspaces", a.workspaces),
        ("allocator block rounding", a.block_rounding),
    ]
    live = " + ".join(f"{name} {_b(v, units)}" for name, v in parts if v)
    return [
        f"The step's largest moments: forward {_b(ph.forward, units)}, backward "
        f"{_b(ph.backward, units)}, optimizer step {_b(ph.optimizer, units)}.",
        f"The peak is in {m.peak_phase}: {live} = {_b(m.peak_allocated_bytes, units)}",
    ]


def _parallel_section(est: Estimate, units: UnitSystem) -> Section:
    p = est.parallel
    assert p is not None
    m = est.memory
    s = Section(f"Per GPU: {p.strategy} over {p.world_size} GPUs ({p.engine})")
    n = p.shard_group
    s.lines.append(
        f"{format_count(est.model.n_trainable_params)} trainable of {format_count(est.model.n_params)} "
        f"parameters; data parallel {p.data_parallel}, tensor {p.tensor_parallel}, pipeline "
        f"{p.pipeline_parallel}; one copy sharded over {n} GPU(s)."
    )
    s.lines.append(
        f"Weights on each GPU: its shard {_b(p.weights_sharded_bytes, units)} + whole on every GPU "
        f"{_b(p.weights_replicated_bytes, units)} = {_b(m.weights_bytes, units)}"
    )
    s.lines.append(f"Gradients on each GPU: {_b(m.gradients_bytes, units)}")
    s.lines.append(f"Optimizer states on each GPU: {_b(m.optimizer_states_bytes, units)}")
    s.lines += _paged_split(m, units)
    if p.strategy.startswith("zero"):
        s.lines.append(
            "ZeRO (Rajbhandari et al. 2020): 16-bit weights (2Ψ) and gradients (2Ψ), fp32 master "
            "weights and Adam moments (12Ψ); stage 1 shards the 12Ψ over N, stage 2 also the "
            "gradients, stage 3 also the weights."
        )
    s.lines.append(
        f"Gathered weights and communication buckets, at most {_b(m.communication_bytes, units)}."
    )
    if p.host_bytes_per_node:
        s.lines.append(f"Offloaded to host RAM: {_b(p.host_bytes_per_node, units)} per node.")
    return s


def render_text(sections: list[Section]) -> str:
    lines: list[str] = []
    for i, sec in enumerate(sections, 1):
        lines.append(f"{i}. {sec.title}")
        lines += [f"   {line}" for line in sec.lines]
        lines.append("")
    return "\n".join(lines)


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"## {title}", ""]
    for sec in sections:
        lines.append(f"### {sec.title}")
        lines.append("")
        for line in sec.lines:
            if line.startswith("  "):
                lines.append(f"- {line.strip()}")
            else:
                lines.append(line)
                lines.append("")
        if lines[-1] != "":
            lines.append("")
    return "\n".join(lines)
