"""Why PyTorch is timed in separate processes: PyTorch's 2-thread conv in a process that has run
a TVM kernel vs in a fresh one.

AlexNet conv2 (64->192, 5x5, 27x27), batch 32: PyTorch alone in this process, then a TVM
gather-GEMM kernel, then PyTorch again after the TVM pool has idled for 0 / 0.1 / 1 s; and
PyTorch in fresh processes (``common.torch_isolated``).  Medians of 5 samples of 3 calls.

    .venv/bin/python -m benchmarks.interference
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks import common

C, T, K, PAD, H, N = 64, 192, 5, 2, 27, 32


def med(f, n=5):
    return float(np.median([f() for _ in range(n)]))


def main() -> None:
    common.setup_env(2)
    x = torch.randn(N, C, H, H)
    conv = torch.nn.Conv2d(C, T, K, padding=PAD).eval()

    def t_torch(k=3):
        with torch.no_grad():
            t = time.perf_counter()
            for _ in range(k):
                conv(x)
            return (time.perf_counter() - t) / k * 1e3

    t_torch()
    before = med(t_torch)
    import tvm

    from tvm_passes.kernels import compile_kernel, conv2d_gather_gemm

    tg = common.target(2)
    w = common.gbd_weight(T, C, K, K, 0.3)
    func, consts = conv2d_gather_gemm((N, C, H, H), w, padding=(PAD,) * 4, target=tg)
    lib = compile_kernel(func, tg)
    args = (
        [tvm.runtime.tensor(x.numpy())]
        + [tvm.runtime.tensor(c) for c in consts]
        + [tvm.runtime.tensor(np.zeros((N, T, H, H), np.float32))]
    )
    lib(*args)
    print(f"# {common.uptime_line()}")
    print(f"PyTorch conv, this process, before any TVM call: {before:8.2f} ms")
    for idle in (0.0, 0.1, 1.0):

        def after(idle=idle):
            lib(*args)
            time.sleep(idle)
            return t_torch()

        print(f"PyTorch conv, after a TVM kernel + {idle:.1f} s idle: {med(after):8.2f} ms")
    iso = common.torch_isolated(dict(kind="conv", C=C, T=T, k=K, pad=PAD, H=H, batch=N, threads=2), processes=3)
    print(
        f"PyTorch conv, fresh processes (best of 3 medians): {iso['torch']['ms']:8.2f} ms "
        f"(1 thread: {iso['torch1']['ms']:.2f} ms)"
    )


if __name__ == "__main__":
    main()
