"""CPU (AVX-512) schedule of the float32 gather-GEMM conv for small output maps: the register tile
turned around (docs/formulas.md 1.22).

The kernel of ``cpu`` vectorizes over output pixels: a tile is 16 or 32 pixels, so a 7x7 map
(49 pixels) computes 64 and a 14x14 one 224 for 196.  Here a tile is NV pixels x 32 filters (2 zmm
vectors of output channels): per gather row k, the two filter vectors F[k, t0 : t0 + 32] are loaded
once and each of the NV gathered pixels P[k, n] is broadcast into two FMAs.  NV divides the output
row (7 for 7, 14, 28 and 56 wide maps), so no pixel is padded.  The filter stripe [KC, 32] stays in
L1 across the pixel tiles of a chunk.  Same stages and PrimFunc as te_defs.conv_te (padded copy,
gathered rows, GEMM, fused epilogue); the accumulators of a task are kept pixel-major ([n, t]), so
the vector accesses are contiguous.

Used where the pixel tiles of ``cpu`` would pad more than MAX_PIXEL_WASTE / MAX_PIXEL_WASTE_WIDE
and the group's output channels are whole vectors pairs (lowering_params).  Measured against
``cpu`` (ad-hoc kernel timing, 2 threads): 1.11-1.23x on ResNet's 7x7 convs at batch 1 and 32,
dense and at density 0.3; on 14x14 maps, against its 16 x 16 tiles, see MAX_PIXEL_WASTE.  On 28x28
maps it is slower than ``cpu``'s tiles, which there compute no padded pixel (16 x 16 tiles with
unpadded rows) or 12.5% (8 x 32), so it is not used there.
"""

from __future__ import annotations

from tvm import s_tir

from . import cpu, cpu_copies
from .lowering import ConvGeometry

#: output channels per register tile (2 AVX-512 vectors)
TILE_T = 32
#: gathered rows per reduction block: the filter stripe [KC, 32] (16 KB) and the block's gathered
#: pixels share L1 (KC 256: 1.02x of ``cpu`` on a 7x7 conv, 128: 1.20x, 64: 1.13x)
KC = 128
#: pixels per register tile: a divisor of the output row in this range (2 x NV accumulators)
NV_RANGE = range(6, 13)
#: pixel share of ``cpu``'s tiles above which this schedule is used: MAX_PIXEL_WASTE for a stride-1
#: conv with rows of at most 16 pixels and at least as many gather rows as filters (14x14: 224
#: pixels for 196 = 0.125), else MAX_PIXEL_WASTE_WIDE (7x7: 64 for 49 = 0.23).  Ad-hoc, 2 threads,
#: AMD EPYC, against ``cpu``'s tiles: at 14x14, 1.09-1.12x on 3x3 256 -> 256 convs (density 0.3,
#: 1.0), 1.26-1.34x on 1x1 307 / 1024 -> 256 ones at batch 32; but 0.5x on ResNet-50's 1x1
#: 256 -> 1024 ones at density 0.3 (77 live maps: fewer gather rows than filters), and at 28x28
#: 0.73-0.87x on 1x1 convs, 0.86x on a 3x3 (wider rows), 0.85x on a 1x1 at stride 2
MAX_PIXEL_WASTE = 0.1
MAX_PIXEL_WASTE_WIDE = 0.2
#: share of zero filters the last 32-filter tile may add (a group of 154 filters computes 160)
MAX_FILTER_WASTE = 0.125


def pixel_tile(OW: int) -> int:
    """Pixels per register tile for rows of OW pixels: the largest divisor of OW in NV_RANGE, 0 if none."""
    return max((nv for nv in NV_RANGE if OW % nv == 0), default=0)


def lowering_params(geom: ConvGeometry):
    """lowering_params of this schedule for a conv that ``cpu``'s lowering gave ``geom``, or None
    where ``cpu``'s tiles waste at most MAX_PIXEL_WASTE (or MAX_PIXEL_WASTE_WIDE) of their
    pixels, no pixel tile divides the row, or zero filters would pad the group's outputs to whole
    tiles by more than MAX_FILTER_WASTE.
    Groups whose outputs are no multiple of 32 are the rule after dead-map removal (ResNet's 7x7
    convs at density 0.3: 154, 484, 492 filters); on ``cpu``'s tiles they ran 1.3-4x slower
    (ad-hoc, 2 threads: a 2048 -> 492 1x1 conv at batch 32 10.5 -> 2.8 ms, 492 -> 154 3x3 2.7 -> 1.9 ms)."""
    waste = 1.0 - geom.OH * geom.OW / geom.NP
    nv = pixel_tile(geom.OW)
    filter_waste = 1.0 - geom.Tg / (-(-geom.Tg // TILE_T) * TILE_T)
    narrow = geom.sw == 1 and geom.OW <= cpu_copies.VECTOR_LANES and geom.KP >= geom.Tg
    max_waste = MAX_PIXEL_WASTE if narrow else MAX_PIXEL_WASTE_WIDE
    if waste <= max_waste or not nv or filter_waste > MAX_FILTER_WASTE:
        return None
    return dict(TI=TILE_T, NV=nv, kc_max=KC, row_align=(geom.OW,), chunk_tiles=tuple(range(1, 33)), whole_rows=True)


def schedule_conv_small(func, geom: ConvGeometry, target):
    """Schedule the conv_te PrimFunc (blocks Dp, P, C, out) with the pixel x channel register tile."""
    per_image, tpo, fused_epi = cpu.task_plan(geom, target)
    sch = s_tir.schedule.Schedule(func)
    par, task, (ko, init_at), acc = _schedule_gemm(sch, geom, tpo, per_image)
    pblk = sch.get_sblock("P")
    sch.compute_at(pblk, ko)
    cpu_copies.schedule_padded_copy(sch, geom, par if per_image else None)
    _, pn = sch.get_loops(pblk)[-2:]
    _, pw = sch.split(pn, [None, geom.OWP])
    sch.vectorize(pw)  # one output row of NV-multiple pixels (strided at stride 2)
    cpu._schedule_epilogue(sch, geom, task if fused_epi else None)
    if fused_epi:  # the epilogue reads the accumulators directly: no copy of them to C
        sch.compute_inline(acc)
    cpu._decompose_init(sch, init_at)
    return sch.mod["main"]


def _schedule_gemm(sch, geom: ConvGeometry, tpo: int, per_image: bool):
    """k-blocked GEMM with the filter stripe [KC, 32] in L1 across a chunk's pixel tiles; register
    tile NV pixels (unrolled) x 32 filters (vectorized).  Returns (parallel loop, task loop,
    (gather loop, init loop), accumulator copy block)."""
    blk = sch.get_sblock("C")
    par, task, ko, ki, ti, nv = cpu.gemm_loops(sch, blk, geom, tpo, per_image, stationary="filters")
    acc = sch.cache_write(blk, 0, "local")
    # pixel-major accumulators: a vector of 16 output channels is contiguous
    sch.transform_layout(blk, ("write", 0), lambda b_, g_, t_, r_, w_: (b_, g_, r_, w_, t_))
    sch.reverse_compute_at(acc, task)
    sch.unroll(nv)
    tio, tii = sch.split(ti, [None, cpu_copies.VECTOR_LANES])
    sch.unroll(tio)
    sch.vectorize(tii)
    return par, task, ((task, ki) if ko is None else (ko, ko)), acc
