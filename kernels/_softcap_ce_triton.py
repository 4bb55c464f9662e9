"""Triton kernels for the fused soft-capped LM-head cross-entropy (imported lazily; see softcap_ce.py).

Forward: ``_ce_fwd_kernel`` tiles (rows x vocab); each program owns BM rows and one slice of the
vocabulary, computes logit tiles on the fly (x_blk @ W_tile^T, fp32 accumulators), applies the
soft cap and keeps an online logsumexp (running max m, running sum l) plus the target's logit.
Only (split, row) partials leave the chip: O(N * splits) floats, never the (N, V) logits.
Backward: ``_ce_dz_kernel`` recomputes each logit tile and writes dL/dz (softmax - onehot, times the
soft cap's derivative and the row's upstream grad) in the input dtype for one chunk of rows, zeros in
any padding columns; the two products dx = dz @ W and dW += dz^T @ x then run through cuBLAS.
Launches go through ``_common.launch`` so torch.compile can trace them (see softcap_ce.py's ops).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import interpreting, launch
from ._tiles import dot_rows, grouped_tile


@triton.jit
def _tanh(x):
    # tanh(x) = sign(x) * (1 - e) / (1 + e), e = exp(-2|x|) in (0, 1]: no overflow, saturates to +-1
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _ce_fwd_kernel(
    X, W, T, M_OUT, L_OUT, ZT_OUT,
    N, V, D, stride_x, stride_w,
    SOFTCAP: tl.constexpr,
    HAS_CAP: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_split = tl.num_programs(1)
    rm = pid_m * BM + tl.arange(0, BM)
    mmask = rm < N
    rm64 = rm.to(tl.int64)
    tgt = tl.load(T + rm, mask=mmask, other=-1).to(tl.int32)
    n_tiles = tl.cdiv(V, BN)
    per = tl.cdiv(n_tiles, n_split)
    t0 = pid_s * per
    t1 = tl.minimum(t0 + per, n_tiles)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    zt = tl.zeros((BM,), tl.float32)
    for t in range(t0, t1):
        rn = t * BN + tl.arange(0, BN)
        nmask = rn < V
        acc = dot_rows(X, W, rm64, rn.to(tl.int64), mmask, nmask, D, stride_x, stride_w,
                       EVEN_K, UPCAST, IEEE, BM, BN, BK)
        if HAS_CAP:
            s = SOFTCAP * _tanh(acc / SOFTCAP)
        else:
            s = acc
        s = tl.where(nmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
        m_i = m_new
        zt += tl.sum(tl.where(rn[None, :] == tgt[:, None], s, 0.0), axis=1)
    out = pid_s * N + rm
    tl.store(M_OUT + out, m_i, mask=mmask)
    tl.store(L_OUT + out, l_i, mask=mmask)
    tl.store(ZT_OUT + out, zt, mask=mmask)


@triton.jit
def _ce_dz_kernel(
    X, W, T, LSE, G, DZ,
    N, V, V_OUT, D, stride_x, stride_w, stride_dz,
    SOFTCAP: tl.constexpr,
    HAS_CAP: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped ordering: GROUP_M row blocks sweep the vocab together, so W tiles are reused from L2;
    # columns V..V_OUT (row padding of DZ) are written as zeros
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, V_OUT, BM, BN, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < N
    nmask = rn < V
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    acc = dot_rows(X, W, rm64, rn64, mmask, nmask, D, stride_x, stride_w, EVEN_K, UPCAST, IEEE, BM, BN, BK)
    tgt = tl.load(T + rm, mask=mmask, other=-1).to(tl.int32)
    lse = tl.load(LSE + rm, mask=mmask, other=0.0)
    g = tl.load(G + rm, mask=mmask, other=0.0)
    if HAS_CAP:
        th = _tanh(acc / SOFTCAP)
        s = SOFTCAP * th
    else:
        s = acc
    p = tl.exp(s - lse[:, None])
    d = tl.where(rn[None, :] == tgt[:, None], p - 1.0, p) * g[:, None]
    if HAS_CAP:
        d = d * (1.0 - th * th)
    d = tl.where(nmask[None, :], d, 0.0)
    ptrs = DZ + rm64[:, None] * stride_dz + rn64[None, :]
    tl.store(ptrs, d.to(DZ.dtype.element_ty), mask=mmask[:, None] & (rn[None, :] < V_OUT))


def _fwd_configs():
    return [
        triton.Config({"BM": 128, "BN": 128, "BK": 64}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 256, "BK": 64}, num_warps=8, num_stages=3),
    ]


def _dz_configs():
    return [
        triton.Config({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 256, "BK": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BM": 128, "BN": 128, "BK": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ]


if interpreting():
    _FWD = _ce_fwd_kernel
    _DZ = _ce_dz_kernel
    _FWD_META = {"BM": 16, "BN": 32, "BK": 16}
    _DZ_META = {"BM": 16, "BN": 32, "BK": 16, "GROUP_M": 2}
else:
    _FWD = triton.autotune(_fwd_configs(), key=["V", "D", "HAS_CAP", "IEEE"])(_ce_fwd_kernel)
    _DZ = triton.autotune(_dz_configs(), key=["V", "V_OUT", "D", "HAS_CAP", "IEEE"])(_ce_dz_kernel)
    _FWD_META = {}
    _DZ_META = {}


def ce_forward_partials(x, w, targets, softcap, n_split, prec):
    """Returns (m, l, zt), each (n_split, N) fp32. prec: ``_common.dot_precision`` of the inputs."""
    import torch

    N, D = x.shape
    V = w.shape[0]
    m = torch.empty((n_split, N), device=x.device, dtype=torch.float32)
    l = torch.empty_like(m)
    zt = torch.empty_like(m)
    has_cap = softcap is not None and softcap > 0
    cap = float(softcap) if has_cap else 1.0
    bk = _FWD_META.get("BK", 64)
    grid = lambda meta: (triton.cdiv(N, meta["BM"]), n_split)  # noqa: E731
    launch(_FWD)[grid](
        x, w, targets, m, l, zt, N, V, D, x.stride(0), w.stride(0),
        SOFTCAP=cap, HAS_CAP=has_cap, EVEN_K=(D % bk == 0), UPCAST=interpreting(), IEEE=(prec == "ieee"), **_FWD_META,
    )
    return m, l, zt


def ce_dz(x, w, targets, lse, g, dz, softcap, prec):
    """Writes dL/dz for rows of x into dz (rows, >= V), unit column stride; columns >= V get zeros."""
    N, D = x.shape
    V = w.shape[0]
    v_out = dz.shape[1]
    has_cap = softcap is not None and softcap > 0
    cap = float(softcap) if has_cap else 1.0
    bk = _DZ_META.get("BK", 64)
    grid = lambda meta: (triton.cdiv(N, meta["BM"]) * triton.cdiv(v_out, meta["BN"]),)  # noqa: E731
    launch(_DZ)[grid](
        x, w, targets, lse, g, dz, N, V, v_out, D, x.stride(0), w.stride(0), dz.stride(0),
        SOFTCAP=cap, HAS_CAP=has_cap, EVEN_K=(D % bk == 0), UPCAST=interpreting(), IEEE=(prec == "ieee"), **_DZ_META,
    )
