"""``gbd-run ARTIFACT INPUTS.npy OUTPUTS.npy``: the artifact's outputs for a stack of inputs,
batch by batch at the artifact's batch size (the last, short batch is padded and trimmed)."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def run_batches(model, x: np.ndarray) -> np.ndarray:
    n = model.batch
    if tuple(x.shape[1:]) != tuple(model.input_shape[1:]):
        raise ValueError(
            f"inputs of shape {list(x.shape[1:])} per item, the artifact takes {list(model.input_shape[1:])}"
        )
    outs = []
    for i in range(0, len(x), n):
        chunk = x[i : i + n]
        pad = n - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        outs.append(np.asarray(model(chunk))[: n - pad])
    return np.concatenate(outs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gbd-run", description=__doc__)
    p.add_argument("artifact")
    p.add_argument("inputs", help=".npy of inputs (N, C, H, W)")
    p.add_argument("outputs", help=".npy to write the outputs to")
    a = p.parse_args(argv)
    from .artifact.loader import load
    from .errors import ArtifactError

    try:
        model = load(a.artifact)
        x = np.load(a.inputs, allow_pickle=False).astype(model.input_dtype, copy=False)
        np.save(a.outputs, run_batches(model, x))
    except (ArtifactError, ValueError, OSError) as exc:
        print(f"gbd-run: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
