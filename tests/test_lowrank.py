"""Every decomposition reproduces the conv within the error it reports, exactly at full rank."""

import pytest
import torch
from torch import nn

from lightning_gbd.core.lowrank import (
    cp_decompose,
    decomposed_flops,
    kmeans_decompose,
    pca_decompose,
    separable_decompose,
    svd_decompose,
)


def conv(c=6, n=8, k=3, groups=1, stride=1, padding=1, dilation=1):
    torch.manual_seed(0)
    return nn.Conv2d(c, n, k, stride=stride, padding=padding, dilation=dilation, groups=groups).double()


def out_err(a, b, x):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max() / ya.abs().max())


X = torch.randn(2, 6, 11, 11, dtype=torch.float64)


@pytest.mark.parametrize("kw", [dict(), dict(groups=2), dict(stride=2, dilation=2, padding=2), dict(k=5, padding=0)])
@pytest.mark.parametrize("fn", [pca_decompose, svd_decompose])
def test_cross_filter_full_rank_is_exact(fn, kw):
    c = conv(**kw)
    mod, err = fn(c, rank=8)
    assert err < 1e-20
    assert out_err(c, mod, X) < 1e-10


@pytest.mark.parametrize("fn", [pca_decompose, svd_decompose])
def test_reported_error_matches_kernel_error(fn):
    c = conv(c=6, n=16)
    mod, err = fn(c, error=0.3)
    k = mod[0].out_channels
    assert 1 <= k < 16 and 0 < err
    if fn is pca_decompose:
        assert err <= 0.3 + 1e-12
    w_eff = torch.einsum("nk,kcij->ncij", mod[1].weight[:, :, 0, 0], mod[0].weight)
    assert abs(float((c.weight - w_eff).pow(2).sum() / c.weight.pow(2).sum()) - err) < 1e-12


def test_kmeans_full_rank_exact_and_lower_rank_error():
    c = conv()
    mod, err = kmeans_decompose(c, rank=8)
    assert err < 1e-20 and out_err(c, mod, X) < 1e-10
    mod, err = kmeans_decompose(c, rank=3)
    w_eff = torch.einsum("nk,kcij->ncij", mod[1].weight[:, :, 0, 0], mod[0].weight)
    assert abs(float((c.weight - w_eff).pow(2).sum() / c.weight.pow(2).sum()) - err) < 1e-12 and err > 0


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, dilation=2, padding=2)])
def test_separable_full_rank_exact(kw):
    c = conv(**kw)
    mod, err = separable_decompose(c, rank=6 * 3)
    assert err < 1e-20 and out_err(c, mod, X) < 1e-10
    mod, err = separable_decompose(c, rank=2)
    assert err > 0


def test_cp_reproduces_reported_error():
    torch.manual_seed(0)
    a, b, cc, d = (torch.randn(s, 3, dtype=torch.float64) for s in (8, 6, 3, 3))
    c = conv()
    with torch.no_grad():
        c.weight.copy_(torch.einsum("nr,cr,ir,jr->ncij", a, b, cc, d))
    mod, err = cp_decompose(c, rank=3, iters=200)
    assert err < 1e-12 and out_err(c, mod, X) < 1e-6  # an exactly rank-3 tensor is recovered
    c2 = conv()
    errs = [cp_decompose(c2, rank=r)[1] for r in (2, 8, 24)]
    assert 0 < errs[2] < errs[1] < errs[0] < 1


def test_flops_of_decomposition():
    c = conv(c=64, n=64)
    mod, _ = pca_decompose(c, rank=8)
    assert decomposed_flops(mod, (1, 64, 10, 10)) == 2 * 100 * (8 * 64 * 9 + 64 * 8)
    assert decomposed_flops(c, (1, 64, 10, 10)) == 2 * 100 * 64 * 64 * 9


def test_bicluster_full_rank_exact_and_error_reported():
    from lightning_gbd.core.lowrank import bicluster_decompose

    c = conv(c=6, n=8)
    mod, err = bicluster_decompose(c, in_clusters=2, out_clusters=2, rank=100)
    assert err < 1e-20 and out_err(c, mod, X) < 1e-10
    mod, err = bicluster_decompose(c, in_clusters=2, out_clusters=2, rank=1)
    assert 0 < err < 1
    # the realised conv is the approximation whose error was reported
    probe = torch.zeros(6 * 9, 6, 3, 3, dtype=torch.float64)
    for idx in range(6 * 9):
        probe.view(6 * 9, -1)[idx, idx] = 1.0
    with torch.no_grad():
        w_eff = (mod(probe) - (c.bias[None, :, None, None] if c.bias is not None else 0))[:, :, 1, 1]
        w_eff = w_eff.T.reshape(8, 6, 3, 3)  # out[1, 1] of a delta at (s, i, j) is W[:, s, i, j]
    assert abs(float((c.weight - w_eff).pow(2).sum() / c.weight.pow(2).sum()) - err) < 1e-10


def test_monochromatic_exact_when_colours_are_shared():
    from lightning_gbd.core.lowrank import monochromatic_decompose

    torch.manual_seed(4)
    cols = torch.randn(2, 3, dtype=torch.float64)
    cols = cols / cols.norm(dim=1, keepdim=True)
    w = torch.einsum("nc,nij->ncij", cols[torch.tensor([0, 1, 0, 1, 1, 0])], torch.randn(6, 5, 5, dtype=torch.float64))
    c = nn.Conv2d(3, 6, 5, padding=2).double()
    with torch.no_grad():
        c.weight.copy_(w)
    mod, err = monochromatic_decompose(c, colors=2)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    assert err < 1e-20 and out_err(c, mod, x) < 1e-10
    _, err1 = monochromatic_decompose(c, colors=1)
    assert err1 > 1e-3
