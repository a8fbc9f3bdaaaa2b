"""Relax pass: a conv's bias moved into the batch norm that follows it, so TVM's
``FoldBatchnormToConv2D`` (which matches a conv *directly* followed by its batch norm) folds the
pair.  ``nn.Conv2d(..., bias=True)`` then ``nn.BatchNorm2d`` imports as conv2d -> add(bias) ->
batch_norm; left unfolded, the batch norm became four element-wise passes over the conv's output
(and kept the conv's ReLU out of its epilogue).  Since

    BN(y + b) = gamma (y + b - mean) / sqrt(var + eps) + beta = BN'(y),  BN' = BN with mean - b,

the rewrite is exact.  Written like TVM's ``FoldBatchnormToConv2D``: the pattern built in
``__init__``, a rewriter, ``rewrite_call``.
"""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from ..ir import const_numpy


@relax.transform.function_pass(opt_level=0, name="ConvBiasIntoBatchNorm")
class ConvBiasIntoBatchNorm:
    """batch_norm(conv2d(x, W) + b, gamma, beta, mean, var) -> batch_norm(conv2d(x, W), gamma, beta,
    mean - b, var), for a per-channel constant b and a batch norm over axis 1 (NCHW)."""

    def __init__(self):
        self.conv = is_op("relax.nn.conv2d")(wildcard(), is_const())
        self.b = is_const()
        self.biased = is_op("relax.add")(self.conv, self.b)
        self.gamma, self.beta, self.mean, self.var = is_const(), is_const(), is_const(), is_const()
        self.bn = is_op("relax.nn.batch_norm")(self.biased, self.gamma, self.beta, self.mean, self.var)

    def _rewrite(self, expr, matches):
        b, mean = const_numpy(matches[self.b]), const_numpy(matches[self.mean])
        if int(expr.attrs.axis) != 1 or mean.ndim != 1 or b.size != mean.size or b.dtype != mean.dtype:
            return expr
        if b.ndim > 1 and b.shape[-3:] != (mean.size, 1, 1)[-b.ndim :]:
            return expr  # not one value per channel of an NCHW tensor
        new_mean = relax.const(np.ascontiguousarray(mean - b.reshape(-1)))
        args = [matches[self.conv], matches[self.gamma], matches[self.beta], new_mean, matches[self.var]]
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args)

    def transform_function(self, func, _mod, _ctx):
        if "Primitive" in func.attrs.keys() and func.attrs["Primitive"] != 0:
            return func
        return rewrite_call(self.bn, self._rewrite, func)
