"""``gbd-bench ARTIFACT [ARTIFACT ...]``: latency percentiles (p50/p90/p99) and throughput of
compiled artifacts on this machine, several artifacts timed round-robin in one process
(``lightning_gbd.core.timing``); with ``--against``, the model they were compiled from in
PyTorch eager, ONNX Runtime or OpenVINO, each in a fresh process with the same threads.

    gbd-bench build/resnet18 --batch 1,32 --threads 2 --against torch,onnxruntime --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from lightning_gbd.core.timing import time_interleaved

from .threads import default_threads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gbd-bench", description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="+", help="artifact directories written by gbd-export")
    p.add_argument("--batch", default=None, help="comma list of batch sizes (default: each artifact's own)")
    p.add_argument("--threads", type=int, default=None, help="default: TVM_NUM_THREADS or every usable core")
    p.add_argument("--against", default="", help="comma list of runtimes: torch, onnxruntime, openvino")
    p.add_argument("--model", default=None, help="the .pt2 for --against (default: the one the artifact came from)")
    p.add_argument("--rounds", type=int, default=10, help="rounds of ~50 ms of back-to-back calls")
    p.add_argument("--budget", type=float, default=60.0, help="seconds per batch size (fewer rounds if slower)")
    p.add_argument("--json", default=None, help="write the report here")
    return p


def summarize(samples_ms: list, batch: int) -> dict:
    """Percentiles of per-call latency and the throughput at the median."""
    s = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = (float(np.percentile(s, q)) for q in (50, 90, 99))
    return {
        "batch": batch,
        "calls": int(s.size),
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": float(s.mean()),
        "throughput_per_s": batch * 1e3 / p50,
    }


def bench(artifacts: list, *, batch=None, threads=None, rounds=10, budget_s=60.0) -> dict:
    """``{artifact: summary}`` at ``batch`` (default: each artifact's own), interleaved, every call timed."""
    from .artifact.loader import load

    fns, batches = {}, {}
    rng = np.random.default_rng(0)
    for path in artifacts:
        model = load(path, threads=threads)
        b = int(batch or model.batch)
        if b != model.batch and not model.dynamic_batch:
            raise ValueError(f"{path} takes batch {model.batch} only (export it with --batch dynamic)")
        xt = model._to_tvm(rng.standard_normal(model.example_shape(b)).astype(model.input_dtype))
        fns[path] = lambda m=model, xt=xt: m.run_tvm(xt)
        batches[path] = b
    # rounds of back-to-back calls (a steady stream of requests), every call timed
    res = time_interleaved(fns, rounds=rounds, sample_ms=50.0, budget_s=budget_s, min_rounds=3, per_call=True)
    return {p: summarize(r["samples"], batches[p]) for p, r in res.items()}


def bench_peer(engine, model_path, batch, threads, rounds) -> dict:
    """One peer runtime in a fresh process (``bench_peers``), as summarize() or {"skipped": why}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVM_")}
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "tvm_passes.bench_peers", engine, model_path, str(batch), str(threads), str(rounds)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        return {"skipped": f"failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:200]}"}
    out = json.loads(lines[-1])
    return out if "skipped" in out else summarize(out["samples"], batch)


def _model_for(args, artifact) -> str | None:
    if args.model:
        return args.model
    with open(os.path.join(artifact, "manifest.json")) as f:
        src = json.load(f).get("source")
    return src if src and os.path.isfile(src) else None


def _rows(args) -> list:
    threads = args.threads or default_threads()
    batches = [int(b) for b in args.batch.split(",")] if args.batch else [None]
    peers = [e for e in args.against.split(",") if e]
    model = _model_for(args, args.artifacts[0]) if peers else None
    if peers and model is None:
        raise ValueError("--against needs the model: pass --model PATH.pt2 (the artifact does not name one)")
    rows = []
    for b in _progress(batches):
        for path, r in bench(
            args.artifacts, batch=b, threads=threads, rounds=args.rounds, budget_s=args.budget
        ).items():
            rows.append({"runtime": f"gbd {path}", **r})
        for engine in peers:
            bb = b or rows[-1]["batch"]
            rows.append({"runtime": engine, "batch": bb, **bench_peer(engine, model, bb, threads, args.rounds)})
    return rows


def _progress(items):
    from tqdm.auto import tqdm

    return tqdm(items, desc="gbd-bench", unit="batch", file=sys.stderr, disable=None, leave=False)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import ArtifactError

    try:
        rows = _rows(args)
    except (ArtifactError, ValueError, OSError) as exc:
        print(f"gbd-bench: error: {exc}", file=sys.stderr)
        return 2
    for r in rows:
        if "skipped" in r:
            print(f"{r['runtime']}: batch {r['batch']}: skipped ({r['skipped']})")
            continue
        print(
            f"{r['runtime']}: batch {r['batch']}, {r['calls']} calls: p50 {r['p50_ms']:.3f} ms, "
            f"p90 {r['p90_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, {r['throughput_per_s']:.1f} inputs/s"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
