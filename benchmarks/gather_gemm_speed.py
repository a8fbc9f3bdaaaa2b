"""CPU speed of the GBD gather-GEMM conv (paper 000 section 3, Fig. 2) against PyTorch eager.

Usage:  .venv/bin/python -m benchmarks.gather_gemm_speed [--quick] [--threads 2]

Prints one table: PyTorch eager dense Conv2d (oneDNN) vs the TVM gather-GEMM kernel, both run
with the same number of threads, timed alternately in one process (ratios are what matter on a
shared machine).  "speedup" = torch_ms / tvm_ms (> 1: TVM faster).  Each time is the best of `reps` alternating
rounds (the machine is shared; the minimum is the least disturbed run).
"""

from __future__ import annotations

import argparse
import os
import time

if __name__ == "__main__":
    _ap = argparse.ArgumentParser()
    _ap.add_argument("--threads", type=int, default=2)
    _ap.add_argument("--quick", action="store_true", help="fewer repeats and cases")
    _ap.add_argument("--only", default="", help="comma list of case groups: alexnet,resnet,linear")
    _ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="with --threads 1: time by the thread's CPU time (robust on a loaded "
        "machine: time spent preempted by other processes is not counted)",
    )
    _ap.add_argument(
        "--reps",
        type=int,
        default=0,
        help="alternating rounds per case "
        "(default 5, 2 with --quick); more rounds = a better best-of on a busy machine",
    )
    _ap.add_argument(
        "--bind",
        action="store_true",
        help="keep TVM's default thread-to-core binding (on these 2-core VMs it pins "
        "both pool threads to one core: no parallel speed-up)",
    )
    ARGS = _ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(ARGS.threads)
    os.environ["TVM_BIND_THREADS"] = "1" if ARGS.bind else "0"

import numpy as np
import torch
import tvm

from lightning_gbd.core.groups import conv_flops, group_mask
from tvm_passes.kernels import compile_kernel, conv2d_gather_gemm, dense_gemm


def _target(threads):
    return tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "znver4", "num-cores": threads})


def gbd_weight(T, C, kh, kw, density, groups=1, seed=0):
    """Random weight with a fraction (1 - density) of GBD groups (s, i, j) zeroed."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((T, C // groups, kh, kw)).astype(np.float32) * 0.1
    if density < 1.0:
        n = (C // groups) * kh * kw * groups
        keep = np.zeros(n, dtype=bool)
        keep[rng.permutation(n)[: max(1, int(round(density * n)))]] = True
        keep = keep.reshape(groups, C // groups, kh, kw)
        w = (w.reshape(groups, T // groups, C // groups, kh, kw) * keep[:, None]).reshape(w.shape)
    return w


def _clock():
    return time.thread_time() if ARGS.cpu_time else time.perf_counter()


def _time_fn(fn, inner):
    """Best-of-3 mean time (ms) of `inner` calls."""
    best = float("inf")
    with torch.no_grad():
        fn()
        for _ in range(3):
            t0 = _clock()
            for _ in range(inner):
                fn()
            best = min(best, (_clock() - t0) / inner)
    return best * 1e3


def _inner(fn, target_ms=60.0):
    t0 = time.perf_counter()
    with torch.no_grad():
        fn()
    dt = max(time.perf_counter() - t0, 1e-5) * 1e3
    return int(min(max(target_ms / dt, 1), 200))


def _compare(f_torch, f_tvm, reps):
    """Alternate PyTorch and TVM rounds so both see the same machine load; best round each."""
    n_t, n_v = _inner(f_torch), _inner(f_tvm)
    t_torch, t_tvm = [], []
    for _ in range(reps):
        t_torch.append(_time_fn(f_torch, n_t))
        time.sleep(0.05)  # let the other runtime's spinning worker threads go idle
        t_tvm.append(_time_fn(f_tvm, n_v))
        time.sleep(0.05)
    return float(np.min(t_torch)), float(np.min(t_tvm))


def bench_conv(name, N, C, H, W, T, k, pad, density, target, reps, check=True, stride=1):
    w = gbd_weight(T, C, k, k, density)
    b = np.random.default_rng(1).standard_normal(T).astype(np.float32)
    x = np.random.default_rng(2).standard_normal((N, C, H, W)).astype(np.float32)
    func, consts = conv2d_gather_gemm(
        x.shape, w, b, stride=(stride, stride), padding=(pad, pad, pad, pad), target=target
    )
    lib = compile_kernel(func, target).jit()
    dev = tvm.cpu()
    OH = (H + 2 * pad - k) // stride + 1
    OW = (W + 2 * pad - k) // stride + 1
    out = tvm.runtime.tensor(np.zeros((N, T, OH, OW), np.float32), dev)
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(c, dev) for c in consts] + [out]
    # PyTorch runs the *dense* conv (same shape; zeros are not exploited by oneDNN)
    conv = torch.nn.Conv2d(C, T, k, padding=pad, stride=stride)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(gbd_weight(T, C, k, k, 1.0)))
    xt = torch.from_numpy(x)
    err = float("nan")
    if check:
        lib["main"](*args)
        ref = torch.nn.functional.conv2d(xt, torch.from_numpy(w), torch.from_numpy(b), padding=pad, stride=stride)
        err = float(np.abs(out.numpy() - ref.numpy()).max() / np.abs(ref.numpy()).max())
    tt, tv = _compare(lambda: conv(xt), lambda: lib["main"](*args), reps)
    fl = conv_flops(w.shape, (OH, OW), mask=group_mask(w), batch=N)
    return dict(case=name, density=density, torch_ms=tt, tvm_ms=tv, speedup=tt / tv, tvm_gflops=fl / tv / 1e6, err=err)


def bench_linear(name, M, K, O, target, reps):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((O, K)).astype(np.float32) * 0.05
    b = rng.standard_normal(O).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    func, consts = dense_gemm(x.shape, w, b, target=target)
    lib = compile_kernel(func, target).jit()
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((M, O), np.float32), dev)
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(c, dev) for c in consts] + [out]
    lib["main"](*args)
    err = float(np.abs(out.numpy() - (x @ w.T + b)).max() / np.abs(x @ w.T + b).max())
    lin = torch.nn.Linear(K, O)
    xt = torch.from_numpy(x)
    tt, tv = _compare(lambda: lin(xt), lambda: lib["main"](*args), reps)
    return dict(
        case=name, density=1.0, torch_ms=tt, tvm_ms=tv, speedup=tt / tv, tvm_gflops=2.0 * M * K * O / tv / 1e6, err=err
    )


def main():
    torch.set_num_threads(ARGS.threads)
    target = _target(ARGS.threads)
    reps = ARGS.reps or (2 if ARGS.quick else 5)
    groups = set(ARGS.only.split(",")) if ARGS.only else {"alexnet", "resnet", "linear"}
    rows = []
    hdr = f"{'case':<34}{'density':>8}{'torch ms':>10}{'tvm ms':>10}{'speedup':>9}{'GFLOP/s':>9}{'relerr':>10}"
    if ARGS.cpu_time and ARGS.threads != 1:
        raise SystemExit("--cpu-time needs --threads 1")
    print(
        f"threads={ARGS.threads}  TVM_BIND_THREADS={os.environ['TVM_BIND_THREADS']}  "
        f"clock={'thread CPU time' if ARGS.cpu_time else 'wall'}  "
        f"torch={torch.__version__}  tvm={tvm.__version__}  loadavg={os.getloadavg()[0]:.2f}"
    )
    print(hdr)

    def show(r):
        rows.append(r)
        print(
            f"{r['case']:<34}{r['density']:>8.2f}{r['torch_ms']:>10.3f}{r['tvm_ms']:>10.3f}"
            f"{r['speedup']:>9.2f}{r['tvm_gflops']:>9.1f}{r['err']:>10.1e}",
            flush=True,
        )

    if "alexnet" in groups:
        dens = [1.0, 0.2] if ARGS.quick else [1.0, 0.5, 0.3, 0.2, 0.1, 0.05]
        for d in dens:
            show(bench_conv("alexnet conv2 64->192 5x5 27 b8", 8, 64, 27, 27, 192, 5, 2, d, target, reps))
    if "resnet" in groups:
        for c, hw in [(64, 56), (128, 28), (256, 14), (512, 7)]:
            show(bench_conv(f"resnet 3x3 {c}->{c} {hw}x{hw} b1", 1, c, hw, hw, c, 3, 1, 1.0, target, reps))
        show(bench_conv("resnet 1x1 256->512 14x14 b1", 1, 256, 14, 14, 512, 1, 0, 1.0, target, reps))
        if not ARGS.quick:
            show(bench_conv("resnet conv1 7x7/2 3->64 224 b1", 1, 3, 224, 224, 64, 7, 3, 1.0, target, reps, stride=2))
            show(bench_conv("resnet 3x3/2 64->128 56 b1", 1, 64, 56, 56, 128, 3, 1, 1.0, target, reps, stride=2))
            show(bench_conv("resnet 1x1/2 128->256 28 b1", 1, 128, 28, 28, 256, 1, 0, 1.0, target, reps, stride=2))
    if "linear" in groups:
        show(bench_linear("linear 512->1000 b1", 1, 512, 1000, target, reps))
        show(bench_linear("linear 9216->4096 b8", 8, 9216, 4096, target, reps))
        show(bench_linear("linear 1024->1024 b128", 128, 1024, 1024, target, reps))
    print(f"loadavg at end={os.getloadavg()[0]:.2f}")
    return rows


if __name__ == "__main__":
    main()
