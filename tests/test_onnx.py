"""ONNX in and out.

* in: ``gbd-export model.onnx`` goes through TVM's Relax ONNX frontend and then the same GBD
  passes as a ``.pt2``: a ResNet-18 with random GBD patterns, exported to ONNX by the user with
  ``torch.onnx.export``, gives PyTorch's outputs (max rel err <= 1e-4) and the same per-conv
  names, decisions and densities as the ``.pt2`` route;
* out: ``lightning_gbd.save_onnx`` and ``gbd export-onnx RUN_DIR|MODEL.pt2``;
* one-line errors for bad ``.onnx`` files.
"""

import json
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

onnx = pytest.importorskip("onnx")

import tvm_passes  # noqa: E402
from lightning_gbd import save_onnx, save_pt2  # noqa: E402
from lightning_gbd.core.groups import density, group_mask  # noqa: E402
from tests.test_passes import impose_gbd, lenet  # noqa: E402
from tvm_passes.cli import main as gbd_export  # noqa: E402
from tvm_passes.errors import ExportError  # noqa: E402
from tvm_passes.frontend.onnx_import import _scope_path, read_onnx  # noqa: E402

TOL = 1e-4


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def gbd_3x3(model, density=0.3, seed=0):
    """Zero random GBD groups W[:, s, i, j] (kept with probability ``density``) of every 3x3 conv."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                keep = (torch.rand(m.weight.shape[1], 3, 3, generator=g) < density).float()
                m.weight.mul_(keep)
    return model


def _convs(man) -> list:
    return [(c["name"], c["decision"], c["density"]) for c in man["convs"]]


def _manifest(out) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_resnet18_onnx_route_matches_pt2_route(tmp_path):
    torch.manual_seed(0)
    model = gbd_3x3(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(  # what a user does, not our helper
            model,
            (x,),
            tmp_path / "resnet18.onnx",
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    save_pt2(model, x, tmp_path / "resnet18.pt2")
    assert gbd_export([str(tmp_path / "resnet18.onnx"), "--out", str(tmp_path / "onnx"), "-q"]) == 0
    assert gbd_export([str(tmp_path / "resnet18.pt2"), "--out", str(tmp_path / "pt2"), "-q", "--no-verify"]) == 0
    man, ref_man = _manifest(tmp_path / "onnx"), _manifest(tmp_path / "pt2")

    ver = man["verification"]  # against the ONNX model itself (ONNX Runtime or onnx.reference)
    assert ver["passed"] and ver["max_relative_error"] <= TOL and "onnx" in ver["reference"]
    assert man["input"] == {**ref_man["input"], "name": "input"} and man["output"] == ref_man["output"]
    xt = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = model(xt).numpy()
    assert rel_err(tvm_passes.load(tmp_path / "onnx")(xt), want) <= TOL

    # the same layers, named after the PyTorch modules, with the same decisions and densities
    assert _convs(man) == _convs(ref_man)
    assert [c["name"] for c in man["convs"]][:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert [r["name"] for r in man["linears"]] == ["fc"] == [r["name"] for r in ref_man["linears"]]
    assert man["totals"] == ref_man["totals"]
    assert man["totals"]["gather_gemm"] >= 12 and man["totals"]["flops_ratio"] < 0.5


def test_save_onnx_then_dynamic_batch_export(tmp_path):
    torch.manual_seed(0)
    model = impose_gbd(lenet(), density=0.3, dead=0.15).eval()
    path = save_onnx(model, torch.randn(2, 1, 28, 28), tmp_path / "lenet.onnx")
    om = read_onnx(path)
    assert om.input_name == "input" and om.input_shape == (None, 1, 28, 28)
    man = tvm_passes.export_model(path, None, "llvm", str(tmp_path / "art"), dynamic_batch=True)
    assert man["input"]["dynamic_batch"] and man["verification"]["passed"]
    assert man["verification"]["batches"] == [1, 3]  # a symbolic batch in the file: batch 1 by default
    assert [c["name"] for c in man["convs"]] == ["0", "2"] and [r["name"] for r in man["linears"]] == ["5", "7"]
    f = tvm_passes.load(tmp_path / "art")
    for batch in (1, 5):
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            assert rel_err(f(x), model(x)) <= TOL


def test_gbd_export_onnx_cli_from_pt2(tmp_path):
    from lightning_gbd.app.cli import main as gbd

    torch.manual_seed(0)
    model = gbd_3x3(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))).eval()
    run = tmp_path / "run"
    save_pt2(model, torch.randn(2, 3, 12, 12), run / "model.pt2")
    assert gbd(["export-onnx", str(run), "--out", str(tmp_path / "m.onnx")]) == 0
    proto = onnx.load(tmp_path / "m.onnx")
    assert [n.name for n in proto.graph.node if n.op_type == "Conv"] == ["/0/Conv", "/3/Conv"]  # layer names kept
    from onnx.reference import ReferenceEvaluator

    x = torch.randn(3, 3, 12, 12)  # another batch: the batch is dynamic
    with torch.no_grad():
        assert rel_err(ReferenceEvaluator(proto).run(None, {"input": x.numpy()})[0], model(x)) <= TOL
    assert gbd(["export-onnx", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert gbd(["export-onnx", str(run), "--out", str(tmp_path / "x.txt")]) == 2


def test_bn_left_in_the_graph_is_folded_and_named_by_weight(tmp_path):
    """An ONNX with BatchNormalization nodes (no constant folding): TVM folds BN into the conv,
    which keeps the zero groups; layers are named after their weight initializers."""
    torch.manual_seed(0)
    model = gbd_3x3(nn.Sequential(nn.Conv2d(4, 16, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU())).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 4, 10, 10),),
            tmp_path / "bn.onnx",
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    assert "BatchNormalization" in [n.op_type for n in onnx.load(tmp_path / "bn.onnx").graph.node]
    man = tvm_passes.export_model(str(tmp_path / "bn.onnx"), None, "llvm", str(tmp_path / "art"))
    assert man["verification"]["passed"]
    (conv,) = man["convs"]
    assert conv["name"] == "0" and conv["density"] == density(group_mask(model[0].weight))


def test_scope_names():
    assert _scope_path("/layer2/layer2.0/downsample/downsample.0/Conv") == "layer2.0.downsample.0"
    assert _scope_path("/features/features.3/Conv") == "features.3"
    assert _scope_path("/conv1/Conv") == "conv1" and _scope_path("/Conv") == ""


def test_bad_onnx_files_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \xff\xfe")
    assert gbd_export([str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gbd-export: error:") and "bad.onnx" in err[0]
    assert gbd_export([str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err

    m = nn.Sequential(nn.Conv2d(1, 2, 3))
    save_onnx(m, torch.randn(1, 1, 5, 5), tmp_path / "ok.onnx")
    assert gbd_export([str(tmp_path / "ok.onnx"), "--out", str(tmp_path / "o"), "--input-shape", "1,3,5,5"]) == 2
    assert "does not fit the ONNX input 'input' ['N', 1, 5, 5]" in capsys.readouterr().err
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] = float("nan")
    path = save_onnx(m, torch.randn(1, 1, 5, 5), tmp_path / "nan.onnx")
    with pytest.raises(ExportError, match="contains NaN"):
        tvm_passes.export_model(path, None, "llvm", str(tmp_path / "o"))
    h = onnx.helper
    two = h.make_model(
        h.make_graph(
            [h.make_node("Add", ["a", "b"], ["c"])],
            "two",
            [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2]) for n in "ab"],
            [h.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1, 2])],
        )
    )
    with pytest.raises(ExportError, match="2 graph inputs"):
        read_onnx(two)
