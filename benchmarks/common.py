"""Shared helpers of the speed benchmarks (conv_speed.py, model_speed.py): environment set-up
(threads, TVM thread binding), the CPU target, random GBD patterns, and the timing harness of
``lightning_gbd.core.timing`` under ``no_grad``.  Run the benchmarks as modules from the
repository root: ``python -m benchmarks.conv_speed``.

Timing protocol (the machine is a shared 2-core VM, so absolute times drift with the load):
all variants of one case are timed *round-robin* in one process -- round r runs variant A, then
B, then C, ... -- and each variant's reported time is the **median** over rounds of the mean of
``inner`` back-to-back calls.  ``inner`` is calibrated so that one sample takes ~``sample_ms``;
the number of rounds shrinks for slow cases so that one case stays within ``budget_s``.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")

#: the per-conv benchmark layers (CPU conv_speed and CUDA cuda_speed): name, C, T, k, pad, H.
#: ResNet-50's 3x3 convs have ResNet-18's shapes.
CONV_SHAPES = [
    ("alexnet.conv2 64->192 5x5 27", 64, 192, 5, 2, 27),
    ("alexnet.conv3 192->384 3x3 13", 192, 384, 3, 1, 13),
    ("vgg16.conv3_x 256->256 3x3 56", 256, 256, 3, 1, 56),
    ("vgg16.conv4_x 512->512 3x3 28", 512, 512, 3, 1, 28),
    ("resnet18 3x3 64@56", 64, 64, 3, 1, 56),
    ("resnet18 3x3 128@28", 128, 128, 3, 1, 28),
    ("resnet18 3x3 256@14", 256, 256, 3, 1, 14),
    ("resnet18 3x3 512@7", 512, 512, 3, 1, 7),
]


def setup_env(threads=2):
    """Must run before tvm / torch are imported: TVM_NUM_THREADS and TVM_BIND_THREADS=0 (on these
    2-core VMs TVM's default binding pins both pool threads to one core)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ["TVM_BIND_THREADS"] = "0"
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)


def target(threads=2):
    """The same LLVM target export_model("llvm") builds for (host CPU, num-cores)."""
    import tvm

    from tvm_passes.target import make_target

    t = make_target("llvm")
    spec = {
        k: (int(v) if k == "num-cores" else str(v))
        for k, v in ((k, t.attrs.get(k)) for k in ("mtriple", "mcpu", "num-cores"))
        if v is not None
    }
    spec["num-cores"] = threads
    return tvm.target.Target({"kind": "llvm", **spec})


def loadavg():
    return round(os.getloadavg()[0], 2)


def uptime_line():
    try:
        import subprocess

        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return f"loadavg {os.getloadavg()}"


# ---------------------------------------------------------------------------- GBD patterns
def gbd_mask(C, kh, kw, density, rng, groups=1):
    """Boolean (groups, C//groups, kh, kw) keep-mask with round(density * n) random groups kept.
    A GBD group is W[:, s, i, j] (all filters of one conv group at one input map and offset)."""
    cg = C // groups
    n = groups * cg * kh * kw
    keep = np.zeros(n, dtype=bool)
    keep[rng.permutation(n)[: max(1, int(round(density * n)))]] = True
    return keep.reshape(groups, cg, kh, kw)


def gbd_weight(T, C, kh, kw, density, groups=1, seed=0):
    """Random float32 weight (T, C//groups, kh, kw) with a fraction 1 - density of groups zeroed."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((T, C // groups, kh, kw)).astype(np.float32) * 0.1
    if density < 1.0:
        keep = gbd_mask(C, kh, kw, density, rng, groups)
        w = (w.reshape(groups, T // groups, C // groups, kh, kw) * keep[:, None]).reshape(w.shape)
    return np.ascontiguousarray(w)


def apply_gbd_(model, density, seed=0):
    """Zero random GBD groups of every Conv2d of ``model`` in place at ``density`` (per conv, so
    the FLOP-weighted density of the model is ``density`` too).  Returns the number of convs."""
    import torch

    rng = np.random.default_rng(seed)
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and density < 1.0:
                T, cg, kh, kw = m.weight.shape
                g = m.groups
                keep = torch.from_numpy(gbd_mask(cg * g, kh, kw, density, rng, g))
                w = m.weight.view(g, T // g, cg, kh, kw)
                w.mul_(keep[:, None].to(w.dtype))
                n += 1
    return n


def time_interleaved(fns, **kwargs):
    """``lightning_gbd.core.timing.time_interleaved`` under ``torch.no_grad()``."""
    import torch

    from lightning_gbd.core.timing import time_interleaved as _timed

    with torch.no_grad():
        return _timed(fns, **kwargs)


def torch_isolated(spec, processes=2):
    """PyTorch eager timings from ``benchmarks/torch_isolated.py`` in ``processes`` fresh processes
    that never load TVM (in a process that ran TVM kernels PyTorch's 2-thread convs ran slower:
    ``benchmarks/interference.py``); per variant the process with the lower median wins, which
    can only favour PyTorch."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("TVM_")}
    env["OMP_NUM_THREADS"] = str(spec.get("threads", 2))
    best = {}
    for _ in range(processes):
        r = subprocess.run(
            [sys.executable, "-m", "benchmarks.torch_isolated", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        if r.returncode != 0:
            raise RuntimeError(f"torch_isolated.py failed: {r.stderr.strip().splitlines()[-1:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        for k, v in res.items():
            if k == "layers":
                best.setdefault(k, v)
            elif k not in best or v["ms"] < best[k]["ms"]:
                best[k] = v
    return best


def progress(total, desc):
    """A tqdm bar on stderr over a benchmark's cases (only on a terminal; the tables go to stdout)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="case", file=sys.stderr, disable=None, leave=False)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)
