"""The compiled artifact: a folder with ``model.so``, ``manifest.json`` (with the library's
sha256) and ``verification.json``; ``load`` turns it into a callable."""

from .loader import CompiledModel, load
from .manifest import LIB_NAME, MANIFEST, VERIFICATION, sha256_file
from .verify import TOLERANCE, kernel_tolerance, relative_error, tolerance, verify_artifact

__all__ = [
    "CompiledModel",
    "LIB_NAME",
    "MANIFEST",
    "TOLERANCE",
    "VERIFICATION",
    "kernel_tolerance",
    "load",
    "relative_error",
    "sha256_file",
    "tolerance",
    "verify_artifact",
]
