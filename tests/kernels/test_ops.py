"""The kernels as PyTorch operators (speedrun_kernels::*): registration checks (opcheck), float64 gradients
of the reference path, torch.compile(fullgraph=True) on CPU, and a trace of the Triton path without a GPU."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernels
from _oracle import rel
from kernels._common import triton_available

ops = torch.ops.speedrun_kernels


def _ce_inputs(N, D, V, dtype, seed, n_ignore=2, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=dtype)
    w = torch.randn(V, D, generator=g, dtype=dtype) / D**0.5 * 4.0
    t = torch.randint(0, V, (N,), generator=g)
    t[:n_ignore] = -100
    return x.requires_grad_(requires_grad), w.requires_grad_(requires_grad), t


# ---------------------------------------------------------------- registration (fake, autograd, schema)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("softcap", [15.0, 0.0])
def test_opcheck_softcap_ce(reduction, softcap):
    x, w, t = _ce_inputs(13, 16, 37, torch.float32, seed=1)
    torch.library.opcheck(ops.softcap_ce_fwd, (x, w, t, softcap, reduction, -100, 0, False))
    loss, lse = ops.softcap_ce_fwd(x, w, t, softcap, reduction, -100, 0, False)
    grad = torch.rand_like(loss)
    xd, wd = x.detach(), w.detach()
    torch.library.opcheck(ops.softcap_ce_bwd, (grad, xd, wd, t, lse.detach(), softcap, reduction, -100, 0, False))


def test_opcheck_relu2_mlp():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(11, 16, generator=g, requires_grad=True)
    w = torch.randn(24, 16, generator=g, requires_grad=True)
    torch.library.opcheck(ops.relu2_mlp_up, (x, w, False))
    y = ops.relu2_mlp_up(x.detach(), w.detach(), False)
    torch.library.opcheck(ops.relu2_dh, (torch.randn(11, 24, generator=g), y, False))


def test_opcheck_xxt():
    X = torch.randn(3, 9, 14, generator=torch.Generator().manual_seed(3), requires_grad=True)
    torch.library.opcheck(ops.xxt, (X, False))


# ---------------------------------------------------------------- float64 gradients of the reference path
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("softcap", [5.0, 0.0])
def test_softcap_ce_float64_gradients(reduction, softcap):
    """The op's closed-form backward against autograd through the plain reference and finite differences."""
    x, w, t = _ce_inputs(9, 7, 11, torch.float64, seed=4)
    f = lambda x, w: kernels.softcap_cross_entropy(x, w, t, softcap, reduction)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w))
    up = torch.rand(9, dtype=torch.float64) if reduction == "none" else torch.tensor(1.3, dtype=torch.float64)
    loss = f(x, w)
    dx, dw = torch.autograd.grad(loss, (x, w), up)
    ref = kernels.softcap_cross_entropy_reference(x, w, t, softcap, reduction)
    rdx, rdw = torch.autograd.grad(ref, (x, w), up)
    assert loss.dtype == torch.float64
    assert rel(loss, ref) < 1e-14 and rel(dx, rdx) < 1e-12 and rel(dw, rdw) < 1e-12


def test_relu2_and_xxt_float64_gradients():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 6, generator=g, dtype=torch.float64, requires_grad=True)
    X = torch.randn(2, 4, 7, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: kernels.relu2_mlp_up(x, w), (x, w))
    assert torch.autograd.gradcheck(lambda X: kernels.xxt(X), (X,))
    assert torch.autograd.gradcheck(lambda X: kernels.xxt(X[0]), (X,))
    dy = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad(kernels.relu2_mlp_up(x, w), (x, w), dy)
    ref = torch.autograd.grad(kernels.relu2_mlp_up_reference(x, w), (x, w), dy)
    assert all(rel(a, b) < 1e-12 for a, b in zip(ours, ref))


# ---------------------------------------------------------------- torch.compile on CPU (reference path)
@pytest.mark.slow
def test_compile_fullgraph_matches_eager():
    """All three ops in one compiled function (inductor, no graph break allowed), forward and backward."""
    x, w, t = _ce_inputs(37, 32, 203, torch.float32, seed=6)
    g = torch.Generator().manual_seed(7)
    w_up = (torch.randn(64, 32, generator=g) / 32**0.5).requires_grad_()
    X = torch.randn(2, 24, 40, generator=g, requires_grad=True)

    def f(x, w, t, w_up, X):
        ce = kernels.softcap_cross_entropy(x, w, t, 15.0)
        h = kernels.relu2_mlp_up(x.view(37, 1, 32), w_up)
        return ce + h.square().mean() + kernels.xxt(X).mean() + kernels.xxt(X[0]).mean()

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    params = (x, w, w_up, X)
    eager_loss = f(x, w, t, w_up, X)
    eager_grads = torch.autograd.grad(eager_loss, params)
    loss = compiled(x, w, t, w_up, X)
    grads = torch.autograd.grad(loss, params)
    assert rel(loss, eager_loss) < 1e-5
    for a, b in zip(grads, eager_grads):
        assert rel(a, b) < 1e-5


def test_compile_sees_the_ops():
    """The compiled graph holds the operators themselves (no graph break, nothing run outside the graph)."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    x, w, t = _ce_inputs(8, 16, 20, torch.float32, seed=8, requires_grad=False)
    w_up = torch.randn(24, 16)

    def f(x, w, t, w_up):
        return kernels.softcap_cross_entropy(x, w, t, 15.0), kernels.relu2_mlp_up(x, w_up), kernels.xxt(x)

    torch._dynamo.reset()
    out = torch.compile(f, backend=backend, fullgraph=True)(x, w, t, w_up)
    assert len(graphs) == 1
    targets = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert {"speedrun_kernels.softcap_ce_fwd.default", "speedrun_kernels.relu2_mlp_up.default",
            "speedrun_kernels.xxt.default"} <= targets, targets
    assert torch.equal(out[0], kernels.softcap_cross_entropy_reference(x, w, t, 15.0))


# ---------------------------------------------------------------- the Triton path as torch.compile traces it
@pytest.mark.skipif(not triton_available(), reason="needs triton: pip install -e '.[dev]' (x86-64 Linux)")
def test_triton_path_traces_into_kernel_launches():
    """AOTAutograd's forward+backward trace of the Triton path (stand-ins: see _trace_triton_path.py) records
    every kernel launch as a graph node, each writing only the buffers it allocates (no input mutation)."""
    script = Path(__file__).with_name("_trace_triton_path.py")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    writes = {}
    for launch in report["launches"]:
        writes.setdefault(launch["kernel"], set()).update(launch["writes"])
    assert writes == {"_ce_fwd_kernel": {"M_OUT", "L_OUT", "ZT_OUT"}, "_ce_dz_kernel": {"DZ"},
                      "_relu2_fwd_kernel": {"Y"}, "_relu2_bwd_kernel": {"DH"}, "_xxt_kernel": {"C"}}, report
    assert sum(launch["kernel"] == "_ce_dz_kernel" for launch in report["launches"]) == 3  # 300 rows, chunks of 128
    assert report["opaque_ops"] == []  # decomposed into the kernels, nothing left opaque
