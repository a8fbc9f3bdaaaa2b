"""``gbd calibration-set RUN_DIR|RECIPE``: the inputs an INT8 export is calibrated on
(``gbd-export RUN_DIR --dtype int8 --calibration RUN_DIR``): ``n`` images drawn at random (seeded)
from the training split of the recipe's datamodule, saved as ``calibration.npy`` (float32, NCHW)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from ..core.quant import RUN_CALIBRATION


def datamodule_from_config(config: Path):
    """The recipe's datamodule (its ``data`` section: class_path + init_args), set up for fitting."""
    conf = yaml.safe_load(config.read_text())
    data = conf.get("data") if isinstance(conf, dict) else None
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{config}: no data section with a class_path")
    module, _, name = data["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    dm = cls(**(data.get("init_args") or {}))
    dm.setup("fit")
    return dm


def calibration_set(config: Path, n: int = 256, seed: int = 0) -> np.ndarray:
    """``n`` training images of the recipe's data (all of them if fewer), float32 NCHW.

    >>> x = calibration_set(Path("recipes/lenet5_fmnist_gradual.yaml"), n=8)  # doctest: +SKIP
    >>> x.shape, x.dtype                                                          # doctest: +SKIP
    ((8, 1, 28, 28), dtype('float32'))
    """
    ds = datamodule_from_config(config).train_set
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([ds[int(i)][0] for i in idx]).float().numpy()


def calibration_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gbd calibration-set", description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="a `gbd fit` run directory (its config.yaml) or a recipe .yaml")
    p.add_argument("-n", "--images", type=int, default=256, help="images to draw (default 256)")
    p.add_argument("--out", type=Path, default=None, help=f"default: RUN_DIR/{RUN_CALIBRATION}")
    a = p.parse_args(argv)
    config = a.source / "config.yaml" if a.source.is_dir() else a.source
    out = a.out or (a.source / RUN_CALIBRATION if a.source.is_dir() else Path(RUN_CALIBRATION))
    if not config.is_file():
        print(f"gbd: {config}: no such recipe / run config", file=sys.stderr)
        return 2
    if a.images < 1:
        print(f"gbd: --images must be at least 1, got {a.images}", file=sys.stderr)
        return 2
    try:
        x = calibration_set(config, a.images)
    except (ValueError, FileNotFoundError, ImportError, AttributeError, TypeError) as exc:
        print(f"gbd: {config}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, x)
    print(f"gbd: wrote {out} ({x.shape[0]} images of shape {list(x.shape[1:])})")
    return 0
