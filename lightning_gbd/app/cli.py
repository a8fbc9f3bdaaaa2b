"""``gbd``: the recipe runner. Recipes are plain LightningCLI configs (model, data, trainer with
its callbacks) plus an ``export`` section (target, input shape).

    gbd fit --config recipes/lenet5_fmnist_gradual.yaml   # the run dir gets model.pt2 at the end
    gbd-export RUN_DIR --out DIR                          # compile it (no recipe, no data needed)
    gbd report RUN_DIR            # rebuild the table, sparsity.json and the Fig. 4/5 plots
    gbd pt2 --config RUN_DIR/config.yaml --ckpt CKPT --out model.pt2   # any other checkpoint
    gbd export-onnx RUN_DIR --out model.onnx   # the run's model.pt2 as ONNX (batch dynamic)
    gbd calibration-set RUN_DIR    # RUN_DIR/calibration.npy for gbd-export --dtype int8 --calibration RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule

from ..core.onnx_export import save_onnx
from ..core.pt2 import RUN_PT2, save_pt2
from ..training.checkpoint import PATTERNS_KEY, load_checkpoint
from ..training.report import format_table, layer_reports, plot_patterns, plot_process, write_sparsity_json
from .models import ImageClassifier
from .recipe import GBDCLI, argument_error_line, model_from_recipe


def report(run_dir: str) -> int:
    """``gbd report RUN_DIR``: rebuild the table and plots from the newest checkpoint in RUN_DIR."""
    from torch import nn

    ckpts = sorted(Path(run_dir).rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        print(f"gbd report: no checkpoint (*.ckpt) under {run_dir}", file=sys.stderr)
        return 2
    ckpt = load_checkpoint(ckpts[-1])
    store = ckpt.get(PATTERNS_KEY, {})
    if not store:
        print(f"gbd report: {ckpts[-1]} holds no GBD patterns", file=sys.stderr)
        return 2
    convs, masks = {}, {}
    for name, e in store.items():
        t, c, kh, kw = e["weight_shape"]
        conv = nn.Conv2d(c * e["groups"], t, (kh, kw), groups=e["groups"], bias=False)
        with torch.no_grad():
            conv.weight.copy_(ckpt["state_dict"].get(f"{name}.weight", conv.weight))
        convs[name], masks[name] = conv, e["mask"]
    rows = layer_reports(convs, masks, {})
    print(format_table(rows))
    write_sparsity_json(Path(run_dir) / "sparsity.json", rows, checkpoint=str(ckpts[-1]))
    plot_patterns(rows, Path(run_dir) / "patterns.png")
    history = next(
        (
            v.get("history")
            for k, v in ckpt.get("callbacks", {}).items()
            if isinstance(v, dict) and v.get("history") and "theta" in v["history"][0]
        ),
        None,
    )
    if history:
        plot_process(history, Path(run_dir) / "process.png", holdout_key="holdout_acc")
    print(f"gbd report: wrote {run_dir}/sparsity.json, patterns.png" + (", process.png" if history else ""))
    return 0


def pt2_command(argv: list[str]) -> int:
    """``gbd pt2 --config CONFIG --ckpt CKPT --out model.pt2 [--input-shape N,C,H,W]``."""
    p = argparse.ArgumentParser(
        prog="gbd pt2",
        description="Write a .pt2 for gbd-export from a checkpoint "
        "and the recipe (or a run's saved config.yaml) that trained it.",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--input-shape", default=None, help="N,C,H,W (default: the recipe's export.input_shape)")
    a = p.parse_args(argv)
    try:
        net, export = model_from_recipe(a.config, a.ckpt)
    except (ValueError, FileNotFoundError) as exc:
        print(f"gbd: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    shape = [int(v) for v in a.input_shape.split(",")] if a.input_shape else export.get("input_shape")
    if not shape:
        print(f"gbd: {a.config}: no export.input_shape in the recipe: pass --input-shape N,C,H,W", file=sys.stderr)
        return 2
    save_pt2(net, torch.randn(*shape), a.out, settings={"target": export.get("target") or "llvm"})
    print(f"gbd: wrote {a.out}")
    return 0


def export_onnx_command(argv: list[str]) -> int:
    """``gbd export-onnx RUN_DIR|MODEL.pt2 --out model.onnx [--input-shape N,C,H,W]``."""
    p = argparse.ArgumentParser(
        prog="gbd export-onnx",
        description="Write the model.pt2 of a `gbd fit` run (or any .pt2) as ONNX (opset 17, batch dynamic).",
    )
    p.add_argument("model", type=Path, help=f"a `gbd fit` run directory (holding {RUN_PT2}), or a .pt2")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--input-shape", default=None, help="N,C,H,W of the traced input (default: the .pt2's example)")
    a = p.parse_args(argv)
    src = a.model / RUN_PT2 if a.model.is_dir() else a.model
    if not src.is_file():
        print(
            f"gbd: {src}: no such file" + (" (not a finished `gbd fit` run)" if a.model.is_dir() else ""),
            file=sys.stderr,
        )
        return 2
    try:
        ep = torch.export.load(src)
    except Exception as exc:  # noqa: BLE001 - any failure means a malformed file
        print(f"gbd: {src}: not a valid torch.export .pt2 file ({type(exc).__name__})", file=sys.stderr)
        return 2
    example = ep.example_inputs[0][0] if ep.example_inputs and ep.example_inputs[0] else None
    if a.input_shape:
        try:
            example = torch.randn(*[int(v) for v in a.input_shape.split(",")])
        except (ValueError, RuntimeError):
            print(f"gbd: bad --input-shape {a.input_shape!r} (expected N,C,H,W)", file=sys.stderr)
            return 2
    if example is None:
        print(f"gbd: {src} holds no example input: pass --input-shape N,C,H,W", file=sys.stderr)
        return 2
    try:
        save_onnx(ep, example, a.out)
    except ValueError as exc:
        print(f"gbd: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"gbd: wrote {a.out} (input {list(example.shape[1:])} per item, batch dynamic): gbd-export {a.out} --out DIR")
    return 0


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        if len(argv) != 2:
            print("usage: gbd report RUN_DIR", file=sys.stderr)
            return 2
        return report(argv[1])
    if argv[:1] == ["pt2"]:
        return pt2_command(argv[1:])
    if argv[:1] == ["export-onnx"]:
        return export_onnx_command(argv[1:])
    if argv[:1] == ["calibration-set"]:
        from .calibration import calibration_command

        return calibration_command(argv[1:])
    try:
        GBDCLI(
            ImageClassifier,
            LightningDataModule,
            subclass_mode_data=True,
            args=argv if explicit else None,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"exit_on_error": False},
        )
    except FileNotFoundError as exc:  # missing data path / weights file
        print(f"gbd: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad values, also as wrapped by jsonargparse at instantiation
        print(f"gbd: {argument_error_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # jsonargparse's ArgumentError for unknown keys
        if type(exc).__name__ in ("ArgumentError", "NSKeyError"):
            print(f"gbd: bad recipe: {argument_error_line(str(exc))}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
