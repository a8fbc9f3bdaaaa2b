"""lightning-gbd: group-wise brain damage for PyTorch Lightning (training side).

Flow: model -> callbacks (this package) -> checkpoint with patterns -> ``.pt2`` ->
``gbd-export`` (``tvm_passes``) -> compiled artifact.
"""
from .callbacks import (FixedSparsityPatterns, GradualGroupSparsification, GroupSparsityRegularizer,
                        GroupWiseSparsification, LowRankDecomposition, PATTERN_LIBRARY)
from .checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from .force import ForceRegularization, rank_table
from .report import load_checkpoint, read_patterns

__all__ = ["GroupSparsityRegularizer", "GroupWiseSparsification", "GradualGroupSparsification",
           "FixedSparsityPatterns", "PATTERN_LIBRARY", "read_patterns", "load_checkpoint",
           "ForceRegularization", "LowRankDecomposition", "rank_table",
           "AtomicCheckpointIO", "CheckpointWriteError"]
__version__ = "0.1.0"
