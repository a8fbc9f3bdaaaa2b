"""The demo's last step: export the dense and the sparsified model to TVM (llvm), verify both, run
the sparse artifact over the whole hold-out split, and time PyTorch eager against both exports
side by side in one run."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .models import accuracy

BATCH = 100  # divides the 10k hold-out split


def time_side_by_side(fns: dict[str, Callable[[], object]], repeats: int = 7, number: int = 10) -> dict[str, float]:
    """Median milliseconds per call of each function; the functions are interleaved in every repeat
    so that machine load affects all of them alike."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples[k].append((time.perf_counter() - t0) / number * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


PYTORCH_TIMER = """
import sys, torch
from lightning_gbd.demo_export import time_side_by_side
from lightning_gbd.models import LeNet5
torch.set_num_threads(2)
net = LeNet5().eval()
net.load_state_dict(torch.load(sys.argv[1], weights_only=True))
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    print(time_side_by_side({"t": lambda: net(x)})["t"])
"""


def time_pytorch_isolated(dense: nn.Module, x: torch.Tensor, work: Path, processes: int = 2) -> float:
    """PyTorch eager ms per call of the dense LeNet-5, timed in fresh processes that never load TVM
    (PyTorch's OpenMP threads run slower in a process whose TVM thread pool has been used:
    ``benchmarks/interference.py``); the fastest process is kept, which can only favour PyTorch."""
    work.mkdir(parents=True, exist_ok=True)
    torch.save(dense.state_dict(), work / "dense_net.pt")
    torch.save(x, work / "input.pt")
    best = float("inf")
    for _ in range(processes):
        r = subprocess.run([sys.executable, "-c", PYTORCH_TIMER, str(work / "dense_net.pt"), str(work / "input.pt")],
                           capture_output=True, text=True, check=True)
        best = min(best, float(r.stdout.strip().splitlines()[-1]))
    return best


def export_and_time(dense: nn.Module, sparse: nn.Module, out: Path, dm) -> dict:
    from tvm_passes import export_model, load

    x = next(iter(torch.utils.data.DataLoader(dm.holdout_set, batch_size=BATCH)))[0]
    results = {}
    for name, model, is_sparse in (("tvm_dense", dense, False), ("tvm_sparse", sparse, True)):
        t0 = time.time()
        manifest = export_model(model, x, target="llvm", out_dir=str(out / name), sparse=is_sparse)
        ver = manifest["verification"]
        print(f"[demo] exported {name} in {time.time() - t0:.0f} s: max relative error "
              f"{ver['max_relative_error']:.2e} ({'ok' if ver['passed'] else 'FAILED'}), executed/dense FLOPs "
              f"{manifest['totals']['flops_ratio']:.3f}", flush=True)
        for c in manifest["convs"]:
            print(f"         {c.get('name', '?'):<12} {c['decision']:<12} density {c['density']:.3f}  {c['reason']}")
        results[name] = {"verification": ver, "totals": manifest["totals"]}

    compiled_sparse, compiled_dense = load(out / "tvm_sparse"), load(out / "tvm_dense")
    acc = accuracy(compiled_sparse, torch.utils.data.DataLoader(dm.holdout_set, batch_size=BATCH))
    results["tvm_sparse_holdout_accuracy"] = acc
    print(f"[demo] compiled sparse model, hold-out accuracy {acc:.4f} (whole 10k split)")

    torch.set_num_threads(2)
    with torch.no_grad():
        ms = time_side_by_side({
            "tvm_dense": lambda: compiled_dense(x),
            "tvm_sparse": lambda: compiled_sparse(x),
        })
    ms = {"pytorch_eager_dense": time_pytorch_isolated(dense, x, out / "pytorch_timing"), **ms}
    base = ms["pytorch_eager_dense"]
    print(f"[demo] LeNet-5, batch {BATCH}, 2 threads, median of 7x10 calls (PyTorch in its own process):")
    for k, v in ms.items():
        print(f"         {k:<22}{v:8.3f} ms   speed-up vs PyTorch eager {base / v:5.2f}x")
    results["timing_ms"] = ms
    results["speedup_vs_pytorch"] = {k: base / v for k, v in ms.items()}
    results["batch"] = BATCH
    (out / "speed.json").write_text(json.dumps(results, indent=1))
    return results
