"""Symmetric Gram product ``X @ X.mT`` for Newton-Schulz orthogonalisation (Muon).

X: (M, K) or (B, M, K). The Triton path computes only the lower-triangle output tiles and mirrors
each into the upper triangle, about half the FLOPs of a full matmul. ``xxt_reference`` is ``X @ X.mT``.
Both run inside the operator ``speedrun_kernels::xxt`` (torch.compile traces into it); its backward,
dX = (G + G^T) @ X, is plain PyTorch (Newton-Schulz itself runs under no_grad).
"""
import torch

from ._common import define_op, dot_precision, kernel_runs, use_triton


def xxt_reference(X):
    return X @ X.mT


def _xxt(X: torch.Tensor, kernel: bool) -> torch.Tensor:
    """X (B, M, K) -> X @ X.mT (B, M, M); kernel: Triton where it can run (``kernel_runs``)."""
    if not kernel_runs(kernel, X):
        return xxt_reference(X)
    from . import _xxt_triton as K

    return K.xxt_forward(X if X.stride(-1) == 1 else X.contiguous(), dot_precision(X.dtype))


xxt_op = define_op("xxt", _xxt)


def _xxt_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _xxt_backward(ctx, grad):
    (X,) = ctx.saved_tensors
    return (grad + grad.mT) @ X, None


xxt_op.register_autograd(_xxt_backward, setup_context=_xxt_setup)


def xxt(X, *, backend: str = "auto"):
    """``X @ X.mT`` for X of shape (M, K) or (B, M, K); result in X's dtype."""
    if X.dim() not in (2, 3):
        raise ValueError(f"xxt expects a 2-D or 3-D tensor, got shape {tuple(X.shape)}")
    out = xxt_op(X if X.dim() == 3 else X.unsqueeze(0), use_triton(backend, X))
    return out if X.dim() == 3 else out[0]


__all__ = ["xxt", "xxt_reference", "xxt_op"]
