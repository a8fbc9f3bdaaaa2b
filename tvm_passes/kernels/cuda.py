"""CUDA schedules of the gather-GEMM conv and the linear layer (paper 000 section 3;
docs/formulas.md section 1 "Lowering").

Conv GEMM: one thread block per (image, conv group, 64 filter rows, 64 output pixels); per
reduction step of KC rows the block stages the filter tile and the *gathered* patch tile
(gather straight from the padded input into shared memory) and each of the 256 threads
accumulates a 4 x 4 register tile.  The padded copy and the bias/ReLU epilogue are plain
element-wise kernels.  Built (and source-checked) without a GPU; numerics need one.
"""

from __future__ import annotations

from tvm import s_tir

from .lowering import ConvGeometry

CONV_TI = 4  # filter rows per thread (packed filter inner block)
CONV_NV = 64  # output pixels per thread block
DENSE_OI = 4  # output features per thread (packed weight inner block)
KC = 16  # reduction rows staged per step
NTHREADS = 256


def _flat_bind(sch, blk, nthreads=NTHREADS):
    loops = sch.get_loops(blk)
    f = sch.fuse(*loops)
    bx, tx = sch.split(f, [None, nthreads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def _coop_fetch(sch, blk, nthreads):
    """Cooperative copy into shared memory by all threads of the block."""
    loops = sch.get_loops(blk)
    # the loops created by compute_at/cache_read are the innermost ones of the block
    n_outer = len(sch.get_loops(blk)) - len(_block_own_loops(sch, blk))
    own = loops[n_outer:]
    f = sch.fuse(*own)
    _, tx = sch.split(f, [None, nthreads])
    sch.bind(tx, "threadIdx.x")


def _block_own_loops(sch, blk):
    """Loops that iterate only this block (innermost loops with a single child)."""
    loops = sch.get_loops(blk)
    own = []
    for lp in reversed(loops):
        if len(sch.get_child_blocks(lp)) != 1:
            break
        own.append(lp)
    return list(reversed(own))


def schedule_conv_cuda(func, geom: ConvGeometry, target):
    sch = s_tir.schedule.Schedule(func)
    _flat_bind(sch, sch.get_sblock("Dp"))
    _flat_bind(sch, sch.get_sblock("out"))

    blk = sch.get_sblock("C")
    b, g, t, n, k = sch.get_loops(blk)
    tt_n = min(16, geom.TO)
    nt_n = CONV_NV // 4  # 16 threads along n, 4 pixels each
    tb, tt, ti = sch.split(t, [None, tt_n, CONV_TI])
    nb, nt, ni = sch.split(n, [None, nt_n, 4])
    ko, ki = sch.split(k, [None, KC])
    sch.reorder(b, g, tb, nb, tt, nt, ko, ki, ti, ni)
    bx = sch.fuse(b, g, tb, nb)
    sch.bind(bx, "blockIdx.x")
    tx = sch.fuse(tt, nt)
    sch.bind(tx, "threadIdx.x")
    nthreads = tt_n * nt_n
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, tx)
    # filter tile -> shared
    fs = sch.cache_read(blk, 0, "shared")
    sch.compute_at(fs, ko)
    _coop_fetch(sch, fs, nthreads)
    # gathered patch tile -> shared (the gather itself writes shared memory)
    pblk = sch.get_sblock("P")
    sch.set_scope(pblk, 0, "shared")  # before compute_at, so the region is relaxed over threads
    sch.compute_at(pblk, ko)
    _coop_fetch(sch, pblk, nthreads)
    sch.unroll(ki)
    sch.decompose_reduction(blk, ko)
    return sch.mod["main"]


def schedule_dense_cuda(func, M, K, O, OI, target):
    sch = s_tir.schedule.Schedule(func)
    _flat_bind(sch, sch.get_sblock("out"))
    blk = sch.get_sblock("C")
    m, o, k = sch.get_loops(blk)
    mt_n = min(8, M) if isinstance(M, int) else 8
    ot_n = 32
    mb, mt = sch.split(m, [None, mt_n])
    ob, ot, oi = sch.split(o, [None, ot_n, OI])
    ko, ki = sch.split(k, [None, KC])
    sch.reorder(mb, ob, mt, ot, ko, ki, oi)
    sch.bind(sch.fuse(mb, ob), "blockIdx.x")
    tx = sch.fuse(mt, ot)
    sch.bind(tx, "threadIdx.x")
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, tx)
    for idx in (0, 1):
        cs = sch.cache_read(blk, idx, "shared")
        sch.compute_at(cs, ko)
        _coop_fetch(sch, cs, mt_n * ot_n)
    sch.unroll(ki)
    sch.decompose_reduction(blk, ko)
    return sch.mod["main"]
