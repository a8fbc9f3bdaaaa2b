"""Post-training calibration of the INT8 export (docs/formulas.md section 5): run the float model
of a ``.pt2`` on the user's inputs and record, per conv, the range of its input, from which the
conv's uint8 scale and zero point follow (``lightning_gbd.core.quant``).

A calibration SOURCE is a ``.npy`` of inputs (N, C, H, W), or a ``gbd fit`` run directory holding
``calibration.npy`` (``gbd calibration-set RUN_DIR`` writes one from the run's training split).
"""

from __future__ import annotations

import os

import numpy as np

from lightning_gbd.core.quant import (
    METHODS,
    RUN_CALIBRATION,
    RangeObserver,
    activation_params,
    fake_quant_activation,
)

from ..errors import ExportError
from .program import conv_nodes, linear_nodes


def load_calibration(source, input_shape, dtype="float32") -> np.ndarray:
    """The calibration inputs of SOURCE (an array, a ``.npy`` or a run directory), checked against
    the model's input (C, H, W) and dtype; one-line ``ExportError`` otherwise."""
    if isinstance(source, np.ndarray):
        return _checked(source, "calibration array", input_shape, dtype)
    path = str(source)
    if os.path.isdir(path):
        path = os.path.join(path, RUN_CALIBRATION)
        if not os.path.isfile(path):
            raise ExportError(
                f"{source}: no {RUN_CALIBRATION} in this run directory (write one with `gbd calibration-set {source}`)"
            )
    if not os.path.isfile(path):
        raise ExportError(f"{source}: no such calibration file")
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ExportError(f"{path}: not a .npy array ({str(exc).splitlines()[0][:120]})") from None
    return _checked(x, path, input_shape, dtype)


def _checked(x, path, input_shape, dtype) -> np.ndarray:
    want = tuple(int(v) for v in input_shape[1:])
    if x.ndim != len(input_shape) or tuple(x.shape[1:]) != want:
        raise ExportError(
            f"{path}: calibration inputs of shape {list(x.shape)}; the model takes [N, {', '.join(map(str, want))}]"
        )
    if x.dtype != np.dtype(dtype):
        raise ExportError(f"{path}: calibration inputs are {x.dtype}; the model takes {dtype}")
    if x.shape[0] == 0 or not np.isfinite(x).all():
        raise ExportError(f"{path}: calibration inputs are empty or hold NaN / Inf")
    return x


def calibrate(ep, inputs: np.ndarray, method: str = "percentile", batch: int = 32, fixed_batch: bool = False) -> dict:
    """Per conv and linear layer (module name, as the import names layers): its input's observed range, uint8
    scale / zero point and the relative RMS error of quantizing it on this data.  The inputs run
    ``batch`` at a time; ``fixed_batch``: the program takes exactly ``batch`` (a static-shape
    ``.pt2``), so a last partial batch is filled up with the first inputs.

    >>> ranges = calibrate(ep, x)                       # doctest: +SKIP
    >>> ranges["features.3"]                            # doctest: +SKIP
    {'lo': 0.0, 'hi': 4.1, 'scale': 0.0161, 'zero': 0, 'rel_error': 0.004}
    """
    import torch

    if method not in METHODS:
        raise ExportError(f"unknown calibration method {method!r}: one of {', '.join(METHODS)}")
    named = conv_nodes(ep) + linear_nodes(ep)
    by_node = {node.name: name for name, node in named}
    observers = {name: RangeObserver() for name, _ in named}
    kept: dict = {name: [] for name, _ in named}  # a few batches kept to measure the rounding error
    gm = ep.module()

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            if n.op == "call_function" and n.name in by_node:
                x = self.env[n.args[0]].detach().cpu().numpy()
                name = by_node[n.name]
                observers[name].update(x)
                if len(kept[name]) < 2:
                    kept[name].append(x[:8])
            return super().run_node(n)

    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            chunk = inputs[i : i + batch]
            if fixed_batch and len(chunk) < batch:
                chunk = np.concatenate([chunk, np.resize(inputs, (batch - len(chunk), *inputs.shape[1:]))])
            Recorder(gm).run(torch.from_numpy(np.ascontiguousarray(chunk)))
    out = {}
    for name, ob in observers.items():
        if not ob.seen:
            continue
        lo, hi = ob.range(method)
        scale, zero = activation_params(lo, hi)
        x = np.concatenate(kept[name])
        err = np.sqrt(np.mean((fake_quant_activation(x, scale, zero) - x) ** 2)) / max(np.sqrt(np.mean(x**2)), 1e-12)
        out[name] = {"lo": lo, "hi": hi, "scale": scale, "zero": zero, "rel_error": float(err)}
    return out


def fake_quant_reference(ep, quant: dict, int8_layers=None, residual_u8=()):
    """The float model with each int8 conv's (and linear layer's) input and weight replaced by what the int8 kernel
    computes with (formulas 5.1-5.2): the reference the INT8 export is verified against.  Weights
    are quantized before a following batch norm is folded: per-channel symmetric quantization
    commutes with the fold's per-channel scaling, so this equals quantizing the folded weight.
    ``int8_layers``: the conv names that were built in int8 (default: all of ``quant``).
    ``residual_u8``: the convs whose residual input the export carries as uint8 (formula 5.6):
    the operand of their residual add is quantized as the int8 conv that also reads it does."""
    import torch

    from lightning_gbd.core.quant import fake_quant_weight

    names = set(quant if int8_layers is None else int8_layers)
    by_node = {node.name: name for name, node in conv_nodes(ep) + linear_nodes(ep) if name in names}
    gm = ep.module()
    res_q = _residual_params(gm, by_node, quant, set(residual_u8))

    def fq(t, q):
        return torch.from_numpy(fake_quant_activation(t.numpy(), q["scale"], q["zero"]))

    class FakeQuant(torch.fx.Interpreter):
        def run_node(self, n):
            if n.op == "call_function" and n.name in res_q:
                args, kwargs = self.fetch_args_kwargs_from_env(n)
                i, q = res_q[n.name]
                args = list(args)
                args[i] = fq(args[i], q)
                return n.target(*args, **kwargs)
            if n.op != "call_function" or n.name not in by_node:
                return super().run_node(n)
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            w = torch.from_numpy(fake_quant_weight(args[1].detach().numpy()))
            return n.target(fq(args[0], quant[by_node[n.name]]), w, *args[2:], **kwargs)

    def run(x):
        with torch.no_grad():
            return FakeQuant(gm).run(x)

    return run


def _residual_params(gm, by_node, quant, residual_u8) -> dict:
    """add node name -> (operand index, its quant params) for the residual adds of ``residual_u8``:
    one operand comes from such a conv (through its batch norm), the other is the input of an int8
    conv, whose (scale, zero point) the carried tensor has."""
    import operator

    import torch
    from torch.fx import Node

    adds = {torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor, operator.add, operator.iadd}
    out = {}
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in adds or len(n.args) < 2:
            continue
        for i in (0, 1):
            src, other = n.args[1 - i], n.args[i]
            for _ in range(3):  # back through the conv's batch norm / bias add
                if not isinstance(src, Node) or src.name in by_node:
                    break
                src = src.args[0] if src.args else None
            if not (isinstance(src, Node) and by_node.get(src.name) in residual_u8):
                continue
            readers = [u for u in getattr(other, "users", ()) if u.name in by_node and u.args[0] is other]
            if readers:
                out[n.name] = (i, quant[by_node[readers[0].name]])
    return out
