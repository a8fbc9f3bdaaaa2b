"""Whole-model CUDA exports run on the GPU against PyTorch on the same GPU (FP32, TF32 off):
LeNet-5, ResNet-18, MobileNetV2 and a decomposed model, each with GBD patterns; ResNet-18 also
with the tensor-core kernels (``dtype``), within ``artifact.verify.tolerance(dtype)``.  The kernel
families one by one are in ``test_kernels.py`` (``-m gpu``).  Skipped without a CUDA GPU; the
CUDA *builds* of these models run in the default suite (``test_export.py``, ``test_cli.py``)."""

import pytest
import torch
import torchvision
from torch import nn

import tvm_passes
from lightning_gbd.core.lowrank import pca_decompose
from tests.test_model_zoo import calibrate_bn, rescale_convs
from tests.test_passes import impose_gbd, lenet, rel_err
from tvm_passes.artifact import tolerance

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    torch.backends.cudnn.allow_tf32 = False  # the reference is true FP32, like our FP32 kernels
    torch.backends.cuda.matmul.allow_tf32 = False


def _export_and_check_cuda(model, shape, out_dir, **kw):
    torch.manual_seed(1)
    model = model.eval()
    man = tvm_passes.export_model(model, torch.randn(*shape), "cuda", str(out_dir), **kw)
    assert man["device"] == "cuda"
    assert man["compute_dtype"] == kw.get("dtype", "float32")
    assert man["verification"]["passed"], man["verification"]
    f = tvm_passes.load(out_dir)
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model.cuda()(x.cuda()).cpu().numpy()
    out = f(x)
    assert rel_err(out.numpy(), ref) <= tolerance(kw.get("dtype", "float32"))
    return man


def _zoo(model, shape):
    return calibrate_bn(rescale_convs(impose_gbd(model, density=0.3, dead=0.15), shape), shape)


def test_lenet5_cuda(tmp_path):
    torch.manual_seed(0)
    man = _export_and_check_cuda(impose_gbd(lenet(), density=0.3, dead=0.15), (2, 1, 28, 28), tmp_path)
    assert any(c["decision"] == "gather-gemm" for c in man["convs"])


def test_resnet18_cuda(tmp_path):
    torch.manual_seed(0)
    shape = (2, 3, 64, 64)
    _export_and_check_cuda(_zoo(torchvision.models.resnet18(weights=None), shape), shape, tmp_path)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "tf32"])
def test_resnet18_tensor_cores(tmp_path, dtype):
    torch.manual_seed(0)
    shape = (2, 3, 64, 64)
    man = _export_and_check_cuda(_zoo(torchvision.models.resnet18(weights=None), shape), shape, tmp_path, dtype=dtype)
    assert man["verification"]["tolerance"] == tolerance(dtype)


def test_mobilenet_v2_cuda(tmp_path):
    torch.manual_seed(0)
    shape = (1, 3, 64, 64)
    _export_and_check_cuda(_zoo(torchvision.models.mobilenet_v2(weights=None), shape), shape, tmp_path)


def test_decomposed_cuda(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU())
    net[2], _ = pca_decompose(net[2], rank=4)
    _export_and_check_cuda(net, (2, 3, 16, 16), tmp_path)


def test_dynamic_batch_cuda(tmp_path):
    torch.manual_seed(0)
    man = _export_and_check_cuda(impose_gbd(lenet()), (1, 1, 28, 28), tmp_path, dynamic_batch=True)
    assert man["input"]["dynamic_batch"]
    f = tvm_passes.load(tmp_path)
    x = torch.randn(5, 1, 28, 28)
    assert tuple(f(x).shape) == (5, 10)
