"""Force regularization (paper 002, Wen et al. ICCV 2017; formulas.md section 2).

Filters of a conv are flattened per conv group, normalized (``w_i = W_i / ||W_i||``), and pulled
towards each other (attractive) or pushed apart (repulsive "discrimination" variant, 5.5) by a
force tangent to the unit sphere and scaled by the filter norm (eq. 2), added to the weight
gradient before the optimizer step so it passes through momentum (eq. 3).
"""
from __future__ import annotations

import re
from typing import Iterable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.optim import Optimizer

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


class ForceRegularization(Callback):
    """Adds ``-lambda_s * Delta W`` (attractive, eq. 3) or ``+lambda_s * Delta W`` (repulsive,
    ``repulsive=True``) to the gradient of the selected convs before each optimizer step.

    Args:
        lam: lambda_s (paper: 5e-5 for the L2 force at base lr 1e-3; 1e-3 for L1 on LeNet at 1e-2).
        kind: ``"l2"`` (eq. 4) or ``"l1"`` (eq. 5).
        layers: regex over module names; ``None`` = every conv except the first and the 1x1 ones.
        stop_step: no force from this global step on (``None``: always).
        error: the PCA error e of the rank ratio logged each epoch (``force/rank_ratio/<layer>``).
    """

    def __init__(self, lam: float = 5e-5, kind: str = "l2", layers: str | None = None,
                 repulsive: bool = False, stop_step: int | None = None, error: float = 0.05) -> None:
        if kind not in ("l1", "l2"):
            raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
        self.lam, self.kind, self.layers, self.repulsive, self.stop_step = lam, kind, layers, repulsive, stop_step
        self.error = error
        self.convs: dict[str, nn.Conv2d] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.layers is None:
            self.convs = default_force_layers(pl_module)
        else:
            rx = re.compile(self.layers)
            self.convs = {n: m for n, m in pl_module.named_modules() if isinstance(m, nn.Conv2d) and rx.search(n)}
        if not self.convs:
            raise ValueError(f"ForceRegularization: no conv layer selected by {self.layers!r}")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = rank_table(pl_module, self.error, self.convs)
        metrics = {f"force/rank_ratio/{r['name']}": r["rank_ratio"] for r in rows}
        metrics["force/avg_rank_ratio"] = sum(r["rank_ratio"] for r in rows) / len(rows)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if self.stop_step is not None and trainer.global_step >= self.stop_step:
            return
        sign = 1.0 if self.repulsive else -1.0
        for conv in self.convs.values():
            if conv.weight.grad is not None:
                conv.weight.grad.add_(force(conv.weight, self.kind, conv.groups), alpha=sign * self.lam)


# ------------------------------------------------------------------------------ rank analysis
def rank_for_error(weight: torch.Tensor, error: float = 0.05, groups: int = 1) -> int:
    """Smallest total K (summed over conv groups) with ``sum_{k>K} lambda_k / sum_k lambda_k <= e``
    for the uncentred PCA of the filter matrix (formulas.md section 3); an all-zero group has rank 0."""
    from .lowrank import pca_rank

    total = 0
    for chunk in weight.detach().double().chunk(groups, 0):
        m = chunk.reshape(chunk.shape[0], -1)
        total += pca_rank(m, error) if m.any() else 0
    return min(total, weight.shape[0])


def rank_table(model: nn.Module, error: float = 0.05, layers: dict[str, nn.Conv2d] | None = None) -> list[dict]:
    """Paper 002 Table 2 layout: per conv, rank K at error e and K/N."""
    layers = layers if layers is not None else {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    rows = []
    for name, conv in layers.items():
        k = rank_for_error(conv.weight, error, conv.groups)
        rows.append({"name": name, "filters": conv.out_channels, "rank": k, "rank_ratio": k / conv.out_channels})
    return rows
