"""Per-layer CPU speed of the GBD gather-GEMM conv (paper 000 section 3, Fig. 2).

Usage:
    .venv/bin/python -m benchmarks.conv_speed            # --quick (default): 4 shapes, 3 densities
    .venv/bin/python -m benchmarks.conv_speed --full     # 8 shapes x 6 densities x batch 1, 32

For each layer shape, density tau (random GBD groups W[:, s, i, j] zeroed) and batch, times
  (a) PyTorch eager dense nn.Conv2d (oneDNN),
  (b) the TVM dense conv: the kernel library's im2col GEMM on the full weight, i.e. exactly what
      export_model(sparse=False) emits (conv2d_gather_gemm(dense=True)),
  (c) the TVM gather-GEMM conv on the sparse weight (conv2d_gather_gemm),
round-robin in one process (median of rounds; see benchmarks/common.py), and reports
speed-up c/a, c/b and efficiency = speed-up / (1/tau).  (a) and (b) do not depend on tau and are
timed once per shape x batch, interleaved with all densities' (c).

Also times low-rank PCA decompositions (lightning_gbd.core.lowrank.pca_decompose, ranks T/4, T/2):
the kxk basis conv + 1x1 conv, both compiled through the kernel library, vs PyTorch's dense conv
and vs the theoretical FLOP reduction (decomposed_flops).

Writes benchmarks/results/conv_speed.json and conv_speed.png (Fig. 2 style: speed-up vs density
with the 1/tau diagonal).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import common

SHAPES = common.CONV_SHAPES
QUICK_SHAPES = [0, 1, 5, 6]
DENSITIES = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05]
QUICK_DENSITIES = [1.0, 0.3, 0.1]


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="(default) 4 shapes, densities 1/.3/.1, 3 rounds")
    g.add_argument("--full", action="store_true", help="all 8 shapes, 6 densities, batch 1 and 32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per case (default 7 full, 3 quick)")
    ap.add_argument("--budget", type=float, default=0, help="max seconds of timing per case")
    ap.add_argument("--only", default="", help="substring filter on shape names")
    ap.add_argument(
        "--densities",
        default="",
        help="comma-separated densities instead of the mode's (e.g. 1.0,0.9,0.8: the crossover)",
    )
    ap.add_argument("--skip-b32", default="", help="substring: shapes skipped at batch 32")
    ap.add_argument("--no-lowrank", action="store_true")
    ap.add_argument("--lowrank-only", action="store_true", help="only the low-rank decomposition part")
    ap.add_argument(
        "--pair-ratios",
        default="",
        help="low-rank pairs at these FLOP ratios (e.g. 0.9,0.75,0.6) instead of ranks T/4, T/2",
    )
    ap.add_argument(
        "--cpu-time",
        action="store_true",
        help="with --threads 1: time by the calling thread's CPU time (robust on an "
        "oversubscribed machine; TVM and PyTorch both run inline at 1 thread)",
    )
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "conv_speed.json"))
    ap.add_argument(
        "--replot", action="store_true", help="no timing: re-print the targets and redraw the .png from the --out json"
    )
    return ap.parse_args()


ARGS = parse() if __name__ == "__main__" else None


def _clock():
    return time.thread_time if (ARGS and ARGS.cpu_time) else time.perf_counter


def build_kernel(tvm, func, consts, tgt, x_tvm, out_shape):
    from tvm_passes.kernels import compile_kernel

    lib = compile_kernel(func, tgt).jit()
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
    args = [x_tvm] + [tvm.runtime.tensor(c, dev) for c in consts] + [out]
    f = lib["main"]
    return (lambda: f(*args)), out


def conv_kernels(C, T, k, pad, H, w, b, N, tgt, dense):
    from tvm_passes.kernels import conv2d_gather_gemm

    attrs = dict(stride=(1, 1), padding=(pad,) * 4, dilation=(1, 1), groups=1, relu=False)
    return conv2d_gather_gemm((N, C, H, H), w, b, target=tgt, dense=dense, **attrs)


def run_shape(spec, N, densities, tgt, rounds, budget):
    import torch
    import tvm

    name, C, T, k, pad, H = spec
    OH = H + 2 * pad - k + 1
    dev = tvm.cpu()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    b = rng.standard_normal(T).astype(np.float32)
    x_tvm = tvm.runtime.tensor(x, dev)
    xt = torch.from_numpy(x)
    wd = common.gbd_weight(T, C, k, k, 1.0)
    fns = {}  # PyTorch is timed in fresh processes without TVM (common.torch_isolated)
    func, consts = conv_kernels(C, T, k, pad, H, wd, b, N, tgt, dense=True)
    fns["tvm_dense"], _ = build_kernel(tvm, func, consts, tgt, x_tvm, (N, T, OH, OH))
    errs, taus = {}, {}
    for d in densities:
        w = common.gbd_weight(T, C, k, k, d, seed=1)
        taus[d] = float(np.any(w != 0, axis=0).mean())
        func, consts = conv_kernels(C, T, k, pad, H, w, b, N, tgt, dense=False)
        fn, out = build_kernel(tvm, func, consts, tgt, x_tvm, (N, T, OH, OH))
        fn()
        with torch.no_grad():
            ref = torch.nn.functional.conv2d(xt, torch.from_numpy(w), torch.from_numpy(b), padding=pad).numpy()
        errs[d] = float(np.abs(out.numpy() - ref).max() / max(np.abs(ref).max(), 1e-30))
        fns[f"gg{d}"] = fn
    res = common.time_interleaved(fns, rounds=rounds, budget_s=budget, sample_ms=30.0, clock=_clock())
    res.update(
        common.torch_isolated(
            dict(
                kind="conv",
                C=C,
                T=T,
                k=k,
                pad=pad,
                H=H,
                batch=N,
                threads=ARGS.threads,
                rounds=rounds,
                budget_s=budget,
                sample_ms=30.0,
                cpu_time=ARGS.cpu_time,
            )
        )
    )
    fd = 2.0 * N * OH * OH * T * C * k * k
    rows = []
    ta, tb = res["torch"]["ms"], res["tvm_dense"]["ms"]
    ta1 = res["torch1"]["ms"]
    tbest = min(ta, ta1)
    for d in densities:
        tc = res[f"gg{d}"]["ms"]
        tau = taus[d]
        rows.append(
            dict(
                shape=name,
                C=C,
                T=T,
                k=k,
                pad=pad,
                H=H,
                batch=N,
                density=d,
                tau=tau,
                torch_ms=ta,
                torch_1thread_ms=ta1,
                torch_best_ms=tbest,
                tvm_dense_ms=tb,
                gather_ms=tc,
                speedup_vs_torch=ta / tc,
                speedup_vs_torch_best=tbest / tc,
                eff_vs_torch_best=tbest / tc * tau,
                speedup_vs_tvm_dense=tb / tc,
                ideal=1.0 / tau,
                eff_vs_torch=ta / tc * tau,
                eff_vs_tvm_dense=tb / tc * tau,
                gflops_dense_torch=fd / ta / 1e6,
                gflops_dense_tvm=fd / tb / 1e6,
                gflops_useful_gather=fd * tau / tc / 1e6,
                rel_err=errs[d],
                min_ms={
                    "torch": res["torch"]["min_ms"],
                    "torch1": res["torch1"]["min_ms"],
                    "tvm_dense": res["tvm_dense"]["min_ms"],
                    "gather": res[f"gg{d}"]["min_ms"],
                },
                min_speedup_vs_torch=res["torch"]["min_ms"] / res[f"gg{d}"]["min_ms"],
                min_speedup_vs_torch_best=min(res["torch"]["min_ms"], res["torch1"]["min_ms"])
                / res[f"gg{d}"]["min_ms"],
                min_speedup_vs_tvm_dense=res["tvm_dense"]["min_ms"] / res[f"gg{d}"]["min_ms"],
                samples={
                    "torch": res["torch"]["samples"],
                    "torch1": res["torch1"]["samples"],
                    "tvm_dense": res["tvm_dense"]["samples"],
                    "gather": res[f"gg{d}"]["samples"],
                },
            )
        )
    return rows


def _ranks(T, fan_in):
    """(label, rank) of the pairs timed: T/4 and T/2, or with --pair-ratios the ranks whose pair does
    that fraction of the conv's FLOPs (pair_flop_ratio, docs/formulas.md eq. 3.5): the crossover
    behind cost_model.MAX_PAIR_FLOP_RATIO."""
    if not ARGS.pair_ratios:
        return (("T/4", T // 4), ("T/2", T // 2))
    ratios = [float(r) for r in ARGS.pair_ratios.split(",")]
    return tuple((f"x{r:g}", max(1, round(r * T * fan_in / (fan_in + T)))) for r in ratios)


def run_lowrank(spec, N, tgt, rounds, budget):
    import torch
    import tvm

    from lightning_gbd.core.lowrank import decomposed_flops, pca_decompose
    from tvm_passes.kernels import conv2d_gather_gemm

    name, C, T, k, pad, H = spec
    OH = H + 2 * pad - k + 1
    dev = tvm.cpu()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    x_tvm = tvm.runtime.tensor(x, dev)
    xt = torch.from_numpy(x)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(C, T, k, padding=pad).eval()
    w = conv.weight.detach().numpy().copy()
    b = conv.bias.detach().numpy().copy()
    a1 = dict(stride=(1, 1), padding=(pad,) * 4, dilation=(1, 1), groups=1, relu=False)
    fns = {}  # PyTorch is timed in fresh processes without TVM (common.torch_isolated)
    func, consts = conv2d_gather_gemm(x.shape, w, b, target=tgt, dense=True, **a1)
    fns["tvm_dense"], _ = build_kernel(tvm, func, consts, tgt, x_tvm, (N, T, OH, OH))
    flops0 = decomposed_flops(conv, x.shape)
    info = {}
    for frac, rank in _ranks(T, C * k * k):
        seq, relerr = pca_decompose(conv, rank=rank)
        seq.eval()
        c1, c2 = seq[0], seq[1]
        w1 = c1.weight.detach().numpy().copy()
        w2 = c2.weight.detach().numpy().copy()
        b2 = c2.bias.detach().numpy().copy()
        f1, k1 = conv2d_gather_gemm(x.shape, w1, None, target=tgt, dense=True, **a1)
        mid = tvm.runtime.tensor(np.zeros((N, rank, OH, OH), np.float32), dev)
        # chain: the first kernel writes `mid`, the second reads it
        from tvm_passes.kernels import compile_kernel

        lib1 = compile_kernel(f1, tgt).jit()
        args1 = [x_tvm] + [tvm.runtime.tensor(c, dev) for c in k1] + [mid]
        a2 = dict(a1, padding=(0, 0, 0, 0))
        f2, k2 = conv2d_gather_gemm((N, rank, OH, OH), w2, b2, target=tgt, dense=True, **a2)
        lib2 = compile_kernel(f2, tgt).jit()
        out = tvm.runtime.tensor(np.zeros((N, T, OH, OH), np.float32), dev)
        args2 = [mid] + [tvm.runtime.tensor(c, dev) for c in k2] + [out]
        m1, m2 = lib1["main"], lib2["main"]

        def dec(m1=m1, m2=m2, args1=args1, args2=args2):
            m1(*args1)
            m2(*args2)

        dec()
        with torch.no_grad():
            ref = seq(xt).numpy()
        err = float(np.abs(out.numpy() - ref).max() / max(np.abs(ref).max(), 1e-30))
        fns[f"tvm_{frac}"] = dec
        info[frac] = dict(rank=rank, flops=decomposed_flops(seq, x.shape), pca_rel_err=relerr, kernel_rel_err=err)
    res = common.time_interleaved(fns, rounds=rounds, budget_s=budget, clock=_clock())
    res.update(
        common.torch_isolated(
            dict(
                kind="lowrank",
                ranks=[list(r) for r in _ranks(T, C * k * k)],
                C=C,
                T=T,
                k=k,
                pad=pad,
                H=H,
                batch=N,
                threads=ARGS.threads,
                rounds=rounds,
                budget_s=budget,
                cpu_time=ARGS.cpu_time,
            )
        )
    )
    rows = []
    for frac, inf in info.items():
        ta, tb = res["torch"]["ms"], res["tvm_dense"]["ms"]
        ta1 = res["torch1"]["ms"]
        tv, tpd = res[f"tvm_{frac}"]["ms"], res[f"torch_{frac}"]["ms"]
        rows.append(
            dict(
                shape=name,
                batch=N,
                rank=inf["rank"],
                rank_rule=frac,
                flops_dense=flops0 * N,
                flops_decomposed=inf["flops"] * N,
                theoretical_speedup=flops0 / inf["flops"],
                torch_dense_ms=ta,
                torch_dense_1thread_ms=ta1,
                speedup_vs_torch_best=min(ta, ta1) / tv,
                tvm_dense_ms=tb,
                tvm_decomposed_ms=tv,
                torch_decomposed_ms=tpd,
                speedup_vs_torch=ta / tv,
                speedup_vs_tvm_dense=tb / tv,
                torch_decomposed_speedup=ta / tpd,
                eff_vs_torch=ta / tv / (flops0 / inf["flops"]),
                pca_rel_err=inf["pca_rel_err"],
                kernel_rel_err=inf["kernel_rel_err"],
            )
        )
    return rows


def plot(rows, path, title="CPU 2 threads, wall clock"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(2, len(batches), figsize=(5.2 * len(batches), 9), squeeze=False)
    taus = np.linspace(0.04, 1.0, 100)
    for j, bsz in enumerate(batches):
        for i, (key, lbl) in enumerate(
            (("speedup_vs_torch", "vs PyTorch eager dense (a)"), ("speedup_vs_tvm_dense", "vs TVM dense im2col (b)"))
        ):
            ax = axes[i, j]
            ax.plot(taus, 1.0 / taus, "k--", lw=1, label="1/tau (ideal)")
            ax.axhline(1.0, color="gray", lw=0.6)
            for ci, shape in enumerate(s[0] for s in SHAPES):
                rs = sorted((r for r in rows if r["shape"] == shape and r["batch"] == bsz), key=lambda r: r["tau"])
                if rs:
                    ax.plot([r["tau"] for r in rs], [r[key] for r in rs], "o-", ms=3, label=shape, color=f"C{ci}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("density tau (fraction of GBD groups kept)")
            ax.set_ylabel("speed-up of gather-GEMM (c)")
            ax.set_title(f"batch {bsz}: {lbl}", fontsize=10)
            ax.grid(True, which="both", lw=0.3)
            if i == 0:
                ax.legend(fontsize=6)
    fig.suptitle(f"GBD gather-GEMM conv, {title} (cf. paper 000 Fig. 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def targets(rows):
    """The issue's per-layer targets; returns printable lines."""
    out = []
    checks = [
        ("(c)/(b) >= 0.8/tau, batch 32", 32, (0.5, 0.3, 0.2, 0.1), "eff_vs_tvm_dense", 0.8),
        ("(c)/(a) >= 0.6/tau, batch 32", 32, (0.3, 0.2, 0.1), "eff_vs_torch", 0.6),
        ("(c)/(a) >= 0.4/tau, batch 1", 1, (0.3, 0.2, 0.1), "eff_vs_torch", 0.4),
        (
            "(c)/(a*) >= 0.6/tau, batch 32, a* = best of torch 2-thread/1-thread",
            32,
            (0.3, 0.2, 0.1),
            "eff_vs_torch_best",
            0.6,
        ),
        (
            "(c)/(a*) >= 0.4/tau, batch 1, a* = best of torch 2-thread/1-thread",
            1,
            (0.3, 0.2, 0.1),
            "eff_vs_torch_best",
            0.4,
        ),
    ]
    for lbl, bsz, dens, key, thr in checks:
        rs = [r for r in rows if r["batch"] == bsz and r["density"] in dens]
        if not rs:
            continue
        ok = [r for r in rs if r[key] >= thr]
        worst = min(rs, key=lambda r: r[key])
        out.append(
            f"{lbl}: {len(ok)}/{len(rs)} cases met; worst eff {worst[key]:.2f} "
            f"({worst['shape']}, tau {worst['density']}); median eff "
            f"{float(np.median([r[key] for r in rs])):.2f}"
        )
        for d in dens:
            rd = [r for r in rs if r["density"] == d]
            if rd:
                out.append(
                    f"    tau {d}: met {sum(r[key] >= thr for r in rd)}/{len(rd)}, eff min "
                    f"{min(r[key] for r in rd):.2f} median {float(np.median([r[key] for r in rd])):.2f}"
                )
    return out


def replot():
    import json

    with open(ARGS.out) as f:
        d = json.load(f)
    tl = targets(d["rows"])
    for line in tl:
        print(line)
    d["targets"] = tl
    common.write_json(ARGS.out, d)
    plot(
        d["rows"],
        os.path.splitext(ARGS.out)[0] + ".png",
        f"CPU {d.get('threads', 2)} thread(s), {d.get('clock', 'wall')}",
    )


def main():
    if ARGS.replot:
        return replot()
    common.setup_env(ARGS.threads)
    import torch
    import tvm

    full = ARGS.full
    if ARGS.cpu_time and ARGS.threads != 1:
        raise SystemExit("--cpu-time needs --threads 1")
    tgt = common.target(ARGS.threads)
    shapes = SHAPES if full else [SHAPES[i] for i in QUICK_SHAPES]
    if ARGS.only:
        shapes = [s for s in shapes if ARGS.only in s[0]]
    densities = (
        [float(d) for d in ARGS.densities.split(",")] if ARGS.densities else DENSITIES if full else QUICK_DENSITIES
    )
    batches = [int(b) for b in ARGS.batches.split(",")]
    rounds = ARGS.rounds or (9 if full else 3)
    budget = ARGS.budget or (20.0 if full else 8.0)
    t_start = time.time()
    head = dict(
        mode="full" if full else "quick",
        threads=ARGS.threads,
        clock="thread CPU time" if ARGS.cpu_time else "wall",
        target=str(tgt),
        torch=torch.__version__,
        tvm=tvm.__version__,
        uptime_start=common.uptime_line(),
        TVM_BIND_THREADS=os.environ.get("TVM_BIND_THREADS"),
        rounds=rounds,
        budget_s=budget,
        timing="median over round-robin rounds of mean-of-inner-calls; (a),(b) shared per shape x batch",
    )
    print(
        f"# conv_speed {head['mode']}: threads={ARGS.threads} torch={torch.__version__} tvm={tvm.__version__} "
        f"target={tgt}\n# {head['uptime_start']}",
        flush=True,
    )
    hdr = (
        f"{'shape':<32}{'b':>3}{'tau':>6}{'(a)torch':>10}{'torch1t':>9}{'(b)tvmD':>10}{'(c)gath':>10}"
        f"{'c/a':>7}{'c/a*':>7}{'c/b':>7}{'1/tau':>7}{'eff_a':>7}{'eff_a*':>7}{'eff_b':>7}{'GF/s(c)':>9}{'err':>9}"
    )
    print(hdr, flush=True)
    rows = []
    ncases = sum(1 for b in batches for sp in shapes if not (b > 1 and ARGS.skip_b32 and ARGS.skip_b32 in sp[0]))
    bar = common.progress(ncases * ((0 if ARGS.lowrank_only else 1) + (0 if ARGS.no_lowrank else 1)), "conv_speed")
    for bsz in [] if ARGS.lowrank_only else batches:
        for spec in shapes:
            if bsz > 1 and ARGS.skip_b32 and ARGS.skip_b32 in spec[0]:
                continue
            bar.set_postfix_str(f"{spec[0]} b{bsz}")
            bar.update()
            t0 = time.time()
            rs = run_shape(spec, bsz, densities, tgt, rounds, budget)
            for r in rs:
                rows.append(r)
                print(
                    f"{r['shape']:<32}{bsz:>3}{r['tau']:>6.2f}{r['torch_ms']:>10.3f}{r['torch_1thread_ms']:>9.3f}"
                    f"{r['tvm_dense_ms']:>10.3f}"
                    f"{r['gather_ms']:>10.3f}{r['speedup_vs_torch']:>7.2f}{r['speedup_vs_torch_best']:>7.2f}"
                    f"{r['speedup_vs_tvm_dense']:>7.2f}"
                    f"{r['ideal']:>7.1f}{r['eff_vs_torch']:>7.2f}{r['eff_vs_torch_best']:>7.2f}{r['eff_vs_tvm_dense']:>7.2f}"
                    f"{r['gflops_useful_gather']:>9.1f}{r['rel_err']:>9.1e}",
                    flush=True,
                )
            print(f"#   ({time.time() - t0:.0f} s, load {common.loadavg()})", flush=True)
            common.write_json(ARGS.out, dict(head, rows=rows, lowrank=[]))
    low = []
    if not ARGS.no_lowrank:
        print("\n# low-rank PCA decomposition (kxk basis conv + 1x1 conv), both through the kernel library")
        print(
            f"{'shape':<32}{'b':>3}{'rank':>6}{'FLOPx':>7}{'torchD':>10}{'tvmD':>10}{'tvmLR':>10}"
            f"{'torchLR':>10}{'LR/a':>7}{'LR/a*':>7}{'LR/b':>7}{'torLR/a':>8}{'eff':>6}{'pcaerr':>8}",
            flush=True,
        )
        lshapes = shapes if full else shapes[:2]
        for bsz in batches:
            for spec in lshapes:
                if bsz > 1 and ARGS.skip_b32 and ARGS.skip_b32 in spec[0]:
                    continue
                bar.set_postfix_str(f"low-rank {spec[0]} b{bsz}")
                bar.update()
                for r in run_lowrank(spec, bsz, tgt, max(3, rounds - 2), budget):
                    low.append(r)
                    print(
                        f"{r['shape']:<32}{bsz:>3}{r['rank']:>6}{r['theoretical_speedup']:>7.2f}"
                        f"{r['torch_dense_ms']:>10.3f}{r['tvm_dense_ms']:>10.3f}{r['tvm_decomposed_ms']:>10.3f}"
                        f"{r['torch_decomposed_ms']:>10.3f}{r['speedup_vs_torch']:>7.2f}{r['speedup_vs_torch_best']:>7.2f}"
                        f"{r['speedup_vs_tvm_dense']:>7.2f}{r['torch_decomposed_speedup']:>8.2f}"
                        f"{r['eff_vs_torch']:>6.2f}{r['pca_rel_err']:>8.3f}",
                        flush=True,
                    )
                common.write_json(ARGS.out, dict(head, rows=rows, lowrank=low))
    bar.close()
    print("\n# targets (issue 4), efficiency = speed-up * tau")
    tl = targets(rows)
    for line in tl:
        print(line)
    head["uptime_end"] = common.uptime_line()
    head["wall_s"] = round(time.time() - t_start, 1)
    print(f"# {head['uptime_end']}\n# wall {head['wall_s']} s")
    common.write_json(ARGS.out, dict(head, rows=rows, lowrank=low, targets=tl))
    if rows:
        plot(rows, os.path.splitext(ARGS.out)[0] + ".png", f"CPU {ARGS.threads} thread(s), {head.get('clock', 'wall')}")


if __name__ == "__main__":
    main()
