"""Compile pipeline: torch.export -> Relax -> GBD passes -> scheduled TIR -> library + manifest.

Order (paper 000 section 3 / formulas.md section 1 for the two GBD passes):
import (BN folded, constants folded) -> dead input maps removed (pass 2) -> conv / linear to
kernel-library call_tir (pass 1, cost model per conv) -> LegalizeOps + fusion of the rest ->
generic schedules (or a meta_schedule database) -> ``tvm.compile`` -> ``export_library``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
import time
import warnings

import numpy as np

from .importer import ExportError, check_finite, import_program, specialize

LIB_NAME = "model.so"
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
FORMAT_VERSION = 1
TOLERANCE = 1e-4
DEFAULT_TUNE_DB = os.path.join(os.path.expanduser("~"), ".cache", "lightning_gbd", "tune_db")


# ---------------------------------------------------------------------------- targets
def make_target(target="llvm"):
    """``"llvm"`` / ``"cuda"`` / a dict / a Target -> ``tvm.target.Target`` (host CPU for llvm)."""
    import tvm  # noqa: PLC0415

    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, dict):
        return tvm.target.Target(target)
    if target == "llvm":
        from tvm.target import codegen  # noqa: PLC0415

        spec = {"kind": "llvm", "num-cores": max(os.cpu_count() or 1, 1)}
        try:
            triple = str(codegen.llvm_get_system_triple())
            if triple.startswith("x86_64") and "linux" in triple:
                triple = "x86_64-linux-gnu"  # the wheel reports a conda vendor triple
            spec["mtriple"] = triple
            cpu = str(codegen.llvm_get_system_cpu())
            if cpu and codegen.llvm_is_valid_cpu(cpu, spec["mtriple"]):
                spec["mcpu"] = cpu
        except Exception:  # noqa: BLE001
            spec = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": spec["num-cores"]}
        return tvm.target.Target(spec)
    if target == "cuda":
        arch = "sm_90"
        try:
            import torch  # noqa: PLC0415

            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability(0)
                arch = f"sm_{major}{minor}"
        except Exception:  # noqa: BLE001
            pass
        return tvm.target.Target({"kind": "cuda", "arch": arch})
    raise ExportError(f"unknown target {target!r} (use llvm or cuda)")


def _target_spec(target) -> dict:
    out = {"kind": target.kind.name}
    for key in ("mtriple", "mcpu", "arch", "num-cores"):
        val = target.attrs.get(key) if hasattr(target.attrs, "get") else None
        if val is not None and str(val) != "":
            out[key] = int(val) if key == "num-cores" else str(val)
    return out


# ---------------------------------------------------------------------------- pipeline
def _backend_pipeline(target):
    """TVM's per-target pass lists (``relax.backend.<target>.pipeline``)."""
    import importlib  # noqa: PLC0415

    name = "cuda" if target.kind.name == "cuda" else "cpu_generic"
    return importlib.import_module(f"tvm.relax.backend.{name}.pipeline")


def lower(ep, target, *, sparse=True, tune_trials=0, tune_db=None, log=None, decompose_error=None,
          lowrank_records=None):
    """Relax + TIR module ready for ``tvm.compile`` and the per-layer records.

    With ``decompose_error`` e, convs whose weight has PCA rank K at error e with fewer FLOPs are
    decomposed first (``lowrank_conv.LowRankConv``; records appended to ``lowrank_records``)."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    from .dead_channels import DeadChannels  # noqa: PLC0415
    from .group_sparse_conv import GroupSparseConv  # noqa: PLC0415
    from .schedules import apply_generic_schedules  # noqa: PLC0415

    imp = import_program(ep)
    mod = imp.mod
    dead_records: dict = {}
    if sparse:
        mod = DeadChannels(names=imp.names, records=dead_records)(mod)
    if decompose_error is not None:
        from .lowrank_conv import LowRankConv  # noqa: PLC0415

        mod = LowRankConv(decompose_error, names=imp.names, records=lowrank_records)(mod)
    records: list = []
    mod = GroupSparseConv(target, sparse=sparse, names=imp.names, records=records)(mod)
    with target:
        seq = tvm.transform.Sequential(
            _backend_pipeline(target).library_dispatch_passes(target)
            + [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
            ]
        )
        mod = seq(mod)
    tuning = None
    if tune_trials and tune_trials > 0:
        mod, tuning = tune_and_apply(mod, target, tune_trials, tune_db or DEFAULT_TUNE_DB, log=log)
    mod = apply_generic_schedules(mod, target)
    for rec in records:
        dead = dict(dead_records.get(rec["name"], {}))
        orig = dead.pop("original_weight_shape", None)
        rec["dead_channels"] = {
            "input_maps_removed": dead.get("input_maps_removed", 0),
            "output_maps_removed": dead.get("output_maps_removed", 0),
        }
        if rec["op"] == "conv2d" and orig is not None:
            # FLOPs / density of the conv as written, before the dead maps were sliced away
            t, s, kh, kw = rec["weight_shape"]
            rec["original_weight_shape"] = list(orig)
            rec["density_after_dead_channel_removal"] = rec["density"]
            rec["density"] = rec["density"] * (s / orig[1])
            rec["flops_dense"] = int(rec["flops_dense"] * orig[0] * orig[1] // (t * s))
    from .schedules import unscheduled_funcs  # noqa: PLC0415

    left = unscheduled_funcs(mod)
    if left:
        warnings.warn(f"gbd-export: no schedule rule applied to {', '.join(left)}", stacklevel=2)
    return mod, records, imp, tuning


def _is_scheduled(func) -> bool:
    attrs = func.attrs or {}
    return bool(attrs.get("tirx.is_scheduled", False) or attrs.get("tir.is_scheduled", False))


def tune_and_apply(mod, target, trials, db_dir, log=None):
    """meta_schedule tuning of the PrimFuncs without a hand schedule, with a persistent database.

    Tasks already in the JSON database at ``db_dir`` (same workload, same target) are not tuned
    again, so a second export of the same shapes costs only the database look-up.  The GBD
    kernels carry their hand schedule (``tirx.is_scheduled``) and are not re-tuned.
    """
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415

    info = {"trials_per_task": int(trials), "database": os.path.abspath(db_dir), "tuned": [], "cached": []}
    if target.kind.name == "cuda" and not _has_cuda_device():
        warnings.warn("gbd-export: --tune-trials needs a CUDA device to measure on; tuning skipped", stacklevel=3)
        info["skipped"] = "no CUDA device"
        return mod, info
    os.makedirs(db_dir, exist_ok=True)
    db = ms.database.JSONDatabase(
        path_workload=os.path.join(db_dir, "database_workload.json"),
        path_tuning_record=os.path.join(db_dir, "database_tuning_record.json"),
        work_dir=db_dir,
    )
    todo = []
    for task in ms.relax_integration.extract_tasks(mod, target):
        tmod = task.dispatched[0]
        if _is_scheduled(tmod["main"]):
            continue
        rec = db.query_tuning_record(tmod, target, "main") if db.has_workload(tmod) else None
        (info["cached"] if rec is not None else todo).append(task)
    info["cached"] = [t.task_name for t in info["cached"]]
    if todo:
        work = os.path.join(db_dir, "logs")
        os.makedirs(work, exist_ok=True)
        ctxs, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(todo, work_dir=work, seed=0)
        ms.tune.tune_tasks(
            tasks=ctxs,
            task_weights=weights,
            work_dir=work,
            max_trials_global=int(trials) * len(ctxs),
            max_trials_per_task=int(trials),
            num_trials_per_iter=min(64, max(int(trials), 1)),
            # generous timeouts: a loaded 2-core machine needs > 30 s to build one candidate
            builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=300),
            runner=ms.runner.LocalRunner(timeout_sec=120),
            database=db,
        )
        info["tuned"] = [t.task_name for t in todo]
    with target, db:
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    if log:
        log(f"tuning: {len(info['tuned'])} tasks tuned, {len(info['cached'])} from the database")
    return mod, info


def compile_module(mod, target):
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    pipeline = tvm.transform.Sequential(
        _backend_pipeline(target).dataflow_lower_passes(target) + _backend_pipeline(target).finalize_passes(target)
    )
    with target:
        return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def _output_spec(ep) -> dict:
    """Shape / dtype of the (first) output of a static ExportedProgram."""
    for node in ep.graph.nodes:
        if node.op == "output":
            vals = node.args[0]
            val = vals[0] if isinstance(vals, (tuple, list)) else vals
            meta = getattr(val, "meta", {}).get("val")
            if meta is not None:
                return {"shape": [int(d) for d in meta.shape], "dtype": str(meta.dtype).replace("torch.", "")}
    return {}


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:
    out = {}
    try:
        import torch  # noqa: PLC0415

        out["torch"] = torch.__version__
    except Exception:  # noqa: BLE001
        pass
    import tvm  # noqa: PLC0415

    out["tvm"] = tvm.__version__
    try:
        from importlib.metadata import version  # noqa: PLC0415

        out["lightning_gbd"] = version("lightning-gbd")
    except Exception:  # noqa: BLE001
        out["lightning_gbd"] = "0.1.0"
    return out


def relative_error(out, ref) -> float:
    """max |out - ref| / max |ref| (norm-wise, stable where ref crosses zero)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    denom = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
    return float(np.max(np.abs(out - ref))) / denom if ref.size else 0.0


def verify_artifact(out_dir, ep, input_shape, *, seed=0, tol=TOLERANCE, dtype="float32") -> dict:
    """Run the artifact in ``out_dir`` and PyTorch on the same random input."""
    import torch  # noqa: PLC0415

    from .runtime import load  # noqa: PLC0415

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*input_shape, generator=gen).to(getattr(torch, dtype))
    with torch.no_grad():
        ref = ep.module()(x)
    if isinstance(ref, (tuple, list)):
        ref = ref[0]
    model = load(out_dir)
    out = model(x.numpy())
    err = relative_error(out, ref.numpy())
    return {
        "input_shape": list(input_shape),
        "seed": seed,
        "metric": "max|tvm - torch| / max|torch|",
        "max_relative_error": err,
        "max_abs_error": float(np.max(np.abs(np.asarray(out, np.float64) - ref.numpy().astype(np.float64)))),
        "tolerance": tol,
        "passed": bool(err <= tol),
    }


def _has_cuda_device() -> bool:
    try:
        import tvm  # noqa: PLC0415

        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001
        return False


def export_model(
    model,
    example_input=None,
    target="llvm",
    out_dir="gbd_export",
    *,
    sparse=True,
    tune_trials=0,
    tune_db=None,
    do_verify=True,
    input_shape=None,
    log=None,
    verify=None,
    decompose_error=None,
    progress=False,
):
    """Compile ``model`` (an ``nn.Module`` or ``ExportedProgram``) into ``out_dir``.

    Writes ``model.so``, ``manifest.json`` and (``do_verify`` / ``verify``) ``verification.json``; returns the
    manifest dict.  ``sparse=False`` forces every conv to the dense im2col GEMM and skips the
    dead-channel pass (the baseline of the sparse export).  ``input_shape`` overrides the shape
    of ``example_input`` (the model is re-exported for it; static shapes).  ``progress``: a
    stage progress bar on stderr (``None``: only on a terminal).
    """
    import torch  # noqa: PLC0415
    from tqdm.auto import tqdm  # noqa: PLC0415

    from .importer import example_input_of, input_shape_of  # noqa: PLC0415

    if verify is not None:  # alias of do_verify
        do_verify = bool(verify)
    t0 = time.time()
    tgt = make_target(target)
    if example_input is None and isinstance(model, torch.export.ExportedProgram):
        example_input = example_input_of(model)
        if example_input is None:
            shape = input_shape_of(model)
            if shape is None and input_shape is None:
                raise ExportError("the .pt2 has no example input and a symbolic shape: pass --input-shape")
            example_input = torch.randn(*(input_shape or shape))
    if example_input is None:
        raise ExportError("an example input is needed to export a module")
    if input_shape is not None and tuple(input_shape) != tuple(example_input.shape):
        example_input = torch.randn(*input_shape, dtype=example_input.dtype)
    stages = ["torch.export", "graph passes + GBD kernels" + (" + tuning" if tune_trials else ""), "compile",
              "write"] + (["verify"] if do_verify else [])
    bar = tqdm(total=len(stages), desc="gbd-export", unit="stage", disable=None if progress is None else not progress,
               leave=False, file=sys.stderr, bar_format="{desc}: {n}/{total} {postfix} [{elapsed}]")

    def stage(i):
        bar.n = i
        bar.set_postfix_str(stages[i] if i < len(stages) else "done")

    stage(0)
    ep = specialize(model, example_input)
    check_finite(ep)
    shape = tuple(int(v) for v in example_input.shape)

    stage(1)
    lowrank: list = []
    mod, records, imp, tuning = lower(ep, tgt, sparse=sparse, tune_trials=tune_trials, tune_db=tune_db, log=log,
                                      decompose_error=decompose_error, lowrank_records=lowrank)
    stage(2)
    ex = compile_module(mod, tgt)
    stage(3)
    os.makedirs(out_dir, exist_ok=True)
    lib_path = os.path.join(out_dir, LIB_NAME)
    tmp_path = lib_path + ".tmp.so"
    ex.export_library(tmp_path)
    os.replace(tmp_path, lib_path)

    out_info = _output_spec(ep)
    convs = [r for r in records if r["op"] == "conv2d"]
    linears = [r for r in records if r["op"] == "linear"]
    fd = sum(r["flops_dense"] for r in records)
    fe = sum(r["flops_executed"] for r in records)
    manifest = {
        "format_version": FORMAT_VERSION,
        "library": LIB_NAME,
        "library_sha256": sha256_file(lib_path),
        "target": _target_spec(tgt),
        "device": "cuda" if tgt.kind.name == "cuda" else "cpu",
        "sparse": bool(sparse),
        "input": {"name": str(next(iter(ep.graph_signature.user_inputs), "input")), "shape": list(shape),
                  "dtype": imp.input_dtype},
        "output": out_info,
        "convs": convs,
        "linears": linears,
        "decomposed": lowrank,
        "totals": {
            "convs": len(convs),
            "gather_gemm": sum(1 for r in convs if r["decision"] == "gather-gemm"),
            "dense": sum(1 for r in convs if r["decision"] == "dense"),
            "input_maps_removed": sum(r["dead_channels"]["input_maps_removed"] for r in convs),
            "output_maps_removed": sum(r["dead_channels"]["output_maps_removed"] for r in convs),
            "flops_dense": fd,
            "flops_executed": fe,
            "flops_ratio": (fe / fd) if fd else 1.0,
        },
        "tuning": tuning,
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "compile_seconds": round(time.time() - t0, 3),
    }
    with open(os.path.join(out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)

    ver_path = os.path.join(out_dir, VERIFICATION)
    if do_verify:
        stage(4)
        if tgt.kind.name == "cuda" and not _has_cuda_device():
            ver = {"skipped": True, "reason": "no CUDA device on this machine (artifact built only)", "passed": None}
        else:
            ver = verify_artifact(out_dir, ep, shape, dtype=imp.input_dtype)
        with open(ver_path, "w") as f:
            json.dump(ver, f, indent=2)
        manifest["verification"] = ver
        if ver.get("passed") is False:
            warnings.warn(
                f"gbd-export: verification failed, max relative error {ver['max_relative_error']:.3g} > {TOLERANCE}",
                stacklevel=2,
            )
    elif os.path.exists(ver_path):
        os.remove(ver_path)
    stage(len(stages))
    bar.close()
    return manifest
