"""Tensor-core CUDA schedules of the gather-GEMM conv and the linear layer (paper 000 section 3;
docs/formulas.md section 1 "Lowering"; docs/architecture.md "CUDA tensor-core kernels").

Conv (``te_defs.conv_te(..., dtype=...)``): one thread block per (image, conv group, BN output
pixels, BM filter rows); per step of BK gather rows it stages the filter tile F (a copy) and the
*gathered* patch tile P (gathered straight from the padded low-precision input Dp) in shared
memory, two stages deep (``software_pipeline_stage``: the next tiles load while the warps multiply
this one; the filter copy is ``cp.async``).  Each warp loads 16 x k fragments (``ldmatrix``, or
plain loads for tf32) and accumulates 16 x 16 tiles with ``mma.sync`` in fp32 registers.  The
epilogue stores the accumulators to shared memory and writes out = relu?(C + bias + res) in
float32 from there, in the same kernel (grouped convs, G > 1: C goes to global memory and the
epilogue is an element-wise kernel of its own).  The linear layer (``te_defs.dense_te_tc``): the
same GEMM with the cast input X gathered into shared memory.  Built and source-checked without a
GPU; numerics need one (``tests/test_kernels_tc.py -m gpu``).
"""

from __future__ import annotations

from tvm import s_tir

from . import tc_intrin
from .lowering import ConvGeometry

DTYPES = ("tf32", "float16", "bfloat16")
SCOPE = tc_intrin.SCOPE
MAX_WARPS = 4


def _pick(size, options):
    """The tile of ``options`` (ascending) with the least padding of ``size``, the larger on a tie."""
    return min(reversed(options), key=lambda o: -(-size // o) * o)


def conv_tiles(Tg, n_pixels, k_max):
    """(BM, BN, BK) of a conv: filter rows, output pixels and gather rows per block step.  At most
    64 x 128 x 32: the operand stages and the fp32 tile of the epilogue then take <= ~85 KiB of
    dynamic shared memory (tf32; 16-bit types ~50 KiB; TVM's runtime opts in above 48 KiB)."""
    return _pick(Tg, (16, 32, 64)), _pick(n_pixels, (32, 64, 128)), 16 if k_max <= 16 else 32


def lowering_params(Tg, n_pixels, k_max) -> dict:
    """``lower_conv`` keywords that pad the GEMM to whole tiles: TP = TO * BM, NP = multiple of BN,
    KP = multiple of BK."""
    bm, bn, bk = conv_tiles(Tg, n_pixels, k_max)
    return dict(TI=bm, NV=bn, k_align=bk)


def _warps(bm, bn):
    """Warps along the M and N of a block tile (each warp computes whole 16 x 16 tiles)."""
    wm = min(2, bm // 16)
    wn = min(MAX_WARPS // wm, bn // 16)
    return wm, wn


def _own_loops(sch, blk):
    """The innermost loops of ``blk`` that hold nothing else."""
    own = []
    for lp in reversed(sch.get_loops(blk)):
        if len(sch.get_child_blocks(lp)) != 1:
            break
        own.append(lp)
    return own[::-1]


def _coop(sch, blk, nthreads, vec=1):
    """All threads of the block copy its tile: the block's own loops fused and split over them."""
    own = _own_loops(sch, blk) or [sch.add_unit_loop(blk)]  # a 1-element tile has no loop left
    f = sch.fuse(*own)
    if vec > 1:
        _, ty, tx, v = sch.split(f, [None, nthreads // 32, 32, vec])
        sch.vectorize(v)
    else:
        _, ty, tx = sch.split(f, [None, nthreads // 32, 32])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")


def _flat_bind(sch, blk, nthreads=256):
    """An element-wise block (the padded copy Dp) as a flat grid of 256-thread blocks."""
    f = sch.fuse(*sch.get_loops(blk))
    bx, tx = sch.split(f, [None, nthreads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _tile(sch, blk, h, w):
    """Split the last two loops of ``blk`` into h x w tiles; returns the loop the intrinsic covers."""
    i, j = sch.get_loops(blk)[-2:]
    i0, i1 = sch.split(i, [None, h])
    j0, j1 = sch.split(j, [None, w])
    sch.reorder(i0, j0, i1, j1)
    return i1


def _mma_core(sch, blk, bm, bn, bk, dtype):
    """Tile the GEMM block ``blk`` (loops: batch loops, i, j, k) for the tensor cores; returns
    (the blockized 16x16 tile block, block loop, warp loop, k0, k1, warp count)."""
    kin = tc_intrin.intrinsics(dtype)["k"]
    loops = sch.get_loops(blk)
    nb_ = len(loops) - 3
    i, j, k = loops[nb_:]
    i, i16 = sch.split(i, [None, 16])
    j, j16 = sch.split(j, [None, 16])
    k, kk = sch.split(k, [None, kin])
    sch.reorder(i, j, k, i16, j16, kk)
    outer = sch.blockize(i16)
    wm, wn = _warps(bm, bn)
    ib, iw, ii = sch.split(i, [None, wm, bm // 16 // wm])
    jb, jw, ji = sch.split(j, [None, wn, bn // 16 // wn])
    k0, k1 = sch.split(k, [None, bk // kin])
    sch.reorder(*loops[:nb_], jb, ib, iw, jw, k0, k1, ii, ji)
    bx = sch.fuse(*loops[:nb_], jb, ib)
    sch.bind(bx, "blockIdx.x")
    ty = sch.fuse(iw, jw)
    sch.bind(ty, "threadIdx.y")
    return outer, bx, ty, k0, k1, wm * wn


def _tensorize_core(sch, outer, k0, k1, ty, bx, out, dtype, ranks):
    """Fragments, accumulators and their tensorization.  The accumulators are stored to shared
    memory (the C buffer, one block tile) and the epilogue block ``out`` runs per block tile from
    there; ``out=None``: to C in global memory (an epilogue kernel of its own reads it).
    ``ranks``: of the A / B / C buffers (batch axes lead)."""
    it = tc_intrin.intrinsics(dtype)
    kin = it["k"]
    tf32 = dtype == "tf32"
    fa = tc_intrin.a_frag_tf32 if tf32 else tc_intrin.FRAG16
    fb = tc_intrin.b_frag_tf32 if tf32 else tc_intrin.FRAG16
    a_nd, b_nd, c_nd = ranks
    inner = sch.get_child_blocks(outer)[0]
    aw = sch.cache_read(outer, 0, "warp")
    bw = sch.cache_read(outer, 1, "warp")
    sch.compute_at(aw, k1)
    sch.compute_at(bw, k1)
    cw = sch.cache_write(outer, 0, "warp")
    if out is not None:  # C: one block tile in shared memory, read by the epilogue in this kernel
        sch.set_scope(cw, 0, SCOPE)
    sch.reverse_compute_at(cw, ty)
    if out is not None:
        sch.reverse_compute_at(out, bx)
    la = _tile(sch, aw, 16, kin)
    lb = _tile(sch, bw, kin, 16)
    lc = _tile(sch, cw, 16, 16)
    init = sch.decompose_reduction(outer, k0)

    def lay(frag, h, w, nd):  # [..., i, j] -> [..., i // h, j // w, lane, register]
        return lambda *ix: (*ix[: nd - 2], ix[-2] // h, ix[-1] // w, *frag(ix[-2] % h, ix[-1] % w))

    sch.transform_layout(aw, ("write", 0), lay(fa, 16, kin, a_nd))
    sch.transform_layout(bw, ("write", 0), lay(fb, kin, 16, b_nd))
    sch.transform_layout(cw, ("read", 0), lay(tc_intrin.FRAG16, 16, 16, c_nd))
    sch.tensorize(la, it["load_a"])
    sch.tensorize(lb, it["load_b"])
    sch.tensorize(sch.get_loops(inner)[-3], it["compute"])
    sch.tensorize(sch.get_loops(sch.get_child_blocks(init)[0])[-2], it["init"])
    sch.tensorize(lc, it["store"] if out is not None else it["store_global"])
    return cw


def _pipeline(sch, k0, k1, staged):
    """Two-stage software pipelines: the shared tiles of step k+1 load while step k multiplies (the
    copies of stage 0 as cp.async where they are 4 / 8 / 16 bytes), the fragments of sub-step k1+1
    load while k1 multiplies.  ``staged``: the gathered operand goes through registers (16-bit
    elements, too narrow for cp.async): loaded before the multiply, stored to shared after it."""
    if staged:  # F copy, gather -> registers, registers -> shared, k1 prologue, body, epilogue
        sch.annotate(k0, "software_pipeline_stage", [0, 0, 0, 1, 1, 1])
        sch.annotate(k0, "software_pipeline_order", [0, 1, 5, 2, 3, 4])
    else:  # F copy, gather, k1 prologue, body, epilogue (k1 pipelined first)
        sch.annotate(k0, "software_pipeline_stage", [0, 0, 1, 1, 1])
        sch.annotate(k0, "software_pipeline_order", [0, 1, 2, 3, 4])
    sch.annotate(k0, "software_pipeline_async_stages", [0])
    sch.annotate(k1, "software_pipeline_stage", [0, 0, 1])
    sch.annotate(k1, "software_pipeline_order", [0, 1, 2])


def _stage_operands(sch, outer, k0, copied, gathered, nthreads, tiles, dtype):
    """Shared memory tiles of both operands at every k0 step: ``copied`` (read index of ``outer``:
    F or W) by a vectorized copy, then the block ``gathered`` (P, or the cast input X) computed
    straight into shared memory.  Returns whether the gather is staged through registers."""
    bm, bn, bk = tiles
    vec = 4 if dtype == "tf32" else 8  # 16 bytes
    while vec > 1 and bk * (bm if copied == 0 else bn) < nthreads * vec:
        vec //= 2  # tiles and thread counts are powers of two: each thread copies whole vectors
    cs = sch.cache_read(outer, copied, SCOPE)
    sch.compute_at(cs, k0)
    _coop(sch, cs, nthreads, vec)
    sch.set_scope(gathered, 0, SCOPE)
    sch.compute_at(gathered, k0)
    _coop(sch, gathered, nthreads)
    # 16-bit gathers (or a cast) cannot be cp.async: they load into registers before the multiply
    staged = dtype != "tf32" or copied == 1
    if staged:
        sch.annotate(gathered, "tirx.manifest_shared_memory_local_stage", 1)
    for blk in (cs, gathered):  # pad rows by 16 bytes: ldmatrix / fragment loads without bank conflicts
        sch.storage_align(blk, 0, axis=-2, factor=32, offset=4 if dtype == "tf32" else 8)
    return staged


def schedule_conv_tc(func, geom: ConvGeometry, dtype):
    """The conv of ``te_defs.conv_te(geom, ..., dtype)`` with geom from ``lowering_params``."""
    tiles = (geom.TI, geom.NV, 32 if geom.KP % 32 == 0 else 16)
    sch = s_tir.schedule.Schedule(func)
    out = sch.get_sblock("out")
    fused = geom.G == 1
    if fused:  # the epilogue over C's axes (b, 0, t, n): it then follows C's block tiles
        T_, OW = geom.T, geom.OW
        sch.transform_block_layout(out, lambda b, c, oh, ow: (b, c // T_, c % T_, oh * OW + ow))
    outer, bx, ty, k0, k1, nw = _mma_core(sch, sch.get_sblock("C"), *tiles, dtype)
    staged = _stage_operands(sch, outer, k0, 0, sch.get_sblock("P"), nw * 32, tiles, dtype)
    _tensorize_core(sch, outer, k0, k1, ty, bx, out if fused else None, dtype, (3, 4, 4))
    if fused:
        _coop(sch, out, nw * 32)
    else:  # grouped: a block tile's rows run past its group (c = g Tg + t), and TVM's region
        # analysis of the epilogue over (g, t) then goes wrong: its own element-wise kernel instead
        _flat_bind(sch, out)
    _pipeline(sch, k0, k1, staged)
    # last: a predicated flat loop nest before the GEMM could fail compute_at's region checks
    _flat_bind(sch, sch.get_sblock("Dp"))
    return sch.mod["main"]


def dense_tiles(M, O):
    """(BM, BN, BK) of a linear layer; a symbolic batch M gets 64-row tiles."""
    bm = _pick(M, (16, 32, 64)) if isinstance(M, int) else 64
    return bm, _pick(O, (32, 64) if bm == 16 else (32, 64, 128)), 32


def schedule_dense_tc(func, bm, bn, bk, dtype):
    """The linear layer of ``te_defs.dense_te_tc`` with tiles from ``dense_tiles``."""
    sch = s_tir.schedule.Schedule(func)
    out = sch.get_sblock("out")
    outer, bx, ty, k0, k1, nw = _mma_core(sch, sch.get_sblock("C"), bm, bn, bk, dtype)
    staged = _stage_operands(sch, outer, k0, 1, sch.get_sblock("X"), nw * 32, (bm, bn, bk), dtype)
    _tensorize_core(sch, outer, k0, k1, ty, bx, out, dtype, (2, 2, 2))
    _coop(sch, out, nw * 32)
    _pipeline(sch, k0, k1, staged)
    return sch.mod["main"]
