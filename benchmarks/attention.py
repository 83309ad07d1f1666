"""The "attention" suite: memory and time of attention's forward + backward against the
sequence length T (`python -m benchmarks --suite attention`; `python -m benchmarks.attention`
is the same).

One causal `multi_head_attention(heads)` on (batch, T, heads · head_dim), forward then
backward for a given cotangent (so no loss is in the program), five ways:

- fbp dense:    `layer.bwd(params, layer.fwd(params, x)[1], g)` — keeps P (T × T per head);
- fbp chunked:  the same with `chunk_size=c` — keeps O and the per-row log-sum-exp;
- jax.grad dense:  `jax.vjp` of the dense forward;
- jax.grad dot_product_attention:  `jax.vjp` of the projections + `jax.nn.dot_product_attention`;
- jax.checkpoint dense:  `jax.vjp` of `jax.checkpoint` of the dense forward.

Memory: XLA's temporary bytes of the compiled program (`memory_analysis()`, nothing run).
Time: median of interleaved repetitions after warm-up, each ending in block_until_ready,
only where the program's temporaries fit in `max_run_gib`. Each variant's result is
compared with fbp dense's where both ran. The goals (`GOALS`) are checked against the
figures and reported met / not met.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from benchmarks import measure

MiB, GiB = 2**20, 2**30
DENSE, CHECKPOINT = "fbp dense", "jax.checkpoint dense"
AUTODIFF = ("jax.grad dense", "jax.grad dot_product_attention", CHECKPOINT)

# what chunked attention is for; `goals` says whether a run meets them
GOAL_T = 4096  # memory goals at this length
GOAL_MEMORY_RATIO = 20.0  # fbp dense / chunked temporary memory, at least
GOAL_TIME_RATIO = 1.5  # chunked / fbp dense time, at most, wherever dense was timed
GOAL_LONG_T = 16384
GOAL_LONG_BYTES = GiB  # chunked temporary memory at GOAL_LONG_T, under


def chunked_name(chunk: int) -> str:
    return f"fbp chunked (c={chunk})"


def _dpa_forward(layer_params, x, heads: int, causal: bool):
    """The same attention through jax.nn.dot_product_attention (projections by hand)."""
    b, t, d = x.shape

    def split(a):
        return a.reshape(b, t, heads, d // heads)

    q = split(x @ layer_params["w_q"] + layer_params["b_q"][None, None, :])
    k = split(x @ layer_params["w_k"])
    v = split(x @ layer_params["w_v"] + layer_params["b_v"][None, None, :])
    o = jax.nn.dot_product_attention(q, k, v, is_causal=causal).reshape(b, t, d)
    return o @ layer_params["w_o"] + layer_params["b_o"][None, None, :]


def variants(heads: int, chunk: int):
    """(the dense layer, {variant name: f(params, x, g) -> (∂params, ∂x)})."""
    from fbp import layers as L

    dense = L.multi_head_attention(heads, causal=True)
    chunked = L.multi_head_attention(heads, causal=True, chunk_size=chunk)

    def manual(layer):
        return lambda p, x, g: layer.bwd(p, layer.fwd(p, x)[1], g)

    def auto(forward):
        return lambda p, x, g: jax.vjp(forward, p, x)[1](g)

    return dense, {
        DENSE: manual(dense),
        chunked_name(chunk): manual(chunked),
        "jax.grad dense": auto(dense.apply),
        "jax.grad dot_product_attention": auto(lambda p, x: _dpa_forward(p, x, heads, True)),
        CHECKPOINT: auto(jax.checkpoint(dense.apply)),
    }


def _inputs(dense, shape, device):
    """Params (init plus small noise: no zero biases), x and the cotangent g, float32."""
    rng = np.random.default_rng(shape[1])
    with jax.default_device(device):
        _, params = jax.jit(dense.init, static_argnums=1)(jax.random.key(0), shape)
    leaves, tree = jax.tree_util.tree_flatten(params)
    params = jax.tree_util.tree_unflatten(tree, [
        jax.device_put((np.asarray(a) + 0.02 * rng.standard_normal(a.shape)).astype(np.float32),
                       device) for a in leaves])
    x, g = (jax.device_put(rng.standard_normal(shape).astype(np.float32), device)
            for _ in range(2))
    return params, x, g


def bench(settings, device, progress: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of every (T, variant), then the goal records; notes."""
    records, notes = [], []
    width = settings.heads * settings.head_dim
    for t in tqdm(settings.lengths, desc="attention", unit="T", disable=not progress):
        dense, fns = variants(settings.heads, settings.chunk)
        params, x, g = _inputs(dense, (settings.batch, t, width), device)
        stats, compiled = {}, {}
        for name, f in fns.items():
            stats[name], compiled[name] = measure.compile_stats(jax.jit(f), params, x, g)
        limit = settings.max_run_gib * GiB
        runnable = {n: c for n, c in compiled.items()
                    if stats[n]["temp_bytes"] is not None and stats[n]["temp_bytes"] <= limit}
        unknown = [n for n in compiled if stats[n]["temp_bytes"] is None]
        if unknown:
            notes.append(f"attention T={t}: no memory analysis for {', '.join(unknown)}; "
                         "not timed")
        repeats = settings.repeats if t < settings.long_from else settings.long_repeats
        outputs = {n: c(params, x, g) for n, c in runnable.items()}  # also a first warm-up
        args = (params, x, g)
        times = measure.interleaved({n: (lambda c=c, args=args: c(*args))
                                     for n, c in runnable.items()},
                                    repeats=repeats, warmup=max(0, settings.warmup - 1))
        for name in fns:
            timed = name in times
            diff = (measure.max_rel_diff(outputs[name], outputs[DENSE])
                    if timed and DENSE in outputs else None)
            summary = measure.summary(times[name]) if timed else dict.fromkeys(
                ("step_time_s", "step_time_min_s", "step_time_max_s"))
            records.append({
                "kind": "attention", "T": t, "variant": name, "chunk": settings.chunk,
                "heads": settings.heads, "head_dim": settings.head_dim,
                "batch": settings.batch, "causal": True, "dtype": "float32",
                **stats[name], **summary, "repeats": len(times.get(name, ())),
                "timed": timed, "max_run_gib": settings.max_run_gib,
                "rel_diff_vs_fbp_dense": diff})
        del outputs, compiled
        mib = {n: _mib(stats[n]["temp_bytes"]) for n in fns}
        print(f"attention T={t}: " + ", ".join(f"{n} {m}" for n, m in mib.items()),
              file=sys.stderr, flush=True)
    records += goals(records, settings.chunk)
    return records, notes


def _mib(n) -> str:
    return "n/a" if n is None else f"{n / MiB:.1f} MiB"


def goals(records, chunk: int) -> list[dict[str, Any]]:
    """One "goal" record per goal: its statement, the figures, met (True / False / None
    where this run does not have the lengths it needs)."""
    by = {(r["T"], r["variant"]): r for r in records if r["kind"] == "attention"}
    chunked = chunked_name(chunk)
    lengths = sorted({t for t, _ in by})
    out = []

    def goal(text, met, figures):
        out.append({"kind": "goal", "suite": "attention", "goal": text, "met": met,
                    "figures": figures})

    c, d = by.get((GOAL_T, chunked)), by.get((GOAL_T, DENSE))
    text = f"T={GOAL_T}: chunked temporary memory ≥ {GOAL_MEMORY_RATIO:g}× less than fbp dense"
    if c and d and c["temp_bytes"] and d["temp_bytes"] is not None:
        ratio = d["temp_bytes"] / c["temp_bytes"]
        goal(text, ratio >= GOAL_MEMORY_RATIO,
             f"{_mib(d['temp_bytes'])} / {_mib(c['temp_bytes'])} = {ratio:.1f}×")
    else:
        goal(text, None, f"T={GOAL_T} not in this run")

    text = f"T={GOAL_T}: chunked temporary memory below every autodiff variant"
    autos = [by.get((GOAL_T, n)) for n in AUTODIFF]
    if c and all(autos) and c["temp_bytes"] is not None:
        least = min(autos, key=lambda r: r["temp_bytes"])
        goal(text, all(c["temp_bytes"] < r["temp_bytes"] for r in autos),
             f"chunked {_mib(c['temp_bytes'])}; least autodiff: {least['variant']} "
             f"{_mib(least['temp_bytes'])}")
    else:
        goal(text, None, f"T={GOAL_T} not in this run")

    text = f"chunked time ≤ {GOAL_TIME_RATIO:g}× fbp dense wherever dense was timed"
    pairs = [(t, by[t, chunked], by[t, DENSE]) for t in lengths
             if by[t, DENSE]["timed"] and by[t, chunked]["timed"]]
    if pairs:
        ratios = [(cr["step_time_s"] / dr["step_time_s"], t) for t, cr, dr in pairs]
        worst, at = max(ratios)
        goal(text, worst <= GOAL_TIME_RATIO,
             f"worst {worst:.2f}× at T={at} (" + ", ".join(
                 f"T={t}: {r:.2f}" for r, t in ratios) + ")")
    else:
        goal(text, None, "fbp dense not timed at any T")

    c = by.get((GOAL_LONG_T, chunked))
    text = f"T={GOAL_LONG_T}: chunked temporary memory under {GOAL_LONG_BYTES / GiB:g} GiB"
    if c and c["temp_bytes"] is not None:
        goal(text, c["temp_bytes"] < GOAL_LONG_BYTES, _mib(c["temp_bytes"]))
    else:
        goal(text, None, f"T={GOAL_LONG_T} not in this run")
    return out


def main(argv=None) -> int:
    """`python -m benchmarks.attention [options]` = `python -m benchmarks --suite attention`."""
    from benchmarks.cli import main as cli_main

    args = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["--suite", "attention", *args], prog="python -m benchmarks.attention")


if __name__ == "__main__":
    raise SystemExit(main())
