"""Layer normalization over the last axis. (Batch normalization, whose running statistics
live in a state apart from the params, is `fbp.layers.batch_norm`, in
fbp/layers/batch_norm.py.)"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from jax import lax

from fbp._layer import (
    Initializer,
    Layer,
    check_initializers,
    check_input,
    check_param_shapes,
    check_shape,
    default_float_dtype,
)


def layer_norm(*, eps: float = 1e-5, scale_init: Initializer = jax.nn.initializers.ones,
               bias_init: Initializer = jax.nn.initializers.zeros) -> Layer:
    """y = γ ⊙ x̂ + β,  x̂ = (x − μ) / √(σ² + ε),  μ, σ² the mean and variance of x's last axis.

    Shapes: x (..., d), γ = params["scale"] (d,), β = params["bias"] (d,), y like x.

    Backward, for g = ∂L/∂y, per row (means over the last axis, ĝ = g ⊙ γ):
        ∂γ = Σ_rows g ⊙ x̂
        ∂β = Σ_rows g
        ∂x = (ĝ − mean(ĝ) − x̂ ⊙ mean(ĝ ⊙ x̂)) / √(σ² + ε)
    (x̂ has mean 0 and mean square σ²/(σ² + ε) ≈ 1: the two subtractions remove ĝ's
    components along the directions that normalization takes out.)

    Args:
        eps: ε > 0, added to the variance before the square root; default 1e-5.
        scale_init: initializer of γ, called as `scale_init(key, (d,), dtype)`;
            default ones.
        bias_init: initializer of β, called as `bias_init(key, (d,), dtype)`;
            default zeros.

    Returns:
        A stateless `Layer`, `layer_norm` (`layer_norm(eps=...)` for ε ≠ 1e-5): params
            `{"scale": (d,), "bias": (d,)}`, d read off the last axis of `input_shape`; input
            (..., d), output of the same shape. No running statistics: training and
            evaluation compute the same.

    Raises:
        ValueError: `eps` is not a positive finite number (a bool is not one).
        TypeError: `scale_init` or `bias_init` is not callable.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from fbp import layers as L
        >>> layer = L.layer_norm()
        >>> out_shape, params = layer.init(jax.random.key(0), (2, 4))
        >>> out_shape, jax.tree.map(jnp.shape, params)
        ((2, 4), {'bias': (4,), 'scale': (4,)})
        >>> x = jnp.array([[0.0, 0.0, 10.0, 10.0], [1.0, 3.0, 1.0, 3.0]])
        >>> y, res = layer.fwd(params, x)
        >>> jnp.round(y, 3).tolist()                        # each row: mean 0, variance 1
        [[-1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, -1.0, 1.0]]
        >>> g = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4)), jnp.float32)
        >>> grads, dx = layer.bwd(params, res, g)
        >>> _, vjp = jax.vjp(lambda p, x: layer.apply(p, x), params, x)
        >>> auto_grads, auto_dx = vjp(g)
        >>> bool(jnp.allclose(dx, auto_dx, atol=1e-5))
        True
        >>> bool(jnp.allclose(grads["scale"], auto_grads["scale"], atol=1e-5))
        True
    """
    if (not isinstance(eps, numbers.Real) or isinstance(eps, bool)
            or not (math.isfinite(eps) and eps > 0)):
        raise ValueError(f"layer_norm: eps must be a positive finite number, got {eps!r}")
    check_initializers("layer_norm", scale_init=scale_init, bias_init=bias_init)
    name = "layer_norm" if eps == 1e-5 else f"layer_norm(eps={eps})"
    eps = float(eps)   # a Python float stays weakly typed: y keeps x's dtype

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        d = input_shape[-1]
        dtype = default_float_dtype()
        s_key, b_key = jax.random.split(key)
        return input_shape, {"scale": scale_init(s_key, (d,), dtype),
                             "bias": bias_init(b_key, (d,), dtype)}

    def along_last(v, ndim):
        """(d,) -> (1, ..., 1, d): a per-feature vector against an x of rank `ndim`."""
        return v.reshape((1,) * (ndim - 1) + v.shape)

    # fwd :: (P, X) -> (Y, res = (x̂, 1/√(σ² + ε)))
    def fwd(params, x, *, key=None, train=False):
        del key, train
        scale = params.get("scale") if isinstance(params, dict) else None
        d = scale.shape[0] if scale is not None and scale.ndim == 1 else x.shape[-1]
        check_param_shapes(name, params, {"scale": (d,), "bias": (d,)})
        check_input(name, x, last_dim=d)
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
        inv_std = lax.rsqrt(var + eps)
        x_hat = (x - mu) * inv_std
        y = along_last(scale, x.ndim) * x_hat + along_last(params["bias"], x.ndim)
        return y, (x_hat, inv_std)

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, res, g):
        x_hat, inv_std = res
        rows = tuple(range(g.ndim - 1))
        grads = {"scale": jnp.sum(g * x_hat, axis=rows), "bias": jnp.sum(g, axis=rows)}
        g_hat = g * along_last(params["scale"], g.ndim)
        dx = inv_std * (g_hat - jnp.mean(g_hat, axis=-1, keepdims=True)
                        - x_hat * jnp.mean(g_hat * x_hat, axis=-1, keepdims=True))
        return grads, dx

    return Layer(name, init, fwd, bwd)


__all__ = ["layer_norm"]
