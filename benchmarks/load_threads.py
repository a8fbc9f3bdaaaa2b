"""The artifact's own thread pool against TVM's default one, each loaded the way a user does: a
fresh process, no ``TVM_*`` variable set.  ResNet-18 (torchvision, random init) with random GBD
patterns at density 0.3 on its 3x3 convs, batch 1, 2 cores.

    .venv/bin/python -m benchmarks.load_threads
"""

from __future__ import annotations

import os
import subprocess
import sys

from benchmarks import common

ART = os.path.join(common.RESULTS, ".cache", "load_threads_resnet18_d0.3_b1")

WORKER = """
import sys, numpy as np, tvm
from lightning_gbd.core.timing import time_interleaved
x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32")
if sys.argv[2] == "tvm_passes.load":
    import tvm_passes
    m = tvm_passes.load(sys.argv[1]); f = lambda: m(x)
else:  # the runtime as it starts by itself: TVM's default pool
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module(sys.argv[1] + "/model.so"), tvm.cpu(0))
    xt = tvm.runtime.tensor(x); f = lambda: vm["main"](xt)
print(time_interleaved({"a": f}, rounds=7, sample_ms=300)["a"]["ms"])
"""


def build():
    import torch
    import torchvision

    import tvm_passes

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    common.apply_gbd_(model, 0.3, seed=0)
    tvm_passes.export_model(model, torch.randn(1, 3, 224, 224), "llvm", ART)


def main() -> None:
    if not os.path.isfile(os.path.join(ART, "manifest.json")):
        build()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVM_")}
    print(f"# {common.uptime_line()}")
    for rep in range(2):
        for how in ("default runtime pool", "tvm_passes.load"):
            r = subprocess.run([sys.executable, "-c", WORKER, ART, how], capture_output=True, text=True, env=env)
            print(f"{how:<22} {float(r.stdout.strip().splitlines()[-1]):8.2f} ms  (fresh process {rep + 1})")


if __name__ == "__main__":
    main()
