"""``export_model``: a PyTorch model or ``.pt2`` program -> a verified artifact folder."""

from __future__ import annotations

import os
import sys
import time
import warnings

from .artifact.manifest import LIB_NAME, MANIFEST, VERIFICATION, build_manifest, output_spec, write_json
from .artifact.verify import TOLERANCE, verify_artifact
from .errors import ExportError
from .frontend import check_finite, example_input_of, input_shape_of, specialize
from .frontend.program import is_dynamic_batch
from .pipeline import compile_module, lower
from .target import has_cuda_device, make_target, target_spec


def _example_input(model, example_input, input_shape):
    """The input the model is specialised for: the given one, the ``.pt2``'s, or random of ``input_shape``."""
    import torch

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
    return example_input


def _stage_bar(stages, progress):
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(stages),
        desc="gbd-export",
        unit="stage",
        disable=None if progress is None else not progress,
        leave=False,
        file=sys.stderr,
        bar_format="{desc}: {n}/{total} {postfix} [{elapsed}]",
    )

    def stage(i):
        bar.n = i
        bar.set_postfix_str(stages[i] if i < len(stages) else "done")

    return bar, stage


def _verification(out_dir, ep, shape, target, dtype, batches) -> dict:
    """The artifact against PyTorch at each batch size (the worst one is reported first)."""
    if target.kind.name == "cuda" and not has_cuda_device():
        return {"skipped": True, "reason": "no CUDA device on this machine (artifact built only)", "passed": None}
    runs = [verify_artifact(out_dir, ep, (b, *shape[1:]), dtype=dtype) for b in batches]
    ver = max(runs, key=lambda r: r["max_relative_error"])
    ver = {**ver, "passed": all(r["passed"] for r in runs), "batches": list(batches)}
    if not ver["passed"]:
        warnings.warn(
            f"gbd-export: verification failed, max relative error {ver['max_relative_error']:.3g} > {TOLERANCE}",
            stacklevel=3,
        )
    return ver


def export_model(
    model,
    example_input=None,
    target="llvm",
    out_dir="gbd_export",
    *,
    sparse=True,
    dynamic_batch=False,
    tune_trials=0,
    tune_db=None,
    do_verify=True,
    input_shape=None,
    log=None,
    decompose_error=None,
    progress=False,
    source=None,
):
    """Compile ``model`` (an ``nn.Module`` or ``ExportedProgram``) into ``out_dir``.

    Writes ``model.so``, ``manifest.json`` and (``do_verify``) ``verification.json``, the
    verification also in the manifest; returns the manifest dict.  ``sparse=False`` forces every
    conv to the dense im2col GEMM and skips the dead-channel pass (the baseline of the sparse
    export).  ``dynamic_batch``: every kernel compiled for a symbolic batch (any batch at run
    time; verified at two).  ``input_shape`` overrides the shape of ``example_input`` (the model
    is re-exported for it).  ``progress``: a stage bar on stderr (``None``: only on a terminal).
    ``source``: the ``.pt2`` it came from, recorded for ``gbd-bench --against``.
    """
    t0 = time.time()
    tgt = make_target(target)
    example_input = _example_input(model, example_input, input_shape)
    stages = ["torch.export", "graph passes + GBD kernels" + (" + tuning" if tune_trials else ""), "compile", "write"]
    bar, stage = _stage_bar(stages + (["verify"] if do_verify else []), progress)
    stage(0)
    ep = specialize(model, example_input, dynamic_batch=dynamic_batch)
    check_finite(ep)
    shape = tuple(int(v) for v in example_input.shape)
    stage(1)
    low = lower(
        ep, tgt, sparse=sparse, tune_trials=tune_trials, tune_db=tune_db, log=log, decompose_error=decompose_error
    )
    stage(2)
    ex = compile_module(low.mod, tgt)
    stage(3)
    manifest = _write_artifact(out_dir, ex, ep, low, tgt, sparse, shape, time.time() - t0, source)
    ver_path = os.path.join(out_dir, VERIFICATION)
    if do_verify:
        stage(4)
        batches = [shape[0]] + ([1 if shape[0] != 1 else 3] if manifest["input"]["dynamic_batch"] else [])
        manifest["verification"] = _verification(out_dir, ep, shape, tgt, low.imported.input_dtype, batches)
        write_json(ver_path, manifest["verification"])
        write_json(os.path.join(out_dir, MANIFEST), manifest)
    elif os.path.exists(ver_path):
        os.remove(ver_path)
    stage(len(stages) + 1)
    bar.close()
    return manifest


def _write_artifact(out_dir, ex, ep, low, tgt, sparse, shape, seconds, source=None) -> dict:
    """``model.so`` and a first ``manifest.json`` (the loader needs it to verify)."""
    os.makedirs(out_dir, exist_ok=True)
    lib_path = os.path.join(out_dir, LIB_NAME)
    ex.export_library(lib_path + ".tmp.so")
    os.replace(lib_path + ".tmp.so", lib_path)
    dynamic = is_dynamic_batch(ep)
    input_spec = {
        "name": str(next(iter(ep.graph_signature.user_inputs), "input")),
        "shape": ["batch", *shape[1:]] if dynamic else list(shape),
        "dtype": low.imported.input_dtype,
        "dynamic_batch": dynamic,
        "example_batch": shape[0],
    }
    manifest = build_manifest(
        lib_path=lib_path,
        target_spec=target_spec(tgt),
        sparse=sparse,
        input_spec=input_spec,
        output=output_spec(ep),
        records=low.records,
        decomposed=low.decomposed,
        tuning=low.tuning,
        compile_seconds=seconds,
    )
    if source is not None:
        manifest["source"] = os.path.abspath(source)
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest
