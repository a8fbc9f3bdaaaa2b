"""Winograd F(4x4, 3x3) (tvm_passes/kernels/winograd.py, docs/formulas.md 1.25): the three kernels
against PyTorch's conv on a grid of shapes, and where the export pass uses them."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import tirx

from tvm_passes import cost_model
from tvm_passes.kernels import compile_kernel, winograd
from tvm_passes.passes import GroupSparseConv, kernel_records
from tvm_passes.target import make_target

from .test_passes import export, import_program, rel_err, run_relax

LLVM = make_target("llvm")


def run_winograd(x, w, b, padding, relu, res, n_sym=False):
    """The three kernels compiled on their own and run in sequence, V and M passed as views."""
    N, C, H, W = x.shape
    shape = (tirx.Var("n", "int32") if n_sym else N, C, H, W)
    k = winograd.conv2d_winograd(shape, w, b, padding=padding, relu=relu, residual=res is not None, target=LLVM)
    v5, v4, m4, m5 = (tuple(N if not isinstance(v, int) else v for v in s) for s in k.shapes)
    dev = tvm.cpu()
    t = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), dev)
    V, M = t(np.zeros(v5, "float32")), t(np.zeros(m4, "float32"))
    d = k.dims
    out = t(np.zeros((N, w.shape[0], d.OH, d.OW), "float32"))
    (fin, _), (fg, gc), (fo, oc) = k.stages
    compile_kernel(fin, LLVM)(t(x), V)
    compile_kernel(fg, LLVM)(V._create_view(v4), *[t(c) for c in gc], M)
    extra = [t(c) for c in oc] + ([t(res)] if res is not None else [])
    fout = compile_kernel(fo, LLVM)
    fout(M._create_view(m5), *extra, out)
    if res is not None:  # the output written over the residual (passes.InplaceResidual): the same
        fout(M._create_view(m5), *extra, extra[-1])
        assert np.array_equal(extra[-1].numpy(), out.numpy())
    return out.numpy()


@pytest.mark.parametrize(
    "N,C,H,W,T,pad,relu,res,n_sym",
    [
        (1, 16, 8, 8, 32, 1, True, False, False),  # 2 x 2 tiles
        (2, 32, 14, 14, 16, 1, False, True, False),  # 14 = 3.5 tiles: a padded last tile row / column
        (3, 16, 7, 11, 8, 1, True, True, False),  # 7x11: uneven sides, 3 images
        (2, 16, 10, 10, 16, 0, False, False, False),  # no padding: 8x8 outputs
        (2, 24, 9, 9, 16, (2, 1, 0, 2), True, False, False),  # uneven padding
        (3, 16, 12, 12, 16, 1, True, True, True),  # symbolic batch: one image's tiles per GEMM image
    ],
)
def test_winograd_matches_direct_conv(N, C, H, W, T, pad, relu, res, n_sym):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype("float32")
    w = (rng.standard_normal((T, C, 3, 3)) / np.sqrt(9 * C)).astype("float32")
    b = rng.standard_normal(T).astype("float32")
    p4 = (pad,) * 4 if isinstance(pad, int) else pad
    xt = torch.nn.functional.pad(torch.tensor(x), (p4[1], p4[3], p4[0], p4[2]))
    ref = torch.nn.functional.conv2d(xt, torch.tensor(w), torch.tensor(b)).numpy()
    r = rng.standard_normal(ref.shape).astype("float32") if res else None
    ref = ref + (r if res else 0)
    ref = np.maximum(ref, 0) if relu else ref
    got = run_winograd(x, w, b, pad, relu, r, n_sym)
    assert rel_err(got, ref) < 2e-5


def test_weight_transform_is_g_g_gt():
    """U[e = 6 xi + nu, t, c] = (G g G^T)[xi, nu] (formula 1.25): the transformed filter of a single
    tap at the centre is G's middle column times its transpose."""
    w = np.zeros((1, 1, 3, 3), np.float32)
    w[0, 0, 1, 1] = 1
    G = winograd.matrices()[2]
    np.testing.assert_allclose(winograd.transform_weight(w).reshape(6, 6), np.outer(G[:, 1], G[:, 1]), rtol=1e-6)


def test_gemm_rows_pad_least():
    assert winograd.gemm_row(4) == 4 and winograd.gemm_row(49) == 49
    assert winograd.gemm_row(6272) == 64 and winograd.gemm_row(1568) == 32
    assert winograd.gemm_row(196) == 28  # 196 = 7 x 28: rows of 49 would pad to 64
    assert winograd.gemm_row(97) == 97  # prime: one row


def test_pass_uses_winograd_only_where_it_applies():
    """sparse=False: the 3x3 stride-1 convs with >= 16 input maps and >= 16 tiles become Winograd
    (three kernels, the record on the last); the 3-map stem, the stride-2 conv and a conv over
    too few tiles stay the dense GEMM.  Numerics as PyTorch's."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.Conv2d(32, 16, 3, padding=1),  # 8x8 map: 4 tiles per image, 8 at batch 2
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    mod = GroupSparseConv(LLVM, sparse=False)(import_program(export(m, (2, 3, 16, 16))).mod)
    records = kernel_records(mod)
    assert [r["decision"] for r in records] == ["dense", "winograd", "dense", "dense"]
    wg = records[1]
    assert wg["flops_executed"] == 2 * 36 * 32 * 16 * (2 * 4 * 4) < wg["flops_dense"] / 2
    names = [gv.name_hint for gv in mod.functions if gv.name_hint.startswith("gbd_conv")]
    assert sum(n.endswith(("_wg_in", "_wg_gemm")) for n in names) == 2
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-5


def test_winograd_decision_needs_a_dense_conv():
    """Dense convs and gather-GEMM convs above WINOGRAD_DENSITY; never one over too few tiles."""
    d = cost_model.decide((1, 16, 8, 8), np.ones((16, 16, 3, 3), np.float32), (1, 16, 8, 8))
    assert cost_model.winograd(d, (1, 16, 8, 8), (16, 16, 3, 3), 64).decision == "winograd"
    assert cost_model.winograd(d, (1, 16, 8, 8), (16, 16, 3, 3), 4) is None  # too few tiles
    sparse = np.zeros((16, 16, 3, 3), np.float32)
    sparse[:, :, 1, 1] = 1
    ds = cost_model.decide((1, 16, 8, 8), sparse, (1, 16, 8, 8))
    assert ds.decision == "gather-gemm" and cost_model.winograd(ds, (1, 16, 8, 8), (16, 16, 3, 3), 64) is None
    most = np.ones((16, 16, 3, 3), np.float32)
    most[:, :, 0, 0] = 0  # density 8/9: above WINOGRAD_DENSITY, Winograd beats the gather
    dm = cost_model.decide((1, 16, 8, 8), most, (1, 16, 8, 8))
    assert dm.decision == "gather-gemm" and dm.density > cost_model.WINOGRAD_DENSITY
    assert cost_model.winograd(dm, (1, 16, 8, 8), (16, 16, 3, 3), 64).decision == "winograd"
