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
    """(batch, d1, d2, ...) -> (batch, d1·d2·...).   Backward: dx = g reshaped back."""
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
