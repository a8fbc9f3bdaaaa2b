"""Tensor-core CUDA kernels (``tvm_passes/kernels/cuda_tc.py``): every dtype x kernel family is
built for sm_90 and its CUDA source checked for the tensor-core instructions (default run, no GPU
needed); the fragment layouts of the tf32 intrinsics against the PTX ISA tables; numerics over a
grid of conv cases and linear layers against PyTorch on the same GPU (``-m gpu``)."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import tvm

from tests.test_kernels import CONV_CASES, gbd_weight, rel_err
from tvm_passes.artifact import kernel_tolerance
from tvm_passes.kernels import compile_kernel, conv2d_gather_gemm, dense_gemm, tc_intrin
from tvm_passes.kernels.gather_gemm import operand_array

CUDA = {"kind": "cuda", "arch": "sm_90"}
LLVM = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4", "num-cores": 2}
TC_DTYPES = ["tf32", "float16", "bfloat16"]
#: the PTX type of each dtype's ``mma.sync`` (f32 accumulators)
MMA = {
    "tf32": "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
    "float16": "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
    "bfloat16": "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
}


def cuda_source(lib) -> str:
    out = []

    def walk(m):
        try:
            out.append(m.inspect_source())
        except Exception:
            pass
        for sub in m.imports:
            walk(sub)

    walk(lib.mod if hasattr(lib, "mod") else lib)
    return "\n".join(out)


def assert_tensor_cores(src, dtype, gather=True):
    assert MMA[dtype] in src
    assert "ptx_cp_async_legacy" in src  # the filter / weight tile: async copies (16 bytes where it fits)
    assert "cp_async_wait_group" in src  # a pipelined main loop
    if dtype != "tf32":  # 16-bit fragments through ldmatrix; tf32 ones by plain 32-bit loads
        assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in src
        assert "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16" in src
    elif gather:  # the conv's gather itself is cp.async of 4-byte elements
        assert "cp.async.ca.shared.global" in src


# ---------------------------------------------------------------- fragment layouts (no GPU)
def test_tf32_fragments_match_ptx_isa():
    """m16n8k8 .tf32 fragments (PTX ISA "Matrix Fragments for mma.m16n8k8"), groupID = lane >> 2,
    threadID_in_group = lane % 4."""
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        a = [(g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)]  # a0..a3: (row, col) of A (16 x 8)
        b = [(t, g), (t + 4, g)]  # b0, b1: (row k, col n) of B (8 x 8)
        for r, (i, k) in enumerate(a):
            assert tc_intrin.a_frag_tf32(i, k) == (lane, r)
            assert tc_intrin._frag_inverse(tc_intrin.a_frag_tf32, lane, r) == (i, k)
        for half in range(2):  # the second n8 half in registers 2, 3
            for r, (k, j) in enumerate(b):
                assert tc_intrin.b_frag_tf32(k, j + 8 * half) == (lane, r + 2 * half)
                assert tc_intrin._frag_inverse(tc_intrin.b_frag_tf32, lane, r + 2 * half) == (k, j + 8 * half)


def test_accumulator_fragment_matches_ptx_isa():
    """The f32 accumulators of m16n8k{8,16}: c0, c1 at (g, 2t + {0, 1}), c2, c3 at (g + 8, ...);
    the second n8 half in registers 4..7 (TVM's layout, read by its mma_store)."""
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for half in range(2):
            for r, (i, j) in enumerate([(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)]):
                assert tc_intrin.FRAG16(i, j + 8 * half) == (lane, r + 4 * half)
                assert tc_intrin._frag16_inverse(lane, r + 4 * half) == (i, j + 8 * half)


def test_tf32_rounding():
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 100
    r = operand_array(x, "tf32")
    assert not (r.view(np.uint32) & 0x1FFF).any()
    assert np.abs(r - x).max() <= 2.0**-11 * np.abs(x).max()
    assert np.abs((r - x) / x).max() <= 2.0**-11


# ---------------------------------------------------------------- builds (no GPU)
BUILD_CASES = {  # (N, C, H, W, T, kh, kw, stride, padding, dilation, groups, density)
    "3x3_res": (2, 32, 14, 14, 64, 3, 3, 1, (1, 1, 1, 1), 1, 1, 0.5),
    "5x5_s2_dil_groups": (1, 8, 13, 10, 12, 5, 5, 2, (2, 1, 1, 2), 2, 2, 0.3),
    "depthwise": (1, 16, 9, 9, 16, 3, 3, 1, (1, 1, 1, 1), 1, 16, 1.0),
    "1x1_channel_1_row": (2, 1, 4, 17, 1, 3, 1, 2, (0, 0, 0, 1), 1, 1, 1.0),  # every tile a single one
}


@pytest.mark.parametrize("dtype", TC_DTYPES)
@pytest.mark.parametrize("case", list(BUILD_CASES))
def test_conv_tc_builds(case, dtype):
    N, C, H, W, T, kh, kw, s, pad, d, g, density = BUILD_CASES[case]
    w = gbd_weight(T, C // g, kh, kw, density, groups=g)
    kw_ = dict(stride=(s, s), padding=pad, dilation=(d, d), groups=g, relu=True, residual=case == "3x3_res")
    func, consts = conv2d_gather_gemm((N, C, H, W), w, np.ones(T, np.float32), target=CUDA, dtype=dtype, **kw_)
    assert consts[0].dtype == np.dtype("float32" if dtype == "tf32" else dtype)
    assert len(func.params) == 2 + len(consts) + kw_["residual"]
    assert_tensor_cores(cuda_source(compile_kernel(func, CUDA)), dtype)


def test_conv_tc_dynamic_batch_builds():
    w = gbd_weight(24, 8, 3, 3, 0.5, groups=2)
    shape = (tvm.tirx.Var("batch", "int64"), 16, 9, 9)
    func, _ = conv2d_gather_gemm(shape, w, None, padding=(1, 1, 1, 1), groups=2, target=CUDA, dtype="float16")
    assert_tensor_cores(cuda_source(compile_kernel(func, CUDA)), "float16")


@pytest.mark.parametrize("dtype", TC_DTYPES)
@pytest.mark.parametrize("M", [5, "dynamic"])
def test_dense_tc_builds(dtype, M):
    M = tvm.tirx.Var("n", "int32") if M == "dynamic" else M
    w = np.random.default_rng(0).standard_normal((70, 96)).astype(np.float32)
    func, consts = dense_gemm((M, 96), w, np.zeros(70, np.float32), relu=True, target=CUDA, dtype=dtype)
    assert consts[0].shape == (96, 96)  # [KP, OP]: K padded to 32, O to the 32-wide tile
    assert_tensor_cores(cuda_source(compile_kernel(func, CUDA)), dtype, gather=False)


def test_dense_tc_one_output_builds():
    func, _ = dense_gemm((1, 7), np.ones((1, 7), np.float32), None, target=CUDA, dtype="float16")
    assert "mma.sync" in cuda_source(compile_kernel(func, CUDA))


def test_float32_stays_simt():
    w = gbd_weight(16, 8, 3, 3, 0.5)
    func, consts = conv2d_gather_gemm((1, 8, 9, 9), w, None, padding=1, target=CUDA)
    assert consts[0].ndim == 4  # the SIMT path's packed [G, TO, KP, TI]
    assert "mma.sync" not in cuda_source(compile_kernel(func, CUDA))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "tf32", "int8"])
def test_cpu_rejects_other_dtypes(dtype):
    w = gbd_weight(4, 3, 3, 3, 1.0)
    with pytest.raises(ValueError) as e:
        conv2d_gather_gemm((1, 3, 6, 6), w, target=LLVM, dtype=dtype)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError):
        dense_gemm((2, 8), np.ones((4, 8), np.float32), target=LLVM, dtype=dtype)


def test_export_float16_cuda_builds(tmp_path):
    """``gbd-export --dtype float16 --target cuda`` of a small model: every conv and linear layer is
    a tensor-core kernel (no fallback warning); ``--target llvm`` refuses the dtype in one line."""
    from lightning_gbd import save_pt2
    from tests.test_passes import impose_gbd, lenet

    torch.manual_seed(0)
    save_pt2(impose_gbd(lenet(), density=0.3, dead=0.15).eval(), torch.randn(2, 1, 28, 28), tmp_path / "m.pt2")
    cli = [sys.executable, "-m", "tvm_passes.cli", str(tmp_path / "m.pt2"), "--out", str(tmp_path / "a")]
    r = subprocess.run(cli + ["--target", "cuda", "--dtype", "float16", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["compute_dtype"] == "float16" and man["device"] == "cuda"
    assert man["totals"]["gather_gemm"] == 2 and len(man["linears"]) == 2
    r = subprocess.run(cli + ["--target", "llvm", "--dtype", "float16"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "CUDA" in r.stderr


# ---------------------------------------------------------------- numerics (GPU)
def _rounded(a, dtype):
    """``a`` with its values rounded as the kernels round their operands, in float32."""
    return np.asarray(operand_array(a, dtype), dtype=np.float32)


def _torch_conv(x, w, s, pad, d, g, dtype, exact):
    """The conv without bias on the GPU: ``exact``: float32 (TF32 off) on the operands rounded like
    the kernel's; else PyTorch at the same precision (TF32 on / fp16, bf16 channels_last)."""
    pt, pl, pb, pr = pad
    xt = torch.nn.functional.pad(torch.from_numpy(x).cuda(), (pl, pr, pt, pb))
    wt = torch.from_numpy(w).cuda()
    torch.backends.cudnn.allow_tf32 = dtype == "tf32" and not exact
    if exact:
        xt, wt = (torch.from_numpy(_rounded(a.cpu().numpy(), dtype)).cuda() for a in (xt, wt))
    elif dtype != "tf32":
        tt = getattr(torch, dtype)
        xt, wt = (a.to(tt).to(memory_format=torch.channels_last) for a in (xt, wt))
    try:
        return torch.nn.functional.conv2d(xt, wt, stride=s, dilation=d, groups=g).float().cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32 = False


@pytest.fixture
def _gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


def _run(func, inputs, out_shape):
    lib = compile_kernel(func, "cuda")
    dev = tvm.cuda(0)
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs]
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32), dev)
    lib(*args, out)
    return out.numpy()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", TC_DTYPES)
@pytest.mark.parametrize("density", [1.0, 0.5, 0.2])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_tc_numerics(_gpu, case, density, dtype):
    N, C, H, W, T, kh, kw, s, pad, d, g = CONV_CASES[case]
    w = gbd_weight(T, C // g, kh, kw, density, groups=g, seed=zlib.crc32(case.encode()) % 1000)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    conv = _torch_conv(x, w, s, pad, d, g, dtype, exact=False)
    res = rng.standard_normal(conv.shape).astype(np.float32)
    kw_ = dict(stride=(s, s), padding=pad, dilation=(d, d), groups=g, relu=True, residual=True)
    func, consts = conv2d_gather_gemm(x.shape, w, b, target="cuda", dtype=dtype, **kw_)
    out = _run(func, [x, *consts, res], conv.shape)

    def epi(y):
        return np.maximum(y + b[None, :, None, None] + res, 0)

    assert rel_err(out, epi(conv)) <= kernel_tolerance(dtype)  # PyTorch at the same precision
    # rounded operands, float32 sums: only the order of the sums differs
    assert rel_err(out, epi(_torch_conv(x, w, s, pad, d, g, dtype, exact=True))) <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", TC_DTYPES)
@pytest.mark.parametrize("M,K,O", [(1, 64, 10), (8, 100, 37), (23, 70, 40), (128, 512, 130)])
def test_dense_tc_numerics(_gpu, dtype, M, K, O):  # noqa: E741 - the GEMM's sizes
    rng = np.random.default_rng(0)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w = rng.standard_normal((O, K)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    func, consts = dense_gemm(x.shape, w, b, relu=True, target="cuda", dtype=dtype)
    out = _run(func, [x, *consts], (M, O))
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        tt = torch.float32 if dtype == "tf32" else getattr(torch, dtype)
        same = (torch.from_numpy(x).cuda().to(tt) @ torch.from_numpy(w).cuda().to(tt).T).float().cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert rel_err(out, np.maximum(same + b, 0)) <= kernel_tolerance(dtype)
    exact = _rounded(x, dtype).astype(np.float64) @ _rounded(w, dtype).T.astype(np.float64)
    assert rel_err(out, np.maximum(exact + b, 0)) <= 1e-4
