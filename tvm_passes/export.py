"""``export_model``: a PyTorch model, a ``.pt2`` program or an ONNX model -> a verified artifact folder."""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

from .artifact.manifest import LIB_NAME, MANIFEST, VERIFICATION, build_manifest, output_spec, write_json
from .artifact.verify import TOLERANCE, relative_error, tolerance, verify_artifact
from .errors import ExportError
from .frontend import check_finite, example_input_of, input_shape_of, specialize
from .frontend.onnx_import import check_finite_onnx, import_onnx, is_onnx, onnx_reference, output_spec_of, read_onnx
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


class _Source(NamedTuple):
    """A model ready for ``lower``: the program (or imported module), its input shape and name,
    whether its batch is symbolic, its output spec, and ``verify(out_dir, shape, dtype, tol)``."""

    program: object
    shape: tuple
    input_name: str
    dynamic: bool
    output: dict
    verify: Callable


def _prepare(model, example_input, input_shape, dynamic_batch) -> _Source:
    """A torch model / ExportedProgram, or an ONNX model (``.onnx`` path or ``ModelProto``)."""
    if is_onnx(model):
        return _prepare_onnx(model, example_input, input_shape, dynamic_batch)
    example_input = _example_input(model, example_input, input_shape)
    ep = specialize(model, example_input, dynamic_batch=dynamic_batch)
    check_finite(ep)
    name = str(next(iter(ep.graph_signature.user_inputs), "input"))
    shape = tuple(int(v) for v in example_input.shape)
    verify = lambda out_dir, s, dtype, tol: verify_artifact(out_dir, ep, s, dtype=dtype, tol=tol)
    return _Source(ep, shape, name, is_dynamic_batch(ep), output_spec(ep), verify)


def _prepare_onnx(model, example_input, input_shape, dynamic_batch) -> _Source:
    """The ONNX model imported by TVM's ONNX frontend; verified against the ONNX model itself."""
    om = read_onnx(model)
    check_finite_onnx(om)
    if input_shape is None and example_input is not None:
        input_shape = tuple(example_input.shape)
    shape = om.static_shape(input_shape)
    if dynamic_batch and om.input_shape[:1] != (None,):
        warnings.warn(
            f"gbd-export: the ONNX input {om.input_name!r} has a fixed batch; compiling for batch {shape[0]} only",
            stacklevel=4,
        )
        dynamic_batch = False
    imp = import_onnx(om, shape, dynamic_batch=dynamic_batch)
    verify = lambda out_dir, s, dtype, tol: _verify_onnx(out_dir, om, s, dtype, tol=tol)
    return _Source(imp, shape, om.input_name, dynamic_batch, output_spec_of(imp.mod), verify)


def _verify_onnx(out_dir, om, input_shape, dtype, seed=0, tol=TOLERANCE) -> dict:
    """The artifact against the ONNX model ``om`` on the random input ``verify_artifact`` uses."""
    import numpy as np
    import torch

    from .artifact.loader import load

    run, engine = onnx_reference(om)
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed)).numpy().astype(dtype)
    ref = np.asarray(run(x), dtype=np.float64)
    out = load(out_dir)(x)
    out = np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64)
    err = relative_error(out, ref)
    return {
        "input_shape": list(input_shape),
        "seed": seed,
        "reference": engine,
        "metric": "max|tvm - onnx| / max|onnx|",
        "max_relative_error": err,
        "max_abs_error": float(np.max(np.abs(out - ref))) if ref.size else 0.0,
        "tolerance": tol,
        "passed": bool(err <= tol),
    }


def _verification(out_dir, src, target, dtype, batches, tol=TOLERANCE) -> dict:
    """The artifact against its reference (PyTorch, or the ONNX model) at each batch size (the
    worst one is reported first); ``tol``: the compute dtype's (``artifact.verify.tolerance``)."""
    if target.kind.name == "cuda" and not has_cuda_device():
        return {"skipped": True, "reason": "no CUDA device on this machine (artifact built only)", "passed": None}
    shape = src.shape
    runs = [src.verify(out_dir, (b, *shape[1:]), dtype, tol) for b in batches]
    ver = max(runs, key=lambda r: r["max_relative_error"])
    ver = {**ver, "passed": all(r["passed"] for r in runs), "batches": list(batches)}
    if not ver["passed"]:
        warnings.warn(
            f"gbd-export: verification failed, max relative error {ver['max_relative_error']:.3g} > {tol}",
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
    dtype="float32",
    calibration=None,
    calibration_method="percentile",
    batch_chunks=True,
):
    """Compile ``model`` (an ``nn.Module``, an ``ExportedProgram``, or an ONNX model: an ``.onnx``
    path or ``onnx.ModelProto``, verified against ONNX Runtime / ``onnx.reference``) into ``out_dir``.

    Writes ``model.so``, ``manifest.json`` and (``do_verify``) ``verification.json``, the
    verification also in the manifest; returns the manifest dict.  ``sparse=False`` forces every
    conv to the dense im2col GEMM and skips the dead-channel pass (the baseline of the sparse
    export).  ``dynamic_batch``: every kernel compiled for a symbolic batch (any batch at run
    time; verified at two).  ``input_shape`` overrides the shape of ``example_input`` (the model
    is re-exported for it).  ``progress``: a stage bar on stderr (``None``: only on a terminal).
    ``source``: the ``.pt2`` it came from, recorded for ``gbd-bench --against``.  ``dtype``: compute
    dtype of the conv / linear kernels, "float32" or, on CUDA, the tensor-core "tf32" / "float16" /
    "bfloat16" (model input and output stay float32; verified within ``artifact.verify.tolerance``),
    or "int8" on AVX-512 VNNI CPUs: post-training quantization of every conv from ``calibration``
    (inputs as a numpy array, a ``.npy`` path or a run directory holding ``calibration.npy``; the
    input ranges by ``calibration_method``, "percentile" or "minmax"), verified against the
    fake-quant model (``frontend.calibrate``).  ``batch_chunks``: at a static batch of 8 or more,
    float32 on the CPU, the layers with the largest maps run image by image where that pays
    (``batch_chunks``, docs/formulas.md 1.27; recorded as the manifest's ``batch_chunks``).
    """
    t0 = time.time()
    tgt = make_target(target)
    _check_dtype(dtype, tgt)
    first = "ONNX import" if is_onnx(model) else "torch.export"
    stages = [first, "graph passes + GBD kernels" + (" + tuning" if tune_trials else ""), "compile", "write"]
    bar, stage = _stage_bar(stages + (["verify"] if do_verify else []), progress)
    stage(0)
    src = _prepare(model, example_input, input_shape, dynamic_batch)
    shape = src.shape
    quant, cal_inputs = _calibrate(src, dtype, calibration, calibration_method)
    stage(1)
    lower_kw = dict(sparse=sparse, tune_trials=tune_trials, tune_db=tune_db, log=log, decompose_error=decompose_error)
    low = lower(src.program, tgt, dtype=dtype, quant=quant, **lower_kw)
    if batch_chunks and dtype == "float32" and tgt.kind.name == "llvm" and not src.dynamic:
        low = _chunk_front(low, src, tgt, lower_kw)
    stage(2)
    ex = compile_module(low.mod, tgt)
    stage(3)
    manifest = _write_artifact(out_dir, ex, src, low, tgt, sparse, time.time() - t0, source, dtype)
    ver_path = os.path.join(out_dir, VERIFICATION)
    if do_verify:
        stage(4)
        batches = [shape[0]] + ([1 if shape[0] != 1 else 3] if manifest["input"]["dynamic_batch"] else [])
        tol = tolerance(dtype)
        if quant is not None:
            src = _fake_quant_source(src, quant, low.records, cal_inputs)
        manifest["verification"] = _verification(out_dir, src, tgt, low.imported.input_dtype, batches, tol)
        write_json(ver_path, manifest["verification"])
        write_json(os.path.join(out_dir, MANIFEST), manifest)
    elif os.path.exists(ver_path):
        os.remove(ver_path)
    stage(len(stages) + 1)
    bar.close()
    return manifest


def _chunk_front(low, src, tgt, lower_kw):
    """``low`` with its front run chunk by chunk (``batch_chunks``) where it has a cut, else ``low``."""
    import dataclasses

    import torch

    from . import batch_chunks

    if not isinstance(src.program, torch.export.ExportedProgram):
        return low  # an ONNX import: no program to lower again at another batch
    cut = batch_chunks.plan(low.mod, src.shape[0])
    if cut is None:
        return low
    dtype = getattr(torch, low.imported.input_dtype)
    try:
        small = lower(specialize(src.program, torch.zeros((cut.chunk, *src.shape[1:]), dtype=dtype)), tgt, **lower_kw)
        mod = batch_chunks.assemble(low.mod, small.mod, cut, src.shape[0])
    except Exception as exc:  # noqa: BLE001 - an optimisation: the batch-wide module is complete
        msg = " ".join(str(exc).split())[:200]
        warnings.warn(f"gbd-export: every layer stays batch-wide ({type(exc).__name__}: {msg})", stacklevel=2)
        return low
    if mod is None:
        return low
    return dataclasses.replace(low, mod=mod, front={"front_until": cut.layer, "chunk": cut.chunk})


def _calibrate(src, dtype, calibration, method):
    """(per-conv input ranges, the calibration inputs) for an int8 export ((None, None) otherwise)."""
    if dtype != "int8":
        return None, None
    if calibration is None:
        raise ExportError("--dtype int8 needs calibration inputs: --calibration FILE.npy or a run directory")
    if not hasattr(src.program, "graph_signature"):
        raise ExportError("--dtype int8 is for .pt2 / PyTorch models; an ONNX model cannot be calibrated here yet")
    from .frontend.calibrate import calibrate, load_calibration

    inputs = load_calibration(calibration, src.shape)
    batch = 32 if src.dynamic else src.shape[0]
    return calibrate(src.program, inputs, method, batch=batch, fixed_batch=not src.dynamic), inputs


def _fake_quant_source(src, quant, records, inputs):
    """``src`` verified against the fake-quant model of the convs that were built in int8, on
    calibration inputs (in the calibrated ranges, so the error against float32 is the one users get)."""
    from .frontend.calibrate import fake_quant_reference

    int8 = [r["name"] for r in records if r.get("compute_dtype") == "int8"]
    res_u8 = [r["name"] for r in records if r.get("residual_dtype") == "uint8"]
    ref = fake_quant_reference(src.program, quant, int8, res_u8)
    verify = lambda out_dir, s, dtype, tol: verify_artifact(
        out_dir, src.program, s, dtype=dtype, tol=tol, reference=ref, inputs=inputs
    )
    return src._replace(verify=verify)


def _check_dtype(dtype, tgt) -> None:
    from .kernels import check_dtype

    try:
        check_dtype(dtype, tgt)
    except ValueError as exc:
        raise ExportError(str(exc)) from None


def _write_artifact(out_dir, ex, src, low, tgt, sparse, seconds, source=None, dtype="float32") -> dict:
    """``model.so`` and a first ``manifest.json`` (the loader needs it to verify)."""
    os.makedirs(out_dir, exist_ok=True)
    lib_path = os.path.join(out_dir, LIB_NAME)
    ex.export_library(lib_path + ".tmp.so")
    os.replace(lib_path + ".tmp.so", lib_path)
    shape = src.shape
    input_spec = {
        "name": src.input_name,
        "shape": ["batch", *shape[1:]] if src.dynamic else list(shape),
        "dtype": low.imported.input_dtype,
        "dynamic_batch": src.dynamic,
        "example_batch": shape[0],
    }
    manifest = build_manifest(
        lib_path=lib_path,
        target_spec=target_spec(tgt),
        sparse=sparse,
        input_spec=input_spec,
        output=src.output,
        records=low.records,
        decomposed=low.decomposed,
        tuning=low.tuning,
        compile_seconds=seconds,
    )
    manifest["compute_dtype"] = dtype  # of the conv / linear kernels (input / output: float32)
    if low.front is not None:
        manifest["batch_chunks"] = low.front
    if source is not None:
        manifest["source"] = os.path.abspath(source)
    write_json(os.path.join(out_dir, MANIFEST), manifest)
    return manifest
