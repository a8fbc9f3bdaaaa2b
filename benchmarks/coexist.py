"""PyTorch and a compiled artifact in one process, sharing the cores: each timed alone (a fresh
process) and alternating with the other (one process: a PyTorch op, then the artifact, ...),
under a few thread settings.  The artifact: ResNet-18 with GBD density 0.3 at batch 1 (built by
``benchmarks.load_threads``); the PyTorch op: AlexNet conv2 (64->192, 5x5, 27x27) at batch 8.

    .venv/bin/python -m benchmarks.coexist
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks import common
from benchmarks.load_threads import ART, build

WORKER = """
import json, sys, time, statistics
import numpy as np, torch
mode = sys.argv[2]
torch.set_num_threads(2)
conv = torch.nn.Conv2d(64, 192, 5, padding=2).eval()
xc = torch.randn(8, 64, 27, 27)
def torch_op():
    with torch.no_grad():
        conv(xc)
if mode != "torch":
    import tvm_passes
    m = tvm_passes.load(sys.argv[1], threads=2)
    xt = m._to_tvm(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32"))
    art = lambda: m.run_tvm(xt)
names = ["torch", "artifact"] if mode == "mixed" else [mode]
order = [torch_op if n == "torch" else art for n in names]
samples = {n: [] for n in names}
for _ in range(3):
    for f in order:
        f()
for _ in range(40):
    for n, f in zip(names, order):
        t0 = time.perf_counter(); f(); samples[n].append((time.perf_counter() - t0) * 1e3)
print(json.dumps({n: statistics.median(v) for n, v in samples.items()}))
"""

SETTINGS = {
    "defaults": {},
    "TVM_THREAD_POOL_SPIN_COUNT=0": {"TVM_THREAD_POOL_SPIN_COUNT": "0"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "both": {"TVM_THREAD_POOL_SPIN_COUNT": "0", "OMP_WAIT_POLICY": "PASSIVE"},
}


def run(mode, extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TVM_", "OMP_"))}
    env.update(extra)
    r = subprocess.run([sys.executable, "-c", WORKER, ART, mode], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    if not os.path.isfile(os.path.join(ART, "manifest.json")):
        build()
    print(f"# {common.uptime_line()}")
    print(
        f"{'setting':<30}{'torch alone':>12}{'artifact alone':>15}{'torch mixed':>12}{'artifact mixed':>15}"
        f"{'torch x':>9}{'artifact x':>11}"
    )
    for name, extra in SETTINGS.items():
        t = run("torch", extra)["torch"]
        a = run("artifact", extra)["artifact"]
        mix = run("mixed", extra)
        print(
            f"{name:<30}{t:>12.2f}{a:>15.2f}{mix['torch']:>12.2f}{mix['artifact']:>15.2f}"
            f"{mix['torch'] / t:>9.2f}{mix['artifact'] / a:>11.2f}"
        )


if __name__ == "__main__":
    main()
