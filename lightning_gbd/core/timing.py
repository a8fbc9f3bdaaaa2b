"""The one timing harness: every variant timed round-robin in one process, medians reported.

Used by the demo, ``gbd-bench`` and the benchmarks.  Protocol (machines are shared, so absolute
times drift with the load): round r runs variant A, then B, then C, ...; each variant's time is
the **median** over rounds of the mean of ``inner`` back-to-back calls, ``inner`` calibrated so
that one sample takes about ``sample_ms``; the number of rounds shrinks for slow cases so that
one case stays within ``budget_s``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def _once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    sample_ms: float = 60.0,
    budget_s: float = 30.0,
    min_rounds: int = 3,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
    per_call: bool = False,
) -> dict[str, dict]:
    """Median time (ms) per call of each function in ``fns`` (name -> callable), timed round-robin.

    ``clock=time.thread_time`` with one thread gives the CPU time of the calling thread, which
    does not count time spent preempted by other processes.  ``per_call=True`` keeps the time of
    every call as a sample (for latency percentiles; the calls of one round still run back to back).
    Returns ``{name: {"ms": median, "min_ms": best sample, "samples": [...], "inner": calls per
    round}}``."""
    names = list(fns)
    inner, est = {}, {}
    for n in names:
        for _ in range(warmup):
            fns[n]()
        dt = min(_once(fns[n]) for _ in range(2 if _once(fns[n]) < 0.5 else 1))
        est[n] = dt
        inner[n] = int(min(max(round(sample_ms / 1e3 / max(dt, 1e-6)), 1), 500))
    per_round = sum(inner[n] * est[n] for n in names) + 0.02 * len(names)
    r = int(max(min_rounds, min(rounds, budget_s // max(per_round, 1e-6))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(r):
        for n in names:
            f, k = fns[n], inner[n]
            if per_call:
                for _ in range(k):
                    t0 = clock()
                    f()
                    samples[n].append((clock() - t0) * 1e3)
            else:
                t0 = clock()
                for _ in range(k):
                    f()
                samples[n].append((clock() - t0) / k * 1e3)
            time.sleep(0.01)  # let spinning pool threads of the other runtime go idle
    return {
        n: {
            "ms": statistics.median(samples[n]),
            "min_ms": min(samples[n]),
            "samples": [round(s, 4) for s in samples[n]],
            "inner": inner[n],
        }
        for n in names
    }
