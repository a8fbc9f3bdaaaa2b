"""Max-pooling of NCHW float32 or uint8 maps (the pooling between the convs of ResNet / VGG), CPU.

A window that overlaps the input (always, for a valid pooling) contains the input element its
clamped index points at, so the max over clamped indices equals the max with -inf padding: no
padded copy, and uint8 (the int8 kernels' carried activations, ``passes.uint8_carry``) needs no
special value.  Per output row, separably:

  "V"    V[w] = max_i x[clamp(oh s + i - p_t), w]        the k rows of the window, whole rows
  "H"    H[w] = max_j V[clamp(w + j - p_l)]               for w in [0, (OW - 1) s + 1)
  "out"  out[ow] = H[ow s]                                 stride 2: two loads and a shuffle per
                                                           16 outputs (cpu_copies.stride2_intrin)

All three are contiguous vector loops (TVM's generic schedule of the legalized op reduced over
the window per element at scalar width: 12 ms at batch 32 for ResNet-18's float32 pooling, 27 ms
for uint8).  CPU only: on CUDA the generic (dlight) schedule of the legalized op stays.
"""

from __future__ import annotations

from functools import reduce

from tvm import s_tir, te, tirx

from .cpu_copies import VECTOR_LANES, stride2_intrin
from .lowering import conv_output_size
from .te_defs import clamp

DTYPES = ("float32", "uint8")


def pool_dims(in_shape, pool_size, strides, padding):
    """(OH, OW, OWP, WH): the output size (the conv's formula, no dilation), the row length "D"
    computes (whole 16-blocks at stride 2, the shuffle's unit; "out" copies the first OW) and
    the row length of "H"."""
    OH, OW = conv_output_size(int(in_shape[2]), int(in_shape[3]), *pool_size, strides, padding, (1, 1))
    OWP = -(-OW // VECTOR_LANES) * VECTOR_LANES if strides[1] == 2 else OW
    return OH, OW, OWP, (OWP - 1) * strides[1] + 1


def check_pool(in_shape, pool_size, strides, padding, dtype) -> None:
    """ValueError unless the kernel computes this pooling exactly (every window overlaps the input)."""
    if dtype not in DTYPES:
        raise ValueError(f"max-pool kernel: dtype {dtype} is not one of {', '.join(DTYPES)}")
    out = pool_dims(in_shape, pool_size, strides, padding)[:2]
    for d in (0, 1):  # rows, columns
        size, n, k, s, p0, p1 = int(in_shape[2 + d]), out[d], pool_size[d], strides[d], padding[d], padding[d + 2]
        if n < 1 or max(p0, p1) >= k or (n - 1) * s - p0 > size - 1:
            raise ValueError(
                f"max-pool kernel: window {k}, stride {s}, padding {p0}/{p1} on {size} leaves windows outside the input"
            )


def max_pool_te(in_shape, pool_size, strides, padding, dtype: str):
    """PrimFunc (x[N, C, H, W], out[N, C, OH, OW]) of the separable max-pool above."""
    N, C, H, W = in_shape
    (kh, kw), (sh, sw) = pool_size, strides
    pt, pl = padding[0], padding[1]
    OH, OW, OWP, WH = pool_dims(in_shape, pool_size, strides, padding)
    x = te.placeholder((N, C, H, W), dtype, name="x")

    V = te.compute(
        (N, C, OH, W),
        lambda b, c, oh, w: reduce(tirx.max, [x[b, c, clamp(oh * sh + i - pt, H), w] for i in range(kh)]),
        name="V",
    )
    Hm = te.compute(
        (N, C, OH, WH),
        lambda b, c, oh, w: reduce(tirx.max, [V[b, c, oh, clamp(w + j - pl, W)] for j in range(kw)]),
        name="H",
    )
    D = te.compute((N, C, OH, OWP), lambda b, c, oh, ow: Hm[b, c, oh, ow * sw], name="D")
    out = te.compute((N, C, OH, OW), lambda b, c, oh, ow: D[b, c, oh, ow], name="out")
    return te.create_prim_func([x, out])


def schedule_max_pool_cpu(func, in_shape, pool_size, strides, padding, dtype: str):
    """Parallel over (image, channel) planes; per output row its V, H and D rows, as vector loops."""
    W, kw, sw, pl = in_shape[3], pool_size[1], strides[1], padding[1]
    WH = pool_dims(in_shape, pool_size, strides, padding)[3]
    sch = s_tir.schedule.Schedule(func)
    # the loops of D (whole 16-blocks), not of out: a compute_at would shrink D to the OW out reads
    b, c, oh, dw = sch.get_loops(sch.get_sblock("D"))
    sch.parallel(sch.fuse(b, c))
    for name in ("H", "V"):
        sch.compute_at(sch.get_sblock(name), oh)
    out = sch.get_sblock("out")
    sch.reverse_compute_at(out, oh)
    sch.vectorize(sch.get_loops(out)[-1])
    sch.vectorize(sch.get_loops(sch.get_sblock("V"))[-1])
    # H's middle part reads V without clamping: one contiguous vector load per window column
    mid = max(0, min(W - kw + 1, WH - pl))
    parts = [p for p in (min(pl, WH), mid, WH - min(pl, WH) - mid) if p > 0]
    hw = sch.get_loops(sch.get_sblock("H"))[-1]
    for loop in sch.loop_partition(hw, parts[:-1] + [None]) if len(parts) > 1 else [hw]:
        sch.vectorize(loop)
    if sw == 2:
        _, lanes = sch.split(dw, [None, VECTOR_LANES])
        sch.tensorize(lanes, stride2_intrin(dtype))
    else:
        sch.vectorize(dw)
    return sch.mod["main"]


def max_pool2d(in_shape, pool_size, strides, padding, dtype: str = "float32"):
    """Scheduled PrimFunc of an NCHW max-pool (padding (top, left, bottom, right)); ``in_shape[0]``
    may be symbolic.  ValueError for a pooling it cannot compute exactly."""
    from .gather_gemm import _batch_dim, _finish

    pool_size, strides, padding = tuple(map(int, pool_size)), tuple(map(int, strides)), tuple(map(int, padding))
    check_pool(in_shape, pool_size, strides, padding, dtype)
    shape = (_batch_dim(in_shape[0]), *(int(v) for v in in_shape[1:]))
    func = max_pool_te(shape, pool_size, strides, padding, dtype)
    return _finish(schedule_max_pool_cpu(func, shape, pool_size, strides, padding, dtype), "llvm")
