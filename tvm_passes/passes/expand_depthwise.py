"""Relax pass: a 1x1 expansion and the stride-2 depthwise conv that alone reads it -> one kernel.

``act2(conv2d_dw(act1(conv2d_1x1(x, W1) + b1), Wd) + bd)`` (act: ReLU or ReLU6, the depthwise
conv 3x3 at stride 2, padding 1: an inverted-residual block's first two layers) becomes one
``R.call_tir`` of ``kernels.expand_depthwise`` where its ``plan`` takes the pair (expanded maps of
at least 1 MB on rows of at least 32 columns; docs/formulas.md 1.28): the expanded maps
stay in each task's cache-sized buffer instead of going through memory.  CPU, float32, static
batch; runs before ``GroupSparseConv``, which lowers every conv this pass leaves.  The kernel
carries both layers' records (``RECORD_ATTR`` holds a list), so the manifest still lists each
conv.  A pattern built in ``__init__`` and a rewriter, as ``GroupSparseConv``.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .. import cost_model
from ..ir import channel_vector, clip_max, const_numpy, kernel_shape, layer_name, op_name, with_span
from ..kernels import expand_depthwise
from .group_sparse_conv import conv_attrs, conv_record, use_counts
from .kernel_marks import RECORD_ATTR, mark_kernel


def _act(call) -> float | bool | None:
    """The kernels' ``relu`` of a ReLU (True) or a ReLU6 clip (its upper bound), else None."""
    if op_name(call) == "relax.nn.relu":
        return True
    return clip_max(call)


@tvm.transform.module_pass(opt_level=0, name="FuseExpandDepthwise")
class FuseExpandDepthwise:
    """Fuse a 1x1 expansion (+ bias + ReLU / ReLU6) into the stride-2 depthwise conv after it.

    ``sparse`` as ``GroupSparseConv``'s (the records' cost-model decisions).  Example::

        mod = FuseExpandDepthwise("llvm -mcpu=znver4")(mod)
    """

    def __init__(self, target, *, sparse=True):
        self.target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
        self.sparse = sparse
        self.x, self.w1, self.b1, self.wd, self.bd = wildcard(), is_const(), is_const(), is_const(), is_const()
        self.conv1 = is_op("relax.nn.conv2d")(self.x, self.w1)
        self.add1 = is_op("relax.add")(self.conv1, self.b1)
        self.act1 = is_op("relax.clip")(self.add1, wildcard(), wildcard()) | is_op("relax.nn.relu")(self.add1)
        self.conv2 = is_op("relax.nn.conv2d")(self.act1, self.wd)
        self.add2 = is_op("relax.add")(self.conv2, self.bd)
        self.pattern = is_op("relax.clip")(self.add2, wildcard(), wildcard()) | is_op("relax.nn.relu")(self.add2)

    def _layers(self, expr, matches, uses):
        """(data, its shape, [(conv call, weight, bias, attrs)] x 2, output shape) of a match this
        pass takes, else None."""
        inner = [matches[p] for p in (self.conv1, self.add1, self.act1, self.conv2, self.add2)]
        if any(uses.get(e, 0) != 1 for e in inner):
            return None  # an intermediate someone else reads
        data, oshape = matches[self.x], kernel_shape(expr)
        layers = []
        for conv, w, b, act in (
            (self.conv1, self.w1, self.b1, matches[self.act1]),
            (self.conv2, self.wd, self.bd, expr),
        ):
            call, attrs, relu = matches[conv], conv_attrs(matches[conv]), _act(act)
            weight = const_numpy(matches[w])
            bias = channel_vector(matches[b], weight.shape[0], 3) if attrs else None
            if attrs is None or bias is None or relu is None or str(weight.dtype) != "float32":
                return None
            layers.append((call, weight, bias, {**attrs, "relu": relu}))
        dshape = kernel_shape(data)
        if dshape is None or oshape is None:
            return None
        a1 = layers[0][3]
        if (a1["stride"], a1["dilation"], a1["groups"], sum(a1["padding"])) != ((1, 1), (1, 1), 1, 0):
            return None
        return data, dshape, layers, oshape

    def _rewrite(self, expr, matches, uses, bb):
        found = self._layers(expr, matches, uses)
        if found is None:
            return expr
        data, dshape, ((c1, w1, b1, a1), (c2, wd, bd, a2)), oshape = found
        tile = expand_depthwise.plan(
            dshape, w1.shape, wd.shape, *(a2[k] for k in ("stride", "padding", "dilation", "groups"))
        )
        if tile is None:
            return expr
        eshape = kernel_shape(c1)
        dec1 = cost_model.decide(dshape, w1, eshape, 1, sparse=self.sparse)
        if dec1.decision != "dense":
            return expr  # a gather-GEMM 1x1 (never after DeadChannels): its own kernel
        dec2 = cost_model.depthwise(cost_model.decide(eshape, wd, oshape, a2["groups"], sparse=self.sparse))
        names = [layer_name(c) or f"expand_depthwise{i}" for i, c in enumerate((c1, c2))]
        records = [
            conv_record(names[0], dshape, w1, eshape, a1, True, dec1),
            conv_record(names[1], eshape, wd, oshape, a2, True, dec2),
        ]
        for rec, other in zip(records, names[::-1]):
            rec["reason"] += f"; one kernel with {other} (the expanded maps stay in cache, formula 1.28)"
        func, consts = expand_depthwise.expand_depthwise_conv2d(dshape, w1, b1, a1["relu"], wd, bd, a2["relu"], tile)
        gv = bb.add_func(mark_kernel(func).with_attr(RECORD_ATTR, records), "gbd_conv_" + names[1].replace(".", "_"))
        args = [data] + [relax.const(c) for c in consts]
        return with_span(relax.call_tir(gv, args, relax.TensorType(oshape, "float32")), c2.span)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if self.target.kind.name != "llvm":
            return mod
        bb = relax.BlockBuilder(mod)
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function) or func.attrs.get("Primitive", 0) != 0:
                continue
            uses = use_counts(func)
            func = rewrite_call(self.pattern, lambda e, m, u=uses: self._rewrite(e, m, u, bb), func)
            bb.update_func(gv, relax.analysis.remove_all_unused(func))
        return bb.get()
