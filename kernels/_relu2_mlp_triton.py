"""Triton kernels for ``relu(x @ w.T) ** 2`` (imported lazily; see relu2_mlp.py).

``_relu2_fwd_kernel``: a tiled matmul (fp32 accumulators) whose epilogue applies relu and squares
before the single store, so the pre-activation never reaches memory.
``_relu2_bwd_kernel``: dh = dy * 2 * relu(h) = 2 * dy * sqrt(y), one elementwise pass; relu(h) is
recovered from the saved output y (in bf16 this is as accurate as saving h in bf16).
Launches go through ``_common.launch`` so torch.compile can trace them (see relu2_mlp.py's ops).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import interpreting, launch
from ._tiles import dot_rows, grouped_tile


@triton.jit
def _relu2_fwd_kernel(
    X, W, Y, M, N, K, stride_x, stride_w, stride_y,
    EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < N
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    acc = dot_rows(X, W, rm64, rn64, mmask, nmask, K, stride_x, stride_w, EVEN_K, UPCAST, IEEE, BM, BN, BK)
    r = tl.maximum(acc, 0.0)
    y = r * r
    tl.store(Y + rm64[:, None] * stride_y + rn64[None, :], y.to(Y.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _relu2_bwd_kernel(DY, Y, DH, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(Y + offs, mask=mask, other=0.0).to(tl.float32)
    dh = 2.0 * dy * tl.sqrt(y)
    tl.store(DH + offs, dh.to(DH.dtype.element_ty), mask=mask)


def _fwd_configs():
    return [
        triton.Config({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ]


if interpreting():
    _FWD = _relu2_fwd_kernel
    _FWD_META = {"BM": 16, "BN": 32, "BK": 16, "GROUP_M": 2}
    _BWD_BLOCK = 256
else:
    _FWD = triton.autotune(_fwd_configs(), key=["M", "N", "K", "IEEE"])(_relu2_fwd_kernel)
    _FWD_META = {}
    _BWD_BLOCK = 4096


def relu2_forward(x2, w, prec):
    import torch

    M, K = x2.shape
    N = w.shape[0]
    y = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    bk = _FWD_META.get("BK", 64)
    grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)  # noqa: E731
    launch(_FWD)[grid](x2, w, y, M, N, K, x2.stride(0), w.stride(0), y.stride(0),
                       EVEN_K=(K % bk == 0), UPCAST=interpreting(), IEEE=(prec == "ieee"), **_FWD_META)
    return y


def relu2_dh(dy, y):
    import torch

    dh = torch.empty_like(y)
    n = y.numel()
    launch(_relu2_bwd_kernel)[(triton.cdiv(n, _BWD_BLOCK),)](dy, y, dh, n, BLOCK=_BWD_BLOCK, num_warps=8)
    return dh
