"""Optimizers: Muon for the hidden matrices, Adam for embedding, head and scalars.

Muon (momentum + orthogonalisation): the Nesterov momentum of each matrix's gradient is replaced by
the nearest semi-orthogonal matrix (U V^T of its SVD), approximated by five Polar Express iterations
(Amsel, Persson, Musco, Gower 2025, arXiv 2505.16932; coefficients for 5 iterations, safety factor
2e-2, cushion 2) in bf16 on GPU. With N ranks, matrices of one shape are dealt round-robin: each rank
orthogonalises its share and the updates are all-gathered, so every rank applies every update.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

POLAR_EXPRESS_COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


# torch >= 2.13 names it all_gather_single (same arguments) and deprecates the old name
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def orthogonalize(G: torch.Tensor, steps: int = 5, xxt=None) -> torch.Tensor:
    """Approximate U V^T for G = U S V^T (batched over leading dims). Singular values end in ~[0.7, 1.1]."""
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)  # spectral norm <= Frobenius norm < 1
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = xxt(X) if xxt is not None else X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters. A parameter with attribute ``muon_chunks = k`` (e.g. fused QKV) is
    orthogonalised as k stacked blocks. ``lr`` is the RMS-scale step: updates are scaled by
    sqrt(max(1, rows/cols)) so tall and wide matrices move alike.

    Parameters of one shape are stacked and orthogonalised in one batched call. With N ranks (gradients
    already averaged), rank r takes the r-th of N equal slices of each shape's stack and the updates are
    all-gathered, so every rank applies every update and keeps momentum only for its own slice."""

    def __init__(self, params, lr=0.05, momentum=0.95, weight_decay=0.0, ns_steps=5, rank=0, world_size=1,
                 xxt=None):
        params = list(params)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.rank, self.world, self.xxt = rank, world_size, xxt

    def _updates(self, params, group):
        """Orthogonalised Nesterov-momentum updates of same-shape params, stacked (len(params), *shape)."""
        gs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - group["momentum"])
            gs.append(p.grad.lerp(buf, group["momentum"]))  # Nesterov
        p = params[0]
        k = getattr(p, "muon_chunks", 1)
        rows, cols = p.size(0) // k, p.size(1)
        g = torch.stack(gs).view(len(params) * k, rows, cols)
        u = orthogonalize(g, group["ns_steps"], self.xxt) * max(1.0, rows / cols) ** 0.5
        return u.view(len(params), *p.shape)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape: dict = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault((tuple(p.shape), getattr(p, "muon_chunks", 1)), []).append(p)
            for params in by_shape.values():
                if self.world == 1:
                    u = self._updates(params, group)
                else:
                    per = -(-len(params) // self.world)
                    mine = params[self.rank * per:(self.rank + 1) * per]
                    own = torch.zeros((per, *params[0].shape), device=params[0].device, dtype=params[0].dtype)
                    if mine:
                        own[:len(mine)] = self._updates(mine, group)
                    u = torch.empty((per * self.world, *params[0].shape), device=own.device, dtype=own.dtype)
                    _all_gather(u, own)
                for i, p in enumerate(params):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(u[i].to(p.dtype), alpha=-group["lr"])


def build_optimizers(model, cfg, rank=0, world_size=1, xxt=None):
    """Return [adam, muon]; every group remembers its base lr in 'base_lr' for the schedule."""
    muon_params, embed, head, scalars = model.param_groups()
    for b in model.blocks:
        b.attn.qkv.weight.muon_chunks = 3
    fused = next(model.parameters()).is_cuda
    groups = [dict(params=embed, lr=cfg.embed_lr), dict(params=scalars, lr=cfg.scalar_lr)]
    if head:
        groups.append(dict(params=head, lr=cfg.head_lr))
    adam = torch.optim.Adam(groups, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=1e-10, fused=fused)
    muon = Muon(muon_params, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_wd,
                ns_steps=cfg.ns_steps, rank=rank, world_size=world_size, xxt=xxt)
    opts = [adam, muon]
    for opt in opts:
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return opts
