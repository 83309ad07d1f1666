"""Where a CNN train step spends its time: each layer's forward and backward, fbp's
hand-written `bwd` against `jax.vjp` of the same forward, then the whole step.

    python -m benchmarks.cnn_profile                 # batch 128, 30 interleaved repeats
    python -m benchmarks.cnn_profile --repeats 60 --only conv
    taskset -c 0 python -m benchmarks.cnn_profile --clock cpu   # one core's work, on a busy machine

The net is the suite's "cnn" config:

    conv2d(32, 3) → relu → max_pool(2) → conv2d(64, 3) → relu → max_pool(2) → flatten
        → dense(128) → relu → dense(10)

on (batch, 28, 28, 1) images, float32. Pieces, per layer, each one jitted function timed
on inputs from the real forward pass (random normal images, normal cotangents):

    fwd       y = f(θ, x)                          (manual: layer.fwd; jax: the same)
    bwd       (∂θ, ∂x) from the residuals          (manual: layer.bwd; jax: the vjp closure)
    ∂W, ∂x    the bwd with only that output kept   (XLA drops the other half)
    fwd+bwd   one function: the forward, then its backward

and the whole SGD step (`fbp.train.make_step`, state donated) with grad="manual" and
grad="auto". Contenders are interleaved in one process (A B, B A, …) after warm-up, and
the median is reported; GFLOP/s counts the multiply-adds of convolutions and dense layers
(2 flops each), not the elementwise work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import measure
from fbp import layers as L
from fbp import losses
from fbp.train import init_state, make_step

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def interleaved(runners: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each runner (`benchmarks.measure.interleaved`), by `clock`:
    wall-clock, or this process's CPU time over all its threads (the work done, which
    other processes on a shared machine disturb less; run under `taskset -c 0` to count
    one core's work without threads spinning for each other)."""
    times = measure.interleaved(runners, repeats=repeats, clock=clock)
    return {name: statistics.median(t) for name, t in times.items()}


def cnn_layers(classes: int = 10) -> list:
    return [L.conv2d(32, 3), L.relu(), L.max_pool(2), L.conv2d(64, 3), L.relu(),
            L.max_pool(2), L.flatten(), L.dense(128), L.relu(), L.dense(classes)]


def matmul_flops(params, y) -> int:
    """2 × the multiply-adds of y = x ⋆ W (dense or convolution): 2 · |y| · |W| / out."""
    if not isinstance(params, dict) or "w" not in params:
        return 0
    w = params["w"]
    return 2 * int(np.prod(y.shape)) * int(np.prod(w.shape[:-1]))


def _rate(flops: int, seconds: float) -> str:
    return f"{flops / seconds / 1e9:7.1f}" if flops else " " * 7


def profile_layers(layers, input_shape, repeats: int, only: str | None, dtype) -> float:
    """Prints one block per layer; returns the step's flops (forward, ∂W, and ∂x but the
    first layer's)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(input_shape), dtype)
    keys = jax.random.split(jax.random.key(0), len(layers))
    shape, step_flops = input_shape, 0
    print(f"{'layer':<22}{'piece':<9}{'manual ms':>10}{'GF/s':>8}{'jax ms':>9}{'GF/s':>8}"
          f"{'manual/jax':>11}")
    for i, (layer, key) in enumerate(zip(layers, keys)):
        shape, params = layer.init(key, shape)
        params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)

        def forward(p, x, layer=layer):
            return layer.fwd(p, x, train=True)[0]

        y, res = jax.jit(lambda p, x, layer=layer: layer.fwd(p, x, train=True))(params, x)
        g = jnp.asarray(rng.standard_normal(y.shape), dtype)
        flops = matmul_flops(params, y)
        step_flops += flops * (2 if i == 0 else 3)
        if only is None or only in layer.name:
            _profile_layer(layer, forward, params, x, res, g, flops, repeats)
        x = y
    return step_flops


def _profile_layer(layer, forward, params, x, res, g, flops, repeats):
    m_fwd = jax.jit(forward)
    m_bwd = jax.jit(layer.bwd)
    m_dw = jax.jit(lambda p, r, g: layer.bwd(p, r, g)[0])
    m_dx = jax.jit(lambda p, r, g: layer.bwd(p, r, g)[1])
    m_both = jax.jit(lambda p, x, g: layer.bwd(p, layer.fwd(p, x, train=True)[1], g))
    vjp_fn = jax.jit(lambda p, x: jax.vjp(forward, p, x)[1])(params, x)  # jax's residuals
    a_bwd = jax.jit(lambda f, g: f(g))
    a_dw = jax.jit(lambda f, g: f(g)[0])
    a_dx = jax.jit(lambda f, g: f(g)[1])
    a_both = jax.jit(lambda p, x, g: jax.vjp(forward, p, x)[1](g))
    pieces = [("fwd", flops, lambda: m_fwd(params, x), lambda: m_fwd(params, x)),
              ("bwd", 2 * flops, lambda: m_bwd(params, res, g), lambda: a_bwd(vjp_fn, g))]
    if flops:
        pieces += [("∂W", flops, lambda: m_dw(params, res, g), lambda: a_dw(vjp_fn, g)),
                   ("∂x", flops, lambda: m_dx(params, res, g), lambda: a_dx(vjp_fn, g))]
    pieces.append(("fwd+bwd", 3 * flops, lambda: m_both(params, x, g),
                   lambda: a_both(params, x, g)))
    for j, (piece, f, manual, auto) in enumerate(pieces):
        if piece == "fwd":  # the same function for both
            t = interleaved({"manual": manual}, repeats)
            t["jax"] = t["manual"]
        else:
            t = interleaved({"manual": manual, "jax": auto}, repeats)
        print(f"{layer.name if j == 0 else '':<22}{piece:<9}{t['manual'] * 1e3:10.2f}"
              f"{_rate(f, t['manual'])}{t['jax'] * 1e3:9.2f}{_rate(f, t['jax'])}"
              f"{t['manual'] / t['jax']:11.2f}")


def profile_step(layers, input_shape, repeats: int, step_flops: float, dtype):
    net = L.serial(*layers)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal(input_shape), dtype)
    y = jnp.asarray(rng.integers(0, 10, input_shape[0]), jnp.int32)
    optimizer = optax.sgd(0.01)
    runners = {}
    for grad in ("manual", "auto"):
        step = make_step(net, losses.softmax_cross_entropy, optimizer, grad=grad)
        box = {"state": init_state(net, optimizer, jax.random.key(0), input_shape)}

        def run(step=step, box=box):
            box["state"], metrics = step(box["state"], x, y)
            return metrics

        runners[grad] = run
    t = interleaved(runners, repeats)
    print(f"\ntrain step (SGD, state donated): manual {t['manual'] * 1e3:.2f} ms "
          f"({step_flops / t['manual'] / 1e9:.1f} GF/s), jax.grad {t['auto'] * 1e3:.2f} ms "
          f"({step_flops / t['auto'] / 1e9:.1f} GF/s), manual/jax {t['manual'] / t['auto']:.2f}; "
          f"{step_flops / 1e9:.2f} GFLOP a step")
    return t


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--only", help="profile only layers whose name contains this "
                        "(e.g. conv); the step is timed as well unless --no-step")
    parser.add_argument("--no-step", action="store_true", help="skip the whole train step")
    parser.add_argument("--no-layers", action="store_true", help="time only the train step")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall-clock time (default) or the process's CPU time")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    dtype = jnp.dtype("float32")
    layers = cnn_layers()
    input_shape = (args.batch, 28, 28, 1)
    print(f"CNN, batch {args.batch}, 28×28×1, float32, {jax.devices()[0].platform}, "
          f"jax {jax.__version__}; medians of {args.repeats} interleaved repeats, "
          f"{args.clock} time\n")
    step_flops = profile_layers(layers, input_shape, args.repeats,
                                "\0" if args.no_layers else args.only, dtype)
    if not args.no_step:
        profile_step(layers, input_shape, args.repeats, step_flops, dtype)


if __name__ == "__main__":
    main()
