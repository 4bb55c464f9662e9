"""What every kernel test shares: relative-error bounds per dtype, the relative error against a float64
oracle, and the markers that pick the interpreter (CPU) or CUDA path."""

import pytest
import torch

from kernels._common import interpreting, triton_available

# relative error bounds per input dtype (METHOD.md: fp32 far under 1e-3, bf16 between 1e-3 and 1e-2)
BOUND = {torch.float32: 1e-5, torch.bfloat16: 1.5e-2, torch.float16: 3e-3}
needs_interp = pytest.mark.skipif(not (triton_available() and interpreting() and not torch.cuda.is_available()),
                                  reason="needs triton and TRITON_INTERPRET=1 on a CPU-only machine "
                                         "(pip install -e '.[dev]'; tests/kernels/conftest.py sets the variable)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()
