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
    # mirrored exactly: the upper triangle is the stored transpose of the lower one
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
