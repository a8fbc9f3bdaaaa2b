"""``GradualGroupSparsification``: truncated l2,1 with one theta driven by the accuracy drop on a
control split (paper 000 section 4.2, eq. 5; docs/formulas.md section 1)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch.optim import Optimizer

from ...core.regularizers import l21_grad
from .base import GroupMaskCallback


class GradualGroupSparsification(GroupMaskCallback):
    """Gradual group-wise sparsification.

    Training adds the gradient of the truncated l2,1 penalty (eq. 5),
    ``lambda * sum min(||Gamma||, theta)``, so only groups with norm below the shared ``theta`` are
    pulled to zero. After every validation the monitored metric on the control split is compared
    with the input network's (``baseline``): a drop below ``delta`` raises theta so that
    ``quantile_step`` (5%) more of all groups fall under it, a larger drop lowers it by the same
    quantile step. Groups whose norm falls below ``epsilon`` are zeroed for good. When no group has
    been zeroed for ``patience`` validations, the patterns are frozen, the regularizer is switched
    off, and after ``finetune_epochs`` more epochs ``trainer.should_stop`` is set.

    Weight scale: with ``relative=True`` (default) every group norm is divided by its layer's RMS
    group norm at the start of training before it is compared with theta and epsilon, so theta
    and epsilon are unit-free and the defaults work for a network whose weight scale is unknown;
    ``relative=False`` uses absolute norms as the paper (Caffe AlexNet: epsilon = 0.1).

    Args:
        monitor: the logged metric on the control split (e.g. ``"val_acc"``).
        delta: tolerated drop of ``monitor`` (0.01 = 1 point of accuracy as a fraction).
        lam: lambda of eq. 5.
        epsilon: groups below it are zeroed (relative to the layer's RMS group norm by default).
        quantile_step: the theta step as a fraction of all groups (paper: 5%).
        patience: validations without a new zeroed group before the fine-tuning phase.
        finetune_epochs: epochs of fine-tuning with frozen patterns (0: stop at once).
        baseline: the input network's ``monitor``; if ``None`` it is taken from a
            ``trainer.validate`` run before ``fit`` with this callback attached, else from the
            first validation during fit (theta is 0 until then, so that epoch is plain training).
        mode: ``"max"`` for accuracies, ``"min"`` for losses.
        layers: regex, list of names, or ``None`` for every Conv2d.
        start_epoch: epochs of plain dense training before sparsification starts (train from
            scratch in one ``fit``); the last validation before it gives the baseline and the weight
            scale is measured when it starts.
    """

    def __init__(
        self,
        monitor: str = "val_acc",
        delta: float = 0.01,
        lam: float = 1e-2,
        epsilon: float = 0.05,
        quantile_step: float = 0.05,
        patience: int = 3,
        finetune_epochs: int = 0,
        baseline: float | None = None,
        mode: str = "max",
        relative: bool = True,
        layers: str | Iterable[str] | None = None,
        start_epoch: int = 0,
    ) -> None:
        super().__init__(layers)
        if start_epoch < 0:
            raise ValueError(f"start_epoch must be >= 0, got {start_epoch}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        if not 0 < quantile_step < 1:
            raise ValueError(f"quantile_step must be in (0, 1), got {quantile_step}")
        if epsilon < 0 or lam < 0 or delta < 0 or patience < 1:
            raise ValueError("epsilon, lam and delta must be >= 0 and patience >= 1")
        self.monitor, self.delta, self.lam, self.epsilon = monitor, delta, lam, epsilon
        self.quantile_step, self.patience, self.finetune_epochs = quantile_step, patience, finetune_epochs
        self.baseline, self.mode, self.relative = baseline, mode, relative
        self.theta = 0.0
        self.scale: dict[str, float] = {}
        self.stall = 0
        self.finetune_from: int | None = None
        self.start_epoch = start_epoch
        self.warmup_value: float | None = None  # the monitor's last value during the dense warm-up

    # ------------------------------------------------------------ helpers
    def scaled_norms(self, name: str) -> torch.Tensor:
        n = self.norms(name)
        return n / self.scale[name] if self.relative else n

    def _all_norms(self) -> torch.Tensor:
        return torch.cat([self.scaled_norms(n).flatten().cpu() for n in self.convs])

    def _drop(self, value: float) -> float:
        return self.baseline - value if self.mode == "max" else value - self.baseline

    def step_theta(self, raise_: bool) -> float:
        """Move theta one quantile step: to the ``F +- step`` quantile of all group norms, where
        ``F`` is the fraction of groups now under theta."""
        norms = self._all_norms()
        frac = float((norms < self.theta).float().mean())
        q = min(frac + self.quantile_step, 1.0) if raise_ else max(frac - self.quantile_step, 0.0)
        theta = float(torch.quantile(norms.double(), q))
        if raise_ and q >= 1.0:
            theta = float(norms.max()) * (1 + 1e-6) + 1e-12
        self.theta = theta
        return theta

    @torch.no_grad()
    def zero_small_groups(self) -> int:
        """Zero (for good) every group whose norm is below epsilon; returns how many were new."""
        new = 0
        for name in self.convs:
            keep = self.scaled_norms(name).cpu() >= self.epsilon
            old = self.masks.get(name)
            if old is not None:
                keep &= old
                new += int((old & ~keep).sum())
            else:
                new += int((~keep).sum())
            self.set_mask(name, keep)
        return new

    # ------------------------------------------------------------ hooks
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise RuntimeError(
                f"GradualGroupSparsification monitors {self.monitor!r}, which was never logged; "
                f"logged metrics are: {sorted(trainer.callback_metrics)}"
            )
        value = float(trainer.callback_metrics[self.monitor])
        if trainer.state.fn == "validate":  # a validate run before fit gives the input network's value
            if self.baseline is None:
                self.baseline = value
            return
        if not self.scale:  # dense warm-up (start_epoch): its last value becomes the baseline
            self.warmup_value = value
            return
        if self.baseline is None:
            self.baseline = value
        drop = self._drop(value)
        new = 0
        if self.finetune_from is None:
            new = self.zero_small_groups()
            self.step_theta(raise_=drop < self.delta)
            self.stall = 0 if new else self.stall + 1
            if self.stall >= self.patience:
                self.finetune_from = trainer.current_epoch + 1  # the rest of this epoch is a bonus
                rank_zero_info(
                    f"GradualGroupSparsification: no group zeroed for {self.patience} validations; "
                    f"patterns frozen, fine-tuning for {self.finetune_epochs} epoch(s)"
                )
                if self.finetune_epochs == 0:
                    trainer.should_stop = True
        self.sync(trainer)
        self.apply_masks(trainer)
        progress = trainer.current_epoch + (
            trainer.fit_loop.epoch_loop.batch_progress.current.ready / max(1, trainer.num_training_batches)
        )
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        entry = {
            "step": trainer.global_step,
            "epoch_progress": round(progress, 4),
            "theta": self.theta,
            "drop": drop,
            "delta": self.delta,
            "zeroed_new": new,
            "baseline": self.baseline,
            "density": {r["name"]: r["density"] for r in self.reports()},
            "metrics": metrics,
        }
        self.history.append(entry)
        self.log_metrics(trainer, {"gbd/theta": self.theta, "gbd/drop": drop, **self.density_metrics()})

    def _start_sparsification(self, trainer: Trainer) -> None:
        """Fix the layers' weight scale (restored on resume) and the baseline after a warm-up."""
        self.scale = {n: float(self.norms(n).pow(2).mean().sqrt().clamp_min(1e-12)) for n in self.convs}
        if self.baseline is None and self.warmup_value is not None:
            self.baseline = self.warmup_value
        self.sync(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the scale is fixed once (restored on resume), at the first epoch >= start_epoch
        if not self.scale and trainer.current_epoch >= self.start_epoch:
            self._start_sparsification(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (
            self.finetune_from is not None
            and trainer.current_epoch + 1 - self.finetune_from >= self.finetune_epochs > 0
        ):
            trainer.should_stop = True

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if self.finetune_from is not None or self.theta <= 0 or self.lam == 0:
            return
        for name, conv in self.convs.items():
            w = conv.weight
            if w.grad is None:
                continue
            theta = self.theta * self.scale[name] if self.relative else self.theta
            w.grad.add_(l21_grad(w, self.lam, conv.groups, theta=theta))

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "theta": self.theta,
            "baseline": self.baseline,
            "scale": dict(self.scale),
            "stall": self.stall,
            "finetune_from": self.finetune_from,
            "warmup_value": self.warmup_value,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.theta, self.baseline = float(state_dict["theta"]), state_dict["baseline"]
        self.scale, self.stall = dict(state_dict["scale"]), int(state_dict["stall"])
        self.finetune_from = state_dict["finetune_from"]
        self.warmup_value = state_dict.get("warmup_value")
