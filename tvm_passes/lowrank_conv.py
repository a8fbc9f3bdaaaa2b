"""Relax pass: decompose a conv whose constant weight is low-rank into a basis conv and a 1x1 conv
(paper 002 Fig. 3; formulas.md section 3), at export time, when asked (``error``).

``conv2d(x, W)`` with filter matrix ``M`` (per conv group, ``N_g x C_g kh kw``) of uncentred-PCA
rank ``K`` at error ``e`` (``sum_{k>K} lambda_k / sum lambda_k <= e``) becomes
``conv2d(conv2d(x, B), U)`` with ``B = S_K V_K^T`` (same stride/padding/dilation/groups) and the
1x1 ``U = U_K``, where that lowers FLOPs: ``K (C_g kh kw + N_g) < N_g C_g kh kw``. ``B = U_K^T M``
keeps every all-zero column of ``M``, so the GBD patterns survive in the basis conv and pass 1
lowers it to a gather-GEMM; the 1x1 stage takes the following bias/ReLU in its epilogue.
Runs before pass 1 (group_sparse_conv).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .importer import const_numpy, weight_key


def pca_rank(m: np.ndarray, error: float) -> int:
    s2 = np.linalg.svd(m.astype(np.float64), compute_uv=False) ** 2
    total = s2.sum()
    if total == 0:
        return 0
    tail = (total - np.cumsum(s2)) / total
    return int((tail > error).sum()) + 1


@tvm.transform.module_pass(opt_level=0, name="LowRankConv")
class LowRankConv:
    """Decompose low-rank constant-weight convs; ``records`` gets one dict per decomposed conv."""

    def __init__(self, error: float, *, names: dict | None = None, records: list | None = None):
        if not 0 <= error < 1:
            raise ValueError(f"decomposition error must be in [0, 1), got {error}")
        self.error = error
        self.names = names if names is not None else {}
        self.records = records if records is not None else []
        self.pattern = is_op("relax.nn.conv2d")(wildcard(), is_const())

    def _rewrite(self, expr: relax.Call, matches) -> relax.Expr:
        attrs = expr.attrs
        if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW":
            return expr
        w = const_numpy(expr.args[1])
        if w.dtype != np.float32:
            return expr
        g = int(attrs.groups)
        n, cg, kh, kw = w.shape
        ng, d = n // g, cg * kh * kw
        mats = w.reshape(g, ng, d)
        k = max(pca_rank(m, self.error) for m in mats)
        if k == 0 or k * (d + ng) >= ng * d:
            return expr
        bases, coeffs, err_num = [], [], 0.0
        for m in mats:
            u, s, vh = np.linalg.svd(m.astype(np.float64), full_matrices=False)
            bases.append((s[:k, None] * vh[:k]).reshape(k, cg, kh, kw))
            coeffs.append(u[:, :k])
            err_num += float(((m - u[:, :k] @ (s[:k, None] * vh[:k])) ** 2).sum())
        basis = np.ascontiguousarray(np.concatenate(bases).astype(np.float32))
        coeff = np.ascontiguousarray(np.concatenate(coeffs).astype(np.float32).reshape(n, k, 1, 1))
        name = self.names.get(weight_key(w), f"conv{len(self.records)}")
        self.names[weight_key(basis)] = f"{name}.basis"
        self.names[weight_key(coeff)] = f"{name}.coeff"
        self.records.append({"name": name, "decision": "decomposed", "rank": k, "filters": n,
                             "error": err_num / max(float((w.astype(np.float64) ** 2).sum()), 1e-300),
                             "error_bound": self.error, "reason": f"PCA rank {k} of {ng} per group at e={self.error}: "
                             f"FLOPs x{k * (d + ng) / (ng * d):.3f}"})
        first = relax.op.nn.conv2d(expr.args[0], relax.const(basis), strides=attrs.strides, padding=attrs.padding,
                                   dilation=attrs.dilation, groups=g, data_layout="NCHW", kernel_layout="OIHW",
                                   out_dtype=attrs.out_dtype)
        return relax.op.nn.conv2d(first, relax.const(coeff), groups=g, data_layout="NCHW", kernel_layout="OIHW",
                                  out_dtype=attrs.out_dtype)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                mod[gv] = rewrite_call(self.pattern, self._rewrite, func)
        return mod
