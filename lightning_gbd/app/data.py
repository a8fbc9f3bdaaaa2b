"""Fashion-MNIST as a LightningDataModule with the three splits GBD needs: train, control (drives
the theta controller) and hold-out (reported; the controller never sees it). Nothing downloads."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Sampler, TensorDataset

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
MEAN, STD = 0.2860, 0.3530


def find_fashion_mnist(root: str | Path | None = None) -> Path:
    """The folder holding the four idx files: ``root`` (or its torchvision layout
    ``root/FashionMNIST/raw``), else the Debian package's folder."""
    candidates = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root else [DEBIAN_DIR]
    for c in candidates:
        if all((c / f).is_file() for pair in FILES.values() for f in pair):
            return c
    hint = (
        "install it with `apt-get install dataset-fashion-mnist` (or `make data`)"
        if root is None
        else "expected the four *-ubyte.gz files there or in FashionMNIST/raw"
    )
    raise FileNotFoundError(f"Fashion-MNIST not found in {candidates[0]}: {hint}")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized images ``(N, 1, 28, 28)`` float32 and int64 labels of ``train`` or ``t10k``."""
    images, labels = (_read_idx(root / f) for f in FILES[split])
    x = (torch.from_numpy(images.astype(np.float32) / 255.0) - MEAN) / STD
    return x.unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch from ``seed + epoch`` (Lightning calls ``set_epoch``), so a
    run resumed from a checkpoint sees the same batches as an uninterrupted one."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class ThreeSplitDataModule(LightningDataModule):
    """Train / control / hold-out loaders shared by the data modules: subclasses set
    ``train_set``, ``control_set``, ``holdout_set``, ``batch_size``, ``eval_batch_size``."""

    seed = 0
    num_workers = 0

    def _loader(self, ds, sampler=None):
        bs = self.batch_size if sampler is not None else self.eval_batch_size
        return DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader(self.train_set, EpochSeededSampler(len(self.train_set), self.seed))

    def val_dataloader(self):
        return [self._loader(self.control_set), self._loader(self.holdout_set)]

    def test_dataloader(self):
        return self._loader(self.holdout_set)


class FashionMNISTDataModule(ThreeSplitDataModule):
    """Train / control / hold-out splits of Fashion-MNIST.

    The 60k training file is split into ``train`` and ``control`` (``control_size`` images, a
    fixed seeded permutation); the 10k test file is the hold-out. ``val_dataloader`` returns
    ``[control, holdout]``; the controller only reads the control metrics. ``limit_train`` /
    ``limit_eval`` take the first N images of a split (for fast tests).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        control_size: int = 5000,
        seed: int = 0,
        limit_train: int | None = None,
        limit_eval: int | None = None,
        num_workers: int = 0,
        eval_batch_size: int = 1000,
    ) -> None:
        super().__init__()
        self.data_dir, self.batch_size, self.control_size = data_dir, batch_size, control_size
        self.eval_batch_size = eval_batch_size
        self.seed, self.limit_train, self.limit_eval, self.num_workers = seed, limit_train, limit_eval, num_workers
        self.root = find_fashion_mnist(data_dir)  # fail early, with the fix in the message

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        x, y = load_split(self.root, "train")
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        ctrl, train = perm[: self.control_size], perm[self.control_size :]
        xt, yt = load_split(self.root, "t10k")
        lt, le = self.limit_train, self.limit_eval
        self.train_set = TensorDataset(x[train][:lt], y[train][:lt])
        self.control_set = TensorDataset(x[ctrl][:le], y[ctrl][:le])
        self.holdout_set = TensorDataset(xt[:le], yt[:le])


class ImageFolderDataModule(ThreeSplitDataModule):
    """An ImageNet-style folder (``root/train/<class>/*.jpg``, ``root/val/<class>/*.jpg``).

    ``control_fraction`` of ``train`` (a seeded split) is the control set that drives the GBD
    controller; ``val`` is the hold-out. Images are resized to ``image_size`` (shorter side
    ``image_size * 8/7``, centre crop; random crop + flip for training)."""

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 224,
        batch_size: int = 64,
        control_fraction: float = 0.02,
        seed: int = 0,
        num_workers: int = 2,
    ) -> None:
        super().__init__()
        self.root, self.image_size, self.batch_size = root, image_size, batch_size
        self.eval_batch_size = batch_size
        self.control_fraction, self.seed, self.num_workers = control_fraction, seed, num_workers

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        from torchvision import datasets
        from torchvision import transforms as T

        for split in ("train", "val"):
            if self.root is None or not (Path(self.root) / split).is_dir():
                raise FileNotFoundError(
                    f"data path {self.root}/{split} not found: pass --data.init_args.root "
                    f"DIR with train/ and val/ ImageFolder trees"
                )
        self.root = Path(self.root)
        norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        resize = int(round(self.image_size * 8 / 7))
        evaluate = T.Compose([T.Resize(resize), T.CenterCrop(self.image_size), T.ToTensor(), norm])
        train_tf = T.Compose([T.RandomResizedCrop(self.image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        full_train = datasets.ImageFolder(self.root / "train", train_tf)
        full_eval = datasets.ImageFolder(self.root / "train", evaluate)
        n = len(full_train)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        k = max(1, int(round(self.control_fraction * n)))
        self.train_set = torch.utils.data.Subset(full_train, perm[k:])
        self.control_set = torch.utils.data.Subset(full_eval, perm[:k])
        self.holdout_set = datasets.ImageFolder(self.root / "val", evaluate)
