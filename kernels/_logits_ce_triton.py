"""Triton kernels for the soft-capped cross-entropy over logits that cuBLAS already wrote (see logits_ce.py).

Each logit costs a few transcendental operations, and those (the GPU's special-function units: 16 per
SM per clock) bound these passes more than memory does, so the cap is computed the cheap way:
  FAST (CUDA)     c = S tanh.approx(z / S) - S: one MUFU op (PTX tanh.approx.f32, max relative error 2^-10.7,
                  under bf16's 2^-8 of the logits themselves); derivative 1 - tanh^2
  interpreter     c = 2S sigmoid(2z / S) - 2S from e = exp(-|2z / S|) (no inline PTX on the CPU)
Both are S tanh(z / S) shifted by a constant, which cross-entropy ignores, and both are <= 0, so the
logsumexp needs no running max: sum(exp(c)) <= V. The forward reads each logit once, the backward once
and writes dL/dz once (in the logits' dtype, or e5m2 / scale for the FP8 head).

  _fwd_kernel        one program per row: the row's lse (of the shifted logits) and loss lse - c[target]
  _bwd_kernel        tiles of BM rows x BV logits: dL/dz = g_row (softmax - onehot) dc/dz
  _transpose_kernel  the FP8 gradient transposed (vocab x tokens, what the weight-gradient product reads),
                     tile by tile through registers so that reads and writes are both coalesced
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import interpreting, launch


@triton.jit
def _tanh_approx(x):
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _capped(z, SOFTCAP: tl.constexpr, FAST: tl.constexpr):
    """(c, d): the capped logits shifted to <= 0, and the cap's derivative dc/dz (unused without a cap)."""
    if SOFTCAP > 0:
        if FAST:
            th = _tanh_approx(z * (1.0 / SOFTCAP))
            return SOFTCAP * th - SOFTCAP, 1.0 - th * th
        else:
            e = tl.exp2(tl.abs(z) * (-2.0 * 1.4426950408889634 / SOFTCAP))  # in (0, 1]: no overflow
            r = 1.0 / (1.0 + e)
            s = tl.where(z >= 0, r, e * r)  # sigmoid(2z / S)
            return (2.0 * SOFTCAP) * s - 2.0 * SOFTCAP, 4.0 * e * r * r
    else:
        return z, z


@triton.jit
def _fwd_kernel(z_ptr, stride_z, t_ptr, loss_ptr, lse_ptr, V, SOFTCAP: tl.constexpr, FAST: tl.constexpr,
                BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = z_ptr + row * stride_z
    cols = tl.arange(0, BLOCK)
    if SOFTCAP > 0:  # c <= 0: no running max needed
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, V, BLOCK):
            mask = start + cols < V
            z = tl.load(base + start + cols, mask=mask, other=0.0).to(tl.float32)
            c, _ = _capped(z, SOFTCAP, FAST)
            acc += tl.where(mask, tl.exp2(c * 1.4426950408889634), 0.0)
        lse = tl.log(tl.sum(acc, axis=0))
    else:  # uncapped: online logsumexp per lane
        m = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, V, BLOCK):
            mask = start + cols < V
            z = tl.load(base + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, z)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            acc = acc * tl.exp2((m - m_safe) * 1.4426950408889634) + tl.exp2((z - m_safe) * 1.4426950408889634)
            m = m_new
        mx = tl.max(m, axis=0)
        lse = mx + tl.log(tl.sum(acc * tl.exp2((m - mx) * 1.4426950408889634), axis=0))
    t = tl.load(t_ptr + row)
    ct, _ = _capped(tl.load(base + t).to(tl.float32), SOFTCAP, FAST)
    tl.store(loss_ptr + row, lse - ct)
    tl.store(lse_ptr + row, lse)


@triton.jit
def _bwd_kernel(z_ptr, stride_z, t_ptr, lse_ptr, g_ptr, stride_g, scale_ptr, out_ptr, stride_out, M, V,
                SOFTCAP: tl.constexpr, FAST: tl.constexpr, FP8: tl.constexpr, BM: tl.constexpr, BV: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_v * BV + tl.arange(0, BV)
    rmask = rows < M
    mask = rmask[:, None] & (cols < V)[None, :]
    rows64 = rows.to(tl.int64)
    z = tl.load(z_ptr + rows64[:, None] * stride_z + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    t = tl.load(t_ptr + rows, mask=rmask, other=-1)
    g = tl.load(g_ptr + rows64 * stride_g, mask=rmask, other=0.0)
    c, deriv = _capped(z, SOFTCAP, FAST)
    p = tl.exp2((c - lse[:, None]) * 1.4426950408889634)
    d = tl.where(cols[None, :] == t[:, None], p - 1.0, p) * g[:, None]
    if SOFTCAP > 0:
        d = d * deriv
    out = out_ptr + rows64[:, None] * stride_out + cols[None, :]
    if FP8:
        q = tl.clamp(d * (1.0 / tl.load(scale_ptr)), -57344.0, 57344.0)
        tl.store(out, q.to(tl.float8e5), mask=mask)
    else:
        tl.store(out, d.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _transpose_kernel(src_ptr, dst_ptr, M, V, stride_src, stride_dst, BM: tl.constexpr, BV: tl.constexpr):
    """dst[v, m] = src[m, v] for m < M; dst's columns M..stride_dst get zeros (bytes: any 1-byte dtype)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BV + tl.arange(0, BV)
    tile = tl.load(src_ptr + rows.to(tl.int64)[:, None] * stride_src + cols[None, :],
                   mask=(rows < M)[:, None] & (cols < V)[None, :], other=0)
    tl.store(dst_ptr + cols.to(tl.int64)[:, None] * stride_dst + rows[None, :], tl.trans(tile),
             mask=(cols < V)[:, None] & (rows < stride_dst)[None, :])


def forward(z, targets, loss, lse, softcap: float):
    M, V = z.shape
    launch(_fwd_kernel)[(M,)](z, z.stride(0), targets, loss, lse, V, SOFTCAP=softcap, FAST=not interpreting(),
                              BLOCK=2048, num_warps=8)


def backward(z, targets, lse, g, scale, out, out_t, softcap: float, fp8: bool):
    """dL/dz into out; with fp8 also its transpose into out_t (whose columns past M, up to its row stride,
    get zeros)."""
    M, V = z.shape
    BM, BV = 32, 256
    launch(_bwd_kernel)[(triton.cdiv(M, BM), triton.cdiv(V, BV))](
        z, z.stride(0), targets, lse, g, g.stride(0), scale, out, out.stride(0), M, V,
        SOFTCAP=softcap, FAST=not interpreting(), FP8=fp8, BM=BM, BV=BV, num_warps=8)
    if fp8:
        Mt = out_t.shape[1]
        src, dst = out.view(torch.uint8), out_t.view(torch.uint8)
        launch(_transpose_kernel)[(triton.cdiv(Mt, 64), triton.cdiv(V, 64))](
            src, dst, M, V, src.stride(0), dst.stride(0), BM=64, BV=64, num_warps=4)
