"""Recipes: the ``gbd`` LightningCLI (atomic checkpoint writes, an ``export`` section, the run's
report and ``model.pt2`` written after fit) and the model of a checkpoint rebuilt from the recipe
(``gbd pt2``)."""

from __future__ import annotations

import re
import tempfile
import warnings
from pathlib import Path

import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from ..core.pt2 import RUN_PT2, save_pt2
from ..training.callbacks.base import GroupMaskCallback
from ..training.checkpoint import load_checkpoint
from ..training.report import format_table, plot_patterns, plot_process, write_sparsity_json


class GBDCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--export.target", default="llvm", help="llvm or cuda")
        parser.add_argument("--export.input_shape", type=list[int] | None, default=None, help="N,C,H,W of the export")
        parser.add_argument("--export.out", type=str | None, default=None, help="artifact folder (default RUN/export)")

    def instantiate_trainer(self, **kwargs):
        """The recipe's Trainer, with atomic checkpoint writes and weights-only loads
        (``checkpoint_io.AtomicCheckpointIO``) unless the recipe brings its own CheckpointIO."""
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

        from ..training.checkpoint import AtomicCheckpointIO

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
            write_run_pt2(self.model, dict(self.config.get("fit", self.config)["export"]), self.datamodule, run_dir)


def write_run_pt2(model, export: dict, datamodule, run_dir: Path) -> Path | None:
    """``RUN_DIR/model.pt2``: the trained network, exported at the recipe's ``export.input_shape``
    (else the shape of one training batch), with the recipe's target - all ``gbd-export`` needs."""
    shape = export.get("input_shape")
    if not shape and datamodule is not None:
        shape = list(next(iter(datamodule.train_dataloader()))[0].shape)
    if not shape:
        rank_zero_warn(f"gbd: no export.input_shape in the recipe; {RUN_PT2} not written")
        return None
    net = model.net if hasattr(model, "net") else model
    path = run_dir / RUN_PT2
    settings = {"target": export.get("target") or "llvm"}
    save_pt2(net.to("cpu"), torch.randn(*shape), path, settings=settings)
    rank_zero_info(f"gbd: wrote {path} (input {list(shape)}): gbd-export {run_dir} --out DIR")
    return path


def write_report(cb: GroupMaskCallback, run_dir: Path) -> None:

    run_dir.mkdir(parents=True, exist_ok=True)
    rows = cb.reports()
    print(format_table(rows))
    write_sparsity_json(run_dir / "sparsity.json", rows, history=cb.history)
    plot_patterns(rows, run_dir / "patterns.png")
    if cb.history and "theta" in cb.history[0]:
        plot_process(cb.history, run_dir / "process.png", holdout_key="holdout_acc")


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


#: keys of the ``fit`` subcommand that a saved run config holds but a model-only parse rejects
FIT_ONLY_KEYS = ("ckpt_path", "weights_only")


def model_from_recipe(config: str | Path, checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """Returns ``(network in eval mode, export section of the recipe)``.

    The model is instantiated from the recipe's ``model`` section, decomposed layers recorded by
    ``LowRankDecomposition`` are rebuilt, and the checkpoint's weights are loaded
    (``weights_only=True``) strictly. Raises ``ValueError``/``FileNotFoundError`` with one line."""
    from lightning.pytorch import LightningDataModule

    from ..training.callbacks.decomposition import LowRankDecomposition
    from .models import ImageClassifier

    if not Path(config).is_file():
        raise FileNotFoundError(f"recipe {config} does not exist")
    ckpt = load_checkpoint(checkpoint)
    if "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {checkpoint} has no state_dict: not a Lightning checkpoint")
    # a recipe, or the config.yaml a `gbd fit` run saved (it also holds the fit subcommand's keys)
    try:
        conf = yaml.safe_load(Path(config).read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"recipe {config} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(conf, dict):
        raise ValueError(f"recipe {config} is not a LightningCLI config (a mapping)")
    for key in FIT_ONLY_KEYS:
        conf.pop(key, None)
    try:
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
            clean = Path(tmp) / Path(config).name
            clean.write_text(yaml.safe_dump(conf))
            cli = GBDCLI(
                ImageClassifier,
                LightningDataModule,
                subclass_mode_data=True,
                run=False,
                args=["--config", str(clean), "--trainer.logger", "false"],
                parser_kwargs={"exit_on_error": False},
                save_config_callback=None,
            )
    except Exception as exc:  # noqa: BLE001 - jsonargparse raises many kinds; the user gets one line
        raise ValueError(f"recipe {config}: {argument_error_line(str(exc))}") from None
    model = cli.model
    for cb in cli.trainer.callbacks:
        if isinstance(cb, LowRankDecomposition):
            state = ckpt.get("callbacks", {}).get(cb.state_key, {})
            if state.get("done"):
                cb.decompose(model, forced=state["done"])
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"checkpoint {checkpoint} does not fit the recipe's model: {str(exc).splitlines()[0]}"
        ) from None
    export = dict(cli.config.get("export") or {})
    net = model.net if hasattr(model, "net") else model
    return net.eval(), export
