"""torch.export -> Relax with weights as constants, BN folded, constants folded, and each conv2d /
matmul call named after its PyTorch module (the call's ``Span``; see ``tvm_passes.ir``).

The GBD passes (paper 000 section 3, docs/formulas.md section 1) read the conv weights, so the
weights must stay ``relax.Constant`` (``keep_params_as_input=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..errors import ExportError
from ..ir import bindings, const_numpy, is_constant, named_span, op_name, type_of, with_span
from .conv_bias_bn import ConvBiasIntoBatchNorm
from .program import conv_names, input_shape_of, linear_weights


@dataclass(frozen=True)
class ImportResult:
    mod: tvm.IRModule
    input_shape: tuple
    input_dtype: str


def _layer_names(func, ep) -> dict:
    """Bound call -> PyTorch module name, for the conv2d and constant-weight matmul calls."""
    convs = [b.value for b in bindings(func) if op_name(b.value) == "relax.nn.conv2d"]
    torch_convs = conv_names(ep)
    names = {}
    for k, call in enumerate(convs):
        if is_constant(call.args[1]):
            names[call] = torch_convs[k] if len(torch_convs) == len(convs) else f"conv{k}"
    linears = linear_weights(ep)  # matched by value: the frontend folds W.T into the constant
    for b in bindings(func):
        call = b.value
        if op_name(call) == "relax.matmul" and is_constant(call.args[1]):
            w = const_numpy(call.args[1])
            hit = next(
                (i for i, (_, lw) in enumerate(linears) if lw.T.shape == w.shape and np.array_equal(lw.T, w)), None
            )
            if hit is not None:
                names[call] = linears.pop(hit)[0]
    return names


@relax.expr_functor.mutator
class _NameLayers(relax.PyExprMutator):
    """Put each layer's name on its call's span (the only change this makes)."""

    def __init__(self, mod, names):
        super().__init__(mod)
        self.names = names

    def visit_call_(self, call):
        new = super().visit_call_(call)
        name = self.names.get(call)
        return with_span(new, named_span(name)) if name is not None else new


def fold_and_name(mod: tvm.IRModule, names_of) -> tvm.IRModule:
    """The clean-up every frontend needs (BN folded into convs, constants folded, dead code
    removed), then each layer's name on its call's span: ``names_of(main) -> {call: name}``."""
    seq = tvm.transform.Sequential(
        [
            # TVM's own BN folding, before DecomposeOpsForInference turns batch_norm into
            # elementwise ops that FoldBatchnormToConv2D would no longer match; a conv's bias
            # (a reshaped constant until FoldConstant) moved into the batch norm first.
            relax.transform.FoldConstant(),
            ConvBiasIntoBatchNorm(),
            relax.transform.FoldBatchnormToConv2D(),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.FoldConstant(),
            relax.transform.DeadCodeElimination(),
            relax.transform.CanonicalizeBindings(),
        ]
    )
    mod = seq(mod)
    # unused tuples left by max_pool2d_with_indices (the indices) survive DCE in dataflow blocks
    func = relax.analysis.remove_all_unused(mod["main"])
    func = _NameLayers(mod, names_of(func)).visit_expr(func)
    bb = relax.BlockBuilder(mod)
    bb.update_func(mod.get_global_var("main"), func)
    return bb.get()


def import_program(ep) -> ImportResult:
    """Relax module of a static ExportedProgram: BN folded into convs, constants folded, layers named."""
    from tvm.relax.frontend.torch import from_exported_program

    try:
        mod = from_exported_program(ep, keep_params_as_input=False, unwrap_unit_return_tuple=True)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"the TVM torch frontend cannot import this model ({msg[:200]})") from None
    mod = fold_and_name(mod, lambda func: _layer_names(func, ep))
    dtype = "float32"
    for p in mod["main"].params[:1]:
        dtype = str(type_of(p).dtype)
    return ImportResult(mod=mod, input_shape=input_shape_of(ep), input_dtype=dtype)
