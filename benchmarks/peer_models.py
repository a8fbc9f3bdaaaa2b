"""The models of ``benchmarks/peers.py``, rebuilt bit-identically in every process that needs them.

torchvision ResNet-18 / ResNet-50 / VGG-16 / AlexNet / MobileNetV2 (``weights=None``, seeded
random init, eval mode, 3x224x224) with random GBD groups ``W[:, s, i, j]`` of a conv group
zeroed at ``density``, per conv (so the FLOP-weighted density of the sparsified convs is
``density``), on every non-1x1 conv; ResNet-50 also on its 1x1 convs, where a GBD group is a
whole input map (dead input maps, the work of the compiler's DeadChannels pass).

Needs torch + torchvision only (the project venv); the PyTorch worker of ``peer_worker.py``
rebuilds the model from (name, density, seed) instead of shipping a state dict between
processes.  The random input of batch ``B`` is ``input_array(B)``.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

MODELS = ("resnet18", "resnet50", "vgg16", "alexnet", "mobilenet_v2")
INPUT_SHAPE = (3, 224, 224)
#: models whose 1x1 convs get zeroed input maps as well
ONE_BY_ONE_TOO = ("resnet50",)
INIT_SEED = 0
PATTERN_SEED = 1


def gbd_mask(C, kh, kw, density, rng, groups=1):
    """Boolean (groups, C//groups, kh, kw) keep-mask, round(density * n) random groups kept
    (the same draw as ``benchmarks.common.gbd_mask``)."""
    cg = C // groups
    n = groups * cg * kh * kw
    keep = np.zeros(n, dtype=bool)
    keep[rng.permutation(n)[: max(1, int(round(density * n)))]] = True
    return keep.reshape(groups, cg, kh, kw)


def apply_patterns_(model, name, density, seed=PATTERN_SEED):
    """Zero random GBD groups in place (see the module doc); returns {conv name: kept fraction}."""
    import torch

    rng = np.random.default_rng(seed)
    kept = {}
    if density >= 1.0:
        return kept
    with torch.no_grad():
        for cname, m in model.named_modules():
            if not isinstance(m, torch.nn.Conv2d):
                continue
            T, cg, kh, kw = m.weight.shape
            if kh * kw == 1 and name not in ONE_BY_ONE_TOO:
                continue
            g = m.groups
            keep = gbd_mask(cg * g, kh, kw, density, rng, g)
            w = m.weight.view(g, T // g, cg, kh, kw)
            w.mul_(torch.from_numpy(keep)[:, None].to(w.dtype))
            kept[cname] = float(keep.mean())
    return kept


def build_model(name, density, seed=PATTERN_SEED):
    """The eval-mode model ``name`` with its patterns at ``density``."""
    import torch
    import torchvision

    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(MODELS)})")
    torch.manual_seed(INIT_SEED)
    model = getattr(torchvision.models, name)(weights=None).eval()
    apply_patterns_(model, name, density, seed)
    return model


def input_array(batch):
    """The benchmark's input at ``batch``: seeded standard normal, float32, NCHW."""
    rng = np.random.default_rng(1000 + int(batch))
    return rng.standard_normal((int(batch), *INPUT_SHAPE)).astype(np.float32)


def model_tag():
    """Changes when the models or their patterns would change (this file, torch, torchvision)."""
    import torch
    import torchvision

    h = hashlib.sha256(open(os.path.abspath(__file__), "rb").read())
    h.update(f"{torch.__version__} {torchvision.__version__}".encode())
    return h.hexdigest()[:12]
