"""ColossalChat's shipped command lines (tests/fixtures/frameworks/colossalai, verbatim, see
SOURCES.md) read as the scripts run them. Each expected mapping is written by hand from
the command line and from the scripts' own argparse defaults and plugin construction
(hpcaitech/ColossalAI@4f9953b applications/ColossalChat/examples/training_scripts/), not
copied from the reader's output; the reader's argument tables are checked against the
scripts' argparse calls themselves (fixtures/.../scripts, verbatim)."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app
from ftmem.errors import ConfigError
from ftmem.frameworks import colossalai, read_framework_config

from .conftest import assert_nothing_unread, page_keys

FIXTURES = Path(__file__).parent / "fixtures" / "frameworks" / "colossalai"
DOC = Path(__file__).resolve().parents[1] / "docs" / "frameworks" / "colossalai.md"
MODEL = "meta-llama/Llama-2-7b-hf"
# every script steps with HybridAdam(adamw_mode=True): one multi-tensor kernel
ADAM = dict(optimizer="adamw", optimizer_impl="fused")

EXPECTED = {
    # colossalai run --nproc_per_node 4 --hostfile ./hostfile (one line: localhost);
    # --plugin zero2: LowLevelZeroPlugin(stage=2); --mixed_precision absent: bf16
    # (train_sft.py:338); --use_flash_attn: flash_attention_2
    "train_sft.sh": dict(gpus=4, nodes=1, strategy="colossalai-zero2", batch_size=8,
                         grad_accum=1, seq_len=4096, precision="bf16", attn="flash",
                         grad_ckpt=True, **ADAM),
    # no --use_flash_attn: from_pretrained's default attention (sdpa)
    "train_dpo.sh": dict(gpus=4, nodes=1, strategy="colossalai-zero2", batch_size=16,
                         grad_accum=2, seq_len=4096, precision="bf16", attn="sdpa",
                         grad_ckpt=True, objective="dpo", **ADAM),
    "train_orpo.sh": dict(gpus=8, nodes=1, strategy="colossalai-zero2", batch_size=16,
                          grad_accum=1, seq_len=1024, precision="bf16", attn="sdpa",
                          grad_ckpt=True, objective="orpo", **ADAM),
    # no --hostfile: the local machine
    "train_kto.sh": dict(gpus=4, nodes=1, strategy="colossalai-zero2", batch_size=8,
                         grad_accum=1, seq_len=1024, precision="bf16", attn="sdpa",
                         grad_ckpt=True, objective="kto", **ADAM),
    # --plugin 3d, --zero_stage absent: 0 (train_sft.py:324), HybridParallelPlugin's AMP;
    # split_gather is sequence parallelism inside the 4 TP ranks: no --cp
    "readme-sp-split-gather.sh": dict(gpus=4, nodes=1, strategy="colossalai-3d", tp=4, pp=1,
                                      cp=1, sp_mode="split_gather", batch_size=4,
                                      grad_accum=4, seq_len=2048, precision="bf16",
                                      attn="sdpa", **ADAM),
    # all_to_all: the sequence split over --sp 4 ranks
    "readme-sp-all-to-all.sh": dict(gpus=4, nodes=1, strategy="colossalai-3d", tp=1, pp=1,
                                    cp=4, sp_mode="all_to_all", batch_size=4, grad_accum=4, seq_len=2048,
                                    precision="bf16", attn="sdpa", **ADAM),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_command_maps_to_the_settings_colossalchat_runs(name):
    cfg = read_framework_config(str(FIXTURES / name))
    assert cfg.framework == "colossalai"
    assert cfg.model is None  # --pretrain $PRETRAINED_MODEL_PATH: not expanded
    assert any("--pretrain $PRETRAINED_MODEL_PATH is a shell variable" in n for n in cfg.notes)
    assert cfg.settings == {"framework": "hf", **EXPECTED[name]}
    assert_nothing_unread(cfg, colossalai)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_command_estimates_or_says_what_ftmem_lacks(name):
    settings = EXPECTED[name]
    assert estimate(MODEL, framework="hf", **settings).memory.peak_allocated_bytes > 0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("train_rm.sh", "train_rm.py trains a reward model"),
        # DeepSeek-R1 over --ep 8 --pp 3: its hostfile (not shipped) must hold 3 nodes
        ("readme-lora-finetune-moe.sh", "8 GPUs are not a whole number of tp 1 x pp 3"),
    ],
)
def test_shipped_commands_ftmem_does_not_model_are_one_sentence(name, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_framework_config(str(FIXTURES / name))


def test_readme_comments_after_continuations_are_dropped():
    """README.md writes `--tp 4 \\ # TP size, ...`: the comment goes, the line goes on."""
    data = colossalai.command_line(FIXTURES / "readme-sp-split-gather.sh")
    assert data["--tp"] == 4 and data["--sp_mode"] == "split_gather"
    assert data["--enable_sequence_parallelism"] is True and data["--max_len"] == 2048


# -- the reader's tables against the scripts' own argparse -----------------------------------


def _argparse_calls(path: Path) -> dict[str, tuple[str, object, str, tuple]]:
    """Each add_argument of a script: long name -> (kind, default, lines, choices)."""
    out = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant)]
        kw = {k.arg: k.value for k in node.keywords}
        if "action" in kw:
            kind = "flag"
        elif "nargs" in kw:
            kind = "list"
        elif "type" in kw and isinstance(kw["type"], ast.Name):
            kind = kw["type"].id
        else:
            kind = "str"
        default = ast.literal_eval(kw["default"]) if "default" in kw else None
        choices = tuple(ast.literal_eval(kw["choices"])) if "choices" in kw else ()
        lines = (
            f"{node.lineno}"
            if node.lineno == node.end_lineno
            else (f"{node.lineno}-{node.end_lineno}")
        )
        long = next(n for n in names if n.startswith("--"))
        out[long] = (kind, default, lines, choices)
    return out


@pytest.mark.parametrize("script", sorted(colossalai.SCRIPTS))
def test_argument_tables_match_the_scripts_argparse(script):
    truth = _argparse_calls(FIXTURES / "scripts" / f"{script}.txt")
    table = colossalai.SCRIPTS[script].args
    assert set(table) == set(truth)
    for name, arg in table.items():
        assert (arg.kind, arg.default, arg.line, arg.choices) == truth[name], name


def test_every_argument_is_read_or_has_no_memory_effect():
    """Nothing silently dropped: each script argument and launcher option is read by the
    reader or listed as having no effect on memory."""
    names = {n for s in colossalai.SCRIPTS.values() for n in s.args}
    names |= set(colossalai.COLOSSALAI_RUN.values()) | colossalai.TORCHRUN_VALUES
    names |= colossalai.TORCHRUN_SWITCHES
    covered = colossalai.READ_KEYS | colossalai.NO_MEMORY_EFFECT
    assert names <= covered, sorted(names - covered)
    assert not colossalai.READ_KEYS & colossalai.NO_MEMORY_EFFECT


# -- hand-written command lines ----------------------------------------------------------------


def _read(tmp_path: Path, line: str, name: str = "run.sh"):
    path = tmp_path / name
    path.write_text(line + "\n")
    return read_framework_config(str(path))


def test_defaults_of_train_dpo_where_the_line_is_silent(tmp_path):
    """train_dpo.py: --plugin gemini (:309-315), --mixed_precision fp16 (:344), batch 4
    (:342), max_length 2048 (:340), accumulation 1 (:348)."""
    cfg = _read(tmp_path, f"colossalai run --nproc_per_node 2 train_dpo.py --pretrain {MODEL}")
    assert cfg.model == MODEL
    s = cfg.settings
    assert (s["strategy"], s["precision"], s["batch_size"]) == ("colossalai-gemini", "fp16", 4)
    assert (s["seq_len"], s["grad_accum"], s["objective"]) == (2048, 1, "dpo")
    assumed = "; ".join(cfg.assumed)
    assert "--plugin gemini (train_dpo.py:309-315" in assumed
    assert "precision fp16 (--mixed_precision fp16, train_dpo.py:344" in assumed


def test_argparse_abbreviations_are_read_as_argparse_reads_them(tmp_path):
    """argparse's allow_abbrev: train_dpo.py takes --max_len for --max_length."""
    cfg = _read(tmp_path, "colossalai run --nproc_per_node 1 train_dpo.py --max_len 1024")
    assert cfg.settings["seq_len"] == 1024
    with pytest.raises(ConfigError, match="ambiguous"):
        _read(tmp_path, "colossalai run --nproc_per_node 1 train_dpo.py --d x")


def test_lora_finetune_pipeline_and_peft_lora(tmp_path):
    """lora_finetune.py -p 3d: --zero_stage 1 by default (:427), so ZeRO-1 in
    HybridParallelPlugin; --pp 2 cuts each batch of 8 into 4 micro-batches of 2; peft
    LoRA r 16 with lora_alpha 8 (:448) and peft's dropout 0; flash attention always (:182)."""
    line = (
        "torchrun --standalone --nproc-per-node=8 lora_finetune.py -m x -d d.jsonl -p 3d "
        "--tp 2 --pp 2 --batch_size 8 --microbatch_size 2 -g --lora_rank 16"
    )
    s = _read(tmp_path, line).settings
    assert (s["strategy"], s["tp"], s["pp"], s["cp"]) == ("colossalai-zero1", 2, 2, 1)
    assert (s["batch_size"], s["grad_accum"], s["seq_len"]) == (2, 4, 8192)
    assert (s["method"], s["lora_r"], s["lora_alpha"], s["lora_dropout"]) == ("lora", 16, 8, 0.0)
    assert (s["attn"], s["grad_ckpt"], s["precision"], s["gpus"]) == ("flash", True, "bf16", 8)


def test_dpo_pipeline_counts_sequences_not_pairs(tmp_path):
    """train_dpo.py interleaves chosen and rejected (coati/trainer/dpo.py:174-190): a batch
    of 4 pairs is 8 sequences, micro-batches of 2 sequences are 1 pair each, 4 of them."""
    line = (
        "colossalai run --nproc_per_node 4 train_dpo.py --plugin 3d --zero_stage 1 --pp 2 "
        "--batch_size 4 --microbatch_size 2"
    )
    s = _read(tmp_path, line).settings
    assert (s["batch_size"], s["grad_accum"], s["strategy"]) == (1, 4, "colossalai-zero1")


def test_coati_lora_config_beside_the_script(tmp_path):
    """lora_config.json (shipped): r 128; coati passes only r to LoraLinear, so alpha 32
    and dropout 0 (lora.py:281-283, 131-133); embed_tokens is not a block linear."""
    shutil.copy(FIXTURES / "lora_config.json", tmp_path)
    line = (
        "CUDA_VISIBLE_DEVICES=0,1 torchrun --nnodes 2 --nproc_per_node 2 train_sft.py "
        "--plugin zero2_cpu --lora_config lora_config.json"
    )
    cfg = _read(tmp_path, line)
    s = cfg.settings
    assert (s["gpus"], s["nodes"], s["strategy"], s["offload_optimizer"]) == (
        2, 2, "colossalai-zero2", "cpu"
    )  # fmt: skip
    assert (s["method"], s["lora_r"], s["lora_alpha"], s["lora_dropout"]) == ("lora", 128, 32, 0.0)
    assert s["lora_targets"] == "q_proj,o_proj,k_proj,v_proj,gate_proj,up_proj,down_proj"
    note = next(n for n in cfg.notes if n.startswith("--lora_config lora_config.json"))
    assert "embed_tokens" in note and "lora_train_bias all" in note and "PiSSA" in note
    assert estimate("qwen2.5-0.5b", **s).memory.peak_allocated_bytes > 0


def test_lora_config_elsewhere_is_noted(tmp_path):
    cfg = _read(tmp_path, "colossalai run --nproc_per_node 1 train_sft.py --lora_config l.json")
    assert "method" not in cfg.settings
    assert any("--lora_config l.json is not beside" in n for n in cfg.notes)


def test_ddp_keeps_what_from_pretrained_loaded(tmp_path):
    """train_orpo.py has no ddp choice; train_dpo.py without --use_flash_attn loads fp32
    (from_pretrained(args.pretrain), :114) and TorchDDPPlugin does not cast."""
    cfg = _read(tmp_path, "colossalai run --nproc_per_node 2 train_dpo.py --plugin ddp")
    assert (cfg.settings["strategy"], cfg.settings["precision"]) == ("ddp", "fp32")
    with pytest.raises(ConfigError, match=re.escape("--plugin 'ddp' is not one of train_orpo.py")):
        _read(tmp_path, "colossalai run --nproc_per_node 2 train_orpo.py --plugin ddp")


def test_gemini_auto_is_gemini_auto_placement(tmp_path):
    line = "colossalai run --nproc_per_node 2 train_sft.py --plugin gemini_auto"
    with pytest.raises(ConfigError, match=re.escape("train_sft.py:33-34")):
        _read(tmp_path, line)  # --accumulation_steps 8 by default (train_sft.py:343)
    cfg = _read(tmp_path, line + " --accumulation_steps 1")
    assert cfg.settings["strategy"] == "colossalai-gemini"
    assert cfg.settings["gemini_placement"] == "auto"


def test_shell_variables_are_named_with_the_flag_to_give(tmp_path):
    cfg = _read(tmp_path, "colossalai run --nproc_per_node 2 train_sft.py --batch_size $BS")
    assert "batch_size" not in cfg.settings
    assert any("--batch_size $BS is a shell variable" in n and "--batch-size" in n
               for n in cfg.notes)  # fmt: skip


def test_hostfiles(tmp_path):
    (tmp_path / "hosts").write_text("a\nb\n\nc\n")
    line = "colossalai run --nproc_per_node 8 --hostfile hosts {} train_sft.py"
    assert _read(tmp_path, line.format("")).settings["nodes"] == 3
    assert _read(tmp_path, line.format("--num_nodes 2")).settings["nodes"] == 2
    assert _read(tmp_path, line.format("--exclude b")).settings["nodes"] == 2
    cfg = _read(tmp_path, line.replace("hosts", "elsewhere").format(""))
    assert cfg.settings["nodes"] == 1
    assert any("--hostfile elsewhere is not beside" in n for n in cfg.notes)


def test_the_first_launch_is_read_and_the_rest_of_the_script_skipped(tmp_path):
    text = (
        "# torchrun old_train.py \\\n"  # a comment: its backslash continues nothing
        'echo "it\'s python time: $(which python)"\n'
        "colossalai run --nproc_per_node 2 train_sft.py --batch_size 2 \\\n"
        "    --max_len 1024\n"
        "colossalai run --nproc_per_node 8 train_dpo.py\n"
    )
    cfg = _read(tmp_path, text)
    s = cfg.settings
    assert (s["gpus"], s["batch_size"], s["seq_len"]) == (2, 2, 1024)
    assert "objective" not in s
    assert any("launches 2 training scripts: the first one is read" in n for n in cfg.notes)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("echo hello", "no `colossalai run ... SCRIPT.py`"),
        ("colossalai run train_sft.py", "needs --nproc_per_node"),
        ("colossalai run --nproc_per_node 2 train_grpo.py", "train_grpo.py runs ColossalChat's GRPO"),
        ("colossalai run --nproc_per_node 2 my_train.py", "not a ColossalChat training script"),
        ("colossalai run --nproc_per_node 2 train_sft.py --foo 1", "takes no --foo"),
        ("colossalai run --nproc_per_node 2 train_sft.py --batch_size four", "whole number"),
        ("colossalai run --nproc_per_node 2 train_sft.py --plugin zero3", "not one of"),
        ("colossalai run --nproc_per_node 2 train_sft.py extra", "positional"),
        ("colossalai run --nproc_per_node 2 train_sft.py --grad_checkpoint=1", "takes no value"),
        ("colossalai run --nproc_per_node 2 train_sft.py --plugin 3d --sp 2", "1084-1086"),
        ("colossalai run --nproc_per_node 2 train_sft.py --plugin 3d --sp 2 "
         "--enable_sequence_parallelism", "needs tensor parallelism"),
        ("colossalai run --nproc_per_node 4 train_sft.py --plugin 3d --zero_stage 2 --pp 2",
         "1134-1136"),
        ("colossalai run --nproc_per_node 6 train_sft.py --plugin 3d --tp 4", "not a whole number"),
        ("colossalai run --nproc_per_node 4 train_sft.py --plugin 3d --pp 4 --batch_size 2",
         "fewer than the 4 pipeline stages"),
        ("colossalai run --nproc_per_node 4 train_sft.py --plugin 3d --pp 2 --batch_size 3 "
         "--microbatch_size 2", "not a whole number of"),
        ("colossalai run --nproc_per_node 4 train_dpo.py --plugin 3d --pp 2 "
         "--microbatch_size 3", "even --microbatch_size"),
        ("colossalai run --nproc_per_node 4 train_orpo.py --plugin 3d --pp 2", "1131-1133"),
        ("colossalai run --nproc_per_node 4 lora_finetune.py -m x -d y -p 3d --pp 2 "
         "--accumulation_steps 2", "lora_finetune.py:452-453"),
        ("colossalai run --nproc_per_node 2 --host a,b --hostfile h train_sft.py", "239-241"),
        ("colossalai run --nproc_per_node 2 -m coati.train", "runs a module"),
        ("torchrun --nproc_per_node 2 --bogus 1 train_sft.py", "not an option of torchrun"),
        ("colossalai run --nproc_per_node 2 train_sft.py --pretrain 'unclosed", "shell words"),
    ],
)  # fmt: skip
def test_bad_command_lines_are_one_sentence(tmp_path, line, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _read(tmp_path, line)


def test_gemini_refuses_coati_lora(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"r": 8}))
    line = "colossalai run --nproc_per_node 2 train_sft.py --lora_config l.json"
    with pytest.raises(ConfigError, match=re.escape("train_sft.py:31-32")):
        _read(tmp_path, line)
    (tmp_path / "l.json").write_text(json.dumps({"r": 8, "rank": 4}))
    with pytest.raises(ConfigError, match="rank is not a field"):
        _read(tmp_path, line + " --plugin zero2")


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_estimate_from_a_shell_script():
    """The model comes from the command (the script has $PRETRAINED_MODEL_PATH); the
    estimate is the one of the hand-written settings."""
    res = CliRunner().invoke(
        app, ["estimate", MODEL, "--from", str(FIXTURES / "train_sft.sh"), "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    parallel = out["parallel"]
    assert (parallel["strategy"], parallel["gpus_per_node"], parallel["nodes"]) == (
        "colossalai-zero2", 4, 1
    )  # fmt: skip
    assert (out["run"]["seq_len"], out["run"]["batch_size"], out["run"]["attn"]) == (
        4096,
        8,
        "flash",
    )
    by_hand = estimate(MODEL, framework="hf", **EXPECTED["train_sft.sh"])
    assert out["memory"]["peak_allocated_bytes"] == by_hand.memory.peak_allocated_bytes


def test_cli_without_a_model_says_to_give_one():
    res = CliRunner().invoke(app, ["estimate", "--from", str(FIXTURES / "train_sft.sh")])
    assert res.exit_code != 0
    assert "names no base model; give one" in res.output


def test_docs_page_names_every_key_and_no_other():
    named = page_keys(DOC.read_text())
    known = colossalai.READ_KEYS | colossalai.NO_MEMORY_EFFECT
    assert known <= named, sorted(known - named)
    assert named <= known, sorted(named - known)


def test_cli_refuses_a_reward_model_script_in_one_sentence():
    res = CliRunner().invoke(app, ["estimate", MODEL, "--from", str(FIXTURES / "train_rm.sh")])
    assert res.exit_code == 2
    assert "train_rm.py trains a reward model" in res.output
    assert "Traceback" not in res.output


def test_arguments_another_plugin_reads_are_noted(tmp_path):
    cfg = _read(tmp_path, "colossalai run --nproc_per_node 4 train_sft.py --plugin zero2 --tp 2")
    assert "tp" not in cfg.settings
    assert any(n.startswith("--tp: read by --plugin 3d only") for n in cfg.notes)
    line = "colossalai run --nproc_per_node 4 lora_finetune.py -m x -d y -p 3d --ep 2"
    assert any(n.startswith("--ep: read by --plugin moe only") for n in _read(tmp_path, line).notes)


def test_lora_finetune_moe_is_expert_parallel(tmp_path):
    """--plugin moe: MoeHybridParallelPlugin(ep_size=ep, zero_stage, ...) (lora_finetune.py:
    108-122), with lora_finetune.py's --zero_stage 1 by default (:427); Mixtral's 8 experts
    over --ep 4 on 8 GPUs."""
    line = (
        "colossalai run --nproc_per_node 8 lora_finetune.py -m x -d d.jsonl --plugin moe "
        "--ep 4 --batch_size 2 --max_length 1024"
    )
    s = _read(tmp_path, line).settings
    assert (s["strategy"], s["ep"], s["gpus"]) == ("colossalai-zero1", 4, 8)
    est = estimate("mixtral-8x7b", **s)
    assert est.parallel.engine == "ColossalAI MoeHybridParallelPlugin"
