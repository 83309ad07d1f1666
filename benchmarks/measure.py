"""How things are measured: interleaved wall-clock timing, compile time, XLA's cost and memory.

    times = interleaved({"manual": run_a, "auto": run_b}, repeats=30)   # A B B A A B ...
    stats, compiled = compile_stats(jax.jit(step), state, x, y)  # lower + compile, memory
    summary(times["manual"])                             # median, min, max
    max_rel_diff(grads_a, grads_b)                       # max |a − b| / max |b| over leaves

Every suite uses these: memory is always XLA's own account of the compiled program
(`jax.jit(f).lower(...).compile().memory_analysis()`), time always the median of
interleaved calls after warm-up.

Every timed call is followed by `jax.block_until_ready` on its result, so a time is the
whole step as the caller sees it: dispatch + device work. Interleaving the contenders in
one process makes slow drift (other processes, frequency scaling, thermals) hit both alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import jax
import numpy as np


def interleaved(runners: dict[str, Callable[[], Any]], *, repeats: int,
                warmup: int = 3, clock: Callable[[], float] = time.perf_counter
                ) -> dict[str, list[float]]:
    """Seconds per call of each runner, called in turn `repeats` times: A B C, then C B A,
    and so on, so that no runner always goes first (after another's work, or after a pause).

    Each runner is first called `warmup` times (compilation and first-touch costs),
    so the times are of the steady state. `clock`: wall-clock by default, or e.g.
    `time.process_time` (the process's CPU time over all its threads).
    """
    for run in runners.values():
        for _ in range(warmup):
            jax.block_until_ready(run())
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners.items())
    for i in range(repeats):
        for name, run in order if i % 2 == 0 else order[::-1]:
            t0 = clock()
            jax.block_until_ready(run())
            times[name].append(clock() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """The median (the number reported), with min and max to show the spread."""
    return {"step_time_s": statistics.median(times), "step_time_min_s": min(times),
            "step_time_max_s": max(times)}


def max_rel_diff(a, b) -> float:
    """The largest relative difference of two pytrees: over leaves, max |a − b| / max |b|
    (max |a − b| where b is all zeros), in float64 on the host. ValueError when the trees
    differ in structure or a leaf's shape."""
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    if tree_a != tree_b:
        raise ValueError(f"max_rel_diff: the trees differ: {tree_a} vs {tree_b}")
    worst = 0.0
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            raise ValueError(f"max_rel_diff: leaf shapes differ: {x.shape} vs {y.shape}")
        if x.size == 0:
            continue
        err = float(np.max(np.abs(x - y)))
        scale = float(np.max(np.abs(y)))
        worst = max(worst, err / scale if scale > 0 else err)
    return worst


def _first_dict(analysis: Any) -> dict | None:
    """`cost_analysis()` is a dict (JAX ≥ 0.4.3x) or a list of one dict per module (older)."""
    if isinstance(analysis, dict):
        return analysis
    if isinstance(analysis, (list, tuple)):
        return next((a for a in analysis if isinstance(a, dict) and a), None)
    return None


def cost_flops(compiled) -> float | None:
    """XLA's flop count for one call of a compiled function (None where it gives none)."""
    try:
        cost = _first_dict(compiled.cost_analysis())
    except Exception:  # not every backend implements it
        return None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def memory_stats(compiled) -> dict[str, int | None]:
    """Bytes XLA allocates for one call: temporaries, arguments, outputs (None when unknown)."""
    try:
        stats = compiled.memory_analysis()
    except Exception:
        stats = None
    fields = {"temp_bytes": "temp_size_in_bytes", "argument_bytes": "argument_size_in_bytes",
              "output_bytes": "output_size_in_bytes", "alias_bytes": "alias_size_in_bytes"}
    out = {}
    for key, attr in fields.items():
        value = getattr(stats, attr, None) if stats is not None else None
        out[key] = int(value) if value is not None else None
    return out


def compile_stats(jitted, *args) -> tuple[dict[str, Any], Any]:
    """Trace + lower, then compile `jitted` for `args`; the times, flops and memory, and the
    compiled executable. `jitted` should be a fresh `jax.jit` object, or the times are of
    cache hits."""
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    stats = {"lower_time_s": t1 - t0, "compile_time_s": t2 - t1, "flops": cost_flops(compiled)}
    stats.update(memory_stats(compiled))
    return stats, compiled


class NoDevice(ValueError):
    """The requested platform has no device here."""


def pick_device(platform_name: str | None):
    """The first device of a platform ("cpu", "gpu"), or JAX's default device."""
    if platform_name is None:
        return jax.devices()[0]
    try:
        return jax.devices(platform_name)[0]
    except RuntimeError as e:
        raise NoDevice(f"no {platform_name} device available to JAX ({e}); "
                         f"available: {[str(d) for d in jax.devices()]}") from None


def host_memory() -> str:
    """How the process's large host blocks are allocated, for the records: kept by
    `fbp.keep_host_memory`, glibc's malloc on transparent huge pages (GLIBC_TUNABLES with
    glibc.malloc.hugetlb), or glibc's default."""
    if os.environ.get("FBP_KEEP_HOST_MEMORY"):
        return "kept (fbp.keep_host_memory)"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(t.strip() in ("glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=2")
           for t in tunables.split(":")):
        return f"huge pages (GLIBC_TUNABLES={tunables})"
    return "glibc default" + (f" (GLIBC_TUNABLES={tunables})" if tunables else "")


def environment(device) -> dict[str, Any]:
    """Where and with what a number was measured; stored in every record."""
    import jaxlib

    return {
        "device": f"{device.platform}: {device.device_kind}",
        "platform": device.platform,
        "device_kind": device.device_kind,
        "jax_version": jax.__version__,
        "jaxlib_version": getattr(jaxlib, "__version__", None),
        "python_version": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "matmul_precision": getattr(jax.config, "jax_default_matmul_precision", None),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "host_memory": host_memory(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
