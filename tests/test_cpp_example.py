"""``examples/cpp/run_artifact.cc``: an artifact run from C++ with only the TVM runtime gives
the top-1 classes Python's ``tvm_passes.load(dir)(x)`` gives.

Built with the C++ compiler found here against the headers and libraries of the installed wheels
(``tvm_ffi/include``, ``tvm/lib/libtvm_runtime.so``, ``tvm_ffi/lib/libtvm_ffi.so``); skipped,
with the reason, where any of them is missing.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tvm_passes
from tests.test_passes import impose_gbd, lenet

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cpp"


def _package_dir(name) -> Path | None:
    spec = importlib.util.find_spec(name)  # no import: only where the wheel lies
    return Path(spec.origin).parent if spec is not None and spec.origin else None


@pytest.fixture(scope="module")
def toolchain() -> dict:
    """Compiler, include dir and library dirs, or ``pytest.skip`` naming what is missing."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    cxx = next((shutil.which(n) for n in names if shutil.which(n)), None)
    if not cxx:
        pytest.skip("no C++ compiler (g++, c++, clang++ or $CXX) on this machine")
    tvm_dir, ffi_dir = _package_dir("tvm"), _package_dir("tvm_ffi")
    need = {
        "TVM FFI headers": ffi_dir and ffi_dir / "include" / "tvm" / "ffi" / "extra" / "module.h",
        "DLPack header": ffi_dir and ffi_dir / "include" / "dlpack" / "dlpack.h",
        "libtvm_runtime.so": tvm_dir and tvm_dir / "lib" / "libtvm_runtime.so",
        "libtvm_ffi.so": ffi_dir and ffi_dir / "lib" / "libtvm_ffi.so",
    }
    missing = [what for what, path in need.items() if not (path and path.is_file())]
    if missing:
        pytest.skip(f"not in the installed wheels: {', '.join(missing)}")
    return {"cxx": cxx, "include": ffi_dir / "include", "libs": [tvm_dir / "lib", ffi_dir / "lib"]}


def build(tc, out: Path) -> Path:
    """The Makefile's command, spelled out."""
    exe = out / "run_artifact"
    libs = [f for d in tc["libs"] for f in (f"-L{d}", f"-Wl,-rpath,{d}")]
    cmd = [tc["cxx"], "-std=c++17", "-O2", f"-I{tc['include']}", str(EXAMPLE / "run_artifact.cc"), "-o", str(exe)]
    cmd += libs + ["-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,--as-needed", "-ldl", "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return exe


@pytest.fixture(scope="module")
def lenet_artifact(tmp_path_factory):
    """A LeNet-5 artifact with a dynamic batch (biases zeroed: the classes differ per image)."""
    out = tmp_path_factory.mktemp("cpp") / "lenet"
    torch.manual_seed(0)
    model = impose_gbd(lenet(), density=0.3, dead=0.15).eval()
    with torch.no_grad():
        for layer in model:
            if getattr(layer, "bias", None) is not None:
                layer.bias.zero_()
    man = tvm_passes.export_model(model, torch.randn(2, 1, 28, 28), "llvm", str(out), dynamic_batch=True)
    assert man["verification"]["passed"] and man["input"]["dynamic_batch"]
    return out


def _run(exe, *args):
    env = dict(os.environ, TVM_NUM_THREADS="2")
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def test_cpp_top1_equals_python(toolchain, lenet_artifact, tmp_path):
    exe = build(toolchain, tmp_path)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(3)).numpy()
    x.tofile(tmp_path / "x.f32")
    want = np.argmax(tvm_passes.load(lenet_artifact)(x), axis=1).tolist()
    assert len(set(want)) > 1  # a check that could fail
    r = _run(exe, lenet_artifact, tmp_path / "x.f32")
    assert r.returncode == 0, r.stderr
    assert [int(v) for v in re.findall(r"^top1 (\d+)$", r.stdout, re.M)] == want
    assert "batch 8" in r.stderr

    x[:1].tofile(tmp_path / "one.f32")  # any batch: the artifact's batch is dynamic
    r = _run(exe, lenet_artifact, tmp_path / "one.f32")
    assert r.returncode == 0 and r.stdout.split() == ["top1", str(want[0])], r.stderr

    (tmp_path / "short.f32").write_bytes(b"\0" * 100)
    r = _run(exe, lenet_artifact, tmp_path / "short.f32")
    assert r.returncode == 1 and "expected float32 (N, C, H, W)" in r.stderr and not r.stdout
    r = _run(exe, tmp_path, tmp_path / "x.f32")  # not an artifact
    assert r.returncode == 1 and "manifest.json" in r.stderr


def test_makefile_builds(toolchain, lenet_artifact, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    r = subprocess.run(
        ["make", "-C", str(EXAMPLE), f"PYTHON={sys.executable}", f"CXX={toolchain['cxx']}", f"BUILD={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    np.zeros((2, 1, 28, 28), np.float32).tofile(tmp_path / "z.f32")
    r = _run(tmp_path / "run_artifact", lenet_artifact, tmp_path / "z.f32")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r.stderr
