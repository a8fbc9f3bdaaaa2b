"""CPU (LLVM, AVX-512) schedules of the gather-GEMM conv's data movement (docs/formulas.md
1.18-1.19, 1.23-1.24): the padded copy of the live input maps ("Dp", rows split into padding and
input parts so the input's rows are plain vector copies), the gathered rows ("P": one vector copy
per row run, or two loads and a shuffle per 16 pixels at stride 2) and the row-vectorization
helpers the depthwise and pooling kernels share."""

from __future__ import annotations

from tvm import s_tir
from tvm.script import tirx as T

from .lowering import ConvGeometry
from .te_defs import strided_rows

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
    elements; at stride 2 with 16-element runs, each run is two loads and a shuffle (its rows
    placed by place_stride2_rows first)."""
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
    sch.vectorize(sch.get_loops(sch.get_sblock("P2"))[-1])
    sch.tensorize(pv, stride2_intrin(dtype))


def place_stride2_rows(sch, pblk, geom: ConvGeometry):
    """The whole input rows of a stride-2 gather (stage "P2", te_defs.strided_rows) at the k block's
    loop of the gathered rows ``pblk``, so that this chunk's rows are copied right before their
    shuffles; before the padded copy is placed: compute_at of an image's copy into its task needs
    all its readers inside that task."""
    if strided_rows(geom):
        sch.compute_at(sch.get_sblock("P2"), sch.get_loops(pblk)[-3])  # the loop above P's (k, n)


def schedule_padded_copy(sch, geom: ConvGeometry, at=None):
    """Padded copy of the live maps: iterate (b, l, h, w) instead of the flat index (no divisions);
    a parallel pass over the batch, or (``at``: an image's parallel loop) that image's copy in its task.
    None where the gathered rows read the input directly (te_defs.reads_input_directly)."""
    if not _has_block(sch, "Dp"):
        return
    dblk = sch.get_sblock("Dp")
    HW, plane, Wq = geom.map_len, geom.Hq * geom.Wq, geom.Wq
    if geom.PH > 1:  # (map, phase plane, row, column): rows of a plane, from every other input column
        sch.transform_block_layout(dblk, lambda b, f: (b, f // HW, f % HW // plane, f % plane // Wq, f % Wq))
    elif geom.Hp == 1:  # one padded row: (f % HW) // Wp is constant, not a bijective affine map
        sch.transform_block_layout(dblk, lambda b, f: (b, f // geom.Wp, f % geom.Wp))
    else:
        sch.transform_block_layout(dblk, lambda b, f: (b, f // HW, f % HW // geom.Wp, f % geom.Wp))
    if at is not None:
        sch.compute_at(dblk, at)
    else:
        db, dl = sch.get_loops(dblk)[:2]
        sch.parallel(sch.fuse(db, dl))
    if geom.PH > 1:
        sch.vectorize(sch.get_loops(dblk)[-1])
        return
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
    return _partition(sch, loop, geom.pl, geom.W, geom.Wp)


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
