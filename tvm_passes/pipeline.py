"""The compile pipeline: target, pass order, schedules, ``tvm.compile``.

Order (paper 000 section 3 / docs/formulas.md section 1 for the two GBD passes):
import (BN folded, constants folded, layers named) -> dead input maps removed (pass 2) ->
optional low-rank decomposition -> a 1x1 expansion and the stride-2 depthwise conv after it as
one kernel (CPU float32) -> conv / linear to kernel-library call_tir (pass 1, cost model per
conv; int8: uint8 tensors between the convs) -> max-pools to the library's kernel (CPU) ->
LegalizeOps + fusion of the rest -> fused skip connections written over their dead residual ->
generic schedules (or a meta_schedule database) ->
``tvm.compile``.  The per-layer records are read off the result by one analysis.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

import tvm
from tvm import relax

from .frontend import ImportResult, import_program
from .kernels import build_context
from .passes import (
    DeadChannels,
    FuseExpandDepthwise,
    GroupSparseConv,
    InplaceResidual,
    LowRankConv,
    MaxPoolKernel,
    collect_records,
)
from .schedules import apply_generic_schedules, unscheduled_funcs


def _backend_pipeline(target):
    """TVM's per-target pass lists (``relax.backend.<target>.pipeline``)."""
    name = "cuda" if target.kind.name == "cuda" else "cpu_generic"
    return importlib.import_module(f"tvm.relax.backend.{name}.pipeline")


@dataclass(frozen=True)
class Lowered:
    mod: tvm.IRModule  # ready for compile_module
    records: list  # one dict per conv / linear kernel, graph order
    decomposed: list  # one dict per conv LowRankConv decomposed
    imported: ImportResult
    tuning: dict | None
    #: where ``batch_chunks`` runs the front image by image: {"front_until": layer, "chunk": c}
    front: dict | None = None


def gbd_passes(target, *, sparse=True, decompose_error=None, dtype="float32", quant=None) -> tvm.transform.Pass:
    """The GBD passes in their order, as one Sequential."""
    passes = [DeadChannels()] if sparse else []
    if decompose_error is not None:
        passes.append(LowRankConv(decompose_error))
    if dtype == "float32":
        passes.append(FuseExpandDepthwise(target, sparse=sparse))
    passes.append(GroupSparseConv(target, sparse=sparse, dtype=dtype, quant=quant))
    passes.append(MaxPoolKernel(target))
    return tvm.transform.Sequential(passes, name="GBDPasses")


def lower(
    ep,
    target,
    *,
    sparse=True,
    tune_trials=0,
    tune_db=None,
    log=None,
    decompose_error=None,
    dtype="float32",
    quant=None,
) -> Lowered:
    """Relax + TIR module ready for ``compile_module``, with its per-layer records.

    ``ep``: an ExportedProgram (imported here) or an already imported module (an
    ``ImportResult``, e.g. of ``frontend.import_onnx``).  With ``decompose_error`` e, convs whose
    weight has PCA rank K at error e with fewer FLOPs are decomposed first (``passes.LowRankConv``).
    ``dtype``: compute dtype of the conv / linear kernels (tf32 / float16 / bfloat16: the CUDA
    tensor-core kernels; int8: the VNNI kernels, with ``quant`` the per-conv input scales of
    ``frontend.calibrate``; the rest of the model stays float32)."""
    imp = ep if isinstance(ep, ImportResult) else import_program(ep)
    mod = gbd_passes(target, sparse=sparse, decompose_error=decompose_error, dtype=dtype, quant=quant)(imp.mod)
    records, decomposed = collect_records(imp.mod, mod, decompose_error)
    with target:
        mod = tvm.transform.Sequential(
            _backend_pipeline(target).library_dispatch_passes(target)
            + [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
                InplaceResidual(),
            ]
        )(mod)
    tuning = None
    if tune_trials and tune_trials > 0:
        from .tuning import DEFAULT_TUNE_DB, tune_and_apply

        mod, tuning = tune_and_apply(mod, target, tune_trials, tune_db or DEFAULT_TUNE_DB, log=log)
    mod = apply_generic_schedules(mod, target)
    left = unscheduled_funcs(mod)
    if left:
        warnings.warn(f"gbd-export: no schedule rule applied to {', '.join(left)}", stacklevel=2)
    return Lowered(mod, records, decomposed, imp, tuning)


def compile_module(mod, target):
    """The VM executable of a lowered module (what ``tvm.compile`` does, in its steps).

    One step differs: the VM's host-side shape functions (a dynamic batch needs them) are built
    into a library of their own.  Built into the same LLVM module as the kernels, they made every
    kernel 1.6x slower (a 64-channel 56x56 gather-GEMM conv: 0.67 ms against 0.41 ms standalone,
    TVM 0.27; ``benchmarks/dynamic_batch.py``)."""
    from tvm.relax import vm_build

    pipeline = _backend_pipeline(target)
    with target:
        mod = tvm.transform.Sequential(pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target))(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    builder = relax.ExecBuilder()
    mod = vm_build._vmcodegen(builder, mod, "bytecode")
    tir = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    host = {gv: f for gv, f in tir.items() if f.attrs is not None and f.attrs.get("tirx.is_host_func", False)}
    with build_context(target):
        libs = [
            tvm.tirx.build(tvm.IRModule(part, attrs=mod.attrs), target=target)
            for part in ({gv: f for gv, f in tir.items() if gv not in host}, host)
            if part
        ]
    lib = libs[0] if libs else None
    for extra in libs[1:]:
        lib.import_module(extra)
    linked = vm_build._ffi_api.VMLink(
        builder, target, lib, list(attrs.get("external_mods", [])), dict(attrs.get("const_name_to_constant", {}))
    )
    return relax.VMExecutable(linked)
