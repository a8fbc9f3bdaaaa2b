"""Per-conv choice between the dense im2col GEMM and the GBD gather-GEMM, and the threshold at which
LowRankConv replaces a conv by a decomposed pair.

Paper 000 section 3 / docs/formulas.md section 1 (eq. 1.4 for the FLOPs): the lowered conv does ``F @ P`` with
``K = sum_s |Omega_s|`` rows of P instead of ``S * kh * kw``, so the useful work scales with
the density tau.  The gather has a fixed overhead (offset tables, irregular reads), so near
tau = 1 or for tiny layers the dense GEMM wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lightning_gbd.core.groups import conv_flops, density, group_mask

#: above this density the dense path is used.  Measured on this project's CPU
#: (``python -m benchmarks.conv_speed --densities 1.0,0.95,0.9,0.85,0.8,0.7 --batches 1,32
#: --no-lowrank --out benchmarks/results/cost_crossover.json``): on every shape and batch the
#: gather-GEMM at density 0.95 beat the dense GEMM of the same library by 1-7%; at 1.0 the two tie
#: (0.95-1.01x).  The gather's fixed cost is small because both kernels gather rows; the earlier
#: 0.8 kept the dense GEMM where the gather was 7-30% faster.
DENSE_DENSITY = 0.95
#: LowRankConv decomposes a conv only where the pair does at most this fraction of its FLOPs
#: (``core.lowrank.live_pair_flop_ratio``, docs/formulas.md eq. 3.5): two kernels, an
#: intermediate map written and read again and a second epilogue cost more than their FLOPs.
#: Measured (``python -m benchmarks.conv_speed --full --lowrank-only --only resnet18 --batches 1,32
#: --pair-ratios 1.0,0.85,0.7,0.55 --out benchmarks/results/lowrank_crossover.json``): against our
#: dense conv the pair ran 0.84-0.93x at ratio 1.0, 0.91-1.15x at 0.85 (slower on 2 of 8 shape x
#: batch cases) and 1.18-1.29x at 0.7, so the old rule (ratio < 1) chose pairs up to 16% slower.
MAX_PAIR_FLOP_RATIO = 0.75
#: layers below this many dense FLOPs are not worth a specialised gather
TINY_FLOPS = 2.0e5
#: reduction length (C/groups * kh * kw) below which gathering saves nothing
TINY_K = 16


@dataclass
class ConvDecision:
    decision: str  # "dense" | "gather-gemm" | "winograd"
    density: float
    flops_dense: int
    flops_executed: int
    reason: str

    def as_dict(self):
        return asdict(self)


def decide(data_shape, weight: np.ndarray, out_shape, groups: int = 1, sparse: bool = True) -> ConvDecision:
    """Dense vs gather-GEMM for one conv, with the reason recorded in the manifest."""
    tau = density(group_mask(weight, groups))
    fd = conv_flops(weight.shape, out_shape[2:], groups, batch=data_shape[0])
    fs = int(round(fd * tau))
    k = int(np.prod(weight.shape[1:]))
    if not sparse:
        return ConvDecision("dense", tau, fd, fd, "sparse=False: every conv forced to the dense im2col GEMM")
    if tau > DENSE_DENSITY:
        return ConvDecision(
            "dense",
            tau,
            fd,
            fd,
            f"density {tau:.3f} > {DENSE_DENSITY}: the gather saves too little to measure (cost_crossover.json)",
        )
    if fd < TINY_FLOPS:
        return ConvDecision("dense", tau, fd, fd, f"tiny layer ({fd} FLOPs < {TINY_FLOPS:.0f})")
    if k < TINY_K:
        return ConvDecision("dense", tau, fd, fd, f"reduction length C/g*kh*kw = {k} < {TINY_K}")
    return ConvDecision(
        "gather-gemm",
        tau,
        fd,
        fs,
        f"density {tau:.3f} <= {DENSE_DENSITY}: gather-GEMM does {tau:.0%} of the dense FLOPs "
        f"(ideal speed-up {1 / max(tau, 1e-9):.1f}x)",
    )


def depthwise(dec: ConvDecision) -> ConvDecision:
    """The decision of a depthwise conv run by the direct kernel (kernels/depthwise.py): every tap,
    zero GBD taps included, so the dense FLOPs (a group of one filter row has no GEMM to thin)."""
    return ConvDecision(
        "dense", dec.density, dec.flops_dense, dec.flops_dense, "depthwise conv: the direct kernel, every tap"
    )


#: Winograd F(4x4, 3x3) replaces the dense GEMM of a 3x3 stride-1 conv with at least this many
#: input maps (fewer make a 36-group GEMM too short to run near peak: a network's first conv)
WINOGRAD_MIN_MAPS = 16
#: ... and at least this many 4 x 4 output tiles per call (per image for a symbolic batch):
#: the transformed filters are 4x the conv's, read once per call, so a GEMM over few tiles is
#: bound by reading them (ad-hoc, ResNet-18 at batch 1: 7x7 maps, 4 tiles, 2.2 ms per conv
#: against 1.4 ms dense; 14x14 maps, 16 tiles, 0.65 against 1.27)
WINOGRAD_MIN_TILES = 16
#: ... and replaces a gather-GEMM above this density: the gather costs about tau of the dense GEMM
#: (``DENSE_DENSITY``), Winograd 0.65 of it or less on ResNet-18's 3x3 convs at batch 32 (ad-hoc,
#: EPYC Zen 4: 56x56 maps 0.65, 28x28 0.62, 14x14 0.61, 7x7 0.41; at batch 1 on 56x56 0.4)
WINOGRAD_DENSITY = 0.7


def winograd(dec: ConvDecision, data_shape, weight_shape, tiles: int) -> ConvDecision | None:
    """The decision of a dense conv, or of a gather-GEMM conv denser than ``WINOGRAD_DENSITY``, run
    as Winograd F(4x4, 3x3) (kernels/winograd.py), or None where that does not apply.  Executed
    FLOPs are the 36-group GEMM's, ``2 * 36 * T * C * tiles`` (formula 1.25), the transforms not
    counted (a few adds per element, like the im2col copy)."""
    if int(data_shape[1]) < WINOGRAD_MIN_MAPS or tiles < WINOGRAD_MIN_TILES:
        return None
    if dec.decision != "dense" and not (dec.decision == "gather-gemm" and dec.density > WINOGRAD_DENSITY):
        return None
    fe = 2 * 36 * int(weight_shape[0]) * int(weight_shape[1]) * tiles
    return ConvDecision(
        "winograd",
        dec.density,
        dec.flops_dense,
        fe,
        f"{dec.reason}; run as Winograd F(4x4, 3x3) (dense, or density > {WINOGRAD_DENSITY}): "
        f"{fe / dec.flops_dense:.0%} of the direct FLOPs",
    )
