"""Force regularization maths (paper 002, Wen et al. ICCV 2017; docs/formulas.md section 2).

Filters of a conv are flattened per conv group, normalized (``w_i = W_i / ||W_i||``), and pulled
towards each other (attractive) or pushed apart (repulsive "discrimination" variant, 5.5) by a
force tangent to the unit sphere and scaled by the filter norm (eq. 2), added to the weight
gradient before the optimizer step so it passes through momentum (eq. 3) - the callback is
``lightning_gbd.training.callbacks.force.ForceRegularization``.
"""

from __future__ import annotations

import torch
from torch import nn

from .lowrank import pca_rank

SKIP_NORM = 1e-4


def _normalized(filters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    norms = filters.norm(dim=1)
    live = norms > SKIP_NORM
    w = torch.where(live[:, None], filters / norms.clamp_min(SKIP_NORM)[:, None], torch.zeros_like(filters))
    return w, norms, live


def _project_and_scale(g: torch.Tensor, w: torch.Tensor, norms: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """Eq. 2: keep the part of ``g_i`` tangent to the sphere at ``w_i`` and scale by ``||W_i||``."""
    g = g - (g * w).sum(1, keepdim=True) * w
    return torch.where(live[:, None], g * norms[:, None], torch.zeros_like(g))


def l2_force(filters: torch.Tensor) -> torch.Tensor:
    """Delta W for the L2-norm force (eq. 4, ``f_ji = w_j - w_i``) in the O(N C) form
    ``||W_i|| (s - (s . w_i) w_i)`` with ``s = sum_j w_j``. ``filters``: (N, C)."""
    w, norms, live = _normalized(filters)
    s = w.sum(0, keepdim=True).expand_as(w)
    return _project_and_scale(s, w, norms, live)


def l1_force(filters: torch.Tensor) -> torch.Tensor:
    """Delta W for the L1-norm force (eq. 5, ``f_ji = (w_j - w_i) / ||w_j - w_i||``) in the
    Gram-matrix form: ``D_ij = sqrt(2 - 2 w_i . w_j)``, ``R = 1/D`` (0 where D <= 1e-4),
    ``g_i = (R w)_i - (sum_j R_ij) w_i``, then projected and scaled. O(N^2 C)."""
    w, norms, live = _normalized(filters)
    d = (2 - 2 * w @ w.T).clamp_min(0).sqrt()
    r = torch.where((d > SKIP_NORM) & live[:, None] & live[None, :], 1 / d.clamp_min(SKIP_NORM), torch.zeros_like(d))
    g = r @ w - r.sum(1, keepdim=True) * w
    return _project_and_scale(g, w, norms, live)


def force(weight: torch.Tensor, kind: str = "l2", groups: int = 1) -> torch.Tensor:
    """Delta W of a conv weight ``(T, S/g, kh, kw)``; forces act only within a conv group."""
    fn = {"l2": l2_force, "l1": l1_force}[kind]
    t = weight.shape[0]
    parts = [fn(chunk.reshape(t // groups, -1)) for chunk in weight.chunk(groups, 0)]
    return torch.cat(parts).reshape(weight.shape)


def default_force_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The authors' choice: every conv except the first one and the 1x1 convs."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return {n: m for n, m in convs[1:] if m.kernel_size != (1, 1)}


# ------------------------------------------------------------------------------ rank analysis
def rank_for_error(weight: torch.Tensor, error: float = 0.05, groups: int = 1) -> int:
    """Smallest total K (summed over conv groups) with ``sum_{k>K} lambda_k / sum_k lambda_k <= e``
    for the uncentred PCA of the filter matrix (docs/formulas.md section 3); an all-zero group has rank 0."""
    total = 0
    for chunk in weight.detach().double().chunk(groups, 0):
        m = chunk.reshape(chunk.shape[0], -1)
        total += pca_rank(m, error) if m.any() else 0
    return min(total, weight.shape[0])
