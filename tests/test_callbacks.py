"""The sparsity callbacks with real Lightning Trainers on a slice of real Fashion-MNIST."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_gbd import (
    FixedSparsityPatterns,
    GradualGroupSparsification,
    GroupSparsityRegularizer,
    GroupWiseSparsification,
    read_patterns,
)
from lightning_gbd.app.models import ImageClassifier
from lightning_gbd.core.groups import expand_group_mask, group_norms
from lightning_gbd.training.callbacks.fixed import library_pattern


def make_trainer(tmp_path, callbacks, max_steps=-1, max_epochs=1, **kw):
    return Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        max_steps=max_steps,
        max_epochs=max_epochs,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        num_sanity_val_steps=0,
        deterministic=True,
        **kw,
    )


def pruned_weights_are_zero(cb):
    for name, mask in cb.masks.items():
        conv = cb.convs[name]
        keep = expand_group_mask(mask, conv.weight.shape, conv.groups)
        if (conv.weight.detach()[~keep] != 0).any():
            return False
    return True


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_zeros_stay_zero_through_50_steps(tmp_path, layout_net, fmnist_small, optimizer):
    cb = GroupWiseSparsification(density=0.3, lam=1e-3, prune_step=0)
    model = ImageClassifier(layout_net, lr=0.05, momentum=0.9, weight_decay=1e-2, optimizer=optimizer)
    trainer = make_trainer(tmp_path, [cb], max_steps=50, max_epochs=10, limit_val_batches=0)
    trainer.fit(model, fmnist_small)
    assert trainer.global_step == 50
    assert set(cb.masks) == {"net.c1", "net.c2", "net.c3", "net.c4", "net.c5"}
    for name, mask in cb.masks.items():
        conv = cb.convs[name]
        assert abs(mask.float().mean().item() - 0.3) < 0.05, name
        norms = group_norms(conv.weight.detach(), conv.groups)
        assert (norms[~mask] == 0).all(), f"{name}: a pruned group moved"
        assert (norms[mask] > 0).all(), f"{name}: a kept group is zero"


def test_groupwise_per_layer_and_global_density(tmp_path, layout_net, fmnist_small):
    cb = GroupWiseSparsification(density={"net.c2": 0.5, "net.c3": 0.2}, layers=["net.c2", "net.c3"], prune_step=2)
    make_trainer(tmp_path, [cb], max_steps=5, limit_val_batches=0).fit(ImageClassifier(layout_net), fmnist_small)
    assert abs(cb.masks["net.c2"].float().mean() - 0.5) < 0.02
    assert abs(cb.masks["net.c3"].float().mean() - 0.2) < 0.02
    g = GroupWiseSparsification(density=0.25, global_density=True, prune_step=1)
    make_trainer(tmp_path, [g], max_steps=3, limit_val_batches=0).fit(ImageClassifier(layout_net), fmnist_small)
    total = sum(m.sum() for m in g.masks.values()) / sum(m.numel() for m in g.masks.values())
    assert abs(float(total) - 0.25) < 0.01


def test_fixed_patterns_kept_and_saved(tmp_path, layout_net, fmnist_small):
    cb = FixedSparsityPatterns(pattern="cross_3x3", layers=r"net\.c[134]")
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, filename="last")
    make_trainer(tmp_path, [cb, ckpt_cb], max_steps=20, limit_val_batches=0, enable_checkpointing=True).fit(
        ImageClassifier(layout_net), fmnist_small
    )
    cross = library_pattern("cross_3x3", 3, 3)
    for name in ("net.c1", "net.c3", "net.c4"):
        assert (cb.masks[name] == cross).all()
        assert (group_norms(cb.convs[name].weight.detach(), cb.convs[name].groups)[:, ~cross] == 0).all()
    saved = read_patterns(tmp_path / "last.ckpt")  # no callback needed to read them
    assert set(saved) == {"net.c1", "net.c3", "net.c4"}
    assert sorted(saved["net.c1"]["patterns"][0]) == [(0, 1), (1, 0), (1, 1), (1, 2), (2, 1)]


def test_pattern_library_shapes():
    assert library_pattern("diamond_5x5", 5, 5).sum() == 13
    assert library_pattern("1x1", 3, 3).sum() == 1
    with pytest.raises(ValueError, match="does not fit a 3x3"):
        library_pattern("diamond_5x5", 3, 3)


def test_regularizer_shrinks_group_norms(tmp_path, layout_net, fmnist_small):
    seed_everything(0)
    model = ImageClassifier(layout_net, lr=0.05)
    before = group_norms(model.net.c3.weight.detach(), 2).sum()
    make_trainer(
        tmp_path, [GroupSparsityRegularizer(lam=0.05, layers=["net.c3"])], max_steps=30, limit_val_batches=0
    ).fit(model, fmnist_small)
    assert group_norms(model.net.c3.weight.detach(), 2).sum() < before


# ---------------------------------------------------------------- gradual controller
def _gradual(**kw):
    cb = GradualGroupSparsification(**{"monitor": "control_acc", **kw})
    return cb


def _attach(cb, model):
    from lightning_gbd.core.groups import select_convs

    cb.convs = select_convs(model)
    cb.scale = {n: float(cb.norms(n).pow(2).mean().sqrt()) for n in cb.convs}
    return cb


def test_theta_moves_by_five_percent_quantiles(layout_net):
    cb = _attach(_gradual(), layout_net)
    norms = cb._all_norms()
    assert cb.theta == 0
    for k in range(1, 4):
        cb.step_theta(raise_=True)
        frac = float((norms < cb.theta).float().mean())
        assert abs(frac - 0.05 * k) < 2.0 / norms.numel() + 1e-9
    cb.step_theta(raise_=False)
    assert abs(float((norms < cb.theta).float().mean()) - 0.10) < 2.0 / norms.numel() + 1e-9


def test_epsilon_zeroing_is_monotone(layout_net):
    cb = _attach(_gradual(epsilon=0.5), layout_net)
    cb.zero_small_groups()
    first = {k: v.clone() for k, v in cb.masks.items()}
    cb.apply_masks()
    with torch.no_grad():  # regrow everything: zeroed groups must stay zeroed in the mask
        for conv in cb.convs.values():
            conv.weight.add_(1.0)
    cb.zero_small_groups()
    for k in first:
        assert not (cb.masks[k] & ~first[k]).any()
    cb.epsilon = 10.0
    assert cb.zero_small_groups() > 0
    for k in first:
        assert not (cb.masks[k] & ~first[k]).any()


def test_gradual_run_sparsifies_and_stops_on_stall(tmp_path, layout_net, fmnist_small):
    seed_everything(0)
    cb = _gradual(lam=0.05, epsilon=0.3, patience=2, delta=0.5)  # delta 0.5: theta keeps rising
    trainer = make_trainer(
        tmp_path, [cb], max_epochs=60, val_check_interval=4, limit_val_batches=2, limit_train_batches=8
    )
    model = ImageClassifier(layout_net, lr=0.05)
    trainer.validate(model, fmnist_small, verbose=False)
    assert cb.baseline is not None
    trainer.fit(model, fmnist_small)
    assert cb.finetune_from is not None, "stall stopping did not trigger"
    assert trainer.current_epoch < 60
    zeroed = [h["zeroed_new"] for h in cb.history]
    assert zeroed[-2:] == [0, 0] and sum(zeroed) > 0
    assert all(h["theta"] > 0 for h in cb.history)  # drop < delta always: theta is raised each time
    assert pruned_weights_are_zero(cb)
    dens = [h["density"] for h in cb.history]
    for a, b in zip(dens, dens[1:]):
        assert all(b[k] <= a[k] for k in a)


class RecordWarmup(Callback):
    """Records, at the end of every training epoch, the gradual callback's state and the control accuracy."""

    def __init__(self, gbd):
        self.gbd, self.rows = gbd, []

    def on_validation_end(self, trainer, pl_module):
        self.rows.append(
            (
                trainer.current_epoch,
                float(trainer.callback_metrics["control_acc"]),
                bool(self.gbd.scale),
                self.gbd.theta,
                bool(self.gbd.masks),
            )
        )


def test_gradual_start_epoch_trains_dense_first(tmp_path, layout_net, fmnist_small):
    """start_epoch=2: two epochs of plain training (no theta, no masks, no scale), then the last
    warm-up validation is the baseline and sparsification runs."""
    seed_everything(0)
    cb = _gradual(lam=0.05, epsilon=0.3, patience=100, delta=0.5, start_epoch=2)
    rec = RecordWarmup(cb)
    trainer = make_trainer(
        tmp_path, [cb, rec], max_epochs=4, val_check_interval=4, limit_val_batches=2, limit_train_batches=8
    )
    trainer.fit(ImageClassifier(layout_net, lr=0.05), fmnist_small)
    warm = [r for r in rec.rows if r[0] < 2]
    assert len(warm) == 4 and all(not r[2] and r[3] == 0 and not r[4] for r in warm)
    assert cb.baseline == warm[-1][1]
    assert cb.history and cb.history[0]["step"] > 16 and cb.theta > 0
    assert any((~m).any() for m in cb.masks.values()) and pruned_weights_are_zero(cb)
    with pytest.raises(ValueError, match="start_epoch"):
        GradualGroupSparsification(start_epoch=-1)


def test_stall_lowers_theta_when_drop_too_big(tmp_path, layout_net, fmnist_small):
    cb = _gradual(lam=0.0, epsilon=0.0, patience=100, delta=0.5, baseline=2.0)  # every drop is > 1 > delta
    model = ImageClassifier(layout_net)
    _attach(cb, model)
    cb.theta = float(torch.quantile(cb._all_norms(), 0.5))
    trainer = make_trainer(tmp_path, [cb], max_steps=8, val_check_interval=4, limit_val_batches=1)
    trainer.fit(model, fmnist_small)
    thetas = [h["theta"] for h in cb.history]
    assert len(thetas) == 2 and thetas[1] < thetas[0]


def test_resume_from_checkpoint_is_exact(tmp_path, fmnist_small):
    from tests.conftest import LayoutNet

    def run(root, epochs, ckpt=None):
        seed_everything(1)
        torch.manual_seed(1)
        model = ImageClassifier(LayoutNet(), lr=0.05)
        cb = _gradual(lam=0.05, epsilon=0.3, patience=50)
        mc = ModelCheckpoint(dirpath=root, save_last=True, every_n_epochs=1)
        t = make_trainer(
            root,
            [cb, mc],
            max_epochs=epochs,
            val_check_interval=8,
            limit_val_batches=2,
            limit_train_batches=16,
            enable_checkpointing=True,
        )
        t.fit(model, fmnist_small, ckpt_path=ckpt)
        return model, cb

    full_model, full_cb = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed_model, resumed_cb = run(tmp_path / "c", 4, ckpt=str(tmp_path / "b" / "last.ckpt"))
    assert full_cb.theta == resumed_cb.theta and full_cb.theta > 0
    for k in full_cb.masks:
        assert torch.equal(full_cb.masks[k], resumed_cb.masks[k])
    assert sum(int((~m).sum()) for m in full_cb.masks.values()) > 0
    for (k, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------- bad input
def test_bad_inputs(tmp_path, layout_net, fmnist_small):
    with pytest.raises(ValueError, match="impossible density 0"):
        GroupWiseSparsification(density=0.0)
    with pytest.raises(ValueError, match="impossible density 1.5"):
        GroupWiseSparsification(density={"net.c1": 1.5})
    with pytest.raises(ValueError, match="no Conv2d layer matches 'nothing'"):
        make_trainer(tmp_path, [GroupSparsityRegularizer(layers="nothing")], max_steps=1).fit(
            ImageClassifier(layout_net), fmnist_small
        )
    with pytest.raises(ValueError, match="'net.head' is a Linear, not a Conv2d"):
        make_trainer(tmp_path, [GroupSparsityRegularizer(layers=["net.head"])], max_steps=1).fit(
            ImageClassifier(layout_net), fmnist_small
        )
    with pytest.raises(ValueError, match="unknown layer 'net.c9'"):
        make_trainer(tmp_path, [FixedSparsityPatterns(layers=["net.c9"])], max_steps=1).fit(
            ImageClassifier(layout_net), fmnist_small
        )
    with pytest.raises(RuntimeError, match="monitors 'val_top1', which was never logged"):
        make_trainer(
            tmp_path, [_gradual(monitor="val_top1")], max_steps=2, val_check_interval=1, limit_val_batches=1
        ).fit(ImageClassifier(layout_net), fmnist_small)
    with pytest.raises(ValueError, match="unknown pattern 'star'"):
        FixedSparsityPatterns(pattern="star")


def test_model_without_conv_is_refused(tmp_path, fmnist_small):
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with pytest.raises(ValueError, match="has no Conv2d layer"):
        make_trainer(tmp_path, [GroupSparsityRegularizer()], max_steps=1).fit(ImageClassifier(net), fmnist_small)


def test_corrupt_checkpoint_is_reported(tmp_path):
    p = tmp_path / "bad.ckpt"
    p.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt or unsafe"):
        read_patterns(p)
