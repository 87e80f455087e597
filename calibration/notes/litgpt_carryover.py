"""LitGPT's published single-GPU finetuning peaks that the calibration set does not hold,
against ftmem's estimate, for calibration/notes/litgpt.md (issue 16).

Sources, Lightning-AI/litgpt@26857050 (the commit the calibration set cites):
- tutorials/resource-tables.md, the LoRA table (A100-SXM4-40GB, lit-gpt finetune/lora.py
  @8641822b, Alpaca un-truncated): StableLM Alpha 3B and Llama 2 7B, whose Phi-1.5 and
  Llama 2 13B rows are calibrated.
- tutorials/resource-tables.md, the two Adapter tables (same GPU and library versions):
  added by Lightning-AI/litgpt@0f021f3a (#694, "Support quantization with adapter v1 and v2
  finetuning"), so measured with that commit's finetune/adapter.py and adapter_v2.py (the
  header's "commit 8641822" predates their --quantize); settings from the LoRA table's
  calibrated rows of the same quantisation, the method llama-adapter / llama-adapter-v2
  (LitGPT's defaults: 10 prompt tokens, blocks from 2) and no LoRA options.
- config_hub/finetune/README.md (1xA10G, litgpt 0.4.x, config_hub/finetune/<model>/<method>.yaml
  @26857050, script litgpt/finetune/{lora,full}.py @00af8b0d as the calibrated rows): the
  models and methods of the table that the calibration set leaves out.

Every row takes the settings of the calibrated row of the same table and method
(calibration/settings/litgpt.yaml) with the row's model, micro batch and the yaml's LoRA
options; grad_accum = global_batch_size / micro_batch_size. Both scripts print
``torch.cuda.max_memory_allocated() / 1e9`` ("Memory used", finetune/lora.py@8641822b l.156,
litgpt/finetune/lora.py@00af8b0d l.234), so the figure is read as GB and compared with
ftmem's peak allocated. The quoted lines are the sources' rows with their column padding
collapsed. No constant is fitted; nothing here enters the calibration set.

Run from the repository root: python calibration/notes/litgpt_carryover.py
"""

import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, "src")
import ftmem

GIB = 2**30
RT = "tutorials/resource-tables.md"
HUB = "config_hub/finetune/README.md"

# the calibrated LoRA rows' LoRA options, dropped for the LLaMA-Adapter rows (None: unset)
NOT_LORA: dict[str, Any] = dict.fromkeys(
    ("lora_r", "lora_alpha", "lora_targets", "lora_dropout", "adapter_dtype")
)


# resource-tables.md, Adapter and Adapter v2 (litgpt@0f021f3a finetune/adapter.py and
# adapter_v2.py): settings of the LoRA table's calibrated row of the same quantisation
ADAPTER_ROWS: list[tuple[str, str, str, str, str, str, dict[str, Any]]] = [
    (
        "rt stablelm-3b llama-adapter bf16",
        RT,
        "| 3 B  | StableLM Alpha | None         | 1               | 573,888              | 9.10 GB     |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter",
            "seq_len": 1034,
        },
    ),
    (
        "rt stablelm-3b llama-adapter nf4",
        RT,
        "| 3 B  | StableLM Alpha | bnb.nf4      | 1               | 573,888              | 5.65 GB     |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-nf4-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter",
            "seq_len": 1034,
        },
    ),
    (
        "rt stablelm-3b llama-adapter nf4-dq",
        RT,
        "| 3 B  | StableLM Alpha | bnb.nf4-dq   | 1               | 573,888              | 5.48 GB     |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-nf4dq-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter",
            "seq_len": 1034,
        },
    ),
    (
        "rt llama2-7b llama-adapter bf16",
        RT,
        "| 7 B  | Llama 2        | None         | 1               | 1,229,760            | 19.98 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter",
        },
    ),
    (
        "rt llama2-7b llama-adapter nf4",
        RT,
        "| 7 B  | Llama 2        | bnb.nf4      | 1               | 1,229,760            | 12.68 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-nf4-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter",
        },
    ),
    (
        "rt llama2-7b llama-adapter nf4-dq",
        RT,
        "| 7 B  | Llama 2        | bnb.nf4-dq   | 1               | 1,229,760            | 12.38 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-nf4dq-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter",
        },
    ),
    (
        "rt stablelm-3b llama-adapter-v2 bf16",
        RT,
        "| 3 B  | StableLM Alpha | None         | 1               | 2,125,248            | 10.71 GB    |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter-v2",
            "seq_len": 1034,
        },
    ),
    (
        "rt stablelm-3b llama-adapter-v2 nf4",
        RT,
        "| 3 B  | StableLM Alpha | bnb.nf4      | 1               | 2,125,248            | 7.41 GB     |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-nf4-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter-v2",
            "seq_len": 1034,
        },
    ),
    (
        "rt stablelm-3b llama-adapter-v2 nf4-dq",
        RT,
        "| 3 B  | StableLM Alpha | bnb.nf4-dq   | 1               | 2,125,248            | 7.25 GB     |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-nf4dq-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter-v2",
            "seq_len": 1034,
        },
    ),
    (
        "rt llama2-7b llama-adapter-v2 bf16",
        RT,
        "| 7 B  | Llama 2        | None         | 1               | 4,279,744            | 25.51 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter-v2",
        },
    ),
    (
        "rt llama2-7b llama-adapter-v2 nf4",
        RT,
        "| 7 B  | Llama 2        | bnb.nf4      | 1               | 4,279,744            | 18.30 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-nf4-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter-v2",
        },
    ),
    (
        "rt llama2-7b llama-adapter-v2 nf4-dq",
        RT,
        "| 7 B  | Llama 2        | bnb.nf4-dq   | 1               | 4,279,744            | 17.98 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-nf4dq-mb1",
        {
            **NOT_LORA,
            "method": "llama-adapter-v2",
        },
    ),
]


# Phi-2's MLP is fc1/fc2 (LitGPT's GptNeoxMLP): lora_mlp covers both; phi-2/lora.yaml and
# qlora.yaml set lora_head: true (the LM head's LoRA, lm_head)
PHI2_LINEARS = "q,k,v,o,fc1,fc2,lm_head"

# (row, source file, quoted line, model (calibration config or preset), gpu,
#  calibrated row whose settings are taken, overrides)
ROWS: list[tuple[str, str, str, str, str, str, dict[str, Any]]] = [
    # resource-tables.md, LoRA: StableLM Alpha's longest Alpaca sample is 1034 tokens with
    # its GPT-NeoX tokenizer (the calibrated tut row), Llama 2 7B's 1304 (Llama 2 13B's).
    (
        "rt stablelm-3b lora mb1",
        RT,
        "| 3 B   | StableLM Alpha | None         | 1               | 2,097,152            | 9.69 GB     |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-mb1",
        {"seq_len": 1034},
    ),
    (
        "rt stablelm-3b nf4 mb1",
        RT,
        "| 3 B   | StableLM Alpha | bnb.nf4      | 1               | 2,097,152            | 6.35 GB     |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-nf4-mb1",
        {"seq_len": 1034},
    ),
    (
        "rt stablelm-3b nf4-dq mb1",
        RT,
        "| 3 B   | StableLM Alpha | bnb.nf4-dq   | 1               | 2,097,152            | 6.19 GB     |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-nf4dq-mb1",
        {"seq_len": 1034},
    ),
    (
        "rt stablelm-3b lora mb2",
        RT,
        "| 3 B   | StableLM Alpha | None         | 2               | 2,097,152            | 12.10 GB    |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-mb2",
        {"seq_len": 1034},
    ),
    (
        "rt stablelm-3b lora mb4",
        RT,
        "| 3 B   | StableLM Alpha | None         | 4               | 2,097,152            | 16.92 GB    |",
        "stablelm-base-alpha-3b",
        "a100-40gb",
        "litgpt-rt-lora-phi-1.5-mb4",
        {"seq_len": 1034},
    ),
    (
        "rt llama2-7b lora mb1",
        RT,
        "| 7 B   | Llama 2        | None         | 1               | 4,194,304            | 21.30 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-mb1",
        {},
    ),
    (
        "rt llama2-7b nf4 mb1",
        RT,
        "| 7 B   | Llama 2        | bnb.nf4      | 1               | 4,194,304            | 14.14 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-nf4-mb1",
        {},
    ),
    (
        "rt llama2-7b nf4-dq mb1",
        RT,
        "| 7 B   | Llama 2        | bnb.nf4-dq   | 1               | 4,194,304            | 13.84 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-nf4dq-mb1",
        {},
    ),
    (
        "rt llama2-7b lora mb2",
        RT,
        "| 7 B   | Llama 2        | None         | 2               | 4,194,304            | 29.07 GB    |",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-mb1",
        {"batch_size": 2, "grad_accum": 64},
    ),
    # config_hub README, 1xA10G: q,v LoRA r=32 (the llama-3-8b rows' settings)
    (
        "hub llama-2-7b lora",
        HUB,
        "| llama-2-7b/lora.yaml | llama-2-7b | 4 | 512 | 2 | 1xA10G | 32.82 min | $1.0 | 19.77 GB |",
        "llama-2-7b",
        "a10g",
        "litgpt-hub-llama-3-8b-lora",
        {"batch_size": 2, "grad_accum": 4},
    ),
    (
        "hub llama-2-7b qlora",
        HUB,
        "| llama-2-7b/qlora.yaml | llama-2-7b | 4 | 512 | 2 | 1xA10G | 45.67 min | $1.4 | 13.68 GB |",
        "llama-2-7b",
        "a10g",
        "litgpt-hub-llama-3-8b-qlora",
        {"batch_size": 2, "grad_accum": 4},
    ),
    (
        "hub llama-3.1-8b lora",
        HUB,
        "| llama-3.1-8b/lora.yaml | llama-3.1-8b | 2 | 512 | 1 | 1xA10G | 13.36 min | $1.1 | 19.73 GB |",
        "llama-3.1-8b",
        "a10g",
        "litgpt-hub-llama-3-8b-lora",
        {},
    ),
    (
        "hub llama-3.1-8b qlora",
        HUB,
        "| llama-3.1-8b/qlora.yaml | llama-3.1-8b | 2 | 512 | 2 | 1xA10G | 21.81 min | $0.7 | 17.41 GB |",
        "llama-3.1-8b",
        "a10g",
        "litgpt-hub-llama-3-8b-qlora",
        {},
    ),
    (
        "hub llama-3.2-3b lora",
        HUB,
        "| llama-3.2-3b/lora.yaml | llama-3.2-3b | 2 | 512 | 1 | 1xA10G |  8.31 min | $0.8 |  9.67 GB |",
        "llama-3.2-3b",
        "a10g",
        "litgpt-hub-llama-3-8b-lora",
        {},
    ),
    (
        "hub llama-3.2-3b qlora",
        HUB,
        "| llama-3.2-3b/qlora.yaml | llama-3.2-3b | 2 | 512 | 2 | 1xA10G | 14.89 min | $1.4 | 10.30 GB |",
        "llama-3.2-3b",
        "a10g",
        "litgpt-hub-llama-3-8b-qlora",
        {},
    ),
    # Mistral 7B v0.2 differs from v0.1 in rope_theta and the sliding window (4096 > 512): same memory
    (
        "hub mistral-7b-v0.2 lora",
        HUB,
        "| mistral-7b-v0.2/lora.yaml | mistral-7b-v0.2 | 4 | 512 | 2 | 1xA10G | 31.00 min | $0.9 | 20.66 GB |",
        "mistral-7b-v0.1",
        "a10g",
        "litgpt-hub-mistral-7b-lora",
        {},
    ),
    (
        "hub mistral-7b-v0.2 qlora",
        HUB,
        "| mistral-7b-v0.2/qlora.yaml | mistral-7b-v0.2 | 4 | 512 | 2 | 1xA10G | 44.75 min | $1.3 | 14.29 GB |",
        "mistral-7b-v0.1",
        "a10g",
        "litgpt-hub-mistral-7b-qlora",
        {},
    ),
    (
        "hub stablelm-3b lora",
        HUB,
        "| stablelm-base-alpha-3b/lora.yaml | stablelm-base-alpha-3b | 4 | 512 | 1 | 1xA10G | 13.07 min | $0.4 | 8.58 GB |",
        "stablelm-base-alpha-3b",
        "a10g",
        "litgpt-hub-llama-3-8b-lora",
        {},
    ),
    (
        "hub stablelm-3b qlora",
        HUB,
        "| stablelm-base-alpha-3b/qlora.yaml | stablelm-base-alpha-3b | 4 | 512 | 1 | 1xA10G | 25.86 min | $0.8 | 5.24 GB |",
        "stablelm-base-alpha-3b",
        "a10g",
        "litgpt-hub-llama-3-8b-qlora",
        {"batch_size": 1, "grad_accum": 8},
    ),
    # all linears + lora_head: true (the head's LoRA on LitGPT's chunked head, lm_head in
    # the calibrated tinyllama/phi-3/gemma rows' targets: adapters.head_lora)
    (
        "hub gemma-2b lora",
        HUB,
        "| gemma-2b/lora.yaml | gemma-2b | 2 | 512 | 2 | 1xA10G | 9.41 min | $0.3 | 12.62 GB |",
        "gemma-2b",
        "a10g",
        "litgpt-hub-phi-3-lora",
        {"batch_size": 2, "grad_accum": 3, "lora_r": 8, "lora_dropout": 0.1},
    ),
    (
        "hub gemma-2b qlora",
        HUB,
        "| gemma-2b/qlora.yaml | gemma-2b | 2 | 512 | 2 | 1xA10G | 12.91 min | $0.4 | 11.58 GB |",
        "gemma-2b",
        "a10g",
        "litgpt-hub-gemma-7b-qlora",
        {"batch_size": 2, "grad_accum": 3},
    ),
    (
        "hub gemma2-2b lora",
        HUB,
        "| gemma2-2b/lora.yaml | gemma-2b | 2 | 512 | 2 | 1xA10G | 11.96 min | $0.4 | 14.31 GB |",
        "gemma2-2b",
        "a10g",
        "litgpt-hub-phi-3-lora",
        {"batch_size": 2, "grad_accum": 3, "lora_r": 8, "lora_dropout": 0.1},
    ),
    # the README's "gemma2b/qlora.yaml" row sits in the Gemma 2 block: read as gemma2-2b/qlora.yaml
    (
        "hub gemma2-2b qlora",
        HUB,
        "| gemma2b/qlora.yaml | gemma-2b | 2 | 512 | 2 | 1xA10G | 16.06 min | $0.5 | 13.52 GB |",
        "gemma2-2b",
        "a10g",
        "litgpt-hub-gemma2-9b-qlora",
        {"batch_size": 2, "grad_accum": 3},
    ),
    (
        "hub phi-2 lora",
        HUB,
        "| phi-2/lora.yaml | phi-2 | 1 | 512 | 4 | 1xA10G | 3.78 min | $0.1 | 13.98 GB |",
        "phi-2",
        "a10g",
        "litgpt-hub-phi-3-lora",
        {"lora_targets": PHI2_LINEARS},
    ),
    (
        "hub phi-2 qlora",
        HUB,
        "| phi-2/qlora.yaml | phi-2 | 1 | 512 | 4 | 1xA10G | 4.51 min | $0.1 | 14.27 GB |",
        "phi-2",
        "a10g",
        "litgpt-hub-phi-3-qlora",
        {"lora_targets": PHI2_LINEARS},
    ),
    # tutorials/0_to_litgpt.md: the same phi-2/lora.yaml run for --train.max_steps 5 (its
    # log: devices 1, micro_batch_size=4, "The longest sequence length in the train data is
    # 512"); the GPU is not named (allocated bytes do not depend on it here)
    (
        "0_to_litgpt phi-2 lora",
        "tutorials/0_to_litgpt.md",
        "Memory used: 13.90 GB",
        "phi-2",
        "a10g",
        "litgpt-hub-phi-3-lora",
        {"lora_targets": PHI2_LINEARS},
    ),
    *ADAPTER_ROWS,
]

# Published out-of-memory runs: ftmem's peak must exceed the GPU's memory.
OOM: list[tuple[str, str, str, str, str, dict[str, Any]]] = [
    (
        "rt llama2-7b lora mb4",
        RT,
        "llama-2-7b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-mb1",
        {"batch_size": 4, "grad_accum": 32},
    ),
    (
        "rt llama2-13b lora mb4",
        RT,
        "llama-2-13b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-mb1",
        {"batch_size": 4, "grad_accum": 32},
    ),
    ("rt falcon-40b lora mb1", RT, "falcon-40b", "a100-40gb", "litgpt-rt-lora-llama2-13b-mb1", {}),
    (
        "rt falcon-40b nf4 mb1",
        RT,
        "falcon-40b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-nf4-mb1",
        {},
    ),
    (
        "rt falcon-40b nf4-dq mb1",
        RT,
        "falcon-40b",
        "a100-40gb",
        "litgpt-rt-lora-llama2-13b-nf4dq-mb1",
        {},
    ),
    # tutorials/finetune_lora.md: "| Default (bf16-mixed) | OutOfMemoryError |" for Llama 2 7B
    (
        "tut llama2-7b lora bf16-mixed",
        "tutorials/finetune_lora.md",
        "llama-2-7b",
        "a100-40gb",
        "litgpt-tut-lora-stablelm3b-bf16mixed-mb1",
        {"seq_len": 1304},
    ),
    (
        "hub gemma2-9b lora",
        HUB,
        "gemma-2-9b",
        "a10g",
        "litgpt-hub-phi-3-lora",
        {"batch_size": 1, "grad_accum": 6, "lora_r": 16, "lora_dropout": 0.1},
    ),
    # labelled 1xA10G although llama-3.1-8b/full.yaml says devices: 4; taken as labelled
    (
        "hub llama-3.1-8b full",
        HUB,
        "llama-3.1-8b",
        "a10g",
        "litgpt-hub-tinyllama-full",
        {"batch_size": 4, "grad_accum": 16},
    ),
]


def published_gb(quote: str) -> float:
    """The "... GB" figure of the quoted line (a table cell or the script's log line)."""
    cell = next(c for c in quote.split("|") if c.strip().endswith(" GB"))
    return float(cell.strip().removesuffix(" GB").split()[-1])


def summary(label: str, errors: list[float]) -> str:
    absolute = sorted(abs(e) for e in errors)
    p90 = absolute[min(len(absolute) - 1, round(0.9 * (len(absolute) - 1)))]
    under = sum(e < 0 for e in errors)
    return (
        f"{label}: {len(errors)} rows, median |error| {statistics.median(absolute):.1%}, "
        f"p90 {p90:.1%}, worst {absolute[-1]:.1%}, under {under}/{len(errors)}, "
        f"median signed {statistics.median(errors):+.1%}"
    )


def model_ref(model: str) -> str:
    config = Path("calibration/configs") / model / "config.json"
    return str(config) if config.exists() else model


def main() -> None:
    calibrated = {
        e["id"]: e["settings"]
        for e in yaml.safe_load(Path("calibration/settings/litgpt.yaml").read_text())
    }
    errors: list[float] = []
    print("| row | model | GPU | published GiB | ftmem GiB | error | settings from |")
    print("|---|---|---|---|---|---|---|")
    for name, _source, quote, model, gpu, base, overrides in ROWS:
        merged = {**calibrated[base], **overrides}
        settings = {k: v for k, v in merged.items() if v is not None}
        est = ftmem.estimate(model_ref(model), gpu=gpu, **settings)
        published = published_gb(quote) * 1e9 / GIB
        predicted = est.memory.peak_allocated_bytes / GIB
        error = predicted / published - 1
        errors.append(error)
        print(
            f"| {name} | {model} | {gpu} | {published:.2f} | {predicted:.2f} | "
            f"{error:+.1%} | `{base}` |",
            flush=True,
        )
    print()
    print(summary("all", errors))
    # the 2023 script's QLoRA rows, over on M13's account (calibration/notes/litgpt.md)
    m13 = [n.startswith("rt ") and "nf4" in n for n, *_ in ROWS]
    print(
        summary("without the rt nf4 rows", [e for e, x in zip(errors, m13, strict=True) if not x])
    )
    print("\n| published OOM | model | GPU | ftmem device GiB | headroom GiB | ftmem says OOM |")
    print("|---|---|---|---|---|---|")
    for name, _source, model, gpu, base, overrides in OOM:
        settings = {**calibrated[base], **overrides}
        est = ftmem.estimate(model_ref(model), gpu=gpu, **settings)
        peak = est.memory.device_bytes / GIB
        print(
            f"| {name} | {model} | {gpu} | {peak:.2f} | {est.headroom_bytes / GIB:+.2f} | "
            f"{'NO' if est.fits else 'yes'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
