"""Combinators: build networks out of layers, and compose their backward passes.

    serial(f1, ..., fn)      y = fn(...f2(f1(x)))        backward: the chain rule, fn.bwd first
    residual(f)              y = x + f(x)                 backward: dx = g + f.bwd(g)
    parallel(f1, ..., fn)    y = merge(f1(x), ..., fn(x)) backward: dx = Σ_k fk.bwd(g_k)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fbp._layer import Layer, check_input, check_shape, no_stats, split_key


def _check_children(name: str, params, n: int) -> None:
    if not isinstance(params, (tuple, list)) or len(params) != n:
        got = (f"a {type(params).__name__} of length {len(params)}"
               if isinstance(params, (tuple, list)) else f"a {type(params).__name__}")
        raise ValueError(f"{name}: expected params as a tuple of {n} (one per child layer), "
                         f"got {got} (params from another network?)")


def _check_layers(name: str, layers) -> tuple[Layer, ...]:
    if not layers:
        raise ValueError(f"{name}: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"{name}: argument {i} is not a Layer but {type(layer).__name__} "
                            "(did you pass `relu` instead of `relu()`?)")
    return tuple(layers)


def _children_update_stats(layers, children_res):
    """update_stats for a combinator whose params and residuals are one entry per child."""
    if all(layer.update_stats is None for layer in layers):
        return None

    def update_stats(params, res):
        return tuple(no_stats(p) if layer.update_stats is None else layer.update_stats(p, r)
                     for layer, p, r in zip(layers, params, children_res(res)))

    return update_stats


def serial(*layers: Layer) -> Layer:
    """Composition y = fn(...f2(f1(x))); params are a tuple, one entry per layer.

    Backward, by the chain rule: with g_n = ∂L/∂y, each layer from the last to the
    first turns g_k = ∂L/∂(its output) into its parameter gradient and g_{k-1} =
    ∂L/∂(its input):  (∂θ_k, g_{k-1}) = f_k.bwd(θ_k, res_k, g_k).
    """
    layers = _check_layers("serial", layers)
    name = f"serial({', '.join(layer.name for layer in layers)})"

    def init(key, input_shape):
        shape = check_shape(name, input_shape)
        params = []
        for layer, k in zip(layers, split_key(key, len(layers))):
            shape, p = layer.init(k, shape)
            params.append(p)
        return shape, tuple(params)

    def fwd(params, x, *, key=None, train=False):
        _check_children(name, params, len(layers))
        res = []
        for layer, p, k in zip(layers, params, split_key(key, len(layers))):
            x, r = layer.fwd(p, x, key=k, train=train)
            res.append(r)
        return x, tuple(res)

    def bwd(params, res, g):
        grads = [None] * len(layers)
        for i in reversed(range(len(layers))):
            grads[i], g = layers[i].bwd(params[i], res[i], g)
        return tuple(grads), g

    return Layer(name, init, fwd, bwd, _children_update_stats(layers, lambda res: res))


def residual(layer: Layer) -> Layer:
    """y = x + f(x), for an f that keeps the shape.   Backward: dx = g + ∂x of f at g."""
    (layer,) = _check_layers("residual", (layer,))
    name = f"residual({layer.name})"

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        out_shape, params = layer.init(key, input_shape)
        if tuple(out_shape) != input_shape:
            raise ValueError(f"{name}: the inner layer must keep the shape for x + f(x); "
                             f"it maps {input_shape} to {tuple(out_shape)}")
        return input_shape, params

    def fwd(params, x, *, key=None, train=False):
        fx, res = layer.fwd(params, x, key=key, train=train)
        if fx.shape != x.shape:
            raise ValueError(f"{name}: the inner layer must keep the shape for x + f(x); "
                             f"it maps {tuple(x.shape)} to {tuple(fx.shape)}")
        return x + fx, res

    def bwd(params, res, g):
        grads, dx_f = layer.bwd(params, res, g)
        return grads, g + dx_f

    return Layer(name, init, fwd, bwd, layer.update_stats)


def parallel(*layers: Layer, merge: str = "concat") -> Layer:
    """Branch and merge: every branch sees the same x; y = merge(f1(x), ..., fn(x)).

    merge="concat" joins the outputs on the last axis; merge="sum" adds them.
    Backward: each branch gets its part of g (its slice for concat, all of g for
    sum), and the input, used n times, sums their input gradients: dx = Σ_k dx_k.
    """
    layers = _check_layers("parallel", layers)
    if merge not in ("concat", "sum"):
        raise ValueError(f"parallel: merge must be 'concat' or 'sum', got {merge!r}")
    name = f"parallel({', '.join(layer.name for layer in layers)}; {merge})"

    def merged_shape(shapes):
        shapes = [tuple(s) for s in shapes]
        if merge == "sum":
            if len(set(shapes)) != 1:
                raise ValueError(f"{name}: merge='sum' needs branches of one output shape, "
                                 f"got {shapes}")
            return shapes[0]
        if len({s[:-1] for s in shapes}) != 1:
            raise ValueError(f"{name}: merge='concat' needs branch outputs that agree on all "
                             f"but the last axis, got {shapes}")
        return shapes[0][:-1] + (sum(s[-1] for s in shapes),)

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        shapes, params = [], []
        for layer, k in zip(layers, split_key(key, len(layers))):
            s, p = layer.init(k, input_shape)
            shapes.append(s)
            params.append(p)
        return merged_shape(shapes), tuple(params)

    def fwd(params, x, *, key=None, train=False):
        _check_children(name, params, len(layers))
        check_input(name, x, floating=False)
        ys, res = [], []
        for layer, p, k in zip(layers, params, split_key(key, len(layers))):
            y, r = layer.fwd(p, x, key=k, train=train)
            ys.append(y)
            res.append(r)
        merged_shape([y.shape for y in ys])
        if merge == "sum":
            return sum(ys[1:], ys[0]), tuple(res)
        widths = tuple(y.shape[-1] for y in ys)
        return jnp.concatenate(ys, axis=-1), (tuple(res), widths)

    def bwd(params, res, g):
        if merge == "sum":
            branch_res, gs = res, [g] * len(layers)
        else:
            branch_res, widths = res
            gs = jnp.split(g, np.cumsum(widths)[:-1].tolist(), axis=-1)
        grads, dx = [], None
        for layer, p, r, g_k in zip(layers, params, branch_res, gs):
            grad_k, dx_k = layer.bwd(p, r, g_k)
            grads.append(grad_k)
            dx = dx_k if dx is None else dx + dx_k
        return tuple(grads), dx

    branch_res = (lambda res: res) if merge == "sum" else (lambda res: res[0])
    return Layer(name, init, fwd, bwd, _children_update_stats(layers, branch_res))
