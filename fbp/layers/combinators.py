"""Combinators: build networks out of layers, and compose their backward passes.

    serial(f1, ..., fn)      y = fn(...f2(f1(x)))        backward: the chain rule, fn.bwd first
    residual(f)              y = x + f(x)                 backward: dx = g + f.bwd(g)
    parallel(f1, ..., fn)    y = merge(f1(x), ..., fn(x)) backward: dx = Σ_k fk.bwd(g_k)

A combinator is stateful when one of its children is; its state is then a tuple with one
entry per child ({} for a stateless child), like its params.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fbp._layer import (
    Layer,
    check_input,
    check_shape,
    child_bwd,
    child_fwd,
    children_state,
    combinator,
    init_with_state,
    residual_shape,
    shape_residual,
    split_key,
)


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


def serial(*layers: Layer) -> Layer:
    """Composition y = fn(...f2(f1(x))); params are a tuple, one entry per layer.

    Backward, by the chain rule: with g_n = ∂L/∂y, each layer from the last to the
    first turns g_k = ∂L/∂(its output) into its parameter gradient and g_{k-1} =
    ∂L/∂(its input):  (∂θ_k, g_{k-1}) = f_k.bwd(θ_k, res_k, g_k).

    Args:
        *layers: the layers, first to last (at least one); each one's output shape is the
            next one's input shape, as `init` works out.

    Returns:
        A `Layer`, `serial(...)`: params a tuple with one entry per layer (`{}` for a
            parameter-free one); input the first layer's, output the last layer's. Stateful
            when one of the layers is: then its state is a tuple too, one entry per layer.

    Raises:
        ValueError: no layers are given.
        TypeError: an argument is not a `Layer` (e.g. `relu` where `relu()` was meant).

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from fbp import layers as L
        >>> first, last = L.dense(8), L.dense(3)
        >>> net = L.serial(first, L.relu(), last)
        >>> out_shape, params = net.init(jax.random.key(0), (4, 3))
        >>> out_shape, jax.tree.map(jnp.shape, params)      # one entry per layer
        ((4, 3), ({'b': (8,), 'w': (3, 8)}, {}, {'b': (3,), 'w': (8, 3)}))
        >>> rng = np.random.default_rng(0)
        >>> x, g = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)   # x, and g = ∂L/∂y
        >>> y, res = net.fwd(params, x)
        >>> bool(jnp.allclose(y, last.apply(params[2], jax.nn.relu(first.apply(params[0], x)))))
        True
        >>> grads, dx = net.bwd(params, res, g)             # last.bwd, relu's, then first.bwd
        >>> _, vjp = jax.vjp(lambda p, x: net.apply(p, x), params, x)
        >>> auto_grads, auto_dx = vjp(g)
        >>> bool(jnp.allclose(grads[0]["w"], auto_grads[0]["w"], atol=1e-6))
        True
        >>> bool(jnp.allclose(dx, auto_dx, atol=1e-6))
        True
    """
    layers = _check_layers("serial", layers)
    name = f"serial({', '.join(layer.name for layer in layers)})"

    def init(key, input_shape):
        shape = check_shape(name, input_shape)
        params, states = [], []
        for layer, k in zip(layers, split_key(key, len(layers))):
            shape, p, s = init_with_state(layer, k, shape)
            params.append(p)
            states.append(s)
        return shape, tuple(params), tuple(states)

    # fwd :: (P, X, S) -> (Y, res = one res per layer, S')
    def fwd(params, x, *, key=None, train=False, state=None):
        _check_children(name, params, len(layers))
        states = children_state(name, state, len(layers))
        res, new_states = [], []
        for i, (layer, p, k, s) in enumerate(zip(layers, params, split_key(key, len(layers)),
                                                 states)):
            x, r, s = child_fwd("serial", i, layer, p, x, key=k, train=train, state=s)
            res.append(r)
            new_states.append(s)
        return x, tuple(res), tuple(new_states)

    # bwd :: (P, res, CT Y) -> (CT P, CT X): the last layer first
    def bwd(params, res, g):
        grads = [None] * len(layers)
        for i in reversed(range(len(layers))):
            grads[i], g = child_bwd("serial", i, layers[i], params[i], res[i], g)
        return tuple(grads), g

    return combinator(name, init, fwd, bwd, layers)


def residual(layer: Layer) -> Layer:
    """y = x + f(x), for an f that keeps the shape.   Backward: dx = g + ∂x of f at g.

    params (and state) are f's own.

    Args:
        layer: f, a layer whose output has its input's shape.

    Returns:
        A `Layer`, `residual(f)`, with f's params (and state: stateful when f is); output
            shaped like the input.

    Raises:
        TypeError: `layer` is not a `Layer`.
        ValueError: (from `init` and `fwd`) f changes the shape, so x + f(x) is undefined.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from fbp import layers as L
        >>> f = L.serial(L.dense(3), L.tanh())
        >>> block = L.residual(f)
        >>> out_shape, params = block.init(jax.random.key(0), (2, 3))
        >>> out_shape, jax.tree.map(jnp.shape, params)      # f's own params
        ((2, 3), ({'b': (3,), 'w': (3, 3)}, {}))
        >>> rng = np.random.default_rng(0)
        >>> x, g = jnp.asarray(rng.normal(size=(2, 2, 3)), jnp.float32)   # x, and g = ∂L/∂y
        >>> y, res = block.fwd(params, x)
        >>> bool(jnp.allclose(y, x + f.apply(params, x)))
        True
        >>> _, dx = block.bwd(params, res, g)               # g + f's ∂x
        >>> bool(jnp.allclose(dx, g + f.bwd(params, f.fwd(params, x)[1], g)[1]))
        True
        >>> _, vjp = jax.vjp(lambda x: block.apply(params, x), x)
        >>> bool(jnp.allclose(dx, vjp(g)[0], atol=1e-6))
        True
    """
    (layer,) = _check_layers("residual", (layer,))
    name = f"residual({layer.name})"

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        out_shape, params, state = init_with_state(layer, key, input_shape)
        if tuple(out_shape) != input_shape:
            raise ValueError(f"{name}: the inner layer must keep the shape for x + f(x); "
                             f"it maps {input_shape} to {tuple(out_shape)}")
        return input_shape, params, state

    # fwd :: (P, X, S) -> (Y, res = f's res, S')
    def fwd(params, x, *, key=None, train=False, state=None):
        fx, res, state = child_fwd("residual", 0, layer, params, x, key=key, train=train,
                                   state=state)
        if fx.shape != x.shape:
            raise ValueError(f"{name}: the inner layer must keep the shape for x + f(x); "
                             f"it maps {tuple(x.shape)} to {tuple(fx.shape)}")
        return x + fx, res, state

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, res, g):
        grads, dx_f = child_bwd("residual", 0, layer, params, res, g)
        return grads, g + dx_f

    return combinator(name, init, fwd, bwd, (layer,))


def parallel(*layers: Layer, merge: str = "concat") -> Layer:
    """Branch and merge: every branch sees the same x; y = merge(f1(x), ..., fn(x)).

    merge="concat" joins the outputs on the last axis; merge="sum" adds them.
    Backward: each branch gets its part of g (its slice for concat, all of g for
    sum), and the input, used n times, sums their input gradients: dx = Σ_k dx_k.

    Args:
        *layers: the branches (at least one), each applied to the same input.
        merge: "concat" (default): outputs that agree on all but the last axis, joined on
            it; "sum": outputs of one shape, added.

    Returns:
        A `Layer`, `parallel(...; merge)`: params a tuple with one entry per branch; output
            the merged branch outputs. Stateful when one of the branches is: then its state is
            a tuple too, one entry per branch.

    Raises:
        ValueError: no layers are given, or `merge` is neither "concat" nor "sum"; (from
            `init` and `fwd`) the branch outputs cannot be merged.
        TypeError: an argument is not a `Layer`.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from fbp import layers as L
        >>> a, b = L.dense(2), L.dense(3)
        >>> net = L.parallel(a, b)                          # merge="concat"
        >>> out_shape, params = net.init(jax.random.key(0), (4, 5))
        >>> out_shape, jax.tree.map(jnp.shape, params)      # widths 2 + 3
        ((4, 5), ({'b': (2,), 'w': (5, 2)}, {'b': (3,), 'w': (5, 3)}))
        >>> rng = np.random.default_rng(0)
        >>> x, g = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)   # x, and g = ∂L/∂y
        >>> y, res = net.fwd(params, x)
        >>> bool(jnp.allclose(y[:, :2], a.apply(params[0], x)))
        True
        >>> grads, dx = net.bwd(params, res, g)             # dx = Σ_k dx_k: x feeds both
        >>> bool(jnp.allclose(dx, g[:, :2] @ params[0]["w"].T + g[:, 2:] @ params[1]["w"].T))
        True
        >>> _, vjp = jax.vjp(lambda x: net.apply(params, x), x)
        >>> bool(jnp.allclose(dx, vjp(g)[0], atol=1e-6))
        True
        >>> L.parallel(L.relu(), L.tanh(), merge="sum").init(jax.random.key(0), (4, 5))
        ((4, 5), ({}, {}))
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
        shapes, params, states = [], [], []
        for layer, k in zip(layers, split_key(key, len(layers))):
            s, p, st = init_with_state(layer, k, input_shape)
            shapes.append(s)
            params.append(p)
            states.append(st)
        return merged_shape(shapes), tuple(params), tuple(states)

    # fwd :: (P, X, S) -> (Y, res = {"branches": one res per branch,
    #                                 "widths": their output widths (concat)}, S')
    def fwd(params, x, *, key=None, train=False, state=None):
        _check_children(name, params, len(layers))
        check_input(name, x, floating=False)
        states = children_state(name, state, len(layers))
        ys, res, new_states = [], [], []
        for i, (layer, p, k, s) in enumerate(zip(layers, params, split_key(key, len(layers)),
                                                 states)):
            y, r, s = child_fwd("parallel", i, layer, p, x, key=k, train=train, state=s)
            ys.append(y)
            res.append(r)
            new_states.append(s)
        merged_shape([y.shape for y in ys])
        if merge == "sum":
            return sum(ys[1:], ys[0]), {"branches": tuple(res)}, tuple(new_states)
        widths = shape_residual([y.shape[-1] for y in ys])  # split sizes, kept as a shape
        return (jnp.concatenate(ys, axis=-1), {"branches": tuple(res), "widths": widths},
                tuple(new_states))

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, res, g):
        if merge == "sum":
            gs = [g] * len(layers)
        else:
            gs = jnp.split(g, np.cumsum(residual_shape(res["widths"]))[:-1].tolist(), axis=-1)
        grads, dx = [], None
        for i, (layer, p, r, g_k) in enumerate(zip(layers, params, res["branches"], gs)):
            grad_k, dx_k = child_bwd("parallel", i, layer, p, r, g_k)
            grads.append(grad_k)
            dx = dx_k if dx is None else dx + dx_k
        return tuple(grads), dx

    return combinator(name, init, fwd, bwd, layers)


__all__ = ["serial", "residual", "parallel"]
