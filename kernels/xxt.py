"""Symmetric Gram product ``X @ X.mT`` for Newton-Schulz orthogonalisation (Muon).

X: (M, K) or (B, M, K). The Triton path computes only the lower-triangle output tiles and mirrors
each into the upper triangle, about half the FLOPs of a full matmul. Forward only (Newton-Schulz runs
under no_grad); calling it on a tensor that requires grad raises. ``xxt_reference`` is ``X @ X.mT``.
"""
from __future__ import annotations

import torch

from ._common import dot_precision, use_triton


def xxt_reference(X):
    return X @ X.mT


def xxt(X, *, backend: str = "auto"):
    """``X @ X.mT`` for X of shape (M, K) or (B, M, K); result in X's dtype."""
    if X.dim() not in (2, 3):
        raise ValueError(f"xxt expects a 2-D or 3-D tensor, got shape {tuple(X.shape)}")
    if not use_triton(backend, X):
        return xxt_reference(X)
    if torch.is_grad_enabled() and X.requires_grad:
        raise RuntimeError("xxt's Triton path has no backward; call it under torch.no_grad() or use backend='torch'")
    from . import _xxt_triton as K

    x3 = X if X.dim() == 3 else X.unsqueeze(0)
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    out = K.xxt_forward(x3, dot_precision(X.dtype))
    return out if X.dim() == 3 else out[0]


__all__ = ["xxt", "xxt_reference"]
