"""The layer-contract suites: what remat, the fused head and diagnostics cost, measured.

    python -m benchmarks --suite remat --suite fused-head --suite diagnostics
    python -m benchmarks --suite contract        # the same three
    python -m benchmarks.contract                # the same

- "remat": value-and-grad of a deep MLP (blocks dense-gelu-dense-tanh) and of a stack of
  causal transformer blocks, each block plain or wrapped in `fbp.layers.remat`, against
  `jax.grad` of the same forward with and without `jax.checkpoint` per block: XLA's
  temporary memory and the time;
- "fused-head": one `fbp.train.make_step` at `tokens` tokens × `vocab` vocabulary,
  `linear_softmax_head` + `fused_softmax_cross_entropy` against `dense(vocab)` +
  `softmax_cross_entropy`: the step's temporary memory and time;
- "diagnostics": `fit(..., diagnostics_every=k)` epochs on the digits MLP, k = off, 10, 1.

Memory and time as everywhere in `benchmarks` (`benchmarks.measure`).
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import measure


def _float32(tree, device):
    """Every floating leaf as float32 on `device` (the suites run in float32 even where JAX's
    default float is float64); other leaves (PRNG keys, counters) as they are."""
    def cast(a):
        if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating):
            a = a.astype(np.float32)
        return jax.device_put(a, device)

    return jax.tree_util.tree_map(cast, tree)


def _mlp_block(width):
    from fbp import layers as L

    return L.serial(L.dense(width), L.gelu(), L.dense(width), L.tanh())


def _stack(first, block, depth, head, use_remat):
    from fbp import layers as L

    blocks = [L.remat(block()) if use_remat else block() for _ in range(depth)]
    return L.serial(first, *blocks, head)


def _checkpointed(first, blocks, head, loss, use_checkpoint):
    """jax.grad of the same forward, each block under jax.checkpoint (or not)."""

    def objective(params, x, y):
        h = first.apply(params[0], x)
        for block, p in zip(blocks, params[1:-1]):
            h = (jax.checkpoint(block.apply) if use_checkpoint else block.apply)(p, h)
        return loss(head.apply(params[-1], h), y)

    return jax.value_and_grad(objective)


def _remat_case(model, block, depth, first_width, in_shape, n_out, label_shape, settings,
                device):
    import fbp
    from fbp import layers as L
    from fbp import losses

    first, head = L.dense(first_width), L.dense(n_out)
    plain = _stack(first, block, depth, head, False)
    remat = _stack(first, block, depth, head, True)
    rng = np.random.default_rng(0)
    with jax.default_device(device):
        _, params = jax.jit(plain.init, static_argnums=1)(jax.random.key(0), in_shape)
    params = _float32(params, device)
    x = jax.device_put(rng.standard_normal(in_shape).astype(np.float32), device)
    y = jax.device_put(rng.integers(0, n_out, label_shape).astype(np.int32), device)
    loss = losses.softmax_cross_entropy
    blocks = plain.children[1:-1]
    fns = {"fbp": fbp.value_and_grad(plain, loss),
           "fbp remat": fbp.value_and_grad(remat, loss),
           "jax.grad": _checkpointed(first, blocks, head, loss, False),
           "jax.grad + jax.checkpoint": _checkpointed(first, blocks, head, loss, True)}
    meta = {"fbp": ("manual", False), "fbp remat": ("manual", True),
            "jax.grad": ("auto", False), "jax.grad + jax.checkpoint": ("auto", True)}
    stats, runners, grads = {}, {}, {}
    for name, f in fns.items():
        stats[name], compiled = measure.compile_stats(jax.jit(f), params, x, y)
        runners[name] = lambda c=compiled: c(params, x, y)
        grads[name] = runners[name]()[1]
    times = measure.interleaved(runners, repeats=settings.repeats, warmup=settings.warmup)
    records = []
    for name in fns:
        grad, per_block = meta[name]
        records.append({
            "kind": "remat", "model": model, "depth": depth, "input": list(in_shape),
            "variant": name, "grad": grad, "per_block": per_block, "dtype": "float32",
            "repeats": settings.repeats, **stats[name], **measure.summary(times[name]),
            "grad_rel_diff_vs_fbp": measure.max_rel_diff(grads[name], grads["fbp"])})
    return records


def bench_remat(settings, device) -> tuple[list[dict[str, Any]], list[str]]:
    from fbp import layers as L

    s = settings
    records = _remat_case("mlp", lambda: _mlp_block(s.mlp_width), s.mlp_depth, s.mlp_width,
                          (s.mlp_batch, s.mlp_width), 10, (s.mlp_batch,), s, device)
    records += _remat_case("transformer", lambda: L.transformer_block(s.heads, causal=True),
                           s.blocks, s.width, (s.batch, s.seq, s.features), s.vocab,
                           (s.batch, s.seq), s, device)
    return records, []


def bench_fused_head(settings, device) -> tuple[list[dict[str, Any]], list[str]]:
    """One make_step (gd) of embedding → dense → gelu → head over `tokens` tokens: dense +
    softmax cross-entropy against the fused head and loss. Both start from the same
    parameters (the same init and key), so they take the same steps."""
    from fbp import layers as L
    from fbp import losses
    from fbp.optim import gd
    from fbp.train import init_state, make_step

    s = settings
    if s.tokens % s.seq:
        raise ValueError(f"fused-head: tokens = {s.tokens} must be a multiple of seq = {s.seq}")
    fused_head = L.linear_softmax_head(s.vocab)
    nets = {
        "dense + softmax_cross_entropy": (L.dense(s.vocab, use_bias=False),
                                          losses.softmax_cross_entropy),
        "linear_softmax_head + fused_softmax_cross_entropy": (
            fused_head, losses.fused_softmax_cross_entropy(fused_head, chunk_size=s.chunk)),
    }
    rng = np.random.default_rng(0)
    shape = (s.tokens // s.seq, s.seq)
    ids = jax.device_put(rng.integers(0, s.vocab, shape).astype(np.int32), device)
    labels = jax.device_put(rng.integers(0, s.vocab, shape).astype(np.int32), device)
    optimizer = gd(s.lr)
    stats, runners, boxes, first = {}, {}, {}, {}
    for name, (head, loss) in nets.items():
        net = L.serial(L.embedding(s.vocab, s.width), L.dense(s.width), L.gelu(), head)
        step = make_step(net, loss, optimizer)
        with jax.default_device(device):
            state = _float32(init_state(net, optimizer, jax.random.key(0), shape), device)
        stats[name], _ = measure.compile_stats(step, state, ids, labels)
        box = {"state": state}

        def run(step=step, box=box):
            box["state"], box["metrics"] = step(box["state"], ids, labels)
            return box["state"], box["metrics"]

        runners[name], boxes[name] = run, box
        first[name] = float(jax.block_until_ready(run())[1]["loss"])
    times = measure.interleaved(runners, repeats=s.repeats, warmup=s.warmup)
    records = [{"kind": "fused_head", "variant": name, "tokens": s.tokens, "seq": s.seq,
                "vocab": s.vocab, "width": s.width,
                "chunk_size": s.chunk if "fused" in name else None, "optimizer": f"gd({s.lr})",
                "dtype": "float32", "repeats": s.repeats, **stats[name],
                **measure.summary(times[name]), "first_loss": first[name],
                "final_loss": float(boxes[name]["metrics"]["loss"])}
               for name in nets]
    dense, fused = records
    for r in records:
        r["dense_over_fused_temp"] = (dense["temp_bytes"] / fused["temp_bytes"]
                                      if dense["temp_bytes"] and fused["temp_bytes"] else None)
        r["fused_over_dense_time"] = fused["step_time_s"] / dense["step_time_s"]
    return records, []


def bench_diagnostics(settings, device) -> tuple[list[dict[str, Any]], list[str]]:
    """Epoch time of `fit` with diagnostics every k steps; rounds interleave the k's."""
    from fbp import data, losses
    from fbp import layers as L
    from fbp.optim import gd
    from fbp.train import fit

    (x, y), _ = data.load("digits")
    # the MLP of `make run`
    net = L.serial(L.dense(256), L.relu(), L.dropout(0.2), L.dense(128), L.relu(),
                   L.dropout(0.2), L.dense(10))
    epoch_times = {k: [] for k in settings.every}
    first = {k: [] for k in settings.every}
    with jax.default_device(device):
        for _ in range(settings.rounds):  # interleaved: off, 10, 1, off, 10, 1, ...
            for k in epoch_times:
                _, h = fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y),
                           epochs=1 + settings.epochs, batch_size=32, progress=False,
                           diagnostics_every=k)
                first[k].append(h["time_s"][0])
                epoch_times[k] += h["time_s"][1:]  # the first epoch compiles
    base = statistics.median(epoch_times[settings.every[0]])
    dtype = str(np.dtype(jax.dtypes.canonicalize_dtype(np.float64)))  # fit's default float
    return [{"kind": "diagnostics", "model": "digits MLP 64-256-128-10, dropout 0.2, batch 32",
             "dtype": dtype,
             "diagnostics_every": k, "epoch_time_s": statistics.median(t),
             "epoch_time_min_s": min(t), "epoch_time_max_s": max(t),
             "first_epoch_s": statistics.median(first[k]),
             "cost_vs_off": statistics.median(t) / base - 1, "epochs_timed": len(t)}
            for k, t in epoch_times.items()], []


def main(argv=None) -> int:
    """`python -m benchmarks.contract [options]` = `python -m benchmarks --suite contract`."""
    from benchmarks.cli import main as cli_main

    args = sys.argv[1:] if argv is None else list(argv)
    return cli_main(["--suite", "contract", *args], prog="python -m benchmarks.contract")


if __name__ == "__main__":
    raise SystemExit(main())
