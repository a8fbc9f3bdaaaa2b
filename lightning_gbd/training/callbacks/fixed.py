"""``FixedSparsityPatterns``: patterns chosen before training and kept (paper 000 sections 4.1, 5.2)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning.pytorch import LightningModule, Trainer

from .base import GroupMaskCallback


def _centered(kh: int, kw: int, offsets: list[tuple[int, int]], name: str) -> torch.Tensor:
    ci, cj = kh // 2, kw // 2
    mask = torch.zeros(kh, kw, dtype=torch.bool)
    for di, dj in offsets:
        i, j = ci + di, cj + dj
        if not (0 <= i < kh and 0 <= j < kw):
            raise ValueError(f"pattern {name!r} does not fit a {kh}x{kw} kernel")
        mask[i, j] = True
    return mask


PATTERN_LIBRARY: dict[str, list[tuple[int, int]]] = {
    "1x1": [(0, 0)],
    "1x2": [(0, 0), (0, 1)],
    "1x3_vertical": [(-1, 0), (0, 0), (1, 0)],
    "1x3_horizontal": [(0, -1), (0, 0), (0, 1)],
    "cross_3x3": [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)],
    "square_3x3": [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)],
    "diamond_5x5": [(di, dj) for di in range(-2, 3) for dj in range(-2, 3) if abs(di) + abs(dj) <= 2],
}


def library_pattern(name: str, kh: int, kw: int) -> torch.Tensor:
    """The ``(kh, kw)`` boolean mask of a named pattern, centred in the kernel."""
    if name not in PATTERN_LIBRARY:
        raise ValueError(f"unknown pattern {name!r}; known: {sorted(PATTERN_LIBRARY)}")
    return _centered(kh, kw, PATTERN_LIBRARY[name], name)


class FixedSparsityPatterns(GroupMaskCallback):
    """Impose fixed patterns on every selected conv at the start of training and keep them.

    Args:
        pattern: a name from :data:`PATTERN_LIBRARY` used for every input map of every layer,
            or ``{layer_name: name}``.
        masks: user-given masks ``{layer_name: bool tensor}`` of shape ``(kh, kw)`` (one pattern
            for all input maps) or ``(S, kh, kw)``; they override ``pattern`` for those layers.
        layers: regex, list of names, or ``None`` for every Conv2d.
    """

    def __init__(
        self,
        pattern: str | dict[str, str] | None = "cross_3x3",
        masks: dict[str, torch.Tensor] | None = None,
        layers: str | Iterable[str] | None = None,
    ) -> None:
        super().__init__(layers)
        if isinstance(pattern, str) and pattern not in PATTERN_LIBRARY:
            raise ValueError(f"unknown pattern {pattern!r}; known: {sorted(PATTERN_LIBRARY)}")
        self.pattern, self.user_masks = pattern, dict(masks or {})

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        unknown = set(self.user_masks) - set(self.convs)
        if isinstance(self.pattern, dict):
            unknown |= set(self.pattern) - set(self.convs)
        if unknown:
            raise ValueError(f"patterns given for unknown layers {sorted(unknown)}; selected: {sorted(self.convs)}")
        if self.masks:  # restored from a checkpoint
            return
        for name, conv in self.convs.items():
            kh, kw = conv.kernel_size
            if name in self.user_masks:
                m = torch.as_tensor(self.user_masks[name]).bool()
                if m.dim() == 2:
                    m = m.expand(conv.in_channels, kh, kw)
            else:
                pat = self.pattern.get(name) if isinstance(self.pattern, dict) else self.pattern
                if pat is None:
                    continue
                m = library_pattern(pat, kh, kw).expand(conv.in_channels, kh, kw)
            self.set_mask(name, m)
