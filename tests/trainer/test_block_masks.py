"""trainer/block_masks.py: FlexAttention block masks built at block granularity from document starts, and the
segment offsets of FlashAttention's variable-length kernel (`--attn varlen`).

On CPU against the two references PyTorch has: `create_block_mask` evaluating the same mask function on
every (query, key) pair (the same full blocks, the same kept blocks up to empty partial ones), and
`flex_attention` with our mask against SDPA with the dense boolean mask (the outputs).
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from trainer.block_masks import SEGMENT_ROUND, block_mask, document_ids, segment_offsets

BOS = 7


def _rows(B, T, doc_lens, seed):
    """Token rows whose documents have lengths drawn from doc_lens (some longer than T), BOS at each start."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(8, 100, (B, T), generator=g)
    for b in range(B):
        pos = 0
        while pos < T:
            idx[b, pos] = BOS
            pos += doc_lens[int(torch.randint(len(doc_lens), (1,), generator=g))]
    return idx


def _dense(docs, window):
    T = docs.size(1)
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    return (q >= k) & (q - k < window) & (docs[:, :, None] == docs[:, None, :])


@pytest.mark.parametrize("T,window,doc_lens,seed", [
    (1024, 1024, [5000], 0),  # one document per row: plain causal
    (1024, 384, [5000], 1),  # sliding window
    (1024, 1024, [40, 300, 129, 700], 2),  # documents masked apart
    (2048, 640, [60, 900, 3000, 128, 256], 3),  # both, window not a block multiple
    (512, 64, [1, 2, 500], 4),  # window under one block; one-token documents
])
def test_blocks_match_create_block_mask(T, window, doc_lens, seed):
    idx = _rows(3, T, doc_lens, seed)
    docs = document_ids(idx, BOS)
    ours = block_mask(docs, window)

    def mask_mod(b, h, q, kv):
        return (q >= kv) & (q - kv < window) & (docs[b, q] == docs[b, kv])

    ref = create_block_mask(mask_mod, 3, None, T, T, device="cpu", _compile=False)
    n = T // 128

    def blocks(num, ind):
        out = torch.zeros(3, 1, n, n, dtype=torch.bool)
        for b in range(3):
            for i in range(n):
                out[b, 0, i, ind[b, 0, i, :num[b, 0, i]].long()] = True
        return out

    ours_full = blocks(ours.full_kv_num_blocks, ours.full_kv_indices)
    ours_part = blocks(ours.kv_num_blocks, ours.kv_indices)
    ref_full = blocks(ref.full_kv_num_blocks, ref.full_kv_indices)
    ref_part = blocks(ref.kv_num_blocks, ref.kv_indices)
    assert torch.equal(ours_full, ref_full)  # full blocks: exact
    assert not (ours_full & ours_part).any()
    assert (ref_part <= ours_part).all()  # every needed partial block is kept
    extra = ours_part & ~ref_part  # kept partial blocks that are in fact empty: rare
    assert extra.sum() <= 0.05 * max(1, ref_part.sum())
    # the dense mask the BlockMask stands for is exactly the pairwise one
    dense = _dense(docs, window)
    coarse = (ours_full | ours_part)[:, 0].repeat_interleave(128, 1).repeat_interleave(128, 2)
    assert (dense <= coarse).all()


def test_flex_with_our_mask_equals_sdpa_with_the_dense_mask():
    torch.manual_seed(0)
    B, H, T, D = 2, 2, 512, 16
    idx = _rows(B, T, [30, 200, 700], 5)
    docs = document_ids(idx, BOS)
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    for window in (512, 200):
        out = flex_attention(q, k, v, block_mask=block_mask(docs, window))
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=_dense(docs, window)[:, None])
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("doc_lens,first_is_bos", [([5000], True), ([40, 300, 129, 700], True), ([3, 1, 60], False)])
def test_segment_offsets_are_the_rows_documents_end_to_end(doc_lens, first_is_bos):
    B, T = 3, 256
    idx = _rows(B, T, doc_lens, 4)
    if not first_is_bos:
        idx[:, 0] = 50  # rows that begin inside a document (validation rows do)
    offsets = segment_offsets(idx.numpy(), BOS)
    assert offsets.dtype.name == "int32" and len(offsets) % SEGMENT_ROUND == 0
    ends = list(offsets).index(B * T)
    assert (offsets[ends:] == B * T).all()  # the padding: empty segments at the end
    cuts = offsets[: ends + 1]
    assert (cuts[1:] > cuts[:-1]).all() and cuts[0] == 0
    # a segment is one document of one row, and every row start and document start begins one
    row = torch.arange(B * T) // T
    doc = document_ids(idx, BOS).flatten()
    seg = torch.zeros(B * T, dtype=torch.long)
    seg[torch.from_numpy(cuts[1:-1]).long()] = 1
    seg = seg.cumsum(0)
    assert torch.unique_consecutive(torch.stack([row, doc]), dim=1).shape[1] == len(cuts) - 1
    same = seg[1:] == seg[:-1]
    assert torch.equal(same, (row[1:] == row[:-1]) & (doc[1:] == doc[:-1]))


def test_segment_offsets_keep_a_capacity_that_fits_and_grow_one_that_does_not():
    idx = _rows(2, 512, [10], 5)  # about 100 documents
    needed = int((idx == BOS).sum()) + 1
    assert len(segment_offsets(idx.numpy(), BOS, 384)) == 384  # fits: the shape the compiled model has seen
    grown = segment_offsets(idx.numpy(), BOS, 8)
    assert len(grown) == -(-needed // SEGMENT_ROUND) * SEGMENT_ROUND and len(grown) >= needed


def test_sequence_not_a_block_multiple_is_refused():
    with pytest.raises(ValueError, match="multiple of the attention block size"):
        block_mask(document_ids(torch.zeros(1, 200, dtype=torch.long), BOS), 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_compiled_flex_with_our_mask_equals_sdpa_forward_and_backward():
    torch.manual_seed(0)
    B, H, T, D = 2, 4, 2048, 128
    idx = _rows(B, T, [50, 700, 3000], 6).cuda()
    docs = document_ids(idx, BOS)
    flex = torch.compile(flex_attention, dynamic=False)
    for window in (2048, 640):
        qkv = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
        out = flex(*qkv, block_mask=block_mask(docs, window))
        grads = torch.autograd.grad(out.float().square().sum(), qkv)
        ref_in = [t.detach().double().requires_grad_() for t in qkv]
        ref = F.scaled_dot_product_attention(*ref_in, attn_mask=_dense(docs.cpu(), window)[:, None].cuda())
        ref_grads = torch.autograd.grad(ref.square().sum(), ref_in)
        for got, want in [(out, ref), *zip(grads, ref_grads)]:
            rel = ((got.double() - want).norm() / want.norm()).item()
            assert rel < 2e-2, (window, rel)  # bf16 inputs and outputs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_compiled_varlen_with_our_offsets_equals_sdpa_forward_and_backward():
    from trainer.model import varlen_attention

    torch.manual_seed(0)
    B, H, T, D = 2, 4, 2048, 128
    idx = _rows(B, T, [50, 700, 3000], 7)
    idx[1, 0] = 50  # a row that begins inside a document
    docs = document_ids(idx, BOS)
    offsets = torch.from_numpy(segment_offsets(idx.numpy(), BOS)).cuda()
    attend = torch.compile(varlen_attention, dynamic=False)
    for window in (2048, 640):
        qkv = [torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
        out = attend(*qkv, offsets, window)
        grads = torch.autograd.grad(out.float().square().sum(), qkv)
        ref_in = [t.detach().double().transpose(1, 2).requires_grad_() for t in qkv]
        ref = F.scaled_dot_product_attention(*ref_in, attn_mask=_dense(docs, window)[:, None].cuda())
        ref_grads = [g.transpose(1, 2) for g in torch.autograd.grad(ref.square().sum(), ref_in)]
        for got, want in [(out, ref.transpose(1, 2)), *zip(grads, ref_grads)]:
            rel = ((got.double() - want).norm() / want.norm()).item()
            assert rel < 2e-2, (window, rel)  # bf16 inputs and outputs
