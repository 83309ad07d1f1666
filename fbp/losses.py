"""Losses L(pred, target) -> scalar, each with its hand-written gradient ∂L/∂pred.

A loss has the same two halves as a layer:

    fwd(pred, target) -> (value, res)
    bwd(res, g)       -> g · ∂L/∂pred          # g: the scalar cotangent, 1 for a plain gradient

and is called like a function: `loss(pred, target)`. Every loss is a mean, so its
size does not grow with the batch: over all elements for `mse`, `huber` and
`binary_cross_entropy`, over the rows (all axes but the class axis) for
`softmax_cross_entropy`, over the rows whose label is not `ignore_index` for
`softmax_cross_entropy_with_ignore(ignore_index)` (padding tokens).

Label values are checked where they are on the host: a NumPy (or list) target is checked
by the loss itself, and `fit`/`evaluate` check their data before anything runs. A
`jax.Array` target is never read back to the host (no device round trip, eagerly or under
`jit`); an out-of-range integer label in it makes the loss NaN (see `softmax_cross_entropy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fbp.fused import linear_softmax_cross_entropy

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Loss:
    """A loss: `fwd`, its hand-written `bwd`, and `__call__` for the value alone.

    ignore_index: for a loss of integer labels, the label that marks padding (it counts in
    neither the loss nor `evaluate`'s accuracy, and `fit` lets it through); None: none.

    A loss of one's own is the two functions; everything that takes a loss
    (`fbp.value_and_grad`, `fit`, `check_grads`) then runs its `bwd`.

    Attributes:
        name: how reports and errors name the loss ("mse").
        fwd: `fwd(pred, target) -> (value, res)`: the scalar loss and what `bwd` needs.
        bwd: `bwd(res, g) -> g · ∂L/∂pred`, shaped like `pred`; `g` is the scalar
            cotangent of the loss (1 for a plain gradient).
        ignore_index: the padding label of an integer-label loss, or None.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp.losses import Loss
        >>> def mae_fwd(pred, target):         # L = (1/N) Σ |p − t|
        ...     r = pred - target
        ...     return jnp.mean(jnp.abs(r)), r
        >>> def mae_bwd(r, g):                 # ∂L/∂p = sign(p − t) / N
        ...     return g * jnp.sign(r) / r.size
        >>> mae = Loss("mae", mae_fwd, mae_bwd)
        >>> pred, target = jnp.array([1.0, -2.0, 0.5]), jnp.zeros(3)
        >>> float(mae(pred, target))           # (1 + 2 + 0.5) / 3
        1.16666...
        >>> value, grad = mae.value_and_grad(pred, target)
        >>> grad.tolist()
        [0.3333333..., -0.3333333..., 0.3333333...]
        >>> bool(jnp.allclose(grad, jax.grad(mae)(pred, target)))   # bwd against autodiff
        True
    """

    name: str
    fwd: Callable[[Array, Array], tuple[Array, Any]]
    bwd: Callable[[Any, Array], Array]
    ignore_index: int | None = None

    def __call__(self, pred: Array, target: Array) -> Array:
        return self.fwd(pred, target)[0]

    def value_and_grad(self, pred: Array, target: Array) -> tuple[Array, Array]:
        """(L, ∂L/∂pred) by the hand-written gradient.

        Args:
            pred: the predictions (a floating array).
            target: the targets, as this loss takes them.

        Returns:
            (L, ∂L/∂pred): the scalar loss, and its gradient shaped like `pred`.
        """
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
"""Mean squared error over all elements.

    forward:   L = (1/N) Σ (p − t)²          (N: every element of pred)
    backward:  ∂L/∂p = 2 (p − t) / N

Called as `mse(pred, target)`; `mse.value_and_grad(pred, target)` adds the gradient.

Args:
    pred (jax.Array): the predictions, any shape, floating.
    target (jax.Array): the targets, the same shape as `pred` (no broadcasting); cast to
        `pred`'s dtype.

Returns:
    (jax.Array): the scalar loss, in `pred`'s dtype.

Raises:
    TypeError: `pred` is not a floating-point array.
    ValueError: `pred` and `target` differ in shape.

Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from fbp import losses
    >>> pred = jnp.array([[0.5, -1.0], [2.0, 0.0]])
    >>> target = jnp.array([[0.0, -1.0], [1.0, 1.0]])
    >>> float(losses.mse(pred, target))            # (0.25 + 0 + 1 + 1) / 4
    0.5625
    >>> bool(jnp.isclose(losses.mse(pred, target), optax.squared_error(pred, target).mean()))
    True
    >>> value, grad = losses.mse.value_and_grad(pred, target)
    >>> grad.tolist()                              # 2 (p − t) / N
    [[0.25, 0.0], [0.5, -0.5]]
    >>> bool(jnp.allclose(grad, jax.grad(losses.mse)(pred, target)))
    True
"""


# --- Huber --------------------------------------------------------------------------------

def huber_loss(delta: float = 1.0) -> Loss:
    """Huber: quadratic near the target, linear beyond δ.

    ℓ(r) = ½ r² for |r| ≤ δ,  δ(|r| − ½ δ) otherwise;   r = p − t,  L = (1/N) Σ ℓ(r).
    Backward: ∂L/∂p = clip(r, −δ, δ) / N.

    The loss it returns is called like `mse`: `loss(pred, target)`, a target shaped like
    `pred`.

    Args:
        delta: δ, where the quadratic turns linear (default 1.0, the loss `huber`).

    Returns:
        The Huber loss with this δ, named "huber" (δ = 1) or "huber(delta=δ)".

    Raises:
        ValueError: `delta` is not positive.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from fbp import losses
        >>> pred, target = jnp.array([0.5, 3.0, -2.0]), jnp.zeros(3)
        >>> loss = losses.huber_loss(delta=1.0)
        >>> float(loss(pred, target))      # (½·0.5² + (3 − ½) + (2 − ½)) / 3
        1.375
        >>> bool(jnp.isclose(loss(pred, target), optax.huber_loss(pred, target, delta=1.0).mean()))
        True
        >>> grad = loss.value_and_grad(pred, target)[1]
        >>> grad.tolist()                  # clip(r, −1, 1) / 3
        [0.1666666..., 0.3333333..., -0.3333333...]
        >>> bool(jnp.allclose(grad, jax.grad(loss)(pred, target)))
        True
        >>> losses.huber_loss(0.0)
        Traceback (most recent call last):
        ValueError: huber: delta must be positive, got 0.0
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
"""Huber loss with δ = 1: `huber_loss(1.0)`, quadratic for |p − t| ≤ 1, linear beyond.

    forward:   ℓ(r) = ½ r² for |r| ≤ 1,  |r| − ½ otherwise;   r = p − t,  L = (1/N) Σ ℓ(r)
    backward:  ∂L/∂p = clip(r, −1, 1) / N

Args:
    pred (jax.Array): the predictions, any shape, floating.
    target (jax.Array): the targets, the same shape as `pred`.

Returns:
    (jax.Array): the scalar loss.

Raises:
    TypeError: `pred` is not a floating-point array.
    ValueError: `pred` and `target` differ in shape.

Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from fbp import losses
    >>> pred, target = jnp.array([[0.2, -4.0], [1.5, 0.0]]), jnp.zeros((2, 2))
    >>> value, grad = losses.huber.value_and_grad(pred, target)
    >>> bool(jnp.isclose(value, optax.huber_loss(pred, target).mean()))
    True
    >>> bool(jnp.allclose(grad, jax.grad(losses.huber)(pred, target)))
    True
"""


# --- softmax cross-entropy ----------------------------------------------------------------

def _ce_targets(name: str, logits, target, ignore_index: int | None = None) -> Array:
    """Integer labels (shape = logits.shape[:-1]) or a distribution (shape = logits.shape).

    Label values are checked only when they are on the host (NumPy, lists): reading a
    jax.Array's values would cost a device round trip eagerly, and cannot be done under jit.
    """
    _check_pred(name, logits)
    on_host = not isinstance(target, jax.Array)  # numpy, lists, scalars; never a tracer
    target = np.asarray(target) if on_host else target
    n_classes = logits.shape[-1]
    if jnp.issubdtype(target.dtype, jnp.integer) and target.shape != logits.shape:
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"{name}: integer labels must have shape logits.shape[:-1] = "
                             f"{tuple(logits.shape[:-1])}, got {tuple(target.shape)}")
        if on_host:
            check_labels(name, target, n_classes, ignore_index)
        return jnp.asarray(target)
    if ignore_index is not None:
        raise ValueError(f"{name}: expected integer labels of shape "
                         f"{tuple(logits.shape[:-1])} (ignore_index needs labels), got "
                         f"{target.dtype} of shape {tuple(target.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"{name}: expected integer labels of shape {tuple(logits.shape[:-1])} "
                         f"or one-hot/soft targets of shape {tuple(logits.shape)}, "
                         f"got {target.dtype} of shape {tuple(target.shape)}")
    return jnp.asarray(target).astype(logits.dtype)  # one-hot (integer or float) or soft targets


def check_labels(name: str, labels: np.ndarray, n_classes: int,
                 ignore_index: int | None = None) -> None:
    """ValueError unless every label (on the host) lies in [0, n_classes) or is ignore_index."""
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= n_classes)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bad.any():
        allowed = f" or be ignore_index={ignore_index}" if ignore_index is not None else ""
        found = labels[bad]
        raise ValueError(f"{name}: labels must lie in [0, {n_classes}){allowed}; "
                         f"{found.size} of {labels.size} do not (from {found.min()} to "
                         f"{found.max()})")


def _pick_nll(log_p, target):
    """−log p[t] per row; NaN where t is outside [0, C) (a negative label too)."""
    n_classes = log_p.shape[-1]
    valid = (target >= 0) & (target < n_classes)
    picked = jnp.take_along_axis(log_p, jnp.clip(target, 0, n_classes - 1)[..., None],
                                 axis=-1)[..., 0]
    return -jnp.where(valid, picked, jnp.nan)


# fwd :: (Z, T) -> (L, res = (log p, T))
def _ce_fwd(logits, target):
    """L = −(1/B) Σ_b Σ_c t_bc log softmax(z_b)_c, with log softmax(z) = z − max z − log Σ e^{z − max z}.

    Integer labels t_b pick one term: −log softmax(z_b)_{t_b}. A label outside [0, C)
    (negative ones too) is refused when the labels are NumPy (and by fit/evaluate); in a
    jax.Array, where it is not checked, it makes L NaN — loud, as optax's loss and an
    embedding's out-of-range row are — and its row gets the gradient jax.grad gives for
    this forward: zero. Padding to leave out: `softmax_cross_entropy_with_ignore`.
    """
    target = _ce_targets("softmax_cross_entropy", logits, target)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    if jnp.issubdtype(target.dtype, jnp.integer):
        nll = _pick_nll(log_p, target)
    else:
        nll = -jnp.sum(target * log_p, axis=-1)
    return jnp.mean(nll), (log_p, target)


# bwd :: (res, CT L) -> CT Z
def _ce_bwd(res, g):
    """∂L/∂z_b = (softmax(z_b) Σ_c t_bc − t_b) / B   (= (p − t)/B for a one-hot or a distribution)."""
    log_p, target = res
    if jnp.issubdtype(target.dtype, jnp.integer):  # one_hot of an invalid label is all zeros
        target = jax.nn.one_hot(target, log_p.shape[-1], dtype=log_p.dtype)
    rows = log_p.size // log_p.shape[-1]
    p = jnp.exp(log_p)
    return g * (p * jnp.sum(target, axis=-1, keepdims=True) - target) / rows


softmax_cross_entropy = Loss("softmax_cross_entropy", _ce_fwd, _ce_bwd)
"""Softmax cross-entropy of logits, averaged over the rows (every axis but the last).

    forward:   L = −(1/B) Σ_b Σ_c t_bc log softmax(z_b)_c,
                   log softmax(z) = z − max z − log Σ e^{z − max z}
    backward:  ∂L/∂z_b = (softmax(z_b) Σ_c t_bc − t_b) / B
                       (= (p − t)/B for a one-hot target or a distribution)

Integer labels t_b pick one term: −log softmax(z_b)_{t_b}. A label outside [0, C)
(negative ones too) is refused when the labels are NumPy (and by fit/evaluate); in a
jax.Array, where it is not checked, it makes L NaN and its row gets a zero gradient.
Padding to leave out: `softmax_cross_entropy_with_ignore`.

Args:
    pred (jax.Array): the logits z, (..., C), floating.
    target (jax.Array | numpy.ndarray): integer labels in [0, C), shaped like the logits
        without their last axis; or one-hot or soft targets shaped like the logits.

Returns:
    (jax.Array): the scalar loss.

Raises:
    TypeError: the logits are not floating-point.
    ValueError: the target's shape fits neither form, or a NumPy label lies outside [0, C).

Examples:
    >>> import jax, jax.numpy as jnp, numpy as np, optax
    >>> from fbp import losses
    >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    >>> labels = jnp.array([0, 2])
    >>> value = losses.softmax_cross_entropy(logits, labels)
    >>> ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    >>> bool(jnp.isclose(value, ref))
    True
    >>> onehot = jax.nn.one_hot(labels, 3)       # one-hot (or soft) targets: the same loss
    >>> bool(jnp.isclose(losses.softmax_cross_entropy(logits, onehot), value))
    True
    >>> grad = losses.softmax_cross_entropy.value_and_grad(logits, labels)[1]
    >>> bool(jnp.allclose(grad, (jax.nn.softmax(logits) - onehot) / 2))    # (p − t) / B
    True
    >>> bool(jnp.allclose(grad, jax.grad(losses.softmax_cross_entropy)(logits, labels)))
    True
    >>> losses.softmax_cross_entropy(logits, np.array([0, 3]))
    Traceback (most recent call last):
    ValueError: softmax_cross_entropy: labels must lie in [0, 3); 1 of 2 do not (from 3 to 3)
"""


def softmax_cross_entropy_with_ignore(ignore_index: int = -100) -> Loss:
    """Cross-entropy of integer labels that leaves out the rows labelled `ignore_index`
    (padding tokens): the mean is over the N kept rows only.

        m_b = [t_b ≠ ignore_index],   N = max(Σ_b m_b, 1),
        L = −(1/N) Σ_b m_b log softmax(z_b)_{t_b}          (L = 0 when every row is padding)
    Backward:
        ∂L/∂z_b = m_b (softmax(z_b) − onehot(t_b)) / N     (zero rows for the padding)

    `ignore_index` may be any int, a class id too (e.g. a pad token 0), which then never
    counts. Any other label outside [0, C) is refused when the labels are NumPy (and by
    fit/evaluate); in a jax.Array it makes L NaN, as in `softmax_cross_entropy`.
    `evaluate`'s accuracy leaves the same rows out.

    The loss it returns takes logits (..., C) and integer labels shaped like the logits
    without their last axis (one-hot or soft targets are refused: the padding is a label).

    Args:
        ignore_index: the label of the rows to leave out (default -100, PyTorch's).

    Returns:
        The loss, named "softmax_cross_entropy(ignore_index=...)", with `ignore_index`
            set (so `fit` and `evaluate` know the padding label).

    Raises:
        ValueError: `ignore_index` is not an int.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import losses
        >>> loss = losses.softmax_cross_entropy_with_ignore(ignore_index=-100)
        >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0], [5.0, -5.0, 5.0]])
        >>> labels = jnp.array([0, 2, -100])          # the last row is padding
        >>> plain = losses.softmax_cross_entropy(logits[:2], labels[:2])   # the kept rows
        >>> bool(jnp.isclose(loss(logits, labels), plain))
        True
        >>> grad = loss.value_and_grad(logits, labels)[1]
        >>> grad[2].tolist()                          # padding gets no gradient
        [0.0, 0.0, 0.0]
        >>> bool(jnp.allclose(grad, jax.grad(loss)(logits, labels)))
        True
    """
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise ValueError(f"softmax_cross_entropy_with_ignore: ignore_index must be an int, "
                         f"got {ignore_index!r}")
    ignore_index = int(ignore_index)
    name = f"softmax_cross_entropy(ignore_index={ignore_index})"

    # fwd :: (Z, labels) -> (L, res = (log p, labels))
    def fwd(logits, labels):
        labels = _ce_targets(name, logits, labels, ignore_index)
        log_p = jax.nn.log_softmax(logits, axis=-1)
        keep = labels != ignore_index
        nll = jnp.where(keep, _pick_nll(log_p, jnp.where(keep, labels, 0)), 0)
        n = jnp.maximum(jnp.sum(keep), 1).astype(log_p.dtype)
        return jnp.sum(nll) / n, (log_p, labels)

    # bwd :: (res, CT L) -> CT Z
    def bwd(res, g):
        log_p, labels = res
        keep = labels != ignore_index
        n = jnp.maximum(jnp.sum(keep), 1).astype(log_p.dtype)
        # one_hot of a padding label (sent to −1) or of an out-of-range one is all zeros
        t = jax.nn.one_hot(jnp.where(keep, labels, -1), log_p.shape[-1], dtype=log_p.dtype)
        return g * (jnp.exp(log_p) * jnp.sum(t, axis=-1, keepdims=True) - t) / n

    return Loss(name, fwd, bwd, ignore_index=ignore_index)


# --- binary cross-entropy from logits -----------------------------------------------------

def _bce_fwd(logits, target):
    """L = (1/N) Σ [log(1 + eᶻ) − t z], log(1 + eᶻ) = logaddexp(0, z): stable for large |z|,
    and with no kink at z = 0 for jax.grad to differentiate wrongly (max(z, 0) + log(1 +
    e^{−|z|}) is the same function, but jax.grad gives it a slope of 1 at z = 0, not ½)."""
    target = _same_shape_target("binary_cross_entropy", logits, target)
    z = logits
    ell = jnp.logaddexp(jnp.zeros_like(z), z) - target * z
    return jnp.mean(ell), (z, target)


def _bce_bwd(res, g):
    """∂L/∂z = (σ(z) − t) / N."""
    z, target = res
    return g * (jax.nn.sigmoid(z) - target) / z.size


binary_cross_entropy = Loss("binary_cross_entropy", _bce_fwd, _bce_bwd)
"""Binary cross-entropy of logits z (a sigmoid inside), averaged over all elements.

    forward:   L = (1/N) Σ [log(1 + eᶻ) − t z] = (1/N) Σ [max(z, 0) − t z + log(1 + e^{−|z|})]
    backward:  ∂L/∂z = (σ(z) − t) / N

The second form is the one computed: no overflow for large |z|.

Args:
    pred (jax.Array): the logits z, any shape, floating (not probabilities).
    target (jax.Array): targets in [0, 1] (0/1 labels, or probabilities), the same
        shape as `pred`.

Returns:
    (jax.Array): the scalar loss.

Raises:
    TypeError: `pred` is not a floating-point array.
    ValueError: `pred` and `target` differ in shape.

Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> from fbp import losses
    >>> logits = jnp.array([[1.5, -0.5], [0.25, 3.0]])
    >>> target = jnp.array([[1.0, 0.0], [1.0, 0.0]])
    >>> value, grad = losses.binary_cross_entropy.value_and_grad(logits, target)
    >>> bool(jnp.isclose(value, optax.sigmoid_binary_cross_entropy(logits, target).mean()))
    True
    >>> bool(jnp.allclose(grad, (jax.nn.sigmoid(logits) - target) / 4))    # (σ(z) − t) / N
    True
    >>> bool(jnp.allclose(grad, jax.grad(losses.binary_cross_entropy)(logits, target)))
    True
"""


class _AttributeDocstrings:
    """doctest's `__test__` for this module: the docstrings written under `mse`, `huber`,
    `softmax_cross_entropy` and `binary_cross_entropy` (a string right after the
    assignment, where mkdocstrings reads an attribute's docstring), so that their Examples
    run with the others. Python drops those strings; they are read back from this file's
    source, only when doctest asks for them."""

    def items(self) -> list[tuple[str, str]]:
        import ast
        import inspect
        import sys

        body = ast.parse(inspect.getsource(sys.modules[__name__])).body
        return [(stmt.targets[0].id, after.value.value) for stmt, after in zip(body, body[1:])
                if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)]


__test__ = _AttributeDocstrings()

__all__ = ["Loss", "mse", "huber", "huber_loss", "softmax_cross_entropy",
           "softmax_cross_entropy_with_ignore", "binary_cross_entropy",
           "linear_softmax_cross_entropy"]

# the fused head's loss subclasses Loss, so it is defined after it (fbp/_fused_head.py)
from fbp._fused_head import FusedLoss, fused_softmax_cross_entropy  # noqa: E402

__all__ += ["FusedLoss", "fused_softmax_cross_entropy"]
