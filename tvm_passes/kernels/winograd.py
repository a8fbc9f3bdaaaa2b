"""Winograd F(4 x 4, 3 x 3) dense conv, float32, CPU (Lavin & Gray 2016; docs/formulas.md 1.25).

A dense 3x3 stride-1 conv computes each 4 x 4 output tile from a 6 x 6 input tile with 36
products per (filter, input map) instead of 144 (formula 1.25):

  Y = A^T [ (G g G^T) (.) (B^T d B) ] A

The elementwise products, summed over the input maps, are 36 independent GEMMs
``M[e] = U[e] @ V[e]`` (``e`` = one of the 6 x 6 points), which run on the gather-GEMM kernel as
one 1 x 1 conv with 36 groups.  This file holds the two transforms around it:

  "Pad"  Pad[n, c, h, u] = x[n, c, h - p_t, u - p_l], 0 outside             the plane, zero padded
  "D"    D[n, c, i, j, ty, tx] = Pad[n, c, 4 ty + i, 4 tx + j]              the 6 x 6 tiles' points
  "Z"    Z[n, c, xi, j, ty, tx] = sum_i B^T[xi, i] D[n, c, i, j, ty, tx]               B^T d
  "V"    V[e, c, n, ty, tx] = sum_j B^T[nu, j] Z[n, c, xi, j, ty, tx]      (e = 6 xi + nu)  (B^T d) B
  ...    M[e, t, n, ty, tx] = sum_c U[e, t, c] V[e, c, n, ty, tx]      (the 36-group 1 x 1 conv)
  "R"    R[n, t, a, nu, ty, tx] = sum_xi A^T[a, xi] M[6 xi + nu, t, n, ty, tx]
  "S"    S[n, t, a, b, ty, tx] = sum_nu A^T[b, nu] R[n, t, a, nu, ty, tx]
  "out"  out[n, t, 4 ty + a, 4 tx + b] = act(S[n, t, a, b, ty, tx] + bias[t] + res[...])

All stages but "D" and "out" are vector ops over all the tiles of a plane (the buffers are
contiguous over (ty, tx)); "D" reads at stride 4 (2.25 loads per input element: the tiles
overlap) and "out" reads S at stride 4.  V and M are laid
out with the image axis inside the point and map axes (``fold``), so the GEMM sees the tiles of
the whole batch as its pixels (a 7x7 map has 4 tiles per image, 128 at batch 32); a symbolic
batch keeps the image axis outermost (one image's tiles per GEMM image).  The matrices are TVM's
(topi.nn.winograd_util: interpolation points 0, -1, 1, 1/2, -1/2, infinity).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from tvm import s_tir, te, tirx
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

from .cpu_copies import partition_row, vectorize_row
from .lowering import _pad4, _pair
from .te_defs import _epilogue, clamp, fill_outside

#: output tile side m and filter side r of F(m x m, r x r); ALPHA = m + r - 1 input tile side
TILE, R = 4, 3
ALPHA = TILE + R - 1


def matrices():
    """(A^T [m, alpha], B^T [alpha, alpha], G [alpha, r]) as float64 numpy (TVM's Cook-Toom)."""
    A, B, G = _cook_toom_convolution(_interpolation_points(TILE + R - 2), TILE, R)
    return A.T, B.T, G


def applies(data_shape, weight_shape, stride, padding, dilation, groups) -> bool:
    """Whether a conv is one this kernel computes: 3x3, stride 1, dilation 1, one group, padding at
    most 2 (more would make whole tiles of zeros)."""
    return (
        tuple(int(v) for v in weight_shape[2:]) == (R, R)
        and _pair(stride) == (1, 1)
        and _pair(dilation) == (1, 1)
        and int(groups) == 1
        and max(_pad4(padding)) <= 2
    )


def dims(data_shape, padding):
    """The tile grid of a conv: SimpleNamespace(N, C, H, W, OH, OW, th, tw, pt, pl, fold)."""
    N = data_shape[0]
    C, H, W = (int(v) for v in data_shape[1:])
    pt, pl, pb, pr = _pad4(padding)
    OH, OW = H + pt + pb - R + 1, W + pl + pr - R + 1
    th, tw = -(-OH // TILE), -(-OW // TILE)
    fold = isinstance(N, (int, np.integer))
    return SimpleNamespace(N=N, C=C, H=H, W=W, OH=OH, OW=OW, th=th, tw=tw, pt=pt, pl=pl, fold=fold)


def transform_weight(weight):
    """U = G g G^T per (filter, map), as the 36-group 1 x 1 conv's weight [36 T, C, 1, 1]: row
    e T + t of group e = U[e, t, :] (formula 1.25)."""
    _, _, G = matrices()
    w = np.asarray(weight, dtype=np.float64)
    T, C = w.shape[:2]
    U = np.einsum("xi,tcij,yj->xytc", G, w, G).reshape(ALPHA * ALPHA * T, C, 1, 1)
    return np.ascontiguousarray(U.astype(np.float32))


def _lin(coeffs, terms):
    """sum_k coeffs[k] * terms(k) over the non-zero coefficients (a float64 row of a matrix)."""
    acc = None
    for k, a in enumerate(coeffs):
        if a == 0:
            continue
        t = terms(k) if a == 1 else terms(k) * tirx.const(float(a), "float32")
        acc = t if acc is None else acc + t
    return acc


def _pick(rows, idx, terms):
    """The row ``idx`` (a loop variable, unrolled by the schedule) of ``rows`` as a Select chain:
    each branch has its own literal coefficients, which the simplifier resolves per unrolled step."""
    expr = _lin(rows[-1], terms)
    for r in range(len(rows) - 2, -1, -1):
        expr = tirx.Select(idx == r, _lin(rows[r], terms), expr)
    return expr


def _gemm_axes(d, e, c, n, ty, tx):
    """Index of V / M in their layout: (e, c, n, ty, tx) folded, else (n, e, c, ty, tx)."""
    return (e, c, n, ty, tx) if d.fold else (n, e, c, ty, tx)


def _logical_axes(d, axes):
    """(e, c, n, ty, tx) of the five axes of V / M in their layout order (_gemm_axes' inverse)."""
    return tuple(axes) if d.fold else (axes[1], axes[2], axes[0], axes[3], axes[4])


def _point_shape(d, chans):
    """The 5-d shape of V (chans = C) or M (chans = T), in _gemm_axes' order."""
    return _gemm_axes(d, ALPHA * ALPHA, chans, d.N, d.th, d.tw)


def input_te(d):
    """PrimFunc (x[N, C, H, W], V) of stages "Pad", "D", "Z", "V"."""
    Bt = matrices()[1]
    x = te.placeholder((d.N, d.C, d.H, d.W), "float32", name="x")
    Hp, Wp = TILE * d.th + 2, TILE * d.tw + 2

    def padded(n, c, h, u):  # branch-free zero padding, as the gather-GEMM's copy
        r, col = h - d.pt, u - d.pl
        return fill_outside(x[n, c, clamp(r, d.H), clamp(col, d.W)], tirx.all(r >= 0, r < d.H, col >= 0, col < d.W))

    Pad = te.compute((d.N, d.C, Hp, Wp), padded, name="Pad")
    D = te.compute(
        (d.N, d.C, ALPHA, ALPHA, d.th, d.tw),
        lambda n, c, i, j, ty, tx: Pad[n, c, TILE * ty + i, TILE * tx + j],
        name="D",
    )
    Z = te.compute(
        (d.N, d.C, ALPHA, ALPHA, d.th, d.tw),
        lambda n, c, xi, j, ty, tx: _pick(Bt, xi, lambda i: D[n, c, i, j, ty, tx]),
        name="Z",
    )

    def vt(*ax):
        e, c, n, ty, tx = _logical_axes(d, ax)
        xi, nu = e // ALPHA, e % ALPHA
        return _pick(Bt, nu, lambda j: Z[n, c, xi, j, ty, tx])

    V = te.compute(_point_shape(d, d.C), vt, name="V")
    return te.create_prim_func([x, V])


def output_te(d, T, has_bias, relu, residual):
    """PrimFunc (M, (bias[T]), (res[N, T, OH, OW]), out[N, T, OH, OW]) of stages "R", "S", "out"."""
    At = matrices()[0]
    M = te.placeholder(_point_shape(d, T), "float32", name="M")
    bias = te.placeholder((T,), "float32", name="bias") if has_bias else None
    res = te.placeholder((d.N, T, d.OH, d.OW), "float32", name="res") if residual else None
    Rr = te.compute(
        (d.N, T, TILE, ALPHA, d.th, d.tw),
        lambda n, t, a, nu, ty, tx: _pick(At, a, lambda xi: M[_gemm_axes(d, ALPHA * xi + nu, t, n, ty, tx)]),
        name="R",
    )
    S = te.compute(
        (d.N, T, TILE, TILE, d.th, d.tw),
        lambda n, t, a, b, ty, tx: _pick(At, b, lambda nu: Rr[n, t, a, nu, ty, tx]),
        name="S",
    )

    def epi(n, t, oh, ow):
        v = S[n, t, oh % TILE, ow % TILE, oh // TILE, ow // TILE]
        return _epilogue(v, bias[t] if has_bias else None, res[n, t, oh, ow] if residual else None, relu)

    out = te.compute((d.N, T, d.OH, d.OW), epi, name="out")
    return te.create_prim_func([M] + ([bias] if has_bias else []) + ([res] if residual else []) + [out])


def _tiles_vectorized(sch, blk, d, select_axis=None):
    """The block's last two loops (tile row, tile column) fused into one vector loop over the
    plane's tiles (the buffers are contiguous over them); ``select_axis``: the loop (counted from
    the end) that picks the matrix row, unrolled so that its coefficients are literals."""
    loops = sch.get_loops(blk)
    if select_axis is not None:
        sch.unroll(loops[-select_axis])
    vectorize_row(sch, sch.fuse(*loops[-2:]), d.th * d.tw)


def schedule_input_cpu(func, d):
    """Parallel over (image, map) planes; the plane's padded copy and its 6 x 6 tile points inside
    the task, B^T d B as vectors over the plane's tiles with the points unrolled."""
    sch = s_tir.schedule.Schedule(func)
    vblk = sch.get_sblock("V")
    e, c, n, ty, tx = _logical_axes(d, sch.get_loops(vblk))
    sch.reorder(n, c, e, ty, tx)
    plane = sch.fuse(n, c)
    sch.parallel(plane)
    for name in ("Z", "D", "Pad"):
        sch.compute_at(sch.get_sblock(name), plane)
    _tiles_vectorized(sch, vblk, d, select_axis=3)
    _tiles_vectorized(sch, sch.get_sblock("Z"), d, select_axis=4)
    pad = sch.get_sblock("Pad")
    row = sch.get_loops(pad)[-1]
    for loop in partition_row(sch, row, SimpleNamespace(W=d.W, Wp=TILE * d.tw + 2, pl=d.pl)):
        sch.vectorize(loop)
    return sch.mod["main"]


def schedule_output_cpu(func, d):
    """Parallel over (image, filter) planes; A^T M A of the plane's tiles inside the task as
    vectors over the plane's tiles, then the epilogue row by row."""
    sch = s_tir.schedule.Schedule(func)
    out = sch.get_sblock("out")
    n, t, _oh, ow = sch.get_loops(out)
    plane = sch.fuse(n, t)
    sch.parallel(plane)
    for name in ("S", "R"):
        sch.compute_at(sch.get_sblock(name), plane)
    _tiles_vectorized(sch, sch.get_sblock("R"), d, select_axis=4)
    _tiles_vectorized(sch, sch.get_sblock("S"), d, select_axis=3)
    vectorize_row(sch, ow, d.OW)
    return sch.mod["main"]


def gemm_row(npix: int) -> int:
    """Pixels per row of the 1 x 1 conv's map over ``npix`` tiles: up to 64, else the divisor in
    16..64 that its 16-pixel vectors pad least (the widest of those), else one row.  Ad-hoc timings
    (EPYC Zen 4, 2 threads) of the 36-group GEMM at 64 maps x 6272 tiles: one row 106 GFLOP/s,
    rows of 64 165; 196 tiles: one row 63, rows of 49 71, of 28 163."""
    if npix <= 64:
        return npix
    rows = [rw for rw in range(64, 15, -1) if npix % rw == 0]
    return min(rows, key=lambda rw: (-(-rw // 16) * 16 - rw) / rw) if rows else npix


def gemm_shapes(d, chans):
    """(5-d shape of V or M as the transforms index it, 4-d NCHW shape the 1 x 1 conv sees): the
    same buffer.  ``chans``: C for V, T for M."""
    five = _point_shape(d, chans)
    npix = (d.N if d.fold else 1) * d.th * d.tw
    rw = gemm_row(npix)
    return five, (1 if d.fold else d.N, ALPHA * ALPHA * chans, npix // rw, rw)


def conv2d_winograd(data_shape, weight, bias=None, *, padding=(0, 0, 0, 0), relu=False, residual=False, target):
    """The three kernels of a Winograd conv (``applies``): SimpleNamespace(stages, shapes) with
    ``stages`` = [(input PrimFunc, []), (GEMM PrimFunc, its consts), (output PrimFunc, [bias])]
    and ``shapes`` = (V 5-d, V 4-d, M 4-d, M 5-d): the input kernel writes V 5-d, which the GEMM reads
    as V 4-d (a reshape, no copy); the GEMM writes M 4-d, which the output kernel reads as M 5-d.
    The output kernel takes ``res[N, T, OH, OW]`` after the bias where ``residual``."""
    from .gather_gemm import _batch_dim, _finish, conv2d_gather_gemm

    weight = np.asarray(weight, dtype=np.float32)
    T = weight.shape[0]
    shape = (_batch_dim(data_shape[0]), *(int(v) for v in data_shape[1:]))
    d = dims(shape, padding)
    v5, v4 = gemm_shapes(d, d.C)
    m5, m4 = gemm_shapes(d, T)
    gemm, gconsts = conv2d_gather_gemm(v4, transform_weight(weight), None, groups=ALPHA * ALPHA, target=target)
    fin = _finish(schedule_input_cpu(input_te(d), d), target)
    fout = _finish(schedule_output_cpu(output_te(d, T, bias is not None, relu, residual), d), target)
    bconst = [] if bias is None else [np.ascontiguousarray(np.asarray(bias, dtype=np.float32).reshape(T))]
    return SimpleNamespace(stages=[(fin, []), (gemm, gconsts), (fout, bconst)], shapes=(v5, v4, m4, m5), dims=d)
