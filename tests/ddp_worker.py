"""Run by test_ddp.py: a 2-process CPU (gloo) DDP fit with a sparsity callback; every rank writes
its callback state so the test can compare them.  With devices=1 the same fit runs in one process
on the same global batches (``SameGlobalBatches``)."""

import sys
from pathlib import Path

import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch import Trainer, seed_everything
from torch.utils.data import DataLoader

from lightning_gbd import (
    FixedSparsityPatterns,
    ForceRegularization,
    GradualGroupSparsification,
    GroupSparsityRegularizer,
    GroupWiseSparsification,
)
from lightning_gbd.app.data import EpochSeededSampler, FashionMNISTDataModule
from lightning_gbd.app.models import ImageClassifier
from tests.conftest import LayoutNet


class SameGlobalBatches(FashionMNISTDataModule):
    """One process, batch 64, fed the global batches of the 2-rank run: under DDP Lightning wraps the
    training sampler in a ``DistributedSamplerWrapper`` that shuffles its order once more (seed
    PL_GLOBAL_SEED + epoch) and deals the positions rank-interleaved, so DDP step k reads positions
    64k..64k+63 of that order on the two ranks together; the same wrapper with one replica yields
    that order in one process."""

    def train_dataloader(self):
        sampler = DistributedSamplerWrapper(
            EpochSeededSampler(len(self.train_set), self.seed), num_replicas=1, rank=0, shuffle=True, seed=0
        )
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler)


def main(out: str, kind: str, devices: int = 2) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    cb = {
        "gradual": lambda: GradualGroupSparsification(
            monitor="control_acc", lam=0.05, epsilon=0.3, patience=50, delta=0.5
        ),
        "groupwise": lambda: GroupWiseSparsification(density=0.3, prune_step=3),
        "fixed": lambda: FixedSparsityPatterns(pattern="cross_3x3", layers=r"net\.c[134]"),
        "regularizer": lambda: GroupSparsityRegularizer(lam=0.05),
        "force": lambda: ForceRegularization(lam=1e-3, kind="l1"),
    }[kind]()
    dm = (FashionMNISTDataModule if devices > 1 else SameGlobalBatches)(
        batch_size=64 // devices, control_size=256, limit_train=512, limit_eval=256
    )
    trainer = Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_epochs=2,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=4,
        limit_train_batches=8,
        limit_val_batches=2,
        num_sanity_val_steps=0,
    )
    model = ImageClassifier(LayoutNet(), lr=0.05)
    trainer.fit(model, dm)
    state = cb.state_dict() if hasattr(cb, "masks") else {}
    torch.save(
        {"state": state, "weights": model.state_dict()},
        Path(out) / (f"{kind}_rank{trainer.global_rank}.pt" if devices > 1 else f"{kind}_single.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 2)
