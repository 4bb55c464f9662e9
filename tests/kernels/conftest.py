"""Kernel tests: on a machine without CUDA, run the Triton kernels through Triton's CPU interpreter.

TRITON_INTERPRET must be set before the first kernel module is imported; kernels/ imports its Triton
modules lazily, so setting it here (collection time) is early enough.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
