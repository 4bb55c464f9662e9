"""The FP8 output head (`--fp8-head 1`): logits = x @ W.T with x and W in float8_e4m3fn and the gradient
of the logits in float8_e5m2, all three products through `torch._scaled_mm` on CUDA.

Scaling is per tensor: t is stored as q = t / s, and s is the dequantisation scale that `_scaled_mm`
multiplies back in. x and W (small: tokens x dim, vocab x dim) are scaled from themselves (dynamic):
s = amax(|t|) / max(format), so the largest entry lands on the format's largest finite value (e4m3 448)
and nothing overflows; an all-zero tensor (the zero-initialised head at step 0) stays exactly zero.
The logits' gradient (tokens x vocab, the one large tensor) is scaled by a bound the caller knows instead
(`grad_bound`): for a mean cross-entropy over M rows, softcapped or not, |dloss/dlogit| <= 1/M (softmax
minus one-hot, over M, times the softcap's derivative <= 1; a loss weight <= 1 only shrinks it). With
s = grad_bound / 57344 nothing overflows and the quantisation needs no pass over the gradient to find its
amax: it fuses into the cross-entropy backward that produces the gradient, which is never stored in bf16.
grad_bound = 0 falls back to the dynamic amax.

Products and the layouts `_scaled_mm` needs (first operand row-major, second column-major; the inner
dimension and both of the second operand's dimensions multiples of 16):
  forward  logits = x_q @ W_q.T        W.T of a row-major W is already column-major
  backward grad_x = g_q @ W_q          a transposed copy of W_q (vocab x dim bytes)
           grad_W = g_q.T @ x_q        a transposed copy of g_q (tokens x vocab bytes) and of x_q
K (model dim) and N (vocab) must be multiples of 16 (checked by the config); M (tokens per forward)
is padded with zero rows for grad_W when it is not.

`trainer::fp8_head` is a torch.library custom op (opaque to torch.compile, no graph break; it quantises
x and W and runs the forward product). Its backward, registered with `register_autograd`, is plain
torch code that torch.compile traces into the backward graph, so the amax, cast and transposed copy
of the logits' gradient (the only large tensors) can fuse with the cross-entropy backward producing
it; the two backward products go through the small custom op `trainer::scaled_mm`.
Accumulation is fp32; the forward uses `_scaled_mm`'s fast accumulation (inner dimension = model
dim, short), the backward products (inner dimensions vocab and tokens) do not.

Without CUDA (tests, CPU runs) the same quantisation runs and the product is taken of the fp8 values
in fp32 and then scaled, which emulates `_scaled_mm` up to the order of accumulation. Logits are bf16
on CUDA and fp32 on CPU; the gradients come back in the dtypes of x and W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
ALIGN = 16  # _scaled_mm's multiple for the inner and the second operand's dimensions


def quantise(t: torch.Tensor, dtype: torch.dtype, bound: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, s): q = t / s in `dtype`, s an fp32 0-dim tensor: bound / max(dtype) when a bound on |t| is
    given (entries beyond it saturate), else amax(|t|) / max(dtype)."""
    fmax = torch.finfo(dtype).max
    if bound > 0:
        scale = torch.full((), bound / fmax, dtype=torch.float32, device=t.device)
        return (t.float() * (fmax / bound)).clamp(-fmax, fmax).to(dtype), scale
    amax = t.detach().abs().amax().float()
    scale = torch.clamp(amax, min=1e-30) / fmax
    return (t.float() / scale).clamp(-fmax, fmax).to(dtype), scale


def logits_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.bfloat16 if x.is_cuda else torch.float32


def _row_major(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _col_major(t):
    return t if t.stride(0) == 1 else t.t().contiguous().t()


def _scaled_mm_impl(a, b, scale_a, scale_b, out_dtype: torch.dtype, fast_accum: bool):
    if a.is_cuda:
        return torch._scaled_mm(_row_major(a), _col_major(b), scale_a=scale_a, scale_b=scale_b,
                                out_dtype=out_dtype, use_fast_accum=fast_accum)
    return ((a.float() @ b.float()) * (scale_a * scale_b)).to(out_dtype)


@torch.library.custom_op("trainer::scaled_mm", mutates_args=())
def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
              out_dtype: torch.dtype, fast_accum: bool) -> torch.Tensor:
    """(a * scale_a) @ (b * scale_b) of fp8 matrices a (M, K), b (K, N), in out_dtype."""
    return _scaled_mm_impl(a, b, scale_a, scale_b, out_dtype, fast_accum)


@scaled_mm.register_fake
def _(a, b, scale_a, scale_b, out_dtype, fast_accum):
    return a.new_empty((a.size(0), b.size(1)), dtype=out_dtype)


@torch.library.custom_op("trainer::fp8_head", mutates_args=())
def fp8_head(x: torch.Tensor, w: torch.Tensor, grad_bound: float = 0.0) -> torch.Tensor:
    """x (M, K) @ w (N, K).T in FP8 (e4m3, per-tensor scales) -> logits (M, N), bf16 on CUDA, fp32 on CPU.
    grad_bound: a bound on |dloss/dlogits| (the e5m2 scale of the backward), 0 = measure it (amax)."""
    return _fp8_logits(x, w)


@fp8_head.register_fake
def _(x, w, grad_bound=0.0):
    return x.new_empty((x.size(0), w.size(0)), dtype=logits_dtype(x))


def _setup_context(ctx, inputs, output):
    x, w, grad_bound = inputs
    ctx.save_for_backward(x, w)
    ctx.grad_bound = grad_bound


def _fp8_logits(x, w):
    """The forward product: x and W quantised to e4m3, logits in bf16 on CUDA (fp32 on CPU)."""
    xq, sx = quantise(x, E4M3)
    wq, sw = quantise(w, E4M3)
    return _scaled_mm_impl(xq, wq.t(), sx, sw, logits_dtype(x), True)


def _head_grads(gq, gq_t, sg, x, w):
    """(grad_x, grad_W) from the logits' gradient gq * sg (e5m2) and its transpose gq_t, whose token columns
    are padded to a multiple of 16 with zeros (x is padded alike here); grad_x has gq's rows."""
    pad = gq_t.size(1) - x.size(0)
    xq, sx = quantise(F.pad(x, (0, 0, 0, pad)) if pad else x, E4M3)
    wq, sw = quantise(w, E4M3)
    grad_x = torch.ops.trainer.scaled_mm(gq, wq.t().contiguous().t(), sg, sw, x.dtype, False)
    grad_w = torch.ops.trainer.scaled_mm(gq_t, xq.t().contiguous().t(), sg, sx, w.dtype, False)
    return grad_x, grad_w


def _backward(ctx, grad):
    x, w = ctx.saved_tensors
    m = x.size(0)
    pad = -m % ALIGN  # grad_W's inner dimension is the token count
    if pad:
        grad = F.pad(grad, (0, 0, 0, pad))
    gq, sg = quantise(grad, E5M2, ctx.grad_bound)
    grad_x, grad_w = _head_grads(gq, gq.t().contiguous(), sg, x, w)
    return grad_x[:m], grad_w, None


fp8_head.register_autograd(_backward, setup_context=_setup_context)


def fp8_supported(device: torch.device) -> bool:
    """True on CPU (emulated) and on CUDA GPUs with FP8 matmuls (compute capability 8.9 or later)."""
    if device.type != "cuda":
        return True
    return torch.cuda.get_device_capability(device) >= (8, 9)


# ---------------------------------------------------------------------------------------------
# The FP8 head fused with the cross-entropy (the trainer's path on CUDA, `--ce-kernel`): the logits' gradient
# is produced by kernels/logits_ce.py directly in e5m2, row-major and transposed, under a scale computed on
# the device from the rows' gradients (no amax pass over tokens x vocab, no transposing copy).


@torch.library.custom_op("trainer::fp8_head_ce", mutates_args=())
def fp8_head_ce(x: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, softcap: float,
                kernel: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per row, logsumexp per row, logits) of the soft-capped cross-entropy of x (M, K) @ w (N, K).T in FP8;
    kernel: the Triton cross-entropy (CUDA), else its PyTorch reference."""
    from kernels.logits_ce import logits_ce_fwd

    logits = _fp8_logits(x, w)
    loss, lse = logits_ce_fwd(logits, targets, softcap, kernel)
    return loss, lse, logits


@fp8_head_ce.register_fake
def _(x, w, targets, softcap, kernel):
    m = x.size(0)
    return (x.new_empty((m,), dtype=torch.float32), x.new_empty((m,), dtype=torch.float32),
            x.new_empty((m, w.size(0)), dtype=logits_dtype(x)))


def _setup_head_ce(ctx, inputs, output):
    x, w, targets, softcap, kernel = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(x, w, targets, output[1], output[2])
    ctx.args = (softcap, kernel)


def _backward_head_ce(ctx, grad_loss, _grad_lse, _grad_logits):
    from kernels.logits_ce import logits_ce_grad_fp8

    x, w, targets, lse, logits = ctx.saved_tensors
    softcap, kernel = ctx.args
    gq, gq_t, sg = logits_ce_grad_fp8(grad_loss, logits, targets, lse, softcap, kernel)
    grad_x, grad_w = _head_grads(gq, gq_t, sg, x, w)
    return grad_x, grad_w, None, None, None


fp8_head_ce.register_autograd(_backward_head_ce, setup_context=_setup_head_ce)


def fp8_head_cross_entropy(x, w, targets, softcap: float, kernel: bool) -> torch.Tensor:
    """Per-row soft-capped cross-entropy of the FP8 head x @ w.T (fp32, (M,)), gradients to x and w."""
    return fp8_head_ce(x, w, targets, float(softcap) if softcap and softcap > 0 else 0.0, kernel)[0]
