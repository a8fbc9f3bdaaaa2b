"""``--batch dynamic``: one artifact for any batch size, kernels compiled for a symbolic batch,
verified at two batch sizes; a fixed-batch artifact refuses another batch with one line."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import tvm_passes
from lightning_gbd import save_pt2
from tvm_passes.cli import main as export_main


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 12 * 12, 10),
    ).eval()
    with torch.no_grad():
        net[4].weight[:, :, 0, :] = 0  # a GBD pattern: the gather-GEMM path
        net[4].weight[:, 3] = 0  # a dead input map
    return net


def test_one_artifact_any_batch(tmp_path):
    net = _net()
    save_pt2(net, torch.randn(1, 1, 28, 28), tmp_path / "m.pt2")  # traced at batch 1, static
    out = tmp_path / "art"
    assert export_main([str(tmp_path / "m.pt2"), "--out", str(out), "--batch", "dynamic", "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["dynamic_batch"] and manifest["input"]["shape"][0] == "batch"
    assert manifest["verification"]["passed"] and manifest["verification"]["batches"] == [1, 3]
    assert [c["decision"] for c in manifest["convs"]] == ["dense", "gather-gemm"]
    model = tvm_passes.load(out)
    for b in (1, 3, 7):
        x = torch.randn(b * 784 + 1)[1:].view(b, 1, 28, 28)  # 4 bytes off: not 64-byte aligned
        ref = net(x).detach().numpy()
        got = model(x).numpy()
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4, b


def test_fixed_batch_artifact_refuses_another_batch(tmp_path):
    net = _net()
    save_pt2(net, torch.randn(1, 1, 28, 28), tmp_path / "m.pt2")
    out = tmp_path / "art"
    assert export_main([str(tmp_path / "m.pt2"), "--out", str(out), "--batch", "4", "-q"]) == 0
    model = tvm_passes.load(out)
    assert model.input_shape == (4, 1, 28, 28) and not model.dynamic_batch
    x = torch.randn(4, 1, 28, 28)
    assert np.abs(model(x).numpy() - net(x).detach().numpy()).max() < 1e-4
    with pytest.raises(ValueError, match=r"expected input shape \[4, 1, 28, 28\]"):
        model(torch.randn(2, 1, 28, 28))


def test_dynamic_batch_winograd(tmp_path):
    """Dense 3x3 convs run as Winograd with a symbolic batch too (its tile floor counted for one
    image: a 16x16 map has 16 tiles) and the artifact runs at any batch, odd ones included."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1)).eval()
    save_pt2(net, torch.randn(1, 16, 16, 16), tmp_path / "m.pt2")
    out = tmp_path / "art"
    assert export_main([str(tmp_path / "m.pt2"), "--out", str(out), "--batch", "dynamic", "-q"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["decision"] for c in manifest["convs"]] == ["winograd", "winograd"]
    model = tvm_passes.load(out)
    for b in (1, 5, 32):
        x = torch.randn(b, 16, 16, 16)
        ref = net(x).detach().numpy()
        assert np.abs(model(x).numpy() - ref).max() / np.abs(ref).max() <= 1e-5, b
