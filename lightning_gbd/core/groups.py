"""Kernel groups and sparsity patterns of group-wise brain damage (docs/formulas.md section 1).

The one home of the GBD structure maths: the training callbacks, the reports and the compile
side (cost model, kernel lowering, manifest) all call these functions.  They take torch tensors
or numpy arrays.

A Conv2d weight ``W`` has shape ``(T, S/g, kh, kw)``. Its GBD groups are indexed by
``(s, i, j)``: input channel ``s`` (global index over all ``S`` inputs), kernel row ``i`` and
column ``j``; the group ``Gamma_ijs`` holds ``W[t, s mod S/g, i, j]`` for every output ``t`` of
the conv group that reads ``s``.  Group tensors here always have shape ``(S, kh, kw)``.
The surviving positions of input ``s`` form its pattern ``Omega_s``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn


def _split(weight: torch.Tensor, groups: int) -> torch.Tensor:
    t, c, kh, kw = weight.shape
    if t % groups:
        raise ValueError(f"weight with {t} outputs cannot be split into {groups} groups")
    return weight.reshape(groups, t // groups, c, kh, kw)


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def group_mask(weight, groups: int = 1) -> torch.Tensor:
    """Boolean ``(S, kh, kw)``: ``(i, j) in Omega_s``, i.e. some entry of ``Gamma_ijs`` is nonzero.

    Read off the zeros of a trained weight (compared with 0, not through the norm, so that a
    group of tiny weights whose squares underflow is still live)."""
    w = _split(_tensor(weight), groups)
    return (w != 0).any(1).reshape(-1, *w.shape[3:])


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


def density(mask) -> float:
    """tau = sum_s |Omega_s| / (S kh kw) of a ``(S, kh, kw)`` group mask."""
    mask = _tensor(mask)
    return float(mask.sum()) / mask.numel() if mask.numel() else 1.0


def dead_inputs(mask) -> list[int]:
    """Input maps whose pattern is empty (never read by the conv)."""
    mask = _tensor(mask)
    return [int(s) for s in (mask.reshape(mask.shape[0], -1).sum(1) == 0).nonzero().flatten()]


def conv_flops(weight_shape, out_hw, groups: int = 1, mask=None, batch: int = 1) -> int:
    """Multiply-add FLOPs (2 per MAC) of ``batch`` images through a conv with weight
    ``(T, S/g, kh, kw)`` and output ``H' x W'``; with a group mask only the surviving groups
    count: ``2 * (T/g) * sum_s |Omega_s| * H' W'`` per image (docs/formulas.md eq. 1.4)."""
    t, cg, kh, kw = (int(v) for v in weight_shape)
    positions = int(_tensor(mask).sum()) if mask is not None else cg * groups * kh * kw
    return 2 * (t // groups) * positions * int(out_hw[0]) * int(out_hw[1]) * int(batch)
