"""`python -m benchmarks.transformer_profile`: where a transformer train step's time goes.

The model of the suite's transformer config: 2 pre-LN `transformer_block`s (d = 256, 8 heads,
causal, MLP ×4), batch 16, T = 128, float32. Timed, interleaved in one process (A B C, then
C B A, ...; warm-up first; each call ends in `block_until_ready`; medians):

- mha fwd          `multi_head_attention.fwd` (output and residuals, as training runs it)
- mha bwd          `multi_head_attention.bwd` from those residuals
- mha fwd+bwd      the two in one program, as in a train step
- mha fwd (chunked), mha bwd (chunked)   the same with `chunk_size=` (FlashAttention-style)
- block fwd+bwd    one `transformer_block`, fwd then bwd for a given cotangent
- step manual      2 blocks, MSE, SGD: `fbp.value_and_grad` + the update, one jitted step
- step jax.grad    the same with `fbp.autodiff_value_and_grad`
- matmul           (B·T, d) @ (d, 4d), the MLP's GEMM: the rate the pieces are compared with

Each piece is printed with its wall time, its CPU time (all threads: the work, which a busy
machine disturbs much less), the minor page faults per call, XLA's temporary bytes, XLA's
flop count, its rate, and the wall and CPU time it would take at the GEMM's rate (the
"floors").

The page faults are worth a look on Linux: XLA:CPU allocates a program's temporaries anew
on every call, and with glibc's malloc a block above its mmap threshold (at most 32 MiB)
is a fresh mapping each time, every page of it faulted in again (the 2-block step: ~147 MiB,
~38k faults and ~20% of the step's CPU time here). Starting the process with
`GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.arena_max=1`
keeps freed memory in the heap for the next call (the process then holds its peak).

`--gemms` first times the step's own matrix products (as fbp's backward runs them) in XLA
and in PyTorch, one after the other in this process: the part of the gap to PyTorch that
is the GEMM kernels.

`--hlo DIR` writes each compiled program's text
(`jax.jit(f).lower(...).compile().as_text()`) and prints a census of its instructions:
how many dots, transposes, copies and fusions XLA made of it. `--ops NAME` runs one piece
under `jax.profiler` and lists its XLA operations by time (a thunk's wall time, so on a busy
machine every row is inflated alike; the shares are what to read).

Only fbp's public API and JAX are used; nothing here is imported by fbp.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fbp
from fbp import layers as L

B, T, D, HEADS, MLP = 16, 128, 256, 8, 4


def _random_like(tree, rng, scale=0.05):
    """The tree's shapes, filled with small random numbers (no zero biases or unit scales:
    a zero would hide a wrong gradient term)."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [
        jnp.asarray(a + scale * rng.standard_normal(a.shape), jnp.float32) for a in leaves])


def _init(layer, shape, rng):
    _, params = layer.init(jax.random.key(0), shape)
    return _random_like(params, rng)


def _minor_faults() -> int:
    """The process's minor page faults so far (0 where `resource` is missing: not Unix)."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(runners: dict, *, repeats: int, warmup: int = 3) -> dict[str, tuple]:
    """{name: (wall seconds, process CPU seconds, minor page faults)} per call of each runner,
    called in turn (A B C, C B A, ...) after `warmup` calls. The CPU time (all of the
    process's threads) is the work done; on a machine shared with other jobs it moves much
    less than the wall time."""
    for run in runners.values():
        for _ in range(warmup):
            jax.block_until_ready(run())
    out: dict[str, tuple] = {name: ([], [], []) for name in runners}
    order = list(runners.items())
    for i in range(repeats):
        for name, run in order if i % 2 == 0 else order[::-1]:
            t0, c0, f0 = time.perf_counter(), time.process_time(), _minor_faults()
            jax.block_until_ready(run())
            wall, cpu, faults = out[name]
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            faults.append(_minor_faults() - f0)
    return out


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend gives one
        return None
    if isinstance(cost, (list, tuple)):
        cost = next((c for c in cost if isinstance(c, dict) and c), None)
    flops = (cost or {}).get("flops")
    return float(flops) if flops else None


_OP = re.compile(r"=\s*[^=]*?\b([a-z][a-z0-9-]*)\(")


def census(hlo: str) -> dict[str, int]:
    """How many instructions of each interesting kind an optimized HLO module holds (in all
    its computations, fused ones included), and how many top-level fusions."""
    counts: collections.Counter = collections.Counter()
    for line in hlo.splitlines():
        line = line.strip()
        if not line or line.startswith(("HloModule", "}", "//")) or "=" not in line:
            continue
        m = _OP.search(line)
        if m:
            counts[m.group(1)] += 1
    keys = ("dot", "transpose", "copy", "fusion", "reduce", "exponential", "select",
            "custom-call", "while", "conditional")
    return {k: counts.get(k, 0) for k in keys}


def dot_shapes(hlo: str) -> list[str]:
    """The dots of the entry computations, as `result = dot(lhs, rhs), dims`."""
    out = []
    for line in hlo.splitlines():
        if re.search(r"\bdot\(", line):
            s = line.strip()
            s = re.sub(r", metadata=\{.*", "", s)
            out.append(s[:220])
    return out


def op_times(compiled, args, runs: int = 5) -> dict[str, float]:
    """Seconds per call of each XLA operation (by HLO name), from a `jax.profiler` trace of
    `runs` calls; {} where the trace holds no per-operation events."""
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as where:
        jax.profiler.start_trace(where)
        for _ in range(runs):
            jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        traces = sorted(Path(where).rglob("*.trace.json.gz"))
        if not traces:
            return {}
        with gzip.open(traces[-1]) as f:
            events = json.load(f).get("traceEvents", [])
    total: collections.Counter = collections.Counter()
    for e in events:
        op = (e.get("args") or {}).get("hlo_op")
        if op and e.get("ph") == "X":
            total[op] += e.get("dur", 0) * 1e-6 / runs
    return dict(total)


def entry_ops(hlo: str) -> dict[str, tuple[str, bool]]:
    """HLO name -> ("kind shape <- operands", whether it is or calls a dot) for the
    instructions of the entry computation."""
    with_dot, current = set(), None
    for line in hlo.splitlines():
        head = re.match(r"\s*%?([\w.\-]+) \(.*\) -> .* \{$", line)
        if head:
            current = head.group(1)
        elif current and re.search(r"\bdot\(", line):
            with_dot.add(current)
    out = {}
    for line in hlo[hlo.find("ENTRY"):].splitlines()[1:]:
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*?)\)", line)
        if m:
            name, shape, kind, operands = m.groups()
            calls = re.search(r"calls=%?([\w.\-]+)", line)
            dot = kind == "dot" or bool(calls and calls.group(1) in with_dot)
            out[name] = (f"{kind} {shape.split('{')[0]} <- {operands[:80]}", dot)
    return out


def print_ops(name: str, compiled, args, top: int = 30) -> None:
    times = op_times(compiled, args)
    if not times:
        print(f"{name}: the profiler trace held no per-operation times")
        return
    ops = entry_ops(compiled.as_text())
    total = sum(times.values())
    print(f"{name}: {len(times)} operations, {1e3 * total:.1f} ms summed")
    for op, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {1e3 * t:7.2f} ms {100 * t / total:5.1f}%  {op:28s} {ops.get(op, ('',))[0]}")
    dots = sum(t for op, t in times.items() if ops.get(op, ("", False))[1])
    print(f"  in dots (and what XLA fused into them): {100 * dots / total:.0f}% of the summed "
          "time\n")


def programs(chunk: int):
    """{name: (jitted function, args)} for every timed piece."""
    rng = np.random.default_rng(0)
    shape = (B, T, D)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    out = {}

    for tag, layer in (("", L.multi_head_attention(HEADS, causal=True)),
                       (" (chunked)", L.multi_head_attention(HEADS, causal=True,
                                                             chunk_size=chunk))):
        p = _init(layer, shape, rng)
        fwd = jax.jit(lambda p, x, layer=layer: layer.fwd(p, x))
        res = fwd(p, x)[1]
        out[f"mha fwd{tag}"] = (fwd, (p, x))
        out[f"mha bwd{tag}"] = (jax.jit(layer.bwd), (p, res, g))
        out[f"mha fwd+bwd{tag}"] = (
            jax.jit(lambda p, x, g, layer=layer: layer.bwd(p, layer.fwd(p, x)[1], g)), (p, x, g))

    block = L.transformer_block(HEADS, MLP, causal=True)
    pb = _init(block, shape, rng)
    out["block fwd+bwd"] = (jax.jit(lambda p, x, g: block.bwd(p, block.fwd(p, x)[1], g)),
                            (pb, x, g))

    net = L.serial(L.transformer_block(HEADS, MLP, causal=True),
                   L.transformer_block(HEADS, MLP, causal=True))
    pn = _init(net, shape, rng)
    y = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    for name, grad_fn in (("step manual", fbp.value_and_grad(net, fbp.losses.mse)),
                          ("step jax.grad", fbp.autodiff_value_and_grad(net, fbp.losses.mse))):
        def step(p, x, y, grad_fn=grad_fn):
            value, grads = grad_fn(p, x, y)
            return jax.tree.map(lambda w, d: w - 0.01 * d, p, grads), value
        out[name] = (jax.jit(step), (pn, x, y))  # not donated: every call starts from pn

    a = jnp.asarray(rng.standard_normal((B * T, D)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((D, MLP * D)), jnp.float32)
    out["matmul"] = (jax.jit(jnp.matmul), (a, w))
    return out


def gemm_shapes() -> dict[str, tuple[tuple[int, ...], tuple[int, ...], str, int]]:
    """Every matrix product of the 2-block step (fbp manual, as its layers write them), per
    kind: {name: (a shape, b shape, form, how many in the step)}; form "nn" (a @ b), "tn"
    (aᵀ b: a weight gradient xᵀ g), "nt" (a bᵀ: ∂x = g Wᵀ) or "tt" (aᵀ bᵀ)."""
    n, d, f, bh, dh = B * T, D, MLP * D, B * HEADS, D // HEADS
    blocks = 2
    return {
        "x W_qkv": ((n, d), (d, 3 * d), "nn", blocks),
        "O W_o, LN(h) W_head": ((n, d), (d, d), "nn", blocks + 1),
        "x W_1 (MLP up)": ((n, d), (d, f), "nn", blocks),
        "a W_2 (MLP down)": ((n, f), (f, d), "nn", blocks),
        "∂W_qkv = xᵀ ∂[Q|K|V]": ((n, d), (n, 3 * d), "tn", blocks),
        "∂W_o, ∂W_head = xᵀ g": ((n, d), (n, d), "tn", blocks + 1),
        "∂W_1 = xᵀ ∂z": ((n, d), (n, f), "tn", blocks),
        "∂W_2 = aᵀ g": ((n, f), (n, d), "tn", blocks),
        "∂x = ∂[Q|K|V] W_qkvᵀ": ((n, 3 * d), (d, 3 * d), "nt", blocks),
        "∂O, ∂h = g Wᵀ (d × d)": ((n, d), (d, d), "nt", blocks + 1),
        "∂x = ∂z W_1ᵀ": ((n, f), (d, f), "nt", blocks),
        "∂a = g W_2ᵀ": ((n, d), (f, d), "nt", blocks),
        "S = Q Kᵀ, ∂P = ∂O Vᵀ (per head)": ((bh, dh, T), (bh, T, dh), "tt", 2 * blocks),
        "E V, ∂S K (per head)": ((bh, T, T), (bh, T, dh), "nn", 2 * blocks),
        "∂Oᵀ E, Qᵀ ∂S (per head)": ((bh, dh, T), (bh, T, T), "nn", 2 * blocks),
    }


def gemm_rates(repeats: int) -> None:
    """XLA's and PyTorch's times on `gemm_shapes`, in this process, and their sums over the
    step: how much of the step's gap to PyTorch is the matrix-product kernels (XLA:CPU's
    against PyTorch's MKL/oneDNN), which no layer of fbp can change."""
    try:
        import torch
    except ImportError:
        print("--gemms: PyTorch is not installed (pip install torch); nothing to compare")
        return
    rng = np.random.default_rng(0)
    forms = {"nn": lambda a, b: a @ b,
             "tn": lambda a, b: a.swapaxes(-1, -2) @ b,
             "nt": lambda a, b: a @ b.swapaxes(-1, -2),
             "tt": lambda a, b: a.swapaxes(-1, -2) @ b.swapaxes(-1, -2)}
    runners, flop, count = {}, {}, {}
    for name, (sa, sb, form, k) in gemm_shapes().items():
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        ja, jb, ta, tb = jnp.asarray(a), jnp.asarray(b), torch.from_numpy(a), torch.from_numpy(b)
        xla, ref = jax.jit(forms[form]), forms[form]
        out = np.asarray(xla(ja, jb))
        if not np.allclose(out, ref(ta, tb).numpy(), rtol=1e-4, atol=1e-3):
            raise AssertionError(f"--gemms: XLA and PyTorch disagree on {name}")
        flop[name], count[name] = 2 * out.size * (sa[-2] if form[0] == "t" else sa[-1]), k
        runners[f"xla {name}"] = lambda xla=xla, ja=ja, jb=jb: xla(ja, jb)
        runners[f"torch {name}"] = lambda ref=ref, ta=ta, tb=tb: ref(ta, tb)
    # Each library in its own run of calls (warm-up first), not A B A B: after each call
    # PyTorch's OpenMP threads spin for a while, and an XLA call started then loses its
    # cores to them (measured: XLA's GEMMs at ~170 GFLOP/s that way, ~270 alone).
    measured = {}
    for name in runners:
        measured.update(interleaved({name: runners[name]}, repeats=repeats))
    print(f"{'product':34s} {'n':>2s} {'XLA ms':>7s} {'GFLOP/s':>8s} {'torch ms':>8s} "
          f"{'GFLOP/s':>8s} {'XLA/torch':>9s}")
    total_x = total_t = 0.0
    for name, fl in flop.items():
        tx = statistics.median(measured[f"xla {name}"][0])
        tt = statistics.median(measured[f"torch {name}"][0])
        total_x, total_t = total_x + count[name] * tx, total_t + count[name] * tt
        print(f"{name:34s} {count[name]:2d} {1e3 * tx:7.2f} {fl / tx / 1e9:8.0f} "
              f"{1e3 * tt:8.2f} {fl / tt / 1e9:8.0f} {tx / tt:9.2f}")
    print(f"the step's {sum(count.values())} products, summed: XLA {1e3 * total_x:.1f} ms, "
          f"PyTorch {1e3 * total_t:.1f} ms (a gap of {1e3 * (total_x - total_t):.1f} ms)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"medians of {repeats}\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transformer_profile",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=64, help="chunk_size of the chunked MHA")
    parser.add_argument("--only", action="append", default=None,
                        help="time only the pieces whose name contains this; repeatable")
    parser.add_argument("--hlo", type=Path, default=None,
                        help="write each compiled program's HLO text here, print a census")
    parser.add_argument("--dots", action="store_true", help="with --hlo: list every dot")
    parser.add_argument("--ops", action="append", default=None,
                        help="profile this piece (e.g. 'step manual'): its operations by time")
    parser.add_argument("--gemms", action="store_true",
                        help="first, the step's matrix products in XLA and in PyTorch "
                             "(needs torch): GFLOP/s side by side")
    args = parser.parse_args(argv)

    if args.gemms:
        gemm_rates(args.repeats)
    progs = programs(args.chunk)
    if args.only:
        progs = {n: v for n, v in progs.items()
                 if n == "matmul" or any(s in n for s in args.only)}
    compiled = {n: f.lower(*a).compile() for n, (f, a) in progs.items()}
    flops = {n: _flops(c) for n, c in compiled.items()}
    if args.hlo:
        args.hlo.mkdir(parents=True, exist_ok=True)
        for n, c in compiled.items():
            text = c.as_text()
            (args.hlo / (n.replace(" ", "_").replace("(", "").replace(")", "")
                         .replace("+", "_") + ".hlo.txt")).write_text(text)
            print(f"{n:22s} {census(text)}")
            if args.dots:
                for s in dot_shapes(text):
                    print("    ", s)
        print()

    for n in args.ops or ():
        print_ops(n, compiled[n], progs[n][1])
    runners = {n: (lambda c=c, a=a: c(*a)) for n, c, a in
               ((n, compiled[n], progs[n][1]) for n in progs)}
    measured = interleaved(runners, repeats=args.repeats)
    times, cpu, faults = ({n: statistics.median(m[i]) for n, m in measured.items()}
                          for i in range(3))
    rate, cpu_rate = flops["matmul"] / times["matmul"], flops["matmul"] / cpu["matmul"]
    print(f"{jax.devices()[0].device_kind}, JAX {jax.__version__}; "
          f"batch {B}, T {T}, d {D}, {HEADS} heads, causal; medians of {args.repeats}")
    print(f"{'piece':22s} {'ms':>8s} {'cpu ms':>8s} {'faults':>7s} {'temp MiB':>8s} "
          f"{'GFLOP':>8s} {'GFLOP/s':>8s} {'floor ms':>9s} {'cpu floor':>9s}")
    for n, t in times.items():
        f = flops[n]
        temp = getattr(compiled[n].memory_analysis(), "temp_size_in_bytes", 0) / 2**20
        print(f"{n:22s} {1e3 * t:8.2f} {1e3 * cpu[n]:8.2f} {faults[n]:7.0f} {temp:8.1f} "
              + (f"{f / 1e9:8.3f} {f / t / 1e9:8.1f} {1e3 * f / rate:9.2f} "
                 f"{1e3 * f / cpu_rate:9.2f}" if f else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
