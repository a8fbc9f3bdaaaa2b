"""INT8 against INT8 (issue 14): our int8 export of a sparsified CNN against the peers' int8 paths.

Usage (repository root; the peers need `make peers-venv` first, see benchmarks/README.md):
    .venv/bin/python -m benchmarks.peers_int8                 # ResNet-18 + VGG-16 (`make bench-peers-int8`)
    .venv/bin/python -m benchmarks.peers_int8 --models resnet18 --batches 1      # a first look
    .venv/bin/python -m benchmarks.peers_int8 --dry-run       # the plan, nothing timed / exported
    .venv/bin/python -m benchmarks.peers_int8 --report        # md again from the json

Models, patterns, inputs, threads, timing and the per-engine fresh processes are those of
``benchmarks/peers.py`` (whose helpers this reuses): torchvision ResNet-18 / VGG-16 with random
GBD groups zeroed at density 0.3, batch 1 and 32 (VGG-16: 1 and 8), 2 threads, median of
per-call wall times (``lightning_gbd.core.timing.time_interleaved``).

Calibration, shared by every engine: ``calibration_array()`` = 64 standard-normal float32 inputs
(64, 3, 224, 224), numpy ``default_rng(7)``, saved once in the cache as a .npy.

Engines, each in its own fresh process (``benchmarks/peer_worker.py``):
  ours_sparse       float32: tvm_passes.export_model(model, x, "llvm", dir, sparse=True) (peers.py's export)
  ours_int8         tvm_passes.export.export_model(..., sparse=True, dtype="int8", calibration=cal):
                    every conv in int8 (AVX-512 VNNI), loaded by tvm_passes.load like the float32 one
  onnxruntime_int8  ORT static QDQ quantization of peers.py's sparse ONNX file (quant_pre_process, then
                    quantize_static(QDQ, per_channel, activations QUInt8, weights QInt8), MinMax
                    calibration on the 64 inputs), run on the CPU provider
  openvino_int8     NNCF post-training quantization (nncf.quantize(ov_model, nncf.Dataset(cal),
                    subset_size=64)) of the OpenVINO model read from the same float ONNX, saved as IR;
                    compiled with INFERENCE_NUM_THREADS=2, PERFORMANCE_HINT=LATENCY (no precision hint)
  deepsparse_int8   DeepSparse on the ORT QDQ file (compile_model(path, batch_size=B, num_cores=2))
The two peer quantizations run once per model x density in a subprocess (``python -m
benchmarks.peers_int8 --quantize SPEC``), cached in ``<cache>/<model>_d<density>/int8/``: NNCF
in the peers venv, ONNX Runtime's tool in ``.venv-peers/quant`` (--quant-python;
benchmarks/requirements-peers-quant.txt): onnxruntime 1.32's quantization package needs
onnx >= 1.16, deepsparse 1.8 in the peers venv pins onnx < 1.15.

Output check: each engine against PyTorch float32 eager on the timed input, max|a-b| / max|b|,
flagged above --tol (0.1: int8 engines differ by a few per cent).  Reported per model x batch:
ms per engine and the ratios of the issue's targets: ours_int8 over ours_sparse (>= 2.5x), over
deepsparse_int8 (>= 1.5x), over the faster of onnxruntime_int8 / openvino_int8 (>= 2x).
Writes benchmarks/results/peers_int8.json (rows of cases not re-run are kept) and peers_int8.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time

from benchmarks import common, peers
from benchmarks.peer_models import INPUT_SHAPE, MODELS

CACHE = peers.CACHE
ENGINES = ("ours_sparse", "ours_int8", "onnxruntime_int8", "openvino_int8", "deepsparse_int8")
PEER_ENGINES = ("onnxruntime_int8", "openvino_int8", "deepsparse_int8")  # run by the peers venv's python
INT8_PEERS = ("onnxruntime_int8", "openvino_int8")  # "the faster of" for the 2x target
LABEL = {
    "ours_sparse": "ours sparse f32",
    "ours_int8": "ours int8",
    "onnxruntime_int8": "ONNX Runtime int8",
    "openvino_int8": "OpenVINO int8",
    "deepsparse_int8": "DeepSparse int8",
}
SHORT = {
    "ours_sparse": "ours f32",
    "ours_int8": "ours int8",
    "onnxruntime_int8": "ORT",
    "openvino_int8": "OV",
    "deepsparse_int8": "DS",
}
#: speed-up of ours_int8 the issue asks for, per ratio
TARGETS = {"vs_ours_sparse": 2.5, "vs_deepsparse_int8": 1.5, "vs_best_int8_peer": 2.0}
TARGET_LABEL = {
    "vs_ours_sparse": "int8 vs ours f32",
    "vs_deepsparse_int8": "vs DeepSparse int8",
    "vs_best_int8_peer": "vs best of ORT / OV int8",
}
CAL_N, CAL_SEED = 64, 7
#: changes whenever the peers' quantization recipe below changes (part of their cache key)
PEER_RECIPE = (
    "ort: quant_pre_process + quantize_static(QDQ, per_channel, QUInt8 act, QInt8 w, MinMax, batch-1 reader), "
    "unused opset imports dropped; "
    "ov: read_model(onnx), reshape batch 1, nncf.quantize(subset_size=n), save_model(compress_to_fp16=False)"
)
QUANT_KINDS = {"onnxruntime_int8": "ort", "openvino_int8": "ov", "deepsparse_int8": "ort"}
QUANT_FILE = {"ort": "model_qdq.onnx", "ov": "model_nncf.xml"}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,vgg16")
    ap.add_argument("--densities", default="0.3")
    ap.add_argument("--batches", default="1,32")
    peers.add_run_args(ap, ENGINES)
    ap.add_argument("--tol", type=float, default=0.1, help="flag outputs whose relative error exceeds this")
    ap.add_argument(
        "--quant-python",
        default=os.path.join(common.ROOT, ".venv-peers", "quant", "bin", "python"),
        help="python with onnxruntime's quantization tool (benchmarks/requirements-peers-quant.txt)",
    )
    ap.add_argument(
        "--quantize-timeout", type=float, default=3600.0, help="seconds before a peer quantization is killed"
    )
    ap.add_argument("--rebuild", action="store_true", help="re-export / re-quantize everything")
    ap.add_argument("--dry-run", action="store_true", help="check the arguments, print the plan; nothing timed")
    ap.add_argument("--report", action="store_true", help="no runs: write the md again from --out")
    ap.add_argument("--out", default=os.path.join(common.RESULTS, "peers_int8.json"))
    args = ap.parse_args(argv)
    try:
        args.densities = [float(d) for d in args.densities.split(",")]
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError as e:
        ap.error(f"--densities / --batches: {e}")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.engines = [e.strip() for e in args.only_engines.split(",") if e.strip()]
    bad = [m for m in args.models if m not in MODELS] + [e for e in args.engines if e not in ENGINES]
    if bad:
        ap.error(f"unknown model / engine: {', '.join(bad)} (models {', '.join(MODELS)}; engines {', '.join(ENGINES)})")
    if not args.models or not args.engines or not args.batches or not args.densities:
        ap.error("empty --models / --only-engines / --batches / --densities")
    if any(not 0 < d <= 1 for d in args.densities) or any(b < 1 for b in args.batches) or args.threads < 1:
        ap.error("densities must lie in (0, 1], batches and --threads be >= 1")
    return args


def cases_of(args):
    cases = [
        (m, dn, args.vgg_batch if (m == "vgg16" and b == 32) else b)
        for m in args.models
        for dn in args.densities
        for b in args.batches
    ]
    return list(dict.fromkeys(cases))


# ---------------------------------------------------------------------------- calibration
def calibration_array(n=CAL_N, seed=CAL_SEED):
    """The calibration inputs every engine gets: (n, 3, 224, 224) standard normal float32, rng ``seed``."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, *INPUT_SHAPE)).astype(np.float32)


def cpu_int8_features():
    """The CPU's int8 / bf16 matrix features (/proc/cpuinfo flags): VNNI is what our int8 kernels use,
    AMX what OpenVINO's can use on top."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        flags = []
    return [f for f in ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if f in flags]


def calibration_path():
    return os.path.join(CACHE, f"calibration_n{CAL_N}_seed{CAL_SEED}.npy")


def ensure_calibration():
    """The .npy of ``calibration_array()`` in the cache (written once); returns (path, sha256[:12])."""
    import numpy as np

    p = calibration_path()
    if not os.path.exists(p):
        os.makedirs(CACHE, exist_ok=True)
        np.save(p + ".tmp.npy", calibration_array())
        os.replace(p + ".tmp.npy", p)
    with open(p, "rb") as f:
        return p, hashlib.sha256(f.read()).hexdigest()[:12]


# ---------------------------------------------------------------------------- our int8 export
def ensure_int8_export(name, density, batch, x_path, cal_path, tag, rebuild, log):
    """Our int8 artifact of model x density x batch (sparse=True, dtype="int8"), exported if not cached."""
    import numpy as np
    import torch

    from benchmarks.peer_models import build_model
    from tvm_passes.export import export_model

    d = os.path.join(CACHE, f"{name}_d{peers.dens_str(density)}_b{batch}_int8")
    stamp = os.path.join(d, "bench_stamp.json")
    man_p = os.path.join(d, "manifest.json")
    if not rebuild and os.path.exists(man_p) and peers._stamp_ok(stamp, tag):
        with open(man_p) as f:
            man = json.load(f)
        with open(stamp) as f:
            return d, man, json.load(f).get("compile_s"), True
    model = build_model(name, density)
    x = torch.from_numpy(np.load(x_path, allow_pickle=False))
    cal = np.load(cal_path, allow_pickle=False)
    t0 = time.time()
    man = export_model(model, x, "llvm", d, sparse=True, dtype="int8", calibration=cal)
    cs = round(time.time() - t0, 1)
    peers._write_stamp(stamp, tag=tag, compile_s=cs)
    log(
        f"#   {name} d{peers.dens_str(density)} b{batch} ours_int8: exported in {cs} s, "
        f"{int8_convs(man)} of {man['totals'].get('convs')} convs in int8"
    )
    time.sleep(0.5)  # let this process's TVM pool threads go idle before a worker is timed
    return d, man, cs, False


def int8_convs(man):
    return sum(1 for c in man.get("convs") or [] if isinstance(c, dict) and c.get("compute_dtype") == "int8")


def export_info(adir, man, cs, hit):
    tot = man.get("totals", {})
    ver = man.get("verification") or {}
    info = dict(
        dir=os.path.relpath(adir, common.ROOT),
        compile_s=cs,
        cached=hit,
        compute_dtype=man.get("compute_dtype"),
        gather_gemm_convs=tot.get("gather_gemm"),
        dense_convs=tot.get("dense"),
        flops_ratio=tot.get("flops_ratio"),
        verify_rel_err=ver.get("max_relative_error"),
    )
    if man.get("compute_dtype") == "int8":
        info["int8_convs"] = int8_convs(man)
    return info


# ---------------------------------------------------------------------------- peer quantization
def quantize_ort(src, out, cal):
    """Static QDQ quantization of ``src`` with ONNX Runtime (runs in the peers venv)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    notes = []
    model_in = out + ".pre.onnx"
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(src, model_in)
        notes.append("quant_pre_process applied")
    except Exception as e:
        model_in = src
        notes.append(f"quant_pre_process failed, quantized the raw ONNX: {type(e).__name__}: {e}"[:300])
    name = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(cal):
                return None
            self.i += 1
            return {name: cal[self.i - 1 : self.i]}

        def rewind(self):
            self.i = 0

    quantize_static(
        model_in,
        out + ".tmp.onnx",
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    # quant_pre_process's optimizer stamps every domain ORT knows (ai.onnx.ml 5, com.microsoft, ...);
    # DeepSparse's ORT refuses ai.onnx.ml 5: keep the default domain and the domains a node uses
    import onnx

    m = onnx.load(out + ".tmp.onnx")
    used = {n.domain for n in m.graph.node} | {""}
    keep = [o for o in m.opset_import if o.domain in used]
    if len(keep) < len(m.opset_import):
        notes.append(f"opset imports of unused domains dropped: {len(m.opset_import) - len(keep)}")
        del m.opset_import[:]
        m.opset_import.extend(keep)
        onnx.save(m, out + ".tmp.onnx")
    os.replace(out + ".tmp.onnx", out)
    if model_in != src and os.path.exists(model_in):
        os.remove(model_in)
    return dict(version=f"onnxruntime {ort.__version__}", notes=notes)


def quantize_ov(src, out, cal):
    """NNCF post-training quantization of the OpenVINO model of ``src``, saved as IR (peers venv)."""
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(src)
    model.reshape({model.inputs[0].get_any_name(): [1, *cal.shape[1:]]})  # the worker reshapes to its batch
    q = nncf.quantize(model, nncf.Dataset([cal[i : i + 1] for i in range(len(cal))]), subset_size=len(cal))
    tmp = out[: -len(".xml")] + ".tmp.xml"
    ov.save_model(q, tmp, compress_to_fp16=False)
    os.replace(tmp[: -len(".xml")] + ".bin", out[: -len(".xml")] + ".bin")
    os.replace(tmp, out)
    return dict(version=f"openvino {ov.__version__.split('-')[0]}, nncf {nncf.__version__}", notes=[])


def quantize_main(spec_json):
    """``python -m benchmarks.peers_int8 --quantize SPEC``: one peer quantization; prints one JSON line."""
    import numpy as np

    from benchmarks import peer_worker  # stdlib only: importable by the quantization venv

    spec = json.loads(spec_json)
    t0 = time.time()
    try:
        cal = np.load(spec["calibration"], allow_pickle=False)
        fn = {"ort": quantize_ort, "ov": quantize_ov}[spec["kind"]]
        res = dict(fn(spec["onnx"], spec["out"], cal), path=spec["out"], seconds=round(time.time() - t0, 1))
        code = 0
    except ImportError as e:
        res, code = {"skipped": f"not importable by {sys.executable}: {e}"}, 0
    except Exception as e:
        res, code = peer_worker.error_result(e), 1
    return peer_worker.reply(res, code)


def run_quantizer(python, spec, threads, timeout):
    """One fresh peers-venv process of ``quantize_main``; its JSON line, or {"error"} / {"skipped"}."""
    if not os.path.exists(python):
        return {"skipped": f"{python} missing: run `make peers-venv` (benchmarks/requirements-peers.txt)"}
    try:
        r = subprocess.run(
            [python, "-m", "benchmarks.peers_int8", "--quantize", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=peers.worker_env(threads),
            cwd=common.ROOT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"quantization timed out after {timeout:.0f} s"}
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    tail = (r.stderr.strip().splitlines() or ["(no output)"])[-3:]
    return {"error": f"quantizer exited {r.returncode} without a result: {' | '.join(tail)}"[:1000]}


def quant_python(kind, args):
    return args.quant_python if kind == "ort" else args.peers_python


def ensure_peer_int8(prep, kinds, cal_path, cal_hash, mtag, args, log):
    """The peers' int8 models of one model x density: {"ort"/"ov": {"path", ...} or {"error"/"skipped"}}."""
    d = os.path.join(prep["dir"], "int8")
    os.makedirs(d, exist_ok=True)
    out = {}
    for kind in kinds:
        path = os.path.join(d, QUANT_FILE[kind])
        stamp = os.path.join(d, f"stamp_{kind}.json")
        py = quant_python(kind, args)
        tag = hashlib.sha256(f"{mtag}|{cal_hash}|{PEER_RECIPE}|{py}".encode()).hexdigest()[:12]
        if not args.rebuild and os.path.exists(path) and peers._stamp_ok(stamp, tag):
            with open(stamp) as f:
                out[kind] = dict(json.load(f).get("result", {}), path=path, cached=True)
            continue
        if prep["onnx_error"]:
            out[kind] = {"skipped": prep["onnx_error"]}
            continue
        spec = dict(kind=kind, onnx=prep["onnx"], out=path, calibration=cal_path)
        res = run_quantizer(py, spec, args.threads, args.quantize_timeout)
        if "path" in res:
            peers._write_stamp(stamp, tag=tag, result={k: v for k, v in res.items() if k != "path"})
            log(f"#   {os.path.basename(prep['dir'])}: {kind} int8 model in {res.get('seconds')} s ({res['version']})")
            res["cached"] = False
        out[kind] = res
    return out


# ---------------------------------------------------------------------------- derived numbers
def derive(row, tol):
    """Speed-ups of ours_int8, target flags, error flags of one row (in place)."""
    eng = row["engines"]

    def ms(e):
        v = eng.get(e) or {}
        return v.get("ms")

    int8_peers = {e: ms(e) for e in INT8_PEERS if ms(e)}
    best = min(int8_peers, key=int8_peers.get) if int8_peers else None
    row["best_int8_peer"] = best
    ours = ms("ours_int8")
    sp = {}
    if ours:
        if ms("ours_sparse"):
            sp["vs_ours_sparse"] = ms("ours_sparse") / ours
        if ms("deepsparse_int8"):
            sp["vs_deepsparse_int8"] = ms("deepsparse_int8") / ours
        if best:
            sp["vs_best_int8_peer"] = int8_peers[best] / ours
    row["speedup"] = sp
    row["target_met"] = {k: v >= TARGETS[k] for k, v in sp.items() if k in TARGETS}
    errs = {e: v["rel_err"] for e, v in eng.items() if isinstance(v, dict) and v.get("rel_err") is not None}
    row["max_rel_err"] = max(errs.values()) if errs else None
    row["flagged"] = sorted(e for e, v in errs.items() if not (v <= tol))  # nan / inf flagged too
    row["contended"] = sorted(e for e, v in eng.items() if isinstance(v, dict) and v.get("contended"))
    return row


def _ratio_cell(row, k):
    v = row.get("speedup", {}).get(k)
    if v is None:
        return "-"
    return f"{v:.2f}x " + ("✓" if v >= TARGETS[k] else "✗")


def _errs_cell(row, tol):
    errs = [
        f"{SHORT[k]} {row['engines'][k]['rel_err']:.1e}"
        for k in ENGINES
        if isinstance(row["engines"].get(k), dict) and row["engines"][k].get("rel_err") is not None
    ]
    cell = ", ".join(errs) or "-"
    if row.get("flagged"):
        cell += f" (**> {tol:g}: {', '.join(LABEL[x] for x in row['flagged'])}**)"
    return cell


def markdown(d):
    rows = sorted(
        d["rows"], key=lambda r: (MODELS.index(r["model"]) if r["model"] in MODELS else 99, r["batch"], -r["density"])
    )
    tol = d.get("tol", 0.1)
    lines = [
        f"Median per-call ms, {d.get('threads', 2)} threads, each engine in its own fresh process "
        f"(`benchmarks/peers_int8.py`; {d.get('machine', '')}; "
        f"{', '.join(d.get('cpu_int8_features') or ['no VNNI / AMX flags'])}).  "
        "Ratios: ms of the other engine over ms of ours int8, ✓ where the issue's target is met (int8 vs our "
        "float32 sparse export >= 2.5x, vs DeepSparse int8 >= 1.5x, vs the faster of ONNX Runtime / OpenVINO "
        "int8 >= 2x).  Rel. err = max|out - PyTorch f32| / max|PyTorch f32| on the timed input.",
        "",
        f"Command: `{d.get('command', 'python -m benchmarks.peers_int8')}`",
        "",
        "| model | batch | density | "
        + " | ".join(LABEL[k] for k in ENGINES)
        + " | "
        + " | ".join(TARGET_LABEL[k] for k in TARGETS)
        + " | rel. err |",
        "|---" * (3 + len(ENGINES) + len(TARGETS) + 1) + "|",
    ]
    notes = []
    for r in rows:
        e = r["engines"]
        lines.append(
            f"| {r['model']} | {r['batch']} | {peers.dens_cell(r['density'])} | "
            + " | ".join(peers._ms_cell(e.get(k)) for k in ENGINES)
            + " | "
            + " | ".join(_ratio_cell(r, k) for k in TARGETS)
            + f" | {_errs_cell(r, tol)} |"
        )
        for k in ENGINES:
            v = e.get(k)
            if isinstance(v, dict) and ("skipped" in v or "error" in v):
                notes.append(f"{LABEL[k]}: {v.get('skipped') or v.get('error')}")
    if any(r.get("contended") for r in rows):
        notes.append(
            "† timed while other processes kept more than "
            f"{d.get('contended_limit', 0.25):g} cores busy (foreign_cpu + steal_cpu in the json), after every retry"
        )
    if notes:
        lines.append("")
        lines += [f"* {n}" for n in sorted(set(notes))]
    return "\n".join(lines) + "\n"


def write_outputs(d, out):
    common.write_json(out, d)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(d))


HEADER = (
    f"{'model':<10}{'b':>4}{'dens':>6}"
    + "".join(f"{k:>18}" for k in ENGINES)
    + "".join(f"{k:>20}" for k in TARGETS)
    + f"{'maxerr':>10}"
)


def console_line(r):
    e = r["engines"]
    return (
        f"{r['model']:<10}{r['batch']:>4}{peers.dens_cell(r['density']):>6}"
        + "".join(f"{peers._ms_cell(e.get(k)):>18}" for k in ENGINES)
        + "".join(f"{_ratio_cell(r, k):>20}" for k in TARGETS)
        + f"{peers._f(r.get('max_rel_err'), '{:.1e}'):>10}"
        + (f"  FLAG {','.join(r['flagged'])}" if r.get("flagged") else "")
        + (f"  (contended: {','.join(r['contended'])})" if r.get("contended") else "")
    )


# ---------------------------------------------------------------------------- dry run
def _peer_modules(python, mods):
    """{module: importable?} of a venv, by find_spec (nothing imported), or a reason string."""
    if not os.path.exists(python):
        return f"{python} missing: run `make peers-venv`"
    code = (
        "import importlib.util as u, json; "
        f"print(json.dumps({{m: u.find_spec(m) is not None for m in {tuple(mods)!r}}}))"
    )
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout.strip().splitlines()[-1])
    except Exception as e:
        return f"{python} failed: {type(e).__name__}: {e}"


def dry_run(args, cmd):
    cases = cases_of(args)
    print(f"# peers_int8 --dry-run: {len(cases)} cases x engines {','.join(args.engines)}; threads={args.threads}")
    print(f"# command: {cmd}")
    print(f"# calibration: {CAL_N} x {INPUT_SHAPE} standard normal float32, seed {CAL_SEED} -> {calibration_path()}")
    if any(e in PEER_ENGINES for e in args.engines):
        for what, py, mods in (
            ("peers venv", args.peers_python, ("onnxruntime", "openvino", "nncf", "deepsparse")),
            ("ORT quantization venv", args.quant_python, ("onnxruntime", "onnx", "ml_dtypes", "sympy")),
        ):
            got = _peer_modules(py, mods)
            if isinstance(got, dict):
                print(f"# {what} {py}: " + ", ".join(f"{m} {'ok' if ok else 'MISSING'}" for m, ok in got.items()))
            else:
                print(f"# {what}: {got} (the engines that need it will be reported as skipped)")
    for name, density, batch in cases:
        base = os.path.join(CACHE, f"{name}_d{peers.dens_str(density)}")
        for eng in ENGINES:
            if eng not in args.engines:
                continue
            if eng == "ours_sparse":
                what = f"{base}_b{batch}_sparse"
            elif eng == "ours_int8":
                what = f"{base}_b{batch}_int8"
            else:
                what = os.path.join(base, "int8", QUANT_FILE[QUANT_KINDS[eng]])
            have = "cached" if os.path.exists(what) else "to build"
            rel = os.path.relpath(what, common.ROOT)
            print(f"{name:<10} d{peers.dens_str(density):<5} b{batch:<4} {eng:<18} {have:<9} {rel}")
    print(f"# would write {args.out} and {os.path.splitext(args.out)[0]}.md; nothing was timed")


# ---------------------------------------------------------------------------- main
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--quantize"]:
        return quantize_main(argv[1])
    args = parse(argv)
    cmd = "python -m benchmarks.peers_int8" + (" " + shlex.join(argv) if argv else "")
    if args.dry_run:
        dry_run(args, cmd)
        return 0
    if args.report:
        with open(args.out) as f:
            d = json.load(f)
        for r in d["rows"]:
            derive(r, d.get("tol", args.tol))
        write_outputs(d, args.out)
        print(markdown(d))
        return 0
    import torch
    import tvm

    from benchmarks.peer_models import model_tag

    def log(s):
        print(s, flush=True)

    tag, mtag = peers.source_hash(), model_tag()
    cal_path, cal_hash = ensure_calibration()
    head = dict(
        command=cmd,
        threads=args.threads,
        tol=args.tol,
        contended_limit=args.contended,
        targets=TARGETS,
        torch=torch.__version__,
        tvm=tvm.__version__,
        source_hash=tag,
        model_tag=mtag,
        calibration=dict(
            path=os.path.relpath(cal_path, common.ROOT),
            shape=[CAL_N, *INPUT_SHAPE],
            seed=CAL_SEED,
            sha256_12=cal_hash,
            what="numpy default_rng(seed).standard_normal, float32",
        ),
        peer_recipe=PEER_RECIPE,
        machine=peers.cpu_name(),
        cpu_int8_features=cpu_int8_features(),
        uptime_start=common.uptime_line(),
        vgg_batch_instead_of_32=args.vgg_batch,
        protocol=(
            "each engine in its own fresh process, no TVM_* env, OMP_NUM_THREADS=threads; load, warm-up "
            "(>= 3 calls and 1 s), then lightning_gbd.core.timing.time_interleaved(per_call=True): ms = "
            "median of per-call wall times; rel_err = max|out - torch f32| / max|torch f32| on the same input"
        ),
    )
    rows = []
    if os.path.exists(args.out):  # keep the rows (and engines) of cases not re-run
        try:
            with open(args.out) as f:
                rows = json.load(f).get("rows", [])
        except (OSError, ValueError):
            rows = []
    cases = cases_of(args)
    log(f"# peers_int8: {len(cases)} cases x engines {','.join(args.engines)}; threads={args.threads}")
    log(f"# {head['uptime_start']}")
    log(HEADER)
    t_start = time.time()
    prepared, quantized = {}, {}
    for name, density, batch in cases:
        t0 = time.time()
        key = (name, density)
        if key not in prepared:
            prepared.clear()  # one model x density at a time (VGG-16's arrays / ONNX are large)
            quantized.clear()
            want_onnx = any(e in PEER_ENGINES for e in args.engines)
            my_b = sorted({b for (m, dn, b) in cases if (m, dn) == key})
            prepared[key] = peers.prepare_inputs(name, density, my_b, want_onnx, mtag, args.rebuild, log)
            kinds = sorted({QUANT_KINDS[e] for e in args.engines if e in PEER_ENGINES})
            quantized = ensure_peer_int8(prepared[key], kinds, cal_path, cal_hash, mtag, args, log)
        prep = prepared[key]
        row = dict(model=name, density=density, batch=batch, input=[batch, *INPUT_SHAPE], engines={}, exports={})
        old = next((r for r in rows if (r["model"], r["density"], r["batch"]) == (name, density, batch)), None)
        if old:
            row["engines"] = {k: v for k, v in old.get("engines", {}).items() if k not in args.engines}
            row["exports"] = {k: v for k, v in old.get("exports", {}).items() if k not in args.engines}
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
                q = quantized.get(QUANT_KINDS[eng], {})
                if "path" not in q:
                    why = q.get("skipped") or q.get("error") or "no quantized model"
                    row["engines"][eng] = {"skipped" if "skipped" in q else "error": f"quantization: {why}"}
                    continue
                spec["onnx"] = q["path"]
                row["exports"][eng] = {k: v for k, v in q.items() if k != "path"}
                row["exports"][eng]["file"] = os.path.relpath(q["path"], common.ROOT)
            else:
                try:
                    if eng == "ours_sparse":
                        adir, man, cs, hit = peers.ensure_export(
                            name, density, batch, True, prep["x"][batch], tag, args.rebuild, log
                        )
                    else:
                        int8_tag = f"{tag}|cal={cal_hash}"
                        adir, man, cs, hit = ensure_int8_export(
                            name, density, batch, prep["x"][batch], cal_path, int8_tag, args.rebuild, log
                        )
                except Exception as e:
                    row["engines"][eng] = {"error": f"export failed: {type(e).__name__}: {e}"[:1000]}
                    continue
                row["exports"][eng] = export_info(adir, man, cs, hit)
                spec["artifact"] = adir
            jobs.append((eng, python, spec))
        row["engines"].update(peers.measure_engines(jobs, args))
        row["load_after"] = common.loadavg()
        row["wall_s"] = round(time.time() - t0, 1)
        derive(row, args.tol)
        rows = [r for r in rows if (r["model"], r["density"], r["batch"]) != (name, density, batch)] + [row]
        log(console_line(row))
        for k, v in row["engines"].items():
            if k in args.engines and isinstance(v, dict) and ("skipped" in v or "error" in v):
                log(f"#   {k}: {'skipped' if 'skipped' in v else 'ERROR'}: {v.get('skipped') or v.get('error')}")
        write_outputs(dict(head, rows=rows), args.out)
    head["uptime_end"] = common.uptime_line()
    head["wall_s"] = round(time.time() - t_start, 1)
    d = dict(head, rows=rows)
    write_outputs(d, args.out)
    log(f"# {head['uptime_end']}\n# wall {head['wall_s']} s; wrote {args.out} and its .md\n")
    log(markdown(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
