"""Activations: y = φ(z) applied elementwise (softmax and log-softmax on the last axis).

Each one keeps, for its backward, the least it needs — mostly the output y itself,
which the next layer keeps anyway — and writes φ′ out by hand: dz = g ⊙ φ′(z).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc

from fbp._layer import Layer, check_input, check_no_params, check_shape


def _activation(name: str, fwd, bwd) -> Layer:
    """A parameter-free, shape-preserving layer from fwd :: z -> (y, res), bwd :: (res, g) -> dz."""

    def init(key, input_shape):
        del key
        return check_shape(name, input_shape), {}

    def layer_fwd(params, z, *, key=None, train=False):
        del key, train
        check_no_params(name, params)
        check_input(name, z)
        return fwd(z)

    def layer_bwd(params, res, g):
        del params
        return {}, bwd(res, g)

    return Layer(name, init, layer_fwd, layer_bwd)


def relu() -> Layer:
    """y = max(z, 0).   Backward: dz = g ⊙ [z > 0]  (read off the output: z > 0 ⇔ y > 0)."""
    def fwd(z):
        y = jnp.maximum(z, 0)
        return y, y

    def bwd(y, g):
        return jnp.where(y > 0, g, 0)

    return _activation("relu", fwd, bwd)


def leaky_relu(negative_slope: float = 0.01) -> Layer:
    """y = z for z > 0, α z otherwise (α = negative_slope ≥ 0).

    Backward: dz = g ⊙ (1 if z > 0 else α); for α ≥ 0, z > 0 ⇔ y > 0.
    """
    if not 0 <= negative_slope < 1:
        raise ValueError(f"leaky_relu: negative_slope must be in [0, 1), got {negative_slope!r}")
    alpha = negative_slope

    def fwd(z):
        y = jnp.where(z > 0, z, alpha * z)
        return y, y

    def bwd(y, g):
        return jnp.where(y > 0, g, alpha * g)

    return _activation(f"leaky_relu({negative_slope})", fwd, bwd)


def sigmoid() -> Layer:
    """y = σ(z) = 1 / (1 + e⁻ᶻ).   Backward: dz = g ⊙ σ(z)(1 − σ(z)) = g ⊙ y(1 − y)."""
    def fwd(z):
        y = jax.nn.sigmoid(z)
        return y, y

    def bwd(y, g):
        return g * y * (1 - y)

    return _activation("sigmoid", fwd, bwd)


def tanh() -> Layer:
    """y = tanh(z).   Backward: dz = g ⊙ (1 − tanh²(z)) = g ⊙ (1 − y²)."""
    def fwd(z):
        y = jnp.tanh(z)
        return y, y

    def bwd(y, g):
        return g * (1 - y * y)

    return _activation("tanh", fwd, bwd)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def gelu(approximate: bool = False) -> Layer:
    """y = z Φ(z), Φ the standard normal CDF.

    Backward: dz = g ⊙ (Φ(z) + z φ(z)), φ(z) = e^{−z²/2} / √(2π).

    Φ(z) = ½ erfc(−z/√2): for z ≪ 0 this is a small number computed as one, where
    ½(1 + erf(z/√2)) would subtract two numbers close to 1 (all digits lost by z ≈ −6 in
    float32).

    approximate=True uses Φ(z) ≈ ½(1 + tanh u), u = √(2/π)(z + 0.044715 z³):
        y = ½ z (1 + tanh u),
        dz = g ⊙ [½(1 + tanh u) + ½ z (1 − tanh² u) √(2/π)(1 + 3·0.044715 z²)].
    """
    c = 0.044715

    def cdf(z):
        return 0.5 * erfc(-z * _INV_SQRT_2)

    def fwd(z):
        if approximate:
            y = 0.5 * z * (1 + jnp.tanh(_SQRT_2_OVER_PI * (z + c * z**3)))
        else:
            y = z * cdf(z)
        return y, z

    def bwd(z, g):
        if approximate:
            t = jnp.tanh(_SQRT_2_OVER_PI * (z + c * z**3))
            du = _SQRT_2_OVER_PI * (1 + 3 * c * z * z)
            return g * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du)
        pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
        return g * (cdf(z) + z * pdf)

    return _activation(f"gelu(approximate={approximate})", fwd, bwd)


def elu(alpha: float = 1.0) -> Layer:
    """y = z for z > 0, α(eᶻ − 1) otherwise.

    Backward: dz = g ⊙ (1 if z > 0 else α eᶻ), and α eᶻ = y + α there.
    """
    if alpha <= 0:
        raise ValueError(f"elu: alpha must be positive, got {alpha!r}")

    def fwd(z):
        y = jnp.where(z > 0, z, alpha * jnp.expm1(jnp.minimum(z, 0)))
        return y, y

    def bwd(y, g):
        return jnp.where(y > 0, g, g * (y + alpha))

    return _activation(f"elu({alpha})" if alpha != 1.0 else "elu", fwd, bwd)


def softplus() -> Layer:
    """y = log(1 + eᶻ).   Backward: dz = g ⊙ σ(z), and σ(z) = 1 − e^{−y}."""
    def fwd(z):
        y = jnp.logaddexp(z, 0)
        return y, y

    def bwd(y, g):
        return g * -jnp.expm1(-y)

    return _activation("softplus", fwd, bwd)


def silu() -> Layer:
    """y = z σ(z) (a.k.a. swish).   Backward: dz = g ⊙ σ(z)(1 + z(1 − σ(z)))."""
    def fwd(z):
        return z * jax.nn.sigmoid(z), z

    def bwd(z, g):
        s = jax.nn.sigmoid(z)
        return g * s * (1 + z * (1 - s))

    return _activation("silu", fwd, bwd)


def softmax() -> Layer:
    """y_i = e^{z_i} / Σ_j e^{z_j} on the last axis.

    Backward (Jacobian ∂y_i/∂z_j = y_i(δ_ij − y_j)):  dz = y ⊙ (g − Σ_j g_j y_j).
    """
    def fwd(z):
        y = jax.nn.softmax(z, axis=-1)
        return y, y

    def bwd(y, g):
        return y * (g - jnp.sum(g * y, axis=-1, keepdims=True))

    return _activation("softmax", fwd, bwd)


def log_softmax() -> Layer:
    """y = z − log Σ_j e^{z_j} on the last axis.

    Backward (∂y_i/∂z_j = δ_ij − softmax(z)_j):  dz = g − softmax(z) Σ_i g_i,
    with softmax(z) = e^y.
    """
    def fwd(z):
        y = jax.nn.log_softmax(z, axis=-1)
        return y, y

    def bwd(y, g):
        return g - jnp.exp(y) * jnp.sum(g, axis=-1, keepdims=True)

    return _activation("log_softmax", fwd, bwd)


__all__ = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus", "silu",
           "softmax", "log_softmax"]
