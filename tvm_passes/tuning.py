"""meta_schedule tuning of the kernels without a hand schedule, with a persistent database."""

from __future__ import annotations

import os
import warnings

from .target import has_cuda_device

DEFAULT_TUNE_DB = os.path.join(os.path.expanduser("~"), ".cache", "lightning_gbd", "tune_db")


def _is_scheduled(func) -> bool:
    attrs = func.attrs or {}
    return bool(attrs.get("tirx.is_scheduled", False) or attrs.get("tir.is_scheduled", False))


def tune_and_apply(mod, target, trials, db_dir, log=None):
    """meta_schedule tuning of the PrimFuncs without a hand schedule, with a persistent database.

    Tasks already in the JSON database at ``db_dir`` (same workload, same target) are not tuned
    again, so a second export of the same shapes costs only the database look-up.  The GBD
    kernels carry their hand schedule (``tirx.is_scheduled``) and are not re-tuned.
    """
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    info = {"trials_per_task": int(trials), "database": os.path.abspath(db_dir), "tuned": [], "cached": []}
    if target.kind.name == "cuda" and not has_cuda_device():
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
