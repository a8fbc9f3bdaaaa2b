"""Whole-model CPU speed: PyTorch eager dense vs TVM dense export vs TVM sparse (GBD) export.

Usage:
    .venv/bin/python -m benchmarks.model_speed                       # all models, batch 1 and 32
    .venv/bin/python -m benchmarks.model_speed --models lenet5,resnet18 --batches 32

Models: LeNet-5 (lightning_gbd.app.models.LeNet5, 1x28x28), torchvision AlexNet, VGG-16, ResNet-18
(weights=None, 3x224x224).  VGG-16 uses batch 8 instead of 32 (--vgg-batch): at batch 32 one
dense forward is ~0.5 TFLOP, which on 2 shared cores makes the round-robin timing too slow.

Variants per model x batch:
  torch       PyTorch eager (oneDNN), dense weights
  tvm_dense   export_model(sparse=False): every conv is the kernel library's dense im2col GEMM
  tvm_s0.3    export_model(sparse=True) of the model with random GBD groups zeroed in every conv
  tvm_s0.1    at density 0.3 / 0.1 (per conv, so the FLOP-weighted density is the same)
  tvm_s0.3_int8  with --int8: the same sparse model exported with --dtype int8 (AVX-512 VNNI),
              calibrated on 64 inputs of the timed input's distribution (standard normal)
Exports are cached in benchmarks/results/.cache/<model>_b<N>_<variant>/ (keyed by a hash of the
kernel-library sources; --rebuild forces).  Timing: round-robin medians (benchmarks/common.py).

Per-layer breakdown: one instrumented forward per TVM variant (relax VirtualMachine.set_instrument;
this TVM's VM has no profile=True) records the wall time of every kernel call (median of
--layer-runs forwards), and forward hooks time PyTorch's convs the same way.

Writes benchmarks/results/model_speed.json.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import time

import numpy as np

from benchmarks import common

CACHE = os.path.join(common.RESULTS, ".cache")
MODELS = ["lenet5", "resnet18", "alexnet", "vgg16"]


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--vgg-batch", type=int, default=8, help="VGG-16 batch used instead of 32")
    ap.add_argument("--densities", default="0.3,0.1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=40.0, help="max seconds of timing per model x batch")
    ap.add_argument("--layer-runs", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--int8", action="store_true", help="also the sparse models exported with --dtype int8")
    ap.add_argument(
        "--cpu-time", action="store_true", help="with --threads 1: time by the calling thread's CPU time (load-robust)"
    )
    ap.add_argument("--report", action="store_true", help="no timing: print the tables of --out")
    ap.add_argument("--compile-only", action="store_true", help="only fill the export cache")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "model_speed.json"))
    return ap.parse_args()


def make_model(name):
    import torchvision

    from lightning_gbd.app.models import LeNet5

    if name == "lenet5":
        return LeNet5(), (1, 28, 28)
    fn = {
        "alexnet": torchvision.models.alexnet,
        "vgg16": torchvision.models.vgg16,
        "resnet18": torchvision.models.resnet18,
        "resnet50": torchvision.models.resnet50,
        "mobilenet_v2": torchvision.models.mobilenet_v2,
    }[name]
    return fn(weights=None), (3, 224, 224)


def source_hash():
    h = hashlib.sha256()
    base = os.path.join(common.ROOT, "tvm_passes")
    # the sources that decide the generated code: every kernel and pass, the cost model, the
    # schedules and the pass order (not the importer / CLI; a change there that matters needs --rebuild)
    subs = sorted(glob.glob(os.path.join(base, "kernels", "*.py")) + glob.glob(os.path.join(base, "passes", "*.py")))
    subs += [os.path.join(base, f) for f in ("cost_model.py", "schedules.py", "pipeline.py")]
    for p in subs:
        if os.path.exists(p):
            h.update(open(p, "rb").read())
    return h.hexdigest()[:12]


def export_cached(model, example, out_dir, sparse, rebuild, tag, dtype="float32"):
    from tvm_passes.export import export_model

    stamp = os.path.join(out_dir, "bench_stamp.json")
    if not rebuild and os.path.exists(stamp) and os.path.exists(os.path.join(out_dir, "manifest.json")):
        with open(stamp) as f:
            st = json.load(f)
        if st.get("tag") == tag:
            with open(os.path.join(out_dir, "manifest.json")) as f:
                man = json.load(f)
            return man, st.get("compile_s"), True
    t0 = time.time()
    cal = None
    if dtype == "int8":
        import torch

        cal = torch.randn(64, *example.shape[1:], generator=torch.Generator().manual_seed(7)).numpy()
    man = export_model(model, example, target="llvm", out_dir=out_dir, sparse=sparse, dtype=dtype, calibration=cal)
    dt = time.time() - t0
    with open(stamp, "w") as f:
        json.dump({"tag": tag, "compile_s": round(dt, 1)}, f)
    return man, round(dt, 1), False


def tvm_layer_times(cm, x_tvm, runs):
    """Median wall time (ms) per kernel symbol over `runs` instrumented forwards."""
    vm = cm.vm
    per = {}
    st = {}

    def instr(func, name, before, ret, *args):
        if name.startswith("vm.builtin"):
            return
        if before:
            st[name] = time.perf_counter()
        else:
            per.setdefault(name, []).append((time.perf_counter() - st[name]) * 1e3)

    vm.set_instrument(instr)
    try:
        for _ in range(runs):
            cm.run_tvm(x_tvm)
    finally:
        vm.set_instrument(lambda *a: None)
    out = {}
    for name, ts in per.items():
        # a kernel called several times per forward: ts holds runs * calls entries
        k = max(1, len(ts) // runs)
        tot = [sum(ts[i * k : (i + 1) * k]) for i in range(runs)]
        out[name] = float(np.median(tot))
    return out


def torch_layer_times(model, x, runs):
    import torch

    per, st, hs = {}, {}, []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            hs.append(m.register_forward_pre_hook(lambda mod, i, n=name: st.__setitem__(n, time.perf_counter())))
            hs.append(
                m.register_forward_hook(
                    lambda mod, i, o, n=name: per.setdefault(n, []).append((time.perf_counter() - st[n]) * 1e3)
                )
            )
    with torch.no_grad():
        for _ in range(runs):
            model(x)
    for h in hs:
        h.remove()
    return {n: float(np.median(v)) for n, v in per.items()}


def run_model(name, bsz, densities, args, tag, log):
    import torch
    import tvm

    from benchmarks.common import apply_gbd_
    from tvm_passes.artifact import load

    torch.manual_seed(0)
    model, in_shape = make_model(name)
    model.eval()
    x = torch.randn(bsz, *in_shape)
    variants = {"tvm_dense": (model, False, "float32")}
    for d in densities:
        m2, _ = make_model(name)
        m2.load_state_dict(model.state_dict())
        m2.eval()
        apply_gbd_(m2, d, seed=1)
        variants[f"tvm_s{d}"] = (m2, True, "float32")
        if args.int8:
            variants[f"tvm_s{d}_int8"] = (m2, True, "int8")
    info = {}
    cms = {}
    for vname, (m, sparse, dtype) in variants.items():
        out_dir = os.path.join(CACHE, f"{name}_b{bsz}_{vname}")
        man, cs, hit = export_cached(m, x, out_dir, sparse, args.rebuild, tag, dtype)
        ver = man.get("verification") or {}
        if not ver and os.path.exists(os.path.join(out_dir, "verification.json")):
            with open(os.path.join(out_dir, "verification.json")) as f:
                ver = json.load(f)
        tot = man["totals"]
        info[vname] = dict(
            compile_s=cs,
            cached=hit,
            flops_dense=tot["flops_dense"],
            flops_executed=tot["flops_executed"],
            flops_ratio=tot["flops_ratio"],
            gather_gemm_convs=tot["gather_gemm"],
            dense_convs=tot["dense"],
            verify_rel_err=ver.get("max_relative_error"),
            verified=ver.get("passed"),
            convs=[
                {k: r.get(k) for k in ("name", "kernel", "decision", "density", "flops_dense", "flops_executed")}
                for r in man["convs"]
            ],
        )
        log(
            f"#   {name} b{bsz} {vname}: {'cached' if hit else 'compiled'} ({cs} s), "
            f"{tot['gather_gemm']} gather / {tot.get('winograd', 0)} Winograd / {tot['dense']} dense convs, "
            f"FLOP ratio {tot['flops_ratio']:.3f}, "
            f"verify err {ver.get('max_relative_error')}"
        )
        if not args.compile_only:
            cms[vname] = load(out_dir)
    if args.compile_only:
        return None
    x_tvm = tvm.runtime.tensor(x.numpy(), tvm.cpu())
    fns = {}  # PyTorch is timed in fresh processes without TVM (common.torch_isolated)
    for vname, cm in cms.items():
        fns[vname] = lambda cm=cm: cm.run_tvm(x_tvm)
    res = common.time_interleaved(
        fns,
        rounds=args.rounds,
        budget_s=args.budget,
        sample_ms=100.0,
        clock=time.thread_time if args.cpu_time else time.perf_counter,
    )
    iso = common.torch_isolated(
        dict(
            kind="model",
            name=name,
            batch=bsz,
            threads=args.threads,
            rounds=args.rounds,
            budget_s=args.budget,
            sample_ms=100.0,
            cpu_time=args.cpu_time,
            layer_runs=args.layer_runs,
        )
    )
    layers = {"torch": iso.pop("layers")}
    res.update(iso)
    for vname, cm in cms.items():
        layers[vname] = tvm_layer_times(cm, x_tvm, args.layer_runs)
    row = dict(
        model=name,
        batch=bsz,
        input=[bsz, *in_shape],
        times_ms={k: v["ms"] for k, v in res.items()},
        samples={k: v["samples"] for k, v in res.items()},
        variants=info,
        layers_ms=layers,
    )
    t = row["times_ms"]
    row["min_ms"] = {k: v["min_ms"] for k, v in res.items()}
    t["torch_best"] = min(t["torch"], t["torch1"])
    row["speedup"] = {k: t["torch"] / t[k] for k in t if k.startswith("tvm")}
    row["speedup_vs_torch_best"] = {k: t["torch_best"] / t[k] for k in t if k.startswith("tvm")}
    row["speedup_vs_tvm_dense"] = {k: t["tvm_dense"] / t[k] for k in t if k.startswith("tvm_s")}
    row["int8_vs_float32_sparse"] = {k[:-5]: t[k[:-5]] / t[k] for k in t if k.endswith("_int8")}
    return row


def layer_table(row):
    """Per-conv lines: torch ms, tvm dense ms, sparse ms per density."""
    lines = []
    lay = row["layers_ms"]
    dens_vars = [k for k in row["times_ms"] if k.startswith("tvm_s")]
    conv_names = [c["name"] for c in row["variants"]["tvm_dense"]["convs"]]
    kern = {v: {c["name"]: c for c in row["variants"][v]["convs"]} for v in row["variants"]}
    hdr = f"    {'layer':<22}{'torch':>9}{'tvmD':>9}" + "".join(f"{v:>10}{'dec':>5}" for v in dens_vars)
    lines.append(hdr)
    # layers_ms holds per kernel symbol the total per forward; convs of the same shape share one
    # kernel in the dense export (structurally equal PrimFuncs are deduplicated): show per call
    ncalls = {v: {} for v in row["variants"]}
    for v in row["variants"]:
        for c in row["variants"][v]["convs"]:
            ncalls[v][c["kernel"]] = ncalls[v].get(c["kernel"], 0) + 1

    def per_call(v, kname):
        return lay[v].get(kname, float("nan")) / ncalls[v].get(kname, 1)

    for n in conv_names:
        s = f"    {n:<22}{lay['torch'].get(n, float('nan')):>9.3f}"
        kd = kern["tvm_dense"][n]["kernel"]
        s += f"{per_call('tvm_dense', kd):>9.3f}"
        for v in dens_vars:
            c = kern[v].get(n)
            if c is None:
                s += f"{'-':>10}{'-':>5}"
            else:
                s += f"{per_call(v, c['kernel']):>10.3f}{('G' if c['decision'] == 'gather-gemm' else 'D'):>5}"
        lines.append(s)
    for v in ["tvm_dense"] + dens_vars:
        conv_k = {c["kernel"] for c in row["variants"][v]["convs"]}
        tot = sum(lay[v].values())
        cv = sum(t for k, t in lay[v].items() if k in conv_k)
        lin = sum(t for k, t in lay[v].items() if k.startswith("gbd_linear"))
        lines.append(
            f"    {v}: instrumented total {tot:.2f} ms = convs {cv:.2f} + linear {lin:.2f} + other {tot - cv - lin:.2f}"
        )
    tconv = sum(t for k, t in lay["torch"].items())
    lines.append(f"    torch: convs+linears (hooks) {tconv:.2f} ms of {row['times_ms']['torch']:.2f} ms")
    return lines


def main():
    args = parse()
    common.setup_env(args.threads)
    import torch
    import tvm

    if args.report:
        with open(args.out) as f:
            d = json.load(f)
        print(f"# {args.out}: clock={d.get('clock', 'wall')} threads={d.get('threads')}\n# {d.get('uptime_start')}")
        for r in d["rows"]:
            t = r["times_ms"]
            print(f"{r['model']} b{r['batch']}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in t.items()))
            for ln in layer_table(r):
                print(ln)
        return
    if args.cpu_time and args.threads != 1:
        raise SystemExit("--cpu-time needs --threads 1")
    tag = source_hash()
    densities = [float(d) for d in args.densities.split(",")]
    t_start = time.time()
    head = dict(
        threads=args.threads,
        torch=torch.__version__,
        tvm=tvm.__version__,
        uptime_start=common.uptime_line(),
        source_hash=tag,
        clock="thread CPU time" if args.cpu_time else "wall",
        vgg_batch_instead_of_32=args.vgg_batch,
        timing="median over round-robin rounds; per-layer: instrumented forwards (median)",
    )
    rows = []
    if os.path.exists(args.out):  # keep rows of models not re-run
        try:
            with open(args.out) as f:
                rows = json.load(f).get("rows", [])
        except Exception:
            rows = []

    def log(s):
        print(s, flush=True)

    log(
        f"# model_speed: threads={args.threads} torch={torch.__version__} tvm={tvm.__version__}\n"
        f"# {head['uptime_start']}"
    )
    hdr = (
        f"{'model':<10}{'b':>4}{'torch ms':>11}{'torch1t':>10}{'tvmD ms':>11}"
        + "".join(f"{'s' + str(d) + ' ms':>11}" for d in densities)
        + f"{'tvmD/a':>8}"
        + "".join(f"{'s' + str(d) + '/a':>8}{'s' + str(d) + '/a*':>9}{'s' + str(d) + '/b':>8}" for d in densities)
    )
    tables = []
    bar = common.progress(len(args.models.split(",")) * len(args.batches.split(",")), "model_speed")
    for name in args.models.split(","):
        for b in (int(v) for v in args.batches.split(",")):
            bsz = args.vgg_batch if (name == "vgg16" and b == 32) else b
            bar.set_postfix_str(f"{name} b{bsz}")
            bar.update()
            t0 = time.time()
            row = run_model(name, bsz, densities, args, tag, log)
            if row is None:
                continue
            row["load_after"] = common.loadavg()
            rows = [r for r in rows if not (r["model"] == name and r["batch"] == bsz)] + [row]
            t = row["times_ms"]
            line = (
                f"{name:<10}{bsz:>4}{t['torch']:>11.2f}{t['torch1']:>10.2f}{t['tvm_dense']:>11.2f}"
                + "".join(f"{t[f'tvm_s{d}']:>11.2f}" for d in densities)
                + f"{row['speedup']['tvm_dense']:>8.2f}"
                + "".join(
                    f"{row['speedup'][f'tvm_s{d}']:>8.2f}{row['speedup_vs_torch_best'][f'tvm_s{d}']:>9.2f}"
                    f"{row['speedup_vs_tvm_dense'][f'tvm_s{d}']:>8.2f}"
                    for d in densities
                )
            )
            tables.append(line)
            log(hdr)
            log(line + f"   ({time.time() - t0:.0f} s, load {row['load_after']})")
            for k, r8 in row["int8_vs_float32_sparse"].items():
                log(f"#   {k}_int8: {t[k + '_int8']:.2f} ms, {r8:.2f}x the float32 sparse export (same run)")
            for ln in layer_table(row):
                log(ln)
            common.write_json(args.out, dict(head, rows=rows))
    bar.close()
    log(
        "\n# summary (a = PyTorch eager dense 2 threads, a* = best of PyTorch 2-thread / 1-thread, "
        "b = TVM dense export; x/a = speed-up over a)"
    )
    log(hdr)
    for ln in tables:
        log(ln)
    log("\n# target: whole model at density 0.3 >= 2x faster than PyTorch eager dense at batch 32 (VGG-16: 8)")
    tl = []
    for r in rows:
        if (
            r["batch"] in (32, args.vgg_batch)
            and "tvm_s0.3" in r["speedup"]
            and not (r["model"] != "vgg16" and r["batch"] != 32)
        ):
            a, ab = r["speedup"]["tvm_s0.3"], r["speedup_vs_torch_best"]["tvm_s0.3"]
            tl.append(
                f"{r['model']} b{r['batch']}: vs a {a:.2f}x ({'met' if a >= 2 else 'MISSED'}), "
                f"vs a* {ab:.2f}x ({'met' if ab >= 2 else 'MISSED'})"
            )
    for ln in tl:
        log(ln)
    head["targets"] = tl
    head["uptime_end"] = common.uptime_line()
    head["wall_s"] = round(time.time() - t_start, 1)
    log(f"# {head['uptime_end']}\n# wall {head['wall_s']} s")
    common.write_json(args.out, dict(head, rows=rows))


if __name__ == "__main__":
    main()
