"""``gbd``: the recipe runner. Recipes are plain LightningCLI configs (model, data, trainer with
its callbacks) plus an ``export`` section that ``gbd-export`` reads.

    gbd fit --config recipes/lenet5_fmnist_gradual.yaml
    gbd report RUN_DIR            # rebuild the table, sparsity.json and the Fig. 4/5 plots
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from .callbacks.base import GroupMaskCallback
from .models import ImageClassifier


class GBDCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--export.target", default="llvm", help="llvm or cuda")
        parser.add_argument("--export.input_shape", type=list[int] | None, default=None, help="N,C,H,W of the export")
        parser.add_argument("--export.out", type=str | None, default=None, help="artifact folder (default RUN/export)")

    def instantiate_trainer(self, **kwargs):
        """The recipe's Trainer, with atomic checkpoint writes and weights-only loads
        (``checkpoint_io.AtomicCheckpointIO``) unless the recipe brings its own CheckpointIO."""
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

        from .checkpoint_io import AtomicCheckpointIO

        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def after_fit(self) -> None:
        """Write the run's report next to its checkpoints."""
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        for cb in self.trainer.callbacks:
            if isinstance(cb, GroupMaskCallback) and cb.masks:
                write_report(cb, run_dir)
        if self.trainer.is_global_zero:
            (run_dir / "recipe_export.json").write_text(json.dumps(dict(self.config.get("fit", self.config)["export"])))


def write_report(cb: GroupMaskCallback, run_dir: Path) -> None:
    from .report import format_table, plot_patterns, plot_process, write_sparsity_json

    run_dir.mkdir(parents=True, exist_ok=True)
    rows = cb.reports()
    print(format_table(rows))
    write_sparsity_json(run_dir / "sparsity.json", rows, history=cb.history)
    plot_patterns(rows, run_dir / "patterns.png")
    if cb.history and "theta" in cb.history[0]:
        plot_process(cb.history, run_dir / "process.png", holdout_key="holdout_acc")


def report(run_dir: str) -> int:
    """``gbd report RUN_DIR``: rebuild the table and plots from the newest checkpoint in RUN_DIR."""
    from .report import format_table, layer_reports, load_checkpoint, plot_patterns, plot_process, write_sparsity_json
    import torch
    from torch import nn

    ckpts = sorted(Path(run_dir).rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        print(f"gbd report: no checkpoint (*.ckpt) under {run_dir}", file=sys.stderr)
        return 2
    ckpt = load_checkpoint(ckpts[-1])
    store = ckpt.get("gbd_patterns", {})
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
    history = next((v.get("history") for k, v in ckpt.get("callbacks", {}).items() if isinstance(v, dict)
                    and v.get("history") and "theta" in v["history"][0]), None)
    if history:
        plot_process(history, Path(run_dir) / "process.png", holdout_key="holdout_acc")
    print(f"gbd report: wrote {run_dir}/sparsity.json, patterns.png" + (", process.png" if history else ""))
    return 0


def argument_error_line(text: str) -> str:
    """The one line of a jsonargparse error that names the fix."""
    key = re.search(r'Parser key "([^"]+)"', text)
    where = f"{key.group(1)}: " if key else ""
    m = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
    if m:
        return f"{where}{m.group(1)}: {m.group(2).strip()} (check the arguments of that class)"
    bullets = [ln.strip()[2:] for ln in text.splitlines() if ln.strip().startswith("- ")]
    bullets = [b for b in bullets if not b.startswith(("Expected a", "Not a valid subclass", "a "))]
    if bullets:
        return f"{where}{bullets[0]}"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Parser key")), text)
    return f"{where}{first}"


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        if len(argv) != 2:
            print("usage: gbd report RUN_DIR", file=sys.stderr)
            return 2
        return report(argv[1])
    try:
        GBDCLI(ImageClassifier, LightningDataModule, subclass_mode_data=True, args=argv if explicit else None,
               save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})
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
