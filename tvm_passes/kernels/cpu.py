"""CPU (LLVM, AVX-512) schedules of the gather-GEMM conv and the linear layer
(paper 000 section 3; docs/formulas.md section 1 "Lowering").

Conv: one parallel task per (image, conv group, n-chunk of NTC*NV pixels, t-chunk).  Per task and
per reduction block of KC gather rows, the patch block P[KC, chunk] is gathered (row-aligned
numbering: 16- or 8-lane contiguous copies; otherwise a table gather), then a register tile of
TI filter rows broadcast x NV pixels (16 x 16, or 8 x 32 = 2 zmm vectors: lowering_params)
accumulates over the block, so a P stripe [KC, NV] stays in cache while all filter rows stream
past it (or, with the epilogue per tile, a filter stripe while the chunk's pixel tiles do).  The
bias / residual / ReLU epilogue runs per task on its whole output rows while they are in cache.  The
padded copy of the live input maps is one parallel pass over the batch, or, from IMAGE_TASKS
images per thread, made per image inside that image's task (``image_tasks``).  The schedules of
the copies (padded input, gathered rows) are in cpu_copies.py; small maps take cpu_small.py.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.tirx import IndexMap

from .cpu_copies import VECTOR_LANES, place_stride2_rows, schedule_padded_copy, schedule_row_gather, vectorize_row
from .lowering import ConvGeometry
from .te_defs import unit_conv

CONV_TI = 6  # filter rows per register tile (8 when T/groups is a multiple of 8 or at least MIN_PADDED_8)
CONV_NV = 32  # output pixels per register tile (2 AVX-512 vectors)
CONV_KC = 256  # reduction block
#: the square register tile: 16 filter rows x 16 pixels (one vector) where 32 divides T/groups and
#: the conv gathers at least WIDE_MIN_K rows, reduction blocks of up to WIDE_KC gather rows
WIDE_TI, WIDE_KC, WIDE_MIN_K = 16, 1024, 256
DENSE_OI = 32  # output features per register tile (2 zmm vectors)
CONV_ROW_ALIGN = (16, 8)  # output rows padded to 16 (else 8) pixels: one vector copy = one input run
MIN_PADDED_8 = 32  # group outputs from which tiles of 8 filter rows are used even if 8 does not divide them

#: images per thread from which each parallel task is one whole image (image_tasks)
IMAGE_TASKS = 4


def lowering_params_8x32(Tg=None):
    """Keyword arguments of lowering.lower_conv for the 8 x 32 register tile (the int8 kernels
    build on them).  8 filter rows per register tile (16 accumulators, cache-line aligned filter
    reads) when they divide the group's outputs or the group has at least MIN_PADDED_8 of them (the
    last tile padded with zero filters: 243 -> 248 ran 1.0-1.09x the 6-row tiles, ad-hoc), else 6
    (fewer when the group has fewer outputs, e.g. depthwise)."""
    ti = 8 if Tg and (Tg % 8 == 0 or Tg >= MIN_PADDED_8) else (Tg if Tg and Tg < CONV_TI else CONV_TI)
    return dict(
        TI=ti,
        NV=CONV_NV,
        kc_max=CONV_KC,
        row_align=CONV_ROW_ALIGN,
        chunk_tiles=tuple(range(1, 10)),
        whole_rows=True,
        phases=True,
    )


def lowering_params(Tg=None):
    """Keyword arguments of lowering.lower_conv for the float32 CPU kernel: where 32 divides the
    group's outputs, a 16 x 16 register tile (16 filter rows broadcast against one 16-pixel vector:
    one vector load per 16 FMAs, where 8 x 32 makes two) with reduction blocks of up to WIDE_KC
    rows (one block, and so the epilogue per tile, for most 3x3 convs at density 0.3) and chunks
    of the same pixel count as 8 x 32's; 16-pixel tiles also let 28-pixel rows go unpadded
    (exact_row_params).  Against 8 x 32 (ad-hoc, 2 threads, AMD EPYC): 1.11-1.23x on 3x3 128 -> 128
    convs at 28x28, 1.02-1.07x at 56x56 and on the 7x7 stem, 1.0-1.04x at 14x14 and 112x112.
    Else lowering_params_8x32.  Only where 32 divides the outputs: an odd number of 16-row tiles
    would be padded to even for the 2-way t-split of a batch-1 task, whose epilogue is then no
    longer fused (cpu.task_plan)."""
    params = lowering_params_8x32(Tg)
    if Tg and Tg % (2 * WIDE_TI) == 0:
        max_tiles = CONV_NV * max(params["chunk_tiles"]) // VECTOR_LANES  # the same pixels per chunk
        params.update(TI=WIDE_TI, NV=VECTOR_LANES, kc_max=WIDE_KC, chunk_tiles=tuple(range(1, max_tiles + 1)))
    return params


def short_reduction_params(geom: ConvGeometry):
    """lowering_params_8x32 for a conv that lowering_params gave 16 x 16 tiles (``geom``) but fewer
    than WIDE_MIN_K gather rows, else None.  With a short reduction the tile's stores dominate, and
    16 x 16 tiles write 16 output (and read 16 residual) rows in 64-byte runs against 8 in 128-byte
    runs: ResNet-50's 1x1 convs at density 0.3 (19-154 live maps) ran 0.81-0.93x on them (in the
    model at batch 32, ad-hoc); ResNet-18's 3x3 64 -> 64 convs (166 rows) ran the same."""
    if geom.TI != WIDE_TI or geom.NV != VECTOR_LANES or geom.KP >= WIDE_MIN_K:
        return None
    return lowering_params_8x32(geom.Tg)


def exact_row_params(geom: ConvGeometry, params: dict):
    """``params`` with output rows of exactly OW pixels for a stride-1 conv lowered (``geom``) on
    16-pixel tiles with padded rows, or None: a 28x28 map then computes 784 pixels, not 896 (the
    gather copies each 28-pixel row as one run); whole-row chunks of 16-pixel tiles fit 28-pixel
    rows exactly (4 rows = 7 tiles), not 32-pixel tiles.  The caller keeps it where it computes
    fewer pixels (at 14x14, 16-pixel rows fill whole tiles as well and gather faster)."""
    if geom.NV != VECTOR_LANES or geom.gsw != 1 or not geom.OWP or geom.OWP == geom.OW:
        return None
    return {**params, "row_align": (geom.OW,)}


def direct_lowering_params(geom: ConvGeometry, params: dict):
    """``params`` with output rows of exactly OW pixels for a 1x1 conv (stride 1, no padding) whose
    rows ``params`` padded (28 -> 32): its gathered rows are then rows of the input, read without
    the padded copy (te_defs.reads_input_directly); None for any other conv."""
    if not unit_conv(geom) or not geom.OWP or geom.OWP == geom.OW:
        return None
    return {**params, "row_align": (geom.OW,)}


def _num_threads(target):
    n = int(target.attrs.get("num-cores", 0) or 0)
    return n if n > 0 else 2


def choose_t_split(geom: ConvGeometry, nthreads):
    """Number of t-chunks per (image, group, n-chunk) so that the parallel tasks keep all
    threads busy (batch 1, small maps); each t-chunk gathers its own patch panel."""
    # a symbolic batch is planned for one image: latency at batch 1, enough tasks at any batch
    images = geom.N if isinstance(geom.N, int) else 1
    tasks0 = images * geom.G * (geom.NP // (geom.NV * geom.NTC))
    best, best_score = 1, -1.0
    to_tiles = -(-geom.Tg // geom.TI)  # ceil(Tg / TI)
    for tpo in range(1, 9):
        if tpo > to_tiles:
            break
        tasks = tasks0 * tpo
        eff = tasks / (-(-tasks // nthreads) * nthreads)
        to = -(-to_tiles // tpo) * tpo
        waste = to_tiles / to
        score = eff * waste * (1.0 - 0.02 * (tpo - 1))
        if score > best_score + 1e-9:
            best, best_score = tpo, score
    return best


def pixel_split_params(geom: ConvGeometry, params: dict, target):
    """``params`` with n-chunks small enough that a static batch's (image, group, n-chunk) tasks
    alone fill the threads, for a conv (``geom``) with fewer tasks than threads; else None.  Its
    caller uses them where splitting the filter tiles instead would pad them (3 tiles of 32 filters
    split 2 ways compute 4), which also unfuses the epilogue (task_plan): MobileNetV2's 1x1
    576 -> 96 conv at 14x14, batch 1: 0.175 ms that way, 0.128 ms on two 7-row chunks (ad-hoc, 2
    threads, AMD EPYC)."""
    nthreads = _num_threads(target)
    if not isinstance(geom.N, int) or not geom.NRP:
        return None
    chunks = geom.N * geom.G * (geom.NP // (geom.NV * geom.NTC))
    if chunks >= nthreads:
        return None
    tiles = tuple(c for c in params["chunk_tiles"] if c <= geom.NTC * chunks // nthreads)
    return {**params, "chunk_tiles": tiles} if tiles else None


def dense_row_tile(M):
    """Rows per register tile of the linear layer (<= 8, little padding); 4 for a symbolic batch
    (little waste at batch 1, full tiles at large batches)."""
    if not isinstance(M, int):
        return 4
    if M <= 8:
        return M
    return min((6, 8, 7, 5, 4), key=lambda tm: (-(-M // tm) * tm - M, (6, 8, 7, 5, 4).index(tm)))


def image_tasks(geom: ConvGeometry, nthreads: int) -> bool:
    """Whether each parallel task is a whole image (a static batch of at least IMAGE_TASKS images
    per thread): the padded copy of that image is then made inside its task, right before its
    gathers read it from cache, instead of one pass over the batch whose output (28 MB for a 64-map
    56x56 conv at batch 32) goes to memory and comes back.  Row-aligned numbering only: its gather
    offsets are bounded (te_defs.gather_rows), a base-table gather's are not; and chunks of whole
    rows (geom.NRP): the per-image copy's row partition failed to schedule on chunks that cross
    rows (a 100x100 map at batch 8)."""
    if not geom.OWP or not geom.NRP:
        return False
    return isinstance(geom.N, int) and geom.N >= IMAGE_TASKS * nthreads


def t_chunks(geom: ConvGeometry, target) -> int:
    """t-chunks per task of the float32 kernel: 1 with whole-image tasks, else choose_t_split."""
    nthreads = _num_threads(target)
    return 1 if image_tasks(geom, nthreads) else choose_t_split(geom, nthreads)


def task_plan(geom: ConvGeometry, target):
    """(whole-image tasks, t-chunks per task, epilogue fused into the task) of a float32 conv."""
    per_image = image_tasks(geom, _num_threads(target))
    tpo = t_chunks(geom, target)
    if geom.TO % tpo:
        tpo = 1
    # the fused epilogue maps out[c] to (group, c % Tg) per parallel task: only exact when every
    # t-chunk of a group is whole (no padded filters inside a split group), else some filters of
    # each group are never written (found by tests/test_fuzz.py)
    fused_epi = bool(geom.NRP) and (geom.TO * geom.TI == geom.Tg or (tpo == 1 and geom.G == 1))
    return per_image, tpo, fused_epi


def schedule_conv_cpu(func, geom: ConvGeometry, target):
    """Schedule the conv_te PrimFunc (blocks Dp, P, C, out) for a multi-core AVX-512 CPU."""
    per_image, tpo, fused_epi = task_plan(geom, target)
    sch = s_tir.schedule.Schedule(func)
    tile_epi = fused_epi and tile_epilogue(geom)
    par, task, (ko, init_at) = _schedule_gemm(sch, geom, tpo, fused_epi, per_image, tile_epi)
    # gather the patch panel once per task and k block
    pblk = sch.get_sblock("P")
    sch.compute_at(pblk, ko)
    place_stride2_rows(sch, pblk, geom)
    # before the gather's loop partitions: compute_at finds its consumers among the original blocks
    schedule_padded_copy(sch, geom, par if per_image else None)
    schedule_row_gather(sch, pblk, geom, "float32")
    if tile_epi:
        _schedule_tile_epilogue(sch, geom, init_at)
    else:
        _schedule_epilogue(sch, geom, task if fused_epi else None)
    _decompose_init(sch, init_at)
    return sch.mod["main"]


def tile_epilogue(geom: ConvGeometry) -> bool:
    """Whether the fused epilogue runs on each register tile right after its reduction: one k
    block and output rows numbered unpadded, so a tile's 32 pixels are 32 consecutive output values
    of a map.  Pixels past the map (a part tile at its end, 28x28) are left out by a test that is
    the same for all 16 lanes of a vector when the map is whole vectors; else (14x14: 196 pixels)
    that test would be made per lane, on scalars, and the epilogue stays per task."""
    return geom.KP == geom.KC and geom.OWP == geom.OW and (geom.OH * geom.OW) % VECTOR_LANES == 0


def _schedule_tile_epilogue(sch, geom: ConvGeometry, ki):
    """The epilogue of one register tile (TI filters x NV pixels) right after the tile's reduction
    loop ``ki``, reading the accumulators in registers, over flat pixels n = oh OW + ow.  Against
    the epilogue per task (the tiles' accumulators stored over the task's chunk, then read back
    with the residual staged): 1.25-1.9x on 1x1 convs at 56x56 and 112x112 (64 -> 256 with
    residual at batch 1 and 32, 16 -> 96), 1.1-1.4x on 3x3 convs at density 0.3 / 0.1 (ad-hoc
    kernel timing, 2 threads)."""
    blk = sch.get_sblock("C")
    loops = sch.get_loops(blk)
    tile = loops[[sch.get(x).same_as(sch.get(ki)) for x in loops].index(True) - 1]  # ki's parent
    Tg, OW = geom.Tg, geom.OW
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, tile)
    eblk = sch.get_sblock("out")
    sch.transform_block_layout(eblk, lambda b, c, oh, ow: (b, c // Tg, c % Tg, oh * OW + ow))
    sch.reverse_compute_at(eblk, tile)
    sch.compute_inline(acc)
    et, en = sch.get_loops(eblk)[-2:]
    sch.unroll(et)
    eno, eni = sch.split(en, [None, VECTOR_LANES])
    sch.unroll(eno)
    sch.vectorize(eni)


def flatten_output_pixels(sch, blk, geom: ConvGeometry):
    """The GEMM block ``blk`` (axes b, g, t, row, column, then its reduction axes) and its output C
    over flat output pixels n = oh OW + ow: a register tile's region is then exactly its pixels,
    as the tile epilogue needs (rows numbered unpadded, tile_epilogue)."""
    OW, axes = geom.OW, sch.get(blk).iter_vars
    pixels = IndexMap.from_func(
        lambda b, g, t, r, w, *k: (b, g, t, r * OW + w, *k), ndim=len(axes), index_dtype=str(axes[0].var.ty)
    )
    sch.transform_block_layout(blk, pixels)
    sch.transform_layout(blk, ("write", 0), lambda b, g, t, r, w: (b, g, t, r * OW + w))


def _schedule_gemm(sch, geom: ConvGeometry, tpo: int, fused_epi: bool, per_image: bool = False, tile_epi=False):
    """k-blocked GEMM: the P stripe [KC, NV] stays in L1 across all t tiles (with ``tile_epi`` the
    filter tile [KC, TI] across the chunk's pixel tiles); (t, n) register tile TI x NV with the n
    lanes vectorized.  Returns (parallel loop, task loop, k-block loop): a task is
    one (image, group, n-chunk, t-chunk), run in parallel, or with ``per_image`` run in turn inside
    its image's parallel iteration."""
    blk = sch.get_sblock("C")
    if tile_epi:
        flatten_output_pixels(sch, blk, geom)
    # with the epilogue per tile, a filter tile's pixel tiles in turn: its output and residual rows
    # are then 8 sequential streams (the other order jumped across all filters' rows per tile)
    order = "filter_rows" if tile_epi else "pixels"
    par, task, ko, ki, ti, nv = gemm_loops(sch, blk, geom, tpo, per_image, order)
    if not fused_epi:
        acc = sch.cache_write(blk, 0, "local")
        sch.reverse_compute_at(acc, task)
    sch.unroll(ti)
    if geom.NV > VECTOR_LANES:
        nvo, nv = sch.split(nv, [None, VECTOR_LANES])
        sch.unroll(nvo)
    sch.vectorize(nv)
    if not fused_epi:
        sch.vectorize(sch.get_loops(acc)[-1])
    return par, task, (task, ki) if ko is None else (ko, ko)


def gemm_loops(sch, blk, geom: ConvGeometry, tpo: int, per_image: bool, stationary: str = "pixels"):
    """The GEMM block's loops split into (parallel loop, task loop, k-block loop or None, k, t tile,
    n tile): tasks over (image, group, n-chunk, t-chunk), then per k block the register tiles,
    ordered so that the ``stationary`` operand's stripe stays in L1 while the other streams past:
    "pixels" (a P stripe [KC, NV] across all filter tiles) or "filters" / "filter_rows" (a filter
    stripe [KC, TI] across a chunk's pixel tiles; register tile pixels x filters for cpu_small,
    filters x pixels for cpu's tile epilogue).  With one k block there is no k-block loop, so the
    accumulators can start at zero in registers (_decompose_init).  Flat pixel loops (one n loop
    instead of row and column) are kept as they are."""
    loops = sch.get_loops(blk)
    if len(loops) == 6:  # whole rows (geom.NRP): (row, column) loops
        b, g, t, r, w, k = loops
        n = sch.fuse(r, w)
    else:
        b, g, t, n, k = loops
    tp, to, ti = sch.split(t, [tpo, geom.TO // tpo, geom.TI])
    no, nt, nv = sch.split(n, [None, geom.NTC, geom.NV])
    ko, ki = (None, k) if geom.KP == geom.KC else sch.split(k, [None, geom.KC])
    tiles = {
        "pixels": (nt, to, ki, ti, nv),
        "filters": (to, nt, ki, nv, ti),  # cpu_small: pixels x filters register tile
        "filter_rows": (to, nt, ki, ti, nv),  # filters x pixels register tile, a filter tile's rows in turn
    }[stationary]
    sch.reorder(b, g, no, tp, *([] if ko is None else [ko]), *tiles)
    if per_image:
        par, task = b, sch.fuse(g, no, tp)
    else:
        par = task = sch.fuse(b, g, no, tp)
    sch.parallel(par)
    return par, task, ko, ki, ti, nv


def _decompose_init(sch, at):
    """The accumulators' zero init at loop ``at``: before the k blocks, or with one k block right
    before a register tile's reduction (a tile of zeros stored over the chunk, then loaded back
    per tile, was a third of the memory operations of a 16-row reduction).  Last: the epilogue's
    reverse_compute_at needs the reduction still whole."""
    init = sch.decompose_reduction(sch.get_sblock("C"), at)
    sch.vectorize(sch.get_loops(init)[-1])


def _stage_residual(sch, eblk, at):
    """The task's residual rows copied in one tight loop right before its fused epilogue: read
    inside the epilogue, each 56-pixel row of another channel was a cache miss the long
    dequantize / add / requantize chain left no room to overlap; the copy keeps many in flight
    (layer1 conv of ResNet-18 at batch 32, int8: residual cost 2.3 -> 0.4 ms uint8, 4.8 ->
    0.9 ms float32)."""
    names = [r.source.name for r in sch.get(eblk).reads]
    if "res" not in names:
        return
    rc = sch.cache_read(eblk, names.index("res"), "global")
    sch.compute_at(rc, at)
    sch.vectorize(sch.get_loops(rc)[-1])


def _schedule_epilogue(sch, geom: ConvGeometry, fused_at):
    """Bias, ReLU, dropping padded rows / pixels: per chunk right after its GEMM while C is still in
    cache (``fused_at``: the GEMM's parallel loop), else as its own parallel pass."""
    eblk = sch.get_sblock("out")
    if fused_at is not None:
        Tg = geom.Tg
        sch.transform_block_layout(eblk, lambda b, c, oh, ow: (b, c // Tg, c % Tg, oh, ow))
        sch.reverse_compute_at(eblk, fused_at)
        _stage_residual(sch, eblk, fused_at)
        ew, ext = sch.get_loops(eblk)[-1], geom.OW
        eh = sch.get_loops(eblk)[-2]
        rows = sch.get(eh).extent
        if geom.OWP == geom.OW and ext % VECTOR_LANES and isinstance(rows, tirx.IntImm):
            # rows stored unpadded: a task's pixels of one filter are one contiguous run, as whole
            # vectors; a 14-pixel row alone was not vectorized at all (vectorize_row).  1x1 64 -> 384
            # at 14x14, batch 1: 0.096 -> 0.066 ms (ad-hoc, 2 threads, AMD EPYC)
            ext *= int(rows)
            ew = sch.fuse(eh, ew)
    else:
        eb, ec, eh, ew = sch.get_loops(eblk)
        sch.parallel(sch.fuse(eb, ec))
        if geom.OWP == 0:
            ew = sch.fuse(eh, ew)
        ext = geom.OH * geom.OW if geom.OWP == 0 else geom.OW
    vectorize_row(sch, ew, ext)


def schedule_dense_cpu(func, M, K, O, OI, TM, target, KC=256):
    """Linear layer: parallel over 32-wide output panels; per panel the reduction is blocked by
    KC so the packed weight block [KC, OI] stays in L1 across all row tiles (TM x OI registers).
    With few panels the row tiles are run in parallel too."""
    nthreads = _num_threads(target)
    sch = s_tir.schedule.Schedule(func)
    blk = sch.get_sblock("C")
    m, o, k = sch.get_loops(blk)
    mo, mi = sch.split(m, [None, TM])
    oo, oi = sch.split(o, [None, OI])
    nkb = -(-K // KC)
    ko, ki = sch.split(k, [nkb, -(-K // nkb)]) if K % nkb == 0 else sch.split(k, [1, K])
    OO = -(-O // OI)
    if OO >= 2 * nthreads or (isinstance(M, int) and M <= TM):
        sch.reorder(oo, ko, mo, ki, mi, oi)
        par = oo
    else:
        sch.reorder(oo, mo, ko, ki, mi, oi)
        par = sch.fuse(oo, mo)
    sch.parallel(par)
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, par)
    sch.unroll(mi)
    oio, oii = sch.split(oi, [None, 16])
    sch.unroll(oio)
    sch.vectorize(oii)
    init = sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(acc)[-1])
    eblk = sch.get_sblock("out")
    em, eo = sch.get_loops(eblk)
    sch.parallel(em)
    return sch.mod["main"]
