"""Force regularization (paper 002 eq. 2-5) against the naive pairwise sum and Theorem 1."""

import pytest
import torch

from lightning_gbd.core.force import force, l1_force, l2_force, rank_for_error


def naive(filters, kind):
    n = filters.shape[0]
    norms = filters.norm(dim=1)
    w = filters / norms[:, None]
    out = torch.zeros_like(filters)
    for i in range(n):
        acc = torch.zeros_like(w[i])
        for j in range(n):
            if i == j:
                continue
            f = w[j] - w[i]
            if kind == "l1":
                f = f / f.norm()
            acc += f - (f @ w[i]) * w[i]
        out[i] = norms[i] * acc
    return out


def pairwise_objective(filters, kind):
    w = filters / filters.norm(dim=1, keepdim=True)
    diff = w[:, None, :] - w[None, :, :]
    d2 = diff.pow(2).sum(-1)
    if kind == "l2":
        return 0.5 * d2.sum()
    mask = ~torch.eye(len(w), dtype=torch.bool)
    return d2[mask].sqrt().sum()


@pytest.mark.parametrize("kind,fn", [("l2", l2_force), ("l1", l1_force)])
def test_efficient_form_equals_naive_pairwise_sum(kind, fn):
    torch.manual_seed(0)
    f = torch.randn(9, 27, dtype=torch.float64) * 3
    torch.testing.assert_close(fn(f), naive(f, kind))


@pytest.mark.parametrize("kind", ["l2", "l1"])
def test_theorem1_finite_differences(kind):
    """Delta W_i = -(||W_i||^2 / 2) dR/dW_i, with dR/dW from central finite differences."""
    torch.manual_seed(1)
    f = torch.randn(5, 6, dtype=torch.float64)
    grad = torch.zeros_like(f)
    h = 1e-6
    for idx in range(f.numel()):
        e = torch.zeros(f.numel(), dtype=torch.float64)
        e[idx] = h
        e = e.reshape(f.shape)
        grad.view(-1)[idx] = (pairwise_objective(f + e, kind) - pairwise_objective(f - e, kind)) / (2 * h)
    expected = -(f.norm(dim=1, keepdim=True) ** 2 / 2) * grad
    torch.testing.assert_close(force(f[:, :, None, None], kind).reshape(f.shape), expected, rtol=1e-5, atol=1e-7)


def test_forces_do_not_cross_groups_and_skip_dead_filters():
    torch.manual_seed(2)
    w = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    w[5] = 0
    d = force(w, "l2", groups=2)
    torch.testing.assert_close(d[:4], force(w[:4], "l2"))
    assert (d[5] == 0).all()


def test_attraction_lowers_rank():
    torch.manual_seed(3)
    w = torch.randn(32, 8, 3, 3, dtype=torch.float64)
    before = rank_for_error(w, 0.05)
    for _ in range(300):  # plain gradient steps on the force alone pull the filters together
        w = w + 0.05 * force(w, "l2")
    assert rank_for_error(w, 0.05) < before


def test_rank_for_error_definition():
    u = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))[0]
    s = torch.tensor([10.0, 5.0, 1.0, 0.1] + [0.0] * 6, dtype=torch.float64)
    m = (u * s) @ torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))[0]
    w = m[:, :, None, None]
    # eigenvalues 100, 25, 1, 0.01: tails after K = 1, 2, 3 are 20.6%, 0.80%, 0.008%
    assert rank_for_error(w, 1e-9) == 4
    assert rank_for_error(w, 0.05) == 2
    assert rank_for_error(w, 0.2) == 2
    assert rank_for_error(w, 0.25) == 1
