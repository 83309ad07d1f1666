"""Losses L(pred, target) -> scalar, each with its hand-written gradient ∂L/∂pred.

A loss has the same two halves as a layer:

    fwd(pred, target) -> (value, res)
    bwd(res, g)       -> g · ∂L/∂pred          # g: the scalar cotangent, 1 for a plain gradient

and is called like a function: `loss(pred, target)`. Every loss is a mean, so its
size does not grow with the batch: over all elements for `mse`, `huber` and
`binary_cross_entropy`, over the rows (all axes but the class axis) for
`softmax_cross_entropy`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fbp.fused import linear_softmax_cross_entropy

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Loss:
    """A loss: `fwd`, its hand-written `bwd`, and `__call__` for the value alone."""

    name: str
    fwd: Callable[[Array, Array], tuple[Array, Any]]
    bwd: Callable[[Any, Array], Array]

    def __call__(self, pred: Array, target: Array) -> Array:
        return self.fwd(pred, target)[0]

    def value_and_grad(self, pred: Array, target: Array) -> tuple[Array, Array]:
        """(L, ∂L/∂pred) by the hand-written gradient."""
        value, res = self.fwd(pred, target)
        return value, self.bwd(res, jnp.ones_like(value))

    def __repr__(self) -> str:
        return self.name


def _check_pred(name: str, pred) -> None:
    if not hasattr(pred, "shape") or not jnp.issubdtype(pred.dtype, jnp.floating):
        got = getattr(pred, "dtype", type(pred).__name__)
        raise TypeError(f"{name}: expected floating-point predictions, got {got}")


def _same_shape_target(name: str, pred, target) -> Array:
    """A target shaped like pred, cast to pred's dtype."""
    _check_pred(name, pred)
    target = jnp.asarray(target)
    if target.shape != pred.shape:
        raise ValueError(f"{name}: prediction and target shapes disagree: pred "
                         f"{tuple(pred.shape)}, target {tuple(target.shape)} (no broadcasting; "
                         "reshape one of them)")
    return target.astype(pred.dtype)


# --- mean squared error -------------------------------------------------------------------

def _mse_fwd(pred, target):
    """L = (1/N) Σ (p − t)²."""
    target = _same_shape_target("mse", pred, target)
    r = pred - target
    return jnp.mean(r * r), r


def _mse_bwd(r, g):
    """∂L/∂p = 2 (p − t) / N."""
    return g * 2 * r / r.size


mse = Loss("mse", _mse_fwd, _mse_bwd)


# --- Huber --------------------------------------------------------------------------------

def huber_loss(delta: float = 1.0) -> Loss:
    """Huber: quadratic near the target, linear beyond δ.

    ℓ(r) = ½ r² for |r| ≤ δ,  δ(|r| − ½ δ) otherwise;   r = p − t,  L = (1/N) Σ ℓ(r).
    Backward: ∂L/∂p = clip(r, −δ, δ) / N.
    """
    if not delta > 0:
        raise ValueError(f"huber: delta must be positive, got {delta!r}")
    name = "huber" if delta == 1.0 else f"huber(delta={delta})"

    def fwd(pred, target):
        target = _same_shape_target(name, pred, target)
        r = pred - target
        abs_r = jnp.abs(r)
        ell = jnp.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))
        return jnp.mean(ell), r

    def bwd(r, g):
        return g * jnp.clip(r, -delta, delta) / r.size

    return Loss(name, fwd, bwd)


huber = huber_loss(1.0)


# --- softmax cross-entropy ----------------------------------------------------------------

def _ce_targets(name: str, logits, target) -> Array:
    """Integer labels (shape = logits.shape[:-1]) or a distribution (shape = logits.shape)."""
    _check_pred(name, logits)
    target = jnp.asarray(target)
    n_classes = logits.shape[-1]
    if jnp.issubdtype(target.dtype, jnp.integer) and target.shape != logits.shape:
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"{name}: integer labels must have shape logits.shape[:-1] = "
                             f"{tuple(logits.shape[:-1])}, got {tuple(target.shape)}")
        try:  # concrete labels are checked here; traced ones cannot be (see _ce_fwd)
            lo, hi = int(target.min()), int(target.max())
        except jax.errors.ConcretizationTypeError:
            lo, hi = 0, 0
        if target.size and (lo < 0 or hi >= n_classes):
            raise ValueError(f"{name}: labels must lie in [0, {n_classes}), got labels "
                             f"from {lo} to {hi}")
        return target
    if target.shape != logits.shape:
        raise ValueError(f"{name}: expected integer labels of shape {tuple(logits.shape[:-1])} "
                         f"or one-hot/soft targets of shape {tuple(logits.shape)}, "
                         f"got {target.dtype} of shape {tuple(target.shape)}")
    return target.astype(logits.dtype)  # one-hot (integer or float) or soft targets


def _ce_fwd(logits, target):
    """L = −(1/B) Σ_b Σ_c t_bc log softmax(z_b)_c, with log softmax(z) = z − max z − log Σ e^{z − max z}.

    Integer labels t_b pick one term: −log softmax(z_b)_{t_b}. Under jit a label outside
    [0, C) cannot be refused; it then adds nothing to L nor to the gradient (fit refuses
    such labels before training).
    """
    target = _ce_targets("softmax_cross_entropy", logits, target)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    if jnp.issubdtype(target.dtype, jnp.integer):
        n_classes = logits.shape[-1]
        valid = (target >= 0) & (target < n_classes)
        picked = jnp.take_along_axis(log_p, jnp.clip(target, 0, n_classes - 1)[..., None],
                                     axis=-1)[..., 0]
        nll = -jnp.where(valid, picked, 0)
    else:
        nll = -jnp.sum(target * log_p, axis=-1)
    return jnp.mean(nll), (log_p, target)


def _ce_bwd(res, g):
    """∂L/∂z_b = (softmax(z_b) Σ_c t_bc − t_b) / B   (= (p − t)/B for a one-hot or a distribution)."""
    log_p, target = res
    if jnp.issubdtype(target.dtype, jnp.integer):  # one_hot of an invalid label is all zeros
        target = jax.nn.one_hot(target, log_p.shape[-1], dtype=log_p.dtype)
    rows = log_p.size // log_p.shape[-1]
    p = jnp.exp(log_p)
    return g * (p * jnp.sum(target, axis=-1, keepdims=True) - target) / rows


softmax_cross_entropy = Loss("softmax_cross_entropy", _ce_fwd, _ce_bwd)


# --- binary cross-entropy from logits -----------------------------------------------------

def _bce_fwd(logits, target):
    """L = (1/N) Σ [log(1 + eᶻ) − t z] = (1/N) Σ [max(z, 0) − t z + log(1 + e^{−|z|})]."""
    target = _same_shape_target("binary_cross_entropy", logits, target)
    z = logits
    ell = jnp.maximum(z, 0) - target * z + jnp.log1p(jnp.exp(-jnp.abs(z)))
    return jnp.mean(ell), (z, target)


def _bce_bwd(res, g):
    """∂L/∂z = (σ(z) − t) / N."""
    z, target = res
    return g * (jax.nn.sigmoid(z) - target) / z.size


binary_cross_entropy = Loss("binary_cross_entropy", _bce_fwd, _bce_bwd)


__all__ = ["Loss", "mse", "huber", "huber_loss", "softmax_cross_entropy", "binary_cross_entropy",
           "linear_softmax_cross_entropy"]
