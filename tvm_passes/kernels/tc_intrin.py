"""Tensor-core intrinsics of the CUDA kernels in ``cuda_tc.py``: one 16 x 16 output tile per warp
and instruction pair (``mma.sync`` m16n8k16 for float16 / bfloat16, m16n8k8 for tf32), fp32
accumulators.

They are written here in the form of TVM's own (``tvm.s_tir.tensor_intrin.cuda``: ``ldmatrix`` +
``mma`` for float16, its fill / store of the accumulators), registered on first use, one dtype at
a time: importing TVM's module registers ~100 intrinsics and takes over a minute on 2 cores, and
TVM 0.27 ships none for bfloat16 or tf32:
  float16   TVM's layouts and instructions (``ldmatrix`` .x4 / .x4.trans, m16n8k16);
  bfloat16  the same with the type changed (``ldmatrix`` moves 16-bit words whatever they hold, and
            m16n8k16 has the same fragment layout for both types, PTX ISA "mma.m16n8k16");
  tf32      ``mma.sync.m16n8k8.tf32`` (PTX ISA "mma.m16n8k8" fragments), loaded from shared memory
            with plain 32-bit loads (``ldmatrix`` cannot transpose 32-bit elements); the operands
            are float32 values already rounded to tf32 (``te_defs.round_tf32``).
The warp-scope buffers hold a thread's fragment as ``warp[lane, register]``; ``*_FRAG`` below map
a tile element (row, col) to that pair, and the schedule lays the buffers out with them.
"""

from __future__ import annotations

from tvm.runtime import convert
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.tirx import Cast

WARP = 32
SCOPE = "shared.dyn"


def FRAG16(i, j):
    """Accumulator / float16 / bfloat16 fragments (TVM's ``shared_16x16_to_ldmatrix_32x8_layout``):
    (row, col) of a 16 x 16 tile -> (lane, register)."""
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + (i // 8) * 2 + j % 2


def _frag16_inverse(lane, reg):
    return 8 * (reg % 4 // 2) + lane // 4, 8 * (reg // 4) + (lane % 4) * 2 + reg % 2


def a_frag_tf32(i, k):
    """tf32 A fragment of m16n8k8 (16 x 8): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)."""
    return 4 * (i % 8) + k % 4, i // 8 + 2 * (k // 4)


def b_frag_tf32(k, j):
    """tf32 B fragment of two m16n8k8 (8 x 16): b0 (t, g), b1 (t+4, g); the second n8 half after."""
    return 4 * (j % 8) + k % 4, k // 4 + 2 * (j // 8)


def _tile_load(rows, cols, dtype, frag, ldmatrix):
    """shared [rows, cols] -> warp [32, rows*cols/32] through ``frag``; ``ldmatrix``: (trans, offset
    function) of a 16-bit ``ldmatrix.x4``, or None for plain loads."""
    local = rows * cols // WARP

    @T.prim_func(s_tir=True)
    def desc(warp_h: T.handle, shared_h: T.handle) -> None:
        shared = T.match_buffer(shared_h, (rows, cols), dtype, align=64, offset_factor=cols, scope=SCOPE)
        warp = T.match_buffer(warp_h, (WARP, local), dtype, align=64, offset_factor=cols, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:rows, 0:cols])
            T.writes(warp[0:WARP, 0:local])
            for ax0, ax1 in T.grid(rows, cols):
                with T.sblock("shared_warp"):
                    v0, v1 = T.axis.remap("SS", [ax0, ax1])
                    T.reads(shared[v0, v1])
                    lane, reg = T.meta_var(frag(v0, v1))
                    T.writes(warp[lane, reg])
                    warp[lane, reg] = shared[v0, v1]

    if ldmatrix is not None:
        trans, offset = ldmatrix

        @T.prim_func(s_tir=True)
        def impl(warp_h: T.handle, shared_h: T.handle) -> None:
            s0 = T.int32()
            s1 = T.int32()
            shared = T.match_buffer(
                shared_h, (rows, cols), dtype, align=64, offset_factor=cols, scope=SCOPE, strides=[s0, s1]
            )
            warp = T.match_buffer(warp_h, (WARP, local), dtype, align=64, offset_factor=cols, scope="warp")
            with T.sblock("root"):
                T.reads(shared[0:rows, 0:cols])
                T.writes(warp[0:WARP, 0:local])
                for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                    T.evaluate(
                        T.ptx_legacy.ldmatrix(
                            trans,
                            4,
                            ".b16",
                            warp.data,
                            warp.elem_offset + convert(local) * tx,
                            shared.access_ptr("r"),
                            offset(tx, s0),
                            dtype=dtype,
                        )
                    )

        return desc, impl

    @T.prim_func(s_tir=True)
    def impl_plain(warp_h: T.handle, shared_h: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        shared = T.match_buffer(
            shared_h, (rows, cols), dtype, align=64, offset_factor=cols, scope=SCOPE, strides=[s0, s1]
        )
        warp = T.match_buffer(warp_h, (WARP, local), dtype, align=64, offset_factor=cols, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:rows, 0:cols])
            T.writes(warp[0:WARP, 0:local])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for r in T.serial(local):
                    row, col = T.meta_var(_frag_inverse(frag, tx, r))
                    warp[tx, r] = shared[row, col]

    return desc, impl_plain


def _frag_inverse(frag, lane, reg):
    """(row, col) held by (lane, reg) for the tf32 fragments (the inverses of a_frag / b_frag)."""
    if frag is a_frag_tf32:
        return lane // 4 + 8 * (reg % 2), lane % 4 + 4 * (reg // 2)
    return lane % 4 + 4 * (reg % 2), lane // 4 + 8 * (reg // 2)


def _mma(k_dim, dtype, ptx_type, frag_a, frag_b):
    """C[16, 16] += A[16, k] * B[k, 16] as two ``mma.sync.m16n8k{k}`` (row.col), fp32 accumulators."""
    la, lb, lc = 16 * k_dim // WARP, 16 * k_dim // WARP, 8
    shape = f"m16n8k{k_dim}"

    def f32(v):
        return v if dtype == "float32" else Cast("float32", v)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, la), dtype, align=64, offset_factor=k_dim, scope="warp")
        B = T.match_buffer(b, (WARP, lb), dtype, align=64, offset_factor=16, scope="warp")
        C = T.match_buffer(c, (WARP, lc), "float32", align=64, offset_factor=16, scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:lc], A[0:WARP, 0:la], B[0:WARP, 0:lb])
            T.writes(C[0:WARP, 0:lc])
            for i, j, k in T.grid(16, 16, k_dim):
                with T.sblock("C"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    tc_, lc_ = T.meta_var(FRAG16(vi, vj))
                    ta, la_ = T.meta_var(frag_a(vi, vk))
                    tb, lb_ = T.meta_var(frag_b(vk, vj))
                    T.reads(C[tc_, lc_], A[ta, la_], B[tb, lb_])
                    T.writes(C[tc_, lc_])
                    C[tc_, lc_] += f32(A[ta, la_]) * f32(B[tb, lb_])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, la), dtype, align=64, offset_factor=k_dim, scope="warp")
        B = T.match_buffer(b, (WARP, lb), dtype, align=64, offset_factor=16, scope="warp")
        C = T.match_buffer(c, (WARP, lc), "float32", align=64, offset_factor=16, scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:lc], A[0:WARP, 0:la], B[0:WARP, 0:lb])
            T.writes(C[0:WARP, 0:lc])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for half in T.unroll(2):
                    T.evaluate(
                        T.ptx_legacy.mma(
                            shape,
                            "row",
                            "col",
                            ptx_type,
                            ptx_type,
                            "fp32",
                            A.data,
                            A.elem_offset + tx * la,
                            B.data,
                            B.elem_offset + tx * lb + half * (lb // 2),
                            C.data,
                            C.elem_offset + tx * lc + half * (lc // 2),
                            False,
                            dtype="float32",
                        )
                    )

    return desc, impl


def _ldmatrix_a_offset(tx, stride):
    return stride * (tx % 16) + 8 * (tx // 16)


def _fill():
    """Accumulators [32, 8] float32 <- 0."""

    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        C = T.match_buffer(c, (WARP, 8), "float32", scope="warp")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:WARP, 0:8])
            for i0, i1 in T.grid(16, 16):
                with T.sblock("C_warp"):
                    i, j = T.axis.remap("SS", [i0, i1])
                    lane, reg = T.meta_var(FRAG16(i, j))
                    T.reads()
                    T.writes(C[lane, reg])
                    C[lane, reg] = T.float32(0)

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        C = T.match_buffer(c, (WARP, 8), "float32", scope="warp", offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:WARP, 0:8])
            for _tx in T.thread_binding(0, WARP, "threadIdx.x"):
                T.evaluate(T.cuda.mma_fill_legacy(8, C.data, C.elem_offset, dtype="float32"))

    return desc, impl


def _store(scope):
    """Accumulators [32, 8] -> a 16 x 16 float32 tile in ``scope`` (plain stores)."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        W = T.match_buffer(a, (WARP, 8), "float32", scope="warp")
        C = T.match_buffer(c, (16, 16), "float32", scope=scope)
        with T.sblock("root"):
            T.reads(W[0:WARP, 0:8])
            T.writes(C[0:16, 0:16])
            for i0, i1 in T.grid(16, 16):
                with T.sblock("C_warp"):
                    v0, v1 = T.axis.remap("SS", [i0, i1])
                    lane, reg = T.meta_var(FRAG16(v0, v1))
                    T.reads(W[lane, reg])
                    T.writes(C[v0, v1])
                    C[v0, v1] = W[lane, reg]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        W = T.match_buffer(a, (WARP, 8), "float32", scope="warp", offset_factor=1)
        C = T.match_buffer(c, (16, 16), "float32", scope=scope, offset_factor=1, strides=[s0, s1])
        with T.sblock("root"):
            T.reads(W[0:WARP, 0:8])
            T.writes(C[0:16, 0:16])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for reg in T.serial(8):
                    row, col = T.meta_var(_frag16_inverse(tx, reg))
                    C[row, col] = W[tx, reg]

    return desc, impl


def _ldmatrix_offset(tx, stride):
    """Row address of lane ``tx`` for ``ldmatrix.x4`` of a 16 x 16 tile (TVM's, both operands)."""
    return stride * (tx % 16) + 8 * (tx // 16)


def _group(dtype):
    """(role, name, (desc, impl)) of one compute dtype's operand intrinsics."""
    if dtype == "tf32":
        return [
            ("load_a", "gbd_load_tf32_a", _tile_load(16, 8, "float32", a_frag_tf32, None)),
            ("load_b", "gbd_load_tf32_b", _tile_load(8, 16, "float32", b_frag_tf32, None)),
            ("compute", "gbd_mma_tf32_f32", _mma(8, "float32", "tf32", a_frag_tf32, b_frag_tf32)),
        ]
    short = {"float16": "fp16", "bfloat16": "bf16"}[dtype]
    return [  # A row-major, B k-major: ldmatrix.trans hands B over in the column layout mma wants
        ("load_a", f"gbd_ldmatrix_{short}_a", _tile_load(16, 16, dtype, FRAG16, (False, _ldmatrix_offset))),
        ("load_b", f"gbd_ldmatrix_{short}_b", _tile_load(16, 16, dtype, FRAG16, (True, _ldmatrix_offset))),
        ("compute", f"gbd_mma_{short}_f32", _mma(16, dtype, short, FRAG16, FRAG16)),
    ]


_REGISTERED: dict = {}


def intrinsics(dtype: str) -> dict:
    """Names of the tensor intrinsics of one compute dtype (registered on first use): load_a,
    load_b, compute, init, store (to shared memory), store_global, and k (the reduction depth of
    one instruction pair)."""
    if not _REGISTERED:
        TensorIntrin.register("gbd_mma_fill_f32", *_fill(), override=True)
        TensorIntrin.register("gbd_mma_store_f32", *_store(SCOPE), override=True)
        TensorIntrin.register("gbd_mma_store_f32_global", *_store("global"), override=True)
        _REGISTERED["common"] = dict(
            init="gbd_mma_fill_f32", store="gbd_mma_store_f32", store_global="gbd_mma_store_f32_global"
        )
    if dtype not in _REGISTERED:
        group = {}
        for role, name, (desc, impl) in _group(dtype):
            TensorIntrin.register(name, desc, impl, override=True)
            group[role] = name
        _REGISTERED[dtype] = group
    return dict(**_REGISTERED[dtype], **_REGISTERED["common"], k=8 if dtype == "tf32" else 16)
