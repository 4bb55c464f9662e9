"""Tile pieces the Triton kernels share (inlined by Triton's compiler, so they cost nothing at run time)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(row block, column block) of program `pid` in grouped order: GROUP_M row blocks sweep the columns
    together, so the column operand's tiles are reused from L2."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    gsize = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % gsize, (pid % width) // gsize


@triton.jit
def dot_rows(A, B, ra64, rb64, amask, bmask, K, stride_a, stride_b,
             EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
             BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """acc[i, j] = sum_k A[ra_i, k] * B[rb_j, k], fp32 accumulators: a tile of A @ B^T for row-major A and B
    (unit stride along K). Rows outside `amask` / `bmask` read as zeros. IEEE: exact fp32 products (for fp32
    inputs; bf16/fp16 use the tensor cores either way)."""
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        if EVEN_K:
            a = tl.load(A + ra64[:, None] * stride_a + kk[None, :], mask=amask[:, None], other=0.0)
            b = tl.load(B + rb64[None, :] * stride_b + kk[:, None], mask=bmask[None, :], other=0.0)
        else:
            a = tl.load(A + ra64[:, None] * stride_a + kk[None, :], mask=amask[:, None] & (kk[None, :] < K), other=0.0)
            b = tl.load(B + rb64[None, :] * stride_b + kk[:, None], mask=bmask[None, :] & (kk[:, None] < K), other=0.0)
        if UPCAST:  # interpreter: numpy has no bf16 matmul
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    return acc
