"""INT8 gather-GEMM conv on Intel AMX tiles (docs/formulas.md section 5): the same stages as the
VNNI kernel of ``cpu_int8`` (quantized padded copy, gathered rows interleaved by four, fused
requantize / bias / residual / ReLU epilogue); only the GEMM differs.

One ``tdpbsud`` multiplies a 16 x 64 tile of signed filter bytes (16 filters, 64 gather rows: the
filter matrix Fq [G, TP, KP] row by row) with a 16 x 64 tile of unsigned input bytes (16 rows of
the interleaved panel P4[k/4, n, k%4]: 64 gather rows x 16 pixels, exactly the VNNI layout) into
a 16 x 16 int32 tile: 16,384 multiply-adds per instruction, against 64 for ``vpdpbusd``.  One
call of the intrinsic covers a filter tiles (a = TI / 16) x all pixel tiles of the task's output
rows (or of its chunk), blocked as a x 2 accumulator tiles where the pixel tiles pair up: per k
step two input tiles and a filter tiles make 2 a products (up to 8 tiles).  The tile
configuration is per thread state, so each call loads it, once for all its tiles; with one call
per output row instead of per task's rows the loads (``ldtilecfg`` serializes the core) were ~10%
of a 56x56 conv, and 28x28 / 14x14 convs ran 1.22-1.26x slower at batch 32 (ad-hoc).  With one
k block (at most 1024 gather rows) the accumulators start at zero in the tiles (``tilezero``);
otherwise they are loaded from memory and stored back per k block.  Against one output tile per
call with accumulators zeroed in memory: 1.14-1.23x on ResNet-18's 3x3 convs at batch 32,
density 0.3 (ad-hoc timing).

Linux hands AMX state to a process only on request (``arch_prctl(ARCH_REQ_XCOMP_PERM)``,
``target.request_amx``): ``make_target("llvm")`` asks, and adds the AMX features to the host target
only when it is granted; the loader asks before it loads an artifact built with them.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.ir import Range
from tvm.script import tirx as T

from .cpu import _schedule_epilogue, task_plan
from .cpu_copies import schedule_padded_copy
from .cpu_int8 import K_LANE, _register_intrinsics, _schedule_gather
from .lowering import ConvGeometry

#: rows / columns of an output tile, and gather rows per tile product
TILE = 16
TILE_K = 64
#: fewer gather rows than this: the VNNI kernel, even where AMX is there.  Since the calls cover
#: whole rows of pixel tiles and start from tilezero, the tiles win from a few dozen rows (batch
#: 32 / 1, ms): ResNet-18's 7x7 stem (44 rows at density 0.3) 5.3 against 6.2 / 0.17 against
#: 0.19; a 1x1 stride-2 conv with 64 rows 1.18 against 1.24 / 0.053 against 0.048; a 56x56
#: layer at density 0.2 (~115 rows) 2.3 against 4.3.  With one tile product per call (<= 64
#: rows) the VNNI kernel's register tiles are as fast.
MIN_K = 32
#: k blocks of up to 1024 gather rows (16 tile products per load / store of the accumulators and
#: per ldtilecfg): against 256, a 7x7 ResNet-18 layer took 0.10 against 0.15 ms at batch 1 and
#: 2.4 against 3.0 at batch 32; the gathered panel of a block stays in L2
#: lowering_params of the AMX kernel: 16 pixels per tile, k blocks of whole tiles (TI: lowering_params)
LOWERING = dict(NV=TILE, kc_max=1024, k_align=TILE_K, row_align=(16,), chunk_tiles=tuple(range(1, 17)))


def lowering_params(Tg: int) -> dict:
    """32 filters (two accumulator tiles sharing each input tile) where they divide the group's
    outputs, else 16."""
    return {**LOWERING, "TI": 2 * TILE if Tg % (2 * TILE) == 0 else TILE}


def _tile_config_words(n: int):
    """ldtilecfg's 64 bytes as 8 little-endian uint64: palette 1; n tiles of 16 rows x 64 bytes."""
    cols = [sum(TILE_K << (16 * (t - 4 * q)) for t in range(4 * q, min(n, 4 * q + 4))) for q in range(2)]
    rows = sum(TILE << (8 * t) for t in range(n))  # bytes 48.. : rows of each tile
    return [1, 0, cols[0], cols[1], 0, 0, rows, 0]


def _pixel(j, n, p: int):
    """Pixel ``n`` of tile ``j`` of a call's ``p`` tiles, as the conv block binds it (TVM drops
    the tile loop of extent one)."""
    return n if p == 1 else j * TILE + n


def _tile_pairs(p: int) -> int:
    """Pixel tiles per accumulator block: two where the call's p pixel tiles pair up (2 a + a + 2
    tiles <= 8 for a <= 2), else one."""
    return 2 if p % 2 == 0 else 1


def _call_shapes(m: int, a: int, p: int, R: int):
    """Shapes of one call's accumulators C ([R,] 16 a, 16 p) and interleaved inputs B (16 m,
    max(R, 1) 16 p, 4); R = 0: one row, C two-dimensional."""
    TA, NP = TILE * a, TILE * p
    return ((R, TA, NP) if R else (TA, NP)), (TILE * m, max(R, 1) * NP, K_LANE)


def _whole(buf):
    """The region of all of ``buf`` (a desc / impl's reads and writes: C, B and A are whole)."""
    return tirx.BufferRegion(buf, [Range.from_min_extent(0, e) for e in buf.shape])


def _tile_at(C, R: int, r, row, col):
    """Address of C's accumulator tile at (row, col), in output row ``r`` when ``R`` > 0."""
    return T.address_of(C[r, row, col] if R else C[row, col])


def _amx_funcs(m: int, a: int, p: int, scope: str, zero: bool, R: int = 0):
    """desc / impl of C[16 a, 16 p] (int32, ``scope``) += A[16 a, 64 m] (int8 filters) x
    B[16 m, 16 p, 4] (uint8 interleaved inputs), i.e. a filter tiles x p pixel tiles.  ``zero``:
    the accumulators start at zero (``tilezero``) instead of being loaded, i.e. the impl computes
    C = A x B; only valid with one k block, where ``_zero_init`` makes the zero init that the desc
    assumes a no-op.  ``R`` > 0: R output rows per call, C[R, 16 a, 16 p] and B[16 m, R 16 p, 4]
    (the rows' pixels side by side), so one tile configuration load serves R rows."""
    TA, NP = TILE * a, TILE * p
    cshape, bshape = _call_shapes(m, a, p, R)

    @T.prim_func(s_tir=True)
    def desc(ha: T.handle, hb: T.handle, hc: T.handle) -> None:
        sa, sb, sr, sc = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(ha, (TA, TILE_K * m), "int8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(hb, bshape, "uint8", strides=[sb, K_LANE, 1], offset_factor=1)
        C = T.match_buffer(hc, cshape, "int32", strides=[sr, sc, 1] if R > 0 else [sc, 1], offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(_whole(C), _whole(B), _whole(A))
            T.writes(_whole(C))
            # operands in the order the conv's block reads them (inputs, then filters)
            if R > 0:
                for r, j, t, n, k4, kj in T.grid(R, p, TA, TILE, TILE * m, K_LANE):
                    with T.sblock("update"):
                        vt, vr = T.axis.spatial(TA, t), T.axis.spatial(R, r)  # the conv block's order
                        vn = T.axis.spatial(NP, _pixel(j, n, p))
                        vk4, vkj = T.axis.remap("RR", [k4, kj])
                        C[vr, vt, vn] = C[vr, vt, vn] + T.cast(B[vk4, vr * NP + vn, vkj], "int32") * T.cast(
                            A[vt, vk4 * K_LANE + vkj], "int32"
                        )
            else:
                for j, t, n, k4, kj in T.grid(p, TA, TILE, TILE * m, K_LANE):
                    with T.sblock("update"):
                        vt = T.axis.spatial(TA, t)
                        vn = T.axis.spatial(NP, _pixel(j, n, p))
                        vk4, vkj = T.axis.remap("RR", [k4, kj])
                        C[vt, vn] = C[vt, vn] + T.cast(B[vk4, vn, vkj], "int32") * T.cast(
                            A[vt, vk4 * K_LANE + vkj], "int32"
                        )

    return desc, _amx_impl(m, a, p, scope, zero, R)


def _tile_op(name: str, tile, *args):
    """One AMX intrinsic on tile number ``tile`` (an immediate: the loops around are unrolled)."""
    return T.call_llvm_intrin("void", f"llvm.x86.{name}", T.Cast("int8", tile), *args)


def _amx_impl(m: int, a: int, p: int, scope: str, zero: bool, R: int = 0):
    """The accumulators blocked as a x pp tiles (pp = _tile_pairs(p)): per k step pp input tiles
    and a filter tiles are loaded for a pp products, and the tile configuration is loaded once per
    call (tiles: accumulators 0 .. a pp - 1, filters a pp .., inputs a pp + a ..)."""
    TA, NP, pp = TILE * a, TILE * p, _tile_pairs(p)
    w = _tile_config_words(a * pp + a + pp)
    cshape, bshape = _call_shapes(m, a, p, R)

    @T.prim_func(s_tir=True)
    def impl(ha: T.handle, hb: T.handle, hc: T.handle) -> None:
        sa, sb, sr, sc = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(ha, (TA, TILE_K * m), "int8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(hb, bshape, "uint8", strides=[sb, K_LANE, 1], offset_factor=1)
        C = T.match_buffer(hc, cshape, "int32", strides=[sr, sc, 1] if R > 0 else [sc, 1], offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(_whole(C), _whole(B), _whole(A))
            T.writes(_whole(C))
            cfg = T.alloc_buffer((8,), "uint64", scope="local")
            for i in range(8):
                cfg[i] = T.uint64(0)
            cfg[0] = T.uint64(w[0])
            cfg[2] = T.uint64(w[2])
            cfg[3] = T.uint64(w[3])
            cfg[6] = T.uint64(w[6])
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0])))
            for r, jo in T.grid(max(R, 1), p // pp):
                for q in T.unroll(a):
                    for j in T.unroll(pp):
                        if zero:
                            T.evaluate(_tile_op("tilezero", q * pp + j))
                        else:
                            c = _tile_at(C, R, r, TILE * q, TILE * (jo * pp + j))
                            T.evaluate(_tile_op("tileloadd64", q * pp + j, c, T.int64(sc) * 4))
                for i in range(m):
                    for j in T.unroll(pp):
                        b = T.address_of(B[TILE * i, r * NP + TILE * (jo * pp + j), 0])
                        T.evaluate(_tile_op("tileloadd64", a * pp + a + j, b, T.int64(sb)))
                    for q in T.unroll(a):
                        f = T.address_of(A[TILE * q, TILE_K * i])
                        T.evaluate(_tile_op("tileloadd64", a * pp + q, f, T.int64(sa)))
                        for j in T.unroll(pp):
                            T.evaluate(
                                _tile_op(
                                    "tdpbsud", q * pp + j, T.Cast("int8", a * pp + q), T.Cast("int8", a * pp + a + j)
                                )
                            )
                for q in T.unroll(a):
                    for j in T.unroll(pp):
                        c = _tile_at(C, R, r, TILE * q, TILE * (jo * pp + j))
                        T.evaluate(_tile_op("tilestored64", q * pp + j, c, T.int64(sc) * 4))

    return impl


def _skip_init_funcs(a: int, p: int, scope: str, R: int = 0):
    """desc / impl of the zero init of C[16 a, 16 p] (``R`` > 0: C[R, 16 a, 16 p]): the impl does
    nothing, because the ``zero`` products right after it (same tiles, one k block) start their
    accumulator tiles at zero."""
    TA = TILE * a
    cshape = _call_shapes(1, a, p, R)[0]

    @T.prim_func(s_tir=True)
    def desc(hc: T.handle) -> None:
        sr, sc = T.int32(), T.int32()
        C = T.match_buffer(hc, cshape, "int32", strides=[sr, sc, 1] if R > 0 else [sc, 1], offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads()
            T.writes(_whole(C))
            if R > 0:
                for r, j, t, n in T.grid(R, p, TA, TILE):
                    with T.sblock("init"):
                        vt, vr = T.axis.spatial(TA, t), T.axis.spatial(R, r)  # the conv block's order
                        vn = T.axis.spatial(TILE * p, _pixel(j, n, p))
                        C[vr, vt, vn] = T.int32(0)
            else:
                for j, t, n in T.grid(p, TA, TILE):
                    with T.sblock("init"):
                        vt = T.axis.spatial(TA, t)
                        vn = T.axis.spatial(TILE * p, _pixel(j, n, p))
                        C[vt, vn] = T.int32(0)

    @T.prim_func(s_tir=True)
    def impl(hc: T.handle) -> None:
        sr, sc = T.int32(), T.int32()
        C = T.match_buffer(hc, cshape, "int32", strides=[sr, sc, 1] if R > 0 else [sc, 1], offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads()
            T.writes(_whole(C))
            T.evaluate(0)

    return desc, impl


def _register(name, funcs) -> str:
    try:
        s_tir.TensorIntrin.get(name)
    except Exception:  # noqa: BLE001 - TVM raises a generic error for an unknown name
        s_tir.TensorIntrin.register(name, *funcs())
    return name


def _zero_init(sch, blk, at, a: int, p: int, scope: str, R: int = 0) -> None:
    """One k block: the zero init goes right before the tiles' products (decomposed at ``at``) and
    is tensorized to nothing; the products start from ``tilezero``.  Before, the whole chunk of
    accumulators was zeroed in memory and loaded into the tiles once per tile."""
    depth = [sch.get(loop).same_as(sch.get(at)) for loop in sch.get_loops(blk)].index(True)
    init = sch.decompose_reduction(blk, at)
    name = _register(f"gbd_amx_skip_init_{a}x{p}x{R}_{scope}", lambda: _skip_init_funcs(a, p, scope, R))
    top = sch.get_loops(init)[depth]  # the init's copy of ``at``; a unit loop is not copied
    if p == 1 and R:  # the pixel-tile loop of the rows' tiles, as the desc
        sch.add_unit_loop(sch.get_loops(init)[depth + 1])
    sch.tensorize(sch.add_unit_loop(top) if p == 1 and not R else top, name)


def schedule_conv_amx(func, geom: ConvGeometry, target):
    """Schedule conv_te_int8(rows_filter=True): tasks, gather, copy and epilogue as the VNNI
    kernel (cpu_int8.schedule_conv_int8); the GEMM in 16 x 16 output tiles of tdpbsud."""
    _register_intrinsics()  # the interleave of the gathered rows
    per_image, tpo, fused_epi = task_plan(geom, target)  # as the float32 kernel's tasks
    sch = s_tir.schedule.Schedule(func)
    blk = sch.get_sblock("C")
    if geom.NRP:  # whole output rows per task: tiles of 16 pixels of one row
        # C as [b, g, row, filter, column]: a row's tiles (16 filters x 16 pixels) are then a 2-D region
        sch.transform_layout(blk, ("write", 0), lambda b, g, t, r, w: (b, g, r, t, w))
        b, g, t, r, w, k4, kj = sch.get_loops(blk)
        no, ri = sch.split(r, [None, geom.NTC * geom.NV // geom.OWP])
        nt, ni = (None, w) if geom.OWP == TILE else sch.split(w, [None, TILE])
        rows = [ri]
    else:
        b, g, t, n, k4, kj = sch.get_loops(blk)
        if geom.NTC == 1:
            (no, ni), nt = sch.split(n, [None, TILE]), None
        else:
            no, nt, ni = sch.split(n, [None, geom.NTC, TILE])
        rows = []
    tp, to, ti = sch.split(t, [tpo, geom.TO // tpo, geom.TI])
    one_block = geom.KP == geom.KC
    ko, ki = (None, k4) if one_block else sch.split(k4, [None, geom.KC // K_LANE])
    # per call: a filter tiles x all pixel tiles of the chunk's R rows (or of the chunk), one
    # ldtilecfg for them all: a call per row loaded it for every row (~10% of a 56x56 conv)
    pix = [] if nt is None else [nt]
    R = geom.NTC * geom.NV // geom.OWP if geom.NRP else 0
    R = R if R > 1 else 0
    outer = [to, *rows] if R else [*rows, to]
    sch.reorder(b, g, no, tp, *([] if one_block else [ko]), *outer, *pix, ti, ni, ki, kj)
    if nt is None:  # one pixel tile: a unit loop, which the tile binding does not use (as the desc)
        nt = sch.add_unit_loop(ti)
    call = rows[0] if R else nt
    # whole-image tasks (cpu.image_tasks): the image's padded copy is made in its task, right
    # before its gathers read it from cache, instead of one pass over the batch through memory
    # (ResNet-18's 56x56 convs 1.17-1.2x at batch 32, the stem 1.05-1.09x; ad-hoc A/B)
    par, task = (b, sch.fuse(g, no, tp)) if per_image else (sch.fuse(b, g, no, tp),) * 2
    sch.parallel(par)
    if not fused_epi:
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, task)
        sch.vectorize(sch.get_loops(acc)[-1])
    scope = "global" if fused_epi else "local"
    _schedule_gather(sch, geom, task if one_block else ko, target)
    schedule_padded_copy(sch, geom, par if per_image else None)
    _schedule_epilogue(sch, geom, task if fused_epi else None)
    a, p, m = geom.TI // TILE, int(sch.get(nt).extent), geom.KC // TILE_K
    if one_block:
        _zero_init(sch, blk, call, a, p, scope, R)
    else:
        init = sch.decompose_reduction(blk, ko)
        sch.vectorize(sch.get_loops(init)[-1])
    name = f"gbd_amx_{m}x{a}x{p}x{R}_{scope}" + ("_zero" if one_block else "")
    sch.tensorize(call, _register(name, lambda: _amx_funcs(m, a, p, scope, one_block, R)))
    return sch.mod["main"]
