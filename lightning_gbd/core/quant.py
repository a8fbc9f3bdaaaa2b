"""INT8 post-training quantization maths (docs/formulas.md section 5): the one home of the
scales, zero points and rounding that the compile side's int8 kernels and their references use.

Weights: symmetric, per output channel, int8 in [-127, 127] (formula 5.1).  Activations (a conv's
input): asymmetric per tensor, uint8 in [0, 255] with a zero point (formula 5.2), from a range
observed on calibration data: its min / max, or a percentile of |x| that clips rare outliers
(formula 5.3).  Rounding is to nearest, ties to even (``np.rint``, what the kernels' ``vrndscale``
does).
"""

from __future__ import annotations

import numpy as np

#: the file a `gbd fit` run directory holds its calibration inputs in (``gbd calibration-set``)
RUN_CALIBRATION = "calibration.npy"
#: how an activation range is taken from the calibration data
METHODS = ("minmax", "percentile")
#: the percentile of the ``percentile`` method (of the values below 0 and above 0 separately)
DEFAULT_PERCENTILE = 99.99


def quantize_weight(weight) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 (formula 5.1): s_w[t] = max|W[t]| / 127,
    Wq = rint(W / s_w) in [-127, 127].  All-zero channels get s_w = 1 (and stay zero), so a
    pruned group stays exactly zero and GBD patterns are unchanged.

    >>> q, s = quantize_weight(np.array([[0.5, -1.0], [0.0, 0.0]], np.float32))
    >>> q.tolist(), s.tolist()
    ([[64, -127], [0, 0]], [0.007874015718698502, 1.0])
    """
    w = np.asarray(weight, dtype=np.float32)
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
    return q, scale


def activation_params(lo: float, hi: float) -> tuple[float, int]:
    """uint8 scale and zero point of the range [lo, hi] (formula 5.2), widened to contain 0 so the
    padding and pruned inputs are exact: s = (hi - lo) / 255, z = rint(-lo / s).  A post-ReLU
    input (lo = 0) gets z = 0 and all 256 levels for [0, hi].

    >>> activation_params(0.0, 2.55)
    (0.01, 0)
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zero = int(np.clip(np.rint(-lo / scale), 0, 255))
    return float(np.float32(scale)), zero


def quantize_activation(x, scale: float, zero: int) -> np.ndarray:
    """u8 = clamp(rint(x / s) + z, 0, 255) (formula 5.2), as the kernels' padded copy computes it:
    x times the float32 reciprocal of s."""
    inv = np.float32(1.0 / scale)
    return np.clip(np.rint(np.asarray(x, np.float32) * inv) + zero, 0, 255).astype(np.uint8)


def fake_quant_activation(x, scale: float, zero: int) -> np.ndarray:
    """x as the int8 kernels see it, back in float: s (u8(x) - z)."""
    return (quantize_activation(x, scale, zero).astype(np.float32) - zero) * np.float32(scale)


def fake_quant_weight(weight) -> np.ndarray:
    """W as the int8 kernels see it, back in float: s_w[t] Wq[t]."""
    q, s = quantize_weight(weight)
    return q.astype(np.float32) * s.reshape((-1,) + (1,) * (q.ndim - 1))


def requant_epilogue(weight_q, w_scale, x_scale: float, x_zero: int, bias=None) -> tuple[np.ndarray, np.ndarray]:
    """The epilogue's per-channel multiply and add (formula 5.4): out = C m[t] + a[t] with
    C = sum_k Wq[t, k] u8_k, m = s_x s_w[t], a = bias[t] - m z_x sum_k Wq[t, k]."""
    q = np.asarray(weight_q).reshape(len(w_scale), -1).astype(np.int64)
    m = (np.float64(x_scale) * np.asarray(w_scale, np.float64)).astype(np.float32)
    a = -m.astype(np.float64) * x_zero * q.sum(axis=1)
    if bias is not None:
        a = a + np.asarray(bias, np.float64).reshape(-1)
    return m, a.astype(np.float32)


class RangeObserver:
    """Running statistics of one tensor over the calibration batches: its min / max and, for the
    ``percentile`` method, a sample of values (at most ``max_samples``, evenly strided per batch).

    >>> ob = RangeObserver(); ob.update(np.array([-1.0, 0.5, 3.0])); ob.range("minmax")
    (-1.0, 3.0)
    """

    def __init__(self, max_samples: int = 1 << 20):
        self.lo, self.hi = np.inf, -np.inf
        self.samples: list[np.ndarray] = []
        self.max_samples = max_samples
        self.seen = 0

    def update(self, x) -> None:
        """Add a batch (leading axis: images).  The sample keeps max_samples / 64 values per image,
        drawn at random (seeded): the same sample size whatever the batch the inputs come in (a
        strided draw of a fixed count per batch kept 64x fewer values of a batch of 32, at the
        same pixels of every map, and moved the 99.99th percentile with the export's batch)."""
        x = np.asarray(x, dtype=np.float32)
        images = x.shape[0] if x.ndim > 1 else 1
        x = x.reshape(-1)
        if x.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        keep = max(1, self.max_samples // 64) * images
        if x.size > keep:
            x = x[np.random.default_rng(self.seen).choice(x.size, keep, replace=False)]
        self.samples.append(x.copy())
        self.seen += 1

    def range(self, method: str = "minmax", percentile: float = DEFAULT_PERCENTILE) -> tuple[float, float]:
        """(lo, hi) by ``method`` (formula 5.3): ``minmax``, or ``percentile``: the ``percentile``-th
        percentile of the positive values and of the magnitudes of the negative ones."""
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}: one of {', '.join(METHODS)}")
        if not self.seen:
            raise ValueError("no calibration data was observed")
        if method == "minmax":
            return self.lo, self.hi
        v = np.concatenate(self.samples)
        pos, neg = v[v > 0], -v[v < 0]
        hi = float(np.percentile(pos, percentile)) if pos.size else 0.0
        lo = -float(np.percentile(neg, percentile)) if neg.size else 0.0
        return lo, hi
