"""A 1x1 expansion and the stride-2 3x3 depthwise conv that reads it, in one CPU kernel (float32,
MobileNetV2's inverted-residual blocks; docs/formulas.md 1.28).

Apart, the expansion writes its C wide maps to memory and the depthwise conv reads them back: on
MobileNetV2's second block (16 -> 96 maps at 112x112, 4.8 MB per image) both are bound by memory.
Here a task takes CB maps and a band of RB output rows and computes

  "E"    E[c, r, 1 + w] = act1(b1[c] + sum_k W1[c, k] x[k, h_r, w]),  h_r = s RB band - 1 + r
         (0 where h_r is outside the image, and in the columns 0 and W + 1: the zero padding)
  "out"  out[c, oh, ow] = act2(bd[c] + sum_{i,j} Wd[c, i, j] E[c, s (oh - RB band) + i, s ow + j])

with E, the band's (RB - 1) s + 3 expanded rows of CB maps, in the task's own buffer (at most
BAND_BYTES: L2), so the wide tensor never reaches memory.  A row of E is CU maps x NV 16-lane
vectors of accumulators (the last vector overlaps the one before where W is no multiple of 16,
so no lane reads past the row); the depthwise taps of 16 outputs at stride 2 are two contiguous
loads split into even and odd columns (one shuffle each).  Expansion rows at the band's edge are
computed twice (1 row in 2 RB).  Ad-hoc, 2 threads, AMD EPYC, batch 1: 16 -> 96 maps at 112x112,
0.28-0.30 ms against 0.45 ms for the two kernels in the model; stride 1 is not fused (0.23 ms
against 0.20 ms on 24 -> 144 maps at 56x56, whose expanded maps fit the caches anyway).
"""

from __future__ import annotations

import numpy as np
from tvm.script import tirx as T

from .depthwise import is_depthwise
from .te_defs import _epilogue

#: bytes of one task's expanded rows (about a quarter of a core's L2 here)
BAND_BYTES = 256 << 10
#: the expanded maps (all images of the batch) must be at least this large to be worth fusing (the
#: caches hold smaller ones between the two kernels)
MIN_EXPANDED_BYTES = 1 << 20
#: maps per task at most
MAX_CB = 16
_LANES = 16
#: accumulator tile bytes at most: TVM keeps buffers under 1 KB on the stack, larger ones in the
#: heap workspace, where LLVM cannot keep them in registers (3x slower)
_TILE_BYTES = 1023


def plan(data_shape, expand_shape, dw_shape, stride, padding, dilation, groups):
    """``(CU, CB, RB)`` where the pair runs fused (the module doc's tile), else None: a static
    batch, a 1x1 expansion, then a 3x3 depthwise conv at stride 2 with padding 1 on rows of at
    least 32 even columns (16 outputs per vector), whose expanded maps are at least
    MIN_EXPANDED_BYTES."""
    if not isinstance(data_shape[0], (int, np.integer)) or len(data_shape) != 4:
        return None
    N, K, H, W = (int(v) for v in data_shape)
    C = int(expand_shape[0])
    if tuple(int(v) for v in expand_shape) != (C, K, 1, 1) or tuple(int(v) for v in dw_shape) != (C, 1, 3, 3):
        return None
    if not is_depthwise((1, C, H, W), dw_shape, groups):
        return None
    if tuple(stride) != (2, 2) or tuple(padding) != (1, 1, 1, 1) or tuple(dilation) != (1, 1):
        return None
    if H % 2 or W % 2 or W < 2 * _LANES or 4 * N * C * H * W < MIN_EXPANDED_BYTES:
        return None
    nv = -(-W // _LANES)
    # the most maps per register tile (at most 24 accumulators) that some task width fits
    cu, cb = next(
        (
            (cu, cb)
            for cu in range(max(1, min(_TILE_BYTES // (nv * _LANES * 4), 24 // nv)), 0, -1)
            if (cb := max((m for m in range(cu, MAX_CB + 1, cu) if C % m == 0), default=0))
        ),
        (0, 0),
    )
    if not cb:
        return None
    OH = H // 2
    fits = [rb for rb in range(1, OH + 1) if OH % rb == 0 and cb * (2 * rb + 1) * (W + 2) * 4 <= BAND_BYTES]
    return (cu, cb, max(fits)) if fits else None


_EVEN, _ODD = [2 * i for i in range(_LANES)], [2 * i + 1 for i in range(_LANES)]


def _vec(E, c, r, a):
    return E[c, r, T.ramp(a, 1, _LANES)]


def _taps(E, wd, ch, c, r, st, i):
    """Row i of the 3x3 taps of 16 outputs from column 2 st: two loads split into even and odd
    columns (and the even ones of the two loads one column pair on)."""
    a, b = _vec(E, c, r, 2 * st), _vec(E, c, r, 2 * st + _LANES)
    a2, b2 = _vec(E, c, r, 2 * st + 2), _vec(E, c, r, 2 * st + _LANES + 2)
    return (
        T.Broadcast(wd[ch, i, 0], _LANES) * T.Shuffle([a, b], _EVEN)
        + T.Broadcast(wd[ch, i, 1], _LANES) * T.Shuffle([a, b], _ODD)
        + T.Broadcast(wd[ch, i, 2], _LANES) * T.Shuffle([a2, b2], _EVEN)
    )


def _kernel(N, K, C, H, W, tile, relu1, relu2):
    """The PrimFunc (x, w1 [C / CU, K, CU], b1, wd [C, 3, 3], bd, out) of the module doc."""
    CU, CB, RB = tile
    OH, OW = H // 2, W // 2
    NV, NVO = -(-W // _LANES), -(-OW // _LANES)
    R, ncb, nb = 2 * RB + 1, C // CB, OH // RB
    nct = CB // CU

    # no Let variables: inside the parallel body TVM kept them in memory, reloaded at every use
    @T.prim_func(s_tir=False)
    def expand_depthwise(
        x: T.Buffer((N, K, H, W), "float32"),
        w1: T.Buffer((C // CU, K, CU), "float32"),
        b1: T.Buffer((C,), "float32"),
        wd: T.Buffer((C, 3, 3), "float32"),
        bd: T.Buffer((C,), "float32"),
        out: T.Buffer((N, C, OH, OW), "float32"),
    ):
        T.func_attr({"tir.noalias": True})
        for task in T.parallel(N * ncb * nb):
            E = T.decl_buffer((CB, R, W + 2), "float32")
            for r in range(R):
                if task % nb * RB * 2 - 1 + r >= 0 and task % nb * RB * 2 - 1 + r < H:
                    for ct in range(nct):
                        # global scope and under 1 KB (_TILE_BYTES): an LLVM stack array, kept in registers
                        acc = T.decl_buffer((CU, NV, _LANES), "float32")
                        for c in T.unroll(CU):
                            for v in T.unroll(NV):
                                for lane in T.vectorized(_LANES):
                                    acc[c, v, lane] = T.float32(0)
                        for k in range(K):
                            for c in T.unroll(CU):
                                for v in T.unroll(NV):
                                    for lane in T.vectorized(_LANES):
                                        acc[c, v, lane] = (
                                            acc[c, v, lane]
                                            + w1[task // nb % ncb * nct + ct, k, c]
                                            * x[
                                                task // (ncb * nb),
                                                k,
                                                task % nb * RB * 2 - 1 + r,
                                                T.min(v * _LANES, W - _LANES) + lane,
                                            ]
                                        )
                        for c in T.unroll(CU):
                            for v in T.unroll(NV):
                                for lane in T.vectorized(_LANES):
                                    E[ct * CU + c, r, T.min(v * _LANES, W - _LANES) + lane + 1] = _epilogue(
                                        acc[c, v, lane], b1[task // nb % ncb * CB + ct * CU + c], None, relu1
                                    )
                else:
                    for c in range(CB):
                        for w in T.vectorized(W):
                            E[c, r, w + 1] = T.float32(0)
                for c in range(CB):
                    E[c, r, 0] = T.float32(0)
                    E[c, r, W + 1] = T.float32(0)
            for c, ohi in T.grid(CB, RB):
                for v in T.unroll(NVO):
                    out[
                        task // (ncb * nb),
                        task // nb % ncb * CB + c,
                        task % nb * RB + ohi,
                        T.ramp(T.min(v * _LANES, OW - _LANES), 1, _LANES),
                    ] = _epilogue(
                        _taps(E, wd, task // nb % ncb * CB + c, c, ohi * 2, T.min(v * _LANES, OW - _LANES), 0)
                        + _taps(E, wd, task // nb % ncb * CB + c, c, ohi * 2 + 1, T.min(v * _LANES, OW - _LANES), 1)
                        + _taps(E, wd, task // nb % ncb * CB + c, c, ohi * 2 + 2, T.min(v * _LANES, OW - _LANES), 2),
                        T.Broadcast(bd[task // nb % ncb * CB + c], _LANES),
                        None,
                        relu2,
                    )

    return expand_depthwise


def expand_depthwise_conv2d(data_shape, w1, b1, relu1, wd, bd, relu2, tile):
    """Scheduled PrimFunc and consts ``[w1 packed [C / CU, K, CU], b1, wd [C, 3, 3], bd]`` of a 1x1
    conv (weight ``w1`` [C, K, 1, 1], bias ``b1`` or None, ``relu1`` as te_defs._epilogue) and the
    stride-2 3x3 depthwise conv after it (``wd`` [C, 1, 3, 3], ``bd``, ``relu2``); ``tile`` from
    ``plan``."""
    from .gather_gemm import _finish

    N, K, H, W = (int(v) for v in data_shape)
    w1 = np.asarray(w1, dtype=np.float32)
    C, CU = int(w1.shape[0]), tile[0]
    packed = np.ascontiguousarray(w1.reshape(C // CU, CU, K).transpose(0, 2, 1))
    zeros = np.zeros(C, np.float32)
    consts = [
        packed,
        np.ascontiguousarray(zeros if b1 is None else np.asarray(b1, np.float32).reshape(C)),
        np.ascontiguousarray(np.asarray(wd, np.float32).reshape(C, 3, 3)),
        np.ascontiguousarray(zeros if bd is None else np.asarray(bd, np.float32).reshape(C)),
    ]
    return _finish(_kernel(N, K, C, H, W, tile, relu1, relu2), "llvm"), consts
