"""``gbd-export MODEL --target llvm|cuda --out DIR``: compile a GBD-sparse model with TVM.

MODEL is a ``.pt2`` (``torch.export``; see ``lightning_gbd.save_pt2``), the directory of a
finished ``gbd fit`` run (it holds ``model.pt2``), or an ``.onnx`` model (TVM's ONNX frontend;
verified against ONNX Runtime, or ``onnx.reference`` without it).  User errors are printed as
one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings


def _shape(text):
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r} (expected N,C,H,W)") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"bad shape {text!r} (expected positive N,C,H,W)")
    return dims


def _batch(text):
    if text == "dynamic":
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"bad batch {text!r} (expected 'dynamic' or a positive number)")


def build_parser():
    p = argparse.ArgumentParser(
        prog="gbd-export", description="Compile a group-sparse (GBD) PyTorch model with TVM into --out DIR."
    )
    p.add_argument(
        "model", help="a torch.export .pt2, a `gbd fit` run directory (holding model.pt2), or an .onnx model"
    )
    p.add_argument(
        "--target",
        choices=["llvm", "cuda"],
        default=None,
        help="default: the target saved in the .pt2 by the recipe, else llvm",
    )
    p.add_argument("--out", required=True, help="output directory (model.so, manifest.json, verification.json)")
    p.add_argument(
        "--input-shape",
        type=_shape,
        default=None,
        help="N,C,H,W (default: the .pt2 example input; for an .onnx, its input shape, a symbolic batch as 1)",
    )
    p.add_argument("--tune-trials", type=int, default=0, help="meta_schedule trials (0: hand/generic schedules)")
    p.add_argument(
        "--tune-db", default=None, help="persistent tuning database dir (default ~/.cache/lightning_gbd/tune_db)"
    )
    p.add_argument(
        "--batch",
        type=_batch,
        default=None,
        help="'dynamic': kernels for any batch at run time (within 3%% of a fixed batch on ResNet-18, see README); "
        "or a number: that batch (default: the .pt2's example input)",
    )
    p.add_argument("--dense", action="store_true", help="force every conv to the dense kernel path")
    p.add_argument(
        "--dtype",
        choices=["float32", "int8", "tf32", "float16", "bfloat16"],
        default="float32",
        help="compute dtype of the conv / linear kernels: float32 (default); int8 (CPUs with AVX-512 VNNI; convs "
        "quantized from --calibration); or tensor-core tf32 / float16 / bfloat16 with float32 accumulation "
        "(--target cuda only). Input and output stay float32",
    )
    p.add_argument(
        "--calibration",
        default=None,
        metavar="SOURCE",
        help="int8: calibration inputs, a .npy (N,C,H,W float32) or a `gbd fit` run directory holding "
        "calibration.npy (`gbd calibration-set RUN_DIR` writes it from the run's training split)",
    )
    p.add_argument(
        "--calibration-method",
        choices=["percentile", "minmax"],
        default="percentile",
        help="int8: each conv input's range from the calibration data: the 99.99th percentile (default) or min/max",
    )
    p.add_argument(
        "--decompose-error",
        type=float,
        default=None,
        metavar="E",
        help="decompose convs whose PCA rank at error E cuts FLOPs to <= 75%% (basis conv + 1x1; paper 002)",
    )
    p.add_argument(
        "--no-batch-chunks",
        action="store_true",
        help="at a batch of 8 or more, keep every layer batch-wide (by default the first, memory-bound "
        "layers run image by image where that pays; docs/formulas.md 1.27)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    return text[:400] if text else type(exc).__name__


def _with_batch(input_shape, batch, model):
    """``--input-shape`` with ``--batch N`` applied to it (or to the program's example input, or
    to the ONNX model's input shape)."""
    if not isinstance(batch, int):
        return input_shape
    from .frontend import example_input_of, input_shape_of
    from .frontend.onnx_import import is_onnx

    if is_onnx(model):
        base = model.static_shape(input_shape)
    else:
        base = input_shape or input_shape_of(model) or tuple(example_input_of(model).shape)
    return (batch, *base[1:])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import ExportError
    from .frontend.onnx_import import is_onnx, read_onnx
    from .frontend.program import read_pt2, resolve_model_path

    try:
        source = resolve_model_path(args.model)
        model, settings = (read_onnx(source), {}) if is_onnx(source) else read_pt2(source)
        from .export import export_model

        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.formatwarning = lambda m, c, *a, **k: f"warning: {m}\n"
            manifest = export_model(
                model,
                None,
                args.target or settings.get("target", "llvm"),
                args.out,
                sparse=not args.dense,
                tune_trials=args.tune_trials,
                tune_db=args.tune_db,
                do_verify=not args.no_verify,
                input_shape=_with_batch(args.input_shape, args.batch, model),
                dynamic_batch=(args.batch or settings.get("batch")) == "dynamic",
                decompose_error=args.decompose_error,
                progress=False if args.quiet else None,
                source=source,
                dtype=args.dtype,
                calibration=args.calibration,
                calibration_method=args.calibration_method,
                batch_chunks=not args.no_batch_chunks,
            )
    except ExportError as exc:
        print(f"gbd-export: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gbd-export: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - compiler failure: still one line
        print(f"gbd-export: error: compilation failed ({type(exc).__name__}: {_one_line(exc)})", file=sys.stderr)
        return 1
    if not args.quiet:
        t = manifest["totals"]
        ver = manifest.get("verification")
        vtext = "skipped"
        if ver and not ver.get("skipped"):
            vtext = f"max rel err {ver['max_relative_error']:.2e} ({'pass' if ver['passed'] else 'FAIL'})"
        print(
            f"gbd-export: wrote {args.out}: {t['convs']} convs ({t['gather_gemm']} gather-GEMM, {t['dense']} dense, "
            f"{t['input_maps_removed']} dead input maps removed), executed FLOPs {t['flops_ratio']:.2f}x dense, "
            f"verification {vtext}"
        )
    ver = manifest.get("verification")
    if ver and ver.get("passed") is False:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
