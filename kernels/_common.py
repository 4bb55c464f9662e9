"""Shared helpers: Triton availability, dispatch, interpreter detection.

Nothing here imports triton at module import time, so ``import kernels`` works on machines
without triton. Triton modules (``kernels/_*_triton.py``) are imported lazily on first use; the
environment variable ``TRITON_INTERPRET=1`` must be set before that first use to run the kernels
through Triton's CPU interpreter (the tests do this when no CUDA device is present).
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when ``import triton`` succeeds (CPU wheels import fine; running needs CUDA or the interpreter)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def interpreting() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def use_triton(backend: str, *tensors: torch.Tensor) -> bool:
    """Decide the path for a call. ``auto``: Triton iff every tensor is on CUDA and triton imports.

    ``triton`` forces the kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``);
    ``torch`` forces the PyTorch reference.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return on_cuda and triton_available() and not interpreting()
    if not triton_available():
        raise RuntimeError("backend='triton' but triton is not importable (pip install triton)")
    if not on_cuda and not interpreting():
        raise RuntimeError(
            "backend='triton' with CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "before the first kernel call"
        )
    if on_cuda and interpreting():
        raise RuntimeError("TRITON_INTERPRET=1 is set but the tensors are on CUDA; unset it to compile")
    return True


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact fp32 dot ("ieee") so the fp32 path meets the fp32 error bound; bf16/fp16 use tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"
