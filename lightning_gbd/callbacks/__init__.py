"""The Lightning callbacks of lightning-gbd."""
from .base import GroupMaskCallback
from .fixed import PATTERN_LIBRARY, FixedSparsityPatterns, library_pattern
from .gradual import GradualGroupSparsification
from .groupwise import GroupWiseSparsification
from .regularizer import GroupSparsityRegularizer

__all__ = ["GroupMaskCallback", "GroupSparsityRegularizer", "GroupWiseSparsification",
           "GradualGroupSparsification", "FixedSparsityPatterns", "PATTERN_LIBRARY", "library_pattern"]
from .decomposition import LowRankDecomposition  # noqa: E402

__all__ += ["LowRankDecomposition"]
