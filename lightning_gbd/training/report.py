"""Per-layer sparsity reports: the table, ``sparsity.json``, and the paper-000 figures
(Fig. 4: learned patterns; Fig. 5: density, accuracy drop and theta over training)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core import groups as G
from ..core.force import rank_for_error


def layer_reports(
    convs: dict[str, nn.Conv2d], masks: dict[str, torch.Tensor], out_sizes: dict[str, tuple[int, int]]
) -> list[dict[str, Any]]:
    """One dict per conv: name, shape, density, patterns, dead inputs, FLOPs dense/sparse."""
    rows = []
    for name, conv in convs.items():
        mask = masks.get(name)
        if mask is None:  # an unpruned layer: read the structure off its zeros
            mask = G.group_norms(conv.weight.detach(), conv.groups) > 0
        hw = out_sizes.get(name)
        dense = G.conv_flops(conv.weight.shape, hw, conv.groups) if hw else None
        sparse = G.conv_flops(conv.weight.shape, hw, conv.groups, mask) if hw else None
        rows.append(
            {
                "name": name,
                "shape": list(conv.weight.shape),
                "groups": conv.groups,
                "density": G.density(mask),
                "patterns": G.patterns(mask),
                "dead_inputs": G.dead_inputs(mask),
                "flops_dense": dense,
                "flops_sparse": sparse,
            }
        )
    return rows


def flop_weighted_density(rows: Iterable[dict[str, Any]]) -> float:
    rows = [r for r in rows if r["flops_dense"]]
    return sum(r["flops_sparse"] for r in rows) / max(1, sum(r["flops_dense"] for r in rows))


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'layer':<22}{'shape':<18}{'density':>8}{'dead in':>9}{'MFLOPs dense':>14}{'MFLOPs sparse':>15}"
        f"{'speed-up':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        fd, fs = r["flops_dense"], r["flops_sparse"]
        speed = f"{fd / fs:.2f}x" if fd and fs else ("inf" if fd else "-")
        mfd = f"{fd / 1e6:.3f}" if fd else "-"
        mfs = f"{fs / 1e6:.3f}" if fs is not None else "-"
        shape = "x".join(map(str, r["shape"]))
        lines.append(
            f"{r['name']:<22}{shape:<18}{r['density']:>8.3f}{len(r['dead_inputs']):>9}{mfd:>14}{mfs:>15}{speed:>10}"
        )
    if any(r["flops_dense"] for r in rows):
        tau = flop_weighted_density(rows)
        lines.append(f"{'FLOP-weighted':<40}{tau:>8.3f}{'':>38}{(1 / tau if tau else math.inf):>9.2f}x")
    return "\n".join(lines)


def write_sparsity_json(path: str | Path, rows: list[dict[str, Any]], **top: Any) -> None:
    """``{**top, "layers": rows}``; patterns as lists of (i, j) pairs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**top, "layers": rows}, indent=1))


def plot_patterns(rows: list[dict[str, Any]], path: str | Path, max_inputs: int = 64) -> None:
    """Paper 000 Fig. 4: each input map's pattern Omega_s as a small binary image, one panel per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 4.8), squeeze=False)
    for ax, r in zip(axes[0], rows):
        _, _, kh, kw = r["shape"]
        pats = r["patterns"][:max_inputs]
        cols = max(1, math.ceil(math.sqrt(len(pats))))
        nrows = math.ceil(len(pats) / cols)
        canvas = torch.full((nrows * (kh + 1) + 1, cols * (kw + 1) + 1), 0.5)
        for s, pat in enumerate(pats):
            y0, x0 = 1 + (s // cols) * (kh + 1), 1 + (s % cols) * (kw + 1)
            canvas[y0 : y0 + kh, x0 : x0 + kw] = 1.0
            for i, j in pat:
                canvas[y0 + i, x0 + j] = 0.0
        ax.imshow(canvas.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{r['name']}: density {r['density']:.3f}\n(black = kept, {len(pats)} input maps)")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_process(history: list[dict[str, Any]], path: str | Path, holdout_key: str | None = None) -> None:
    """Paper 000 Fig. 5: density per layer, accuracy drop (control / hold-out) and theta over epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [h["epoch_progress"] for h in history]
    fig, axes = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    layers = sorted({k for h in history for k in h.get("density", {})})
    for name in layers:
        axes[0].plot(x, [h["density"].get(name, float("nan")) for h in history], label=name)
    axes[0].set_ylabel("density")
    axes[0].legend()
    axes[1].plot(x, [100 * h["drop"] for h in history], label="drop on control")
    if holdout_key:
        base = history[0].get("holdout_baseline")
        if base is not None:
            axes[1].plot(
                x,
                [100 * (base - h["metrics"].get(holdout_key, float("nan"))) for h in history],
                label="drop on hold-out",
            )
    axes[1].axhline(100 * history[0].get("delta", 0.0), color="gray", ls="--", lw=0.8, label="delta")
    axes[1].set_ylabel("accuracy drop (points)")
    axes[1].legend()
    axes[2].plot(x, [h["theta"] for h in history])
    axes[2].set_ylabel("theta")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rank_table(model: nn.Module, error: float = 0.05, layers: dict[str, nn.Conv2d] | None = None) -> list[dict]:
    """Paper 002 Table 2 layout: per conv, rank K at error e and K/N."""
    layers = layers if layers is not None else {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    rows = []
    for name, conv in layers.items():
        k = rank_for_error(conv.weight, error, conv.groups)
        rows.append({"name": name, "filters": conv.out_channels, "rank": k, "rank_ratio": k / conv.out_channels})
    return rows
