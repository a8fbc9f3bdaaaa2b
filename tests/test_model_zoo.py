"""Whole-model equivalence (max relative error <= 1e-4, ``export_model`` llvm, verification
passed) beyond LeNet / AlexNet / VGG / ResNet-18 (those are in ``test_export.py``):

* MobileNetV2 (depthwise + inverted residuals, ReLU6)       - default run
* SqueezeNet 1.1 (fire modules: concat of 1x1 / 3x3)        - default run
* a hand-made dilated / grouped / asymmetric-kernel net      - default run
* ResNeXt-50 32x4d (groups 32)                               - slow
* DeepLabV3-MobileNetV3-Large (dilated backbone + ASPP rates 12/24/36, hardswish, SE,
  bilinear upsampling)                                       - slow

Every model gets GBD patterns (density ~0.3 plus ~15% dead input maps, ``impose_gbd``), its
convs rescaled to unit output std and its BatchNorm statistics calibrated on random data, so activations stay
O(1) through the depth
(random init + 70% zeroed weights would otherwise shrink the output to ~1e-16 and make the
relative check meaningless).  ``weights=None`` everywhere: nothing downloads.  Anything the
kernels do not handle must fall back to the dense legalized op with a ``gbd-export`` warning and
still match.
"""

import warnings

import pytest
import torch
import torchvision
from torch import nn

from tests.test_export import _export_and_check
from tests.test_passes import impose_gbd


def rescale_convs(model, shape, seed=0):
    """One forward pass that scales every conv (weight and bias) to unit output std, in order
    (LSUV-like): keeps models without BatchNorm (SqueezeNet) from vanishing after the GBD cut."""

    def hook(m, _inp, out):
        s = out.std().clamp_min(1e-12)
        m.weight.div_(s)
        if m.bias is not None:
            m.bias.div_(s)
        return out / s

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(torch.randn(4, *shape[1:], generator=torch.Generator().manual_seed(seed)))
    finally:
        for h in hs:
            h.remove()
    return model


def calibrate_bn(model, shape, batches=3, seed=0):
    """Running mean / var of every BatchNorm from a few random batches (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(4, *shape[1:], generator=gen))
    return model.eval()


def zoo_export(model, shape, tmp_path, density=0.3, dead=0.15):
    torch.manual_seed(0)
    model = impose_gbd(model, density=density, dead=dead)
    model = calibrate_bn(rescale_convs(model, shape), shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        man = _export_and_check(model, shape, tmp_path)  # verification passed + a second input
    msgs = [str(w.message) for w in caught if "gbd-export" in str(w.message)]
    for m in msgs:  # the only acceptable warning: an unsupported op falling back to dense
        assert "falling back to the dense" in m, m
    ver = man["verification"]
    assert ver["passed"] and ver["max_relative_error"] <= 1e-4
    # the output is not degenerate (the relative check would be vacuous on ~0 outputs)
    assert ver["max_abs_error"] < 1e-3
    with torch.no_grad():
        assert model(torch.randn(*shape)).abs().max() > 1e-3
    return man, msgs


def _convs_with(man, pred):
    return [c for c in man["convs"] if pred(c)]


class Seg(nn.Module):
    """torchvision segmentation models return {"out": ...}; the artifact has one output."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"]


class DilatedNet(nn.Module):
    """Dilated (2, 3, (1,2)), strided, grouped, non-square convs with BN, then a 1x1 head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 24, 3, padding=2, dilation=2),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.Conv2d(24, 32, 3, stride=2, padding=3, dilation=3, groups=4),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, (1, 3), padding=(0, 2), dilation=(1, 2)),
            nn.ReLU(),
            nn.Conv2d(32, 32, (5, 3), padding=(4, 3), dilation=(2, 3)),
            nn.ReLU(),
            nn.Conv2d(32, 10, 1),
        )

    def forward(self, x):
        return self.body(x)


def test_mobilenet_v2(tmp_path):
    man, _ = zoo_export(torchvision.models.mobilenet_v2(weights=None), (1, 3, 32, 32), tmp_path)
    t = man["totals"]
    assert t["convs"] == 52
    assert _convs_with(man, lambda c: c["groups"] > 1 and c["groups"] == c["weight_shape"][0])  # depthwise
    assert t["gather_gemm"] > 0 and t["input_maps_removed"] > 0 and t["flops_ratio"] < 0.8


def test_squeezenet1_1(tmp_path):
    man, _ = zoo_export(torchvision.models.squeezenet1_1(weights=None), (1, 3, 64, 64), tmp_path)
    t = man["totals"]
    assert t["convs"] == 26 and t["gather_gemm"] >= 15
    assert t["input_maps_removed"] > 0 and t["flops_ratio"] < 0.5


def test_dilated_net(tmp_path):
    man, _ = zoo_export(DilatedNet(), (2, 3, 33, 33), tmp_path)
    dil = sorted(tuple(c["dilation"]) for c in man["convs"])
    assert dil == sorted([(1, 1), (2, 2), (3, 3), (1, 2), (2, 3), (1, 1)])
    assert man["totals"]["gather_gemm"] >= 4


@pytest.mark.slow
def test_resnext50_32x4d(tmp_path):
    man, _ = zoo_export(torchvision.models.resnext50_32x4d(weights=None), (1, 3, 32, 32), tmp_path)
    t = man["totals"]
    assert t["convs"] == 53
    assert len(_convs_with(man, lambda c: c["groups"] == 32)) == 16
    assert t["gather_gemm"] > 0 and t["input_maps_removed"] > 0


@pytest.mark.slow
def test_deeplabv3_mobilenet_v3_large_dilated(tmp_path):
    m = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None)
    man, _ = zoo_export(Seg(m), (1, 3, 64, 64), tmp_path)
    dil = {tuple(c["dilation"]) for c in man["convs"]}
    assert {(2, 2), (12, 12), (24, 24), (36, 36)} <= dil
    assert man["totals"]["gather_gemm"] > 0
