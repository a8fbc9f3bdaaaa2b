"""Decomposed models round-trip through the TVM export (paper 002, docs/formulas.md section 3)."""

import json

import numpy as np
import torch
from torch import nn

from lightning_gbd.core.lowrank import pca_decompose
from tvm_passes import export_model, load


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=2)

    def forward(self, x):
        return torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))


def low_rank_net(rank=4):
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for conv in (net.c2, net.c3):  # make the weights exactly low-rank, with GBD zero groups
            t, c, kh, kw = conv.weight.shape
            g = conv.groups
            w = torch.einsum("gnk,gkd->gnd", torch.randn(g, t // g, rank), torch.randn(g, rank, c * kh * kw))
            w = w.reshape(t, c, kh, kw)
            w[:, :, 0, 0] = 0  # a zeroed group position in every input map
            conv.weight.copy_(w / w.norm() * 3)
    return net


def test_decomposed_pytorch_model_exports_exactly(tmp_path):
    net = low_rank_net()
    net.c2, _ = pca_decompose(net.c2, rank=4)
    x = torch.randn(2, 3, 16, 16)
    m = export_model(net, x, "llvm", str(tmp_path / "a"))
    assert m["verification"]["passed"] and m["verification"]["max_relative_error"] <= 1e-4
    np.testing.assert_allclose(load(tmp_path / "a")(x).numpy(), net(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_export_time_decomposition_of_low_rank_convs(tmp_path):
    net = low_rank_net(rank=4)
    x = torch.randn(2, 3, 16, 16)
    m = export_model(net, x, "llvm", str(tmp_path / "b"), decompose_error=1e-6)
    dec = {d["name"]: d for d in m["decomposed"]}
    assert set(dec) == {"c2", "c3"}, dec
    assert dec["c2"]["rank"] == 4 and dec["c3"]["rank"] == 4 and dec["c2"]["error"] < 1e-9
    assert m["verification"]["passed"] and m["verification"]["max_relative_error"] <= 1e-4
    names = [c["name"] for c in m["convs"]]
    assert any("basis" in n for n in names) and any("coeff" in n for n in names), names
    basis = [c for c in m["convs"] if c["name"] == "c2.basis"][0]
    assert basis["density"] < 1.0  # the GBD zero columns survive in the basis conv
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["decomposed"]


def test_full_rank_convs_are_not_decomposed(tmp_path):
    torch.manual_seed(1)
    net = Net().eval()
    m = export_model(net, torch.randn(1, 3, 8, 8), "llvm", str(tmp_path / "c"), decompose_error=0.0)
    assert m["decomposed"] == [] and m["verification"]["passed"]
