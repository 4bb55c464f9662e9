"""Fused LM head + soft-capped cross-entropy.

    logits = softcap * tanh((x @ weight.T) / softcap)      # softcap <= 0 or None: no cap
    loss   = cross_entropy(logits, targets, ignore_index=-100, reduction=...)

``softcap_cross_entropy`` dispatches to Triton on CUDA (when triton imports) and to the plain
PyTorch reference ``softcap_cross_entropy_reference`` otherwise, both inside the operators
``speedrun_kernels::softcap_ce_fwd`` / ``softcap_ce_bwd`` (torch.compile traces into them, no graph break;
the reference path's backward is the closed form of the reference's gradient). The Triton path never holds fp32
logits for the batch: the forward streams logit tiles through an online logsumexp and keeps only
per-row statistics; the backward recomputes logits one chunk of rows at a time and writes dL/dlogits
for that chunk in the input dtype (bf16: ``chunk_rows * V * 2`` bytes, 1 GiB by default, ``CONFIG``), which
cuBLAS then multiplies into dx and dW.
"""
import math

import torch

from ._common import define_op, dot_precision, kernel_runs, num_sms, use_triton

IGNORE_INDEX = -100
# Backward tuning knobs (module-level so bench/kernels_bench.py can compare them):
#   chunk_bytes: budget for one chunk's dL/dlogits buffer (rows per chunk = chunk_bytes / (V * itemsize))
#   dw_mode: how dW accumulates across chunks: "f32_add" (cuBLAS in the input dtype, then add into an
#   fp32 buffer), "addmm_f32" (torch.addmm(..., out_dtype=float32), CUDA only) or "native" (addmm in the
#   weight dtype: no fp32 buffer, one rounding per chunk).
CONFIG = {"chunk_bytes": 1024 * 2**20, "dw_mode": "f32_add"}


def _accumulate_dw(dw, dz, xc, mode):
    """dw + dz^T @ xc (dw None: the first chunk), without in-place updates (traceable by torch.compile)."""
    if mode == "addmm_f32" and dz.is_cuda and dz.dtype != torch.float32:
        if dw is None:
            dw = torch.zeros((dz.shape[1], xc.shape[1]), device=dz.device, dtype=torch.float32)
        return torch.addmm(dw, dz.t(), xc, out_dtype=torch.float32)
    if dw is None:
        prod = dz.t() @ xc
        return prod if mode == "native" else prod.float()
    if mode == "native" or dw.dtype == dz.dtype:
        return torch.addmm(dw, dz.t(), xc)
    return dw + (dz.t() @ xc).float()


def _capped_logits(x, weight, softcap):
    """The reference's logits: x @ weight.T (bf16/fp16 results widened to fp32), soft-capped."""
    logits = x @ weight.t()
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()
    if softcap is not None and softcap > 0:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def softcap_cross_entropy_reference(x, weight, targets, softcap, reduction="mean", ignore_index=IGNORE_INDEX):
    """Plain PyTorch: materialises the (N, V) logits in fp32. Autograd provides the backward."""
    logits = _capped_logits(x, weight, softcap)
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)


def _n_split(n_rows: int, n_vtiles: int, device) -> int:
    # enough (row block, vocab slice) programs for ~4 per SM; BM=128 assumed for the estimate
    row_blocks = max(1, math.ceil(n_rows / 128))
    want = math.ceil(4 * num_sms(device) / row_blocks)
    return max(1, min(want, n_vtiles, 64))


def _row_grads(grad, targets, reduction, ignore_index, dtype):
    """dLoss/dloss_row for every row (0 for ignored rows), in `dtype`."""
    valid = targets != ignore_index
    g = grad.to(dtype)
    if reduction == "mean":
        g = g / valid.sum().clamp(min=1).to(dtype)
    elif reduction == "none":
        g = g.reshape(-1)
    return torch.where(valid, g, torch.zeros((), device=g.device, dtype=dtype)).contiguous()


# ---------------------------------------------------------------- operators (torch.compile keeps them in its graph)
def _ce_fwd(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float, reduction: str,
            ignore_index: int, chunk_rows: int, kernel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, lse): the loss and each row's logsumexp of the capped logits (kept for the backward).
    chunk_rows is the backward's (see ``_ce_bwd``); kernel: Triton where it can run (``kernel_runs``)."""
    if not kernel_runs(kernel, x, weight, targets):
        logits = _capped_logits(x, weight, softcap)
        loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
        return loss, torch.logsumexp(logits, dim=1)
    from . import _softcap_ce_triton as K

    N, D = x.shape
    V = weight.shape[0]
    x, weight, targets = x.contiguous(), weight.contiguous(), targets.contiguous()
    n_split = _n_split(N, math.ceil(V / 128), x.device)
    m, l, zt = K.ce_forward_partials(x, weight, targets, softcap, n_split, dot_precision(x.dtype))
    mx = m.max(dim=0).values
    lse = mx + torch.log((l * torch.exp(m - mx)).sum(dim=0))
    valid = targets != ignore_index
    loss_rows = torch.where(valid, lse - zt.sum(dim=0), torch.zeros_like(lse))
    if reduction == "mean":
        loss = loss_rows.sum() / valid.sum().clamp(min=1)  # a tensor: no host sync
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows
    return loss, lse


def _ce_bwd(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
            softcap: float, reduction: str, ignore_index: int, chunk_rows: int,
            kernel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight) of the loss scaled by `grad`; chunk_rows 0: what fits in CONFIG['chunk_bytes']."""
    N, D = x.shape
    V = weight.shape[0]
    if not kernel_runs(kernel, x, weight, targets):
        # the reference's gradient in closed form: (softmax - onehot) * row grad * d(cap)/dz
        z = x @ weight.t()
        z = z.float() if z.dtype in (torch.bfloat16, torch.float16) else z
        capped = softcap is not None and softcap > 0
        th = torch.tanh(z / softcap) if capped else z
        s = softcap * th if capped else z
        g = _row_grads(grad, targets, reduction, ignore_index, s.dtype)
        safe_t = torch.where(targets == ignore_index, torch.zeros_like(targets), targets)
        d = torch.exp(s - lse[:, None]).scatter_add(1, safe_t[:, None], torch.full_like(s[:, :1], -1.0))
        d = d * g[:, None]
        if capped:
            d = d * (1.0 - th * th)
        d = d.to(x.dtype)
        return d @ weight, (d.t() @ x).to(weight.dtype)
    from . import _softcap_ce_triton as K

    x, weight, targets = x.contiguous(), weight.contiguous(), targets.contiguous()
    prec = dot_precision(x.dtype)
    g = _row_grads(grad, targets, reduction, ignore_index, torch.float32)
    Vp = (V + 63) // 64 * 64  # padded row stride keeps cuBLAS on aligned paths
    chunk = min(N, chunk_rows or max(64, CONFIG["chunk_bytes"] // (Vp * x.element_size())))
    # dx = dz @ W with the reduction dim padded to Vp (zeros in dz and W): cuBLAS ran this product
    # at 128 TFLOP/s with K = 50257 against ~445 for aligned shapes (H200, bench/kernels_bench.py)
    w_pad = weight if Vp == V else torch.cat([weight, weight.new_zeros((Vp - V, D))])
    mode = CONFIG["dw_mode"]
    dx_parts, dw = [], None
    for c0 in range(0, N, chunk):
        c1 = min(N, c0 + chunk)
        xc = x[c0:c1]
        dz = torch.empty((c1 - c0, Vp), device=x.device, dtype=x.dtype)
        K.ce_dz(xc, weight, targets[c0:c1], lse[c0:c1], g[c0:c1], dz, softcap, prec)  # zeros in columns >= V
        dx_parts.append(dz @ w_pad)
        dw = _accumulate_dw(dw, dz[:, :V], xc, mode)
        del dz  # frees this chunk's buffer before the next one is allocated
    dx = dx_parts[0] if len(dx_parts) == 1 else torch.cat(dx_parts)
    return dx, dw.to(weight.dtype)


softcap_ce_fwd = define_op("softcap_ce_fwd", _ce_fwd)
softcap_ce_bwd = define_op("softcap_ce_bwd", _ce_bwd)


def _ce_setup(ctx, inputs, output):
    x, weight, targets, softcap, reduction, ignore_index, chunk_rows, kernel = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, weight, targets, output[1])
    ctx.args = (softcap, reduction, ignore_index, chunk_rows, kernel)


def _ce_backward(ctx, grad_loss, _grad_lse):
    x, weight, targets, lse = ctx.saved_tensors
    dx, dw = softcap_ce_bwd(grad_loss, x, weight, targets, lse, *ctx.args)
    return dx, dw, None, None, None, None, None, None


softcap_ce_fwd.register_autograd(_ce_backward, setup_context=_ce_setup)


def softcap_cross_entropy(x, weight, targets, softcap: float, reduction: str = "mean", *,
                          ignore_index: int = IGNORE_INDEX, backend: str = "auto", chunk_rows: int | None = None):
    """Cross-entropy of soft-capped logits ``softcap * tanh(x @ weight.T / softcap)``.

    x: (N, D) bf16/fp16/fp32; weight: (V, D) same dtype; targets: (N,) int, ``ignore_index`` rows skipped.
    reduction: "mean" (over non-ignored rows) | "sum" | "none" (per-row fp32 losses).
    Returns an fp32 tensor; grads flow to x and weight.
    backend: "auto" (Triton on CUDA, else reference) | "triton" | "torch"; either way the call is the operator
    ``torch.ops.speedrun_kernels.softcap_ce_fwd`` (backward: ``softcap_ce_bwd``): torch.compile keeps it in its
    graph.
    chunk_rows: rows per backward chunk (default: what fits in CONFIG['chunk_bytes'] = 1 GiB of dL/dlogits).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x (N, D) and weight (V, D), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if targets.shape != (x.shape[0],):
        raise ValueError(f"targets must have shape ({x.shape[0]},), got {tuple(targets.shape)}")
    kernel = use_triton(backend, x, weight, targets)
    if kernel and x.dtype != weight.dtype:
        raise ValueError(f"x and weight dtypes differ: {x.dtype} vs {weight.dtype}")
    cap = float(softcap) if softcap is not None and softcap > 0 else 0.0
    return softcap_ce_fwd(x, weight, targets, cap, reduction, ignore_index, chunk_rows or 0, kernel)[0]


__all__ = ["softcap_cross_entropy", "softcap_cross_entropy_reference", "softcap_ce_fwd", "softcap_ce_bwd",
           "IGNORE_INDEX", "CONFIG"]
