"""Numpy side of the GBD lowering (paper 000, section 3; docs/formulas.md section 1 "Lowering").

Turns a (possibly group-sparse) conv weight into the constants the gather-GEMM kernels read:
the compact filter matrix F (T x sum_s |Omega_s| per conv group, pre-packed), the int32 offset
tables of the gather, and the geometry of the problem.  Everything here is shape bookkeeping;
the kernels themselves live in ``cpu.py`` / ``cuda.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lightning_gbd.core.groups import group_mask


def _pair(v):
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    return v if len(v) == 2 else (v[0], v[0])


def _pad4(p):
    if isinstance(p, int):
        return (p, p, p, p)
    p = tuple(int(x) for x in p)
    if len(p) == 2:  # (h, w)
        return (p[0], p[1], p[0], p[1])
    if len(p) == 4:  # (top, left, bottom, right)
        return p
    raise ValueError(f"padding must be an int, (h, w) or (top, left, bottom, right), got {p}")


def _round_up(x, m):
    return (x + m - 1) // m * m


@dataclass
class ConvGeometry:
    """All sizes of one lowered conv (paper 000 section 3)."""

    N: object  # images: an int, or a tir.Var for a dynamic batch
    C: int
    H: int
    W: int
    T: int  # output channels
    G: int  # conv groups
    Cg: int  # input channels per group
    Tg: int  # output channels per group
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int
    OH: int
    OW: int
    Hp: int  # padded input height actually stored
    Wp: int
    L: int  # live input channels (non-empty Omega_s), the padded copy holds L + 1 maps
    KP: int  # gather rows per group (max_g sum_{s in g} |Omega_s|, >= 1)
    KC: int  # reduction block (KP is a multiple of KC)
    K_per_group: tuple  # true sum_s |Omega_s| per group
    TI: int  # inner t block of the packed filter
    TO: int  # outer t blocks (TO * TI >= Tg)
    NV: int  # n tile (columns handled by one micro-kernel / thread tile)
    NP: int  # padded number of output pixels per image (multiple of NV * NTC)
    OWP: int  # padded output row length (row-aligned numbering) or 0 (flat numbering)
    ROWV: int  # vector length of the row copies in the gather (OWP % ROWV == 0)
    NTC: int  # n tiles per parallel chunk
    NRP: int  # > 0: chunks are whole output rows, C is [N, G, TO*TI, NRP, OWP] (padded rows)
    DPLEN: int  # length of the flat padded input per image (>= (L + 1) * map_len)
    PH: int = 1  # stride-2 phase planes per dimension in the padded copy (2: formula 1.24), else 1

    @property
    def Hq(self):
        """Rows of one (phase) plane of the padded copy."""
        return -(-self.Hp // self.PH)

    @property
    def Wq(self):
        """Row pitch of the padded copy: columns of one (phase) plane."""
        return -(-self.Wp // self.PH)

    @property
    def map_len(self):
        """Length of one live map in the padded copy (its PH x PH phase planes)."""
        return self.PH * self.PH * self.Hq * self.Wq

    @property
    def gsh(self):
        """Row step of the gather between output rows (1 on phase planes)."""
        return self.sh // self.PH

    @property
    def gsw(self):
        """Column step of the gather between output pixels (1 on phase planes)."""
        return self.sw // self.PH

    @property
    def NN(self):
        return self.OH * (self.OWP or self.OW)

    @property
    def density(self):
        return sum(self.K_per_group) / float(self.C * self.kh * self.kw)


def conv_output_size(H, W, kh, kw, stride, padding, dilation):
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    pt, pl, pb, pr = _pad4(padding)
    OH = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return OH, OW


def _chunking(OH, OW, OWP, NV, chunk_tiles, whole_rows):
    """(NTC, NP, NRP) of one pixel numbering (row length OWP, 0: flat): the n-chunk of NTC tiles per
    parallel task, trading padding against the per-chunk overhead; with ``whole_rows`` and OWP > 0,
    chunks of whole output rows (the epilogue can then run per chunk): NTC * NV = R * OWP."""
    NN = OH * (OWP or OW)
    nvt = -(-NN // NV)
    NTC = min(chunk_tiles, key=lambda c: (_round_up(nvt, c) / nvt * (1 + 0.5 / c), -c))
    NP, NRP = _round_up(nvt, NTC) * NV, 0
    unit = math.lcm(OWP, NV) // NV if OWP else 0
    if OWP and whole_rows and unit <= max(chunk_tiles):
        cands = [unit * m for m in range(1, max(chunk_tiles) // unit + 1)]

        def cost(c):
            rows = c * NV // OWP
            return (_round_up(OH, rows) / OH * (1 + 0.5 / c), -c)

        NTC = min(cands, key=cost)
        NRP = _round_up(OH, NTC * NV // OWP)
        NP = NRP * OWP
    return NTC, NP, NRP


def _pixel_numbering(OH, OW, sh, sw, Wp, NV, row_align, max_row_waste, chunk_tiles, whole_rows):
    """Output pixel numbering n and its parallel chunking: (OWP, ROWV, NTC, NP, NRP, base int64[NP]).

    Row-aligned mode (OWP > 0): n = oh * OWP + ow with rows padded to a multiple of one of
    ``row_align`` (the one that leaves the fewest padded pixels after chunking, the first on a tie),
    so a vector of ROWV pixels is one contiguous input run and the gather needs no table (a 56-pixel
    row: 56 with 8-pixel runs, not 64, which would compute 12.5% more; strided convs take the first
    alignment that fits).  Flat mode (OWP = 0): n = oh * OW + ow through base[n]."""
    best = None
    for ra in row_align if isinstance(row_align, (tuple, list)) else (row_align,):
        if ra and _round_up(OW, ra) <= max_row_waste * OW:
            OWP = _round_up(OW, ra)
            cand = (OWP, ra, *_chunking(OH, OW, OWP, NV, chunk_tiles, whole_rows))
            if best is None or cand[3] < best[3]:
                best = cand
            if sw != 1:  # strided rows are gathered by 16-pixel runs (te_defs.strided_rows): the first fit
                break
    OWP, ROWV, NTC, NP, NRP = best or (0, 0, *_chunking(OH, OW, 0, NV, chunk_tiles, whole_rows))
    n = np.arange(NP)
    if OWP:
        base = (n // OWP) * sh * Wp + (n % OWP) * sw
    else:
        NN = OH * OW
        base = np.where(n < NN, (n // OW) * sh * Wp + (n % OW) * sw, 0)
    base = base.astype(np.int64)
    return OWP, ROWV, NTC, NP, NRP, base


def _gather_entries(mask, lidx, G, Cg):
    """Per conv group, the gather rows (local s, i, j) with (i, j) in Omega_s of a live map s."""
    entries = []
    for g in range(G):
        e = []
        for s in range(Cg):
            if g * Cg + s in lidx:
                e.extend((s, i, j) for i, j in zip(*np.nonzero(mask[g * Cg + s])))
        entries.append(e)
    return entries


def _pack(weight, entries, lidx, G, TO, TI, KP, strides):
    """The packed compact filter F [G, TO, KP, TI] and the gather offsets off [G, KP] (padded rows
    point to the zero map L, with zero weights).  ``strides``: (map length, row pitch, dh, dw, PH,
    plane length); on phase planes (PH 2) tap (i, j) reads plane (i % 2, j % 2) at (i // 2, j // 2)."""
    HW, Wp, dh, dw, PH, plane = strides
    T, Cg, kh, kw = weight.shape
    Tg = T // G
    F = np.zeros((G, TO * TI, KP), dtype=np.float32)
    off = np.full((G, KP), len(lidx) * HW, dtype=np.int32)
    wg = weight.reshape(G, Tg, Cg, kh, kw)
    for g, e in enumerate(entries):
        if not e:
            continue
        s, i, j = (np.array(x) for x in zip(*e))
        F[g, :Tg, : len(e)] = wg[g][:, s, i, j]
        l = np.array([lidx[g * Cg + x] for x in s])
        ii, jj = i * dh, j * dw
        off[g, : len(e)] = l * HW + ((ii % PH) * PH + jj % PH) * plane + (ii // PH) * Wp + jj // PH
    return np.ascontiguousarray(F.reshape(G, TO, TI, KP).transpose(0, 1, 3, 2)), off


def _sizes(data_shape, weight_shape, stride, padding, dilation, groups) -> dict:
    """The problem sizes of ConvGeometry (N ... Wp) of one conv; ValueError for an impossible one."""
    N = int(data_shape[0]) if isinstance(data_shape[0], (int, np.integer)) else data_shape[0]  # a tir.Var: dynamic
    C, H, W = (int(x) for x in data_shape[1:])
    T, Cg, kh, kw = (int(x) for x in weight_shape)
    G = int(groups)
    if C != Cg * G or T % G:
        raise ValueError(f"bad conv: data C={C}, weight {tuple(weight_shape)}, groups={G}")
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    pt, pl, pb, pr = _pad4(padding)
    OH, OW = conv_output_size(H, W, kh, kw, (sh, sw), (pt, pl, pb, pr), (dh, dw))
    if OH <= 0 or OW <= 0:
        raise ValueError("empty conv output")
    # rows / cols of the padded input that are ever read
    Hp = max((OH - 1) * sh + (kh - 1) * dh + 1, 1)
    Wp = max((OW - 1) * sw + (kw - 1) * dw + 1, 1)
    return dict(
        N=N,
        C=C,
        H=H,
        W=W,
        T=T,
        G=G,
        Cg=Cg,
        Tg=T // G,
        kh=kh,
        kw=kw,
        sh=sh,
        sw=sw,
        dh=dh,
        dw=dw,
        pt=pt,
        pl=pl,
        pb=pb,
        pr=pr,
        OH=OH,
        OW=OW,
        Hp=Hp,
        Wp=Wp,
    )


def lower_conv(
    data_shape,
    weight,
    *,
    stride=(1, 1),
    padding=(0, 0, 0, 0),
    dilation=(1, 1),
    groups=1,
    TI=6,
    NV=32,
    kc_max=None,
    k_align=1,
    row_align=0,
    max_row_waste=1.2,
    chunk_tiles=(1,),
    to_multiple=1,
    whole_rows=False,
    dense=False,
    phases=False,
):
    """Build geometry + numpy constants of the gather-GEMM lowering.

    Returns (geom, F, live, off, base):
      F    float32 [G, TO, KP, TI]  packed compact filter, F[g, to, k, ti] = W[g*Tg + to*TI+ti, k-th
                                    surviving (s, i, j) of group g]; zero in padded rows / columns.
      live int32   [L + 1]          global input channel of each stored (padded) map; the last map
                                    is an all-zero map that padded gather rows point to.
      off  int32   [G, KP]          offset of gather row k in the flat padded per-image input (1.19, 1.24)
      base int32   [NP]             offset of output pixel n (0 for padded pixels, results discarded);
                                    the kernels use it only in flat mode (geom.OWP == 0).
    Only live maps (non-empty Omega_s) are copied, so dead input maps are never read.  ``dense=True``
    keeps every group (the dense im2col GEMM); the other keywords are layout choices of the schedules:
    ``phases`` stores a stride-2 conv's padded input as 2 x 2 phase planes (formula 1.24), so its
    gather reads contiguous rows as at stride 1."""
    weight = np.asarray(weight, dtype=np.float32)
    z = _sizes(data_shape, weight.shape, stride, padding, dilation, groups)
    G, Cg, Tg = z["G"], z["Cg"], z["Tg"]

    mask, live_ch = _live(weight, z, dense)
    L = len(live_ch)
    lidx = {c: i for i, c in enumerate(live_ch)}
    PH, Hq, Wq = _planes(z, phases)
    HW = PH * PH * Hq * Wq  # one live map: its phase planes

    entries = _gather_entries(mask, lidx, G, Cg)
    K_per_group = tuple(len(e) for e in entries)
    KP = max(max(K_per_group), 1)
    # reduction blocking: KP = nkb * KC (padded rows read the zero map with zero weights)
    nkb = 1 if not kc_max else -(-KP // kc_max)
    KC = _round_up(-(-KP // nkb), k_align)
    KP = nkb * KC
    TO = _round_up((Tg + TI - 1) // TI, to_multiple)
    F, off = _pack(weight, entries, lidx, G, TO, TI, KP, (HW, Wq, z["dh"], z["dw"], PH, Hq * Wq))

    OWP, ROWV, NTC, NP, NRP, base = _pixel_numbering(
        z["OH"], z["OW"], z["sh"] // PH, z["sw"] // PH, Wq, NV, row_align, max_row_waste, chunk_tiles, whole_rows
    )
    live = np.array(live_ch + [0], dtype=np.int32)
    DPLEN = _round_up(max((L + 1) * HW, int(off.max()) + int(base.max()) + 1), HW)
    assert DPLEN < 2**31, "input too large for int32 offsets"
    base = base.astype(np.int32)

    geom = ConvGeometry(
        **z,
        L=L,
        KP=KP,
        KC=KC,
        K_per_group=K_per_group,
        TI=TI,
        TO=TO,
        NV=NV,
        NP=NP,
        OWP=OWP,
        ROWV=ROWV,
        NTC=NTC,
        NRP=NRP,
        DPLEN=DPLEN,
        PH=PH,
    )
    return geom, F, live, off, base


#: taps per input map from which a stride-2 conv gathers from phase planes: the planes are copied
#: from every other input column (a strided load per element), which only pays where many gather
#: rows read each map: ResNet's 7x7 stem 1.25x dense / 1.07x at density 0.3 (batch 32), while a 3x3
#: 64 -> 128 conv at density 0.3 got 0.88x (ad-hoc kernel timing)
MIN_PHASE_TAPS = 25


def _live(weight, z: dict, dense: bool):
    """(mask [C, kh, kw] of the surviving groups, or all of them for the dense im2col baseline;
    the live input maps: those with a surviving group)."""
    mask = np.ones((z["C"], z["kh"], z["kw"]), dtype=bool) if dense else group_mask(weight, z["G"]).numpy()
    return mask, [c for c in range(z["C"]) if mask[c].any()]


def _planes(z: dict, phases: bool):
    """(PH, Hq, Wq): phase planes per dimension of the padded copy and the size of one plane."""
    PH = 2 if phases and _phase_planes(z) else 1
    return PH, -(-z["Hp"] // PH), -(-z["Wp"] // PH)


def _phase_planes(z: dict) -> bool:
    """Whether a conv of sizes ``z`` gathers from 2 x 2 phase planes (formula 1.24): stride 2 both
    ways, no dilation, and at least MIN_PHASE_TAPS taps (every plane is read)."""
    return (z["sh"], z["sw"], z["dh"], z["dw"]) == (2, 2, 1, 1) and z["kh"] * z["kw"] >= MIN_PHASE_TAPS
