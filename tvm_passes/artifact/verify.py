"""Verification of a written artifact: the compiled model and PyTorch on the same random input."""

from __future__ import annotations

import numpy as np

from .loader import load

TOLERANCE = 1e-4

#: unit roundoff of the operands the conv / linear kernels multiply in each compute dtype
#: (round to nearest: 2^-(explicit mantissa bits + 1)); accumulation is float32 in all of them
UNIT_ROUNDOFF = {"float32": 2.0**-24, "tf32": 2.0**-11, "float16": 2.0**-11, "bfloat16": 2.0**-8}


#: int8 against its fake-quant reference: the same integers, but an activation that lands on a rounding
#: boundary can round the other way when the float sums before it differ in the last bit (one step of
#: that layer's scale), and through the layers such flips add up (measured values: docs/formulas.md
#: 5.5; 2e-2 rather than 1e-2 since VGG-16, 13 convs without batch norm, once measured 1.1e-2)
INT8_TOLERANCE = 2e-2


def tolerance(dtype: str = "float32") -> float:
    """Verification tolerance of a whole model (max|out - ref| / max|ref| against float32 PyTorch)
    whose kernels compute in ``dtype``: 1e-4 for float32; 20 u for the tensor-core dtypes (tf32 /
    float16 ~1e-2, bfloat16 ~7.8e-2).  One layer's error is ~u (operands rounded to relative u,
    float32 sums: the error of a length-K dot product is ~u sqrt(K) times the typical term, the
    sum itself ~sqrt(K) times it); through a network's depth it grows like a random walk, and the
    factor 20 covers ~25 layers with a 4x margin (docs/architecture.md)."""
    if dtype == "int8":
        return INT8_TOLERANCE
    return TOLERANCE if dtype == "float32" else 20 * UNIT_ROUNDOFF[dtype]


def kernel_tolerance(dtype: str = "float32") -> float:
    """Tolerance of one conv / linear kernel in ``dtype`` (the same metric): 4 u, 1e-4 for float32."""
    return TOLERANCE if dtype == "float32" else 4 * UNIT_ROUNDOFF[dtype]


def relative_error(out, ref) -> float:
    """max |out - ref| / max |ref| (norm-wise, stable where ref crosses zero)."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    denom = max(float(np.max(np.abs(ref))) if ref.size else 0.0, 1e-30)
    return float(np.max(np.abs(out - ref))) / denom if ref.size else 0.0


def _first(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def verify_artifact(
    out_dir, ep, input_shape, *, seed=0, tol=TOLERANCE, dtype="float32", reference=None, inputs=None
) -> dict:
    """Run the artifact in ``out_dir`` and ``ep`` (PyTorch) on the same random input (or the first
    ``input_shape[0]`` of ``inputs``, repeated if there are fewer).  ``reference``: another callable
    to compare with (the int8 export's fake-quant model); the error against ``ep`` is then reported
    too, as ``relative_error_vs_float32``."""
    import torch

    if inputs is not None:
        x = torch.from_numpy(np.resize(np.asarray(inputs, dtype=dtype), tuple(input_shape)))
        seed = None
    else:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(*input_shape, generator=gen).to(getattr(torch, dtype))
    with torch.no_grad():
        ref = _first(ep.module()(x))
    out = load(out_dir)(x.numpy())
    extra = {}
    if reference is not None:
        extra = {"relative_error_vs_float32": relative_error(out, ref.numpy()), "reference": "fake-quant model"}
        ref = _first(reference(x))
    err = relative_error(out, ref.numpy())
    return {
        **extra,
        "input_shape": list(input_shape),
        "seed": seed,
        "metric": "max|tvm - torch| / max|torch|",
        "max_relative_error": err,
        "max_abs_error": float(np.max(np.abs(np.asarray(out, np.float64) - ref.numpy().astype(np.float64)))),
        "tolerance": tol,
        "passed": bool(err <= tol),
    }
