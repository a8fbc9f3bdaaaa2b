"""Kernel library: GBD gather-GEMM conv and dense GEMM as scheduled TIR (paper 000, section 3;
formulas.md section 1 "Lowering").

Importing the package sets TVM_BIND_THREADS=0 unless already set: on the 2-core VMs of this
project TVM's default thread-to-core binding puts both pool threads on one core, so parallel
kernels ran at single-thread speed (measured: 28x28 conv 1.33 ms bound vs 0.68 ms unbound).
The variable is read when TVM's thread pool starts, i.e. at the first parallel kernel call.
"""

import os as _os

_os.environ.setdefault("TVM_BIND_THREADS", "0")

from .gather_gemm import compile_kernel, conv2d_gather_gemm, dense_gemm, pack_dense_weight
from .lowering import conv_output_size, lower_conv

__all__ = [
    "compile_kernel",
    "conv2d_gather_gemm",
    "dense_gemm",
    "pack_dense_weight",
    "conv_output_size",
    "lower_conv",
]
