"""Compile targets: the host CPU for ``llvm`` (its triple, CPU and core count), the local GPU's
architecture for ``cuda``, and their JSON form for the manifest."""

from __future__ import annotations

import ctypes
import functools
import os

import tvm

from .errors import ExportError


def make_target(target="llvm"):
    """``"llvm"`` / ``"cuda"`` / a dict / a Target -> ``tvm.target.Target`` (host CPU for llvm)."""
    if isinstance(target, tvm.target.Target):
        return target
    if isinstance(target, dict):
        return tvm.target.Target(target)
    if target == "llvm":
        return tvm.target.Target(_host_cpu_spec())
    if target == "cuda":
        return tvm.target.Target({"kind": "cuda", "arch": _cuda_arch()})
    raise ExportError(f"unknown target {target!r} (use llvm or cuda)")


#: LLVM features of Intel AMX (INT8 tiles), added to the host target where the CPU and the OS allow them
AMX_MATTR = ("+amx-tile", "+amx-int8")
_ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA, _SYS_ARCH_PRCTL = 0x1023, 18, 158  # Linux x86_64


@functools.cache
def request_amx() -> bool:
    """Ask Linux for the AMX tile state, once per process (a process that has not asked dies with
    SIGILL on its first tile instruction); False where the CPU or the OS has none."""
    if os.uname().machine != "x86_64" or not _cpu_flags().issuperset({"amx_tile", "amx_int8"}):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) == 0


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_amx(target) -> bool:
    """Whether ``target`` is compiled with the AMX features (the int8 kernels then use tiles)."""
    mattr = [str(x) for x in (target.attrs.get("mattr", None) or [])]
    return all(m in mattr for m in AMX_MATTR)


def _host_cpu_spec() -> dict:
    from tvm.target import codegen

    spec = {"kind": "llvm", "num-cores": max(os.cpu_count() or 1, 1)}
    try:
        triple = str(codegen.llvm_get_system_triple())
        if triple.startswith("x86_64") and "linux" in triple:
            triple = "x86_64-linux-gnu"  # the wheel reports a conda vendor triple
        spec["mtriple"] = triple
        cpu = str(codegen.llvm_get_system_cpu())
        if cpu and codegen.llvm_is_valid_cpu(cpu, spec["mtriple"]):
            spec["mcpu"] = cpu
        if request_amx():  # LLVM may name the host an older CPU (a VM's masked model) without AMX
            spec["mattr"] = list(AMX_MATTR)
    except Exception:  # noqa: BLE001 - an LLVM without host detection: a generic x86-64 target
        spec = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "num-cores": spec["num-cores"]}
    return spec


def _cuda_arch() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return f"sm_{major}{minor}"
    except Exception:  # noqa: BLE001 - no usable CUDA runtime: build for Hopper
        pass
    return "sm_90"


def target_spec(target) -> dict:
    """The JSON form of a target for the manifest."""
    out = {"kind": target.kind.name}
    for key in ("mtriple", "mcpu", "arch", "num-cores"):
        val = target.attrs.get(key) if hasattr(target.attrs, "get") else None
        if val is not None and str(val) != "":
            out[key] = int(val) if key == "num-cores" else str(val)
    mattr = target.attrs.get("mattr", None) if hasattr(target.attrs, "get") else None
    if mattr:
        out["mattr"] = [str(x) for x in mattr]
    return out


def has_cuda_device() -> bool:
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - a TVM without CUDA support
        return False
