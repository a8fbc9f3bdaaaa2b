"""Kernel groups and sparsity patterns of group-wise brain damage (formulas.md section 1).

A Conv2d weight ``W`` has shape ``(T, S/g, kh, kw)``. Its GBD groups are indexed by
``(s, i, j)``: input channel ``s`` (global index over all ``S`` inputs), kernel row ``i`` and
column ``j``; the group ``Gamma_ijs`` holds ``W[t, s mod S/g, i, j]`` for every output ``t`` of
the conv group that reads ``s``.  Group tensors here always have shape ``(S, kh, kw)``.
The surviving positions of input ``s`` form its pattern ``Omega_s``.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn


def _split(weight: torch.Tensor, groups: int) -> torch.Tensor:
    t, c, kh, kw = weight.shape
    if t % groups:
        raise ValueError(f"weight with {t} outputs cannot be split into {groups} groups")
    return weight.reshape(groups, t // groups, c, kh, kw)


def group_norms(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``||Gamma_ijs||_2`` for every group, shape ``(S, kh, kw)``."""
    w = _split(weight, groups)
    return w.pow(2).sum(1).sqrt().reshape(-1, *weight.shape[2:])


def expand_group_mask(mask: torch.Tensor, weight_shape: torch.Size, groups: int = 1) -> torch.Tensor:
    """Broadcast a per-group ``(S, kh, kw)`` tensor to the weight's shape ``(T, S/g, kh, kw)``."""
    t, c, kh, kw = weight_shape
    m = mask.reshape(groups, 1, c, kh, kw).expand(groups, t // groups, c, kh, kw)
    return m.reshape(weight_shape)


def select_convs(model: nn.Module, layers: str | Iterable[str] | None = None) -> dict[str, nn.Conv2d]:
    """The Conv2d modules to sparsify: all of them (``None``), those whose name matches a regex
    (a string), or exactly the names given (an iterable). Raises ``ValueError`` naming the problem."""
    named = dict(model.named_modules())
    convs = {n: m for n, m in named.items() if isinstance(m, nn.Conv2d)}
    if layers is None:
        chosen = convs
    elif isinstance(layers, str):
        rx = re.compile(layers)
        chosen = {n: m for n, m in convs.items() if rx.fullmatch(n) or rx.search(n)}
        if not chosen:
            raise ValueError(f"no Conv2d layer matches {layers!r}; conv layers are: {sorted(convs)}")
    else:
        chosen = {}
        for n in layers:
            if n not in named:
                raise ValueError(f"unknown layer {n!r}; conv layers are: {sorted(convs)}")
            if n not in convs:
                raise ValueError(f"layer {n!r} is a {type(named[n]).__name__}, not a Conv2d")
            chosen[n] = convs[n]
    if not chosen:
        raise ValueError(f"the model {type(model).__name__} has no Conv2d layer to sparsify")
    return chosen


def patterns(mask: torch.Tensor) -> list[list[tuple[int, int]]]:
    """``Omega_s`` for every input channel ``s`` as lists of ``(i, j)`` from a ``(S, kh, kw)`` mask."""
    out = []
    for m in mask.bool().cpu():
        out.append([(int(i), int(j)) for i, j in m.nonzero().tolist()])
    return out


def density(mask: torch.Tensor) -> float:
    """tau = sum_s |Omega_s| / (S kh kw)."""
    return float(mask.float().mean())


def dead_inputs(mask: torch.Tensor) -> list[int]:
    """Input maps whose pattern is empty (never read by the conv)."""
    return [int(s) for s in (mask.reshape(mask.shape[0], -1).sum(1) == 0).nonzero().flatten()]


def conv_flops(conv: nn.Conv2d, out_hw: tuple[int, int], mask: torch.Tensor | None = None) -> int:
    """Multiply-add FLOPs (2 per MAC) of one image through ``conv``; with a group mask only the
    surviving groups count: ``2 * (T/g) * sum_s |Omega_s| * H' W'``."""
    t, _, kh, kw = conv.weight.shape
    positions = int(mask.sum()) if mask is not None else conv.in_channels * kh * kw
    return 2 * (t // conv.groups) * positions * out_hw[0] * out_hw[1]
