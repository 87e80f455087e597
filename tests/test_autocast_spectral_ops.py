"""Which autocast lists the ops of peft's FourierFT, WaveFT, SHiRA, C3A, HiRA and PSOFT are
in, on CUDA (what users run) and on the CPU (what tests/accuracy measures).

The truth is the installed torch's dispatcher: an op autocast handles on a device has a
kernel registered under that device's Autocast key (aten/src/ATen/autocast_mode.cpp); an op
with none runs in its inputs' dtype there. The policy of each registration (lower precision,
fp32, promote) is pytorch/pytorch aten/src/ATen/autocast_mode.h's lists
(calibration/notes/peft.md, "Autocast, stop 47"). Where the two devices differ for an op a
method runs, the method's model is CUDA's and its note says why the CPU case still holds.
"""

from __future__ import annotations

import pytest

# op -> (autocast on CUDA, autocast on the CPU)
REGISTERED = {
    "aten::linear": (True, True),
    "aten::mm": (True, True),
    "aten::matmul": (True, True),
    "aten::bmm": (True, True),
    "aten::conv_transpose2d.input": (True, True),
    "aten::einsum": (True, False),
    "aten::fft_ifft2": (False, True),
    "aten::fft_fft": (False, True),
    "aten::fft_ifft": (False, True),
    "aten::fft_rfft": (False, True),
    "aten::fft_irfft": (False, True),
    "aten::linalg_solve": (False, True),
    "aten::linalg_inv": (False, True),
    "aten::linalg_qr": (False, True),
    "aten::view_as_complex": (False, True),
    "aten::index_put": (True, False),
    "aten::softmax.int": (True, False),
    "aten::cat": (False, True),
    "aten::stack": (False, True),
    "aten::mul.Tensor": (False, False),
    "aten::add.Tensor": (False, False),
    "aten::kron": (False, False),
    "aten::real": (False, False),
    "aten::index_add": (False, False),
    "aten::linalg_solve_triangular": (False, False),
}


@pytest.mark.parametrize("op", sorted(REGISTERED))
def test_autocast_registration_per_device(op: str) -> None:
    torch = pytest.importorskip("torch")
    keys = {line.split(":")[0].strip() for line in torch._C._dispatch_dump(op).splitlines()}
    assert ("AutocastCUDA" in keys, "AutocastCPU" in keys) == REGISTERED[op]


def test_fft_runs_on_fp32_under_cuda_autocast_too() -> None:
    """FourierFT's ifft2 has no CUDA autocast kernel: it runs on its input, the fp32
    spectrum peft builds, so CUDA's graph is the CPU's (fp32 policy, a no-op on fp32)."""
    torch = pytest.importorskip("torch")
    spectrum = torch.zeros(4, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.fft.ifft2(spectrum).dtype == torch.complex64
