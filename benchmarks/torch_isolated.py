"""PyTorch eager timings in a process that never loads TVM (the (a) baselines of conv_speed.py
and model_speed.py).

Measured here (AlexNet conv2, batch 32, 2 threads): PyTorch timed in the benchmark process that
also runs the TVM kernels read 103 ms; `benchmarks/interference.py` read 49-87 ms right after a
TVM kernel (four runs) against 45-57 ms for the best of three fresh processes.  PyTorch's timing
on this VM is noisy in any case, but an in-process PyTorch baseline flatters TVM.  The benchmarks
therefore time PyTorch through ``common.torch_isolated``
-> this script, in fresh processes, keeping the best process (which can only favour PyTorch).

    python -m benchmarks.torch_isolated '{"kind": "conv", "C": 64, "T": 192, "k": 5, "pad": 2,
                                          "H": 27, "batch": 32, "threads": 2}'

Prints one JSON line: ``{variant: {"ms", "min_ms", "samples", "inner"}, ...}`` with the variants
``torch`` (``threads`` threads) and ``torch1`` (1 thread), plus ``torch_T/4`` / ``torch_T/2``
(or ``torch_<label>`` for each ``[label, rank]`` of ``ranks``) for ``kind: lowrank`` (the PCA
pair's shapes: k x k conv to rank K without bias, then 1x1 to T) and
``layers`` (per conv/linear ms, forward hooks) for ``kind: model``.
"""

from __future__ import annotations

import json
import sys
import time

from benchmarks import common


def main(spec: dict) -> dict:
    threads = int(spec.get("threads", 2))
    common.setup_env(threads)
    import torch
    from torch import nn

    torch.manual_seed(0)
    kind, n = spec["kind"], int(spec["batch"])
    mods = {}
    if kind in ("conv", "lowrank"):
        C, T, k, pad, H = (int(spec[key]) for key in ("C", "T", "k", "pad", "H"))
        x = torch.randn(n, C, H, H)
        mods["torch"] = nn.Conv2d(C, T, k, padding=pad).eval()
        if kind == "lowrank":
            for frac, rank in spec.get("ranks") or (("T/4", T // 4), ("T/2", T // 2)):
                mods[f"torch_{frac}"] = nn.Sequential(
                    nn.Conv2d(C, rank, k, padding=pad, bias=False), nn.Conv2d(rank, T, 1)
                ).eval()
    elif kind == "model":
        from benchmarks.model_speed import make_model, torch_layer_times

        model, in_shape = make_model(spec["name"])
        mods["torch"] = model.eval()
        x = torch.randn(n, *in_shape)
    else:
        raise ValueError(f"unknown kind {kind!r}")

    def one_thread(m):
        def f():
            torch.set_num_threads(1)
            try:
                return m(x)
            finally:
                torch.set_num_threads(threads)

        return f

    fns = {name: (lambda m=m: m(x)) for name, m in mods.items()}
    fns["torch1"] = one_thread(mods["torch"])
    clock = time.thread_time if spec.get("cpu_time") else time.perf_counter
    res = common.time_interleaved(
        fns,
        rounds=int(spec.get("rounds", 5)),
        budget_s=float(spec.get("budget_s", 30)),
        sample_ms=float(spec.get("sample_ms", 30)),
        clock=clock,
    )
    if kind == "model":
        res["layers"] = torch_layer_times(mods["torch"], x, int(spec.get("layer_runs", 3)))
    return res


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
