"""One-call ONNX export of a trained model (or of a ``.pt2`` program), for ``gbd-export model.onnx``
or any other ONNX runtime.

Plain ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``: no onnxscript
needed), opset 17, the batch dimension dynamic.  In eval mode torch folds each BatchNorm into its
conv, which keeps the GBD zero groups W[:, s, i, j] zero (a per-output-channel scale), so the
compile side finds the same patterns as in the ``.pt2``.  Layers keep their PyTorch names in the
ONNX node names (``/layer1/layer1.0/conv1/Conv``).
"""

from __future__ import annotations

import os
import warnings

import torch

#: the opset ``save_onnx`` writes (TVM's Relax ONNX frontend and ONNX Runtime both read it)
OPSET = 17


def _exportable(model):
    """An ``nn.Module`` the TorchScript exporter can trace: the model itself, or for an
    ``ExportedProgram`` its unflattened module (the original module tree, so the ONNX node names
    keep the layer names), without the input-shape checks that do not trace."""
    if not isinstance(model, torch.export.ExportedProgram):
        return model
    try:
        module = torch.export.unflatten(model)
        module.check_input_constraints = False  # its checks read SymInts, which JIT tracing refuses
        return module
    except Exception:  # noqa: BLE001 - a program unflatten refuses: its flat graph, no hooks
        flat = model.module(check_guards=False)
        return torch.fx.GraphModule(flat, flat.graph)


def save_onnx(
    model,
    example_input: torch.Tensor,
    path,
    *,
    dynamic_batch: bool = True,
    opset_version: int = OPSET,
    input_name: str = "input",
    output_name: str = "output",
):
    """Export ``model`` (an ``nn.Module`` in eval mode on CPU, or a ``torch.export``
    ``ExportedProgram`` such as a loaded ``model.pt2``) to ``path`` (.onnx) with
    ``torch.onnx.export(dynamo=False)``.

    With ``dynamic_batch`` the first dim of the input and of the output is the symbolic ``batch``.
    Returns ``path``.  The model's training mode is restored afterwards.
    """
    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ValueError(f"{path}: the file name must end in .onnx")
    is_module = isinstance(model, torch.nn.Module)
    was_training = is_module and model.training
    if is_module:
        model = model.eval().to("cpu")
    example_input = example_input.detach().to("cpu")
    axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(
                _exportable(model),
                (example_input,),
                path,
                dynamo=False,
                opset_version=opset_version,
                input_names=[input_name],
                output_names=[output_name],
                dynamic_axes=axes,
            )
    finally:
        if was_training:
            model.train()
    return path
