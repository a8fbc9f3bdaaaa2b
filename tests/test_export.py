"""Whole-model export: numerical equivalence with PyTorch (max relative error <= 1e-4) of
GBD-sparse LeNet-5, ResNet-18 (default run), AlexNet and VGG-11 (slow), the manifest, the
runtime loader, the dense baseline, the CUDA build and meta_schedule tuning (slow)."""

import json
import os
import time

import pytest
import torch
import torchvision
from torch import nn

import tvm_passes
from tests.test_passes import impose_gbd, lenet, rel_err
from tvm_passes.errors import ArtifactError

TOL = 1e-4


def _export_and_check(model, shape, out_dir, **kw):
    torch.manual_seed(1)
    model = model.eval()
    x = torch.randn(*shape)
    man = tvm_passes.export_model(model, x, "llvm", str(out_dir), **kw)
    assert man["verification"]["passed"], man["verification"]
    f = tvm_passes.load(out_dir)
    xt = torch.randn(*shape)
    with torch.no_grad():
        ref = model(xt).numpy()
    out = f(xt)
    assert isinstance(out, torch.Tensor)
    assert rel_err(out.numpy(), ref) <= TOL
    assert rel_err(f(xt.numpy()), ref) <= TOL  # numpy in, numpy out
    return man


def test_lenet5_gbd(tmp_path):
    torch.manual_seed(0)
    m = impose_gbd(lenet(), density=0.3, dead=0.15)
    man = _export_and_check(m, (2, 1, 28, 28), tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.so", "manifest.json", "verification.json"} <= files
    with open(tmp_path / "manifest.json") as f:
        disk = json.load(f)
    assert disk["library_sha256"] == man["library_sha256"]
    assert disk["input"] == {
        "name": "input",
        "shape": [2, 1, 28, 28],
        "dtype": "float32",
        "dynamic_batch": False,
        "example_batch": 2,
    }
    assert [c["name"] for c in disk["convs"]] == ["0", "2"]
    conv2 = disk["convs"][1]
    assert conv2["decision"] == "gather-gemm"
    assert conv2["flops_executed"] < conv2["flops_dense"]
    assert conv2["dead_channels"]["input_maps_removed"] > 0
    assert disk["convs"][0]["dead_channels"]["output_maps_removed"] == conv2["dead_channels"]["input_maps_removed"]
    for key in ("name", "weight_shape", "decision", "density", "flops_dense", "flops_executed", "reason"):
        assert key in conv2
    assert len(disk["linears"]) == 2
    assert set(disk["versions"]) == {"torch", "tvm", "lightning_gbd"}
    with open(tmp_path / "verification.json") as f:
        ver = json.load(f)
    assert ver["passed"] and ver["max_relative_error"] <= TOL and ver["tolerance"] == TOL


def test_loader_reuses_its_input_tensor(tmp_path):
    """Array inputs are copied into one device tensor per thread and shape (no fresh allocation per
    call): consecutive calls, a misaligned torch slice, another batch of a dynamic artifact and a
    second thread all get their own correct outputs, and an earlier result is not overwritten."""
    import threading

    import numpy as np

    torch.manual_seed(0)
    m = impose_gbd(lenet(), density=0.3, dead=0.15).eval()
    tvm_passes.export_model(m, torch.randn(2, 1, 28, 28), "llvm", str(tmp_path), dynamic_batch=True)
    f = tvm_passes.load(tmp_path)
    xs = [torch.randn(2, 1, 28, 28) for _ in range(3)]
    with torch.no_grad():
        refs = [m(x).numpy() for x in xs]
    outs = [f(x.numpy()) for x in xs[:2]]
    assert f._inputs.tensor is f._to_tvm(xs[0].numpy())  # the same tensor, refilled
    for out, ref in zip(outs, refs):
        assert rel_err(out, ref) <= TOL
    flat = torch.randn(2 * 28 * 28 + 1)
    sliced = flat[1:].view(2, 1, 28, 28)  # 4 bytes off the allocation: not 64-byte aligned
    with torch.no_grad():
        assert rel_err(f(sliced).numpy(), m(sliced).numpy()) <= TOL
    x5 = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert rel_err(f(x5.numpy()), m(x5).numpy()) <= TOL
    res = {}
    t = threading.Thread(target=lambda: res.update(out=f(xs[2].numpy())))
    t.start()
    t.join()
    assert rel_err(res["out"], refs[2]) <= TOL and rel_err(f(xs[1].numpy()), refs[1]) <= TOL
    assert np.array_equal(outs[0], f(xs[0].numpy()))


def test_loader_concurrent_calls(tmp_path):
    """Threads calling one loaded model at once each get their own input's output: every thread
    runs its own VM (one shared VM's registers and buffers were overwritten by the other calls
    and crashed the process)."""
    import threading

    torch.manual_seed(0)
    m = impose_gbd(torchvision.models.resnet18(weights=None), density=0.3, dead=0.15).eval()
    tvm_passes.export_model(m, torch.randn(2, 3, 32, 32), "llvm", str(tmp_path), do_verify=False)
    f = tvm_passes.load(tmp_path)
    xs = [torch.randn(2, 3, 32, 32) for _ in range(4)]
    with torch.no_grad():
        refs = [m(x).numpy() for x in xs]
    errs, failures = [], []

    def work(i):
        try:
            for _ in range(25):
                errs.append(rel_err(f(xs[i]).numpy(), refs[i]))
        except Exception as e:  # reported below: a thread's exception does not fail the test
            failures.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not failures and len(errs) == 100 and max(errs) <= TOL


def test_resnet18_gbd(tmp_path):
    torch.manual_seed(0)
    m = impose_gbd(torchvision.models.resnet18(weights=None), density=0.3, dead=0.15)
    man = _export_and_check(m, (1, 3, 32, 32), tmp_path)
    t = man["totals"]
    assert t["convs"] == 20 and t["gather_gemm"] >= 17
    assert t["input_maps_removed"] > 0  # conv1 -> conv2 inside the basic blocks
    assert t["flops_ratio"] < 0.5


def test_dense_baseline_forces_dense_kernels(tmp_path):
    torch.manual_seed(0)
    m = impose_gbd(lenet(), density=0.3, dead=0.15)
    man = _export_and_check(m, (1, 1, 28, 28), tmp_path, sparse=False)
    assert all(c["decision"] == "dense" for c in man["convs"])
    assert man["totals"]["flops_ratio"] == 1.0 and man["totals"]["input_maps_removed"] == 0


def test_layout_net_stride_dilation_groups(tmp_path, layout_net):
    m = impose_gbd(layout_net, density=0.35, dead=0.1)
    man = _export_and_check(m, (2, 1, 16, 16), tmp_path)
    assert [c["groups"] for c in man["convs"]] == [1, 1, 2, 16, 1]


def test_runtime_refuses_tampered_library_and_caches(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    tvm_passes.export_model(m.eval(), torch.randn(1, 1, 8, 8), "llvm", str(tmp_path), do_verify=False)
    assert not os.path.exists(tmp_path / "verification.json")
    f1 = tvm_passes.load(tmp_path)
    t = time.time()
    for _ in range(20):
        assert tvm_passes.load(tmp_path) is f1  # cached: repeated loads are cheap
    assert time.time() - t < 1.0
    with open(tmp_path / "manifest.json") as f:
        man = json.load(f)
    man["library_sha256"] = "0" * 64
    with open(tmp_path / "manifest.json", "w") as f:
        json.dump(man, f)
    with pytest.raises(ArtifactError, match="sha256"):
        tvm_passes.load(tmp_path)


def test_unsupported_op_falls_back_with_warning(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ConvTranspose2d(4, 2, 3, stride=2)).eval()
    with pytest.warns(UserWarning, match="conv2d_transpose"):
        _export_and_check(m, (1, 3, 8, 8), tmp_path)


def test_cuda_artifact_builds(tmp_path):
    torch.manual_seed(0)
    m = impose_gbd(lenet())
    man = tvm_passes.export_model(m.eval(), torch.randn(1, 1, 28, 28), "cuda", str(tmp_path))
    assert man["target"]["kind"] == "cuda" and man["device"] == "cuda"
    assert os.path.getsize(tmp_path / "model.so") > 0
    with open(tmp_path / "verification.json") as f:
        ver = json.load(f)
    if not torch.cuda.is_available():
        assert ver["skipped"]
    else:
        assert ver["passed"]


@pytest.mark.slow
def test_alexnet_gbd(tmp_path):
    torch.manual_seed(0)
    m = impose_gbd(torchvision.models.alexnet(weights=None), density=0.3, dead=0.1)
    _export_and_check(m, (1, 3, 64, 64), tmp_path)


@pytest.mark.slow
def test_vgg11_gbd(tmp_path):
    torch.manual_seed(0)
    m = impose_gbd(torchvision.models.vgg11(weights=None), density=0.3, dead=0.1)
    _export_and_check(m, (1, 3, 32, 32), tmp_path)


@pytest.mark.slow
def test_tuning_database_is_reused(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2)).eval()
    x = torch.randn(1, 3, 10, 10)
    db = tmp_path / "db"
    man1 = tvm_passes.export_model(m, x, "llvm", str(tmp_path / "a"), tune_trials=2, tune_db=str(db))
    assert man1["tuning"]["tuned"] and man1["verification"]["passed"]
    t = time.time()
    man2 = tvm_passes.export_model(m, x, "llvm", str(tmp_path / "b"), tune_trials=2, tune_db=str(db))
    assert man2["tuning"]["tuned"] == [] and man2["tuning"]["cached"] == man1["tuning"]["tuned"]
    assert man2["verification"]["passed"]
    assert time.time() - t < 60
