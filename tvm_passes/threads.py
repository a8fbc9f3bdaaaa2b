"""The CPU thread pool of the TVM runtime, configured by the artifact itself.

TVM's pool starts with ``TVM_NUM_THREADS`` threads (default: the machine's cores) and, unless
``TVM_BIND_THREADS=0``, pins them to cores - on small VMs it put both threads of a 2-core
machine on one core, so a loaded artifact ran at about half speed unless the user knew the two
variables.  ``configure`` sets the pool explicitly through ``runtime.config_threadpool``:

* threads: the argument, else ``TVM_NUM_THREADS``, else the cores this process may run on
  (``os.sched_getaffinity``: a container's or ``taskset``'s limit is respected);
* placement: the threads share those cores and the OS places them (no pinning), unless
  ``TVM_BIND_THREADS=1`` asks for TVM's own binding.
"""

from __future__ import annotations

import os

#: TVM's AffinityMode values (src/runtime/threading_backend.cc)
_BIG_CORES = 1
_SHARE_ALL_CORES = -3

_configured: tuple | None = None


def available_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def default_threads() -> int:
    env = os.environ.get("TVM_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else len(available_cores())


def configure(threads: int | None = None) -> int:
    """Set the runtime's pool (see the module doc); returns the thread count.  Cheap when unchanged."""
    global _configured
    import tvm  # noqa: F401 - registers the runtime functions
    from tvm_ffi import get_global_func

    n = int(threads) if threads else default_threads()
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    bind = os.environ.get("TVM_BIND_THREADS", "0").strip() == "1"
    key = (n, bind)
    if _configured != key:
        if bind:
            get_global_func("runtime.config_threadpool")(_BIG_CORES, n)
        else:
            cores = available_cores()
            get_global_func("runtime.config_threadpool")(_SHARE_ALL_CORES, n, [str(c) for c in cores])
        _configured = key
    return n
