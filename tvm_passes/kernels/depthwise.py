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
gather-GEMM on MobileNetV2's layers: 1.6-3.8x faster.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from tvm import s_tir, te, tirx

from .cpu_copies import partition_row, vectorize_row
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
    parts (the middle one without clamps: contiguous loads), "Dp" inlined at stride 1; output rows
    as 16-lane vectors."""
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
        sch.vectorize(sch.get_loops(dp)[-1])
    vectorize_row(sch, ow, OW)
    return sch.mod["main"]


def depthwise_conv2d(
    data_shape, weight, bias=None, *, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), relu=False
):
    """Scheduled PrimFunc and consts ``[w (C, kh, kw), (bias)]`` of an NCHW depthwise conv
    (``is_depthwise``); ``data_shape[0]`` may be symbolic; ``relu`` as in te_defs._epilogue."""
    from .gather_gemm import _batch_dim, _finish

    weight = np.asarray(weight, dtype=np.float32)
    if not is_depthwise(data_shape, weight.shape, weight.shape[0]):
        raise ValueError(f"not a depthwise conv: data {tuple(data_shape)}, weight {weight.shape}")
    C, _, kh, kw = weight.shape
    shape = (_batch_dim(data_shape[0]), *(int(v) for v in data_shape[1:]))
    func = depthwise_te(shape, kh, kw, stride, padding, dilation, bias is not None, relu)
    OW = _dims(shape, kh, kw, stride, padding, dilation)[1]
    dims = (shape[3], _pad4(padding)[1], _pair(stride)[1], OW)
    consts = [np.ascontiguousarray(weight.reshape(C, kh, kw))]
    if bias is not None:
        consts.append(np.ascontiguousarray(np.asarray(bias, dtype=np.float32).reshape(C)))
    return _finish(schedule_depthwise_cpu(func, dims), "llvm"), consts
