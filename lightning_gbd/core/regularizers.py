"""The group-sparsity regularizers of paper 000 (docs/formulas.md section 1, eq. 3-5).

Each comes as a penalty (for logging and for autograd checks) and as its closed-form gradient,
which the callbacks add to ``weight.grad`` before the optimizer step.
"""

from __future__ import annotations

import torch

from .groups import expand_group_mask, group_norms


def l21_penalty(weight: torch.Tensor, lam: float, groups: int = 1) -> torch.Tensor:
    """Eq. 3: ``lambda * sum_ijs ||Gamma_ijs||``."""
    return lam * group_norms(weight, groups).sum()


def l21_grad(weight: torch.Tensor, lam: float, groups: int = 1, theta: float | None = None) -> torch.Tensor:
    """Eq. 4: ``lambda * W[t,s,i,j] / ||Gamma_ijs||`` (0 where the norm is 0).

    With ``theta`` it is the gradient of the truncated l2,1 of eq. 5: the same term where
    ``||Gamma_ijs|| < theta`` and 0 elsewhere."""
    norms = group_norms(weight, groups)
    active = norms > 0
    if theta is not None:
        active &= norms < theta
    scale = torch.where(active, lam / norms.clamp_min(torch.finfo(norms.dtype).tiny), torch.zeros_like(norms))
    return weight * expand_group_mask(scale, weight.shape, groups)


def truncated_l21_penalty(weight: torch.Tensor, lam: float, theta: float, groups: int = 1) -> torch.Tensor:
    """Eq. 5: ``lambda * sum_ijs min(||Gamma_ijs||, theta)``."""
    return lam * group_norms(weight, groups).clamp_max(theta).sum()


def l1_penalty(weight: torch.Tensor, lam: float) -> torch.Tensor:
    """The plain (non-group) l1 baseline ``lambda * sum |W|``."""
    return lam * weight.abs().sum()


def l1_grad(weight: torch.Tensor, lam: float) -> torch.Tensor:
    """Subgradient of the l1 baseline: ``lambda * sign(W)``."""
    return lam * weight.sign()
