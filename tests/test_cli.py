"""``gbd-export`` end to end: .pt2 -> artifact -> load in a fresh process; one-line errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from lightning_gbd.core.pt2 import save_pt2
from tests.test_passes import impose_gbd, lenet


def _cli():
    exe = shutil.which("gbd-export") or os.path.join(os.path.dirname(sys.executable), "gbd-export")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "tvm_passes.cli"]


def _run(args, **kw):
    env = dict(os.environ, TVM_NUM_THREADS="2")
    return subprocess.run(_cli() + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(scope="module")
def lenet_pt2(tmp_path_factory):
    d = tmp_path_factory.mktemp("pt2")
    torch.manual_seed(0)
    m = impose_gbd(lenet(), density=0.3, dead=0.15).eval()
    path = d / "lenet.pt2"
    save_pt2(m, torch.randn(2, 1, 28, 28), path)
    torch.save(m.state_dict(), d / "state.pt")
    return path, m


def test_export_then_load_in_fresh_process(lenet_pt2, tmp_path):
    path, model = lenet_pt2
    out = tmp_path / "art"
    r = _run([path, "--target", "llvm", "--out", out, "--input-shape", "3,1,28,28"])
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    man = json.loads((out / "manifest.json").read_text())
    assert man["input"]["shape"] == [3, 1, 28, 28]  # --input-shape overrides the example batch
    assert json.loads((out / "verification.json").read_text())["passed"]

    x = torch.randn(3, 1, 28, 28)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        ref = model(x)
    script = textwrap.dedent(
        f"""
        import torch, tvm_passes
        f = tvm_passes.load({str(out)!r})
        y = f(torch.load({str(tmp_path / "x.pt")!r}))
        torch.save(y, {str(tmp_path / "y.pt")!r})
        """
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    y = torch.load(tmp_path / "y.pt")
    err = (y - ref).abs().max() / ref.abs().max()
    assert err <= 1e-4


def test_cuda_target_builds_artifact(lenet_pt2, tmp_path):
    path, _ = lenet_pt2
    out = tmp_path / "cu"
    r = _run([path, "--target", "cuda", "--out", out])
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["target"]["kind"] == "cuda" and (out / "model.so").stat().st_size > 0
    # the dynamic-batch .pt2 was specialized to its example shape: every conv hit the kernels
    assert man["input"]["shape"] == [2, 1, 28, 28] and man["totals"]["convs"] == 2
    assert "warning" not in r.stderr


@pytest.mark.parametrize("content", [b"this is not a pt2 archive", b"PK\x03\x04 truncated zip"])
def test_malformed_file_one_line_error(tmp_path, content):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(content)
    r = _run([bad, "--out", tmp_path / "o"])
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gbd-export: error:"), r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_zip_one_line_error(tmp_path):
    import zipfile

    bad = tmp_path / "corrupt.pt2"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    r = _run([bad, "--out", tmp_path / "o"])
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a valid torch.export .pt2" in lines[0], r.stderr


def test_other_files_rejected(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    r = _run([ckpt, "--out", tmp_path / "o"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = _run([tmp_path / "missing.pt2", "--out", tmp_path / "o"])
    assert r.returncode == 2 and "no such file" in r.stderr


def test_save_pt2_dynamic_batch_and_static_fallback(tmp_path):
    from tvm_passes.frontend import example_input_of, input_shape_of, load_exported_program

    torch.manual_seed(0)
    m = lenet().eval()
    save_pt2(m, torch.randn(2, 1, 28, 28), tmp_path / "dyn.pt2")
    ep = load_exported_program(str(tmp_path / "dyn.pt2"))
    assert input_shape_of(ep) is None  # symbolic batch: --input-shape may pick another one
    assert tuple(example_input_of(ep).shape) == (2, 1, 28, 28)
    save_pt2(m, torch.randn(1, 1, 28, 28), tmp_path / "static.pt2")
    assert input_shape_of(load_exported_program(str(tmp_path / "static.pt2"))) == (1, 1, 28, 28)
    assert not m.training
    with pytest.raises(ValueError):
        save_pt2(m, torch.randn(1, 1, 28, 28), tmp_path / "model.pt")
