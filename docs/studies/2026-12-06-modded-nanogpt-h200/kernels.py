"""Offline stand-in for the Hugging Face `kernels` package, as modded-nanogpt's train_gpt.py uses it.

The current script loads FlashAttention 3 with `get_kernel('kernels-community/flash-attn3', version=1)`, which
downloads a build from the Hugging Face Hub at import. The device machines reach no network, so this module (copied
beside the patched script by the study's `companions` option, where it shadows any installed `kernels`) answers that
one call with PyTorch's own variable-length FlashAttention (`torch.nn.attention.varlen.varlen_attn`, FlashAttention 2
kernels built into torch >= 2.10), which takes the same packed (tokens, heads, head_dim) layout, cumulative sequence
offsets and (left, right) sliding window. Same numbers as FA3 up to bf16 rounding; slower on Hopper (FA3 uses wgmma
and TMA), so a run with this stand-in understates the record's attention speed. Any other kernel name is refused.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.nn.attention.varlen import varlen_attn

SUPPORTED = "kernels-community/flash-attn3"


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                           causal=False, window_size=(-1, -1), **unsupported):
    """FA3's varlen entry point over torch's varlen attention: q, k, v are (total_tokens, heads, head_dim)."""
    if unsupported:
        raise TypeError(f"flash_attn_varlen_func stand-in: unsupported arguments {sorted(unsupported)}")
    left, right = (int(window_size[0]), int(window_size[1])) if window_size is not None else (-1, -1)
    if causal:
        right = 0  # FA's causal is the window's right edge at the query
    return varlen_attn(q, k, v, cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32), int(max_seqlen_q),
                       int(max_seqlen_k), scale=softmax_scale, window_size=(left, right))


def get_kernel(repo_id: str, version=None, **_):
    if repo_id != SUPPORTED:
        raise RuntimeError(f"offline kernels stand-in: only {SUPPORTED!r} is provided here, not {repo_id!r} "
                           "(the machine reaches no Hugging Face Hub)")
    return SimpleNamespace(flash_attn_interface=SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func))
