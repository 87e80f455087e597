"""QLoRA on image-text models: which tensors of the vision tower, the projector and
Llama-3.2-Vision's cross-attention layers bitsandbytes stores in 4 bits
(ftmem.vision.stored_format), and what the tower adapters' inputs keep
(ftmem.vision_lora.inputs_needing_grad).

The truth for the quantised set is transformers 5.24's own rule, applied to the tiny
models built on the meta device: from_pretrained with a BitsAndBytesConfig and no
llm_int8_skip_modules (TRL's get_quantization_config, LLaMA-Factory's and axolotl's QLoRA
loaders pass none for these models) skips the modules get_modules_to_not_convert names
(quantizers/base.py l.261-280: get_keys_to_not_convert's tied weights, last parameter and
output embedding, and _keep_in_fp32_modules) and replaces every other module whose type
is exactly nn.Linear (integrations/bitsandbytes.py replace_with_bnb_linear l.184-189,
quantizers/quantizers_utils.py should_convert_module l.26-37). The measured steps are
accuracy cases (tests/accuracy/cases.py _tower_adapters)."""

from __future__ import annotations

import pytest

from ftmem.dtypes import is_quantized
from ftmem.estimate import estimate_step
from ftmem.methods import plan_method
from ftmem.run import RunConfig
from ftmem.vision_lora import adapted, inputs_needing_grad
from ftmem.vision_step import is_vision
from tests.accuracy.cases import TINY_TOWERS, TOWER_FAMILIES, ImageTextCase, MllamaCase

TOWERS = TOWER_FAMILIES
# the module paths of what ftmem.vision_step.is_vision and mllama_step call vision
# (Llama-3.2-Vision's cross-attention layers are its language model's layers)
VISION_PATHS = ("vision_tower", "vision_model", "visual", "multi_modal_projector")


def _transformers_quantised(arch) -> dict[str, int]:
    """Each module transformers' bitsandbytes path makes 4-bit, with its weight's numel."""
    torch = pytest.importorskip("torch")
    from transformers.quantizers.base import HfQuantizer
    from transformers.quantizers.quantizers_utils import should_convert_module

    from ftmem.measure.build import hf_config, model_from_config

    with torch.device("meta"):
        model = model_from_config(arch, hf_config(arch))
    skips = HfQuantizer.get_modules_to_not_convert(model, None, model._keep_in_fp32_modules)
    return {
        name: module.weight.numel()
        for name, module in model.named_modules()
        if should_convert_module(name, skips) and type(module) is torch.nn.Linear
    }


def _ftmem_quantised(arch, run) -> tuple[int, int]:
    """(every quantised tensor's numel, those of the tower and projector) in the plan."""
    groups = [g for g in plan_method(arch, run).groups if is_quantized(g.fmt)]
    return (
        sum(g.total_numel for g in groups),
        sum(g.total_numel for g in groups if is_vision(g.name)),
    )


def _compare(arch, run) -> None:
    quantised = _transformers_quantised(arch)
    vision = sum(n for name, n in quantised.items() if any(p in name for p in VISION_PATHS))
    assert vision > 0  # (the tower's and projector's linears are 4-bit)
    assert _ftmem_quantised(arch, run) == (sum(quantised.values()), vision)


@pytest.mark.parametrize(("tower", "family"), TOWERS)
def test_quantised_tensors_are_transformers_bitsandbytes_set(tower, family):
    pytest.importorskip("transformers")
    case = ImageTextCase(family, {"method": "qlora"}, tower=tower)
    _compare(case.arch(), case.run())


def test_mllama_quantised_tensors_are_transformers_bitsandbytes_set():
    pytest.importorskip("transformers")
    case = MllamaCase("llama", {"method": "qlora", "images": 1})
    _compare(case.arch(), case.run())


def test_four_bit_biases_take_the_compute_dtype_only_when_the_tower_runs():
    """A 4-bit linear's bias is cast in place to the compute dtype by its first forward
    (bitsandbytes@0.50.2 nn/modules.py Linear4bit.forward l.630-635). Tiny LLaVA under
    bf16-mixed (fp32 base): the CLIP layers' q, k, v, out_proj biases (H each), fc1's
    (I) and fc2's (H), and the projector's linear_1 and linear_2 biases (the text width
    each) are fp32 when no image runs the tower, bf16 when one does."""
    v = TINY_TOWERS["llava"]
    arch = ImageTextCase("llama", {}).arch()
    H, I, text = v.hidden_size, v.intermediate_size, arch.hidden_size
    biases = v.num_layers * (5 * H + I) + 2 * text
    text_only = ImageTextCase("llama", {"method": "qlora", "precision": "bf16-mixed", "images": 0})
    images = ImageTextCase("llama", {"method": "qlora", "precision": "bf16-mixed"})
    weights = [estimate_step(c.arch(), c.run()).memory.weights_bytes for c in (text_only, images)]
    assert weights[0] - weights[1] == biases * (4 - 2)


@pytest.mark.parametrize(("tower", "family"), TOWERS)
def test_first_adapted_inputs_need_no_gradient(tower, family):
    """A frozen tower's first adapted linears read activations nothing trainable made:
    peft's dropout there keeps no mask (measured: the dropout accuracy cases were 0.6 to
    6.1 % high when every adapter kept one). With all-linear that is layer 0's
    attention input projections (q, k, v, or Qwen's fused qkv); everything after them,
    the projector's linears included, needs a gradient."""
    case = ImageTextCase(family, {"method": "lora", "lora_targets": "all-linear"}, tower=tower)
    arch, run = case.arch(), case.run()
    lins = adapted(arch, run)
    first = {
        lin.module
        for lin in lins
        if lin.part == "tower"
        and lin.layer == 0
        and lin.module.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "qkv")
    }
    assert first
    assert inputs_needing_grad(arch, run) == {lin.module for lin in lins} - first


def test_hooked_tower_inputs_all_need_a_gradient():
    """Under checkpointing transformers' enable_input_require_grads hooks the tower's
    patch embedding (ftmem.vision_step.input_hooked): every adapter's input needs one."""
    settings = {"method": "lora", "lora_targets": "all-linear", "grad_ckpt": True}
    case = ImageTextCase("llama", settings)
    arch, run = case.arch(), case.run()
    assert inputs_needing_grad(arch, run) == {lin.module for lin in adapted(arch, run)}


def test_text_only_batches_need_nothing():
    case = ImageTextCase("llama", {"method": "lora", "lora_targets": "all-linear", "images": 0})
    assert inputs_needing_grad(case.arch(), case.run()) == frozenset()
    assert RunConfig(method="lora").images == 0
