"""Backprop by hand, the same through `jax.grad`, and a bridge from one to the other.

    value_and_grad(net, loss)           forward → loss → loss.bwd → net.bwd   (no jax.grad)
    autodiff_value_and_grad(net, loss)  forward → loss → jax.value_and_grad   (the reference)
    custom_vjp(layer)                   a function whose JAX derivative is layer.bwd
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from fbp._layer import Layer, Params
from fbp.losses import Loss

Array = jax.Array
GradFn = Callable[..., tuple[Array, Params]]


def _check_net_and_loss(net, loss) -> None:
    if not isinstance(net, Layer):
        raise TypeError(f"expected a fbp.Layer as the network, got {type(net).__name__}")
    if not isinstance(loss, Loss):
        raise TypeError(f"expected a fbp.losses.Loss, got {type(loss).__name__} "
                        "(e.g. fbp.losses.mse)")


PRECISIONS = {None: None, "float32": None, "fp32": None, "bf16": jnp.bfloat16,
              "bfloat16": jnp.bfloat16, "f16": jnp.float16, "float16": jnp.float16}


def compute_dtype(precision: str | None):
    """The dtype forward and backward run in under a precision policy (None: the params')."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(k for k in PRECISIONS if k)} or "
                         f"None, got {precision!r}")
    return PRECISIONS[precision]


def _to(dtype, tree):
    """Cast the floating leaves of a pytree (integer labels and keys stay as they are)."""
    if dtype is None:
        return tree
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def l2_penalty(params: Params, strength: float) -> tuple[Array, Params]:
    """Weight decay as a loss term, and its gradient written out:

        R(θ) = λ/2 · Σ_W ‖W‖²          over the weight matrices and kernels (the leaves of
                                        rank ≥ 2); biases, scales and running statistics
        ∂R/∂W = λ W,  0 elsewhere       are not penalized.

    With plain gradient descent this is the same as decaying each W by (1 − ηλ) per step.
    """
    weights = [w for w in jax.tree_util.tree_leaves(params) if w.ndim >= 2]
    value = 0.5 * strength * sum(jnp.sum(jnp.square(w)) for w in weights)
    grads = jax.tree_util.tree_map(
        lambda w: strength * w if w.ndim >= 2 else jnp.zeros_like(w), params)
    return jnp.asarray(value, jnp.result_type(*weights)) if weights else jnp.zeros(()), grads


def _check_l2(l2) -> float:
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 >= 0:
        raise ValueError(f"l2 must be a non-negative number (the penalty λ/2·Σ‖W‖²), got {l2!r}")
    return float(l2)


def value_and_grad(net: Layer, loss: Loss, *, precision: str | None = None,
                   l2: float = 0.0) -> GradFn:
    """The manual backprop: f(params, x, y, *, key=None, train=True) -> (L, ∂L/∂params).

    1. forward:  pred, res = net.fwd(params, x)      (each layer keeps what its bwd needs)
    2. loss:     L = loss(pred, y)
    3. backward: g = ∂L/∂pred = loss.bwd(...),  then net.bwd carries g from the output back
                 to the input, layer by layer, by the chain rule, collecting ∂L/∂θ.

    precision="bf16": forward and backward run in bfloat16 on a bfloat16 copy of the
    (float32 master) params; the loss and its gradient are computed in float32, and the
    parameter gradients come back in the params' own dtype, ready for a float32 update.

    l2=λ adds the penalty λ/2·Σ‖W‖² (see `l2_penalty`) to L and λW to ∂L/∂W.
    """
    f = training_pass(net, loss, grad="manual", precision=precision, l2=l2)
    return lambda params, x, y, *, key=None, train=True: f(params, x, y, key=key, train=train)[:2]


def autodiff_value_and_grad(net: Layer, loss: Loss, *, precision: str | None = None,
                            l2: float = 0.0) -> GradFn:
    """The same function as `value_and_grad`, differentiated by `jax.value_and_grad`."""
    f = training_pass(net, loss, grad="auto", precision=precision, l2=l2)
    return lambda params, x, y, *, key=None, train=True: f(params, x, y, key=key, train=train)[:2]


def training_pass(net: Layer, loss: Loss, *, grad: str = "manual",
                  precision: str | None = None, l2: float = 0.0) -> Callable:
    """f(params, x, y, *, key, train) -> (L, ∂L/∂params, params with running statistics
    moved by this pass — or None when the net keeps none). `grad` picks "manual" (the
    hand-written backward) or "auto" (jax.value_and_grad); nothing else differs.
    l2 > 0 adds `l2_penalty` to L (computed on the master parameters)."""
    _check_net_and_loss(net, loss)
    l2 = _check_l2(l2)
    if grad not in ("manual", "auto"):
        raise ValueError(f"grad must be 'manual' (hand-written backprop) or 'auto' (jax.grad), "
                         f"got {grad!r}")
    low = compute_dtype(precision)

    def forward(params, x, y, key, train):
        pred, res = net.fwd(_to(low, params), _to(low, x), key=key, train=train)
        value, loss_res = loss.fwd(_full(pred, low), y)
        stats = None if net.update_stats is None else net.update_stats(params, res)
        return value, (pred, res, loss_res, stats)

    def manual(params, x, y, *, key=None, train=True):
        value, (pred, res, loss_res, stats) = forward(params, x, y, key, train)
        g = loss.bwd(loss_res, jnp.ones_like(value))  # ∂L/∂L = 1
        grads, _ = net.bwd(_to(low, params), res, g.astype(pred.dtype))
        grads = jax.tree_util.tree_map(lambda d, p: d.astype(p.dtype), grads, params)
        if l2:
            penalty, d_penalty = l2_penalty(params, l2)
            value = value + penalty.astype(value.dtype)
            grads = jax.tree_util.tree_map(jnp.add, grads, d_penalty)
        return value, grads, stats

    def auto(params, x, y, *, key=None, train=True):
        def objective(params):
            value, (*_, stats) = forward(params, x, y, key, train)
            if l2:
                value = value + l2_penalty(params, l2)[0].astype(value.dtype)
            return value, stats
        (value, stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return value, grads, stats

    return manual if grad == "manual" else auto


def _full(pred, low):
    """Under a low-precision policy the loss runs in float32 (no overflow in log-sum-exp)."""
    return pred if low is None else pred.astype(jnp.float32)


def _split_static(res):
    """Split residuals into array leaves (traced) and everything else (static Python values)."""
    leaves, treedef = jax.tree_util.tree_flatten(res)
    is_array = [isinstance(leaf, (jax.Array, jnp.ndarray)) or hasattr(leaf, "aval")
                for leaf in leaves]
    arrays = [leaf for leaf, a in zip(leaves, is_array) if a]
    static = (treedef, is_array, [leaf for leaf, a in zip(leaves, is_array) if not a])
    return arrays, static


def _join_static(arrays, static):
    treedef, is_array, others = static
    arrays, others = iter(arrays), iter(others)
    return jax.tree_util.tree_unflatten(
        treedef, [next(arrays) if a else next(others) for a in is_array])


def custom_vjp(layer: Layer, *, train: bool = False) -> Callable[..., Array]:
    """f(params, x, key=None) -> y whose derivative under JAX is `layer.bwd`.

    `jax.grad`, `jax.vjp` and `jax.vmap` (e.g. per-example gradients) through `f` all
    run the hand-written backward, so fbp layers can sit inside any JAX program.
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"custom_vjp: expected a fbp.Layer, got {type(layer).__name__}")

    def f(params, x, key=None):
        static = {}  # non-array residuals (shapes, split sizes) of this call

        @jax.custom_vjp
        def call(params, x, key):
            return layer.apply(params, x, key=key, train=train)

        # call_fwd :: (P, X, key) -> (Y, (P, residual arrays))
        def call_fwd(params, x, key):
            y, res = layer.fwd(params, x, key=key, train=train)
            arrays, static["res"] = _split_static(res)
            return y, (params, arrays)

        # call_bwd :: ((P, residual arrays), CT Y) -> (CT P, CT X, CT key = None)
        def call_bwd(saved, g):
            params, arrays = saved
            grads, dx = layer.bwd(params, _join_static(arrays, static["res"]), g)
            return grads, dx, None

        call.defvjp(call_fwd, call_bwd)
        return call(params, x, key)

    return f
