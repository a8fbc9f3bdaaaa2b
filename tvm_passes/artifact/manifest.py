"""The artifact's files and its ``manifest.json``: what was compiled, per-layer decisions, the
library's sha256 (checked by the loader), versions, and - once it ran - the verification."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os

LIB_NAME = "model.so"
MANIFEST = "manifest.json"
VERIFICATION = "verification.json"
FORMAT_VERSION = 1


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import tvm

    out = {"torch": torch.__version__, "tvm": tvm.__version__}
    try:
        out["lightning_gbd"] = version("lightning-gbd")
    except PackageNotFoundError:  # run from a source tree that is not installed
        out["lightning_gbd"] = "0.1.0"
    return out


def output_spec(ep) -> dict:
    """Shape / dtype of the (first) output of a static ExportedProgram."""
    for node in ep.graph.nodes:
        if node.op == "output":
            vals = node.args[0]
            val = vals[0] if isinstance(vals, (tuple, list)) else vals
            meta = getattr(val, "meta", {}).get("val")
            if meta is not None:
                shape = [d if isinstance(d, int) else "batch" for d in meta.shape]  # a SymInt: dynamic
                return {"shape": shape, "dtype": str(meta.dtype).replace("torch.", "")}
    return {}


def totals(convs: list, records: list) -> dict:
    fd = sum(r["flops_dense"] for r in records)
    fe = sum(r["flops_executed"] for r in records)
    return {
        "convs": len(convs),
        "gather_gemm": sum(1 for r in convs if r["decision"] == "gather-gemm"),
        "dense": sum(1 for r in convs if r["decision"] == "dense"),
        "winograd": sum(1 for r in convs if r["decision"] == "winograd"),
        "input_maps_removed": sum(r["dead_channels"]["input_maps_removed"] for r in convs),
        "output_maps_removed": sum(r["dead_channels"]["output_maps_removed"] for r in convs),
        "flops_dense": fd,
        "flops_executed": fe,
        "flops_ratio": (fe / fd) if fd else 1.0,
    }


def build_manifest(
    *, lib_path, target_spec, sparse, input_spec, output, records, decomposed, tuning, compile_seconds
) -> dict:
    convs = [r for r in records if r["op"] == "conv2d"]
    return {
        "format_version": FORMAT_VERSION,
        "library": os.path.basename(lib_path),
        "library_sha256": sha256_file(lib_path),
        "target": target_spec,
        "device": "cuda" if target_spec["kind"] == "cuda" else "cpu",
        "sparse": bool(sparse),
        "input": input_spec,
        "output": output,
        "convs": convs,
        "linears": [r for r in records if r["op"] == "linear"],
        "decomposed": decomposed,
        "totals": totals(convs, records),
        "tuning": tuning,
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "compile_seconds": round(compile_seconds, 3),
    }


def write_json(path, obj) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
