"""Load an exported artifact directory as a callable (torch tensors or numpy arrays in and out)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading

import numpy as np

from ..errors import ArtifactError
from ..target import AMX_MATTR, request_amx
from ..threads import configure as configure_threads
from .manifest import LIB_NAME, MANIFEST, sha256_file

_CACHE: dict = {}
_LOCK = threading.Lock()


class CompiledModel:
    """A compiled GBD model; ``model(x)`` returns the same kind of array it was given.

    Safe to call from several threads at once: each thread runs its own Relax VM over the one
    loaded library (a VM holds its registers and planned buffers, so two threads sharing one
    overwrote each other's and crashed); the weights are the library's, not copied per VM.
    """

    def __init__(self, out_dir, manifest, lib, device):
        self.out_dir = out_dir
        self.manifest = manifest
        self.device = device
        self._lib = lib
        self._vms = threading.local()
        self.input_shape = tuple(manifest["input"]["shape"])  # ("batch", C, H, W) for a dynamic batch
        self.dynamic_batch = bool(manifest["input"].get("dynamic_batch", False))
        #: the batch it was exported at (any batch runs when dynamic_batch)
        self.batch = int(manifest["input"].get("example_batch", self.input_shape[0]))
        self.input_dtype = manifest["input"].get("dtype", "float32")
        self._on_cpu = manifest.get("device", "cpu") == "cpu"
        #: per thread, the device tensor the last array input was copied into (reused while the
        #: shape is the same)
        self._inputs = threading.local()

    def _thread_vm(self):
        """This thread's VM and its ``main`` (made on the thread's first call)."""
        vms = self._vms
        if getattr(vms, "vm", None) is None:
            from tvm import relax

            vms.vm = relax.VirtualMachine(self._lib, self.device)
            vms.main = vms.vm["main"]
        return vms

    @property
    def vm(self):
        """This thread's ``relax.VirtualMachine``."""
        return self._thread_vm().vm

    @property
    def _main(self):
        return self._thread_vm().main

    def __repr__(self):
        return f"CompiledModel({self.out_dir!r}, input={list(self.input_shape)}, device={self.device})"

    def _to_tvm(self, x):
        import tvm

        ok = tuple(x.shape[1:]) == self.input_shape[1:] and len(x.shape) == len(self.input_shape)
        if not (ok and (self.dynamic_batch or x.shape[0] == self.input_shape[0]) and x.shape[0] >= 1):
            raise ValueError(f"expected input shape {list(self.input_shape)}, got {list(x.shape)}")
        if hasattr(x, "detach"):  # torch
            t = x.detach()
            if str(t.dtype) != f"torch.{self.input_dtype}":
                import torch

                t = t.to(getattr(torch, self.input_dtype))
            if self._on_cpu and t.device.type == "cpu":
                t = t.contiguous()
                if t.data_ptr() % 64:  # TVM takes only 64-byte aligned memory (a slice, from_numpy)
                    return self._input_tensor(t.numpy())
                return tvm.runtime.from_dlpack(t)
            return self._input_tensor(t.cpu().contiguous().numpy())
        arr = np.ascontiguousarray(np.asarray(x, dtype=self.input_dtype))
        return self._input_tensor(arr)

    def _input_tensor(self, arr):
        """``arr`` copied into this thread's input tensor of its shape.  A new tensor per call
        (``tvm.runtime.tensor``) is a fresh allocation of the whole input, whose pages the kernel
        maps again on every call: at batch 32 (19 MB) about 2,400 page faults and 20-80 ms of system
        time per call (MobileNetV2, 2 threads, AMD EPYC; ad-hoc, getrusage around the calls)."""
        import tvm

        buf = getattr(self._inputs, "tensor", None)
        if buf is None or tuple(buf.shape) != arr.shape:
            buf = self._inputs.tensor = tvm.runtime.empty(arr.shape, self.input_dtype, self.device)
        buf.copyfrom(arr)
        return buf

    def example_shape(self, batch=None) -> tuple:
        """The input shape at ``batch`` (default: the export's batch); a static artifact takes only its own."""
        return (int(batch or self.batch), *self.input_shape[1:])

    def run_tvm(self, x):
        """Run on a ``tvm.runtime.Tensor`` already on the device (no conversion)."""
        return self._main(x)

    def __call__(self, x):
        out = self._main(self._to_tvm(x))
        if hasattr(out, "numpy"):
            return self._convert(out, x)
        outs = tuple(self._convert(o, x) for o in out)  # a model with several outputs
        return outs[0] if len(outs) == 1 else outs

    @staticmethod
    def _convert(out, like):
        if hasattr(like, "detach"):
            import torch

            res = torch.from_numpy(out.numpy())
            return res.to(like.device) if like.device.type != "cpu" else res
        return out.numpy()


def load(out_dir, *, device=None, check_sha=True, threads=None) -> CompiledModel:
    """Load ``out_dir`` written by ``gbd-export`` / ``export_model``.

    Refuses an artifact whose library sha256 differs from ``manifest.json``.  Loaded libraries
    are cached per (path, sha256), so repeated calls are cheap.  A CPU artifact configures the
    runtime's thread pool (``tvm_passes.threads.configure``): ``threads`` threads, else
    ``TVM_NUM_THREADS``, else every core this process may use; no pinning unless
    ``TVM_BIND_THREADS=1``.
    """
    import tvm

    out_dir = os.path.abspath(str(out_dir))
    manifest, lib_path = _read_manifest(out_dir)
    if manifest.get("device", "cpu") == "cpu":
        threads = configure_threads(threads)
        _allow_amx(manifest, out_dir)
    st = os.stat(lib_path)
    key = (lib_path, st.st_mtime_ns, st.st_size, manifest.get("library_sha256"), str(device))
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        return hit
    if check_sha:
        sha = sha256_file(lib_path)
        if sha != manifest.get("library_sha256"):
            raise ArtifactError(
                f"{lib_path}: sha256 {sha[:16]}... does not match the manifest "
                f"({str(manifest.get('library_sha256'))[:16]}...); refusing to load"
            )
    if device is None:
        device = tvm.cuda(0) if manifest.get("device") == "cuda" else tvm.cpu(0)
    if manifest.get("device") == "cuda" and not device.exist:
        raise ArtifactError(f"{out_dir}: CUDA artifact but no CUDA device here")
    tag = str(manifest.get("library_sha256") or st.st_mtime_ns)[:32]
    private = _private_copy(lib_path, tag)
    try:
        lib = tvm.runtime.load_module(private)
    finally:
        # Once dlopen'ed the mapping outlives the file: remove it so no process leaves a
        # library-sized copy in the temp dir (a test run loads hundreds of artifacts).
        with contextlib.suppress(OSError):
            os.remove(private)
    model = CompiledModel(out_dir, manifest, lib, device)
    model._thread_vm()  # the loading thread's VM: a broken library fails here, not at the first call
    with _LOCK:
        _CACHE[key] = model
    return model


def _allow_amx(manifest, out_dir) -> None:
    """An artifact whose int8 kernels were built for AMX tiles needs the process's AMX permission
    before its first call (its float32 kernels use no tile instruction)."""
    mattr = (manifest.get("target") or {}).get("mattr") or []
    int8 = any(c.get("compute_dtype") == "int8" for c in manifest.get("convs") or [])
    if int8 and all(m in mattr for m in AMX_MATTR) and not request_amx():
        raise ArtifactError(f"{out_dir}: its int8 kernels use Intel AMX tiles, which this CPU or OS does not allow")


def _read_manifest(out_dir) -> tuple[dict, str]:
    man_path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(man_path):
        raise ArtifactError(f"{out_dir}: no manifest.json (not a gbd-export artifact)")
    with open(man_path) as f:
        manifest = json.load(f)
    lib_path = os.path.join(out_dir, manifest.get("library", LIB_NAME))
    if not os.path.isfile(lib_path):
        raise ArtifactError(f"{lib_path}: library missing")
    return manifest, lib_path


def _private_copy(lib_path, tag) -> str:
    """dlopen returns the library already loaded from the same path, even if the file was replaced
    by a newer export: load a per-content copy so a re-export in this process is really loaded.
    The caller removes the copy once it is loaded."""
    unique = os.path.join(tempfile.gettempdir(), f"gbd_{os.getpid()}_{tag}.so")
    if not os.path.exists(unique):
        shutil.copyfile(lib_path, unique + ".tmp")
        os.replace(unique + ".tmp", unique)
    return unique
