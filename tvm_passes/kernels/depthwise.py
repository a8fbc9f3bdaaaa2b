"""Depthwise conv (groups = input maps = output maps, MobileNet's 3x3 layers), float32, CPU.

A depthwise conv has one input map per output map, so as a gather-GEMM (formula 1.18) every conv
group is a GEMM with a single filter row: one FMA per gathered value, the gather costing as
much as the GEMM.  Here it is computed directly, per (image, map) plane:

  "Pad"  Pad[h, u] = x[h - p_t, u - p_l], 0 outside              the zero-padded rows
  "Dp"   Dp[q, h, v] = Pad[h, v s + q]                           columns split by phase q = u mod s
  "out"  out[oh, ow] = act(b + sum_{i,j} w[i, j] Dp[(j d) mod s, oh s + i d, ow + (j d) div s])

so every tap of a row of outputs is one contiguous vector load times a broadcast weight, at
stride 2 too (the phases make the columns of a tap consecutive; at stride 1 "Dp" is "Pad").
``act``: the fused ReLU or ReLU6 (te_defs._epilogue).  A plane's copies are made inside its
parallel task, right before they are read; the middle part of a padded row has no clamps (one
contiguous load per vector, as the gather-GEMM's copy, cpu_copies.partition_row).  Against the
gather-GEMM on MobileNetV2's layers: 1.6-3.8x faster.  Rows under one vector (14x14, 7x7 maps) at
stride 1 run flat instead (formula 1.26, depthwise_flat_te): the plane as one run of pixels, with
column masks for the taps that cross a row edge.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from tvm import s_tir, te, tirx

from .cpu_copies import VECTOR_LANES, partition_row, vectorize_row
from .lowering import _pad4, _pair, _sizes
from .te_defs import _epilogue, clamp, fill_outside


def is_depthwise(data_shape, weight_shape, groups) -> bool:
    """Whether a conv is depthwise: one input map per group and one output map per input map."""
    return int(groups) > 1 and int(weight_shape[1]) == 1 and int(weight_shape[0]) == int(data_shape[1]) == int(groups)


def _dims(data_shape, kh, kw, stride, padding, dilation):
    """(OH, OW, Hp, Wq, Wpad): output size, padded rows read, columns per phase and the length of a
    zero-padded row."""
    C = int(data_shape[1])
    z = _sizes(data_shape, (C, 1, kh, kw), stride, padding, dilation, C)
    Wq = z["OW"] + ((kw - 1) * z["dw"]) // z["sw"]
    return z["OH"], z["OW"], z["Hp"], Wq, Wq * z["sw"]


def depthwise_te(data_shape, kh, kw, stride, padding, dilation, has_bias, relu):
    """PrimFunc (x[N, C, H, W], w[C, kh, kw], (bias[C]), out[N, C, OH, OW]) of the stages above
    ("Pad": the zero-padded rows, which "Dp" splits into phases)."""
    N, C, H, W = data_shape
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    pt, pl = _pad4(padding)[:2]
    OH, OW, Hp, Wq, Wpad = _dims(data_shape, kh, kw, stride, padding, dilation)
    x = te.placeholder((N, C, H, W), "float32", name="x")
    wt = te.placeholder((C, kh, kw), "float32", name="w")
    bias = te.placeholder((C,), "float32", name="bias") if has_bias else None

    def padded(b, c, h, u):  # branch-free zero padding, as the gather-GEMM's copy
        r, col = h - pt, u - pl
        return fill_outside(x[b, c, clamp(r, H), clamp(col, W)], tirx.all(r >= 0, r < H, col >= 0, col < W))

    Pad = te.compute((N, C, Hp, Wpad), padded, name="Pad")
    Dp = te.compute((N, C, sw, Hp, Wq), lambda b, c, q, h, v: Pad[b, c, h, v * sw + q], name="Dp")

    def conv(b, c, oh, ow):
        taps = [
            wt[c, i, j] * Dp[b, c, (j * dw) % sw, oh * sh + i * dh, ow + (j * dw) // sw]
            for i in range(kh)
            for j in range(kw)
        ]
        acc = taps[0]
        for t in taps[1:]:
            acc = acc + t
        return _epilogue(acc, bias[c] if has_bias else None, None, relu)

    out = te.compute((N, C, OH, OW), conv, name="out")
    return te.create_prim_func([x, wt] + ([bias] if has_bias else []) + [out])


def schedule_depthwise_cpu(func, dims):
    """Parallel over (image, map) planes; the plane's copies inside the task: "Pad" rows in three
    parts (the middle one without clamps: contiguous loads), "Dp" inlined at stride 1, else its
    phases interleaved for LLVM's vectorizer; output rows as 16-lane vectors."""
    W, pl, sw, OW = dims
    sch = s_tir.schedule.Schedule(func)
    out = sch.get_sblock("out")
    b, c, _oh, ow = sch.get_loops(out)
    plane = sch.fuse(b, c)
    sch.parallel(plane)
    dp, pad = sch.get_sblock("Dp"), sch.get_sblock("Pad")
    if sw == 1:
        sch.compute_inline(dp)
    else:
        sch.compute_at(dp, plane)
    sch.compute_at(pad, plane)
    row = sch.get_loops(pad)[-1]  # compute_at kept the columns the taps read
    for loop in partition_row(sch, row, SimpleNamespace(W=W, Wp=int(sch.get(row).extent), pl=pl)):
        sch.vectorize(loop)
    if sw > 1:
        # the phases innermost and not vectorized by TVM: LLVM's loop vectorizer then reads whole
        # vectors of the padded row and splits them with permutes; TVM's vectorized strided read was
        # one scalar insert per element (about half the kernel).  1.09-1.29x on MobileNetV2's
        # stride-2 layers at batch 1 and 8 (ad-hoc, 2 threads, AMD EPYC)
        loops = sch.get_loops(dp)
        if len(loops) == 4:  # (plane, q, h, v); a single phase in use (a 1-wide kernel) has no q loop
            _, q, h, v = loops
            sch.reorder(h, v, q)
            sch.unroll(q)
        else:
            sch.vectorize(loops[-1])
    vectorize_row(sch, ow, OW)
    return sch.mod["main"]


def is_flat(data_shape, kh, kw, stride, padding, dilation) -> bool:
    """Whether a depthwise conv runs flat (depthwise_flat_te): stride 1, left + right padding = the
    kernel's reach (rows keep the input's length), and rows shorter than one 16-lane vector, which
    the row-wise kernel computes in scalars.  Flat against row-wise (ad-hoc, 2 threads, AMD EPYC,
    MobileNetV2's 3x3 layers): 1.65x on 14x14 maps and 1.9x on 7x7 at batch 1, 1.2x at batch 32;
    1.0x at 28x28, 0.88-0.96x at 56x56 and 112x112 (the masks' extra work, where rows are whole
    vectors anyway)."""
    (sh, sw), (_, dw) = _pair(stride), _pair(dilation)
    _, pl, _, pr = _pad4(padding)
    return sh == sw == 1 and pl + pr == (kw - 1) * dw and int(data_shape[3]) < VECTOR_LANES


def column_masks(OH, W, kw, pl, dw) -> np.ndarray:
    """int32 [kw, OH * W]: -1 where column tap j of output pixel n = oh W + ow falls inside the
    input row (0 <= ow + j d - p_l < W), else 0 (formula 1.26)."""
    col = np.arange(W)[None, :] + np.arange(kw)[:, None] * dw - pl
    return np.ascontiguousarray(np.tile(np.where((col >= 0) & (col < W), -1, 0), (1, OH)).astype(np.int32))


def _flat_sizes(data_shape, kh, kw, padding, dilation):
    """(OH, E, L) of depthwise_flat_te: output rows, the offset of the plane in the flat copy (the
    padding before it rounded up to whole vectors, so that the copy's middle vectors are the plane's
    and need no clamps) and the copy's length in whole vectors."""
    W = int(data_shape[3])
    (dh, dw), (pt, pl) = _pair(dilation), _pad4(padding)[:2]
    OH = _dims(data_shape, kh, kw, 1, padding, dilation)[0]
    E = -(-(pt * W + pl) // VECTOR_LANES) * VECTOR_LANES
    reach = OH * W + (kh - 1) * dh * W + (kw - 1) * dw + E - pt * W - pl
    return OH, E, -(-reach // VECTOR_LANES) * VECTOR_LANES


def depthwise_flat_te(data_shape, kh, kw, padding, dilation, has_bias, relu):
    """PrimFunc (x, w, masks [kw, OH*W], (bias), out) of a stride-1 depthwise conv with rows of the
    input's length (is_flat), computed over flat pixels n = oh W + ow (formula 1.26):

      "Q"    Q[m] = x_flat[m - E], 0 outside the plane                one flat zero-padded copy
      "out"  out[n] = act(b + sum_j M[j, n] & sum_i w[i, j] Q[n + i d W + j d + E - p_t W - p_l])

    A column tap that crosses a row edge reads the neighbouring row's end; the mask zeroes it.  So
    every tap of 16 consecutive outputs is one contiguous vector load, also across rows (a 14- or
    7-pixel row is no whole vector, and the row-wise kernel computed such rows in scalars)."""
    N, C, H, W = data_shape
    (dh, dw), (pt, pl) = _pair(dilation), _pad4(padding)[:2]
    OH, E, L = _flat_sizes(data_shape, kh, kw, padding, dilation)
    x = te.placeholder((N, C, H, W), "float32", name="x")
    wt = te.placeholder((C, kh, kw), "float32", name="w")
    masks = te.placeholder((kw, OH * W), "int32", name="masks")
    bias = te.placeholder((C,), "float32", name="bias") if has_bias else None

    def padded(b, c, m):
        # no clamps (fill_outside): in each part of the scheduled copy the condition is known, so
        # the simplifier drops it and the plane's part is one contiguous vector copy
        f = m - E
        return tirx.if_then_else(tirx.all(f >= 0, f < H * W), x[b, c, f // W, f % W], tirx.const(0.0, "float32"))

    Q = te.compute((N, C, L), padded, name="Q")

    def conv(b, c, oh, ow):
        n, acc = oh * W + ow, None
        for j in range(kw):
            col = [wt[c, i, j] * Q[b, c, n + i * dh * W + j * dw + E - pt * W - pl] for i in range(kh)]
            s_ = col[0]
            for t in col[1:]:
                s_ = s_ + t
            if j * dw != pl:  # a column tap that can cross a row edge
                s_ = tirx.reinterpret("float32", tirx.reinterpret("int32", s_) & masks[j, n])
            acc = s_ if acc is None else acc + s_
        return _epilogue(acc, bias[c] if has_bias else None, None, relu)

    out = te.compute((N, C, OH, W), conv, name="out")
    return te.create_prim_func([x, wt, masks] + ([bias] if has_bias else []) + [out])


def schedule_depthwise_flat(func, H, W, E):
    """Parallel over (image, map) planes; the flat copy inside the task as 16-lane vectors in three
    parts (zeros; the plane's whole vectors, without clamps; the rest), then the plane's outputs as
    one flat run of 16-lane vectors."""
    sch = s_tir.schedule.Schedule(func)
    out = sch.get_sblock("out")
    b, c, oh, ow = sch.get_loops(out)
    plane = sch.fuse(b, c)
    sch.parallel(plane)
    q = sch.get_sblock("Q")
    sch.compute_at(q, plane)
    mo, mi = sch.split(sch.get_loops(q)[-1], [None, VECTOR_LANES])
    sch.vectorize(mi)
    lo, mid = E // VECTOR_LANES, (E + H * W) // VECTOR_LANES - E // VECTOR_LANES
    parts = [p for p in (lo, mid) if p > 0]
    if parts and sum(parts) < int(sch.get(mo).extent):
        sch.loop_partition(mo, parts + [None])
    n = sch.fuse(oh, ow)
    vectorize_row(sch, n, int(sch.get(n).extent))
    return sch.mod["main"]


def depthwise_conv2d(
    data_shape, weight, bias=None, *, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), relu=False
):
    """Scheduled PrimFunc and consts ``[w (C, kh, kw), (column masks, where is_flat), (bias)]`` of an
    NCHW depthwise conv (``is_depthwise``); ``data_shape[0]`` may be symbolic; ``relu`` as in
    te_defs._epilogue."""
    from .gather_gemm import _batch_dim, _finish

    weight = np.asarray(weight, dtype=np.float32)
    if not is_depthwise(data_shape, weight.shape, weight.shape[0]):
        raise ValueError(f"not a depthwise conv: data {tuple(data_shape)}, weight {weight.shape}")
    C, _, kh, kw = weight.shape
    shape = (_batch_dim(data_shape[0]), *(int(v) for v in data_shape[1:]))
    consts = [np.ascontiguousarray(weight.reshape(C, kh, kw))]
    if is_flat(shape, kh, kw, stride, padding, dilation):
        func = depthwise_flat_te(shape, kh, kw, padding, dilation, bias is not None, relu)
        OH, E, _ = _flat_sizes(shape, kh, kw, padding, dilation)
        consts.append(column_masks(OH, shape[3], kw, _pad4(padding)[1], _pair(dilation)[1]))
        func = schedule_depthwise_flat(func, shape[2], shape[3], E)
    else:
        func = depthwise_te(shape, kh, kw, stride, padding, dilation, bias is not None, relu)
        OW = _dims(shape, kh, kw, stride, padding, dilation)[1]
        func = schedule_depthwise_cpu(func, (shape[3], _pad4(padding)[1], _pair(stride)[1], OW))
    if bias is not None:
        consts.append(np.ascontiguousarray(np.asarray(bias, dtype=np.float32).reshape(C)))
    return _finish(func, "llvm"), consts
