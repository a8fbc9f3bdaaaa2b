"""ONNX in: a ``.onnx`` file -> the same named Relax module the torch import gives.

TVM's Relax ONNX frontend (``tvm.relax.frontend.onnx.from_onnx``, initializers kept as
``relax.Constant``: ``keep_params_in_input=False``) does the conversion; then the same BN
folding, constant folding and clean-up as ``relax_import``, and each conv2d / matmul call is
named (its ``Span``, ``tvm_passes.ir``) after its ONNX layer: the weight initializer's name when
it is a PyTorch parameter name (``features.0.weight`` -> ``features.0``), else the node name,
a ``torch.onnx.export`` scope (``/layer1/layer1.0/conv1/Conv``) read back as the module path
(``layer1.0.conv1``).  The GBD passes then read the patterns from the zero weights, as for a
``.pt2``.  The reference for the verification is the ONNX model itself: ONNX Runtime when it is
installed, else ``onnx.reference.ReferenceEvaluator`` (pure Python, slow but exact enough).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..errors import ExportError
from ..ir import bindings, is_constant, op_name, static_shape, type_of
from .relax_import import ImportResult, fold_and_name

ONNX_SUFFIX = ".onnx"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("reading an .onnx model needs the onnx package: pip install onnx") from None
    return onnx


@dataclass(frozen=True)
class OnnxModel:
    """A loaded ONNX model and its (single) graph input."""

    proto: object  # onnx.ModelProto
    path: str | None
    input_name: str
    input_shape: tuple  # an int per dim; None for a symbolic one (e.g. a "batch" dim_param)
    input_dtype: str

    def static_shape(self, input_shape=None) -> tuple:
        """``input_shape`` (checked against the graph input's static dims, the batch aside), or
        the graph input's shape with a symbolic batch set to 1."""
        if input_shape is not None:
            shape = tuple(int(v) for v in input_shape)
            fixed = [(s, d) for s, d in zip(shape[1:], self.input_shape[1:]) if d is not None]
            if len(shape) != len(self.input_shape) or any(s != d for s, d in fixed):
                want = ["N", *("?" if d is None else d for d in self.input_shape[1:])]
                raise ExportError(f"input shape {list(shape)} does not fit the ONNX input {self.input_name!r} {want}")
            return shape
        dims = list(self.input_shape)
        if dims and dims[0] is None:
            dims[0] = 1
        if any(d is None for d in dims):
            raise ExportError(
                f"the ONNX input {self.input_name!r} has symbolic dims {list(self.input_shape)}: pass --input-shape"
            )
        return tuple(dims)


def is_onnx(model) -> bool:
    """An ``.onnx`` path, an ``onnx.ModelProto`` or an ``OnnxModel``."""
    if isinstance(model, OnnxModel):
        return True
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model).endswith(ONNX_SUFFIX)
    return type(model).__name__ == "ModelProto" and hasattr(model, "graph")


def read_onnx(model) -> OnnxModel:
    """An ``OnnxModel`` of a path or a ``ModelProto``; one-line ``ExportError`` for a bad file."""
    if isinstance(model, OnnxModel):
        return model
    onnx = _onnx()
    path = None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ExportError(f"{path}: no such file")
        try:
            model = onnx.load(path)
        except Exception as exc:  # noqa: BLE001 - any failure means a malformed file
            msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ExportError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {msg[:200]})") from None
    where = path or "the ONNX model"
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ExportError(f"{where}: {len(inputs)} graph inputs; gbd-export takes a model with one input")
    tt = inputs[0].type.tensor_type
    if not tt.HasField("shape"):
        raise ExportError(f"{where}: the input {inputs[0].name!r} has no shape: re-export it with one")
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
    dtype = str(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    return OnnxModel(model, path, inputs[0].name, shape, dtype)


def check_finite_onnx(om: OnnxModel) -> None:
    """Refuse initializers holding NaN or Inf, naming them (before any compilation)."""
    from onnx import numpy_helper

    for init in om.proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        bad = "NaN" if np.isnan(arr).any() else ("Inf" if np.isinf(arr).any() else None)
        if bad:
            raise ExportError(f"ONNX initializer {init.name!r} contains {bad}; refusing to export")


def _producer_map(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _weight_of(graph, name, producers, inits):
    """(initializer name, shape) behind a node input, through Identity nodes; (name, None) if none."""
    seen = 0
    while name not in inits and name in producers and producers[name].op_type == "Identity" and seen < 16:
        name, seen = producers[name].input[0], seen + 1
    return name, (tuple(inits[name].dims) if name in inits else None)


def _scope_path(node_name: str) -> str:
    """``/layer1/layer1.0/conv1/Conv`` (a ``torch.onnx.export`` scope) -> ``layer1.0.conv1``."""
    parts: list = []
    for comp in node_name.strip("/").split("/")[:-1]:
        if parts and comp.startswith(parts[-1] + "."):
            parts[-1] = comp  # "layer1" then "layer1.0": the child's full name
        else:
            parts.append(comp)
    return ".".join(parts)


def _clean(name: str) -> str:
    """A name that is safe inside a kernel's symbol (``gbd_conv_<name>``)."""
    return re.sub(r"[^0-9A-Za-z_.]", "_", name).strip("_.")


def _onnx_layers(graph, ops, rank) -> list:
    """(layer name, weight shape or None) of the ``ops`` nodes of ``graph``, in graph order."""
    producers = _producer_map(graph)
    inits = {t.name: t for t in graph.initializer}
    out = []
    for k, node in enumerate(n for n in graph.node if n.op_type in ops):
        wname, shape = _weight_of(graph, node.input[1], producers, inits)
        if shape is not None and len(shape) != rank:
            continue
        if wname.endswith(".weight") and not wname.startswith("onnx::"):
            name = wname[: -len(".weight")]
        elif node.name.startswith("/"):
            name = _scope_path(node.name) or node.name
        else:
            name = node.name or f"{node.op_type.lower()}{k}"
        out.append((_clean(name) or f"{node.op_type.lower()}{k}", shape))
    return out


def _align(calls, layers, shape_of) -> dict:
    """Relax call -> layer name: both lists in graph order; a layer whose weight shape differs
    from the next call's (a dead one the import dropped) is skipped."""
    names, used, j = {}, set(), 0
    for call in calls:
        while j < len(layers) and layers[j][1] is not None and layers[j][1] != shape_of(call):
            j += 1
        if j == len(layers):
            break
        name, n = layers[j][0], 1
        while name in used:  # unique: the records are keyed by layer name
            name, n = f"{layers[j][0]}_{n}", n + 1
        used.add(name)
        names[call] = name
        j += 1
    return names


def onnx_layer_names(func, graph) -> dict:
    """Bound conv2d / constant-weight matmul call -> ONNX layer name."""
    calls = [b.value for b in bindings(func)]
    convs = [c for c in calls if op_name(c) == "relax.nn.conv2d" and is_constant(c.args[1])]
    mms = [c for c in calls if op_name(c) == "relax.matmul" and is_constant(c.args[1])]
    names = _align(convs, _onnx_layers(graph, {"Conv"}, 4), lambda c: static_shape(c.args[1]))
    # Gemm(transB=1) becomes matmul with the transposed constant: compare as a set of dims
    linears = [(n, tuple(sorted(s)) if s else None) for n, s in _onnx_layers(graph, {"Gemm", "MatMul"}, 2)]
    names.update(_align(mms, linears, lambda c: tuple(sorted(static_shape(c.args[1]) or ()))))
    return names


def import_onnx(om: OnnxModel, shape, *, dynamic_batch=False) -> ImportResult:
    """The named Relax module of ``om`` for input ``shape`` (its batch symbolic with ``dynamic_batch``)."""
    from tvm.relax.frontend.onnx import from_onnx

    dims = list(shape)
    if dynamic_batch:
        dims[0] = tvm.tirx.Var("batch", "int64")
    try:
        # the frontend prints the failing operator's inputs on stdout before raising
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message="Renaming name")  # input.1 -> input_1 in Relax
            mod = from_onnx(om.proto, shape_dict={om.input_name: dims}, keep_params_in_input=False)
    except Exception as exc:  # noqa: BLE001
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"the TVM ONNX frontend cannot import this model ({msg[:200]})") from None
    mod = fold_and_name(mod, lambda func: onnx_layer_names(func, om.proto.graph))
    dtype = om.input_dtype
    for p in mod["main"].params[:1]:
        dtype = str(type_of(p).dtype)
    return ImportResult(mod=mod, input_shape=None if dynamic_batch else tuple(shape), input_dtype=dtype)


def output_spec_of(mod) -> dict:
    """Shape / dtype of the (first) output of an imported module (a symbolic dim as ``"batch"``)."""
    ty = type_of(mod["main"].body)
    if isinstance(ty, relax.TupleType):
        ty = ty.fields[0]
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return {}
    dims = [int(d) if isinstance(d, tvm.tirx.IntImm) else "batch" for d in ty.shape.values]
    return {"shape": dims, "dtype": str(ty.dtype)}


def onnx_reference(om: OnnxModel):
    """``(run, engine)``: ``run(x)`` is the ONNX model's first output on a numpy input, by ONNX
    Runtime when installed, else by ``onnx.reference.ReferenceEvaluator``."""
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(om.proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return (lambda x: sess.run(None, {om.input_name: x})[0]), f"onnxruntime {ort.__version__}"
    except Exception:  # noqa: BLE001 - not installed, or it cannot run this model: the reference
        pass
    import onnx
    from onnx.reference import ReferenceEvaluator

    ref = ReferenceEvaluator(om.proto)
    return (
        lambda x: ref.run(None, {om.input_name: x})[0]
    ), f"onnx.reference.ReferenceEvaluator (onnx {onnx.__version__})"
