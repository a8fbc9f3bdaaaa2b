"""CPU (LLVM, AVX-512) schedules of the gather-GEMM conv and the linear layer
(paper 000 section 3; docs/formulas.md section 1 "Lowering").

Conv: one parallel task per (image, conv group, n-chunk of NTC*32 pixels, t-chunk).  Per task and
per reduction block of KC gather rows, the patch block P[KC, chunk] is gathered (row-aligned
numbering: 16- or 8-lane contiguous copies; otherwise a table gather), then a 6 x 32 register
tile (6 rows of the packed filter broadcast, 32 pixels = 2 zmm vectors) accumulates over the
block, so a P stripe [KC, 32] stays in L1 while all filter rows stream past it.  The bias /
residual / ReLU epilogue runs per task on its whole output rows while they are in cache.  The
padded copy of the live input maps is one parallel pass over the batch, or, from IMAGE_TASKS
images per thread, made per image inside that image's task (``image_tasks``).
"""

from __future__ import annotations

from tvm import s_tir
from tvm.script import tirx as T

from .lowering import ConvGeometry
from .te_defs import strided_rows

CONV_TI = 6  # filter rows per register tile (8 when T/groups is a multiple of 8)
CONV_NV = 32  # output pixels per register tile (2 AVX-512 vectors)
CONV_KC = 256  # reduction block
DENSE_OI = 32  # output features per register tile (2 zmm vectors)
CONV_ROW_ALIGN = (16, 8)  # output rows padded to 16 (else 8) pixels: one vector copy = one input run

#: images per thread from which each parallel task is one whole image (image_tasks)
IMAGE_TASKS = 4
#: float32 lanes of one AVX-512 register
VECTOR_LANES = 16
#: padded input rows up to this length are copied as one vector op
MAX_VECTOR_ROW = 512


def _stride2_funcs(dtype: str):
    """desc / impl of D[16] = S[2 w]: 16 elements at stride 2 as two contiguous loads and one shuffle
    (TVM emits a strided vector load as 16 scalar loads)."""

    @T.prim_func(s_tir=True)
    def desc(s: T.handle, d: T.handle) -> None:
        S = T.match_buffer(s, (31,), dtype, offset_factor=1)
        D = T.match_buffer(d, (16,), dtype, offset_factor=1)
        with T.sblock("root"):
            T.reads(S[0:31])
            T.writes(D[0:16])
            for w in range(16):
                with T.sblock("P"):
                    vw = T.axis.remap("S", [w])
                    D[vw] = S[vw * 2]

    @T.prim_func(s_tir=True)
    def impl(s: T.handle, d: T.handle) -> None:
        S = T.match_buffer(s, (31,), dtype, offset_factor=1)
        D = T.match_buffer(d, (16,), dtype, offset_factor=1)
        with T.sblock("root"):
            T.reads(S[0:31])
            T.writes(D[0:16])
            # elements 0..15 and 15..30: both loads stay inside the 31 the desc reads
            D[T.ramp(T.int32(0), 1, 16)] = T.Shuffle(
                [S[T.ramp(T.int32(0), 1, 16)], S[T.ramp(T.int32(15), 1, 16)]],
                [2 * i for i in range(8)] + [16 + 1 + 2 * i for i in range(8)],
            )

    return desc, impl


def stride2_intrin(dtype: str) -> str:
    """The registered name of the stride-2 row gather for ``dtype`` (registered on first use)."""
    name = f"gbd_stride2_16_{dtype}"
    try:
        s_tir.TensorIntrin.get(name)
    except Exception:  # noqa: BLE001 - TVM raises a generic error for an unknown name
        s_tir.TensorIntrin.register(name, *_stride2_funcs(dtype))
    return name


def schedule_row_gather(sch, pblk, geom: ConvGeometry, dtype: str):
    """The gathered rows P (compute_at a k block): row-aligned runs as vector copies of ROWV
    elements; at stride 2 with 16-element runs, each run is two loads and a shuffle."""
    if not geom.OWP:
        return
    _, pn = sch.get_loops(pblk)[-2:]
    if not strided_rows(geom) and geom.NRP and geom.OWP % VECTOR_LANES:
        # whole rows that are not whole vectors (56 pixels): split by rows, so that no vector
        # straddles two (a 56-pixel row as 7 runs of 8 computed n // 56 per run: 31% of the conv)
        _, pw = sch.split(pn, [None, geom.OWP])
        vectorize_row(sch, pw, geom.OWP)
        return
    _, pv = sch.split(pn, [None, geom.ROWV])
    if not strided_rows(geom):
        sch.vectorize(pv)
        return
    p2 = sch.get_sblock("P2")
    sch.compute_at(p2, sch.get_loops(pblk)[-4])  # the k block's loop: whole rows of this chunk
    sch.vectorize(sch.get_loops(p2)[-1])
    sch.tensorize(pv, stride2_intrin(dtype))


def lowering_params(Tg=None):
    """Keyword arguments of lowering.lower_conv for the CPU kernels.  8 filter rows per register
    tile (16 accumulators, cache-line aligned filter reads) when they divide the group's outputs,
    else 6 (fewer when the group has fewer outputs, e.g. depthwise)."""
    ti = 8 if Tg and Tg % 8 == 0 else (Tg if Tg and Tg < CONV_TI else CONV_TI)
    return dict(
        TI=ti, NV=CONV_NV, kc_max=CONV_KC, row_align=CONV_ROW_ALIGN, chunk_tiles=tuple(range(1, 10)), whole_rows=True
    )


def direct_lowering_params(geom: ConvGeometry, params: dict):
    """``params`` with output rows of exactly OW pixels for a 1x1 conv (stride 1, no padding) whose
    rows ``params`` padded (28 -> 32): its gathered rows are then rows of the input, read without
    the padded copy (te_defs.reads_input_directly); None for any other conv."""
    one = (geom.kh, geom.kw, geom.sh, geom.sw) == (1, 1, 1, 1) and not any((geom.pt, geom.pl, geom.pb, geom.pr))
    if not one or not geom.OWP or geom.OWP == geom.OW:
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
    offsets are bounded (te_defs.gather_rows), a base-table gather's are not."""
    if not geom.OWP or strided_rows(geom):  # the stride-2 row copies (stage P2) are placed later
        return False
    return isinstance(geom.N, int) and geom.N >= IMAGE_TASKS * nthreads


def t_chunks(geom: ConvGeometry, target) -> int:
    """t-chunks per task of the float32 kernel: 1 with whole-image tasks, else choose_t_split."""
    nthreads = _num_threads(target)
    return 1 if image_tasks(geom, nthreads) else choose_t_split(geom, nthreads)


def schedule_conv_cpu(func, geom: ConvGeometry, target):
    """Schedule the conv_te PrimFunc (blocks Dp, P, C, out) for a multi-core AVX-512 CPU."""
    per_image = image_tasks(geom, _num_threads(target))
    tpo = t_chunks(geom, target)
    if geom.TO % tpo:
        tpo = 1
    sch = s_tir.schedule.Schedule(func)
    # the fused epilogue maps out[c] to (group, c % Tg) per parallel task: only exact when every
    # t-chunk of a group is whole (no padded filters inside a split group), else some filters of
    # each group are never written (found by tests/test_fuzz.py)
    fused_epi = bool(geom.NRP) and (geom.TO * geom.TI == geom.Tg or (tpo == 1 and geom.G == 1))
    par, task, (ko, init_at) = _schedule_gemm(sch, geom, tpo, fused_epi, per_image)
    # gather the patch panel once per task and k block
    pblk = sch.get_sblock("P")
    sch.compute_at(pblk, ko)
    # before the gather's loop partitions: compute_at finds its consumers among the original blocks
    _schedule_padded_copy(sch, geom, par if per_image else None)
    schedule_row_gather(sch, pblk, geom, "float32")
    _schedule_epilogue(sch, geom, task if fused_epi else None)
    _decompose_init(sch, init_at)
    return sch.mod["main"]


def _schedule_gemm(sch, geom: ConvGeometry, tpo: int, fused_epi: bool, per_image: bool = False):
    """k-blocked GEMM: the P stripe [KC, NV] stays in L1 across all t tiles; (t, n) register tile
    TI x NV with the n lanes vectorized.  Returns (parallel loop, task loop, k-block loop): a task is
    one (image, group, n-chunk, t-chunk), run in parallel, or with ``per_image`` run in turn inside
    its image's parallel iteration."""
    blk = sch.get_sblock("C")
    if geom.NRP:
        b, g, t, r, w, k = sch.get_loops(blk)
        n = sch.fuse(r, w)
    else:
        b, g, t, n, k = sch.get_loops(blk)
    tp, to, ti = sch.split(t, [tpo, geom.TO // tpo, geom.TI])
    no, nt, nv = sch.split(n, [None, geom.NTC, geom.NV])
    one_block = geom.KP == geom.KC
    if one_block:  # no k-block loop: the accumulators can start at zero in registers (below)
        ko, ki = None, k
        sch.reorder(b, g, no, tp, nt, to, ki, ti, nv)
    else:
        ko, ki = sch.split(k, [None, geom.KC])
        sch.reorder(b, g, no, tp, ko, nt, to, ki, ti, nv)
    if per_image:
        par, task = b, sch.fuse(g, no, tp)
    else:
        par = task = sch.fuse(b, g, no, tp)
    sch.parallel(par)
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
    return par, task, (task, ki) if one_block else (ko, ko)


def _decompose_init(sch, at):
    """The accumulators' zero init at loop ``at``: before the k blocks, or with one k block right
    before a register tile's reduction (a tile of zeros stored over the chunk, then loaded back
    per tile, was a third of the memory operations of a 16-row reduction).  Last: the epilogue's
    reverse_compute_at needs the reduction still whole."""
    init = sch.decompose_reduction(sch.get_sblock("C"), at)
    sch.vectorize(sch.get_loops(init)[-1])


def _schedule_padded_copy(sch, geom: ConvGeometry, at=None):
    """Padded copy of the live maps: iterate (b, l, h, w) instead of the flat index (no divisions);
    a parallel pass over the batch, or (``at``: an image's parallel loop) that image's copy in its task.
    None where the gathered rows read the input directly (te_defs.reads_input_directly)."""
    if not _has_block(sch, "Dp"):
        return
    dblk = sch.get_sblock("Dp")
    HW = geom.Hp * geom.Wp
    if geom.Hp == 1:  # one padded row: (f % HW) // Wp is constant, not a bijective affine map
        sch.transform_block_layout(dblk, lambda b, f: (b, f // geom.Wp, f % geom.Wp))
    else:
        sch.transform_block_layout(dblk, lambda b, f: (b, f // HW, f % HW // geom.Wp, f % geom.Wp))
    if at is not None:
        sch.compute_at(dblk, at)
    else:
        db, dl = sch.get_loops(dblk)[:2]
        sch.parallel(sch.fuse(db, dl))
    if geom.Wp > MAX_VECTOR_ROW:
        return
    # rows of top padding / of the input / of bottom padding: in the input's rows the row test of
    # the zero padding is known true (it was vector compares per element: ~14% of a sparse layer1
    # conv at batch 32), in the padding rows the load's clamps make them cheap
    rows = [sch.get_loops(dblk)[-2]] if geom.Hp > 1 else []
    row_parts = _partition(sch, rows[0], geom.pt, geom.H, geom.Hp) if rows else [None]
    for part in row_parts:
        blocks = [dblk] if part is None else _leaf_blocks(sch, part)
        for blk in blocks:  # a whole padded row as vector ops (the masked load is branch-free)
            for loop in partition_row(sch, sch.get_loops(blk)[-1], geom):
                sch.vectorize(loop)


def _has_block(sch, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - TVM raises a generic ScheduleError for an unknown name
        return False
    return True


def _leaf_blocks(sch, parent):
    """The innermost blocks under ``parent`` (a loop or a block)."""
    out = []
    for blk in sch.get_child_blocks(parent):
        out.extend(_leaf_blocks(sch, blk) if sch.get_child_blocks(blk) else [blk])
    return out


def _partition(sch, loop, lo: int, n: int, ext: int):
    """``loop`` (extent ``ext``) as (0 .. lo, lo .. lo + n, the rest), empty parts left out."""
    mid = max(0, min(n, ext - lo))
    lo = min(lo, ext)
    parts = [p for p in (lo, mid, ext - lo - mid) if p > 0]
    if len(parts) < 2:
        return [loop]
    return sch.loop_partition(loop, parts[:-1] + [None])  # the last part inferred


def partition_row(sch, loop, geom: ConvGeometry):
    """A padded row's loop as (left padding, the input's columns, the rest): in the middle part the
    simplifier drops the clamps of the load, which becomes one contiguous vector load (with the
    clamps it was a scalar load per element, ~30% of a 56x56 int8 conv: 8.7 -> 8.0 ms)."""
    mid = max(0, min(geom.W, geom.Wp - geom.pl))
    left = min(geom.pl, geom.Wp)
    parts = [p for p in (left, mid, geom.Wp - left - mid) if p > 0]
    if len(parts) < 2:
        return [loop]
    return sch.loop_partition(loop, parts[:-1] + [None])  # the last part inferred


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
    else:
        eb, ec, eh, ew = sch.get_loops(eblk)
        sch.parallel(sch.fuse(eb, ec))
        if geom.OWP == 0:
            ew = sch.fuse(eh, ew)
        ext = geom.OH * geom.OW if geom.OWP == 0 else geom.OW
    vectorize_row(sch, ew, ext)


def vectorize_row(sch, loop, ext):
    """A row loop of ``ext`` elements as 16-lane vectors: whole vectors, then the rest (a 56-pixel
    row: 3 x 16 + 8, not 7 x 8), or the widest of 16 / 8 / 4 lanes that divides it."""
    if ext > VECTOR_LANES and ext % VECTOR_LANES and ext <= MAX_VECTOR_ROW:
        head, tail = sch.loop_partition(loop, [ext // VECTOR_LANES * VECTOR_LANES, None])
        _, ev = sch.split(head, [None, VECTOR_LANES])
        sch.vectorize(ev)
        sch.vectorize(tail)
        return
    for vw in (16, 8, 4):
        if ext % vw == 0:
            _, ev = sch.split(loop, [None, vw])
            sch.vectorize(ev)
            break


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
