"""Small helpers over Relax expressions shared by the frontend and the passes.

Layer names ride on the IR: the import sets the ``Span`` of every conv2d / matmul call to the
PyTorch module name (``features.0``), the way TVM's frontends record the source layer of each
op; passes that rebuild a call copy its span, and the kernels' records are read back from the
rewritten module (``passes.records``).  No side tables.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


def is_constant(expr) -> bool:
    """Relax constant (``tvm.ir.Constant`` / ``GenericConst`` in TVM 0.27)."""
    cls = getattr(relax, "Constant", None) or tvm.ir.Constant
    return isinstance(expr, cls)


def const_numpy(expr) -> np.ndarray:
    """numpy value of a Relax constant (``.value`` in TVM 0.27, ``.data`` before; a scalar constant,
    such as the bounds of a ReLU6's clip, holds a Python number)."""
    val = expr.value if hasattr(expr, "value") else expr.data
    return val.numpy() if hasattr(val, "numpy") else np.asarray(val)


def type_of(expr):
    """Type annotation of a Relax expr (``.ty`` in TVM 0.27, ``.struct_info`` before)."""
    return expr.ty if hasattr(expr, "ty") else expr.struct_info


def static_shape(expr) -> tuple | None:
    """The static shape of a tensor-typed expr, None when unknown or symbolic."""
    ty = type_of(expr)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return tuple(int(d) for d in ty.shape.values)
    except (TypeError, AttributeError):
        return None


def dtype_of(expr) -> str | None:
    ty = type_of(expr)
    return str(ty.dtype) if isinstance(ty, relax.TensorType) else None


def op_name(expr) -> str | None:
    """``relax.nn.conv2d`` etc. for a call of a Relax op, else None."""
    if isinstance(expr, tvm.ir.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


#: the Relax ops that call a TIR PrimFunc (its GlobalVar is their first argument)
TIR_CALLS = ("relax.call_tir", "relax.call_tir_inplace")


def tir_callee(mod, expr):
    """The PrimFunc of ``mod`` that a call_tir / call_tir_inplace ``expr`` calls, else None."""
    if op_name(expr) not in TIR_CALLS:
        return None
    gv = expr.args[0]
    func = mod[gv] if isinstance(gv, tvm.ir.GlobalVar) and gv in mod.functions else None
    return func if isinstance(func, tvm.tirx.PrimFunc) else None


def func_attr(func, key):
    """``func``'s attribute ``key``; None when ``func`` is None or has no such attribute."""
    return None if func is None or func.attrs is None or key not in func.attrs else func.attrs[key]


def layer_name(expr) -> str | None:
    """The layer name the import put on this call's span (None if it has none)."""
    span = getattr(expr, "span", None)
    return span.source_name.name if span is not None and span.source_name is not None else None


def named_span(name: str):
    return tvm.ir.Span(tvm.ir.SourceName(name), 0, 0, 0, 0)


def with_span(call, span):
    """The same call with another span (a new node; the input is not changed)."""
    return tvm.ir.Call(call.op, list(call.args), call.attrs, list(call.ty_args) if call.ty_args else None, span)


def bindings(func) -> list:
    """All bindings of a Relax function's body, in order."""
    return [b for block in func.body.blocks for b in block.bindings]


def kernel_shape(expr) -> tuple | None:
    """The shape of a tensor whose dims are static except, possibly, a symbolic leading (batch)
    dim (kept as its ``tir.Var``); None for anything else."""
    ty = type_of(expr)
    if not isinstance(ty, relax.TensorType) or ty.shape is None or not hasattr(ty.shape, "values"):
        return None
    out = []
    for i, d in enumerate(ty.shape.values):
        if isinstance(d, tvm.tirx.IntImm):
            out.append(int(d))
        elif i == 0 and isinstance(d, tvm.tirx.Var):
            out.append(d)
        else:
            return None
    return tuple(out)


def same_shape(a, b) -> bool:
    """Shape equality that also holds for the same symbolic dim."""
    return a is not None and b is not None and [str(v) for v in a] == [str(v) for v in b]


def batch_count(shape) -> int:
    """The batch of a kernel shape for FLOP counts: the static one, or 1 (per image) when symbolic."""
    return shape[0] if isinstance(shape[0], int) else 1


def shape_record(shape) -> list:
    """A kernel shape for the manifest: a symbolic batch dim as its name (e.g. ``"batch"``)."""
    return [v if isinstance(v, int) else str(v) for v in shape]


def channel_vector(const, n: int, axis_from_end: int):
    """A constant that broadcasts per channel (size n at ``-axis_from_end``) as a vector, else None."""
    arr = const_numpy(const)
    if arr.dtype != np.float32:
        return None
    if arr.size == 1:
        return np.full(n, float(arr.reshape(-1)[0]), dtype=np.float32)
    if arr.ndim < axis_from_end or arr.shape[-axis_from_end] != n or arr.size != n:
        return None
    return np.ascontiguousarray(arr.reshape(-1))


def clip_max(clip: relax.Call):
    """``hi`` of ``clip(x, 0, hi)`` with ``0 < hi < inf`` (ReLU6: 6.0), the epilogue's relu with an
    upper bound (te_defs._epilogue); None for any other clip, which stays its own op."""
    try:  # FloatImm bounds (as the importer makes them), or PrimValues holding one
        lo, hi = (float(getattr(a.value, "value", a.value)) for a in clip.args[1:3])
    except (AttributeError, TypeError, ValueError):  # bounds that are not constants
        return None
    return hi if lo == 0.0 and 0.0 < hi < float("inf") else None
