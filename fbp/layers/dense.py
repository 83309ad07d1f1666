"""Fully connected layer."""

from __future__ import annotations

import numbers

import jax

from fbp._layer import Layer, check_input, check_param_shapes, check_shape, default_float_dtype


def dense(features: int, *, use_bias: bool = True,
          w_init=jax.nn.initializers.glorot_uniform(),
          b_init=jax.nn.initializers.zeros) -> Layer:
    """Affine map on the last axis: y = x W + b.

    Shapes: x (..., n_in), W (n_in, features), b (features,), y (..., features).
    Leading axes (batch, sequence, ...) are flattened into one axis of rows.

    Backward, for g = ∂L/∂y:
        ∂W = xᵀ g          (sum over rows of the outer products x_i g_iᵀ)
        ∂b = Σ_rows g
        ∂x = g Wᵀ
    """
    if not isinstance(features, numbers.Integral) or isinstance(features, bool) or features <= 0:
        raise ValueError(f"dense: features must be a positive int, got {features!r}")
    features = int(features)
    name = f"dense({features})"

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        n_in = input_shape[-1]
        dtype = default_float_dtype()
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (n_in, features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        return input_shape[:-1] + (features,), params

    def expected_shapes(n_in):
        shapes = {"w": (n_in, features)}
        if use_bias:
            shapes["b"] = (features,)
        return shapes

    # fwd :: (P, X) -> (Y, res = x)
    def fwd(params, x, *, key=None, train=False):
        del key, train
        check_input(name, x)
        w = params.get("w") if isinstance(params, dict) else None
        n_in = w.shape[0] if w is not None and w.ndim == 2 else x.shape[-1]
        check_param_shapes(name, params, expected_shapes(n_in))
        check_input(name, x, last_dim=n_in, dtype=w.dtype)
        x2 = x.reshape(-1, n_in)
        y = x2 @ w
        if use_bias:
            y = y + params["b"][None, :]  # b added to every row
        return y.reshape(x.shape[:-1] + (features,)), x

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, x, g):
        w = params["w"]
        x2 = x.reshape(-1, w.shape[0])
        g2 = g.reshape(-1, features)
        grads = {"w": x2.T @ g2}
        if use_bias:
            grads["b"] = g2.sum(axis=0)
        dx = g2 @ w.T
        return grads, dx.reshape(x.shape)

    return Layer(name, init, fwd, bwd)


__all__ = ["dense"]
