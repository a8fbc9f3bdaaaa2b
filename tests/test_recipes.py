"""Every recipe parses with LightningCLI and trains a few steps on tiny real data (Fashion-MNIST
images written as an ImageFolder tree for the ImageNet recipes), so no recipe can rot."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lightning_gbd.app.cli import main as gbd_main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
FAST = [
    "--trainer.max_steps",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.val_check_interval",
    "1",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]


@pytest.fixture(scope="module")
def tiny_imagefolder(tmp_path_factory, fmnist_small):
    root = tmp_path_factory.mktemp("imagefolder")
    x, y = fmnist_small.holdout_set.tensors
    for split, rng in (("train", range(0, 24)), ("val", range(24, 32))):
        for i in rng:
            label = int(y[i]) % 2
            d = root / split / f"class{label}"
            d.mkdir(parents=True, exist_ok=True)
            img = ((x[i, 0].numpy() * 0.353 + 0.286) * 255).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).convert("RGB").save(d / f"{i}.png")
    return root


def test_there_are_recipes():
    names = {p.stem for p in RECIPES}
    assert {"lenet5_fmnist_gradual", "resnet8_fmnist_groupwise"} <= names
    for net in ("alexnet", "vgg16", "resnet18", "resnet50"):
        assert any(n.startswith(net) for n in names), net


EXPORT_BY_DEFAULT = {"lenet5_fmnist_gradual", "resnet8_fmnist_groupwise", "resnet18_force_pca_then_gradual"}


def _params():
    for p in RECIPES:
        yield pytest.param(p, p.stem in EXPORT_BY_DEFAULT, id=p.stem)
        if p.stem not in EXPORT_BY_DEFAULT:  # the export of the big ImageNet nets takes a while
            yield pytest.param(p, True, id=f"{p.stem}+export", marks=pytest.mark.slow)


@pytest.mark.parametrize("recipe,export", _params())
def test_recipe_trains_a_few_steps(recipe, export, tmp_path, tiny_imagefolder):
    if "start_epoch:" in recipe.read_text():  # a few steps: sparsify from the first one
        copy = tmp_path / recipe.name
        copy.write_text(re.sub(r"start_epoch: \d+", "start_epoch: 0", recipe.read_text()))
        recipe = copy
    args = ["fit", "--config", str(recipe), *FAST, "--trainer.default_root_dir", str(tmp_path)]
    if "fmnist" in recipe.stem:
        args += ["--data.init_args.limit_train", "256", "--data.init_args.limit_eval", "128"]
    else:
        args += [
            "--data.init_args.root",
            str(tiny_imagefolder),
            "--data.init_args.image_size",
            "64",
            "--data.init_args.batch_size",
            "4",
            "--data.init_args.num_workers",
            "0",
            "--model.net.init_args.num_classes",
            "2",
            "--export.input_shape",
            "[1, 3, 64, 64]",
        ]
    assert gbd_main(args) == 0
    ckpts = list(tmp_path.rglob("last.ckpt"))
    assert ckpts, "the recipe wrote no checkpoint"
    if recipe.stem == "lenet5_fmnist_gradual":  # `gbd report RUN_DIR` rebuilds the table and plots from the checkpoint
        for f in ("sparsity.json", "patterns.png"):
            (tmp_path / f).unlink(missing_ok=True)
        assert gbd_main(["report", str(tmp_path)]) == 0
        report = json.loads((tmp_path / "sparsity.json").read_text())
        assert report["layers"] and (tmp_path / "patterns.png").stat().st_size > 1000
    if not export:
        return
    assert (tmp_path / "model.pt2").is_file(), "a finished fit leaves model.pt2 in its run directory"
    out = tmp_path / "export"
    # the export needs neither the training data, nor Lightning, nor the recipe: the run dir's model.pt2
    r = subprocess.run(
        [sys.executable, "-c", EXPORT_WITHOUT_TRAINING, str(tmp_path), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads((out / "verification.json").read_text())["passed"] and manifest["convs"]
    assert manifest["verification"]["passed"]
    # any other checkpoint: `gbd pt2` rebuilds the network from the config.yaml the run saved
    cfg = tmp_path / "config.yaml"
    assert "ckpt_path" in yaml.safe_load(cfg.read_text())  # it holds the fit subcommand's keys too
    again = tmp_path / "again.pt2"
    assert gbd_main(["pt2", "--config", str(cfg), "--ckpt", str(ckpts[0]), "--out", str(again)]) == 0
    import torch

    x = torch.export.load(str(again)).example_inputs[0][0]
    a, b = (torch.export.load(str(p)).module()(x) for p in (tmp_path / "model.pt2", again))
    assert torch.allclose(a, b, atol=1e-5)


#: gbd-export in a process where Lightning, the training side and the data cannot be imported
EXPORT_WITHOUT_TRAINING = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "lightning" or name.startswith(("lightning_gbd.app", "lightning_gbd.training")):
            raise ImportError(f"{name} is blocked: the export must not need it")
sys.meta_path.insert(0, Block())
from tvm_passes.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_gbd(*args):
    return subprocess.run(
        [sys.executable, "-m", "lightning_gbd.app.cli", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_recipe_misuse_gives_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (ROOT / "recipes" / "lenet5_fmnist_gradual.yaml")
        .read_text()
        .replace("        delta: 0.006", "        delta: 0.006\n        bogus_arg: 3")
    )
    cases = [
        (["fit", "--config", str(bad)], "GradualGroupSparsification: Option 'bogus_arg' is not accepted"),
        (
            ["fit", "--config", "recipes/resnet18_gradual.yaml", "--data.init_args.root", str(tmp_path / "none")],
            "not found: pass --data.init_args.root",
        ),
        (
            [
                "fit",
                "--config",
                "recipes/resnet18_gradual.yaml",
                "--data.init_args.root",
                str(tmp_path),
                "--model.net.init_args.weights_path",
                str(tmp_path / "w.pth"),
            ],
            "weights file .* not found: pass a local .pth file",
        ),
    ]
    import re

    for args, pattern in cases:
        r = run_gbd(*args)
        assert r.returncode == 2, r.stderr[-2000:]
        last = [ln for ln in r.stderr.splitlines() if ln.startswith("gbd:")]
        assert len(last) == 1 and re.search(pattern, last[0]), r.stderr[-2000:]
        assert "Traceback" not in r.stderr
