"""The GBD passes as pure Relax transformations, checked the way TVM checks its own passes: the
expected module written out and compared with ``tvm.ir.assert_structural_equal``; the input
module left untouched; layer names carried on the IR (no weight-keyed side tables)."""

import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax

from lightning_gbd.core.lowrank import live_pair_flop_ratio, pair_flop_ratio, pca_factors
from tvm_passes.frontend import import_program
from tvm_passes.ir import layer_name
from tvm_passes.passes import DeadChannels, GroupSparseConv, LowRankConv, kernel_records
from tvm_passes.pipeline import lower
from tvm_passes.target import make_target

LLVM = make_target("llvm")
X = relax.TensorType((1, 3, 8, 8), "float32")


def _module(build):
    """A ``main(x)`` whose single dataflow block is built by ``build(x) -> output expr``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", X)
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def _conv(bb, x, w, **kw):
    return bb.emit(relax.op.nn.conv2d(x, relax.const(np.ascontiguousarray(w)), **kw))


def test_dead_channels_matches_the_hand_written_module():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    w2[:, 1] = 0  # input map 1 of the second conv is never read

    def before(bb, x):
        return _conv(bb, bb.emit(relax.op.nn.relu(_conv(bb, x, w1, padding=1))), w2)

    def expected(bb, x):
        keep = [0, 2, 3]
        return _conv(bb, bb.emit(relax.op.nn.relu(_conv(bb, x, w1[keep], padding=1))), w2[:, keep])

    mod = _module(before)
    tvm.ir.assert_structural_equal(DeadChannels()(mod), _module(expected))


def test_lowrank_conv_matches_the_hand_written_pair():
    rng = np.random.default_rng(1)
    u, v = rng.standard_normal((8, 1)), rng.standard_normal((1, 27))
    w = (u @ v).reshape(8, 3, 3, 3).astype(np.float32)  # rank 1
    basis, coeff, err = pca_factors(w, 1, error=0.01)
    assert basis.shape[0] == 1 and err < 1e-10

    def expected(bb, x):
        first = _conv(bb, x, basis.numpy().astype(np.float32), padding=1)
        return relax.op.nn.conv2d(first, relax.const(coeff.numpy().astype(np.float32).reshape(8, 1, 1, 1)))

    mod = _module(lambda bb, x: relax.op.nn.conv2d(x, relax.const(w), padding=1))
    tvm.ir.assert_structural_equal(LowRankConv(0.01)(mod), _module(expected))


def test_lowrank_conv_counts_only_the_live_groups():
    """A GBD-sparse conv is weighed against its own gather-GEMM (eq. 3.5 over the live fan-in): this
    pair would do 1.19x the FLOPs of the conv, though a dense count says 0.30x."""
    w = np.zeros((16, 3, 3, 3), np.float32)
    w[:, :, 1, 1] = np.random.default_rng(2).standard_normal((16, 3))  # tau = 1/9, rank 3
    assert pair_flop_ratio(3, 16, 27) < 0.35 and live_pair_flop_ratio(w, 1, 3) > 1.15
    mod = _module(lambda bb, x: relax.op.nn.conv2d(x, relax.const(w), padding=1))
    tvm.ir.assert_structural_equal(LowRankConv(0.01)(mod), mod)


def _sparse_net():
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)
    )
    with torch.no_grad():
        m[2].weight[:, :, 0, :] = 0
        m[4].weight[:, 5] = 0
    return m.eval()


def test_passes_leave_their_input_untouched():
    imp = import_program(torch.export.export(_sparse_net(), (torch.randn(1, 3, 8, 8),)))
    before = imp.mod.script(show_meta=True)
    for p in (DeadChannels(), LowRankConv(0.5), GroupSparseConv(LLVM)):
        out = p(imp.mod)
        assert not out.same_as(imp.mod)
        assert imp.mod.script(show_meta=True) == before, type(p).__name__


def test_layer_names_ride_on_the_ir_through_every_pass():
    imp = import_program(torch.export.export(_sparse_net(), (torch.randn(1, 3, 8, 8),)))
    convs = [
        b.value
        for blk in imp.mod["main"].body.blocks
        for b in blk.bindings
        if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.nn.conv2d"
    ]
    assert [layer_name(c) for c in convs] == ["0", "2", "4"]
    mod = GroupSparseConv(LLVM)(DeadChannels()(imp.mod))
    assert [r["name"] for r in kernel_records(mod)] == ["0", "2", "4"]


def test_identical_weights_do_not_collide():
    """Two layers with the same weights keep their own names (a content-keyed table merged them)."""
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Flatten(),
        nn.Linear(64, 64),
        nn.Linear(64, 64),
    ).eval()
    with torch.no_grad():
        m[2].weight.copy_(m[0].weight)
        m[2].bias.copy_(m[0].bias)
        m[5].weight.copy_(m[4].weight)
    low = lower(torch.export.export(m, (torch.randn(1, 4, 4, 4),)), LLVM)
    assert [r["name"] for r in low.records] == ["0", "2", "4", "5"]


def test_conv_bias_moves_into_the_batch_norm_mean():
    """conv -> + b -> batch_norm becomes conv -> batch_norm with mean - b (BN(y + b) = BN'(y)),
    which TVM's FoldBatchnormToConv2D then folds; the import leaves no element-wise op behind."""
    from tvm_passes.frontend.conv_bias_bn import ConvBiasIntoBatchNorm

    rng = np.random.default_rng(3)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal((1, 4, 1, 1)).astype(np.float32)
    gamma, beta, mean, var = (rng.random(4).astype(np.float32) + 0.5 for _ in range(4))

    def bn(bb, y, m):
        args = [relax.const(a) for a in (gamma, beta, m, var)]
        return bb.emit(relax.TupleGetItem(bb.emit(relax.op.nn.batch_norm(y, *args, axis=1)), 0))

    def before(bb, x):
        return bn(bb, bb.emit(relax.op.add(_conv(bb, x, w), relax.const(b))), mean)

    def expected(bb, x):
        return bn(bb, _conv(bb, x, w), mean - b.reshape(-1))

    tidy = tvm.transform.Sequential([relax.transform.DeadCodeElimination(), relax.transform.CanonicalizeBindings()])
    got = tidy(ConvBiasIntoBatchNorm()(_module(before)))
    tvm.ir.assert_structural_equal(got, tidy(_module(expected)))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU()).eval()
    net[1].running_mean.uniform_(-1, 1)
    main = import_program(torch.export.export(net, (torch.randn(1, 3, 8, 8),))).mod["main"]
    ops = {b.value.op.name for blk in main.body.blocks for b in blk.bindings if isinstance(b.value.op, tvm.ir.Op)}
    assert ops == {"relax.nn.conv2d", "relax.add", "relax.nn.relu"}  # bias add only: the batch norm is folded
