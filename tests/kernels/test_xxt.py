"""xxt vs a float64 oracle, 2-D and batched, including shapes that are no multiple of the tiles."""
import pytest
import torch

import kernels
from _oracle import BOUND, needs_cuda, needs_interp, rel


def check(backend, shape, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(*shape, generator=g).to(dtype).to(device)
    with torch.no_grad():
        C = kernels.xxt(X, backend=backend)
    Xd = X.double()
    ref = Xd @ Xd.mT
    assert C.shape == ref.shape and C.dtype == dtype
    assert rel(C, ref) < BOUND[dtype], rel(C, ref)
    # exactly symmetric (the kernel's contract, docs/kernels.md): off-diagonal tiles are stored twice; diagonal
    # tiles are mirrored under the interpreter, and the GPU's dot sums entries (r, c) and (c, r) in one order
    assert torch.equal(C, C.mT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(50, 70), (3, 33, 20)])
def test_reference(shape, dtype):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(*shape, generator=g).to(dtype)
    ref = X.double() @ X.double().mT
    assert rel(kernels.xxt(X, backend="torch"), ref) < BOUND[dtype]


def test_bad_arguments():
    with pytest.raises(ValueError):
        kernels.xxt(torch.randn(2, 2, 2, 2))


@needs_interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(50, 70), (2, 48, 64), (1, 5), (3, 33, 20), (64, 16), (200, 16)])
def test_triton_interpreter(shape, dtype):
    check("triton", shape, dtype, seed=sum(shape))


@needs_interp
def test_triton_interpreter_symmetric_whatever_the_dot_order(monkeypatch):
    # The interpreter's tl.dot is numpy's matmul, whose BLAS may sum C[r, c] and C[c, r] of one tile in
    # different orders (float32 on an AMD EPYC machine: up to 2.9e-6 apart). Emulate such a BLAS: every
    # square dot result gets its strict upper triangle nudged by one ulp. The output must stay exactly
    # symmetric, because diagonal tiles are mirrored rather than computed in full.
    import numpy as np
    from triton.runtime import interpreter

    plain = interpreter.InterpreterBuilder.create_dot
    seen = []

    def skewed(self, a, b, d, *args):
        out = plain(self, a, b, d, *args)
        x = out.data
        if x.ndim == 2 and x.shape[0] == x.shape[1]:
            up = np.triu(np.ones(x.shape, dtype=bool), 1)
            x[up] = np.nextafter(x[up], np.inf)
            seen.append(x.shape)
        return out

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_dot", skewed)
    check("triton", (40, 24), torch.float32, seed=3)
    assert seen, "the interpreter no longer goes through InterpreterBuilder.create_dot"


@needs_interp
def test_triton_interpreter_backward():
    # the op's backward (G + G^T) @ X against autograd through X @ X^T in float64
    g = torch.Generator().manual_seed(5)
    X = torch.randn(2, 9, 13, generator=g, requires_grad=True)
    G = torch.randn(2, 9, 9, generator=g)
    kernels.xxt(X, backend="triton").backward(G)
    Xd = X.detach().double().requires_grad_()
    (Xd @ Xd.mT).backward(G.double())
    assert rel(X.grad, Xd.grad) < BOUND[torch.float32]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(768, 768), (768, 3072), (4, 768, 3072), (12, 768, 768), (5, 200, 130), (1000, 300)])
def test_gpu(shape, dtype):
    check("auto", shape, dtype, seed=sum(shape), device="cuda")
