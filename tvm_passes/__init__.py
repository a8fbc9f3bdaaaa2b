"""TVM backend of lightning-gbd: group-sparse convs compiled to gather-GEMM kernels.

``export_model(model, example_input, target, out_dir)`` compiles and writes an artifact;
``load(out_dir)`` returns a callable.  See ``tvm_passes.build`` for the pipeline.
"""

from __future__ import annotations

__all__ = ["export_model", "load"]


def export_model(*args, **kwargs):
    """See :func:`tvm_passes.build.export_model`."""
    from .build import export_model as _export  # noqa: PLC0415

    return _export(*args, **kwargs)


def load(out_dir, **kwargs):
    """See :func:`tvm_passes.runtime.load`."""
    from .runtime import load as _load  # noqa: PLC0415

    return _load(out_dir, **kwargs)
