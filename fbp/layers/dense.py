"""Fully connected layer."""

from __future__ import annotations

import numbers

import jax

from fbp._layer import (
    Initializer,
    Layer,
    check_initializers,
    check_input,
    check_param_shapes,
    check_shape,
    default_float_dtype,
)


def dense(features: int, *, use_bias: bool = True,
          w_init: Initializer = jax.nn.initializers.glorot_uniform(),
          b_init: Initializer = jax.nn.initializers.zeros) -> Layer:
    """Affine map on the last axis: y = x W + b.

    Shapes: x (..., n_in), W (n_in, features), b (features,), y (..., features).
    Leading axes (batch, sequence, ...) are flattened into one axis of rows.

    Backward, for g = ∂L/∂y:
        ∂W = xᵀ g          (sum over rows of the outer products x_i g_iᵀ)
        ∂b = Σ_rows g
        ∂x = g Wᵀ

    Args:
        features: the output width, a positive int.
        use_bias: add the bias b (default True); False leaves it out of params, y = x W.
        w_init: initializer of W, called as `w_init(key, (n_in, features), dtype)` (any
            `jax.nn.initializers` function); default Glorot uniform.
        b_init: initializer of b, called as `b_init(key, (features,), dtype)`;
            default zeros.

    Returns:
        A stateless `Layer`, `dense(features)`. Its params are `{"w": (n_in, features),
            "b": (features,)}` (no "b" without `use_bias`), n_in read off the last axis of the
            `input_shape` given to `init`; input (..., n_in), output (..., features).

    Raises:
        ValueError: `features` is not a positive int. (`fwd` raises ValueError for params
            or an input of other shapes, TypeError for an input of another dtype.)
        TypeError: `w_init` or `b_init` is not callable.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from fbp import layers as L
        >>> layer = L.dense(3)
        >>> out_shape, params = layer.init(jax.random.key(0), (4, 5))
        >>> out_shape, jax.tree.map(jnp.shape, params)
        ((4, 3), {'b': (3,), 'w': (5, 3)})
        >>> rng = np.random.default_rng(0)
        >>> x = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
        >>> y, res = layer.fwd(params, x)
        >>> bool(jnp.allclose(y, x @ params["w"] + params["b"][None, :]))
        True
        >>> g = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)    # g = ∂L/∂y
        >>> grads, dx = layer.bwd(params, res, g)            # ∂W = xᵀg, ∂b = Σ g, ∂x = gWᵀ
        >>> bool(jnp.allclose(grads["w"], x.T @ g)), bool(jnp.allclose(dx, g @ params["w"].T))
        (True, True)
        >>> _, vjp = jax.vjp(lambda p, x: layer.apply(p, x), params, x)   # the same by autodiff
        >>> auto_grads, auto_dx = vjp(g)
        >>> bool(jnp.allclose(grads["w"], auto_grads["w"], atol=1e-6)), bool(jnp.allclose(dx, auto_dx))
        (True, True)
    """
    if not isinstance(features, numbers.Integral) or isinstance(features, bool) or features <= 0:
        raise ValueError(f"dense: features must be a positive int, got {features!r}")
    check_initializers("dense", w_init=w_init, b_init=b_init)
    features = int(features)
    return affine(f"dense({features})", features, use_bias=use_bias, w_init=w_init,
                  b_init=b_init)


def affine(name: str, features: int, *, use_bias: bool, w_init, b_init=None) -> Layer:
    """`dense`'s layer under another name (for layers that are a dense map, such as
    `linear_softmax_head`, so that their errors name them); `features` already checked."""

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
