"""Pass 1's Winograd conv (kernels/winograd.py, docs/formulas.md 1.25): where the cost model keeps a
3x3 stride-1 conv dense on the CPU, its three kernels (input transform, 36-group GEMM, output
transform with the fused epilogue) replace the dense im2col GEMM, called in sequence with the
intermediate maps passed as reshaped views (no copies).  The layer's record sits on the output
kernel, which takes the conv's place in the graph."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import relax

from .. import cost_model
from ..kernels import winograd
from .kernel_marks import RECORD_ATTR, mark_kernel


@dataclass(frozen=True)
class WinogradConv:
    """The built kernels (``winograd.conv2d_winograd``) of one conv."""

    kernels: object


def winograd_kernels(dshape, weight, bias, kw, dec):
    """``(WinogradConv, [], None, decision)`` in the shape of ``GroupSparseConv._conv_kernel``'s
    result where the conv is dense and Winograd applies, else None."""
    if not isinstance(dshape[0], int):  # a symbolic batch: Relax shapes of V / M would need int64 vars
        return None
    if not winograd.applies(dshape, weight.shape, kw["stride"], kw["padding"], kw["dilation"], kw["groups"]):
        return None
    d = winograd.dims(dshape, kw["padding"])
    wdec = cost_model.winograd(dec, dshape, weight.shape, dshape[0] * d.th * d.tw)
    if wdec is None:
        return None
    built = winograd.conv2d_winograd(
        dshape, weight, bias, padding=kw["padding"], relu=kw["relu"], residual=kw["residual"], target=kw["target"]
    )
    return WinogradConv(built), [], None, wdec


def emit_winograd(bb, conv: WinogradConv, record, base, inputs, oshape):
    """The three call_tir of ``conv`` as one nested expression, its kernels added to ``bb`` as
    ``base`` + suffix, the output kernel with the layer's ``record``.  ``inputs``: the conv's input
    and its residual input (or None)."""
    (fin, _), (fgemm, gconsts), (fout, oconsts) = conv.kernels.stages
    v5, v4, m4, m5 = conv.kernels.shapes
    data, res = inputs
    v = relax.call_tir(bb.add_func(mark_kernel(fin), base + "_wg_in"), [data], relax.TensorType(v5, "float32"))
    gemm = bb.add_func(mark_kernel(fgemm), base + "_wg_gemm")
    gargs = [relax.op.reshape(v, v4)] + [relax.const(c) for c in gconsts]
    m = relax.call_tir(gemm, gargs, relax.TensorType(m4, "float32"))
    args = [relax.op.reshape(m, m5)] + [relax.const(c) for c in oconsts] + ([res] if res is not None else [])
    out = bb.add_func(mark_kernel(fout).with_attr(RECORD_ATTR, record), base)
    return relax.call_tir(out, args, relax.TensorType(oshape, "float32"))
