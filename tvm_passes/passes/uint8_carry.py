"""Carry uint8 activations between int8 convs (docs/formulas.md section 5, formula 5.6).

After ``GroupSparseConv(dtype="int8")`` every int8 conv kernel reads and writes float32: it
quantizes its input in its padded copy and dequantizes in its epilogue.  Between two int8 convs
that is a float32 tensor written and read only to be quantized again.  This rewrite makes such a
tensor uint8: the producer's epilogue quantizes it with the consumer's (scale, zero point), the
consumer's copy only pads it (with the zero point), a residual input is dequantized in the
epilogue, and a max-pool between runs on the uint8 values (quantization is monotone, so
``max`` commutes with it exactly).

A tensor is carried when it is produced by an int8 conv (or by a max-pool of a carried tensor)
and *every* use of it is the data input of an int8 conv, the residual input of an int8 conv, or a
max-pool whose output is carried; and the convs reading it as data all have the same input
(scale, zero point), which they do when they were calibrated on the same tensor.  Anything else
(the function output, a pooling to the classifier, a float32 fallback conv) keeps float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax import PyExprMutator, expr_functor

from ..ir import op_name, type_of

_CALL_TIR = "relax.call_tir"
#: ops that commute with uint8 quantization (monotone in each element) and keep the dtype
_MONOTONE = ("relax.nn.max_pool2d",)


@dataclass(frozen=True)
class Int8Conv:
    """An int8 conv kernel as the rewrite sees it: its input's (scale, zero point), whether it has
    a residual input (the last call argument), and ``rebuild(in_u8, out_q, res_q) -> PrimFunc``."""

    scale: float
    zero: int
    has_res: bool
    rebuild: Callable


def _kernel_gv(call):
    if op_name(call) == _CALL_TIR:
        return call.args[0]
    return None


class _Plan:
    """Which tensors are carried, with which (scale, zero point)."""

    def __init__(self, func: relax.Function, convs: dict):
        self.convs = convs
        self.value = {}  # var -> bound value
        self.uses: dict = {}  # var -> [(consumer var, argument index)]
        for block in func.body.blocks:
            for binding in block.bindings:
                self.value[binding.var] = binding.value
                for i, arg in enumerate(self._args(binding.value)):
                    if isinstance(arg, relax.Var):
                        self.uses.setdefault(arg, []).append((binding.var, i))
        self.outputs = set(relax.analysis.free_vars(func.body.body))
        self._params: dict = {}

    def conv_of(self, value) -> Int8Conv | None:
        gv = _kernel_gv(value)
        return self.convs.get(gv.name_hint) if gv is not None else None

    @staticmethod
    def _args(value):
        if op_name(value) == _CALL_TIR:
            return list(value.args[1].fields)
        return list(value.args) if isinstance(value, relax.Call) else []

    def params(self, var):
        """(scale, zero) every use of ``var`` can take it in as uint8, else None."""
        if var not in self._params:
            self._params[var] = None  # a cycle cannot happen in a dataflow block; guard anyway
            self._params[var] = self._find_params(var)
        return self._params[var]

    def _find_params(self, var):
        if var in self.outputs or not self.uses.get(var):
            return None
        found = set()
        for user, i in self.uses[var]:
            value = self.value[user]
            conv = self.conv_of(value)
            if conv is not None and i == 0:
                found.add((conv.scale, conv.zero))
            elif conv is not None and conv.has_res and i == len(self._args(value)) - 1:
                continue  # a residual: dequantized with whatever parameters the tensor has
            elif op_name(value) in _MONOTONE and i == 0:
                p = self.params(user)
                if p is None:
                    return None
                found.add(p)
            else:
                return None
        return found.pop() if len(found) == 1 else None

    def carried(self, var):
        """``params(var)`` when ``var`` is uint8 after the rewrite (its producer can write it), else None."""
        if not isinstance(var, relax.Var) or var not in self.value:
            return None
        value = self.value[var]
        if self.conv_of(value) is None and not (op_name(value) in _MONOTONE and self.carried(value.args[0])):
            return None
        return self.params(var)

    def kernels(self) -> dict:
        """Kernel name -> (in_u8, out_q, res_q) for every int8 conv the rewrite changes."""
        out = {}
        for var, value in self.value.items():
            conv = self.conv_of(value)
            if conv is None:
                continue
            args = self._args(value)
            flags = (
                self.carried(args[0]) is not None,
                self.carried(var),
                self.carried(args[-1]) if conv.has_res else None,
            )
            if any(flags):
                out[_kernel_gv(value).name_hint] = flags
        return out


@expr_functor.mutator
class _Retype(PyExprMutator):
    """Re-emits the function with the changed kernels' calls pointing at their rebuilt PrimFuncs
    (``kernels``: name -> new GlobalVar) and returning uint8 where their output is carried; the
    calls after them (a max-pool) are re-inferred from their new arguments."""

    def __init__(self, mod, kernels: dict, out_u8: set):
        super().__init__(mod)
        self.kernels = kernels
        self.out_u8 = out_u8

    def visit_call_(self, call):
        gv = _kernel_gv(call)
        if gv is None or gv.name_hint not in self.kernels:
            return super().visit_call_(call)
        ty = type_of(call)
        dtype = "uint8" if gv.name_hint in self.out_u8 else ty.dtype
        return relax.call_tir(
            self.kernels[gv.name_hint], self.visit_expr(call.args[1]), relax.TensorType(ty.shape, dtype)
        )


def carry_uint8(mod: tvm.IRModule, convs: dict, mark: Callable) -> tvm.IRModule:
    """``mod`` with uint8 tensors between the int8 convs ``convs`` (kernel name -> ``Int8Conv``).
    ``mark(old PrimFunc, new PrimFunc, flags)`` makes the rebuilt kernel's attributes."""
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function):
            continue
        plan = _Plan(func, convs).kernels()
        if not plan:
            continue
        # rebuilt kernels get new GlobalVars (a GlobalVar keeps the type of the function it was made for)
        old = {kgv: kfunc for kgv, kfunc in mod.functions_items() if kgv.name_hint in plan}
        rest = tvm.IRModule({k: f for k, f in mod.functions_items() if k not in old}, attrs=mod.attrs)
        rewriter = _Retype(rest, {}, {name for name, (_, out_q, _) in plan.items() if out_q})
        for kgv, kfunc in old.items():
            flags = plan[kgv.name_hint]
            new = mark(kfunc, convs[kgv.name_hint].rebuild(*flags), flags)
            rewriter.kernels[kgv.name_hint] = rewriter.builder_.add_func(new, kgv.name_hint)
        rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        mod = rewriter.builder_.get()
    return mod
