"""Two CPU processes on gloo end with identical masks, theta and weights on both ranks, for every
sparsity callback and the force regularization."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", ["gradual", "groupwise", "fixed", "regularizer", "force"])
def test_ddp_two_ranks_identical_state(tmp_path, kind):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "ddp_worker.py"), str(tmp_path), kind],
                       env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
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
