"""The offline FlashAttention 3 stand-in of the modded-nanogpt GPU study (docs/studies/2026-12-06-modded-nanogpt-h200/
kernels.py) against attention written out with an explicit mask: packed documents, causal, a sliding window, forward
and gradients. Needs CUDA (torch's varlen FlashAttention has no CPU kernel): skipped on CI, run on the device."""
import importlib.util
from pathlib import Path

import pytest
import torch

from _oracle import needs_cuda

STANDIN = Path(__file__).resolve().parents[2] / "docs/studies/2026-12-06-modded-nanogpt-h200/kernels.py"


def standin_module():
    spec = importlib.util.spec_from_file_location("fa3_standin", STANDIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def standin():
    return standin_module().get_kernel("kernels-community/flash-attn3", version=1).flash_attn_interface


def masked_reference(q, k, v, cu, window, scale):
    """Every (query, key) pair allowed iff same document, key <= query and query - key <= window."""
    T = q.shape[0]
    doc = torch.zeros(T, dtype=torch.long, device=q.device)
    doc[cu[1:-1].long()] = 1
    doc = doc.cumsum(0)
    i = torch.arange(T, device=q.device)
    allowed = (doc[:, None] == doc[None, :]) & (i[None, :] <= i[:, None])
    if window >= 0:
        allowed &= (i[:, None] - i[None, :]) <= window
    s = torch.einsum("qhd,khd->hqk", q.double(), k.double()) * scale
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", s.softmax(-1), v.double())


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("window", [-1, 64, 200])
def test_standin_matches_masked_attention(window):
    torch.manual_seed(0)
    T, H, D = 1024, 4, 128
    cu = torch.tensor([0, 100, 357, 600, 1024], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    scale = 0.12
    fa = standin()
    out = fa.flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=424, max_seqlen_k=424,
                                    causal=True, softmax_scale=scale, window_size=(window, 0))
    ref = masked_reference(q, k, v, cu, window, scale)
    assert (out.double() - ref).abs().max().item() < 2e-2
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g.double())
    for got, want in zip(grads, ref_grads):
        assert (got.double() - want).abs().max().item() < 5e-2 * max(1.0, want.abs().max().item())


def test_standin_refuses_other_kernels():
    pytest.importorskip("torch.nn.attention.varlen")
    with pytest.raises(RuntimeError, match="only 'kernels-community/flash-attn3'"):
        standin_module().get_kernel("kernels-community/other")
