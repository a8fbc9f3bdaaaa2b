"""lightning-gbd: group-wise brain damage for PyTorch Lightning (training side).

Flow: model -> callbacks -> checkpoint with patterns -> ``model.pt2`` -> ``gbd-export``
(``tvm_passes``) -> compiled artifact.  Layers (docs/architecture.md): ``core`` (plain
torch/numpy maths) <- ``training`` (callbacks, checkpoint I/O, reports) <- ``app`` (``gbd``
CLI, models, data, demo).  The public names below are imported on first use, so that
``lightning_gbd.core`` (which the compile side reads) does not pull in Lightning.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "GroupSparsityRegularizer": "training.callbacks",
    "GroupWiseSparsification": "training.callbacks",
    "GradualGroupSparsification": "training.callbacks",
    "FixedSparsityPatterns": "training.callbacks",
    "LowRankDecomposition": "training.callbacks",
    "ForceRegularization": "training.callbacks",
    "PATTERN_LIBRARY": "training.callbacks",
    "AtomicCheckpointIO": "training.checkpoint",
    "CheckpointWriteError": "training.checkpoint",
    "load_checkpoint": "training.checkpoint",
    "read_patterns": "training.checkpoint",
    "rank_table": "training.report",
    "save_pt2": "core.pt2",
    "save_onnx": "core.onnx_export",
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lightning_gbd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
