"""Whole sparsified CNNs against the CPU runtimes a user would deploy with instead of us.

Usage (repository root; the peers need `make peers-venv` first, see benchmarks/README.md):
    .venv/bin/python -m benchmarks.peers                      # everything (`make bench-peers`)
    .venv/bin/python -m benchmarks.peers --models resnet18 --densities 1.0,0.3 --batches 1
    .venv/bin/python -m benchmarks.peers --report             # md + png again from the json

Models (benchmarks/peer_models.py): torchvision ResNet-18, ResNet-50, VGG-16, AlexNet, MobileNetV2
(weights=None, seeded random init, eval mode, 3x224x224) with random GBD groups W[:, s, i, j]
zeroed at density 1.0 / 0.3 / 0.1 in every non-1x1 conv (per conv; ResNet-50 also its 1x1
convs, i.e. whole dead input maps); batch 1 and 32 (VGG-16: 1 and 8, --vgg-batch).

Engines, each in its OWN fresh process (benchmarks/peer_worker.py), 2 threads, no TVM_*
variable in the environment, OMP_NUM_THREADS=2:
  torch        PyTorch eager (project venv)
  onnxruntime  ONNX Runtime, CPU provider             (.venv-peers)
  openvino     OpenVINO CPU, f32 precision hint       (.venv-peers)
  deepsparse   DeepSparse 1.8 (sparse-aware)          (.venv-peers)
  ours_dense   tvm_passes.export_model(..., sparse=False), loaded by tvm_passes.load (project venv)
  ours_sparse  tvm_passes.export_model(..., sparse=True),  loaded the same way
The ONNX file (torch.onnx.export, dynamo=False, opset 17, dynamic batch axis; each peer makes
the batch static: ORT free-dimension override, OpenVINO reshape, DeepSparse batch_size) and our
exports are made by this process and cached in benchmarks/results/.cache/peers/ (our exports
keyed by a hash of the compiler sources under tvm_passes/; --rebuild forces).

Per engine: load, warm-up, then the median of per-call wall times (lightning_gbd.core.timing.
time_interleaved, one variant, per_call=True); output checked against PyTorch eager on the same
input (max|a-b| / max|b|, flagged above --tol).  Reported: ms, the speed-up of ours_sparse over
the best dense peer (min of ONNX Runtime / OpenVINO) and over DeepSparse, and the ideal
1 / (executed-FLOP ratio of our sparse export, manifest totals.flops_ratio).

Writes benchmarks/results/peers.json (rows of model x density x batch; rows of cases not re-run
are kept), peers.md (the table for the README) and peers.png (speed-up over the best dense peer
against density, per model, with the ideal line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time

from benchmarks import common
from benchmarks.peer_models import MODELS

CACHE = os.path.join(common.RESULTS, ".cache", "peers")
ENGINES = ("torch", "onnxruntime", "openvino", "deepsparse", "ours_dense", "ours_sparse")
PEER_ENGINES = ("onnxruntime", "openvino", "deepsparse")  # run by the peers venv's python
DENSE_PEERS = ("onnxruntime", "openvino")
LABEL = {
    "torch": "PyTorch eager",
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
    "deepsparse": "DeepSparse",
    "ours_dense": "ours dense",
    "ours_sparse": "ours sparse",
}
#: files of tvm_passes/ that only load / run / print, not decide the compiled code
RUNTIME_ONLY = {"cli.py", "bench.py", "bench_peers.py", "run.py", "threads.py", os.path.join("artifact", "loader.py")}


def add_run_args(ap, engines):
    """The options of how cases are run and timed, shared with peers_int8.py."""
    ap.add_argument("--vgg-batch", type=int, default=8, help="VGG-16 batch used instead of 32")
    ap.add_argument("--only-engines", default=",".join(engines), help=f"subset of {','.join(engines)}")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds per engine (each ~--sample-ms of calls)")
    ap.add_argument("--sample-ms", type=float, default=200.0)
    ap.add_argument("--budget", type=float, default=20.0, help="max seconds of timing per engine and case")
    ap.add_argument(
        "--processes",
        type=int,
        default=1,
        help="fresh processes per engine and case, the engines in turn; the lowest median is kept",
    )
    ap.add_argument(
        "--contended",
        type=float,
        default=0.25,
        help="a worker whose timing ran beside more than this many cores of other load is re-run",
    )
    ap.add_argument("--retries", type=int, default=2, help="extra processes for a contended engine")
    ap.add_argument("--retry-pause", type=float, default=10.0, help="seconds before re-running a contended engine")
    ap.add_argument("--peers-python", default=os.path.join(common.ROOT, ".venv-peers", "bin", "python"))
    ap.add_argument("--worker-timeout", type=float, default=1200.0, help="seconds before a worker is killed")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--densities", default="1.0,0.3,0.1")
    ap.add_argument("--batches", default="1,32")
    add_run_args(ap, ENGINES)
    ap.add_argument("--tol", type=float, default=1e-3, help="flag outputs whose relative error exceeds this")
    ap.add_argument("--rebuild", action="store_true", help="re-export the ONNX files and our artifacts")
    ap.add_argument("--report", action="store_true", help="no runs: write the md and png again from --out")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "peers.json"))
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.densities = [float(d) for d in args.densities.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.engines = [e.strip() for e in args.only_engines.split(",") if e.strip()]
    bad = [m for m in args.models if m not in MODELS] + [e for e in args.engines if e not in ENGINES]
    if bad:
        ap.error(f"unknown model / engine: {', '.join(bad)} (models {', '.join(MODELS)}; engines {', '.join(ENGINES)})")
    return args


# ---------------------------------------------------------------------------- caches
def source_hash():
    """Hash of the compiler sources (tvm_passes/**.py except the load / run / CLI files) + TVM."""
    import tvm

    h = hashlib.sha256(tvm.__version__.encode())
    base = os.path.join(common.ROOT, "tvm_passes")
    for d, dirs, files in sorted(os.walk(base)):
        dirs.sort()
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(d, f), base)
            if f.endswith(".py") and rel not in RUNTIME_ONLY:
                h.update(rel.encode())
                h.update(open(os.path.join(d, f), "rb").read())
    return h.hexdigest()[:12]


def _stamp_ok(path, tag):
    try:
        with open(path) as f:
            return json.load(f).get("tag") == tag
    except (OSError, ValueError):
        return False


def _write_stamp(path, **kw):
    with open(path, "w") as f:
        json.dump(kw, f)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "CPU")
    except OSError:
        name = "CPU"
    return f"{name}, {os.cpu_count()} cores visible"


def dens_str(d):
    return f"{d:g}"


def dens_cell(d):
    return f"{d:.1f}" if d >= 0.1 else f"{d:g}"


def prepare_inputs(name, density, batches, onnx_wanted, mtag, rebuild, log):
    """Input / PyTorch-reference arrays per batch and (if wanted) the ONNX file of model x density.
    Returns {"dir", "x": {b: path}, "ref": {b: path}, "onnx": path or None, "onnx_error"}."""
    import numpy as np
    import torch

    from benchmarks.peer_models import build_model, input_array

    d = os.path.join(CACHE, f"{name}_d{dens_str(density)}")
    os.makedirs(d, exist_ok=True)
    stamp = os.path.join(d, "stamp.json")
    fresh = not rebuild and _stamp_ok(stamp, mtag)
    if not fresh:
        for f in os.listdir(d):
            if f.endswith((".npy", ".onnx")) or f == "stamp.json":
                os.remove(os.path.join(d, f))
        _write_stamp(stamp, tag=mtag)
    out = {"dir": d, "x": {}, "ref": {}, "onnx": None, "onnx_error": None}
    model = None
    for b in batches:
        xp, rp = os.path.join(d, f"x_b{b}.npy"), os.path.join(d, f"ref_b{b}.npy")
        if not (os.path.exists(xp) and os.path.exists(rp)):
            model = model or build_model(name, density)
            x = input_array(b)
            with torch.inference_mode():
                ref = model(torch.from_numpy(x)).numpy()
            np.save(xp, x)
            np.save(rp, ref)
        out["x"][b], out["ref"][b] = xp, rp
    if onnx_wanted:
        op = os.path.join(d, "model.onnx")
        if not os.path.exists(op):
            try:
                import onnx  # noqa: F401 - torch.onnx.export needs it
            except ImportError:
                out["onnx_error"] = f"onnx is not installed in the project venv ({sys.executable}): pip install onnx"
                return out
            model = model or build_model(name, density)
            t0 = time.time()
            try:
                torch.onnx.export(
                    model,
                    (torch.from_numpy(input_array(1)),),
                    op + ".tmp",
                    dynamo=False,
                    opset_version=17,
                    input_names=["input"],
                    output_names=["output"],
                    dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                )
                os.replace(op + ".tmp", op)
                log(f"#   {name} d{dens_str(density)}: ONNX written ({time.time() - t0:.1f} s)")
            except Exception as e:
                out["onnx_error"] = f"torch.onnx.export failed: {type(e).__name__}: {e}"[:500]
                return out
        out["onnx"] = op
    return out


def ensure_export(name, density, batch, sparse, x_path, tag, rebuild, log):
    """Our artifact of model x density x batch (sparse or dense), exported if not cached."""
    import numpy as np
    import torch

    import tvm_passes
    from benchmarks.peer_models import build_model

    kind = "sparse" if sparse else "dense"
    d = os.path.join(CACHE, f"{name}_d{dens_str(density)}_b{batch}_{kind}")
    stamp = os.path.join(d, "bench_stamp.json")
    man_p = os.path.join(d, "manifest.json")
    if not rebuild and os.path.exists(man_p) and _stamp_ok(stamp, tag):
        with open(man_p) as f:
            man = json.load(f)
        with open(stamp) as f:
            return d, man, json.load(f).get("compile_s"), True
    model = build_model(name, density)
    x = torch.from_numpy(np.load(x_path, allow_pickle=False))
    t0 = time.time()
    man = tvm_passes.export_model(model, x, "llvm", d, sparse=sparse)
    cs = round(time.time() - t0, 1)
    _write_stamp(stamp, tag=tag, compile_s=cs)
    tot = man["totals"]
    log(
        f"#   {name} d{dens_str(density)} b{batch} ours_{kind}: exported in {cs} s, {tot['gather_gemm']} gather / "
        f"{tot.get('winograd', 0)} Winograd / {tot['dense']} dense convs, FLOP ratio {tot['flops_ratio']:.3f}"
    )
    time.sleep(0.5)  # let this process's TVM pool threads go idle before a worker is timed
    return d, man, cs, False


# ---------------------------------------------------------------------------- workers
def worker_env(threads):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVM_")}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_worker(python, spec, timeout):
    """One fresh process of benchmarks/peer_worker.py; its JSON line, or {"error"} / {"skipped"}."""
    if not os.path.exists(python):
        return {"skipped": f"{python} missing: run `make peers-venv` (benchmarks/requirements-peers.txt)"}
    try:
        r = subprocess.run(
            [python, "-m", "benchmarks.peer_worker", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=worker_env(spec["threads"]),
            cwd=common.ROOT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:.0f} s"}
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    tail = (r.stderr.strip().splitlines() or ["(no output)"])[-3:]
    return {"error": f"worker exited {r.returncode} without a result: {' | '.join(tail)}"[:1000]}


def contended(res, limit):
    return (res.get("foreign_cpu") or 0) + (res.get("steal_cpu") or 0) > limit


def measure_engines(jobs, args):
    """{engine: result} of ``jobs`` [(engine, python, spec)]: --processes fresh workers per engine,
    the engines in turn (each once, then each again), then more processes (up to --retries) for an
    engine whose best one ran beside other load (foreign_cpu + steal_cpu > --contended); the lowest
    median is kept and every median recorded.  In turn, because a VM of this kind has phases of
    seconds to a minute in which every program runs slower (ResNet-18 INT8 at batch 1: 2.60 and
    3.87 ms in two fresh processes, all kernels alike, no steal time in /proc/stat): one engine's
    processes run back to back could all fall into one, and the ratios with them."""
    best, medians = {}, {eng: [] for eng, _, _ in jobs}

    def run(eng, python, spec):
        r1 = run_worker(python, spec, args.worker_timeout)
        r1["at"] = time.strftime("%Y-%m-%d %H:%M:%S")
        if "ms" in r1:
            medians[eng].append(round(r1["ms"], 4))
            if "ms" not in best.get(eng, {}) or r1["ms"] < best[eng]["ms"]:
                best[eng] = r1
        elif eng not in best:
            best[eng] = r1  # skipped / failed: no point in another process
        return "ms" in r1

    live = list(jobs)
    for _ in range(max(1, args.processes)):
        live = [job for job in live if run(*job)]
    for job in live:
        for _ in range(args.retries):
            if not contended(best[job[0]], args.contended):
                break
            time.sleep(args.retry_pause)
            if not run(*job):
                break
    for eng, res in best.items():
        if len(medians[eng]) > 1:
            res["process_medians_ms"] = medians[eng]
        if "ms" in res:
            res["contended"] = contended(res, args.contended)
    return best


# ---------------------------------------------------------------------------- derived numbers
def derive(row, tol):
    """Best dense peer, speed-ups, ideal and error flags of one row (in place)."""
    eng = row["engines"]

    def ms(e):
        v = eng.get(e) or {}
        return v.get("ms")

    dense = {e: ms(e) for e in DENSE_PEERS if ms(e)}
    best = min(dense, key=dense.get) if dense else None
    row["best_dense_peer"] = best
    row["best_dense_ms"] = dense.get(best) if best else None
    ours = ms("ours_sparse")
    sp = {}
    if ours:
        if best:
            sp["vs_best_dense_peer"] = dense[best] / ours
        if ms("deepsparse"):
            sp["vs_deepsparse"] = ms("deepsparse") / ours
        if ms("torch"):
            sp["vs_torch"] = ms("torch") / ours
        if ms("ours_dense"):
            sp["vs_ours_dense"] = ms("ours_dense") / ours
    if ms("deepsparse") and best:
        sp["deepsparse_vs_best_dense_peer"] = dense[best] / ms("deepsparse")
    if ms("ours_dense") and best:
        sp["ours_dense_vs_best_dense_peer"] = dense[best] / ms("ours_dense")
    row["speedup"] = sp
    fr = row.get("flops_ratio")
    row["ideal"] = (1.0 / fr) if fr else None
    errs = {e: v["rel_err"] for e, v in eng.items() if isinstance(v, dict) and v.get("rel_err") is not None}
    row["max_rel_err"] = max(errs.values()) if errs else None
    row["flagged"] = sorted(e for e, v in errs.items() if not (v <= tol))  # nan / inf flagged too
    row["contended"] = sorted(e for e, v in eng.items() if isinstance(v, dict) and v.get("contended"))
    return row


def _f(v, fmt="{:.1f}"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _ms_cell(v):
    if not isinstance(v, dict):
        return "-"
    if "ms" in v:
        return _f(v["ms"], "{:.1f}" if v["ms"] >= 10 else "{:.2f}") + ("†" if v.get("contended") else "")
    return "skip" if "skipped" in v else "fail"


def markdown(d):
    rows = sorted(
        d["rows"], key=lambda r: (MODELS.index(r["model"]) if r["model"] in MODELS else 99, r["batch"], -r["density"])
    )
    tol = d.get("tol", 1e-3)
    lines = [
        f"Median per-call ms, {d.get('threads', 2)} threads, each engine in its own fresh process "
        f"(`benchmarks/peers.py`; {d.get('machine', '')}).  *vs best dense* = best of ONNX Runtime / OpenVINO "
        "over ours sparse; *ideal* = 1 / executed-FLOP ratio of our sparse export.",
        "",
        "| model | batch | density | PyTorch eager | ONNX Runtime | OpenVINO | DeepSparse | ours dense | ours sparse "
        "| ours sparse vs best dense | vs DeepSparse | ideal | max rel. err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in rows:
        e = r["engines"]
        sp = r.get("speedup", {})
        err = _f(r.get("max_rel_err"), "{:.1e}")
        if r.get("flagged"):
            err = f"**{err}** ({', '.join(LABEL[x] for x in r['flagged'])} > {tol:g})"
        lines.append(
            f"| {r['model']} | {r['batch']} | {dens_cell(r['density'])} | "
            + " | ".join(_ms_cell(e.get(k)) for k in ENGINES)
            + f" | {_f(sp.get('vs_best_dense_peer'), '{:.2f}x')} | {_f(sp.get('vs_deepsparse'), '{:.2f}x')}"
            f" | {_f(r.get('ideal'), '{:.2f}x')} | {err} |"
        )
        for k in ENGINES:
            v = e.get(k)
            if isinstance(v, dict) and ("skipped" in v or "error" in v):
                why = v.get("skipped") or v.get("error")
                notes.append(f"{LABEL[k]}: {why}")
    if any(r.get("contended") for r in rows):
        notes.append(
            "† timed while other processes kept more than "
            f"{d.get('contended_limit', 0.25):g} cores busy (foreign_cpu + steal_cpu in the json), after every retry"
        )
    if notes:
        lines.append("")
        lines += [f"* {n}" for n in sorted(set(notes))]
    return "\n".join(lines) + "\n"


def plot(d, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    models = [m for m in MODELS if any(r["model"] == m for r in d["rows"])]
    if not models:
        return
    n = len(models)
    cols = min(n, 3)
    fig, axes = plt.subplots(
        (n + cols - 1) // cols, cols, figsize=(4.6 * cols, 3.8 * ((n + cols - 1) // cols)), squeeze=False
    )
    colors = {}
    for ax, m in zip(axes.flat, models):
        rows = [r for r in d["rows"] if r["model"] == m]
        ideals = {}  # density -> ideal already drawn
        for b in sorted({r["batch"] for r in rows}):
            rs = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["density"])
            c = colors.setdefault(b, f"C{len(colors)}")
            pts = [(r["density"], r["speedup"].get("vs_best_dense_peer")) for r in rs]
            pts = [p for p in pts if p[1]]
            if pts:
                ax.plot(*zip(*pts), "o-", color=c, label=f"ours sparse, batch {b}")
            pts = [(r["density"], r["speedup"].get("deepsparse_vs_best_dense_peer")) for r in rs]
            pts = [p for p in pts if p[1]]
            if pts:
                ax.plot(*zip(*pts), "s:", color=c, alpha=0.6, label=f"DeepSparse, batch {b}")
            pts = [(r["density"], r.get("ideal")) for r in rs]
            pts = [p for p in pts if p[1]]
            same = all(dn in ideals and abs(v / ideals[dn] - 1) < 0.01 for dn, v in pts)
            if pts and not same:  # the FLOP ratio hardly depends on the batch: one line unless it does
                lab = "ideal 1/FLOP ratio" + (f", batch {b}" if ideals else "")
                ax.plot(*zip(*pts), "x--", color=c if ideals else "k", alpha=0.5, lw=1, label=lab)
                for dn, v in pts:
                    ideals.setdefault(dn, v)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log", base=2)
        dens = sorted({r["density"] for r in rows})
        ax.set_xticks(dens)
        ax.set_xticklabels([dens_str(x) for x in dens])
        ax.minorticks_off()
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.invert_xaxis()
        ax.set_title(m)
        ax.set_xlabel("density of the GBD patterns")
        ax.set_ylabel("speed-up over best dense peer")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(
        f"ours sparse (and DeepSparse) over min(ONNX Runtime, OpenVINO)\n{d.get('threads', 2)} threads, "
        "each engine in its own fresh process",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(d, out):
    common.write_json(out, d)
    base = os.path.splitext(out)[0]
    with open(base + ".md", "w") as f:
        f.write(markdown(d))
    try:
        plot(d, base + ".png")
    except Exception as e:
        print(f"# plot failed: {type(e).__name__}: {e}", file=sys.stderr)


def console_line(r):
    e = r["engines"]
    sp = r.get("speedup", {})
    cells = "".join(f"{_ms_cell(e.get(k)):>12}" for k in ENGINES)
    return (
        f"{r['model']:<13}{r['batch']:>4}{dens_cell(r['density']):>6}{cells}"
        f"{_f(sp.get('vs_best_dense_peer'), '{:.2f}'):>8}{_f(sp.get('vs_deepsparse'), '{:.2f}'):>8}"
        f"{_f(r.get('ideal'), '{:.2f}'):>8}{_f(r.get('max_rel_err'), '{:.1e}'):>10}"
        + (f"  FLAG {','.join(r['flagged'])}" if r.get("flagged") else "")
        + (f"  (contended: {','.join(r['contended'])})" if r.get("contended") else "")
    )


HEADER = (
    f"{'model':<13}{'b':>4}{'dens':>6}"
    + "".join(f"{k:>12}" for k in ENGINES)
    + f"{'vsDense':>8}{'vsDS':>8}{'ideal':>8}{'maxerr':>10}"
)


# ---------------------------------------------------------------------------- main
def main(argv=None):
    args = parse(argv)
    if args.report:
        with open(args.out) as f:
            d = json.load(f)
        for r in d["rows"]:
            derive(r, d.get("tol", args.tol))
        write_outputs(d, args.out)
        print(markdown(d))
        return
    import torch
    import tvm

    from benchmarks.peer_models import model_tag

    def log(s):
        print(s, flush=True)

    tag, mtag = source_hash(), model_tag()
    head = dict(
        threads=args.threads,
        tol=args.tol,
        contended_limit=args.contended,
        torch=torch.__version__,
        tvm=tvm.__version__,
        source_hash=tag,
        model_tag=mtag,
        machine=cpu_name(),
        uptime_start=common.uptime_line(),
        vgg_batch_instead_of_32=args.vgg_batch,
        protocol=(
            "each engine in its own fresh process, no TVM_* env, OMP_NUM_THREADS=threads; load, warm-up "
            "(>= 3 calls and 1 s), then lightning_gbd.core.timing.time_interleaved(per_call=True): ms = "
            "median of per-call wall times; rel_err = max|out - torch| / max|torch| on the same input"
        ),
    )
    rows = []
    if os.path.exists(args.out):  # keep the rows (and engines) of cases not re-run
        try:
            with open(args.out) as f:
                rows = json.load(f).get("rows", [])
        except (OSError, ValueError):
            rows = []
    cases = [
        (m, dn, args.vgg_batch if (m == "vgg16" and b == 32) else b)
        for m in args.models
        for dn in args.densities
        for b in args.batches
    ]
    cases = list(dict.fromkeys(cases))
    log(f"# peers: {len(cases)} cases x engines {','.join(args.engines)}; threads={args.threads}")
    log(f"# {head['uptime_start']}")
    log(HEADER)
    bar = common.progress(len(cases), "peers")
    t_start = time.time()
    prepared = {}
    for name, density, batch in cases:
        bar.set_postfix_str(f"{name} d{dens_str(density)} b{batch}")
        t0 = time.time()
        key = (name, density)
        if key not in prepared:
            prepared.clear()  # one model x density at a time (VGG-16's arrays / ONNX are large)
            want_onnx = any(e in PEER_ENGINES for e in args.engines)
            my_b = sorted({b for (m, dn, b) in cases if (m, dn) == key})
            prepared[key] = prepare_inputs(name, density, my_b, want_onnx, mtag, args.rebuild, log)
        prep = prepared[key]
        row = dict(model=name, density=density, batch=batch, input=[batch, 3, 224, 224], engines={}, exports={})
        old = next((r for r in rows if (r["model"], r["density"], r["batch"]) == (name, density, batch)), None)
        if old:
            row["engines"] = {k: v for k, v in old.get("engines", {}).items() if k not in args.engines}
            row["exports"] = {k: v for k, v in old.get("exports", {}).items() if k not in args.engines}
            row["flops_ratio"] = old.get("flops_ratio")
        jobs = []
        for eng in ENGINES:
            if eng not in args.engines:
                continue
            spec = dict(
                engine=eng,
                model=name,
                density=density,
                batch=batch,
                threads=args.threads,
                rounds=args.rounds,
                sample_ms=args.sample_ms,
                budget_s=args.budget,
                x=prep["x"][batch],
                ref=prep["ref"][batch],
            )
            python = sys.executable
            if eng in PEER_ENGINES:
                python = args.peers_python
                if prep["onnx_error"]:
                    row["engines"][eng] = {"skipped": prep["onnx_error"]}
                    continue
                spec["onnx"] = prep["onnx"]
            if eng.startswith("ours_"):
                try:
                    adir, man, cs, hit = ensure_export(
                        name, density, batch, eng == "ours_sparse", prep["x"][batch], tag, args.rebuild, log
                    )
                except Exception as e:
                    row["engines"][eng] = {"error": f"export failed: {type(e).__name__}: {e}"[:1000]}
                    continue
                tot = man["totals"]
                ver = man.get("verification") or {}
                row["exports"][eng] = dict(
                    dir=os.path.relpath(adir, common.ROOT),
                    compile_s=cs,
                    cached=hit,
                    gather_gemm_convs=tot.get("gather_gemm"),
                    dense_convs=tot.get("dense"),
                    winograd_convs=tot.get("winograd"),
                    input_maps_removed=tot.get("input_maps_removed"),
                    flops_dense=tot.get("flops_dense"),
                    flops_executed=tot.get("flops_executed"),
                    flops_ratio=tot.get("flops_ratio"),
                    verify_rel_err=ver.get("max_relative_error"),
                )
                if eng == "ours_sparse":
                    row["flops_ratio"] = tot.get("flops_ratio")
                spec["artifact"] = adir
            jobs.append((eng, python, spec))
        row["engines"].update(measure_engines(jobs, args))
        row["load_after"] = common.loadavg()
        row["wall_s"] = round(time.time() - t0, 1)
        derive(row, args.tol)
        rows = [r for r in rows if (r["model"], r["density"], r["batch"]) != (name, density, batch)] + [row]
        bar.update()
        bar.clear()
        log(console_line(row))
        for k, v in row["engines"].items():
            if k in args.engines and isinstance(v, dict) and ("skipped" in v or "error" in v):
                log(f"#   {k}: {'skipped' if 'skipped' in v else 'ERROR'}: {v.get('skipped') or v.get('error')}")
        write_outputs(dict(head, rows=rows), args.out)
    bar.close()
    head["uptime_end"] = common.uptime_line()
    head["wall_s"] = round(time.time() - t_start, 1)
    d = dict(head, rows=rows)
    write_outputs(d, args.out)
    log(f"# {head['uptime_end']}\n# wall {head['wall_s']} s; wrote {args.out} and its .md / .png\n")
    log(markdown(d))


if __name__ == "__main__":
    main()
