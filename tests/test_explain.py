"""`ftmem explain`: the seed's numbers under the simple accounting, the realistic peak
beside them, and every figure the same as the estimate's."""

from __future__ import annotations

from typer.testing import CliRunner

from ftmem import estimate
from ftmem.cli import app
from ftmem.units import format_bytes

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "120", "NO_COLOR": "1"})


def gb(n: int) -> str:
    return format_bytes(n, "GB", digits=1)


def test_seed_13b_numbers():
    """Seed: 13B in 16-bit = 26 GB weights + 78 GB gradients and Adam + ~5 GB ≈ 109 GB."""
    res = run("explain", "llama2-13b", "--method", "full", "--accounting", "simple")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "13.02B parameters in bf16 × 2 bytes = 26.0 GB" in out
    assert "Gradients + optimizer states = 78.1 GB" in out
    assert "≈ 109.0 GB" in out
    realistic = estimate("llama2-13b", method="full").memory
    assert "the realistic peak of the step (phases accounting" in out
    assert f"{gb(realistic.peak_allocated_bytes)} in {realistic.peak_phase}" in out


def test_figures_are_the_estimates():
    args = dict(method="qlora", lora_r=16, seq_len=1024, gpu="rtx4090")
    est = estimate("llama3-8b", **args)
    res = run("explain", "llama3-8b", "--method", "qlora", "--lora-r", "16", "--seq-len", "1024",
              "--gpu", "rtx4090")  # fmt: skip
    out = res.output
    m = est.memory
    assert f"Weights = {gb(m.weights_bytes)}" in out
    assert f"Activations = {gb(m.activations_bytes)}" in out
    assert f"= {gb(m.peak_allocated_bytes)}" in out
    assert f"reserved {gb(m.peak_reserved_bytes)}" in out
    assert f"nvidia-smi shows {gb(m.total_bytes)}." in out
    assert "in nf4: half a byte each plus the quantisation constants" in out
    assert f"{est.model.n_trainable_params:,} trainable parameters" in out
    block = sum(i.bytes for i in m.activations_per_block)
    assert f"one block: {gb(block)}" in out


def test_markdown_for_posts():
    res = run("explain", "llama2-7b", "--method", "lora", "--format", "markdown", "--units", "GiB")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("## Llama-2-7B: lora")
    assert "### Weights" in res.output and "### The peak" in res.output
    assert "GiB" in res.output


def test_explain_many_gpus_and_from_config(tmp_path):
    res = run("explain", "llama2-70b", "--gpus", "8", "--strategy", "zero3")
    assert "Per GPU: zero3 over 8 GPUs (DeepSpeed)" in res.output
    cfg = tmp_path / "axo.yml"
    cfg.write_text("base_model: meta-llama/Llama-2-7b-hf\nadapter: lora\nsequence_len: 2048\n")
    res = run("explain", "--from", str(cfg))
    assert res.exit_code == 0, res.output
    assert "Read from the axolotl config" in res.output and "Method lora" in res.output


def test_explain_bad_format():
    res = run("explain", "gpt2", "--format", "html")
    assert res.exit_code == 2


def test_the_states_section_splits_paged_buffers_as_the_estimate_does():
    """bitsandbytes' paged buffers: resident beside the hard requirement, the rest in
    host RAM, and what stays in torch's allocator (ftmem.gpu.managed)."""
    flags = ["--method", "full", "--optimizer", "paged-adamw-8bit", "--optimizer-in-backward",
             "--grad-ckpt", "--seq-len", "512"]  # fmt: skip
    est = estimate("llama-3.1-8b", method="full", optimizer="paged-adamw-8bit",
                   optimizer_in_backward=True, grad_ckpt=True, seq_len=512, gpu="rtx4090")  # fmt: skip
    m, b = est.memory, est.memory.beyond_allocated
    paged = b.paged_optimizer_states + b.paged_to_host
    assert b.paged_to_host > 0 and b.paged_optimizer_states > 0
    out = run("explain", "llama-3.1-8b", *flags, "--gpu", "rtx4090").output
    assert f"Of these, {gb(paged)} are bitsandbytes' paged buffers" in out
    assert f"{gb(b.paged_optimizer_states)} resident on the GPU" in out
    assert f"{gb(b.paged_to_host)} paged to host RAM" in out
    assert f"{gb(m.optimizer_states_bytes - paged)} in torch's allocator" in out
    # a non-paged optimizer says nothing of it; under ZeRO the per-GPU section splits
    assert "paged buffers" not in run("explain", "llama-3.1-8b", "--method", "full").output
    zero = run("explain", "llama-3.1-8b", *flags[:4], "--gpus", "4", "--strategy", "zero2")
    paged = estimate("llama-3.1-8b", method="full", optimizer="paged-adamw-8bit", gpus=4,
                     strategy="zero2").memory.beyond_allocated.paged_optimizer_states  # fmt: skip
    assert zero.exit_code == 0, zero.output
    assert f"Of these, {gb(paged)} are bitsandbytes' paged buffers" in zero.output


def _weights_lines_in_bytes(out: str) -> tuple[list[int], int]:
    """The Weights section's figures (--units GiB) in bytes: its parts and its total."""
    import re

    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    section = out.split("2. Weights", 1)[1].split("3. What trains", 1)[0]
    figures = [
        (line.strip().startswith("Weights ="), float(num) * scale[unit])
        for line in section.splitlines()
        for num, unit in re.findall(r"= ([\d.]+) (B|KiB|MiB|GiB)$", line.strip())
    ]
    return [int(b) for total, b in figures if not total], next(int(b) for t, b in figures if t)


def test_boft_and_oft_buffers_are_among_the_weights_lines():
    """BOFT's boft_P (fp32 in × in per adapted linear, 4096² × 4 bytes × 2 × 32 on
    Mistral-7B) were in Weights = but on no line above it (4.3 GB unexplained)."""
    res = run("explain", "mistral-7b", "--method", "boft", "--units", "GiB")
    assert res.exit_code == 0, res.output
    parts, total = _weights_lines_in_bytes(res.output)
    assert abs(sum(parts) - total) < 0.01 * 2**30
    assert "BOFT's fp32 boft_P permutations" in res.output
    # OFT's int64 rows and cols (32·31/2 each) per adapted linear: 28 blocks × q, v
    res = run("explain", "llama-3.2-3b", "--method", "oft", "--units", "GiB")
    assert f"OFT's int64 block indices) = {format_bytes(28 * 2 * 2 * 496 * 8, 'GiB')}" in (
        res.output.replace("\n", " ")
    )
