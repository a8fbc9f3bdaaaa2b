"""batch_chunks (docs/formulas.md 1.27): where the front of a network runs image by image at a
large batch, and an export that does so matches PyTorch.  The size threshold is lowered so that a
small MobileNet-style network on 32x32 inputs stands in for one on 224x224 inputs."""

import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from tvm import relax

import tvm_passes
from tvm_passes import batch_chunks
from tvm_passes.kernels import expand_depthwise
from tvm_passes.pipeline import lower
from tvm_passes.target import make_target

from .test_passes import impose_gbd

LLVM = make_target("llvm")


@pytest.fixture
def small_maps(monkeypatch):
    monkeypatch.setattr(batch_chunks, "FRONT_MIN_BYTES", 128 << 10)
    # the expansion stays its own memory-bound kernel (not fused with the depthwise conv after it)
    monkeypatch.setattr(expand_depthwise, "MIN_EXPANDED_BYTES", 1 << 40)


def _inverted():
    """Stem, an inverted-residual block (1x1 expansion to 64 maps of 32x32: 256 KB per image,
    depthwise 3x3 at stride 2, 1x1 projection), then two 3x3 convs that hold most of the FLOPs."""
    torch.manual_seed(0)
    act = nn.ReLU6
    layers = OrderedDict(
        stem=nn.Conv2d(3, 16, 3, padding=1), a0=act(), expand=nn.Conv2d(16, 64, 1), a1=act(),
        dw=nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=64), a2=act(), project=nn.Conv2d(64, 24, 1),
        conv=nn.Conv2d(24, 96, 3, stride=2, padding=1), a3=act(), conv2=nn.Conv2d(96, 96, 3, padding=1),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(96, 10),
    )  # fmt: skip
    return nn.Sequential(layers).eval()


def _lowered(model, batch, sparse=False):
    ep = torch.export.export(model, (torch.randn(batch, 3, 32, 32),))
    return lower(ep, LLVM, sparse=sparse).mod


@pytest.fixture(scope="module")
def mods():
    """The network lowered (dense) at batch 8 and at batch 1 (the expansion unfused, as in small_maps)."""
    m = _inverted()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(expand_depthwise, "MIN_EXPANDED_BYTES", 1 << 40)
        return _lowered(m, 8), _lowered(m, 1)


def test_plan_cuts_after_the_big_memory_bound_maps(small_maps, mods):
    """The front ends after the stride-2 depthwise conv, the first small tensor after the big
    expansion; a batch under MIN_BATCH, and a dense ResNet-18 (whose big maps come from a 7x7 stem of
    294 FLOPs per value and 3x3 convs) are not split."""
    mod_b, _ = mods
    assert batch_chunks.plan(mod_b, 8) == batch_chunks.Cut("dw", 1)
    assert batch_chunks.plan(mod_b, batch_chunks.MIN_BATCH - 1) is None
    resnet = torchvision.models.resnet18(weights=None).eval()
    assert batch_chunks.plan(_lowered(resnet, 8), 8) is None


def test_chunked_export_matches_pytorch(tmp_path, small_maps):
    """The network with GBD patterns at batch 8: main runs ``front`` once per image, then the rest
    over the batch; the artifact records the cut and matches PyTorch, on calls after the first too."""
    m = impose_gbd(_inverted(), density=0.5, dead=0.1)
    x = torch.randn(8, 3, 32, 32)
    man = tvm_passes.export_model(m, x, "llvm", str(tmp_path))
    assert man["batch_chunks"] == {"front_until": "dw", "chunk": 1}
    assert man["verification"]["passed"]
    with open(tmp_path / "manifest.json") as f:
        assert json.load(f)["batch_chunks"]["chunk"] == 1
    f = tvm_passes.load(tmp_path)
    for _ in range(2):
        xs = torch.randn(8, 3, 32, 32)
        with torch.no_grad():
            ref = m(xs).numpy()
        assert np.abs(f(xs).numpy() - ref).max() / np.abs(ref).max() < 1e-5


def test_assembled_main_calls_front_per_image(small_maps, mods):
    """main calls the front once per image; the front's kernels are the batch-1 module's."""
    mod_b, mod_c = mods
    cut = batch_chunks.plan(mod_b, 8)
    mod = batch_chunks.assemble(mod_b, mod_c, cut, 8)
    calls = [
        b.value
        for b in mod["main"].body.blocks[0].bindings
        if isinstance(b.value, relax.Call) and getattr(b.value.op, "name_hint", None) == "front"
    ]
    assert len(calls) == 8
    front = [g.name_hint for g in mod.get_global_vars() if g.name_hint.startswith("gbd_conv_expand")]
    assert front and all(n.endswith("_front") for n in front)  # the batch's own front kernels are gone


def test_failed_chunking_keeps_the_batch_wide_export(tmp_path, small_maps, monkeypatch):
    """Where the front cannot be built, the export warns in one line and stays batch-wide."""

    def broken(*args):
        raise RuntimeError("no front here")

    monkeypatch.setattr(batch_chunks, "assemble", broken)
    with pytest.warns(UserWarning, match="every layer stays batch-wide .*no front here"):
        man = tvm_passes.export_model(_inverted(), torch.randn(8, 3, 32, 32), "llvm", str(tmp_path))
    assert "batch_chunks" not in man and man["verification"]["passed"]
