"""INT8 linear layer for AVX-512 VNNI CPUs (docs/formulas.md section 5, formula 5.4 with K = the
input features): y = relu?(C m[o] + a[o]), C[m, o] = sum_k Wq[o, k] u8(x)[m, k] in int32.

A linear layer at a small batch is a stream over its weight: VGG-16's first classifier layer
holds 25088 x 4096 weights, 411 MB in float32; its three linear layers took 17 of the 56 ms of
the float32 sparse model at batch 1, nearly all of it memory traffic.  In int8 the first
layer's stream is 103 MB.

  "Xq"   the input quantized (formula 5.2), rows clamped up to MP, columns up to KP (the weight is
         0 there, so what they hold does not matter)
  "C"    per 16 outputs and 4 input features one ``vpdpbusd``: the 4 input bytes broadcast to all
         16 lanes (unsigned), the weight as [O/16, KP/4, 16, 4] (signed, one 64-byte load)
  "out"  C m[o] + a[o] (+ ReLU), as the conv's epilogue

Parallel over blocks of 16 outputs; per block, TM rows of C stay in registers while the block's
weight streams past once.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx
from tvm.script import tirx as T

from .cpu_int8 import K_LANE, _quantize
from .te_defs import _epilogue

#: outputs per vector (int32 lanes of one zmm)
OV = 16
VNNI_BCAST_INPUT = "gbd_vnni_16x4_bcast_input"


def _vnni_funcs():
    """desc / impl of C[16] (int32, local) += A[4] (uint8, broadcast) . B[16, 4] (int8)."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (16,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            for i, k in T.grid(16, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (4,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (16, 4), "int8", offset_factor=1)
        C = T.match_buffer(c, (16,), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(
                    T.broadcast(T.reinterpret(A.vload([0], dtype="uint8x4"), dtype="int32"), 16), dtype="uint8x64"
                ),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16",
            )

    return desc, impl


def _intrin() -> str:
    try:
        s_tir.TensorIntrin.get(VNNI_BCAST_INPUT)
    except Exception:  # noqa: BLE001 - TVM raises a generic error for an unknown name
        s_tir.TensorIntrin.register(VNNI_BCAST_INPUT, *_vnni_funcs())
    return VNNI_BCAST_INPUT


def pack_weight(wq: np.ndarray) -> np.ndarray:
    """(O, K) int8 -> [ceil(O/16), KP/4, 16, 4], zero padded: per 4 input features, 16 outputs' 4
    bytes side by side (one vpdpbusd operand)."""
    O, K = wq.shape
    OP, KP = -(-O // OV) * OV, -(-K // K_LANE) * K_LANE
    w = np.zeros((OP, KP), np.int8)
    w[:O, :K] = wq
    return np.ascontiguousarray(w.reshape(OP // OV, OV, KP // K_LANE, K_LANE).transpose(0, 2, 1, 3))


def dense_te_int8(M, K, O, MP, x_scale: float, x_zero: int, relu: bool):
    """params (x[M, K], Wq [O/16, KP/4, 16, 4], mul [O], add [O], out[M, O])."""
    OO, K4 = -(-O // OV), -(-K // K_LANE)
    x = te.placeholder((M, K), "float32", name="x")
    Wq = te.placeholder((OO, K4, OV, K_LANE), "int8", name="Wq")
    mul = te.placeholder((O,), "float32", name="mul")
    add = te.placeholder((O,), "float32", name="add")
    Xq = te.compute(
        (MP, K4 * K_LANE),
        lambda m, k: _quantize(x[tirx.min(m, M - 1), tirx.min(k, K - 1)], x_scale, x_zero),
        name="Xq",
    )
    k4 = te.reduce_axis((0, K4), name="k4")
    kj = te.reduce_axis((0, K_LANE), name="kj")
    C = te.compute(
        (MP, OO * OV),
        lambda m, o: te.sum(
            Xq[m, k4 * K_LANE + kj].astype("int32") * Wq[o // OV, k4, o % OV, kj].astype("int32"), axis=[k4, kj]
        ),
        name="C",
    )
    out = te.compute(
        (M, O), lambda m, o: _epilogue(C[m, o].astype("float32") * mul[o] + add[o], None, None, relu), name="out"
    )
    return te.create_prim_func([x, Wq, mul, add, out])


def schedule_dense_int8(func, TM: int):
    """Output blocks in parallel; per block TM x 16 int32 accumulators over the whole reduction."""
    sch = s_tir.schedule.Schedule(func)
    xq = sch.get_sblock("Xq")
    xm, xk = sch.get_loops(xq)
    sch.parallel(xm)
    sch.vectorize(sch.split(xk, [None, 4 * OV])[1])
    blk = sch.get_sblock("C")
    m, o, k4, kj = sch.get_loops(blk)
    mo, mi = sch.split(m, [None, TM])
    oo, oi = sch.split(o, [None, OV])
    sch.reorder(oo, mo, k4, mi, oi, kj)
    sch.parallel(oo)
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, mo)
    sch.vectorize(sch.get_loops(acc)[-1])
    sch.unroll(mi)
    init = sch.decompose_reduction(blk, k4)
    sch.vectorize(sch.get_loops(init)[-1])
    eblk = sch.get_sblock("out")
    em, eo = sch.get_loops(eblk)
    sch.parallel(em)
    sch.vectorize(sch.split(eo, [None, OV])[1])
    sch.tensorize(oi, _intrin())
    return sch.mod["main"]
