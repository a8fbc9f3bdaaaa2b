"""Faults and hostile input: SIGKILL mid-epoch, truncated checkpoints, malicious pickles."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_gbd import load_checkpoint, read_patterns

ROOT = Path(__file__).resolve().parents[1]


def test_sigkill_mid_epoch_resumes_with_the_checkpointed_sparsity_state(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = [sys.executable, str(ROOT / "tests" / "kill_worker.py"), str(tmp_path)]
    proc = subprocess.Popen(worker, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for a checkpoint that already holds pruned groups
        time.sleep(0.5)
        if ckpt.exists():
            try:
                state = load_checkpoint(ckpt)
            except ValueError:
                continue  # caught while being written
            gbd = [v for k, v in state["callbacks"].items() if "Gradual" in k][0]
            if gbd["masks"] and any((~m).any() for m in gbd["masks"].values()) and state["global_step"] >= 12:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = load_checkpoint(ckpt)
    saved_gbd = [v for k, v in saved["callbacks"].items() if "Gradual" in k][0]
    r = subprocess.run(
        worker + ["--resume", "--max-steps", str(saved["global_step"] + 8)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    start = torch.load(tmp_path / "resumed_start.pt", weights_only=True)
    assert start["step"] == saved["global_step"] > 0
    assert start["state"]["theta"] == saved_gbd["theta"]
    for k, m in saved_gbd["masks"].items():
        assert torch.equal(start["state"]["masks"][k], m)
    # pruned groups are still zero in the weights the resumed run starts from
    w = saved["state_dict"]["net.c3.weight"]
    from lightning_gbd.core.groups import group_norms

    assert (group_norms(w, 2)[~saved_gbd["masks"]["net.c3"]] == 0).all()


@pytest.mark.parametrize("io", ["lightning", "atomic"])
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, io):
    """Checkpoints every 4 steps; from step 10 on no file may grow past 4 KiB (RLIMIT_FSIZE: writes
    fail part-way with EFBIG, as on a full disk), so the step-12 save fails.  The step-8 checkpoint
    must survive intact, no partial file may be left beside it, and training resumes from it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = [sys.executable, str(ROOT / "tests" / "kill_worker.py"), str(tmp_path)] + (
        ["--atomic"] if io == "atomic" else []
    )
    r = subprocess.run(worker + ["--disk-full-after", "10"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "File too large" in r.stderr
    if io == "atomic":
        assert "could not write checkpoint" in r.stderr and "the previous checkpoint there is kept" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary or partial file
    saved = load_checkpoint(tmp_path / "last.ckpt")
    assert saved["global_step"] == 8
    assert read_patterns(tmp_path / "last.ckpt")  # the sparsity state is in it
    r = subprocess.run(worker + ["--resume", "--max-steps", "16"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    start = torch.load(tmp_path / "resumed_start.pt", weights_only=True)
    assert start["step"] == 8
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 16


def test_truncated_checkpoint_is_detected(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(100, 100)}, "gbd_patterns": {}}, good)
    data = good.read_bytes()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"bad\.ckpt is corrupt or unsafe to load"):
        load_checkpoint(bad)
    assert load_checkpoint(good)["state_dict"]["w"].sum() == 10000  # the previous file is intact


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/gbd_pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil()}, p)
    marker = Path("/tmp/gbd_pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="corrupt or unsafe"):
        read_patterns(p)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ValueError, match="corrupt or unsafe"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
