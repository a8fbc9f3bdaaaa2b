import os

import pytest
import torch
from torch import nn

os.environ.setdefault("TVM_NUM_THREADS", "2")
torch.set_num_threads(2)


class LayoutNet(nn.Module):
    """Every conv layout the callbacks must handle: stride, padding, dilation, groups, depthwise,
    non-square kernels."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, (1, 5), stride=(1, 2), padding=(0, 2))
        self.c3 = nn.Conv2d(8, 16, 3, dilation=2, padding=2, groups=2)
        self.c4 = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise
        self.c5 = nn.Conv2d(16, 16, (3, 2), stride=2)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        for c in (self.c1, self.c2, self.c3, self.c4, self.c5):
            x = torch.relu(c(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def layout_net():
    torch.manual_seed(0)
    return LayoutNet()


@pytest.fixture(scope="session")
def fmnist_small():
    from lightning_gbd.app.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(batch_size=64, control_size=512, limit_train=1024, limit_eval=512)
    dm.setup()
    return dm
