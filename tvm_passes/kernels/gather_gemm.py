"""Public entry points of the kernel library: the GBD gather-GEMM conv (paper 000, section 3;
docs/formulas.md section 1 "Lowering") and a dense linear layer, as scheduled TIR PrimFuncs plus the
numpy constants their extra parameters take."""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import tvm
from tvm import tirx

from ..target import has_amx, request_amx
from ..threads import configure as configure_threads
from . import cpu, cpu_amx, cpu_int8, cpu_small, cuda, cuda_tc, dense_int8
from .lowering import conv_output_size, lower_conv
from .te_defs import conv_te, dense_te, dense_te_tc

#: compute dtypes of the kernels: float32 (SIMT on CUDA, AVX-512 on CPU), int8 (AVX-512 VNNI CPUs) and the
#: CUDA tensor-core ones
DTYPES = ("float32", "int8", *cuda_tc.DTYPES)


def _as_target(target):
    if isinstance(target, tvm.target.Target):
        return target
    return tvm.target.Target(target)


def _is_gpu(target):
    return target.kind.name in ("cuda", "rocm", "vulkan", "metal", "opencl", "webgpu")


def _finish(func, target):
    # No global_symbol: the Relax build names the kernel after its GlobalVar (several kernels
    # called "main" would clash).  Stand-alone use: compile_kernel().
    func = func.without_attr("global_symbol")
    func = func.with_attr("tir.is_scheduled", True)
    func = func.with_attr("tir.noalias", True)
    return func


def _batch_dim(dim):
    """A static batch as an int; a symbolic one as a fresh int32 ``tir.Var`` (the kernels index in
    int32; a Relax shape var is int64 and binds to it when the kernel is called)."""
    if isinstance(dim, (int, np.integer)):
        return int(dim)
    return tirx.Var(getattr(dim, "name", "batch"), "int32")


def check_dtype(dtype, target) -> str:
    """``dtype`` if the target can run it, else a one-line ValueError (tensor cores: CUDA only; int8:
    a CPU with AVX-512 VNNI)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    target = _as_target(target)
    kind = target.kind.name
    if dtype == "int8":
        if kind != "llvm":
            raise ValueError(f"dtype 'int8' has CPU kernels only (AVX-512 VNNI); not for the {kind} target")
        from tvm.target.codegen import llvm_cpu_has_features

        if not llvm_cpu_has_features("avx512vnni", target):
            raise ValueError(f"dtype 'int8' needs a CPU with AVX-512 VNNI; target {target} has none")
        return dtype
    if dtype != "float32" and kind != "cuda":
        raise ValueError(f"dtype {dtype!r} needs the CUDA target (tensor cores); {kind} kernels are float32 only")
    return dtype


def operand_array(a, dtype):
    """A float32 numpy constant in the storage type of ``dtype``'s operands (tf32: rounded, kept in
    float32; bfloat16: ml_dtypes' numpy type, round to nearest even)."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "tf32":
        bits = a.view(np.uint32)
        return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)
    if dtype == "bfloat16":
        import ml_dtypes

        return a.astype(ml_dtypes.bfloat16)
    return a.astype(dtype)


def compile_kernel(func, target):
    """Compile one kernel from this library on its own (tests, benchmarks); the result is
    callable as ``lib(*inputs, out)`` / ``lib["main"]``."""
    target = _as_target(target)
    if not _is_gpu(target):
        configure_threads()
    if has_amx(target) and not request_amx():
        raise ValueError("the target uses AMX tiles, which this CPU or OS does not allow")
    with build_context(target):
        return tvm.compile(func.with_attr("global_symbol", "main"), target=target)


def build_context(target):
    """The context kernels of this library are built in: on CUDA a PassContext in which the copies
    of the software pipelines' async stages become ``cp.async`` (TVM's InjectPTXAsyncCopy; kernels
    without such stages are unchanged); elsewhere the current one."""
    if _as_target(target).kind.name != "cuda":
        return contextlib.nullcontext()
    cur = tvm.transform.PassContext.current()
    cfg = {**dict(cur.config), "tirx.use_async_copy": True}
    return tvm.transform.PassContext(opt_level=cur.opt_level, config=cfg, disabled_pass=list(cur.disabled_pass))


def _lower_cpu(data_shape, weight, kw, lw, target, split_pixels=False):
    """lower_conv for the CPU schedules: with the filter rows padded so that the t-chunks of the
    schedule (cpu.t_chunks, which every CPU conv schedule plans its tasks with) divide evenly;
    with ``split_pixels``, where they would not, first smaller n-chunks (cpu.pixel_split_params)."""
    lowered = lower_conv(data_shape, weight, **kw, **lw)
    tpo = cpu.t_chunks(lowered[0], target)
    if lowered[0].TO % tpo == 0:
        return lowered
    if split_pixels and (split := cpu.pixel_split_params(lowered[0], lw, target)):
        relowered = lower_conv(data_shape, weight, **kw, **split)
        if relowered[0].NRP and relowered[0].TO % cpu.t_chunks(relowered[0], target) == 0:
            return relowered
    return lower_conv(data_shape, weight, **kw, **lw, to_multiple=tpo)


def _lower_cpu_f32(data_shape, weight, kw, lw, target):
    """(lowering, cpu_small's lowering_params or None) of a float32 CPU conv: on ``lw``'s tiles,
    or 8 x 32 ones for a short reduction (cpu.short_reduction_params); its rows unpadded where that
    computes fewer pixels in whole-row chunks (cpu.exact_row_params; the epilogue stays fused),
    else the pixel x channel tile where ``lw``'s tiles waste pixels (cpu_small.lowering_params),
    else unpadded rows read straight from the input (1x1 convs, cpu.direct_lowering_params)."""
    lower = functools.partial(_lower_cpu, data_shape, weight, kw, target=target, split_pixels=True)
    lowered = lower(lw)
    if narrow := cpu.short_reduction_params(lowered[0]):
        lw = narrow
        lowered = lower(lw)
    if exact := cpu.exact_row_params(lowered[0], lw):
        unpadded = lower(exact)
        if unpadded[0].NP < lowered[0].NP and unpadded[0].NRP:
            return unpadded, None
    small = cpu_small.lowering_params(lowered[0])
    relower = small or cpu.direct_lowering_params(lowered[0], lw)
    return (lower(relower) if relower else lowered), small


def conv2d_gather_gemm(
    data_shape,
    weight,
    bias=None,
    *,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    groups=1,
    relu=False,
    residual=False,
    dense=False,
    target,
    dtype="float32",
):
    """NCHW float32 conv2d lowered to gather + GEMM over the surviving GBD groups (paper 000 s.3).

    weight: numpy (T, C//groups, kh, kw), all-zero groups W[t in group, s, i, j] are skipped.
    padding: (top, left, bottom, right).  Returns (PrimFunc, consts); the PrimFunc's params are
    (data[N,C,H,W], *consts, out[N,T,OH,OW]); consts = [F packed [G,TO,KP,TI] float32,
    live-map table int32, gather offset table int32, (pixel base table int32, only when output
    rows are not padded: geom.OWP == 0), (bias [T])].
    Bias and ReLU are fused into the epilogue; dead input maps are never read.  ``residual=True``
    adds one more input after the consts, res[N,T,OH,OW], added before the ReLU in the same
    epilogue (a ResNet block's skip connection: no separate add / ReLU pass over memory).  The PrimFunc
    carries tir.is_scheduled and no global_symbol (call it through R.call_tir, or compile it on
    its own with compile_kernel).  target: llvm (AVX-512 schedule) or cuda (shared-memory tiles).
    ``dense=True`` gathers every (s, i, j) row, zero groups included: the dense im2col GEMM of the
    same kernel (the baseline the cost model compares against).
    ``dtype`` "tf32" / "float16" / "bfloat16" (CUDA only): the tensor-core kernels of cuda_tc.py; F is
    then [G, TP, KP] in that type (tf32: float32 rounded to tf32) and the input is cast in the
    padded copy; accumulation, bias, residual and output stay float32.
    """
    target = _as_target(target)
    gpu = _is_gpu(target)
    if dtype == "int8":
        raise ValueError("int8 convs are built by conv2d_gather_gemm_int8 (they need the input's scale)")
    tc = check_dtype(dtype, target) != "float32"
    weight = np.asarray(weight, dtype=np.float32)
    if tc:
        T, Cg, kh, kw = weight.shape
        OH, OW = conv_output_size(data_shape[2], data_shape[3], kh, kw, stride, padding, dilation)
        lw = cuda_tc.lowering_params(T // groups, OH * OW, Cg * kh * kw)
    elif gpu:
        lw = dict(TI=cuda.CONV_TI, NV=cuda.CONV_NV, k_align=cuda.KC)
    else:
        lw = cpu.lowering_params(weight.shape[0] // groups)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, dense=dense)
    data_shape = (_batch_dim(data_shape[0]), *data_shape[1:])
    small = None  # lowering_params of cpu_small: a small map on pixel x channel register tiles
    if gpu:
        geom, F, live, off, base = lower_conv(data_shape, weight, **kw, **lw)
    else:
        (geom, F, live, off, base), small = _lower_cpu_f32(data_shape, weight, kw, lw, target)
    if tc:  # [G, TO, KP, TI] -> [G, TP, KP], rows of the filter matrix in the operand type
        F = operand_array(F.transpose(0, 1, 3, 2).reshape(geom.G, geom.TO * geom.TI, geom.KP), dtype)
    consts = [F, live, off] + ([] if geom.OWP else [base])
    if bias is not None:
        b = np.asarray(bias, dtype=np.float32).reshape(-1)
        if b.shape[0] != geom.T:
            raise ValueError(f"bias has {b.shape[0]} entries, expected {geom.T}")
        consts.append(np.ascontiguousarray(b))
    func = conv_te(geom, bias is not None, relu, residual, dtype, direct=not gpu)
    if tc:
        func = cuda_tc.schedule_conv_tc(func, geom, dtype)
    elif gpu:
        func = cuda.schedule_conv_cuda(func, geom, target)
    elif small:
        func = cpu_small.schedule_conv_small(func, geom, target)
    else:
        func = cpu.schedule_conv_cpu(func, geom, target)
    return _finish(func, target), consts


def _lower_int8(data_shape, wf, kw, lw, target, exact_rows=False):
    """_lower_cpu for the int8 kernels (``wf``: the int8 weight as float32).  Maps of at most 8
    pixels a row (7x7), which rows of 16 would pad more than 2x, get rows of 8 and chunks that are
    not whole rows instead of the flat numbering, whose table gather loads byte by byte (a quarter
    of a 512-map 7x7 conv).  ``exact_rows`` (VNNI): rows that 16 would pad (56 -> 64) are kept
    unpadded where cpu_int8.takes_exact_rows says the kernel gains from it."""
    lowered = _lower_cpu(data_shape, wf, kw, lw, target)
    geom = lowered[0]
    if geom.OWP == 0 and geom.OW <= 8:
        lw = {**lw, "row_align": (8,), "whole_rows": False}
        lowered = _lower_cpu(data_shape, wf, kw, lw, target)
    elif exact_rows and geom.OWP > geom.OW:
        exact = _lower_cpu(data_shape, wf, kw, {**lw, "row_align": (geom.OW,)}, target)
        if cpu_int8.takes_exact_rows(exact[0], target):
            lowered = exact
    return lowered


def conv2d_gather_gemm_int8(
    data_shape,
    weight,
    bias=None,
    *,
    x_scale,
    x_zero,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    groups=1,
    relu=False,
    residual=False,
    dense=False,
    target,
    in_u8=False,
    out_q=None,
    res_q=None,
    amx_min_k=None,
):
    """The INT8 gather-GEMM (docs/formulas.md section 5) of ``cpu_amx`` on a target with AMX when the
    conv gathers at least ``amx_min_k`` (default ``cpu_amx.MIN_K``) rows, else of ``cpu_int8`` (AVX-512 VNNI): same
    arguments and PrimFunc conventions as conv2d_gather_gemm, plus the input's uint8 scale and
    zero point (``lightning_gbd.core.quant.activation_params``).  The weight is quantized here,
    symmetric per output channel (formula 5.1); GBD groups that are zero stay zero, so the gather
    skips exactly what the float32 kernel skips.  Returns (PrimFunc, consts) with consts = [Fq int8
    [G, TO, KP/4, TI, 4], live, off, (base), mul [T], add [T]].  ``in_u8`` / ``out_q`` / ``res_q``: uint8
    input / output / residual (cpu_int8.conv_te_int8); the consts do not depend on them."""
    from lightning_gbd.core.quant import quantize_weight, requant_epilogue

    target = _as_target(target)
    if _is_gpu(target):
        raise ValueError("dtype 'int8' has CPU (AVX-512 VNNI) kernels only")
    wq, w_scale = quantize_weight(weight)
    Tg = wq.shape[0] // groups
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, dense=dense)
    data_shape = (_batch_dim(data_shape[0]), *data_shape[1:])
    lw = {**cpu.lowering_params_8x32(Tg), **cpu_int8.LOWERING}
    wf = wq.astype(np.float32)
    geom, F, live, off, base = _lower_int8(data_shape, wf, kw, lw, target, exact_rows=True)
    amx = has_amx(target) and geom.KP >= (cpu_amx.MIN_K if amx_min_k is None else amx_min_k)
    if amx:
        lw = {**cpu.lowering_params_8x32(Tg), **cpu_amx.lowering_params(Tg)}
        geom, F, live, off, base = _lower_int8(data_shape, wf, kw, lw, target)
    G, TO, KP, TI = F.shape
    if amx:  # [G, TO, KP, TI] -> [G, TO * TI, KP]: one row of gather-row bytes per filter
        Fq = F.transpose(0, 1, 3, 2).reshape(G, TO * TI, KP)
    else:  # -> [G, TO, KP/4, TI, 4]: per 4 gather rows, the TI filters' 4 bytes side by side
        Fq = F.reshape(G, TO, KP // cpu_int8.K_LANE, cpu_int8.K_LANE, TI).transpose(0, 1, 2, 4, 3)
    mul, add = requant_epilogue(wq, w_scale, x_scale, x_zero, bias)
    consts = [np.ascontiguousarray(Fq).astype(np.int8), live, off] + ([] if geom.OWP else [base]) + [mul, add]
    carry = dict(in_u8=in_u8, out_q=out_q, res_q=res_q)
    func = cpu_int8.conv_te_int8(geom, x_scale, x_zero, relu, residual, rows_filter=amx, **carry)
    schedule = cpu_amx.schedule_conv_amx if amx else cpu_int8.schedule_conv_int8
    return _finish(schedule(func, geom, target), target), consts


def pack_dense_weight(weight, OI):
    """(O, K) -> [ceil(O/OI), K, OI], zero padded: the micro-kernel reads it contiguously."""
    O, K = weight.shape
    OO = -(-O // OI)
    wp = np.zeros((OO * OI, K), dtype=np.float32)
    wp[:O] = weight
    return np.ascontiguousarray(wp.reshape(OO, OI, K).transpose(0, 2, 1))


def _dense_operands(in_shape, weight):
    """(weight as float32 (O, K), M, K) of a linear layer on input ``in_shape`` (M may be symbolic);
    ValueError when the weight does not fit the input."""
    weight = np.asarray(weight, dtype=np.float32)
    M, K = _batch_dim(in_shape[0]), int(in_shape[1])
    if weight.ndim != 2 or weight.shape[1] != K:
        raise ValueError(f"weight {weight.shape} does not match input {in_shape}")
    return weight, M, K


def dense_gemm(in_shape, weight, bias=None, *, relu=False, target, dtype="float32"):
    """Linear layer y = x @ weight.T (+ bias, ReLU) with x (M, K), weight numpy (O, K).

    Returns (PrimFunc, consts): params (x[M,K], *consts, y[M,O]); consts = [weight packed
    [ceil(O/OI), K, OI] float32, (bias [O])].  Same GEMM micro-kernel as the conv (paper 000 s.3);
    same PrimFunc conventions as conv2d_gather_gemm.  ``dtype`` "tf32" / "float16" / "bfloat16"
    (CUDA only): the tensor-core GEMM of cuda_tc.py, consts = [weight as [KP, OP] in that type,
    (bias)].
    """
    target = _as_target(target)
    gpu = _is_gpu(target)
    if dtype == "int8":
        raise ValueError("int8 linear layers are built by dense_gemm_int8 (they need the input's scale)")
    tc = check_dtype(dtype, target) != "float32"
    weight, M, K = _dense_operands(in_shape, weight)
    O = weight.shape[0]
    if tc:
        return _dense_tc(M, K, weight, bias, relu, dtype, target)
    OI = cuda.DENSE_OI if gpu else cpu.DENSE_OI
    consts = [pack_dense_weight(weight, OI)]
    if bias is not None:
        consts.append(np.ascontiguousarray(np.asarray(bias, dtype=np.float32).reshape(-1)))
    TM = cpu.dense_row_tile(M)
    MP = M if gpu else (M + TM - 1) // TM * TM
    func = dense_te(M, K, O, OI, bias is not None, relu, MP=MP)
    if gpu:
        func = cuda.schedule_dense_cuda(func, M, K, O, OI, target)
    else:
        func = cpu.schedule_dense_cpu(func, M, K, O, OI, TM, target)
    return _finish(func, target), consts


def dense_gemm_int8(in_shape, weight, bias=None, *, x_scale, x_zero, relu=False, target):
    """The INT8 linear layer of ``dense_int8`` (AVX-512 VNNI): y = x @ weight.T (+ bias, ReLU) with the
    weight quantized here per output (formula 5.1) and x by (x_scale, x_zero) in the kernel.
    Returns (PrimFunc, consts): params (x[M, K], *consts, y[M, O]); consts = [Wq int8
    [ceil(O/16), KP/4, 16, 4], mul [O], add [O]] (formula 5.4)."""
    from lightning_gbd.core.quant import quantize_weight, requant_epilogue

    target = _as_target(target)
    if _is_gpu(target):
        raise ValueError("dtype 'int8' has CPU (AVX-512 VNNI) kernels only")
    weight, M, K = _dense_operands(in_shape, weight)
    O = weight.shape[0]
    wq, w_scale = quantize_weight(weight)
    mul, add = requant_epilogue(wq, w_scale, x_scale, x_zero, bias)
    TM = cpu.dense_row_tile(M)
    func = dense_int8.dense_te_int8(M, K, O, (M + TM - 1) // TM * TM, x_scale, x_zero, relu)
    return _finish(dense_int8.schedule_dense_int8(func, TM), target), [dense_int8.pack_weight(wq), mul, add]


def _dense_tc(M, K, weight, bias, relu, dtype, target):
    O = weight.shape[0]
    bm, bn, bk = cuda_tc.dense_tiles(M, O)
    MP = (M + bm - 1) // bm * bm
    KP, OP = -(-K // bk) * bk, -(-O // bn) * bn
    w = np.zeros((KP, OP), np.float32)
    w[:K, :O] = weight.T
    consts = [operand_array(w, dtype)]
    if bias is not None:
        consts.append(np.ascontiguousarray(np.asarray(bias, dtype=np.float32).reshape(-1)))
    func = dense_te_tc(M, K, O, MP, KP, OP, bias is not None, relu, dtype)
    return _finish(cuda_tc.schedule_dense_tc(func, bm, bn, bk, dtype), target), consts
