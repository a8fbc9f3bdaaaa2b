"""Relax pass 1: conv2d / matmul with constant weights -> scheduled kernel-library PrimFuncs.

``relax.nn.conv2d(x, const W)`` (+ a per-channel constant bias add, + a residual add of a tensor of
the output's shape, + ReLU, when they follow and nothing else reads the intermediates) becomes
``R.call_tir`` of ``conv2d_gather_gemm``: the GBD lowering of paper 000 section 3 / docs/formulas.md
section 1 (gather the rows (s, i, j), (i, j) in Omega_s, then one GEMM with the compact filter matrix).
The cost model picks the sparse gather-GEMM or the dense im2col GEMM of the same kernel library per conv
(a dense 3x3 stride-1 CPU conv: Winograd, winograd_conv.py).  ``relax.matmul(x, const W)`` (+ bias,
+ ReLU) becomes ``dense_gemm``.  In the style of TVM's ``FoldBatchnormToConv2D`` (DPL patterns in
``__init__``, a rewriter, ``rewrite_call``)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .. import cost_model
from ..ir import (
    batch_count,
    channel_vector,
    clip_max,
    const_numpy,
    kernel_shape,
    layer_name,
    same_shape,
    shape_record,
    with_span,
)
from ..ir import dtype_of as _dtype
from ..kernels.depthwise import is_depthwise
from .kernel_marks import INPLACE_ATTR, RECORD_ATTR, mark_kernel
from .leftovers import warn_leftovers
from .uint8_carry import Int8Conv, carry_uint8
from .winograd_conv import WinogradConv, emit_winograd, winograd_kernels

#: the conv attributes the depthwise kernel takes
DEPTHWISE_ATTRS = ("stride", "padding", "dilation", "relu")
#: the ``has_relu`` of the stages that end in clip(x, lo, hi): read off the call (clip_max)
CLIP = "clip"


def _kernels():
    from .. import kernels

    return kernels


def use_counts(func: relax.Function) -> dict:
    """Bound value (Call) -> number of uses of the variable it is bound to."""
    counts: dict = {}
    var_of = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            var_of[binding.var] = binding.value
            for v in relax.analysis.free_vars(binding.value):
                counts[v] = counts.get(v, 0) + 1
    for v in relax.analysis.free_vars(func.body.body):
        counts[v] = counts.get(v, 0) + 1
    return {value: counts.get(var, 0) for var, value in var_of.items()}


def conv_attrs(call: relax.Call) -> dict | None:
    """stride / padding / dilation / groups of a conv2d the kernel library takes (NCHW data, OIHW
    weight, float32 data and output), else None."""
    a = call.attrs
    if (str(a.data_layout), str(a.kernel_layout), str(a.out_layout)) != ("NCHW", "OIHW", "NCHW"):
        return None
    if _dtype(call.args[0]) != "float32" or _dtype(call) != "float32":
        return None
    return dict(
        stride=tuple(int(v) for v in a.strides),
        padding=tuple(int(v) for v in a.padding),
        dilation=tuple(int(v) for v in a.dilation),
        groups=int(a.groups),
    )


def conv_record(name, dshape, weight, oshape, attrs, has_bias, dec, residual=False) -> dict:
    """The manifest record of one conv kernel (``attrs``: stride, padding, dilation, groups, relu;
    ``dec``: the cost model's decision); a float32 kernel's unless its compute dtype is set after."""
    return {
        "name": name,
        "op": "conv2d",
        "input_shape": shape_record(dshape),
        "weight_shape": [int(v) for v in weight.shape],
        "output_shape": shape_record(oshape),
        "stride": list(attrs["stride"]),
        "padding": list(attrs["padding"]),
        "dilation": list(attrs["dilation"]),
        "groups": int(attrs["groups"]),
        "fused_bias": bool(has_bias),
        "fused_relu": attrs["relu"],
        "fused_residual": residual,
        **dec.as_dict(),
        "compute_dtype": "float32",
    }


@tvm.transform.module_pass(opt_level=0, name="GroupSparseConv")
class GroupSparseConv:
    """Rewrite convs and linear layers with constant weights into kernel-library call_tir.

    Each kernel PrimFunc carries its layer's record (name from the call's span, shapes, fused
    epilogue, the cost model's decision) as the ``RECORD_ATTR`` attribute; ``passes.records``
    reads them back.  ``sparse=False`` forces every conv to the dense im2col GEMM.  ``dtype``: the
    kernels' compute dtype (float32, or tf32 / float16 / bfloat16 tensor-core kernels on CUDA, or
    int8 on AVX-512 VNNI CPUs).  int8 needs ``quant``: per conv name, its input's calibrated
    ``scale`` and ``zero`` (``frontend.calibrate``); a conv without one, or one the int8 kernel
    cannot build, stays float32 with a warning naming it; so does a linear layer.
    ``carry_uint8`` (int8): tensors between int8 convs are uint8 (``passes.uint8_carry``).
    """

    def __init__(self, target, *, sparse=True, warn=True, dtype="float32", quant=None, carry_uint8=True):
        self.target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
        self.sparse = sparse
        self.warn = warn
        self.dtype = dtype
        self.quant = dict(quant or {})
        self.carry_uint8 = carry_uint8

        self.x = wildcard()
        self.w = is_const()
        self.b = is_const()
        self.conv = is_op("relax.nn.conv2d")(self.x, self.w)
        self.conv_bias = is_op("relax.add")(self.conv, self.b) | is_op("relax.add")(self.b, self.conv)
        self.conv_bias_relu = is_op("relax.nn.relu")(self.conv_bias)
        self.conv_relu = is_op("relax.nn.relu")(self.conv)
        # ReLU6 (MobileNet) arrives as clip(x, 0, 6): fused as relu with an upper bound (clip_max)
        self.conv_bias_clip = is_op("relax.clip")(self.conv_bias, wildcard(), wildcard())
        self.conv_clip = is_op("relax.clip")(self.conv, wildcard(), wildcard())
        # a ResNet block's skip connection: relu(conv + bias + res) in the kernel's epilogue
        self.r = wildcard()
        self.conv_res = is_op("relax.add")(self.conv_bias, self.r) | is_op("relax.add")(self.r, self.conv_bias)
        self.conv_res_relu = is_op("relax.nn.relu")(self.conv_res)
        self.mm = is_op("relax.matmul")(self.x, self.w)
        self.mm_bias = is_op("relax.add")(self.mm, self.b) | is_op("relax.add")(self.b, self.mm)
        self.mm_bias_relu = is_op("relax.nn.relu")(self.mm_bias)
        self.mm_relu = is_op("relax.nn.relu")(self.mm)
        # most specific first: each stage is its own rewrite_call; (pattern, core, bias, relu, residual)
        self.stages = [
            (self.conv_res_relu, self.conv, True, True, True),
            (self.conv_res, self.conv, True, False, True),
            (self.conv_bias_relu, self.conv, True, True, False),
            (self.conv_bias_clip, self.conv, True, CLIP, False),
            (self.conv_bias, self.conv, True, False, False),
            (self.conv_relu, self.conv, False, True, False),
            (self.conv_clip, self.conv, False, CLIP, False),
            (self.conv, self.conv, False, False, False),
            (self.mm_bias_relu, self.mm, True, True, False),
            (self.mm_bias, self.mm, True, False, False),
            (self.mm_relu, self.mm, False, True, False),
            (self.mm, self.mm, False, False, False),
        ]

    # ------------------------------------------------------------------ helpers
    def _intermediates_single_use(self, matches, root, core, has_bias, has_relu, uses, has_res=False):
        conv = core is self.conv
        inner = [matches[core]]
        if has_bias and (has_relu or has_res):
            inner.append(matches[self.conv_bias if conv else self.mm_bias])
        if has_res and has_relu:
            inner.append(matches[self.conv_res])
        return all(uses.get(e, 0) == 1 for e in inner if not e.same_as(root))

    def _residual(self, matches, oshape):
        """The residual operand when it is a float32 tensor of the conv output's shape, else None."""
        res = matches[self.r]
        if _dtype(res) != "float32" or not same_shape(kernel_shape(res), oshape):
            return None
        return res

    def _conv_rewrite(self, expr, matches, has_bias, has_relu, uses, bb, count, has_res=False, int8=None):
        call = matches[self.conv]
        if has_relu is CLIP:
            has_relu = clip_max(expr)  # the kernels' relu: True, or a float upper bound
            if has_relu is None:
                return expr
        if not self._intermediates_single_use(matches, expr, self.conv, has_bias, has_relu, uses, has_res):
            return expr
        data, attrs = matches[self.x], conv_attrs(call)
        dshape, oshape = kernel_shape(data), kernel_shape(call)  # the batch may be symbolic
        if attrs is None or dshape is None or oshape is None:
            return expr  # left to the generic path; warned about below
        weight = const_numpy(matches[self.w])
        if weight.dtype != np.float32:
            return expr
        bias = None
        if has_bias:
            bias = channel_vector(matches[self.b], weight.shape[0], 3)
            if bias is None or not same_shape(kernel_shape(matches[self.conv_bias]), oshape):
                return expr
        res = self._residual(matches, oshape) if has_res else None
        if has_res and res is None:
            return expr
        groups = attrs["groups"]
        attrs["relu"] = has_relu
        dec = cost_model.decide((batch_count(dshape), *dshape[1:]), weight, oshape, groups, sparse=self.sparse)
        name = layer_name(call) or f"conv{count['conv2d']}"
        count["conv2d"] += 1
        kw = dict(target=self.target, dense=dec.decision == "dense", residual=has_res, **attrs)
        kernel = self._conv_kernel(name, dshape, weight, bias, kw, dec)
        if kernel is None:
            return expr
        func, consts, built, dec = kernel
        record = conv_record(name, dshape, weight, oshape, attrs, bias is not None, dec, residual=has_res)
        record.update(self._quant_record(name, weight, built))
        base = "gbd_conv_" + name.replace(".", "_")
        if isinstance(func, WinogradConv):
            return with_span(emit_winograd(bb, func, record, base, (data, res), oshape), call.span)
        func = mark_kernel(func).with_attr(RECORD_ATTR, record)
        if has_res and record["compute_dtype"] == "float32" and self.target.kind.name == "llvm":
            func = func.with_attr(INPLACE_ATTR, len(consts) + 1)  # its args: data, consts, res
        gv = bb.add_func(func, base)
        if built is not None and int8 is not None:
            q = self.quant[name]
            kernel = functools.partial(self._int8_conv_kernel, dshape, weight, bias, q, kw)
            int8[gv.name_hint] = Int8Conv(q["scale"], q["zero"], has_res, lambda *flags: kernel(*flags)[0])
        args = [data] + [relax.const(c) for c in consts] + ([res] if has_res else [])
        return with_span(relax.call_tir(gv, args, relax.TensorType(oshape, "float32")), call.span)

    def _conv_kernel(self, name, dshape, weight, bias, kw, dec):
        """``(PrimFunc, consts, int8 build or None, decision)`` of one conv: int8, the depthwise
        kernel or the gather-GEMM; None, with a warning naming the layer, where the kernel library
        cannot build it (the conv then stays the legalized op)."""
        built = self._int8_conv(name, dshape, weight, bias, kw) if self.dtype == "int8" else None
        if built is not None:
            return (*built, built, dec)
        kernels = _kernels()
        try:  # an exception must not leave this rewriter: it would take the process down
            cpu_fp32 = self.dtype == "float32" and self.target.kind.name == "llvm"
            if cpu_fp32 and not kw["residual"] and is_depthwise(dshape, weight.shape, kw["groups"]):
                # one filter row per group: the direct kernel, 1.6-3.8x the gather-GEMM (MobileNetV2)
                func, consts = kernels.depthwise_conv2d(dshape, weight, bias, **{k: kw[k] for k in DEPTHWISE_ATTRS})
                return func, consts, None, cost_model.depthwise(dec)
            if cpu_fp32 and (wg := winograd_kernels(dshape, weight, bias, kw, dec)) is not None:
                return wg
            fp_dtype = "float32" if self.dtype == "int8" else self.dtype
            return (*kernels.conv2d_gather_gemm(dshape, weight, bias, dtype=fp_dtype, **kw), None, dec)
        except Exception as exc:  # noqa: BLE001 - a layout the kernel library cannot schedule
            warnings.warn(
                f"gbd-export: conv {name!r} (input {shape_record(dshape)}, weight {list(weight.shape)}) falls back "
                f"to the dense legalized conv2d: kernel library failed "
                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ''})",
                stacklevel=3,
            )
            return None

    def _int8_build(self, kind, name, build):
        """``build(q)`` -> (PrimFunc, consts) of an int8 kernel with the layer's calibrated input
        ``q``, or None (with a warning naming the layer) to stay float32: no range, or the int8
        kernel cannot be built."""
        q = self.quant.get(name)
        if q is None:
            warnings.warn(f"gbd-export: {kind} {name!r} has no calibration range; it stays float32", stacklevel=3)
            return None
        try:
            return build(q)
        except Exception as exc:  # noqa: BLE001 - any failure of the int8 build: the float32 kernel instead
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            warnings.warn(
                f"gbd-export: {kind} {name!r} cannot be quantized ({type(exc).__name__}: {first}); it stays float32",
                stacklevel=3,
            )
            return None

    def _int8_conv(self, name, dshape, weight, bias, kw):
        return self._int8_build("conv", name, lambda q: self._int8_conv_kernel(dshape, weight, bias, q, kw))

    def _int8_linear(self, name, dshape, weight, bias, relu):
        kernels, tgt = _kernels(), self.target
        return self._int8_build(
            "linear layer",
            name,
            lambda q: kernels.dense_gemm_int8(
                dshape, weight, bias, x_scale=q["scale"], x_zero=q["zero"], relu=relu, target=tgt
            ),
        )

    @staticmethod
    def _int8_conv_kernel(dshape, weight, bias, q, kw, in_u8=False, out_q=None, res_q=None):
        """(PrimFunc, consts) of the int8 conv; with uint8 input / output / residual when rebuilt
        by ``passes.uint8_carry`` (the consts do not change)."""
        carry = dict(in_u8=in_u8, out_q=out_q, res_q=res_q)
        return _kernels().conv2d_gather_gemm_int8(
            dshape, weight, bias, x_scale=q["scale"], x_zero=q["zero"], **kw, **carry
        )

    @staticmethod
    def _mark_carried(old, new, flags):
        """The rebuilt kernel's attributes: the old record plus the dtypes it now reads and writes."""
        in_u8, out_q, res_q = flags
        record = dict(old.attrs[RECORD_ATTR].items())
        record["input_dtype"] = "uint8" if in_u8 else "float32"
        record["output_dtype"] = "uint8" if out_q else "float32"
        if record.get("fused_residual"):
            record["residual_dtype"] = "uint8" if res_q else "float32"
        return mark_kernel(new).with_attr(RECORD_ATTR, record)

    def _quant_record(self, name, weight, built) -> dict:
        """The record's compute dtype and, for an int8 conv, its quantization parameters and errors."""
        if self.dtype != "int8":
            return {"compute_dtype": self.dtype}
        if built is None:
            return {"compute_dtype": "float32"}
        from lightning_gbd.core.quant import fake_quant_weight

        q = self.quant[name]
        w_err = float(np.linalg.norm(fake_quant_weight(weight) - weight) / max(np.linalg.norm(weight), 1e-30))
        return {
            "compute_dtype": "int8",
            "input_scale": q["scale"],
            "input_zero_point": q["zero"],
            "input_range": [q["lo"], q["hi"]],
            "weight_rel_error": w_err,
            "input_rel_error": q.get("rel_error"),
        }

    def _mm_rewrite(self, expr, matches, has_bias, has_relu, uses, bb, count):
        call = matches[self.mm]
        if not self._intermediates_single_use(matches, expr, self.mm, has_bias, has_relu, uses):
            return expr
        data = matches[self.x]
        dshape, oshape = kernel_shape(data), kernel_shape(call)
        w = const_numpy(matches[self.w])
        if (
            dshape is None
            or oshape is None
            or len(dshape) != 2
            or w.ndim != 2
            or w.dtype != np.float32
            or _dtype(data) != "float32"
            or _dtype(call) != "float32"
        ):
            return expr
        weight = np.ascontiguousarray(w.T)  # (out, in): y = x @ weight.T
        bias = None
        if has_bias:
            bias = channel_vector(matches[self.b], weight.shape[0], 1)
            if bias is None or not same_shape(kernel_shape(matches[self.mm_bias]), oshape):
                return expr
        idx = count["linear"]
        count["linear"] += 1
        name = layer_name(call) or f"linear{idx}"
        built = self._int8_linear(name, dshape, weight, bias, has_relu) if self.dtype == "int8" else None
        dtype = "float32" if self.dtype == "int8" else self.dtype
        kernels = _kernels()
        func, consts = built or kernels.dense_gemm(dshape, weight, bias, relu=has_relu, target=self.target, dtype=dtype)
        flops = 2 * batch_count(dshape) * weight.shape[0] * weight.shape[1]
        record = {
            "name": name,
            "op": "linear",
            "input_shape": shape_record(dshape),
            "weight_shape": [int(v) for v in weight.shape],
            "output_shape": shape_record(oshape),
            "fused_bias": bias is not None,
            "fused_relu": has_relu,
            "decision": "dense",
            "density": 1.0,
            "flops_dense": flops,
            "flops_executed": flops,
            "reason": "linear layer: dense GEMM of the kernel library",
            **self._quant_record(name, weight, built),
        }
        gv = bb.add_func(mark_kernel(func).with_attr(RECORD_ATTR, record), f"gbd_linear{idx}")
        args = [data] + [relax.const(c) for c in consts]
        return with_span(relax.call_tir(gv, args, relax.TensorType(oshape, "float32")), call.span)

    # ------------------------------------------------------------------ pass
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        bb = relax.BlockBuilder(mod)
        count = {"conv2d": 0, "linear": 0}  # fallback names of layers the import did not name
        int8 = {} if self.dtype == "int8" and self.carry_uint8 else None  # kernel name -> Int8Conv
        for gv, func in list(mod.functions_items()):
            if not isinstance(func, relax.Function):
                continue
            if "Primitive" in func.attrs.keys() and func.attrs["Primitive"] != 0:
                continue
            for pattern, core, has_bias, has_relu, has_res in self.stages:
                uses = use_counts(func)
                if core is self.conv:

                    def rewriter(expr, matches, hb=has_bias, hr=has_relu, u=uses, hs=has_res):
                        return self._conv_rewrite(expr, matches, hb, hr, u, bb, count, hs, int8)

                else:

                    def rewriter(expr, matches, hb=has_bias, hr=has_relu, u=uses):
                        return self._mm_rewrite(expr, matches, hb, hr, u, bb, count)

                func = rewrite_call(pattern, rewriter, func)
                func = relax.analysis.remove_all_unused(func)
            bb.update_func(gv, func)
            if self.warn:
                warn_leftovers(func)
        return carry_uint8(bb.get(), int8, self._mark_carried) if int8 else bb.get()
