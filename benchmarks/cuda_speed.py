"""CUDA speed of the GBD kernels (issue 13): the gather-GEMM conv and whole models compiled with
``gbd-export --target cuda --dtype D``, against PyTorch cuDNN on the same GPU at the same precision.

Usage (from the repository root, on a machine with a CUDA GPU):
    .venv/bin/python -m benchmarks.cuda_speed                       # convs + models, everything
    .venv/bin/python -m benchmarks.cuda_speed --no-models           # the per-conv table only (minutes)
    .venv/bin/python -m benchmarks.cuda_speed --models resnet18 --batches 32 --densities 1,0.3
    .venv/bin/python -m benchmarks.cuda_speed --dry-run             # no GPU needed: build one case of each kind
    .venv/bin/python -m benchmarks.cuda_speed --replot --out <json> # PNG + markdown table again

Precisions (D; PyTorch the same precision): float32 (TF32 off), tf32 (cuDNN TF32 on), float16 and
bfloat16 (PyTorch: model and input in that type, channels_last; ours: tensor-core operands in that
type, float32 accumulation, float32 input / output).  Per conv shape (AlexNet conv2/conv3, VGG-16
conv3_x/conv4_x, the 3x3 convs of ResNet-18 and ResNet-50, which share their shapes), density tau
(random GBD groups W[:, s, i, j] zeroed) and batch: (a) PyTorch's dense conv, (b) our dense conv
(``dense=True``, the im2col GEMM), (c) our gather-GEMM conv.  Whole models: ResNet-18, ResNet-50,
VGG-16 at 224 x 224, every conv at density tau.  Timing: CUDA events around each call, ``--warmup``
calls first, the median of ``--iters`` calls (all samples in the json).  Writes
benchmarks/results/cuda_speed.json, .png (speed-up c/a against density, per shape) and .md (README
tables, with the GPU's name).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import numpy as np

from benchmarks import common

SHAPES = common.CONV_SHAPES
MODELS = ("resnet18", "resnet50", "vgg16")
DTYPES = ("float32", "tf32", "float16", "bfloat16")
OUT = os.path.join(common.RESULTS, "cuda_speed.json")


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--densities", default="1,0.5,0.3,0.2,0.1")
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--models", default=",".join(MODELS), help="comma list, or '' for none")
    ap.add_argument("--no-models", action="store_true")
    ap.add_argument("--no-convs", action="store_true")
    ap.add_argument("--only", default="", help="substring filter on conv shape names")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--dry-run", action="store_true", help="build one conv per dtype and one model; time nothing")
    ap.add_argument("--replot", action="store_true", help="PNG + markdown from --out, no runs")
    return ap.parse_args()


def floats(text):
    return [float(v) for v in text.split(",") if v]


# ---------------------------------------------------------------------------- timing
def cuda_time(fn, warmup, iters):
    """Median (ms) of ``iters`` calls timed by CUDA events on the current stream, after ``warmup``
    calls; TVM launches on the same (default) stream as PyTorch."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        events.append((s, e))
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) for s, e in events]
    return statistics.median(samples), samples


def torch_precision(dtype):
    """(torch dtype of model and input, channels_last) of PyTorch at ``dtype``; sets TF32."""
    import torch

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    if dtype in ("float16", "bfloat16"):
        return getattr(torch, dtype), True
    return torch.float32, False


def rel_err(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


# ---------------------------------------------------------------------------- per conv
def tvm_conv(x_shape, w, pad, dtype, dense, build_only):
    """Our conv as a timed closure (or None when ``build_only``) and its output tensor."""
    import tvm

    from tvm_passes.kernels import compile_kernel, conv2d_gather_gemm

    tgt = {"kind": "cuda", "arch": "sm_90"} if build_only else "cuda"  # "cuda": the GPU's own arch
    func, consts = conv2d_gather_gemm(x_shape, w, None, padding=(pad,) * 4, target=tgt, dtype=dtype, dense=dense)
    lib = compile_kernel(func, tgt)
    if build_only:
        return None, None
    dev = tvm.cuda(0)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    args = [tvm.runtime.tensor(a, dev) for a in [x, *consts]]
    oh = x_shape[2] + 2 * pad - w.shape[2] + 1
    out = tvm.runtime.tensor(np.zeros((x_shape[0], w.shape[0], oh, oh), np.float32), dev)
    return (lambda: lib(*args, out)), (x, out)


def torch_conv(x, w, pad, dtype):
    import torch

    tt, cl = torch_precision(dtype)
    xt, wt = torch.from_numpy(x).cuda().to(tt), torch.from_numpy(w).cuda().to(tt)
    if cl:
        xt, wt = xt.to(memory_format=torch.channels_last), wt.to(memory_format=torch.channels_last)
    return lambda: torch.nn.functional.conv2d(xt, wt, padding=pad)


def run_conv(shape, batch, dtype, densities, args, log):
    """Rows of one shape x batch x dtype: PyTorch dense (a), ours dense (b), ours per density (c)."""
    name, C, T, k, pad, H = shape
    xs = (batch, C, H, H)
    flops = 2.0 * batch * T * C * k * k * H * H  # stride 1, 'same' padding
    w1 = common.gbd_weight(T, C, k, k, 1.0)
    fb, (x, _) = tvm_conv(xs, w1, pad, dtype, True, False)
    ta, sa = cuda_time(torch_conv(x, w1, pad, dtype), args.warmup, args.iters)
    tb, sb = cuda_time(fb, args.warmup, args.iters)
    rows = []
    for tau in densities:
        w = common.gbd_weight(T, C, k, k, tau)
        fc, (_, out) = tvm_conv(xs, w, pad, dtype, False, False)
        tc, sc = cuda_time(fc, args.warmup, args.iters)
        ref = torch_conv(x, w, pad, dtype)().float().cpu().numpy()
        row = dict(shape=name, batch=batch, dtype=dtype, tau=tau, torch_ms=ta, tvm_dense_ms=tb, tvm_gather_ms=tc)
        row.update(
            c_over_a=ta / tc, c_over_b=tb / tc, tflops_useful=flops * tau / tc / 1e9, err=rel_err(out.numpy(), ref)
        )
        row["samples"] = dict(torch=sa, tvm_dense=sb, tvm_gather=sc)
        rows.append(row)
        log(
            f"{name:32s} {batch:4d} {dtype:9s} {tau:4.2f} {ta:9.3f} {tb:9.3f} {tc:9.3f} {ta / tc:6.2f} {row['err']:.1e}"
        )
    return rows


# ---------------------------------------------------------------------------- whole models
def make_model(name, density):
    import torch
    import torchvision

    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    common.apply_gbd_(m, density)
    return m


def export_for(name, batch, tau, dtype, target="cuda"):
    """The model at density ``tau`` exported for ``dtype`` (cached under results/.cache/cuda)."""
    import torch

    import tvm_passes

    out_dir = os.path.join(common.RESULTS, ".cache", "cuda", f"{name}_b{batch}_t{tau}_{dtype}")
    m = make_model(name, tau)
    if not os.path.exists(os.path.join(out_dir, "manifest.json")):
        tvm_passes.export_model(m, torch.randn(batch, 3, 224, 224), target, out_dir, dtype=dtype, do_verify=False)
    return m, out_dir


def run_model(name, batch, dtype, densities, args, log):
    import torch

    import tvm_passes

    rows = []
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).cuda()
    for tau in densities:
        m, out_dir = export_for(name, batch, tau, dtype)
        cm = tvm_passes.load(out_dir)
        xt = device_input(x)
        tc, sc = cuda_time(lambda cm=cm, xt=xt: cm.run_tvm(xt), args.warmup, args.iters)
        tt, cl = torch_precision(dtype)
        mt = copy.deepcopy(m).cuda().to(tt)
        xm = x.to(tt)
        if cl:
            mt, xm = mt.to(memory_format=torch.channels_last), xm.to(memory_format=torch.channels_last)
        with torch.no_grad():
            ta, sa = cuda_time(lambda mt=mt, xm=xm: mt(xm), args.warmup, args.iters)
            err = rel_err(cm(x).float().cpu().numpy(), mt(xm).float().cpu().numpy())
        rows.append(
            dict(model=name, batch=batch, dtype=dtype, tau=tau, torch_ms=ta, tvm_ms=tc, speedup=ta / tc, err=err)
        )
        rows[-1]["samples"] = dict(torch=sa, tvm=sc)
        log(f"{name:10s} {batch:4d} {dtype:9s} {tau:4.2f} torch {ta:9.3f} tvm {tc:9.3f} x{ta / tc:5.2f} err {err:.1e}")
    return rows


def device_input(x):
    import tvm

    return tvm.runtime.from_dlpack(x.contiguous())


# ---------------------------------------------------------------------------- reports
def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    convs = res.get("convs", [])
    shapes = list(dict.fromkeys(r["shape"] for r in convs))
    if not shapes:
        return
    batch = max(r["batch"] for r in convs)
    fig, axes = plt.subplots(2, (len(shapes) + 1) // 2, figsize=(4 * ((len(shapes) + 1) // 2), 7), squeeze=False)
    for ax, shape in zip(axes.flat, shapes, strict=False):
        for dtype in DTYPES:
            pts = sorted(
                (r["tau"], r["c_over_a"])
                for r in convs
                if r["shape"] == shape and r["dtype"] == dtype and r["batch"] == batch
            )
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", label=dtype)
        ax.set_title(f"{shape}, batch {batch}", fontsize=8)
        ax.set_xlabel("density tau")
        ax.set_ylabel("speed-up vs cuDNN (c/a)")
        ax.axhline(1, color="grey", lw=0.5)
        ax.legend(fontsize=7)
    fig.suptitle(f"GBD gather-GEMM conv vs PyTorch cuDNN, {res.get('gpu', '?')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(res) -> str:
    lines = [f"GPU: {res.get('gpu', '?')}; {res.get('versions', '')}", ""]
    if res.get("convs"):
        lines += [
            "| shape | batch | dtype | tau | cuDNN ms | ours dense ms | ours gather ms | c/a | c/b | err |",
            "|" + "---|" * 10,
        ]
        for r in res["convs"]:
            lines.append(
                f"| {r['shape']} | {r['batch']} | {r['dtype']} | {r['tau']:.2f} | {r['torch_ms']:.3f} "
                f"| {r['tvm_dense_ms']:.3f} | {r['tvm_gather_ms']:.3f} | {r['c_over_a']:.2f} | {r['c_over_b']:.2f} "
                f"| {r['err']:.1e} |"
            )
    if res.get("models"):
        lines += ["", "| model | batch | dtype | tau | PyTorch ms | ours ms | speed-up | err |", "|" + "---|" * 8]
        for r in res["models"]:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['dtype']} | {r['tau']:.2f} | {r['torch_ms']:.3f} "
                f"| {r['tvm_ms']:.3f} | {r['speedup']:.2f} | {r['err']:.1e} |"
            )
    return "\n".join(lines) + "\n"


def report(res, out):
    stem = os.path.splitext(out)[0]
    plot(res, stem + ".png")
    with open(stem + ".md", "w") as f:
        f.write(markdown(res))
    print(f"wrote {out}, {stem}.png, {stem}.md")


# ---------------------------------------------------------------------------- main
def dry_run(dtypes):
    """Build (no GPU) one conv of each dtype, gather and dense, and one whole model."""
    name, C, T, k, pad, H = SHAPES[-1]
    for dtype in dtypes:
        t0 = time.time()
        for dense in (False, True):
            tvm_conv((1, C, H, H), common.gbd_weight(T, C, k, k, 0.3), pad, dtype, dense, True)
        print(f"built {name} batch 1 tau 0.3 {dtype} (gather + dense) in {time.time() - t0:.1f} s")
    t0 = time.time()
    import tvm_passes

    tgt = {"kind": "cuda", "arch": "sm_90"}
    dtype = "float16" if "float16" in dtypes else dtypes[0]
    import torch

    out_dir = os.path.join(common.RESULTS, ".cache", "cuda", f"dry_run_resnet18_{dtype}")
    tvm_passes.export_model(
        make_model("resnet18", 0.3), torch.randn(1, 3, 224, 224), tgt, out_dir, dtype=dtype, do_verify=False
    )
    print(f"built resnet18 batch 1 tau 0.3 {dtype} in {time.time() - t0:.1f} s ({out_dir}); nothing timed")


def main():
    args = parse()
    dtypes = [d for d in args.dtypes.split(",") if d]
    if args.replot:
        with open(args.out) as f:
            return report(json.load(f), args.out)
    if args.dry_run:
        return dry_run(dtypes)
    import torch

    if not torch.cuda.is_available():
        print("cuda_speed: no CUDA GPU here, nothing timed (--dry-run builds without one)")
        return None
    import tvm

    res = dict(gpu=torch.cuda.get_device_name(), versions=f"torch {torch.__version__}, tvm {tvm.__version__}")
    res.update(convs=[], models=[], warmup=args.warmup, iters=args.iters, started=time.strftime("%Y-%m-%d %H:%M:%S"))
    dens, batches = floats(args.densities), [int(b) for b in floats(args.batches)]
    if not args.no_convs:
        head = ("(a)cuDNN", "(b)dense", "(c)gath")
        print(f"{'shape':32s} {'b':>4s} {'dtype':9s} {'tau':4s} " + " ".join(f"{h:>9s}" for h in head) + "    c/a err")
        for shape in (s for s in SHAPES if args.only in s[0]):
            for batch in batches:
                for dtype in dtypes:
                    res["convs"] += run_conv(shape, batch, dtype, dens, args, print)
                    common.write_json(args.out, res)
    models = [] if args.no_models else [m for m in args.models.split(",") if m]
    for name in models:
        for batch in batches:
            for dtype in dtypes:
                res["models"] += run_model(name, batch, dtype, dens, args, print)
                common.write_json(args.out, res)
    common.write_json(args.out, res)
    report(res, args.out)
    return None


if __name__ == "__main__":
    main()
