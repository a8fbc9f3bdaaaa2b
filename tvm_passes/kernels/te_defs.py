"""Tensor-expression definitions of the lowered conv and the linear layer (paper 000, section 3;
docs/formulas.md section 1 "Lowering").  Target-independent; the schedules are in cpu.py / cuda.py.

Stages of the conv (block names are relied upon by the schedules):
  "Dp"   padded copy of the *live* input maps, flat per image: Dp[b, l*Hp*Wp + h*Wp + w] (a
         stride-2 stem: each map as 2 x 2 phase planes of Hq x Wq, ConvGeometry.PH, formula 1.24)
  "P"    gathered patch matrix P[b, g, k, n] = Dp[b, off[g, k] + base[n]]  (CPU 1x1 convs with
         unpadded rows: read from ``data`` itself, no "Dp"; ``direct_rows``, formula 1.23)
  "C"    GEMM C[b, g, t, n] = sum_k F[g, t // TI, k, t % TI] * P[b, g, k, n]
  "out"  epilogue out[b, c, oh, ow] = relu?(C[b, c // Tg, c % Tg, oh*OW + ow] + bias[c] + res[b, c, oh, ow])
         (the residual input ``res`` of a ResNet block is optional, like bias and ReLU)

``dtype`` (the tensor-core kernels of cuda_tc.py; "float32", the default, is the SIMT / CPU
definition above): "float16" / "bfloat16" / "tf32" store Dp, P and F in that type (tf32: float32
rounded to tf32), F unpacked as [G, TP, KP], and accumulate C in float32; data, bias, res and out
stay float32.
"""

from __future__ import annotations

from tvm import te, tirx

from .lowering import ConvGeometry


def storage_dtype(dtype: str) -> str:
    """The TIR type the operands of a compute dtype are stored in (tf32 lives in float32)."""
    return "float32" if dtype == "tf32" else dtype


def round_tf32(v):
    """float32 -> the nearest tf32 value (10-bit mantissa, ties away from zero), as float32: what
    ``cvt.rna.tf32.f32`` does, so the tensor cores read exact tf32 operands."""
    bits = tirx.reinterpret("uint32", v)
    bits = (bits + tirx.const(0x1000, "uint32")) & tirx.const(0xFFFFE000, "uint32")
    return tirx.reinterpret("float32", bits)


def _to_operand(v, dtype):
    if dtype == "tf32":
        return round_tf32(v)
    return v.astype(dtype) if dtype != "float32" else v


def _conv_gemm(g_: ConvGeometry, F, P, dtype):
    """Stage "C" of conv_te: the GEMM of the packed filter and the gathered patch matrix."""
    k = te.reduce_axis((0, g_.KP), name="k")
    if dtype != "float32":  # the operands widened to the float32 accumulator (the tensor-core intrinsics' form)
        f32 = (lambda v: v) if storage_dtype(dtype) == "float32" else (lambda v: v.astype("float32"))
        return te.compute(
            (g_.N, g_.G, g_.TO * g_.TI, g_.NP),
            lambda b, g, t, n: te.sum(f32(F[g, t, k]) * f32(P[b, g, k, n]), axis=k),
            name="C",
        )
    if g_.NRP:  # whole-row chunks: C keeps (row, padded column) axes so the epilogue is affine
        return te.compute(
            (g_.N, g_.G, g_.TO * g_.TI, g_.NRP, g_.OWP),
            lambda b, g, t, r, w: te.sum(F[g, t // g_.TI, k, t % g_.TI] * P[b, g, k, r * g_.OWP + w], axis=k),
            name="C",
        )
    return te.compute(
        (g_.N, g_.G, g_.TO * g_.TI, g_.NP),
        lambda b, g, t, n: te.sum(F[g, t // g_.TI, k, t % g_.TI] * P[b, g, k, n], axis=k),
        name="C",
    )


def _epilogue(v, bias=None, res=None, relu=False):
    """relu?(v + bias + res) in float32: the fused epilogue of every kernel (docs/formulas.md 1.21).
    ``relu``: False, True (max(v, 0)) or a number ``hi`` (min(max(v, 0), hi): ReLU6 is 6.0)."""
    if bias is not None:
        v = v + bias
    if res is not None:
        v = v + res
    if relu is False or relu is None:
        return v
    v = tirx.max(v, tirx.const(0.0, "float32"))
    return v if relu is True else tirx.min(v, tirx.const(float(relu), "float32"))


def padded_value(g_: ConvGeometry, data, live, b, f, fill: int = 0):
    """Element f of image b's flat padded copy of the live maps (stage "Dp"): data at (live map
    f // map_len, row, column), 0 in the padding and in the zero map L.  A uint8 ``data`` (the
    int8 kernels' carried activations) has ``fill``, its zero point, there instead."""
    l = f // g_.map_len
    r = f % g_.map_len
    if g_.PH == 1:
        h = r // g_.Wp - g_.pt
        w = r % g_.Wp - g_.pl
    else:  # phase plane q = (row parity, column parity), then a row of the plane (formula 1.24)
        plane = g_.Hq * g_.Wq
        q, rq = r // plane, r % plane
        h = (rq // g_.Wq) * g_.PH + q // g_.PH - g_.pt
        w = (rq % g_.Wq) * g_.PH + q % g_.PH - g_.pl
    lc = tirx.min(l, g_.L)
    ok = tirx.all(l < g_.L, h >= 0, h < g_.H, w >= 0, w < g_.W)
    return fill_outside(data[b, live[lc], clamp(h, g_.H), clamp(w, g_.W)], ok, fill)


def clamp(v, n):
    """``v`` clamped to [0, n - 1]: an index that is always inside a dimension of ``n``."""
    return tirx.max(tirx.min(v, n - 1), 0)


def fill_outside(load, ok, fill: int = 0):
    """``load`` (always valid: its indices clamped) where ``ok``, else 0 (float32) or ``fill``
    (uint8), branch-free: the loaded bits ANDed with a 0 / ~0 mask, so a padded row is one vector
    loop (measured 2.3x faster than if_then_else, which branches per element).  Not a Select of
    the load: the simplifier would drop the clamps under its condition, and a vector select
    evaluates both sides (loads outside the input)."""
    if load.dtype == "uint8":  # (x ^ z) & mask ^ z: x inside, z outside
        z = tirx.const(int(fill), "uint8")
        mask = tirx.Select(ok, tirx.const(255, "uint8"), tirx.const(0, "uint8"))
        return ((load ^ z) & mask) ^ z
    mask = tirx.Select(ok, tirx.const(-1, "int32"), tirx.const(0, "int32"))
    return tirx.reinterpret("float32", tirx.reinterpret("int32", load) & mask)


def strided_rows(g_: ConvGeometry) -> bool:
    """Whether the CPU gather copies stride-2 rows whole first (stage "P2"), then takes every other
    element with a shuffle (cpu_copies.schedule_row_gather): a strided vector load is 16 scalar loads.
    Row-aligned pixel numbering (OWP > 0) is a CPU lowering choice; the CUDA ones never make it."""
    return bool(g_.OWP) and g_.gsw == 2 and g_.ROWV == 16


def gather_rows(g_: ConvGeometry, Dp, off, base):
    """Stage "P": P[b, g, k, n] = Dp[b, off[g, k] + pix(n)], the gathered rows (formula 1.18);
    through stage "P2" (whole input rows, contiguous) when ``strided_rows``.  With row-aligned
    numbering the offset is clamped to where the rows it starts stay inside Dp (always true, and
    what lets a schedule compute an image's Dp right before its gathers: a table lookup alone
    has no bounds for the region analysis)."""
    if strided_rows(g_):
        rows, width = g_.NP // g_.OWP, 2 * g_.OWP - 1
        last = (rows - 1) * g_.gsh * g_.Wq + width - 1
        P2 = te.compute(
            (g_.N, g_.G, g_.KP, rows, width),
            lambda b, g, k, r, w: Dp[b, _row_start(g_, off[g, k], last) + r * (g_.gsh * g_.Wq) + w],
            name="P2",
        )
        return te.compute(
            (g_.N, g_.G, g_.KP, g_.NP), lambda b, g, k, n: P2[b, g, k, n // g_.OWP, 2 * (n % g_.OWP)], name="P"
        )
    if g_.OWP:
        last = (g_.NP // g_.OWP - 1) * g_.gsh * g_.Wq + (g_.OWP - 1) * g_.gsw
        return te.compute(
            (g_.N, g_.G, g_.KP, g_.NP),
            lambda b, g, k, n: Dp[
                b, _row_start(g_, off[g, k], last) + (n // g_.OWP) * (g_.gsh * g_.Wq) + (n % g_.OWP) * g_.gsw
            ],
            name="P",
        )
    return te.compute((g_.N, g_.G, g_.KP, g_.NP), lambda b, g, k, n: Dp[b, off[g, k] + base[n]], name="P")


def unit_conv(g_: ConvGeometry) -> bool:
    """A 1x1 conv with stride 1 and no padding: its padded input is the input itself."""
    return (g_.kh, g_.kw, g_.sh, g_.sw) == (1, 1, 1, 1) and not any((g_.pt, g_.pl, g_.pb, g_.pr))


def reads_input_directly(g_: ConvGeometry) -> bool:
    """Whether the gathered rows can be read from the input itself (no stage "Dp"): a unit_conv
    whose output rows are not padded (OWP == OW), so a gathered row is a row of one input map
    (formula 1.23)."""
    return unit_conv(g_) and g_.OWP == g_.OW


def direct_rows(g_: ConvGeometry, data, live, off):
    """Stage "P" read from the input: P[b, g, k, n] = data[b, live[l_k], n // OW, n % OW] with l_k
    = off[g, k] // (H W) the live map of gather row k, 0 for the rows that pad the reduction
    (they point to the zero map L).  Output rows past OH (whole-row chunks) read the last row."""

    def p(b, g, k, n):
        lk = off[g, k] // g_.map_len
        r, w = clamp(n // g_.OWP, g_.H), n % g_.OWP
        return fill_outside(data[b, live[tirx.min(lk, g_.L)], r, w], lk < g_.L)

    return te.compute((g_.N, g_.G, g_.KP, g_.NP), p, name="P")


def _row_start(g_: ConvGeometry, o, last: int):
    """The gather offset ``o`` clamped to [0, DPLEN - 1 - last] (``last``: the largest pixel offset)."""
    return tirx.min(tirx.max(o, 0), g_.DPLEN - 1 - last)


def conv_te(
    geom: ConvGeometry, has_bias: bool, relu: bool, has_res: bool = False, dtype: str = "float32", direct=False
):
    """The lowered conv as a PrimFunc (stages in the module docstring).  ``direct`` (CPU float32):
    where ``reads_input_directly``, stage "P" reads the input and there is no stage "Dp"."""
    g_ = geom
    LP = g_.L + 1
    tc = dtype != "float32"
    sd = storage_dtype(dtype)
    data = te.placeholder((g_.N, g_.C, g_.H, g_.W), "float32", name="data")
    if tc:
        F = te.placeholder((g_.G, g_.TO * g_.TI, g_.KP), sd, name="F")
    else:
        F = te.placeholder((g_.G, g_.TO, g_.KP, g_.TI), "float32", name="F")
    live = te.placeholder((LP,), "int32", name="live")
    off = te.placeholder((g_.G, g_.KP), "int32", name="off")
    base = None if g_.OWP else te.placeholder((g_.NP,), "int32", name="base")
    bias = te.placeholder((g_.T,), "float32", name="bias") if has_bias else None
    res = te.placeholder((g_.N, g_.T, g_.OH, g_.OW), "float32", name="res") if has_res else None

    def dp(b, f):
        v = padded_value(g_, data, live, b, f)
        return _to_operand(v, dtype) if tc else v

    if direct and reads_input_directly(g_):
        P = direct_rows(g_, data, live, off)
    else:
        P = gather_rows(g_, te.compute((g_.N, g_.DPLEN), dp, name="Dp"), off, base)
    C = _conv_gemm(g_, F, P, dtype)

    def epi(b, c, oh, ow):
        if g_.NRP:
            v = C[b, c // g_.Tg, c % g_.Tg, oh, ow]
        else:
            v = C[b, c // g_.Tg, c % g_.Tg, oh * (g_.OWP or g_.OW) + ow]
        return _epilogue(v, bias[c] if has_bias else None, res[b, c, oh, ow] if has_res else None, relu)

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
        return _epilogue(C[m, o], bias[o] if has_bias else None, None, relu)

    out = te.compute((M, O), epi, name="out")
    args = [x, Wp] + ([bias] if has_bias else []) + [out]
    return te.create_prim_func(args)


def dense_te_tc(M, K, O, MP, KP, OP, has_bias: bool, relu: bool, dtype: str):
    """The linear layer for the tensor cores: y[m, o] = sum_k X[m, k] * W[k, o] (+ bias, relu) with
    "X" the input cast to the operand type (rows clamped to M - 1 up to MP, columns zero from K up
    to KP) and W the weight as [KP, OP] in that type; C is accumulated in float32 over the padded
    [MP, OP] and the epilogue writes the [M, O] float32 output."""
    sd = storage_dtype(dtype)
    x = te.placeholder((M, K), "float32", name="x")
    W = te.placeholder((KP, OP), sd, name="W")
    bias = te.placeholder((O,), "float32", name="bias") if has_bias else None
    zero = tirx.const(0.0, "float32")
    X = te.compute(
        (MP, KP),
        lambda m, k: _to_operand(tirx.if_then_else(k < K, x[tirx.min(m, M - 1), tirx.min(k, K - 1)], zero), dtype),
        name="X",
    )
    f32 = (lambda v: v) if sd == "float32" else (lambda v: v.astype("float32"))
    k = te.reduce_axis((0, KP), name="k")
    C = te.compute((MP, OP), lambda m, o: te.sum(f32(X[m, k]) * f32(W[k, o]), axis=k), name="C")

    def epi(m, o):
        return _epilogue(C[m, o], bias[o] if has_bias else None, None, relu)

    out = te.compute((M, O), epi, name="out")
    args = [x, W] + ([bias] if has_bias else []) + [out]
    return te.create_prim_func(args)
