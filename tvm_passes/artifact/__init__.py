"""The compiled artifact: a folder with ``model.so``, ``manifest.json`` (with the library's
sha256) and ``verification.json``; ``load`` turns it into a callable."""

from .loader import CompiledModel, load
from .manifest import LIB_NAME, MANIFEST, VERIFICATION, sha256_file
from .verify import TOLERANCE, relative_error, verify_artifact

__all__ = [
    "CompiledModel",
    "LIB_NAME",
    "MANIFEST",
    "TOLERANCE",
    "VERIFICATION",
    "load",
    "relative_error",
    "sha256_file",
    "verify_artifact",
]
