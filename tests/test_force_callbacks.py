"""ForceRegularization and LowRankDecomposition in real Trainers on Fashion-MNIST."""

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_gbd import ForceRegularization, GroupWiseSparsification, LowRankDecomposition, rank_table
from lightning_gbd.app.models import ImageClassifier, LeNet5
from lightning_gbd.core.force import default_force_layers


def trainer(tmp_path, cbs, steps, **kw):
    return Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=cbs,
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        enable_checkpointing=kw.pop("ckpt", False),
        **kw,
    )


def test_force_callback_selects_authors_layers_and_lowers_rank(tmp_path, fmnist_small):
    def run(cbs):
        seed_everything(0)
        model = ImageClassifier(LeNet5(), lr=0.05)
        trainer(tmp_path, cbs, 40).fit(model, fmnist_small)
        return rank_table(model, 0.05, {"c": model.net.conv2})[0]["rank"]

    assert list(default_force_layers(ImageClassifier(LeNet5()))) == ["net.conv2"]
    plain = run([])
    attracted = run([ForceRegularization(lam=2e-3, kind="l2")])
    attracted_l1 = run([ForceRegularization(lam=2e-3, kind="l1")])
    repulsed = run([ForceRegularization(lam=2e-3, kind="l1", repulsive=True)])
    assert attracted < plain and attracted_l1 < plain and repulsed >= plain, (plain, attracted, attracted_l1, repulsed)


def test_decompose_then_sparsify_then_resume(tmp_path, fmnist_small):
    seed_everything(0)
    model = ImageClassifier(LeNet5(), lr=0.02)
    lr = LowRankDecomposition(method="pca", error=0.3)
    gw = GroupWiseSparsification(density=0.5, prune_step=2, layers=r"net\.conv2\.0")
    mc = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer(tmp_path, [lr, gw, mc], 6, ckpt=True).fit(model, fmnist_small)
    assert isinstance(model.net.conv2, torch.nn.Sequential)
    k = lr.done["net.conv2"]["rank"]
    assert 1 <= k < 50 and lr.done["net.conv2"]["flops_after"] < lr.done["net.conv2"]["flops_before"]
    assert abs(gw.masks["net.conv2.0"].float().mean() - 0.5) < 0.02
    # resume: the decomposed structure is rebuilt before the weights are restored
    seed_everything(0)
    fresh = ImageClassifier(LeNet5(), lr=0.02)
    lr2 = LowRankDecomposition(method="pca", error=0.3)
    gw2 = GroupWiseSparsification(density=0.5, prune_step=2, layers=r"net\.conv2\.0")
    trainer(tmp_path, [lr2, gw2], 8).fit(fresh, fmnist_small, ckpt_path=str(tmp_path / "last.ckpt"))
    assert fresh.net.conv2[0].out_channels == k
    assert torch.equal(gw2.masks["net.conv2.0"], gw.masks["net.conv2.0"])
