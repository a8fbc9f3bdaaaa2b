"""The fused 1x1 expansion + stride-2 depthwise kernel (docs/formulas.md 1.28): its numbers against
PyTorch on a grid of shapes, where ``plan`` takes a pair, the pass on imported IR (left alone where
it must be: assert_structural_equal, as TVM's pass tests), and an export with it matching PyTorch.
The size threshold is lowered so that small maps stand in for MobileNetV2's 112x112 ones."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
import tvm
from torch import nn

import tvm_passes
from tvm_passes.frontend import import_program
from tvm_passes.kernels import compile_kernel, expand_depthwise
from tvm_passes.passes import RECORD_ATTR, FuseExpandDepthwise
from tvm_passes.target import make_target

LLVM = make_target("llvm")


@pytest.fixture
def small_maps(monkeypatch):
    monkeypatch.setattr(expand_depthwise, "MIN_EXPANDED_BYTES", 0)


def _act(t, relu):
    if relu is None or relu is False:
        return t
    t = torch.relu(t)
    return t if relu is True else torch.clamp(t, max=relu)


# (batch, in maps, expanded maps, rows = columns, relu1, relu2, bias): MobileNetV2's second block,
# rows that are no multiple of 16 (the last vector overlaps), several tasks per image, ReLU / none
GRID = [
    (1, 16, 96, 112, 6.0, 6.0, True),
    (2, 8, 64, 64, True, None, True),
    (1, 5, 40, 80, None, True, False),
    (1, 7, 36, 34, None, 6.0, True),
    (3, 16, 24, 32, 6.0, None, True),
]


@pytest.mark.parametrize("n,k,c,h,relu1,relu2,bias", GRID)
def test_kernel_matches_pytorch(small_maps, n, k, c, h, relu1, relu2, bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, k, h, h)).astype(np.float32)
    w1 = (rng.standard_normal((c, k, 1, 1)) / np.sqrt(k)).astype(np.float32)
    wd = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    b1, bd = (rng.standard_normal(c).astype(np.float32) for _ in range(2)) if bias else (None, None)
    tile = expand_depthwise.plan(x.shape, w1.shape, wd.shape, (2, 2), (1, 1, 1, 1), (1, 1), c)
    func, consts = expand_depthwise.expand_depthwise_conv2d(x.shape, w1, b1, relu1, wd, bd, relu2, tile)
    lib = compile_kernel(func, LLVM)

    def t(a):
        return None if a is None else torch.from_numpy(a)

    e = _act(nn.functional.conv2d(t(x), t(w1), t(b1)), relu1)
    ref = _act(nn.functional.conv2d(e, t(wd), t(bd), stride=2, padding=1, groups=c), relu2).numpy()
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.full(ref.shape, np.nan, np.float32), dev)
    lib["main"](*(tvm.runtime.tensor(a, dev) for a in [x, *consts]), out)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_plan():
    """MobileNetV2's second block is taken at its real size; stride 1, a small map, a 3x3 expansion,
    rows under 32 columns and a symbolic batch are not."""
    args = ((96, 16, 1, 1), (96, 1, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 96)
    cu, cb, rb = expand_depthwise.plan((1, 16, 112, 112), *args)
    assert 96 % cb == 0 and cb % cu == 0 and 56 % rb == 0
    assert expand_depthwise.plan((1, 16, 112, 112), *args[:2], (1, 1), *args[3:]) is None
    assert expand_depthwise.plan((1, 16, 48, 48), *args) is None  # 0.88 MB of expanded maps
    assert expand_depthwise.plan((1, 16, 112, 112), (96, 16, 3, 3), *args[1:]) is None
    assert expand_depthwise.plan((1, 16, 28, 28), *args) is None
    assert expand_depthwise.plan((tvm.tirx.Var("n", "int32"), 16, 112, 112), *args) is None


def _block(stride=2, branch=False):
    """Expansion (1x1 + BN + ReLU6), depthwise 3x3 (+ BN + ReLU6), projection; ``branch``: the
    expansion's output also feeds a second 1x1 conv, added to the projection's."""
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            layers = OrderedDict(
                expand=nn.Conv2d(8, 48, 1, bias=False), bn1=nn.BatchNorm2d(48), a1=nn.ReLU6(),
                dw=nn.Conv2d(48, 48, 3, stride=stride, padding=1, groups=48, bias=False), bn2=nn.BatchNorm2d(48),
                a2=nn.ReLU6(),
            )  # fmt: skip
            self.body = nn.Sequential(layers)
            self.project = nn.Conv2d(48, 16, 1)
            self.side = nn.Conv2d(48, 16, 1, stride=stride)

        def forward(self, x):
            if not branch:
                return self.project(self.body(x))
            e = self.body[:3](x)
            return self.project(self.body[3:](e)) + self.side(e)

    m = Block().eval()
    for bn in (m.body.bn1, m.body.bn2):  # non-trivial folded biases
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return m


def _imported(model):
    return import_program(torch.export.export(model, (torch.randn(1, 8, 32, 32),))).mod


def _calls(mod, op):
    return [b for blk in mod["main"].body.blocks for b in blk.bindings if getattr(b.value.op, "name", "") == op]


def test_pass_fuses_the_pair(small_maps):
    """One call_tir replaces the two convs and their epilogues; its kernel carries both records."""
    mod = FuseExpandDepthwise(LLVM)(_imported(_block()))
    (call,) = _calls(mod, "relax.call_tir")
    records = mod[call.value.args[0]].attrs[RECORD_ATTR]
    assert [str(r["name"]) for r in records] == ["body.expand", "body.dw"]
    assert len(_calls(mod, "relax.nn.conv2d")) == 1  # the projection, left to GroupSparseConv


@pytest.mark.parametrize("case", ["stride1", "branch", "cuda"])
def test_pass_leaves_other_blocks_alone(small_maps, case):
    """Stride 1, an expansion read by a second conv too, and a CUDA target: the module unchanged."""
    mod = _imported(_block(stride=1 if case == "stride1" else 2, branch=case == "branch"))
    target = make_target("cuda") if case == "cuda" else LLVM
    tvm.ir.assert_structural_equal(FuseExpandDepthwise(target)(mod), mod)


def test_export_matches_pytorch(tmp_path, small_maps):
    """An exported block at batch 2: the manifest lists both convs with the one fused kernel, and
    the artifact matches PyTorch."""
    m = _block()
    man = tvm_passes.export_model(m, torch.randn(2, 8, 32, 32), "llvm", str(tmp_path))
    by_name = {c["name"]: c for c in man["convs"]}
    assert by_name["body.expand"]["kernel"] == by_name["body.dw"]["kernel"]
    assert man["verification"]["passed"]
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        ref = m(x)
    torch.testing.assert_close(tvm_passes.load(tmp_path)(x), ref, rtol=1e-4, atol=1e-4)
