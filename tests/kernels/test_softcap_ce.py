"""softcap_cross_entropy vs a float64 oracle: loss and grads of x and weight."""
import pytest
import torch

import kernels
from _oracle import BOUND, needs_cuda, needs_interp, rel


def oracle(x, w, t, softcap, reduction, ignore_index=-100):
    """Independent float64 formulation, grads by autograd."""
    xd = x.detach().double().requires_grad_()
    wd = w.detach().double().requires_grad_()
    z = xd @ wd.t()
    s = softcap * torch.tanh(z / softcap) if softcap else z
    valid = t != ignore_index
    tt = torch.where(valid, t, torch.zeros_like(t))
    rows = torch.logsumexp(s, dim=1) - s.gather(1, tt[:, None])[:, 0]
    rows = torch.where(valid, rows, torch.zeros_like(rows))
    if reduction == "mean":
        loss = rows.sum() / valid.sum().clamp(min=1)
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows
    return loss, xd, wd


def make(N, D, V, dtype, device, seed, n_ignore=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g) * scale
    w = torch.randn(V, D, generator=g) / D**0.5 * 4.0
    t = torch.randint(0, V, (N,), generator=g)
    if n_ignore:
        t[torch.randperm(N, generator=g)[:n_ignore]] = -100
    upstream = torch.randn(N, generator=g).abs() + 0.5
    return (x.to(dtype).to(device).requires_grad_(), w.to(dtype).to(device).requires_grad_(), t.to(device),
            upstream.to(device))


def check(backend, N, D, V, dtype, softcap, reduction, seed, device="cpu", n_ignore=0, chunk_rows=None, scale=1.0):
    x, w, t, up = make(N, D, V, dtype, device, seed, n_ignore, scale)
    kw = {} if chunk_rows is None else {"chunk_rows": chunk_rows}
    loss = kernels.softcap_cross_entropy(x, w, t, softcap, reduction, backend=backend, **kw)
    ref, xd, wd = oracle(x, w, t, softcap, reduction)
    g = up if reduction == "none" else torch.tensor(1.7, device=device)
    loss.backward(g.to(loss.dtype))
    (ref * g.double()).sum().backward()
    b = BOUND[dtype]
    assert loss.dtype == torch.float32
    assert loss.shape == ref.shape
    assert rel(loss, ref) < b, ("loss", rel(loss, ref))
    assert x.grad.dtype == dtype and w.grad.dtype == dtype
    assert rel(x.grad, xd.grad) < b, ("dx", rel(x.grad, xd.grad))
    assert rel(w.grad, wd.grad) < b, ("dw", rel(w.grad, wd.grad))


# ---------------------------------------------------------------- reference path (always runs)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("N,D,V,softcap", [(37, 48, 203, 15.0), (64, 32, 50257 // 64, 30.0), (5, 16, 17, 0.0)])
def test_reference(N, D, V, softcap, reduction, dtype):
    check("torch", N, D, V, dtype, softcap, reduction, seed=N * 1000 + V, n_ignore=2)


def test_auto_on_cpu_uses_reference():
    x, w, t, _ = make(8, 16, 33, torch.float32, "cpu", 0)
    a = kernels.softcap_cross_entropy(x, w, t, 15.0)
    b = kernels.softcap_cross_entropy_reference(x, w, t, 15.0)
    assert torch.equal(a, b)


def test_bad_arguments():
    x, w, t, _ = make(8, 16, 33, torch.float32, "cpu", 0)
    with pytest.raises(ValueError):
        kernels.softcap_cross_entropy(x, w, t, 15.0, reduction="avg")
    with pytest.raises(ValueError):
        kernels.softcap_cross_entropy(x, w[:, :8], t, 15.0)
    with pytest.raises(ValueError):
        kernels.softcap_cross_entropy(x, w, t[:4], 15.0)


# ---------------------------------------------------------------- Triton kernels through the interpreter
@needs_interp
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "N,D,V,softcap,reduction,chunk_rows",
    [
        (37, 48, 203, 15.0, "mean", None),   # nothing a multiple of the tile sizes
        (32, 32, 64, 30.0, "sum", None),     # everything a multiple
        (37, 40, 131, 15.0, "none", 16),     # D % BK != 0, several backward chunks (fp32 dW accumulation)
        (1, 16, 17, 0.0, "mean", None),      # one row, no soft cap
    ],
)
def test_triton_interpreter(N, D, V, softcap, reduction, chunk_rows, dtype):
    check("triton", N, D, V, dtype, softcap, reduction, seed=7 * N + V, n_ignore=min(3, N - 1),
          chunk_rows=chunk_rows)


@needs_interp
def test_triton_interpreter_large_logits_saturate():
    # |z| >> softcap: tanh saturates; the loss must stay finite and match
    check("triton", 19, 32, 70, torch.float32, 5.0, "mean", seed=3, scale=30.0)


@needs_interp
def test_triton_interpreter_all_ignored():
    x, w, t, _ = make(9, 16, 40, torch.float32, "cpu", 1)
    t[:] = -100
    loss = kernels.softcap_cross_entropy(x, w, t, 15.0, backend="triton")
    loss.backward()
    assert loss.item() == 0.0 and x.grad.abs().max() == 0 and w.grad.abs().max() == 0


# ---------------------------------------------------------------- GPU (compiled Triton)
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("N,D,V,reduction,chunk_rows", [(4099, 768, 50257, "mean", 1536), (513, 256, 1000, "none", None)])
def test_gpu(N, D, V, reduction, chunk_rows, dtype):
    check("auto", N, D, V, dtype, 15.0, reduction, seed=11 + N, device="cuda", n_ignore=5, chunk_rows=chunk_rows)


@needs_interp
def test_triton_interpreter_dz_zeroes_padding_columns():
    # the backward's dz buffer is fresh (torch.empty) with a padded row; its pad columns must come out as zeros,
    # since dx = dz @ W_padded would turn NaN garbage there into NaN gradients
    from kernels import _softcap_ce_triton as K

    x, w, t, _ = make(21, 16, 45, torch.float32, "cpu", 2)
    x, w = x.detach(), w.detach()
    lse = torch.logsumexp(15.0 * torch.tanh(x @ w.t() / 15.0), dim=1)
    dz = torch.full((21, 64), float("nan"))
    K.ce_dz(x, w, t, lse, torch.ones(21), dz, 15.0, "ieee")
    assert torch.isfinite(dz).all() and dz[:, 45:].abs().max() == 0
