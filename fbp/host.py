"""The host process: how XLA:CPU's per-call temporaries get their memory.

XLA:CPU allocates a compiled program's temporaries anew on every call, with the C library's
`malloc`. glibc hands a block above its mmap threshold (32 MiB at most) to a fresh `mmap`
and returns it to the kernel on `free`, so every call faults every page of it in again: a
2-block transformer step (103 MiB of temporaries) takes ~29,000 page faults and 15–20% of its
time doing so. `keep_host_memory` tells glibc to keep freed memory for the next call;
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` at start-up makes the pages 2 MiB instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import warnings

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def _backends_started() -> bool:
    """Whether JAX has made its backends (and so the threads that run XLA's programs)."""
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this module: assume not
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started()) if callable(started) else False


def keep_host_memory() -> bool:
    """Keep freed host memory in the process for reuse, instead of returning it to the
    kernel: on Linux with glibc, the XLA:CPU programs of a train step then find their
    temporaries' pages already mapped on every call after the first.

    It sets three of glibc's malloc parameters (`mallopt`): no `mmap` for large blocks
    (M_MMAP_MAX = 0), no trimming of the heap's top (M_TRIM_THRESHOLD = 2³¹ − 1), and one
    arena for all threads (M_ARENA_MAX = 1), as starting Python with
    `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.arena_max=1`
    would. The process then holds on to its peak memory until it exits. It changes how the
    whole process allocates (PyTorch, NumPy alike), so it is for programs that train, not
    for a library to call on import (`fbp train --keep-host-memory` calls it).

    It has a cost: with one arena, XLA's compilation (many small allocations on several
    threads) gets slower, measured 1.5× (the CNN step's compile 0.72 → 1.11 s, the
    transformer's 0.60 → 0.95 s). It pays where steps with large temporaries run many times;
    a small model trained for a few seconds (`make run`: 8.8 → 11.2 s) loses.

    Call it before JAX runs its first computation: the threads that run XLA's programs take
    their own malloc arenas on first use, and those are not affected afterwards.

    Where the kernel offers transparent huge pages ("madvise" or "always" in
    /sys/kernel/mm/transparent_hugepage/enabled) and glibc is 2.35 or newer, starting Python
    with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` gets most of the gain without either cost:
    glibc asks for 2 MiB pages for its large blocks, so a call faults its temporaries in
    512× fewer pages, compiling is not slowed, and freed memory still goes back to the
    kernel. Measured on the same machine: the transformer step 133 → 108–117 ms (kept:
    107–111) with 29,000 → ~350 page faults per step, compile 0.51 s (kept: 0.78 s). It is
    read at start-up only, so fbp cannot set it for you; it speeds up PyTorch as well.

    Measured (2 CPU cores, JAX 0.10.2, `benchmarks/results`): the 2-block transformer step
    140 → 107 ms, with 29,000 → ~1,000 page faults per step; the CNN step's `jax.grad`
    90 → 66 ms.
    On a machine loaded by other processes a call still faults its pages in now and then.

    Returns:
        True if the parameters were set; False where there is nothing to set (not Linux,
        not glibc) or when it came too late (with a warning).

    Examples:
        At the top of a training script, before any JAX computation:

        >>> import warnings, jax.numpy as jnp, fbp
        >>> _ = jnp.ones(3).block_until_ready()        # too late after a first computation:
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     fbp.keep_host_memory(), len(caught)
        (False, 1)
    """
    if platform.system() != "Linux":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    if _backends_started():
        warnings.warn("fbp.keep_host_memory: JAX has already run a computation, so the "
                      "threads that run XLA's programs keep their own malloc arenas; call it "
                      "before the first computation (nothing was changed)", stacklevel=2)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))


__all__ = ["keep_host_memory"]
