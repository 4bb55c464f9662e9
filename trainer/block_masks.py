"""What attention needs to keep documents apart: FlexAttention block masks for causal, sliding-window attention
(built from the document starts at block granularity on the device), or the segment offsets of FlashAttention's
variable-length kernel (`segment_offsets`, built on the host from the batch before it is copied).

`create_block_mask` evaluates the mask on every (query, key) pair: B x T x T calls of the mask function
per window per micro-batch. Here the three conditions are decided per pair of 128-token blocks from a
few numbers per block (its first and last position, its first and last document id), so the work is
B x (T/128)^2 small integer comparisons:

  a key block j can hold an allowed key for query block i when
      j <= i                                   (causal)
      (i - j) * S - (S - 1) < window           (the nearest pair is inside the window)
      doc_last[j] >= doc_first[i]              (document ids grow along a row: the blocks share a doc)
  and every pair of the two blocks is allowed ("full": the kernel skips the mask function) when
      j < i,  (i - j) * S + (S - 1) < window,  doc_first[j] == doc_last[i]

A block pair that passes each test through different pairs is kept as partial; the mask function then
masks it exactly, so the result equals create_block_mask's up to such (rare) empty partial blocks.
"""

from __future__ import annotations

import numpy as np
import torch

BLOCK = 128  # FlexAttention's default block size
SEGMENT_ROUND = 128  # segment offsets are padded to a multiple of this: few distinct shapes, few compiles


def document_ids(idx: torch.Tensor, bos_id: int) -> torch.Tensor:
    """(B, T) int32: how many document starts are at or before each position."""
    return (idx == bos_id).cumsum(dim=1, dtype=torch.int32)


def _ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count per query block, key block indices with the chosen ones first, ascending) of a (B, 1, n, n) bool."""
    counts = blocks.sum(dim=-1, dtype=torch.int32)
    order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return counts, order


def block_mask(docs: torch.Tensor, window: int, block: int = BLOCK):
    """The BlockMask of causal attention within `window` keys and within documents (docs: document_ids)."""
    from torch.nn.attention.flex_attention import BlockMask

    B, T = docs.shape
    if T % block:
        raise ValueError(f"sequence length {T} is not a multiple of the attention block size {block}")
    n = T // block
    per_block = docs.view(B, n, block)
    first, last = per_block[:, :, 0], per_block[:, :, -1]
    i = torch.arange(n, device=docs.device)
    dist = (i[:, None] - i[None, :]) * block  # query block i, key block j: distance of their starts
    causal, strictly = dist >= 0, dist > 0
    near, within = dist - (block - 1) < window, dist + (block - 1) < window
    shares = last[:, None, :] >= first[:, :, None]  # (B, i, j)
    one_doc = first[:, None, :] == last[:, :, None]
    full = (strictly & within)[None] & one_doc
    partial = (causal & near)[None] & shares & ~full
    kv_num, kv_idx = _ordered(partial[:, None])
    full_num, full_idx = _ordered(full[:, None])

    def mask_mod(b, h, q, kv):
        return (q >= kv) & (q - kv < window) & (docs[b, q] == docs[b, kv])

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(T, T))


def segment_offsets(idx: np.ndarray, bos_id: int, capacity: int = 0) -> np.ndarray:
    """Cumulative offsets (int32) of the segments of the rows `idx` (B, T) laid end to end, as FlashAttention's
    variable-length kernel reads them: a segment starts at each row's start and at each document start (`bos_id`)
    inside a row; the last offset is B * T. Padded with B * T (empty segments) to `capacity` entries, or, when more
    are needed or `capacity` is 0, to the next multiple of SEGMENT_ROUND."""
    B, T = idx.shape
    starts = (idx == bos_id)
    starts[:, 0] = True
    offsets = np.flatnonzero(starts)
    size = len(offsets) + 1
    if size > capacity:
        capacity = -(-size // SEGMENT_ROUND) * SEGMENT_ROUND
    out = np.full(capacity, B * T, dtype=np.int32)
    out[: len(offsets)] = offsets
    return out
