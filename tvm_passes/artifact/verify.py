"""Verification of a written artifact: the compiled model and PyTorch on the same random input."""

from __future__ import annotations

import numpy as np

from .loader import load

TOLERANCE = 1e-4


def relative_error(out, ref) -> float:
    """max |out - ref| / max |ref| (norm-wise, stable where ref crosses zero)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    denom = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
    return float(np.max(np.abs(out - ref))) / denom if ref.size else 0.0


def verify_artifact(out_dir, ep, input_shape, *, seed=0, tol=TOLERANCE, dtype="float32") -> dict:
    """Run the artifact in ``out_dir`` and ``ep`` (PyTorch) on the same random input."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*input_shape, generator=gen).to(getattr(torch, dtype))
    with torch.no_grad():
        ref = ep.module()(x)
    if isinstance(ref, (tuple, list)):
        ref = ref[0]
    out = load(out_dir)(x.numpy())
    err = relative_error(out, ref.numpy())
    return {
        "input_shape": list(input_shape),
        "seed": seed,
        "metric": "max|tvm - torch| / max|torch|",
        "max_relative_error": err,
        "max_abs_error": float(np.max(np.abs(np.asarray(out, np.float64) - ref.numpy().astype(np.float64)))),
        "tolerance": tol,
        "passed": bool(err <= tol),
    }
