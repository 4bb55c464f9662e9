"""Triton kernel for the symmetric product ``X @ X.mT`` (imported lazily; see xxt.py).

The grid runs over the lower-triangle tile pairs (i >= j) of the (M, M) output only (program p maps
to row i = floor((sqrt(8p + 1) - 1) / 2), corrected in integers, and j = p - i(i + 1)/2) and over the batch; each program computes tile (i, j) once and stores it at (i, j)
and, transposed, at (j, i): about half the FLOPs of a full matmul.

Exact symmetry (C == C^T, which Newton-Schulz assumes) needs the two entries (r, c) and (c, r) of a diagonal tile (i == j) to be summed in the same
order. The compiled dot does that: every entry of a tile is reduced over k in the same order and
x_r * x_c == x_c * x_r exactly (H200, triton 3.6: bf16 and fp32 outputs bit-identical to C^T). The
interpreter's dot is numpy's matmul, whose BLAS may not (float32 on an AMD EPYC, AVX-512: up to 2.9e-6
apart), so there (constexpr MIRROR) a diagonal tile keeps its lower triangle and takes that triangle's
transpose as its upper one. Mirroring on the GPU too cost 5-25% (H200, docs/kernels.md) for no change in
the output, so it is compiled out there.
Launches go through ``_common.launch`` so torch.compile can trace them (see xxt.py's op).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import interpreting, launch
from ._tiles import dot_rows


@triton.jit
def _xxt_kernel(
    X, C, M, K, stride_xb, stride_xm, stride_cb, stride_cm, B,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, MIRROR: tl.constexpr,
    BM: tl.constexpr, BK: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    ti = ((tl.sqrt(8.0 * pid.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    ti = tl.where((ti + 1) * (ti + 2) // 2 <= pid, ti + 1, ti)  # fix float rounding either way
    ti = tl.where(ti * (ti + 1) // 2 > pid, ti - 1, ti)
    tj = pid - ti * (ti + 1) // 2
    ri = ti * BM + tl.arange(0, BM)
    rj = tj * BM + tl.arange(0, BM)
    imask = ri < M
    jmask = rj < M
    Xb = X + b * stride_xb
    acc = dot_rows(Xb, Xb, ri.to(tl.int64), rj.to(tl.int64), imask, jmask, K, stride_xm, stride_xm,
                   EVEN_K, UPCAST, IEEE, BM, BM, BK)
    out = acc.to(C.dtype.element_ty)
    if MIRROR:  # the interpreter (see above); compiled out on the GPU
        if ti == tj:  # a diagonal tile: its lower triangle, and that triangle's transpose as the upper one
            r = tl.arange(0, BM)
            out = tl.where(r[:, None] >= r[None, :], out, tl.trans(out))
    Cb = C + b * stride_cb
    tl.store(Cb + ri[:, None] * stride_cm + rj[None, :], out, mask=imask[:, None] & jmask[None, :])
    if ti != tj:
        tl.store(Cb + rj[:, None] * stride_cm + ri[None, :], tl.trans(out), mask=jmask[:, None] & imask[None, :])


def _configs():
    return [
        triton.Config({"BM": 64, "BK": 64}, num_warps=4, num_stages=4),
        triton.Config({"BM": 64, "BK": 128}, num_warps=4, num_stages=3),
        triton.Config({"BM": 128, "BK": 64}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BK": 64}, num_warps=4, num_stages=4),
    ]


if interpreting():
    _KERNEL = _xxt_kernel
    _META = {"BM": 16, "BK": 16}
else:
    _KERNEL = triton.autotune(_configs(), key=["M", "K", "B", "IEEE"])(_xxt_kernel)
    _META = {}


def xxt_forward(x3, prec):
    """x3: (B, M, K) with unit stride in the last dim. Returns (B, M, M)."""
    import torch

    B, M, K = x3.shape
    c = torch.empty((B, M, M), device=x3.device, dtype=x3.dtype)

    def grid(meta):
        n = triton.cdiv(M, meta["BM"])
        return (n * (n + 1) // 2, B)

    launch(_KERNEL)[grid](x3, c, M, K, x3.stride(0), x3.stride(1), c.stride(0), c.stride(1), B,
                          EVEN_K=(K % 128 == 0) if not _META else (K % _META["BK"] == 0),
                          UPCAST=interpreting(), IEEE=(prec == "ieee"), MIRROR=interpreting(), **_META)
    return c
