"""Tensor-expression definitions of the lowered conv and the linear layer (paper 000, section 3;
docs/formulas.md section 1 "Lowering").  Target-independent; the schedules are in cpu.py / cuda.py.

Stages of the conv (block names are relied upon by the schedules):
  "Dp"   padded copy of the *live* input maps, flat per image: Dp[b, l*Hp*Wp + h*Wp + w]
  "P"    gathered patch matrix P[b, g, k, n] = Dp[b, off[g, k] + base[n]]
  "C"    GEMM C[b, g, t, n] = sum_k F[g, t // TI, k, t % TI] * P[b, g, k, n]
  "out"  epilogue out[b, c, oh, ow] = relu?(C[b, c // Tg, c % Tg, oh*OW + ow] + bias[c] + res[b, c, oh, ow])
         (the residual input ``res`` of a ResNet block is optional, like bias and ReLU)
"""

from __future__ import annotations

from tvm import te, tirx

from .lowering import ConvGeometry


def conv_te(geom: ConvGeometry, has_bias: bool, relu: bool, has_res: bool = False):
    g_ = geom
    HW = g_.Hp * g_.Wp
    LP = g_.L + 1
    data = te.placeholder((g_.N, g_.C, g_.H, g_.W), "float32", name="data")
    F = te.placeholder((g_.G, g_.TO, g_.KP, g_.TI), "float32", name="F")
    live = te.placeholder((LP,), "int32", name="live")
    off = te.placeholder((g_.G, g_.KP), "int32", name="off")
    base = None if g_.OWP else te.placeholder((g_.NP,), "int32", name="base")
    bias = te.placeholder((g_.T,), "float32", name="bias") if has_bias else None
    res = te.placeholder((g_.N, g_.T, g_.OH, g_.OW), "float32", name="res") if has_res else None

    def dp(b, f):
        l = f // HW
        r = f % HW
        h = r // g_.Wp - g_.pt
        w = r % g_.Wp - g_.pl
        ok = tirx.all(l < g_.L, h >= 0, h < g_.H, w >= 0, w < g_.W)
        lc = tirx.min(l, g_.L)
        return tirx.if_then_else(ok, data[b, live[lc], h, w], tirx.const(0.0, "float32"))

    Dp = te.compute((g_.N, g_.DPLEN), dp, name="Dp")

    def pix(n):
        if g_.OWP:
            return (n // g_.OWP) * (g_.sh * g_.Wp) + (n % g_.OWP) * g_.sw
        return base[n]

    P = te.compute((g_.N, g_.G, g_.KP, g_.NP), lambda b, g, k, n: Dp[b, off[g, k] + pix(n)], name="P")
    k = te.reduce_axis((0, g_.KP), name="k")
    if g_.NRP:  # whole-row chunks: C keeps (row, padded column) axes so the epilogue is affine
        C = te.compute(
            (g_.N, g_.G, g_.TO * g_.TI, g_.NRP, g_.OWP),
            lambda b, g, t, r, w: te.sum(F[g, t // g_.TI, k, t % g_.TI] * P[b, g, k, r * g_.OWP + w], axis=k),
            name="C",
        )
    else:
        C = te.compute(
            (g_.N, g_.G, g_.TO * g_.TI, g_.NP),
            lambda b, g, t, n: te.sum(F[g, t // g_.TI, k, t % g_.TI] * P[b, g, k, n], axis=k),
            name="C",
        )

    def epi(b, c, oh, ow):
        if g_.NRP:
            v = C[b, c // g_.Tg, c % g_.Tg, oh, ow]
        else:
            v = C[b, c // g_.Tg, c % g_.Tg, oh * (g_.OWP or g_.OW) + ow]
        if has_bias:
            v = v + bias[c]
        if has_res:
            v = v + res[b, c, oh, ow]
        if relu:
            v = tirx.max(v, tirx.const(0.0, "float32"))
        return v

    out = te.compute((g_.N, g_.T, g_.OH, g_.OW), epi, name="out")
    args = [data, F, live, off] + ([] if g_.OWP else [base]) + ([bias] if has_bias else [])
    args += ([res] if has_res else []) + [out]
    return te.create_prim_func(args)


def dense_te(M, K, O, OI, has_bias: bool, relu: bool, MP=None):
    """y[m, o] = sum_k x[m, k] * Wp[o // OI, k, o % OI] (+ bias, relu).  Wp is the weight packed
    as [ceil(O/OI), K, OI] so the micro-kernel reads it contiguously; the GEMM runs over
    MP >= M rows (row index clamped, extra rows discarded) so register tiles divide evenly."""
    OO = (O + OI - 1) // OI
    MP = M if MP is None else MP
    x = te.placeholder((M, K), "float32", name="x")
    Wp = te.placeholder((OO, K, OI), "float32", name="Wp")
    bias = te.placeholder((O,), "float32", name="bias") if has_bias else None
    k = te.reduce_axis((0, K), name="k")
    C = te.compute(
        (MP, OO * OI), lambda m, o: te.sum(x[tirx.min(m, M - 1), k] * Wp[o // OI, k, o % OI], axis=k), name="C"
    )

    def epi(m, o):
        v = C[m, o]
        if has_bias:
            v = v + bias[o]
        if relu:
            v = tirx.max(v, tirx.const(0.0, "float32"))
        return v

    out = te.compute((M, O), epi, name="out")
    args = [x, Wp] + ([bias] if has_bias else []) + [out]
    return te.create_prim_func(args)
