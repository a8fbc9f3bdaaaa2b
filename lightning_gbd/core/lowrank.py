"""Low-rank approximations of a Conv2d (papers 002 and 001; docs/formulas.md section 3).

Every function takes a Conv2d and returns ``(module, relative_error)``: a drop-in replacement
that computes the approximated conv, and ``||W - W_approx||_F^2 / ||W||_F^2`` of the kernel it
realises. Full rank reproduces the conv exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from .groups import conv_flops, group_mask


def _rel_err(w: torch.Tensor, approx: torch.Tensor) -> float:
    return float((w - approx).pow(2).sum() / w.pow(2).sum().clamp_min(1e-30))


def _conv_like(conv: nn.Conv2d, in_ch: int, out_ch: int, groups: int, bias: bool, **over) -> nn.Conv2d:
    kw = dict(
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        padding_mode=conv.padding_mode,
    )
    kw.update(over)
    return nn.Conv2d(in_ch, out_ch, groups=groups, bias=bias, **kw)


def _like(module: nn.Module, conv: nn.Conv2d) -> nn.Module:
    return module.to(conv.weight.device, conv.weight.dtype)


def _filters(conv: nn.Conv2d) -> list[torch.Tensor]:
    """Per conv group, the filter matrix M (N_g x C_g kh kw) in float64."""
    w = conv.weight.detach().double()
    return [c.reshape(c.shape[0], -1) for c in w.chunk(conv.groups, 0)]


def pca_rank(m: torch.Tensor, error: float) -> int:
    """Smallest K with ``sum_{k>K} lambda_k / sum lambda_k <= e`` (uncentred PCA)."""
    s2 = torch.linalg.svdvals(m).pow(2)
    tail = (s2.sum() - s2.cumsum(0)) / s2.sum().clamp_min(1e-300)
    return max(1, int((tail > error).sum()) + 1)


def svd_rank(m: torch.Tensor, error: float) -> int:
    """The authors' "SVD" criterion with the un-squared ratio ``||s_{>K}|| / ||s|| <= e``."""
    s = torch.linalg.svdvals(m)
    tail = (s.pow(2).sum() - s.pow(2).cumsum(0)).clamp_min(0).sqrt() / s.norm().clamp_min(1e-300)
    return max(1, int((tail > error).sum()) + 1)


def basis_decomposition(conv: nn.Conv2d, bases: list[torch.Tensor], coeffs: list[torch.Tensor]) -> nn.Sequential:
    """Conv with the K basis filters per group (same kernel/stride/padding/dilation, no bias)
    followed by a 1x1 conv with the coefficients that carries the original bias (paper 002 Fig. 3)."""
    g, k = conv.groups, bases[0].shape[0]
    first = _conv_like(conv, conv.in_channels, g * k, g, False)
    second = nn.Conv2d(g * k, conv.out_channels, 1, groups=g, bias=conv.bias is not None)
    first, second = _like(first, conv), _like(second, conv)
    with torch.no_grad():
        first.weight.copy_(torch.cat(bases).reshape(first.weight.shape))
        second.weight.copy_(torch.cat(coeffs).reshape(second.weight.shape))
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def pair_flop_ratio(rank: int, filters: int, fan_in: int) -> float:
    """FLOPs of the basis conv + 1x1 pair over the original conv, per conv group:
    ``K (C_g kh kw + N_g) / (N_g C_g kh kw)`` (docs/formulas.md section 3); < 1 means it pays."""
    return rank * (fan_in + filters) / (filters * fan_in)


def live_pair_flop_ratio(weight, groups: int, rank: int) -> float:
    """``pair_flop_ratio`` of a (possibly group-sparse) conv weight ``(N, C_g, kh, kw)``: its fan-in
    counts only the live GBD groups, ``tau C_g kh kw`` (docs/formulas.md eq. 3.5).  The basis conv
    keeps every all-zero column, and the conv it replaces runs as a gather-GEMM over those rows
    (eq. 1.4), so a dense count would decompose sparse convs that get slower."""
    filters = int(weight.shape[0]) // groups
    live = float(group_mask(weight, groups).sum()) / groups
    return pair_flop_ratio(rank, filters, max(live, 1.0))


def pca_factors(
    weight: torch.Tensor, groups: int = 1, rank: int | None = None, error: float = 0.05, criterion: str = "pca"
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Cross-filter PCA of a conv weight ``(N, C_g, kh, kw)`` (docs/formulas.md section 3): per
    conv group the SVD of the filter matrix ``M`` (not mean-centred), basis ``B = S_K V_K^T``
    and coefficients ``U_K``.  The rank is ``rank`` per group, or the largest per-group rank by
    ``criterion`` ("pca" | "svd") at ``error``.  Returns ``(basis (g K, C_g, kh, kw),
    coefficients (N, K), relative error ||W - W_K||^2 / ||W||^2)`` in float64."""
    w = torch.as_tensor(weight).detach().double()
    n, cg, kh, kw = w.shape
    ms = [c.reshape(c.shape[0], -1) for c in w.chunk(groups, 0)]
    choose = pca_rank if criterion == "pca" else svd_rank
    k = rank if rank is not None else max(choose(m, error) for m in ms)
    k = min(k, min(min(m.shape) for m in ms))
    bases, coeffs, approx = [], [], []
    for m in ms:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        bases.append(s[:k, None] * vh[:k])
        coeffs.append(u[:, :k])
        approx.append(u[:, :k] @ bases[-1])
    basis = torch.cat(bases).reshape(groups * k, cg, kh, kw)
    return basis, torch.cat(coeffs), _rel_err(torch.cat(ms), torch.cat(approx))


def pca_decompose(conv: nn.Conv2d, rank: int | None = None, error: float = 0.05, criterion: str = "pca"):
    """Cross-filter PCA (:func:`pca_factors`): a basis conv ``B = U_K^T M`` and a 1x1 conv ``U_K``.
    The rank is ``rank`` per group, or the largest per-group rank by ``criterion`` ("pca"|"svd")."""
    basis, coeff, err = pca_factors(conv.weight, conv.groups, rank, error, criterion)
    k = basis.shape[0] // conv.groups
    mod = basis_decomposition(conv, list(basis.reshape(conv.groups, k, -1)), list(coeff.chunk(conv.groups, 0)))
    return mod, err


def svd_decompose(conv: nn.Conv2d, rank: int | None = None, error: float = 0.05):
    """As :func:`pca_decompose` with the authors' un-squared SVD rank criterion."""
    return pca_decompose(conv, rank, error, criterion="svd")


def kmeans_decompose(conv: nn.Conv2d, rank: int, iters: int = 50, seed: int = 0):
    """k-means centroids of the filters as the basis; the 1x1 coefficients by least squares."""
    gen = torch.Generator().manual_seed(seed)
    bases, coeffs, approx = [], [], []
    for m in _filters(conv):
        _, cent = _kmeans(m, min(rank, m.shape[0]), iters, gen=gen)
        a = torch.linalg.lstsq(cent.T, m.T).solution.T  # m ~ a @ cent
        bases.append(cent)
        coeffs.append(a)
        approx.append(a @ cent)
    return basis_decomposition(conv, bases, coeffs), _rel_err(torch.cat(_filters(conv)), torch.cat(approx))


def separable_decompose(conv: nn.Conv2d, rank: int | None = None, error: float = 0.05):
    """Spatially separable: a kh x 1 conv with K outputs, then a 1 x kw conv (Tai et al.; paper 001).
    SVD of W reshaped to (C kh) x (N kw); exact at K = min(C kh, N kw). groups=1 only."""
    if conv.groups != 1:
        raise ValueError("separable_decompose supports groups=1 convs only")
    n, c, kh, kw = conv.weight.shape
    w = conv.weight.detach().double()
    mat = w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    k = rank if rank is not None else pca_rank(mat, error)
    k = min(k, s.numel())
    vert = (u[:, :k] * s[:k].sqrt()).T.reshape(k, c, kh, 1)
    horiz = (s[:k, None].sqrt() * vh[:k]).reshape(k, n, kw).permute(1, 0, 2).reshape(n, k, 1, kw)
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    first = nn.Conv2d(c, k, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False)
    second = nn.Conv2d(k, n, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), bias=conv.bias is not None)
    first, second = _like(first, conv), _like(second, conv)
    with torch.no_grad():
        first.weight.copy_(vert)
        second.weight.copy_(horiz)
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    approx = torch.einsum("kci,nkj->ncij", vert[..., 0], horiz[:, :, 0])
    return nn.Sequential(first, second), _rel_err(w, approx)


def cp_als(w: torch.Tensor, rank: int, iters: int = 100, seed: int = 0) -> list[torch.Tensor]:
    """Rank-K tensor approximation ``W ~ sum_k a_k (x) b_k (x) c_k (x) d_k`` (paper 001 eq. 2-3) by
    alternating least squares, one factor at a time. Returns factors of shapes (dim_m, K)."""
    gen = torch.Generator().manual_seed(seed)
    factors = [torch.randn(d, rank, generator=gen, dtype=torch.float64) for d in w.shape]
    letters = "abcd"
    for _ in range(iters):
        for m in range(4):
            others = [f for i, f in enumerate(factors) if i != m]
            gram = torch.ones(rank, rank, dtype=torch.float64)
            for f in others:
                gram = gram * (f.T @ f)
            rest = [letters[i] for i in range(4) if i != m]
            expr = f"abcd,{rest[0]}r,{rest[1]}r,{rest[2]}r->{letters[m]}r"
            rhs = torch.einsum(expr, w, *others)
            factors[m] = torch.linalg.solve(gram + 1e-12 * torch.eye(rank, dtype=torch.float64), rhs.T).T
    return factors


def cp_decompose(conv: nn.Conv2d, rank: int, iters: int = 100, seed: int = 0):
    """The CP form of a conv (paper 001 eq. 2-3): 1x1 (C->K), depthwise kh x 1, depthwise 1 x kw,
    1x1 (K->N) + bias, as an ``nn.Sequential``."""
    if conv.groups != 1:
        raise ValueError("cp_decompose supports groups=1 convs only")
    w = conv.weight.detach().double()
    a, b, c, d = cp_als(w, rank, iters, seed)
    n, ch, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    mods = nn.Sequential(
        nn.Conv2d(ch, rank, 1, bias=False),
        nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank, bias=False),
        nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=rank, bias=False),
        nn.Conv2d(rank, n, 1, bias=conv.bias is not None),
    )
    mods = _like(mods, conv)
    with torch.no_grad():
        mods[0].weight.copy_(b.T[:, :, None, None])
        mods[1].weight.copy_(c.T[:, None, :, None])
        mods[2].weight.copy_(d.T[:, None, None, :])
        mods[3].weight.copy_(a[:, :, None, None])
        if conv.bias is not None:
            mods[3].bias.copy_(conv.bias)
    approx = torch.einsum("nr,cr,ir,jr->ncij", a, b, c, d)
    return mods, _rel_err(w, approx)


def decomposed_flops(module: nn.Module, in_shape: tuple[int, int, int, int]) -> int:
    """Multiply-add FLOPs (2 per MAC) of every Conv2d in ``module`` for one input of ``in_shape``."""
    total = 0

    def hook(m, i, o):
        nonlocal total
        total += conv_flops(m.weight.shape, o.shape[2:], m.groups)

    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    hs = [m.register_forward_hook(hook) for m in convs]
    with torch.no_grad():
        module(torch.zeros(1, *in_shape[1:], dtype=convs[0].weight.dtype, device=convs[0].weight.device))
    for h in hs:
        h.remove()
    return total


def _kmeans(
    x: torch.Tensor, k: int, iters: int = 50, seed: int = 0, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from k random rows; returns (assignment, centroids)."""
    gen = gen if gen is not None else torch.Generator().manual_seed(seed)
    cent = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    assign = torch.zeros(x.shape[0], dtype=torch.long)
    for _ in range(iters):
        assign = torch.cdist(x, cent).argmin(1)
        for c in range(k):
            if (assign == c).any():
                cent[c] = x[assign == c].mean(0)
    return assign, cent


class BiclusterConv(nn.Module):
    """Biclustered low-rank conv (paper 001 section 3.3): inputs split into G clusters, outputs
    into H clusters, every (output, input) block approximated with rank K. Per input cluster one
    conv computes the K basis maps of every output cluster; one 1x1 conv (block-structured
    weight) mixes them into the outputs, which stay in their original order."""

    def __init__(self, conv: nn.Conv2d, in_idx: list[torch.Tensor], bases: list[torch.Tensor], mix: torch.Tensor):
        super().__init__()
        for g, idx in enumerate(in_idx):
            self.register_buffer(f"idx{g}", idx)
        self.basis = nn.ModuleList()
        for g, b in enumerate(bases):
            m = _like(_conv_like(conv, len(in_idx[g]), b.shape[0], 1, False), conv)
            with torch.no_grad():
                m.weight.copy_(b)
            self.basis.append(m)
        self.mix = _like(nn.Conv2d(mix.shape[1], mix.shape[0], 1, bias=conv.bias is not None), conv)
        with torch.no_grad():
            self.mix.weight.copy_(mix[:, :, None, None])
            if conv.bias is not None:
                self.mix.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [m(x.index_select(1, getattr(self, f"idx{g}"))) for g, m in enumerate(self.basis)]
        return self.mix(torch.cat(maps, 1))


def bicluster_decompose(conv: nn.Conv2d, in_clusters: int, out_clusters: int, rank: int, seed: int = 0):
    """Bicluster inputs and outputs by k-means and approximate each block with rank ``rank``."""
    if conv.groups != 1:
        raise ValueError("bicluster_decompose supports groups=1 convs only")
    w = conv.weight.detach().double()
    n, c, kh, kw = w.shape
    out_assign, _ = _kmeans(w.reshape(n, -1), out_clusters, seed=seed)
    in_assign, _ = _kmeans(w.permute(1, 0, 2, 3).reshape(c, -1), in_clusters, seed=seed)
    approx = torch.zeros_like(w)
    in_idx, bases, cols = [], [], []
    for g in range(in_clusters):
        ig = (in_assign == g).nonzero().flatten()
        if ig.numel() == 0:
            continue
        in_idx.append(ig)
        blocks = []
        for h in range(out_clusters):
            oh = (out_assign == h).nonzero().flatten()
            if oh.numel() == 0:
                continue
            m = w[oh][:, ig].reshape(oh.numel(), -1)
            u, s, vh = torch.linalg.svd(m, full_matrices=False)
            k = min(rank, s.numel())
            blocks.append((s[:k, None] * vh[:k]).reshape(k, ig.numel(), kh, kw))
            col = torch.zeros(n, k, dtype=w.dtype)
            col[oh] = u[:, :k]
            cols.append(col)
            approx[oh[:, None], ig[None, :]] = (u[:, :k] @ (s[:k, None] * vh[:k])).reshape(
                oh.numel(), ig.numel(), kh, kw
            )
        bases.append(torch.cat(blocks))
    return BiclusterConv(conv, in_idx, bases, torch.cat(cols, 1)), _rel_err(w, approx)


class MonochromaticConv(nn.Module):
    """Monochromatic first layer (paper 001 section 5.1.1): a 1x1 colour transform to ``colors``
    channels, then each output filter applies its own spatial filter to one colour channel."""

    def __init__(self, conv: nn.Conv2d, centroids: torch.Tensor, assign: torch.Tensor, spatial: torch.Tensor):
        super().__init__()
        colors = centroids.shape[0]
        self.color = _like(nn.Conv2d(conv.in_channels, colors, 1, bias=False), conv)
        order = torch.argsort(assign, stable=True)
        self.register_buffer("inverse", torch.argsort(order))
        counts = torch.bincount(assign, minlength=colors)
        self.spatial = nn.ModuleList()
        with torch.no_grad():
            self.color.weight.copy_(centroids[:, :, None, None])
            start = 0
            for k in range(colors):
                idx = order[start : start + int(counts[k])]
                start += int(counts[k])
                m = _like(_conv_like(conv, 1, max(1, idx.numel()), 1, conv.bias is not None), conv)
                if idx.numel():
                    m.weight.copy_(spatial[idx][:, None])
                    if conv.bias is not None:
                        m.bias.copy_(conv.bias[idx])
                self.spatial.append(m if idx.numel() else None)
        self.counts = counts.tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.color(x)
        outs = [m(c[:, k : k + 1]) for k, m in enumerate(self.spatial) if m is not None]
        return torch.cat(outs, 1).index_select(1, self.inverse)


def monochromatic_decompose(conv: nn.Conv2d, colors: int, seed: int = 0):
    """Per output filter a rank-1 (colour x space) approximation; the colour vectors are clustered
    into ``colors`` centroids and the spatial filters refitted to them by least squares."""
    if conv.groups != 1:
        raise ValueError("monochromatic_decompose supports groups=1 convs only")
    w = conv.weight.detach().double()
    n, c, kh, kw = w.shape
    mats = w.reshape(n, c, kh * kw)
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    col = u[:, :, 0] * torch.sign(u[:, :1, 0] + 1e-30)  # unit colour per filter, sign fixed
    colors = min(colors, n)
    assign, _ = _kmeans(col, colors, seed=seed)
    cent = torch.stack([col[assign == k].mean(0) if (assign == k).any() else col[0] for k in range(colors)])
    cent = cent / cent.norm(dim=1, keepdim=True).clamp_min(1e-30)
    spatial = torch.einsum("nci,nc->ni", mats, cent[assign])  # least squares with a unit colour vector
    approx = cent[assign][:, :, None] * spatial[:, None, :]
    mod = MonochromaticConv(conv, cent, assign, spatial.reshape(n, kh, kw))
    return mod, _rel_err(w, approx.reshape(w.shape))


METHODS = {
    "pca": pca_decompose,
    "svd": svd_decompose,
    "kmeans": kmeans_decompose,
    "separable": separable_decompose,
    "cp": cp_decompose,
    "bicluster": bicluster_decompose,
    "monochromatic": monochromatic_decompose,
}
