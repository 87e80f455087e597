"""The training frameworks' own code paths, where they differ from HF Trainer + PEFT
over transformers (the path ftmem's defaults describe).

A profile is data, like a model family (families/): each field names one mechanism by
which the framework's step holds memory differently, with the source it comes from
(repository, file, commit). The core reads ``profile_of(run)`` and never names a
framework. ``RunConfig.framework`` chooses the profile; ``--from`` sets it from the
config it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftmem.arch import Architecture
from ftmem.run import RunConfig


@dataclass(frozen=True, slots=True)
class Profile:
    """One framework's code path; the defaults are HF Trainer's."""

    name: str
    notes: tuple[str, ...] = ()  # what the estimate says of this path
    # The LM head runs over pieces of this many positions, each piece's logits a tensor
    # of its own, and the cross-entropy takes one piece at a time (None: one matmul)
    lm_head_chunk_tokens: int | None = None
    # methods whose training script calls the model without chunking the head
    unchunked_methods: tuple[str, ...] = ()
    # the rows one cross-entropy call takes when the head was not chunked
    loss_chunk_rows: int | None = None
    # the model's output is cast to fp32 and the training loop holds it (the variable
    # it is assigned to) from the forward's return until the next forward returns
    logits_fp32_held: bool = False
    # None: as config.json says (tie_word_embeddings); False: a separate LM head
    ties_lm_head: bool | None = None
    # QLoRA quantises the LM head as well (every nn.Linear), not only the blocks'
    quantizes_lm_head: bool = False
    # bytes per weight element alive while a 4-bit matmul runs (its dequantised copy and
    # the copy's cast to the compute dtype); 0: not modelled
    dequant_copy_bytes: int = 0
    # k and v are expanded to every query head (a copy) before the attention kernel
    expands_kv: bool = False
    # one LoRA dropout of the block input serves all adapted q/k/v slices
    one_qkv_lora_dropout: bool = False
    # every family's attention runs through F.scaled_dot_product_attention
    sdpa_attention: bool = False


HF = Profile("hf")

# LitGPT 0.4.x (Lightning-AI/litgpt@00af8b0d) and lit-gpt 2023 (@8641822b) under
# Lightning Fabric (pytorch-lightning@527d071f, @71aed751); calibration/notes/litgpt.md.
LITGPT = Profile(
    "litgpt",
    notes=(
        "LitGPT: LM head and cross-entropy in 128-position chunks, fp32 logits held by "
        "the training loop, no weight tying, k/v expanded to every head before SDPA; "
        "under QLoRA every Linear (the LM head too) is 4-bit and each 4-bit matmul holds "
        "an fp16 and a bf16 copy of its weight.",
    ),
    # litgpt/finetune/lora.py fit(): model(input_ids, lm_head_chunk_size=128); litgpt/lora.py
    # GPT.forward: [self.lm_head(x_i) for x_i in x.split(lm_head_chunk_size, dim=1)]
    lm_head_chunk_tokens=128,
    # litgpt/finetune/full.py fit(): logits = model(input_ids) (no chunk size)
    unchunked_methods=("full",),
    # litgpt/utils.py chunked_cross_entropy(chunk_size=128): logits.reshape(-1, V).split(128)
    loss_chunk_rows=128,
    # lightning/fabric/wrappers.py _FabricModule.forward: precision.convert_output(output)
    # casts floating outputs to torch.get_default_dtype() (fp32); fit()'s `logits` keeps them
    logits_fp32_held=True,
    # litgpt/model.py GPT.__init__ builds its own lm_head; scripts/convert_hf_checkpoint.py
    # copies transformer.wte.weight into lm_head.weight when the checkpoint has none
    ties_lm_head=False,
    # lightning/fabric/plugins/precision/bitsandbytes.py init_context(): nn.Linear replaced
    # for the whole model (BitsandbytesPrecision built without ignore_modules in
    # litgpt/finetune/lora.py setup)
    quantizes_lm_head=True,
    # _Linear4bit.quantize: weight.to("cuda", torch.half) -> quant_state.dtype fp16;
    # bitsandbytes@0.42.0 autograd/_functions.py MatMul4Bit.forward/backward:
    # F.dequantize_4bit(B, state).to(A.dtype): a 2-byte fp16 tensor and its 2-byte bf16 copy
    dequant_copy_bytes=4,
    # litgpt/model.py CausalSelfAttention.forward: k.expand(...), v.expand(...) then
    # reshape (a copy) when n_query_groups != n_head
    expands_kv=True,
    # litgpt/lora.py LoRAQKVLinear.forward: F.linear(self.lora_dropout(x), self.lora_A)
    one_qkv_lora_dropout=True,
    # litgpt/model.py CausalSelfAttention.scaled_dot_product_attention: SDPA for every
    # family without logit soft-capping (Falcon included)
    sdpa_attention=True,
)

PROFILES: dict[str, Profile] = {
    "hf": HF,
    # axolotl and LLaMA-Factory drive HF Trainer over transformers + peft
    "axolotl": Profile("axolotl"),
    "llama-factory": Profile("llama-factory"),
    "litgpt": LITGPT,
    "torchtune": Profile("torchtune"),
    "unsloth": Profile("unsloth"),
}


def profile_of(run: RunConfig) -> Profile:
    return PROFILES[run.framework]


def head_chunk_tokens(run: RunConfig) -> int | None:
    """Positions per LM head piece in this run (None: the head is one matmul)."""
    profile = profile_of(run)
    if run.method in profile.unchunked_methods:
        return None
    return profile.lm_head_chunk_tokens


def framework_arch(arch: Architecture, run: RunConfig) -> Architecture:
    """The architecture as the framework builds it: its own LM head where it never
    ties (the attention path is ops.attention.attention_path's)."""
    profile = profile_of(run)
    changes: dict[str, object] = {}
    if profile.ties_lm_head is not None and arch.tie_embeddings != profile.ties_lm_head:
        changes["tie_embeddings"] = profile.ties_lm_head
    return arch.model_copy(update=changes) if changes else arch
