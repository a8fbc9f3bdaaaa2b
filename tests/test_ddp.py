"""Two CPU processes on gloo end with identical masks, theta and weights on both ranks, for every
sparsity callback and the force regularization - and with the state a 1-process run of the same
global batches reaches (weights equal up to float summation order)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_worker(tmp_path, kind, devices):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), kind, str(devices)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("kind", ["gradual", "groupwise", "fixed", "regularizer", "force"])
def test_ddp_two_ranks_identical_state(tmp_path, kind):
    run_worker(tmp_path, kind, 2)
    a, b = (torch.load(tmp_path / f"{kind}_rank{i}.pt", weights_only=True) for i in (0, 1))
    if kind in ("gradual", "groupwise", "fixed"):
        assert a["state"]["masks"] and a["state"]["masks"].keys() == b["state"]["masks"].keys()
        for k in a["state"]["masks"]:
            assert torch.equal(a["state"]["masks"][k], b["state"]["masks"][k]), k
        assert any((~m).any() for m in a["state"]["masks"].values()), "nothing was pruned"
    if kind == "gradual":
        assert a["state"]["theta"] == b["state"]["theta"] > 0
        assert len(a["state"]["history"]) == len(b["state"]["history"]) > 0
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    # equality with one process on the same global batches
    run_worker(tmp_path, kind, 1)
    s = torch.load(tmp_path / f"{kind}_single.pt", weights_only=True)
    if kind in ("gradual", "groupwise", "fixed"):
        for k in a["state"]["masks"]:
            assert torch.equal(a["state"]["masks"][k], s["state"]["masks"][k]), k
    if kind == "gradual":
        assert a["state"]["theta"] == pytest.approx(s["state"]["theta"], rel=1e-6)
        assert len(a["state"]["history"]) == len(s["state"]["history"])
    for k in a["weights"]:
        torch.testing.assert_close(a["weights"][k], s["weights"][k], rtol=1e-4, atol=1e-5, msg=k)
