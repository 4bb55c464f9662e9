"""The FP8 head (`--fp8-head`, trainer/fp8.py) and the SDPA backend choice (`--sdpa-backend`).

CPU: the FP8 op's numerics against float64 (forward, grad_x, grad_W), the op and the backend choice
inside torch.compile (one graph, same numbers as eager), the tiny preset training with the FP8 head,
and bad values. GPU (marked `gpu`, skipped without CUDA): the real `torch._scaled_mm` path against the
bf16 head, and training with FP8 / cuDNN attention.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from trainer.fp8 import E4M3, E5M2, fp8_head, quantise

LINE = re.compile(r"^trainer: error: .+ \(.+\)$")

# Rounding to a float format with p mantissa bits moves a normal value by at most 2^-(p+1) of itself
# (e4m3: p = 3, e5m2: p = 2) and a subnormal one by at most half the subnormal spacing (e4m3: 2^-9,
# e5m2: 2^-16, in units of the scale). The fp32 scale division and accumulation add ~K * 2^-24.
U = {E4M3: 2.0 ** -4, E5M2: 2.0 ** -3}
D = {E4M3: 2.0 ** -10, E5M2: 2.0 ** -17}
# For Gaussian data spread over binades the relative rounding error has an RMS of about
# ulp / sqrt(12) ~ 2^-p * 0.72 / sqrt(3): 0.026 for e4m3, 0.051 for e5m2. A product of two quantised
# operands then has a relative Frobenius error near sqrt(0.026^2 + 0.026^2) = 0.037 (forward) and
# sqrt(0.051^2 + 0.026^2) = 0.057 (gradients); the bounds below allow 1.5x that.
RMS_BOUND_FWD, RMS_BOUND_GRAD = 0.055, 0.085


def _error_bound(a, b, ta, tb):
    """Elementwise bound of |quantised(a) @ quantised(b) - a @ b| (float64) for formats ta, tb."""
    sa = a.abs().max() / torch.finfo(ta).max
    sb = b.abs().max() / torch.finfo(tb).max
    ea = U[ta] * a.abs() + D[ta] * sa
    eb = U[tb] * b.abs() + D[tb] * sb
    k = a.size(1)
    accum = (k + 4) * 2.0 ** -24 * ((a.abs() + ea) @ (b.abs() + eb))
    return ea @ b.abs() + a.abs() @ eb + ea @ eb + accum


def _rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def _inputs(m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g, dtype=torch.float64)
    w = torch.randn(n, k, generator=g, dtype=torch.float64) * 0.03
    w[0] *= 20  # one large row: a wide range under one per-tensor scale
    grad = torch.randn(m, n, generator=g, dtype=torch.float64) * 3e-5
    return x, w, grad


@pytest.mark.parametrize("m,seed", [(64, 0), (72, 1), (200, 2)])  # 72, 200: token counts padded to 16s
def test_fp8_head_numerics_against_float64(m, seed):
    x, w, grad = _inputs(m, 96, 256, seed)
    xf, wf = x.float().requires_grad_(), w.float().requires_grad_()
    out = fp8_head(xf, wf)
    out.backward(grad.float())
    assert out.dtype == torch.float32 and out.shape == (m, 256)
    ref, ref_gx, ref_gw = x @ w.T, grad @ w, grad.T @ x
    checks = [(out, ref, _error_bound(x, w.T, E4M3, E4M3)),
              (xf.grad, ref_gx, _error_bound(grad, w, E5M2, E4M3)),
              (wf.grad, ref_gw, _error_bound(grad.T, x, E5M2, E4M3))]
    for got, want, bound in checks:
        assert ((got.double() - want).abs() <= bound).all()
    assert _rel(out, ref) < RMS_BOUND_FWD
    assert _rel(xf.grad, ref_gx) < RMS_BOUND_GRAD and _rel(wf.grad, ref_gw) < RMS_BOUND_GRAD
    # and it is not simply exact: the quantisation is really there
    assert _rel(out, ref) > 1e-3


def test_quantise_saturates_nothing_and_keeps_zero():
    t = torch.tensor([0.0, 1e-3, -2.5, 7.0])
    for dtype in (E4M3, E5M2):
        q, s = quantise(t, dtype)
        assert q.dtype == dtype and torch.isfinite(q.float()).all()
        assert q.float().abs().max().item() == torch.finfo(dtype).max  # the amax lands on the format's max
        assert q[0].item() == 0
    q, s = quantise(torch.zeros(4, 4), E4M3)  # the zero-initialised head at step 0
    assert (q.float() == 0).all() and s.item() > 0


def test_zero_head_gives_zero_logits_and_finite_grads():
    x = torch.randn(32, 96, requires_grad=True)
    w = torch.zeros(256, 96, requires_grad=True)
    out = fp8_head(x, w)
    out.sum().backward()
    assert (out == 0).all() and (x.grad == 0).all()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_cross_entropy_with_fp8_head_tracks_fp32():
    """The whole head + softcap + cross-entropy, with the real (one-hot dominated) logit gradient."""
    from trainer.model import softcap_cross_entropy

    g = torch.Generator().manual_seed(3)
    x = F.rms_norm(torch.randn(4, 64, 96, generator=g), (96,))
    w = torch.randn(256, 96, generator=g) * 0.05
    y = torch.randint(0, 256, (4, 64), generator=g)
    losses, grads = [], []
    for fp8 in (False, True):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = softcap_cross_entropy(xi, wi, y, 15.0, fp8=fp8)
        loss.backward()
        losses.append(loss.item())
        grads.append((xi.grad.flatten(), wi.grad.flatten()))
    assert abs(losses[1] - losses[0]) < 0.01 * losses[0]
    for a, b in zip(*grads):
        assert F.cosine_similarity(a, b, dim=0) > 0.99


def test_static_gradient_bound_holds_and_matches_the_dynamic_scale():
    """The head's e5m2 scale for the logits' gradient is the bound 1/M of a mean cross-entropy over M rows
    (no amax pass). The bound really bounds the gradient, even of confident wrong predictions, and the
    gradients equal (within e5m2 rounding) those of the amax-scaled path."""
    from trainer.model import softcap_cross_entropy

    g = torch.Generator().manual_seed(5)
    m = 96
    x = F.rms_norm(torch.randn(m, 96, generator=g), (96,))
    w = torch.randn(256, 96, generator=g) * 0.5  # large logits: near one-hot softmax, gradients near +-1/M
    y = torch.randint(0, 256, (m,), generator=g)
    logits = (x @ w.T).requires_grad_()
    F.cross_entropy(15.0 * torch.tanh(logits / 15.0), y).backward()
    assert logits.grad.abs().max() <= 1.0 / m and logits.grad.abs().max() > 0.5 / m  # tight and holding
    grads = {}
    for name, bound in (("static", 1.0 / m), ("dynamic", 0.0)):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = fp8_head(xi, wi, bound)
        F.cross_entropy(15.0 * torch.tanh(out.float() / 15.0), y).backward()
        grads[name] = (xi.grad, wi.grad)
    for a, b in zip(grads["static"], grads["dynamic"]):
        assert _rel(a, b.double()) < 0.05 and torch.isfinite(a).all()
    # the model's head passes the bound: its gradients are those of the static path
    xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
    softcap_cross_entropy(xi, wi, y, 15.0, fp8=True).backward()
    torch.testing.assert_close(xi.grad, grads["static"][0])
    q, s = quantise(torch.tensor([0.5, -2.0, 1e-3]), E5M2, bound=1.0)  # beyond the bound: saturates
    assert q.float().tolist()[1] == -torch.finfo(E5M2).max and s.item() == pytest.approx(1.0 / torch.finfo(E5M2).max)


@pytest.mark.parametrize("fp8", [False, True])
def test_fused_cross_entropy_path_matches_the_torch_path(fp8):
    """--ce-kernel triton (kernels/logits_ce.py; on CPU its operators run their PyTorch reference): the same
    loss and gradients as the plain path, with and without the FP8 head; one compiled graph."""
    from trainer.model import softcap_cross_entropy

    g = torch.Generator().manual_seed(7)
    x = F.rms_norm(torch.randn(2, 64, 96, generator=g), (96,))
    w = torch.randn(256, 96, generator=g) * 0.05
    y = torch.randint(0, 256, (2, 64), generator=g)
    out = {}
    for ce in ("torch", "triton"):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = softcap_cross_entropy(xi, wi, y, 15.0, fp8=fp8, ce_kernel=ce)
        loss.backward()
        out[ce] = (loss, xi.grad, wi.grad)
    for a, b in zip(out["torch"], out["triton"]):
        if fp8:  # both e5m2 under the same scale; the two cap formulas can round a value to neighbouring codes
            assert _rel(b, a.double()) < 1e-2
        else:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)

    def f(x, w, y):
        return softcap_cross_entropy(x, w, y, 15.0, fp8=fp8, ce_kernel="triton")

    assert torch._dynamo.explain(f)(x, w, y).graph_break_count == 0


def test_fp8_head_in_torch_compile_is_one_graph_and_matches_eager():
    def loss_fn(x, w, y):
        return F.cross_entropy(fp8_head(x, w).float(), y)

    x0 = torch.randn(72, 96)
    w0 = torch.randn(256, 96) * 0.05
    y = torch.randint(0, 256, (72,))
    explained = torch._dynamo.explain(loss_fn)(x0, w0, y)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    results = []
    for fn in (loss_fn, torch.compile(loss_fn, fullgraph=True, dynamic=False)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = fn(x, w, y)
        loss.backward()
        results.append((loss, x.grad, w.grad))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-7)


def _captured_forward_graph(model, *args):
    """Compile model with an AOT backend that keeps the forward graph's text; run it once."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def keep(gm, _inputs):
        graphs.append(gm.code)
        return make_boxed_func(gm.forward)

    compiled = torch.compile(model, backend=aot_autograd(fw_compiler=keep), fullgraph=True, dynamic=False)
    loss = compiled(*args)
    loss.backward()
    return loss, graphs[0]


@pytest.mark.parametrize("backend", ["math", "flash"])
def test_sdpa_backend_and_fp8_head_inside_compile(backend):
    """One graph, no break; the chosen kernel is what the compiled graph runs (CPU has math and flash)."""
    from trainer.config import parse_config
    from trainer.model import GPT

    cfg = parse_config(["--n-layer", "1", "--fp8-head", "1", "--sdpa-backend", backend], {})
    torch.manual_seed(0)
    model = GPT(cfg, 64, "sdpa")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.05)
    idx = torch.randint(0, 256, (2, 64))
    explained = torch._dynamo.explain(model)(idx, idx, (64, 64))
    assert explained.graph_break_count == 0
    eager = model(idx, idx, (64, 64))
    loss, code = _captured_forward_graph(model, idx, idx, (64, 64))
    assert "trainer.fp8_head" in code
    assert ("_scaled_dot_product_flash_attention_for_cpu" in code) == (backend == "flash")
    torch.testing.assert_close(loss, eager, rtol=1e-4, atol=1e-5)


def test_tiny_preset_trains_with_fp8_head(run_trainer):
    p = run_trainer("--num-steps", "300", "--fp8-head", "1", "--sdpa-backend", "math")
    assert p.returncode == 0, p.stderr
    start, final = p.metrics[0], p.metrics[-1]
    assert start["config"]["fp8_head"] is True and start["config"]["sdpa_backend"] == "math"
    vals = [m["val_loss"] for m in p.metrics if m["event"] == "val"]
    assert final["exit_reason"] == "completed"
    assert vals[-1] < vals[0] - 2.0  # ln(256) = 5.55 -> 2.3 (fp32 head: 2.27 with the same seed)


@pytest.mark.parametrize("args,needle", [
    (["--fp8-head", "2"], "not a boolean"),
    (["--sdpa-backend", "fast"], "--sdpa-backend 'fast' unknown"),
    (["--sdpa-backend", "flash", "--attn", "flex"], "applies to --attn sdpa"),
    (["--fp8-head", "1", "--model-dim", "120", "--n-head", "3"], "divisible by 16"),
    (["--fp8-head", "1", "--vocab-size", "260"], "divisible by 16"),
    (["--fp8-head", "1", "--kernels", "triton"], "--kernels triton"),
    (["--sdpa-backend", "cudnn", "--device", "cpu"], "needs CUDA"),
    (["--sdpa-backend", "flash", "--attn", "varlen"], "applies to --attn sdpa"),
    (["--attn", "varlen", "--device", "cpu"], "--attn varlen needs CUDA"),
    (["--attn", "flash"], "--attn 'flash' unknown"),
])
def test_bad_values_exit_2(run_trainer, args, needle):
    p = run_trainer(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]), p.stderr
    assert needle in lines[0] and "@@metrics" not in p.stdout


def test_bad_env_values_exit_2(run_trainer):
    p = run_trainer(env={"TRAINER_SDPA_BACKEND": "cuDNN"})
    assert p.returncode == 2 and "'cuDNN' unknown" in p.stderr and LINE.match(p.stderr.strip())
    p = run_trainer(env={"TRAINER_FP8_HEAD": "yes please"})
    assert p.returncode == 2 and "TRAINER_FP8_HEAD" in p.stderr and LINE.match(p.stderr.strip())


# ---------------------------------------------------------------------------------------------
# GPU (real torch._scaled_mm; skipped without a CUDA GPU with FP8 matmuls)

needs_fp8_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
    reason="needs a CUDA GPU with FP8 matmuls (compute capability 8.9+)")


@pytest.mark.gpu
@needs_fp8_gpu
def test_gpu_scaled_mm_path_matches_bf16_head_and_the_cpu_emulation():
    x, w, grad = _inputs(1000, 768, 8192, 4)  # 1000 tokens: padded to 1008 for grad_W
    grad = grad.bfloat16().double()  # the logits' gradient arrives in bf16 on CUDA; the same values on CPU
    outs = {}
    for name, dev, fn in [("bf16", "cuda", lambda a, b: F.linear(a.bfloat16(), b.bfloat16())),
                          ("fp8", "cuda", fp8_head), ("emulated", "cpu", fp8_head)]:
        xi = x.float().to(dev).requires_grad_()
        wi = w.float().to(dev).requires_grad_()
        out = fn(xi, wi)
        out.backward(grad.to(dev, out.dtype))
        outs[name] = [t.detach().double().cpu() for t in (out, xi.grad, wi.grad)]
    assert fp8_head(x.float().cuda(), w.float().cuda()).dtype == torch.bfloat16
    refs = (x @ w.T, grad @ w, grad.T @ x)
    for i, (ref, bound) in enumerate(zip(refs, (RMS_BOUND_FWD, RMS_BOUND_GRAD, RMS_BOUND_GRAD))):
        assert _rel(outs["bf16"][i], ref) < 0.01  # bf16: 8 mantissa bits
        assert _rel(outs["fp8"][i], ref) < bound
        # same quantisation on both devices: only accumulation order and the bf16 logits differ
        assert _rel(outs["fp8"][i], outs["emulated"][i]) < 0.01


@pytest.mark.gpu
@needs_fp8_gpu
@pytest.mark.parametrize("extra", [["--fp8-head", "1"], ["--sdpa-backend", "cudnn"],
                                   ["--fp8-head", "1", "--sdpa-backend", "flash"]])
def test_gpu_tiny_trains_with_fp8_head_or_sdpa_backend(run_trainer, extra):
    p = run_trainer("--device", "cuda", "--compile", "1", "--attn", "sdpa", "--num-steps", "60",
                    "--stage-batch-tokens", "1024,2048,4096", *extra, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    vals = [m["val_loss"] for m in p.metrics if m["event"] == "val"]
    assert p.metrics[-1]["exit_reason"] == "completed" and vals[-1] < vals[0] - 1.0
