"""INT8 gather-GEMM conv for AVX-512 VNNI CPUs (docs/formulas.md section 5 "INT8").

The same lowering as the float32 kernel (paper 000 section 3: live maps, gather rows (s, i, j) of
the surviving groups, one GEMM with the compact filter), in integers:

  "Dp"   padded copy of the live maps, quantized on the way: u8 = clamp(rint(x / s_x) + z_x, 0, 255)
         (formula 5.2); padding and the zero map hold z_x, the quantized 0
  "P"    gathered rows P[b, g, k, n] (uint8), one contiguous vector copy per row as in float32
  "P4"   the rows interleaved by four, P4[b, g, k/4, n, k%4]: the layout ``vpdpbusd`` reads (four
         consecutive k of one pixel in each 32-bit lane); with rows of whole 16-pixel vectors, P
         is computed per 16 pixels x 4 rows in registers right before its interleave, so only
         P4 is stored
  "C"    int32 GEMM C[b, g, t, n] = sum_k Fq[g, t, k] * P[b, g, k, n], one ``vpdpbusd`` per 16 pixels
         and 4 k, the filter's 4 bytes broadcast from memory
  "out"  float32 epilogue out = relu?(C * m[t] + a[t] + res), m = s_x s_w[t] and
         a = bias - s_x s_w[t] z_x sum_k Fq[t, k] (formula 5.4): requantization, bias and the
         zero-point correction are one multiply-add per output

By default input and output are float32, so a quantized conv drops into any graph: each conv
quantizes its own input in the padded copy it makes anyway.  Between int8 convs the activations are
carried as uint8 (``passes.uint8_carry``): the epilogue quantizes for the next conv, whose copy
then only pads (with z_x), and a residual input is dequantized in the epilogue; 4x less memory
traffic in the copy, the store and the pooling between.  Accumulation is exact: |C| <= 255 * 127 * K fits in
int32 for K < 66,000 gather rows.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx
from tvm.script import tirx as T
from tvm.target import codegen

from .cpu import _schedule_epilogue, _schedule_tile_epilogue, flatten_output_pixels, task_plan, tile_epilogue
from .cpu_copies import VECTOR_LANES, place_stride2_rows, schedule_padded_copy, schedule_row_gather
from .lowering import ConvGeometry
from .te_defs import _epilogue, gather_rows, padded_value, strided_rows

VNNI_INTRIN = "gbd_vnni_16x4_bcast_filter"
INTERLEAVE_INTRIN = "gbd_interleave_4x16_u8"
#: k rows per vpdpbusd lane
K_LANE = 4
#: lowering_params overrides: k blocks of whole lanes, up to 1024 gather rows (a register tile's
#: stripes of P4 and the filter are KC x 32 and KC x 8 bytes, a quarter of float32's at the same KC:
#: one k block for ResNet-18's 3x3 convs up to 256 maps at density 0.3, 1.01-1.04x at batch 1 and
#: 32, AMD EPYC, ad-hoc); output rows padded to 16 pixels (one interleave / vpdpbusd per 16 pixels
#: of a row; takes_exact_rows says where they are not); no phase planes (formula 1.24) for a
#: stride-2 stem: their copy reads every other input column with a gather per 16 elements, which
#: here also quantizes (float input), while the stride-2 row gather (te_defs.strided_rows) reads
#: whole rows with two loads and a shuffle per 16: ResNet's 7x7 stem at density 0.3 1.34x faster
#: at batch 1 and 32 (AMD EPYC, ad-hoc)
LOWERING = dict(k_align=K_LANE, kc_max=1024, row_align=(16,), phases=False)


def takes_exact_rows(geom: ConvGeometry, target) -> bool:
    """Whether a conv lowered with output rows of exactly OW pixels (``geom``; stride 1) runs it
    that way rather than with rows padded to 16: where its epilogue runs per register tile
    (cpu.tile_epilogue, flat pixels), so the 16-pixel vectors may cross rows.  The rows are then
    gathered into a panel (vector copies per row) and interleaved from it: a 56-pixel row computes
    56 pixels, not 64 (3x3 64 -> 64 convs at 56x56, density 0.3: 1.14x at batch 1 and 32, AMD EPYC,
    ad-hoc)."""
    return geom.gsw == 1 and task_plan(geom, target)[2] and tile_epilogue(geom)


def _vnni_funcs(scope):
    """desc / impl of C[16] (int32, in ``scope``) += A[16, 4] (uint8) . B[4] (int8): one ``vpdpbusd``
    with the filter's 4 bytes broadcast."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16, 4), "uint8", offset_factor=1)
        B = T.match_buffer(b, (4,), "int8", offset_factor=1)
        C = T.match_buffer(c, (16,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16, 0:4], B[0:4])
            T.writes(C[0:16])
            for i, k in T.grid(16, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vi, vk], "int32") * T.cast(B[vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16, 4), "uint8", offset_factor=1)
        B = T.match_buffer(b, (4,), "int8", offset_factor=1)
        C = T.match_buffer(c, (16,), "int32", offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16, 0:4], B[0:4])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                A.vload([0, 0], dtype="uint8x64"),  # LLVM >= 20 types both byte operands <64 x i8>
                T.reinterpret(
                    T.broadcast(T.reinterpret(B.vload([0], dtype="int8x4"), dtype="int32"), 16), dtype="int8x64"
                ),
                dtype="int32x16",
            )

    return desc, impl


def _interleave_funcs(scope: str, vbmi: bool):
    """desc / impl of D[16, 4] = S[4, 16]^T (uint8): 4 gathered rows of 16 pixels interleaved by
    four; ``scope``: where the rows are (a panel in memory, or "local": 4 vectors gathered right
    before, kept in registers).  ``vbmi``: the rows side by side in one register, then one ``vpermb``
    (3 inserts + 1 permute; the 4-input shuffle was 8 unpacks + 3 inserts, all on the one shuffle
    port: 1.1-1.25x on int8 3x3 convs with the gather fused, ad-hoc)."""

    @T.prim_func(s_tir=True)
    def desc(s: T.handle, d: T.handle) -> None:
        ss = T.int32()
        S = T.match_buffer(s, (4, 16), "uint8", strides=[ss, 1], offset_factor=1, scope=scope)
        D = T.match_buffer(d, (16, 4), "uint8", offset_factor=1)
        with T.sblock("root"):
            T.reads(S[0:4, 0:16])
            T.writes(D[0:16, 0:4])
            for n, j in T.grid(16, 4):
                with T.sblock("P4"):
                    vn, vj = T.axis.remap("SS", [n, j])
                    D[vn, vj] = S[vj, vn]

    order = [j * 16 + n for n in range(16) for j in range(4)]

    @T.prim_func(s_tir=True)
    def impl(s: T.handle, d: T.handle) -> None:
        ss = T.int32()
        S = T.match_buffer(s, (4, 16), "uint8", strides=[ss, 1], offset_factor=1, scope=scope)
        D = T.match_buffer(d, (16, 4), "uint8", offset_factor=1)
        with T.sblock("root"):
            T.reads(S[0:4, 0:16])
            T.writes(D[0:16, 0:4])
            flat = T.decl_buffer((64,), "uint8", data=D.data, elem_offset=D.elem_offset)
            rows = [S.vload([j, 0], "uint8x16") for j in range(4)]
            if vbmi:
                flat[T.ramp(T.int32(0), 1, 64)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.permvar.qi.512"),
                    T.Shuffle(rows, list(range(64))),
                    _opaque_bytes(order),
                    dtype="uint8x64",
                )
            else:
                flat[T.ramp(T.int32(0), 1, 64)] = T.Shuffle(rows, order)

    return desc, impl


def _opaque_bytes(values):
    """A constant uint8x64 vector that LLVM does not see as constant when it combines shuffles:
    a permute by a constant index vector is turned back into a shuffle, which it then lowers as
    unpacks (``vpavgb`` of the vector with itself is the vector)."""
    v = T.Shuffle([T.ramp(T.uint8(0), T.uint8(1), 64)], list(values))
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pavg.b.512"), v, v, dtype="uint8x64")


def _register_intrinsics():
    intrins = [(f"{VNNI_INTRIN}_{sc}", *_vnni_funcs(sc)) for sc in ("global", "local")]
    for sc in ("global", "local"):
        intrins += [(_interleave_name(sc, vbmi), *_interleave_funcs(sc, vbmi)) for vbmi in (False, True)]
    for name, desc, impl in intrins:
        try:
            s_tir.TensorIntrin.get(name)
        except Exception:  # noqa: BLE001 - TVM raises a generic error for an unknown name
            s_tir.TensorIntrin.register(name, desc, impl)


def _interleave_name(scope: str, vbmi: bool) -> str:
    return f"{INTERLEAVE_INTRIN}_{scope}" + ("_vpermb" if vbmi else "")


def _rint_int32(x):
    """rint(x) as int32: ``llvm.lrint``, one ``vcvtps2dq`` in the default rounding mode (to nearest
    even, as nearbyint); nearbyint then a cast was a round and a truncating convert.  Not in the
    input's quantize (_quantize): there the test kernel built for znver4 died of an illegal
    instruction on this CPU, and the stem ran 1.7x slower."""
    return tirx.call_llvm_pure_intrin("int32", "llvm.lrint", x)


def _quantize(x, scale: float, zero: int):
    """u8 = clamp(rint(x / s) + z, 0, 255) (formula 5.2)."""
    inv_s, zp = tirx.const(1.0 / scale, "float32"), tirx.const(int(zero), "int32")
    return tirx.max(tirx.min(tirx.nearbyint(x * inv_s).astype("int32") + zp, 255), 0).astype("uint8")


def _dequantize(q, scale: float, zero: int):
    """x = s (u8 - z) (formula 5.2 inverted), as s u8 - s z: one multiply-add."""
    return q.astype("float32") * tirx.const(scale, "float32") - tirx.const(scale * int(zero), "float32")


def _requantize(v, m, a, r, res_q, relu, out_q):
    """The epilogue with a uint8 output (formulas 5.2 and 5.4): q(relu?(v m + a + dq(r))) with the
    output's 1 / s and z folded into the per-channel m and a, the residual's scale into one
    multiply-add, and ReLU (or ReLU6) into the clamp (q is monotone, q(0) = z): 9 vector ops per
    16 outputs with a uint8 residual instead of 14."""
    s_o, z_o = out_q
    inv = 1.0 / s_o
    y = v.astype("float32") * (m * tirx.const(inv, "float32")) + (a * tirx.const(inv, "float32") + float(z_o))
    if r is not None and res_q:
        s_r, z_r = res_q
        y = y + (r.astype("float32") * tirx.const(s_r * inv, "float32") - tirx.const(s_r * z_r * inv, "float32"))
    elif r is not None:
        y = y + r * tirx.const(inv, "float32")
    lo = z_o if relu is not False and relu is not None else 0
    hi = 255 if relu is False or relu is None or relu is True else min(255, round(float(relu) * inv) + z_o)
    # clamped as int32: a float clamp let LLVM fold the casts into float -> uint8, done on scalars
    q = _rint_int32(y)
    return tirx.min(tirx.max(q, tirx.const(lo, "int32")), tirx.const(hi, "int32")).astype("uint8")


def conv_te_int8(
    geom: ConvGeometry,
    x_scale: float,
    x_zero: int,
    relu: bool,
    has_res: bool = False,
    rows_filter: bool = False,
    *,
    in_u8: bool = False,
    out_q=None,
    res_q=None,
):
    """The int8 conv of the module docstring: params (data, Fq, live, off, (base), mul, add, (res), out).
    Fq is int8 [G, TO, KP/4, TI, 4]: per 4 gather rows, the TI filter rows' 4 bytes side by side (the
    VNNI broadcast); ``rows_filter``: [G, TO * TI, KP], one row of K bytes per filter (the AMX tiles).
    Carried uint8 activations (passes.uint8_carry): ``in_u8``, data is already quantized with
    (x_scale, x_zero); ``out_q`` = (scale, zero): out is uint8, quantized for the next conv;
    ``res_q`` = (scale, zero): res is uint8, dequantized in the epilogue."""
    g_ = geom
    data = te.placeholder((g_.N, g_.C, g_.H, g_.W), "uint8" if in_u8 else "float32", name="data")
    if rows_filter:
        F = te.placeholder((g_.G, g_.TO * g_.TI, g_.KP), "int8", name="F")
    else:
        F = te.placeholder((g_.G, g_.TO, g_.KP // K_LANE, g_.TI, K_LANE), "int8", name="F")
    live = te.placeholder((g_.L + 1,), "int32", name="live")
    off = te.placeholder((g_.G, g_.KP), "int32", name="off")
    base = None if g_.OWP else te.placeholder((g_.NP,), "int32", name="base")
    mul = te.placeholder((g_.T,), "float32", name="mul")
    add = te.placeholder((g_.T,), "float32", name="add")
    res_dtype = "uint8" if res_q else "float32"
    res = te.placeholder((g_.N, g_.T, g_.OH, g_.OW), res_dtype, name="res") if has_res else None

    def quant(b, f):  # the float32 kernel's padded value, quantized (padding: q(0) = z)
        x = padded_value(g_, data, live, b, f, fill=x_zero)
        return x if in_u8 else _quantize(x, x_scale, x_zero)

    Dp = te.compute((g_.N, g_.DPLEN), quant, name="Dp")
    C = _int8_gemm(g_, gather_rows(g_, Dp, off, base), F, rows_filter)

    def epi(b, c, oh, ow):
        if g_.NRP:
            v = C[b, c // g_.Tg, c % g_.Tg, oh, ow]
        else:
            v = C[b, c // g_.Tg, c % g_.Tg, oh * (g_.OWP or g_.OW) + ow]
        r = res[b, c, oh, ow] if has_res else None
        if out_q:
            return _requantize(v, mul[c], add[c], r, res_q, relu, out_q)
        if has_res and res_q:
            r = _dequantize(r, *res_q)
        return _epilogue(v.astype("float32") * mul[c] + add[c], None, r, relu)

    out = te.compute((g_.N, g_.T, g_.OH, g_.OW), epi, name="out")
    args = [data, F, live, off] + ([] if g_.OWP else [base]) + [mul, add] + ([res] if has_res else []) + [out]
    return te.create_prim_func(args)


def _int8_gemm(g_: ConvGeometry, P, F, rows_filter: bool):
    """Stages "P4" (the gathered rows interleaved by four) and "C" (the int32 GEMM)."""
    P4 = te.compute(
        (g_.N, g_.G, g_.KP // K_LANE, g_.NP, K_LANE), lambda b, g, k4, n, j: P[b, g, k4 * K_LANE + j, n], name="P4"
    )
    k4 = te.reduce_axis((0, g_.KP // K_LANE), name="k4")
    kj = te.reduce_axis((0, K_LANE), name="kj")

    def mac(b, g, t, n):
        f = F[g, t, k4 * K_LANE + kj] if rows_filter else F[g, t // g_.TI, k4, t % g_.TI, kj]
        f = f.astype("int32")
        return te.sum(P4[b, g, k4, n, kj].astype("int32") * f, axis=[k4, kj])

    if g_.NRP:
        return te.compute(
            (g_.N, g_.G, g_.TO * g_.TI, g_.NRP, g_.OWP), lambda b, g, t, r, w: mac(b, g, t, r * g_.OWP + w), name="C"
        )
    return te.compute((g_.N, g_.G, g_.TO * g_.TI, g_.NP), mac, name="C")


def schedule_conv_int8(func, geom: ConvGeometry, target):
    """Schedule conv_te_int8 like the float32 kernel (cpu.schedule_conv_cpu): the tasks of
    cpu.task_plan (one per (image, group, n-chunk, t-chunk), or whole images at large batch); per k
    block the rows are gathered, interleaved, and a TI x 32 int32 register tile accumulates with
    ``vpdpbusd``; the epilogue per task, or per register tile where cpu.tile_epilogue allows."""
    _register_intrinsics()
    per_image, tpo, fused_epi = task_plan(geom, target)  # as the float32 kernel's tasks
    sch = s_tir.schedule.Schedule(func)
    blk = sch.get_sblock("C")
    nv2 = geom.NV // VECTOR_LANES  # vectors per register tile row
    tile_epi = fused_epi and tile_epilogue(geom)
    if tile_epi:
        flatten_output_pixels(sch, blk, geom)
    if geom.NRP and not tile_epi:
        # whole output rows per task, tiled as (row, 16-pixel column block) loops: a fused
        # (row, column) index cannot be blockized for tensorize
        b, g, t, r, w, k4, kj = sch.get_loops(blk)
        no, ri = sch.split(r, [None, geom.NTC * geom.NV // geom.OWP])
        wo, nvi = sch.split(w, [None, VECTOR_LANES])
        if (geom.OWP // VECTOR_LANES) % nv2 == 0:  # the tile's vectors side by side in a row
            wt, nvo = sch.split(wo, [None, nv2])
            nts = [ri, wt]
        else:  # the tile's vectors in consecutive rows
            rt, nvo = sch.split(ri, [None, nv2])
            nts = [rt, wo]
    else:
        b, g, t, n, k4, kj = sch.get_loops(blk)
        no, nt, nv = sch.split(n, [None, geom.NTC, geom.NV])
        nvo, nvi = sch.split(nv, [None, VECTOR_LANES])
        nts = [nt]
    tp, to, ti = sch.split(t, [tpo, geom.TO // tpo, geom.TI])
    ko, ki = sch.split(k4, [None, geom.KC // K_LANE])
    # one k block: its (unit) loop inside the filter tile's, so the tile's accumulators start at
    # zero in registers (zeroed in C before the block, they were a store and a load more per
    # tile: ~15% of an int8 stem, K = 52), and the rows are gathered once per task
    one_k = geom.KP == geom.KC
    if one_k:
        sch.reorder(b, g, no, tp, *nts, to, ko, ki, ti, nvo, nvi, kj)
    else:
        sch.reorder(b, g, no, tp, ko, *nts, to, ki, ti, nvo, nvi, kj)
    # whole-image tasks (cpu.image_tasks): the image's padded copy is made in its task, right
    # before its gathers read it from cache, instead of one pass over the batch through memory
    par, task = (b, sch.fuse(g, no, tp)) if per_image else (sch.fuse(b, g, no, tp),) * 2
    sch.parallel(par)
    if not fused_epi:
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, task)
    sch.unroll(ti)
    sch.unroll(nvo)
    if tile_epi:  # requantized from the accumulators in registers: C is never stored
        _schedule_tile_epilogue(sch, geom, ki)
    init = sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    if not fused_epi:
        sch.vectorize(sch.get_loops(acc)[-1])
    _schedule_gather(sch, geom, task if one_k else ko, par if per_image else None, target)
    if not tile_epi:
        _schedule_epilogue(sch, geom, task if fused_epi else None)
    scope = "global" if fused_epi and not tile_epi else "local"
    sch.tensorize(nvi, f"{VNNI_INTRIN}_{scope}")  # last: it replaces the block
    return sch.mod["main"]


def _schedule_gather(sch, geom: ConvGeometry, ko, image_at, target):
    """Per k block the gathered rows interleaved by four (one shuffle per 16 pixels x 4 rows).
    Rows of whole 16-pixel vectors: per 16 pixels, the 4 rows' vectors are loaded from the padded
    copy and shuffled in registers, so the un-interleaved panel P is never stored; else the rows
    are copied into the uint8 panel P first (as the float32 kernel copies them), then interleaved.
    The padded copy is placed here (at ``image_at``: an image's parallel loop, or its own pass),
    once the gather is placed and before its row copies are split into parts: after the split,
    compute_at no longer finds the copy's readers and puts it after them."""
    p4 = sch.get_sblock("P4")
    sch.compute_at(p4, ko)
    pblk = sch.get_sblock("P")
    k4l, nl, jl = sch.get_loops(p4)[-3:]
    nlo, nli = sch.split(nl, [None, 16])
    sch.reorder(k4l, nlo, nli, jl)
    in_regs = bool(geom.OWP) and geom.OWP % 16 == 0 and not strided_rows(geom)
    if in_regs:
        sch.compute_at(pblk, nlo)
        sch.set_scope(pblk, 0, "local")
        pk, pn = sch.get_loops(pblk)[-2:]
        sch.unroll(pk)
        sch.vectorize(pn)
        schedule_padded_copy(sch, geom, image_at)  # the float32 copy's schedule, quantized
    else:
        sch.compute_at(pblk, ko)
        place_stride2_rows(sch, pblk, geom)
        schedule_padded_copy(sch, geom, image_at)
        schedule_row_gather(sch, pblk, geom, "uint8")
    vbmi = bool(codegen.target_has_features("avx512vbmi", target))
    sch.tensorize(nli, _interleave_name("local" if in_regs else "global", vbmi))
