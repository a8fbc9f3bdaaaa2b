"""``LowRankDecomposition``: replace convs by their low-rank forms, then fine-tune (paper 002, 001)."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ...core.force import default_force_layers
from ...core.groups import select_convs
from ...core.lowrank import METHODS, decomposed_flops
from ..checkpoint import load_checkpoint

STATE_KEY = "gbd_lowrank"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


class LowRankDecomposition(Callback):
    """At the start of fit (``epoch=0``) or of a later epoch, replace every selected conv by its
    decomposition where that lowers its FLOPs, then train on (fine-tuning).

    Args:
        method: ``"pca"`` (default; paper 002), ``"svd"``, ``"kmeans"``, ``"separable"``, ``"cp"``.
        error: reconstruction error e that chooses the rank (pca/svd/separable; paper 002: 5%).
        ranks: ``{layer: K}`` given ranks (required for kmeans/cp).
        layers: regex over names; ``None`` = every conv except the first and 1x1 (authors' choice).
        epoch: when to decompose. Decomposing at ``epoch > 0`` re-creates the optimizers
            (``configure_optimizers``) and needs a single-device strategy.
        input_shape: ``(1, C, H, W)`` of the model input, for the FLOP comparison; if ``None``
            it is read from the first training batch.
    Resuming from a checkpoint written after the decomposition rebuilds the decomposed modules
    before the weights are restored (the ranks are stored under ``"gbd_lowrank"``).
    """

    def __init__(
        self,
        method: str = "pca",
        error: float = 0.05,
        ranks: dict[str, int] | None = None,
        layers: str | None = None,
        epoch: int = 0,
        input_shape: tuple[int, ...] | None = None,
    ) -> None:
        if method not in METHODS or method in ("bicluster", "monochromatic"):
            raise ValueError(f"unknown method {method!r}; use one of pca, svd, kmeans, separable, cp")
        if method in ("kmeans", "cp") and not ranks:
            raise ValueError(f"method {method!r} needs ranks={{layer: K}}")
        if not 0 <= error < 1:
            raise ValueError(f"error must be in [0, 1), got {error}")
        self.method, self.error, self.ranks, self.layers, self.epoch = method, error, dict(ranks or {}), layers, epoch
        self.input_shape = input_shape
        self.done: dict[str, dict[str, Any]] = {}

    def _targets(self, pl_module: LightningModule) -> dict[str, nn.Conv2d]:
        if self.layers is None:
            return default_force_layers(pl_module)
        return select_convs(pl_module, self.layers)

    def decompose(self, pl_module: LightningModule, forced: dict[str, dict[str, Any]] | None = None) -> None:
        """Replace the convs (or, with ``forced``, rebuild the recorded structure)."""
        sizes: dict[str, tuple] = {}
        targets = self._targets(pl_module) if forced is None else {n: pl_module.get_submodule(n) for n in forced}
        if forced is None:
            hooks = [
                m.register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, tuple(i[0].shape)))
                for n, m in targets.items()
            ]
            with torch.no_grad():
                pl_module(torch.zeros(self.input_shape, device=pl_module.device))
            for h in hooks:
                h.remove()
        for name, conv in targets.items():
            fn = METHODS[self.method]
            if forced is not None:
                mod, err = fn(conv, rank=forced[name]["rank"])
            elif self.method in ("kmeans", "cp"):
                if name not in self.ranks:
                    continue
                mod, err = fn(conv, rank=self.ranks[name])
            else:
                mod, err = fn(conv, rank=self.ranks.get(name), error=self.error)
            if forced is None:
                shape = (1, *sizes[name][1:])
                before, after = decomposed_flops(conv, shape), decomposed_flops(mod, shape)
                if after >= before:
                    rank_zero_info(f"LowRankDecomposition: {name} kept ({after} >= {before} FLOPs at this rank)")
                    continue
                rank = (
                    mod[0].out_channels // conv.groups
                    if self.method in ("pca", "svd", "kmeans", "separable")
                    else mod[0].out_channels
                )
                self.done[name] = {
                    "rank": rank,
                    "error": err,
                    "flops_before": before,
                    "flops_after": after,
                    "method": self.method,
                }
            _set_module(pl_module, name, mod)
        if forced is None:
            rank_zero_info(
                "LowRankDecomposition:\n"
                + "\n".join(
                    f"  {n}: rank {d['rank']}, error {d['error']:.4f}, "
                    f"FLOPs x{d['flops_after'] / d['flops_before']:.3f}"
                    for n, d in self.done.items()
                )
            )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.ckpt_path:  # resume: rebuild the decomposed structure before the weights load
            state = load_checkpoint(trainer.ckpt_path).get("callbacks", {}).get(self.state_key, {})
            if state.get("done"):
                self.done = dict(state["done"])
                self.decompose(pl_module, forced=self.done)
                return
        if self.epoch == 0 and not self.done:
            if self.input_shape is None:
                dl = trainer.datamodule.train_dataloader() if trainer.datamodule is not None else None
                if dl is None:
                    raise ValueError("LowRankDecomposition needs input_shape=(1, C, H, W) without a datamodule")
                self.input_shape = (1, *next(iter(dl))[0].shape[1:])
            self.decompose(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.epoch > 0 and trainer.current_epoch >= self.epoch and not self.done:
            if trainer.world_size > 1:
                raise RuntimeError("LowRankDecomposition(epoch > 0) needs a single device; use epoch=0 under DDP")
            if self.input_shape is None:
                raise ValueError("LowRankDecomposition(epoch > 0) needs input_shape=(1, C, H, W)")
            self.decompose(pl_module)
            trainer.strategy.setup_optimizers(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"done": dict(self.done)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = dict(state_dict["done"])
