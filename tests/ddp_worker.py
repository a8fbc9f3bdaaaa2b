"""Run by test_ddp.py: a 2-process CPU (gloo) DDP fit with a sparsity callback; every rank writes
its callback state so the test can compare them."""
import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_gbd import (FixedSparsityPatterns, ForceRegularization, GradualGroupSparsification,  # noqa: E402
                           GroupSparsityRegularizer, GroupWiseSparsification)
from lightning_gbd.data import FashionMNISTDataModule  # noqa: E402
from lightning_gbd.models import ImageClassifier  # noqa: E402
from tests.conftest import LayoutNet  # noqa: E402


def main(out: str, kind: str) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    cb = {
        "gradual": lambda: GradualGroupSparsification(monitor="control_acc", lam=0.05, epsilon=0.3, patience=50,
                                                      delta=0.5),
        "groupwise": lambda: GroupWiseSparsification(density=0.3, prune_step=3),
        "fixed": lambda: FixedSparsityPatterns(pattern="cross_3x3", layers=r"net\.c[134]"),
        "regularizer": lambda: GroupSparsityRegularizer(lam=0.05),
        "force": lambda: ForceRegularization(lam=1e-3, kind="l1"),
    }[kind]()
    dm = FashionMNISTDataModule(batch_size=32, control_size=256, limit_train=512, limit_eval=256)
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, callbacks=[cb], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      val_check_interval=4, limit_train_batches=8, limit_val_batches=2, num_sanity_val_steps=0)
    model = ImageClassifier(LayoutNet(), lr=0.05)
    trainer.fit(model, dm)
    state = cb.state_dict() if hasattr(cb, "masks") else {}
    torch.save({"state": state, "weights": model.state_dict()},
               Path(out) / f"{kind}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
