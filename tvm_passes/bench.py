"""``gbd-bench ARTIFACT [ARTIFACT ...]``: latency percentiles and throughput of compiled artifacts
on this machine, several artifacts timed round-robin in one process (``lightning_gbd.core.timing``).

    gbd-bench runs/demo/tvm_dense runs/demo/tvm_sparse --threads 2 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from lightning_gbd.core.timing import time_interleaved


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gbd-bench",
        description="Time gbd-export artifacts: p50/p90/p99 latency "
        "and throughput, the artifacts interleaved round by round.",
    )
    p.add_argument("artifacts", nargs="+", help="artifact directories written by gbd-export")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of the runtime (default: TVM_NUM_THREADS or the cores this process may use)",
    )
    p.add_argument("--rounds", type=int, default=10, help="rounds of ~50 ms of back-to-back calls per artifact")
    p.add_argument("--budget", type=float, default=60.0, help="seconds for all rounds (fewer rounds if slower)")
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


def bench(artifacts: list, *, threads=None, rounds=10, budget_s=60.0) -> dict:
    """``{artifact: summary}``: the artifacts interleaved round by round, every call timed."""
    from .artifact.loader import load

    fns, batches = {}, {}
    rng = np.random.default_rng(0)
    for path in artifacts:
        model = load(path, threads=threads)
        x = rng.standard_normal(model.example_shape()).astype(model.input_dtype)
        xt = model._to_tvm(x)
        fns[path] = lambda m=model, xt=xt: m.run_tvm(xt)
        batches[path] = model.batch
    # rounds of back-to-back calls (a steady stream of requests), every call timed
    res = time_interleaved(fns, rounds=rounds, sample_ms=50.0, budget_s=budget_s, min_rounds=3, per_call=True)
    return {p: summarize(r["samples"], batches[p]) for p, r in res.items()}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import ArtifactError

    try:
        report = bench(args.artifacts, threads=args.threads, rounds=args.rounds, budget_s=args.budget)
    except (ArtifactError, ValueError) as exc:
        print(f"gbd-bench: error: {exc}", file=sys.stderr)
        return 2
    for path, r in report.items():
        print(
            f"{path}: batch {r['batch']}, {r['calls']} calls: p50 {r['p50_ms']:.3f} ms, p90 {r['p90_ms']:.3f} ms, "
            f"p99 {r['p99_ms']:.3f} ms, {r['throughput_per_s']:.1f} inputs/s"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "artifacts": report}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
