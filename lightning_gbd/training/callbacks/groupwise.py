"""``GroupWiseSparsification``: l2,1 training, one-shot pruning to a target density, then
fine-tuning with frozen patterns (paper 000 section 4.2, docs/formulas.md section 1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch.optim import Optimizer

from ...core.regularizers import l21_grad
from .base import GroupMaskCallback


def _check_density(tau: float, what: str) -> float:
    if not 0.0 < float(tau) <= 1.0:
        raise ValueError(f"impossible density {tau} for {what}: tau must be in (0, 1]")
    return float(tau)


class GroupWiseSparsification(GroupMaskCallback):
    """Train with the l2,1 penalty (eq. 3-4); at ``prune_epoch`` (or ``prune_step``) zero the
    ``S kh kw (1 - tau)`` groups with the smallest norms; then fine-tune with the patterns frozen
    and no regularizer.

    Args:
        density: target tau, one float for every layer or ``{layer_name: tau}``.
        lam: l2,1 strength before pruning.
        prune_epoch / prune_step: when to prune (epoch start, or before that global step).
        global_density: one threshold over all selected layers (norms divided by each layer's RMS
            group norm so layers of different weight scale compare) instead of a tau per layer.
        layers: regex, list of names, or ``None`` for every Conv2d.
    """

    def __init__(
        self,
        density: float | dict[str, float] = 0.3,
        lam: float = 1e-2,
        prune_epoch: int | None = 1,
        prune_step: int | None = None,
        global_density: bool = False,
        layers: str | Iterable[str] | None = None,
    ) -> None:
        super().__init__(layers)
        if isinstance(density, dict):
            self.density = {k: _check_density(v, k) for k, v in density.items()}
            if global_density:
                raise ValueError("global_density needs one float density, not a per-layer dict")
        else:
            self.density = _check_density(density, "every layer")
        if prune_step is None and prune_epoch is None:
            raise ValueError("give prune_epoch or prune_step")
        self.lam, self.prune_epoch, self.prune_step = lam, prune_epoch, prune_step
        self.global_density = global_density
        self.pruned = False

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if isinstance(self.density, dict):
            unknown = set(self.density) - set(self.convs)
            if unknown:
                raise ValueError(f"density given for unknown layers {sorted(unknown)}; selected: {sorted(self.convs)}")

    def tau(self, name: str) -> float:
        return self.density.get(name, 1.0) if isinstance(self.density, dict) else self.density

    @torch.no_grad()
    def prune(self, trainer: Trainer | None = None) -> None:
        """Zero the smallest groups (per layer, or globally) to reach the target density."""
        norms = {n: self.norms(n) for n in self.convs}
        if self.global_density:
            scaled = {n: v / v.pow(2).mean().sqrt().clamp_min(1e-12) for n, v in norms.items()}
            flat = torch.cat([v.flatten() for v in scaled.values()])
            keep = max(1, round(self.density * flat.numel()))
            thr = flat.topk(keep).values.min()
            for n, v in scaled.items():
                self.set_mask(n, v >= thr)
        else:
            for n, v in norms.items():
                keep = max(1, round(self.tau(n) * v.numel()))
                mask = torch.zeros(v.numel(), dtype=torch.bool, device=v.device)
                mask[v.flatten().topk(keep).indices] = True
                self.set_mask(n, mask.reshape(v.shape))
        self.pruned = True
        if trainer is not None:
            self.sync(trainer)
        self.apply_masks(trainer)
        rank_zero_info(
            "GroupWiseSparsification: pruned to " + ", ".join(f"{r['name']}={r['density']:.3f}" for r in self.reports())
        )

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.pruned and self.prune_step is None and trainer.current_epoch >= self.prune_epoch:
            self.prune(trainer)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self.pruned and self.prune_step is not None and trainer.global_step >= self.prune_step:
            self.prune(trainer)

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if self.pruned or self.lam == 0:
            return
        for conv in self.convs.values():
            if conv.weight.grad is not None:
                conv.weight.grad.add_(l21_grad(conv.weight, self.lam, conv.groups))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and self.pruned:
            self.log_metrics(trainer, self.density_metrics())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pruned": self.pruned}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.pruned = bool(state_dict["pruned"])
