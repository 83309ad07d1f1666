"""Flatten and dropout: layers without parameters that reshape or mask."""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from fbp._layer import (
    Layer,
    at_least_float32,
    check_input,
    check_no_params,
    check_shape,
    residual_shape,
    shape_residual,
)


def flatten() -> Layer:
    """(batch, d1, d2, ...) -> (batch, d1·d2·...).   Backward: dx = g reshaped back.

    Returns:
        A stateless, parameter-free `Layer`, `flatten`: params `{}`; input of rank ≥ 2,
            (batch, d1, d2, ...), output (batch, d1·d2·...).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> layer = L.flatten()
        >>> layer.init(jax.random.key(0), (2, 3, 4, 5))
        ((2, 60), {})
        >>> x = jnp.arange(24.0).reshape(2, 3, 4)
        >>> y, res = layer.fwd({}, x)
        >>> y.shape, y[1, :3].tolist()                      # row-major, as reshape
        ((2, 12), [12.0, 13.0, 14.0])
        >>> _, dx = layer.bwd({}, res, y)                   # g reshaped back
        >>> bool(jnp.array_equal(dx, x))
        True
    """
    name = "flatten"

    def init(key, input_shape):
        del key
        input_shape = check_shape(name, input_shape, min_rank=2)
        return (input_shape[0], math.prod(input_shape[1:])), {}

    def fwd(params, x, *, key=None, train=False):
        del key, train
        check_no_params(name, params)
        check_input(name, x, min_rank=2)
        return x.reshape(x.shape[0], -1), shape_residual(x.shape[1:])

    # bwd :: (P, res = x's shape past the batch, CT Y) -> (CT P, CT X)
    def bwd(params, x_shape, g):
        del params
        return {}, g.reshape(g.shape[:1] + residual_shape(x_shape))

    return Layer(name, init, fwd, bwd)


def dropout(rate: float) -> Layer:
    """Inverted dropout: while training, y = x ⊙ m / (1 − p), m_i ~ Bernoulli(1 − p).

    p = `rate` is the probability to drop a unit. Outside training y = x. Scaling by
    1/(1 − p) keeps E[y] = x, so nothing changes at evaluation.

    Backward: dx = g ⊙ m / (1 − p)  (the same mask; identity outside training).
    Training needs a PRNG key: `apply(params, x, key=key, train=True)`.

    Args:
        rate: p, the probability to drop each unit while training, in [0, 1).

    Returns:
        A stateless, parameter-free `Layer`, `dropout(rate)`: params `{}`, output shaped
            like the input (any rank ≥ 1).

    Raises:
        ValueError: `rate` is not a number in [0, 1). (`fwd` raises ValueError when
            train=True comes without a key.)

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> layer = L.dropout(0.5)
        >>> x = jnp.ones((2, 4))
        >>> bool(jnp.array_equal(layer.apply({}, x), x))    # evaluation: y = x
        True
        >>> y, mask = layer.fwd({}, x, key=jax.random.key(0), train=True)
        >>> bool(jnp.all((y == 0) | (y == 2)))              # dropped, or scaled by 1/(1 − p)
        True
        >>> _, dx = layer.bwd({}, mask, jnp.ones_like(y))   # the same mask
        >>> bool(jnp.array_equal(dx, y))
        True
        >>> layer.apply({}, x, train=True)
        Traceback (most recent call last):
        ValueError: dropout(0.5): train=True needs a PRNG key, ...
    """
    if not isinstance(rate, numbers.Real) or isinstance(rate, bool) or not 0 <= rate < 1:
        raise ValueError(f"dropout: rate (the probability to drop) must be in [0, 1), got {rate!r}")
    rate = float(rate)
    name = f"dropout({rate})"

    def init(key, input_shape):
        del key
        return check_shape(name, input_shape), {}

    def scaled(a, keep):
        """a ⊙ m / (1 − p), the scaling done in float32 (1/(1 − p) rounds in bfloat16)."""
        wide = at_least_float32(a.dtype)
        return jnp.where(keep, a.astype(wide) * (1 / (1 - rate)), 0).astype(a.dtype)

    # fwd :: (P, X) -> (Y, res = the boolean mask m, or nothing outside training)
    def fwd(params, x, *, key=None, train=False):
        check_no_params(name, params)
        check_input(name, x)
        if not train or rate == 0:
            return x, ()
        if key is None:
            raise ValueError(f"{name}: train=True needs a PRNG key, e.g. "
                             "apply(params, x, key=jax.random.key(0), train=True)")
        keep = jax.random.bernoulli(key, 1 - rate, x.shape)
        return scaled(x, keep), keep

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, keep, g):
        del params
        return {}, g if isinstance(keep, tuple) else scaled(g, keep)

    return Layer(name, init, fwd, bwd)


__all__ = ["flatten", "dropout"]
