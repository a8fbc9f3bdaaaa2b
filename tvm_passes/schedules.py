"""Generic schedules for every PrimFunc the kernel library does not provide.

After ``LegalizeOps`` the remaining PrimFuncs (elementwise, pooling, reshape, softmax, adds, and
any op that fell back from the GBD kernels) get a real schedule instead of naive loops:

* llvm: TVM's dlight CPU rules where they apply (``dl.cpu.GEMV``, ``dl.cpu.Reduction``), else
  :class:`CPUGeneric`: inline what can be inlined, fuse the spatial loops, parallelize the outer
  part and vectorize the inner part; for reductions (pooling, mean, a fallback conv) parallelize
  the leading spatial loops and keep the reduction serial inside.
* cuda: dlight GPU rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback).
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import get_root_block
from tvm.s_tir.dlight.base import ScheduleRule, try_inline


def _num_cores(target) -> int:
    try:
        n = int(target.attrs.get("num-cores", 0) or 0)
    except Exception:  # noqa: BLE001
        n = 0
    return n if n > 0 else 2


def _vector_lanes(target, bits=32) -> int:
    try:
        from tvm.target.codegen import llvm_get_vector_width

        width = int(llvm_get_vector_width(target))
    except Exception:  # noqa: BLE001
        width = 0
    return max((width if width > 0 else 256) // bits, 4)


def _extent(sch, loop):
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


class CPUGeneric(ScheduleRule):
    """Fuse spatial loops, parallel outer, vectorize inner; reductions parallel over spatial."""

    def is_target_available(self, target) -> bool:
        return target.kind.name == "llvm"

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return self._nested(func)
        infos = try_inline(sch, infos)
        lanes = _vector_lanes(target)
        cores = _num_cores(target)
        for info in infos:
            try:
                if info.is_injective():
                    self._injective(sch, info.block_rv, lanes, cores)
                else:
                    self._reduction(sch, info.block_rv, info.dom_kind())
            except Exception:  # noqa: BLE001 - keep the block as it is, still correct
                continue
        return sch

    @staticmethod
    def _nested(func):
        """Blocks with nested blocks (adaptive pooling, data-dependent extents): parallelize
        the loops around each top-level block."""
        sch = s_tir.Schedule(func)
        try:
            root = get_root_block(sch)
            blocks = sch.get_child_blocks(root)
        except Exception:  # noqa: BLE001
            return None
        done = False
        for block in blocks:
            try:
                loops = sch.get_loops(block)
                if not loops:
                    continue
                fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
                sch.parallel(fused)
                done = True
            except Exception:  # noqa: BLE001
                continue
        return sch if done else None

    @staticmethod
    def _injective(sch, block, lanes, cores):
        loops = sch.get_loops(block)
        if not loops:
            return
        if CPUGeneric._batch_major(sch, loops, lanes):
            return
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        ext = _extent(sch, fused)
        if ext is not None and ext <= lanes:
            if ext > 1:
                sch.vectorize(fused)
            return
        outer, inner = sch.split(fused, [None, lanes])
        oext = _extent(sch, outer)
        if oext is None or oext >= 2:
            # only worth a thread fork when there is enough work
            if ext is None or ext >= 4096:
                sch.parallel(outer)
        sch.vectorize(inner)

    @staticmethod
    def _batch_major(sch, loops, lanes) -> bool:
        """A symbolic (batch) outer loop over static inner ones: the batch stays a loop of its own
        and the static part is split into parallel chunks of whole vectors (fusing the batch in
        turns every index into a div/mod by a symbolic extent: measured 2x slower)."""
        exts = [_extent(sch, lp) for lp in loops]
        if len(loops) < 2 or exts[0] is not None or any(e is None for e in exts[1:]):
            return False
        size = 1
        for e in exts[1:]:
            size *= e
        if size % lanes:
            return False
        rest = sch.fuse(*loops[1:]) if len(loops) > 2 else loops[1]
        outer, inner = sch.split(rest, [None, lanes])
        sch.vectorize(inner)
        sch.parallel(outer)
        return True

    @staticmethod
    def _reduction(sch, block, dom_kind):
        loops = sch.get_loops(block)
        n_s = len(dom_kind) - len(dom_kind.lstrip("S"))
        if n_s == 0 or len(loops) < n_s:
            return
        lead = loops[:n_s]
        fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        ext = _extent(sch, fused)
        if ext is None or ext >= 2:
            sch.parallel(fused)
        inner = sch.get_loops(block)[-1]
        iext = _extent(sch, inner)
        if iext is not None and 1 < iext <= 64:
            sch.unroll(inner)


def cpu_rules():
    return [dl.cpu.GEMV(), dl.cpu.Reduction(), CPUGeneric()]


def gpu_rules():
    return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]


def apply_generic_schedules(mod: tvm.IRModule, target) -> tvm.IRModule:
    """Schedule every PrimFunc not marked scheduled (the GBD kernels are left untouched)."""
    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    rules = gpu_rules() if target.kind.name == "cuda" else cpu_rules()
    with target:
        mod = dl.ApplyDefaultSchedule(*rules)(mod)
    return mod


def unscheduled_funcs(mod: tvm.IRModule) -> list[str]:
    """Names of PrimFuncs that still have no schedule (for tests / diagnostics)."""
    out = []
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            attrs = func.attrs or {}
            if not (attrs.get("tirx.is_scheduled", False) or attrs.get("tir.is_scheduled", False)):
                out.append(gv.name_hint)
    return out
