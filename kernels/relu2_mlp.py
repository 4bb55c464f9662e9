"""MLP up-projection with squared-ReLU activation: ``relu(x @ w_up.T) ** 2``.

The Triton path fuses the activation into the matmul epilogue (the pre-activation is never stored)
and saves only the output y for the backward, where dh = 2 * dy * sqrt(y); then dx = dh @ w_up and
dw_up = dh^T @ x are plain matmuls. ``relu2_mlp_up_reference`` is the plain PyTorch version.
Both paths run inside the operators ``speedrun_kernels::relu2_mlp_up`` / ``relu2_dh`` (torch.compile
traces into them: no graph break).
"""
import torch

from ._common import define_op, dot_precision, kernel_runs, use_triton


def relu2_mlp_up_reference(x, w_up):
    """Plain PyTorch; autograd provides the backward."""
    return torch.relu(x @ w_up.t()).square()


def _up(x: torch.Tensor, w: torch.Tensor, kernel: bool) -> torch.Tensor:
    """relu(x @ w.T)^2 for x (M, D), w (H, D); kernel: Triton where it can run (``kernel_runs``)."""
    if not kernel_runs(kernel, x, w):
        return relu2_mlp_up_reference(x, w)
    from . import _relu2_mlp_triton as K

    return K.relu2_forward(x.contiguous(), w.contiguous(), dot_precision(x.dtype))


def _dh(dy: torch.Tensor, y: torch.Tensor, kernel: bool) -> torch.Tensor:
    """dL/dh = 2 * dy * relu(h) = 2 * dy * sqrt(y), computed in fp32 (or wider), returned in y's dtype."""
    if not kernel_runs(kernel, dy, y):
        wide = torch.promote_types(y.dtype, torch.float32)
        return (2.0 * dy.to(wide) * y.to(wide).sqrt()).to(y.dtype)
    from . import _relu2_mlp_triton as K

    return K.relu2_dh(dy.contiguous().to(y.dtype), y.contiguous())


relu2_mlp_up_op = define_op("relu2_mlp_up", _up)
relu2_dh_op = define_op("relu2_dh", _dh)


def _up_setup(ctx, inputs, output):
    x, w, kernel = inputs
    ctx.save_for_backward(x, w, output)
    ctx.kernel = kernel


def _up_backward(ctx, dy):
    x, w, y = ctx.saved_tensors
    dh = relu2_dh_op(dy, y, ctx.kernel)
    return dh @ w, dh.t() @ x, None


relu2_mlp_up_op.register_autograd(_up_backward, setup_context=_up_setup)


def relu2_mlp_up(x, w_up, *, backend: str = "auto"):
    """``relu(x @ w_up.T) ** 2``. x: (..., D); w_up: (H, D) same dtype. Returns (..., H) in x's dtype.

    backend: "auto" (Triton on CUDA, else reference) | "triton" | "torch"; either way through the operator.
    """
    if w_up.dim() != 2 or x.shape[-1] != w_up.shape[1]:
        raise ValueError(f"expected x (..., D) and w_up (H, D), got {tuple(x.shape)} and {tuple(w_up.shape)}")
    kernel = use_triton(backend, x, w_up)
    if kernel and x.dtype != w_up.dtype:
        raise ValueError(f"x and w_up dtypes differ: {x.dtype} vs {w_up.dtype}")
    y = relu2_mlp_up_op(x.reshape(-1, x.shape[-1]), w_up, kernel)
    return y.reshape(*x.shape[:-1], w_up.shape[0])


__all__ = ["relu2_mlp_up", "relu2_mlp_up_reference", "relu2_mlp_up_op", "relu2_dh_op"]
