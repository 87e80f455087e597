"""MoE experts as transformers 4 builds them: one module of nn.Linears per expert
(``--transformers-version`` < 5), which bitsandbytes quantises and a Python loop runs.

The truths are written here: the 4-bit storage of every per-expert linear derived from
bitsandbytes' format (blocks of 64, double quantisation), and what autograd saves in a
re-implementation of transformers 4.48.1's Mixtral sparse MoE block (models/mixtral/
modeling_mixtral.py MixtralSparseMoeBlock.forward, MixtralBlockSparseTop2MLP), measured
with saved_tensors_hooks on the CPU (transformers 4 cannot be installed beside 5).
"""

from __future__ import annotations

import pytest

from ftmem.api import InvalidInputError, RunConfig, estimate, parallel_config, run_config
from ftmem.dtypes import quant_state_bytes
from ftmem.methods import plan_method
from ftmem.ops.context import BlockState, LayerContext
from ftmem.ops.moe import MoE
from ftmem.parallel import parallel_step
from ftmem.presets import get_model
from tests.conftest import tiny
from tests.saved_storages import saved_storages

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

QLORA = dict(method="qlora", quant="nf4", double_quant=True, lora_targets="q,k,v,o", lora_r=16)


def _nf4_bytes(numel: int) -> int:
    """One double-quantised NF4 tensor (bitsandbytes quantize_4bit, blocksize 64): two
    values per byte, an 8-bit absmax per block, an fp32 scale per 256 absmaxes, the fp32
    offset, the 256-entry fp32 nested code and the 16-entry fp32 NF4 code."""
    blocks = -(-numel // 64)
    return numel // 2 + blocks + 4 * -(-blocks // 256) + 4 + 256 * 4 + 16 * 4


def test_mixtral_qlora_quantises_every_expert_linear_under_transformers_4() -> None:
    arch = get_model("mixtral-8x7b")
    h, f, E, L = arch.hidden_size, arch.intermediate_size, arch.num_experts, arch.num_layers
    q, kv, V = arch.q_size, arch.kv_size, arch.vocab_size
    per_block = (
        _nf4_bytes(h * q) * 2  # q_proj, o_proj
        + _nf4_bytes(h * kv) * 2  # k_proj, v_proj
        + _nf4_bytes(h * E)  # block_sparse_moe.gate (an nn.Linear in 4.x)
        + E * 3 * _nf4_bytes(h * f)  # experts.{i}.w1, w2, w3
        + 2 * h * 2  # the two RMSNorms, bf16
    )
    # embedding, LM head (get_keys_to_not_convert keeps it) and final norm in bf16
    outer = 2 * V * h * 2 + h * 2
    # r = 16, fp32 lora_A (r, in) and lora_B (out, r) on q, k, v (in h) and o (in q)
    lora = L * 16 * ((h + q) + 2 * (h + kv) + (q + h)) * 4
    run = dict(QLORA, precision="bf16", batch_size=1, seq_len=64)
    old = estimate("mixtral-8x7b", transformers_version="4.48.1", **run)
    assert old.memory.weights_bytes == L * per_block + outer + lora
    # transformers 5: the fused 3-D experts stay bf16
    new = estimate("mixtral-8x7b", **run)
    experts_bf16 = L * E * 3 * h * f * 2
    assert new.memory.weights_bytes == old.memory.weights_bytes + experts_bf16 - L * (
        E * 3 * _nf4_bytes(h * f) + _nf4_bytes(h * E) - h * E * 2
    )


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sharding_keeps_every_expert_linear_of_a_block(strategy: str) -> None:
    """Two GPUs, the 4.x per-expert linears (E per block): DDP holds the whole model of the
    hand derivation above, FSDP each 4-bit linear's quant_state whole (bitsandbytes hangs it
    on the module, no parameter: test_fsdp_quant_state) and half of the rest. The pipeline
    split counted such a group by blocks: one expert per block (a rank's weights 2.0 GiB
    instead of 12.0 on Mixtral; fms-acceleration refs/a100_80gb.csv@876e2ed6 l.63, 65:
    11.86 GiB after loading on each of two GPUs, 22.97 on one, l.62)."""
    arch = get_model("mixtral-8x7b")
    h, f, E, L = arch.hidden_size, arch.intermediate_size, arch.num_experts, arch.num_layers
    q, kv = arch.q_size, arch.kv_size
    run = run_config(**QLORA, precision="bf16", transformers_version="4.48.1")
    whole = estimate("mixtral-8x7b", transformers_version="4.48.1", **QLORA, precision="bf16")
    total = whole.memory.weights_bytes  # test above: L · per_block + outer + lora
    rank = parallel_step(arch, run, parallel_config(gpus=2, strategy=strategy)).ranks[0]
    if strategy == "ddp":
        assert rank.weights_replicated == total
        return
    linears = [h * q, h * kv, h * kv, q * h, h * E] + [h * f] * (3 * E)
    states = L * sum(quant_state_bytes(n, "nf4", double_quant=True) for n in linears)
    assert rank.weights_replicated == states
    assert rank.weights_sharded == -(-(total - states) // 2)


def test_transformers_version_reaches_the_run() -> None:
    assert RunConfig(transformers_version="4.48.1").transformers_version == "4.48.1"
    with pytest.raises(ValueError, match="release"):
        RunConfig(transformers_version="four")


class Top2MLP(nn.Module):
    """4.48.1 MixtralBlockSparseTop2MLP: act(w1(x)) * w3(x), then w2."""

    def __init__(self, h: int, f: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(h, f, bias=False)
        self.w2 = nn.Linear(f, h, bias=False)
        self.w3 = nn.Linear(h, f, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoe4x(nn.Module):
    """4.48.1 MixtralSparseMoeBlock.forward, line by line (no jitter noise)."""

    def __init__(self, h: int, f: int, E: int, k: int) -> None:
        super().__init__()
        self.top_k, self.num_experts = k, E
        self.gate = nn.Linear(h, E, bias=False)
        self.experts = nn.ModuleList([Top2MLP(h, f) for _ in range(E)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        b, s, h = hidden_states.shape
        hidden_states = hidden_states.view(-1, h)
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final = torch.zeros((b * s, h), dtype=hidden_states.dtype)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        for expert_idx in range(self.num_experts):
            idx, top_x = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[None, top_x].reshape(-1, h)
            out = self.experts[expert_idx](current_state) * routing_weights[top_x, idx, None]
            final.index_add_(0, top_x, out.to(hidden_states.dtype))
        return final.reshape(b, s, h)


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves, parameters excluded."""
    return sum(saved_storages(lambda: module(x), module.parameters()))


@pytest.mark.parametrize(
    ("method", "dtype"), [("qlora", "bf16"), ("qlora", "fp32"), ("lora", "bf16-mixed")]
)
def test_looped_experts_keep_what_the_4x_block_saves(method: str, dtype: str) -> None:
    """Frozen experts (QLoRA's: bitsandbytes >= 0.43.2 keeps no input of a 4-bit matmul,
    like a frozen nn.Linear), the block's input needing a gradient; bf16-mixed: fp32
    weights and hidden states, the linears under bf16 autocast."""
    arch = tiny("mixtral")
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    h, f = arch.hidden_size, arch.intermediate_size
    block = SparseMoe4x(h, f, arch.num_experts, arch.experts_per_token).to(torch_dtype)
    block.requires_grad_(False)
    torch.manual_seed(0)
    b, s = 2, 48
    x = torch.randn(b, s, h, dtype=torch_dtype, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16-mixed"):
        measured = _saved_bytes(block, x)

    settings = dict(QLORA, method=method) if method == "qlora" else dict(method=method)
    run = RunConfig(
        **settings, precision=dtype, transformers_version="4.48.1", batch_size=b, seq_len=s
    )
    ctx = LayerContext(arch, run, plan_method(arch, run), b * s)
    state = BlockState(input_requires_grad=True, weights_trainable=False, adapted=frozenset())
    predicted = sum(item.nbytes for item in MoE.saved(ctx, state, x_grad=True))
    assert predicted == measured


@pytest.mark.parametrize("targets", ["all-linear", "experts", "q,v,gate,up"])
def test_lora_on_4x_expert_linears_is_refused_not_misestimated(targets: str) -> None:
    with pytest.raises(InvalidInputError, match=r"nn\.Linear modules"):
        estimate("mixtral-8x7b", method="lora", lora_targets=targets, transformers_version="4.48.1")
    # the attention alone is estimated; transformers 5 takes the experts' targets
    estimate("mixtral-8x7b", method="lora", lora_targets="q,v", transformers_version="4.48.1")
    estimate("mixtral-8x7b", method="lora", lora_targets=targets)


@pytest.mark.parametrize(
    ("dtype", "h", "f", "E", "T"),
    [
        (torch.float32, 96, 160, 4, 96),
        (torch.float32, 64, 256, 8, 256),
        (torch.bfloat16, 128, 96, 8, 256),
    ],
)
def test_looped_backward_holds_one_experts_gradients(
    dtype: torch.dtype, h: int, f: int, E: int, T: int
) -> None:
    """The 4.x loop's backward peak above what its forward left, with every expert given
    the same number of tokens (the estimate's average): one expert's SwiGLU gradients
    (3·n·f) or its gather's T·h gradient, less at most the two n·h tensors it has freed."""
    from ftmem.measure.tracker import LiveBytesTracker

    k = 2
    block = SparseMoe4x(h, f, E, k).to(dtype)
    block.requires_grad_(False)
    with torch.no_grad():  # the router sends token t to experts t and t + 1 (mod E)
        block.gate.weight.zero_()
        block.gate.weight[torch.arange(E), torch.arange(E)] = 1.0
    x = torch.randn(1, T, h) * 0.01
    x[..., :E] = 0
    t = torch.arange(T)
    x[0, t, t % E], x[0, t, (t + 1) % E] = 4.0, 2.0
    x = x.to(dtype).requires_grad_(True)
    grad = torch.randn(1, T, h, dtype=dtype)
    tracker = LiveBytesTracker()
    with tracker:
        tracker.track(x, grad)
        y = block(x)
        after_forward = tracker.current
        tracker.reset_peak()
        y.backward(grad)
    measured = tracker.peak - after_forward
    es = torch.finfo(dtype).bits // 8
    arch = tiny("mixtral", hidden_size=h, intermediate_size=f, num_experts=E)
    predicted = MoE.looped_backward(arch, T, es, es)
    n = T * k // E
    assert measured <= predicted <= measured + 2 * n * h * es
