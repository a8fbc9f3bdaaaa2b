"""Kernel library tests: the gather-GEMM conv (paper 000 section 3) and the dense GEMM against
PyTorch, compiled for LLVM and run through tvm.runtime; CUDA kernels are built (not run) without
a GPU and checked for shared memory / thread bindings."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import tvm

from lightning_gbd.core.groups import conv_flops, group_mask
from tvm_passes.kernels import compile_kernel, conv2d_gather_gemm, conv_output_size, dense_gemm, lower_conv

LLVM = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4", "num-cores": 2}
CUDA = {"kind": "cuda", "arch": "sm_90"}
TOL = 1e-4


def gbd_weight(T, Cg, kh, kw, density, groups=1, seed=0, dead_maps=(), dead_groups=()):
    """Random weight with GBD groups (s, i, j) zeroed at random (keep prob = density), input maps
    in ``dead_maps`` fully zero, and conv groups in ``dead_groups`` with no surviving entry."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((T, Cg, kh, kw)).astype(np.float32)
    Tg = T // groups
    w = w.reshape(groups, Tg, Cg, kh, kw)
    if density < 1.0:
        keep = rng.random((groups, Cg, kh, kw)) < density
        keep.reshape(-1)[rng.integers(keep.size)] = True
        w = w * keep[:, None]
    for c in dead_maps:
        w[c // Cg, :, c % Cg] = 0
    for g in dead_groups:
        w[g] = 0
    return np.ascontiguousarray(w.reshape(T, Cg, kh, kw))


def ref_conv(x, w, b, stride, padding, dilation, groups, relu):
    pt, pl, pb, pr = padding
    xt = torch.nn.functional.pad(torch.from_numpy(x), (pl, pr, pt, pb))
    y = torch.nn.functional.conv2d(
        xt,
        torch.from_numpy(w),
        None if b is None else torch.from_numpy(b),
        stride=stride,
        dilation=dilation,
        groups=groups,
    )
    return (y.relu() if relu else y).numpy()


def run_llvm(func, inputs, out_shape, target=LLVM, out_dtype="float32", inplace=False):
    """The kernel's output for ``inputs``.  ``inplace``: the last input is the residual, and the
    kernel is run a second time with that buffer as its output too (passes.InplaceResidual), which
    must give the same output bit for bit."""
    lib = compile_kernel(func, target)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
    fill = np.nan if out_dtype == "float32" else 77  # what a kernel failing to write leaves
    out = tvm.runtime.tensor(np.full(out_shape, fill, out_dtype), dev)
    lib(*args, out)
    if inplace:
        lib(*args, args[-1])
        assert np.array_equal(args[-1].numpy(), out.numpy()), "output written over the residual differs"
    return out.numpy()


def rel_err(out, ref):
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-30))


# (N, C, H, W, T, kh, kw, stride, padding(t,l,b,r), dilation, groups)
CONV_CASES = {
    "1x1": (1, 16, 7, 7, 24, 1, 1, 1, (0, 0, 0, 0), 1, 1),
    "1x1_s2": (2, 8, 9, 9, 16, 1, 1, 2, (0, 0, 0, 0), 1, 1),
    "3x3_same": (1, 16, 9, 9, 20, 3, 3, 1, (1, 1, 1, 1), 1, 1),
    "3x3_valid_b8": (8, 6, 8, 10, 7, 3, 3, 1, (0, 0, 0, 0), 1, 1),
    "3x3_s2_same": (2, 12, 11, 11, 16, 3, 3, 2, (1, 1, 1, 1), 1, 1),
    "3x3_dil2": (1, 8, 12, 12, 8, 3, 3, 1, (2, 2, 2, 2), 2, 1),
    "3x3_asym_s2_dil2": (2, 8, 13, 10, 9, 3, 3, 2, (1, 0, 2, 1), 2, 1),
    "5x5_pad2": (2, 16, 13, 13, 24, 5, 5, 1, (2, 2, 2, 2), 1, 1),
    "7x7_s2_pad3": (1, 3, 20, 20, 16, 7, 7, 2, (3, 3, 3, 3), 1, 1),
    "1x7_same": (1, 8, 9, 9, 12, 1, 7, 1, (0, 3, 0, 3), 1, 1),
    "3x3_groups2": (2, 8, 9, 9, 12, 3, 3, 1, (1, 1, 1, 1), 1, 2),
    "3x3_depthwise": (1, 16, 9, 9, 16, 3, 3, 1, (1, 1, 1, 1), 1, 16),
    "3x3_depthwise_s2": (8, 8, 10, 10, 8, 3, 3, 2, (1, 1, 1, 1), 1, 8),
    "3x3_dw_mult2": (1, 8, 9, 9, 16, 3, 3, 1, (1, 1, 1, 1), 1, 8),
    "5x5_groups2_asym": (1, 8, 10, 11, 6, 5, 5, 1, (2, 1, 1, 2), 1, 2),
    # output rows of 16 / 14 / 8 pixels: row-aligned gather (no pixel table), also strided
    "3x3_rows16_b8": (8, 4, 16, 16, 10, 3, 3, 1, (1, 1, 1, 1), 1, 1),
    "3x3_rows15_s2": (1, 8, 30, 29, 16, 3, 3, 2, (1, 1, 1, 1), 1, 1),
    "3x3_rows16_dil2": (2, 4, 16, 16, 8, 3, 3, 1, (2, 2, 2, 2), 2, 1),
    "7x7_rows8_s2": (1, 3, 21, 21, 8, 7, 7, 2, (3, 3, 3, 3), 1, 1),
    # phase planes (formula 1.24) made per image inside whole-image tasks (batch >= 4 per thread)
    "7x7_s2_b8_image_tasks": (8, 3, 31, 31, 16, 7, 7, 2, (3, 3, 3, 3), 1, 1),
    "7x7_to_1x1": (2, 8, 7, 7, 10, 7, 7, 1, (0, 0, 0, 0), 1, 1),
    "3x3_s3_1px": (1, 4, 1, 1, 5, 3, 3, 3, (1, 1, 1, 1), 1, 1),
}
DENSITIES = [1.0, 0.5, 0.2, 0.05]


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_llvm(case, density):
    N, C, H, W, T, kh, kw, s, pad, d, g = CONV_CASES[case]
    w = gbd_weight(T, C // g, kh, kw, density, groups=g, seed=zlib.crc32(case.encode()) % 1000)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    relu = density in (0.5, 0.05)
    use_bias = density != 0.2
    func, consts = conv2d_gather_gemm(
        x.shape,
        w,
        b if use_bias else None,
        stride=(s, s),
        padding=pad,
        dilation=(d, d),
        groups=g,
        relu=relu,
        target=LLVM,
    )
    assert isinstance(func, tvm.tirx.PrimFunc)
    assert len(func.params) == 2 + len(consts)
    ref = ref_conv(x, w, b if use_bias else None, s, pad, d, g, relu)
    out = run_llvm(func, [x, *consts], ref.shape)
    assert rel_err(out, ref) <= TOL


def test_conv_dead_maps_and_dead_group():
    # groups=2: group 1 has no surviving entry (output = bias), some maps of group 0 are dead.
    N, C, H, W, T, g = 2, 8, 9, 9, 10, 2
    w = gbd_weight(T, C // g, 3, 3, 0.6, groups=g, dead_maps=(0, 2), dead_groups=(1,))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    # poison the dead input maps: they must never be read (NaN would propagate otherwise)
    x[:, [0, 2, 4, 5, 6, 7]] = np.nan
    func, consts = conv2d_gather_gemm(x.shape, w, b, padding=(1, 1, 1, 1), groups=g, relu=True, target=LLVM)
    geom = lower_conv(x.shape, w, padding=(1, 1, 1, 1), groups=g)[0]
    assert geom.L == 2 and geom.K_per_group[1] == 0
    ref = ref_conv(np.nan_to_num(x, nan=0.0), w, b, 1, (1, 1, 1, 1), 1, g, True)
    out = run_llvm(func, [x, *consts], ref.shape)
    assert np.isfinite(out).all()
    assert rel_err(out, ref) <= TOL
    np.testing.assert_allclose(
        out[:, 5:], np.broadcast_to(np.maximum(b[5:], 0)[None, :, None, None], out[:, 5:].shape), rtol=0, atol=0
    )


def test_conv_all_zero_weight():
    w = np.zeros((4, 3, 3, 3), np.float32)
    x = np.random.default_rng(0).standard_normal((1, 3, 6, 6)).astype(np.float32)
    b = np.arange(4, dtype=np.float32) - 1.5
    func, consts = conv2d_gather_gemm(x.shape, w, b, target=LLVM)
    out = run_llvm(func, [x, *consts], (1, 4, 4, 4))
    np.testing.assert_array_equal(out, np.broadcast_to(b[None, :, None, None], out.shape))


def test_conv_bigger_layer():
    """A mid-size layer (several n-chunks, t-chunks and K > 1 cache block)."""
    N, C, H, W, T = 2, 64, 15, 15, 70
    w = gbd_weight(T, C, 5, 5, 0.3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    func, consts = conv2d_gather_gemm(x.shape, w, b, padding=(2, 2, 2, 2), target=LLVM)
    ref = ref_conv(x, w, b, 1, (2, 2, 2, 2), 1, 1, False)
    assert rel_err(run_llvm(func, [x, *consts], ref.shape), ref) <= TOL


@pytest.mark.parametrize("M,K,O", [(1, 64, 10), (8, 100, 37), (5, 300, 96), (16, 512, 130), (23, 70, 40)])
@pytest.mark.parametrize("bias,relu", [(True, False), (False, True)])
def test_dense_llvm(M, K, O, bias, relu):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((O, K)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    func, consts = dense_gemm(x.shape, w, b if bias else None, relu=relu, target=LLVM)
    ref = x @ w.T + (b if bias else 0)
    if relu:
        ref = np.maximum(ref, 0)
    out = run_llvm(func, [x, *consts], (M, O))
    assert rel_err(out, ref) <= TOL


def test_row_aligned_mode_is_used():
    w = gbd_weight(8, 4, 3, 3, 1.0)
    assert lower_conv((1, 4, 16, 16), w, padding=(1, 1, 1, 1), row_align=(16, 8))[0].OWP == 16
    assert lower_conv((1, 4, 7, 7), w, padding=(1, 1, 1, 1), row_align=(16, 8))[0].OWP == 8
    assert lower_conv((1, 4, 11, 11), w, padding=(1, 1, 1, 1), row_align=(16, 8))[0].OWP == 0


@pytest.mark.parametrize("HW", [24, 56])
def test_rows_that_are_not_whole_vectors(HW):
    """56-pixel rows are numbered 56 apart, not padded to 64 (12.5% of the GEMM), and gathered
    row by row as 3 x 16 + 8 lanes (cpu_copies.schedule_row_gather)."""
    from tvm_passes.kernels import cpu

    w = gbd_weight(16, 6, 3, 3, 0.5, seed=5)
    geom = lower_conv((2, 6, HW, HW), w, padding=(1, 1, 1, 1), **cpu.lowering_params(16))[0]
    assert geom.OWP == HW and geom.NRP and geom.NP == geom.NRP * HW
    if HW == 56:
        assert geom.NP == 56 * 56  # no padded pixel at all
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 6, HW, HW)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    func, consts = conv2d_gather_gemm(x.shape, w, b, padding=(1, 1, 1, 1), relu=True, target=LLVM)
    ref = ref_conv(x, w, b, 1, (1, 1, 1, 1), 1, 1, True)
    assert rel_err(run_llvm(func, [x, *consts], ref.shape), ref) <= TOL


def test_short_reductions_keep_8x32_tiles():
    """A conv with fewer than cpu.WIDE_MIN_K gather rows takes 8 x 32 tiles even where 32 divides its
    outputs (cpu.short_reduction_params): a 1x1 64 -> 64 conv."""
    from tvm_passes.kernels import cpu

    w = gbd_weight(64, 64, 1, 1, 1.0, seed=2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 64, 28, 28)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    assert cpu.lowering_params(64)["TI"] == cpu.WIDE_TI
    func, consts = conv2d_gather_gemm(x.shape, w, b, relu=True, target=LLVM)
    assert consts[0].shape[-1] == 8  # F [G, TO, KP, 8]
    ref = ref_conv(x, w, b, 1, (0, 0, 0, 0), 1, 1, True)
    assert rel_err(run_llvm(func, [x, *consts], ref.shape), ref) <= TOL


# (N, C, T, density): 28x28 3x3 convs on 16 x 16 register tiles: one k block (epilogue per tile)
# at batch 1 and 8, two k blocks (C = 160 dense: 1440 rows, epilogue per task), a dead map
EXACT_28 = [(1, 64, 32, 0.5), (8, 64, 32, 0.5), (2, 160, 32, 1.0)]


@pytest.mark.parametrize("N,C,T,density", EXACT_28)
def test_16x16_tiles_keep_28_pixel_rows_unpadded(N, C, T, density):
    """Where 16 divides a group's outputs the float32 kernel takes 16 x 16 register tiles
    (cpu.lowering_params), and then a 28-pixel row stays 28 pixels (cpu.exact_row_params): 784
    pixels computed, not 896; outputs with bias, residual and ReLU match."""
    from tvm_passes.kernels import cpu

    w = gbd_weight(T, C, 3, 3, density, seed=C, dead_maps=(1,))
    rng = np.random.default_rng(C)
    x = rng.standard_normal((N, C, 28, 28)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    pad = (1, 1, 1, 1)
    padded = lower_conv(x.shape, w, padding=pad, **cpu.lowering_params(T))[0]
    assert (padded.TI, padded.NV, padded.OWP) == (16, 16, 32)
    geom = lower_conv(x.shape, w, padding=pad, **cpu.exact_row_params(padded, cpu.lowering_params(T)))[0]
    assert geom.OWP == 28 and geom.NP == 28 * 28
    func, consts = conv2d_gather_gemm(x.shape, w, b, padding=pad, relu=True, residual=True, target=LLVM)
    assert consts[0].shape[-1] == 16 and len(consts) == 4  # F [G, TO, KP, 16], live, off, bias: no base table
    ref = ref_conv(x, w, b, 1, pad, 1, 1, False)
    res = rng.standard_normal(ref.shape).astype(np.float32)
    assert rel_err(run_llvm(func, [x, *consts, res], ref.shape, inplace=True), np.maximum(ref + res, 0)) <= TOL


@pytest.mark.parametrize("C,T,k,HW", [(6, 16, 3, 100), (8, 32, 5, 27)])
def test_rows_in_chunks_that_cross_rows(C, T, k, HW):
    """Row-aligned numbering whose chunks are not whole rows (100-pixel rows padded to 104: 13
    tiles a row, more than a chunk holds) takes the batch-wide padded copy even at a whole-image
    task batch (cpu.image_tasks; the per-image copy failed to schedule), and a 27-pixel row is not
    kept unpadded where its chunks would not be whole rows (cpu.exact_row_params)."""
    from tvm_passes.kernels import cpu

    n, pad = cpu.IMAGE_TASKS * LLVM["num-cores"], (k // 2,) * 4
    w = gbd_weight(T, C, k, k, 0.5, seed=HW)
    geom = lower_conv((n, C, HW, HW), w, padding=pad, **cpu.lowering_params(T))[0]
    assert geom.OWP > geom.OW
    rng = np.random.default_rng(HW)
    x = rng.standard_normal((n, C, HW, HW)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    func, consts = conv2d_gather_gemm(x.shape, w, b, padding=pad, relu=True, target=LLVM)
    ref = ref_conv(x, w, b, 1, pad, 1, 1, True)
    assert rel_err(run_llvm(func, [x, *consts], ref.shape), ref) <= TOL


@pytest.mark.parametrize("C,T,k,HW,s", [(8, 16, 3, 16, 1), (5, 7, 1, 24, 1), (6, 16, 3, 32, 2)])
def test_whole_image_tasks(C, T, k, HW, s):
    """From IMAGE_TASKS images per thread each parallel task is one image, whose padded copy is made
    inside the task (cpu.image_tasks): 3x3 with a dead map, 1x1 with a part-filled filter tile, and
    3x3 at stride 2 (whole input rows copied per k block, then shuffled: te_defs.strided_rows);
    bias, residual and ReLU in the fused epilogue."""
    from tvm_passes.kernels import cpu
    from tvm_passes.kernels.te_defs import strided_rows

    nthreads = LLVM["num-cores"]
    n, pad = cpu.IMAGE_TASKS * nthreads, (k // 2,) * 4
    w = gbd_weight(T, C, k, k, 0.5, seed=7, dead_maps=(1,))
    geom = lower_conv((n, C, HW, HW), w, stride=(s, s), padding=pad, **cpu.lowering_params(T))[0]
    assert cpu.image_tasks(geom, nthreads) and strided_rows(geom) == (s == 2)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((n, C, HW, HW)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    ref = ref_conv(x, w, b, s, pad, 1, 1, False)
    res = rng.standard_normal(ref.shape).astype(np.float32)
    func, consts = conv2d_gather_gemm(x.shape, w, b, stride=(s, s), padding=pad, relu=True, residual=True, target=LLVM)
    assert rel_err(run_llvm(func, [x, *consts, res], ref.shape, inplace=True), np.maximum(ref + res, 0)) <= TOL


@pytest.mark.parametrize("N,T", [(1, 37), (8, 45)])
def test_padded_8_row_filter_tiles(N, T):
    """From cpu.MIN_PADDED_8 outputs a group takes 8-row filter tiles even where 8 does not divide
    them (the last tile padded with zero filters); the padded filters' outputs are never stored
    (one task per t-chunk at batch 1, whole-image tasks at batch 8)."""
    from tvm_passes.kernels import cpu

    w = gbd_weight(T, 24, 3, 3, 0.4, seed=T)
    rng = np.random.default_rng(T)
    x = rng.standard_normal((N, 24, 28, 28)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    pad = (1, 1, 1, 1)
    func, consts = conv2d_gather_gemm(x.shape, w, b, padding=pad, relu=True, residual=True, target=LLVM)
    assert T >= cpu.MIN_PADDED_8 and consts[0].shape[-1] == 8  # F [G, TO, KP, TI]
    ref = ref_conv(x, w, b, 1, pad, 1, 1, False)
    res = rng.standard_normal(ref.shape).astype(np.float32)
    assert rel_err(run_llvm(func, [x, *consts, res], ref.shape, inplace=True), np.maximum(ref + res, 0)) <= TOL


# (N, C, H, T, k, stride, density): 7x7 output maps (64 pixels for 49 in 8 x 32 tiles), dense and
# sparse, one and several k blocks, stride 2, a batch with whole-image tasks; outputs that are no
# multiple of 32 (the last tile padded with zero filters: 154 -> 160, 60 -> 64)
SMALL_MAPS = [
    (1, 64, 7, 64, 3, 1, 1.0),
    (1, 96, 14, 64, 3, 2, 0.3),
    (8, 40, 7, 32, 1, 1, 1.0),
    (2, 16, 7, 96, 3, 1, 0.5),
    (2, 48, 7, 154, 3, 1, 0.3),
    (8, 72, 7, 60, 1, 1, 0.3),
]


@pytest.mark.parametrize("N,C,H,T,k,s,density", SMALL_MAPS)
def test_small_maps_pixel_channel_tile(N, C, H, T, k, s, density):
    """7x7 maps take the pixel x channel register tile of cpu_small (no padded pixels) and match
    PyTorch with bias, residual and ReLU fused."""
    from tvm_passes.kernels import cpu_small

    w = gbd_weight(T, C, k, k, density, seed=N + C)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    pad = (k // 2,) * 4
    func, consts = conv2d_gather_gemm(x.shape, w, b, stride=(s, s), padding=pad, relu=True, residual=True, target=LLVM)
    assert consts[0].shape[-1] == cpu_small.TILE_T  # F [G, TO, KP, TI]: 32-filter tiles
    ref = ref_conv(x, w, b, s, pad, 1, 1, False)
    res = rng.standard_normal(ref.shape).astype(np.float32)
    out = run_llvm(func, [x, *consts, res], ref.shape, inplace=True)
    assert rel_err(out, np.maximum(ref + res, 0)) <= TOL


# (N, C, H, T, density, residual): 1x1 convs whose gathered rows are rows of the input (no padded
# copy): rows of 28 (not a multiple of 8), dead input maps and padded reduction rows, 56 x 56
DIRECT_1X1 = [(1, 16, 28, 24, 0.5, False), (4, 12, 14, 40, 1.0, True), (2, 24, 56, 16, 0.3, True)]


@pytest.mark.parametrize("N,C,H,T,density,residual", DIRECT_1X1)
def test_1x1_reads_input_directly(N, C, H, T, density, residual):
    w = gbd_weight(T, C, 1, 1, density, seed=C, dead_maps=(1, 3))
    rng = np.random.default_rng(4)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    func, consts = conv2d_gather_gemm(x.shape, w, b, relu=True, residual=residual, target=LLVM)
    assert 'sblock("Dp")' not in func.script()  # no padded copy
    ref = ref_conv(x, w, b, 1, (0, 0, 0, 0), 1, 1, False)
    res = rng.standard_normal(ref.shape).astype(np.float32)
    out = run_llvm(func, [x, *consts] + ([res] if residual else []), ref.shape, inplace=residual)
    assert rel_err(out, np.maximum(ref + res if residual else ref, 0)) <= TOL


# (N, C, H, T, k, stride, density, residual, relu): convs with one k block on flat maps of whole
# vectors, whose fused epilogue runs on each register tile (cpu.tile_epilogue): 1x1, 3x3, stride 2,
# 6-filter tiles (T = 30), ReLU6 and no activation, a 20x20 map ending in half a tile
TILE_EPILOGUE = [
    (2, 16, 16, 24, 1, 1, 1.0, True, True),
    (3, 8, 20, 16, 1, 1, 1.0, True, True),
    (1, 12, 32, 30, 3, 1, 0.4, True, 6.0),
    (2, 8, 32, 16, 3, 2, 0.5, False, True),
    (1, 16, 16, 48, 1, 1, 0.5, False, False),
]


@pytest.mark.parametrize("N,C,H,T,k,s,density,residual,relu", TILE_EPILOGUE)
def test_epilogue_per_register_tile(N, C, H, T, k, s, density, residual, relu, monkeypatch):
    from tvm_passes.kernels import cpu

    taken = []
    monkeypatch.setattr(cpu, "tile_epilogue", lambda g, f=cpu.tile_epilogue: taken.append(f(g)) or taken[-1])
    w = gbd_weight(T, C, k, k, density, seed=T, dead_maps=(1,))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    pad = (k // 2,) * 4
    func, consts = conv2d_gather_gemm(
        x.shape, w, b, stride=(s, s), padding=pad, relu=relu, residual=residual, target=LLVM
    )
    assert taken == [True]
    ref = ref_conv(x, w, b, s, pad, 1, 1, False)
    res = rng.standard_normal(ref.shape).astype(np.float32) if residual else 0
    out = run_llvm(func, [x, *consts] + ([res] if residual else []), ref.shape, inplace=residual)
    want = ref + res
    want = want if relu is False else np.clip(want, 0, None if relu is True else relu)
    assert rel_err(out, want) <= TOL


def test_stride2_stem_gathers_from_phase_planes():
    """A 7x7 stride-2 conv is lowered onto 2 x 2 phase planes (formula 1.24): every gather row
    steps by one along a plane, and its offsets point into the plane of the tap's parity; a 3x3
    stride-2 conv keeps the plain padded copy.  (Numerics: the 7x7 stride-2 cases of test_conv_llvm.)"""
    from tvm_passes.kernels import cpu

    w = gbd_weight(8, 3, 7, 7, 1.0)
    geom, _, _, off, _ = lower_conv((1, 3, 21, 21), w, stride=(2, 2), padding=(3, 3, 3, 3), **cpu.lowering_params(8))
    assert geom.PH == 2 and (geom.gsh, geom.gsw) == (1, 1) and geom.Wq == (geom.Wp + 1) // 2
    plane = geom.Hq * geom.Wq
    taps = [(s, i, j) for s in range(3) for i in range(7) for j in range(7)]  # the gather order, density 1
    want = [s * geom.map_len + ((i % 2) * 2 + j % 2) * plane + (i // 2) * geom.Wq + j // 2 for s, i, j in taps]
    assert off[0, : len(taps)].tolist() == want
    w3 = gbd_weight(8, 3, 3, 3, 1.0)
    assert lower_conv((1, 3, 21, 21), w3, stride=(2, 2), padding=(1, 1, 1, 1), **cpu.lowering_params(8))[0].PH == 1


@pytest.mark.parametrize(
    "N,C,H,k,s,pad,d,bias,relu",
    [
        (2, 8, 9, 3, 1, (1, 1, 1, 1), 1, True, 6.0),
        (2, 8, 10, 3, 2, (1, 1, 1, 1), 1, False, True),
        (1, 16, 12, 5, 2, (2, 1, 2, 3), 1, True, False),
        (1, 4, 11, 3, 1, (2, 2, 2, 2), 2, True, 6.0),
        (3, 6, 7, 3, 3, (0, 0, 0, 0), 1, False, False),
        # flat (rows under 16 pixels at stride 1, formula 1.26): MobileNet's 14x14, a 3x3 map,
        # asymmetric padding of the same reach, a 5x5 kernel
        (2, 6, 14, 3, 1, (1, 1, 1, 1), 1, True, 6.0),
        (1, 4, 3, 3, 1, (1, 1, 1, 1), 1, True, 6.0),
        (1, 3, 13, 3, 1, (0, 2, 2, 0), 1, False, True),
        (1, 3, 7, 5, 1, (2, 1, 2, 3), 1, True, False),
    ],
)
def test_depthwise_llvm(N, C, H, k, s, pad, d, bias, relu):
    """The direct depthwise kernel against PyTorch: strides 1-3, asymmetric padding, dilation,
    bias, ReLU / ReLU6; a GBD-sparse weight (zero taps) as the pass hands it over."""
    from tvm_passes.kernels import depthwise_conv2d

    w = gbd_weight(C, 1, k, k, 0.6, groups=C, seed=9)
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((N, C, H, H)) * 4).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    func, consts = depthwise_conv2d(
        x.shape, w, b if bias else None, stride=(s, s), padding=pad, dilation=(d, d), relu=relu
    )
    ref = ref_conv(x, w, b if bias else None, s, pad, d, C, relu is not False)
    if relu is not True and relu is not False:
        ref = np.minimum(ref, relu)
    assert rel_err(run_llvm(func, [x, *consts], ref.shape), ref) <= TOL


def test_depthwise_flat_choice():
    """The flat kernel takes stride-1 convs whose rows keep their length and are under one vector;
    its column masks zero exactly the taps that cross a row edge."""
    from tvm_passes.kernels.depthwise import column_masks, is_flat

    assert is_flat((1, 8, 14, 14), 3, 3, 1, (1, 1, 1, 1), 1)
    assert not is_flat((1, 8, 28, 28), 3, 3, 1, (1, 1, 1, 1), 1)  # whole 4-lane vectors: row-wise
    assert not is_flat((1, 8, 14, 14), 3, 3, 2, (1, 1, 1, 1), 1)
    assert not is_flat((1, 8, 14, 14), 3, 3, 1, (0, 0, 0, 0), 1)  # rows shrink
    m = column_masks(2, 4, 3, 1, 1)
    assert m.shape == (3, 8)
    assert m[0].tolist() == [0, -1, -1, -1] * 2 and m[1].tolist() == [-1] * 8 and m[2].tolist() == [-1, -1, -1, 0] * 2


def test_depthwise_llvm_uneven():
    """2x1 taps, strides (1, 2), dilation 2, a 8x4 input: the padded row's copy is shorter than
    the full padded row (found by a random search: the row partition had asked for more)."""
    from tvm_passes.kernels import depthwise_conv2d

    rng = np.random.default_rng(26)
    w = rng.standard_normal((5, 1, 2, 1)).astype(np.float32)
    x = rng.standard_normal((3, 5, 8, 4)).astype(np.float32)
    pad = (1, 1, 2, 1)
    func, consts = depthwise_conv2d(x.shape, w, None, stride=(1, 2), padding=pad, dilation=(2, 2))
    xt = torch.nn.functional.pad(torch.from_numpy(x), (pad[1], pad[3], pad[0], pad[2]))
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(w), stride=(1, 2), dilation=(2, 2), groups=5).numpy()
    assert rel_err(run_llvm(func, [x, *consts], ref.shape), ref) <= TOL


def test_relax_call_tir_two_kernels():
    """The way the Relax passes use the library: several kernels in one module via call_tir."""
    from tvm import relax
    from tvm.script import relax as R

    rng = np.random.default_rng(0)
    w1 = gbd_weight(8, 3, 3, 3, 0.5)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((10, 8 * 6 * 6)).astype(np.float32)
    f1, c1 = conv2d_gather_gemm((2, 3, 8, 8), w1, b1, relu=True, target=LLVM)
    f2, c2 = dense_gemm((2, 288), w2, None, target=LLVM)
    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor((2, 3, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            g1 = bb.add_func(f1, "conv1")
            g2 = bb.add_func(f2, "fc")
            y = bb.emit(relax.call_tir(g1, [x] + [relax.const(c) for c in c1], R.Tensor((2, 8, 6, 6), "float32")))
            y = bb.emit(R.reshape(y, (2, 288)))
            z = bb.emit(relax.call_tir(g2, [y] + [relax.const(c) for c in c2], R.Tensor((2, 10), "float32")))
            o = bb.emit_output(z)
        bb.emit_func_output(o)
    ex = tvm.compile(bb.get(), target=tvm.target.Target(LLVM))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xn = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = vm["main"](tvm.runtime.tensor(xn)).numpy()
    ref = ref_conv(xn, w1, b1, 1, (0, 0, 0, 0), 1, 1, True).reshape(2, -1) @ w2.T
    assert rel_err(out, ref) <= TOL


def test_flops_helper():
    w = gbd_weight(8, 4, 3, 3, 1.0)
    w[:, 0, 1, 1] = 0
    assert conv_flops(w.shape, (5, 5), mask=group_mask(w), batch=2) == 2 * 8 * 35 * 2 * 25
    assert conv_flops(w.shape, (5, 5), batch=2) == 2 * 8 * 36 * 2 * 25
    assert conv_output_size(27, 27, 5, 5, 1, (2, 2, 2, 2), 1) == (27, 27)


# ---------------------------------------------------------------- CUDA
CUDA_CASES = {
    "3x3_same": (2, 16, 9, 9, 20, 3, 3, 1, (1, 1, 1, 1), 1, 1, 0.5),
    "5x5_dense": (1, 8, 13, 13, 24, 5, 5, 1, (2, 2, 2, 2), 1, 1, 1.0),
    "3x3_s2_dil2_asym": (2, 8, 13, 10, 9, 3, 3, 2, (1, 0, 2, 1), 2, 1, 0.2),
    "depthwise": (1, 16, 9, 9, 16, 3, 3, 1, (1, 1, 1, 1), 1, 16, 1.0),
    "1x1": (1, 16, 7, 7, 24, 1, 1, 1, (0, 0, 0, 0), 1, 1, 1.0),
}


def _cuda_source(lib):
    mods = [lib.mod] + list(lib.mod.imports)
    srcs = []
    for m in mods:
        try:
            srcs.append(m.inspect_source())
        except Exception:
            pass
        for sub in m.imports:
            try:
                srcs.append(sub.inspect_source())
            except Exception:
                pass
    return "\n".join(srcs)


def _cuda_conv(case):
    N, C, H, W, T, kh, kw, s, pad, d, g, density = CUDA_CASES[case]
    w = gbd_weight(T, C // g, kh, kw, density, groups=g)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    func, consts = conv2d_gather_gemm(
        x.shape, w, b, stride=(s, s), padding=pad, dilation=(d, d), groups=g, relu=True, target=CUDA
    )
    lib = compile_kernel(func, CUDA)
    return lib, x, w, b, consts, (s, pad, d, g)


@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_conv_cuda_builds(case):
    lib = _cuda_conv(case)[0]
    src = _cuda_source(lib)
    assert "__global__" in src
    assert "__shared__" in src
    assert "threadIdx.x" in src and "blockIdx.x" in src


def test_dense_cuda_builds():
    w = np.random.default_rng(0).standard_normal((70, 96)).astype(np.float32)
    func, consts = dense_gemm((5, 96), w, np.zeros(70, np.float32), relu=True, target=CUDA)
    lib = compile_kernel(func, CUDA)
    src = _cuda_source(lib)
    assert "__global__" in src and "threadIdx.x" in src and "__shared__" in src


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(CUDA_CASES))
def test_conv_cuda_numerics(case):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    lib, x, w, b, consts, (s, pad, d, g) = _cuda_conv(case)
    ref = ref_conv(x, w, b, s, pad, d, g, True)
    dev = tvm.cuda(0)
    args = [tvm.runtime.tensor(a, dev) for a in [x, *consts]]
    out = tvm.runtime.tensor(np.zeros(ref.shape, np.float32), dev)
    lib(*args, out)
    assert rel_err(out.numpy(), ref) <= TOL


@pytest.mark.gpu
def test_dense_cuda_numerics():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    w = rng.standard_normal((70, 96)).astype(np.float32)
    b = rng.standard_normal(70).astype(np.float32)
    func, consts = dense_gemm(x.shape, w, b, relu=True, target=CUDA)
    lib = compile_kernel(func, CUDA)
    dev = tvm.cuda(0)
    args = [tvm.runtime.tensor(a, dev) for a in [x, *consts]]
    out = tvm.runtime.tensor(np.zeros((5, 70), np.float32), dev)
    lib(*args, out)
    assert rel_err(out.numpy(), np.maximum(x @ w.T + b, 0)) <= TOL


@pytest.mark.parametrize(
    "shape,k,s,p,dtype",
    [
        ((2, 5, 40, 40), 3, 2, 1, "float32"),  # ResNet's stem pooling: rows of 16-blocks plus a rest
        ((2, 5, 40, 40), 3, 2, 1, "uint8"),
        ((1, 3, 13, 10), 2, 2, 0, "float32"),  # VGG's, odd sizes
        ((1, 3, 14, 14), 3, 1, 1, "uint8"),
        ((1, 4, 30, 37), 3, 2, 1, "float32"),
    ],
)
def test_max_pool_kernel_matches_torch(shape, k, s, p, dtype):
    from tvm_passes.kernels import max_pool2d

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(dtype) if dtype == "uint8" else rng.standard_normal(shape).astype(dtype)
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x.astype(np.float32)), k, s, p).numpy()
    lib = compile_kernel(max_pool2d(shape, (k, k), (s, s), (p,) * 4, dtype), LLVM)
    out = tvm.runtime.tensor(np.zeros(ref.shape, dtype))
    lib(tvm.runtime.tensor(x), out)
    assert np.array_equal(out.numpy().astype(np.float32), ref)


def test_max_pool_kernel_refuses_windows_outside_the_input():
    from tvm_passes.kernels import max_pool2d

    with pytest.raises(ValueError, match="leaves windows outside the input"):
        max_pool2d((1, 1, 8, 8), (2, 2), (2, 2), (2, 2, 2, 2))
