"""Small networks and the image-classification LightningModule used by the demo and recipes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn


def accuracy(model, loader) -> float:
    """Top-1 accuracy of ``model`` (an ``nn.Module``, evaluated in eval mode and put back in the
    mode it was in, or any callable such as a loaded TVM artifact) over ``loader``."""
    training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    if training:
        model.train()
    return correct / total


class LeNet5(nn.Sequential):
    """LeNet-5 in Caffe's layout: conv 20 5x5, max-pool, conv 50 5x5, max-pool, fc 500, fc 10."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        side = ((image_size - 4) // 2 - 4) // 2
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)


class ImageClassifier(LightningModule):
    """Cross-entropy classification of any ``net``; logs ``train_loss``, and ``{split}_acc`` /
    ``{split}_loss`` for each validation split named in ``val_names`` (one per val dataloader)."""

    def __init__(
        self,
        net: nn.Module | None = None,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        optimizer: str = "sgd",
        val_names: tuple[str, ...] = ("control", "holdout"),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        self.net = net if net is not None else LeNet5()
        self.val_names = tuple(val_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _eval(self, batch, split: str):
        x, y = batch
        logits = self(x)
        self.log(f"{split}_loss", F.cross_entropy(logits, y), add_dataloader_idx=False, sync_dist=True)
        self.log(
            f"{split}_acc",
            (logits.argmax(1) == y).float().mean(),
            prog_bar=True,
            add_dataloader_idx=False,
            sync_dist=True,
        )

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval(
            batch, self.val_names[dataloader_idx] if dataloader_idx < len(self.val_names) else f"val{dataloader_idx}"
        )

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._eval(batch, "test")

    def configure_optimizers(self):
        if self.hparams.optimizer == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return torch.optim.SGD(
            self.parameters(),
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
            weight_decay=self.hparams.weight_decay,
        )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet-8 (16/32/64 channels, one basic block per stage) for 28x28 inputs."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


TORCHVISION_NETS = ("alexnet", "vgg11", "vgg16", "resnet18", "resnet50")


class TorchvisionNet(nn.Module):
    """A torchvision classification network, optionally with pretrained weights from a LOCAL file
    (torchvision's ``weights=`` downloads, which cannot work offline)."""

    def __init__(self, arch: str = "resnet18", weights_path: str | None = None, num_classes: int = 1000) -> None:
        super().__init__()
        import torchvision

        if arch not in TORCHVISION_NETS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(TORCHVISION_NETS)}")
        self.model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if weights_path:
            from pathlib import Path

            if not Path(weights_path).is_file():
                raise FileNotFoundError(
                    f"weights file {weights_path} not found: pass a local .pth file with "
                    f"model.net.init_args.weights_path (nothing downloads here)"
                )
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if len(missing) == len(self.model.state_dict()):
                raise ValueError(f"weights file {weights_path} holds no weights of a {arch}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
