"""``ForceRegularization``: the attractive (or repulsive) filter force of paper 002 (docs/formulas.md
section 2) added to the gradients of the selected convs."""

from __future__ import annotations

import re

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from ...core.force import default_force_layers, force
from ..report import rank_table


class ForceRegularization(Callback):
    """Adds ``-lambda_s * Delta W`` (attractive, eq. 3) or ``+lambda_s * Delta W`` (repulsive,
    ``repulsive=True``) to the gradient of the selected convs before each optimizer step.

    Args:
        lam: lambda_s (paper: 5e-5 for the L2 force at base lr 1e-3; 1e-3 for L1 on LeNet at 1e-2).
        kind: ``"l2"`` (eq. 4) or ``"l1"`` (eq. 5).
        layers: regex over module names; ``None`` = every conv except the first and the 1x1 ones.
        stop_step: no force from this global step on (``None``: always).
        error: the PCA error e of the rank ratio logged each epoch (``force/rank_ratio/<layer>``).

    Example::

        trainer = Trainer(callbacks=[ForceRegularization(lam=5e-5, kind="l2")])
    """

    def __init__(
        self,
        lam: float = 5e-5,
        kind: str = "l2",
        layers: str | None = None,
        repulsive: bool = False,
        stop_step: int | None = None,
        error: float = 0.05,
    ) -> None:
        if kind not in ("l1", "l2"):
            raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
        self.lam, self.kind, self.layers, self.repulsive, self.stop_step = lam, kind, layers, repulsive, stop_step
        self.error = error
        self.convs: dict[str, nn.Conv2d] = {}

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.layers is None:
            self.convs = default_force_layers(pl_module)
        else:
            rx = re.compile(self.layers)
            self.convs = {n: m for n, m in pl_module.named_modules() if isinstance(m, nn.Conv2d) and rx.search(n)}
        if not self.convs:
            raise ValueError(f"ForceRegularization: no conv layer selected by {self.layers!r}")

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = rank_table(pl_module, self.error, self.convs)
        metrics = {f"force/rank_ratio/{r['name']}": r["rank_ratio"] for r in rows}
        metrics["force/avg_rank_ratio"] = sum(r["rank_ratio"] for r in rows) / len(rows)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @override
    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if self.stop_step is not None and trainer.global_step >= self.stop_step:
            return
        sign = 1.0 if self.repulsive else -1.0
        for conv in self.convs.values():
            if conv.weight.grad is not None:
                conv.weight.grad.add_(force(conv.weight, self.kind, conv.groups), alpha=sign * self.lam)
