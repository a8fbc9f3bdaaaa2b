"""Run by test_faults.py: gradual GBD training that checkpoints every few steps; the test kills it
with SIGKILL mid-epoch (or fills the "disk" with --disk-full-after), then runs it again with --resume."""

import argparse
import resource
import signal
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_gbd import AtomicCheckpointIO, GradualGroupSparsification
from lightning_gbd.app.data import FashionMNISTDataModule
from lightning_gbd.app.models import ImageClassifier
from tests.conftest import LayoutNet


class RecordStart(Callback):
    """Writes the sparsity state the resumed run starts from."""

    def __init__(self, gbd, out):
        self.gbd, self.out = gbd, out

    def on_train_start(self, trainer, pl_module):
        torch.save({"state": self.gbd.state_dict(), "step": trainer.global_step}, self.out)


class DiskFullAfter(Callback):
    """From training step ``step`` on, no file may grow past 4 KiB (RLIMIT_FSIZE, SIGXFSZ ignored):
    every later write fails with EFBIG part-way, as on a full disk."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def main(out: str, resume: bool, max_steps: int = -1, disk_full_after: int = -1, atomic: bool = False) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    gbd = GradualGroupSparsification(monitor="control_acc", lam=0.05, epsilon=0.3, patience=1000, delta=0.5)
    mc = ModelCheckpoint(dirpath=out, save_last=True, every_n_train_steps=4, save_top_k=0)
    dm = FashionMNISTDataModule(batch_size=16, control_size=128, limit_train=100000, limit_eval=128)
    cbs = [gbd, mc] + ([RecordStart(gbd, Path(out) / "resumed_start.pt")] if resume else [])
    if disk_full_after >= 0:
        cbs.insert(0, DiskFullAfter(disk_full_after))
    trainer = Trainer(
        plugins=[AtomicCheckpointIO()] if atomic else None,
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        callbacks=cbs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=4,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        max_steps=max_steps,
    )
    ckpt = str(Path(out) / "last.ckpt") if resume else None
    trainer.fit(ImageClassifier(LayoutNet(), lr=0.05), dm, ckpt_path=ckpt)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--disk-full-after", type=int, default=-1)
    ap.add_argument("--atomic", action="store_true", help="use lightning_gbd.AtomicCheckpointIO")
    a = ap.parse_args()
    main(a.out, a.resume, a.max_steps, a.disk_full_after, a.atomic)
