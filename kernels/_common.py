"""Shared helpers: Triton availability, dispatch, interpreter detection, and operator registration.

Every kernel is a PyTorch operator in the ``speedrun_kernels`` namespace (``define_op``), so
torch.compile keeps it in its graph. Defining the operators imports triton when it is installed (not
needed: without it the operators run their PyTorch reference paths). The kernel modules
(``kernels/_*_triton.py``) are imported lazily on first use; the environment variable
``TRITON_INTERPRET=1`` must be set before that first use to run the kernels through Triton's CPU
interpreter (the tests do this when no CUDA device is present).
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable

import torch

BACKENDS = ("auto", "triton", "torch")
NAMESPACE = "speedrun_kernels"
_PROBED: dict = {}
_DIRECT = {"on": False}


@torch.compiler.assume_constant_result  # torch.compile evaluates it once while tracing
def triton_available() -> bool:
    """True when ``import triton`` succeeds (CPU wheels import fine; running needs CUDA or the interpreter)."""
    if "triton" not in _PROBED:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _PROBED["triton"] = True
        except Exception:  # ImportError, or a broken install
            _PROBED["triton"] = False
    return _PROBED["triton"]


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


def define_op(name: str, fn: Callable, mutates_args=()):
    """Register ``fn`` as the operator ``speedrun_kernels::name`` (schema from its type hints).

    With triton: ``torch.library.triton_op``, so torch.compile traces into ``fn`` (its Triton launches go
    through ``launch``) and inductor sees the kernels. Either way ``fn`` is also the fake (shape/dtype)
    implementation, so the two cannot disagree; ``fn`` picks its path from its arguments (``kernel_runs``),
    the PyTorch reference on CPU. The caller registers the backward (``register_autograd``).
    """
    qualname = f"{NAMESPACE}::{name}"
    if triton_available():
        return torch.library.triton_op(qualname, fn, mutates_args=mutates_args)
    op = torch.library.custom_op(qualname, fn, mutates_args=mutates_args)  # no triton: reference paths only
    op.register_fake(fn)
    return op


def kernel_runs(kernel: bool, *tensors: torch.Tensor) -> bool:
    """Inside an op: True runs the Triton kernel (CUDA tensors, or CPU ones under the interpreter),
    False the PyTorch reference (always on CPU without the interpreter, so every op has a CPU path)."""
    return kernel and all(t.is_cuda or (t.device.type == "cpu" and interpreting()) for t in tensors)


def launch(kernel):
    """``kernel[grid](...)`` that torch.compile can trace (``torch.library.wrap_triton``); the interpreter's
    kernels cannot be traced and run as they are, and so does every kernel inside ``direct_launches()``."""
    return kernel if interpreting() or _DIRECT["on"] else torch.library.wrap_triton(kernel)


@contextlib.contextmanager
def direct_launches():
    """Plain Triton launches, without wrap_triton's traceable wrapper and its per-call dispatch: for timing
    a kernel's launcher called outside the operators (bench/kernels_bench.py). Not for traced code."""
    prev, _DIRECT["on"] = _DIRECT["on"], True
    try:
        yield
    finally:
        _DIRECT["on"] = prev


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs: exact fp32 dot ("ieee") so the fp32 path meets the fp32 error bound; bf16/fp16 use tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"
