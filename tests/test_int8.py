"""INT8 post-training quantization (docs/formulas.md section 5): the quantization maths, the VNNI
gather-GEMM kernel against the fake-quant conv in PyTorch, and the export end to end (calibration,
per-layer records, verification, one-line errors, per-layer float32 fallback)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_gbd.core.quant import (
    RangeObserver,
    activation_params,
    fake_quant_activation,
    fake_quant_weight,
    quantize_activation,
    quantize_weight,
)
from tests.test_kernels import LLVM, gbd_weight, ref_conv, run_llvm
from tvm_passes import export_model
from tvm_passes.errors import ExportError
from tvm_passes.kernels import conv2d_gather_gemm_int8, conv_output_size
from tvm_passes.target import request_amx


def test_weight_quantization_keeps_patterns_and_error_bound():
    w = gbd_weight(16, 8, 3, 3, 0.3, seed=1)
    q, s = quantize_weight(w)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    assert np.array_equal(q == 0, w == 0) or np.all((q == 0) >= (w == 0))  # pruned groups stay zero
    err = np.abs(fake_quant_weight(w) - w).reshape(16, -1).max(1)
    assert np.all(err <= s / 2 + 1e-7)  # round to nearest: half a step per channel


def test_activation_params_contain_zero_and_percentile_clips_outliers():
    s, z = activation_params(0.5, 3.0)  # widened to [0, 3]
    assert z == 0 and quantize_activation(np.float32(0.0), s, z) == 0
    s, z = activation_params(-1.0, 1.0)
    assert fake_quant_activation(np.float32(0.0), s, z) == 0.0  # zero is exact (padding)
    ob = RangeObserver()
    ob.update(np.concatenate([np.random.default_rng(0).random(100000), [1000.0]]).astype(np.float32))
    assert ob.range("minmax")[1] == 1000.0 and ob.range("percentile")[1] < 1.01
    with pytest.raises(ValueError, match="unknown calibration method"):
        ob.range("mse")


CASES = [
    # N, C, H, W, T, k, stride, pad, dilation, groups, density, signed input, residual
    (1, 8, 10, 10, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 0.4, False, False),
    (2, 3, 17, 13, 24, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, 1.0, True, False),
    (1, 16, 9, 9, 32, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, 1.0, False, True),
    (1, 8, 12, 12, 16, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), 2, 0.5, True, False),
    (1, 16, 8, 8, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16, 1.0, False, False),  # depthwise
    (1, 8, 11, 7, 16, (1, 5), (1, 2), (0, 2, 0, 2), (1, 1), 1, 0.5, False, True),
    # rows of 16 pixels at stride 2: whole input rows, then every other element (stage P2)
    (1, 8, 30, 29, 16, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, 0.5, True, False),
    (2, 8, 32, 32, 16, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1, 1.0, False, True),
    # a 7x7 stride-2 stem: with AMX gathered from 2 x 2 phase planes of the padded input (formula
    # 1.24), with VNNI from whole input rows (stage P2)
    (1, 3, 23, 21, 16, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1, 0.5, False, False),
    # ... 32 x 32 outputs, one k block: the VNNI epilogue on each register tile, C never stored
    (2, 3, 64, 64, 32, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1), 1, 0.5, True, True),
    # rows of 32 pixels, 32 filters: AMX calls of 2 filter x 2 pixel tiles from a tilezero start
    (2, 16, 32, 32, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 0.6, False, True),
    # 1440 gather rows: two k blocks of the AMX kernel (up to 1024 each), six of the VNNI one
    (1, 160, 6, 6, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 1.0, False, True),
    # 7x7 maps: rows of 8 pixels, a 16-pixel tile over two rows (chunks not whole rows)
    (3, 32, 7, 7, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 0.5, False, True),
    # AMX calls of several whole rows, with two k blocks
    (1, 160, 16, 16, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 1.0, False, True),
    # rows of 256 pixels: one row per AMX call
    (1, 4, 5, 250, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 0.5, False, True),
    # 8 images: whole-image tasks of the VNNI and AMX kernels, each making its image's padded copy
    (8, 16, 16, 16, 32, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 0.5, False, True),
    # ... and at stride 2 (whole input rows of the image's copy per k block, stage P2)
    (8, 8, 32, 32, 32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, 0.5, False, False),
    # rows of 28 pixels kept unpadded (VNNI, cpu_int8.takes_exact_rows): 16-pixel vectors across
    # rows, interleaved from a panel of the gathered rows; one image, then whole-image tasks
    (1, 8, 28, 28, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 0.5, False, True),
    (8, 8, 28, 28, 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, 0.5, False, True),
]


AMX = {**LLVM, "mcpu": "sapphirerapids", "mattr": ["+amx-tile", "+amx-int8"]}
needs_amx = pytest.mark.skipif(not request_amx(), reason="no Intel AMX on this CPU / OS")
#: VNNI without VBMI (the interleave as a 4-input shuffle instead of vpermb)
CASCADE = {**LLVM, "mcpu": "cascadelake"}
TARGETS = [LLVM, pytest.param(CASCADE, id="vnni-no-vbmi"), pytest.param(AMX, marks=needs_amx)]


@pytest.mark.parametrize("target", TARGETS, ids=["vnni", "vnni-no-vbmi", "amx"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"C{c[1]}T{c[4]}k{c[5][0]}x{c[5][1]}s{c[6][0]}g{c[9]}")
def test_int8_kernel_matches_fake_quant_conv(case, target):
    N, C, H, W, T, k, stride, pad, dil, groups, density, signed, res = case
    rng = np.random.default_rng(sum(map(hash, map(str, case))) % 2**32)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    x = x if signed else np.maximum(x, 0)
    w = gbd_weight(T, C // groups, *k, density, groups=groups, seed=3, dead_maps=(1,))
    b = rng.standard_normal(T).astype(np.float32)
    s, z = activation_params(x.min(), x.max() * 0.8)  # some inputs saturate
    func, consts = conv2d_gather_gemm_int8(
        x.shape, w, b, x_scale=s, x_zero=z, stride=stride, padding=pad, dilation=dil, groups=groups,
        relu=True, residual=res, target=target, amx_min_k=0,
    )  # fmt: skip
    OH, OW = conv_output_size(H, W, *k, stride, pad, dil)
    r = rng.standard_normal((N, T, OH, OW)).astype(np.float32)
    assert consts[0].ndim == (3 if target is AMX else 5)  # filter rows for tiles / VNNI-packed
    out = run_llvm(func, [x, *consts] + ([r] if res else []), (N, T, OH, OW), target)
    ref = ref_conv(fake_quant_activation(x, s, z), fake_quant_weight(w), b, stride, pad, dil, groups, False)
    ref = np.maximum(ref + (r if res else 0), 0)
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize("relu", [True, 0.5], ids=["relu", "relu-clip"])
@pytest.mark.parametrize("target", TARGETS, ids=["vnni", "vnni-no-vbmi", "amx"])
@pytest.mark.parametrize(
    "case",
    [CASES[0], CASES[2], CASES[3], CASES[6], CASES[9], CASES[-3], CASES[-1]],
    ids=lambda c: f"N{c[0]}C{c[1]}H{c[2]}k{c[5][0]}s{c[6][0]}",
)
def test_int8_kernel_carries_uint8(case, target, relu):
    """uint8 in (padded with z), uint8 residual dequantized, uint8 out quantized for the next conv:
    the fake-quant conv of the same uint8 values, requantized, within one step of rounding; a
    number ``relu`` is a clipped ReLU (ReLU6), folded into the output's clamp."""
    N, C, H, W, T, k, stride, pad, dil, groups, density, _, res = case
    rng = np.random.default_rng(7)
    s, z = 0.02, 9  # padding must read the zero point, not 0
    xq = rng.integers(0, 256, (N, C, H, W)).astype(np.uint8)
    w = gbd_weight(T, C // groups, *k, density, groups=groups, seed=3, dead_maps=(1,))
    b = rng.standard_normal(T).astype(np.float32)
    OH, OW = conv_output_size(H, W, *k, stride, pad, dil)
    rq, res_q, out_q = rng.integers(0, 256, (N, T, OH, OW)).astype(np.uint8), (0.05, 3), (0.04, 5)
    func, consts = conv2d_gather_gemm_int8(
        xq.shape, w, b, x_scale=s, x_zero=z, stride=stride, padding=pad, dilation=dil, groups=groups,
        relu=relu, residual=res, target=target, in_u8=True, out_q=out_q, res_q=res_q if res else None, amx_min_k=0,
    )  # fmt: skip
    out = run_llvm(func, [xq, *consts] + ([rq] if res else []), (N, T, OH, OW), target, out_dtype="uint8")
    x = s * (xq.astype(np.float32) - z)
    ref = ref_conv(x, fake_quant_weight(w), b, stride, pad, dil, groups, False)
    ref = np.maximum(ref + (res_q[0] * (rq.astype(np.float32) - res_q[1]) if res else 0), 0)
    ref = ref if relu is True else np.minimum(ref, relu)
    assert out.dtype == np.uint8
    assert np.abs(out.astype(np.int32) - quantize_activation(ref, *out_q)).max() <= 1


@pytest.mark.parametrize("M,K,n_out,relu", [(1, 50, 10, False), (3, 37, 40, True), (13, 256, 33, True)])
def test_int8_linear_matches_fake_quant(M, K, n_out, relu):
    """The VNNI linear layer (rows, inputs and outputs that fill no whole tile) against the
    fake-quant matmul."""
    from tvm_passes.kernels import dense_gemm_int8

    rng = np.random.default_rng(M)
    x = rng.standard_normal((M, K)).astype(np.float32)
    w, b = rng.standard_normal((n_out, K)).astype(np.float32), rng.standard_normal(n_out).astype(np.float32)
    s, z = activation_params(x.min(), x.max() * 0.8)
    func, consts = dense_gemm_int8((M, K), w, b, x_scale=s, x_zero=z, relu=relu, target=LLVM)
    out = run_llvm(func, [x, *consts], (M, n_out))
    ref = fake_quant_activation(x, s, z) @ fake_quant_weight(w).T + b
    ref = np.maximum(ref, 0) if relu else ref
    assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(16)
        self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.c3 = torch.nn.Conv2d(16, 32, 3, stride=2)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = torch.relu(self.c2(y) + y)
        return self.fc(torch.relu(self.c3(y)).mean((2, 3)))


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    net = SmallNet().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.c2.weight.mul_((torch.rand(16, 8, 3, 3) < 0.4).float())
    return net


def test_int8_export_end_to_end(tmp_path, small_net):
    cal = torch.randn(40, 1, 14, 14).numpy()
    np.save(tmp_path / "cal.npy", cal)
    man = export_model(
        small_net,
        torch.randn(4, 1, 14, 14),
        "llvm",
        tmp_path / "a",
        dtype="int8",
        calibration=str(tmp_path / "cal.npy"),
        dynamic_batch=True,
    )
    ver = man["verification"]
    assert ver["passed"] and ver["reference"] == "fake-quant model" and ver["batches"] == [4, 1]
    assert ver["max_relative_error"] < ver["relative_error_vs_float32"] < 0.05
    convs = {c["name"]: c for c in man["convs"]}
    assert {c["compute_dtype"] for c in convs.values()} == {"int8"}
    assert convs["c1"]["input_zero_point"] > 0 and convs["c2"]["input_zero_point"] == 0  # signed / post-ReLU
    assert all(0 < c["weight_rel_error"] < 0.02 and c["input_rel_error"] < 0.05 for c in convs.values())
    assert convs["c2"]["fused_residual"]


class CarryNet(torch.nn.Module):
    """stem -> BN -> ReLU -> max-pool -> a ResNet block -> a strided conv -> mean -> linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.a, self.b = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head, self.fc = torch.nn.Conv2d(8, 16, 3, stride=2), torch.nn.Linear(16, 10)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.stem(x))), 3, 2, 1)
        z = torch.relu(self.b(torch.relu(self.a(y))) + y)
        return self.fc(torch.relu(self.head(z)).mean((2, 3)))


def test_int8_carries_uint8_between_convs(tmp_path):
    """Tensors read only by int8 convs (as data or residual) or by a max-pool between them are
    uint8 (formula 5.6); the head's output feeds a mean and stays float32.  Verified against the
    fake-quant model whose residual operand is quantized like the carried tensor."""
    torch.manual_seed(0)
    net = CarryNet().eval()
    cal = torch.randn(16, 1, 20, 20).numpy()
    man = export_model(net, torch.randn(8, 1, 20, 20), "llvm", tmp_path / "a", dtype="int8", calibration=cal)
    convs = {c["name"]: (c.get("input_dtype"), c.get("output_dtype"), c.get("residual_dtype")) for c in man["convs"]}
    assert convs == {
        "stem": ("float32", "uint8", None),
        "a": ("uint8", "uint8", None),
        "b": ("uint8", "uint8", "uint8"),
        "head": ("uint8", "float32", None),
    }
    assert [(r["name"], r["compute_dtype"]) for r in man["linears"]] == [("fc", "int8")]
    ver = man["verification"]
    assert ver["passed"] and ver["max_relative_error"] < 1e-4 < ver["relative_error_vs_float32"]


def test_int8_bad_input_one_line_errors(tmp_path, small_net):
    x = torch.randn(4, 1, 14, 14)
    with pytest.raises(ExportError, match="needs calibration inputs"):
        export_model(small_net, x, "llvm", tmp_path / "a", dtype="int8")
    np.save(tmp_path / "bad.npy", np.zeros((8, 3, 14, 14), np.float32))
    with pytest.raises(ExportError, match=r"shape \[8, 3, 14, 14\]; the model takes \[N, 1, 14, 14\]"):
        export_model(small_net, x, "llvm", tmp_path / "a", dtype="int8", calibration=str(tmp_path / "bad.npy"))
    np.save(tmp_path / "f64.npy", np.zeros((8, 1, 14, 14)))
    with pytest.raises(ExportError, match="float64; the model takes float32"):
        export_model(small_net, x, "llvm", tmp_path / "a", dtype="int8", calibration=str(tmp_path / "f64.npy"))
    with pytest.raises(ExportError, match=r"calibration array: calibration inputs of shape \[8, 3, 14, 14\]"):
        export_model(
            small_net, x, "llvm", tmp_path / "a", dtype="int8", calibration=np.zeros((8, 3, 14, 14), np.float32)
        )
    with pytest.raises(ExportError, match="no calibration.npy in this run directory"):
        export_model(small_net, x, "llvm", tmp_path / "a", dtype="int8", calibration=str(tmp_path))


def test_conv_without_range_stays_float32_with_warning(small_net):
    from tvm_passes.frontend import import_program, specialize
    from tvm_passes.passes import GroupSparseConv, collect_records
    from tvm_passes.target import make_target

    imp = import_program(specialize(small_net, torch.randn(2, 1, 14, 14)))
    quant = {"c1": {"lo": -3.0, "hi": 3.0, "scale": 6 / 255, "zero": 128, "rel_error": 0.0}}
    with pytest.warns(UserWarning, match="conv 'c2' has no calibration range; it stays float32"):
        mod = GroupSparseConv(make_target("llvm"), dtype="int8", quant=quant)(imp.mod)
    dtypes = {r["name"]: r["compute_dtype"] for r in collect_records(imp.mod, mod)[0] if r["op"] == "conv2d"}
    assert dtypes == {"c1": "int8", "c2": "float32", "c3": "float32"}


def test_loader_refuses_amx_artifact_without_permission(tmp_path, small_net, monkeypatch):
    """An artifact whose int8 kernels use AMX tiles is refused, with one line, in a process that
    cannot get the tile state (it would die with SIGILL on the first tile instruction)."""
    from tvm_passes.artifact import loader
    from tvm_passes.errors import ArtifactError

    cal = torch.randn(8, 1, 14, 14).numpy()
    man = export_model(small_net, torch.randn(2, 1, 14, 14), "llvm", tmp_path / "a", dtype="int8", calibration=cal)
    monkeypatch.setattr(loader, "request_amx", lambda: False)
    if "+amx-int8" in man["target"].get("mattr", []):
        with pytest.raises(ArtifactError, match="int8 kernels use Intel AMX tiles"):
            loader.load(tmp_path / "a")
    else:  # a VNNI-only machine: nothing to refuse
        assert loader.load(tmp_path / "a")(cal[:2]).shape == (2, 10)


def test_calibration_set_command(tmp_path):
    from lightning_gbd.app.calibration import calibration_command

    out = tmp_path / "cal.npy"
    assert calibration_command(["recipes/lenet5_fmnist_gradual.yaml", "-n", "12", "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32 and x.std() > 0.1
    assert calibration_command([str(tmp_path / "nope.yaml")]) == 2
