"""One analysis after lowering: the per-layer records of the manifest, read off the IR.

Every kernel PrimFunc that ``GroupSparseConv`` emitted carries its layer's record
(``RECORD_ATTR``); ``main`` calls them in graph order.  What the earlier passes did is read by
comparing with the imported module, by layer name: input / output maps that ``DeadChannels``
removed (weight shapes), and the rank and error of the pairs ``LowRankConv`` made
(``<layer>.basis`` / ``<layer>.coeff``).  Density and FLOPs of a conv "as written" come from the
imported weight through the core (``lightning_gbd.core.groups``), like every other count.
"""

from __future__ import annotations

import tvm

from lightning_gbd.core.groups import conv_flops, density, group_mask
from lightning_gbd.core.lowrank import live_pair_flop_ratio, pca_factors

from ..ir import batch_count, bindings, const_numpy, func_attr, is_constant, layer_name, op_name, tir_callee
from .kernel_marks import RECORD_ATTR


def _plain(value):
    """TVM FFI containers -> Python dicts / lists."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value]


def kernel_records(mod: tvm.IRModule) -> list[dict]:
    """The records of the GBD kernels called from ``main``, in call order (``kernel`` = its name;
    a kernel of several layers gives each its record)."""
    out = []
    for b in bindings(mod["main"]):
        rec = func_attr(tir_callee(mod, b.value), RECORD_ATTR)
        if rec is not None:
            rec = _plain(rec)  # a list where one kernel computes several layers (passes.expand_depthwise)
            out.extend({**r, "kernel": b.value.args[0].name_hint} for r in (rec if isinstance(rec, list) else [rec]))
    return out


def imported_convs(mod: tvm.IRModule) -> dict:
    """Layer name -> (weight, groups) of the named constant-weight conv2d calls of ``main``."""
    out = {}
    for b in bindings(mod["main"]):
        call = b.value
        name = layer_name(call)
        if op_name(call) == "relax.nn.conv2d" and name is not None and is_constant(call.args[1]):
            out[name] = (const_numpy(call.args[1]), int(call.attrs.groups))
    return out


def _as_written(rec: dict, weight, groups: int) -> dict:
    """Dead-map counts, and density / dense FLOPs of the conv before its dead maps were removed."""
    t, s = rec["weight_shape"][:2]
    rec["dead_channels"] = {
        "input_maps_removed": int(weight.shape[1] - s),
        "output_maps_removed": int(weight.shape[0] - t),
    }
    if tuple(weight.shape) != tuple(rec["weight_shape"]):
        rec["original_weight_shape"] = [int(v) for v in weight.shape]
        rec["density_after_dead_channel_removal"] = rec["density"]
        rec["density"] = density(group_mask(weight, groups))
        rec["flops_dense"] = conv_flops(
            weight.shape, rec["output_shape"][2:], groups, batch=batch_count(rec["input_shape"])
        )
    return rec


def decomposition(name: str, weight, groups: int, rank: int, error_bound: float) -> dict:
    """The manifest entry of a conv ``LowRankConv`` decomposed at rank ``rank`` per group."""
    n = weight.shape[0]
    _, _, err = pca_factors(weight, groups, rank=rank)
    ratio = live_pair_flop_ratio(weight, groups, rank)
    return {
        "name": name,
        "decision": "decomposed",
        "rank": rank,
        "filters": n,
        "error": err,
        "error_bound": error_bound,
        "reason": f"PCA rank {rank} of {n // groups} per group at e={error_bound}: FLOPs x{ratio:.3f}",
    }


def collect_records(imported: tvm.IRModule, lowered: tvm.IRModule, decompose_error: float | None = None):
    """``(layer records, decomposed convs)`` of a lowered module, against the imported one."""
    before = imported_convs(imported)
    records, decomposed = [], []
    for rec in kernel_records(lowered):
        if rec["op"] == "conv2d":
            rec.setdefault("dead_channels", {"input_maps_removed": 0, "output_maps_removed": 0})
            if rec["name"] in before:
                rec = _as_written(rec, *before[rec["name"]])
            base = rec["name"][: -len(".basis")] if rec["name"].endswith(".basis") else None
            if base in before and decompose_error is not None:
                weight, groups = before[base]
                decomposed.append(
                    decomposition(base, weight, groups, rec["weight_shape"][0] // groups, decompose_error)
                )
        records.append(rec)
    return records, decomposed
