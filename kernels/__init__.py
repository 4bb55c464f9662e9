"""Triton kernels for the speedrun trainer, each with a plain-PyTorch reference path.

Every public function runs its Triton kernel when all tensors are on CUDA and ``triton`` imports,
and the PyTorch reference otherwise (``backend="torch"``/``"triton"`` force a path). Both paths run inside
PyTorch operators (``torch.ops.speedrun_kernels.*``, registered on import), so torch.compile keeps them in
its graph. The kernel modules (``_*_triton.py``) are imported on first use; triton itself is optional.

- ``softcap_cross_entropy(x, weight, targets, softcap, reduction="mean")``: fused LM head + CE.
- ``logits_cross_entropy(logits, targets, softcap)``: soft-capped CE over logits already in memory (per row).
- ``relu2_mlp_up(x, w_up)``: ``relu(x @ w_up.T) ** 2`` with the activation in the matmul epilogue.
- ``xxt(X)``: ``X @ X.mT`` computing one triangle of tiles and mirroring (2-D or batched).
"""
from ._common import interpreting, triton_available
from .logits_ce import logits_cross_entropy
from .relu2_mlp import relu2_mlp_up, relu2_mlp_up_reference
from .softcap_ce import softcap_cross_entropy, softcap_cross_entropy_reference
from .xxt import xxt, xxt_reference

__all__ = [
    "softcap_cross_entropy",
    "logits_cross_entropy",
    "softcap_cross_entropy_reference",
    "relu2_mlp_up",
    "relu2_mlp_up_reference",
    "xxt",
    "xxt_reference",
    "triton_available",
    "interpreting",
]
