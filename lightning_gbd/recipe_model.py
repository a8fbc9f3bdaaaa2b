"""Rebuild a trained model from a Lightning checkpoint and the recipe (LightningCLI config) that
trained it, for ``gbd-export CKPT --config RECIPE``."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import yaml
from torch import nn

from .report import load_checkpoint

#: keys of the ``fit`` subcommand that a saved run config holds but a model-only parse rejects
FIT_ONLY_KEYS = ("ckpt_path", "weights_only")


def model_from_recipe(config: str | Path, checkpoint: str | Path) -> tuple[nn.Module, dict]:
    """Returns ``(network in eval mode, export section of the recipe)``.

    The model is instantiated from the recipe's ``model`` section, decomposed layers recorded by
    ``LowRankDecomposition`` are rebuilt, and the checkpoint's weights are loaded
    (``weights_only=True``) strictly. Raises ``ValueError``/``FileNotFoundError`` with one line."""
    from lightning.pytorch import LightningDataModule

    from .callbacks.decomposition import LowRankDecomposition
    from .cli import GBDCLI, argument_error_line
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
            cli = GBDCLI(ImageClassifier, LightningDataModule, subclass_mode_data=True, run=False,
                         args=["--config", str(clean), "--trainer.logger", "false"],
                         parser_kwargs={"exit_on_error": False}, save_config_callback=None)
    except Exception as exc:  # jsonargparse errors
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
        raise ValueError(f"checkpoint {checkpoint} does not fit the recipe's model: "
                         f"{str(exc).splitlines()[0]}") from None
    export = dict(cli.config.get("export") or {})
    net = model.net if hasattr(model, "net") else model
    return net.eval(), export
