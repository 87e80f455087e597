"""The options several commands share, as plain records: names, types, defaults, help.

:mod:`ftmem.cli.options` turns them into typer options (:func:`~ftmem.cli.options.with_options`);
:mod:`ftmem.cli.fast` reads the same records to parse the common ``ftmem estimate`` calls
without loading typer. Nothing here imports typer.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Optional, get_args, get_origin

from ftmem.parallel import Offload, Strategy
from ftmem.run import (
    Accounting,
    AdapterDtype,
    Attention,
    Framework,
    Method,
    Optimizer,
    OptimizerImpl,
    Precision,
    Quant,
    RunConfig,
)
from ftmem.sequence_parallel import SpMode

MULTI = "Many GPUs"
HARDWARE = "GPU and overhead"


class OptionSpec(NamedTuple):
    """One option: the keyword the API takes (``name``), its type as typer reads it
    (``kind``), its default, its help, its flags (``decls``: none, typer derives
    ``--name-with-dashes``) and the help panel it is listed under."""

    name: str
    kind: Any
    default: Any
    help: str
    decls: tuple[str, ...]
    panel: str | None


def _opt(
    name: str, kind: Any, default: Any, help: str, *decls: str, panel: str | None = None
) -> OptionSpec:
    return OptionSpec(name, kind, default, help, decls, panel)


def field_choices(field: str) -> Any:
    """The Literal of a RunConfig field with its None left out: the one list of its
    values, which typer shows in --help and checks before anything runs."""
    annotation = RunConfig.model_fields[field].annotation
    literal = next(a for a in (annotation, *get_args(annotation)) if get_origin(a) is Literal)
    return Literal[get_args(literal)]


# --framework: the code paths (RunConfig.framework) and trl, HF Trainer's path with TRL's
# defaults (ftmem.frameworks.trl_defaults)
_FRAMEWORKS = (*get_args(Framework), "trl")
FrameworkChoice = Literal[_FRAMEWORKS]  # type: ignore[valid-type]

EstimateFormat = Literal["table", "json", "yaml", "markdown", "csv"]
"""`ftmem estimate --format`'s choices."""

OptStr = Optional[str]  # noqa: UP045 - typer needs Optional spelled out on Python 3.10
OptInt = Optional[int]  # noqa: UP045
OptFloat = Optional[float]  # noqa: UP045
OptBool = Optional[bool]  # noqa: UP045

RUN = [
    _opt(
        "method",
        Method,
        "full",
        "What trains (see `ftmem methods`).",
    ),
    _opt(
        "precision", Precision, "bf16", "Training dtype (*-mixed: fp32 weights, 16-bit autocast)."
    ),
    _opt(
        "optimizer",
        Optimizer,
        "adamw",
        "The optimizer.",
    ),
    _opt(
        "optimizer_impl",
        OptimizerImpl,
        "foreach",
        "torch's optimizer implementation (foreach: its CUDA default).",
    ),
    _opt(
        "optimizer_block_size",
        OptInt,
        None,
        "torchao's ao-adamw-*: values per fp32 scale (default: the class's, 256; 4-bit 128).",
    ),
    _opt("batch_size", int, 1, "Micro-batch size per GPU."),
    _opt("seq_len", int, 512, "Tokens per sequence (encoder-decoders: the input)."),
    _opt(
        "target_len",
        OptInt,
        None,
        "Encoder-decoders (T5): decoder tokens per sequence (the labels); default --seq-len.",
    ),
    _opt("grad_accum", int, 1, "Micro-batches per optimizer step."),
    _opt(
        "images",
        int,
        0,
        "Image-text models (LLaVA, Gemma 3, Llama-3.2-Vision, Qwen-VL): images per sample; --seq-len counts "
        "their tokens.",
    ),
    _opt(
        "image_size",
        OptInt,
        None,
        "Qwen-VL: each image's side in pixels, resized as its processor does (default: the "
        "preset's, 448).",
    ),
    _opt(
        "vision_tower",
        Optional[field_choices("vision_tower")],  # noqa: UP045
        None,
        "Image-text models: frozen | full (default: full with --method full, else frozen).",
    ),
    _opt(
        "projector",
        Optional[field_choices("projector")],  # noqa: UP045
        None,
        "Image-text models: the projector frozen | full (default: as the vision tower's default).",
    ),
    _opt("grad_ckpt", bool, False, "Gradient checkpointing.", "--grad-ckpt/--no-grad-ckpt"),
    _opt(
        "model_dropout",
        bool,
        True,
        "Train with the dropout the model's config.json sets (--no-dropout: turned off).",
        "--dropout/--no-dropout",
    ),
    _opt(
        "router_aux_loss",
        OptBool,
        None,
        "MoE: the router's load-balancing loss (default: config.json's output_router_logits).",
        "--router-aux-loss/--no-router-aux-loss",
    ),
    _opt(
        "activation_offload",
        bool,
        False,
        "Offload saved activations to host RAM (torch save_on_cpu / torchtune).",
        "--activation-offload",
    ),
    _opt(
        "optimizer_in_backward",
        bool,
        False,
        "Step each parameter from a gradient hook (no gradient buffer; layer-wise GaLore).",
        "--optimizer-in-backward",
    ),
    _opt(
        "compile",
        bool,
        False,
        "torch.compile as the framework applies it (torchtune: per layer and the chunked "
        "loss; others: not modelled, a note says so).",
        "--compile",
    ),
    _opt("attn", Attention, "sdpa", "The attention kernel."),
    _opt(
        "padding",
        Optional[field_choices("padding")],  # noqa: UP045
        None,
        "Pad tokens in each batch, marked by its attention_mask: none (equal lengths, rows "
        "packed with an attention_mask of ones) | longest (a batch of several sequences "
        "padded to its longest: DataCollatorWithPadding, TRL's collator) | max-length (every "
        "sequence padded to --seq-len) | packed (the batch flattened into one row, sequences "
        "told apart by position_ids: TRL padding_free, DataCollatorWithFlattening) | "
        "packed-flex (torchtune's packed dataset: rows of --seq-len tokens with a BlockMask "
        "for flex attention and positions that index the rotary cache; --framework torchtune). With "
        "sdpa the mask makes transformers repeat GQA keys and values per head, kept with "
        "the mask for backward; eager and flash are unchanged "
        "(default: the framework's; peft-mc longest, the others none).",
    ),
    _opt(
        "framework",
        FrameworkChoice,
        "hf",
        "Whose code path the step follows (set by --from): hf (HF Trainer), trl (HF "
        "Trainer with TRL's defaults for --objective where the command line is silent), "
        "axolotl, "
        "llama-factory, litgpt, torchtune, unsloth, lightning (a Trainer's automatic "
        "optimization), fsdp_qlora (Answer.AI's train.py), peft-mc (PEFT's "
        "method_comparison run.py).",
    ),
    _opt(
        "torch_version",
        OptStr,
        None,
        "PyTorch's version (e.g. 2.1): its cuBLAS workspaces, CUDA context, foreach "
        "AdamW temporaries and torchao's compiled low-bit AdamW step (default 2.13).",
    ),
    _opt(
        "gptq_kernel",
        Optional[field_choices("gptq_kernel")],  # noqa: UP045
        None,
        "cuda-old: an int4 (GPTQ) base run by AutoGPTQ's qlinear_cuda_old (exllama disabled, "
        "desc_act false), which dequantises each weight to fp16 per call (128 or more "
        "tokens) and keeps it for backward (default: kernels that keep nothing).",
    ),
    _opt(
        "trl_bf16_cast",
        OptBool,
        None,
        "qlora: TRL 0.7.5-0.21's SFTTrainer with --bf16 casts the fp32-upcast embedding and "
        "LM head of a 4-bit base back to bf16 (peft_module_casting_to_bf16).",
        "--trl-bf16-cast/--no-trl-bf16-cast",
    ),
    _opt(
        "bnb_version",
        OptStr,
        None,
        "bitsandbytes' version (e.g. 0.42.0): what its 4-bit and int8 linears keep for "
        "backward (default: the current release).",
    ),
    _opt(
        "transformers_version",
        OptStr,
        None,
        "transformers' version (e.g. 4.48.1): before 5, MoE experts are per-expert "
        "nn.Linear modules that QLoRA quantises and all-linear adapts; older 4.x releases "
        "keep per-layer rotary tables and 4.38 a causal-mask buffer; before 5.10 HF "
        "Trainer's FSDP is FSDP1; before 5.25 Falcon runs its own fp32 attention "
        "(default 5.25).",
    ),
    _opt(
        "peft_version",
        OptStr,
        None,
        "peft's version (e.g. 0.5.0): before 0.16 its LoRA on an int4 (GPTQ) base casts the "
        "adapter's output to the base's dtype and adds it in place (default: the current "
        "release).",
    ),
    _opt(
        "torchao_version",
        OptStr,
        None,
        "torchao's version (e.g. 0.1), for torchtune's NF4 weights: their scale factors, and "
        "before 0.2 a 66 B/element quantisation transient (default: the current release).",
    ),
    _opt(
        "deepspeed_version",
        OptStr,
        None,
        "DeepSpeed's version (e.g. 0.11.1): before 0.11.2 ZeRO-3 checks a bf16 model's "
        "gradients for inf/nan at each step, as an fp16 one's (default: the current "
        "release).",
    ),
    _opt(
        "peak_of",
        Optional[field_choices("peak_of")],  # noqa: UP045
        None,
        "step | run: a training step's peak, or the whole run's with loading, evaluation, "
        "generation, merging (default: what the framework's own figure covers).",
    ),
    _opt("eval_batch_size", OptInt, None, "Evaluate during training at this batch size."),
    _opt("generate_batch_size", OptInt, None, "Generate samples during training (batch)."),
    _opt("generate_len", OptInt, None, "Generation: tokens the KV cache holds (default seq-len)."),
    _opt(
        "merge_adapters",
        bool,
        False,
        "Merge the adapters at the end (peft merge_and_unload).",
        "--merge-adapters",
    ),
    _opt(
        "lengths",
        OptStr,
        None,
        "How batch lengths vary: fixed (default) | padded (each batch padded to its longest, "
        "up to --seq-len) | padded:MIN | padded:MIN-MAX | padded:L1,L2,... | grouped[:...] "
        "(longest batch first): the reserved peak keeps the allocator's segments of the "
        "other lengths.",
    ),
    _opt(
        "alloc_conf",
        OptStr,
        None,
        "PYTORCH_CUDA_ALLOC_CONF of the run, e.g. expandable_segments:True (reserved peak).",
    ),
    _opt(
        "loss",
        field_choices("loss"),
        "standard",
        "standard (full logits; with --transformers-version 4.46-4.48 also an fp32 copy of "
        "the shifted logits; where the release's model computes its own loss, that one: "
        "before 4.46 the Llama-like models' upcast-shifted) | upcast-shifted (transformers < 4.46: fp32 logits and an "
        "fp32 shifted copy in the model; under --framework torchtune its 0.1 recipe's loop, "
        "which holds the shifted copy into the next forward) | shifted (the model's own 16-bit loss on a shifted copy, "
        "as Qwen-1's) | chunked (torchtune's 8 output chunks) | linear-chunked "
        "(torchtune's LinearCrossEntropyLoss: the LM head in the loss, 8 chunks) | fused "
        "(Liger's fused linear cross-entropy) | logprob-tiles (TRL >= 1.15 SFTTrainer's "
        "log-probability tiles, 4096 tokens × 32768 vocabulary entries).",
    ),
    _opt(
        "objective",
        field_choices("objective"),
        "sft",
        "sft | dpo | ipo (chosen and rejected in one forward of 2b sequences, a reference: "
        "the adapter disabled under PEFT, else a frozen copy) | simpo | orpo (no reference) "
        "| grpo (TRL's GRPOTrainer: generation, then b completions; docs/grpo.md).",
    ),
    _opt(
        "precompute_ref",
        bool,
        False,
        "dpo | ipo: reference log-probabilities computed before training (no reference).",
        "--precompute-ref/--no-precompute-ref",
    ),
    # --objective grpo (ftmem.grpo, docs/grpo.md)
    _opt(
        "completion_len",
        OptInt,
        None,
        "grpo: tokens generated per completion (TRL max_completion_length, default 512); "
        "--seq-len is prompt + completion.",
    ),
    _opt("num_generations", OptInt, None, "grpo: completions per prompt (default 8)."),
    _opt(
        "steps_per_generation",
        OptInt,
        None,
        "grpo: micro-batches one generation batch feeds (default --grad-accum).",
    ),
    _opt(
        "generation_prompts",
        OptInt,
        None,
        "grpo --framework torchtune: prompts per generate() call (the recipe's "
        "forward_batch_size, default 1).",
    ),
    _opt(
        "num_iterations",
        OptInt,
        None,
        "grpo: optimisation passes over each generation batch (TRL num_iterations, default 1).",
    ),
    _opt(
        "ds3_gather_for_generation",
        OptBool,
        None,
        "grpo --strategy zero3: gather the whole policy to generate (TRL's default) or, "
        "--no-ds3-gather-for-generation, generate through DeepSpeed's hooks.",
        "--ds3-gather-for-generation/--no-ds3-gather-for-generation",
    ),
    _opt(
        "kl_beta",
        OptFloat,
        None,
        "grpo: the KL coefficient (TRL beta, default 0); above 0 a reference is used.",
    ),
    _opt(
        "vllm",
        Optional[field_choices("vllm")],  # noqa: UP045
        None,
        "grpo: generate with vLLM: colocate (on this GPU) | server (elsewhere).",
    ),
    _opt(
        "vllm_memory_share",
        OptFloat,
        None,
        "grpo --vllm: the share of each vLLM GPU the engine reserves (colocate 0.3, server 0.9).",
    ),
    _opt(
        "vllm_tensor_parallel",
        OptInt,
        None,
        "grpo --vllm server: `trl vllm-serve --tensor-parallel-size` (default 1).",
    ),
    _opt(
        "vllm_data_parallel",
        OptInt,
        None,
        "grpo --vllm server: `trl vllm-serve --data-parallel-size` (default 1).",
    ),
    _opt(
        "autocast",
        OptBool,
        None,
        "torch.autocast (default: on for *-mixed).",
        "--autocast/--no-autocast",
    ),
    _opt("trainable_layers", OptInt, None, "freeze: the last N blocks train."),
    _opt(
        "trainable_modules",
        OptStr,
        None,
        "partial: regular expressions over parameter names, comma-separated "
        "(e.g. self_attn,lm_head or layers\\.3[01]\\.).",
    ),
    _opt("galore_rank", OptInt, None, "GaLore projection rank (default 128)."),
    _opt("galore_targets", OptStr, None, "GaLore: projected linears (default all-linear)."),
    _opt("lora_r", OptInt, None, "LoRA rank (default 8)."),
    _opt("lora_alpha", OptFloat, None, "LoRA alpha (default 2r)."),
    _opt(
        "lora_targets",
        OptStr,
        None,
        "all-linear | attention | list: q,k,v,o,gate,up,down or module names (default q,v).",
    ),
    _opt("lora_dropout", OptFloat, None, "LoRA dropout (default 0)."),
    _opt(
        "lora_modules_to_save",
        OptStr,
        None,
        "embed | head | embed,head: trainable copies of the token embedding / LM head (peft).",
    ),
    _opt(
        "lora_fa",
        OptBool,
        None,
        "LoRA-FA (peft's create_lorafa_optimizer): lora_A frozen, lora_B on a projected AdamW.",
        "--lora-fa",
    ),
    _opt(
        "lora_bd_blocks",
        OptInt,
        None,
        "BD-LoRA (peft's use_bdlora): lora_A block-diagonal on o/down, lora_B elsewhere.",
    ),
    _opt("gralora_k", OptInt, None, "gralora: sub-blocks per side of each linear (default 2)."),
    _opt(
        "lora_mica",
        OptBool,
        None,
        "MiCA (peft's init_lora_weights='mica'): lora_B frozen on minor singular vectors.",
        "--lora-mica",
    ),
    _opt("deft_para", OptBool, None, "DeFT: PaRa, deft_P only (peft's para).", "--deft-para"),
    _opt("deft_qr", OptBool, None, "DeFT: QR projector (peft's 'qr'; default relu).", "--deft-qr"),
    _opt("adapter_dtype", AdapterDtype, "auto", "Adapter weights' dtype (auto: peft's fp32)."),
    _opt("adapter_size", OptInt, None, "adapter: bottleneck width (default 64)."),
    _opt(
        "adapter_placement",
        Optional[field_choices("adapter_placement")],  # noqa: UP045
        None,
        "adapter: houlsby (after attention and MLP, default) | pfeiffer (after the MLP).",
    ),
    _opt(
        "adapter_prompt_length",
        OptInt,
        None,
        "llama-adapter(-v2), adaption-prompt: adaption prompt tokens (default 10, LitGPT's; "
        "peft's adapter_len).",
    ),
    _opt(
        "adapter_start_layer",
        OptInt,
        None,
        "llama-adapter(-v2): first block with an adaption prompt (default 2, LitGPT's).",
    ),
    _opt(
        "adapter_layers",
        OptInt,
        None,
        "adaption-prompt: blocks with an adaption prompt, from the top (peft's "
        "adapter_layers; default all).",
    ),
    _opt("ia3_targets", OptStr, None, "IA³: scaled linears, roles or names (default k,v,down)."),
    _opt("loha_rank", OptInt, None, "LoHa: rank r of each low-rank pair (default 8, peft's)."),
    _opt("loha_alpha", OptFloat, None, "LoHa: alpha; ΔW is scaled by alpha/r (default 8)."),
    _opt("loha_targets", OptStr, None, "LoHa: adapted linears, as --lora-targets (default q,v)."),
    _opt("lokr_rank", OptInt, None, "LoKr: rank r of its low-rank factors (default 8, peft's)."),
    _opt("lokr_alpha", OptFloat, None, "LoKr: alpha; ΔW is scaled by alpha/r (default 8)."),
    _opt("lokr_targets", OptStr, None, "LoKr: adapted linears, as --lora-targets (default q,v)."),
    _opt(
        "lokr_factor",
        OptInt,
        None,
        "LoKr: decompose_factor, each side split as factor × rest (default: near the root).",
    ),
    _opt(
        "lokr_decompose_both",
        OptBool,
        None,
        "LoKr: decompose_both, the left Kronecker factor low-rank too (peft default off).",
        "--lokr-decompose-both/--no-lokr-decompose-both",
    ),
    _opt("miss_rank", OptInt, None, "MiSS: r, its shared block's width (default 64, peft's)."),
    _opt(
        "miss_init",
        Optional[field_choices("miss_init")],  # noqa: UP045
        None,
        "MiSS: init_weights, default (True/False) | bat (rebuilds W every forward) | mini.",
    ),
    _opt("miss_mini_r", OptInt, None, "MiSS: mini_r, mini's block width (default 1)."),
    _opt("miss_targets", OptStr, None, "MiSS: adapted linears, as --lora-targets (default q,v)."),
    _opt(
        "road_variant",
        Optional[field_choices("road_variant")],  # noqa: UP045
        None,
        "RoAd: road_1 (default) | road_2 | road_4, out/2, out or 2·out angles and scales.",
    ),
    _opt("road_group_size", OptInt, None, "RoAd: group_size, even (default 64, peft's)."),
    _opt("road_targets", OptStr, None, "RoAd: adapted linears, as --lora-targets (default q,v)."),
    _opt(
        "boft_block_size",
        OptInt,
        None,
        "BOFT: side of each rotation block; in_features must divide by it (default 4).",
    ),
    _opt(
        "boft_block_num",
        OptInt,
        None,
        "BOFT: rotation blocks per linear, instead of --boft-block-size.",
    ),
    _opt("boft_targets", OptStr, None, "BOFT: adapted linears, as --lora-targets (default q,v)."),
    _opt("oft_r", OptInt, None, "OFT: r, rotation blocks per linear, instead of --oft-block-size."),
    _opt(
        "oft_block_size",
        OptInt,
        None,
        "OFT: side of each rotation block (default 32); peft moves it to the nearest divisor.",
    ),
    _opt("oft_targets", OptStr, None, "OFT: adapted linears, as --lora-targets (default q,v)."),
    _opt(
        "oft_block_share",
        OptBool,
        None,
        "OFT: block_share, one rotation block for the whole input (peft default off).",
        "--oft-block-share/--no-oft-block-share",
    ),
    _opt(
        "oft_neumann_terms",
        OptInt,
        None,
        "OFT: Cayley-Neumann terms (default 5); 0 for the exact Cayley solve.",
    ),
    _opt(
        "vera_rank", OptInt, None, "VeRA: rank r of the shared projections (default 256, peft's)."
    ),
    _opt("vera_targets", OptStr, None, "VeRA: adapted linears, as --lora-targets (default q,v)."),
    _opt("pvera_rank", OptInt, None, "PVeRA: rank r of its sampled code (default 256, peft's)."),
    _opt("pvera_targets", OptStr, None, "PVeRA: adapted linears, as --lora-targets (default q,v)."),
    _opt("randlora_rank", OptInt, None, "RandLoRA: rank r of each random base (default 32)."),
    _opt("randlora_targets", OptStr, None, "RandLoRA: adapted linears, as --lora-targets (q,v)."),
    _opt("vblora_rank", OptInt, None, "VB-LoRA: rank r of A and B (default 4)."),
    _opt("vblora_vectors", OptInt, None, "VB-LoRA: vectors in the shared bank (default 256)."),
    _opt("vblora_vector_length", OptInt, None, "VB-LoRA: length of each vector (default 256)."),
    _opt("vblora_topk", OptInt, None, "VB-LoRA: bank vectors mixed per sub-vector (default 2)."),
    _opt("vblora_targets", OptStr, None, "VB-LoRA: adapted linears, as --lora-targets (q,v)."),
    _opt("tinylora_rank", OptInt, None, "TinyLoRA: rank r of the frozen SVD factors (default 2)."),
    _opt("tinylora_u", OptInt, None, "TinyLoRA: length u of each trained vector (default 64)."),
    _opt(
        "tinylora_weight_tying",
        OptFloat,
        None,
        "TinyLoRA: share of adapted linears tied to one vector, 0 to 1 (default 0).",
    ),
    _opt("tinylora_targets", OptStr, None, "TinyLoRA: adapted linears, as --lora-targets (q,v)."),
    _opt(
        "adamss_rank",
        OptInt,
        None,
        "AdaMSS: SVD rank r, capped at each weight's smaller side (default 100).",
    ),
    _opt(
        "adamss_subspaces", OptInt, None, "AdaMSS: subspaces K the rows cluster into (default 5)."
    ),
    _opt("adamss_subspace_rank", OptInt, None, "AdaMSS: rank of each subspace (default 1)."),
    _opt("adamss_targets", OptStr, None, "AdaMSS: adapted linears, as --lora-targets (q,v)."),
    _opt(
        "adamss_asa",
        OptBool,
        None,
        "AdaMSS: ASA (use_asa): two importance tensors per factor while it prunes.",
        "--adamss-asa",
    ),
    _opt("unilora_rank", OptInt, None, "UniLoRA: rank r of A and B (default 4)."),
    _opt("unilora_theta_length", OptInt, None, "UniLoRA: length of theta_d (default 256)."),
    _opt("unilora_targets", OptStr, None, "UniLoRA: adapted linears, as --lora-targets (q,v)."),
    _opt("lily_rank", OptInt, None, "Lily: rank r of A and each B (default 32)."),
    _opt("lily_stride_a", OptInt, None, "Lily: neighbouring layers sharing one A (default 1)."),
    _opt("lily_num_b", OptInt, None, "Lily: Bs mixed by each linear's router (default 2)."),
    _opt("lily_targets", OptStr, None, "Lily: adapted linears, as --lora-targets (q,v)."),
    _opt(
        "fourierft_frequencies",
        OptInt,
        None,
        "FourierFT: spectral coefficients per adapted linear (peft's n_frequency, default 1000).",
    ),
    _opt("fourierft_targets", OptStr, None, "FourierFT: adapted linears, as --lora-targets (q,v)."),
    _opt("hira_rank", OptInt, None, "HiRA: r, the rank of its B A product (default 32, peft's)."),
    _opt("hira_targets", OptStr, None, "HiRA: adapted linears, as --lora-targets (q,v)."),
    _opt("psoft_rank", OptInt, None, "PSOFT: r, the side of its rotation (default 32, peft's)."),
    _opt("psoft_targets", OptStr, None, "PSOFT: adapted linears, as --lora-targets (q,v)."),
    _opt(
        "psoft_neumann_terms",
        OptInt,
        None,
        "PSOFT: Cayley-Neumann terms (peft's use_cayley_neumann); 0, the default: exact solve.",
    ),
    _opt("hra_rank", OptInt, None, "HRA: r, Householder reflections per linear (default 8)."),
    _opt("hra_targets", OptStr, None, "HRA: adapted linears, as --lora-targets (q,v)."),
    _opt("beft_targets", OptStr, None, "BEFT: biased linears, as --lora-targets (v)."),
    _opt(
        "trainable_token_ids",
        OptStr,
        None,
        "Trainable tokens: a count of token ids, or the ids (default 2: bos and eos).",
    ),
    _opt("glora_rank", OptInt, None, "GLoRA: r of its A and B paths (default 8)."),
    _opt("glora_targets", OptStr, None, "GLoRA: adapted linears, as --lora-targets (q,v)."),
    _opt("glora_vector", OptBool, None, "GLoRA: A and B as vectors.", "--glora-vector"),
    _opt("peanut_rank", OptInt, None, "Peanut: r, the width of A and B (default 32, peft's)."),
    _opt("peanut_targets", OptStr, None, "Peanut: adapted linears, as --lora-targets (q,v)."),
    _opt("peanut_depth", OptInt, None, "Peanut: encoder/decoder pairs (default 0, peft's)."),
    _opt(
        "osf_rank", OptInt, None, "OSF: trained rank t per linear (default half its smaller side)."
    ),
    _opt("osf_targets", OptStr, None, "OSF: adapted linears, as --lora-targets (all-linear)."),
    _opt(
        "shira_rank",
        OptInt,
        None,
        "SHiRA: r, trains r·(in + out) values of each adapted weight (peft's r, default 32).",
    ),
    _opt("shira_targets", OptStr, None, "SHiRA: adapted linears, as --lora-targets (q,v)."),
    _opt(
        "supertuning_sparsity",
        OptFloat,
        None,
        "Super-Tuning: share of each adapted weight frozen, 0 to <1; the rest trains "
        "(peft's sparsity, default 0.99).",
    ),
    _opt(
        "supertuning_targets",
        OptStr,
        None,
        "Super-Tuning: adapted linears, as --lora-targets (q,v).",
    ),
    _opt(
        "supertuning_r",
        OptInt,
        None,
        "Super-Tuning: Supra, a LoRA A (r × in) and B (out × r) beside the trained entries "
        "(peft's r; default none).",
    ),
    _opt(
        "waveft_frequencies",
        OptInt,
        None,
        "WaveFT: wavelet coefficients per adapted linear (peft's n_frequency, default 2592).",
    ),
    _opt("waveft_targets", OptStr, None, "WaveFT: adapted linears, as --lora-targets (q,v)."),
    _opt(
        "c3a_block_size",
        OptInt,
        None,
        "C3A: block_size b, dividing every adapted weight's sides (peft's, default 256).",
    ),
    _opt("c3a_targets", OptStr, None, "C3A: adapted linears, as --lora-targets (q,v)."),
    _opt(
        "adalora_target_r",
        OptInt,
        None,
        "adalora: average rank the allocator prunes to (default 8; --lora-r is init_r).",
    ),
    _opt(
        "virtual_tokens",
        OptInt,
        None,
        "prompt / prefix / P-tuning, cartridge: virtual tokens (default 20).",
    ),
    _opt(
        "cartridge_frozen_tokens",
        OptInt,
        None,
        "cartridge: leading virtual tokens kept frozen (default 1, peft's num_frozen_tokens).",
    ),
    _opt(
        "prefix_projection",
        OptBool,
        None,
        "prefix-tuning: reparametrise the prefix through an MLP.",
        "--prefix-projection/--no-prefix-projection",
    ),
    _opt("encoder_hidden", OptInt, None, "P-tuning encoder / prefix MLP width (default hidden)."),
    _opt(
        "prompt_encoder",
        Optional[field_choices("prompt_encoder")],  # noqa: UP045
        None,
        "p-tuning: mlp (default) | lstm.",
    ),
    _opt(
        "quant",
        Optional[Quant],  # noqa: UP045
        None,
        "qlora base: nf4 (default) | fp4 | int8 | int4 (GPTQ/AWQ)",
    ),
    _opt(
        "double_quant",
        OptBool,
        None,
        "qlora: quantise the quantisation constants (default on).",
        "--double-quant/--no-double-quant",
    ),
    _opt(
        "compute_dtype",
        Optional[field_choices("compute_dtype")],  # noqa: UP045
        None,
        "qlora: bnb 4-bit compute dtype.",
    ),
    _opt(
        "accounting",
        Accounting,
        "phases",
        "phases (peak of the step) | simple (sum of the buckets)",
    ),
]

GPU = [
    _opt("gpu", OptStr, None, "GPU preset (see `ftmem gpus`).", panel=HARDWARE),
    _opt("gpu_memory", OptStr, None, "GPU memory instead of a preset, e.g. 24GiB.", panel=HARDWARE),
    _opt(
        "overhead",
        OptStr,
        None,
        "Your own figure for everything beyond the allocated peak (instead of the allocator's "
        "cache, the CUDA context and NCCL), e.g. 1GiB or 0.",
        panel=HARDWARE,
    ),
]

SPREAD = [
    _opt("gpus", OptInt, None, "GPUs per node (default 1).", panel=MULTI),
    _opt("nodes", int, 1, "Nodes.", panel=MULTI),
    _opt(
        "strategy",
        Optional[Strategy],  # noqa: UP045
        None,
        "How the GPUs share the run (default: ddp on several GPUs).",
        panel=MULTI,
    ),
    _opt("tp", int, 1, "Tensor-parallel degree.", panel=MULTI),
    _opt("pp", int, 1, "Pipeline-parallel stages (1F1B).", panel=MULTI),
    _opt(
        "pp_chunks",
        int,
        1,
        "Model chunks per pipeline stage: above 1, interleaved 1F1B (ColossalAI).",
        panel=MULTI,
    ),
    _opt("cp", int, 1, "Context-parallel degree (splits the sequence).", panel=MULTI),
    _opt(
        "sp_mode",
        Optional[SpMode],  # noqa: UP045
        None,
        "ColossalAI's sequence_parallelism_mode: split_gather | ring (inside the TP group) | "
        "all_to_all | ring_attn (over --cp ranks; all_to_all is the default with --cp).",
        panel=MULTI,
    ),
    _opt(
        "ep",
        int,
        1,
        "Expert-parallel degree: MoE experts split over data-parallel ranks "
        "(ColossalAI's MoeHybridParallelPlugin).",
        panel=MULTI,
    ),
    _opt(
        "offload_optimizer",
        Optional[Offload],  # noqa: UP045
        None,
        "Where optimizer states live (ZeRO / FSDP).",
        panel=MULTI,
    ),
    _opt(
        "zero_force_ds_cpu_optimizer",
        OptBool,
        None,
        "DeepSpeed's zero_force_ds_cpu_optimizer (default on): off lets a bitsandbytes or "
        "torchao optimizer step the offloaded states on the CPU (--offload-optimizer).",
        "--zero-force-ds-cpu-optimizer/--no-zero-force-ds-cpu-optimizer",
        panel=MULTI,
    ),
    _opt(
        "gemini_placement",
        Optional[Literal["static", "auto"]],  # noqa: UP045
        None,
        "GeminiPlugin's placement_policy: static (default) | auto (chunks kept on the GPU "
        "up to 0.9 of its memory, the optimizer on the host).",
        panel=MULTI,
    ),
    _opt(
        "gemini_offload_optim_frac",
        Optional[float],  # noqa: UP045
        None,
        "GeminiPlugin's offload_optim_frac, 0 to 1 (colossalai-gemini).",
        panel=MULTI,
    ),
    _opt(
        "gemini_shard_param_frac",
        Optional[float],  # noqa: UP045
        None,
        "GeminiPlugin's shard_param_frac, 0 to 1 (colossalai-gemini; default 1).",
        panel=MULTI,
    ),
    _opt(
        "offload_params",
        Optional[Offload],  # noqa: UP045
        None,
        "Where parameters live (zero3 / FSDP).",
        panel=MULTI,
    ),
    _opt(
        "fsdp_sharded_ends",
        bool,
        False,
        "FSDP: the token embedding and the LM head as units of their own, resharded after "
        "forward (torchtune's custom_sharded_layers: ['tok_embeddings', 'output']).",
        "--fsdp-sharded-ends",
        panel=MULTI,
    ),
    _opt(
        "fsdp_version",
        OptInt,
        None,
        "FSDP: 1 (torch's FullyShardedDataParallel) or 2 (fully_shard); default the "
        "framework's (HF Trainer: 1 before transformers 5.10, else 2).",
        panel=MULTI,
    ),
    _opt(
        "host_memory", OptStr, None, "Host RAM per node, e.g. 512GiB: checks offload.", panel=MULTI
    ),
]


DISTILL_PANEL = "Distillation"
DISTILL = [
    _opt(
        "teacher",
        OptStr,
        None,
        "A frozen teacher model (preset, config.json or Hub id): logit distillation.",
        panel=DISTILL_PANEL,
    ),
    _opt(
        "teacher_weights",
        OptStr,
        None,
        "Teacher weight format: bf16 (default) | fp16 | fp32 | fp8 | int8 | nf4 | int4.",
        panel=DISTILL_PANEL,
    ),
]


FROM = [
    _opt(
        "from_config",
        OptStr,
        None,
        "A training config to read the run from: axolotl, torchtune, TRL / TrainingArguments, "
        "LitGPT, LLaMA-Factory, or a ColossalChat command line (flags given here override it).",
        "--from",
    ),
    _opt(
        "launcher",
        OptStr,
        None,
        "The launcher's config: Accelerate's (accelerate launch --config_file) or a DeepSpeed "
        "JSON; its GPUs, nodes, ZeRO / FSDP and offload (the training config's win).",
        "--launcher",
        panel=MULTI,
    ),
]


RUN_NAMES = tuple(p.name for p in RUN)
