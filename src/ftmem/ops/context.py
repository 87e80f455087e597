"""What an op is given: the layer's shapes and dtypes, and what needs a gradient in it."""

from __future__ import annotations

from dataclasses import dataclass

from ftmem.arch import Architecture, Linear
from ftmem.dtypes import BYTES_PER_ELEMENT
from ftmem.methods import MethodPlan
from ftmem.precision import Dtypes
from ftmem.profiles import compiled_layers
from ftmem.run import RunConfig


@dataclass(frozen=True, slots=True)
class BlockState:
    """What needs a gradient in one block."""

    input_requires_grad: bool
    weights_trainable: bool  # the block's own base weights train (full / freeze)
    adapted: frozenset[str]  # module paths of linears with adapters
    # BitFit: linears whose bias trains (their output needs a gradient; they keep nothing)
    biased: frozenset[str] = frozenset()
    norm_bias: bool = False  # LayerNorm biases train: each LayerNorm keeps its input
    # IA³: linears whose output (scaled) or input (scaled_in, feed-forward) is rescaled
    scaled: frozenset[str] = frozenset()
    scaled_in: frozenset[str] = frozenset()
    # partial: linears (module paths) whose own weight trains, and whether norms train
    trained: frozenset[str] = frozenset()
    norms_trained: bool = False
    # partial / LN tuning: every trained norm sits after the attention (Qwen2's LN-tuning
    # default, post_attention_layernorm alone), so the attention side keeps nothing for them
    after_attention_norms_only: bool = False
    # partial: the per-head query/key norms train (arch.qk_norm): q and k need a gradient
    qk_norms_trained: bool = False
    # bottleneck adapters: linears whose output goes through one
    bottleneck: frozenset[str] = frozenset()
    # LLaMA-Adapter: the block holds a gated adaption prompt; v2's AdapterV2Linear modules
    gated_prompt: bool = False
    v2_scaled: frozenset[str] = frozenset()
    # LoHa: linears with a Hadamard-product adapter (its ΔW needs their output's gradient)
    hadamard: frozenset[str] = frozenset()
    kronecker: frozenset[str] = frozenset()  # LoKr's
    miss: frozenset[str] = frozenset()  # MiSS's blocks
    road: frozenset[str] = frozenset()  # RoAd's rotations of the output
    rotated: frozenset[str] = frozenset()  # BOFT's
    block_rotated: frozenset[str] = frozenset()  # OFT's
    vectored: frozenset[str] = frozenset()  # VeRA's (its vectors need the output's gradient)
    spectral: frozenset[str] = frozenset()  # FourierFT's
    hira: frozenset[str] = frozenset()  # HiRA's
    psoft: frozenset[str] = frozenset()  # PSOFT's
    householder: frozenset[str] = frozenset()  # HRA's
    banked: frozenset[str] = frozenset()  # RandLoRA's and VB-LoRA's
    shira: frozenset[str] = frozenset()  # SHiRA's (its rebuilt weight's mm)
    supertuning: frozenset[str] = frozenset()  # Super-Tuning's (its rebuilt weight's mm)
    wavelet: frozenset[str] = frozenset()  # WaveFT's
    circulant: frozenset[str] = frozenset()  # C3A's
    beft: frozenset[str] = frozenset()  # BEFT's (a bias on the output: keeps nothing)
    glora: frozenset[str] = frozenset()  # GLoRA's
    peanut: frozenset[str] = frozenset()  # Peanut's
    osf: frozenset[str] = frozenset()  # OSF's

    @property
    def output_grad(self) -> frozenset[str]:
        """Linears whose output needs a gradient for a parameter of their own."""
        return self.own_output_grad | self.adapted

    @property
    def own_output_grad(self) -> frozenset[str]:
        """Linears whose output needs a gradient for a parameter other than LoRA's: a
        trained bias (BitFit), an IA³ vector, a trained weight, a bottleneck adapter,
        adapter v2's bias and scale, a LoHa, LoKr, BOFT, OFT, MiSS, RoAd, VeRA, FourierFT,
        HiRA, PSOFT, HRA, RandLoRA, VB-LoRA, SHiRA, Super-Tuning, WaveFT or C3A adapter."""
        own = self.biased | self.scaled | self.trained | self.bottleneck | self.v2_scaled
        own |= self.miss | self.road | self.vectored | self.spectral | self.hira | self.psoft
        own |= self.householder | self.banked | self.shira | self.wavelet | self.circulant
        own |= self.beft | self.glora
        own |= self.peanut | self.osf | self.supertuning
        return own | self.hadamard | self.kronecker | self.rotated | self.block_rotated

    def weight_trains(self, lin: Linear) -> bool:
        return self.weights_trainable or lin.module in self.trained


@dataclass(frozen=True, slots=True)
class LayerContext:
    """The shapes and dtypes one layer's saved tensors are derived from (T tokens)."""

    arch: Architecture
    run: RunConfig
    plan: MethodPlan
    tokens: int  # b·s (+ virtual tokens later)
    sliding: bool = False  # a sliding-window layer (ops.attention.sliding_window_mask)
    # a layer that reuses a lower layer's keys and values (Architecture.kv_reusing_blocks)
    reusing: bool = False

    @property
    def e(self) -> int:
        return BYTES_PER_ELEMENT[self.plan.dtypes.compute]

    @property
    def quantized_outputs_in_input_dtype(self) -> bool:
        """bitsandbytes' 4-bit linears return their output in their input's dtype: under
        autocast with fp32 non-quantised weights the q/k/v and MLP outputs stay fp32."""
        return self.plan.dtypes.four_bit_outputs_fp32

    @property
    def projection_out_bytes(self) -> int:
        """Bytes per element of a projection's output: the compute dtype, or the residual
        dtype from 4-bit linears under autocast (quantized_outputs_in_input_dtype) and from
        biased linears that add their bias after an autocast matmul (Family
        .bias_added_after_matmul: the fp32 bias promotes the product; falcon-rw)."""
        promoted = bias_promotes_outputs(self.arch, self.plan.dtypes)
        return self.residual if self.quantized_outputs_in_input_dtype or promoted else self.e

    @property
    def compiled(self) -> bool:
        """The layer runs as its own compiled graph (torchtune's per-layer compile)."""
        return compiled_layers(self.run)

    @property
    def residual(self) -> int:
        """Bytes per element of the residual stream (fp32 params under autocast)."""
        return self.plan.dtypes.residual_bytes


def bias_promotes_outputs(arch: Architecture, dtypes: Dtypes) -> bool:
    """The projections answer in the residual's dtype because their bias is added after
    an autocast matmul (Family.bias_added_after_matmul; Falcon's one ``bias`` setting
    gives every linear a bias or none): fp32 under autocast over fp32 weights."""
    biased = arch.attention_qkv_bias or arch.mlp_bias
    return (
        arch.traits.bias_added_after_matmul and biased and dtypes.autocast and dtypes.base == "fp32"
    )
