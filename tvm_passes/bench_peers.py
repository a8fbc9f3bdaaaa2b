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


def _module(model_path, batch):
    import torch

    from .frontend import load_exported_program, specialize

    ep = load_exported_program(model_path)
    x = torch.randn(batch, *tuple(ep.example_inputs[0][0].shape[1:]))
    return specialize(ep, x).module(), x


def _onnx(module, x, path):
    import torch

    torch.onnx.export(module, (x,), path, dynamo=False, opset_version=17)
    return path


def runner(engine, model_path, batch, threads):
    """A no-argument callable running the model once in ``engine``."""
    import torch

    torch.set_num_threads(threads)
    module, x = _module(model_path, batch)
    if engine == "torch":

        def run():
            with torch.no_grad():
                return module(x)

        return run
    path = _onnx(module, x, os.path.join(tempfile.mkdtemp(prefix="gbd_bench_"), "model.onnx"))
    feed = x.numpy()
    if engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return lambda: sess.run(None, {name: feed})
    import openvino as ov

    cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(path, "CPU", cfg)
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

    run = runner(engine, model_path, int(batch), int(threads))
    res = time_interleaved({engine: run}, rounds=int(rounds), sample_ms=50.0, budget_s=60.0, per_call=True)
    print(json.dumps({"samples": res[engine]["samples"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
