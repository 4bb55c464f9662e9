"""MLP up-projection with squared-ReLU activation: ``relu(x @ w_up.T) ** 2``.

The Triton path fuses the activation into the matmul epilogue (the pre-activation is never stored)
and saves only the output y for the backward, where dh = 2 * dy * sqrt(y); then dx = dh @ w_up and
dw_up = dh^T @ x run through cuBLAS. ``relu2_mlp_up_reference`` is the plain PyTorch version.
"""
from __future__ import annotations

import torch

from ._common import dot_precision, use_triton


def relu2_mlp_up_reference(x, w_up):
    """Plain PyTorch; autograd provides the backward."""
    return torch.relu(x @ w_up.t()).square()


class _Relu2MlpUp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        from . import _relu2_mlp_triton as K

        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).contiguous()
        w = w.contiguous()
        y = K.relu2_forward(x2, w, dot_precision(x.dtype))
        ctx.save_for_backward(x2, w, y)
        ctx.lead = lead
        return y.reshape(*lead, w.shape[0])

    @staticmethod
    def backward(ctx, dy):
        from . import _relu2_mlp_triton as K

        x2, w, y = ctx.saved_tensors
        dy2 = dy.reshape(-1, w.shape[0]).contiguous().to(y.dtype)
        dh = K.relu2_dh(dy2, y)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = (dh @ w).reshape(*ctx.lead, w.shape[1])
        if ctx.needs_input_grad[1]:
            dw = dh.t() @ x2
        return dx, dw


def relu2_mlp_up(x, w_up, *, backend: str = "auto"):
    """``relu(x @ w_up.T) ** 2``. x: (..., D); w_up: (H, D) same dtype. Returns (..., H) in x's dtype.

    backend: "auto" (Triton on CUDA, else reference) | "triton" | "torch".
    """
    if w_up.dim() != 2 or x.shape[-1] != w_up.shape[1]:
        raise ValueError(f"expected x (..., D) and w_up (H, D), got {tuple(x.shape)} and {tuple(w_up.shape)}")
    if not use_triton(backend, x, w_up):
        return relu2_mlp_up_reference(x, w_up)
    if x.dtype != w_up.dtype:
        raise ValueError(f"x and w_up dtypes differ: {x.dtype} vs {w_up.dtype}")
    return _Relu2MlpUp.apply(x, w_up)


__all__ = ["relu2_mlp_up", "relu2_mlp_up_reference"]
