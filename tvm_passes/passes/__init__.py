"""The GBD Relax passes, each a pure module pass (a new module returned, the input untouched),
and the one analysis that reads the per-layer records off the lowered module."""

from .dead_channels import DeadChannels
from .expand_depthwise import FuseExpandDepthwise
from .group_sparse_conv import GroupSparseConv
from .inplace_residual import InplaceResidual
from .kernel_marks import RECORD_ATTR
from .lowrank_conv import LowRankConv
from .pool_kernel import MaxPoolKernel
from .records import collect_records, kernel_records

__all__ = [
    "DeadChannels",
    "FuseExpandDepthwise",
    "GroupSparseConv",
    "InplaceResidual",
    "LowRankConv",
    "MaxPoolKernel",
    "RECORD_ATTR",
    "collect_records",
    "kernel_records",
]
