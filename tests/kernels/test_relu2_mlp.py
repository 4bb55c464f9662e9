"""relu2_mlp_up vs a float64 oracle: output and grads of x and w_up."""
import pytest
import torch

import kernels
from _oracle import BOUND, needs_cuda, needs_interp, rel


def check(backend, lead, D, H, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, D, generator=g).to(dtype).to(device).requires_grad_()
    w = (torch.randn(H, D, generator=g) / D**0.5).to(dtype).to(device).requires_grad_()
    dy = torch.randn(*lead, H, generator=g).to(dtype).to(device)
    y = kernels.relu2_mlp_up(x, w, backend=backend)
    y.backward(dy)
    xd = x.detach().double().requires_grad_()
    wd = w.detach().double().requires_grad_()
    yr = torch.clamp(xd @ wd.t(), min=0) ** 2
    yr.backward(dy.double())
    b = BOUND[dtype]
    assert y.shape == yr.shape and y.dtype == dtype
    assert rel(y, yr) < b, ("y", rel(y, yr))
    assert rel(x.grad, xd.grad) < b, ("dx", rel(x.grad, xd.grad))
    assert rel(w.grad, wd.grad) < b, ("dw", rel(w.grad, wd.grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead,D,H", [((37,), 48, 200), ((2, 9), 32, 128), ((1,), 16, 17)])
def test_reference(lead, D, H, dtype):
    check("torch", lead, D, H, dtype, seed=D * 100 + H)


def test_auto_on_cpu_uses_reference():
    x = torch.randn(5, 8)
    w = torch.randn(12, 8)
    assert torch.equal(kernels.relu2_mlp_up(x, w), kernels.relu2_mlp_up_reference(x, w))
    with pytest.raises(ValueError):
        kernels.relu2_mlp_up(x, w[:, :4])


@needs_interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lead,D,H", [((37,), 48, 70), ((2, 16), 32, 64), ((3, 5), 40, 33), ((1,), 16, 17)])
def test_triton_interpreter(lead, D, H, dtype):
    check("triton", lead, D, H, dtype, seed=D * 100 + H + 1)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("lead,D,H", [((4, 1025), 768, 3072), ((333,), 200, 1000)])
def test_gpu(lead, D, H, dtype):
    check("auto", lead, D, H, dtype, seed=D + H, device="cuda")
