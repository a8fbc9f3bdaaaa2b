"""One-call ``torch.export`` of a trained model to a self-contained ``.pt2`` file for ``gbd-export``.

The file holds the program, its weights, the example input and the export settings (target,
input shape) as the extra file ``EXPORT_SETTINGS``: the compile side needs nothing else - no
recipe, no datamodule, no training data.  ``torch.export.load`` reads it back safely (no pickle).
"""

from __future__ import annotations

import json
import os

import torch

#: name of the export settings JSON inside a ``.pt2`` (``torch.export.save(extra_files=...)``)
EXPORT_SETTINGS = "gbd_export.json"
#: file name of the program a ``gbd fit`` run leaves in its run directory
RUN_PT2 = "model.pt2"


def save_pt2(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    path,
    *,
    dynamic_batch: bool = True,
    settings: dict | None = None,
):
    """Export ``model`` (in eval mode, on CPU) with ``torch.export`` and write ``path`` (.pt2).

    With ``dynamic_batch`` the batch dimension is exported symbolic when the model allows it,
    so ``gbd-export --input-shape`` can pick another batch size; otherwise (or if torch has to
    specialize it) the shape of ``example_input`` is fixed.  The example input is stored too, and
    ``settings`` (e.g. ``{"target": "llvm"}``) as ``EXPORT_SETTINGS``.  Returns the ``ExportedProgram``.
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
        extra = {EXPORT_SETTINGS: json.dumps({"input_shape": list(example_input.shape), **(settings or {})})}
        torch.export.save(ep, path, extra_files=extra)
    finally:
        if was_training:
            model.train()
    return ep
