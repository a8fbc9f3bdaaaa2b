"""Why the low-density targets are missed: the memory floor of each conv (issue 4).

Measures this machine's copy bandwidth (torch ``copy_`` of 256 MB, 2 threads, best of 7), then
for every row of a ``conv_speed`` json computes the least time any conv kernel needs just to
read its input once and write its output once (fp32, compact weights ignored),
``t_floor = (N*C*H*W + N*T*OH*OW) * 4 B / bandwidth``, the time the gather-GEMM would take with
no fixed cost (``tau * t_dense``), and the efficiency that a kernel at exactly
``max(t_floor, tau * t_dense)`` would reach against our dense conv.  A target above that bound
cannot be met by any schedule on this machine.  The same for the decomposed (low-rank) pairs
(their floor also writes and reads the rank-K intermediate maps once).  It also fits ``t_c(tau) = t0 + tau * t1`` over
the measured densities: ``t0`` is the per-call cost that does not shrink with density.

    .venv/bin/python -m benchmarks.memory_floor [--json benchmarks/results/conv_speed.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def copy_bandwidth(mbytes: int = 256, threads: int = 2, reps: int = 7) -> float:
    """Bytes/s moved by ``dst.copy_(src)`` (read + write counted), best of ``reps``."""
    torch.set_num_threads(threads)
    n = mbytes * 2**20 // 4
    src, dst = torch.randn(n), torch.empty(n)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * n * 4 / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/conv_speed.json"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    rows = json.loads(a.json.read_text())["rows"]
    bw = copy_bandwidth(threads=a.threads)
    print(f"# copy bandwidth ({a.threads} threads): {bw / 1e9:.1f} GB/s (read + write)")
    print(
        f"{'shape':<32}{'b':>3}{'tau':>6}{'t_dense':>9}{'t_c':>8}{'floor':>8}{'tau*tD':>8}{'eff':>6}"
        f"{'eff_max':>8}{'0.8 ok?':>8}{'t0':>7}{'t0/tD':>7}"
    )
    for bsz in sorted({r["batch"] for r in rows}, reverse=True):
        for shape in dict.fromkeys(r["shape"] for r in rows if r["batch"] == bsz):
            rs = [r for r in rows if r["shape"] == shape and r["batch"] == bsz and "gather_ms" in r]
            sparse = [r for r in rs if r["tau"] < 1]
            t0 = float("nan")
            if len(sparse) >= 2:
                tau = np.array([r["tau"] for r in sparse])
                t0 = float(
                    np.linalg.lstsq(
                        np.vstack([np.ones_like(tau), tau]).T, np.array([r["gather_ms"] for r in sparse]), rcond=None
                    )[0][0]
                )
            for r in sparse:
                if r["tau"] not in (0.1, 0.2, 0.3) and abs(r["tau"] - 0.1) > 0.02:
                    continue
                C, T, k, pad, H = r["C"], r["T"], r["k"], r["pad"], r["H"]
                oh = H + 2 * pad - k + 1
                floor = (bsz * C * H * H + bsz * T * oh * oh) * 4 / bw * 1e3
                ideal = r["tau"] * r["tvm_dense_ms"]
                eff_max = ideal / max(floor, ideal)
                print(
                    f"{shape:<32}{bsz:>3}{r['tau']:>6.2f}{r['tvm_dense_ms']:>9.2f}{r['gather_ms']:>8.2f}"
                    f"{floor:>8.2f}{ideal:>8.2f}{r['eff_vs_tvm_dense']:>6.2f}{eff_max:>8.2f}"
                    f"{'yes' if eff_max >= 0.8 else 'NO':>8}{t0:>7.2f}{t0 / r['tvm_dense_ms']:>7.3f}"
                )
    lowrank = json.loads(a.json.read_text()).get("lowrank") or []
    if lowrank:
        print("\n# decomposed pairs: speed-up vs our dense conv against the FLOP reduction (target >= 0.8)")
        print(
            f"{'shape':<32}{'b':>3}{'rank':>6}{'FLOPx':>7}{'t_dense':>9}{'t_LR':>8}{'floor':>8}{'ideal':>8}"
            f"{'eff':>6}{'eff_max':>8}"
        )
        met = 0
        for r in lowrank:
            shape = next(x for x in rows if x["shape"] == r["shape"])
            C, T, k, pad, H = shape["C"], shape["T"], shape["k"], shape["pad"], shape["H"]
            oh, bsz = H + 2 * pad - k + 1, r["batch"]
            floor = (bsz * C * H * H + 2 * bsz * r["rank"] * oh * oh + bsz * T * oh * oh) * 4 / bw * 1e3
            ideal = r["tvm_dense_ms"] / r["theoretical_speedup"]
            eff = r["speedup_vs_tvm_dense"] / r["theoretical_speedup"]
            met += eff >= 0.8
            print(
                f"{r['shape']:<32}{bsz:>3}{r['rank']:>6}{r['theoretical_speedup']:>7.2f}{r['tvm_dense_ms']:>9.2f}"
                f"{r['tvm_decomposed_ms']:>8.2f}{floor:>8.2f}{ideal:>8.2f}{eff:>6.2f}{ideal / max(floor, ideal):>8.2f}"
            )
        print(f"# decomposed pairs at >= 0.8 of the FLOP reduction: {met}/{len(lowrank)}")


if __name__ == "__main__":
    main()
