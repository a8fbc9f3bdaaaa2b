"""Frontend: ``.pt2`` files, ExportedPrograms and ``.onnx`` models in, a named Relax module out."""

from .onnx_import import OnnxModel, import_onnx, read_onnx
from .program import check_finite, example_input_of, input_shape_of, load_exported_program, specialize
from .relax_import import ImportResult, import_program

__all__ = [
    "ImportResult",
    "OnnxModel",
    "check_finite",
    "example_input_of",
    "import_onnx",
    "import_program",
    "input_shape_of",
    "load_exported_program",
    "read_onnx",
    "specialize",
]
