"""Fused LM head + soft-capped cross-entropy.

    logits = softcap * tanh((x @ weight.T) / softcap)      # softcap <= 0 or None: no cap
    loss   = cross_entropy(logits, targets, ignore_index=-100, reduction=...)

``softcap_cross_entropy`` dispatches to Triton on CUDA (when triton imports) and to the plain
PyTorch reference ``softcap_cross_entropy_reference`` otherwise. The Triton path never holds fp32
logits for the batch: the forward streams logit tiles through an online logsumexp and keeps only
per-row statistics; the backward recomputes logits one chunk of rows at a time and writes dL/dlogits
for that chunk in the input dtype (bf16: ``chunk_rows * V * 2`` bytes, 1 GiB by default, ``CONFIG``), which
cuBLAS then multiplies into dx and dW.
"""
from __future__ import annotations

import math

import torch

from ._common import dot_precision, num_sms, use_triton

IGNORE_INDEX = -100
# Backward tuning knobs (module-level so bench/kernels_bench.py can compare them):
#   chunk_bytes: budget for one chunk's dL/dlogits buffer (rows per chunk = chunk_bytes / (V * itemsize))
#   dw_mode: how dW accumulates across chunks: "f32_add" (cuBLAS in the input dtype, then add into an
#   fp32 buffer), "addmm_f32" (torch.addmm(..., out_dtype=float32), CUDA only) or "native" (addmm_ in the
#   weight dtype: no fp32 buffer, one rounding per chunk).
CONFIG = {"chunk_bytes": 1024 * 2**20, "dw_mode": "f32_add"}


def _accumulate_dw(dw, dz, xc, mode):
    """dw += dz^T @ xc."""
    if mode == "addmm_f32" and dz.is_cuda and dz.dtype != torch.float32:
        torch.addmm(dw, dz.t(), xc, out_dtype=torch.float32, out=dw)
    elif mode == "native" or dw.dtype == dz.dtype:
        dw.addmm_(dz.t(), xc)
    else:
        dw += (dz.t() @ xc).float()


def softcap_cross_entropy_reference(x, weight, targets, softcap, reduction="mean", ignore_index=IGNORE_INDEX):
    """Plain PyTorch: materialises the (N, V) logits in fp32. Autograd provides the backward."""
    logits = x @ weight.t()
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if softcap is not None and softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)


def _n_split(n_rows: int, n_vtiles: int, device) -> int:
    # enough (row block, vocab slice) programs for ~4 per SM; BM=128 assumed for the estimate
    row_blocks = max(1, math.ceil(n_rows / 128))
    want = math.ceil(4 * num_sms(device) / row_blocks)
    return max(1, min(want, n_vtiles, 64))


class _SoftcapCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, targets, softcap, reduction, ignore_index, chunk_rows):
        from . import _softcap_ce_triton as K

        N, D = x.shape
        V = weight.shape[0]
        x = x.contiguous()
        weight = weight.contiguous()
        targets = targets.contiguous()
        prec = dot_precision(x.dtype)
        n_split = _n_split(N, math.ceil(V / 128), x.device)
        m, l, zt = K.ce_forward_partials(x, weight, targets, softcap, n_split, prec)
        mx = m.max(dim=0).values
        lse = mx + torch.log((l * torch.exp(m - mx)).sum(dim=0))
        valid = targets != ignore_index
        loss_rows = torch.where(valid, lse - zt.sum(dim=0), torch.zeros_like(lse))
        n_valid = valid.sum()
        if reduction == "mean":
            out = loss_rows.sum() / n_valid.clamp(min=1)  # a tensor: no host sync
        elif reduction == "sum":
            out = loss_rows.sum()
        else:
            out = loss_rows
        ctx.save_for_backward(x, weight, targets, lse, n_valid)
        ctx.softcap = softcap
        ctx.reduction = reduction
        ctx.ignore_index = ignore_index
        ctx.chunk_rows = chunk_rows
        ctx.prec = prec
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from . import _softcap_ce_triton as K

        x, weight, targets, lse, n_valid = ctx.saved_tensors
        N, D = x.shape
        V = weight.shape[0]
        valid = (targets != ctx.ignore_index).to(torch.float32)
        g_out = grad_out.to(torch.float32)
        if ctx.reduction == "mean":
            g = valid * (g_out / n_valid.clamp(min=1).to(torch.float32))
        elif ctx.reduction == "sum":
            g = valid * g_out
        else:
            g = valid * g_out.reshape(N)
        g = g.contiguous()
        need_dx, need_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        Vp = (V + 63) // 64 * 64  # padded row stride keeps cuBLAS on aligned paths
        chunk = ctx.chunk_rows or max(64, CONFIG["chunk_bytes"] // (Vp * x.element_size()))
        chunk = min(chunk, N)
        dz_buf = torch.empty((chunk, Vp), device=x.device, dtype=x.dtype)
        w_pad = weight
        if Vp != V:
            # dx = dz @ W with the reduction dim padded to Vp (zeros in dz and W): cuBLAS ran this product
            # at 128 TFLOP/s with K = 50257 against ~445 for aligned shapes (H200, bench/kernels_bench.py)
            dz_buf[:, V:].zero_()  # the dz kernel writes columns < V only, so the pad stays zero
            if need_dx:
                w_pad = weight.new_zeros((Vp, D))
                w_pad[:V].copy_(weight)
        dx = torch.empty_like(x) if need_dx else None
        n_chunks = math.ceil(N / chunk)
        dw = None
        mode = CONFIG["dw_mode"]
        if need_dw:
            dw = torch.zeros(weight.shape, device=x.device,
                             dtype=torch.float32 if n_chunks > 1 and mode != "native" else weight.dtype)
        for c0 in range(0, N, chunk):
            c1 = min(N, c0 + chunk)
            dz = dz_buf[: c1 - c0, :V]
            xc = x[c0:c1]
            K.ce_dz(xc, weight, targets[c0:c1], lse[c0:c1], g[c0:c1], dz, ctx.softcap, ctx.prec)
            if need_dx:
                torch.mm(dz_buf[: c1 - c0], w_pad, out=dx[c0:c1])
            if need_dw:
                if n_chunks > 1:
                    _accumulate_dw(dw, dz, xc, mode)
                else:
                    torch.mm(dz.t(), xc, out=dw)
        if dw is not None:
            dw = dw.to(weight.dtype)
        return dx, dw, None, None, None, None, None


def softcap_cross_entropy(x, weight, targets, softcap: float, reduction: str = "mean", *,
                          ignore_index: int = IGNORE_INDEX, backend: str = "auto", chunk_rows: int | None = None):
    """Cross-entropy of soft-capped logits ``softcap * tanh(x @ weight.T / softcap)``.

    x: (N, D) bf16/fp16/fp32; weight: (V, D) same dtype; targets: (N,) int, ``ignore_index`` rows skipped.
    reduction: "mean" (over non-ignored rows) | "sum" | "none" (per-row fp32 losses).
    Returns an fp32 tensor; grads flow to x and weight.
    backend: "auto" (Triton on CUDA, else reference) | "triton" | "torch".
    chunk_rows: rows per backward chunk (default: what fits in CONFIG['chunk_bytes'] = 1 GiB of dL/dlogits).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x (N, D) and weight (V, D), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if targets.shape != (x.shape[0],):
        raise ValueError(f"targets must have shape ({x.shape[0]},), got {tuple(targets.shape)}")
    if not use_triton(backend, x, weight, targets):
        return softcap_cross_entropy_reference(x, weight, targets, softcap, reduction, ignore_index)
    if x.dtype != weight.dtype:
        raise ValueError(f"x and weight dtypes differ: {x.dtype} vs {weight.dtype}")
    return _SoftcapCE.apply(x, weight, targets, softcap, reduction, ignore_index, chunk_rows)


__all__ = ["softcap_cross_entropy", "softcap_cross_entropy_reference", "IGNORE_INDEX", "CONFIG"]
