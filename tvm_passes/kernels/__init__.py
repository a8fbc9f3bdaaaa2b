"""Kernel library: GBD gather-GEMM conv and dense GEMM as scheduled TIR (paper 000, section 3;
docs/formulas.md section 1 "Lowering").

``compile_kernel`` configures the runtime's thread pool like a loaded artifact does
(``tvm_passes.threads``): TVM's default binding put both pool threads of a 2-core VM on one
core, so parallel kernels ran at single-thread speed (28x28 conv: 1.33 ms bound, 0.68 ms unbound).
"""

from .depthwise import depthwise_conv2d
from .gather_gemm import (
    DTYPES,
    build_context,
    check_dtype,
    compile_kernel,
    conv2d_gather_gemm,
    conv2d_gather_gemm_int8,
    dense_gemm,
    dense_gemm_int8,
    pack_dense_weight,
)
from .lowering import conv_output_size, lower_conv
from .pool import max_pool2d

__all__ = [
    "DTYPES",
    "build_context",
    "check_dtype",
    "compile_kernel",
    "conv2d_gather_gemm",
    "conv2d_gather_gemm_int8",
    "dense_gemm",
    "dense_gemm_int8",
    "depthwise_conv2d",
    "pack_dense_weight",
    "conv_output_size",
    "max_pool2d",
    "lower_conv",
]
