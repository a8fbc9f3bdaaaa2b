"""Checkpoint I/O that never loses the previous checkpoint and never unpickles code.

``AtomicCheckpointIO`` is a Lightning ``CheckpointIO`` plugin (``Trainer(plugins=[AtomicCheckpointIO()])``;
the ``gbd`` recipe runner adds it by default):

* save: ``torch.save`` into a temporary file *in the checkpoint's own folder*, ``fsync``, then
  ``os.replace`` - an atomic rename on one filesystem.  Lightning's default writes to the system
  temp folder and moves the file across filesystems with a copy, which can truncate the previous
  checkpoint when the target disk fills during that copy.  A failed write (disk full, file-size
  limit, I/O error) removes the temporary file, keeps the previous checkpoint and raises
  ``CheckpointWriteError`` naming the path and the cause.
* load: ``torch.load(weights_only=True)`` with a one-line error for a missing, truncated or unsafe
  file (``load_checkpoint`` below), also when Lightning resumes (``ckpt_path=``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..core import groups as G

#: the key under which the sparsity callbacks store their masks in a Lightning checkpoint
PATTERNS_KEY = "gbd_patterns"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous file at that path is untouched."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            kept = "the previous checkpoint there is kept" if path.exists() else "no previous checkpoint there"
            raise CheckpointWriteError(
                exc.errno,
                f"could not write checkpoint {path}: {exc.strerror or exc} (disk full or file-size limit?); {kept}",
            ) from None

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


def read_patterns(checkpoint_path: str | Path) -> dict[str, dict[str, Any]]:
    """The masks stored by the sparsity callbacks in a Lightning checkpoint, without the callback.

    Loads with ``weights_only=True``; returns ``{layer: {"mask", "groups", "weight_shape", "patterns"}}``."""
    ckpt = load_checkpoint(checkpoint_path)
    out = {}
    for name, entry in ckpt.get(PATTERNS_KEY, {}).items():
        out[name] = {**entry, "patterns": G.patterns(entry["mask"])}
    return out


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a one-line error for a missing, truncated or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, forbidden pickle globals, ...: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"checkpoint {path} is corrupt or unsafe to load: {first}") from None
