"""Gemma 4's language model (Gemma4ForCausalLM, model_type gemma4_text; transformers 5.25
models/gemma4/modeling_gemma4.py Gemma4Text*, configuration_gemma4.py Gemma4TextConfig).

Gemma 3's block (four sandwich norms, per-head q/k norms, the scaled embedding inside its
module, one cos/sin pair per layer type, the soft-capped head) with these differences,
each read from modeling_gemma4.py:

- Gemma4RMSNorm (l.196-214) scales by its weight, not ``1 + w``: ``normed *
  self.weight.float()``, an fp32 copy of a 16-bit weight kept by the multiply
  (Family.norm_weight_cast_fp32, as Helium's), and the fp32 normalised tensor for the
  weight's gradient. Its statistic is ``torch.pow(mean_squared, -0.5)``, whose backward
  reads its input: two fp32 values a row kept, not rsqrt's one (Family.norm_rstd_by_pow).
- The values pass a weightless RMSNorm (``v_norm``, with_scale=False, l.1173): its fp32
  input and statistics are kept where v needs a gradient (Family.values_normed).
- ``scaling = 1.0`` (l.1160): the kernel's scale, no tensor.
- Each decoder layer multiplies its output in place by ``layer_scalar``, a one-element
  buffer in the model's dtype (l.1348, l.1418): the multiply keeps nothing (the buffer
  needs no gradient), and the buffer is left out of the weights as Gemma 3's embed_scale
  and every rotary inv_freq are (measure.saved counts parameters).
- The last layer of each layer type "stores" its keys and values in the model's
  KVSharingDict even when no layer reuses them (configuration_gemma4.py kv_sharing_modes,
  l.243-246; modeling l.1228-1229): that dict is a keyword argument of every checkpointed
  layer, so under checkpointing it holds those keys and values until the backward has
  passed the layers (activations.stored_kv_held).

The global (full-attention) layers may have an attention shape of their own
(Family.attention_shape_per_layer_type; Architecture full_head_dim, full_kv_heads,
full_values_are_keys): Gemma4TextConfig.__post_init__ (configuration_gemma4.py l.205-217)
gives them global_head_dim (512 by default) and, with attention_k_eq_v,
num_global_key_value_heads key/value heads; Gemma4TextAttention (modeling l.1152-1185)
then builds no v_proj on them and takes the k projection's output as the values (l.1217),
which the weightless v norm normalises beside the k norm: in fp32 ``x.float()`` returns
that output itself, one tensor kept for both norms (QKNorm.value_norm_saved).

The per-layer inputs (E2B/E4B: hidden_size_per_layer_input, 256 by default, read into
Architecture.per_layer_input_size; vocab_size_per_layer_input where it differs from
vocab_size into per_layer_input_vocab) are modelled by ops.per_layer_input: the model's
token table, projection and norm (Gemma4TextModel l.1565-1580, l.1705-1784) and each
block's gate, activation, multiply, projection and norm after the MLP (l.1345-1350,
l.1408-1415); runs outside those measured are refused (step._check_per_layer_inputs).

What this family does not model, refused in one sentence each (_refuse_unmodelled;
for key/value sharing, step._check_kv_sharing): per_layer_config overrides
of a sliding layer's
shape or that give the global layers two shapes, the MoE block beside the MLP
(enable_moe_block), bidirectional attention, and rotary types other than the default and
proportional ones (both make cos and sin tables as wide as the layer type's heads:
modeling_rope_utils.py _compute_proportional_rope_parameters pads the unrotated angles with
zeros). With global layers of their own shape, what reads one attention width for every
layer beside the blocks is refused (step._check_attention_per_layer_type, serving,
tensor and context parallelism, generation after the step, the torchtune, litgpt and
unsloth frameworks), and so is training layers below the top one picked by
position (freeze with 2 or more layers, partial): the model interleaves its layer types
(every sixth global), the Architecture keeps their counts.

Measured (stop 49, helper gemma4; transformers 5.25, peft 0.21.2, torch 2.13 CPU, the tiny
gemma4 of tests/conftest.py at 3 × 50 tokens): 36 accuracy cases (ids ``^gemma4-``):
weights, gradients, optimizer states and activations exact in all but IA³ (+512 B, as on
Gemma 3); peaks within Gemma 3's own offsets for the same case (full, freeze, LoRA, DoRA,
IA³ within 8 B of them, checkpointed ones within 600 B; offloaded activations 2,812 B, 0.2 %,
over, not located), the largest -3.4 % (checkpointed LoRA
bf16-mixed; Gemma 3 -4.0 %) and +3.3 % (checkpointed QLoRA bf16-mixed; Gemma 3 +3.7 %).
Without the stored keys' hold the checkpointed peaks were -9.8 % (full bf16: 1,986,112 /
2,202,910 B) and -11.2 % (LoRA bf16: 1,234,368 / 1,390,478 B); holding the whole recomputed
history from the forward on overshot LoRA fp32 by +3.5 %: it is held from the storing
layer's backward on (the recompute's kernel keeps the same key and value until then).
Counts equal transformers' on the meta device (tests/test_gemma4.py).

Global layers of their own shape (stop 49, second helper gemma4; same versions, the tiny
gemma4 with one sliding layer of 2 × 32 key/value heads under a global one): 14 accuracy
cases (ids ``^gemma4-.*fullheaddim=``), weights, gradients, optimizer states and
activations exact. k = v with one key/value head of 64 (the 31B in small): full bf16
3,526,744 / 3,525,938 B, full fp32 5,051,632 / 5,050,832 (without the one tensor kept
for both norms the activations were 38,400 B = 150 × 64 × 4 over), LoRA bf16 2,287,876 /
2,288,270, LoRA bf16-mixed 2,735,716 / 2,736,116, QLoRA bf16 2,137,964 / 2,138,358,
DoRA 2,701,072 / 2,701,466, all-linear LoRA 3,021,524 / 3,021,918, VeRA 3,168,708 /
3,169,102, AdaLoRA 2,642,852 / 2,641,686, freeze (the global layer trained) 2,192,004 /
2,192,398 (IA³ 2,274,400 / 2,274,282, its activations +512 B as on Gemma 3; OFT and LoHa
within 406 B, not kept as cases);
checkpointed full bf16 2,399,984 / 2,406,806 (-0.3 %) and LoRA fp32 2,117,044 /
2,039,648 (+3.8 %). Four key/value heads of 64 with a v projection: full bf16
4,166,780 / 4,165,974, checkpointed LoRA fp32 2,817,180 / 2,870,824 (-1.9 %). The
same checkpointed LoRA fp32 case with one attention shape reads +2.1 % (2,104,044 /
2,061,320), so part of the checkpointed offsets is not the per-type shape's. The top
block's transients (the kernel's backward) take the global shape, the top block being
a global one; each block's own gradients are averaged over the blocks
(step.block_gradients: o_proj's groups of both types share a name), and
attention_gradients_made counts both types' o_proj and q/k norm gradients as made (full
finetuning; small). The LoRA fp32 checkpointed +3.8 % is not located.
No 31B preset: its config.json was read only in third-party copies.

Left, doubtful: with a sliding layer under checkpointing the peaks read 4,872 B (0.2 %) over
the same runs without one, as Mistral's and Ministral's checkpointed sliding cases read
about 5,000 B over theirs (generic, not located); Architecture keeps only how many layers slide, so
the storing sliding layer is taken as the highest of the lowest ones (step._sliding_blocks):
with freeze on a published pattern (every sixth layer global) the real one is the
second-highest layer, trained where two or more layers train, frozen in the estimate below
that; without checkpointing a frozen storing layer's key and value live to the end of the
model's forward (not counted: never the peak measured). Not measured on a GPU.

Per-layer inputs (stop 51, helper gemma4e; transformers 5.25, peft 0.21.2, torch 2.13
CPU; the tiny gemma4 with per_layer_input_size 16, 3 × 50 tokens; ftmem / measured B):
the counts equal transformers' on the meta device (the 31B shape with inputs of 256:
34,421,418,496; Gemma4TextConfig's defaults). What autograd keeps, derived from
modeling_gemma4.py and torch's derivatives.yaml: each block the gate's input where it
trains, the activation's input where the gate's output needs a gradient, the slice of
the per-layer inputs (one (T, layers, width) storage for all blocks) and, where those
need a gradient, the activation's output, the projection's input where it trains, the
post norm's own, autocast's 16-bit weight copies; the model's projection's input (bf16:
a new tensor; fp32 or checkpointed: the first block's), its norm's fp32 input, two
per-row values and normalised tensor. The per-layer inputs need a gradient wherever the
embeddings do, transformers' checkpointing hook included; each block's slice backward
then writes a zero-filled gradient of the whole tensor, accumulated and held through the
blocks' backward. Activations exact in 17 of the 18 cases (ids ``perlayerinputsize=16``;
IA³ +512 B as without per-layer inputs), peaks at the same offset as the same case
without per-layer inputs (in brackets):
full fp32 5,045,704 / 5,044,652 (+1,052; +1,056), full bf16-mixed 4,726,600 /
4,725,548, freeze bf16 2,040,132 / 2,040,272, LoRA bf16 2,219,412 / 2,219,552 (-140;
-138), LoRA bf16-mixed 2,632,884 / 2,633,032 (-148; -144), LoRA on every role
3,018,052 / 3,018,192, checkpointed LoRA bf16 1,512,288 / 1,512,576 (-288; -286),
checkpointed LoRA bf16-mixed 1,830,944 / 1,889,096 (-3.1 %; -58,148 B, Gemma 4's own
offset), full bf16 with a table of 400 rows 3,566,120 / 3,565,060, checkpointed LoRA bf16
with a sliding layer 1,617,988 / 1,613,404 (+4,584: the sliding offset above), LoRA fp32
2,894,260 / 2,894,408 (-148; -144), full bf16 3,546,920 / 3,545,860 (not a case), rsLoRA
2,219,412 / 2,219,552, DoRA 2,573,476 / 2,573,616 (-140; -138), IA³ 2,182,956 /
2,182,584 (+372; +374), VeRA 3,043,476 / 3,043,616, AdaLoRA 2,538,772 / 2,536,832
(+1,940; +1,942), LoHa 2,310,836 / 2,310,992 (-156; -154; its activations -16 B in
both), full bf16 with a global layer of 4 key/value heads of 64 4,555,520 / 4,554,716
(+804; +806). Without
autocast's weight copies LoRA bf16-mixed read 8,192 B under; without the norm's
input-gradient tensors checkpointed LoRA bf16 21,664 B under (the embeddings need a
gradient there), and without the held gradient 9,888 B under. Checkpointed full
finetuning (second pass): the model side's table, projection and norm make the per-layer
inputs before the blocks, so their gradients appear only after the blocks' backward
(MethodPlan.per_layer_outer, gradient_after_blocks); counted from the head's backward
on, the bottom block's backward read 23,328 B (300 × 32 × 2 + 32 × 64 × 2 + 16 × 2) over:
full bf16 2,498,532 -> 2,475,204 / 2,474,420 (+784; +786 without per-layer inputs; the
live storages at the measured peak, the bottom block's post per-layer norm backward,
hold no gradient of theirs), full fp32 3,876,260 / 3,843,100 (+33,160; +33,164), full
bf16-mixed 3,663,972 / 3,682,780 (-18,808; -18,804), full bf16 at 2 × 80 tokens
2,580,404 / 2,579,780 (+624; +626; not a case), freeze with both layers trained 2,292,544
/ 2,292,960 (-416; -414; not a case). Refused: checkpointed freeze (one of two layers
trained, bf16: 1,746,192 / 1,737,008, +9,184 where the same run without per-layer
inputs reads 1,553,236 / 1,582,050, -28,814: there the top block's backward is the
peak, measured at its post per-layer norm's backward, before the multiply's backward
makes the inputs' zero-filled gradient, which step._per_layer_gradient counted at every
block's moment. The top block now counts only what that gradient adds beyond its
per-layer tensors, freed by its later moments (at E2B's 35 × 256 in bf16 the gradient is
17,920 B a token, the tensors about 16,900: the block's one workspace cannot tell its
first moment from its later ones, so never under either): 1,736,592 / 1,737,008, -416,
as freeze with both layers trained; every case above unchanged. Still refused: fp32
with one layer trained reads 2,585,520 / 2,616,008 (-30,488) where the same run without
per-layer inputs reads 2,369,348 / 2,408,296 (-38,948), its measured peak in the frozen
block's backward (Gemma 4's own frozen checkpointed offset), not located further) and
checkpointed adapters other than LoRA (not measured), methods other than
full, freeze and those
above, all-linear (peft adapts the per-layer linears),
quantised weights, offloaded activations, frameworks, other objectives, generation,
serving and more than one GPU. Not measured: the model side's own backward (the norm's
and projection's temporaries over T × layers × width, after the blocks), which at E2B's
35 × 256 per token (5.8 × the hidden width) could make a moment of its own.

Key/value sharing (stop 51, helper gemma4e; left refused). Measured on the tiny gemma4
above with 4 layers (sliding, full, sliding, full; sliding_window 16 < 50 tokens), no
per-layer inputs, 3 × 50 tokens, sdpa, transformers 5.25, peft 0.21.2, torch 2.13 CPU;
num_kv_shared_layers 2 makes kv_sharing_modes store, store, reuse, reuse. A reusing layer
(modeling l.1161-1185, l.1213-1214) has no k_proj, v_proj, k_norm or v_norm and reads the
storing layer's key and value from the KVSharingDict. What it keeps less, by
saved_tensors_hooks per layer (each storage once):
- full fp32: the k norm's fp32 input, two per-row values and normalised tensor, the v
  norm's input and two per-row values (120,000 B a layer). The kernel's key and value
  are the storing layer's where the kernel reads them as they are (the full layer:
  no mask, sdpa's GQA path, integrations/sdpa_attention.py use_gqa_in_sdpa), 76,800 B
  more (196,800 B); a masked (sliding) layer's sdpa, and eager, keep repeat_kv's copies
  made in each layer, reusing or not. This locates the 76,800 B of the first
  measurements: 316,800 = 120,000 (sliding) + 196,800 (full). Saved storages
  5,366,824 -> 5,050,024 B.
- LoRA bf16 (q, v; r 8, fp32 adapters): the v adapter's fp32 input copy (38,400) and
  lora_A's output (4,800), the k norm's fp32 input, two per-row values and the weight's
  fp32 copy (128; no normalised tensor: the weight is frozen), the v norm's input and
  two per-row values: 124,928 B (sliding), + the kernel's bf16 key and value 38,400 =
  163,328 B (full); 2,828,204 -> 2,539,948 B, and bf16-mixed 3,080,500 -> 2,818,036 B.
- use_double_wide_mlp (configuration_gemma4.py; modeling l.1054-1059: reusing layers'
  intermediate_size doubled): full fp32 +614,400 B of activations (2 layers × 4
  intermediates × 150 × 128 × 4 B), LoRA bf16 +230,400 (2 × 3 × 150 × 128 × 2 B).
- The reused key's and value's gradients (the kernel's dtype, T × kv_size each) are
  held from the top reusing layer of their type's backward to the storing layer's, by a
  tracker (ftmem.measure.tracker) between the layers' backward hooks, full fp32: after
  L3's backward 76,800 B (the full type's), after L2's 153,600 (both), after L1's 76,800,
  after L0's none, each to the byte beside the parameters' and saved tensors' difference.
  LoRA bf16: after L3's 38,400 (the bf16 key and value), after L2's 57,600 (the sliding
  type's 19,200, not the 38,400 derived), after L1's and L0's 19,200, gone by the end of
  backward: the sliding (masked, repeat_kv) type's not derived.
The harness (tests/accuracy, measure.build's config given num_kv_shared_layers and
these layer_types, its count check off), peaks ftmem would need (measured without ->
with sharing): full fp32 8,331,924 -> 7,817,724 (forward and backward -514,200 =
weights, Adam's two states and step counters 197,400 + saved 316,800), full bf16
5,666,778 -> 5,289,410, LoRA fp32 5,062,636 -> 4,722,652, LoRA bf16 3,745,714 ->
3,399,970 (-345,744 = 32,896 + 24,592 weights and adapter states + 288,256 saved),
LoRA bf16-mixed 4,432,316 -> 4,079,468, checkpointed LoRA bf16 1,935,934 -> 1,743,870
(forward -57,488, the weights; backward -192,064, not derived); double-wide full fp32
9,021,948 (optimizer phase +43,008 over 4 × the MLP's weights, not derived), LoRA bf16
3,728,674. ftmem on the same runs without sharing (its sliding layers lowest): 8,332,844,
5,667,708, 5,062,356, 3,745,444, 4,432,036, 1,940,516. Not done: the layers' types by
index (the reusing layers at the top are of both types, ftmem keeps the sliding ones
lowest: arch.Blocks as Qwen3.5's), the per-block saved tensors and parameters of a
reusing layer, the held gradients in step's backward moments, checkpointing; no
published E2B/E4B config.json was at hand to count.

Key/value sharing laid out (stop 51, second pass, helper gemma4e; transformers 5.25 on the
meta device). num_kv_shared_layers and use_double_wide_mlp are read
(_read_kv_sharing) into Architecture.kv_shared_layers and kv_shared_double_mlp, and the
sliding layers' indices into Architecture.sliding_indices where they are not the lowest
(read only with sharing: without it every estimate keeps them lowest, as measured). The
layout (arch._kv_shared_linears, qk_norm_params) takes k_proj, v_proj and k_norm out of
the top kv_shared_layers blocks (Gemma4TextAttention.__init__ l.1168-1185; v_norm has no
weight) and doubles those blocks' MLP (Gemma4TextMLP.__init__ l.1054-1059); each layer's
attention is its type's by index (Architecture.type_blocks). Every block parameter's name
and shape and the total equal Gemma4ForCausalLM's for five tiny stacks of 8 layers
(types s f s s f s s f; 3 reusing: two sliding, one full; global head 32 against 16;
k = v; one attention shape; 4 and 1 reusing; tests/test_gemma4_kv_sharing.py): e.g.
17,200,744 parameters, +57,280 over the same stack without sharing (the reusing layers'
k/v projections and key norms -16,448, their MLPs +3 × 24,576), and the config built for
ftmem measure gives transformers' own kv_sharing_modes: ftmem.measure on the Architecture
of the stop 51 stack above (tiny gemma4, 4 layers, sliding_indices (0, 2), 2 reusing,
full fp32, 3 × 50 tokens) builds it with its count check on and reads the same 7,817,724
B peak as the first pass's own harness (weights 802,816, saved 5,050,004). A
num_kv_shared_layers that leaves below the reusing layers no layer of a type they
reuse is refused, as kv_sharing_modes refuses it. Also read:
vocab_size_per_layer_input's default, 262,144
rows whatever vocab_size (configuration_gemma4.py l.170; it had been read as
vocab_size). Estimated (stop 51, same pass): each block keyed on its index where
layers share (step._block_activations: its type from type_blocks, its own linears,
LayerContext.reusing); a reusing layer keeps no k or v norm tensors (QKNorm.saved), and
its unmasked sdpa call only the rotated query and autocast's copies of the key and value
(Attention.reused_kv_saved): under bf16-mixed the rotated key is fp32 (fp32 cos and sin
promote it), and sdpa's cast makes a bf16 copy in every layer that reads it (without it
LoRA bf16-mixed read 19,200 B = 150 × 64 × 2 under); a masked (sliding) one keeps
repeat_kv's copies as any layer; the double-wide MLP's intermediates from the block's own
linears; the reused gradients held from the top reusing layer of each type to the
storing one's backward (step._reused_kv_gradients; the storing layer's key and value
each where they need a gradient, the key in the rotated key's dtype: bf16-mixed's fp32
derived, not measured). 15 accuracy cases (ids ``kvsharedlayers=``), fresh measurements,
ftmem / measured B: weights, gradients, optimizer states and activations exact in all;
peaks full fp32 7,818,644 / 7,817,724 (+920; +920 without sharing), full bf16 5,290,340 /
5,289,410 (+930; +930), LoRA bf16 3,399,700 / 3,399,970 (-270; -270), LoRA bf16-mixed
4,079,188 / 4,079,468 (-280; -280), LoRA fp32 4,722,372 / 4,722,652 (-280; -280),
double-wide full fp32 9,022,868 / 9,021,948 (+920), double-wide LoRA bf16 3,728,404 /
3,728,674 (-270), E2B-like (double-wide, per-layer inputs of 16, global head 64) full
bf16 7,518,080 / 7,517,280 (+800) and LoRA bf16-mixed 5,700,308 / 5,700,720 (-412),
LoRA bf16 on q, k, v 3,551,620 / 3,551,890 (-270), on all-linear 4,845,060 /
4,845,330 (-270) and with the double-wide MLP 5,401,092 / 5,401,362 (-270).
Checkpointed (transformers' own checkpoint): the checkpoints hold the storing layers'
keys and values (activations.stored_kv_held), the storing layers being the highest of
each type below the reusing ones; with the top layers taken as the storing ones the
peaks read LoRA bf16 1,788,308 / 1,743,870 (+2.5 %) and full bf16 3,086,100 / 3,002,190
(+2.8 %); now at the offsets of the same runs without sharing (in brackets): LoRA bf16
1,748,452 / 1,743,870 (+4,582; +4,582, the sliding offset), full bf16 3,007,844 /
3,002,190 (+5,654; +5,654), LoRA bf16-mixed 2,218,052 / 2,271,336 (-53,284; -53,284,
Gemma 4's own), full fp32 5,053,436 / 5,015,408 (+38,028; +38,028; not a case);
activations, weights, gradients and states exact. The
held gradients change none of these peaks (each estimate the same without them): they
equal the tracker's numbers above by block (tests/test_gemma4_kv_sharing.py). Refused
(step._check_kv_sharing): methods other than full and LoRA (on q, v; q, k, v;
all-linear), fp16, eager and flash attention, compile, quantised weights, offloaded activations,
frameworks, objectives, generation, more than one GPU, serving.
Left: a config.json of E2B/E4B to count (none at hand); the autocast key's held gradient
dtype; the sliding layers unmasked (sequence within the window) take the unmasked
path, derived, not measured. The LoRA bf16 sliding gradient (19,200 measured against
38,400 first derived), as step._reused_kv_gradients derives it: the sliding type's storing layer is
L0, whose input (the frozen embeddings' output, no checkpointing hook) needs no gradient
and whose k_proj is frozen (LoRA on q and v), so its key needs none and only the value's
gradient, 150 × 64 × 2 = 19,200 B, is accumulated; the full type's storing layer L1
reads L0's output, which L0's v adapter gives a gradient, so its key and value both do
(38,400). A held gradient is then T × kv width × bytes for each of the storing layer's
key and value that needs one (full fp32: both, 76,800 a type). That L0's "after" reads
19,200 where full fp32's reads none may have the same cause (a full backward hook on a
layer whose input needs no gradient fires when its output's gradient is computed,
before the layer's own backward: torch 2.13 utils/hooks.py BackwardHook l.223-231; a
measurement point, not a hold). LoRA on q, k, v (the sliding key then needs one: 38,400
B held from L2's backward) reads the same peak offset; its held gradients are at no
measured peak, not tracked.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ftmem import limits
from ftmem.errors import ConfigError
from ftmem.families import ConfigMap, Family
from ftmem.families._config import Config, LlamaKeys, flag, opt, opt_or, shown, wrong
from ftmem.families._llama import llama_map
from ftmem.families.gemma2 import GEMMA2_NAMES, read_softcaps

if TYPE_CHECKING:
    from ftmem.arch import Architecture

# the per-layer inputs' modules (modeling_gemma4.py l.1345-1350 and l.1565-1580)
GEMMA4_NAMES = replace(
    GEMMA2_NAMES,
    per_layer={
        "table": "model.embed_tokens_per_layer",
        "model_projection": "model.per_layer_model_projection",
        "model_norm": "model.per_layer_projection_norm",
        "gate": "per_layer_input_gate",
        "projection": "per_layer_projection",
        "norm": "post_per_layer_input_norm",
    },
)

# Gemma4TextConfig's defaults (transformers 5.25 configuration_gemma4.py l.130-177, and
# __post_init__'s global_head_dim 512 l.183)
TEXT_DEFAULTS: Config = {
    "vocab_size": 262_144,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 30,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "sliding_window": 512,
    "hidden_size_per_layer_input": 256,
    "vocab_size_per_layer_input": 262_144,  # (whatever vocab_size is)
    "num_kv_shared_layers": 0,
    "global_head_dim": 512,
}
# the rotary types whose tables are head_dim wide without a scaling factor
# (modeling_rope_utils.py: "default", and "proportional" with its zero-padded angles)
ROTARY_TYPES = ("default", "proportional")


def _sliding(cfg: Config, layers: int) -> list[int]:
    """The sliding layers' indices: Gemma4TextConfig.__post_init__ (l.166-176)'s
    layer_types, else every sixth layer global (``bool((i + 1) % 6)``), and the last layer
    forced global whatever was given."""
    types = cfg.get("layer_types")
    if types is None:
        types = ["sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(layers)]
    elif not isinstance(types, list) or len(types) != layers:
        raise wrong("layer_types", f"a list of the {layers} layers' types", types)
    return [i for i, kind in enumerate(types[:-1]) if kind == "sliding_attention"]


def _sliding_count(cfg: Config, layers: int) -> int:
    return len(_sliding(cfg, layers))


def _read_kv_sharing(cfg: Config, out: Config) -> None:
    """num_kv_shared_layers (the top layers reuse the keys and values of the last lower
    layer of their type: Gemma4TextConfig.kv_sharing_modes, configuration_gemma4.py
    l.222-247) and use_double_wide_mlp (those layers' MLP twice as wide, modeling l.1054-
    1059). Their types by index matter there (the reusing layers at the top are of both
    types), so the sliding layers are kept by index."""
    shared = _size_or_off(cfg, "num_kv_shared_layers")
    if not shared:
        return
    layers = out["num_layers"]
    sliding = _sliding(cfg, layers) if out.get("sliding_window") else []
    first = layers - shared
    below = {i in sliding for i in range(max(first, 0))}
    if first < 1 or below != ({False} if not sliding else {False, True}):
        raise ConfigError(
            f"Gemma 4's num_kv_shared_layers ({shared}) must leave below the reusing layers "
            "one layer of each type they reuse (transformers refuses it, kv_sharing_modes)."
        )
    out["kv_shared_layers"] = shared
    if sliding and sliding != list(range(len(sliding))):
        out["sliding_indices"] = sliding
    if flag(cfg, "use_double_wide_mlp", False):
        out["kv_shared_double_mlp"] = True


def _size_or_off(cfg: Config, key: str) -> int:
    """A count where 0 switches the mechanism off (Gemma4TextModel's ``if
    self.hidden_size_per_layer_input``)."""
    value = cfg.get(key)
    if type(value) is int and value == 0:
        return 0
    return opt(cfg, key, limits.LAYERS if key == "num_kv_shared_layers" else limits.WIDTH) or 0


def _global_attention(cfg: Config) -> tuple[int, int]:
    """The global layers' head size and key/value heads: Gemma4TextConfig.__post_init__
    (configuration_gemma4.py l.205-217) overrides the global layers' head_dim with
    global_head_dim (512 by default), and their num_key_value_heads with
    num_global_key_value_heads where attention_k_eq_v is set (ignored otherwise); a
    config.json that transformers wrote carries these overrides as per_layer_config
    (PreTrainedConfig.__init__ applies it last, configuration_utils.py l.496-517), which
    is read where it gives every global layer, and only them, one shape."""
    head_dim = opt_or(cfg, "head_dim", TEXT_DEFAULTS)
    kv = opt_or(cfg, "num_key_value_heads", TEXT_DEFAULTS)
    overrides = cfg.get("per_layer_config")
    if overrides is None:
        global_kv = opt(cfg, "num_global_key_value_heads", limits.WIDTH)
        k_eq_v = flag(cfg, "attention_k_eq_v", False)
        return opt_or(cfg, "global_head_dim", TEXT_DEFAULTS), (
            global_kv if k_eq_v and global_kv else kv
        )
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise wrong("per_layer_config", "an object of per-layer objects", overrides)
    layers = opt_or(cfg, "num_hidden_layers", TEXT_DEFAULTS)
    types = cfg.get("layer_types") or [
        "sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(layers)
    ]
    full = {str(i) for i, kind in enumerate(types) if kind == "full_attention" or i == layers - 1}
    base = {"head_dim": head_dim, "num_key_value_heads": kv}
    # (to_dict writes the layers' indices zero-padded: "05")
    given = {
        str(int(layer)) if str(layer).isdigit() else str(layer): values
        for layer, values in overrides.items()
    }
    for layer, values in given.items():
        if any(type(v) is not int or v < 1 for v in values.values()):
            raise wrong("per_layer_config", "positive integers per layer", values)
        own = not set(values) <= set(base) or layer not in full
        if own and any(base.get(k) != v for k, v in values.items()):
            raise ConfigError(
                f"Gemma 4's per-layer overrides (per_layer_config: layer {shown(layer)}'s "
                f"{shown(values)}) are not modelled: ftmem gives the sliding layers one "
                "attention shape and the global ones another."
            )
    # (a layer the overrides leave out keeps the base shape)
    shapes = {tuple({**base, **given.get(layer, {})}.values()) for layer in full}
    if len(shapes) > 1:
        raise ConfigError(
            "Gemma 4's per-layer overrides (per_layer_config) give the global layers more "
            "than one attention shape, which is not modelled."
        )
    head, heads = shapes.pop()
    return head, heads


def _refuse_unmodelled(cfg: Config) -> None:
    """What the family leaves out, refused before anything is estimated."""
    if flag(cfg, "enable_moe_block", False):
        raise ConfigError(
            "Gemma 4's enable_moe_block (the mixture-of-experts block beside the MLP) is not "
            "modelled yet."
        )
    if cfg.get("use_bidirectional_attention") == "all":
        raise ConfigError(
            "Gemma 4 with use_bidirectional_attention 'all' (no causal mask) is not modelled."
        )
    rope = cfg.get("rope_parameters")
    for kind, params in rope.items() if isinstance(rope, dict) else ():
        if not isinstance(params, dict):  # (Gemma4TextRotaryEmbedding reads one per type)
            raise wrong("rope_parameters", "an object per layer type", rope)
        rope_type = params.get("rope_type", "default")
        if rope_type not in ROTARY_TYPES:
            raise ConfigError(
                f"config.json: rope_parameters' {kind} rotary type {shown(rope_type)} is not "
                "modelled for Gemma 4 (default and proportional are)."
            )


def _read_extra(cfg: Config, out: Config) -> None:
    out["qk_norm"] = True
    head_dim, kv = _global_attention(cfg)
    if head_dim != out.get("head_dim") or kv != (out.get("num_kv_heads") or out["num_heads"]):
        out.update(full_head_dim=head_dim, full_kv_heads=kv)
    if flag(cfg, "attention_k_eq_v", False):
        out["full_values_are_keys"] = True
    read_softcaps({k: cfg.get(k) for k in ("final_logit_softcapping",)}, out)
    _read_kv_sharing(cfg, out)
    per_layer = _size_or_off(cfg, "hidden_size_per_layer_input")
    if per_layer:
        out["per_layer_input_size"] = per_layer
        rows = opt(cfg, "vocab_size_per_layer_input", limits.WIDTH)
        if rows is not None and rows != out["vocab_size"]:
            out["per_layer_input_vocab"] = rows


def _build(arch: Architecture, kw: Config) -> None:
    # the layers' types as the Architecture keeps them (Architecture.type_blocks: the
    # sliding ones first unless given by index), the last layer global (Gemma4TextConfig
    # forces it); no MoE
    slides = arch.type_blocks(full=False) if arch.sliding_window else None
    kw.update(
        layer_types=[
            "sliding_attention" if slides and slides.holds(i) else "full_attention"
            for i in range(arch.num_layers)
        ],
        final_logit_softcapping=arch.final_logit_softcapping,
        hidden_size_per_layer_input=arch.per_layer_input_size,
        num_kv_shared_layers=arch.kv_shared_layers,
        use_double_wide_mlp=arch.kv_shared_double_mlp,
        global_head_dim=arch.of_layer_type(full=True).head_size,
        num_global_key_value_heads=arch.of_layer_type(full=True).kv_heads,
        attention_k_eq_v=arch.full_values_are_keys,
        enable_moe_block=False,
        vocab_size_per_layer_input=arch.per_layer_input_vocab or arch.vocab_size,
    )
    shape = arch.of_layer_type(full=True)
    if shape.kv_heads != arch.kv_heads and not arch.full_values_are_keys:
        # (num_global_key_value_heads is read only with attention_k_eq_v: the overrides)
        own = {"head_dim": shape.head_size, "num_key_value_heads": shape.kv_heads}
        full = arch.type_blocks(full=True).indices
        kw["per_layer_config"] = {i: dict(own) for i in sorted(full)}
    if not arch.sliding_window:  # (the class's default window, read by no layer)
        kw.pop("sliding_window", None)


_LLAMA_MAP = llama_map(
    "gemma4",
    LlamaKeys(
        optional=("attention_bias",),
        activation="hidden_activation",
        window="when-set",
        sliding=_sliding_count,
        tie=True,
    ),
    _read_extra,
    _build,
)


def _read(cfg: Config) -> Config:
    for key in ("hidden_size_per_layer_input", "num_kv_shared_layers", "global_head_dim"):
        if key in cfg and cfg[key] is None:  # (Gemma4TextConfig's strict int fields)
            raise wrong(key, "an integer", None)
    given = {k: v for k, v in cfg.items() if v is not None}
    full = {**TEXT_DEFAULTS, **given}
    _refuse_unmodelled(full)
    out = _LLAMA_MAP.read(full)
    if out.get("sliding_layers"):  # (a given last sliding layer is made global)
        out["sliding_layers"] = _sliding_count(full, out["num_layers"])
    return out


FAMILY = Family(
    name="gemma4",
    model_types=("gemma4_text",),
    decoder_layer="Gemma4TextDecoderLayer",
    config=ConfigMap(_read, _LLAMA_MAP.build),
    names=GEMMA4_NAMES,
    qk_norm=True,
    norm_scale_in_fp32=True,
    norm_weight_cast_fp32=True,
    norm_rstd_by_pow=True,
    values_normed=True,
    rotary_tables_per_layer_type=True,
    stores_last_kv_per_layer_type=True,
    top_layer_global=True,
    attention_shape_per_layer_type=True,
    since_transformers=(5, 25, 0),
    unmodelled_wrappers=(
        (
            "gemma4",
            "Gemma 4's image and audio encoders are not modelled; estimate its language "
            "model from its text_config as a config.json of model_type gemma4_text.",
        ),
    ),
)
