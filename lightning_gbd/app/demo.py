"""``make demo``: LeNet-5 on Fashion-MNIST -> dense baseline -> gradual group-wise sparsification
of both convs -> per-layer table, hold-out accuracies, ``sparsity.json`` and the Fig. 4/5 plots
-> export to TVM and a side-by-side timing of PyTorch eager, TVM dense and TVM sparse."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from ..training.callbacks import GradualGroupSparsification
from ..training.report import flop_weighted_density, format_table, plot_patterns, plot_process, write_sparsity_json
from .data import FashionMNISTDataModule
from .models import ImageClassifier, LeNet5, accuracy


def _trainer(out: Path, epochs: int, callbacks=(), val_every: float = 1.0) -> Trainer:
    return Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=list(callbacks),
        default_root_dir=str(out),
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=val_every,
        num_sanity_val_steps=0,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
    )


def run(out: Path, dense_epochs: int, max_sparse_epochs: int, seed: int, export: bool) -> dict:
    torch.set_num_threads(2)
    seed_everything(seed, workers=True)
    out.mkdir(parents=True, exist_ok=True)
    dm = FashionMNISTDataModule(batch_size=256, seed=seed)
    dm.setup()
    model = ImageClassifier(LeNet5(), lr=0.02, momentum=0.9, weight_decay=5e-4)

    t0 = time.time()
    _trainer(out, dense_epochs).fit(model, dm)
    dense_acc = accuracy(model, dm.test_dataloader())
    print(f"[demo] dense LeNet-5: hold-out accuracy {dense_acc:.4f} ({time.time() - t0:.0f} s)")
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}

    gbd = GradualGroupSparsification(
        monitor="control_acc", delta=0.006, lam=0.05, epsilon=0.05, quantile_step=0.05, patience=4, finetune_epochs=1
    )
    trainer = _trainer(out, max_sparse_epochs, [gbd], val_every=0.25)
    trainer.validate(model, dm, verbose=False)  # the input network's control accuracy = baseline
    holdout_base = float(trainer.callback_metrics["holdout_acc"])
    t0 = time.time()
    trainer.fit(model, dm)
    sparse_acc = accuracy(model, dm.test_dataloader())
    print(
        f"[demo] gradual GBD: {trainer.current_epoch} epochs, {time.time() - t0:.0f} s; "
        f"hold-out accuracy {sparse_acc:.4f} (drop {100 * (dense_acc - sparse_acc):.2f} points)"
    )

    rows = gbd.reports()
    print(format_table(rows))
    write_sparsity_json(
        out / "sparsity.json",
        rows,
        dense_accuracy=dense_acc,
        sparse_accuracy=sparse_acc,
        flop_weighted_density=flop_weighted_density(rows),
        holdout_drop_points=100 * (dense_acc - sparse_acc),
        theta=gbd.theta,
    )
    for h in gbd.history:
        h["holdout_baseline"] = holdout_base
    plot_patterns(rows, out / "patterns.png")
    plot_process(gbd.history, out / "process.png", holdout_key="holdout_acc")
    (out / "history.json").write_text(json.dumps(gbd.history, indent=1))
    torch.save(model.state_dict(), out / "sparse_model.pt")
    torch.save(dense_state, out / "dense_model.pt")
    summary = {
        "dense_accuracy": dense_acc,
        "sparse_accuracy": sparse_acc,
        "flop_weighted_density": flop_weighted_density(rows),
    }
    print(
        f"[demo] dense hold-out {dense_acc:.4f}, sparse hold-out {sparse_acc:.4f}, "
        f"FLOP-weighted conv density {summary['flop_weighted_density']:.3f}; wrote {out}/sparsity.json, "
        f"patterns.png, process.png"
    )
    if export:
        from .demo_export import export_and_time

        dense_model = ImageClassifier(LeNet5())
        dense_model.load_state_dict(dense_state)
        summary["speed"] = export_and_time(dense_model.net.eval(), model.net.eval(), out, dm)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/demo", type=Path)
    p.add_argument("--dense-epochs", type=int, default=3)
    p.add_argument("--max-sparse-epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-export", action="store_true", help="skip the TVM export and timing")
    a = p.parse_args(argv)
    run(a.out, a.dense_epochs, a.max_sparse_epochs, a.seed, export=not a.no_export)


if __name__ == "__main__":
    main()
