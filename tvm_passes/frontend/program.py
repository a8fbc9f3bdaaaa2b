"""The torch side of the frontend: read a ``.pt2``, find its example input and shape, re-export
for another static shape, refuse NaN/Inf weights - all with one-line ``ExportError``s."""

from __future__ import annotations

import json
import os

from lightning_gbd.core.pt2 import EXPORT_SETTINGS, RUN_PT2

from ..errors import ExportError


def _torch():
    import torch

    return torch


def load_exported_program(path: str):
    """Load a ``.pt2`` with ``torch.export.load`` (the safe loader); one-line errors."""
    return read_pt2(path)[0]


def resolve_model_path(path: str) -> str:
    """A ``.pt2`` file, or a ``gbd fit`` run directory holding ``model.pt2``."""
    if os.path.isdir(path):
        found = os.path.join(path, RUN_PT2)
        if not os.path.isfile(found):
            raise ExportError(f"{path}: a directory without {RUN_PT2} (not a finished `gbd fit` run)")
        return found
    if path.endswith(".ckpt"):
        raise ExportError(
            f"{path}: a Lightning checkpoint; export its run directory (it holds {RUN_PT2}) or write a "
            ".pt2 from it with `gbd pt2 --config RUN/config.yaml --ckpt CKPT --out model.pt2`"
        )
    return path


def read_pt2(path: str) -> tuple:
    """``(ExportedProgram, export settings dict)`` of a ``.pt2`` (settings ``{}`` when it has none)."""
    torch = _torch()
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file")
    if not path.endswith(".pt2"):
        raise ExportError(
            f"{path}: unsupported model file (expected a torch.export .pt2 written by "
            "lightning_gbd.save_pt2 or torch.export.save, or an .onnx model)"
        )
    import logging
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path}: not a valid torch.export .pt2 file (not a zip archive)")
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # torch logs a traceback before raising
    extra = {EXPORT_SETTINGS: ""}
    try:
        ep = torch.export.load(path, extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - any failure means a malformed file
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: not a valid torch.export .pt2 file ({type(exc).__name__}: {msg[:200]})") from None
    finally:
        logger.setLevel(level)
    try:
        settings = json.loads(extra[EXPORT_SETTINGS]) if extra[EXPORT_SETTINGS] else {}
    except ValueError:
        raise ExportError(f"{path}: its {EXPORT_SETTINGS} is not valid JSON") from None
    return ep, settings if isinstance(settings, dict) else {}


def example_input_of(ep) -> object | None:
    """The example input stored with an ExportedProgram (first user input), if any."""
    ex = getattr(ep, "example_inputs", None)
    if ex:
        args, _kwargs = ex
        if args:
            return args[0]
    return None


def _user_input_value(ep):
    """The fake tensor of the (first) user input of ``ep``, or None."""
    users = list(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in users:
            return node.meta.get("val")
    return None


def input_shape_of(ep) -> tuple | None:
    """Static input shape of the (single) user input, None if symbolic."""
    val = _user_input_value(ep)
    if val is None or not all(isinstance(d, int) for d in val.shape):
        return None  # torch.SymInt: a dynamic dimension (int(d) would give its hint)
    return tuple(int(d) for d in val.shape)


def specialize(ep_or_module, example_input, *, dynamic_batch=False):
    """An ExportedProgram for ``example_input``'s shape (re-exported when needed); with
    ``dynamic_batch`` its batch dim is symbolic (any batch at run time).  A model that fixes its
    batch (e.g. a reshape to a constant) falls back to the static shape with a warning."""
    torch = _torch()
    shape = tuple(example_input.shape)
    if isinstance(ep_or_module, torch.export.ExportedProgram):
        if input_shape_of(ep_or_module) == shape and not dynamic_batch:
            return ep_or_module
        module = ep_or_module.module(check_guards=False)  # its shape guards are the old shape's
    else:
        module = ep_or_module
    # ep.module() refuses eval()/train(); it is already an inference graph
    was_training = isinstance(module, torch.nn.Module) and not isinstance(ep_or_module, torch.export.ExportedProgram)
    was_training = was_training and module.training
    try:
        if was_training:
            module.eval()  # inference graph: BN with running statistics, no dropout
        with torch.no_grad():
            if dynamic_batch:
                ep = _dynamic_batch_export(module, example_input)
                if ep is not None:
                    return ep
            if isinstance(ep_or_module, torch.export.ExportedProgram):
                # the program's input spec pins its own batch: free it first, then fix the new one
                # (traced at batch >= 2: a batch of 1 would be specialized, and checked against the old)
                free = ({0: torch.export.Dim("batch", min=1)},)
                trace = example_input if shape[0] >= 2 else example_input.expand(2, *shape[1:])
                module = torch.export.export(module, (trace,), dynamic_shapes=free).module()
            return torch.export.export(module, (example_input,))
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"cannot export the model for input shape {list(shape)}; re-export the .pt2 with this "
            f"shape ({type(exc).__name__}: {msg[:200]})"
        ) from None
    finally:
        if was_training:
            module.train()


def _dynamic_batch_export(module, example_input):
    """``torch.export`` with a symbolic batch (traced at batch >= 2: torch specializes 0 and 1)."""
    import warnings

    torch = _torch()
    x = example_input if example_input.shape[0] > 1 else torch.cat([example_input, example_input])
    # no upper bound: Relax would plan every buffer for it (a 65536-image activation does not fit)
    batch = torch.export.Dim("batch", min=1)
    try:
        return torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # noqa: BLE001 - any refusal means: this model fixes its batch
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        warnings.warn(
            f"gbd-export: the model does not export with a dynamic batch ({first}); "
            f"compiling for batch {example_input.shape[0]} only",
            stacklevel=4,
        )
        return None


def is_dynamic_batch(ep) -> bool:
    """The first user input's batch dim is symbolic."""
    val = _user_input_value(ep)
    return val is not None and not isinstance(val.shape[0], int)


def check_finite(ep) -> None:
    """Refuse weights / buffers holding NaN or Inf, naming the layer (before any compilation)."""
    torch = _torch()
    tensors = list(ep.state_dict.items()) + list(getattr(ep, "constants", {}).items())
    for key, val in tensors:
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        val = val.detach()
        bad = "NaN" if torch.isnan(val).any() else ("Inf" if torch.isinf(val).any() else None)
        if bad:
            layer, _, what = key.rpartition(".")
            if not layer:
                layer, what = key, "tensor"
            raise ExportError(f"layer {layer!r} {what} contains {bad}; refusing to export")


def conv_names(ep) -> list[str]:
    """Module names of the conv2d ops of ``ep`` in graph order (e.g. ``features.0``)."""
    return [name for name, _ in conv_nodes(ep)]


def conv_nodes(ep) -> list:
    """(module name, fx node) of the conv2d ops of ``ep`` in graph order."""
    torch = _torch()
    conv_targets = {torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default}
    param_of = dict(ep.graph_signature.inputs_to_parameters)
    out = []
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target in conv_targets:
            w = node.args[1]
            pname = param_of.get(getattr(w, "name", ""), getattr(w, "name", "conv"))
            out.append((pname[: -len(".weight")] if pname.endswith(".weight") else pname, node))
    return out


def linear_nodes(ep) -> list:
    """(module name, fx node) of the ``nn.Linear`` ops of ``ep`` in graph order."""
    torch = _torch()
    param_of = dict(ep.graph_signature.inputs_to_parameters)
    out = []
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.linear.default:
            pname = param_of.get(getattr(node.args[1], "name", ""), "")
            if pname:
                out.append((pname[: -len(".weight")] if pname.endswith(".weight") else pname, node))
    return out


def linear_weights(ep) -> list:
    """(module name, weight as stored (out, in)) of every float32 ``nn.Linear``, in graph order."""
    torch = _torch()
    out = []
    for name, _ in linear_nodes(ep):
        tensor = ep.state_dict.get(name + ".weight", ep.state_dict.get(name))
        if tensor is not None and tensor.dtype == torch.float32:
            out.append((name, tensor.detach().cpu().numpy()))
    return out
