"""Run under a real transformers 4.x (its unpacked wheel first on PYTHONPATH): the tensors
as wide as the vocabulary that are live at the forward's and the backward's largest
moments of one causal-LM step with labels (HF Trainer's compute_loss: the model's output
dropped before backward).

A tiny bf16 Mistral (or, with a fourth argument, that model_type's causal LM: ``gpt2``,
``llama``, ``qwen2``, ...; ``llava``: a tiny LLaVA with one image a sequence; ``gemma3``: a tiny Gemma 3 likewise;
``mllama``: Mllama's language model) whose vocabulary dwarfs the rest, so that both moments are the loss's; only the last layer trains. A dispatch mode counts every storage an op returns
(each once, freed with the storage), the parameters and inputs registered first.
Prints one JSON line: per phase, the largest live total and, at that moment, each live
tensor whose last dimension is the vocabulary (shape, dtype, bytes).
Used by tests/test_shifted_logits_loss.py; not part of ftmem.
"""

from __future__ import annotations

import json
import sys
import weakref

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import GPT2Config, GPT2LMHeadModel


class Live(TorchDispatchMode):
    """Live storages (key -> bytes, description) and the snapshot at the largest total."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, list[object]]] = {}
        self.current = self.peak = 0
        self.at_peak: dict[int, tuple[int, list[object]]] = {}

    def add(self, t: torch.Tensor) -> None:
        st = t.untyped_storage()
        key, nbytes = st._cdata, st.nbytes()
        if nbytes == 0 or key in self.live:
            return
        self.live[key] = (nbytes, [list(t.shape), str(t.dtype)])
        self.current += nbytes
        weakref.finalize(st, self.free, key).atexit = False
        if self.current > self.peak:
            self.peak, self.at_peak = self.current, dict(self.live)

    def free(self, key: int) -> None:
        item = self.live.pop(key, None)
        if item is not None:
            self.current -= item[0]

    def reset(self) -> None:
        self.peak, self.at_peak = self.current, dict(self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


def vocab_wide(live: Live, vocab: int) -> list[list[object]]:
    return [[*desc, n] for n, desc in live.at_peak.values() if desc[0] and desc[0][-1] == vocab]


def gpt2(s: int, vocab: int) -> torch.nn.Module:
    """GPT-2 keeps its own loss in 4.46-4.48 (ftmem.versions.OWN_SHIFTED_LOSS); dropout
    off, so that only the loss differs from the Mistral's step."""
    cfg = GPT2Config(
        vocab_size=vocab,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=s,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(".h.1." in name)
    return model


# the tiny text model every family here shares, and the image models' two-layer tower
# (28 px, 14 px patches: 4 image features)
TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=28,
    patch_size=14,
)


def causal_lm(model_type: str, vocab: int) -> torch.nn.Module:
    """A Llama-like family's causal LM of the Mistral's sizes (untied head; a mixture of
    experts with 4 experts, top-2), only its last layer trained."""
    sizes: dict[str, object] = dict(vocab_size=vocab, **TEXT, tie_word_embeddings=False)
    if model_type == "gemma":
        sizes["head_dim"] = 16
    if model_type == "phi3":  # (its default pad_token_id 32000 lies beyond the vocabulary)
        sizes["pad_token_id"] = 0
    if model_type in ("mixtral", "olmoe"):
        experts = "num_local_experts" if model_type == "mixtral" else "num_experts"
        sizes |= {experts: 4, "num_experts_per_tok": 2}
    cfg = transformers.AutoConfig.for_model(model_type, **sizes)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(".layers.1." in name)
    return model


IMAGE_TOKEN, PATCHES = 1, 4  # LLaVA's image token id; a 28 px image in 14 px patches


def llava(vocab: int) -> torch.nn.Module:
    """A tiny LLaVA: a two-layer CLIP tower (28 px, 14 px patches: 4 image features, CLS
    dropped) and the Mistral's Llama sizes; only the language model's last layer trains."""
    text = dict(vocab_size=vocab, **TEXT, tie_word_embeddings=False)
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION),
        text_config=transformers.LlamaConfig(**text),
        image_token_index=IMAGE_TOKEN,
        image_seq_length=PATCHES,  # (4.46 on: fewer image tokens take the old merge)
        vocab_size=vocab,
    )
    return _last_text_layer_trains(transformers.LlavaForConditionalGeneration(cfg))


def llava_inputs(b: int, s: int, vocab: int) -> dict[str, torch.Tensor]:
    """s text tokens a sequence, the first of them LLaVA's image token: before 4.46 the
    model merges the image's 4 features in its place; from 4.46 the processor has expanded
    it to 4 tokens already (s + 3 positions either way); the attention mask all ones."""
    legacy = tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (4, 46)
    ids = torch.randint(2, vocab, (b, s if legacy else s + PATCHES - 1))
    ids[:, : 1 if legacy else PATCHES] = IMAGE_TOKEN
    pixels = torch.randn(b, 3, 28, 28, dtype=torch.bfloat16)
    mask = torch.ones_like(ids)
    return dict(input_ids=ids, pixel_values=pixels, attention_mask=mask, labels=ids)


def gemma3(vocab: int) -> torch.nn.Module:
    """A tiny Gemma 3 (4.50 on): LLaVA's tiny tower as a SigLIP one (28 px, 14 px patches,
    4 image tokens: the pooling keeps them) and the Mistral's sizes in Gemma 3's text
    model; only the language model's last layer trains."""
    cfg = transformers.Gemma3Config(
        vision_config=transformers.SiglipVisionConfig(**VISION),
        text_config=transformers.Gemma3TextConfig(vocab_size=vocab, **TEXT, head_dim=16),
        mm_tokens_per_image=PATCHES,
        image_token_index=IMAGE_TOKEN,
    )
    return _last_text_layer_trains(transformers.Gemma3ForConditionalGeneration(cfg))


def _last_text_layer_trains(model: torch.nn.Module) -> torch.nn.Module:
    """Only the language model's last layer (of two) trains."""
    for name, p in model.named_parameters():
        p.requires_grad_("language_model" in name and ".layers.1." in name)
    return model


def gemma3_inputs(b: int, s: int, vocab: int) -> dict[str, torch.Tensor]:
    """LLaVA's 4.46+ inputs (the image token expanded to its 4 tokens) with Gemma 3's
    token types (1 on the image tokens)."""
    inputs = llava_inputs(b, s, vocab)
    inputs["token_type_ids"] = (inputs["input_ids"] == IMAGE_TOKEN).long()
    return inputs


def mllama_text(vocab: int) -> torch.nn.Module:
    """Mllama's language model (MllamaForCausalLM, whose head upcasts: what
    MllamaForConditionalGeneration runs the loss on) of the Mistral's sizes, its one
    cross-attention layer last (skipped without image states); layer 1 trains."""
    from transformers.models.mllama.configuration_mllama import MllamaTextConfig

    cfg = MllamaTextConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        cross_attention_layers=[2],
        pad_token_id=0,  # (its default 128004 lies beyond the vocabulary)
        rope_scaling={"rope_type": "default"},
        tie_word_embeddings=False,
    )
    model = transformers.MllamaForCausalLM(cfg)
    for name, p in model.named_parameters():
        p.requires_grad_(".layers.1." in name)
    return model


def model_of(args: list[str], s: int, vocab: int) -> torch.nn.Module:
    if args == ["llava"]:
        return llava(vocab)
    if args == ["mllama"]:
        return mllama_text(vocab)
    if args == ["gemma3"]:
        return gemma3(vocab)
    if args == ["gpt2"]:
        return gpt2(s, vocab)
    return causal_lm(args[0] if args else "mistral", vocab)


def main() -> None:
    b, s, vocab = (int(x) for x in sys.argv[1:4])
    torch.manual_seed(0)
    model = model_of(sys.argv[4:], s, vocab).to(torch.bfloat16)
    model.train()
    ids = torch.randint(0, vocab, (b, s))
    inputs: dict[str, torch.Tensor] = dict(input_ids=ids)
    if sys.argv[4:] == ["llava"]:
        inputs = llava_inputs(b, s, vocab)
    if sys.argv[4:] == ["gemma3"]:
        inputs = gemma3_inputs(b, s, vocab)
    inputs.setdefault("labels", ids)
    live = Live()
    for t in [*model.parameters(), *model.buffers(), *inputs.values()]:
        live.add(t)
    live.reset()
    result: dict[str, object] = {"version": transformers.__version__}
    with live:
        loss = model(**inputs).loss  # the output dropped, as compute_loss
        result["forward"] = vocab_wide(live, vocab)
        live.reset()
        loss.backward()
        result["backward"] = vocab_wide(live, vocab)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
