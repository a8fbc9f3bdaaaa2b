"""``gbd-bench``: percentiles and throughput per batch size, the same model in PyTorch (and the
ONNX runtimes when installed, a clear line when not), one-line errors."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from benchmarks import peers_int8
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


def _peers_int8(*args):
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.peers_int8", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )


def test_peers_int8_dry_run_and_bad_arguments(tmp_path):
    """``benchmarks/peers_int8.py --dry-run``: the plan, nothing timed or written, without the peers venvs."""
    out = tmp_path / "p.json"
    r = _peers_int8(
        "--dry-run", "--models", "resnet18", "--batches", "1,32", "--peers-python", tmp_path / "none",
        "--quant-python", tmp_path / "none", "--out", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    plan = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("resnet18")]
    assert [(p[2], p[3]) for p in plan] == [(b, e) for b in ("b1", "b32") for e in peers_int8.ENGINES]
    assert r.stdout.count("missing: run `make peers-venv`") == 2
    assert not out.exists()
    r = _peers_int8("--dry-run", "--models", "resnet19")
    assert r.returncode == 2 and "unknown model / engine: resnet19" in r.stderr


def test_peers_int8_ratios_and_targets():
    ms = {"ours_sparse": 10.0, "ours_int8": 4.0, "onnxruntime_int8": 9.0, "openvino_int8": 7.0, "deepsparse_int8": 5.0}
    eng = {k: {"ms": v, "rel_err": 0.02} for k, v in ms.items()}
    eng["deepsparse_int8"]["rel_err"] = 0.3
    row = peers_int8.derive(dict(model="resnet18", density=0.3, batch=1, engines=eng), tol=0.1)
    assert row["best_int8_peer"] == "openvino_int8"
    assert row["speedup"] == {"vs_ours_sparse": 2.5, "vs_deepsparse_int8": 1.25, "vs_best_int8_peer": 1.75}
    assert row["target_met"] == {"vs_ours_sparse": True, "vs_deepsparse_int8": False, "vs_best_int8_peer": False}
    assert row["flagged"] == ["deepsparse_int8"]
    md = peers_int8.markdown(dict(rows=[row], tol=0.1, command="python -m benchmarks.peers_int8 --models resnet18"))
    assert "| resnet18 | 1 | 0.3 | 10.0 | 4.00 | 9.00 | 7.00 | 5.00 | 2.50x ✓ | 1.25x ✗ | 1.75x ✗ |" in md
    assert "`python -m benchmarks.peers_int8 --models resnet18`" in md


def test_openvino_layers_counts_taps_inside_the_input():
    """benchmarks.openvino_layers: a 3x3 conv with padding 1 on a 7x7 map has 19 of its 21 taps per
    dimension inside the input (18% of all taps in the padding), a 56x56 map 166 of 168; stride 2
    and no padding drop none."""
    from benchmarks.openvino_layers import inside_taps

    assert inside_taps(7, 3, 1, 1, 1, 7) == 19
    assert inside_taps(56, 3, 1, 1, 1, 56) == 166
    assert abs(1 - (19 / 21) ** 2 - 0.181) < 1e-3
    assert inside_taps(3, 3, 2, 0, 1, 7) == 9
