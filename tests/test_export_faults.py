"""Hostile / broken input to the export path: NaN/Inf weights refused naming the layer (API and
``gbd-export``), a pickle disguised as ``.pt2`` refused without executing code.

The loader's sha256 check (a tampered ``model.so`` / manifest is refused) is covered by
``tests/test_export.py::test_runtime_refuses_tampered_library_and_caches``; not repeated here.
"""

import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import tvm_passes
from lightning_gbd.core.pt2 import save_pt2
from tvm_passes.errors import ExportError
from tvm_passes.frontend import load_exported_program


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def _model(poison=None, value=float("nan")):
    torch.manual_seed(0)
    m = TwoConv().eval()
    if poison is not None:
        with torch.no_grad():
            t = dict(m.named_parameters(), **dict(m.named_buffers()))[poison]
            t.view(-1)[t.numel() // 2] = value
    return m


def _cli():
    exe = shutil.which("gbd-export") or os.path.join(os.path.dirname(sys.executable), "gbd-export")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "tvm_passes.cli"]


def _run(args):
    env = dict(os.environ, TVM_NUM_THREADS="2")
    return subprocess.run(_cli() + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=600)


# ------------------------------------------------------------------- NaN / Inf weights
@pytest.mark.parametrize(
    "param,value,expected",
    [
        ("conv2.weight", float("nan"), "layer 'conv2' weight contains NaN"),
        ("conv1.bias", float("inf"), "layer 'conv1' bias contains Inf"),
        ("fc.weight", float("-inf"), "layer 'fc' weight contains Inf"),
        ("bn1.running_var", float("nan"), "layer 'bn1' running_var contains NaN"),
    ],
)
def test_export_model_refuses_non_finite_weights(tmp_path, param, value, expected):
    m = _model(param, value)
    with pytest.raises(ExportError, match=expected):
        tvm_passes.export_model(m, torch.randn(1, 3, 8, 8), "llvm", str(tmp_path / "o"))
    assert not (tmp_path / "o" / "model.so").exists()  # refused before compiling anything


def test_export_model_finite_weights_still_export(tmp_path):
    man = tvm_passes.export_model(_model(), torch.randn(1, 3, 8, 8), "llvm", str(tmp_path))
    assert man["verification"]["passed"]


def test_cli_refuses_nan_weights_one_line_exit_2(tmp_path):
    m = _model("conv2.weight")
    path = tmp_path / "nan.pt2"
    save_pt2(m, torch.randn(2, 3, 8, 8), path)
    r = _run([path, "--out", tmp_path / "o"])
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gbd-export: error:") and "layer 'conv2' weight contains NaN" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "model.so").exists()


# ------------------------------------------------------------------- pickle disguised as .pt2
class _Evil:
    """Unpickling this would create ``marker`` (pickle calls ``open(marker, 'w')``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_pt2(tmp_path, how):
    marker = tmp_path / f"pwned_{how}"
    path = tmp_path / f"evil_{how}.pt2"
    if how == "raw_pickle":
        path.write_bytes(pickle.dumps(_Evil(marker)))
    else:  # torch.save writes a zip archive holding data.pkl: passes the zip check
        torch.save({"model": _Evil(marker)}, path)
    # sanity: the payload really does fire when unpickled unsafely
    probe = tmp_path / f"probe_{how}"
    if how == "raw_pickle":
        pickle.loads(pickle.dumps(_Evil(probe))).close()
        assert probe.exists()
    assert not marker.exists()
    return path, marker


@pytest.mark.parametrize("how", ["raw_pickle", "torch_save_zip"])
def test_pickle_renamed_pt2_refused_without_executing(tmp_path, how):
    path, marker = _pickle_pt2(tmp_path, how)
    with pytest.raises(ExportError, match="not a valid torch.export .pt2"):
        load_exported_program(str(path))
    assert not marker.exists(), "the loader executed pickle code"


@pytest.mark.parametrize("how", ["raw_pickle", "torch_save_zip"])
def test_cli_pickle_renamed_pt2_refused_without_executing(tmp_path, how):
    path, marker = _pickle_pt2(tmp_path, how)
    r = _run([path, "--out", tmp_path / "o"])
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a valid torch.export .pt2" in lines[0], r.stderr
    assert not marker.exists(), "gbd-export executed pickle code"


# ------------------------------------------------------------------- re-export in one process
def test_reexport_same_dir_in_process_is_fresh(tmp_path):
    """Found by the fuzz and fixed: dlopen caches by path, so the loader loads a per-sha copy."""
    x = torch.randn(1, 1, 3, 3)
    for t in (1, 2):
        torch.manual_seed(t)
        m = nn.Conv2d(1, t, 1).eval()
        man = tvm_passes.export_model(m, x, "llvm", str(tmp_path))
        out = tvm_passes.load(tmp_path)(x)
        assert tuple(out.shape) == (1, t, 3, 3)
        assert man["verification"]["passed"]
