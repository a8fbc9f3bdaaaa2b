"""Relax pass: decompose a conv whose constant weight is low-rank into a basis conv and a 1x1 conv
(paper 002 Fig. 3; docs/formulas.md section 3), at export time, when asked (``error``).

``conv2d(x, W)`` with filter matrix ``M`` (per conv group, ``N_g x C_g kh kw``) of uncentred-PCA
rank ``K`` at error ``e`` becomes ``conv2d(conv2d(x, B), U)`` with ``B = S_K V_K^T`` (same
stride/padding/dilation/groups) and the 1x1 ``U = U_K`` (``lightning_gbd.core.lowrank.pca_factors``,
the same factorization the training callback uses), where that pays:
``K (tau C_g kh kw + N_g) <= r N_g tau C_g kh kw`` with ``tau`` the conv's GBD density (the basis
conv keeps its patterns, and the original would be a gather-GEMM over the same ``tau C_g kh kw``
rows) and ``r = cost_model.MAX_PAIR_FLOP_RATIO`` (measured: a pair that saves few FLOPs runs
slower than the one conv it replaces).  ``B = U_K^T M`` keeps every all-zero column of ``M``,
so the GBD patterns survive in the basis conv and pass 1 lowers it to a gather-GEMM; the 1x1
stage takes the following bias/ReLU in its epilogue.  The two convs are named ``<layer>.basis``
and ``<layer>.coeff`` on their spans.  Runs before pass 1 (group_sparse_conv).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from lightning_gbd.core.lowrank import live_pair_flop_ratio, pca_factors

from .. import cost_model
from ..ir import const_numpy, is_constant, layer_name, named_span, op_name, with_span


@relax.expr_functor.mutator
class _Decompose(relax.PyExprMutator):
    """Each low-rank conv becomes two bindings: the basis conv (emitted here, so that it keeps
    its span) and the 1x1 conv that takes the original binding's place."""

    def __init__(self, mod, error):
        super().__init__(mod)
        self.error = error

    def visit_call_(self, call):
        call = super().visit_call_(call)
        factors = _low_rank_factors(call, self.error)
        if factors is None:
            return call
        basis, coeff = factors
        a = call.attrs
        name = layer_name(call) or "conv"
        first = relax.op.nn.conv2d(
            call.args[0],
            relax.const(basis),
            strides=a.strides,
            padding=a.padding,
            dilation=a.dilation,
            groups=int(a.groups),
            data_layout="NCHW",
            kernel_layout="OIHW",
            out_dtype=a.out_dtype,
        )
        var = self.builder_.emit(with_span(first, named_span(f"{name}.basis")))
        second = relax.op.nn.conv2d(
            var,
            relax.const(coeff),
            groups=int(a.groups),
            data_layout="NCHW",
            kernel_layout="OIHW",
            out_dtype=a.out_dtype,
        )
        return with_span(second, named_span(f"{name}.coeff"))


def _low_rank_factors(call, error):
    """``(basis, 1x1 weight)`` as float32 arrays when decomposing ``call`` at ``error`` pays, else None."""
    if op_name(call) != "relax.nn.conv2d" or not is_constant(call.args[1]):
        return None
    a = call.attrs
    if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
        return None
    w = const_numpy(call.args[1])
    if w.dtype != np.float32 or not w.any():
        return None
    g = int(a.groups)
    n = w.shape[0]
    basis, coeff, _err = pca_factors(w, g, error=error)
    k = basis.shape[0] // g
    if live_pair_flop_ratio(w, g, k) > cost_model.MAX_PAIR_FLOP_RATIO:
        return None
    return (
        np.ascontiguousarray(basis.numpy().astype(np.float32)),
        np.ascontiguousarray(coeff.numpy().astype(np.float32).reshape(n, k, 1, 1)),
    )


@tvm.transform.module_pass(opt_level=0, name="LowRankConv")
class LowRankConv:
    """Decompose low-rank constant-weight NCHW convs at PCA error ``error``."""

    def __init__(self, error: float):
        if not 0 <= error < 1:
            raise ValueError(f"decomposition error must be in [0, 1), got {error}")
        self.error = error

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                bb.update_func(gv, _Decompose(mod, self.error).visit_expr(func))
        return bb.get()
