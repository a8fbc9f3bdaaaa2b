"""Relax pass: ``relax.nn.max_pool2d`` -> the kernel library's max-pool (``kernels/pool.py``) on CPU.

Float32 and uint8 (the int8 export's carried activations, ``passes.uint8_carry``), NCHW, static
spatial shape (the batch may be symbolic), no dilation.  Anything else, and every non-CPU target,
keeps the legalized op.  Written like TVM's ``FoldBatchnormToConv2D``: the pattern is built in
``__init__``, a rewriter returns the replacement call, a new module is returned.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard

from ..ir import dtype_of, kernel_shape, with_span
from .kernel_marks import mark_kernel


@tvm.transform.module_pass(opt_level=0, name="MaxPoolKernel")
class MaxPoolKernel:
    """Rewrite NCHW max-pools on an llvm ``target`` into call_tir of ``kernels.max_pool2d``."""

    def __init__(self, target):
        self.target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
        self.x = wildcard()
        self.pool = is_op("relax.nn.max_pool2d")(self.x)

    def _rewrite(self, expr, matches, bb):
        from ..kernels import max_pool2d
        from ..kernels.pool import pool_dims

        a, data = expr.attrs, matches[self.x]
        shape, oshape, dtype = kernel_shape(data), kernel_shape(expr), dtype_of(data)
        if (
            str(a.layout) != "NCHW"
            or str(a.out_layout) != "NCHW"
            or tuple(int(v) for v in a.dilation) != (1, 1)
            or shape is None
            or oshape is None
            or len(shape) != 4
        ):
            return expr
        k, s, p = (tuple(int(v) for v in t) for t in (a.pool_size, a.strides, a.padding))
        if pool_dims(shape, k, s, p)[:2] != tuple(oshape[2:]):  # ceil_mode with a last, partial window
            return expr
        try:
            func = max_pool2d(shape, k, s, p, dtype)
        except ValueError:  # a pooling the kernel does not compute exactly: the legalized op
            return expr
        gv = bb.add_func(mark_kernel(func), "gbd_max_pool2d")
        return with_span(relax.call_tir(gv, [data], relax.TensorType(oshape, dtype)), expr.span)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if self.target.kind.name != "llvm":
            return mod
        bb = relax.BlockBuilder(mod)
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                bb.update_func(gv, rewrite_call(self.pool, lambda e, m: self._rewrite(e, m, bb), func))
        return bb.get()
