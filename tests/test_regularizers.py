"""The closed-form gradients of paper 000 eq. 4 and eq. 5 against autograd of eq. 3 / eq. 5."""

import pytest
import torch

from lightning_gbd.core.groups import expand_group_mask, group_norms
from lightning_gbd.core.regularizers import l1_grad, l1_penalty, l21_grad, l21_penalty, truncated_l21_penalty

SHAPES = [((12, 4, 3, 3), 1), ((12, 3, 5, 5), 2), ((8, 1, 3, 3), 8), ((6, 5, 1, 7), 3)]


@pytest.mark.parametrize("shape,groups", SHAPES)
def test_group_norms_match_explicit_loop(shape, groups):
    w = torch.randn(shape, dtype=torch.float64)
    norms = group_norms(w, groups)
    t_per = shape[0] // groups
    for s in range(shape[1] * groups):
        g, c = divmod(s, shape[1])
        ref = w[g * t_per : (g + 1) * t_per, c].pow(2).sum(0).sqrt()
        torch.testing.assert_close(norms[s], ref)


@pytest.mark.parametrize("shape,groups", SHAPES)
def test_eq4_is_gradient_of_eq3(shape, groups):
    w = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    l21_penalty(w, 0.3, groups).backward()
    torch.testing.assert_close(l21_grad(w.detach(), 0.3, groups), w.grad)


@pytest.mark.parametrize("shape,groups", SHAPES)
def test_eq5_gradient_matches_autograd(shape, groups):
    w = torch.randn(shape, dtype=torch.float64)
    theta = float(group_norms(w, groups).median())
    w.requires_grad_(True)
    truncated_l21_penalty(w, 0.3, theta, groups).backward()
    g = l21_grad(w.detach(), 0.3, groups, theta=theta)
    torch.testing.assert_close(g, w.grad)
    below = expand_group_mask(group_norms(w.detach(), groups) < theta, w.shape, groups)
    assert (g[~below] == 0).all() and (g[below] != 0).any()


def test_zero_group_has_zero_gradient():
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    w[:, 1, 0, 0] = 0
    g = l21_grad(w, 1.0)
    assert torch.isfinite(g).all() and (g[:, 1, 0, 0] == 0).all()


def test_l1_baseline():
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    l1_penalty(w, 0.1).backward()
    torch.testing.assert_close(l1_grad(w.detach(), 0.1), w.grad)
