"""`python -m benchmarks.contract`: what two layer-contract features cost, measured.

- remat: value-and-grad of a deep MLP (blocks dense-gelu-dense-tanh) and of a stack of
  causal transformer blocks, each block plain or wrapped in `fbp.layers.remat`, against
  `jax.grad` of the same forward with and without `jax.checkpoint` per block: XLA's
  temporary memory (`compile().memory_analysis()`) and the step time;
- diagnostics: `fit(..., diagnostics_every=k)` epochs on the digits MLP, k = off, 10, 1.

Times are medians of interleaved repetitions in one process, after warm-up, each call
ending in `block_until_ready`. Writes results.json, results.md and results.png into
benchmarks/results/<device>-contract/ (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fbp
from benchmarks.measure import environment, interleaved
from benchmarks.report import write_atomic
from fbp import layers as L
from fbp import losses

MiB = 2**20


def _mlp_block(width):
    return L.serial(L.dense(width), L.gelu(), L.dense(width), L.tanh())


def _deep(block, depth, use_remat, head, first):
    blocks = [L.remat(block()) if use_remat else block() for _ in range(depth)]
    return L.serial(first, *blocks, head)


def _checkpointed(net, loss, use_checkpoint):
    """jax.grad of the same forward, each block under jax.checkpoint (or not)."""
    first, *blocks, head = net.children

    def objective(params, x, y):
        h = first.apply(params[0], x)
        for block, p in zip(blocks, params[1:-1]):
            h = (jax.checkpoint(block.apply) if use_checkpoint else block.apply)(p, h)
        return loss(head.apply(params[-1], h), y)

    return jax.value_and_grad(objective)


def remat_case(name, block, depth, in_shape, n_out, labels_shape, repeats):
    first = L.dense(in_shape[-1] if name == "mlp" else 128)
    head = L.dense(n_out)
    plain = _deep(block, depth, False, head, first)
    remat = _deep(block, depth, True, head, first)
    rng = np.random.default_rng(0)
    _, params = plain.init(jax.random.key(0), in_shape)
    x = jnp.asarray(rng.standard_normal(in_shape), jnp.float32)
    y = jnp.asarray(rng.integers(0, n_out, labels_shape), jnp.int32)
    loss = losses.softmax_cross_entropy
    fns = {"fbp": jax.jit(fbp.value_and_grad(plain, loss)),
           "fbp remat": jax.jit(fbp.value_and_grad(remat, loss)),
           "jax.grad": jax.jit(_checkpointed(plain, loss, False)),
           "jax.grad + jax.checkpoint": jax.jit(_checkpointed(plain, loss, True))}
    memory = {k: f.lower(params, x, y).compile().memory_analysis().temp_size_in_bytes
              for k, f in fns.items()}
    grads = {k: f(params, x, y)[1] for k, f in fns.items()}
    ref = jax.tree.leaves(grads["fbp"])
    diff = {k: max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                   for a, b in zip(jax.tree.leaves(g), ref)) for k, g in grads.items()}
    times = interleaved({k: (lambda f=f: f(params, x, y)) for k, f in fns.items()},
                        repeats=repeats)
    return [{"kind": "remat", "model": name, "depth": depth, "input": list(in_shape),
             "variant": k, "temp_bytes": memory[k], "step_time_s": statistics.median(times[k]),
             "grad_rel_diff_vs_fbp": diff[k]} for k in fns]


def diagnostics_case(rounds, epochs):
    from fbp import data
    from fbp.optim import gd
    from fbp.train import fit

    (x, y), _ = data.load("digits")
    # the MLP of `make run`
    net = L.serial(L.dense(256), L.relu(), L.dropout(0.2), L.dense(128), L.relu(),
                   L.dropout(0.2), L.dense(10))
    epoch_times = {k: [] for k in (None, 10, 1)}
    for _ in range(rounds):  # interleaved: off, 10, 1, off, 10, 1, ...
        for k in epoch_times:
            _, h = fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=epochs,
                       batch_size=32, progress=False, diagnostics_every=k)
            epoch_times[k] += h["time_s"][1:]  # the first epoch compiles
    base = statistics.median(epoch_times[None])
    return [{"kind": "diagnostics", "model": "digits MLP 64-256-128-10, dropout 0.2, batch 32",
             "diagnostics_every": k, "epoch_time_s": statistics.median(t),
             "cost_vs_off": statistics.median(t) / base - 1, "epochs_timed": len(t)}
            for k, t in epoch_times.items()]


def fused_head_case(repeats, tokens=4096, vocab=32768, width=64):
    """One make_step (SGD) of embedding → dense → gelu → linear_softmax_head(vocab) over
    `tokens` tokens: the plain softmax cross-entropy against the fused head's loss."""
    from fbp.optim import gd
    from fbp.train import init_state, make_step

    head = L.linear_softmax_head(vocab)
    net = L.serial(L.embedding(vocab, width), L.dense(width), L.gelu(), head)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, vocab, (tokens // 512, 512)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, vocab, (tokens // 512, 512)), jnp.int32)
    opt = gd(0.1)
    out, steps, states = [], {}, {}
    for name, loss in (("plain softmax_cross_entropy", losses.softmax_cross_entropy),
                       ("fused_softmax_cross_entropy", losses.fused_softmax_cross_entropy(head))):
        steps[name] = make_step(net, loss, opt)
        states[name] = init_state(net, opt, jax.random.key(0), ids.shape)
        memory = jax.jit(fbp.value_and_grad(net, loss)).lower(
            states[name].params, ids, labels).compile().memory_analysis().temp_size_in_bytes
        out.append({"kind": "fused_head", "variant": name, "tokens": tokens, "vocab": vocab,
                    "temp_bytes": memory})

    def runner(name):
        def run():
            states[name], m = steps[name](states[name], ids, labels)
            return m["loss"]
        return run

    times = interleaved({name: runner(name) for name in steps}, repeats=repeats)
    for r in out:
        r["step_time_s"] = statistics.median(times[r["variant"]])
    return out


def markdown(records, env) -> str:
    lines = ["# Layer contract: remat and diagnostics", "",
              f"Device: {env['device']} ({env['cpu_count']} cores); JAX {env['jax_version']}, "
             f"jaxlib {env['jaxlib_version']}; {env['timestamp']}", "",
             "## remat: temporary memory and time of one value-and-grad", "",
             "| model | depth | variant | temp MiB | step ms | grad rel diff vs fbp |",
             "|---|---|---|---:|---:|---:|"]
    for r in records:
        if r["kind"] == "remat":
            lines.append(f"| {r['model']} {tuple(r['input'])} | {r['depth']} | {r['variant']} | "
                         f"{r['temp_bytes'] / MiB:.1f} | {1e3 * r['step_time_s']:.1f} | "
                         f"{r['grad_rel_diff_vs_fbp']:.1e} |")
    lines += ["", "## Diagnostics inside fit: epoch time", "",
              "| diagnostics_every | epoch ms (median) | cost vs off | epochs timed |",
              "|---|---:|---:|---:|"]
    for r in records:
        if r["kind"] == "diagnostics":
            k = r["diagnostics_every"]
            lines.append(f"| {'off' if k is None else k} | {1e3 * r['epoch_time_s']:.2f} | "
                         f"{100 * r['cost_vs_off']:+.1f}% | {r['epochs_timed']} |")
    fused = [r for r in records if r["kind"] == "fused_head"]
    if fused:
        lines += ["", f"## Fused head: one train step, {fused[0]['tokens']} tokens × "
                  f"{fused[0]['vocab']} vocabulary", "",
                  "| loss | temp MiB (value-and-grad) | step ms |", "|---|---:|---:|"]
        for r in fused:
            lines.append(f"| {r['variant']} | {r['temp_bytes'] / MiB:.1f} | "
                         f"{1e3 * r['step_time_s']:.1f} |")
    return "\n".join(lines) + "\n"


def png(records) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    remat = [r for r in records if r["kind"] == "remat"]
    models = sorted({r["model"] for r in remat})
    fig = Figure(figsize=(5.5 * len(models), 4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        rows = [r for r in remat if r["model"] == model]
        ax.bar([r["variant"] for r in rows], [r["temp_bytes"] / MiB for r in rows],
               color=["C0", "C1", "C2", "C3"][:len(rows)])
        ax.set_ylabel("XLA temporary memory (MiB)")
        ax.set_title(f"{model}, {rows[0]['depth']} blocks: value-and-grad", fontsize=10)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contract", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    env = environment(jax.devices()[0])
    out = args.out or Path(__file__).resolve().parent / "results" / (
        f"{jax.devices()[0].platform}-contract")
    repeats, rounds, epochs = (5, 1, 3) if args.quick else (20, 4, 8)
    depth, batch = (4, 64) if args.quick else (16, 512)
    records = remat_case("mlp", lambda: _mlp_block(256), depth, (batch, 256), 10, (batch,),
                         repeats)
    seq = (2, 64, 16) if args.quick else (8, 256, 16)
    records += remat_case("transformer", lambda: L.transformer_block(4, causal=True),
                          2 if args.quick else 4, seq, 32, seq[:2], repeats)
    records += diagnostics_case(rounds, epochs)
    records += (fused_head_case(repeats, tokens=512, vocab=2048) if args.quick
                else fused_head_case(repeats))
    for r in records:
        r["environment"] = env
    write_atomic(out / "results.json", (json.dumps(records, indent=2) + "\n").encode())
    write_atomic(out / "results.md", markdown(records, env).encode())
    write_atomic(out / "results.png", png(records))
    print(markdown(records, env))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
