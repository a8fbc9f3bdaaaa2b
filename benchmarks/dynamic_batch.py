"""A dynamic-batch artifact against fixed-batch ones, side by side in one process: ResNet-18
(random init) with random GBD patterns at density 0.3 on its 3x3 convs (``--density``; 1.0: the
dense model, whose 3x3 convs run as Winograd), traced at batch 1.

    .venv/bin/python -m benchmarks.dynamic_batch
    .venv/bin/python -m benchmarks.dynamic_batch --density 1.0
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from benchmarks import common

CACHE = os.path.join(common.RESULTS, ".cache")


def export(name, example, density, **kwargs):
    import torch
    import torchvision

    import tvm_passes

    out = os.path.join(CACHE, f"dynamic_batch_d{density}_{name}")
    if not os.path.isfile(os.path.join(out, "manifest.json")):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        if density < 1.0:
            common.apply_gbd_(model, density, seed=0)
        tvm_passes.export_model(model, example, "llvm", out, do_verify=False, sparse=density < 1.0, **kwargs)
    return out


def main() -> None:
    import torch

    import tvm_passes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--density", type=float, default=0.3, help="GBD density of the 3x3 convs (1.0: dense)")
    d = ap.parse_args().density
    common.setup_env(2)
    x1 = torch.randn(1, 3, 224, 224)
    arts = {
        "dynamic": export("dynamic", x1, d, dynamic_batch=True),
        "fixed_b1": export("fixed_b1", x1, d),
        "fixed_b32": export("fixed_b32", torch.randn(32, 3, 224, 224), d),
    }
    print(f"# {common.uptime_line()}")
    for batch, fixed in ((1, "fixed_b1"), (32, "fixed_b32")):
        fns = {}
        for name in ("dynamic", fixed):
            m = tvm_passes.load(arts[name], threads=2)
            xt = m._to_tvm(np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype("float32"))
            fns[name] = lambda m=m, xt=xt: m.run_tvm(xt)
        res = common.time_interleaved(fns, rounds=7, sample_ms=300, budget_s=90)
        d, f = res["dynamic"]["ms"], res[fixed]["ms"]
        print(f"batch {batch:>2}: dynamic {d:8.2f} ms, {fixed} {f:8.2f} ms, dynamic / fixed {d / f:.2f}")


if __name__ == "__main__":
    main()
