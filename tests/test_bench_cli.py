"""``gbd-bench``: percentiles and throughput per batch size, the same model in PyTorch (and the
ONNX runtimes when installed, a clear line when not), one-line errors."""

import importlib.util
import json
import subprocess
import sys

import torch
from torch import nn

from lightning_gbd import save_pt2
from tvm_passes.cli import main as export_main


def _bench(*args):
    return subprocess.run(
        [sys.executable, "-m", "tvm_passes.bench", *map(str, args)], capture_output=True, text=True, timeout=600
    )


def test_bench_batches_and_peers(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(), nn.LazyLinear(10)
    )
    net(torch.randn(1, 3, 16, 16))
    net = net.eval()
    save_pt2(net, torch.randn(1, 3, 16, 16), tmp_path / "m.pt2")
    art = tmp_path / "art"
    assert export_main([str(tmp_path / "m.pt2"), "--out", str(art), "--batch", "dynamic", "-q"]) == 0
    r = _bench(
        art,
        "--batch",
        "1,3",
        "--threads",
        "2",
        "--rounds",
        "3",
        "--against",
        "torch,onnxruntime",
        "--json",
        tmp_path / "b.json",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    ours = [x for x in rows if x["runtime"].startswith("gbd ")]
    assert [x["batch"] for x in ours] == [1, 3]
    for x in ours + [x for x in rows if x["runtime"] == "torch"]:
        assert 0 < x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"] and x["throughput_per_s"] > 0
    assert [x["batch"] for x in rows if x["runtime"] == "torch"] == [1, 3]
    ort = [x for x in rows if x["runtime"] == "onnxruntime"]
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        assert all("not installed" in x["skipped"] for x in ort)
        assert "onnxruntime: batch 1: skipped (" in r.stdout
    assert r.stdout.count("p50") == 4 + (0 if ort and "skipped" in ort[0] else 2)


def test_bench_refuses_another_batch_for_a_fixed_artifact(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    save_pt2(net, torch.randn(2, 3, 8, 8), tmp_path / "m.pt2", dynamic_batch=False)
    assert export_main([str(tmp_path / "m.pt2"), "--out", str(tmp_path / "a"), "-q"]) == 0
    r = _bench(tmp_path / "a", "--batch", "4")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "takes batch 2 only" in lines[0], r.stderr
