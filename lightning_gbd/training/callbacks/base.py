"""What every group-sparsity callback shares: layer selection, per-group masks that keep pruned
groups exactly zero through any optimizer, DDP synchronisation, checkpoint state and reporting."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ...core.groups import expand_group_mask, group_norms, select_convs
from ..checkpoint import PATTERNS_KEY
from ..report import format_table, layer_reports


class GroupMaskCallback(Callback):
    """Base class: holds a boolean ``(S, kh, kw)`` mask per selected conv (True = group kept).

    After every optimizer step (a ``register_step_post_hook`` on each optimizer) the masked
    weights and the matching optimizer state (momentum, Adam moments) are set to zero, so pruned
    groups stay exactly zero under momentum, weight decay or AdamW. Masks are part of
    ``state_dict`` (exact resume) and are written to the checkpoint under ``PATTERNS_KEY``
    so they can be read without the callback (:func:`lightning_gbd.read_patterns`).
    """

    def __init__(self, layers: str | Iterable[str] | None = None) -> None:
        self.layers = layers if layers is None or isinstance(layers, str) else list(layers)
        self.masks: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, Any]] = []
        self.convs: dict[str, nn.Conv2d] = {}
        self.out_sizes: dict[str, tuple[int, int]] = {}
        self._handles: list[Any] = []
        self._size_hooks: list[Any] = []

    # ----------------------------------------------------------------- set-up
    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=str(self.layers))

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.convs = select_convs(pl_module, self.layers)
        for name, conv in self.convs.items():
            self._size_hooks.append(
                conv.register_forward_hook(lambda m, i, o, n=name: self.out_sizes.__setitem__(n, tuple(o.shape[-2:])))
            )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for opt in trainer.optimizers:
            self._handles.append(opt.register_step_post_hook(lambda *_: self.apply_masks(trainer)))
        self.apply_masks(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for h in self._handles + self._size_hooks:
            h.remove()
        self._handles, self._size_hooks = [], []

    # ----------------------------------------------------------------- masks
    def norms(self, name: str) -> torch.Tensor:
        conv = self.convs[name]
        return group_norms(conv.weight.detach(), conv.groups)

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        conv = self.convs[name]
        expected = (conv.in_channels, *conv.kernel_size)
        if tuple(mask.shape) != expected:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, expected {expected}")
        self.masks[name] = mask.detach().to("cpu", torch.bool).clone()

    @torch.no_grad()
    def apply_masks(self, trainer: Trainer | None = None) -> None:
        """Zero the pruned groups' weights, gradients and optimizer state."""
        states = [opt.state for opt in trainer.optimizers] if trainer is not None else []
        for name, mask in self.masks.items():
            w = self.convs[name].weight
            keep = expand_group_mask(mask.to(w.device), w.shape, self.convs[name].groups).to(w.dtype)
            w.mul_(keep)
            if w.grad is not None:
                w.grad.mul_(keep)
            for state in states:
                for v in state.get(w, {}).values():
                    if torch.is_tensor(v) and v.shape == w.shape:
                        v.mul_(keep)

    def sync(self, trainer: Trainer) -> None:
        """Make rank 0's masks and controller state the state of every rank (DDP)."""
        if trainer.world_size > 1:
            state = trainer.strategy.broadcast(self.state_dict(), src=0)
            self.load_state_dict(state)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.clone() for k, v in self.masks.items()}, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = {k: v.to(torch.bool).clone() for k, v in state_dict["masks"].items()}
        self.history = list(state_dict["history"])

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        store = checkpoint.setdefault(PATTERNS_KEY, {})
        for name, mask in self.masks.items():
            conv = self.convs[name]
            store[name] = {"mask": mask.clone(), "groups": conv.groups, "weight_shape": list(conv.weight.shape)}

    # ----------------------------------------------------------------- reports
    def reports(self) -> list[dict[str, Any]]:
        return layer_reports(self.convs, self.masks, self.out_sizes)

    def log_metrics(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def density_metrics(self) -> dict[str, float]:
        return {f"gbd/density/{r['name']}": r["density"] for r in self.reports()}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.masks:
            rank_zero_info(f"{type(self).__name__} summary\n{format_table(self.reports())}")
