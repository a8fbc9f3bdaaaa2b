"""Run the front of a network image by image at a large batch (docs/formulas.md 1.27).

The first layers of a CNN have the largest maps.  At batch 32 each of their tensors is tens of
megabytes (MobileNetV2's 96-map 112x112 expansion: 154 MB), so every layer streams its input and
output through memory, while one image's tensors of the same layers stay in the caches.  The
later layers have small maps and run better over the whole batch (their GEMMs get longer).  This
is DeepSparse's "tensor columns", at the granularity of the graph: ``main(x[B])`` becomes

    for i in 0 .. B/c - 1:  y_i = front(x[i c : (i + 1) c])      front: the network up to the cut,
                            y[i c : (i + 1) c] = y_i              compiled at batch c
    back(y)                                                       the rest, at batch B

where the cut is the first tensor under ``FRONT_MIN_BYTES`` per image that alone carries
everything the rest reads, after the last tensor of at least that size that a memory-bound kernel
writes (at most ``MAX_FLOPS_PER_VALUE`` FLOPs per output value), and the front holds at most
``MAX_FRONT_SHARE`` of the kernels' FLOPs.  The front's kernels are the same library's,
lowered at batch ``CHUNK`` by a second ``lower``.  Ad-hoc, 2 threads, AMD EPYC: per-layer times of
the batch-1 export times 32 against the batch-32 export: ResNet-50 at density 0.3, layers up to
layer2 144 against 171 ms (layer3: 136 against 125, so not there); MobileNetV2 dense, features
1-4 46 against 67 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T

from .ir import TIR_CALLS, func_attr, op_name, static_shape, tir_callee, type_of
from .passes.kernel_marks import RECORD_ATTR, mark_kernel

#: a tensor of at least this many bytes per image is in the front (about one core's L2 here; a
#: 1.6 MB per image layer2 of ResNet-50 ran faster image by image, a 0.8 MB layer3 slower)
FRONT_MIN_BYTES = 1 << 20
#: a big tensor counts only when its kernel does at most this many FLOPs per output value (a
#: short reduction: a 1x1 conv of few maps, a depthwise or a 3-map stem conv, bound by memory at a
#: large batch); a dense ResNet-50, whose big tensors come from 64-map 1x1 convs (128 FLOPs per
#: value) and 3x3 convs, ran 0.98x as fast chunked (ad-hoc, as above)
MAX_FLOPS_PER_VALUE = 100
#: the largest share of the kernels' FLOPs the front may hold (ResNet-50's front: 54-55% at density
#: 0.3 / 0.1; VGG-16's maps stay big through 90% of its FLOPs, mostly 3x3 convs that run faster over
#: the whole batch)
MAX_FRONT_SHARE = 0.6
#: the smallest batch that is split
MIN_BATCH = 8
#: images per front call (ResNet-50's front: 1 image 144 ms, 2: 150, 4: 175; ad-hoc as above)
CHUNK = 1
_LANES = 16


@dataclass(frozen=True)
class Cut:
    """Where the front ends: the kernel of layer ``layer`` writes the tensor the back reads."""

    layer: str
    chunk: int


def _block(func):
    body = func.body
    if len(body.blocks) != 1 or not isinstance(body.blocks[0], relax.DataflowBlock):
        return None
    return list(body.blocks[0].bindings)


def _record(mod, value) -> dict:
    """The record of the kernel a binding calls ({} for anything else); a kernel of several layers
    (passes.expand_depthwise): the last one's name, all their FLOPs."""
    rec = func_attr(tir_callee(mod, value), RECORD_ATTR)
    if rec is None:
        return {}
    if hasattr(rec, "items"):
        return dict(rec.items())
    flops = sum(int(r.get("flops_executed", 0)) for r in rec)
    return {**dict(rec[-1].items()), "flops_executed": flops}


def _layer(mod, value) -> str | None:
    """The record name of the kernel a binding calls, else None."""
    name = _record(mod, value).get("name")
    return None if name is None else str(name)


def _carries_front(binds, k, param) -> bool:
    """Whether binding k's var alone carries the bindings up to k into the rest: nothing after k
    reads another of their vars, or the input."""
    front = {b.var for b in binds[: k + 1]}
    for b in binds[k + 1 :]:
        used = set(relax.analysis.free_vars(b.value))
        if param in used or (used & front) - {binds[k].var}:
            return False
    return True


def plan(mod: tvm.IRModule, batch: int) -> Cut | None:
    """The cut of ``mod``'s main at ``batch`` images, or None where none pays (module doc)."""
    main = mod["main"]
    binds = _block(main)
    if batch < MIN_BATCH or batch % CHUNK or binds is None or len(main.params) != 1:
        return None
    big = [i for i, b in enumerate(binds) if _memory_bound(mod, b, batch)]
    for k in range(big[-1] + 1 if big else len(binds), len(binds) - 1):
        name, shape = _layer(mod, binds[k].value), static_shape(binds[k].var)
        small = shape is not None and 4 * np.prod(shape[1:]) < FRONT_MIN_BYTES  # cheap to place
        if name is not None and small and _carries_front(binds, k, main.params[0]):
            share = _flops(mod, binds[: k + 1]) / max(_flops(mod, binds), 1)
            return Cut(name, CHUNK) if share <= MAX_FRONT_SHARE else None
    return None


def _memory_bound(mod, b, batch) -> bool:
    """A kernel's output of at least FRONT_MIN_BYTES per image at most MAX_FLOPS_PER_VALUE FLOPs each."""
    rec, shape = _record(mod, b.value), static_shape(b.var)
    if not rec or not shape or shape[0] != batch:
        return False
    values = int(np.prod(shape))
    return 4 * values / batch >= FRONT_MIN_BYTES and rec.get("flops_executed", 0) <= MAX_FLOPS_PER_VALUE * values


def _flops(mod, binds) -> int:
    return sum(int(_record(mod, b.value).get("flops_executed", 0)) for b in binds)


def _copy_kernel(src_shape, dst_shape, n):
    """``dst[d : d + n] = src[s : s + n]`` over the flat elements (``s``, ``d``: int64 arguments),
    in whole vectors, parallel: one chunk cut out of the batch, or placed back into it.  In S-TIR
    form (one root block), as the dataflow passes expect of every call_tir callee."""
    ns, nd = int(np.prod(src_shape)), int(np.prod(dst_shape))

    @T.prim_func(private=True, s_tir=True)
    def copy(src: T.Buffer(src_shape, "float32"), s: T.int64, d: T.int64, dst: T.Buffer(dst_shape, "float32")):
        T.func_attr({"tir.noalias": True})
        with T.sblock("root"):
            sf = T.decl_buffer((ns,), "float32", data=src.data)
            df = T.decl_buffer((nd,), "float32", data=dst.data)
            for i in T.parallel(n // _LANES):
                for j in T.vectorized(_LANES):
                    df[d + T.int64(i * _LANES + j)] = sf[s + T.int64(i * _LANES + j)]

    return mark_kernel(copy)


def _with_callee(call, gv):
    """The same call_tir / call_tir_inplace with ``gv`` as its callee."""
    ty_args = list(call.ty_args) if call.ty_args else None
    return tvm.ir.Call(call.op, [gv, *call.args[1:]], call.attrs, ty_args, call.span)


def _cut_index(mod, binds, layer):
    return next((i for i, b in enumerate(binds) if _layer(mod, b.value) == layer), None)


def _front_function(bb, mod_c, cut):
    """``front`` (the chunk module's main up to the cut, its kernels renamed into ``bb``), or None."""
    main = mod_c["main"]
    binds = _block(main)
    k = None if binds is None or len(main.params) != 1 else _cut_index(mod_c, binds, cut.layer)
    if k is None or not _carries_front(binds, k, main.params[0]):
        return None
    renamed, body = {}, []
    for b in binds[: k + 1]:
        value = b.value
        if op_name(value) in TIR_CALLS:
            gv = value.args[0]
            if gv not in renamed:
                func = mod_c[gv]
                func = func.without_attr(RECORD_ATTR) if func_attr(func, RECORD_ATTR) is not None else func
                renamed[gv] = bb.add_func(func, gv.name_hint + "_front")  # the records are the batch's
            value = _with_callee(value, renamed[gv])
        body.append(relax.VarBinding(b.var, value, b.span))
    out = relax.Var("front_out", type_of(binds[k].var))
    body.append(relax.VarBinding(out, binds[k].var))
    seq = bb.normalize(relax.SeqExpr([relax.DataflowBlock(body)], out))
    return bb.add_func(relax.Function([main.params[0]], seq, type_of(out), True), "front")


def _chunk_bindings(bb, x, front, cut_ty, chunk, batch):
    """The bindings that run ``front`` on each chunk of ``x`` and place the results in one tensor
    of ``cut_ty``; returns (bindings, that tensor's var)."""
    xs, ys = static_shape(x)[1:], tuple(int(d) for d in cut_ty.shape.values)[1:]
    nx, ny = chunk * int(np.prod(xs)), chunk * int(np.prod(ys))
    g_slice = bb.add_func(_copy_kernel((batch, *xs), (chunk, *xs), nx), "chunk_slice")
    g_place = bb.add_func(_copy_kernel((chunk, *ys), (batch, *ys), ny), "chunk_place")
    out, dst = [], None
    for i in range(batch // chunk):
        xi = relax.DataflowVar(f"x_chunk{i}", relax.TensorType((chunk, *xs), "float32"))
        out.append(relax.VarBinding(xi, relax.call_tir(g_slice, [x, _i64(i * nx), _i64(0)], type_of(xi))))
        yi = relax.DataflowVar(f"front{i}", relax.TensorType((chunk, *ys), "float32"))
        out.append(relax.VarBinding(yi, relax.Call(front, [xi])))
        args = [yi, _i64(0), _i64(i * ny)]
        value = (
            relax.call_tir(g_place, args, cut_ty)
            if dst is None  # a new tensor of the batch, whose other images the next chunks write
            else relax.op.call_tir_inplace(g_place, [*args, dst], [3], cut_ty)
        )
        dst = relax.DataflowVar(f"placed{i}", cut_ty)
        out.append(relax.VarBinding(dst, value))
    return out, dst


def _i64(v):
    return relax.prim_value(int(v), "int64")


def assemble(mod_b: tvm.IRModule, mod_c: tvm.IRModule, cut: Cut, batch: int) -> tvm.IRModule | None:
    """``mod_b`` (lowered at ``batch``) whose main runs its front chunk by chunk through the front
    of ``mod_c`` (the same model lowered at ``cut.chunk``); None where the two do not fit."""
    main = mod_b["main"]
    binds = _block(main)
    k = None if binds is None else _cut_index(mod_b, binds, cut.layer)
    if k is None or not _carries_front(binds, k, main.params[0]):
        return None
    cut_ty, xshape = type_of(binds[k].var), static_shape(main.params[0])
    if xshape is None or str(cut_ty.dtype) != "float32":
        return None
    sizes = (cut.chunk * int(np.prod(xshape[1:])), cut.chunk * int(np.prod(static_shape(binds[k].var)[1:])))
    if any(n % _LANES for n in sizes):
        return None
    bb = relax.BlockBuilder(mod_b)
    front = _front_function(bb, mod_c, cut)
    if front is None:
        return None
    chunked, placed = _chunk_bindings(bb, main.params[0], front, cut_ty, cut.chunk, batch)
    body = chunked + [relax.VarBinding(binds[k].var, placed)] + binds[k + 1 :]
    seq = bb.normalize(relax.SeqExpr([relax.DataflowBlock(body)], main.body.body))
    new_main = relax.Function(main.params, seq, main.ret_ty, main.is_pure, main.attrs)
    bb.update_func(mod_b.get_global_var("main"), new_main)
    return relax.transform.DeadCodeElimination(["main"])(bb.get())
