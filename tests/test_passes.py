"""IR-level tests of the Relax passes: BN folding, dead input maps (pass 2), GBD conv rewrite
(pass 1), cost model, generic schedules."""

import numpy as np
import pytest
import torch
import tvm
from torch import nn
from tvm import relax

from lightning_gbd.core.groups import density, group_mask
from tvm_passes import cost_model
from tvm_passes.frontend import import_program
from tvm_passes.ir import layer_name
from tvm_passes.passes import DeadChannels, GroupSparseConv, collect_records, kernel_records
from tvm_passes.pipeline import lower
from tvm_passes.schedules import unscheduled_funcs
from tvm_passes.target import make_target

LLVM = make_target("llvm")


# ----------------------------------------------------------------------------- helpers
def impose_gbd(model, density=0.3, dead=0.15, seed=0):
    """Zero random GBD groups W[t in conv group, s, i, j] (density ~tau) and whole input maps."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                t, cg, kh, kw = m.weight.shape
                keep = (torch.rand(m.groups, cg, kh, kw, generator=g) < density).float()
                if cg * m.groups > 4:
                    keep[torch.rand(m.groups, cg, generator=g) < dead] = 0
                keep[..., 0, 0, 0] = 1  # never a fully dead conv group
                tg = t // m.groups
                m.weight.mul_(keep.repeat_interleave(tg, dim=0))
    return model


def lenet():
    """LeNet-5 (Caffe variant): conv 1->20 5x5, pool, conv 20->50 5x5, pool, fc 800-500-10."""
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


def export(model, shape, seed=0):
    torch.manual_seed(seed)
    return torch.export.export(model.eval(), (torch.randn(*shape),))


def ops_of(func):
    out = []
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, tvm.ir.Call) and isinstance(v.op, tvm.ir.Op):
                out.append((v.op.name, v))
    return out


def op_names(func):
    return [n for n, _ in ops_of(func)]


def call_tir_targets(mod):
    names = []
    for name, call in ops_of(mod["main"]):
        if name == "relax.call_tir":
            names.append(call.args[0].name_hint)
    return names


def run_relax(mod, x):
    ex = tvm.compile(mod, target=LLVM)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x.numpy())).numpy()


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) / np.max(np.abs(b)))


# ----------------------------------------------------------------------------- import
def test_bn_folded_into_conv():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
        m[1].weight.uniform_(0.5, 2)
    ep = export(m, (1, 3, 8, 8))
    imp = import_program(ep)
    names = op_names(imp.mod["main"])
    assert "relax.nn.batch_norm" not in names
    assert names == ["relax.nn.conv2d", "relax.add", "relax.nn.relu"]
    conv = ops_of(imp.mod["main"])[0][1]
    assert isinstance(conv.args[1], tvm.ir.Constant)  # weights stay constants
    x = torch.randn(1, 3, 8, 8)
    assert rel_err(run_relax(imp.mod, x), m(x).detach().numpy()) < 1e-5
    assert layer_name(conv) == "0"  # the PyTorch module name rides on the call's span


# ----------------------------------------------------------------------------- pass 1
def test_conv_rewritten_to_gather_gemm_call_tir():
    torch.manual_seed(0)
    m = impose_gbd(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3)), 0.3, 0.0)
    ep = export(m, (1, 8, 12, 12))
    imp = import_program(ep)
    mod = GroupSparseConv(LLVM)(imp.mod)
    records = kernel_records(mod)
    names = op_names(mod["main"])
    assert "relax.nn.conv2d" not in names and "relax.nn.relu" not in names and "relax.add" not in names
    targets = call_tir_targets(mod)
    assert targets == ["gbd_conv_0", "gbd_conv_2"]
    for t in targets:
        f = mod[t]
        assert isinstance(f, tvm.tirx.PrimFunc) and f.attrs["gbd.kernel"]
        assert f.attrs["tirx.is_scheduled"]
    assert [r["decision"] for r in records] == ["gather-gemm", "gather-gemm"]
    assert records[0]["fused_relu"] and records[0]["fused_bias"] and not records[1]["fused_relu"]
    assert 0.2 < records[0]["density"] < 0.45
    x = torch.randn(1, 8, 12, 12)
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-4


def test_relu6_fused_as_a_bounded_relu():
    """MobileNet's ReLU6 (clip(x, 0, 6)) goes into the epilogue, with and without a bias and on a
    depthwise conv; a clip with another lower bound stays its own op."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.ReLU6()
    )
    m = impose_gbd(m, 0.5, 0.0)
    mod = GroupSparseConv(LLVM)(import_program(export(m, (2, 4, 9, 9))).mod)
    assert "relax.clip" not in op_names(mod["main"])
    assert [r["fused_relu"] for r in kernel_records(mod)] == [6.0, 6.0]
    x = torch.randn(2, 4, 9, 9) * 4  # values above 6 and below 0
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-4
    other = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Hardtanh(-1.0, 1.0)).eval()
    mod = GroupSparseConv(LLVM)(import_program(export(other, (1, 4, 9, 9))).mod)
    assert "relax.clip" in op_names(mod["main"]) and not kernel_records(mod)[0]["fused_relu"]


def test_conv_intermediate_with_two_uses_not_fused():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(4, 8, 3)

        def forward(self, x):
            y = self.c(x)
            return torch.relu(y) + y

    torch.manual_seed(0)
    m = impose_gbd(Two())
    imp = import_program(export(m, (1, 4, 9, 9)))
    mod = GroupSparseConv(LLVM)(imp.mod)
    records = kernel_records(mod)
    assert len(records) == 1 and not records[0]["fused_relu"]
    assert "relax.nn.relu" in op_names(mod["main"])
    x = torch.randn(1, 4, 9, 9)
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-4


class Block(nn.Module):
    """A ResNet basic block without BN: relu(conv2(relu(conv1(x))) + x), and a projection variant
    (MobileNetV2 style: conv + skip, no ReLU after the add)."""

    def __init__(self, relu_after=True):
        super().__init__()
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu_after = relu_after

    def forward(self, x):
        y = self.c2(torch.relu(self.c1(x))) + x
        return torch.relu(y) if self.relu_after else y


@pytest.mark.parametrize("relu_after", [True, False])
def test_residual_add_and_relu_fused_into_conv(relu_after):
    torch.manual_seed(0)
    m = impose_gbd(Block(relu_after), 0.3, 0.0)
    imp = import_program(export(m, (2, 8, 10, 10)))
    mod = GroupSparseConv(LLVM)(imp.mod)
    records = kernel_records(mod)
    names = op_names(mod["main"])
    assert "relax.add" not in names and "relax.nn.relu" not in names
    assert [r["fused_residual"] for r in records] == [False, True]
    assert records[1]["fused_relu"] == relu_after and records[1]["fused_bias"]
    x = torch.randn(2, 8, 10, 10)
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-4


def test_residual_of_another_shape_not_fused():
    class Bcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(4, 8, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.c(x) + x.mean((1,), keepdim=True))  # broadcast over channels

    torch.manual_seed(0)
    m = impose_gbd(Bcast())
    mod = GroupSparseConv(LLVM)(import_program(export(m, (1, 4, 9, 9))).mod)
    assert not kernel_records(mod)[0]["fused_residual"]
    x = torch.randn(1, 4, 9, 9)
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-4


def test_linear_rewritten_to_dense_gemm():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    imp = import_program(export(m, (3, 32)))
    mod = GroupSparseConv(LLVM)(imp.mod)
    records = kernel_records(mod)
    assert "relax.matmul" not in op_names(mod["main"])
    assert call_tir_targets(mod) == ["gbd_linear0", "gbd_linear1"]
    assert records[0]["fused_relu"] and not records[1]["fused_relu"]
    x = torch.randn(3, 32)
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-4


def test_layouts_stride_dilation_groups(layout_net):
    m = impose_gbd(layout_net, 0.35, 0.1)
    imp = import_program(export(m, (2, 1, 16, 16)))
    mod = GroupSparseConv(LLVM)(imp.mod)
    records = kernel_records(mod)
    assert "relax.nn.conv2d" not in op_names(mod["main"])
    assert [r["name"] for r in records if r["op"] == "conv2d"] == ["c1", "c2", "c3", "c4", "c5"]
    assert [r["groups"] for r in records if r["op"] == "conv2d"] == [1, 1, 2, 16, 1]
    x = torch.randn(2, 1, 16, 16)
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-4


# ----------------------------------------------------------------------------- pass 2
def _chain():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 6, 3),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 4, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 5),
    )


def dead_counts(imported, mod):
    """Layer name -> maps removed, as the manifest reads them (the records analysis after pass 1)."""
    records, _ = collect_records(imported, GroupSparseConv(LLVM)(mod))
    return {r["name"]: r["dead_channels"] for r in records if r["op"] == "conv2d"}


def test_dead_input_maps_removed_from_producer_and_consumer():
    torch.manual_seed(0)
    m = _chain().eval()
    with torch.no_grad():
        m[4].weight[:, [1, 5]] = 0  # Omega_1 = Omega_5 = {} in the only consumer
        m[7].weight[:, 2] = 0
    imp = import_program(export(m, (1, 3, 16, 16)))
    mod = DeadChannels()(imp.mod)
    records = dead_counts(imp.mod, mod)
    convs = [c for n, c in ops_of(mod["main"]) if n == "relax.nn.conv2d"]
    shapes = [tuple(int(d) for d in c.args[1].ty.shape.values) for c in convs]
    assert shapes == [(6, 3, 3, 3), (5, 6, 3, 3), (4, 5, 1, 1)]
    assert records["0"]["output_maps_removed"] == 2
    assert records["4"]["input_maps_removed"] == 2 and records["4"]["output_maps_removed"] == 1
    assert records["7"]["input_maps_removed"] == 1
    # the folded-BN bias add and the pools follow the producer
    adds = [c for n, c in ops_of(mod["main"]) if n == "relax.add"]
    assert int(adds[0].ty.shape.values[1]) == 6
    x = torch.randn(1, 3, 16, 16)
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-5


def test_dead_maps_through_relu6():
    """A ReLU6 between producer and consumer (a clip whose bounds are scalar constants) follows
    the producer's maps; its bounds are not sliced."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU6(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        m[2].weight[:, [2, 6]] = 0
    imp = import_program(export(m, (1, 3, 10, 10)))
    mod = DeadChannels()(imp.mod)
    assert dead_counts(imp.mod, mod)["0"]["output_maps_removed"] == 2
    x = torch.randn(1, 3, 10, 10)
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-5


def test_dead_maps_kept_when_another_use_reads_them():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.b(y) + y  # the residual reads every map of y

    torch.manual_seed(0)
    m = Res().eval()
    with torch.no_grad():
        m.b.weight[:, 0] = 0
    imp = import_program(export(m, (1, 4, 6, 6)))
    mod = DeadChannels()(imp.mod)
    assert all(not any(r.values()) for r in dead_counts(imp.mod, mod).values())
    assert mod.same_as(imp.mod)  # nothing rewritten


# ----------------------------------------------------------------------------- cost model
def test_cost_model_decisions():
    w = np.random.RandomState(0).randn(64, 32, 3, 3).astype(np.float32)
    d = cost_model.decide((1, 32, 16, 16), w, (1, 64, 14, 14))
    assert d.decision == "dense" and d.density == 1.0 and "density" in d.reason
    w2 = w.copy()
    w2[:, :, 0, :] = 0
    w2[:, :, 2, :] = 0  # density 1/3
    d2 = cost_model.decide((1, 32, 16, 16), w2, (1, 64, 14, 14))
    assert d2.decision == "gather-gemm" and abs(d2.density - 1 / 3) < 1e-6
    assert d2.flops_executed == round(d2.flops_dense / 3)
    tiny = cost_model.decide((1, 2, 4, 4), w2[:4, :2], (1, 4, 2, 2))
    assert tiny.decision == "dense" and "tiny" in tiny.reason
    forced = cost_model.decide((1, 32, 16, 16), w2, (1, 64, 14, 14), sparse=False)
    assert forced.decision == "dense" and forced.flops_executed == forced.flops_dense
    # grouped: a group is (s, i, j) over the outputs of s's conv group only
    wg = np.zeros((4, 1, 1, 1), np.float32)
    wg[0] = 1
    assert density(group_mask(wg, groups=2)) == 0.5


# ----------------------------------------------------------------------------- schedules
def test_every_primfunc_scheduled_after_lowering():
    torch.manual_seed(0)
    m = impose_gbd(_chain().eval())
    ep = export(m, (2, 3, 16, 16))
    mod = lower(ep, LLVM).mod
    assert unscheduled_funcs(mod) == []
    kernels = [
        gv.name_hint
        for gv, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs and "gbd.kernel" in f.attrs
    ]
    assert len(kernels) == 5  # 3 convs + 1 linear + the max-pool, none fused away by FuseOps
    # generic ops got a parallel/vectorized schedule, not naive loops
    text = "\n".join(
        f.script()
        for _, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and not (f.attrs and "gbd.kernel" in f.attrs)
    )
    assert "T.parallel" in text or "T.vectorized" in text


def test_unsupported_conv_warns_and_falls_back():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 4, 3, stride=2)).eval()
    ep = export(m, (1, 3, 8, 8))
    with pytest.warns(UserWarning, match="conv2d_transpose"):
        low = lower(ep, LLVM)
    assert unscheduled_funcs(low.mod) == []
    assert [r["name"] for r in low.records] == ["0"]


def test_adaptive_pool_with_nested_blocks_scheduled():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d((6, 6))).eval()  # AlexNet / VGG head
    mod = lower(export(m, (1, 3, 5, 5)), LLVM).mod
    assert unscheduled_funcs(mod) == []
    x = torch.randn(1, 3, 5, 5)
    assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-5


def test_dense_path_gathers_every_row():
    """sparse=False: the kernel library's full im2col GEMM (K = C*kh*kw rows), same numerics."""
    torch.manual_seed(0)
    m = impose_gbd(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1)), 0.3, 0.2).eval()
    x = torch.randn(1, 8, 10, 10)
    kps = {}
    for sparse in (True, False):
        imp = import_program(export(m, (1, 8, 10, 10)))
        mod = GroupSparseConv(LLVM, sparse=sparse)(imp.mod)
        records = kernel_records(mod)
        call = [c for n, c in ops_of(mod["main"]) if n == "relax.call_tir"][0]
        packed = call.args[1].fields[1]  # F packed [G, TO, KP, TI]
        kps[sparse] = int(packed.ty.shape.values[2])
        assert rel_err(run_relax(mod, x), m(x).detach().numpy()) < 1e-4
        assert records[0]["decision"] == ("gather-gemm" if sparse else "dense")
    assert kps[False] == 8 * 3 * 3
    assert kps[True] < 0.5 * kps[False]
