"""The Fashion-MNIST recipes end to end, as a user runs them.

For each recipe: ``gbd fit --config RECIPE`` -> ``gbd-export <run>`` (the run directory holds
``model.pt2``) -> the compiled artifact scored on the whole hold-out split.  Prints and writes
(``<root>/fmnist_recipes.json``) per recipe: FLOP-weighted conv density, PyTorch hold-out accuracy
at the end of the fit (and after the dense warm-up where the recipe has one), the compiled
artifact's hold-out accuracy (float32, and INT8 calibrated on 256 training images:
``gbd calibration-set`` + ``gbd-export --dtype int8``), verification error and executed-FLOP ratio.

    .venv/bin/python scripts/fmnist_recipes.py [--root runs/fmnist_recipes] [--reuse]

``--reuse`` skips the fit of a recipe whose run folder already holds a ``last.ckpt``.  About 25 min
of CPU on 2 cores (LeNet-5 ~8 min, the small ResNet ~15 min).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("lenet5_fmnist_gradual", "resnet8_fmnist_groupwise")


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def last_run(root: Path) -> Path | None:
    runs = sorted(root.glob("lightning_logs/version_*/model.pt2"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parent if runs else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=ROOT / "runs" / "fmnist_recipes")
    p.add_argument("--reuse", action="store_true")
    a = p.parse_args()
    import torch

    from lightning_gbd.app.data import FashionMNISTDataModule
    from lightning_gbd.app.models import accuracy
    from lightning_gbd.training.report import flop_weighted_density
    from tvm_passes import load

    bin_dir = Path(sys.executable).parent
    dm = FashionMNISTDataModule()
    dm.setup()
    summary = {}
    for name in RECIPES:
        out = a.root / name
        run_dir = last_run(out) if a.reuse else None
        if run_dir is None:
            run(
                [
                    str(bin_dir / "gbd"),
                    "fit",
                    "--config",
                    f"recipes/{name}.yaml",
                    "--trainer.default_root_dir",
                    str(out),
                    "--trainer.enable_progress_bar",
                    "false",
                ]
            )
            run_dir = last_run(out)
        art, art8 = out / "export", out / "export_int8"
        run([str(bin_dir / "gbd-export"), str(run_dir), "--out", str(art), "-q"])
        run([str(bin_dir / "gbd"), "calibration-set", str(run_dir)])
        run(
            [
                str(bin_dir / "gbd-export"),
                str(run_dir),
                "--out",
                str(art8),
                "-q",
                "--dtype",
                "int8",
                "--calibration",
                str(run_dir),
            ]
        )
        manifest = json.loads((art / "manifest.json").read_text())
        ver = json.loads((art / "verification.json").read_text())
        bs = manifest["input"]["shape"][0]
        loader = torch.utils.data.DataLoader(dm.holdout_set, batch_size=bs, drop_last=True)
        compiled = accuracy(load(art), loader)
        compiled8 = accuracy(load(art8), loader)
        ver8 = json.loads((art8 / "verification.json").read_text())
        rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("holdout_acc")]
        sparsity = json.loads((run_dir / "sparsity.json").read_text())
        hist = sparsity.get("history") or []
        start_epoch = int(hist[0]["epoch_progress"]) if hist else None  # epoch of the first sparse validation
        warm = [r for r in rows if start_epoch is not None and int(r["epoch"]) < start_epoch]
        summary[name] = {
            "run": str(run_dir),
            "flop_weighted_density": flop_weighted_density(sparsity["layers"]),
            "holdout_after_dense_warmup": float(warm[-1]["holdout_acc"]) if warm and "gradual" in name else None,
            "holdout_pytorch_end": float(rows[-1]["holdout_acc"]),
            "holdout_compiled": compiled,
            "holdout_compiled_int8": compiled8,
            "int8_vs_fake_quant_max_rel_err": ver8["max_relative_error"],
            "holdout_compiled_images": len(loader) * bs,
            "verification_max_rel_err": ver["max_relative_error"],
            "executed_flops_ratio": manifest["totals"]["flops_ratio"],
            "convs": {"gather_gemm": manifest["totals"]["gather_gemm"], "dense": manifest["totals"]["dense"]},
        }
    (a.root / "fmnist_recipes.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\n{'recipe':<28}{'density':>8}{'dense':>8}{'PyTorch':>9}{'compiled':>9}{'int8':>9}{'rel err':>9}{'FLOPs':>7}"
    )
    for name, s in summary.items():
        dense = f"{s['holdout_after_dense_warmup']:.4f}" if s["holdout_after_dense_warmup"] else "-"
        print(
            f"{name:<28}{s['flop_weighted_density']:>8.3f}{dense:>8}{s['holdout_pytorch_end']:>9.4f}"
            f"{s['holdout_compiled']:>9.4f}{s['holdout_compiled_int8']:>9.4f}{s['verification_max_rel_err']:>9.1e}{s['executed_flops_ratio']:>7.2f}"
        )


if __name__ == "__main__":
    main()
