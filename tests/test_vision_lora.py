"""LoRA outside the language model's blocks (ftmem.vision_lora): peft matches
target_modules by name over the whole image-text model, tower, projector and
Llama-3.2-Vision's cross-attention layers included.

The truth for the counts is peft 0.21.2 itself: the tiny models the accuracy cases build
(transformers 5.24), wrapped by get_peft_model with the names a user writes (q_proj,
all-linear) and no exclude_modules; its trainable parameters must equal the adapter
tensors the plan lists. The measured steps (activations, peak) are accuracy cases
(tests/accuracy/cases.py _image_text, _mllama: the ``lora_targets`` settings)."""

from __future__ import annotations

import pytest

from ftmem.methods import plan_method
from ftmem.run import RunConfig
from ftmem.vision_lora import adapted, peft_targets
from tests.accuracy.cases import TOWER_FAMILIES, ImageTextCase, MllamaCase
from tests.conftest import tiny

TARGETS = ("q,v", "all-linear", "q_proj,gate_proj", "q_proj,v_proj,fc1,qkv")
TOWERS = TOWER_FAMILIES


def _adapter_numel(arch, run) -> int:
    # every adapter tensor, those no gradient reaches included ("(unread)": peft counts
    # them trainable, they get no gradient and no state)
    return sum(g.total_numel for g in plan_method(arch, run).groups if g.adapter)


def _peft_trainable(arch, run) -> int:
    from ftmem.measure.build import build_model

    model = build_model(arch, run).model
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize(("tower", "family"), TOWERS)
def test_adapter_count_equals_peft(tower, family, targets):
    pytest.importorskip("peft")
    case = ImageTextCase(family, {"method": "lora", "lora_targets": targets}, tower=tower)
    arch, run = case.arch(), case.run()
    if targets == TARGETS[-1] and tower not in ("qwen2-vl",):
        # (an item that matches no module of the model: ftmem refuses it as a typo;
        # Qwen2-VL's tower has qkv and fc1, the others lack one of them)
        pytest.skip("an item matches nothing in this model")
    assert _adapter_numel(arch, run) == _peft_trainable(arch, run)


@pytest.mark.parametrize("targets", ("q,v", "all-linear", "q_proj,v_proj,fc1"))
def test_mllama_adapter_count_equals_peft(targets):
    pytest.importorskip("peft")
    case = MllamaCase("llama", {"method": "lora", "images": 1, "lora_targets": targets})
    arch, run = case.arch(), case.run()
    assert _adapter_numel(arch, run) == _peft_trainable(arch, run)


def test_roles_become_the_names_users_give_peft():
    arch = ImageTextCase("qwen2", {}, tower="qwen2.5-vl").arch()
    run = RunConfig(method="lora", lora_targets="q,v,attention,gate_proj")
    assert peft_targets(arch, run) == ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj"]
    assert peft_targets(arch, RunConfig(method="lora", lora_targets="all-linear")) == "all-linear"


def test_qwen25_tower_mlp_names_hit_and_attention_names_miss():
    """Qwen2.5-VL's blocks are attn.qkv, attn.proj, mlp.gate_proj/up_proj/down_proj: q_proj
    reaches no tower linear, gate_proj one per block (transformers 5.24
    modeling_qwen2_5_vl.py Qwen2_5_VLMLP, Qwen2_5_VLVisionAttention)."""
    arch = ImageTextCase("qwen2", {}, tower="qwen2.5-vl").arch()
    assert adapted(arch, RunConfig(method="lora", lora_targets="q,v")) == ()
    hit = adapted(arch, RunConfig(method="lora", lora_targets="q_proj,gate_proj"))
    assert [lin.module.rsplit(".", 2)[-2:] for lin in hit] == [["mlp", "gate_proj"]] * (
        arch.vision.num_layers
    )


def test_llama_factory_keeps_tower_and_projector_out_but_not_cross_attention():
    """LLaMA-Factory's patch_target_modules drops names holding its forbidden keys
    (vision_model, multi_modal_projector for mllama); the cross-attention layers are the
    language model's. Tiny mllama, all-linear: per cross layer q (h→q), k, v (h→kv), o
    (q→h), gate, up (h→f), down (f→h), each r·(in + out)."""
    case = MllamaCase("llama", {"method": "lora", "images": 1})
    arch = case.arch()
    lf = RunConfig(method="lora", lora_targets="all-linear", framework="llama-factory", images=1)
    lins = adapted(arch, lf)
    assert {lin.part for lin in lins} == {"cross"}
    m = arch.vision.mllama
    h, f, d = arch.hidden_size, m.text_intermediate, m.text_head_dim
    q, kv = m.text_heads * d, m.text_kv_heads * d
    # q and o: h + q each; k and v: h + kv each; gate, up and down: h + f each
    per_layer = 2 * (h + q) + 2 * (h + kv) + 3 * (h + f)
    total = sum(lf.r * (lin.in_features + lin.out_features) for lin in lins)
    assert total == lf.r * per_layer * len(m.cross_layers)
    # and the plan's adapter tensors beside the blocks' are those
    hf = lf.model_copy(update={"framework": "hf"})
    assert _adapter_numel(arch, hf) - _adapter_numel(arch, lf) == sum(
        hf.r * (lin.in_features + lin.out_features)
        for lin in adapted(arch, hf)
        if lin.part != "cross"
    )


def test_text_only_model_unchanged():
    arch = tiny("llama")
    run = RunConfig(method="lora", lora_targets="all-linear")
    assert adapted(arch, run) == ()


# the tiny LLaVA (tests/accuracy/cases.py TINY_TOWERS): a CLIP tower of width 48 (its MLP
# 48 wide too), three layers of which the projector reads layer 1's output, and a
# projector 48 -> 96 -> 96 (the tiny Llama's width)
LLAVA_AUTOCAST = {"method": "lora", "precision": "bf16-mixed"}


def test_autocast_copies_frozen_weights_where_input_gradients_pass():
    """q_proj/v_proj reach the tower (peft's names): from layer 0's adapters on, every
    frozen linear's input needs a gradient, so autocast's bf16 copy of its weight is kept
    (layer 0's out_proj, fc1 and fc2, all six of layer 1's, the projector's two); layer
    2's six are the unread layer's, held to the forward's end. The measured step is the
    accuracy case llava-llama-method=lora-precision=bf16-mixed."""
    from ftmem.precision import resolve_dtypes
    from ftmem.vision_lora import frozen_weight_copies

    case = ImageTextCase("llama", LLAVA_AUTOCAST)
    arch, run = case.arch(), case.run()
    dtypes = resolve_dtypes(run)
    square = 48 * 48 * 2
    assert frozen_weight_copies(arch, run, dtypes) == 9 * square + (48 * 96 + 96 * 96) * 2
    assert frozen_weight_copies(arch, run, dtypes, unread=True) == 6 * square
    # bitsandbytes' 4-bit linears keep their packed weight; no autocast, no copies
    for settings in ({"method": "qlora", "precision": "bf16-mixed"}, {"method": "lora"}):
        other = ImageTextCase("llama", settings).run()
        assert frozen_weight_copies(arch, other, resolve_dtypes(other)) == 0


@pytest.mark.parametrize(
    ("settings", "bytes_"),
    [
        ({"method": "lora"}, (2, 2, 2)),
        (LLAVA_AUTOCAST, (2, 4, 2)),  # the fp32 stream under autocast
        ({"method": "qlora", "precision": "bf16-mixed"}, (2, 4, 4)),  # 4-bit: fp32 outputs
        ({"method": "qlora"}, (2, 2, 2)),
    ],
)
def test_frozen_path_dtypes(settings, bytes_):
    from ftmem.precision import resolve_dtypes
    from ftmem.vision_step import frozen_path

    path = frozen_path(resolve_dtypes(ImageTextCase("llama", settings).run()))
    assert (path.compute, path.stream, path.linear_out) == bytes_


def test_autocast_copies_trained_weights():
    """Full finetuning under bf16-mixed trains the tiny LLaVA's tower and projector:
    autocast keeps one bf16 copy of every weight a matmul or convolution reads, in the
    layers the projector reads (two of three: layer 2's graph reaches no loss), the
    patch convolution (48 × 3 × 7 × 7) and the projector's two linears (48 → 96 → 96);
    checkpointed, the layers' copies are recast in backward and only the convolution's
    and the projector's stay. No norm weights, biases or position embeddings (no matmul
    reads them). The measured steps are the accuracy cases
    llava-llama-method=full-precision=bf16-mixed and its gradckpt=True twin."""
    from ftmem.precision import resolve_dtypes
    from ftmem.vision_lora import trained_weight_copies

    conv, projector = 48 * 3 * 7 * 7 * 2, (48 * 96 + 96 * 96) * 2
    layer = 6 * 48 * 48 * 2  # q, k, v, out_proj, fc1 and fc2: all 48 × 48 here
    for settings, expected in (
        ({"method": "full", "precision": "bf16-mixed"}, conv + 2 * layer + projector),
        ({"method": "full", "precision": "bf16-mixed", "grad_ckpt": True}, conv + projector),
        ({"method": "lora", "precision": "bf16-mixed", "projector": "full"}, projector),
        ({"method": "full"}, 0),  # bf16 weights: no autocast, no copies
    ):
        case = ImageTextCase("llama", settings)
        run = case.run()
        assert trained_weight_copies(case.arch(), run, resolve_dtypes(run)) == expected


def test_autocast_copies_gemma3_projection_matrix():
    """Gemma 3's projection is a bare matrix (torch.matmul, no nn.Linear): under
    autocast its bf16 cast is kept where the tower below passes gradients (LoRA on the
    SigLIP q/v_proj: 48 × 64, the tiny Gemma 3's text width), not where nothing below
    the projector needs one (text-only LoRA targets)."""
    from ftmem.precision import resolve_dtypes
    from ftmem.vision_lora import frozen_weight_copies

    square = 48 * 48 * 2
    case = ImageTextCase("gemma3", LLAVA_AUTOCAST, tower="gemma3")
    arch, run = case.arch(), case.run()
    # from layer 0's q/v on: out_proj, fc1 and fc2 of layer 0, all six of layers 1 and 2
    linears = (3 + 6 + 6) * square
    assert frozen_weight_copies(arch, run, resolve_dtypes(run)) == linears + 48 * 64 * 2
    text_only = ImageTextCase(
        "gemma3", {**LLAVA_AUTOCAST, "lora_targets": "gate_proj"}, tower="gemma3"
    ).run()
    assert frozen_weight_copies(arch, text_only, resolve_dtypes(text_only)) == 0
