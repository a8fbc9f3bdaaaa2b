"""torch.export -> Relax import with weights as constants, BN folded, constants folded.

The GBD passes (paper 000 section 3, formulas.md section 1) read the conv weights, so the
weights must stay ``relax.Constant`` (``keep_params_as_input=False``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np


class ExportError(Exception):
    """A user-facing error; the CLI prints its message on one line and exits with code 2."""


def _torch():
    import torch  # noqa: PLC0415

    return torch


def load_exported_program(path: str):
    """Load a ``.pt2`` with ``torch.export.load`` (the safe loader); one-line errors."""
    torch = _torch()
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file")
    if not path.endswith(".pt2"):
        raise ExportError(
            f"{path}: unsupported model file (expected a torch.export .pt2 written by "
            "lightning_gbd.pt2.save_pt2 or torch.export.save)"
        )
    import logging  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path}: not a valid torch.export .pt2 file (not a zip archive)")
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # torch logs a traceback before raising
    try:
        return torch.export.load(path)
    except Exception as exc:  # noqa: BLE001 - any failure means a malformed file
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: not a valid torch.export .pt2 file ({type(exc).__name__}: {msg[:200]})") from None
    finally:
        logger.setLevel(level)


def example_input_of(ep) -> "object | None":
    """The example input stored with an ExportedProgram (first user input), if any."""
    ex = getattr(ep, "example_inputs", None)
    if ex:
        args, _kwargs = ex
        if args:
            return args[0]
    return None


def input_shape_of(ep) -> tuple | None:
    """Static input shape of the (single) user input, None if symbolic."""
    users = list(ep.graph_signature.user_inputs)
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in users:
            val = node.meta.get("val")
            if val is None:
                return None
            if not all(isinstance(d, int) for d in val.shape):
                return None  # torch.SymInt: a dynamic dimension (int(d) would give its hint)
            return tuple(int(d) for d in val.shape)
    return None


def specialize(ep_or_module, example_input):
    """A static-shape ExportedProgram for ``example_input`` (re-exports when needed)."""
    torch = _torch()
    shape = tuple(example_input.shape)
    if isinstance(ep_or_module, torch.export.ExportedProgram):
        if input_shape_of(ep_or_module) == shape:
            return ep_or_module
        module = ep_or_module.module()
    else:
        module = ep_or_module
    # ep.module() refuses eval()/train(); it is already an inference graph
    was_training = (
        not isinstance(ep_or_module, torch.export.ExportedProgram)
        and isinstance(module, torch.nn.Module)
        and module.training
    )
    try:
        if was_training:
            module.eval()  # inference graph: BN with running statistics, no dropout
        with torch.no_grad():
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
    torch = _torch()
    conv_targets = {torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default}
    param_of = dict(ep.graph_signature.inputs_to_parameters)
    names = []
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target in conv_targets:
            w = node.args[1]
            pname = param_of.get(getattr(w, "name", ""), getattr(w, "name", "conv"))
            names.append(pname[: -len(".weight")] if pname.endswith(".weight") else pname)
    return names


def is_constant(expr) -> bool:
    """Relax constant (``tvm.ir.Constant`` / ``GenericConst`` in TVM 0.27)."""
    import tvm  # noqa: PLC0415

    cls = getattr(tvm.relax, "Constant", None) or tvm.ir.Constant
    return isinstance(expr, cls)


def const_numpy(expr) -> np.ndarray:
    """numpy value of a Relax constant (``.value`` in TVM 0.27, ``.data`` before)."""
    val = expr.value if hasattr(expr, "value") else expr.data
    return val.numpy()


def type_of(expr):
    """Type annotation of a Relax expr (``.ty`` in TVM 0.27, ``.struct_info`` before)."""
    return expr.ty if hasattr(expr, "ty") else expr.struct_info


def linear_names(ep) -> dict:
    """weight_key(W) -> module name of every ``nn.Linear`` (W as stored, (out, in))."""
    torch = _torch()
    param_of = dict(ep.graph_signature.inputs_to_parameters)
    out = {}
    for node in ep.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.linear.default:
            pname = param_of.get(getattr(node.args[1], "name", ""))
            tensor = ep.state_dict.get(pname) if pname else None
            if tensor is not None and tensor.dtype == torch.float32:
                name = pname[: -len(".weight")] if pname.endswith(".weight") else pname
                out.setdefault(weight_key(tensor.detach().cpu().numpy()), name)
    return out


def weight_key(arr: np.ndarray) -> str:
    """Content key of a weight array (names survive passes that re-create constants)."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha1(arr.tobytes())
    h.update(str(arr.shape).encode())
    return h.hexdigest()


@dataclass
class ImportResult:
    mod: object
    input_shape: tuple
    input_dtype: str
    names: dict = field(default_factory=dict)  # weight_key -> conv name


def _conv_calls(func):
    import tvm  # noqa: PLC0415

    calls = []
    for block in func.body.blocks:
        for binding in block.bindings:
            v = binding.value
            if isinstance(v, tvm.ir.Call) and getattr(v.op, "name", None) == "relax.nn.conv2d":
                calls.append(v)
    return calls


def import_program(ep) -> ImportResult:
    """Relax module of a static ExportedProgram: BN folded into convs, constants folded."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415
    from tvm.relax.frontend.torch import from_exported_program  # noqa: PLC0415

    try:
        mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the TVM torch frontend cannot import this model ({msg[:200]})") from None
    seq = tvm.transform.Sequential(
        [
            # TVM's own BN folding, before DecomposeOpsForInference turns batch_norm into
            # elementwise ops that FoldBatchnormToConv2D would no longer match.
            relax.transform.FoldBatchnormToConv2D(),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.FoldConstant(),
            relax.transform.DeadCodeElimination(),
            relax.transform.CanonicalizeBindings(),
        ]
    )
    mod = seq(mod)
    # unused tuples left by max_pool2d_with_indices (the indices) survive DCE in dataflow blocks
    bb = relax.BlockBuilder(mod)
    bb.update_func(mod.get_global_var("main"), relax.analysis.remove_all_unused(mod["main"]))
    mod = bb.get()
    shape = input_shape_of(ep)
    dtype = "float32"
    for p in mod["main"].params[:1]:
        dtype = str(type_of(p).dtype)
    names = {}
    torch_names = conv_names(ep)
    calls = _conv_calls(mod["main"])
    for k, call in enumerate(calls):
        w = call.args[1]
        if is_constant(w):
            name = torch_names[k] if len(torch_names) == len(calls) else f"conv{k}"
            names.setdefault(weight_key(const_numpy(w)), name)
    for key, name in linear_names(ep).items():
        names.setdefault(key, name)
    return ImportResult(mod=mod, input_shape=shape, input_dtype=dtype, names=names)
