"""The router's load-balancing (auxiliary) loss, as transformers 5.24's MoE causal LMs
add it when config.json's ``output_router_logits`` is true (models/mixtral/
modeling_mixtral.py MixtralForCausalLM.forward and load_balancing_loss_func; Qwen3-MoE's,
OLMoE's and gpt-oss's are copies of it, DeepSeek-V2/V3 have none).

What it costs, per MoE block, with T tokens, E experts, top-k:

* the forward: the capture hook (utils/output_capturing.py OutputRecorder(...TopKRouter,
  index=0)) keeps every layer's router logits, (T, E) in the router's output dtype,
  until the model's output is dropped after the loss (HF Trainer's compute_loss). The
  router itself saves none of them (its softmax keeps its output, topk its indices).
* the loss: load_balancing_loss_func runs one layer at a time: ``softmax(layer_gate)``
  keeps its (T, E) output for backward (the saved tensors this module adds), topk's
  values and int64 indices live until the next layer's replace them, ``.to(float32)`` of
  the indices for histc, and ``routing_weights.float()`` copies a 16-bit softmax;
  the rest is (E,)-sized.
* the backward: autograd runs the auxiliary branch first (its nodes were made last, so
  they have the highest sequence numbers), which frees those softmax outputs and leaves
  each layer's (T, E) gradient of its router logits in the router linear's input buffer
  until that block's backward consumes it.

So each MoE block holds T·E elements from its forward to its backward, the router logits
first and their gradient after (:meth:`RouterAuxLoss.kept`), whatever the block policy
keeps of the block itself (checkpointing recomputes outside the capture hook's forward);
the loss adds a moment of its own (:meth:`RouterAuxLoss.loss_moment`). Autocast: the CPU's
has no softmax on its lists (measured: the softmax stays 16-bit); CUDA's runs it in fp32
(pytorch aten/src/ATen/autocast_mode.cpp ``KERNEL_CUDA2(softmax, int,
fp32_set_opt_dtype)``), which the element size here follows (:meth:`softmax_bytes`; the
router logits and their gradient are 16-bit there, so the figure is high by T·E·2 per
block on CUDA under autocast). Without an attention mask (ftmem's measured step passes
none); a padded batch's mask adds a (T,) fp32 copy the softmax products share.
"""

from __future__ import annotations

from ftmem.arch import Architecture
from ftmem.dtypes import BYTES_PER_ELEMENT, FP32, INDEX_BYTES
from ftmem.methods import MethodPlan
from ftmem.ops.registry import register
from ftmem.run import RunConfig


@register("router_aux_loss")
class RouterAuxLoss:
    """The load-balancing loss over every MoE block's router logits."""

    @staticmethod
    def on(arch: Architecture) -> bool:
        """Whether the run's model adds it (arch as the run trains it: arch.as_trained)."""
        return arch.router_aux_loss and arch.is_moe

    @staticmethod
    def blocks(arch: Architecture) -> int:
        """The blocks with a router (DeepSeek's first dense blocks have none)."""
        return arch.num_layers - arch.dense_layers if RouterAuxLoss.on(arch) else 0

    @staticmethod
    def softmax_bytes(run: RunConfig, plan: MethodPlan) -> int:
        """The element size of the loss's softmax over a layer's router logits (those in
        the compute dtype): fp32 under CUDA's autocast, else the logits' own."""
        if run.uses_autocast and run.device != "cpu":
            return FP32
        return BYTES_PER_ELEMENT[plan.dtypes.compute]

    @staticmethod
    def kept(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
        """Bytes one MoE block holds from its forward to its backward: its router logits,
        then the loss's softmax of them, then their gradient (T·E each)."""
        if not RouterAuxLoss.on(arch):
            return 0
        return T * arch.num_experts * RouterAuxLoss.softmax_bytes(run, plan)

    @staticmethod
    def loss_moment(arch: Architecture, run: RunConfig, plan: MethodPlan, T: int) -> int:
        """The loss's last layer, beyond what the blocks keep (``kept``, the router logits
        still held by the model's output) and the cross-entropy's saved tensors: every
        layer's saved softmax, the logits the output still holds, the previous layer's
        top-k values and indices with the largest of this layer's (its own top-k, the
        indices' fp32 copy for histc, the softmax's fp32 copy)."""
        n = RouterAuxLoss.blocks(arch)
        if not n:
            return 0
        E, k = arch.num_experts, arch.experts_per_token
        e, s = BYTES_PER_ELEMENT[plan.dtypes.compute], RouterAuxLoss.softmax_bytes(run, plan)
        topk = T * k * (s + INDEX_BYTES)
        copy = T * E * FP32 if s != FP32 or e != s else 0  # .float(), or autocast's cast
        this_layer = max(topk if n > 1 else 0, T * k * FP32 + E * FP32, copy)
        return T * arch.vocab_size * e + n * T * E * s + topk + this_layer
