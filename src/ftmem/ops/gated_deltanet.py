"""Gated DeltaNet linear attention (Qwen3.5, Qwen3-Next), as transformers 5.25 runs it
without the hub kernels: models/qwen3_5/modeling_qwen3_5.py ``Qwen3_5GatedDeltaNet``
(l.555-738), ``causal_conv1d_fn``'s torch path (l.251-271), ``torch_chunk_gated_delta_rule``
(l.336-475) and ``Qwen3_5RMSNormGated`` (l.199-215); Qwen3-Next's layer
(models/qwen3_next/modeling_qwen3_next.py ``Qwen3NextGatedDeltaNet``) is the same but for
its two fused input projections (``DeltaNetShape.fused``). The block walk places the
qwen3_5_text, qwen3_5_moe_text and qwen3_next families' layers in config.json's order
(activations._gated_deltanet keeps ``saved`` in each Gated DeltaNet block); their training
steps are estimated for what was measured (``refuse_training``), serving refused
(``refuse_stack``) (see calibration/notes/peft.md, "Gated DeltaNet (stop 49, helper
qwen35)", "Ordered block walk (stop 50, helper order)"; the families' docstrings).

The op runs from the outputs of in_proj_qkv, in_proj_z, in_proj_b and in_proj_a to the
input of out_proj (those five are linears: ops.linear answers for what they keep). Symbols:
b batch, s tokens a row, T = b·s, h_k/h_v the key and value heads (q and k are repeated to
h_v heads), d_k/d_v their widths, D = 2·h_k·d_k + h_v·d_v the conv channels, K the conv
kernel, C = 64 the chunk, n = ⌈s / C⌉ the chunks and P = n·C the padded length, e the
compute dtype's bytes; every tensor of the delta rule is fp32 (4 bytes) whatever e is.

What autograd keeps when every input stream needs a gradient (the block's input does, or
every in_proj is adapted), traced with saved_tensors_hooks on the CPU (torch 2.13, fp32 and
bf16 weights; tests/test_gated_deltanet.py measures the real module):

* the depthwise conv keeps its input (in_proj_qkv's output, T·D·e: ConvolutionBackward
  keeps it even for a frozen weight) and silu its input, the conv's padded output
  (b·D·(s + K - 1)·e, sliced to s after);
* beta = sigmoid(b) keeps its output (T·h_v·e); g = -exp(A_log.float())·softplus(a.float()
  + dt_bias) keeps softplus's fp32 input (T·h_v·4) and the fp32 -exp(A_log) (h_v·4); where
  A_log trains also exp's output (h_v·4) and softplus's output (T·h_v·4);
* the l2-normalised q and k: each its fp32 contiguous copy (b·h_v·s·d_k·4) and its fp32
  rstd (b·h_v·s·4) (fp32 with equal key and value heads: no copy, silu's whole output);
* padded to P: beta (b·h_v·P·4), v (b·h_v·P·d_v·4), k (b·h_v·P·d_k·4), the scaled q
  (b·h_v·P·d_k·4), and k·beta (b·h_v·P·d_k·4); the chunk mask (C·C bool);
* five C-wide fp32 tensors of b·h_v·P·C·4 each: the pairwise decay's exp, k_beta·kᵀ, q·kᵀ,
  the UT system (solve_triangular's matrix) and the intra-chunk attention;
* the UT solves' outputs (new values b·h_v·P·d_v·4, k_cumdecay b·h_v·P·d_k·4) and two
  b·h_v·P·4 exps of the cumulative decay;
* with two chunks or more: a third exp (the decay to each chunk's end), the chunks'
  decays (b·h_v·n·4), the decayed key and query (b·h_v·P·d_k·4 each); with one, the
  graph of the only state update is dropped with them;
* per chunk its state (b·h_v·d_k·d_v·4, the zero first one included) and its v_new
  (b·h_v·C·d_v·4);
* the gated RMSNorm: its input as fp32 (T·h_v·d_v·4: a copy in 16 bits, the kernel's
  output itself in fp32), the rstd (T·h_v·4), the gate as fp32 (likewise), silu's output
  (T·h_v·d_v·4), the weighted normalised tensor (T·h_v·d_v·e, saved by the product with
  silu's fp32 output) and, where the norm's weight trains, the normalised tensor cast
  back (T·h_v·d_v·e).

Under a 16-bit autocast over fp32 weights (measured too) the conv keeps its input's and
its weight's casts, the two q/k matmuls keep their operands' casts and 16-bit outputs, and
the chunk loop keeps, per chunk, the casts its matmuls read (the state twice, the
k_cumdecay and query chunks from the second chunk on, the intra-chunk attention and v_new;
for all but the last chunk also the fp32 state, kᵀ's and v_new's casts) instead of the
whole decayed q and k, states and v_new; the gated norm's weighted product is fp32.

In fp32 without padding (s a multiple of C) q and k keep a strided layout and the matmuls
copy their operands (see ``saved``). Only the state update of the last chunk makes a
state that nothing reads: autograd drops its graph in forward, with what only it kept.

Gradient checkpointing keeps only the block's input in forward; the recompute keeps the
same tensors again (measured with reentrant checkpointing).

The forward's transient (``forward_transient``) and the backward's workspace
(``backward_workspace``) are replays of the layer's allocations and frees in
order (``_forward``, ``_backward``), matched allocation by allocation to the real module
(tests/test_gated_deltanet_transients.py), under autocast too: each linear's and
matmul's casts (torch 2.13 aten/src/ATen/autocast_mode.cpp ``cached_cast``: a trained weight, a leaf, is cast
once and cached for the region; the conv's unsqueezed weight, a view, never), their
gradients in 16 bits and each cast's backward to fp32.

What is not here: inputs whose streams need no
gradient (the lowest trained block of a method that adapts only some of the input
projections), and the kernels CUDA users get when the
``kernels`` hub or flash-linear-attention and causal-conv1d are installed
(``use_kernel_func_from_hub_with_fallback``): fla's ChunkGatedDeltaRuleFunction keeps a
different, smaller set (calibration/notes/peft.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ftmem.dtypes import FP32
from ftmem.errors import InvalidInputError
from ftmem.ops.registry import register
from ftmem.ops.saved import Kind, Saved, Side

if TYPE_CHECKING:
    from ftmem.arch import Architecture
    from ftmem.run import RunConfig


def refuse_stack(arch: Architecture, what: str) -> None:
    """A model with Gated DeltaNet layers (Architecture.linear_attention) or Qwen3.5's
    gated attention (Family.attention_output_gate, ops.output_gate) has its parameters
    counted exactly, but ``what`` (serving: its recurrent and conv states are no KV
    cache) is refused."""
    if _qwen35_layers(arch):
        raise InvalidInputError(
            f"{arch.name}: {what} of Qwen3.5's layers (Gated DeltaNet and gated full "
            "attention) is not modelled yet (their parameters are); for a traced answer add "
            '--traced, with pip install "ftmem[measure]".'
        )


def _qwen35_layers(arch: Architecture) -> bool:
    return arch.linear_attention is not None or arch.traits.attention_output_gate


# What a training step of Qwen3.5's layers was measured with (tests/accuracy/cases.py,
# _qwen3_5_text, _qwen3_5_moe_text and _qwen3_next: the tiny models on the CPU,
# transformers 5.25, peft 0.21.2, torch 2.13):
# these methods and precisions, and only these settings changed from RunConfig's defaults.
MEASURED_METHODS = ("full", "freeze", "lora", "qlora")
MEASURED_PRECISIONS = ("fp32", "bf16", "bf16-mixed")
MEASURED_SETTINGS = frozenset(
    {
        "method",
        "precision",
        "optimizer",
        "optimizer_impl",
        "device",
        "torch_version",
        "transformers_version",
        "peft_version",
        "bnb_version",
        "alloc_conf",
        "accounting",
        "batch_size",
        "seq_len",
        "grad_accum",
        "grad_ckpt",
        "trainable_layers",
        "lora_r",
        "lora_alpha",
        "lora_targets",
        "lora_dropout",
        "quant",
        "double_quant",
        "compute_dtype",
    }
)


def refuse_training(arch: Architecture, run: RunConfig, alone: bool = True) -> None:
    """A training step of Qwen3.5's layers is modelled on transformers' torch path (see the
    module's docstring) for the measured methods, precisions and settings only; anything
    else is refused in one sentence. ``alone``: one GPU, no teacher, no sequence split
    (tensor and pipeline parallelism, ZeRO, FSDP and ColossalAI are not measured)."""
    if not _qwen35_layers(arch):
        return
    from ftmem.run import RunConfig

    def refuse(what: str) -> InvalidInputError:
        return InvalidInputError(
            f"{arch.name}: a training step of Qwen3.5's layers (Gated DeltaNet and gated full "
            f"attention) is modelled for {', '.join(MEASURED_METHODS)} in "
            f"{', '.join(MEASURED_PRECISIONS)} on one GPU, not {what}."
        )

    if not alone:
        raise refuse("spread over GPUs, with a teacher or with a sequence split")
    if run.method not in MEASURED_METHODS:
        raise refuse(f"--method {run.method}")
    if run.precision not in MEASURED_PRECISIONS:
        raise refuse(f"--precision {run.precision}")
    if run.method in ("lora", "qlora") and not run.lora_targets:
        raise InvalidInputError(
            f"{arch.name}: peft 0.21.2 has no default LoRA targets for "
            f"{arch.traits.model_types[0]}; name them with --lora-targets (q_proj,v_proj, "
            "for one)."
        )
    default = RunConfig()
    for name in type(run).model_fields:
        if name not in MEASURED_SETTINGS and getattr(run, name) != getattr(default, name):
            raise refuse(f"with --{name.replace('_', '-')} {getattr(run, name)}")


def refuse_graphless_deltanet(arch: Architecture) -> None:
    """What the block walk does not place yet: a checkpointed Gated DeltaNet block whose
    projections carry LoRA (peft's adapters' backward inside the layer's is not
    replayed; measured on the tiny model, LoRA all-linear bf16 checkpointed 6 % under
    without it). Frozen ones, and checkpointed ones whose weights are frozen or trained,
    are modelled, under autocast too (transients.graphless_deltanet_forward,
    deltanet_backward_moments)."""
    raise InvalidInputError(
        f"{arch.name}: a checkpointed Gated DeltaNet layer whose projections carry LoRA is "
        "not modelled yet; drop --grad-ckpt, or put LoRA off in_proj_* and out_proj."
    )


def refuse_trained_accumulation(arch: Architecture) -> None:
    """Checkpointed Gated DeltaNet blocks whose weights train, with gradient accumulation:
    measured on the tiny model (full bf16, 2 micro-batches) 0.12 % over the estimate
    (4,104 B not understood), so refused until found."""
    raise InvalidInputError(
        f"{arch.name}: gradient accumulation over checkpointed Gated DeltaNet layers whose "
        "weights train is not modelled yet; use --grad-accum 1, or LoRA off in_proj_* and "
        "out_proj."
    )


def torch_path_note(arch: Architecture, run: RunConfig) -> list[str]:
    """The estimate's note of the kernel path modelled (CUDA may take others)."""
    if arch.linear_attention is None or run.device != "cuda":
        return []
    return [
        "Gated DeltaNet layers: modelled on transformers' torch path "
        "(torch_chunk_gated_delta_rule, the torch causal conv1d); where flash-linear-attention "
        "and causal-conv1d (or the kernels hub) are installed CUDA runs their kernels, which "
        "keep less (not modelled)."
    ]


# torch_chunk_gated_delta_rule's default, the one Qwen3_5GatedDeltaNet.forward uses
CHUNK = 64


@dataclass(frozen=True, slots=True)
class DeltaNetShape:
    """A Gated DeltaNet layer's widths, as config.json names them: hidden_size,
    linear_num_key_heads, linear_num_value_heads, linear_key_head_dim,
    linear_value_head_dim, linear_conv_kernel_dim."""

    hidden: int
    k_heads: int
    v_heads: int
    k_dim: int
    v_dim: int
    conv_kernel: int
    # Qwen3-Next's two fused input projections (in_proj_qkvz, in_proj_ba: transformers
    # 5.25 models/qwen3_next/modeling_qwen3_next.py Qwen3NextGatedDeltaNet, split per key
    # head by fix_query_key_value_ordering, q/k/v concatenated for the conv) in place of
    # Qwen3.5's four (in_proj_qkv, in_proj_z, in_proj_b, in_proj_a)
    fused: bool = False

    @property
    def key_dim(self) -> int:
        return self.k_heads * self.k_dim

    @property
    def value_dim(self) -> int:
        return self.v_heads * self.v_dim

    @property
    def conv_dim(self) -> int:
        """The conv's channels: q, k and v side by side (in_proj_qkv's output)."""
        return 2 * self.key_dim + self.value_dim


@register("gated_deltanet")
class GatedDeltaNet:
    """Between the input projections and out_proj of a linear-attention layer."""

    @staticmethod
    def layer_parameters(shape: DeltaNetShape) -> dict[str, int]:
        """Elements of each of the layer's parameters, by module (Qwen3_5GatedDeltaNet.__init__:
        bias-free projections, a bias-free depthwise conv of conv_dim × 1 × K, dt_bias and
        A_log per value head, the gated norm's weight over one value head). Not the op
        protocol's ``parameters(arch)``: no Architecture has these layers yet."""
        h, v = shape.hidden, shape.v_heads
        if shape.fused:
            return {
                "in_proj_qkvz": h * (shape.conv_dim + shape.value_dim),
                "in_proj_ba": h * 2 * v,
                "conv1d": shape.conv_dim * shape.conv_kernel,
                "dt_bias": v,
                "A_log": v,
                "norm": shape.v_dim,
                "out_proj": shape.value_dim * h,
            }
        return {
            "in_proj_qkv": h * shape.conv_dim,
            "in_proj_z": h * shape.value_dim,
            "in_proj_b": h * v,
            "in_proj_a": h * v,
            "conv1d": shape.conv_dim * shape.conv_kernel,
            "dt_bias": v,
            "A_log": v,
            "norm": shape.v_dim,
            "out_proj": shape.value_dim * h,
        }

    @staticmethod
    def saved(
        shape: DeltaNetShape,
        batch: int,
        seq: int,
        e: int,
        weights_train: bool,
        autocast: bool = False,
    ) -> list[Saved]:
        """What the op keeps when its input streams need a gradient (see the module's
        docstring for each term); ``e``: the compute dtype's bytes; ``weights_train``: the
        conv, A_log, dt_bias and the norm's weight train (full finetuning); ``autocast``:
        fp32 weights under a 16-bit autocast (``e`` is then the autocast dtype's bytes)."""
        b, s, f = batch, seq, FP32
        T = b * s
        hv, dk, dv = shape.v_heads, shape.k_dim, shape.v_dim
        n = math.ceil(s / CHUNK)
        P = n * CHUNK
        rows = b * hv * P  # the padded rows of every head
        # the matmuls' dtype (autocast casts both operands, then saves the casts)
        me = e if autocast else f
        items = _inputs(shape, b, s, e, weights_train, autocast)
        items += [
            ("beta padded", rows * f),
            ("v padded", rows * dv * f),
            ("k padded", rows * dk * f),
            ("q padded (scaled)", rows * dk * f),
            ("k·beta", rows * dk * f),
            ("chunk mask (bool)", CHUNK * CHUNK),
        ]
        # In fp32 with nothing to pad, q and k keep a layout that is not (b, h_v, s, d_k)
        # contiguous: the fp32 ``.to`` copies nothing, F.pad's zero padding clones with the
        # strides kept, and the elementwise ops between keep them too. Grouped heads keep
        # repeat_interleave's (b, s, h_v, d_k); equal heads keep the conv output's
        # channel-major (b, h, d_k, s). The q·kᵀ and k_beta·kᵀ matmuls then fold (b, h_v, n)
        # into one batch dim by copying their operands (measured: none with equal heads
        # and one chunk, where kᵀ's chunk is contiguous), and with grouped heads the
        # state loop copies each chunk's decayed kᵀ and query. In 16 bits ``.to(float32,
        # memory_format=contiguous_format)`` copies, and F.pad's padding writes a new
        # contiguous tensor: none of this. Autocast's matmuls keep their own casts.
        unpadded_fp32 = e == f and s == P
        strided = unpadded_fp32 and shape.k_heads != shape.v_heads
        if autocast or strided or (unpadded_fp32 and n >= 2):
            items += [(f"q/k matmul operand copy {i}", rows * dk * me) for i in range(4)]
        items += [
            ("pairwise decay (C-wide)", rows * CHUNK * f),
            ("k_beta·kᵀ (C-wide)", rows * CHUNK * me),
            ("q·kᵀ (C-wide)", rows * CHUNK * me),
            ("UT system (C-wide)", rows * CHUNK * f),
        ]
        if not autocast:  # (autocast's matmuls keep each chunk's cast instead)
            items.append(("intra-chunk attention (C-wide)", rows * CHUNK * f))
        items += [
            ("new values (UT solve)", rows * dv * f),
            ("k_cumdecay (UT solve)", rows * dk * f),
            ("exp(cumulative decay), k_beta's", rows * f),
            ("exp(cumulative decay), q's", rows * f),
        ]
        # The last chunk's state update makes a state nothing reads: its graph is dropped
        # in forward with what it alone kept (the decayed key, its decay and the chunks'
        # decays where there is one chunk; its kᵀ copy)
        if n >= 2:
            items += [
                ("exp(decay to the chunk's end)", rows * f),
                ("chunk decays", b * hv * n * f),
            ]
        rows_dk = rows * dk
        items += _chunk_loop(shape, b, n, e, autocast, strided, rows_dk)
        items += _gated_norm(shape, T, e, weights_train, autocast)
        return [
            Saved(f"gated deltanet: {what}", size, Kind.LINEAR_ATTENTION, Side.ATTENTION)
            for what, size in items
        ]

    @staticmethod
    def forward_transient(
        shape: DeltaNetShape,
        batch: int,
        seq: int,
        e: int,
        graph: bool,
        weights_train: bool = False,
        autocast: bool = False,
    ) -> int:
        """The layer's forward peak above what it holds at its end: from its input
        projections' outputs to out_proj's, the most bytes live at once beyond what was
        live before the layer, less what is live after it (its output, T·hidden·e, and
        with ``graph`` what autograd keeps: ``saved`` plus out_proj's input T·value_dim·e
        where ``weights_train``; the layer's input is the caller's). ``graph``: grad
        mode, a stream of the input needing a gradient; without it (no_grad, as
        reentrant checkpointing runs a layer's first forward; non-reentrant's first
        forward is not measured) nothing is kept and the transient is the whole peak
        but the output; its recompute in backward is the grad-mode forward. ``e``: the
        weights' bytes (2 or 4). ``autocast``: fp32 weights under a 16-bit autocast (``e`` its dtype's bytes;
        ftmem's bf16-mixed): the linears' weight casts (kept: saved, or cached where
        the weight trains) and input casts, the conv's, the matmuls' casts chunk by
        chunk; what is live after it then holds the five linears' weight casts (with
        ``graph`` or ``weights_train``) and, with both, the input projections' input
        casts (ops.linear's to count). A replay of every allocation and free in order
        (``_forward``), not a fitted sum: the peak op moves with the shapes (the
        decayed query's product, the scan's per-chunk tensors, the C-wide products of
        strided fp32 operands), and the replay finds it. Measured exact to the byte on the real module
        (tests/test_gated_deltanet_transients.py)."""
        replay = _forward(shape, batch, seq, e, graph, weights_train, autocast)
        return replay.peak - replay.live

    @staticmethod
    def backward_workspace(
        shape: DeltaNetShape,
        batch: int,
        seq: int,
        e: int,
        weights_train: bool = False,
        input_grad: bool = True,
        autocast: bool = False,
    ) -> int:
        """The layer's backward peak above its start: from out_proj's incoming gradient
        (held by the caller throughout, not counted) through what the forward saved
        (``saved``, and out_proj's input where ``weights_train``: freed node by node as
        autograd releases it) to the input's gradient (T·hidden·e where
        ``input_grad``, counted: the block's outgoing one). ``weights_train``: the
        conv, A_log, dt_bias, the norm's weight and the five projections train (full
        finetuning); their gradients (``layer_parameters`` × e, kept for the step) are
        allocated as the backward reaches them and count where made before the peak
        (out_proj's and the norm's weight's are). ``input_grad`` False: the lowest
        trained layer, whose input needs no gradient (the projections' weight
        gradients only). ``e``: the weights' bytes. ``autocast``: fp32 weights under a
        16-bit autocast left before the backward (``e`` its dtype's bytes): every
        matmul's and linear's gradients in 16 bits, each cast's backward to fp32 after
        (the input's gradient T·hidden·4, the parameters' fp32), the saved casts freed
        where their nodes ran.

        A replay (``_backward``): every node in autograd's order (the ready node with
        the highest sequence number first), its gradients allocated, its saved tensors
        freed once their last node ran, each multi-use tensor's gradients summed out
        of place as the CPU tracker sees them (on a GPU without a dispatch mode the
        sums after the first are in place: equal or lower). The peak is in the UT
        solves' backward, where the C-wide gradients of the pairwise decay, the UT
        system and the intra-chunk attention meet (three chunks: at the intra-chunk
        attention's per-chunk sum). Measured exact to the byte
        (tests/test_gated_deltanet_transients.py)."""
        return _backward(shape, batch, seq, e, weights_train, input_grad, autocast).peak


def _chunk_loop(
    shape: DeltaNetShape, b: int, n: int, e: int, autocast: bool, strided: bool, rows_dk: int
) -> list[tuple[str, int]]:
    """What the scan over the n chunks keeps (torch_chunk_gated_delta_rule's second phase);
    ``rows_dk``: the elements of the whole padded q or k."""
    f, hv, dk, dv = FP32, shape.v_heads, shape.k_dim, shape.v_dim
    items: list[tuple[str, int]] = []
    state, v_new = b * hv * dk * dv, b * hv * CHUNK * dv
    part = b * hv * CHUNK * dk  # one chunk of q or k
    if autocast:
        # per chunk: S_i's cast twice (for k_cumdecay's and q's gradients), the casts
        # of k_cumdecay's and q's chunks where S_i needs a gradient (i >= 1), of the
        # intra-chunk attention and v_new; and, but for the last (dropped) update,
        # S_i in fp32 (for the chunk decay's gradient), kᵀ's and v_new's casts
        for i in range(n):
            items += [(f"chunk {i}: state cast", state * e)] * 2
            if i >= 1:
                items += [(f"chunk {i}: k_cumdecay cast", part * e)]
                items += [(f"chunk {i}: query cast", part * e)]
            items += [(f"chunk {i}: intra-chunk attention cast", b * hv * CHUNK**2 * e)]
            items += [(f"chunk {i}: v_new cast", v_new * e)]
            if i < n - 1:
                items += [(f"chunk {i}: state (fp32)", state * f)]
                items += [(f"chunk {i}: decayed kᵀ cast", part * e)]
                items += [(f"chunk {i}: v_new cast for the state", v_new * e)]
    else:
        if strided:  # each chunk's decayed kᵀ copied, and its query from the second on
            items += [(f"chunk {i}: decayed kᵀ copy", part * f) for i in range(n - 1)]
            items += [(f"chunk {i}: decayed query copy", part * f) for i in range(1, n)]
        elif n >= 2:  # (chunk i >= 1 reads a state that needs a gradient)
            items += [("decayed key", rows_dk * f), ("decayed query", rows_dk * f)]
        items += [(f"chunk {i}: state", state * f) for i in range(n)]
        items += [(f"chunk {i}: v_new", v_new * f) for i in range(n)]
    return items


def _inputs(
    shape: DeltaNetShape, b: int, s: int, e: int, weights_train: bool, autocast: bool
) -> list[tuple[str, int]]:
    """The conv, beta, g, and l2norm's q and k (Qwen3_5GatedDeltaNet.forward up to the
    delta rule, and the rule's first lines)."""
    f, hv, dk, T = FP32, shape.v_heads, shape.k_dim, b * s
    items: list[tuple[str, int]] = [
        # (Qwen3-Next's: the concatenation of q, k and v)
        ("conv input (in_proj_qkv's output; autocast: its cast)", T * shape.conv_dim * e),
        (
            "silu input (the conv's padded output)",
            b * shape.conv_dim * (s + shape.conv_kernel - 1) * e,
        ),
        ("beta (sigmoid output)", T * hv * e),
        ("softplus input (fp32)", T * hv * f),
        ("-exp(A_log) (fp32)", hv * f),
    ]
    if autocast:  # F.conv1d's 16-bit copy of the fp32 weight, kept frozen or not
        items.append(("conv weight cast", shape.conv_dim * shape.conv_kernel * e))
    if weights_train:
        items += [("exp(A_log) (fp32)", hv * f), ("softplus output (fp32)", T * hv * f)]
    if shape.k_heads == shape.v_heads and e == f:
        # ``.to(float32, memory_format=contiguous_format)`` of an fp32 transposed view
        # is no copy: l2norm keeps the views of silu's output, q, k and v in one storage
        items.append(("silu output (l2norm's q and k read views of it)", T * shape.conv_dim * f))
    for name in ("q", "k"):
        if shape.k_heads != shape.v_heads or e != f:  # repeat_interleave's, or the cast
            items.append((f"{name}: fp32 (l2norm input)", b * hv * s * dk * f))
        items.append((f"{name}: l2norm rstd", b * hv * s * f))
    return items


def _gated_norm(
    shape: DeltaNetShape, T: int, e: int, weights_train: bool, autocast: bool
) -> list[tuple[str, int]]:
    """Qwen3_5RMSNormGated over the delta rule's output, gated by silu(z)."""
    f, hv, vd = FP32, shape.v_heads, shape.value_dim
    items: list[tuple[str, int]] = []
    # weight · normalised is in the weight's dtype where that is wider (fp32 weights
    # under autocast), and saved by the product with silu's fp32 output
    product = f if autocast else e
    gate = ("gated norm: fp32 gate (silu input)", T * vd * f)
    if shape.fused and e == f and shape.k_heads == shape.v_heads:
        # z is a view of in_proj_qkvz's output (one value head per key head: its
        # reshapes need no copy) and the fp32 ``.to`` none: silu keeps that output
        gate = (
            "gated norm: gate, a view of in_proj_qkvz's output",
            T * (vd + shape.conv_dim) * f,
        )
    items += [
        ("gated norm: fp32 input", T * vd * f),
        ("gated norm: rstd", T * hv * f),
        gate,
        ("gated norm: silu output", T * vd * f),
        ("gated norm: weighted normalised", T * vd * product),
    ]
    if weights_train:
        items.append(("gated norm: normalised (for its weight)", T * vd * e))
    return items


class _Tensor:
    """One storage of the replay: its bytes, whether a Python name still holds it and
    whether autograd keeps it (a saved tensor)."""

    __slots__ = ("alive", "kept", "named", "nbytes")

    def __init__(self, nbytes: int, kept: bool) -> None:
        self.nbytes, self.kept, self.named, self.alive = nbytes, kept, True, True


class _Replay:
    """The storages a run of the layer allocates and frees, in order: ``live`` the bytes
    held now, ``peak`` the most held at once (each moment is the sum of what is live
    when a tensor is made). With ``graph`` (grad mode) a tensor marked kept outlives its
    Python names, as autograd's saved tensors do; ``log`` records each allocation and
    free (the tests compare it with the real module's)."""

    def __init__(self, graph: bool) -> None:
        self.graph = graph
        self.live = self.peak = 0
        self.log: list[tuple[str, int]] = []

    def new(self, nbytes: int, kept: bool = False) -> _Tensor:
        t = _Tensor(nbytes, kept and self.graph)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        self.log.append(("alloc", nbytes))
        return t

    def drop(self, *tensors: _Tensor) -> None:
        """The last Python name of each tensor is gone: freed unless autograd keeps it."""
        for t in tensors:
            t.named = False
            if t.alive and not t.kept:
                self._free(t)

    def release(self, *tensors: _Tensor) -> None:
        """Autograd let go of each tensor (the node that saved it was dropped)."""
        for t in tensors:
            t.kept = False
            if t.alive and not t.named:
                self._free(t)

    def gone(self, nbytes: int) -> None:
        """A tensor that was live before the replay began (what the forward saved) is
        freed: its last saving node has run."""
        self.live -= nbytes
        self.log.append(("free", nbytes))

    def _free(self, t: _Tensor) -> None:
        t.alive = False
        self.live -= t.nbytes
        self.log.append(("free", t.nbytes))


def _forward(
    shape: DeltaNetShape,
    b: int,
    s: int,
    e: int,
    graph: bool,
    weights_train: bool,
    autocast: bool = False,
) -> _Replay:
    """Replay the layer's forward (its input projections to out_proj's output), as
    transformers 5.25 runs it on the torch path: Qwen3_5GatedDeltaNet.forward (or
    Qwen3NextGatedDeltaNet.forward, ``shape.fused``), causal_conv1d_fn,
    torch_chunk_gated_delta_rule and Qwen3_5RMSNormGated, each allocation and each free
    where the last name of a tensor goes (a local reassigned, a temporary consumed, the
    function's locals at its return). ``graph``: grad mode, where what autograd saves
    (``GatedDeltaNet.saved``) stays."""
    run = _ForwardRun(shape, b, s, e, graph, weights_train, autocast)
    silu, z, owned = run.projections()
    beta, g = run.gates()
    attn = run.delta_rule(silu)
    run.gated_norm_and_out(attn, z, [*owned, silu, beta, g])
    return run.r


class _ForwardRun:
    """The layer's forward, phase by phase, on one replay (``_forward``)."""

    def __init__(
        self,
        shape: DeltaNetShape,
        b: int,
        s: int,
        e: int,
        graph: bool,
        weights_train: bool,
        autocast: bool = False,
    ) -> None:
        self.r, self.shape, self.b, self.s, self.e = _Replay(graph), shape, b, s, e
        self.train, self.autocast, self.graph = weights_train, autocast, graph
        self.T, self.hv = b * s, shape.v_heads
        self.n = math.ceil(s / CHUNK)
        self.P = self.n * CHUNK
        self.rows = b * self.hv * self.P  # the padded rows of every head
        self.wide = e != FP32  # 16-bit activations: every `.to(float32)` copies
        # 16-bit parameters (not autocast's fp32 ones): A_log.float() copies
        self.half_params = self.wide and not autocast
        self.grouped = shape.k_heads != self.hv
        # fp32 without padding: q and k keep strided layouts, and the matmuls copy them
        # (``GatedDeltaNet.saved``)
        unpadded_fp32 = not self.wide and s == self.P
        self.strided = unpadded_fp32 and self.grouped
        self.matmul_copies = self.strided or (unpadded_fp32 and self.n >= 2)

    def _fp32(self, cast: int, nbytes: int, kept: bool = False) -> _Tensor:
        """An op on ``x.float()``: in 16 bits the cast (``cast`` bytes) is made first and
        goes once the op has run; in fp32 it is no copy."""
        if not self.wide:
            return self.r.new(nbytes, kept)
        copy = self.r.new(cast)
        out = self.r.new(nbytes, kept)
        self.r.drop(copy)
        return out

    def _linear(self, width: int, kept: bool = False) -> _Tensor:
        """An input projection's output (``width`` features a token). Under autocast
        (aten/src/ATen/autocast_mode.cpp cached_cast) first its fp32 weight's 16-bit
        copy, which stays (cached for the autocast region where the weight is a leaf
        that trains, else saved where the input needs a gradient), then its fp32
        input's copy (a block's input is no leaf: not cached), saved where the weight
        trains."""
        r, e, h = self.r, self.e, self.shape.hidden
        if not self.autocast:
            return r.new(self.T * width * e, kept)
        weight = r.new(width * h * e, kept=self.train or self.graph)
        x = r.new(self.T * h * e, kept=self.train)
        out = r.new(self.T * width * e, kept)
        r.drop(x)
        if not self.train:  # (a trained weight's cast stays in the cache)
            r.drop(weight)
        return out

    def _conv(self, qkv: _Tensor) -> _Tensor:
        """causal_conv1d_fn's F.conv1d (padded output). Under autocast the input goes to
        the weight's fp32 first (``hidden_states.to(weight.dtype)``), then conv1d casts
        it and the weight's unsqueezed view (a view: never cached) back to 16 bits and
        keeps both."""
        r, sh, e = self.r, self.shape, self.e
        out = self.b * sh.conv_dim * (self.s + sh.conv_kernel - 1) * e
        if not self.autocast:
            return r.new(out, kept=True)
        wide = r.new(self.T * sh.conv_dim * FP32)
        weight = r.new(sh.conv_dim * sh.conv_kernel * e, kept=True)
        x = r.new(self.T * sh.conv_dim * e, kept=True)
        conv = r.new(out, kept=True)
        r.drop(x, weight, wide)
        return conv

    def projections(self) -> tuple[_Tensor, _Tensor, list[_Tensor]]:
        """The input projections and the conv: (silu's output, z, what the layer's
        forward holds to its end)."""
        r, sh, T, e, wide = self.r, self.shape, self.T, self.e, self.wide
        D, kd, vd, hv = sh.conv_dim, sh.key_dim, sh.value_dim, self.hv
        keep_silu = not wide and not self.grouped  # (l2norm's q and k: views of it)
        # (fp32: the conv keeps its input; autocast: its cast)
        conv_input = not self.autocast
        if not sh.fused:
            qkv = self._linear(D, kept=conv_input)
            z = self._linear(vd, kept=not wide)  # (fp32: the gate silu keeps)
            owned = [z, self._linear(hv), self._linear(hv)]  # (b, a)
            conv = self._conv(qkv)
            silu = r.new(T * D * e, kept=keep_silu)
            r.drop(conv, qkv)
            return silu, z, owned
        # fix_query_key_value_ordering splits per key head; the reshapes that merge the
        # heads copy (value, z, b, a with grouped heads; q, k and v for the conv's cat)
        qkvz = self._linear(D + vd, kept=not wide and not self.grouped)  # (z: a view)
        owned = [qkvz, self._linear(2 * hv)]
        if self.grouped:
            v_copy = r.new(T * vd * e)
            z = r.new(T * vd * e, kept=not wide)
            owned += [z, r.new(T * hv * e), r.new(T * hv * e)]  # (b, a)
            q_copy, k_copy = r.new(T * kd * e), r.new(T * kd * e)
        else:  # (z, b and a: views of the projections' outputs)
            z = qkvz
            q_copy, k_copy, v_copy = r.new(T * kd * e), r.new(T * kd * e), r.new(T * vd * e)
        qkv = r.new(T * D * e, kept=conv_input)  # the cat: the conv's input
        conv = self._conv(qkv)
        silu = r.new(T * D * e, kept=keep_silu)
        r.drop(conv, qkv, q_copy, k_copy, v_copy)
        return silu, z, owned

    def gates(self) -> tuple[_Tensor, _Tensor]:
        """beta = sigmoid(b) and g = -exp(A_log.float()) * softplus(a.float() + dt_bias)."""
        r, f, T, hv = self.r, FP32, self.T, self.hv
        beta = r.new(T * hv * self.e, kept=True)
        if self.half_params:
            exp = self._fp32(hv * f, hv * f, kept=self.train)
        else:
            exp = r.new(hv * f, kept=self.train)
        neg = r.new(hv * f, kept=True)
        r.drop(exp)
        biased = self._fp32(T * hv * f, T * hv * f, kept=True)
        softplus = r.new(T * hv * f, kept=self.train)
        r.drop(biased)
        g = r.new(T * hv * f)
        r.drop(neg, softplus)
        return beta, g

    def delta_rule(self, silu: _Tensor) -> _Tensor:
        """torch_chunk_gated_delta_rule, to its output in the input's dtype."""
        r, f, C = self.r, FP32, CHUNK
        b, hv, dk, dv, P, rows = (
            self.b,
            self.hv,
            self.shape.k_dim,
            self.shape.v_dim,
            self.P,
            self.rows,
        )
        qp, kp, vp, betap, decayp = self._rule_inputs(silu)
        v_beta, k_beta = r.new(rows * dv * f), r.new(rows * dk * f, kept=True)
        ones = r.new(C * C)
        mask = r.new(C * C, kept=True)
        r.drop(ones)
        cum = r.new(b * hv * P * f)
        # first phase: the C-wide tensors and the UT solves
        diff = r.new(rows * C * f)
        filled = r.new(rows * C * f)
        r.drop(diff)
        pairwise = r.new(rows * C * f, kept=True)
        r.drop(filled)
        # (autocast: the scan's matmuls keep the intra-chunk attention's chunks' casts)
        ut, intra = self._c_wide_product(), self._c_wide_product(kept=not self.autocast)
        exp_k = r.new(b * hv * P * f, kept=True)
        decayed_k_beta = r.new(rows * dk * f)
        r.drop(exp_k)
        solves = [r.new(rows * dv * f, kept=True), r.new(rows * dk * f, kept=True)]
        state = r.new(b * hv * dk * dv * f, kept=True)
        out = r.new(rows * dv * f)
        exp_q = r.new(b * hv * P * f, kept=True)
        # (autocast: the scan's matmuls keep their chunks' casts, not the decayed q, k)
        scanned = not self.strided and not self.autocast
        query = r.new(rows * dk * f, kept=self.n >= 2 and scanned)
        r.drop(exp_q, qp)
        end = r.new(b * hv * P * f)
        exp_end = r.new(b * hv * P * f, kept=True)
        r.drop(end)
        key = r.new(rows * dk * f, kept=scanned)
        r.drop(exp_end, kp)
        chunk_decay = r.new(b * hv * self.n * f, kept=True)
        last = self._scan_autocast(state) if self.autocast else self._scan(state)
        attn = self._rule_output(out)
        r.drop(out, query)  # (the function's locals, at its return)
        if self.n == 1:
            # the only update's graph went with its state: the decayed key, its exp and
            # the chunk decay go with their names (the key's node first)
            r.release(exp_end, key, chunk_decay)
        r.drop(key, vp, betap, decayp, v_beta, k_beta, mask, cum, pairwise, ut, intra)
        r.drop(decayed_k_beta, *solves, chunk_decay, *last)
        return attn

    def _rule_inputs(self, silu: _Tensor) -> list[_Tensor]:
        """q and k repeated to the value heads, everything to fp32, l2norm, the scaling
        and the padding to P: the padded q, k, v, beta and decay."""
        r, f, sh, e = self.r, FP32, self.shape, self.e
        b, hv, dk, dv, P, rows = self.b, self.hv, sh.k_dim, sh.v_dim, self.P, self.rows
        head = b * hv * self.s  # the unpadded rows
        q = k = silu  # (views of silu's output where nothing copies)
        if self.grouped:
            q = r.new(self.T * hv * dk * e, kept=not self.wide)
            k = r.new(self.T * hv * dk * e, kept=not self.wide)
        v32 = beta32 = None
        if self.wide:
            q32, k32 = r.new(head * dk * f, kept=True), r.new(head * dk * f, kept=True)
            v32, beta32 = r.new(head * dv * f), r.new(head * f)
            if self.grouped:
                r.drop(q, k)
            q, k = q32, k32
        normed = []
        for x in (q, k):  # l2norm: x * rsqrt((x * x).sum(-1) + eps)
            square = r.new(head * dk * f)
            total = r.new(head * f)
            r.drop(square)
            plus = r.new(head * f)
            r.drop(total)
            rstd = r.new(head * f, kept=True)
            r.drop(plus)
            normed.append(r.new(head * dk * f))
            r.drop(rstd)
            if x is not silu:
                r.drop(x)
        scaled = r.new(head * dk * f)
        r.drop(normed[0])
        # F.pad to P (a new tensor even with nothing to pad)
        padded = [r.new(rows * d * f, kept=True) for d in (dk, dk, dv)]
        r.drop(scaled, normed[1], *([v32] if v32 else []))
        padded += [r.new(b * hv * P * f, kept=True), r.new(b * hv * P * f)]  # beta, decay
        if beta32 is not None:
            r.drop(beta32)
        return padded

    def _c_wide_product(self, kept: bool = True) -> _Tensor:
        """k_beta @ kᵀ or q @ kᵀ (its operands copied where strided), times the pairwise
        decay."""
        r, wide = self.r, self.rows * CHUNK * FP32
        if self.autocast:  # both operands cast to 16 bits, kept; the product promotes
            a_cast = r.new(self.rows * self.shape.k_dim * self.e, kept=True)
            b_cast = r.new(self.rows * self.shape.k_dim * self.e, kept=True)
            mm = r.new(self.rows * CHUNK * self.e, kept=True)
            r.drop(a_cast, b_cast)
        elif self.matmul_copies:
            a_copy = r.new(self.rows * self.shape.k_dim * FP32, kept=True)
            b_copy = r.new(self.rows * self.shape.k_dim * FP32, kept=True)
            mm = r.new(wide, kept=True)
            r.drop(b_copy, a_copy)
        else:
            mm = r.new(wide, kept=True)
        product = r.new(wide, kept=kept)
        r.drop(mm)
        return product

    def _scan(self, state: _Tensor) -> list[_Tensor]:
        """The second phase, chunk by chunk; gives the last chunk's v_new and
        inter-chunk read (locals to the function's return)."""
        r, f, C = self.r, FP32, CHUNK
        b, hv, dk, dv = self.b, self.hv, self.shape.k_dim, self.shape.v_dim
        piece, v_rows, part = b * hv * dk * dv * f, b * hv * C * dv * f, b * hv * C * dk * f
        v_new: _Tensor | None = None
        inter: _Tensor | None = None
        key_copy: _Tensor | None = None
        for i in range(self.n):
            read = r.new(v_rows)
            fresh = r.new(v_rows, kept=True)
            r.drop(read, *([v_new] if v_new else []))
            v_new = fresh
            q_chunk = r.new(part, kept=i >= 1) if self.strided else None
            fresh = r.new(v_rows)
            r.drop(*([q_chunk] if q_chunk else []), *([inter] if inter else []))
            inter = fresh
            intra_v = r.new(v_rows)
            total = r.new(v_rows)
            r.drop(intra_v, total)  # (copied into core_attn_out's chunk)
            decayed = r.new(piece)
            key_copy = r.new(part, kept=True) if self.strided else None
            update = r.new(piece)
            if key_copy is not None:
                r.drop(key_copy)
            fresh = r.new(piece, kept=i < self.n - 1)  # (the last state: nothing reads it)
            r.drop(decayed, update, state)
            state = fresh
        # last_recurrent_state = None: the last update's graph goes first (with what
        # only it kept: its kᵀ copy), then the state
        if key_copy is not None:
            r.release(key_copy)
        r.drop(state)
        assert v_new is not None and inter is not None
        return [v_new, inter]

    def _scan_autocast(self, state: _Tensor) -> list[_Tensor]:
        """``_scan`` under autocast: each matmul casts its operands to 16 bits (the
        right one first: C++'s argument order) and gives 16 bits; the casts of the
        state, the intra-chunk attention and v_new are kept, those of k_cumdecay's and
        the query's chunks where the state needs a gradient (i >= 1); the fp32 state
        stays for the chunk decay's gradient, the last update's (with its casts) until
        its graph goes."""
        r, f, e, C = self.r, FP32, self.e, CHUNK
        b, hv, dk, dv = self.b, self.hv, self.shape.k_dim, self.shape.v_dim
        piece, v_rows, part = b * hv * dk * dv, b * hv * C * dv, b * hv * C * dk
        v_new: _Tensor | None = None
        inter: _Tensor | None = None
        saved: list[_Tensor] = []
        for i in range(self.n):
            # v_new = new_values[:, :, i] - k_cumdecay[:, :, i] @ S_i
            s_cast = r.new(piece * e, kept=True)
            kc_cast = r.new(part * e, kept=i >= 1)
            read = r.new(v_rows * e)
            r.drop(kc_cast, s_cast)
            fresh = r.new(v_rows * f)
            r.drop(read, *([v_new] if v_new else []))
            v_new = fresh
            # inter = query[:, :, i] @ S_i
            s_cast = r.new(piece * e, kept=True)
            q_cast = r.new(part * e, kept=i >= 1)
            fresh = r.new(v_rows * e)
            r.drop(q_cast, s_cast, *([inter] if inter else []))
            inter = fresh
            # core_attn_out[:, :, i] = inter + intra[:, :, i] @ v_new
            v_cast = r.new(v_rows * e, kept=True)
            intra_cast = r.new(b * hv * C * C * e, kept=True)
            intra_v = r.new(v_rows * e)
            r.drop(intra_cast, v_cast)  # (the last made first, here and below)
            total = r.new(v_rows * e)
            r.drop(intra_v, total)
            # S_{i+1} = S_i * chunk_decay[:, :, i] + key[:, :, i]ᵀ @ v_new
            decayed = r.new(piece * f)
            saved = [r.new(v_rows * e, kept=True), r.new(part * e, kept=True)]
            update = r.new(piece * e)
            r.drop(*reversed(saved))
            fresh = r.new(piece * f, kept=i < self.n - 1)  # (the last: nothing reads it)
            r.drop(decayed, update, state)
            saved.append(state)
            state = fresh
        # last_recurrent_state = None: the last update's graph goes (its matmul's casts,
        # then the state its decay kept), then the state
        r.release(*saved)
        r.drop(state)
        assert v_new is not None and inter is not None
        return [v_new, inter]

    def _rule_output(self, out: _Tensor) -> _Tensor:
        """With two chunks or more the reshape copies (the solves' column-major strides,
        kept by zeros_like); then the cast to the input's dtype (in fp32: the
        transposed slice's contiguous copy where the reshape made none)."""
        r = self.r
        attn = None
        if self.n >= 2:
            attn = r.new(self.rows * self.shape.v_dim * FP32)
            r.drop(out)
        if self.wide or attn is None:
            flat = attn
            attn = r.new(self.T * self.shape.value_dim * self.e)
            if flat is not None:
                r.drop(flat)
        return attn

    def gated_norm_and_out(self, attn: _Tensor, z: _Tensor, held: list[_Tensor]) -> None:
        """torch.cat of the rule's one output, Qwen3_5RMSNormGated(·, z) and out_proj;
        then the forward's locals (``held``, ``attn``) go."""
        r, f, T, e, wide = self.r, FP32, self.T, self.e, self.wide
        vd, hv = self.shape.value_dim, self.hv
        cat = r.new(T * vd * e, kept=not wide)  # (fp32: the norm's input)
        h32 = r.new(T * vd * f, kept=True) if wide else cat
        square = r.new(T * vd * f)
        mean = r.new(T * hv * f)
        r.drop(square)
        plus = r.new(T * hv * f)
        rstd = r.new(T * hv * f, kept=True)
        r.drop(plus)
        normed = r.new(T * vd * f, kept=self.train and not wide)
        r.drop(rstd)
        if wide:
            r.drop(h32)
            cast = r.new(T * vd * e, kept=self.train)
            # (autocast: the fp32 weight times the 16-bit cast gives fp32)
            weighted = r.new(T * vd * (FP32 if self.autocast else e), kept=True)
            r.drop(cast, normed)
        else:
            weighted = r.new(T * vd * f, kept=True)
            r.drop(normed)
        gate = r.new(T * vd * f, kept=True) if wide else z
        act = r.new(T * vd * f, kept=True)
        if wide:
            r.drop(gate)
        result = r.new(T * vd * f)
        r.drop(act, weighted)
        if wide:
            gated = result
            result = r.new(T * vd * e)
            r.drop(gated)
        r.drop(mean, cat)
        # out_proj (its input kept where its weight trains: ops.linear)
        result.kept = self.train and r.graph
        weight = None
        if self.autocast:  # its weight's cast (its input is 16-bit already)
            weight = r.new(vd * self.shape.hidden * e, kept=self.train or r.graph)
        r.new(T * self.shape.hidden * e)
        if weight is not None and not self.train:
            r.drop(weight)
        r.drop(*held[:-3], result, *held[-3:], attn)


class _Grads:
    """Autograd's input buffer for one tensor: the first gradient is taken as is, each
    later one summed out of place (``add``), freeing both (what the CPU tracker sees;
    tests/test_gated_deltanet_transients.py)."""

    def __init__(self, r: _Replay) -> None:
        self.r = r
        self.grad: _Tensor | None = None

    def add(self, grad: _Tensor) -> None:
        if self.grad is None:
            self.grad = grad
            return
        total = self.r.new(grad.nbytes)
        self.r.drop(self.grad, grad)
        self.grad = total

    def take(self) -> _Tensor:
        assert self.grad is not None
        grad, self.grad = self.grad, None
        return grad


def _backward(
    shape: DeltaNetShape,
    b: int,
    s: int,
    e: int,
    weights_train: bool = False,
    input_grad: bool = True,
    autocast: bool = False,
) -> _Replay:
    """Replay the layer's backward (frozen weights, the input needing a gradient) from
    out_proj's incoming gradient to the input's: each node in autograd's order (the
    highest sequence number among the ready ones first), its outputs allocated, its
    incoming gradient and its saved tensors freed where their last user has run."""
    return _BackwardRun(shape, b, s, e, weights_train, input_grad, autocast).run()


class _BackwardRun(_ForwardRun):
    """The backward of ``_ForwardRun``'s forward, on a replay that starts at the
    forward's end (what it saved live: freeing it lowers ``live`` below zero)."""

    def __init__(
        self,
        shape: DeltaNetShape,
        b: int,
        s: int,
        e: int,
        weights_train: bool,
        input_grad: bool,
        autocast: bool = False,
    ) -> None:
        super().__init__(shape, b, s, e, False, weights_train, autocast)
        self.input_grad = input_grad

    def _projection(self, x: _Grads, grad: _Tensor, width: int) -> None:
        """An input projection's backward: its weight's gradient first, then the
        input's (where it needs one), summed into ``x``. Under autocast both in 16
        bits, then the saved casts go (the weight's, the input's), then the casts'
        backwards to fp32 (the input's first: made later in forward)."""
        r, e, T, h = self.r, self.e, self.T, self.shape.hidden
        weight16 = self._weight_grad16(width * h)
        if not self.input_grad:
            r.drop(grad)
            if self.autocast and self.train:
                r.gone(T * h * e)  # the input's cast
            self._weight_grad32(weight16)
            return
        part = r.new(T * h * e)
        r.drop(grad)
        if self.autocast:
            r.gone(width * h * e)  # the weight's cast
            if self.train:
                r.gone(T * h * e)  # the input's cast
            wide = r.new(T * h * FP32)
            r.drop(part)
            part = wide
        x.add(part)
        self._weight_grad32(weight16)

    def _weight_grad16(self, elements: int) -> _Tensor | None:
        """A weight read through its cast: under autocast its 16-bit gradient (given;
        ``_weight_grad32`` makes the fp32 one), else its gradient (``_weight_grad``)."""
        if self.autocast and self.train:
            return self.r.new(elements * self.e)
        self._weight_grad(elements)
        return None

    def _weight_grad32(self, weight16: _Tensor | None) -> None:
        """The cast's backward: the fp32 gradient of ``_weight_grad16``'s."""
        if weight16 is not None:
            self.r.new(weight16.nbytes // self.e * FP32)
            self.r.drop(weight16)

    def _weight_grad(self, elements: int) -> None:
        """A parameter's gradient (its .grad: kept to the step, never freed here), in
        the parameters' dtype (fp32 under autocast)."""
        if self.train:
            self.r.new(elements * (FP32 if self.autocast else self.e))

    def run(self) -> _Replay:
        """The whole backward, in autograd's order: the norm's, the scan's, the first
        phase's and the inputs' (out_proj's incoming gradient is the caller's)."""
        attn = self.norm_backward()
        scan = self.scan_backward_autocast if self.autocast else self.scan_backward
        grads = scan(attn)
        self.first_phase_backward(*grads)
        return self.r

    def norm_backward(self) -> _Tensor:
        """out_proj's input gradient through the gated norm and the casts, to the
        padded output's (b, h_v, P, d_v) gradient."""
        r, f, T, e, wide = self.r, FP32, self.T, self.e, self.wide
        vd, hv = self.shape.value_dim, self.hv
        weight16 = self._weight_grad16(self.shape.hidden * vd)  # out_proj: gradᵀ @ input
        grad = r.new(T * vd * e)  # grad @ W
        if self.autocast:
            r.gone(self.shape.hidden * vd * e)  # its weight's cast
        if self.train:
            r.gone(T * vd * e)  # out_proj's input
        self._weight_grad32(weight16)
        if wide:  # (the cast's backward)
            g32 = r.new(T * vd * f)
            r.drop(grad)
            grad = g32
        act_grad = r.new(T * vd * f)  # (grad · weighted)
        weighted_grad = r.new(T * vd * f)  # (grad · silu's output)
        if self.half_params:  # (autocast: the weighted product is fp32)
            cast = r.new(T * vd * e)
            r.drop(weighted_grad)
            weighted_grad = cast
        r.drop(grad)
        r.gone(T * vd * f)  # silu's output
        r.gone(T * vd * (e if self.half_params else f))  # the weighted product
        gate_grad = r.new(T * vd * f)  # silu_backward
        r.drop(act_grad)
        gate = T * vd * f  # the fp32 gate (fp32: z itself)
        if self.shape.fused and not wide and not self.grouped:
            gate = T * (vd + self.shape.conv_dim) * f  # (z: a view of in_proj_qkvz's output)
        r.gone(gate)
        if wide:
            self.z_grad = r.new(T * vd * e)
            r.drop(gate_grad)
        else:
            self.z_grad = gate_grad
        normed_grad = r.new(T * vd * (e if self.half_params else f))  # (grad · weight)
        if self.train:  # the norm's weight: grad · normalised, summed over the rows
            part = r.new(T * vd * (e if self.half_params else f))
            self._weight_grad(self.shape.v_dim)
            r.drop(part)
        if self.autocast:  # (fp32, to the normalised cast's dtype)
            cast = r.new(T * vd * e)
            r.drop(normed_grad)
            normed_grad = cast
        r.drop(weighted_grad)
        if self.train:
            r.gone(T * vd * (e if wide else f))  # the normalised tensor (cast)
        if wide:
            g32 = r.new(T * vd * f)
            r.drop(normed_grad)
            normed_grad = g32
        rstd_part = r.new(T * vd * f)
        h_grad = r.new(T * vd * f)
        total = r.new(T * hv * f)
        r.drop(rstd_part, normed_grad)
        cube, part = r.new(T * hv * f), r.new(T * hv * f)  # rsqrt's backward
        mean_grad = r.new(T * hv * f)
        r.drop(part, cube, total)
        r.gone(T * hv * f)  # the rstd
        expanded = r.new(T * vd * f)  # mean's backward
        r.drop(mean_grad)
        power, part = r.new(T * vd * f), r.new(T * vd * f)  # x²'s backward
        square_grad = r.new(T * vd * f)
        r.drop(part, power, expanded)
        r.gone(T * vd * f)  # the norm's fp32 input (fp32: the cat's output)
        grad = r.new(T * vd * f)
        r.drop(h_grad, square_grad)
        if wide:  # the norm's .to(float32), then the rule's .to(bfloat16)
            cast = r.new(T * vd * e)
            r.drop(grad)
            grad = r.new(T * vd * f)
            r.drop(cast)
        if self.s == self.P:  # (the [:, :, :s] slice takes it all: no copy)
            return grad
        padded = r.new(self.rows * self.shape.v_dim * f)  # the slice's backward
        r.drop(grad)
        return padded

    def _select(self, into: _Grads, part: _Tensor, nbytes: int) -> None:
        """A slice's backward (zeros of the whole, the part copied in), then summed into
        the whole's gradient."""
        whole = self.r.new(nbytes)
        self.r.drop(part)
        into.add(whole)

    def _mm_backward(
        self, grad: _Tensor, left: int, right: int, right_grad: bool, drop: bool = True
    ) -> tuple[_Tensor, _Tensor | None]:
        """An autocast matmul's backward (``_scan_autocast``): the 16-bit gradients of
        the right operand (``right`` elements, where it needs one: ``right_grad``) and
        the left one (``left``), ``grad`` freed (``drop``: no other node reads it),
        the saved casts gone (the right's; the left's where the right needs a
        gradient), then each cast's backward to fp32, the left's first (made later
        in forward)."""
        r, e = self.r, self.e
        right16 = r.new(right * e) if right_grad else None
        left16 = r.new(left * e)
        if drop:
            r.drop(grad)
        r.gone(right * e)  # (saved for the left's gradient)
        if right_grad:
            r.gone(left * e)
        left32 = r.new(left * FP32)
        r.drop(left16)
        right32 = None
        if right16 is not None:
            right32 = r.new(right * FP32)
            r.drop(right16)
        return left32, right32

    def scan_backward_autocast(self, grad: _Tensor) -> list[_Grads]:
        """``scan_backward`` under autocast: each matmul's backward in 16 bits through
        the casts it saved (``_scan_autocast``), each cast's backward to fp32."""
        r, f, e, C, n = self.r, FP32, self.e, CHUNK, self.n
        b, hv, dk, dv, rows = self.b, self.hv, self.shape.k_dim, self.shape.v_dim, self.rows
        piece, v_rows, part = b * hv * dk * dv, b * hv * C * dv, b * hv * C * dk
        query, k_cumdecay, new_values, intra, key, decays = (_Grads(r) for _ in range(6))
        state, v_new = _Grads(r), _Grads(r)
        incoming = grad
        for i in reversed(range(n)):
            if i < n - 1:  # S_{i+1} = S_i · decay_i + key_iᵀ @ v_new_i
                update = r.new(piece * e)  # (the sum's 16-bit operand)
                key_t, v_part = self._mm_backward(update, part, v_rows, True)
                assert v_part is not None
                v_new.add(v_part)
                self._select(key, key_t, rows * dk * f)
                before = r.new(piece * f)  # grad · S_i (the decay's, before its sum)
                state_grad = r.new(piece * f) if i >= 1 else None  # grad · decay_i
                summed = r.new(b * hv * f)
                r.drop(before)
                r.gone(piece * f)  # S_i
                r.drop(state.take())
                if state_grad is not None:
                    state.add(state_grad)
                self._select(decays, summed, b * hv * n * f)
            # core_attn_out[:, :, i] = ...: CopySlices, the chunk's 16-bit gradient
            result = r.new(rows * dv * f)
            chunk = r.new(v_rows * f)
            zeros = r.new(v_rows * f) if i >= 1 else None  # (for the overwritten chunk)
            chunk16 = r.new(v_rows * e)
            r.drop(*([zeros] if zeros else []), chunk)
            if i >= 1:
                r.drop(incoming)
                incoming = result
            else:
                r.drop(result, incoming)
            # intra_i @ v_new_i (chunk16 is the sum's, read by both its operands)
            intra_part, v_part = self._mm_backward(chunk16, b * hv * C * C, v_rows, True, False)
            assert v_part is not None
            v_new.add(v_part)
            self._select(intra, intra_part, rows * C * f)
            # query_i @ S_i
            q_part, s_part = self._mm_backward(chunk16, part, piece, i >= 1)
            if s_part is not None:
                state.add(s_part)
            self._select(query, q_part, rows * dk * f)
            # v_new = new_values_i - k_cumdecay_i @ S_i
            negated = r.new(v_rows * f)
            negated16 = r.new(v_rows * e)
            r.drop(negated)
            kc_part, s_part = self._mm_backward(negated16, part, piece, i >= 1)
            if s_part is not None:
                state.add(s_part)
            self._select(k_cumdecay, kc_part, rows * dk * f)
            self._select(new_values, v_new.take(), rows * dv * f)
        return [query, k_cumdecay, new_values, intra, key, decays]

    def scan_backward(self, grad: _Tensor) -> list[_Grads]:
        """The chunks in reverse, each chunk's state update before its output; gives
        the gradients of the decayed query, k_cumdecay, new_values, the intra-chunk
        attention, the decayed key and the chunk decays."""
        r, f, C, n = self.r, FP32, CHUNK, self.n
        b, hv, dk, dv, rows = self.b, self.hv, self.shape.k_dim, self.shape.v_dim, self.rows
        piece, v_rows, part = b * hv * dk * dv * f, b * hv * C * dv * f, b * hv * C * dk * f
        query, k_cumdecay, new_values, intra, key, decays = (_Grads(r) for _ in range(6))
        state, v_new = _Grads(r), _Grads(r)
        incoming = grad  # core_attn_out's gradient (CopySlices' results in turn)
        for i in reversed(range(n)):
            if i < n - 1:  # S_{i+1} = S_i · decay_i + key_iᵀ @ v_new_i
                v_new.add(r.new(v_rows))  # key_i @ grad
                key_t = r.new(part)  # grad @ v_newᵀ
                if self.strided:
                    r.gone(part)  # its kᵀ copy
                elif i == 0:
                    r.gone(rows * dk * f)  # the decayed key
                self._select(key, key_t, rows * dk * f)
                before = r.new(piece)  # grad · S_i (the decay's, before its sum)
                state_grad = r.new(piece) if i >= 1 else None  # grad · decay_i
                summed = r.new(b * hv * f)
                r.drop(before, state.take())
                if state_grad is not None:
                    state.add(state_grad)
                self._select(decays, summed, b * hv * n * f)
            # core_attn_out[:, :, i] = ...: CopySlices
            result = r.new(rows * dv * f)
            chunk = r.new(v_rows)
            if i >= 1:
                r.drop(r.new(v_rows))  # (zeros for the overwritten chunk)
                r.drop(incoming)
                incoming = result
            else:
                r.drop(result, incoming)
            # intra_i @ v_new_i
            v_part, intra_part = r.new(v_rows), r.new(b * hv * C * C * f)
            r.gone(v_rows)  # v_new_i
            if i == 0:
                r.gone(rows * C * f)  # the intra-chunk attention
            v_new.add(v_part)
            self._select(intra, intra_part, rows * C * f)
            # query_i @ S_i
            s_part = r.new(piece) if i >= 1 else None
            q_part = r.new(part)
            r.drop(chunk)
            if self.strided and i >= 1:
                r.gone(part)  # its copy
            elif i == 1 and not self.strided:
                r.gone(rows * dk * f)  # the decayed query (saved from chunk 1 on)
            if s_part is not None:
                state.add(s_part)
            self._select(query, q_part, rows * dk * f)
            # v_new = new_values_i - k_cumdecay_i @ S_i
            negated = r.new(v_rows)
            s_part = r.new(piece) if i >= 1 else None
            kc_part = r.new(part)
            r.drop(negated)
            r.gone(piece)  # S_i
            if s_part is not None:
                state.add(s_part)
            self._select(k_cumdecay, kc_part, rows * dk * f)
            self._select(new_values, v_new.take(), rows * dv * f)
        return [query, k_cumdecay, new_values, intra, key, decays]

    def first_phase_backward(self, *grads: _Grads) -> None:
        """From the decays of q and k through the UT solves, the C-wide products, the
        pairwise decay and the cumulative sum, to the padded inputs."""
        r, f, C, n = self.r, FP32, CHUNK, self.n
        b, hv, dk, dv, rows = self.b, self.hv, self.shape.k_dim, self.shape.v_dim, self.rows
        row = b * hv * self.P * f  # one number a padded row
        query, k_cumdecay, new_values, intra, key, decays = grads
        cum, ut, pairwise, k_beta, q_pad, k_pad = (_Grads(r) for _ in range(6))
        if n >= 2:  # chunk_decay = exp(cum_decay[..., -1]), key = key · exp(end - cum)
            exp_grad = r.new(b * hv * n * f)
            r.drop(decays.take())
            r.gone(b * hv * n * f)
            self._select(cum, exp_grad, row)
            done = self._decay_backward(key, k_pad, False)  # (exp(end - cum) gone)
            negated, last = r.new(row), r.new(b * hv * n * f)
            r.drop(done)
            cum.add(negated)
            self._select(cum, last, row)  # (the [..., -1:] slice)
        cum.add(self._decay_backward(query, q_pad, True))  # (exp(cum_decay) gone)
        # the UT solves: k_cumdecay's (made last), then new_values'
        solved = []
        for grad, width in ((k_cumdecay, dk), (new_values, dv)):
            solved.append(r.new(rows * width * f))  # solve(Aᵀ, grad)
            product = r.new(rows * C * f)  # -grad @ Xᵀ
            negated = r.new(rows * C * f)
            r.drop(product)
            lower = r.new(rows * C * f)  # tril(-1)
            r.drop(negated, grad.take())
            if width == dv:
                r.gone(rows * C * f)  # the UT system
            r.gone(rows * width * f)  # the solve's output
            ut.add(lower)
        # decayed_k_beta = k_beta · exp(cum_decay)
        exp_part, beta_part = r.new(rows * dk * f), r.new(rows * dk * f)
        summed = r.new(row)
        r.drop(exp_part, solved[0])
        if self.matmul_copies or self.autocast:
            r.gone(rows * dk * f)  # k·beta (k_beta @ kᵀ kept copies or casts)
        done = r.new(row)
        r.drop(summed)
        r.gone(row)
        cum.add(done)
        k_beta.add(beta_part)
        # intra = (q @ kᵀ) · pairwise, then ut = (k_beta @ kᵀ) · pairwise
        for grad, a_pad in ((intra, q_pad), (ut, k_beta)):
            if self.autocast:
                self._c_wide_backward_autocast(grad, a_pad, k_pad, pairwise)
                continue
            pair_part, product = r.new(rows * C * f), r.new(rows * C * f)
            r.drop(grad.take())
            r.gone(rows * C * f)  # the matmul's output
            pairwise.add(pair_part)
            first, second = r.new(rows * dk * f), r.new(rows * dk * f)
            r.drop(product)
            for _ in range(2 if self.matmul_copies else 1):
                r.gone(rows * dk * f)  # its left operand (q padded, k·beta), or both copies
            a_pad.add(second)
            k_pad.add(first)
        # pairwise = exp(masked_fill(cum_i - cum_j))
        exp_grad = r.new(rows * C * f)
        r.drop(pairwise.take())
        r.gone(rows * C * f)
        filled = r.new(rows * C * f)
        r.drop(exp_grad)
        r.gone(C * C)  # the mask
        negated, first, second = r.new(rows * C * f), r.new(row), r.new(row)
        r.drop(negated, filled)
        cum.add(second)
        cum.add(first)
        flipped, summed, decay = r.new(row), r.new(row), r.new(row)  # cumsum's backward
        r.drop(summed, flipped, cum.take())
        self._inputs_backward(solved[1], k_beta.take(), q_pad, k_pad, decay)

    def _c_wide_backward_autocast(
        self, grad: _Grads, a_pad: _Grads, k_pad: _Grads, pairwise: _Grads
    ) -> None:
        """(a @ kᵀ) · pairwise under autocast: the matmul's 16-bit output times the fp32
        pairwise decay, the 16-bit matmul's backward through its saved casts, each
        cast's backward to fp32 (a's first)."""
        r, f, e, C = self.r, FP32, self.e, CHUNK
        wide, narrow = self.rows * C, self.rows * self.shape.k_dim
        pair_part, product = r.new(wide * f), r.new(wide * f)
        product16 = r.new(wide * e)
        r.drop(product, grad.take())
        r.gone(wide * e)  # the matmul's output
        pairwise.add(pair_part)
        k16, a16 = r.new(narrow * e), r.new(narrow * e)
        r.drop(product16)
        r.gone(narrow * e)  # kᵀ's cast
        r.gone(narrow * e)  # a's cast
        a32 = r.new(narrow * f)
        r.drop(a16)
        a_pad.add(a32)
        k32 = r.new(narrow * f)
        r.drop(k16)
        k_pad.add(k32)

    def _decay_backward(self, grad: _Grads, pad: _Grads, query: bool) -> _Tensor:
        """x = padded · exp(d): exp(d)'s gradient summed over the width, then exp's
        backward (given; the saved exp freed), the padded operand's kept in ``pad``."""
        r, f = self.r, FP32
        row = self.b * self.hv * self.P * f
        width = self.rows * self.shape.k_dim * f
        exp_part, pad_part = r.new(width), r.new(width)
        summed = r.new(row)
        r.drop(exp_part, grad.take())
        if query and (self.matmul_copies or self.autocast):
            r.gone(width)  # q padded (q @ kᵀ kept copies or casts)
        pad.add(pad_part)
        done = r.new(row)  # exp's backward: grad · result
        r.drop(summed)
        r.gone(row)  # the exp
        return done

    def _inputs_backward(
        self, v_beta: _Tensor, k_beta: _Tensor, q_pad: _Grads, k_pad: _Grads, decay: _Tensor
    ) -> None:
        """v·beta and k·beta, the pads, l2norm, the casts, the repeat and the split, the
        gates, the conv and the input projections, to the input's gradient."""
        r, f, sh, e, wide = self.r, FP32, self.shape, self.e, self.wide
        b, hv, dk, dv, rows, T = self.b, self.hv, sh.k_dim, sh.v_dim, self.rows, self.T
        row, head = b * hv * self.P * f, b * hv * self.s
        beta = _Grads(r)
        # the chunked views' backward copies with two chunks or more (the solves'
        # column-major strides merge with the chunk dim by no view)
        v_flat, k_flat = v_beta, k_beta
        if self.n >= 2:
            v_flat = r.new(rows * dv * f)
            r.drop(v_beta)
            k_flat = r.new(rows * dk * f)
            r.drop(k_beta)
        for flat, width, pad in ((k_flat, dk, k_pad), (v_flat, dv, None)):
            beta_part, x_part, summed = r.new(rows * width * f), r.new(rows * width * f), r.new(row)
            r.drop(beta_part, flat)
            if pad is not None:
                r.gone(rows * dk * f)  # k padded
                pad.add(x_part)
                v_grad = None
            else:
                r.gone(row)  # beta padded
                r.gone(rows * dv * f)  # v padded
                v_grad = x_part
            beta.add(summed)
        assert v_grad is not None
        # the pads' backward: decay, beta, v, k, q
        unpadded = []
        for grad, width in ((decay, 1), (beta.take(), 1), (v_grad, dv)):
            unpadded.append(r.new(head * width * f))
            r.drop(grad)
        k_grad = r.new(head * dk * f)
        r.drop(k_pad.take())
        q_grad = r.new(head * dk * f)
        r.drop(q_pad.take())
        scaled = r.new(head * dk * f)
        r.drop(q_grad)
        # (equal heads in fp32: x is a view of silu's output, freed after q's)
        views = not wide and not self.grouped
        k_grad = self._l2norm_backward(k_grad, 0 if views else head * dk * f)
        q_grad = self._l2norm_backward(scaled, T * sh.conv_dim * f if views else head * dk * f)
        decay_grad, beta_grad, v_grad = unpadded
        if wide:  # the .to(float32)s: beta, v, k, q
            for grad, nbytes in ((beta_grad, head * e), (v_grad, head * dv * e)):
                cast = r.new(nbytes)
                r.drop(grad)
                if grad is beta_grad:
                    beta_grad = cast
                else:
                    v_grad = cast
            casts = []
            for grad in (k_grad, q_grad):
                casts.append(r.new(head * dk * e))
                r.drop(grad)
            k_grad, q_grad = casts
        if self.grouped:  # repeat_interleave's backward: a sum over the repeats
            sums = []
            for grad in (k_grad, q_grad):
                sums.append(r.new(T * sh.key_dim * e))
                r.drop(grad)
            k_grad, q_grad = sums
        # tensor_split's slices: g, beta, v, k, q
        sliced = []
        for grad, nbytes in (
            (decay_grad, T * hv * f),
            (beta_grad, T * hv * e),
            (v_grad, T * sh.value_dim * e),
            (k_grad, T * sh.key_dim * e),
            (q_grad, T * sh.key_dim * e),
        ):
            sliced.append(r.new(nbytes))
            r.drop(grad)
        g_grad, beta_grad, v_grad, k_grad, q_grad = sliced
        a_grad, b_grad = self._gates_backward(g_grad, beta_grad)
        self._conv_backward(q_grad, k_grad, v_grad, a_grad, b_grad)

    def _gates_backward(self, g_grad: _Tensor, beta_grad: _Tensor) -> tuple[_Tensor, _Tensor]:
        """g = -exp(A_log.float()) · softplus(a.float() + dt_bias) and beta = sigmoid(b):
        the gradients of a and b (and where they train, A_log's and dt_bias's)."""
        r, f, T, hv, e, wide = self.r, FP32, self.T, self.hv, self.e, self.wide
        part = r.new(T * hv * f)  # (grad · -exp(A_log))
        neg_sum = None
        if self.train:  # -exp(A_log)'s: grad · softplus, summed
            neg_part = r.new(T * hv * f)
            neg_sum = r.new(hv * f)
            r.drop(neg_part)
        r.drop(g_grad)
        if self.train:
            r.gone(T * hv * f)  # softplus's output
        r.gone(hv * f)  # -exp(A_log)
        a_grad = r.new(T * hv * f)  # softplus_backward
        r.drop(part)
        r.gone(T * hv * f)  # softplus's input
        if self.train:  # dt_bias: the sum over the rows, in its dtype
            total = r.new(hv * f)
            if self.half_params:  # (else the sum is the gradient)
                self._weight_grad(hv)
                r.drop(total)
        if wide:
            cast = r.new(T * hv * e)
            r.drop(a_grad)
            a_grad = cast
        if neg_sum is not None:  # A_log: neg's, exp's, the .float()'s backward
            negated = r.new(hv * f)
            r.drop(neg_sum)
            exp_grad = r.new(hv * f)
            r.drop(negated)
            r.gone(hv * f)  # exp(A_log)
            if self.half_params:
                self._weight_grad(hv)
                r.drop(exp_grad)
        b_grad = r.new(T * hv * e)
        r.drop(beta_grad)
        r.gone(T * hv * e)
        return a_grad, b_grad

    def _l2norm_backward(self, grad: _Tensor, x_bytes: int) -> _Tensor:
        """x · rsqrt((x · x).sum(-1) + eps): the gradient of x (its three uses summed);
        ``x_bytes``: the storage freed with x (none where another view keeps it)."""
        r, f, dk = self.r, FP32, self.shape.k_dim
        head = self.b * self.hv * self.s
        inv_part, x_part, summed = r.new(head * dk * f), r.new(head * dk * f), r.new(head * f)
        r.drop(inv_part, grad)
        cube, part, rsqrt_grad = r.new(head * f), r.new(head * f), r.new(head * f)
        r.drop(part, cube, summed)
        r.gone(head * f)  # the rstd
        first, second = r.new(head * dk * f), r.new(head * dk * f)  # x · x
        r.drop(rsqrt_grad)
        if x_bytes:
            r.gone(x_bytes)  # x (fp32)
        total = r.new(head * dk * f)
        r.drop(x_part)
        grad = r.new(head * dk * f)
        r.drop(total, second, first)
        return grad

    def _conv_backward(
        self, q: _Tensor, k: _Tensor, v: _Tensor, a: _Tensor, b_grad: _Tensor
    ) -> None:
        """The split's cat, silu, the conv's slice and the conv, then the input
        projections' input gradients summed (a's, b's, z's, qkv's)."""
        r, sh, T, e = self.r, self.shape, self.T, self.e
        D = sh.conv_dim
        padded = self.b * D * (self.s + sh.conv_kernel - 1) * e
        cat = r.new(T * D * e)
        r.drop(q, k, v)
        silu = r.new(T * D * e)
        r.drop(cat)
        r.gone(padded)  # the conv's output
        sliced = r.new(padded)
        r.drop(silu)
        conv = r.new(T * D * e)
        weight16 = self._weight_grad16(D * sh.conv_kernel)
        r.drop(sliced)
        r.gone(T * D * e)  # the conv's input (autocast: its cast)
        if self.autocast:  # the casts' backwards: the input's, the weight's, the .to's
            r.gone(D * sh.conv_kernel * e)  # the weight's cast
            wide = r.new(T * D * FP32)
            r.drop(conv)
            self._weight_grad32(weight16)
            conv = r.new(T * D * e)
            r.drop(wide)
        x = _Grads(r)
        if sh.fused:
            # the splits' backward: b and a into in_proj_ba's gradient, then q, k, v
            # (the conv's, by key head) and z into in_proj_qkvz's; ba's matmul first
            ba = r.new(T * 2 * self.hv * e)
            r.drop(b_grad, a)
            qkvz = r.new(T * (D + sh.value_dim) * e)
            r.drop(conv, self.z_grad)
            self._projection(x, ba, 2 * self.hv)
            self._projection(x, qkvz, D + sh.value_dim)
            return
        for grad, width in ((a, self.hv), (b_grad, self.hv), (self.z_grad, sh.value_dim)):
            self._projection(x, grad, width)
        transposed = r.new(T * D * e)  # (the conv's (b, D, s) gradient made contiguous)
        r.drop(conv)
        self._projection(x, transposed, D)
