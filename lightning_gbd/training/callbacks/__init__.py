"""The Lightning callbacks of lightning-gbd."""

from .base import GroupMaskCallback
from .decomposition import LowRankDecomposition
from .fixed import PATTERN_LIBRARY, FixedSparsityPatterns, library_pattern
from .force import ForceRegularization
from .gradual import GradualGroupSparsification
from .groupwise import GroupWiseSparsification
from .regularizer import GroupSparsityRegularizer

__all__ = [
    "GroupMaskCallback",
    "GroupSparsityRegularizer",
    "GroupWiseSparsification",
    "GradualGroupSparsification",
    "FixedSparsityPatterns",
    "PATTERN_LIBRARY",
    "library_pattern",
    "LowRankDecomposition",
    "ForceRegularization",
]
