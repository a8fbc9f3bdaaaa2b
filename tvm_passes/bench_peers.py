"""One peer runtime timed in its own process, for ``gbd-bench --against``: the PyTorch model the
artifact was compiled from (its ``.pt2``), in PyTorch eager, ONNX Runtime or OpenVINO, with the
same threads and the same protocol.  Prints one JSON line (the per-call samples in ms), or
``{"skipped": reason}`` when the runtime is not installed here.

    python -m tvm_passes.bench_peers torch model.pt2 32 2 10
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile

ENGINES = ("torch", "onnxruntime", "openvino")
#: the package each engine needs beyond torch (ONNX export needs onnx)
NEEDS = {"torch": (), "onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}


def missing(engine: str) -> list[str]:
    return [m for m in NEEDS[engine] if importlib.util.find_spec(m) is None]


def _program(model_path, batch):
    """The model at ``batch`` as a static ExportedProgram, and an input for it."""
    import torch

    from .frontend import load_exported_program, specialize

    ep = load_exported_program(model_path)
    x = torch.randn(batch, *tuple(ep.example_inputs[0][0].shape[1:]))
    return specialize(ep, x), x


def runner(engine, model_path, batch, threads):
    """A no-argument callable running the model once in ``engine`` (an ``.onnx`` source goes to
    the ONNX runtimes as it is; a ``.pt2`` is exported to ONNX first)."""
    import numpy as np
    import torch

    from lightning_gbd.core.onnx_export import save_onnx

    torch.set_num_threads(threads)
    if model_path.endswith(".onnx"):
        if engine == "torch":
            raise ValueError("PyTorch needs the .pt2 (pass --model PATH.pt2)")
        path, feed = model_path, None
    else:
        ep, x = _program(model_path, batch)
        if engine == "torch":
            module = ep.module()

            def run():
                with torch.no_grad():
                    return module(x)

            return run
        path = save_onnx(ep, x, os.path.join(tempfile.mkdtemp(prefix="gbd_bench_"), "model.onnx"))
        feed = x.numpy()
    if engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        if feed is None:
            shape = [batch] + [int(d) for d in inp.shape[1:]]
            feed = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        return lambda: sess.run(None, {inp.name: feed})
    import openvino as ov

    core = ov.Core()
    ovm = core.read_model(str(path))
    if feed is None:
        shape = [batch] + [int(d.get_length()) for d in ovm.inputs[0].get_partial_shape()[1:]]
        feed = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ovm.reshape({ovm.inputs[0].get_any_name(): list(feed.shape)})
    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(ovm, "CPU", cfg)
    return lambda: compiled(feed)


def main(argv=None) -> int:
    engine, model_path, batch, threads, rounds = (argv or sys.argv[1:])[:5]
    if engine not in ENGINES:
        print(json.dumps({"skipped": f"unknown runtime {engine!r} (choose from {', '.join(ENGINES)})"}))
        return 0
    lacking = missing(engine)
    if lacking:
        print(json.dumps({"skipped": f"{', '.join(lacking)} not installed in this environment"}))
        return 0
    from lightning_gbd.core.timing import time_interleaved

    try:
        run = runner(engine, model_path, int(batch), int(threads))
    except ValueError as exc:
        print(json.dumps({"skipped": str(exc)}))
        return 0
    res = time_interleaved({engine: run}, rounds=int(rounds), sample_ms=50.0, budget_s=60.0, per_call=True)
    print(json.dumps({"samples": res[engine]["samples"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
