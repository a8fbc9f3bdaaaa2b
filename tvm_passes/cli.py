"""``gbd-export MODEL --target llvm|cuda --out DIR``: compile a GBD-sparse model with TVM.

MODEL is a ``.pt2`` (``torch.export``; see ``lightning_gbd.pt2.save_pt2``).  User errors are
printed as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import json
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


def build_parser():
    p = argparse.ArgumentParser(
        prog="gbd-export", description="Compile a group-sparse (GBD) PyTorch model with TVM into --out DIR."
    )
    p.add_argument("model", help="model file: a torch.export .pt2, or a Lightning .ckpt with --config")
    p.add_argument("--config", default=None, help="the recipe (LightningCLI YAML) that trained the .ckpt")
    p.add_argument("--target", choices=["llvm", "cuda"], default="llvm")
    p.add_argument("--out", required=True, help="output directory (model.so, manifest.json, verification.json)")
    p.add_argument("--input-shape", type=_shape, default=None, help="N,C,H,W (default: the .pt2 example input)")
    p.add_argument("--tune-trials", type=int, default=0, help="meta_schedule trials (0: hand/generic schedules)")
    p.add_argument("--tune-db", default=None, help="persistent tuning database dir (default ~/.cache/lightning_gbd/tune_db)")
    p.add_argument("--dense", action="store_true", help="force every conv to the dense kernel path")
    p.add_argument("--decompose-error", type=float, default=None, metavar="E",
                   help="decompose convs whose PCA rank at error E lowers FLOPs (basis conv + 1x1; paper 002)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    return text[:400] if text else type(exc).__name__


def _from_checkpoint(args):
    """A Lightning checkpoint + its recipe -> the network, exported at the recipe's input shape."""
    from .importer import ExportError  # noqa: PLC0415

    if args.config is None:
        raise ExportError(f"{args.model}: a Lightning checkpoint needs --config RECIPE.yaml (the recipe that trained it)")
    import torch  # noqa: PLC0415

    from lightning_gbd.recipe_model import model_from_recipe  # noqa: PLC0415

    try:
        net, export = model_from_recipe(args.config, args.model)
    except (ValueError, FileNotFoundError) as exc:
        raise ExportError(str(exc)) from None
    shape = args.input_shape or (tuple(export["input_shape"]) if export.get("input_shape") else None)
    if shape is None:
        raise ExportError(f"{args.config}: no export.input_shape in the recipe: pass --input-shape N,C,H,W")
    args.input_shape = None
    with torch.no_grad():
        ep = torch.export.export(net, (torch.randn(*shape),))
    return ep, args


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .importer import ExportError, load_exported_program  # noqa: PLC0415

    try:
        if args.config is not None or args.model.endswith(".ckpt"):
            ep, args = _from_checkpoint(args)
        else:
            ep = load_exported_program(args.model)
        from .build import export_model  # noqa: PLC0415

        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.formatwarning = lambda m, c, *a, **k: f"warning: {m}\n"
            manifest = export_model(
                ep,
                None,
                args.target,
                args.out,
                sparse=not args.dense,
                tune_trials=args.tune_trials,
                tune_db=args.tune_db,
                do_verify=not args.no_verify,
                input_shape=args.input_shape,
                decompose_error=args.decompose_error,
                progress=False if args.quiet else None,
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
