"""The demo's last step, through the same commands a user runs: write ``.pt2`` files of the
dense and the sparsified model, ``gbd-export`` both (verified), ``gbd-run`` the sparse artifact
over the whole hold-out split, and time PyTorch eager (its own process) against both exports
(``gbd-bench``, one process, interleaved).  The training side never imports the compiler."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.pt2 import save_pt2

BATCH = 100  # divides the 10k hold-out split

PYTORCH_TIMER = """
import sys, torch
from lightning_gbd.core.timing import time_interleaved
from lightning_gbd.app.models import LeNet5
torch.set_num_threads(2)
net = LeNet5().eval()
net.load_state_dict(torch.load(sys.argv[1], weights_only=True))
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    print(time_interleaved({"t": lambda: net(x)}, rounds=10, sample_ms=50.0, budget_s=30, per_call=True)["t"]["ms"])
"""


def _command(name: str) -> list[str]:
    """A console script of this installation (next to the interpreter)."""
    exe = Path(sys.executable).parent / name
    if not exe.exists():
        raise FileNotFoundError(f"{exe}: not installed (pip install -e '.[tvm]')")
    return [str(exe)]


def _run(name: str, *args) -> str:
    r = subprocess.run(_command(name) + [str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{name} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return r.stdout


def time_pytorch_isolated(dense: nn.Module, x: torch.Tensor, work: Path, processes: int = 2) -> float:
    """PyTorch eager median ms per call of the dense LeNet-5, timed in fresh processes that never load
    TVM (``benchmarks/interference.py``); the fastest process is kept, which can only favour PyTorch."""
    work.mkdir(parents=True, exist_ok=True)
    torch.save(dense.state_dict(), work / "dense_net.pt")
    torch.save(x, work / "input.pt")
    best = float("inf")
    for _ in range(processes):
        r = subprocess.run(
            [sys.executable, "-c", PYTORCH_TIMER, str(work / "dense_net.pt"), str(work / "input.pt")],
            capture_output=True,
            text=True,
            check=True,
        )
        best = min(best, float(r.stdout.strip().splitlines()[-1]))
    return best


def _export(name: str, model: nn.Module, x: torch.Tensor, out: Path, sparse: bool) -> dict:
    save_pt2(model, x, out / f"{name}.pt2", dynamic_batch=False)
    _run("gbd-export", out / f"{name}.pt2", "--out", out / name, "-q", *([] if sparse else ["--dense"]))
    manifest = json.loads((out / name / "manifest.json").read_text())
    ver = manifest["verification"]
    print(
        f"[demo] exported {name}: max relative error {ver['max_relative_error']:.2e} "
        f"({'ok' if ver['passed'] else 'FAILED'}), executed/dense FLOPs {manifest['totals']['flops_ratio']:.3f}"
    )
    for c in manifest["convs"]:
        print(f"         {c.get('name', '?'):<12} {c['decision']:<12} density {c['density']:.3f}  {c['reason']}")
    return {"verification": ver, "totals": manifest["totals"]}


def export_and_time(dense: nn.Module, sparse: nn.Module, out: Path, dm) -> dict:
    holdout = torch.utils.data.DataLoader(dm.holdout_set, batch_size=len(dm.holdout_set))
    xs, ys = next(iter(holdout))
    x = xs[:BATCH]
    results = {
        name: _export(name, m, x, out, s) for name, m, s in (("tvm_dense", dense, False), ("tvm_sparse", sparse, True))
    }
    np.save(out / "holdout_x.npy", xs.numpy())
    _run("gbd-run", out / "tvm_sparse", out / "holdout_x.npy", out / "holdout_logits.npy")
    acc = float((np.load(out / "holdout_logits.npy", allow_pickle=False).argmax(1) == ys.numpy()).mean())
    results["tvm_sparse_holdout_accuracy"] = acc
    print(f"[demo] compiled sparse model, hold-out accuracy {acc:.4f} (whole {len(ys)} split)")

    _run("gbd-bench", out / "tvm_dense", out / "tvm_sparse", "--threads", 2, "--json", out / "bench.json")
    bench = {r["runtime"]: r for r in json.loads((out / "bench.json").read_text())["rows"]}
    ms = {
        "pytorch_eager_dense": time_pytorch_isolated(dense, x, out / "pytorch_timing"),
        "tvm_dense": bench[f"gbd {out / 'tvm_dense'}"]["p50_ms"],
        "tvm_sparse": bench[f"gbd {out / 'tvm_sparse'}"]["p50_ms"],
    }
    base = ms["pytorch_eager_dense"]
    print(f"[demo] LeNet-5, batch {BATCH}, 2 threads, median per call (PyTorch in its own process):")
    for k, v in ms.items():
        print(f"         {k:<22}{v:8.3f} ms   speed-up vs PyTorch eager {base / v:5.2f}x")
    results["timing_ms"] = ms
    results["speedup_vs_pytorch"] = {k: base / v for k, v in ms.items()}
    results["batch"] = BATCH
    (out / "speed.json").write_text(json.dumps(results, indent=1))
    return results
