"""Soft-capped cross-entropy over logits already in memory (the LM head's matmul stays with cuBLAS).

    capped = softcap * tanh(logits / softcap)   (computed as 2 softcap sigmoid(2 logits / softcap): the
    loss_row = logsumexp(capped) - capped[target]  same loss, cross-entropy ignores a constant shift)

``logits_cross_entropy(logits, targets, softcap)`` returns the per-row losses (fp32) with gradients to the
logits; on CUDA a Triton forward (one read of the bf16 logits, lse per row kept) and backward (one read,
one write of dL/dlogits), where torch.compile's own code read them twice per pass and computed a precise
tanh per logit (docs/kernels.md). ``logits_ce_grad_fp8`` is the backward for an FP8 head (trainer/fp8.py):
dL/dlogits in e5m2 under a scale computed on the device (max |row grad| / 57344: |softmax - onehot| <= 1
and the cap's derivative <= 1 bound every entry by its row's grad), written row-major and transposed by
the same tile. All are PyTorch operators (``speedrun_kernels::logits_ce_*``): torch.compile keeps them in
its graph. Without CUDA (tests, CPU) the operators run the plain PyTorch reference.
"""
from __future__ import annotations

import torch

from ._common import define_op, kernel_runs, use_triton

E5M2 = torch.float8_e5m2
E5M2_MAX = 57344.0
ALIGN = 16  # token rows of the transposed FP8 gradient are padded to this (the FP8 product's inner dimension)


def _capped_reference(z: torch.Tensor, softcap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(capped logits shifted to <= 0 as in the kernels: softcap (tanh(z / softcap) - 1) = 2 softcap (s - 1),
    and the cap's derivative 4 s (1 - s) = 4 s sigmoid(-u); s = sigmoid(u), u = 2 z / softcap)."""
    z = z.float()
    if softcap > 0:
        u = z * (2.0 / softcap)
        s = torch.sigmoid(u)
        return (2.0 * softcap) * (s - 1.0), 4.0 * s * torch.sigmoid(-u)
    return z, torch.ones_like(z)


def _grad_reference(z, targets, lse, g, softcap: float) -> torch.Tensor:
    """dL/dz in fp32: g_row (softmax - onehot) dc/dz."""
    c, deriv = _capped_reference(z, softcap)
    d = torch.exp(c - lse[:, None])
    d = d.scatter_add(1, targets[:, None], torch.full_like(d[:, :1], -1.0)) * g.float()[:, None]
    return d * deriv if softcap > 0 else d


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The kernels index a row's logits as base + column: the last dimension must be unit-stride."""
    return t if t.stride(1) == 1 else t.contiguous()


def _fwd(logits: torch.Tensor, targets: torch.Tensor, softcap: float, kernel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss per row, logsumexp per row), both fp32."""
    if not kernel_runs(kernel, logits, targets):
        c, _ = _capped_reference(logits, softcap)
        lse = torch.logsumexp(c, dim=1)
        return lse - c.gather(1, targets[:, None])[:, 0], lse
    from . import _logits_ce_triton as K

    logits = _rows_contiguous(logits)
    M = logits.shape[0]
    loss = torch.empty(M, device=logits.device, dtype=torch.float32)
    lse = torch.empty(M, device=logits.device, dtype=torch.float32)
    K.forward(logits, targets.contiguous(), loss, lse, softcap)
    return loss, lse


def _bwd(grad_rows: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, softcap: float,
         kernel: bool) -> torch.Tensor:
    """dL/dlogits in the logits' dtype."""
    if not kernel_runs(kernel, logits, targets):
        return _grad_reference(logits, targets, lse, grad_rows, softcap).to(logits.dtype)
    from . import _logits_ce_triton as K

    out = torch.empty_like(logits, memory_format=torch.contiguous_format)
    K.backward(_rows_contiguous(logits), targets.contiguous(), lse, grad_rows.float(), lse, out, None, softcap, False)
    return out


def _grad_fp8(grad_rows: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
              softcap: float, kernel: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, q_t, scale): dL/dlogits = q * scale with q (M, V) e5m2, q_t = q.T (V, M padded to 16, zeros)."""
    M, V = logits.shape
    Mp = -(-M // ALIGN) * ALIGN
    scale = (grad_rows.detach().float().abs().amax() / E5M2_MAX).clamp(min=1e-30)
    if not kernel_runs(kernel, logits, targets):
        d = _grad_reference(logits, targets, lse, grad_rows, softcap)
        q = (d / scale).clamp(-E5M2_MAX, E5M2_MAX).to(E5M2)
        q_t = torch.zeros((V, Mp), device=q.device, dtype=E5M2)
        q_t[:, :M] = q.t()
        return q, q_t, scale
    from . import _logits_ce_triton as K

    q = torch.empty((M, V), device=logits.device, dtype=E5M2)
    q_t = torch.empty((V, Mp), device=logits.device, dtype=E5M2)
    K.backward(_rows_contiguous(logits), targets.contiguous(), lse,
               grad_rows.float(), scale, q, q_t, softcap, True)
    return q, q_t, scale


logits_ce_fwd = define_op("logits_ce_fwd", _fwd)
logits_ce_bwd = define_op("logits_ce_bwd", _bwd)
logits_ce_grad_fp8 = define_op("logits_ce_grad_fp8", _grad_fp8)


def _setup(ctx, inputs, output):
    logits, targets, softcap, kernel = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(logits, targets, output[1])
    ctx.args = (softcap, kernel)


def _backward(ctx, grad_loss, _grad_lse):
    logits, targets, lse = ctx.saved_tensors
    return logits_ce_bwd(grad_loss, logits, targets, lse, *ctx.args), None, None, None


logits_ce_fwd.register_autograd(_backward, setup_context=_setup)


def logits_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, softcap: float, *,
                         backend: str = "auto") -> torch.Tensor:
    """Per-row cross-entropy (fp32, shape (M,)) of softcap * tanh(logits / softcap); softcap <= 0: no cap.
    logits (M, V) bf16/fp16/fp32, targets (M,) int64 in [0, V). backend: auto (Triton on CUDA) | triton | torch."""
    if logits.dim() != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (M, V) and targets (M,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    kernel = use_triton(backend, logits, targets)
    return logits_ce_fwd(logits, targets, float(softcap) if softcap and softcap > 0 else 0.0, kernel)[0]


__all__ = ["logits_cross_entropy", "logits_ce_fwd", "logits_ce_bwd", "logits_ce_grad_fp8", "ALIGN"]
