"""Pass 1's Winograd conv (kernels/winograd.py, docs/formulas.md 1.25): where the cost model keeps a
3x3 stride-1 conv dense on the CPU, its three kernels (input transform, 36-group GEMM, output
transform with the fused epilogue) replace the dense im2col GEMM, called in sequence with the
intermediate maps passed as reshaped views (no copies).  The layer's record sits on the output
kernel, which takes the conv's place in the graph."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import relax, tirx

from .. import cost_model
from ..ir import batch_count
from ..kernels import winograd
from .kernel_marks import INPLACE_ATTR, RECORD_ATTR, mark_kernel


@dataclass(frozen=True)
class WinogradConv:
    """The built kernels (``winograd.conv2d_winograd``) of one conv."""

    kernels: object


def winograd_kernels(dshape, weight, bias, kw, dec):
    """``(WinogradConv, [], None, decision)`` in the shape of ``GroupSparseConv._conv_kernel``'s
    result where the conv is dense and Winograd applies, else None."""
    if not winograd.applies(dshape, weight.shape, kw["stride"], kw["padding"], kw["dilation"], kw["groups"]):
        return None
    d = winograd.dims(dshape, kw["padding"])
    # a symbolic batch is planned for one image, as the FLOP counts are (ir.batch_count)
    wdec = cost_model.winograd(dec, dshape, weight.shape, batch_count(dshape) * d.th * d.tw)
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
    # a symbolic batch: the kernels' own int32 batch var in V's and M's shapes becomes the graph's
    # batch (the output's leading dim); call_tir binds each kernel's var to it
    v5, v4, m4, m5 = ([oshape[0] if isinstance(x, tirx.Var) else x for x in sh] for sh in conv.kernels.shapes)
    data, res = inputs
    v = relax.call_tir(bb.add_func(mark_kernel(fin), base + "_wg_in"), [data], relax.TensorType(v5, "float32"))
    gemm = bb.add_func(mark_kernel(fgemm), base + "_wg_gemm")
    gargs = [relax.op.reshape(v, v4)] + [relax.const(c) for c in gconsts]
    m = relax.call_tir(gemm, gargs, relax.TensorType(m4, "float32"))
    args = [relax.op.reshape(m, m5)] + [relax.const(c) for c in oconsts] + ([res] if res is not None else [])
    fout = mark_kernel(fout).with_attr(RECORD_ATTR, record)
    if res is not None:
        fout = fout.with_attr(INPLACE_ATTR, len(args) - 1)
    out = bb.add_func(fout, base)
    return relax.call_tir(out, args, relax.TensorType(oshape, "float32"))
