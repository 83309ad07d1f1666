"""Batch normalization: trainable scale and bias in params, running statistics in state."""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fbp._layer import (
    Layer,
    at_least_float32,
    check_input,
    check_param_shapes,
    check_shape,
    default_float_dtype,
)


class BatchStats(NamedTuple):
    """Residual of a training pass: x normalized by the batch's own μ_B, σ²_B."""

    x_hat: jax.Array
    inv_std: jax.Array   # 1/√(σ²_B + ε)


class RunningStats(NamedTuple):
    """Residual of an evaluation pass: x normalized by the running m, v (constants here)."""

    x_hat: jax.Array
    inv_std: jax.Array   # 1/√(v + ε)


def batch_norm(momentum: float = 0.9, *, eps: float = 1e-5) -> Layer:
    """Normalize each feature (the last axis) over the batch (all other axes):

        training:    x̂ = (x − μ_B) / √(σ²_B + ε),  μ_B, σ²_B the batch mean and variance
        evaluation:  x̂ = (x − m) / √(v + ε),        m, v the running statistics
        y = γ ⊙ x̂ + β

    params: scale γ and bias β (trained). state: the running mean m and variance v — not
    parameters, so they get no gradient, no weight decay and no optimizer moments. A
    training pass returns them moved towards this batch:
        m ← momentum·m + (1 − momentum)·μ_B,   v ← momentum·v + (1 − momentum)·σ²_B
    (σ²_B the biased batch variance). The statistics are computed in float32 (or x's dtype
    if wider) from float32 state, whatever the compute dtype: a bfloat16 pass moves them
    as a float32 one does.

    Backward in training, for g = ∂L/∂y, with ĝ = g ⊙ γ and means over the batch axes —
    μ_B and σ²_B depend on every example, so the gradient flows through them:
        ∂γ = Σ g ⊙ x̂,   ∂β = Σ g,
        ∂x = (ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)) / √(σ²_B + ε)
    In evaluation m, v are constants:  ∂x = ĝ / √(v + ε).

    Args:
        momentum: how much of the running statistics each training pass keeps, in [0, 1);
            default 0.9.
        eps: ε > 0, added to the variance before the square root; default 1e-5.

    Returns:
        A stateful `Layer`, `batch_norm(momentum)`, for inputs (..., C) of rank ≥ 2 (output
            shaped like the input). `init(key, input_shape)` returns (output_shape, params,
            state): params `{"scale": (C,), "bias": (C,)}` (ones and zeros), state
            `{"mean": (C,), "var": (C,)}` (zeros and ones, float32 or wider). `fwd` and `apply`
            take `state=`: `fwd(params, x, train=..., state=state)` -> (y, res, new_state),
            `apply(...)` -> (y, new_state); `bwd` is as for any layer.

    Raises:
        ValueError: `momentum` is not a number in [0, 1), or `eps` is not a positive finite
            number (a bool is neither).

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from fbp import layers as L
        >>> layer = L.batch_norm(0.9)
        >>> out_shape, params, state = layer.init(jax.random.key(0), (4, 2))   # and a state
        >>> out_shape, jax.tree.map(jnp.shape, params), jax.tree.map(jnp.shape, state)
        ((4, 2), {'bias': (2,), 'scale': (2,)}, {'mean': (2,), 'var': (2,)})
        >>> x = jnp.array([[0.0, 1.0], [2.0, 1.0], [0.0, 5.0], [2.0, 5.0]])
        >>> y, new_state = layer.apply(params, x, train=True, state=state)  # batch statistics
        >>> jnp.round(y, 3).tolist()                   # each feature: mean 0, variance 1
        [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]
        >>> bool(jnp.allclose(new_state["mean"], 0.1 * x.mean(axis=0)))   # 0.9·0 + 0.1·μ_B
        True
        >>> bool(jnp.allclose(new_state["var"], 0.9 + 0.1 * x.var(axis=0)))  # 0.9·1 + 0.1·σ²_B
        True
        >>> y_eval, same = layer.apply(params, x, state=new_state)  # evaluation: running m, v
        >>> same is new_state
        True
        >>> g = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)), jnp.float32)
        >>> _, res, _ = layer.fwd(params, x, train=True, state=state)
        >>> grads, dx = layer.bwd(params, res, g)
        >>> f = lambda p, x: layer.apply(p, x, train=True, state=state)[0]
        >>> _, vjp = jax.vjp(f, params, x)
        >>> auto_grads, auto_dx = vjp(g)
        >>> bool(jnp.allclose(dx, auto_dx, atol=1e-5))
        True
        >>> bool(jnp.allclose(grads["scale"], auto_grads["scale"], atol=1e-5))
        True
    """
    if not _is_real(momentum) or not 0 <= momentum < 1:
        raise ValueError(f"batch_norm: momentum must be in [0, 1), got {momentum!r}")
    if not _is_real(eps) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"batch_norm: eps must be a positive finite number, got {eps!r}")
    name = f"batch_norm({momentum})"
    momentum, eps = float(momentum), float(eps)   # Python floats stay weakly typed

    def init(key, input_shape):
        del key
        input_shape = check_shape(name, input_shape, min_rank=2)
        c = input_shape[-1]
        dtype = default_float_dtype()
        params = {"scale": jnp.ones((c,), dtype), "bias": jnp.zeros((c,), dtype)}
        state = {"mean": jnp.zeros((c,), at_least_float32(dtype)),
                 "var": jnp.ones((c,), at_least_float32(dtype))}
        return input_shape, params, state

    def per_feature(v, ndim):
        """(c,) -> (1, ..., 1, c), to meet an x of rank `ndim`."""
        return v.reshape((1,) * (ndim - 1) + v.shape)

    # fwd :: (P, X, S) -> (Y, res = BatchStats | RunningStats, S')
    def fwd(params, x, *, key=None, train=False, state):
        del key
        scale = params.get("scale") if isinstance(params, dict) else None
        c = scale.shape[0] if scale is not None and scale.ndim == 1 else x.shape[-1]
        check_param_shapes(name, params, {"scale": (c,), "bias": (c,)})
        check_param_shapes(name, state, {"mean": (c,), "var": (c,)}, what="state")
        check_input(name, x, min_rank=2, last_dim=c, dtype=scale.dtype)
        batch_axes = tuple(range(x.ndim - 1))
        stat_dtype = at_least_float32(state["mean"].dtype)
        xf = x.astype(at_least_float32(x.dtype))
        if train:
            mu = jnp.mean(xf, axis=batch_axes)
            var = jnp.mean(jnp.square(xf - per_feature(mu, x.ndim)), axis=batch_axes)
            new_state = {"mean": momentum * state["mean"] + (1 - momentum) * mu.astype(stat_dtype),
                         "var": momentum * state["var"] + (1 - momentum) * var.astype(stat_dtype)}
            new_state = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype),
                                               new_state, state)
            stats = BatchStats
        else:
            mu, var = (state[k].astype(xf.dtype) for k in ("mean", "var"))
            new_state, stats = state, RunningStats
        inv_std = lax.rsqrt(var + eps)
        x_hat = ((xf - per_feature(mu, x.ndim)) * per_feature(inv_std, x.ndim)).astype(x.dtype)
        y = per_feature(scale, x.ndim) * x_hat + per_feature(params["bias"], x.ndim)
        return y, stats(x_hat, inv_std.astype(x.dtype)), new_state

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, res, g):
        batch_axes = tuple(range(g.ndim - 1))
        grads = {"scale": jnp.sum(g * res.x_hat, axis=batch_axes),
                 "bias": jnp.sum(g, axis=batch_axes)}
        g_hat = g * per_feature(params["scale"], g.ndim)
        inv_std = per_feature(res.inv_std, g.ndim)
        if isinstance(res, RunningStats):  # an affine map of x
            return grads, g_hat * inv_std
        dx = inv_std * (g_hat - jnp.mean(g_hat, axis=batch_axes, keepdims=True)
                        - res.x_hat * jnp.mean(g_hat * res.x_hat, axis=batch_axes, keepdims=True))
        return grads, dx

    return Layer(name, init, fwd, bwd, stateful=True)


def _is_real(v) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


__all__ = ["batch_norm"]
