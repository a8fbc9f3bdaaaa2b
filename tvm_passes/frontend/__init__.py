"""Frontend: ``.pt2`` files and ExportedPrograms in, a named Relax module out."""

from .program import check_finite, example_input_of, input_shape_of, load_exported_program, specialize
from .relax_import import ImportResult, import_program

__all__ = [
    "ImportResult",
    "check_finite",
    "example_input_of",
    "import_program",
    "input_shape_of",
    "load_exported_program",
    "specialize",
]
