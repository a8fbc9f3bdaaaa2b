"""Per-conv profile of OpenVINO's CPU plugin on a peers model: where its dense speed comes from.

Usage (the peers venv; the ONNX file is the one ``benchmarks/peers.py`` exported):
    .venv-peers/bin/python -m benchmarks.openvino_layers \
        --onnx benchmarks/results/.cache/peers/resnet18_d1/model.onnx --batch 32

Compiles the model as ``peer_worker.py`` does (f32 precision hint, LATENCY, 2 threads) with
PERF_COUNT on, and prints per convolution: OpenVINO's kernel, its median time over ``--runs``
forwards, GFLOP/s counting every tap of the conv (what a GEMM over a zero-padded input computes:
``2 N T Cg kh kw OH OW``) and counting only the taps that fall inside the input (what a direct
conv that skips the padding computes; a 3x3 conv on a 7x7 map has 18% of its taps in the
padding, on 14x14 9%, on 56x56 2%).  Our own per-layer times:
``.venv/bin/python -m benchmarks.model_speed --models resnet18 --batches 32``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def inside_taps(out_len, k, stride, pad, dil, in_len):
    """Sum over output positions of the kernel taps (one dimension) that land inside the input."""
    pos = np.arange(out_len)[:, None] * stride - pad + np.arange(k)[None, :] * dil
    return int(((pos >= 0) & (pos < in_len)).sum())


def conv_flops(op):
    """(all-tap FLOPs, inside-tap FLOPs) of one OpenVINO Convolution node."""
    N, C, H, W = (int(d) for d in op.get_input_partial_shape(0).to_shape())
    T, Cg, kh, kw = (int(d) for d in op.get_input_partial_shape(1).to_shape())
    _, _, OH, OW = (int(d) for d in op.get_output_partial_shape(0).to_shape())
    a = op.get_attributes()
    (sh, sw), (dh, dw) = a["strides"], a["dilations"]
    (pt, pl) = a["pads_begin"]
    full = 2 * N * T * Cg * kh * kw * OH * OW
    inside = 2 * N * T * Cg * inside_taps(OH, kh, sh, pt, dh, H) * inside_taps(OW, kw, sw, pl, dw, W)
    return full, inside


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()

    import openvino as ov

    core = ov.Core()
    model = core.read_model(args.onnx)
    model.reshape([args.batch, 3, 224, 224])
    flops = {op.get_friendly_name(): conv_flops(op) for op in model.get_ops() if op.get_type_name() == "Convolution"}
    cfg = {
        "INFERENCE_NUM_THREADS": args.threads,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "PERF_COUNT": True,
    }
    req = core.compile_model(model, "CPU", cfg).create_infer_request()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    req.infer([x])
    times, kinds, walls = {}, {}, []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        req.infer([x])
        walls.append(time.perf_counter() - t0)
        for p in req.get_profiling_info():
            if p.node_name in flops:
                times.setdefault(p.node_name, []).append(p.real_time.total_seconds() * 1e3)
                kinds[p.node_name] = p.exec_type
    version = ov.__version__.split("-")[0]
    print(f"# OpenVINO {version}, batch {args.batch}, {args.threads} threads, forward {np.median(walls) * 1e3:.1f} ms")
    print(f"{'conv':<46}{'kernel':<26}{'ms':>8}{'GFLOP/s all taps':>18}{'inside taps':>13}")
    tot_ms = tot_full = tot_in = 0.0
    for name, ts in times.items():
        ms = float(np.median(ts))
        full, inside = flops[name]
        tot_ms, tot_full, tot_in = tot_ms + ms, tot_full + full, tot_in + inside
        print(f"{name[-45:]:<46}{kinds[name]:<26}{ms:8.2f}{full / ms / 1e6:18.1f}{inside / ms / 1e6:13.1f}")
    print(f"{'all convs':<72}{tot_ms:8.2f}{tot_full / tot_ms / 1e6:18.1f}{tot_in / tot_ms / 1e6:13.1f}")


if __name__ == "__main__":
    main()
