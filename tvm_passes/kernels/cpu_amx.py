"""INT8 gather-GEMM conv on Intel AMX tiles (docs/formulas.md section 5): the same stages as the
VNNI kernel of ``cpu_int8`` (quantized padded copy, gathered rows interleaved by four, fused
requantize / bias / residual / ReLU epilogue); only the GEMM differs.

One ``tdpbsud`` multiplies a 16 x 64 tile of signed filter bytes (16 filters, 64 gather rows: the
filter matrix Fq [G, TP, KP] row by row) with a 16 x 64 tile of unsigned input bytes (16 rows of
the interleaved panel P4[k/4, n, k%4]: 64 gather rows x 16 pixels, exactly the VNNI layout) into
a 16 x 16 int32 tile: 16,384 multiply-adds per instruction, against 64 for ``vpdpbusd``.  Per
output tile and k block the accumulator is loaded from memory, KC / 64 products are added, and it
is stored back; the tile configuration (three 16 x 64-byte tiles) is loaded in the same
intrinsic, since it is per thread state.

Linux hands AMX state to a process only on request (``arch_prctl(ARCH_REQ_XCOMP_PERM)``,
``target.request_amx``): ``make_target("llvm")`` asks, and adds the AMX features to the host target
only when it is granted; the loader asks before it loads an artifact built with them.
"""

from __future__ import annotations

from tvm import s_tir
from tvm.script import tirx as T

from .cpu import _num_threads, _schedule_epilogue, choose_t_split
from .cpu_copies import schedule_padded_copy
from .cpu_int8 import K_LANE, _register_intrinsics, _schedule_gather
from .lowering import ConvGeometry

#: rows / columns of an output tile, and gather rows per tile product
TILE = 16
TILE_K = 64
#: fewer gather rows than this: the VNNI kernel, even where AMX is there.  With one or two tile
#: products per load / store of the accumulator tiles, the tiles lose to vpdpbusd: ResNet-18's
#: 7x7 stem (~50 rows at density 0.3) took 10.4 ms on AMX and 8.1 on VNNI at batch 32; a 56x56
#: layer (~170 rows) 3.6 against 3.9, a 14x14 one (~690 rows) 1.8 against 2.5.
MIN_K = 128
#: k blocks of up to 1024 gather rows (16 tile products per load / store of the accumulators and
#: per ldtilecfg): against 256, a 7x7 ResNet-18 layer took 0.10 against 0.15 ms at batch 1 and
#: 2.4 against 3.0 at batch 32; the gathered panel of a block stays in L2
#: lowering_params of the AMX kernel: 16 pixels per tile, k blocks of whole tiles (TI: lowering_params)
LOWERING = dict(NV=TILE, kc_max=1024, k_align=TILE_K, row_align=(16,), chunk_tiles=tuple(range(1, 17)))


def lowering_params(Tg: int) -> dict:
    """32 filters (two accumulator tiles sharing each input tile) where they divide the group's
    outputs, else 16."""
    return {**LOWERING, "TI": 2 * TILE if Tg % (2 * TILE) == 0 else TILE}


def _tile_config_words(a: int):
    """ldtilecfg's 64 bytes as 8 little-endian uint64: palette 1; 2 a + 1 tiles of 16 rows x 64 bytes
    (a accumulators, a filter tiles, one input tile)."""
    n = 2 * a + 1
    cols = [sum(TILE_K << (16 * (t - 4 * q)) for t in range(4 * q, min(n, 4 * q + 4))) for q in range(2)]
    rows = sum(TILE << (8 * t) for t in range(n))  # bytes 48.. : rows of each tile
    return [1, 0, cols[0], cols[1], 0, 0, rows, 0]


def _amx_funcs(m: int, a: int, scope: str):
    """desc / impl of C[16 a, 16] (int32, ``scope``) += A[16 a, 64 m] (int8 filters) x B[16 m, 16, 4]
    (uint8 interleaved inputs): per k step one input tile is loaded and used by the a filter tiles
    (tiles: accumulators 0 .. a-1, filters a .. 2a-1, input 2a)."""
    w = _tile_config_words(a)
    TA = TILE * a

    @T.prim_func(s_tir=True)
    def desc(ha: T.handle, hb: T.handle, hc: T.handle) -> None:
        sa, sb, sc = T.int32(), T.int32(), T.int32()
        A = T.match_buffer(ha, (TA, TILE_K * m), "int8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(hb, (TILE * m, TILE, K_LANE), "uint8", strides=[sb, K_LANE, 1], offset_factor=1)
        C = T.match_buffer(hc, (TA, TILE), "int32", strides=[sc, 1], offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:TA, 0:TILE], B[0 : TILE * m, 0:TILE, 0:K_LANE], A[0:TA, 0 : TILE_K * m])
            T.writes(C[0:TA, 0:TILE])
            for t, n, k4, kj in T.grid(TA, TILE, TILE * m, K_LANE):
                with T.sblock("update"):
                    vt, vn, vk4, vkj = T.axis.remap("SSRR", [t, n, k4, kj])
                    # operands in the order the conv's block reads them (inputs, then filters)
                    C[vt, vn] = C[vt, vn] + T.cast(B[vk4, vn, vkj], "int32") * T.cast(
                        A[vt, vk4 * K_LANE + vkj], "int32"
                    )

    @T.prim_func(s_tir=True)
    def impl(ha: T.handle, hb: T.handle, hc: T.handle) -> None:
        sa, sb, sc = T.int32(), T.int32(), T.int32()
        A = T.match_buffer(ha, (TA, TILE_K * m), "int8", strides=[sa, 1], offset_factor=1)
        B = T.match_buffer(hb, (TILE * m, TILE, K_LANE), "uint8", strides=[sb, K_LANE, 1], offset_factor=1)
        C = T.match_buffer(hc, (TA, TILE), "int32", strides=[sc, 1], offset_factor=1, scope=scope)
        with T.sblock("root"):
            T.reads(C[0:TA, 0:TILE], B[0 : TILE * m, 0:TILE, 0:K_LANE], A[0:TA, 0 : TILE_K * m])
            T.writes(C[0:TA, 0:TILE])
            cfg = T.alloc_buffer((8,), "uint64", scope="local")
            for i in range(8):
                cfg[i] = T.uint64(0)
            cfg[0] = T.uint64(w[0])
            cfg[2] = T.uint64(w[2])
            cfg[3] = T.uint64(w[3])
            cfg[6] = T.uint64(w[6])
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", T.address_of(cfg[0])))
            for q in T.unroll(a):  # unrolled: tile numbers are immediates
                T.evaluate(
                    T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.Cast("int8", q), T.address_of(C[TILE * q, 0]), T.int64(sc) * 4
                    )
                )
            for i in range(m):
                T.evaluate(
                    T.call_llvm_intrin(
                        "void", "llvm.x86.tileloadd64", T.int8(2 * a), T.address_of(B[TILE * i, 0, 0]), T.int64(sb)
                    )
                )
                for q in T.unroll(a):
                    T.evaluate(
                        T.call_llvm_intrin(
                            "void",
                            "llvm.x86.tileloadd64",
                            T.Cast("int8", a + q),
                            T.address_of(A[TILE * q, TILE_K * i]),
                            T.int64(sa),
                        )
                    )
                    T.evaluate(
                        T.call_llvm_intrin(
                            "void", "llvm.x86.tdpbsud", T.Cast("int8", q), T.Cast("int8", a + q), T.int8(2 * a)
                        )
                    )
            for q in T.unroll(a):
                T.evaluate(
                    T.call_llvm_intrin(
                        "void",
                        "llvm.x86.tilestored64",
                        T.Cast("int8", q),
                        T.address_of(C[TILE * q, 0]),
                        T.int64(sc) * 4,
                    )
                )

    return desc, impl


def _intrin(m: int, a: int, scope: str) -> str:
    name = f"gbd_amx_{m}x{a}_{scope}"
    try:
        s_tir.TensorIntrin.get(name)
    except Exception:  # noqa: BLE001 - TVM raises a generic error for an unknown name
        s_tir.TensorIntrin.register(name, *_amx_funcs(m, a, scope))
    return name


def schedule_conv_amx(func, geom: ConvGeometry, target):
    """Schedule conv_te_int8(rows_filter=True): tasks, gather, copy and epilogue as the VNNI
    kernel (cpu_int8.schedule_conv_int8); the GEMM in 16 x 16 output tiles of tdpbsud."""
    _register_intrinsics()  # the interleave of the gathered rows
    tpo = choose_t_split(geom, _num_threads(target))
    if geom.TO % tpo:
        tpo = 1
    sch = s_tir.schedule.Schedule(func)
    fused_epi = bool(geom.NRP) and (geom.TO * geom.TI == geom.Tg or (tpo == 1 and geom.G == 1))
    blk = sch.get_sblock("C")
    if geom.NRP:  # whole output rows per task: tiles of 16 pixels of one row
        # C as [b, g, row, filter, column]: a tile (16 filters x 16 pixels of a row) is then a 2-D region
        sch.transform_layout(blk, ("write", 0), lambda b, g, t, r, w: (b, g, r, t, w))
        b, g, t, r, w, k4, kj = sch.get_loops(blk)
        no, ri = sch.split(r, [None, geom.NTC * geom.NV // geom.OWP])
        wo, ni = sch.split(w, [None, TILE])
        nts = [ri, wo]
    else:
        b, g, t, n, k4, kj = sch.get_loops(blk)
        no, nt, ni = sch.split(n, [None, geom.NTC, TILE])
        nts = [nt]
    tp, to, ti = sch.split(t, [tpo, geom.TO // tpo, geom.TI])
    ko, ki = sch.split(k4, [None, geom.KC // K_LANE])
    sch.reorder(b, g, no, tp, ko, *nts, to, ti, ni, ki, kj)
    par = sch.fuse(b, g, no, tp)
    sch.parallel(par)
    if not fused_epi:
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, par)
        sch.vectorize(sch.get_loops(acc)[-1])
    init = sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    _schedule_gather(sch, geom, ko)
    schedule_padded_copy(sch, geom)
    _schedule_epilogue(sch, geom, par if fused_epi else None)
    sch.tensorize(ti, _intrin(geom.KC // TILE_K, geom.TI // TILE, "global" if fused_epi else "local"))
    return sch.mod["main"]
