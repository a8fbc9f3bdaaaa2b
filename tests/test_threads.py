"""A loaded artifact configures the runtime's thread pool itself: every core this process may
use by default, ``threads=`` or ``TVM_NUM_THREADS`` to override - in a fresh process with no
``TVM_*`` variable set, as a user loads it."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import tvm_passes

PROBE = """
import json, sys
import numpy as np
import tvm_passes
from tvm_ffi import get_global_func
kwargs = json.loads(sys.argv[2])
model = tvm_passes.load(sys.argv[1], **kwargs)
model(np.zeros(model.example_shape(), np.float32))
print(get_global_func("runtime.NumThreads")())
"""


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    out = tmp_path_factory.mktemp("threads") / "art"
    tvm_passes.export_model(net, torch.randn(2, 3, 12, 12), "llvm", str(out), do_verify=False)
    return out


def _threads(artifact, env=None, **kwargs):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TVM_")}
    r = subprocess.run(
        [sys.executable, "-c", PROBE, str(artifact), json.dumps(kwargs)],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return int(r.stdout.strip().splitlines()[-1])


def test_default_is_every_core_this_process_may_use(artifact):
    assert _threads(artifact) == len(os.sched_getaffinity(0))


def test_argument_and_environment_override(artifact):
    assert _threads(artifact, threads=1) == 1
    assert _threads(artifact, env={"TVM_NUM_THREADS": "1"}) == 1
    if len(os.sched_getaffinity(0)) >= 2:
        assert _threads(artifact, env={"TVM_NUM_THREADS": "1"}, threads=2) == 2  # the argument wins
