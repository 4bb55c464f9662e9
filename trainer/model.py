"""The GPT: token embedding -> N blocks (attention + ReLU^2 MLP) -> RMS norm -> softcapped head.

Speedrun features: rotary position embeddings, QK-norm, parameter-free RMS norms, ReLU^2 MLP,
zero-initialised output projections and head, the embedding mixed back into every block through
learned scalars, logit softcap, sliding-window attention (a short window in most layers, a long one
in every 4th and the last) with FlexAttention or FlashAttention's variable-length kernel (`--attn varlen`; both
keep documents apart) or SDPA.
Weights stay fp32; on CUDA the activations run in bf16 under autocast. Optional: the head matmul in FP8
(`--fp8-head`, trainer/fp8.py) and one fixed SDPA kernel (`--sdpa-backend`).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from trainer.block_masks import BLOCK, block_mask, document_ids, segment_offsets
from trainer.fp8 import fp8_head, fp8_head_cross_entropy


# debugging knob (not a trainer option): hand FlexAttention contiguous (B, H, T, D) tensors
FLEX_CONTIGUOUS = os.environ.get("TRAINER_DEBUG_FLEX_CONTIGUOUS", "") == "1"
# --sdpa-backend: the one kernel SDPA may use (auto: PyTorch's choice, no restriction)
SDPA_BACKEND = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def _kernels(enabled: bool):
    """The kernels/ package (fused Triton ops) when asked for and importable, else None."""
    if not enabled:
        return None
    try:
        import kernels as K  # written by another part of the project; optional
    except Exception:
        return None

    class Fused:  # PyTorch operators (speedrun_kernels::*): torch.compile keeps them in its graph
        softcap_cross_entropy = staticmethod(K.softcap_cross_entropy)
        relu2_mlp_up = staticmethod(K.relu2_mlp_up)
        xxt = staticmethod(K.xxt)

        @staticmethod
        def autocast(*tensors):
            """The tensors in autocast's dtype when autocast is on (custom operators are not autocast)."""
            dev = tensors[0].device.type
            if not torch.is_autocast_enabled(dev):
                return tensors
            return tuple(t.to(torch.get_autocast_dtype(dev)) for t in tensors)

    return Fused


class Rotary(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, base: float):
        super().__init__()
        half = head_dim // 2
        inv_freq = base ** (-torch.arange(half, dtype=torch.float32) / half)
        t = torch.arange(max_seq_len, dtype=torch.float32)
        f = torch.outer(t, inv_freq)
        self.register_buffer("cos", f.cos(), persistent=False)
        self.register_buffer("sin", f.sin(), persistent=False)

    def forward(self, x):  # x: (B, T, H, D)
        T = x.size(1)
        cos, sin = self.cos[None, :T, None, :], self.sin[None, :T, None, :]
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


def _window_mask(T: int, window: int, device):
    i = torch.arange(T, device=device)
    d = i[:, None] - i[None, :]
    return (d >= 0) & (d < window)


def varlen_attention(q, k, v, offsets, window: int):
    """Causal attention within `window` keys inside each segment (`offsets`: block_masks.segment_offsets of the
    rows, on the device) by FlashAttention's variable-length kernel (torch >= 2.10, CUDA); q, k, v: (B, T, H, D)."""
    from torch.nn.attention.varlen import varlen_attn

    B, T, H, D = q.shape
    dev = q.device.type
    if torch.is_autocast_enabled(dev):  # a custom op is not autocast; CUDA autocast's rms_norm made q and k fp32
        q, k, v = (t.to(torch.get_autocast_dtype(dev)) for t in (q, k, v))
    flat = [t.reshape(B * T, H, D) for t in (q, k, v)]
    left = window - 1 if window < T else -1  # FlashAttention's window: keys q - left .. q
    y = varlen_attn(*flat, offsets, offsets, T, T, window_size=(left, 0))
    return y.view(B, T, H, D)


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, max_seq_len: int, rope_base: float, sdpa_backend: str = "auto",
                 kind: str = "sdpa"):
        super().__init__()
        self.n_head, self.head_dim, self.kind = n_head, dim // n_head, kind
        self.sdpa_backend = SDPA_BACKEND.get(sdpa_backend)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # Muon treats it as three dim x dim matrices
        self.proj = nn.Linear(dim, dim, bias=False)
        self.rotary = Rotary(self.head_dim, max_seq_len, rope_base)

    def forward(self, x, window: int, masks):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = self.rotary(norm(q)), self.rotary(norm(k))  # QK-norm, then rotary
        if self.kind == "varlen":
            return self.proj(varlen_attention(q, k, v, masks, window).reshape(B, T, C))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if masks is not None:
            from torch.nn.attention.flex_attention import flex_attention

            if FLEX_CONTIGUOUS:
                q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            y = flex_attention(q, k, v, block_mask=masks[window])
        elif window >= T:
            y = self.sdpa(q, k, v, is_causal=True)
        else:
            y = self.sdpa(q, k, v, attn_mask=_window_mask(T, window, x.device))
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def sdpa(self, q, k, v, **kw):
        if self.sdpa_backend is None:
            return F.scaled_dot_product_attention(q, k, v, **kw)
        with sdpa_kernel([self.sdpa_backend]):  # traced into the compiled graph (no graph break)
            return F.scaled_dot_product_attention(q, k, v, **kw)


class MLP(nn.Module):
    def __init__(self, dim: int, mult: int, kern=None):
        super().__init__()
        self.up = nn.Linear(dim, mult * dim, bias=False)
        self.down = nn.Linear(mult * dim, dim, bias=False)
        self.kern = kern

    def forward(self, x):
        if self.kern is not None and x.is_cuda:
            h = self.kern.relu2_mlp_up(*self.kern.autocast(x, self.up.weight.to(x.dtype)))
        else:
            h = F.relu(self.up(x)).square()
        return self.down(h)


class Block(nn.Module):
    def __init__(self, cfg, max_seq_len: int, long_window: bool, kern=None, attn: str = "sdpa"):
        super().__init__()
        self.long_window = long_window
        self.attn = Attention(cfg.model_dim, cfg.n_head, max_seq_len, cfg.rope_base, cfg.sdpa_backend, attn)
        self.mlp = MLP(cfg.model_dim, cfg.mlp_mult, kern)
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.0]))  # x <- l0 * x + l1 * x0

    def forward(self, x, x0, windows, masks):
        x = self.lambdas[0] * x + self.lambdas[1] * x0
        x = x + self.attn(norm(x), windows[1] if self.long_window else windows[0], masks)
        return x + self.mlp(norm(x))


def flex_block_masks(idx, windows, bos_id: int) -> dict:
    """FlexAttention block masks (causal, sliding window, documents apart), one per distinct window.

    Built outside the compiled model and passed in (BlockMask is a pytree), so the compiled graph holds
    only the attention kernels. Sequences of whole 128-token blocks get trainer/block_masks.py's builder
    (block-level arithmetic on the document starts); others `create_block_mask`."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = idx.shape
    docs = document_ids(idx, bos_id)
    if T % BLOCK == 0:
        return {w: block_mask(docs, w) for w in sorted(set(windows))}
    masks = {}
    for w in sorted(set(windows)):
        def mask_mod(b, h, q, kv, w=w):
            return (q >= kv) & (q - kv < w) & (docs[b, q] == docs[b, kv])

        masks[w] = create_block_mask(mask_mod, B, None, T, T, device=idx.device, _compile=idx.is_cuda)
    return masks


class GPT(nn.Module):
    def __init__(self, cfg, max_seq_len: int, attn: str = "sdpa"):
        super().__init__()
        self.cfg, self.attn_kind = cfg, attn
        self._segments = 0  # the padded size of the last segment offsets (`--attn varlen`)
        kern = _kernels(cfg.kernels == "triton")
        self.kern = kern
        L, d = cfg.n_layer, cfg.model_dim
        self.embed = nn.Embedding(cfg.vocab_size, d)
        long_layers = {i for i in range(L) if i % 4 == 3} | {L - 1}
        self.blocks = nn.ModuleList(Block(cfg, max_seq_len, i in long_layers, kern, attn) for i in range(L))
        self.lm_head = None if cfg.tie_embed else nn.Linear(d, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        d = self.cfg.model_dim
        # std 0.02: N(0, 1) embeddings drive CPU matmuls into denormals (50x slower)
        nn.init.normal_(self.embed.weight, std=0.02)
        bound = math.sqrt(3) * 0.5 * d ** -0.5  # uniform with std 0.5 / sqrt(d)
        for b in self.blocks:
            b.attn.qkv.weight.uniform_(-bound, bound)
            b.mlp.up.weight.uniform_(-bound, bound)
            b.attn.proj.weight.zero_()  # zero-initialised output projections
            b.mlp.down.weight.zero_()
            b.lambdas.copy_(torch.tensor([1.0, 0.0]))
        if self.lm_head is not None:
            self.lm_head.weight.zero_()

    @property
    def head_weight(self):
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def block_masks(self, idx, windows, host=None):
        """What `forward` needs as `masks`: FlexAttention block masks, the segment offsets of `--attn varlen` (built
        from `host`, the rows as a numpy array, when given: no wait for the device), or None with SDPA."""
        if self.attn_kind == "flex":
            return flex_block_masks(idx, windows, self.cfg.bos_id)
        if self.attn_kind != "varlen":
            return None
        rows = host if host is not None else idx.cpu().numpy()
        # the padded size only grows (a multiple of 128): the compiled model sees few shapes
        offsets = segment_offsets(rows, self.cfg.bos_id, self._segments)
        self._segments = len(offsets)
        offsets = torch.from_numpy(offsets)
        return offsets.pin_memory().to(idx.device, non_blocking=True) if idx.is_cuda else offsets

    def hidden(self, idx, windows, masks=None):
        x = x0 = norm(self.embed(idx))
        if torch.is_autocast_enabled(x.device.type):  # the residual stream in bf16 (half the memory traffic)
            x = x0 = x.to(torch.get_autocast_dtype(x.device.type))
        for b in self.blocks:
            x = b(x, x0, windows, masks)
        return norm(x)

    def forward(self, idx, targets, windows, masks=None):
        """Mean cross-entropy of targets given idx (both (B, T)); windows = (short, long) in tokens;
        masks = `block_masks(idx, windows)` (needed with FlexAttention and varlen)."""
        x = self.hidden(idx, windows, masks)
        return softcap_cross_entropy(x, self.head_weight, targets, self.cfg.logit_softcap, self.kern,
                                     fp8=self.cfg.fp8_head, ce_kernel=self.cfg.ce_kernel)

    def param_groups(self):
        """(Muon matrices, embedding, head, scalars): who is optimised by what."""
        muon = [p for b in self.blocks for p in (b.attn.qkv.weight, b.attn.proj.weight, b.mlp.up.weight,
                                                 b.mlp.down.weight)]
        scalars = [b.lambdas for b in self.blocks]
        head = [] if self.lm_head is None else [self.lm_head.weight]
        return muon, [self.embed.weight], head, scalars


def softcap_cross_entropy(x, weight, targets, softcap: float, kern=None, fp8: bool = False, ce_kernel: str = "torch"):
    """Cross entropy of softcap * tanh((x @ weight.T) / softcap); fused kernel on CUDA when given;
    fp8: the head matmul in FP8 (trainer/fp8.py); ce_kernel: the cross-entropy over the head's logits
    (kernels/logits_ce.py: auto = Triton on CUDA, triton, torch)."""
    x = x.reshape(-1, x.size(-1))
    targets = targets.reshape(-1)
    if kern is not None and x.is_cuda:
        return kern.softcap_cross_entropy(*kern.autocast(x, weight.to(x.dtype)), targets, softcap)
    if ce_kernel == "triton" or (ce_kernel == "auto" and x.is_cuda and _triton_importable()):
        from kernels.logits_ce import logits_cross_entropy

        kernel = x.is_cuda  # on CPU the same operators run their PyTorch reference
        if fp8:
            return fp8_head_cross_entropy(x, weight, targets, softcap, kernel).mean()
        logits = F.linear(x, weight.to(x.dtype))
        return logits_cross_entropy(logits, targets, softcap, backend="triton" if kernel else "torch").mean()
    # 1 / rows bounds |dloss/dlogits| of the mean below (trainer/fp8.py): the FP8 gradient's static scale
    logits = fp8_head(x, weight, 1.0 / x.size(0)).float() if fp8 else F.linear(x, weight.to(x.dtype)).float()
    if softcap > 0:
        # softcap * tanh(z / softcap) = 2 softcap * sigmoid(2 z / softcap) - softcap, and cross-entropy ignores
        # a constant shift of all logits: the same loss through sigmoid (one fast exp) instead of tanh
        # (libdevice's precise tanh made this pass over tokens x vocab compute-bound on the GPU)
        logits = (2.0 * softcap) * torch.sigmoid(logits * (2.0 / softcap))
    return F.cross_entropy(logits, targets)


def _triton_importable() -> bool:
    try:
        from kernels import triton_available
    except Exception:
        return False
    return triton_available()


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def train_flops_per_token(cfg, seq_len: int, windows=None) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): all matmuls, attention counted over
    the keys each query really attends (causal, sliding window; documents not subtracted)."""
    d, L = cfg.model_dim, cfg.n_layer
    dense = L * (3 * d * d + d * d + 2 * cfg.mlp_mult * d * d) + d * cfg.vocab_size
    w_short, w_long = windows or (seq_len, seq_len)
    long_layers = len({i for i in range(L) if i % 4 == 3} | {L - 1})

    def mean_keys(w):  # average over queries q = 0..T-1 of min(q + 1, w)
        w = min(w, seq_len)
        return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len

    attn = 4 * d * ((L - long_layers) * mean_keys(w_short) + long_layers * mean_keys(w_long))
    return 3 * (2 * dense + attn)
