"""passes.InplaceResidual: a fused skip connection's output written over its residual input, only
where nothing reads the residual afterwards (IR compared with assert_structural_equal, as TVM's
pass tests do), and a compiled module that runs with it."""

import numpy as np
import torch
import torchvision
import tvm
from tvm import relax, te

from tvm_passes.passes import InplaceResidual
from tvm_passes.passes.kernel_marks import INPLACE_ATTR, mark_kernel
from tvm_passes.pipeline import lower
from tvm_passes.target import make_target

from .test_passes import impose_gbd

SHAPE = (2, 4)
T = relax.TensorType(SHAPE, "float32")


def _kernels():
    """A producer kernel (y = x * 2) and a fused-residual one (out = relu(x + res)), marked as the
    kernel passes mark theirs."""
    x, r = te.placeholder(SHAPE, name="x"), te.placeholder(SHAPE, name="res")
    double = te.compute(SHAPE, lambda i, j: x[i, j] * 2.0, name="out")
    fused = te.compute(SHAPE, lambda i, j: te.max(x[i, j] + r[i, j], 0.0), name="out")
    return (
        mark_kernel(te.create_prim_func([x, double])),
        mark_kernel(te.create_prim_func([x, r, fused])).with_attr(INPLACE_ATTR, 1),
    )


def _module(case, inplace=False):
    """main(x): a = double(x); y = fused(data, res) [; a read again]; the residual per ``case``."""
    bb = relax.BlockBuilder()
    double, fused = _kernels()
    x = relax.Var("x", T)
    with bb.function("main", [x]):
        gdouble, gfused = bb.add_func(double, "double"), bb.add_func(fused, "fused")
        with bb.dataflow():
            a = bb.emit(relax.call_tir(gdouble, [x], T))
            b = bb.emit(relax.call_tir(gdouble, [a], T))
            data, res = {"dead": (b, a), "read_later": (b, a), "param": (b, x), "also_data": (a, a)}[case]
            if inplace:
                y = bb.emit(relax.op.call_tir_inplace(gfused, [data, res, res], [2], T))
            else:
                y = bb.emit(relax.call_tir(gfused, [data, res], T))
            if case == "read_later":
                y = bb.emit(relax.op.add(y, a))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def test_dead_residual_becomes_the_output():
    tvm.ir.assert_structural_equal(InplaceResidual()(_module("dead")), _module("dead", inplace=True))


def test_live_residual_param_or_data_is_left_alone():
    for case in ("read_later", "param", "also_data"):
        mod = _module(case)
        tvm.ir.assert_structural_equal(InplaceResidual()(mod), mod)


def test_input_module_untouched():
    mod = _module("dead")
    before = mod["main"]
    InplaceResidual()(mod)
    assert mod["main"].same_as(before)


def test_resnet_blocks_run_in_place():
    """Every BasicBlock's second conv of a GBD ResNet-18 writes over its dead residual, and the
    compiled model matches PyTorch."""
    torch.manual_seed(0)
    m = impose_gbd(torchvision.models.resnet18(weights=None), density=0.3, dead=0.15).eval()
    x = torch.randn(2, 3, 32, 32)
    low = lower(torch.export.export(m, (x,)), make_target("llvm"))
    assert low.mod["main"].script().count("call_tir_inplace") == 8
    ex = tvm.compile(low.mod, target=make_target("llvm"))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    with torch.no_grad():
        ref = m(x).numpy()
    for _ in range(2):  # a second call reuses the planned buffers
        out = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
        assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-5
