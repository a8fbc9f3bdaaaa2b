"""Diagnostics of pass 1: the conv / matmul calls the kernel library did not take, and why (they
run as TVM's legalized ops with a generic schedule, which users should hear about)."""

from __future__ import annotations

import warnings

import tvm
from tvm import relax

from ..ir import dtype_of as _dtype
from ..ir import is_constant, kernel_shape

#: heavy ops that should never be left to the naive legalized path without a warning
HEAVY_OPS = (
    "relax.nn.conv1d",
    "relax.nn.conv2d",
    "relax.nn.conv3d",
    "relax.nn.conv1d_transpose",
    "relax.nn.conv2d_transpose",
    "relax.matmul",
)


def leftover_heavy_ops(func: relax.Function) -> list:
    """(op name, reason) of conv / matmul calls the kernel library did not take."""
    out = []
    for block in func.body.blocks:
        for binding in block.bindings:
            v = binding.value
            if not isinstance(v, tvm.ir.Call) or not isinstance(v.op, tvm.ir.Op):
                continue
            name = v.op.name
            if name not in HEAVY_OPS:
                continue
            why = []
            if kernel_shape(v) is None or kernel_shape(v.args[0]) is None:
                why.append("dynamic shape")
            if name == "relax.nn.conv2d":
                a = v.attrs
                if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
                    why.append(f"layout {a.data_layout}/{a.kernel_layout}")
                if _dtype(v.args[0]) != "float32":
                    why.append(f"dtype {_dtype(v.args[0])}")
                if not is_constant(v.args[1]):
                    why.append("non-constant weight")
            elif name == "relax.matmul":
                if not is_constant(v.args[1]):
                    why.append("non-constant weight")
                elif _dtype(v.args[0]) != "float32":
                    why.append(f"dtype {_dtype(v.args[0])}")
                else:
                    why.append("input is not 2-D")
            else:
                why.append("no GBD kernel for this op")
            out.append((name, ", ".join(why) or "unsupported form"))
    return out


def warn_leftovers(func: relax.Function) -> None:
    for name, why in leftover_heavy_ops(func):
        warnings.warn(
            f"gbd-export: {name} ({why}) is not handled by the GBD kernels; "
            "falling back to the dense legalized op with a generic schedule",
            stacklevel=3,
        )
