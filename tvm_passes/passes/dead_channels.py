"""Relax pass 2: dead input maps are not computed (paper 000 section 3; docs/formulas.md section 1).

An input channel s with an empty pattern Omega_s in *every* consumer conv is a dead input map:
no consumer reads it.  The producer conv (reached back through channel-wise ops: per-channel
constant bias adds / scales from folded BN, ReLU-like activations, max / avg pooling) stops
computing it: its weight rows and bias entries are sliced away, and the consumers' weight
columns for s are removed.  Runs on the Relax graph of ``relax.nn.conv2d`` ops, before pass 1,
to a fixed point (removing producer rows can empty more patterns upstream).  docs/formulas.md
section 1 (dead input maps).

A region is rewritten only when every use of every value between producer and consumers is a
channel-wise op or an NCHW, groups=1 conv with a constant weight; anything else (residual adds,
concat, flatten, the function output) keeps all channels.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from lightning_gbd.core.groups import group_mask

from ..ir import const_numpy, is_constant, op_name, type_of

#: single-input ops that map channel c to channel c (NCHW, attrs checked below)
CHANNELWISE_UNARY = {
    "relax.nn.relu",
    "relax.nn.relu6",
    "relax.nn.leakyrelu",
    "relax.nn.gelu",
    "relax.nn.gelu_tanh",
    "relax.nn.silu",
    "relax.sigmoid",
    "relax.tanh",
    "relax.clip",
    "relax.nn.max_pool2d",
    "relax.nn.avg_pool2d",
    "relax.nn.adaptive_avg_pool2d",
}
#: binary ops with one per-channel constant operand
CHANNELWISE_CONST = {"relax.add", "relax.subtract", "relax.multiply", "relax.divide"}


def _ndim(expr):
    ty = type_of(expr)
    return int(ty.ndim) if isinstance(ty, relax.TensorType) else -1


def _gbd_conv(call) -> bool:
    """A conv2d both passes understand: NCHW/OIHW, groups 1, constant float32 weight."""
    if op_name(call) != "relax.nn.conv2d":
        return False
    a = call.attrs
    return (
        str(a.data_layout) == "NCHW"
        and str(a.kernel_layout) == "OIHW"
        and str(a.out_layout) == "NCHW"
        and int(a.groups) == 1
        and is_constant(call.args[1])
        and str(type_of(call.args[1]).dtype) == "float32"
    )


def _per_channel_const(const, channels) -> bool:
    """Broadcasts against (N, C, H, W) along C only (or is a scalar)."""
    shape = tuple(int(d) for d in type_of(const).shape.values)
    size = int(np.prod(shape)) if shape else 1
    if size == 1:
        return True
    if len(shape) < 3 or len(shape) > 4:
        return False
    return shape[-3] == channels and size == channels


def _channelwise(call, value_var, channels) -> bool:
    name = op_name(call)
    if name in CHANNELWISE_UNARY:
        if not call.args[0].same_as(value_var):
            return False
        if any(a.same_as(value_var) for a in call.args[1:]):
            return False
        attrs = call.attrs
        if attrs is not None and hasattr(attrs, "layout") and str(attrs.layout) != "NCHW":
            return False
        if attrs is not None and hasattr(attrs, "out_layout") and str(attrs.out_layout) not in ("NCHW", ""):
            return False
        return _ndim(call) == 4
    if name in CHANNELWISE_CONST:
        x, c = call.args
        if name in ("relax.subtract", "relax.divide") and not x.same_as(value_var):
            return False
        if x.same_as(value_var) and is_constant(c):
            const = c
        elif c.same_as(value_var) and is_constant(x):
            const = x
        else:
            return False
        return _ndim(call) == 4 and _per_channel_const(const, channels)
    return False


def _analyse(func):
    """Plans: conv-call -> (out_keep or None, in_keep or None); channel-wise calls in regions."""
    bindings = [b for block in func.body.blocks for b in block.bindings]
    value_of = {b.var: b.value for b in bindings}
    uses: dict = {}
    for b in bindings:
        for v in relax.analysis.free_vars(b.value):
            uses.setdefault(v, []).append(b.var)
    outputs = set(relax.analysis.free_vars(func.body.body))

    out_keep: dict = {}  # producer var -> kept channel indices
    in_keep: dict = {}  # consumer var -> kept input columns
    region_calls: dict = {}  # channel-wise var -> kept channels
    for b in bindings:
        if not isinstance(b.value, tvm.ir.Call) or not _gbd_conv(b.value):
            continue
        channels = int(type_of(b.value).shape.values[1])
        region, frontier, consumers, ok = [], [b.var], [], True
        while frontier and ok:
            v = frontier.pop()
            if v in outputs:
                ok = False
                break
            for u in uses.get(v, []):
                call = value_of[u]
                if isinstance(call, tvm.ir.Call) and _gbd_conv(call) and call.args[0].same_as(v):
                    if u not in consumers:
                        consumers.append(u)
                elif isinstance(call, tvm.ir.Call) and _channelwise(call, v, channels):
                    if u not in region:
                        region.append(u)
                        frontier.append(u)
                else:
                    ok = False
                    break
        if not ok or not consumers:
            continue
        live = np.zeros(channels, dtype=bool)
        for c in consumers:
            w = const_numpy(value_of[c].args[1])
            live |= group_mask(w).numpy().any(axis=(1, 2))  # groups == 1 (_gbd_conv)
        if live.all():
            continue
        if not live.any():
            live[0] = True  # keep one map so no tensor becomes empty
        keep = np.flatnonzero(live)
        out_keep[b.var] = keep
        for c in consumers:
            in_keep[c] = keep
        for r in region:
            region_calls[r] = keep
    return value_of, out_keep, in_keep, region_calls


def _slice_const(const, keep):
    arr = const_numpy(const)
    if arr.size == 1:
        return const
    axis = arr.ndim - 3
    return relax.const(np.ascontiguousarray(np.take(arr, keep, axis=axis)))


@relax.expr_functor.mutator
class _Slicer(relax.PyExprMutator):
    def __init__(self, mod, by_call):
        super().__init__(mod)
        self.by_call = by_call  # original Call -> ("conv", out_keep, in_keep) | ("cw", keep)

    def visit_call_(self, call):
        plan = self.by_call.get(call)
        args = [self.visit_expr(a) for a in call.args]
        if plan is None:
            if all(a.same_as(b) for a, b in zip(args, call.args)):
                return call
            return tvm.ir.Call(call.op, args, call.attrs, call.ty_args or None, call.span)
        if plan[0] == "conv":
            _, ok, ik = plan
            w = const_numpy(call.args[1])
            if ok is not None:
                w = w[ok]
            if ik is not None:
                w = w[:, ik]
            return tvm.ir.Call(call.op, [args[0], relax.const(np.ascontiguousarray(w))], call.attrs, None, call.span)
        keep = plan[1]
        new_args = [(_slice_const(a, keep) if is_constant(a) else a) for a in args]
        return tvm.ir.Call(call.op, new_args, call.attrs, call.ty_args or None, call.span)


@tvm.transform.module_pass(opt_level=0, name="DeadChannels")
class DeadChannels:
    """Remove dead input maps from producers and consumers, to a fixed point (at most ``max_iters``
    rounds).  The convs keep their spans (layer names); how many maps each lost is read off the
    weight shapes afterwards (``passes.records``)."""

    def __init__(self, max_iters: int = 8):
        self.max_iters = max_iters

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for _ in range(self.max_iters):
            func = relax.analysis.remove_all_unused(mod["main"])
            value_of, out_keep, in_keep, region_calls = _analyse(func)
            if not out_keep:
                break
            by_call = {value_of[v]: ("conv", out_keep.get(v), in_keep.get(v)) for v in set(out_keep) | set(in_keep)}
            for var, keep in region_calls.items():
                by_call[value_of[var]] = ("cw", keep)
            new_func = relax.analysis.remove_all_unused(_Slicer(mod, by_call).visit_expr(func))
            bb = relax.BlockBuilder(mod)
            bb.update_func(mod.get_global_var("main"), new_func)
            mod = bb.get()
        return mod
