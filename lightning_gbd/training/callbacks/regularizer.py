"""``GroupSparsityRegularizer``: the l2,1 group penalty of paper 000 eq. 3-4 (or plain l1)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.optim import Optimizer

from ...core.regularizers import l1_grad, l1_penalty, l21_grad, l21_penalty
from .base import GroupMaskCallback


class GroupSparsityRegularizer(GroupMaskCallback):
    """Adds ``lambda * dOmega/dW`` (eq. 4, l2,1 over GBD groups; or l1 with ``kind="l1"``) to the
    gradient of every selected conv before each optimizer step and logs the penalty.

    Args:
        lam: regularization strength lambda.
        layers: regex over module names, an explicit list of names, or ``None`` for every Conv2d.
        kind: ``"l21"`` (group lasso, eq. 3) or ``"l1"`` (the non-group baseline).
    """

    def __init__(self, lam: float = 1e-2, layers: str | Iterable[str] | None = None, kind: str = "l21") -> None:
        super().__init__(layers)
        if kind not in ("l21", "l1"):
            raise ValueError(f"kind must be 'l21' or 'l1', got {kind!r}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.lam, self.kind = lam, kind
        self.enabled = True

    def penalty(self) -> torch.Tensor:
        total = torch.zeros(())
        for conv in self.convs.values():
            w = conv.weight.detach()
            p = l21_penalty(w, self.lam, conv.groups) if self.kind == "l21" else l1_penalty(w, self.lam)
            total = total + p.cpu()
        return total

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if not self.enabled or self.lam == 0:
            return
        for conv in self.convs.values():
            w = conv.weight
            if w.grad is None:
                continue
            w.grad.add_(l21_grad(w, self.lam, conv.groups) if self.kind == "l21" else l1_grad(w, self.lam))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.log_metrics(trainer, {f"gbd/{self.kind}_penalty": float(self.penalty()), **self.density_metrics()})
