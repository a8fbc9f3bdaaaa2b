"""TVM backend of lightning-gbd: group-sparse convs compiled to gather-GEMM kernels.

``export_model(model, example_input, target, out_dir)`` compiles and writes an artifact;
``load(out_dir)`` returns a callable.  Layout: ``frontend`` (``.pt2`` -> named Relax) ->
``passes`` (pure Relax passes + the records analysis) -> ``kernels`` / ``schedules`` ->
``pipeline`` -> ``artifact`` (manifest, verification, loader); ``export`` ties them together
and ``cli`` is ``gbd-export``.  The compile side reads only ``lightning_gbd.core``.
"""

from __future__ import annotations

__all__ = ["export_model", "load"]


def export_model(*args, **kwargs):
    """See :func:`tvm_passes.export.export_model`."""
    from .export import export_model as _export

    return _export(*args, **kwargs)


def load(out_dir, **kwargs):
    """See :func:`tvm_passes.artifact.loader.load`."""
    from .artifact.loader import load as _load

    return _load(out_dir, **kwargs)
