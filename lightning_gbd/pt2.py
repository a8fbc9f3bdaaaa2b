"""One-call ``torch.export`` of a trained model to a ``.pt2`` file for ``gbd-export``."""

from __future__ import annotations

import os

import torch


def save_pt2(model: torch.nn.Module, example_input: torch.Tensor, path, *, dynamic_batch: bool = True):
    """Export ``model`` (in eval mode, on CPU) with ``torch.export`` and write ``path`` (.pt2).

    With ``dynamic_batch`` the batch dimension is exported symbolic when the model allows it,
    so ``gbd-export --input-shape`` can pick another batch size; otherwise (or if torch has to
    specialize it) the shape of ``example_input`` is fixed.  The example input is stored too.
    Returns the ``ExportedProgram``.
    """
    path = os.fspath(path)
    if not path.endswith(".pt2"):
        raise ValueError(f"{path}: the file name must end in .pt2")
    was_training = model.training
    model = model.eval()
    example_input = example_input.detach().to("cpu")
    model = model.to("cpu")
    ep = None
    try:
        with torch.no_grad():
            if dynamic_batch and example_input.dim() > 0 and example_input.shape[0] > 1:
                try:
                    batch = torch.export.Dim("batch", min=1, max=65536)
                    ep = torch.export.export(model, (example_input,), dynamic_shapes=({0: batch},))
                except Exception:  # noqa: BLE001 - fall back to a static export
                    ep = None
            if ep is None:
                ep = torch.export.export(model, (example_input,))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        torch.export.save(ep, path)
    finally:
        if was_training:
            model.train()
    return ep
