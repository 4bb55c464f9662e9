"""`--attn varlen` on CPU: the model's use of FlashAttention's variable-length kernel (reshapes, window, segment
offsets) against FlexAttention with our block masks. torch's varlen kernel has no CPU implementation, so here it is
replaced by a stand-in that computes the kernel's documented semantics with an explicit mask (a key is attended iff
it lies in the query's segment and within (left, right) of it); the real kernel is checked against SDPA on the GPU
(tests/trainer/test_block_masks.py, test_gpu.py)."""

import pytest
import torch
import torch.nn.functional as F

from trainer.config import parse_config
from trainer.block_masks import segment_offsets
from trainer.model import GPT, varlen_attention

from test_block_masks import BOS, _rows


def varlen_by_mask(q, k, v, cu_q, cu_k, max_q, max_k, *, window_size=(-1, -1), scale=None, **_):
    N = q.shape[0]
    assert q.dtype == k.dtype == v.dtype  # the kernel takes one dtype (fp16 or bf16 on the GPU)
    assert torch.equal(cu_q, cu_k) and cu_q.dtype == torch.int32 and int(cu_q[-1]) == N
    assert max_q >= int((cu_q[1:] - cu_q[:-1]).max())  # the kernel's grid must cover the longest segment
    seg = torch.zeros(N, dtype=torch.long)
    seg[cu_q[1:-1][cu_q[1:-1] < N].long()] += 1  # padded (empty) segments repeat N
    seg = seg.cumsum(0)
    i = torch.arange(N)
    d = i[:, None] - i[None, :]  # query - key
    left, right = window_size
    allowed = (seg[:, None] == seg[None, :]) & (d >= -right if right >= 0 else True) & (d <= left if left >= 0 else True)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         attn_mask=allowed[None], scale=scale)
    return out.transpose(0, 1)


@pytest.mark.parametrize("windows", [(128, 128), (24, 64)])
def test_varlen_model_equals_flex_model_with_documents(monkeypatch, windows):
    import torch.nn.attention.varlen as varlen

    monkeypatch.setattr(varlen, "varlen_attn", varlen_by_mask)
    cfg = parse_config(["--bos-id", str(BOS)], {})
    torch.manual_seed(0)
    flex = GPT(cfg, 128, "flex")
    with torch.no_grad():
        for p in flex.parameters():
            p.normal_(std=0.05)
    ours = GPT(cfg, 128, "varlen")
    ours.load_state_dict(flex.state_dict())
    idx = _rows(2, 128, [9, 40, 70], 3)
    idx[1, 0] = 50  # a row that begins inside a document
    with torch.no_grad():  # every position's final hidden state (the loss, one number, would hide a key too many)
        want = flex.hidden(idx, windows, flex.block_masks(idx, windows))
        got = ours.hidden(idx, windows, ours.block_masks(idx, windows, idx.numpy()))
        plain = ours.hidden(idx, windows, ours.block_masks(idx, windows))  # offsets from the tensor itself
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(plain, want, rtol=1e-4, atol=1e-5)


def test_varlen_attention_hands_the_kernel_one_autocast_dtype(monkeypatch):
    """On CUDA, autocast runs rms_norm in fp32, so q and k reach attention in fp32 while v is bf16; SDPA is autocast
    (it casts them), a custom operator is not: varlen_attention casts them itself."""
    import torch.nn.attention.varlen as varlen

    seen = []

    def spy(q, k, v, *args, **kw):
        seen.append((q.dtype, k.dtype, v.dtype))
        return varlen_by_mask(q, k, v, *args, **kw)

    monkeypatch.setattr(varlen, "varlen_attn", spy)
    idx = _rows(2, 64, [9, 40], 1)
    offsets = torch.from_numpy(segment_offsets(idx.numpy(), BOS))
    q, k = torch.randn(2, 2, 64, 2, 16).unbind(0)
    v = torch.randn(2, 64, 2, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16):
        out = varlen_attention(q, k, v, offsets, 32)
    assert seen == [(torch.bfloat16,) * 3] and out.dtype == torch.bfloat16 and out.shape == (2, 64, 2, 16)
