"""`python -m benchmarks.attention`: memory and time of attention's forward + backward
against the sequence length T.

One causal `multi_head_attention(4)` on (1, T, 256) (4 heads of 64), forward then backward
for a given cotangent (so no loss is in the program), five ways:

- fbp dense:    `layer.bwd(params, layer.fwd(params, x)[1], g)` — keeps P (T × T per head);
- fbp chunked:  the same with `chunk_size=c` — keeps O and the per-row log-sum-exp;
- jax.grad dense:  `jax.vjp` of the dense forward;
- jax.grad dot_product_attention:  `jax.vjp` of the projections + `jax.nn.dot_product_attention`;
- jax.checkpoint dense:  `jax.vjp` of `jax.checkpoint` of the dense forward.

Memory: XLA's temporary bytes of the compiled program (`memory_analysis()`, nothing run).
Time: median of interleaved repetitions after warm-up, each ending in block_until_ready,
only where the program's temporaries fit in `--max-run-gib`. Writes results.json,
results.md and results.png (log-log memory against T) to benchmarks/results/<device>-attention.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.measure import environment, interleaved
from benchmarks.report import write_atomic
from fbp import layers as L

MiB = 2**20
HEADS, WIDTH = 4, 256


def _dpa_forward(layer_params, x, causal: bool):
    """The same attention through jax.nn.dot_product_attention (projections by hand)."""
    b, t, d = x.shape

    def heads(a):
        return a.reshape(b, t, HEADS, d // HEADS)

    q = heads(x @ layer_params["w_q"] + layer_params["b_q"][None, None, :])
    k = heads(x @ layer_params["w_k"])
    v = heads(x @ layer_params["w_v"] + layer_params["b_v"][None, None, :])
    o = jax.nn.dot_product_attention(q, k, v, is_causal=causal).reshape(b, t, d)
    return o @ layer_params["w_o"] + layer_params["b_o"][None, None, :]


def variants(chunk: int):
    dense = L.multi_head_attention(HEADS, causal=True)
    chunked = L.multi_head_attention(HEADS, causal=True, chunk_size=chunk)

    def manual(layer):
        return lambda p, x, g: layer.bwd(p, layer.fwd(p, x)[1], g)

    def auto(forward):
        return lambda p, x, g: jax.vjp(forward, p, x)[1](g)

    return dense, {
        "fbp dense": manual(dense),
        f"fbp chunked (c={chunk})": manual(chunked),
        "jax.grad dense": auto(dense.apply),
        "jax.grad dot_product_attention": auto(lambda p, x: _dpa_forward(p, x, True)),
        "jax.checkpoint dense": auto(jax.checkpoint(dense.apply)),
    }


def _inputs(dense, t: int):
    """Params (init plus small noise: no zero biases), x and the cotangent g, float32."""
    rng = np.random.default_rng(t)
    _, params = dense.init(jax.random.key(0), (1, t, WIDTH))
    noise = [0.02 * rng.standard_normal(a.shape) for a in jax.tree.leaves(params)]
    params = jax.tree.unflatten(jax.tree.structure(params), [
        jnp.asarray(a + n, jnp.float32) for a, n in zip(jax.tree.leaves(params), noise)])
    x = jnp.asarray(rng.standard_normal((1, t, WIDTH)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((1, t, WIDTH)), jnp.float32)
    return params, x, g


def _caller(compiled, args):
    return lambda: compiled(*args)


def run(lengths, chunk: int, repeats: int, max_run_gib: float):
    records = []
    env = environment(jax.devices()[0])
    for t in lengths:
        dense, fns = variants(chunk)
        params, x, g = _inputs(dense, t)
        compiled, memory = {}, {}
        for name, f in fns.items():
            compiled[name] = jax.jit(f).lower(params, x, g).compile()
            memory[name] = compiled[name].memory_analysis().temp_size_in_bytes
        runnable = {n: c for n, c in compiled.items() if memory[n] <= max_run_gib * 2**30}
        times = (interleaved({n: _caller(c, (params, x, g)) for n, c in runnable.items()},
                             repeats=repeats if t <= 4096 else max(3, repeats // 3), warmup=1)
                 if runnable else {})
        ref = compiled["fbp dense"](params, x, g) if "fbp dense" in runnable else None
        for name in fns:
            diff = None
            if ref is not None and name in runnable:
                out = runnable[name](params, x, g)
                diff = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                           for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))
            records.append({"kind": "attention", "T": t, "variant": name, "chunk": chunk,
                            "temp_bytes": memory[name],
                            "time_s": statistics.median(times[name]) if name in times else None,
                            "rel_diff_vs_fbp_dense": diff, "environment": env})
        print(t, {n: f"{memory[n] / MiB:.0f} MiB" for n in fns}, flush=True)
    return records


def markdown(records) -> str:
    env = records[0]["environment"]
    lengths = sorted({r["T"] for r in records})
    names = list(dict.fromkeys(r["variant"] for r in records))
    by = {(r["T"], r["variant"]): r for r in records}
    lines = ["# Attention forward + backward against T", "",
             f"Causal multi_head_attention({HEADS}) on (1, T, {WIDTH}), float32. Device: "
             f"{env['device']} ({env['cpu_count']} cores); JAX {env['jax_version']}; "
             f"{env['timestamp']}. Memory: XLA temporary bytes of the compiled fwd+bwd "
             "(no loss in the program). Time: median of interleaved runs (— : not run, its "
             "temporaries exceed the run limit).", "",
             "## Temporary memory (MiB)", "", "| T | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for t in lengths:
        lines.append(f"| {t} | " + " | ".join(f"{by[t, n]['temp_bytes'] / MiB:.1f}"
                                             for n in names) + " |")
    lines += ["", "## Time (ms)", "", "| T | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for t in lengths:
        lines.append(f"| {t} | " + " | ".join(
            "—" if by[t, n]["time_s"] is None else f"{1e3 * by[t, n]['time_s']:.1f}"
            for n in names) + " |")
    chunked = next(n for n in names if n.startswith("fbp chunked"))
    lines += ["", "## Ratios", "", "| T | dense / chunked memory | chunked / dense time | "
              "chunked vs fbp dense, max rel diff |", "|---|---:|---:|---:|"]
    for t in lengths:
        d, c = by[t, "fbp dense"], by[t, chunked]
        time_ratio = (f"{c['time_s'] / d['time_s']:.2f}" if c["time_s"] and d["time_s"]
                      else "—")
        diff = c["rel_diff_vs_fbp_dense"]
        lines.append(f"| {t} | {d['temp_bytes'] / c['temp_bytes']:.1f}× | {time_ratio} | "
                     f"{'—' if diff is None else f'{diff:.1e}'} |")
    return "\n".join(lines) + "\n"


def png(records) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(r["variant"] for r in records))
    fig = Figure(figsize=(9, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax_m, ax_t = fig.subplots(1, 2)
    for name in names:
        rows = sorted((r for r in records if r["variant"] == name), key=lambda r: r["T"])
        ax_m.plot([r["T"] for r in rows], [r["temp_bytes"] / MiB for r in rows], "o-",
                  label=name)
        timed = [r for r in rows if r["time_s"]]
        ax_t.plot([r["T"] for r in timed], [1e3 * r["time_s"] for r in timed], "o-", label=name)
    for ax, what in ((ax_m, "temporary memory (MiB)"), (ax_t, "fwd + bwd time (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.set_title("memory: O(T²) dense, O(T) chunked", fontsize=10)
    ax_t.set_title("time", fontsize=10)
    ax_m.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attention", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="T = 128, 256; few repetitions")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--max-run-gib", type=float, default=4.0,
                        help="time only programs whose temporaries fit in this many GiB")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    lengths = (128, 256) if args.quick else tuple(2**k for k in range(9, 15))  # 512 … 16384
    chunk = min(args.chunk, 64) if args.quick else args.chunk
    records = run(lengths, chunk, 3 if args.quick else 7, args.max_run_gib)
    out = args.out or Path(__file__).resolve().parent / "results" / (
        f"{jax.devices()[0].platform}-attention")
    write_atomic(out / "results.json", (json.dumps(records, indent=2) + "\n").encode())
    write_atomic(out / "results.md", markdown(records).encode())
    write_atomic(out / "results.png", png(records))
    print(markdown(records))
    return 0 if all(math.isfinite(r["temp_bytes"]) for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
