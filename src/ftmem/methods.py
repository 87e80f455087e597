"""What each finetuning method trains and what it adds to the model.

The result is a list of :class:`TensorGroup`: every parameter tensor of the
(adapted) model, grouped by identical shape, storage and trainability, so that
weights, gradients and optimizer states are sums over a handful of groups.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from math import prod
from typing import NamedTuple

from ftmem import vision_lora, vision_step
from ftmem.adapters import bdlora, deft, glora, gralora, mica, osf
from ftmem.arch import (
    ATTENTION_ROLES,
    MLP_ROLES,
    TOKEN_EMBEDDINGS,
    Architecture,
    Linear,
    Param,
    layout,
    param_path,
    per_layer_outer_params,
)
from ftmem.dtypes import BYTES_PER_ELEMENT, StorageFormat, is_quantized, tensor_bytes
from ftmem.errors import InvalidInputError
from ftmem.ops.gated_deltanet import torch_path_note
from ftmem.precision import Dtypes, resolve_dtypes
from ftmem.profiles import profile_of
from ftmem.regexes import compile_bounded
from ftmem.run import (
    ADAPTER_METHODS,
    KV_PREFIX_METHODS,
    LLAMA_ADAPTER_METHODS,
    PROMPT_METHODS,
    QUANTIZED_BASE_METHODS,
    RunConfig,
    split_patterns,
)
from ftmem.versions import (
    TRANSFORMERS_FALCON_ATTENTION_INTERFACE,
    adalora_ranknum_trains,
    nf4_layout,
    older_than,
    per_expert_linears,
)

DEFAULT_FREEZE_TRAINABLE_LAYERS = 2

# What `ftmem methods` lists: every method the estimator implements, with its source.
METHOD_CATALOG: dict[str, tuple[str, str]] = {
    "full": (
        "every weight trains; gradients and optimizer states for all of them",
        "—",
    ),
    "freeze": (
        "the last N blocks train (--trainable-layers, default 2), the rest is frozen",
        "LLaMA-Factory's freeze tuning; Lee et al. 2019, arXiv:1911.03090",
    ),
    "galore": (
        "every weight trains; Adam's states of the block linears live in a rank-r "
        "projection of their gradients (--galore-rank)",
        "Zhao et al. 2024, arXiv:2403.03507",
    ),
    "partial": (
        "the parameters whose names match --trainable-modules (regular expressions)",
        "Lee et al. 2019, arXiv:1911.03090; axolotl's unfrozen_parameters",
    ),
    "gralora": (
        "peft's GraLoRA: each linear's input and output cut into k blocks, a LoRA of rank "
        "r/k on every pair (--lora-r 32, --gralora-k 2; LoRA's parameter count)",
        "Jung et al. 2025 (GraLoRA), arXiv:2505.20355; peft tuners/gralora",
    ),
    "delora": (
        "peft's DeLoRA: LoRA's A and B with a trained bound λ on the update's norm, scaled by "
        "the frozen weight's column norms (--lora-r 8, --lora-targets q,v)",
        "Bini et al. 2025 (DeLoRA), arXiv:2503.18225; peft tuners/delora",
    ),
    "ln-tuning": (
        "a trainable copy of each norm peft targets runs in its place; the original stays "
        "frozen beside it",
        "Zhao et al. 2023, arXiv:2312.11420; peft's LNTuningConfig",
    ),
    "lora": (
        "low-rank adapters A (r × in) and B (out × r) beside frozen linears",
        "Hu et al. 2021, arXiv:2106.09685",
    ),
    "longlora": (
        "LoRA on q, k, v, o plus trainable embeddings and norms, for long contexts "
        "(shifted sparse attention: the memory of FlashAttention)",
        "Chen et al. 2024, arXiv:2309.12307",
    ),
    "relora": (
        "LoRA on every linear, merged into the 16-bit base every few thousand steps and "
        "restarted; the merge builds each B·A in the adapter dtype",
        "Lialin et al. 2023, arXiv:2307.05695",
    ),
    "qlora": (
        "LoRA over a 4-bit NF4 (or fp4 / int8) base, double-quantised constants",
        "Dettmers et al. 2023, arXiv:2305.14314",
    ),
    "dora": (
        "LoRA plus a magnitude vector per adapted linear; builds the adapted weight each forward",
        "Liu et al. 2024, arXiv:2402.09353",
    ),
    "adalora": (
        "SVD-form LoRA (P·Λ·Q at --lora-r, pruned toward --adalora-target-r): an orthogonal "
        "regulariser in the loss and the rank allocator's three importance tensors per "
        "adapter tensor",
        "Zhang et al. 2023, arXiv:2303.10512; huggingface/peft src/peft/tuners/adalora",
    ),
    "rslora": (
        "LoRA with the rank-stabilised scale alpha/sqrt(r); the same memory as LoRA",
        "Kalajdzievski 2023, arXiv:2312.03732",
    ),
    "bitfit": (
        "only the bias terms (linears and LayerNorms); models without biases are refused",
        "Ben Zaken et al. 2022, arXiv:2106.10199",
    ),
    "adapter": (
        "bottleneck MLPs (h → m → h, residual) after the attention and the MLP "
        "(--adapter-placement houlsby) or after the MLP only (pfeiffer)",
        "Houlsby et al. 2019, arXiv:1902.00751; Pfeiffer et al. 2021, arXiv:2005.00247",
    ),
    "llama-adapter": (
        "LitGPT's LLaMA-Adapter (--framework litgpt): a learned adaption prompt of n tokens "
        "(--adapter-prompt-length, 10) and a zero-init gate per head in the blocks from "
        "--adapter-start-layer (2) up",
        "Zhang et al. 2023, arXiv:2303.16199; Lightning-AI/litgpt litgpt/adapter.py",
    ),
    "llama-adapter-v2": (
        "LitGPT's LLaMA-Adapter v2 (--framework litgpt): llama-adapter plus a learned bias "
        "and scale on every linear (LM head included), and trainable norms",
        "Gao et al. 2023, arXiv:2304.15010; Lightning-AI/litgpt litgpt/adapter_v2.py",
    ),
    "ia3": (
        "learned vectors that rescale the keys, values and FFN intermediate (--ia3-targets)",
        "Liu et al. 2022, arXiv:2205.05638",
    ),
    "loha": (
        "peft's LoHa: ΔW = (w1a·w1b) ⊙ (w2a·w2b)·alpha/r beside frozen linears, built whole "
        "(out × in) in every forward (--loha-rank, --loha-alpha, --loha-targets)",
        "Hyeon-Woo et al. 2022 (FedPara), arXiv:2108.06098; peft tuners/loha",
    ),
    "lokr": (
        "peft's LoKr: ΔW = w1 ⊗ (w2a·w2b)·alpha/r beside frozen linears, built whole (out × in) "
        "in every forward (--lokr-rank, --lokr-alpha, --lokr-targets, --lokr-factor)",
        "Yeh et al. 2024 (LyCORIS), arXiv:2309.14859; peft tuners/lokr",
    ),
    "miss": (
        "peft's MiSS: one trainable r-wide block per frozen linear, added to every r-slice of "
        "its weight (--miss-rank, --miss-init default|bat|mini, --miss-mini-r, --miss-targets)",
        "Kang & Yin 2024 (MiSS, formerly Bone), arXiv:2409.15371; peft tuners/miss",
    ),
    "road": (
        "peft's RoAd: a learned 2-D rotation and scale of each pair of a frozen linear's "
        "outputs (--road-variant road_1|road_2|road_4, --road-group-size, --road-targets)",
        "Liao et al. 2024 (RoAd), arXiv:2409.00119; peft tuners/road",
    ),
    "boft": (
        "peft's BOFT: each adapted linear's input rotated by a dense in × in matrix built from "
        "Cayley blocks in every forward, its output scaled (--boft-block-size, --boft-targets)",
        "Liu et al. 2024 (BOFT), arXiv:2311.06243; peft tuners/boft",
    ),
    "oft": (
        "peft's OFT: each adapted linear's input rotated block by block by orthogonal blocks "
        "(Cayley-Neumann) in every forward (--oft-block-size, --oft-r, --oft-targets)",
        "Qiu et al. 2023 (OFT), arXiv:2306.07280; peft tuners/oft",
    ),
    "vera": (
        "peft's VeRA: one pair of frozen random projections shared by every adapted linear, "
        "trained scaling vectors (r and out) per linear (--vera-rank, --vera-targets)",
        "Kopiczko et al. 2024 (VeRA), arXiv:2310.11454; peft tuners/vera",
    ),
    "fourierft": (
        "peft's FourierFT: n trained spectral coefficients per linear, ΔW = ifft2 of their "
        "sparse spectrum built whole (out × in) in every forward (--fourierft-frequencies, "
        "--fourierft-targets)",
        "Gao et al. 2024 (FourierFT), arXiv:2405.03003; peft tuners/fourierft",
    ),
    "hira": (
        "peft's HiRA: ΔW = W0 ⊙ (B A), the frozen weight times a rank-r product, built whole "
        "(out × in) in every forward (--hira-rank, --hira-targets)",
        "Huang et al. 2025 (HiRA), ICLR 2025; peft tuners/hira",
    ),
    "psoft": (
        "peft's PSOFT: an r × r orthogonal R (Cayley) and two scale vectors trained between "
        "frozen SVD factors of each adapted linear, ΔW = B (R − I) A (--psoft-rank, "
        "--psoft-targets, --psoft-neumann-terms)",
        "PSOFT (principal subspace orthogonal finetuning), openreview.net/forum?id=FSHrinMArK; "
        "peft tuners/psoft",
    ),
    "hra": (
        "peft's HRA: a chain of r Householder reflections (in × in) rebuilt and multiplied "
        "into each adapted linear's weight in every forward (--hra-rank, --hra-targets)",
        "Yuan et al. 2024 (HRA), arXiv:2405.17484; peft tuners/hra",
    ),
    "deft": (
        "peft's DeFT: a rank-r projector P removes part of each adapted linear's output and "
        "R re-injects it (ΔW = Q_P (R − relu(P)ᵀ W)); --lora-r 8, --lora-targets q,v, "
        "--deft-para (P only), --deft-qr",
        "DeFT, peft tuners/deft (DeftConfig)",
    ),
    "glora": (
        "peft's GLoRA: each adapted linear's weight rebuilt every forward as W + W ⊙ A + B "
        "(A, B rank-r products or vectors) and run beside the frozen linear (--glora-rank, "
        "--glora-targets, --glora-vector)",
        "Chavan et al. 2023 (GLoRA), arXiv:2306.07967; peft tuners/glora",
    ),
    "peanut": (
        "peft's Peanut: ΔW = B(relu(Wᵀ Aᵀ))·scaling, a small network of the frozen weight, "
        "rebuilt whole (in × out) in every forward (--peanut-rank, --peanut-targets, "
        "--peanut-depth)",
        "Zhong et al. 2024 (PEANuT), arXiv:2410.01870; peft tuners/peanut",
    ),
    "trainable-tokens": (
        "peft's trainable tokens: new trained rows for chosen token ids of the token "
        "embedding, the rest frozen (--trainable-token-ids; default 2, bos and eos)",
        "peft tuners/trainable_tokens (TrainableTokensConfig)",
    ),
    "adaption-prompt": (
        "peft's adaption prompt (LLaMA-Adapter): a learned prompt of n tokens and a "
        "zero-init gate in each of the top --adapter-layers blocks (default all), its keys "
        "and values run through the frozen k_proj/v_proj every forward "
        "(--adapter-prompt-length, 10); Llama, Mistral and GPT-2 models",
        "Zhang et al. 2023, arXiv:2303.16199; peft tuners/adaption_prompt",
    ),
    "osf": (
        "peft's OSF: each adapted weight split by an SVD at wrap time, its t lowest singular "
        "directions trained beside frozen copies and run as two rank-2t linears every "
        "forward (--osf-rank, --osf-targets)",
        "Orthogonal Subspace Fine-tuning (adaptive SVD, continual learning); peft tuners/osf",
    ),
    "beft": (
        "peft's BEFT: a trained bias vector (1 × out) added to each adapted linear's "
        "output (--beft-targets; default v)",
        "BEFT, arXiv:2509.15974; peft tuners/beft",
    ),
    "pvera": (
        "peft's PVeRA: VeRA's shared frozen projections with a sampled rank-r code between "
        "them (mean and log-variance, 2r trained λ_d), trained vectors per linear "
        "(--pvera-rank, --pvera-targets)",
        "PVeRA, arXiv:2512.07703 (peft tuners/pvera/config.py); peft tuners/pvera",
    ),
    "randlora": (
        "peft's RandLoRA: frozen random bases shared by every adapted linear, trained "
        "diagonal scalings per linear; each forward builds the scaled base (about min(in, "
        "out)² elements) per linear (--randlora-rank, --randlora-targets)",
        "Albert et al. 2025 (RandLoRA), arXiv:2502.00987; peft tuners/randlora",
    ),
    "vblora": (
        "peft's VB-LoRA: one trained vector bank shared by every layer; each adapted "
        "linear's A and B are top-k mixtures of bank vectors, rebuilt every forward "
        "(--vblora-rank, --vblora-vectors, --vblora-vector-length, --vblora-topk, "
        "--vblora-targets)",
        "Li et al. 2024 (VB-LoRA), arXiv:2405.15179; peft tuners/vblora",
    ),
    "shira": (
        "peft's SHiRA: r·(in + out) trained values at fixed random positions of each frozen "
        "linear's weight, the weight cloned and rebuilt whole in every forward "
        "(--shira-rank, --shira-targets)",
        "Bhardwaj et al. 2024 (SHiRA), arXiv:2406.13175; peft tuners/shira",
    ),
    "supertuning": (
        "peft's Super-Tuning: the (1 − sparsity) largest-magnitude entries of each frozen "
        "linear's weight trained, scatter-added onto it into a new weight in every forward; "
        "with --supertuning-r (Supra) a LoRA A and B beside them (--supertuning-sparsity, "
        "--supertuning-targets)",
        "Super-Tuning, arXiv:2607.09287; peft tuners/supertuning",
    ),
    "waveft": (
        "peft's WaveFT: n trained wavelet coefficients per linear, ΔW = the inverse 2-D "
        "wavelet transform (db1) of their sparse matrix, built whole (out × in) in every "
        "forward (--waveft-frequencies, --waveft-targets)",
        "Bilican et al. 2025 (WaveFT), arXiv:2505.12532; peft tuners/waveft",
    ),
    "c3a": (
        "peft's C3A: one trained b-long circular-convolution kernel per b × b block of each "
        "linear, applied to the fp32 input through FFTs (--c3a-block-size, --c3a-targets)",
        "Chen et al. 2025 (C3A), arXiv:2407.19342; peft tuners/c3a",
    ),
    "tinylora": (
        "peft's TinyLoRA: frozen rank-r SVD factors of each adapted weight, and a trained "
        "vector of u numbers per group of linears mixed through fixed random r × r "
        "projections (--tinylora-rank, --tinylora-u, --tinylora-weight-tying, "
        "--tinylora-targets)",
        "Learning to Reason in 13 Parameters, arXiv:2602.04118; peft tuners/tinylora",
    ),
    "adamss": (
        "peft's AdaMSS: a frozen rank-r SVD projection of each adapted weight (a buffer), "
        "its output rows clustered into K subspaces, each with trained factors A (rank × r) "
        "and B (rows × rank) (--adamss-rank, --adamss-subspaces, --adamss-subspace-rank, "
        "--adamss-targets)",
        "Adaptive Multi-Subspaces; peft tuners/adamss",
    ),
    "unilora": (
        "peft's UniLoRA: one trained vector theta_d for the whole model; each adapted "
        "linear's A and B are rebuilt every forward by indexing it (int64 index and scale "
        "buffers per linear) (--unilora-rank, --unilora-theta-length, --unilora-targets)",
        "Uni-LoRA: One Vector Is All You Need, arXiv:2506.00799; peft tuners/unilora",
    ),
    "lily": (
        "peft's Lily: a low-rank A shared by --lily-stride-a neighbouring layers, --lily-num-b "
        "Bs shared by all layers of a target and mixed by a router per linear "
        "(--lily-rank, --lily-targets)",
        "Zhong et al. 2024 (Lily), arXiv:2407.09946; peft tuners/lily",
    ),
    "prompt-tuning": (
        "n virtual token embeddings in front of the input; every layer sees s + n tokens",
        "Lester et al. 2021, arXiv:2104.08691",
    ),
    "p-tuning": (
        "virtual tokens produced by a trainable MLP or LSTM prompt encoder",
        "Liu et al. 2021, arXiv:2103.10385",
    ),
    "prefix-tuning": (
        "per-layer key/value prefixes of n tokens (optionally through an MLP)",
        "Li & Liang 2021, arXiv:2101.00190",
    ),
    "cartridge": (
        "peft's Cartridge: a trained key/value cache of n tokens served to every layer as "
        "its prefix, the first --cartridge-frozen-tokens (1) frozen (--virtual-tokens)",
        "Eyuboglu et al. 2025 (Cartridges), arXiv:2506.06266; peft tuners/cartridge",
    ),
}


@dataclass(frozen=True, slots=True)
class TensorGroup:
    """``count`` parameter tensors of one shape, storage format and trainability."""

    name: str
    shape: tuple[int, ...]
    count: int
    fmt: StorageFormat
    trainable: bool
    adapter: bool = False
    double_quant: bool = True
    in_block: bool = True  # repeated per decoder block (count = blocks), or outer
    galore_rank: int = 0  # GaLore: optimizer states of a rank-r projection (0: none)
    layout: str = "bitsandbytes"  # whose 4-bit storage (ftmem.versions.nf4_layout)
    # tensors of the group in each block holding it: a quantised base's per-expert
    # nn.Linears under transformers 4 are E per block (_stored_params), count = blocks · E
    per_block: int = 1
    # requires_grad, but no gradient ever reaches it (LLaMA-Adapter's prompt under LitGPT's
    # cache: adapters.llama_adapter): ``trainable`` False (no gradient, no optimizer state),
    # yet counted among the trainable parameters as the framework prints them
    idle: bool = False
    # a gradient but no optimizer state: LoRA-FA's lora_A where the loop re-enabled its
    # requires_grad (profiles.Profile.lora_fa_a_regains_grad); its optimizer only reads it
    stateless: bool = False
    # elements of the storage its gradient holds, where that is larger than the tensor
    # (0: the tensor's own): a gradient that autograd hands over as a view into a larger
    # gradient keeps all of it (OSF's V_low on a cast base: adapters.osf.gradient_storage)
    grad_numel: int = 0
    # Derived once here (an estimate reads them hundreds of times; plans are shared):
    numel: int = field(init=False, repr=False, compare=False)
    total_numel: int = field(init=False, repr=False, compare=False)
    nbytes: int = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numel = prod(self.shape)
        # (out, in) for nn.Linear; int8 keeps one scale per output row
        out_features = self.shape[-2] if len(self.shape) >= 2 else self.shape[0]
        nbytes = self.count * tensor_bytes(
            numel, self.fmt, out_features, self.double_quant, self.layout
        )
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "total_numel", numel * self.count)
        object.__setattr__(self, "nbytes", nbytes)
        key = (self.name, self.shape, self.count, self.fmt, self.trainable, self.adapter)
        extra = (self.double_quant, self.in_block, self.galore_rank, self.layout, self.per_block)
        object.__setattr__(
            self, "_hash", hash((*key, *extra, self.idle, self.stateless, self.grad_numel))
        )

    def __hash__(self) -> int:
        """The hash of the compared fields, taken once: the multi-GPU caches key on
        tuples of groups (hashing them field by field was a twentieth of an estimate)."""
        return self._hash

    def counted(self, count: int) -> TensorGroup:
        """The same tensors, ``count`` of them (per pipeline stage, one block's); faster
        than dataclasses.replace, which took a third of a multi-GPU estimate."""
        if count == self.count:
            return self
        return TensorGroup(
            name=self.name,
            shape=self.shape,
            count=count,
            fmt=self.fmt,
            trainable=self.trainable,
            adapter=self.adapter,
            double_quant=self.double_quant,
            in_block=self.in_block,
            galore_rank=self.galore_rank,
            layout=self.layout,
            per_block=self.per_block,
            idle=self.idle,
            stateless=self.stateless,
            grad_numel=self.grad_numel,
        )

    @property
    def element_bytes(self) -> int:
        """Bytes per element of an unquantised tensor (what its gradient and torch
        optimizer states take); quantised storage has no per-element size: asking it of
        one is a bug in the caller (quantised weights never train), named as such."""
        if is_quantized(self.fmt):
            raise TypeError(f"{self.name} is stored as {self.fmt}: no size per element")
        return BYTES_PER_ELEMENT[self.fmt]

    @property
    def grad_bytes(self) -> int:
        """Bytes one tensor's gradient holds: its storage, the tensor's own size unless the
        gradient is a view into a larger one (``grad_numel``)."""
        return max(self.numel, self.grad_numel) * self.element_bytes


@dataclass(frozen=True, slots=True)
class MethodPlan:
    """The resolved method: parameter groups and what shapes the activations."""

    groups: tuple[TensorGroup, ...]
    dtypes: Dtypes
    adapted: tuple[Linear, ...]  # per block, linears carrying an adapter
    trainable_blocks: int  # blocks (counted from the top) that hold trainable tensors
    outer_trainable: bool  # embeddings / final norm / LM head train
    notes: tuple[str, ...] = ()
    # peft modules_to_save: trainable copies of the token embedding and/or the LM head
    embed_trainable: bool = False
    head_trainable: bool = False
    # BitFit: linears whose bias trains, and whether LayerNorm biases train
    biased: tuple[str, ...] = ()
    norm_bias_trainable: bool = False
    # IA³: each scaled linear, and whether it is a feed-forward one (input scaled)
    scaled: tuple[tuple[Linear, bool], ...] = ()
    # bottleneck adapters: the linears whose output goes through one
    bottlenecked: tuple[Linear, ...] = ()
    # partial: per block, the names (within the block) of the parameters that train
    trained_by_block: tuple[frozenset[str], ...] = ()
    final_norm_trainable: bool = False
    # LoRA on routed expert parameters (peft's target_parameters), per sparse block
    adapted_experts: tuple[ExpertLoRA, ...] = ()
    # LoRA on the LM head (--lora-targets ...,lm_head): one A (r × h) and B (V × r)
    head_lora: bool = False
    # the token embedding is the LM head's weight too (its gradient starts at the head)
    tied_embeddings: bool = False
    # the per-layer inputs' model side (arch.per_layer_outer_params): its parameters'
    # names, whose gradients appear after the blocks' backward (gradient_after_blocks)
    per_layer_outer: frozenset[str] = frozenset()
    # LLaMA-Adapter: blocks (counted from the top) with a gated adaption prompt; v2's
    # linears wrapped in LitGPT's AdapterV2Linear (bias and scale), and whether the LM head is
    gated_blocks: int = 0
    v2_scaled: tuple[Linear, ...] = ()
    head_scaled: bool = False
    # LoHa: the linears with a Hadamard-product adapter beside them
    hadamard: tuple[Linear, ...] = ()
    # LoKr: the linears with a Kronecker-product adapter beside them
    kronecker: tuple[Linear, ...] = ()
    # MiSS: the linears with a shared block (MissLinear); RoAd: with output rotations
    miss: tuple[Linear, ...] = ()
    road: tuple[Linear, ...] = ()
    # BOFT: the linears whose input a butterfly rotation turns
    rotated: tuple[Linear, ...] = ()
    # OFT: the linears whose input its orthogonal blocks turn
    block_rotated: tuple[Linear, ...] = ()
    # VeRA: the linears with peft's scaled shared projections beside them
    vectored: tuple[Linear, ...] = ()
    # FourierFT: the linears whose ΔW is an inverse FFT of a sparse trained spectrum
    spectral: tuple[Linear, ...] = ()
    # HiRA: the linears whose ΔW is their frozen weight times a trained rank-r product
    hira: tuple[Linear, ...] = ()
    # PSOFT: the linears with an r × r rotation between frozen SVD factors beside them
    psoft: tuple[Linear, ...] = ()
    # HRA: the linears whose weight a chain of Householder reflections turns
    householder: tuple[Linear, ...] = ()
    # BEFT: the linears whose output a trained bias vector shifts
    beft: tuple[Linear, ...] = ()
    # GLoRA: the linears whose weight W + W ⊙ A + B is rebuilt every forward
    glora: tuple[Linear, ...] = ()
    # Peanut: the linears whose ΔW is rebuilt from their frozen weight every forward
    peanut: tuple[Linear, ...] = ()
    # OSF: the linears whose low singular directions train (factors run beside the weight)
    osf: tuple[Linear, ...] = ()
    # RandLoRA, VB-LoRA: the linears whose adapter is built from a bank shared by all
    # layers in every forward (adapters.randlora, adapters.vblora)
    banked: tuple[Linear, ...] = ()
    # SHiRA: the linears whose weight is cloned with its sparse trained values added
    shira: tuple[Linear, ...] = ()
    # Super-Tuning: the linears whose weight is scatter-added with its trained entries
    supertuning: tuple[Linear, ...] = ()
    # WaveFT: the linears whose ΔW is an inverse wavelet transform of sparse coefficients
    wavelet: tuple[Linear, ...] = ()
    # C3A: the linears with a block circular convolution of their input beside them
    circulant: tuple[Linear, ...] = ()
    # AdaLoRA's orthogonal regulariser is part of the loss (adalora_regularised)
    orth_regularised: bool = False

    def gradient_at_head(self, g: TensorGroup) -> bool:
        """AdaLoRA's lora_A and lora_B under its orthogonal regulariser: the loss's last
        term, whose backward autograd runs first, gives each of them its gradient before
        the head's backward (measured: tests/accuracy/cases.py _adalora); each block's
        backward then adds into it in place."""
        return self.orth_regularised and g.in_block and g.name.endswith((".lora_A", ".lora_B"))

    def gradient_after_blocks(self, g: TensorGroup) -> bool:
        """A tensor outside the blocks whose gradient appears only after the first block's
        backward: the token embedding (unless tied: then it is the LM head too, whose
        gradient comes first), learned position embeddings, prompt encoders and the
        vision tower's, projector's and their adapters' tensors. The timeline's
        (step._gradient_sizes) and the allocator trace's (gpu.trace.plan_tensors) one
        reading."""
        if g.in_block:
            return False
        base = g.name.split(".modules_to_save")[0]
        if vision_step.is_vision(base):
            return True  # the vision tower runs before the language model: its gradients come last
        if base.endswith(TRAINABLE_TOKENS_DELTA):
            return True  # the embedding's own backward, last (untied only: RunConfig)
        if base in self.per_layer_outer:
            # Gemma 4's per-layer table, projection and norm (modeling_gemma4.py
            # l.1705-1784) make the per-layer inputs before the blocks; every block reads a
            # slice, so their backward runs once the last block's is done (measured:
            # checkpointed full bf16, calibration in families/gemma4.py)
            return True
        if base.startswith("prompt_encoder.") or base.endswith("wpe.weight"):
            # peft's prompt encoders run first in forward, so their gradients come last
            return True
        return not self.tied_embeddings and base.endswith(TOKEN_EMBEDDINGS)

    def gradient_completes_last(self, g: TensorGroup) -> bool:
        """Whether the tensor's gradient is complete only at the embedding's backward:
        those that appear after the blocks, and a tied token embedding, whose LM-head
        part waits in autograd's input buffer for the embedding's (the optimizer in
        backward steps them last)."""
        if self.gradient_after_blocks(g):
            return True
        base = g.name.split(".modules_to_save")[0]
        return not g.in_block and self.tied_embeddings and base.endswith(TOKEN_EMBEDDINGS)

    @property
    def n_params(self) -> int:
        return sum(g.total_numel for g in self.groups)

    @property
    def n_trainable(self) -> int:
        """The parameters that get a gradient (and optimizer states)."""
        return sum(g.total_numel for g in self.groups if g.trainable)

    @property
    def n_requires_grad(self) -> int:
        """The trainable parameters as the framework counts them (requires_grad): those
        with a gradient and the idle ones no gradient reaches (TensorGroup.idle)."""
        return sum(g.total_numel for g in self.groups if g.trainable or g.idle)


_ROLE_ALIASES = {"q": "q", "k": "k", "v": "v", "o": "o", "gate": "gate", "up": "up", "down": "down"}

EXPERTS_TARGET = "experts"  # --lora-targets' name for every routed expert parameter
_FUSED_EXPERT_ROLES = frozenset({"gate", "up"})  # one gate_up parameter in transformers 5
_SPECIAL_TARGETS = ("attention", "all-linear")
# --lora-targets' name for the LM head: peft's all-linear leaves the output layer out
# (peft 0.21.2 tuners/tuners_utils.py _maybe_include_all_linear_layers excludes
# model.get_output_embeddings()), so it is adapted only when named
HEAD_TARGET = "lm_head"
HEAD_LORA_METHODS = ("lora", "rslora", "qlora")  # peft's plain LoRA forward on the head
EXPERT_LORA_METHODS = ("lora", "rslora")  # measured with LoRA on the experts


@dataclass(frozen=True, slots=True)
class ExpertLoRA:
    """LoRA on one routed expert parameter, a 3-D (experts, ·, ·) tensor, through peft's
    ``target_parameters`` (peft 0.21.2 tuners/lora/layer.py ParamWrapper.update_layer):
    lora_A is one nn.Linear(in, rank·E) and lora_B one nn.Linear(rank·E, out), each
    expert's own rank-``rank`` pair side by side; in and out are the expert matmul's,
    whichever way the parameter is stored (it swaps them for (E, out, in) experts)."""

    linear: Linear  # the expert parameter (Linear.copies experts, is_module False)
    rank: int
    # the blocks adapted, where a target names its layer (OpenAI's gpt-oss recipe:
    # "7.mlp.experts.gate_up_proj"); None: every block with experts
    layers: frozenset[int] | None = None

    def blocks(self, arch: Architecture) -> int:
        """How many blocks hold this adapter."""
        return self.linear.count(arch.num_layers) if self.layers is None else len(self.layers)

    def in_block(self, i: int) -> bool:
        return self.layers is None or i in self.layers

    @property
    def is_router(self) -> bool:
        """The router's 2-D weight (peft's conversion of all-linear adds it)."""
        return self.linear.roles == ("router",)

    def paths(self) -> list[str]:
        """The adapted parameter as a path inside a block (the router's ``mlp.gate.weight``,
        ``mlp.experts.gate_up_proj``), a layer-given one prefixed by its block index
        (``7.mlp.experts.gate_up_proj``): what an estimate's ``adapted_parameters`` lists."""
        path = f"{self.linear.module}.weight" if self.is_router else self.linear.module
        if self.layers is None:
            return [path]
        return [f"{i}.{path}" for i in sorted(self.layers)]

    def parameters(self) -> list[str]:
        """The names peft's target_parameters matches (a suffix of the full name)."""
        if self.is_router:
            return [f"{self.linear.leaf}.weight"]
        name = self.linear.module.rsplit(".", 2)[-2] + "." + self.linear.leaf
        if self.layers is None:
            return [name]
        return [f"{i}.{self.linear.module}" for i in sorted(self.layers)]


def _items(spec: str) -> list[str]:
    return [x.strip() for x in spec.strip().lower().split(",") if x.strip()]


def _expert_item(item: str, experts: list[Linear]) -> tuple[Linear, int | None] | None:
    """An expert parameter a target names, and its layer if it gives one: gate_up_proj,
    experts.gate_up_proj, mlp.experts.gate_up_proj, 7.mlp.experts.gate_up_proj or
    model.layers.7.mlp.experts.gate_up_proj (peft matches target_parameters as suffixes)."""
    for lin in experts:
        parts = lin.module.split(".")
        if item in {".".join(parts[i:]) for i in range(len(parts))}:
            return lin, None
        if item.endswith("." + lin.module):
            layer = item[: -len(lin.module) - 1].rsplit(".", 1)[-1]
            if layer.isdigit() and len(layer) <= 6:
                return lin, int(layer)
    return None


def lora_targets(
    arch: Architecture, run: RunConfig
) -> tuple[tuple[Linear, ...], tuple[ExpertLoRA, ...]]:
    """The block linears and the routed expert parameters that get LoRA, from
    ``run.targets``: ``experts`` (or an expert parameter's name: gate_up_proj,
    down_proj, with a layer: 7.mlp.experts.gate_up_proj) adapts the 3-D experts at rank
    r, as peft's target_parameters does; on a model type peft converts
    (Family.peft_converts_expert_targets) the roles gate, up and down mean the experts
    too, gate_up at rank 2r, and the dense or shared MLPs' linears of those roles get no
    adapter (peft 0.21.2 utils/transformers_weight_conversion.py _convert_peft_config_moe:
    rank_pattern r·2 on the fused gate_up_proj, the old names removed from
    target_modules). ``attention`` and ``all-linear`` may join such a list; there
    ``all-linear`` also reaches the router (gate.weight, rank r) and the experts, as peft's
    _resolve_string_target_modules reads it, for the methods modelled on the experts."""
    items = [i for i in _items(run.targets) if i != HEAD_TARGET]
    if not items and lora_on_head(arch, run):
        raise InvalidInputError(
            "LoRA on lm_head alone is not modelled (no block trains, so nothing below the "
            "head needs a gradient); add block targets, e.g. --lora-targets q,v,lm_head."
        )
    spec = ",".join(items)
    if "all-linear" in items:
        _check_all_linear(arch)
    if experts_are_linears(arch, run) and run.method in ADAPTER_METHODS:
        _check_no_expert_linear_targets(arch, run, items)
    # (the methods LoRA on the experts is modelled for; the others keep all-linear to
    # the attention, with a note)
    converts = _all_linear_adapts_experts(arch, run)
    if spec in _SPECIAL_TARGETS and not (spec == "all-linear" and converts):
        return select_linears(arch, spec, "LoRA target"), ()
    named, rest = _named_experts(arch, items)
    roles = _expert_roles(arch, rest)
    adapted: list[ExpertLoRA] = []
    if "all-linear" in items and converts:
        # peft 0.21.2 _resolve_string_target_modules: all-linear adds every old expert
        # name and the router's (`gate` -> target_parameters gate.weight, rank r)
        roles |= {"gate", "up", "down"}
        router = next(lin for lin in layout(arch).linears if lin.roles == ("router",))
        adapted.append(ExpertLoRA(router, run.r))
    for lin in (lin for lin in layout(arch).linears if lin.copies > 1):
        by_role = bool(set(lin.roles) & roles)
        if lin not in named and not by_role:
            continue
        # (peft's rank_pattern for a converted gate_up wins over the plain r)
        rank = run.r * len(lin.roles) if by_role else run.r
        layers = None if by_role else named[lin]
        adapted.append(ExpertLoRA(lin, rank, None if layers is None else frozenset(layers)))
    rest = [i for i in rest if i not in roles]
    # (names of vision linears only, Qwen2.5-VL's qkv: peft adapts them, ftmem.vision_lora)
    rest = [i for i in rest if i not in vision_lora.vision_only_items(arch, run)]
    linears: list[Linear] = []
    for group in [i for i in rest if i in _SPECIAL_TARGETS] + [
        ",".join(i for i in rest if i not in _SPECIAL_TARGETS)
    ]:
        if group:
            linears += select_linears(arch, group, "LoRA target")
    if adapted:
        _check_expert_lora(arch, run)
    if not linears and not adapted:
        raise InvalidInputError("no LoRA target given.")
    order = [lin for lin in layout(arch).linears if lin.is_module]
    return tuple(lin for lin in order if lin in linears), tuple(adapted)


def lora_on_head(arch: Architecture, run: RunConfig) -> bool:
    """Whether ``--lora-targets`` names the LM head (``lm_head``), for an adapter method;
    refused where the head's path with an adapter is not modelled."""
    if run.method not in ADAPTER_METHODS or HEAD_TARGET not in _items(run.targets):
        return False
    _check_head_lora(arch, run)
    return True


def _check_head_lora(arch: Architecture, run: RunConfig) -> None:
    """LoRA on the LM head is modelled on transformers' standard loss path (the whole
    logits, then the fp32 cross-entropy) for plain LoRA on a decoder-only model;
    elsewhere it is refused with what is not modelled, rather than estimated silently."""
    profile = profile_of(run)
    why = None
    if run.method not in HEAD_LORA_METHODS:
        why = f"the {run.method} adapter on the head (modelled: lora, rslora, qlora)"
    elif arch.encoder_decoder:
        why = f"{arch.name}'s encoder-decoder head"
    elif profile.lm_head_chunk_tokens is not None and not profile.logits_fp32_held:
        # (LitGPT's chunked head with its LoRALinear: ops.loss.held_logits_head)
        why = f"{profile.name}'s chunked LM head with an adapter"
    elif run.loss != "standard" and not (
        # torchtune 0.1's LoRALinear on the output: peft's ops (out + scale · lora_b(
        # lora_a(dropout(x)))), then the model's .float() and the loop's shifted loss
        # (pytorch/torchtune torchtune/modules/peft/lora.py@ff594c231 LoRALinear.forward)
        run.loss == "upcast-shifted" and profile.loop_shifted_loss
    ):
        why = f"the {run.loss} loss's head path with an adapter on the head"
    elif run.objective != "sft":
        why = f"the {run.objective} objective's log-probabilities with an adapted head"
    elif "head" in run.modules_to_save:
        why = "an adapter on a head that --lora-modules-to-save also trains in full"
    if why is not None:
        raise InvalidInputError(f"LoRA on lm_head: {why} is not modelled.")


def _check_no_expert_linear_targets(arch: Architecture, run: RunConfig, items: list[str]) -> None:
    """transformers 4's experts are nn.Linear modules: all-linear (peft's every linear but
    the output layer) and the experts' names adapt each expert's linears with a LoRA of
    its own, which is not modelled yet: refused rather than estimated as the 3-D path."""
    experts = [lin for lin in layout(arch).linears if lin.copies > 1]
    names = {lin.leaf for lin in experts} | {"experts", "router"}
    reached = "all-linear" in items or bool(names & set(items))
    reached = reached or bool(set(items) & {"gate", "up", "down"})  # (w1, w3, w2 in 4.x)
    if reached:
        raise InvalidInputError(
            f"transformers {run.transformers_version} builds {arch.family}'s experts as "
            "nn.Linear modules, which these LoRA targets adapt one expert at a time: not "
            "modelled yet; target the attention (--lora-targets attention) or leave "
            "--transformers-version unset for transformers 5's 3-D experts."
        )


def _all_linear_adapts_experts(arch: Architecture, run: RunConfig) -> bool:
    """all-linear reaches the router and the experts, as peft 0.21.2 reads it on a model
    type it converts, for the methods modelled with LoRA on the experts."""
    converts = arch.is_moe and arch.traits.peft_converts_expert_targets
    return converts and run.method in EXPERT_LORA_METHODS


def _check_all_linear(arch: Architecture) -> None:
    """all-linear where peft rewrites MLP names onto the experts and the router (DeepSeek's
    dense and shared MLPs), or where peft's LoRA on every linear fails
    (Family.peft_all_linear_fails): refused, not mis-estimated."""
    if arch.traits.peft_all_linear_fails:
        raise InvalidInputError(
            f"LoRA on all-linear of {arch.name}: {arch.traits.peft_all_linear_fails}; "
            "use --lora-targets attention (or name the linears)."
        )
    if not (arch.is_moe and arch.traits.peft_converts_expert_targets):
        return
    chosen = select_linears(arch, "all-linear", "LoRA target")
    if any(set(lin.roles) & set(MLP_ROLES) for lin in chosen):
        raise InvalidInputError(
            f"LoRA on all-linear of {arch.name} is not modelled: peft turns its MLP "
            "targets into LoRA on the router and the routed experts' 3-D weights; use "
            "--lora-targets attention,gate,up,down (the experts as peft adapts them)."
        )


def _trained_from_lowest_adapted(
    arch: Architecture, adapted: Iterable[Linear], experts: Iterable[ExpertLoRA]
) -> int:
    """Qwen3.5: the blocks from the lowest one holding an adapted linear up, in
    config.json's layer order (q_proj, v_proj: the lowest full-attention layer; nothing
    below it trains), or adapted experts (Qwen3.5-MoE: LoRA on q and v beside the experts
    trains every block)."""
    lowest = [0 if lin.blocks is None else lin.blocks.lowest for lin in adapted]
    lowest += [min(ex.layers) if ex.layers else arch.sparse_blocks[0] for ex in experts]
    return arch.num_layers - min(i for i in lowest if i is not None)


def _check_shared_expert_lora(arch: Architecture, adapted: Iterable[Linear]) -> None:
    """LoRA on the gated shared expert's linears of Qwen3.5-MoE and Qwen3-Next (targets by
    the MLP's module names; by role gate, up and down reach the routed experts only):
    refused, measured off (tiny Qwen3.5-MoE, q_proj,v_proj,gate_proj,up_proj,down_proj
    bf16: activations +1.3 %, peak +1.1 %, weights and gradients exact)."""
    if not (arch.traits.shared_expert_gate and arch.traits.attention_output_gate):
        return
    shared = set(arch.traits.names.shared_experts.values())
    if any(lin.module in shared for lin in adapted):
        raise InvalidInputError(
            f"{arch.name}: LoRA on the shared expert's linears (gate_proj, up_proj, "
            "down_proj by name) is not modelled yet; target the routed experts by role "
            "(--lora-targets q,v,gate,up,down) or with experts."
        )


def _named_experts(
    arch: Architecture, items: list[str]
) -> tuple[dict[Linear, set[int] | None], list[str]]:
    """The expert parameters the items name, each with its layers (None: every block with
    experts), and the items left (linears, roles)."""
    experts = [lin for lin in layout(arch).linears if lin.copies > 1]
    if EXPERTS_TARGET in items and not experts:
        raise InvalidInputError(f"LoRA target 'experts': {arch.name} has no routed experts.")
    named: dict[Linear, set[int] | None] = {}
    rest: list[str] = []
    for item in items:
        found = _expert_item(item, experts)
        if item == EXPERTS_TARGET:
            named.update({lin: None for lin in experts})
        elif found is None:
            rest.append(item)
        else:
            lin, layer = found
            if layer is not None and not (0 <= layer < arch.num_layers and lin.in_block(layer)):
                first = 0 if lin.blocks is None else lin.blocks.lowest
                last = arch.num_layers - 1 if lin.blocks is None else lin.blocks.highest
                raise InvalidInputError(
                    f"LoRA target {item}: {arch.name} has experts in blocks {first} to {last}."
                )
            had = named.get(lin, set())
            named[lin] = None if had is None or layer is None else had | {layer}
    return named, rest


def _expert_roles(arch: Architecture, items: list[str]) -> set[str]:
    """The roles gate/up/down among the items of a MoE model: its experts where peft
    rewrites them, refused where it does not (gpt-oss) or where gate and up part."""
    roles = {i for i in items if i in ("gate", "up", "down")} if arch.is_moe else set()
    if roles and not arch.traits.peft_converts_expert_targets:
        raise InvalidInputError(
            f"LoRA target {'/'.join(sorted(roles))} matches no module of {arch.name}: its "
            "experts are 3-D parameters and peft has no conversion of such targets for this "
            "family; use --lora-targets experts (peft's target_parameters)."
        )
    if len(roles & _FUSED_EXPERT_ROLES) == 1:
        # (peft raises "Cannot convert PEFT target(s) ... without also targeting ...")
        raise InvalidInputError(
            f"peft fuses the experts' gate and up projections of {arch.name} into one "
            "gate_up_proj: target both or neither."
        )
    return roles


def _check_expert_lora(arch: Architecture, run: RunConfig) -> None:
    """What peft's ParamWrapper refuses (peft 0.21.2 tuners/lora/layer.py
    ParamWrapper.__init__) and what ftmem has not measured on the experts."""
    if run.method == "dora":
        raise InvalidInputError(
            "peft's LoRA on 3-D expert parameters (ParamWrapper) does not work with DoRA; "
            "use lora or rslora on the experts."
        )
    if run.dropout:
        raise InvalidInputError(
            "peft's LoRA on 3-D expert parameters (ParamWrapper) does not work with "
            "lora_dropout != 0 (the input cannot be factored out of the weight's update): "
            "set --lora-dropout 0."
        )
    if run.method not in EXPERT_LORA_METHODS:
        raise InvalidInputError(
            f"{run.method} with LoRA on {arch.name}'s routed experts is not modelled "
            "(measured: lora and rslora); adapt the attention instead."
        )


def adapted_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears (nn.Linear modules) that get an adapter, from ``run.targets``."""
    return lora_targets(arch, run)[0]


def smallest_adapted_width(arch: Architecture, run: RunConfig) -> int:
    """The smallest side of any adapted weight (an expert's, for LoRA on the experts):
    the largest rank that is still low-rank."""
    linears, experts = lora_targets(arch, run)
    return min(
        min(lin.in_features, lin.out_features) for lin in (*linears, *(ex.linear for ex in experts))
    )


def adapted_experts(arch: Architecture, run: RunConfig) -> tuple[ExpertLoRA, ...]:
    """The routed expert parameters that get LoRA (:func:`lora_targets`)."""
    return lora_targets(arch, run)[1]


def ia3_linears(arch: Architecture, run: RunConfig) -> tuple[tuple[Linear, bool], ...]:
    """IA³'s scaled linears, each with whether it is a feed-forward one (peft's
    ``feedforward_modules``: the MLP's output projection, whose *input* is scaled)."""
    spec = run.ia3
    if run.ia3_targets is None:
        # the default (k, v, down) keeps only the roles the model has as nn.Linear
        # (transformers 5 MoE experts are 3-D parameters: no down projection module)
        have = {role for lin in layout(arch).linears if lin.is_module for role in lin.roles}
        spec = ",".join(r for r in spec.split(",") if r in have)
    chosen = select_linears(arch, spec, "IA³ target")
    return tuple((lin, "down" in lin.roles) for lin in chosen)


def loha_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a LoHa adapter (none for the other methods)."""
    if run.method != "loha":
        return ()
    return _lycoris_linears(arch, run.loha[2], "LoHa")


def lokr_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a LoKr adapter (none for the other methods)."""
    if run.method != "lokr":
        return ()
    return _lycoris_linears(arch, run.lokr[2], "LoKr")


def miss_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a MiSS block (none for the other methods), checked as
    peft 0.21.2 tuners/miss/layer.py MissLayer.update_layer checks them."""
    if run.method != "miss":
        return ()
    r, init, mini_r, spec = run.miss
    chosen = _lycoris_linears(arch, spec, "MiSS")
    for lin in chosen:
        if r > lin.in_features:
            bad = f"--miss-rank {r} exceeds {lin.module}'s {lin.in_features} inputs"
        elif init == "bat" and (lin.in_features % r or lin.out_features % r):
            bad = f"bat needs {lin.module}'s {lin.out_features} × {lin.in_features} in r × r blocks"
        elif init == "mini" and lin.out_features % mini_r:
            bad = (
                f"--miss-mini-r {mini_r} does not divide {lin.module}'s {lin.out_features} outputs"
            )
        else:
            continue
        raise InvalidInputError(f"{bad} (peft refuses it); choose another --miss-rank.")
    return chosen


def road_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a RoAd rotation (none for the other methods); peft 0.21.2
    tuners/road/layer.py RoadLayer.update_layer needs group_size to divide the outputs."""
    if run.method != "road":
        return ()
    _, group, spec = run.road
    chosen = _lycoris_linears(arch, spec, "RoAd")
    for lin in chosen:
        if lin.out_features % group:
            raise InvalidInputError(
                f"--road-group-size {group} does not divide {lin.module}'s "
                f"{lin.out_features} outputs (peft refuses it); choose a divisor."
            )
    return chosen


def miss_road_shapes(lin: Linear, run: RunConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The adapter parameters of one linear. MiSS (peft 0.21.2 tuners/miss/layer.py
    reset_*_parameters): miss_block r × out, bat out/r × r × r, mini r × mini_r. RoAd
    (tuners/road/layer.py update_layer): road_theta and road_alpha of out/2 (road_1), out
    (road_2) or 2·out (road_4) each."""
    if run.method == "miss":
        r, init, mini_r, _ = run.miss
        shapes = {"bat": (lin.out_features // r, r, r), "mini": (r, mini_r)}
        return (("miss_block", shapes.get(init, (r, lin.out_features))),)
    size = {"road_1": lin.out_features // 2, "road_2": lin.out_features}
    n = size.get(run.road[0], 2 * lin.out_features)
    return (("road_theta", (n,)), ("road_alpha", (n,)))


def boft_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a BOFT adapter (none for the other methods); each one's
    block split is checked (boft_blocks)."""
    if run.method != "boft":
        return ()
    linears = _lycoris_linears(arch, run.boft[2], "BOFT")
    for lin in linears:
        boft_blocks(lin, run)
    return linears


def boft_blocks(lin: Linear, run: RunConfig) -> tuple[int, int]:
    """(blocks, block side) of one BOFT linear: peft 0.21.2 tuners/boft/layer.py
    BOFTLayer.update_layer (the same at 5d602fdb) splits in_features into blocks of the
    size given, or into the number given; one butterfly factor (no permutation)."""
    size, num, _ = run.boft
    n = lin.in_features
    if num and n % num == 0:
        return num, n // num
    if size and n % size == 0:
        return n // size, size
    given = f"--boft-block-num {num}" if num else f"--boft-block-size {size}"
    raise InvalidInputError(
        f"BOFT: {lin.module}'s in_features {n} do not divide by {given} (peft refuses it); "
        "give a divisor."
    )


def oft_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with an OFT adapter (none for the other methods)."""
    if run.method != "oft":
        return ()
    return _lycoris_linears(arch, run.oft[2], "OFT")


def _adjusted(n: int, wanted: int) -> int:
    """peft's OFTLayer.adjust_oft_parameters: the divisor of n nearest ``wanted`` (the
    lower one on a tie), n itself when ``wanted`` exceeds it."""
    if wanted >= n:
        return n
    higher = wanted
    while higher <= n and n % higher:
        higher += 1
    lower = wanted
    while lower > 1 and n % lower:
        lower -= 1
    return lower if wanted - lower <= higher - wanted else higher


def oft_blocks(lin: Linear, run: RunConfig) -> tuple[int, int]:
    """(blocks, block side) of one OFT linear: peft 0.21.2 tuners/oft/layer.py
    OFTLayer.update_layer (the same at 5d602fdb) splits in_features into r blocks or
    blocks of oft_block_size, moving a value that does not divide to the nearest divisor
    (with a warning)."""
    r, size, *_ = run.oft
    n = lin.in_features
    if r:
        r = r if n % r == 0 and r <= n else _adjusted(n, r)
        return r, n // r
    size = size if n % size == 0 and size <= n else _adjusted(n, size)
    return n // size, size


def vera_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a VeRA (or PVeRA) adapter (none for the other methods)."""
    if run.method not in ("vera", "pvera"):
        return ()
    name = "VeRA" if run.method == "vera" else "PVeRA"
    return _lycoris_linears(arch, run.vera[1], name, wraps_conv1d=True)


def vera_code_width(run: RunConfig) -> int:
    """Width of λ_d and of vera_A's rows: r for VeRA; 2r for PVeRA, whose first linear
    makes the code's mean and log-variance side by side (peft 0.21.2 tuners/pvera/layer.py
    update_layer ``torch.randn(r * 2)``, model.py ``torch.empty(config.r * 2, ...)``; the
    same at 5d602fdbff04)."""
    return run.vera[0] * (2 if run.method == "pvera" else 1)


def fourierft_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a FourierFT adapter (none for the other methods)."""
    if run.method != "fourierft":
        return ()
    return _lycoris_linears(arch, run.fourierft[1], "FourierFT", wraps_conv1d=True)


def hira_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a HiRA adapter (none for the other methods)."""
    if run.method != "hira":
        return ()
    return _lycoris_linears(arch, run.hira[1], "HiRA", wraps_conv1d=True)


def psoft_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a PSOFT adapter (none for the other methods); peft refuses an
    r above a linear's smaller side (peft 0.21.2 tuners/psoft/layer.py update_layer)."""
    if run.method != "psoft":
        return ()
    linears = _lycoris_linears(arch, run.psoft[1], "PSOFT")
    r = run.psoft[0]
    for lin in linears:
        if r > min(lin.in_features, lin.out_features):
            raise InvalidInputError(
                f"PSOFT: --psoft-rank {r} exceeds {lin.module}'s smaller side "
                f"{min(lin.in_features, lin.out_features)} (peft refuses it); give a smaller r."
            )
    return linears


def banked_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a RandLoRA or VB-LoRA adapter (none for the other methods);
    VB-LoRA's must tile into its vectors (peft 0.21.2 tuners/vblora/layer.py update_layer
    raises otherwise)."""
    if run.method == "randlora":
        return _lycoris_linears(arch, run.randlora[1], "RandLoRA", wraps_conv1d=True)
    if run.method == "tinylora":
        return _lycoris_linears(arch, run.tinylora[3], "TinyLoRA", wraps_conv1d=True)
    if run.method == "unilora":
        return _lycoris_linears(arch, run.unilora[2], "UniLoRA", wraps_conv1d=True)
    if run.method == "adamss":
        return _adamss_linears(arch, run)
    if run.method == "lily":
        return _lycoris_linears(arch, run.lily[3], "Lily")
    if run.method != "vblora":
        return ()
    _, _, length, _, targets = run.vblora
    linears = _lycoris_linears(arch, targets, "VB-LoRA", wraps_conv1d=True)
    for lin in linears:
        if lin.in_features % length or lin.out_features % length:
            raise InvalidInputError(
                f"VB-LoRA's vectors ({length} long) do not tile {lin.module} "
                f"({lin.in_features} → {lin.out_features}); give a --vblora-vector-length "
                "that divides both"
            )
    return linears


def adamss_shape(run: RunConfig, lin: Linear) -> tuple[int, int, int]:
    """One AdaMSS linear's (R, K, rank): the SVD rank r capped at the sides of the weight
    with its bias as one more column (peft 0.21.2 tuners/adamss/utils.py slice_pca
    ``effective_r = min(r, H, W)``, layer.py update_layer ``in_features += 1``), the
    subspaces capped at the output rows KMeans clusters (utils.py clustering_Z), and each
    subspace's rank, ``min(len(rows), subspace_rank)`` (update_layer), taken as
    subspace_rank: exact while every cluster holds that many rows (always at the default
    1; _adamss_linears refuses K · rank above the rows)."""
    r, k, rank, _ = run.adamss
    width = lin.in_features + lin.bias
    return min(r, lin.out_features, width), min(k, lin.out_features), rank


def _adamss_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """AdaMSS's targets: peft wraps torch.nn.Linear only (peft 0.21.2 tuners/adamss/model.py
    _create_new_module raises on the rest); a subspace rank above R gives factors that do
    not chain, and K subspaces of that rank need K · rank output rows."""
    linears = _lycoris_linears(arch, run.adamss[3], "AdaMSS")
    for lin in linears:
        R, k, rank = adamss_shape(run, lin)
        if rank > R or k * rank > lin.out_features:
            raise InvalidInputError(
                f"AdaMSS: {k} subspaces of rank {rank} do not fit {lin.module} (SVD rank "
                f"{R}, {lin.out_features} rows; peft's ranks then follow its clustering): "
                "give a smaller --adamss-subspace-rank or --adamss-subspaces."
            )
    return linears


def hra_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with an HRA adapter (none for the other methods)."""
    if run.method != "hra":
        return ()
    return _lycoris_linears(arch, run.hra[1], "HRA")


def beft_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a BEFT bias (none for the other methods); peft wraps
    torch.nn.Linear only (peft 0.21.2 tuners/beft/model.py _create_new_module)."""
    if run.method != "beft":
        return ()
    return _lycoris_linears(arch, run.beft, "BEFT")


def glora_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a GLoRA adapter (none for the other methods); peft wraps
    plain torch.nn.Linear only (peft 0.21.2 tuners/glora/model.py _create_new_module)."""
    if run.method != "glora":
        return ()
    return glora.check(arch, _lycoris_linears(arch, run.glora[1], "GLoRA"))


def peanut_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a Peanut adapter (none for the other methods); peft wraps
    torch.nn.Linear only (peft 0.21.2 tuners/peanut/model.py _create_new_module)."""
    if run.method != "peanut":
        return ()
    return _lycoris_linears(arch, run.peanut[1], "Peanut")


def osf_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with an OSF adapter (none for the other methods); peft wraps
    torch.nn.Linear only (peft 0.21.2 tuners/osf/layer.py dispatch_default)."""
    if run.method != "osf":
        return ()
    chosen = _lycoris_linears(arch, run.osf, "OSF")
    for lin in chosen:
        side = min(lin.in_features, lin.out_features)
        if run.osf_rank is not None and run.osf_rank >= side:
            # peft keeps at least one direction frozen (tuners/osf/layer.py update_layer
            # refuses an effective_rank of 0)
            raise InvalidInputError(
                f"--osf-rank {run.osf_rank} leaves {lin.module} no frozen direction (its "
                f"smaller side is {side}); choose an --osf-rank below {side}."
            )
    return chosen


def randlora_bases(lin: Linear, r: int) -> int:
    """RandLoRA's number of bases for a linear: min(in, out) / r rounded up, so that the
    r-rank bases together reach full rank (peft 0.21.2 tuners/randlora/layer.py
    update_layer ``num_bases``; the same at 5d602fdbff04)."""
    return -(-min(lin.in_features, lin.out_features) // r)


def shira_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a SHiRA adapter (none for the other methods); peft 0.21.2
    tuners/shira/layer.py ShiraLayer.update_layer refuses more values than the weight has
    (and tuners/shira/layer.py takes nn.Linear only: Conv1D is refused)."""
    if run.method != "shira":
        return ()
    r, spec = run.shira
    chosen = _lycoris_linears(arch, spec, "SHiRA")
    for lin in chosen:
        if shira_values(lin, r) > lin.in_features * lin.out_features:
            raise InvalidInputError(
                f"--shira-rank {r} gives {lin.module} more trained values than its "
                f"{lin.out_features} × {lin.in_features} weight (peft refuses it); "
                "choose a smaller --shira-rank."
            )
    return chosen


def supertuning_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a Super-Tuning adapter (none for the other methods); peft
    0.21.2 tuners/supertuning/layer.py update_layer refuses a sparsity that leaves no entry
    (and tuners/supertuning/model.py _create_new_module takes torch.nn.Linear only)."""
    if run.method != "supertuning":
        return ()
    sparsity, spec = run.supertuning
    chosen = _lycoris_linears(arch, spec, "Super-Tuning")
    for lin in chosen:
        if supertuning_values(lin, sparsity) < 1:
            raise InvalidInputError(
                f"--supertuning-sparsity {sparsity} leaves {lin.module}'s {lin.out_features} × "
                f"{lin.in_features} weight no trained entry (peft refuses it); lower it."
            )
    return chosen


def supertuning_values(lin: Linear, sparsity: float) -> int:
    """Super-Tuning's trained entries of one linear's weight: ``int(numel · (1 −
    sparsity))`` in Python floats, as peft counts them (peft 0.21.2
    tuners/supertuning/layer.py SupertuningLayer._num_trainable: 0.9 of a 160 × 96 weight
    keeps 1,535, not 1,536)."""
    return int(lin.in_features * lin.out_features * (1 - sparsity))


def waveft_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a WaveFT adapter (none for the other methods); peft 0.21.2
    tuners/waveft/layer.py update_layer refuses more coefficients than the weight has."""
    if run.method != "waveft":
        return ()
    n, spec = run.waveft
    chosen = _lycoris_linears(arch, spec, "WaveFT", wraps_conv1d=True)
    for lin in chosen:
        if n > lin.in_features * lin.out_features:
            raise InvalidInputError(
                f"--waveft-frequencies {n} exceeds {lin.module}'s {lin.out_features} × "
                f"{lin.in_features} weight (peft refuses it); give fewer."
            )
    return chosen


def c3a_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The block linears with a C3A adapter (none for the other methods); peft 0.21.2
    tuners/c3a/layer.py update_layer needs block_size to divide in and out (and takes
    nn.Linear only: Conv1D is refused)."""
    if run.method != "c3a":
        return ()
    b, spec = run.c3a
    chosen = _lycoris_linears(arch, spec, "C3A")
    for lin in chosen:
        if lin.in_features % b or lin.out_features % b:
            raise InvalidInputError(
                f"--c3a-block-size {b} does not divide {lin.module}'s {lin.out_features} × "
                f"{lin.in_features} weight (peft refuses it); choose a common divisor."
            )
    return chosen


def shira_values(lin: Linear, r: int) -> int:
    """SHiRA's trained values on one linear: r·(in + out), as many as LoRA r would train
    (peft 0.21.2 tuners/shira/layer.py update_layer ``num_shira_weight``)."""
    return r * (lin.in_features + lin.out_features)


def vera_projection_shapes(
    linears: tuple[Linear, ...], r: int, a_rows: int | None = None
) -> tuple[tuple[int, int], ...]:
    """vera_A (r × the widest input) and vera_B (the widest output × r): one pair for the
    whole model, sliced by every adapted linear (peft 0.21.2 tuners/vera/model.py
    VeraModel._find_dim and _init_vera_A_vera_B; the same at 5d602fdbff04). PVeRA's A
    has ``a_rows`` = 2r rows (vera_code_width)."""
    if not linears:
        return ()
    return (
        (a_rows or r, max(lin.in_features for lin in linears)),
        (max(lin.out_features for lin in linears), r),
    )


def _lycoris_linears(
    arch: Architecture, spec: str, name: str, *, wraps_conv1d: bool = False
) -> tuple[Linear, ...]:
    """The targets of peft's adapters other than LoRA's, on the models ftmem models them on.
    ``wraps_conv1d``: peft wraps transformers' Conv1D for this method (VeRA and FourierFT,
    transposing through fan_in_fan_out), which ftmem does not model."""
    if arch.traits.conv1d and wraps_conv1d:
        raise InvalidInputError(
            f"{name} on {arch.family}'s transformers Conv1D layers is not modelled; "
            "use lora or ia3 on this model."
        )
    if arch.traits.conv1d:
        # peft 0.21.2 tuners/lycoris_utils.py _create_new_module (LoHa, LoKr: Linear, Conv1d,
        # Conv2d), tuners/{boft,oft,miss,road}/model.py _create_new_module (Linear, Conv2d)
        raise InvalidInputError(
            f"peft's {name} does not wrap {arch.family}'s transformers Conv1D layers; "
            "use lora or ia3 on this model."
        )
    if arch.encoder_decoder or arch.vision is not None:
        raise InvalidInputError(
            f"{name} on {arch.name} (an encoder-decoder or image-text model) is not modelled; "
            f"ftmem models {name} on decoder-only language models."
        )
    return select_linears(arch, spec, f"{name} target")


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """peft's LoKr split of a dimension into m ≤ n with m·n = dimension: m = factor when it
    divides, else the divisor pair nearest the square root not above the factor (peft
    0.21.2 tuners/lokr/layer.py factorization, the same at 5d602fdb)."""
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    if factor == -1:
        factor = dimension
    m, n = 1, dimension
    length = m + n  # (peft's bound: set once, before the loop)
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)


@dataclass(frozen=True, slots=True)
class KronShapes:
    """One LoKr adapter's parameters and the factors its forward builds from a product."""

    params: tuple[tuple[str, tuple[int, int]], ...]
    built: tuple[tuple[int, int], ...]  # w1 = w1_a·w1_b, w2 = w2_a·w2_b where products


def lokr_shapes(lin: Linear, run: RunConfig) -> KronShapes:
    """peft 0.21.2 tuners/lokr/layer.py LoKrLayer.update_layer (nn.Linear branch) and
    create_adapter_parameters: out = a·b and in = c·d by ``factorization``; w1 (a × c)
    whole unless decompose_both and r < max(a, c)/2 (then w1_a a × r, w1_b r × c); w2
    (b × d) whole unless r < max(b, d)/2 (then w2_a b × r, w2_b r × d)."""
    r, _, _, factor, both = run.lokr
    a, b = factorization(lin.out_features, factor)
    c, d = factorization(lin.in_features, factor)
    params: list[tuple[str, tuple[int, int]]] = []
    built: list[tuple[int, int]] = []
    for side, (rows, cols), whole in (
        ("w1", (a, c), not (both and r < max(a, c) / 2)),
        ("w2", (b, d), not r < max(b, d) / 2),
    ):
        if whole:
            params.append((f"lokr_{side}", (rows, cols)))
        else:
            params += [(f"lokr_{side}_a", (rows, r)), (f"lokr_{side}_b", (r, cols))]
            built.append((rows, cols))
    return KronShapes(tuple(params), tuple(built))


def select_linears(arch: Architecture, spec: str, what: str) -> tuple[Linear, ...]:
    """Block linears named by ``spec``.

    ``attention``, ``all-linear`` (every ``nn.Linear`` in the blocks, as peft does: not
    the LM head, not MoE experts stored as 3-D parameters), or a comma list of roles
    (q,k,v,o,gate,up,down) or module names. A fused projection (qkv, gate_up) is chosen
    when any of its roles is.
    """
    linears = [lin for lin in layout(arch).linears if lin.is_module]
    spec = spec.strip().lower()
    if spec == "all-linear":
        return tuple(linears)
    if spec == "attention":
        return tuple(lin for lin in linears if set(lin.roles) & set(ATTENTION_ROLES))
    chosen: list[Linear] = []
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        if item in _ROLE_ALIASES:
            match = [lin for lin in linears if item in lin.roles]
        else:
            # (case-insensitive: T5's modules are SelfAttention.q, EncDecAttention.q...)
            match = [
                lin
                for lin in linears
                if lin.module.lower() == item or lin.module.lower().endswith("." + item)
            ]
        if not match:
            names = sorted({lin.leaf for lin in linears})
            raise InvalidInputError(
                f"{what} '{item}' matches no linear layer of {arch.name}; use q,k,v,o,gate,up,"
                f"down, attention, all-linear or one of {', '.join(names)}."
            )
        chosen += [lin for lin in match if lin not in chosen]
    if not chosen:
        raise InvalidInputError(f"no {what} given.")
    # keep the model's own order
    return tuple(lin for lin in linears if lin in chosen)


def adapted_module_names(arch: Architecture, run: RunConfig) -> list[str] | str:
    """peft ``target_modules`` for the adapted linears: unambiguous module suffixes, or
    for an encoder-decoder one regular expression over the real module paths (peft
    matches a string whole), so that a target of one stack stays in that stack."""
    names = [lin.module for lin in adapted_linears(arch, run)]
    if not names:
        return []
    if lora_on_head(arch, run):
        names.append(HEAD_TARGET)
    if arch.encoder_decoder:
        # "encoder.layer.0.SelfAttention.q" -> encoder\.block\.\d+\.layer\.0\...
        paths = [
            re.escape(param_path(arch, 0, name)).replace(r"\.0\.", r"\.\d+\.", 1) for name in names
        ]
        return "|".join(paths)
    return names


def _is_bias(p: Param) -> bool:
    """BitFit's trainable set: every bias, of linears and of LayerNorms."""
    return p.kind == "linear_bias" or (p.kind == "norm" and p.name.endswith(".bias"))


def _base_format(param: Param, dtypes: Dtypes, keep_unquantized: frozenset[str]) -> StorageFormat:
    # bitsandbytes quantises only nn.Linear layers of the blocks; embeddings, norms and
    # the LM head stay in the base dtype. T5's feed-forward output (wo) is in its
    # _keep_in_fp32_modules, which transformers never quantises.
    fmt = dtypes.quantized
    if fmt is None or param.is_head or param.module in keep_unquantized:
        return dtypes.base
    if param.kind == "linear":
        return fmt
    if param.kind == "linear_bias" and fmt in ("nf4", "fp4"):
        # a 4-bit linear's bias is cast to its compute dtype in place by the first forward
        # (bitsandbytes@0.50.2 nn/modules.py Linear4bit.forward: bias.data = bias.data.to(x.dtype))
        return dtypes.four_bit_compute
    return dtypes.base


# The run settings a plan never reads: the step's shape. Runs that differ only in these
# (the searches of plan and max, compare grids, a sweep of batch sizes) share one plan,
# which is immutable; a fifth of an estimate's time went to building it again.
_SHAPE_FIELDS = frozenset({"batch_size", "seq_len", "target_len", "grad_accum"})
_planned_fields = operator.attrgetter(
    *(f for f in RunConfig.model_fields if f not in _SHAPE_FIELDS)
)
_PLANS: dict[tuple[object, ...], MethodPlan] = {}
_MAX_PLANS = 4096


def plan_key(arch: Architecture, run: RunConfig) -> tuple[object, ...]:
    """What decides the plan: the architecture and every run setting but the shape."""
    return (arch, _planned_fields(run))


def plan_method(arch: Architecture, run: RunConfig) -> MethodPlan:
    """Parameter groups of the model as the method trains it."""
    key = plan_key(arch, run)
    plan = _PLANS.get(key)
    if plan is None:
        _check_quantisable(arch, resolve_dtypes(run))
        _check_cuda_autocast(arch, run, resolve_dtypes(run))
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = _plan_method(arch, run)
    return plan


def _check_quantisable(arch: Architecture, dtypes: Dtypes) -> None:
    """bitsandbytes quantises a shared expert's one-output gate too (Family
    .shared_expert_gate; measured on tiny Qwen2-MoE: a (64, 1) uint8 weight with its own
    quantisation state), which the layout does not hold as a linear: refused, as are the
    families that say why theirs is not modelled (Family.quantisation_unmodelled)."""
    if dtypes.quantized and arch.traits.shared_expert_gate:
        raise InvalidInputError(
            f"Quantised weights of {arch.family} models are not modelled yet (bitsandbytes "
            "quantises their one-output shared_expert_gate too); use LoRA without "
            "quantisation."
        )
    if dtypes.quantized and arch.traits.quantisation_unmodelled:
        raise InvalidInputError(
            f"Quantised weights of {arch.family} models are not modelled yet "
            f"({arch.traits.quantisation_unmodelled}); use LoRA without quantisation."
        )


def _check_cuda_autocast(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> None:
    """Ops whose dtypes CUDA's autocast changes where the CPU's does not, not measured:
    ReLU² (transformers 5.25 activations.py ReLUSquaredActivation) squares with
    ``torch.square``, ``pow(self, 2)``, which CUDA's autocast runs in fp32 (torch's
    autocast fp32 op list; the CPU's leaves it 16-bit: tests/test_plain_mlp_activations.py); Nemotron's
    LayerNorm1P casts its arguments to 16-bit under CUDA's autocast only
    (Family.layer_norm_plus_one); xIELU's expm1 and softplus are on CUDA's fp32 list
    (the CPU's leaves them: tests/test_plain_mlp_activations.py)."""
    if not (dtypes.autocast and run.device == "cuda"):
        return
    if arch.activation == "relu2":
        raise InvalidInputError(
            f"{arch.family} models' ReLU² under autocast on CUDA (its square runs in fp32 "
            "there) is not modelled yet; use a pure bf16 or fp32 precision."
        )
    if arch.activation == "xielu":
        raise InvalidInputError(
            f"{arch.family} models' xIELU under autocast on CUDA (its expm1 and softplus "
            "run in fp32 there) is not modelled yet; use a pure bf16 or fp32 precision."
        )
    if arch.traits.layer_norm_plus_one:
        raise InvalidInputError(
            f"{arch.family} models' LayerNorm1P under autocast on CUDA (it casts its input "
            "to 16-bit there) is not modelled yet; use a pure bf16 or fp32 precision."
        )


def _plan_method(arch: Architecture, run: RunConfig) -> MethodPlan:
    """Every parameter tensor of the model as the method adapts it, and which train."""
    lay = layout(arch)
    dtypes = resolve_dtypes(run)
    notes: list[str] = []
    outer_names: frozenset[str] = frozenset()  # partial: outer parameters that train
    trained_by_block: tuple[frozenset[str], ...] = ()
    if run.method in NAMED_TRAINING_METHODS:
        outer_names, trained_by_block = partial_trainable(arch, trainable_spec(arch, run))
    trainable_blocks = _trainable_blocks(arch, run, trained_by_block, notes)
    galore_ranks = _galore_ranks(arch, run)

    groups = _outer_groups(arch, run, dtypes, outer_names, trainable_blocks)
    groups += vision_step.groups(arch, run, dtypes, _base_format)
    groups += _block_groups(arch, run, dtypes, trained_by_block, trainable_blocks, galore_ranks)
    groups += ln_tuning_originals(groups) if run.method == "ln-tuning" else []
    groups += trainable_tokens_groups(arch, run, dtypes)
    adapted, experts = lora_targets(arch, run) if run.method in ADAPTER_METHODS else ((), ())
    if experts and not adapted:
        # LoRA on the experts alone: the dense blocks below them (DeepSeek's first ones)
        # hold nothing that trains
        first = min(min(ex.layers) if ex.layers else arch.sparse_blocks[0] for ex in experts)
        trainable_blocks = arch.num_layers - first
    _check_shared_expert_lora(arch, adapted)
    if adapted and arch.linear_attention is not None:
        trainable_blocks = _trained_from_lowest_adapted(arch, adapted, experts)
    notes += torch_path_note(arch, run)
    _check_lora_variant(arch, run, bool(experts))
    groups += _lora_groups(adapted, arch, run, dtypes)
    groups += vision_lora.groups(arch, run, dtypes)
    head_lora = lora_on_head(arch, run)
    groups += _head_lora_groups(arch, run, dtypes) if head_lora else []
    groups += _expert_lora_groups(experts, arch, dtypes)
    scaled = ia3_linears(arch, run) if run.method == "ia3" else ()
    groups += _ia3_groups(scaled, arch, dtypes)
    other, other_groups = _peft_other(arch, run, dtypes)
    groups += other_groups
    bottlenecked = bottlenecked_linears(arch, run)
    groups += _bottleneck_groups(bottlenecked, arch, run, dtypes)
    v2_scaled = v2_scaled_linears(arch, run)
    groups += llama_adapter_groups(arch, run, dtypes, v2_scaled)
    groups += _prompt_groups(arch, run, dtypes)
    notes += _adapter_notes(arch, run)
    notes += vision_step.notes(arch, run)
    saved = run.modules_to_save if run.method in ADAPTER_METHODS else frozenset()
    groups += _modules_to_save_groups(arch, saved, dtypes)

    embed_trainable, head_trainable, final_norm_trainable = _trained_ends(
        arch, run, saved, outer_names
    )
    return MethodPlan(
        tuple(groups),
        dtypes,
        adapted,
        trainable_blocks,
        run.method in ("full", "galore"),
        tuple(notes),
        embed_trainable=embed_trainable,
        head_trainable=head_trainable,
        biased=tuple(
            p.module for p in lay.block if run.method == "bitfit" and p.kind == "linear_bias"
        ),
        norm_bias_trainable=run.method == "bitfit" and arch.norm == "layernorm",
        scaled=scaled,
        bottlenecked=bottlenecked,
        trained_by_block=trained_by_block,
        final_norm_trainable=final_norm_trainable,
        adapted_experts=experts,
        head_lora=head_lora,
        tied_embeddings=arch.tie_embeddings,
        per_layer_outer=frozenset(p.name for p in per_layer_outer_params(arch)),
        gated_blocks=gated_blocks(arch, run),
        v2_scaled=v2_scaled,
        head_scaled=run.method == "llama-adapter-v2",
        **other._asdict(),  # (_PeftOther's fields are MethodPlan's)
        orth_regularised=adalora_regularised(run),
    )


def _prompt_groups(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> list[TensorGroup]:
    """The prompt methods' own tensors: peft's prompt encoder (or Cartridge's trained
    cache) and Cartridge's frozen leading tokens."""
    groups: list[TensorGroup] = []
    for name, shape in prompt_encoder_shapes(arch, run):
        # peft builds the prompt encoder in torch's default dtype, fp32, whatever the base:
        # the adapter dtype (prompt methods take no --adapter-dtype; engine_cast's engines
        # cast it to 16-bit)
        groups.append(
            TensorGroup(
                name, shape, 1, dtypes.adapter, True, adapter=True, in_block=False,
                grad_numel=_cartridge_grad_numel(arch, run),
            )
        )  # fmt: skip
    if run.cartridge_frozen:  # Cartridge's frozen leading tokens (requires_grad=False)
        shape = (run.cartridge_frozen, 2 * arch.num_layers * prefix_token_dim(arch))
        name = "prompt_encoder.frozen_embedding"
        groups.append(TensorGroup(name, shape, 1, dtypes.adapter, False, True, in_block=False))
    return groups


class _PeftOther(NamedTuple):
    """The linears each of peft's other adapters (LoHa, LoKr, MiSS, RoAd, BOFT, OFT, VeRA,
    FourierFT, HiRA, PSOFT, HRA, PVeRA, RandLoRA, VB-LoRA, SHiRA, WaveFT, C3A) wraps, under
    MethodPlan's field names."""

    hadamard: tuple[Linear, ...]
    kronecker: tuple[Linear, ...]
    miss: tuple[Linear, ...]
    road: tuple[Linear, ...]
    rotated: tuple[Linear, ...]
    block_rotated: tuple[Linear, ...]
    vectored: tuple[Linear, ...]
    spectral: tuple[Linear, ...]
    hira: tuple[Linear, ...]
    psoft: tuple[Linear, ...]
    householder: tuple[Linear, ...]
    banked: tuple[Linear, ...]
    shira: tuple[Linear, ...]
    supertuning: tuple[Linear, ...]
    wavelet: tuple[Linear, ...]
    circulant: tuple[Linear, ...]
    beft: tuple[Linear, ...]
    glora: tuple[Linear, ...]
    peanut: tuple[Linear, ...]
    osf: tuple[Linear, ...]


# the fields of MethodPlan (and ops.context.BlockState) holding peft's other adapters' linears
PEFT_OTHER_FIELDS: tuple[str, ...] = _PeftOther._fields


def _peft_other(
    arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> tuple[_PeftOther, list[TensorGroup]]:
    """The linears peft's LoHa, LoKr, MiSS, RoAd, BOFT, OFT, VeRA, FourierFT, HiRA, PSOFT,
    HRA, PVeRA, RandLoRA, VB-LoRA, SHiRA, WaveFT and C3A wrap, and their tensors."""
    other = _PeftOther(
        loha_linears(arch, run),
        lokr_linears(arch, run),
        miss_linears(arch, run),
        road_linears(arch, run),
        boft_linears(arch, run),
        oft_linears(arch, run),
        vera_linears(arch, run),
        fourierft_linears(arch, run),
        hira_linears(arch, run),
        psoft_linears(arch, run),
        hra_linears(arch, run),
        banked_linears(arch, run),
        shira_linears(arch, run),
        supertuning_linears(arch, run),
        waveft_linears(arch, run),
        c3a_linears(arch, run),
        beft_linears(arch, run),
        glora_linears(arch, run),
        peanut_linears(arch, run),
        osf_linears(arch, run),
    )
    groups = _loha_groups(other.hadamard, arch, run, dtypes)
    groups += _banked_groups(other.banked, arch, run, dtypes)
    groups += _lokr_groups(other.kronecker, arch, run, dtypes)
    groups += _vera_groups(other.vectored, arch, run, dtypes)
    groups += _fourierft_groups(other.spectral, arch, run, dtypes)
    groups += _hira_groups(other.hira, arch, run, dtypes)
    groups += _peanut_groups(other.peanut, arch, run, dtypes)
    groups += [  # OSF's U_low, S_low, V_low (adapters.osf.shapes), V_low's gradient storage
        replace(
            _adapter(f"{lin.module}.osf_svd_params.{name}", shape, arch, dtypes, lin),
            grad_numel=osf.gradient_storage(lin, run.osf_rank, name, dtypes),
        )
        for lin in other.osf
        for name, shape in osf.shapes(lin, run.osf_rank).items()
    ]
    groups += _psoft_groups(other.psoft, arch, run, dtypes)
    r = run.hra[0]  # HRA's hra_u (in × r) per linear (peft tuners/hra/layer.py update_layer)
    groups += [
        _adapter(f"{lin.module}.hra_u", (lin.in_features, r), arch, dtypes, lin)
        for lin in other.householder
    ]
    groups += [
        _adapter(
            f"{lin.module}.shira_weight", (shira_values(lin, run.shira[0]),), arch, dtypes, lin
        )
        for lin in other.shira
    ]
    groups += _supertuning_groups(other.supertuning, arch, run, dtypes)
    n = run.waveft[0]
    groups += [
        _adapter(f"{lin.module}.waveft_spectrum", (n,), arch, dtypes, lin) for lin in other.wavelet
    ]
    b = run.c3a[0]
    groups += [
        _adapter(
            f"{lin.module}.c3a_kernel",
            (lin.out_features // b, lin.in_features // b, b),
            arch,
            dtypes,
            lin,
        )
        for lin in other.circulant
    ]
    # BEFT's beft_bias (1 × out) per linear (peft 0.21.2 tuners/beft/layer.py update_layer)
    groups += [
        _adapter(f"{lin.module}.beft_bias", (1, lin.out_features), arch, dtypes, lin)
        for lin in other.beft
    ]
    groups += glora.groups(other.glora, run, lambda n, s, lin: _adapter(n, s, arch, dtypes, lin))
    groups += _miss_road_groups(other.miss + other.road, arch, run, dtypes)
    groups += _boft_groups(other.rotated, arch, run, dtypes)
    groups += _oft_groups(other.block_rotated, arch, run, dtypes)
    return other, groups


def _trainable_blocks(
    arch: Architecture,
    run: RunConfig,
    trained_by_block: tuple[frozenset[str], ...],
    notes: list[str],
) -> int:
    """How many blocks, counted from the top, hold trainable tensors; refuses a method
    the model cannot run and notes where the estimate is known to fall short."""
    L = arch.num_layers
    if run.method == "freeze":
        trainable_blocks = (
            DEFAULT_FREEZE_TRAINABLE_LAYERS
            if run.trainable_layers is None
            else run.trainable_layers
        )
        if trainable_blocks == 0:
            raise InvalidInputError("--trainable-layers 0 leaves nothing to train.")
        if trainable_blocks > L:
            raise InvalidInputError(
                f"--trainable-layers {trainable_blocks} exceeds the model's {L} blocks."
            )
    elif run.method in ("full", "galore"):
        trainable_blocks = L
    elif run.method == "bitfit":
        if not arch.has_biases:
            raise InvalidInputError(
                f"{arch.name} has no bias terms: BitFit would train nothing "
                "(Llama-family models have none); use LoRA instead."
            )
        trainable_blocks = L
        # (the note is of the family's own fp32 attention, which 5.25 replaced)
        own_fp32 = older_than(run.transformers_version, TRANSFORMERS_FALCON_ATTENTION_INTERFACE)
        if (run.grad_ckpt or run.attn == "eager") and own_fp32:
            notes += arch.traits.notes_for("bitfit-recompute")
    elif run.method in NAMED_TRAINING_METHODS:
        first = next((i for i, names in enumerate(trained_by_block) if names), L)
        trainable_blocks = L - first
    elif run.method in ("llama-adapter", "adaption-prompt"):
        trainable_blocks = gated_blocks(arch, run)
    elif run.method in PROMPT_METHODS or run.method == "trainable-tokens":
        trainable_blocks = 0  # only the prompt encoder (the new rows) trains, outside the blocks
        if run.method in KV_PREFIX_METHODS and not arch.traits.prefix_tuning:
            raise InvalidInputError(
                f"{run.method} does not run on {arch.family} models (peft 0.21 sizes the prefix "
                "for every query head, which their attention cache rejects); use prompt-tuning "
                "or p-tuning instead."
            )
    else:
        trainable_blocks = L  # adapters in every block
    return trainable_blocks


def _galore_ranks(arch: Architecture, run: RunConfig) -> dict[str, int]:
    """GaLore: the rank of each projected block weight's optimizer states, by name."""
    if run.method != "galore":
        return {}
    rank, spec = run.galore
    return {
        f"{lin.module}.weight": min(rank, lin.in_features, lin.out_features)
        for lin in select_linears(arch, spec, "GaLore target")
    }


def _outer_groups(
    arch: Architecture,
    run: RunConfig,
    dtypes: Dtypes,
    outer_names: frozenset[str],
    trainable_blocks: int,
) -> list[TensorGroup]:
    """The tensors outside the blocks (embeddings, final norm, LM head), each with
    whether the method trains it."""
    groups: list[TensorGroup] = []
    for p in layout(arch).outer:
        trains = (
            run.method in ("full", "galore")
            or (run.method == "bitfit" and _is_bias(p))
            or (run.method in NAMED_TRAINING_METHODS and p.name in outer_names)
            or (run.method == "longlora" and p.kind in ("embedding", "norm"))
            or (run.method == "llama-adapter-v2" and p.kind == "norm")  # LitGPT's ln_f
            # T5 keeps its relative position bias tables in the first block of each stack
            or (
                run.method == "freeze"
                and arch.encoder_decoder
                and p.kind == "position"
                and trainable_blocks == arch.num_layers
            )
        )
        # (TRL's cast puts the token embedding and LM head in bf16: Dtypes.ends)
        fmt: StorageFormat = dtypes.head if p.is_head or p.kind == "embedding" else dtypes.base
        if _quantized_head(p, run, dtypes, trains) and dtypes.quantized is not None:
            fmt = dtypes.quantized
        dq = run.uses_double_quant if is_quantized(fmt) else True
        groups.append(TensorGroup(p.name, p.shape, 1, fmt, trains, double_quant=dq, in_block=False))
    return groups


def _quantized_head(p: Param, run: RunConfig, dtypes: Dtypes, trains: bool) -> bool:
    """The LM head is 4-bit too where the framework quantises every nn.Linear (LitGPT
    under Lightning's bitsandbytes plugin: profiles.Profile.quantizes_lm_head)."""
    return (
        p.is_head
        and p.kind == "linear"
        and not trains
        and run.method in QUANTIZED_BASE_METHODS
        and dtypes.quantized is not None
        and profile_of(run).quantizes_lm_head
    )


def _block_groups(
    arch: Architecture,
    run: RunConfig,
    dtypes: Dtypes,
    trained_by_block: tuple[frozenset[str], ...],
    trainable_blocks: int,
    galore_ranks: dict[str, int],
) -> list[TensorGroup]:
    """The blocks' own tensors in their storage (quantised or not), split into the
    blocks where each trains and those where it is frozen."""
    lay = layout(arch)
    L = arch.num_layers
    # (a router that is no nn.Linear keeps its bias in the base dtype too: gpt-oss's)
    keep_unquantized = frozenset(
        lin.module for lin in lay.linears if not (lin.quantizable and lin.is_module)
    )
    groups: list[TensorGroup] = []
    for p, copies in _stored_params(arch, run, dtypes):
        fmt = _base_format(p, dtypes, keep_unquantized)
        if p.kind == "router" and arch.traits.router_fp32:
            fmt = "fp32"  # (its _keep_in_fp32_modules_strict)
        if p.kind == "statistic":  # (fp32, requires_grad False: no method trains it)
            groups.append(TensorGroup(p.name, p.shape, p.count(L), "fp32", False))
            continue
        if copies and dtypes.quantized is not None:
            fmt = dtypes.quantized  # (an expert's or the router's nn.Linear, transformers 4)
        # a dense or sparse block's own tensors are in fewer; per-expert linears E each
        per = max(copies, 1)
        n_blocks = p.count(L) * per
        top = L - trainable_blocks  # (freeze trains the blocks from the top)
        if run.method in NAMED_TRAINING_METHODS:
            n = sum(p.name in names and p.in_block(i) for i, names in enumerate(trained_by_block))
            n *= max(copies, 1)
            if n_blocks - n:
                groups.append(TensorGroup(p.name, p.shape, n_blocks - n, fmt, False, per_block=per))
            if n:
                groups.append(TensorGroup(p.name, p.shape, n, fmt, True, per_block=per))
        elif run.method in ("full", "galore"):
            rank = galore_ranks.get(p.name, 0)
            groups.append(TensorGroup(p.name, p.shape, n_blocks, fmt, True, galore_rank=rank))
        elif run.method == "freeze":
            trained = sum(p.in_block(i) for i in range(top, L))
            if n_blocks - trained:
                groups.append(TensorGroup(p.name, p.shape, n_blocks - trained, fmt, False))
            if trained:
                groups.append(TensorGroup(p.name, p.shape, trained, fmt, True))
        elif run.method == "bitfit":
            groups.append(TensorGroup(p.name, p.shape, n_blocks, fmt, _is_bias(p), per_block=per))
        else:
            # LongLoRA also trains every norm (its trainable_params "embed,norm"), LitGPT's
            # adapter v2 too (adapter_filter: "norm_1", "norm_2", "ln_f")
            norms_train = run.method in ("longlora", "llama-adapter-v2")
            trains = norms_train and p.kind == "norm"
            dq, lay4 = run.uses_double_quant, nf4_layout(run)
            groups.append(
                TensorGroup(
                    p.name,
                    p.shape,
                    n_blocks,
                    fmt,
                    trains,
                    double_quant=dq,
                    layout=lay4,
                    per_block=per,
                )
            )
    return groups


def experts_are_linears(arch: Architecture, run: RunConfig) -> bool:
    """The MoE experts are nn.Linear modules, one per expert (transformers < 5,
    ftmem.versions.per_expert_linears), for the families whose 4.x code built them so
    (gpt-oss's experts were 3-D parameters from its first release, 4.55)."""
    traits = arch.traits
    return arch.is_moe and per_expert_linears(run) and not traits.experts_transposed_with_bias


def router_is_linear_in_4x(arch: Architecture) -> bool:
    """The router is an nn.Linear in transformers 4 (Mixtral's, Qwen2-MoE's, OLMoE's
    ``gate``; 4.48.1 modeling_mixtral.py MixtralSparseMoeBlock), which bitsandbytes
    quantises like any linear but the LM head (integrations/bitsandbytes.py
    get_keys_to_not_convert); DeepSeek's is a bare nn.Parameter (MoEGate)."""
    return not arch.traits.router_fp32


def _stored_params(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> list[tuple[Param, int]]:
    """The blocks' parameters as the quantised base stores them, each with the number of
    per-expert copies it stands for (0: one tensor per block). Under transformers 4 with
    a quantised base each expert's projection is its own 4-bit tensor with its own quant
    state (Mixtral's w1, w3 and w2, the fused gate_up of the layout split back into its
    two (f, h) linears), and so is the router's nn.Linear."""
    params = layout(arch).block
    if dtypes.quantized is None or not experts_are_linears(arch, run):
        return [(p, 0) for p in params]
    out: list[tuple[Param, int]] = []
    for p in params:
        if p.kind == "expert":
            experts, rows, cols = p.shape
            for role in p.roles:
                name = f"{p.name}.*.{role}"
                shape = (rows // len(p.roles), cols)
                out.append((replace(p, name=name, shape=shape, roles=(role,)), experts))
        elif p.kind == "router" and router_is_linear_in_4x(arch):
            out.append((p, 1))
        else:
            out.append((p, 0))
    return out


def _supertuning_groups(
    linears: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """Super-Tuning's one 1-D values parameter per linear (peft's supertuning_values) and,
    with Supra (--supertuning-r), its LoRA A (r × in) and B (out × r) beside it."""
    sparsity, r = run.supertuning[0], run.supertuning_r or 0
    groups = [
        _adapter(
            f"{lin.module}.supertuning_values",
            (supertuning_values(lin, sparsity),),
            arch,
            dtypes,
            lin,
        )
        for lin in linears
    ]
    groups += [
        _adapter(f"{lin.module}.supertuning_lora_{name}.weight", shape, arch, dtypes, lin)
        for lin in (linears if r else ())
        for name, shape in (("A", (r, lin.in_features)), ("B", (lin.out_features, r)))
    ]
    return groups


def _adapter(
    name: str, shape: tuple[int, ...], arch: Architecture, dtypes: Dtypes, lin: Linear
) -> TensorGroup:
    """One trainable adapter tensor in every block holding ``lin``, in the adapter dtype."""
    blocks = lin.count(arch.num_layers)
    return TensorGroup(name, shape, blocks, dtypes.adapter, True, adapter=True)


def _check_lora_variant(arch: Architecture, run: RunConfig, experts: bool) -> None:
    """BD-LoRA and MiCA are modelled (and measured) on a decoder's dense linears: peft
    gives neither to LoRA on parameters (the routed experts), and their image-text,
    encoder-decoder and LM-head runs were not measured."""
    what = "--lora-bd-blocks" if run.lora_bd_blocks else "--lora-mica" if run.lora_mica else ""
    what = f"--method {run.method}" if run.method in ("gralora", "delora", "deft") else what
    if not what:
        return
    if run.method == "deft":
        deft.check(arch, run)
    if run.method == "delora" and run.dropout:
        # module_dropout drops the input before its w_norm scaling, uncast (not measured)
        raise InvalidInputError(
            "--lora-dropout with --method delora (peft's module_dropout) is not modelled; drop it."
        )
    if run.method == "gralora" and arch.traits.conv1d:
        # peft's GraloraLayer takes Conv1D (tuners/gralora/layer.py l.55), not measured
        raise InvalidInputError(
            f"GraLoRA on {arch.family}'s transformers Conv1D layers is not modelled; "
            "use lora or ia3 on this model."
        )
    if run.method == "delora" and arch.traits.conv1d:
        # DeloraLayer takes nn.Linear only (tuners/delora/layer.py l.57-60)
        raise InvalidInputError(
            f"peft's DeLoRA does not wrap {arch.family}'s transformers Conv1D layers; "
            "use lora or ia3 on this model."
        )
    where = ""
    if experts:
        where = "routed experts"
    elif arch.vision is not None or arch.encoder_decoder:
        where = "an image-text or encoder-decoder model"
    elif lora_on_head(arch, run):
        where = "the LM head"
    if where:
        raise InvalidInputError(
            f"{what} is modelled on a decoder's dense linears, not with LoRA on {where}; "
            "drop it or change --lora-targets."
        )


def _lora_groups(
    adapted: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """LoRA's A (r × in) and B (out × r) beside each adapted linear; DoRA adds a
    magnitude per output feature. LoRA-FA freezes A (peft 0.21.2 optimizers/lorafa.py
    create_lorafa_optimizer: ``param.requires_grad = False`` for every lora_A)."""
    r = run.r
    groups: list[TensorGroup] = []
    if run.lora_bd_blocks:
        bdlora.check_divisible(adapted, r, run.lora_bd_blocks)
    if run.method == "gralora":
        gralora.check_divisible(adapted, r, run.gralora_blocks)
    for lin in adapted:
        a_shape: tuple[int, ...] = (r, lin.in_features)
        b_shape: tuple[int, ...] = (lin.out_features, r)
        if run.method == "deft":  # deft_R (r × in) unless PaRa, deft_P (out × r); r ≤ out
            rank, at = deft.rank(lin, r), (arch, dtypes, lin)
            if not run.deft_para:
                groups.append(_adapter(f"{lin.module}.deft_R", (rank, lin.in_features), *at))
            groups.append(_adapter(f"{lin.module}.deft_P", (lin.out_features, rank), *at))
            continue
        if run.lora_bd_blocks:
            a_shape, b_shape = bdlora.shapes(lin, r, run.lora_bd_blocks)
        elif run.method == "gralora":  # (named lora_A/B here: ftmem's LoRA path)
            a_shape, b_shape = gralora.shapes(lin, r, run.gralora_blocks)
        a = _adapter(f"{lin.module}.lora_A", a_shape, arch, dtypes, lin)
        if run.lora_fa:
            regains = profile_of(run).lora_fa_a_regains_grad
            a = replace(a, stateless=True) if regains else replace(a, trainable=False)
        groups.append(a)
        b = _adapter(f"{lin.module}.lora_B", b_shape, arch, dtypes, lin)
        groups.append(replace(b, trainable=False) if mica.b_frozen(run) else b)
        if run.method == "delora":  # (one trained λ per linear)
            groups.append(_adapter(f"{lin.module}.delora_lambda", (1,), arch, dtypes, lin))
        if run.method == "dora":
            name = f"{lin.module}.lora_magnitude_vector"
            groups.append(_adapter(name, (lin.out_features,), arch, dtypes, lin))
        elif run.method == "adalora":
            groups += _adalora_groups(lin, arch, run, dtypes)
    return groups


def adalora_regularised(run: RunConfig) -> bool:
    """AdaLoraModel.forward adds its orthogonal regulariser only to a loss the model
    returns (peft 0.21.2 tuners/adalora/model.py l.229-256): the standard loss (labels
    passed) of supervised finetuning."""
    return run.method == "adalora" and run.loss == "standard" and run.objective == "sft"


def _adalora_groups(
    lin: Linear, arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """AdaLoRA's singular values lora_E (r × 1) and its ``ranknum`` (one value, the
    adapter dtype: peft casts it with the adapters), trainable or not by peft's release
    (ftmem.versions.adalora_ranknum_trains)."""
    ranknum = _adapter(f"{lin.module}.ranknum", (1,), arch, dtypes, lin)
    trains = adalora_ranknum_trains(run, dtypes)
    return [
        _adapter(f"{lin.module}.lora_E", (run.r, 1), arch, dtypes, lin),
        ranknum if trains else replace(ranknum, trainable=False),
    ]


def _head_lora_groups(arch: Architecture, run: RunConfig, dtypes: Dtypes) -> list[TensorGroup]:
    """LoRA on the LM head: A (r × h) and B (V × r), once, in the adapter dtype. peft wraps
    lm_head also where it is the tied embedding (ensure_weight_tying defaults to False:
    it warns, peft 0.21.2 tuners/tuners_utils.py _check_tied_modules), so the pair is
    the same either way."""
    r, h, V = run.r, arch.hidden_size, arch.vocab_size
    return [
        TensorGroup(f"{HEAD_TARGET}.lora_A", (r, h), 1, dtypes.adapter, True, True, in_block=False),
        TensorGroup(f"{HEAD_TARGET}.lora_B", (V, r), 1, dtypes.adapter, True, True, in_block=False),
    ]


def _expert_lora_groups(
    experts: tuple[ExpertLoRA, ...], arch: Architecture, dtypes: Dtypes
) -> list[TensorGroup]:
    """LoRA on a 3-D expert parameter: lora_A (rank·E × in) and lora_B (out × rank·E),
    nn.Linear weights in the adapter dtype (peft 0.21.2 ParamWrapper.update_layer; the
    fp32 of autocast_adapter_dtype like any LoRA, measured)."""
    groups: list[TensorGroup] = []
    for ex in experts:
        lin, width, n = ex.linear, ex.rank * ex.linear.copies, ex.blocks(arch)
        for part, shape in (
            ("lora_A", (width, lin.in_features)),
            ("lora_B", (lin.out_features, width)),
        ):
            groups.append(
                TensorGroup(f"{lin.module}.{part}", shape, n, dtypes.adapter, True, adapter=True)
            )
    return groups


def _ia3_groups(
    scaled: tuple[tuple[Linear, bool], ...], arch: Architecture, dtypes: Dtypes
) -> list[TensorGroup]:
    """IA³'s vectors: a feed-forward linear's scales its input, the others their output."""
    groups: list[TensorGroup] = []
    for lin, feedforward in scaled:
        shape: tuple[int, ...] = (1, lin.in_features) if feedforward else (lin.out_features, 1)
        groups.append(_adapter(f"{lin.module}.ia3_l", shape, arch, dtypes, lin))
    return groups


def _loha_groups(
    hadamard: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """LoHa's two low-rank pairs per adapted linear: hada_w1_a and hada_w2_a (out × r),
    hada_w1_b and hada_w2_b (r × in), in the adapter dtype (peft 0.21.2
    tuners/loha/layer.py LoHaLayer.create_adapter_parameters, the Linear branch)."""
    r = run.loha[0]
    groups: list[TensorGroup] = []
    for lin in hadamard:
        for pair in ("w1", "w2"):
            a, b = f"{lin.module}.hada_{pair}_a", f"{lin.module}.hada_{pair}_b"
            groups.append(_adapter(a, (lin.out_features, r), arch, dtypes, lin))
            groups.append(_adapter(b, (r, lin.in_features), arch, dtypes, lin))
    return groups


def _lokr_groups(
    kronecker: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """LoKr's factors per adapted linear (lokr_shapes), in the adapter dtype."""
    return [
        _adapter(f"{lin.module}.{name}", shape, arch, dtypes, lin)
        for lin in kronecker
        for name, shape in lokr_shapes(lin, run).params
    ]


def _miss_road_groups(
    adapted: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """MiSS's block or RoAd's angle and scale vectors per adapted linear, in the adapter
    dtype (miss_road_shapes)."""
    return [
        _adapter(f"{lin.module}.{name}", shape, arch, dtypes, lin)
        for lin in adapted
        for name, shape in miss_road_shapes(lin, run)
    ]


def _boft_groups(
    rotated: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """BOFT's boft_R (1 × blocks × side × side, skew parts of the Cayley blocks) and
    boft_s (out × 1) per adapted linear, in the adapter dtype (peft update_layer)."""
    groups: list[TensorGroup] = []
    for lin in rotated:
        blocks, side = boft_blocks(lin, run)
        groups.append(_adapter(f"{lin.module}.boft_R", (1, blocks, side, side), arch, dtypes, lin))
        groups.append(_adapter(f"{lin.module}.boft_s", (lin.out_features, 1), arch, dtypes, lin))
    return groups


def _oft_groups(
    block_rotated: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """OFT's oft_R weight per adapted linear: the upper triangles of its blocks (one block
    under block_share), blocks × side·(side − 1)/2, in the adapter dtype (peft
    OFTRotationModule)."""
    groups: list[TensorGroup] = []
    for lin in block_rotated:
        blocks, side = oft_blocks(lin, run)
        shape = (1 if run.oft[3] else blocks, side * (side - 1) // 2)
        groups.append(_adapter(f"{lin.module}.oft_R.weight", shape, arch, dtypes, lin))
    return groups


def _vera_groups(
    vectored: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """VeRA's trained vectors per adapted linear: vera_lambda_b (out) and vera_lambda_d
    (r), in the adapter dtype (peft 0.21.2 tuners/vera/layer.py VeraLayer.update_layer).
    The shared projections are buffers: adapters.vera.projection_bytes. PVeRA's are
    pvera_lambda_b (out) and pvera_lambda_d (2r: vera_code_width)."""
    width, prefix = vera_code_width(run), "vera" if run.method == "vera" else "pvera"
    groups: list[TensorGroup] = []
    for lin in vectored:
        groups.append(
            _adapter(f"{lin.module}.{prefix}_lambda_b", (lin.out_features,), arch, dtypes, lin)
        )
        groups.append(_adapter(f"{lin.module}.{prefix}_lambda_d", (width,), arch, dtypes, lin))
    return groups


def _banked_groups(
    banked: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """RandLoRA's randlora_lambda (r × bases) and randlora_gamma (bases × min(in, out)) per
    adapted linear (peft 0.21.2 tuners/randlora/layer.py update_layer; its bases are
    buffers: adapters.randlora.basis_bytes). VB-LoRA's logits per adapted linear,
    vblora_logits_A (r × in/length × vectors) and vblora_logits_B (out/length × r ×
    vectors), and the one bank (vectors × length) every layer shares (tuners/vblora/
    layer.py update_layer, model.py _init_vblora_vector_bank)."""
    groups: list[TensorGroup] = []
    if run.method == "randlora":
        r = run.randlora[0]
        for lin in banked:
            n, low = randlora_bases(lin, r), min(lin.in_features, lin.out_features)
            groups.append(_adapter(f"{lin.module}.randlora_lambda", (r, n), arch, dtypes, lin))
            groups.append(_adapter(f"{lin.module}.randlora_gamma", (n, low), arch, dtypes, lin))
        return groups
    if run.method == "tinylora":
        return _tinylora_groups(banked, arch, run, dtypes)
    if run.method == "adamss":
        return _adamss_groups(banked, arch, run, dtypes)
    if run.method == "lily":
        return _lily_groups(banked, arch, run, dtypes)
    if run.method == "unilora":  # theta_d once, held by the model (model.py
        # _init_unilora_theta_d); its indices and scales are buffers (adapters.unilora)
        theta = TensorGroup("unilora_theta_d", (run.unilora[1],), 1, dtypes.adapter, True, True)
        return [replace(theta, in_block=False)] if banked else []
    r, vectors, length, _, _ = run.vblora
    for lin in banked:
        a = (r, lin.in_features // length, vectors)
        b = (lin.out_features // length, r, vectors)
        groups.append(_adapter(f"{lin.module}.vblora_logits_A", a, arch, dtypes, lin))
        groups.append(_adapter(f"{lin.module}.vblora_logits_B", b, arch, dtypes, lin))
    if banked:  # (outside the blocks: its gradient gathers every layer's)
        shape = (vectors, length)
        bank = TensorGroup("vblora_vector_bank", shape, 1, dtypes.adapter, True, True)
        groups.append(replace(bank, in_block=False))
    return groups


def tinylora_vectors(banked: tuple[Linear, ...], arch: Architecture, run: RunConfig) -> int:
    """TinyLoRA's trained vectors: the n adapted linears (every block's) fall into
    max(1, round(n · (1 - weight_tying))) groups, one vector each (peft 0.21.2
    tuners/tinylora/model.py _create_and_replace: num_groups, group_idx; every group gets
    a linear since num_groups <= n)."""
    n = sum(lin.count(arch.num_layers) for lin in banked)
    return max(1, round(n * (1.0 - run.tinylora[2]))) if n else 0


def _adamss_groups(
    banked: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """AdaMSS's trained factors per adapted linear (peft 0.21.2 tuners/adamss/layer.py
    update_layer, ParameterLists adamss_A and adamss_B): per subspace i, A_i (rank × R)
    and B_i (rows_i × rank), the rows_i summing to the linear's out_features. KMeans sets
    the rows per subspace; they are laid out here as even as they go (the count is exact,
    only a B_i's own size, for allocator rounding, follows the clustering). Its projection
    adamss_newB is a buffer (adapters.adamss.buffer_bytes)."""
    groups: list[TensorGroup] = []
    for lin in banked:
        blocks = lin.count(arch.num_layers)
        R, k, rank = adamss_shape(run, lin)
        rows, wide = divmod(lin.out_features, k)
        parts = [(f"{lin.module}.adamss_A", (rank, R), k)]
        parts += [(f"{lin.module}.adamss_B (one row more)", (rows + 1, rank), wide)]
        parts += [(f"{lin.module}.adamss_B", (rows, rank), k - wide)]
        for name, shape, n in parts:
            if n:
                group = TensorGroup(name, shape, blocks * n, dtypes.adapter, True, adapter=True)
                groups.append(replace(group, per_block=n))
    return groups


def _lily_groups(
    banked: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """Lily's per adapted target (peft 0.21.2 tuners/lily/layer.py update_layer, model.py
    _post_injection_hook): lily_A (r × in), one per stride_A consecutive layers; one lily_B
    (num_B · r × out) for all layers; lily_router (num_B × r) in every layer. Shared tensors
    sit outside the blocks (their gradient gathers every sharing layer's)."""
    r, stride, num_b, _ = run.lily
    groups: list[TensorGroup] = []
    for lin in banked:
        blocks = lin.count(arch.num_layers)
        a = (r, lin.in_features)
        if stride == 1:
            groups.append(_adapter(f"{lin.module}.lily_A", a, arch, dtypes, lin))
        else:
            shared_a = TensorGroup(
                f"{lin.module}.lily_A", a, -(-blocks // stride), dtypes.adapter, True, True
            )
            groups.append(replace(shared_a, in_block=False))
        shared_b = TensorGroup(
            f"{lin.module}.lily_B", (num_b * r, lin.out_features), 1, dtypes.adapter, True, True
        )
        groups.append(replace(shared_b, in_block=False))
        groups.append(_adapter(f"{lin.module}.lily_router", (num_b, r), arch, dtypes, lin))
    return groups


def _tinylora_groups(
    banked: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """TinyLoRA's tinylora_v (u,) per group, held by the model (model.py
    _create_and_replace; its SVD factors and projections are buffers:
    adapters.tinylora.buffer_bytes)."""
    count = tinylora_vectors(banked, arch, run)
    if not count:
        return []
    v = TensorGroup("tinylora_v", (run.tinylora[1],), count, dtypes.adapter, True, True)
    return [replace(v, in_block=False)]


def _fourierft_groups(
    spectral: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """FourierFT's spectrum (n_frequency) per adapted linear, in the adapter dtype (peft
    0.21.2 tuners/fourierft/layer.py FourierFTLayer.update_layer); its indices are not
    parameters (adapters.lycoris.fourier_index_bytes)."""
    n = run.fourierft[0]
    return [
        _adapter(f"{lin.module}.fourierft_spectrum", (n,), arch, dtypes, lin) for lin in spectral
    ]


def _peanut_groups(
    peanut: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """Peanut's peanut_A (r × out), peanut_B (out × r) and depth encoder and decoder weights
    (r × r each) per adapted linear, bias-free, in the adapter dtype (peft 0.21.2
    tuners/peanut/layer.py PeanutLayer.update_layer: ``nn.Linear(out_features, r)``,
    ``nn.Linear(r, out_features)``, ``nn.Linear(r, r)`` per depth step; the same at
    5d602fdbff04)."""
    r, _, depth = run.peanut
    groups = []
    for lin in peanut:
        name, out = lin.module, lin.out_features
        groups.append(_adapter(f"{name}.peanut_A.weight", (r, out), arch, dtypes, lin))
        groups.append(_adapter(f"{name}.peanut_B.weight", (out, r), arch, dtypes, lin))
        for i in range(depth):
            for side in ("encoders", "decoders"):
                groups.append(
                    _adapter(f"{name}.peanut_{side}.{i}.weight", (r, r), arch, dtypes, lin)
                )
    return groups


def _hira_groups(
    hira: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """HiRA's hira_A (r × in) and hira_B (out × r) per adapted linear, in the adapter dtype
    (peft 0.21.2 tuners/hira/layer.py HiraLayer.update_layer; the same at 5d602fdbff04)."""
    r = run.hira[0]
    groups: list[TensorGroup] = []
    for lin in hira:
        groups.append(_adapter(f"{lin.module}.hira_A", (r, lin.in_features), arch, dtypes, lin))
        groups.append(_adapter(f"{lin.module}.hira_B", (lin.out_features, r), arch, dtypes, lin))
    return groups


def _psoft_groups(
    psoft: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """PSOFT's OrthLayer per adapted linear (peft 0.21.2 tuners/psoft/layer.py, the same at
    5d602fdbff04): ``weight``, R's upper triangle (r·(r − 1)/2), and the output- and
    input-side scales ``vector_b``, ``vector_a`` (r each), in the adapter dtype. Its frozen
    A and B are buffers (adapters.psoft.buffer_bytes)."""
    r = run.psoft[0]
    groups: list[TensorGroup] = []
    for lin in psoft:
        name = f"{lin.module}.psoft_R"
        groups.append(_adapter(f"{name}.weight", (r * (r - 1) // 2,), arch, dtypes, lin))
        groups.append(_adapter(f"{name}.vector_b", (r,), arch, dtypes, lin))
        groups.append(_adapter(f"{name}.vector_a", (r,), arch, dtypes, lin))
    return groups


def _bottleneck_groups(
    bottlenecked: tuple[Linear, ...], arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """A bottleneck MLP (h → m → h, with biases) after each bottlenecked linear."""
    m = run.bottleneck[0]
    groups: list[TensorGroup] = []
    for lin in bottlenecked:
        for part, shape in (
            ("down.weight", (m, lin.out_features)),
            ("down.bias", (m,)),
            ("up.weight", (lin.out_features, m)),
            ("up.bias", (lin.out_features,)),
        ):
            groups.append(_adapter(f"{lin.module}.adapter.{part}", shape, arch, dtypes, lin))
    return groups


def _adapter_notes(arch: Architecture, run: RunConfig) -> list[str]:
    """What the adapters and the quantised base leave out on some models."""
    notes: list[str] = []
    if run.method in ADAPTER_METHODS and arch.is_moe and "all-linear" in _items(run.targets):
        if arch.traits.peft_converts_expert_targets and run.method not in EXPERT_LORA_METHODS:
            notes.append(
                f"peft 0.21.2 reads all-linear on {arch.family} as the attention projections "
                "plus LoRA on the router and the routed experts; with "
                f"{run.method} that is not modelled: estimated for the attention projections."
            )
        elif arch.traits.peft_converts_expert_targets:
            # peft 0.21.2 utils/transformers_weight_conversion.py
            # _resolve_string_target_modules adds the experts' and the router's old names
            notes.append(
                f"peft 0.21.2 reads all-linear on {arch.family} as the attention projections "
                "plus LoRA on the router and on the routed experts' 3-D weights (gate_up at "
                "rank 2r), each rebuilt whole every forward: estimated so; --lora-targets "
                "attention leaves the experts frozen."
            )
        elif not adapted_experts(arch, run):
            notes.append(
                "MoE experts are 3-D parameters in transformers 5, not nn.Linear: all-linear "
                "adapts the attention projections only (add experts to the targets for "
                "peft's target_parameters on them)."
            )
    if run.quant_format == "int4":
        notes.append(
            "int4: LoRA on a GPTQ/AWQ base (4-bit values, an fp16 scale and a 4-bit zero per "
            "128 inputs); like NF4 its kernels dequantise inside and keep no 16-bit copy "
            "(AutoGPTQ's qlinear_cuda_old, --gptq-kernel cuda-old, keeps one per matmul)."
        )
    if run.method == "qlora" and experts_are_linears(arch, run):
        notes.append(
            f"transformers {run.transformers_version}: every expert's projections and the "
            "router are nn.Linear modules, quantised by bitsandbytes like the attention's."
        )
    elif run.method == "qlora" and arch.is_moe:
        notes.append(
            "bitsandbytes quantises nn.Linear layers only: transformers 5 stores MoE experts "
            "as 3-D parameters, so they stay 16-bit under QLoRA."
        )
    if run.method == "adamss" and run.adamss[2] > 1:
        notes.append(
            f"AdaMSS: every subspace counted at rank {run.adamss[2]}, an upper bound: peft "
            "gives a cluster of fewer output rows a rank of its row count (KMeans decides "
            "the clusters when peft wraps the model)."
        )
    return notes


def _modules_to_save_groups(
    arch: Architecture, saved: frozenset[str], dtypes: Dtypes
) -> list[TensorGroup]:
    """peft's modules_to_save: a trainable copy of the token embedding and/or the LM
    head beside the frozen original, in the same dtype."""
    if not saved:
        return []
    if arch.tie_embeddings:
        raise InvalidInputError(
            f"{arch.name} ties its embedding and LM head: --lora-modules-to-save on a tied "
            "pair is not modelled."
        )
    groups: list[TensorGroup] = []
    for p in layout(arch).outer:
        kind = "head" if p.is_head else "embed" if p.kind == "embedding" else None
        if kind in saved:
            name = f"{p.name}.modules_to_save"
            groups.append(TensorGroup(name, p.shape, 1, dtypes.base, True, in_block=False))
    return groups


def _trained_ends(
    arch: Architecture, run: RunConfig, saved: frozenset[str], outer_names: frozenset[str]
) -> tuple[bool, bool, bool]:
    """Whether the token embedding, the LM head and the final norm train (beyond full
    finetuning): saved copies, LongLoRA's embedding and norms, partial's selection. A
    tied pair is one tensor: its embedding training trains the head."""
    embed_trainable, head_trainable = "embed" in saved, "head" in saved
    final_norm_trainable = run.method == "llama-adapter-v2"
    if run.method == "longlora":
        embed_trainable = final_norm_trainable = True
        head_trainable = head_trainable or arch.tie_embeddings
    if run.method in NAMED_TRAINING_METHODS:
        for p in layout(arch).outer:
            if p.name not in outer_names:
                continue
            if p.kind == "embedding":
                embed_trainable = True
                head_trainable = head_trainable or arch.tie_embeddings  # tied: one tensor
            elif p.is_head:
                head_trainable = True
            elif p.kind == "norm":
                final_norm_trainable = True
    return embed_trainable, head_trainable, final_norm_trainable


def bottlenecked_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """The linears whose output passes through a bottleneck adapter: the attention's
    output projection (Houlsby) and the MLP's (both placements)."""
    if run.method != "adapter":
        return ()
    placement = run.bottleneck[1]
    roles = ("o", "down") if placement == "houlsby" else ("down",)
    lins = [lin for lin in layout(arch).linears if lin.is_module and set(lin.roles) & set(roles)]
    if "down" in roles and not any("down" in lin.roles for lin in lins):
        raise InvalidInputError(
            f"{arch.name}'s MLP is a mixture of experts without an output linear: bottleneck "
            "adapters after it are not modelled."
        )
    return tuple(lins)


# the methods that train base parameters picked by name: partial (--trainable-modules)
# and LN tuning (peft's trainable copy of each targeted norm)
NAMED_TRAINING_METHODS = frozenset({"partial", "ln-tuning"})


def trainable_spec(arch: Architecture, run: RunConfig) -> str:
    """The regular expressions over parameter names of what trains by name: partial's
    --trainable-modules, or the parameters (weight and bias) of the norms LN tuning
    copies. peft's LNTuningModel deep-copies each targeted module
    (tuners/ln_tuning/layer.py update_layer) and runs the copy in forward; the copy's
    parameters train, the original's stay frozen beside them (MethodPlan: the frozen
    originals as groups of their own)."""
    if run.method == "partial":
        return run.trainable_modules or ""
    # (Family.ln_tuning_targets; a name matches a module whose name ends in ".<name>",
    # peft's check_target_module_exists)
    targets = arch.traits.ln_tuning_targets
    if arch.vision is not None:
        # peft looks its defaults up by the composite model's type (qwen2_vl, gemma3,
        # mllama, ...), which its mapping mostly lacks; none of them was measured
        raise InvalidInputError(
            f"LN tuning on {arch.name} is not modelled (no image-text model was measured); "
            "ftmem models LN tuning on decoder-only language models."
        )
    if not targets:
        raise InvalidInputError(
            f"peft 0.21.2 has no default LN-tuning targets for {arch.family} models; use "
            "--method partial with --trainable-modules naming the norms instead."
        )
    # one expression: peft refuses only when no target matches at all
    return rf"(^|\.)({'|'.join(targets)})\.(weight|bias)$"


TRAINABLE_TOKENS_DELTA = "embed_tokens.trainable_tokens_delta"
# what trainable tokens is not modelled on, each measured off on its tiny model with real
# peft (bf16, stop 46; not traced): (the model's trait, what to say)
TRAINABLE_TOKENS_OFF: tuple[tuple[Callable[[Architecture], bool], str], ...] = (
    (lambda a: a.latent_attention, "latent attention (DeepSeek's: peak -21 %)"),
    (lambda a: a.traits.attention_sinks, "attention sinks (gpt-oss's: peak -3.6 %)"),
    (lambda a: a.final_logit_softcapping is not None, "a soft-capped head (Gemma 2's: +11 %)"),
    (lambda a: a.position_embedding == "learned", "learned positions (peft's run failed)"),
)


def trainable_tokens_groups(
    arch: Architecture, run: RunConfig, dtypes: Dtypes
) -> list[TensorGroup]:
    """peft's trainable tokens (peft 0.21.2 tuners/trainable_tokens/layer.py update_layer
    :157): ``trainable_tokens_delta`` (n × h), the rows cloned in the weight's dtype and
    cast to the adapter dtype (autocast_adapter_dtype: fp32 on a 16-bit base).
    Modelled on decoder-only language models; a tied head is wrapped too, sharing delta
    (adapters.trainable_tokens.head_saved)."""
    if run.method != "trainable-tokens":
        return []
    if arch.encoder_decoder or arch.vision is not None:
        raise InvalidInputError(
            f"trainable tokens on {arch.name} (an encoder-decoder or image-text model) is not "
            "modelled; ftmem models it on decoder-only language models."
        )
    for off, what in TRAINABLE_TOKENS_OFF:
        if off(arch):
            raise InvalidInputError(
                f"trainable tokens on {arch.name}, with {what}, is not modelled; "
                "use a Llama-, Mistral- or Qwen-like model."
            )
    if arch.tie_embeddings and run.loss in ("fused", "logprob-tiles"):
        # peft's wrapped head is an F.linear of its own copy: a fused loss never calls it
        raise InvalidInputError(
            f"trainable tokens on {arch.name}'s tied head with --loss {run.loss} is not "
            "modelled; use the standard loss."
        )
    ids = run.trainable_tokens
    if max(ids) >= arch.vocab_size:
        raise InvalidInputError(
            f"--trainable-token-ids reaches token {max(ids)}; {arch.name} has "
            f"{arch.vocab_size:,} tokens (ids 0 to {arch.vocab_size - 1:,})."
        )
    shape = (len(ids), arch.hidden_size)
    name = f"model.{TRAINABLE_TOKENS_DELTA}"
    # (the original rows are a buffer: adapters.trainable_tokens.buffer_bytes)
    return [TensorGroup(name, shape, 1, dtypes.adapter, True, adapter=True, in_block=False)]


def ln_tuning_originals(groups: list[TensorGroup]) -> list[TensorGroup]:
    """LN tuning's frozen originals: one frozen tensor beside each trainable copy, in the
    base layer's dtype (LNTuningModel._cast_adapter_dtype leaves the copies as they are:
    peft 0.21.2 tuners/ln_tuning/model.py l.131-135)."""
    return [
        replace(g, name=f"{g.name} (frozen original)", trainable=False)
        for g in groups
        if g.trainable
    ]


@lru_cache(maxsize=256)
def partial_trainable(
    arch: Architecture, spec: str
) -> tuple[frozenset[str], tuple[frozenset[str], ...]]:
    """Which parameters ``--trainable-modules`` selects: (outer names, and per block the
    names within the block). Each comma-separated item is a regular expression searched
    in the full parameter name, as transformers names it (``model.layers.3.mlp.up_proj
    .weight``, ``lm_head.weight``)."""
    items = split_patterns(spec)
    if not items:
        raise InvalidInputError(
            "--trainable-modules is empty; give e.g. self_attn, mlp, lm_head or layers\\.3[01]\\."
        )
    lay = layout(arch)
    longest = max(
        len(name)
        for name in [p.name for p in lay.outer]
        + [param_path(arch, arch.num_layers - 1, p.name) for p in lay.block]
    )
    patterns = compile_bounded(items, "--trainable-modules", longest)
    used: set[int] = set()

    def hit(name: str) -> bool:
        found = [i for i, pat in enumerate(patterns) if pat.search(name)]
        used.update(found)
        return bool(found)

    outer = frozenset(p.name for p in lay.outer if hit(p.name))
    blocks = tuple(
        frozenset(p.name for p in lay.block if p.in_block(i) and hit(param_path(arch, i, p.name)))
        for i in range(arch.num_layers)
    )
    for i, item in enumerate(items):
        if i not in used:
            raise InvalidInputError(
                f"--trainable-modules {item!r} matches no parameter of {arch.name}; names look "
                f"like {param_path(arch, 0, lay.block[0].name)} or {lay.outer[-1].name}."
            )
    return outer, blocks


def prefix_token_dim(arch: Architecture) -> int:
    """Width of one layer's key (or value) prefix per token: peft sizes it from
    ``num_key_value_heads · head_dim`` when the config has them (GQA aware)."""
    return arch.kv_size


def prompt_encoder_shapes(arch: Architecture, run: RunConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter shapes of peft's prompt encoder for the prompt-learning methods."""
    n, h, L = run.n_virtual, arch.hidden_size, arch.num_layers
    pe = "prompt_encoder"
    if run.method == "prompt-tuning":
        return [(f"{pe}.embedding.weight", (n, h))]
    if run.method == "p-tuning":
        H = run.encoder_hidden or h
        out: list[tuple[str, tuple[int, ...]]] = [(f"{pe}.embedding.weight", (n, h))]
        if run.encoder == "lstm":
            # two bidirectional layers (peft's encoder_num_layers default); the second reads
            # both directions of the first
            for layer, width in ((0, h), (1, 2 * H)):
                for sfx in ("", "_reverse"):
                    out += [
                        (f"{pe}.lstm_head.weight_ih_l{layer}{sfx}", (4 * H, width)),
                        (f"{pe}.lstm_head.weight_hh_l{layer}{sfx}", (4 * H, H)),
                        (f"{pe}.lstm_head.bias_ih_l{layer}{sfx}", (4 * H,)),
                        (f"{pe}.lstm_head.bias_hh_l{layer}{sfx}", (4 * H,)),
                    ]
            dims = [(2 * H, 2 * H), (2 * H, h)]
            idx: tuple[int, ...] = (0, 2)
        else:
            dims = [(h, H), (H, H), (H, h)]
            idx = (0, 2, 4)
        for i, (fan_in, fan_out) in zip(idx, dims, strict=True):
            out += [
                (f"{pe}.mlp_head.{i}.weight", (fan_out, fan_in)),
                (f"{pe}.mlp_head.{i}.bias", (fan_out,)),
            ]
        return out
    if run.method == "cartridge":
        # CartridgeEncoder: the cache itself, its trained tokens (the frozen leading ones
        # are a group of their own, _plan_method; peft 0.21.2 tuners/cartridge/model.py
        # CartridgeEncoder.__init__)
        kv_all = L * 2 * prefix_token_dim(arch)
        return [(f"{pe}.trainable_embedding", (n - run.cartridge_frozen, kv_all))]
    if run.method == "prefix-tuning":
        td = prefix_token_dim(arch)
        kv_all = L * 2 * td  # keys and values of every layer
        if not run.prefix_projection:
            return [(f"{pe}.embedding.weight", (n, kv_all))]
        H = run.encoder_hidden or td
        return [
            (f"{pe}.embedding.weight", (n, td)),
            (f"{pe}.transform.0.weight", (H, td)),
            (f"{pe}.transform.0.bias", (H,)),
            (f"{pe}.transform.2.weight", (kv_all, H)),
            (f"{pe}.transform.2.bias", (kv_all,)),
        ]
    return []


def _cartridge_grad_numel(arch: Architecture, run: RunConfig) -> int:
    """Cartridge with frozen tokens: peft's ``weight`` is ``cat([frozen, trainable])`` every
    forward (tuners/cartridge/model.py CartridgeEncoder.weight), so the trained tokens'
    gradient is cat's backward's narrow of the whole n × 2·L·token_dim gradient, a
    contiguous view AccumulateGrad keeps as ``.grad``: its storage is the whole cache's
    (measured: 20 tokens, 1 frozen, tiny Llama: 30,720 B, not 29,184). 0 otherwise."""
    if not run.cartridge_frozen:
        return 0
    return run.n_virtual * 2 * arch.num_layers * prefix_token_dim(arch)


def gated_blocks(arch: Architecture, run: RunConfig) -> int:
    """LLaMA-Adapter: how many blocks, counted from the top, hold an adaption prompt and
    its gate (litgpt/adapter.py CausalSelfAttention: ``block_idx >= adapter_start_layer``;
    peft: the last ``adapter_layers`` attentions, tuners/adaption_prompt/model.py
    add_adapter)."""
    if run.method == "adaption-prompt":
        return _adaption_prompt_blocks(arch, run)
    if run.method not in LLAMA_ADAPTER_METHODS:
        return 0
    start = run.adaption_prompt[1]
    if start >= arch.num_layers:
        raise InvalidInputError(
            f"--adapter-start-layer {start} leaves none of {arch.name}'s {arch.num_layers} "
            "blocks with an adaption prompt; give a smaller one."
        )
    # LitGPT builds neither encoder-decoders nor image-text models, and adapter.py's
    # CausalSelfAttention is the multi-head one (no MLA), its Block the dense MLP's
    if arch.encoder_decoder or arch.is_moe or arch.latent_attention or arch.vision is not None:
        raise InvalidInputError(
            f"{run.method} is LitGPT's, for text-only decoder models with dense MLPs and "
            f"multi-head attention; {arch.name} is not one."
        )
    return arch.num_layers - start


def _adaption_prompt_blocks(arch: Architecture, run: RunConfig) -> int:
    """peft's adaption prompt: --adapter-layers (default every block), on the model types
    peft knows, where its key/value heads come out as the model's (it takes
    ``factor = k_proj.in_features // k_proj.out_features`` as queries per key/value head,
    layer.py AdaptedAttention.forward, which holds only where hidden = heads × head_dim)."""
    model_type = arch.traits.model_types[0]
    if arch.vision is not None:
        raise InvalidInputError(
            f"peft's adaption prompt is modelled on text-only models; {arch.name} is an "
            "image-text model."
        )
    if not arch.traits.adaption_prompt_target:  # (Family.adaption_prompt_target)
        raise InvalidInputError(
            f"peft's adaption prompt runs on Llama, Mistral and GPT-2 models only (its "
            f"TRANSFORMERS_MODEL_CONFIG); {arch.name} is a {model_type} model."
        )
    if arch.hidden_size != arch.num_heads * arch.head_size:
        raise InvalidInputError(
            f"peft's adaption prompt derives the key/value heads from k_proj's in/out "
            f"features, which breaks where hidden size ({arch.hidden_size}) is not heads × "
            f"head_dim ({arch.num_heads} × {arch.head_size}), as in {arch.name}."
        )
    n_blocks = run.adapter_layers or arch.num_layers
    if n_blocks > arch.num_layers:
        raise InvalidInputError(
            f"--adapter-layers {n_blocks} is more than {arch.name}'s {arch.num_layers} "
            "blocks (peft refuses it); give at most that."
        )
    return n_blocks


def v2_scaled_linears(arch: Architecture, run: RunConfig) -> tuple[Linear, ...]:
    """LLaMA-Adapter v2: every block linear is LitGPT's AdapterV2Linear (litgpt/adapter_v2.py:
    the attention's qkv and proj, the MLP's fc / fc_1, fc_2 and proj)."""
    if run.method != "llama-adapter-v2":
        return ()
    return tuple(lin for lin in layout(arch).linears if lin.is_module)


def llama_adapter_groups(
    arch: Architecture, run: RunConfig, dtypes: Dtypes, v2_scaled: tuple[Linear, ...]
) -> list[TensorGroup]:
    """LLaMA-Adapter's tensors, in the model's dtype (LitGPT builds them with the model
    under Fabric's precision): per gated block the adaption prompt ``adapter_wte``
    (n × h) and ``gating_factor`` (1, 1, heads, 1); v2 adds ``adapter_bias`` and
    ``adapter_scale`` (out,) to every linear and to the LM head. All of them pass
    LitGPT's adapter_filter (requires_grad), but ``adapter_wte`` gets no gradient: its
    keys and values are cached by the scripts' first, no-grad forward and reused, graph
    free, by every training forward (adapters.llama_adapter), so it is idle."""
    n_gated = gated_blocks(arch, run)
    if not n_gated:
        return []
    length = run.adaption_prompt[0]
    dt = dtypes.adapter
    if run.method == "adaption-prompt":
        # peft's: adaption_prompt (1, n, h) and adaption_gate (1,), both trained (their
        # keys and values recomputed with grad every forward: adapters.adaption_prompt)
        return [
            TensorGroup("self_attn.adaption_prompt", (1, length, arch.hidden_size), n_gated,
                        dt, True, True),
            TensorGroup("self_attn.adaption_gate", (1,), n_gated, dt, True, True),
        ]  # fmt: skip
    groups = [
        TensorGroup(
            "attn.adapter_wte.weight",
            (length, arch.hidden_size),
            n_gated,
            dt,
            False,
            True,
            idle=True,
        ),
        TensorGroup("attn.gating_factor", (1, 1, arch.num_heads, 1), n_gated, dt, True, True),
    ]
    for lin in v2_scaled:
        for part in ("adapter_bias", "adapter_scale"):
            shape = (lin.out_features,)
            groups.append(_adapter(f"{lin.module}.{part}", shape, arch, dtypes, lin))
    if v2_scaled:
        for part in ("adapter_bias", "adapter_scale"):
            shape = (arch.vocab_size,)
            groups.append(TensorGroup(f"lm_head.{part}", shape, 1, dt, True, True, in_block=False))
    return groups
