"""The marks every kernel-library PrimFunc gets when a pass adds it to the module."""

from __future__ import annotations

import tvm

#: the PrimFunc attribute holding a kernel's per-layer record (read by ``passes.records``)
RECORD_ATTR = "gbd.layer"

#: the PrimFunc attribute of a kernel whose residual input (this index among its call's tensor
#: arguments) may be the very buffer it writes its output to: its epilogue reads ``res[i]`` only
#: to compute ``out[i]``, before storing it (``passes.InplaceResidual``)
INPLACE_ATTR = "gbd.inplace_residual"

#: the PrimFunc attribute every kernel-library function carries
KERNEL_ATTR = "gbd.kernel"

#: TIR op_pattern kOpaque: keeps FuseOps / FuseTIR away from the pre-scheduled kernels
_OPAQUE = 8


def mark_kernel(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Mark a kernel PrimFunc as scheduled (for dlight and meta_schedule) and opaque to fusion."""
    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")  # AttachGlobalSymbol names it after its GlobalVar
    func = func.with_attr("tirx.is_scheduled", True)
    func = func.with_attr("tir.is_scheduled", True)
    func = func.with_attr("op_pattern", _OPAQUE)
    func = func.with_attr(KERNEL_ATTR, True)
    return func
