"""One engine, one model x density x batch, timed in this (fresh) process; prints one JSON line.

Called by ``benchmarks/peers.py`` (and ``peers_int8.py``: the ``*_int8`` engines), never imported
by them: with ``.venv-peers/bin/python`` for ``onnxruntime`` / ``openvino`` / ``deepsparse`` (that
venv has numpy 1.26 and no torch), with the project venv for ``torch`` / ``ours_*``.  The parent
removes every ``TVM_*`` variable from the environment and sets ``OMP_NUM_THREADS``; this process
sets each engine's own thread count to ``threads`` through its API.

    python -m benchmarks.peer_worker '{"engine": "openvino", "model": "resnet18", "density": 0.3,
        "batch": 1, "threads": 2, "onnx": ".../model.onnx", "x": ".../x_b1.npy",
        "ref": ".../ref_b1.npy", "rounds": 7, "budget_s": 20, "sample_ms": 200}'

Protocol: load / compile (``load_s``), warm-up (at least 3 calls and 1 s), then
``lightning_gbd.core.timing.time_interleaved`` with this one variant and ``per_call=True``:
``ms`` is the median of the per-call wall times.  The output of a last call is compared with
the PyTorch reference ``ref`` (max|a - b| / max|b|).  During the timing it also reads
``/proc/stat``: ``foreign_cpu`` = cores kept busy by other processes (machine busy time minus
this process's CPU time, per second of wall time), ``steal_cpu`` = time the hypervisor took.
Prints ``{"ms", "min_ms", "p10_ms", "p90_ms", "n", "rel_err", "load_s", "foreign_cpu", "version",
...}``, or ``{"skipped": why}`` when the engine is
not installed in this interpreter, or ``{"error": why}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = ("torch", "onnxruntime", "openvino", "deepsparse", "ours_dense", "ours_sparse")
#: the INT8 engines of ``benchmarks/peers_int8.py``: a peer's ``*_int8`` runs like the peer on the
#: quantized model in ``spec["onnx"]`` (OpenVINO: the NNCF IR .xml, without the f32 precision hint)
INT8_ENGINES = ("ours_int8", "onnxruntime_int8", "openvino_int8", "deepsparse_int8")
#: the module each engine imports (its absence means "skipped", not "error")
NEEDS = {
    "torch": "torchvision",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "deepsparse": "deepsparse",
    "ours_dense": "tvm_passes",
    "ours_sparse": "tvm_passes",
    "ours_int8": "tvm_passes",
    "onnxruntime_int8": "onnxruntime",
    "openvino_int8": "openvino",
    "deepsparse_int8": "deepsparse",
}


class Skipped(Exception):
    pass


def _import(mod):
    import importlib

    try:
        return importlib.import_module(mod)
    except ImportError as e:
        raise Skipped(f"{mod} not importable by {sys.executable}: {e}") from e


def runner(spec, x):
    """(callable running one forward and returning its first output as numpy, version string)."""
    engine, threads, batch = spec["engine"], int(spec["threads"]), int(spec["batch"])
    if engine in INT8_ENGINES and engine != "ours_int8":
        engine = engine[: -len("_int8")]
    if engine == "torch":
        _import("torchvision")
        import torch

        from benchmarks.peer_models import build_model

        torch.set_num_threads(threads)
        model = build_model(spec["model"], float(spec["density"]))
        xt = torch.from_numpy(x).clone()  # torch's own (64-byte aligned) allocation, as torch.randn gives

        def run():
            with torch.inference_mode():
                return model(xt)

        return run, lambda out: out.numpy(), torch.__version__
    if engine == "onnxruntime":
        ort = _import("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_free_dimension_override_by_name("batch", batch)  # static batch, as for the others
        sess = ort.InferenceSession(spec["onnx"], opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return (lambda: sess.run(None, {name: x})), (lambda out: out[0]), ort.__version__
    if engine == "openvino":
        ov = _import("openvino")
        core = ov.Core()
        model = core.read_model(spec["onnx"])
        model.reshape({model.inputs[0].get_any_name(): list(x.shape)})  # static batch
        cfg = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if spec["engine"] == "openvino_int8":
            del cfg["INFERENCE_PRECISION_HINT"]  # an int8 model: the plugin's default for what stays float
        compiled = core.compile_model(model, "CPU", cfg)
        prec = compiled.get_property("INFERENCE_PRECISION_HINT")
        prec = prec.get_type_name() if hasattr(prec, "get_type_name") else str(prec)
        if spec["engine"] == "openvino_int8":  # which conv kernels it picked (AMX / VNNI / ...)
            prec += "; convs: " + _ov_conv_kernels(compiled)
        return (lambda: compiled(x)), (lambda out: out[0]), f"{ov.__version__.split('-')[0]} ({prec})"
    if engine == "deepsparse":
        ds = _import("deepsparse")
        eng = ds.compile_model(spec["onnx"], batch_size=batch, num_cores=threads)
        return (lambda: eng([x])), (lambda out: out[0]), ds.__version__
    if engine in ("ours_dense", "ours_sparse", "ours_int8"):
        tp = _import("tvm_passes")
        import inspect

        import torch

        torch.set_num_threads(threads)
        kw = {}
        if _takes_threads(tp.load, inspect) or (
            _takes_var_kw(tp.load, inspect) and _takes_threads(_import("tvm_passes.artifact.loader").load, inspect)
        ):
            kw["threads"] = threads
        model = tp.load(spec["artifact"], **kw)
        # clone: a user's tensor comes from torch's allocator (64-byte aligned); the loader's
        # zero-copy DLPack path refuses np.load's 32-byte-aligned buffer
        xt = torch.from_numpy(x).clone()
        ver = f"tvm_passes (load threads arg: {'yes' if kw else 'no'})"
        return (lambda: model(xt)), (lambda out: out.numpy()), ver
    raise ValueError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES + INT8_ENGINES)})")


def _ov_conv_kernels(compiled):
    """'brgconv_avx512_amx_I8 x16, ...': the primitives of the compiled model's convolutions."""
    from collections import Counter

    try:
        n = Counter()
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if rt["layerType"].astype(str) == "Convolution":
                n[rt["primitiveType"].astype(str)] += 1
        return ", ".join(f"{k} x{v}" for k, v in n.most_common()) or "none"
    except Exception as e:
        return f"unknown ({type(e).__name__})"


def _takes_threads(fn, inspect):
    try:
        return "threads" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _takes_var_kw(fn, inspect):
    try:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False


def _cpu_snapshot():
    """(machine busy seconds, steal seconds, this process's CPU seconds, wall) or None off Linux."""
    import resource

    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (user + nice + system + irq + softirq) / hz, steal / hz, ru.ru_utime + ru.ru_stime, time.perf_counter()


def _foreign(a, b):
    """Cores kept busy by other processes (and stolen by the hypervisor) between two snapshots."""
    if a is None or b is None or b[3] <= a[3]:
        return None, None
    wall = b[3] - a[3]
    return round(max(0.0, (b[0] - a[0]) - (b[2] - a[2])) / wall, 3), round((b[1] - a[1]) / wall, 3)


def measure(spec):
    import numpy as np

    sys.path.insert(0, ROOT)  # lightning_gbd.core.timing from the checkout (the peer venv has no project)
    from lightning_gbd.core.timing import time_interleaved

    load_before = round(os.getloadavg()[0], 2)
    x = np.load(spec["x"], allow_pickle=False)
    ref = np.load(spec["ref"], allow_pickle=False)
    t0 = time.perf_counter()
    run, to_numpy, version = runner(spec, x)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = to_numpy(run())
    first_ms = (time.perf_counter() - t0) * 1e3
    t_warm, n_warm = time.perf_counter(), 1
    while n_warm < 3 or (time.perf_counter() - t_warm < float(spec.get("warmup_s", 1.0)) and n_warm < 50):
        run()
        n_warm += 1
    snap0 = _cpu_snapshot()
    res = time_interleaved(
        {"x": run},
        rounds=int(spec.get("rounds", 7)),
        sample_ms=float(spec.get("sample_ms", 200.0)),
        budget_s=float(spec.get("budget_s", 20.0)),
        per_call=True,
    )["x"]
    foreign, steal = _foreign(snap0, _cpu_snapshot())
    out = np.asarray(to_numpy(run()), dtype=np.float32)
    if out.shape != ref.shape:
        rel = float("inf")
    else:
        rel = float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-30))
    s = np.asarray(res["samples"], dtype=np.float64)
    return dict(
        engine=spec["engine"],
        ms=float(res["ms"]),
        min_ms=float(res["min_ms"]),
        p10_ms=float(np.percentile(s, 10)),
        p90_ms=float(np.percentile(s, 90)),
        n=int(len(s)),
        inner=int(res["inner"]),
        rel_err=rel,
        out_shape=list(out.shape),
        load_s=round(load_s, 3),
        first_call_ms=round(first_ms, 3),
        warmup_calls=n_warm,
        version=version,
        loadavg_before=load_before,
        foreign_cpu=foreign,
        steal_cpu=steal,
        loadavg_after=round(os.getloadavg()[0], 2),
        python=sys.executable,
        samples=[round(v, 4) for v in s.tolist()],
    )


def main(argv=None) -> int:
    spec = json.loads((argv or sys.argv[1:])[0])
    try:
        if spec.get("engine") in NEEDS:
            _import(NEEDS[spec["engine"]])
        res = measure(spec)
        code = 0
    except Skipped as e:
        res, code = {"skipped": str(e)}, 0
    except Exception as e:
        res, code = error_result(e), 1
    return reply(res, code)


def error_result(e) -> dict:
    """A worker's failure as its result: the exception and the end of its traceback."""
    tb = traceback.format_exc().strip().splitlines()
    return {"error": f"{type(e).__name__}: {e}"[:2000], "traceback": tb[-12:]}


def reply(res: dict, code: int) -> int:
    """The result as the last stdout line, which the parent parses (peers.run_worker)."""
    sys.stdout.flush()
    print("\n" + json.dumps(res), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
