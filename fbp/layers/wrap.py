"""Layers made from other things: a plain JAX function (`from_function`), and a layer that
keeps only its input and recomputes the rest in its backward (`remat`)."""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from jax import lax

from fbp._layer import (
    Layer,
    after,
    check_shape,
    child_bwd,
    child_fwd,
    combinator,
    default_float_dtype,
    init_with_state,
)


def from_function(fn: Callable, *, init: Callable | None = None, name: str | None = None) -> Layer:
    """A layer from a plain JAX function; its backward is `jax.vjp` of `fn`, not by hand.

    Without `init`: y = fn(x), no parameters ({}); `init` finds the output shape by tracing
    fn on a zero-cost abstract input. With `init(key, input_shape) -> (output_shape,
    params)`: y = fn(params, x).

    It lets a net train before every backward is written out: write the forward as a plain
    function, check the net, then replace one `from_function` at a time by a layer with a
    hand-written bwd (and `fbp.check_layer` it). Reports mark such layers as autodiff.

    Residual: x (params come back to bwd anyway); bwd runs fn forward again inside
    `jax.vjp`, which XLA merges with the first forward when both sit in one jitted step.

    Args:
        fn: the forward, `fn(x)` without `init`, `fn(params, x)` with it; any function JAX
            can differentiate.
        init: None (default) for a parameter-free layer, or `init(key, input_shape) ->
            (output_shape, params)`.
        name: the layer's name in reports; default `from_function(<fn's __name__>)`.

    Returns:
        A stateless `Layer` marked `autodiff=True`: params `{}` or what `init` returns;
            output shape `fn`'s (found by `jax.eval_shape` without `init`, `init`'s with it).

    Raises:
        TypeError: `fn` is not callable, `init` is neither None nor callable, or `name` is
            neither None nor a str.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> layer = L.from_function(jnp.sin)
        >>> layer.init(jax.random.key(0), (2, 3))
        ((2, 3), {})
        >>> x = jnp.array([0.0, 1.0])
        >>> y, res = layer.fwd({}, x)
        >>> _, dx = layer.bwd({}, res, jnp.ones(2))         # jax.vjp of sin: cos
        >>> bool(jnp.allclose(dx, jnp.cos(x))), layer.autodiff
        (True, True)
        >>> def init(key, input_shape):
        ...     return input_shape, {"a": jnp.array(2.0)}
        >>> scale = L.from_function(lambda p, x: p["a"] * x, init=init, name="scale")
        >>> _, params = scale.init(jax.random.key(0), (2, 3))
        >>> x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        >>> grads, dx = scale.bwd(params, scale.fwd(params, x)[1], jnp.ones((2, 3)))
        >>> grads["a"].tolist(), dx[0].tolist()             # Σ g ⊙ x, and a g
        (21.0, [2.0, 2.0, 2.0])
    """
    if not callable(fn):
        raise TypeError(f"from_function: expected a function, got {type(fn).__name__} "
                        f"{reprlib.repr(fn)}")
    if init is not None and not callable(init):
        raise TypeError(f"from_function: init must be a function (key, input_shape) -> "
                        f"(output_shape, params), got {type(init).__name__} "
                        f"{reprlib.repr(init)}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"from_function: name must be a str, got {type(name).__name__} "
                        f"{reprlib.repr(name)}")
    name = name or f"from_function({getattr(fn, '__name__', type(fn).__name__)})"
    call = (lambda params, x: fn(x)) if init is None else fn

    def init_layer(key, input_shape):
        if init is not None:
            out_shape, params = init(key, input_shape)
            return tuple(out_shape), params
        input_shape = check_shape(name, input_shape)
        x = jax.ShapeDtypeStruct(input_shape, default_float_dtype())
        return tuple(jax.eval_shape(fn, x).shape), {}

    # fwd :: (P, X) -> (Y, res = x)
    def fwd(params, x, *, key=None, train=False):
        del key, train
        return call(params, x), x

    # bwd :: (P, res, CT Y) -> (CT P, CT X) = jax.vjp of fn at (params, x)
    def bwd(params, x, g):
        _, vjp = jax.vjp(call, params, x)
        return vjp(g)

    return Layer(name, init_layer, fwd, bwd, autodiff=True)


class TrainInput(NamedTuple):
    """remat's residual after a training pass: what its fwd was called with."""

    x: Any
    key: Any
    state: Any


class EvalInput(NamedTuple):
    """remat's residual after an evaluation pass."""

    x: Any
    key: Any
    state: Any


def remat(layer: Layer) -> Layer:
    """`layer` with the same forward and gradients, keeping only its input as residual.

    fwd runs layer.fwd and drops its residuals, keeping x (and the key and state it was
    called with); bwd runs layer.fwd again on them, then layer.bwd:

        fwd:  y, _ = f.fwd(θ, x);        res = x
        bwd:  _, r = f.fwd(θ, x);        (∂θ, ∂x) = f.bwd(θ, r, g)

    Memory for compute: a block's intermediates live only during its own backward instead
    of from the forward to the backward. The recomputation starts from x tied to g (see
    `fbp._layer.after`), so XLA can neither merge it back into the first forward nor run it
    before the backward reaches the block. Params and state are `layer`'s own.

    Args:
        layer: the layer (often a block of several) whose residuals are recomputed.

    Returns:
        A `Layer`, `remat(...)`, with `layer`'s params, state (stateful when `layer` is),
            input and output shapes; its residual is x, the key and the state only.

    Raises:
        TypeError: `layer` is not a `Layer`.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from fbp import layers as L
        >>> block = L.serial(L.dense(4), L.tanh(), L.dense(4))
        >>> layer = L.remat(block)
        >>> out_shape, params = layer.init(jax.random.key(0), (2, 4))   # block's own params
        >>> out_shape, jax.tree.map(jnp.shape, params)
        ((2, 4), ({'b': (4,), 'w': (4, 4)}, {}, {'b': (4,), 'w': (4, 4)}))
        >>> rng = np.random.default_rng(0)
        >>> x, g = jnp.asarray(rng.normal(size=(2, 2, 4)), jnp.float32)   # x, and g = ∂L/∂y
        >>> y, res = layer.fwd(params, x, train=True)
        >>> res.x.shape                                     # only the input is kept
        (2, 4)
        >>> grads, dx = layer.bwd(params, res, g)           # block.fwd again, then block.bwd
        >>> grads_b, dx_b = block.bwd(params, block.fwd(params, x)[1], g)
        >>> bool(jnp.allclose(dx, dx_b)), bool(jnp.allclose(grads[0]["w"], grads_b[0]["w"]))
        (True, True)
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"remat: expected a fbp.Layer, got {type(layer).__name__}")
    name = f"remat({layer.name})"

    def init(key, input_shape):
        return init_with_state(layer, key, input_shape)

    # fwd :: (P, X, S) -> (Y, res = (x, key, state), S')
    def fwd(params, x, *, key=None, train=False, state=None):
        y, _, new_state = child_fwd("remat", 0, layer, params, x, key=key, train=train,
                                    state=state)
        return y, (TrainInput if train else EvalInput)(x, key, state), new_state

    # bwd :: (P, res, CT Y) -> (CT P, CT X): recompute the residuals, then the layer's bwd
    def bwd(params, res, g):
        x, g = lax.optimization_barrier((after(res.x, g), g))
        _, inner_res, _ = child_fwd("remat", 0, layer, params, x, key=res.key,
                                    train=isinstance(res, TrainInput), state=res.state)
        return child_bwd("remat", 0, layer, params, inner_res, g)

    return combinator(name, init, fwd, bwd, (layer,))


__all__ = ["from_function", "remat"]
