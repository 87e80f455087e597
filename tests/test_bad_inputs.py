"""A corpus of bad inputs: each gets exit 2, one sentence on stderr, nothing on stdout.

Runs the real entry point (``ftmem.cli.main``), so Typer's own usage errors are
covered too. ``{tmp}`` in an argument is the test's temporary folder, where the
files named in the case are written first.
"""

from __future__ import annotations

import json

import pytest

from ftmem.cli import main
from tests.conftest import write_files

LLAMA = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "intermediate_size": 11008,
}


MIXTRAL_TINY = json.dumps(
    {
        **LLAMA,
        "model_type": "mixtral",
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "output_router_logits": False,
    }
)
OLMOE_TINY = json.dumps(
    {**LLAMA, "model_type": "olmoe", "num_experts": 8, "num_experts_per_tok": 2, "clip_qkv": None}
)


def cfg(**changes: object) -> str:
    data = {**LLAMA, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None})


# (id, arguments, files to write, expected text in the error)
CORPUS: list[tuple[str, list[str], dict[str, str | bytes], str]] = [
    # unknown or ambiguous names
    ("unknown-model", ["estimate", "nosuchmodel"], {}, "Unknown model 'nosuchmodel'"),
    ("model-typo", ["estimate", "llama2-13"], {}, "Did you mean llama2-13b"),
    ("model-prefix", ["estimate", "llama"], {}, "Did you mean"),
    ("model-case-typo", ["estimate", "Mistral-8b"], {}, "Unknown model"),
    ("unknown-gpu", ["estimate", "gpt2", "--gpu", "rtx9090"], {}, "Unknown gpu 'rtx9090'"),
    ("gpu-typo", ["estimate", "gpt2", "--gpu", "a100-90gb"], {}, "Did you mean"),
    ("unknown-command", ["nosuchcmd"], {}, "No such command 'nosuchcmd'"),
    ("unknown-option", ["estimate", "gpt2", "--nope"], {}, "No such option: --nope"),
    ("missing-model", ["estimate"], {}, "give a model"),
    (
        "hub-id-offline",
        ["estimate", "acme/no-such-model"],
        {},
        "Unknown model 'acme/no-such-model'",
    ),
    # choices
    ("method", ["estimate", "gpt2", "--method", "banana"], {}, "--method"),
    ("precision", ["estimate", "gpt2", "--precision", "bf17"], {}, "--precision"),
    ("optimizer", ["estimate", "gpt2", "--optimizer", "adam"], {}, "--optimizer"),
    ("attn", ["estimate", "gpt2", "--attn", "flash2"], {}, "--attn"),
    ("quant", ["estimate", "gpt2", "--method", "qlora", "--quant", "nf8"], {}, "--quant"),
    (
        "adapter-dtype",
        ["estimate", "gpt2", "--method", "lora", "--adapter-dtype", "int4"],
        {},
        "--adapter-dtype",
    ),
    (
        "compute-dtype",
        ["estimate", "gpt2", "--method", "qlora", "--compute-dtype", "fp8"],
        {},
        "--compute-dtype",
    ),
    ("optimizer-impl", ["estimate", "gpt2", "--optimizer-impl", "turbo"], {}, "--optimizer-impl"),
    ("accounting", ["estimate", "gpt2", "--accounting", "fancy"], {}, "--accounting"),
    ("format", ["estimate", "gpt2", "--format", "xml"], {}, "--format"),
    ("units-lower", ["estimate", "gpt2", "--units", "gb"], {}, "--units"),
    ("units-models", ["models", "--units", "MB"], {}, "--units"),
    # sizes
    ("batch-negative", ["estimate", "gpt2", "--batch-size", "-1"], {}, "--batch-size"),
    ("batch-zero", ["estimate", "gpt2", "--batch-size", "0"], {}, "--batch-size"),
    ("batch-text", ["estimate", "gpt2", "--batch-size", "abc"], {}, "--batch-size"),
    ("batch-absurd", ["estimate", "gpt2", "--batch-size", "10000000"], {}, "tokens per step"),
    ("seq-zero", ["estimate", "gpt2", "--seq-len", "0"], {}, "--seq-len"),
    ("seq-beyond-learned", ["estimate", "gpt2", "--seq-len", "4096"], {}, "learned positions"),
    ("grad-accum-zero", ["estimate", "gpt2", "--grad-accum", "0"], {}, "--grad-accum"),
    ("lora-r-zero", ["estimate", "gpt2", "--method", "lora", "--lora-r", "0"], {}, "--lora-r"),
    (
        "lora-r-absurd",
        ["estimate", "gpt2", "--method", "lora", "--lora-r", "100000"],
        {},
        "exceeds the smallest adapted dimension",
    ),
    (
        "lora-dropout",
        ["estimate", "gpt2", "--method", "lora", "--lora-dropout", "2"],
        {},
        "--lora-dropout",
    ),
    (
        "trainable-negative",
        ["estimate", "gpt2", "--method", "freeze", "--trainable-layers", "-1"],
        {},
        "--trainable-layers",
    ),
    (
        "trainable-zero",
        ["estimate", "gpt2", "--method", "freeze", "--trainable-layers", "0"],
        {},
        "leaves nothing to train",
    ),
    (
        "trainable-too-many",
        ["estimate", "gpt2", "--method", "freeze", "--trainable-layers", "99"],
        {},
        "exceeds the model's 12 blocks",
    ),
    # units
    ("size-bare-g", ["estimate", "gpt2", "--gpu-memory", "24g"], {}, "Unknown size unit"),
    ("size-words", ["estimate", "gpt2", "--gpu-memory", "24 gibibytes"], {}, "Unknown size unit"),
    ("size-zero", ["estimate", "gpt2", "--gpu-memory", "0"], {}, "must be positive"),
    ("size-negative", ["estimate", "gpt2", "--gpu-memory", "-24GiB"], {}, "Cannot read"),
    ("size-text", ["estimate", "gpt2", "--gpu-memory", "lots"], {}, "Cannot read"),
    ("size-scientific", ["estimate", "gpt2", "--gpu-memory", "1e30GiB"], {}, "Cannot read"),
    ("overhead-text", ["estimate", "gpt2", "--overhead", "abc"], {}, "Cannot read"),
    # impossible combinations
    (
        "lora-r-with-full",
        ["estimate", "gpt2", "--method", "full", "--lora-r", "8"],
        {},
        "--lora-r only applies",
    ),
    ("lora-alpha-with-full", ["estimate", "gpt2", "--lora-alpha", "16"], {}, "--lora-alpha"),
    (
        "targets-with-freeze",
        ["estimate", "gpt2", "--method", "freeze", "--lora-targets", "q"],
        {},
        "--lora-targets",
    ),
    (
        "adapter-dtype-with-full",
        ["estimate", "gpt2", "--adapter-dtype", "bf16"],
        {},
        "--adapter-dtype",
    ),
    (
        "quant-with-lora",
        ["estimate", "gpt2", "--method", "lora", "--quant", "nf4"],
        {},
        "only applies to qlora",
    ),
    (
        "double-quant-with-full",
        ["estimate", "gpt2", "--double-quant"],
        {},
        "only applies to qlora",
    ),
    (
        "layers-with-lora",
        ["estimate", "gpt2", "--method", "lora", "--trainable-layers", "2"],
        {},
        "only applies to freeze",
    ),
    (
        "autocast-fp32",
        ["estimate", "gpt2", "--precision", "fp32", "--autocast"],
        {},
        "--autocast needs a 16-bit",
    ),
    (
        "no-autocast-mixed",
        ["estimate", "gpt2", "--precision", "bf16-mixed", "--no-autocast"],
        {},
        "means autocast",
    ),
    (
        "gpu-and-memory",
        ["estimate", "gpt2", "--gpu", "t4", "--gpu-memory", "16GiB"],
        {},
        "not both",
    ),
    (
        "empty-targets",
        ["estimate", "gpt2", "--method", "lora", "--lora-targets", " , "],
        {},
        "--lora-targets is empty",
    ),
    (
        "unknown-target",
        ["estimate", "llama2-7b", "--method", "lora", "--lora-targets", "qq"],
        {},
        "matches no linear layer",
    ),
    (
        "moe-router-target",
        ["estimate", "mixtral-8x7b", "--method", "lora", "--lora-targets", "gate"],
        {},
        "target both or neither",
    ),
    ("measure-steps", ["measure", "gpt2", "--steps", "1"], {}, "--steps must be at least 2"),
    ("measure-device", ["measure", "gpt2", "--device", "tpu"], {}, "--device must be cpu or cuda"),
    (
        "measure-fake-cuda",
        ["measure", "gpt2", "--fake", "--device", "cuda"],
        {},
        "--fake runs on the CPU only",
    ),
    # files
    ("missing-file", ["estimate", "{tmp}/absent/config.json"], {}, "No config.json"),
    ("empty-dir", ["estimate", "{tmp}"], {}, "No config.json"),
    (
        "malformed-json",
        ["estimate", "{tmp}/config.json"],
        {"config.json": "{not json"},
        "not valid JSON",
    ),
    (
        "json-list",
        ["estimate", "{tmp}/config.json"],
        {"config.json": "[1, 2]"},
        "must hold a JSON object",
    ),
    (
        "not-utf8",
        ["estimate", "{tmp}/config.json"],
        {"config.json": b"\xff\xfe\x00junk"},
        "not UTF-8",
    ),
    (
        "huge-file",
        ["estimate", "{tmp}/config.json"],
        {"config.json": " " * (17 * 2**20)},
        "over the 16,777,216 a config.json can be",
    ),
    (
        "directory-for-file",
        ["estimate", "{tmp}/sub"],
        {"sub/config.json/x": "{}"},
        "not a regular file",
    ),
    (
        "unknown-model-type",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(model_type="mamba")},
        "does not model yet",
    ),
    (
        "missing-model-type",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(model_type=None)},
        "does not model yet",
    ),
    (
        "missing-field",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(intermediate_size=None)},
        "lacks 'intermediate_size'",
    ),
    (
        "negative-vocab",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(vocab_size=-5)},
        "vocab_size",
    ),
    (
        "string-layers",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_hidden_layers="many")},
        "num_hidden_layers must be an integer",
    ),
    (
        "kv-not-dividing",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_key_value_heads=5)},
        "must divide num_heads",
    ),
    (
        "heads-not-dividing",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(num_attention_heads=33)},
        "must divide hidden_size",
    ),
    (
        "bad-activation",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(hidden_act="swoosh")},
        "Unsupported activation",
    ),
    (
        "moe-too-many-active",
        ["estimate", "{tmp}/config.json"],
        {"config.json": cfg(model_type="mixtral", num_local_experts=2, num_experts_per_tok=4)},
        "exceeds num_experts",
    ),
    # many GPUs: impossible layouts and combinations
    (
        "zero-gpus",
        ["estimate", "gpt2", "--gpus", "0"],
        {},
        "--gpus: Input should be greater than 0",
    ),
    ("negative-nodes", ["estimate", "gpt2", "--nodes", "-2"], {}, "--nodes"),
    (
        "absurd-gpus",
        ["estimate", "gpt2", "--gpus", "8", "--nodes", "100000"],
        {},
        "beyond any cluster",
    ),
    (
        "strategy-typo",
        ["estimate", "gpt2", "--strategy", "zero4"],
        {},
        "--strategy must be single, ddp, zero1,",
    ),
    (
        "tp-not-dividing-gpus",
        ["estimate", "llama2-7b", "--gpus", "3", "--tp", "2"],
        {},
        "cannot be split",
    ),
    (
        "tp-not-dividing-heads",
        ["estimate", "llama2-7b", "--gpus", "3", "--tp", "3"],
        {},
        "try --tp 2",
    ),
    (
        "pp-not-dividing-layers",
        ["estimate", "llama2-7b", "--gpus", "5", "--pp", "5"],
        {},
        "try --pp 4",
    ),
    (
        "cp-not-dividing-seq",
        ["estimate", "llama2-7b", "--gpus", "3", "--cp", "3"],
        {},
        "--cp 3 must divide",
    ),
    (
        "zero3-with-pp",
        ["estimate", "llama2-7b", "--gpus", "8", "--pp", "2", "--strategy", "zero3"],
        {},
        "ZeRO stage 0 or 1",
    ),
    (
        "offload-without-zero",
        ["estimate", "llama2-7b", "--gpus", "2", "--offload-optimizer", "cpu"],
        {},
        "needs a DeepSpeed ZeRO or FSDP",
    ),
    (
        "offload-bad-device",
        ["estimate", "llama2-7b", "--strategy", "zero3", "--offload-params", "gpu"],
        {},
        "--offload-params must be none, cpu or nvme, not",
    ),
    (
        "single-on-8",
        ["estimate", "llama2-7b", "--gpus", "8", "--strategy", "single"],
        {},
        "uses one GPU",
    ),
    (
        "host-memory-negative",
        ["estimate", "llama2-7b", "--strategy", "zero3", "--host-memory", "-5GiB"],
        {},
        "host",
    ),
    (
        "simple-accounting-parallel",
        ["estimate", "llama2-7b", "--gpus", "2", "--accounting", "simple"],
        {},
        "single-GPU sum",
    ),
    (
        "emit-single",
        ["estimate", "llama2-7b", "--emit", "deepspeed"],
        {},
        "needs a multi-GPU strategy",
    ),
    (
        "emit-unknown",
        ["estimate", "llama2-7b", "--gpus", "2", "--emit", "megatron"],
        {},
        "--emit must be deepspeed, accelerate, fsdp or colossalai, not",
    ),
    (
        "emit-to-alone",
        ["estimate", "llama2-7b", "--emit-to", "{tmp}/x.json"],
        {},
        "--emit-to needs --emit",
    ),
    (
        "emit-to-missing-dir",
        [
            "estimate",
            "llama2-7b",
            "--gpus",
            "2",
            "--strategy",
            "zero2",
            "--emit",
            "deepspeed",
            "--emit-to",
            "{tmp}/no/such/dir/x.json",
        ],
        {},
        "cannot write",
    ),
    ("fewest-without-gpu", ["estimate", "llama2-7b", "--fewest-gpus"], {}, "needs a GPU"),
    (
        "fewest-with-nodes",
        ["estimate", "llama2-7b", "--fewest-gpus", "--gpu", "h100", "--nodes", "2"],
        {},
        "drop --nodes",
    ),
    (
        "modules-to-save-bad",
        ["estimate", "llama2-7b", "--method", "lora", "--lora-modules-to-save", "norm"],
        {},
        "embed, head or embed,head",
    ),
    (
        "modules-to-save-full",
        ["estimate", "llama2-7b", "--lora-modules-to-save", "head"],
        {},
        "--lora-modules-to-save only applies to lora,",
    ),
    (
        "modules-to-save-tied",
        ["estimate", "gemma-2b", "--method", "lora", "--lora-modules-to-save", "head"],
        {},
        "ties its embedding",
    ),
    ("measure-fsdp-one", ["measure", "gpt2", "--fsdp", "1"], {}, "--fsdp takes 2 or more"),
    (
        "measure-fsdp-fake",
        ["measure", "gpt2", "--fsdp", "2", "--fake"],
        {},
        "--fsdp takes 2 or more",
    ),
    (
        "measure-fsdp-ranks",
        ["measure", "gpt2", "--fsdp", "2", "--fsdp-ranks", "nccl"],
        {},
        "--fsdp-ranks must be simulated or gloo",
    ),
    ("bitfit-no-biases", ["estimate", "llama2-7b", "--method", "bitfit"], {}, "has no bias terms"),
    (
        "bitfit-lora-option",
        ["estimate", "qwen2.5-7b", "--method", "bitfit", "--lora-r", "8"],
        {},
        "--lora-r only applies to lora,",
    ),
    # serve
    ("serve-bad-weights", ["serve", "gpt2", "--weights", "int3"], {}, "--weights"),
    ("serve-zero-sequences", ["serve", "gpt2", "--sequences", "0"], {}, "--sequences"),
    ("serve-negative-adapters", ["serve", "gpt2", "--lora-adapters", "-1"], {}, "--lora-adapters"),
    ("serve-max-no-gpu", ["serve", "gpt2", "--max-sequences"], {}, "needs a GPU"),
    (
        "serve-bad-targets",
        ["serve", "gpt2", "--lora-adapters", "1", "--lora-targets", "zz"],
        {},
        "matches no linear",
    ),
    # plan, max, compare, check
    ("plan-no-gpu", ["plan", "llama2-7b"], {}, "needs a GPU"),
    (
        "plan-zero-rows",
        ["plan", "llama2-7b", "--gpu", "h100", "--rows", "0"],
        {},
        "--rows must be at least 1",
    ),
    (
        "plan-bad-format",
        ["plan", "llama2-7b", "--gpu", "h100", "--format", "csv"],
        {},
        "--format must be table or json",
    ),
    (
        "plan-bad-plot",
        ["plan", "llama2-7b", "--gpu", "h100", "--plot", "{tmp}/p.pdf"],
        {},
        ".png or .svg",
    ),
    ("plan-unknown-model", ["plan", "llama2-71b", "--gpu", "h100"], {}, "Did you mean"),
    (
        "max-bad-for",
        ["max", "llama2-7b", "--gpu", "h100", "--for", "heads"],
        {},
        "--for must be batch-size, seq-len, target-len or lora-r, not",
    ),
    ("max-no-gpu", ["max", "llama2-7b"], {}, "needs a GPU"),
    (
        "max-rank-full",
        ["max", "llama2-7b", "--gpu", "h100", "--for", "lora-r"],
        {},
        "--method lora",
    ),
    ("compare-empty", ["compare", "llama2-7b", "--gpus", ","], {}, "at least one name"),
    ("compare-bad-method", ["compare", "llama2-7b", "--methods", "fulll"], {}, "--method"),
    ("compare-bad-gpu", ["compare", "llama2-7b", "--gpus", "h1000"], {}, "Unknown gpu"),
    ("check-missing", ["check", "{tmp}/nope.yaml"], {}, "No budgets file at"),
    ("check-not-yaml", ["check", "{tmp}/b.yaml"], {"b.yaml": "runs: [\n  - {"}, "line"),
    ("check-binary", ["check", "{tmp}/b.yaml"], {"b.yaml": b"\x00\x01\xff\xfe"}, "b.yaml"),
    (
        "check-no-runs",
        ["check", "{tmp}/b.yaml"],
        {"b.yaml": "defaults: {}\n"},
        "runs: Field required",
    ),
    ("check-runs-not-list", ["check", "{tmp}/b.yaml"], {"b.yaml": "runs: 5\n"}, "line 1: runs"),
    # methods, features, distillation, merging (this release)
    (
        "partial-no-modules",
        ["estimate", "llama2-7b", "--method", "partial"],
        {},
        "needs --trainable-modules",
    ),
    (
        "partial-bad-regex",
        ["estimate", "llama2-7b", "--method", "partial", "--trainable-modules", "mlp(["],
        {},
        "not a regular expression",
    ),
    (
        "partial-no-match",
        ["estimate", "llama2-7b", "--method", "partial", "--trainable-modules", "experts"],
        {},
        "matches no parameter",
    ),
    (
        "ia3-bad-target",
        ["estimate", "llama2-7b", "--method", "ia3", "--ia3-targets", "zz"],
        {},
        "matches no linear",
    ),
    (
        "prefix-ckpt",
        ["estimate", "llama2-7b", "--method", "prefix-tuning", "--grad-ckpt"],
        {},
        "gradient checkpointing",
    ),
    (
        "prefix-falcon",
        ["estimate", "falcon-7b", "--method", "prefix-tuning"],
        {},
        "does not run on falcon",
    ),
    (
        "virtual-tokens-lora",
        ["estimate", "llama2-7b", "--method", "lora", "--virtual-tokens", "8"],
        {},
        "only applies to prompt-tuning",
    ),
    (
        "galore-sgd",
        ["estimate", "llama2-7b", "--method", "galore", "--optimizer", "sgd"],
        {},
        "GaLore projects Adam",
    ),
    ("adapter-moe", ["estimate", "mixtral-8x7b", "--method", "adapter"], {}, "mixture of experts"),
    ("bad-loss", ["estimate", "llama2-7b", "--loss", "chunk"], {}, "--loss"),
    (
        "in-backward-accum",
        ["estimate", "llama2-7b", "--optimizer-in-backward", "--grad-accum", "4"],
        {},
        "cannot accumulate",
    ),
    (
        "teacher-vocab",
        ["estimate", "llama2-7b", "--method", "lora", "--teacher", "llama3-8b"],
        {},
        "vocabulary",
    ),
    (
        "teacher-unknown",
        ["estimate", "llama2-7b", "--teacher", "llama2-13"],
        {},
        "Did you mean llama2-13b",
    ),
    (
        "int4-double-quant",
        ["estimate", "llama2-7b", "--method", "qlora", "--quant", "int4", "--double-quant"],
        {},
        "not --quant int4",
    ),
    (
        "merge-layers",
        ["merge", "mistral-7b", "--layers", "0-40"],
        {},
        "outside the model's 32 blocks",
    ),
    ("merge-range", ["merge", "mistral-7b", "--layers", "0:24"], {}, "not a range"),
    ("merge-models", ["merge", "mistral-7b", "--models", "0"], {}, "--models"),
    (
        "compare-methods-empty",
        ["compare-methods", "gpt2", "--methods", " , "],
        {},
        "at least one name",
    ),
    (
        "serve-both-max",
        ["serve", "llama3-8b", "--gpu", "l4", "--max-context", "--max-sequences"],
        {},
        "not both",
    ),
    (
        "check-negative-batch",
        ["check", "{tmp}/b.yaml"],
        {"b.yaml": "runs:\n  - name: a\n    model: gpt2\n    gpu: h100\n    batch_size: -1\n"},
        "line 5",
    ),
    # encoder-decoders: what ftmem does not model for them, and --target-len elsewhere
    ("t5-ia3", ["estimate", "flan-t5-base", "--method", "ia3"], {}, "does not model method ia3"),
    ("t5-fp16", ["estimate", "t5-small", "--precision", "fp16"], {}, "pure fp16"),
    ("t5-fused-loss", ["estimate", "flan-t5-base", "--loss", "fused"], {}, "the fused loss"),
    ("t5-flash", ["estimate", "flan-t5-base", "--attn", "flash"], {}, "no FlashAttention"),
    ("t5-tp", ["estimate", "flan-t5-xl", "--gpus", "2", "--tp", "2"], {}, "data-parallel"),
    ("t5-serve", ["serve", "flan-t5-base"], {}, "decoder-only generation"),
    ("t5-stack-merge", ["merge", "t5-base", "--layers", "0-8,4-12"], {}, "weighted merge"),
    ("t5-teacher", ["estimate", "flan-t5-base", "--teacher", "flan-t5-xl"], {}, "distillation"),
    ("target-len-decoder-only", ["estimate", "gpt2", "--target-len", "64"], {}, "decoder-only"),
    (
        "max-target-len-decoder-only",
        ["max", "gpt2", "--for", "target-len"],
        {},
        "use --for seq-len",
    ),
    (
        "target-len-absurd",
        ["estimate", "flan-t5-base", "--batch-size", "2", "--target-len", "2000000000"],
        {},
        "check --batch-size and --target-len",
    ),
    ("target-len-zero", ["estimate", "flan-t5-base", "--target-len", "0"], {}, "--target-len"),
    (
        "t5-unequal-stacks",
        ["estimate", "{tmp}/config.json"],
        {
            "config.json": json.dumps(
                {
                    "model_type": "t5",
                    "vocab_size": 32128,
                    "d_model": 512,
                    "d_kv": 64,
                    "d_ff": 1024,
                    "num_heads": 6,
                    "num_layers": 8,
                    "num_decoder_layers": 4,
                }
            )
        },
        "8 encoder and 4 decoder layers",
    ),
    # the router's load-balancing loss where the model computes none; its config key typed
    (
        "router-aux-loss-dense",
        ["estimate", "gpt2", "--router-aux-loss"],
        {},
        "computes no router load-balancing loss",
    ),
    (
        "router-aux-loss-deepseek",
        ["estimate", "deepseek-v2-lite", "--router-aux-loss"],
        {},
        "computes no router load-balancing loss",
    ),
    # GraniteMoE computes one, over fp32 router logits: not modelled
    (
        "router-aux-loss-granitemoe",
        ["estimate", "granite-3.1-3b-a800m", "--router-aux-loss"],
        {},
        "GraniteMoE adds over fp32 router logits is not modelled",
    ),
    (
        "output-router-logits-granitemoe",
        ["estimate", "{tmp}/config.json"],
        {
            "config.json": json.dumps(
                {
                    "model_type": "granitemoe",
                    "vocab_size": 1000,
                    "hidden_size": 64,
                    "intermediate_size": 32,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "output_router_logits": True,
                }
            )
        },
        "output_router_logits true adds the load-balancing loss",
    ),
    # GLM-4.7-Flash: a dense block after a sparse one (mlp_layer_types)
    (
        "glm4-moe-lite-mlp-layer-types",
        ["estimate", "{tmp}/config.json"],
        {
            "config.json": json.dumps(
                {
                    "model_type": "glm4_moe_lite",
                    "vocab_size": 1000,
                    "hidden_size": 64,
                    "intermediate_size": 32,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "num_key_value_heads": 4,
                    "mlp_layer_types": ["sparse", "dense"],
                }
            )
        },
        "dense block after a sparse one",
    ),
    (
        "output-router-logits-type",
        ["estimate", "{tmp}/config.json"],
        {
            "config.json": MIXTRAL_TINY.replace(
                '"output_router_logits": false', '"output_router_logits": "yes"'
            )
        },
        "output_router_logits",
    ),
    (
        "clip-qkv-negative",
        ["estimate", "{tmp}/config.json"],
        {"config.json": OLMOE_TINY.replace('"clip_qkv": null', '"clip_qkv": -8')},
        "qkv_clip",
    ),
]


@pytest.mark.parametrize(
    ("case_id", "args", "files", "expected"), CORPUS, ids=[c[0] for c in CORPUS]
)
def test_bad_input(case_id, args, files, expected, tmp_path, capsys):
    write_files(tmp_path, files)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2, (case_id, err)
    assert out == ""
    assert expected in err
    assert err.startswith("Error: ")
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 60
