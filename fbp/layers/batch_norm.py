"""Batch normalization, with its running statistics kept as explicit state in the params."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from fbp._layer import (
    Layer,
    check_input,
    check_param_shapes,
    check_shape,
    default_float_dtype,
    no_stats,
)


def batch_norm(momentum: float = 0.9, *, eps: float = 1e-5) -> Layer:
    """Normalize each feature (the last axis) over the batch (all other axes):

        training:    x̂ = (x − μ_B) / √(σ²_B + ε),  μ_B, σ²_B the batch mean and variance
        evaluation:  x̂ = (x − m) / √(v + ε),        m, v the running statistics
        y = γ ⊙ x̂ + β

    params: scale γ, bias β (trained), and the running mean m and variance v, which are
    state, not parameters: their gradient is zero and, after each training step,
    `update_stats` sets  m ← momentum·m + (1 − momentum)·μ_B  (and v likewise with the
    biased batch variance σ²_B).

    Backward in training, for g = ∂L/∂y, with ĝ = g ⊙ γ and means over the batch axes —
    μ_B and σ²_B depend on every example, so the gradient flows through them:
        ∂γ = Σ g ⊙ x̂,   ∂β = Σ g,
        ∂x = (ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)) / √(σ²_B + ε)
    In evaluation μ, σ² are the running m, v:  ∂x = ĝ / √(v + ε), and the VJP also gives
    ∂m = −Σ ĝ / √(v + ε),  ∂v = −½ Σ ĝ ⊙ x̂ / (v + ε)  (never used to train them).
    """
    if not 0 <= momentum < 1:
        raise ValueError(f"batch_norm: momentum must be in [0, 1), got {momentum!r}")
    if not eps > 0:
        raise ValueError(f"batch_norm: eps must be positive, got {eps!r}")
    name = f"batch_norm({momentum})"

    def init(key, input_shape):
        del key
        input_shape = check_shape(name, input_shape, min_rank=2)
        c = input_shape[-1]
        dtype = default_float_dtype()
        return input_shape, {"scale": jnp.ones((c,), dtype), "bias": jnp.zeros((c,), dtype),
                             "mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}

    def per_feature(v, ndim):
        """(c,) -> (1, ..., 1, c), to meet an x of rank `ndim`."""
        return v.reshape((1,) * (ndim - 1) + v.shape)

    # fwd :: (P, X) -> (Y, res)
    #   training:   res = (True, x̂, 1/√(σ²_B + ε), μ_B, σ²_B, m, v)
    #   evaluation: res = (False, x̂, 1/√(v + ε))
    def fwd(params, x, *, key=None, train=False):
        del key
        scale = params.get("scale") if isinstance(params, dict) else None
        c = scale.shape[0] if scale is not None and scale.ndim == 1 else x.shape[-1]
        check_param_shapes(name, params, {k: (c,) for k in ("scale", "bias", "mean", "var")})
        check_input(name, x, min_rank=2, last_dim=c, dtype=scale.dtype)
        batch_axes = tuple(range(x.ndim - 1))
        if train:
            mu = jnp.mean(x, axis=batch_axes)
            var = jnp.mean(jnp.square(x - per_feature(mu, x.ndim)), axis=batch_axes)
        else:
            mu, var = params["mean"], params["var"]
        inv_std = lax.rsqrt(var + eps)
        x_hat = (x - per_feature(mu, x.ndim)) * per_feature(inv_std, x.ndim)
        y = per_feature(scale, x.ndim) * x_hat + per_feature(params["bias"], x.ndim)
        if train:
            return y, (True, x_hat, inv_std, mu, var, params["mean"], params["var"])
        return y, (False, x_hat, inv_std)

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, res, g):
        train, x_hat, inv_std = res[:3]
        batch_axes = tuple(range(g.ndim - 1))
        zero = jnp.zeros_like(params["mean"])  # in training, y does not depend on m, v
        grads = {"scale": jnp.sum(g * x_hat, axis=batch_axes), "bias": jnp.sum(g, axis=batch_axes),
                 "mean": zero, "var": zero}
        g_hat = g * per_feature(params["scale"], g.ndim)
        if not train:  # m, v are inputs here: ∂m = −Σ ĝ / √(v+ε),  ∂v = −½ Σ ĝ x̂ / (v+ε)
            grads["mean"] = -inv_std * jnp.sum(g_hat, axis=batch_axes)
            grads["var"] = -0.5 * inv_std * inv_std * jnp.sum(g_hat * x_hat, axis=batch_axes)
            return grads, g_hat * per_feature(inv_std, g.ndim)
        dx = per_feature(inv_std, g.ndim) * (
            g_hat - jnp.mean(g_hat, axis=batch_axes, keepdims=True)
            - x_hat * jnp.mean(g_hat * x_hat, axis=batch_axes, keepdims=True))
        return grads, dx

    # update_stats :: (P, res) -> stats: m, v moved towards this batch's μ_B, σ²_B
    def update_stats(params, res):
        if not res[0]:
            return no_stats(params)
        _, _, _, mu, var, m, v = res
        return {"scale": None, "bias": None,
                "mean": momentum * m + (1 - momentum) * mu,
                "var": momentum * v + (1 - momentum) * var}

    return Layer(name, init, fwd, bwd, update_stats)


__all__ = ["batch_norm"]
