"""Backprop by hand, the same through `jax.grad`, and a bridge from one to the other.

    value_and_grad(net, loss)           forward → loss → loss.bwd → net.bwd   (no jax.grad)
    autodiff_value_and_grad(net, loss)  forward → loss → jax.value_and_grad   (the reference)
    custom_vjp(layer)                   a function whose JAX derivative is layer.bwd
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from fbp._layer import Layer, Params, cast_floating, fwd_with_state, stateful_layers
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
"""The names `precision=` takes, and the dtype forward and backward then run in (None: the
params' own dtype)."""


def compute_dtype(precision: str | None) -> DTypeLike | None:
    """The dtype forward and backward run in under a precision policy (None: the params').

    Args:
        precision: a key of `PRECISIONS`: None, "float32" or "fp32" (the params' own
            dtype), "bf16" or "bfloat16", "f16" or "float16".

    Returns:
        (type | None): `jnp.bfloat16` or `jnp.float16`, or None for the params' own dtype.

    Raises:
        ValueError: `precision` is not one of those names.

    Examples:
        >>> import jax.numpy as jnp
        >>> from fbp.backprop import compute_dtype
        >>> jnp.dtype(compute_dtype("bf16")).name, compute_dtype("float32")
        ('bfloat16', None)
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(k for k in PRECISIONS if k)} or "
                         f"None, got {precision!r}")
    return PRECISIONS[precision]


def l2_penalty(params: Params, strength: float) -> tuple[Array, Params]:
    """Weight decay as a loss term, and its gradient written out:

        R(θ) = λ/2 · Σ_W ‖W‖²          over the weight matrices and kernels (the leaves of
                                        rank ≥ 2); biases, scales and running statistics
        ∂R/∂W = λ W,  0 elsewhere       are not penalized.

    With plain gradient descent this is the same as decaying each W by (1 − ηλ) per step.

    Args:
        params: a parameter pytree (as `init` returns it).
        strength: λ, the penalty's strength (≥ 0; not checked here).

    Returns:
        (R, ∂R/∂params): the scalar penalty, in the weights' dtype (a float zero when there
            is no weight), and its gradient shaped like `params`.

    Examples:
        >>> import jax, jax.numpy as jnp, fbp
        >>> params = ({"w": jnp.array([[1.0, 2.0], [0.0, -1.0]]), "b": jnp.array([5.0, 5.0])},)
        >>> value, grads = fbp.l2_penalty(params, 0.1)
        >>> float(value)                        # 0.1/2 · (1 + 4 + 0 + 1)
        0.3...
        >>> grads[0]["w"].tolist(), grads[0]["b"].tolist()   # λW; biases are not penalized
        ([[0.1..., 0.2...], [0.0, -0.1...]], [0.0, 0.0])
        >>> auto = jax.grad(lambda p: fbp.l2_penalty(p, 0.1)[0])(params)
        >>> all(bool(jnp.allclose(a, b)) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(auto)))
        True
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


def _stateful_error(fn_name: str, net: Layer) -> ValueError:
    where = ", ".join(stateful_layers(net))
    return ValueError(
        f"{fn_name}: the net keeps running statistics ({where}); pass them, "
        f"f(params, x, y, state=state), and keep the new state it returns as its third value "
        "(fbp.train.make_step and fit do this for you)")


def _with_state(net: Layer, f: Callable, fn_name: str) -> GradFn:
    """f(params, x, y, *, key, train, state) -> (L, grads, state'), as the public gradient
    function: (L, grads) for a stateless net; (L, grads, state') for a stateful one, which
    must be given its state (so that the moved statistics are never dropped)."""
    if not net.stateful:
        def stateless(params, x, y, *, key=None, train=True, state=None):
            if state is not None and jax.tree_util.tree_leaves(state):
                raise ValueError(f"{fn_name}: {net.name} keeps no state, but state= was given")
            return f(params, x, y, key=key, train=train, state={})[:2]
        return stateless

    def stateful(params, x, y, *, key=None, train=True, state=None):
        if state is None:
            raise _stateful_error(fn_name, net)
        return f(params, x, y, key=key, train=train, state=state)
    return stateful


def value_and_grad(net: Layer, loss: Loss, *, precision: str | None = None,
                   l2: float = 0.0) -> GradFn:
    """The manual backprop: f(params, x, y, *, key=None, train=True) -> (L, ∂L/∂params).

    1. forward:  pred, res = net.fwd(params, x)      (each layer keeps what its bwd needs)
    2. loss:     L = loss(pred, y)
    3. backward: g = ∂L/∂pred = loss.bwd(...),  then net.bwd carries g from the output back
                 to the input, layer by layer, by the chain rule, collecting ∂L/∂θ.

    A stateful net (batch_norm) needs its state: f(params, x, y, state=state) -> (L,
    ∂L/∂params, new_state); without it f raises, naming the stateful layers.

    precision="bf16": forward and backward run in bfloat16 on a bfloat16 copy of the
    (float32 master) params; the loss and its gradient are computed in float32, and the
    parameter gradients come back in the params' own dtype, ready for a float32 update.
    Running statistics stay in float32.

    l2=λ adds the penalty λ/2·Σ‖W‖² (see `l2_penalty`) to L and λW to ∂L/∂W.

    Args:
        net: the network.
        loss: the loss, e.g. `fbp.losses.softmax_cross_entropy`.
        precision: None or "float32" (the params' dtype), or "bf16" (see above); the
            names are `PRECISIONS`' keys.
        l2: λ ≥ 0, the strength of the L2 penalty on the weights (default 0: none).

    Returns:
        f(params, x, y, *, key=None, train=True) -> (L, grads), grads shaped like params;
            for a stateful net f(params, x, y, *, key=None, train=True, state) ->
            (L, grads, new_state). `key` feeds dropout; train=False runs the evaluation
            forward. f can be jitted.

    Raises:
        TypeError: `net` is not a fbp.Layer or `loss` not a fbp.losses.Loss.
        ValueError: an unknown `precision`, a negative `l2`, or a fused loss whose head is
            not the net's last layer. f raises ValueError when a stateful net is called
            without `state=`, or a stateless one with a state.

    Examples:
        >>> import jax, jax.numpy as jnp, fbp
        >>> from fbp import layers as L, losses
        >>> net = L.serial(L.dense(8), L.tanh(), L.dense(3))
        >>> _, params = net.init(jax.random.key(0), (4, 5))
        >>> x = jax.random.normal(jax.random.key(1), (4, 5))
        >>> y = jnp.array([0, 2, 1, 0])
        >>> loss, grads = fbp.value_and_grad(net, losses.softmax_cross_entropy)(params, x, y)
        >>> jax.tree.map(jnp.shape, grads)      # one gradient per parameter, shaped like it
        ({'b': (8,), 'w': (5, 8)}, {}, {'b': (3,), 'w': (8, 3)})
        >>> auto = fbp.autodiff_value_and_grad(net, losses.softmax_cross_entropy)(params, x, y)[1]
        >>> all(jax.tree.leaves(jax.tree.map(lambda a, b: jnp.allclose(a, b, atol=1e-6), grads, auto)))
        True
    """
    f = training_pass(net, loss, grad="manual", precision=precision, l2=l2)
    return _with_state(net, f, "value_and_grad")


def autodiff_value_and_grad(net: Layer, loss: Loss, *, precision: str | None = None,
                            l2: float = 0.0) -> GradFn:
    """The same function as `value_and_grad`, differentiated by `jax.value_and_grad`.

    The reference the hand-written backward is checked against: the forward pass and the
    loss are the same code, only the gradient comes from JAX's autodiff.

    Args:
        net: the network.
        loss: the loss.
        precision: as in `value_and_grad`.
        l2: as in `value_and_grad`.

    Returns:
        f(params, x, y, *, key=None, train=True) -> (L, grads) (and the new state third,
            for a stateful net given `state=`), as `value_and_grad`'s.

    Raises:
        TypeError: `net` is not a fbp.Layer or `loss` not a fbp.losses.Loss.
        ValueError: an unknown `precision` or a negative `l2`; f, as in `value_and_grad`.

    Examples:
        >>> import jax, jax.numpy as jnp, fbp
        >>> from fbp import layers as L, losses
        >>> net = L.serial(L.dense(4), L.relu(), L.dense(1))
        >>> _, params = net.init(jax.random.key(0), (8, 3))
        >>> x, y = jnp.ones((8, 3)), jnp.zeros((8, 1))
        >>> f = fbp.autodiff_value_and_grad(net, losses.mse)
        >>> loss, grads = f(params, x, y)
        >>> bool(jnp.isclose(loss, fbp.value_and_grad(net, losses.mse)(params, x, y)[0]))
        True
    """
    f = training_pass(net, loss, grad="auto", precision=precision, l2=l2)
    return _with_state(net, f, "autodiff_value_and_grad")


def training_pass(net: Layer, loss: Loss, *, grad: str = "manual",
                  precision: str | None = None, l2: float = 0.0,
                  with_dx: bool = False) -> Callable:
    """f(params, x, y, *, key, train, state) -> (L, ∂L/∂params, new state) — and ∂L/∂x
    fourth with `with_dx`. `state` is the net's state ({} for a stateless net); a training
    pass moves it on. `grad` picks "manual" (the hand-written backward) or "auto"
    (jax.value_and_grad); nothing else differs. l2 > 0 adds `l2_penalty` to L (computed
    on the master parameters).

    The one training pass `value_and_grad`, `autodiff_value_and_grad`, `make_step` and
    `check_grads` are built on; it always takes and returns the state.

    Args:
        net: the network.
        loss: the loss.
        grad: "manual" (the hand-written backward) or "auto" (jax.value_and_grad).
        precision: as in `value_and_grad`.
        l2: λ ≥ 0, as in `value_and_grad`.
        with_dx: also return ∂L/∂x (for integer x, token ids: a float0 zero).

    Returns:
        f(params, x, y, *, key=None, train=True, state=None) -> (L, grads, new_state),
            and dx fourth with `with_dx`.

    Raises:
        TypeError: `net` is not a fbp.Layer or `loss` not a fbp.losses.Loss.
        ValueError: `grad` is neither "manual" nor "auto", an unknown `precision`, a
            negative `l2`, or a fused loss whose head is not the net's last layer.
    """
    _check_net_and_loss(net, loss)
    l2 = _check_l2(l2)
    if grad not in ("manual", "auto"):
        raise ValueError(f"grad must be 'manual' (hand-written backprop) or 'auto' (jax.grad), "
                         f"got {grad!r}")
    low = compute_dtype(precision)
    fused = _fused_pass(net, loss, low, l2, with_dx) if getattr(loss, "head", None) else None

    def forward(params, x, y, key, train, state):
        p, xl = cast_floating(params, low), cast_floating(x, low)
        pred, res, new_state = fwd_with_state(net, p, xl, key=key, train=train, state=state)
        value, loss_res = loss.fwd(_full(pred, low), y)
        return value, (pred, res, loss_res, new_state)

    def manual(params, x, y, *, key=None, train=True, state=None):
        value, (pred, res, loss_res, new_state) = forward(params, x, y, key, train, state)
        g = loss.bwd(loss_res, jnp.ones_like(value))  # ∂L/∂L = 1
        grads, dx = net.bwd(cast_floating(params, low), res, g.astype(pred.dtype))
        grads = jax.tree_util.tree_map(lambda d, p: d.astype(p.dtype), grads, params)
        if l2:
            penalty, d_penalty = l2_penalty(params, l2)
            value = value + penalty.astype(value.dtype)
            grads = jax.tree_util.tree_map(jnp.add, grads, d_penalty)
        return (value, grads, new_state, dx) if with_dx else (value, grads, new_state)

    def auto(params, x, y, *, key=None, train=True, state=None):
        def objective(params, x):
            value, (*_, new_state) = forward(params, x, y, key, train, state)
            if l2:
                value = value + l2_penalty(params, l2)[0].astype(value.dtype)
            return value, new_state
        if not with_dx or not jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact):
            (value, new_state), grads = jax.value_and_grad(objective, has_aux=True)(params, x)
            if with_dx:  # integer x (token ids): no gradient, a float0 zero as jax.vjp gives
                return value, grads, new_state, np.zeros(jnp.shape(x), jax.dtypes.float0)
            return value, grads, new_state
        (value, new_state), (grads, dx) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True)(params, x)
        return value, grads, new_state, dx

    if grad == "manual" and fused is not None:
        return fused
    return manual if grad == "manual" else auto


def _fused_pass(net: Layer, loss, low, l2: float, with_dx: bool) -> Callable:
    """The manual training pass of `serial(..., head)` with `fused_softmax_cross_entropy(head)`:
    the net up to the head, then the fused linear + cross-entropy on (h, W, labels), in
    vocabulary chunks; the logits (tokens × vocab) are never formed."""
    from fbp.fused import linear_softmax_cross_entropy_bwd, linear_softmax_cross_entropy_fwd
    from fbp.layers.combinators import serial

    if net.kind != "serial" or not net.children or net.children[-1] is not loss.head:
        raise ValueError(f"{loss.name}: the net must be a serial(...) whose last layer is this "
                         f"loss's head {loss.head.name}; got {net.name}")
    body = serial(*net.children[:-1]) if len(net.children) > 1 else None
    chunk = loss.chunk_size

    def fused(params, x, y, *, key=None, train=True, state=None):
        p = cast_floating(params, low)
        h, res, new_state = (x, None, state) if body is None else fwd_with_state(
            body, p[:-1], cast_floating(x, low), key=key, train=train,
            state=state[:-1] if body.stateful else None)
        w = p[-1]["w"]
        rows, labels = h.reshape(-1, h.shape[-1]), jnp.asarray(y).reshape(-1)
        wide = rows.dtype if low is None else jnp.float32  # the loss in float32 under bf16
        value, loss_res = linear_softmax_cross_entropy_fwd(rows.astype(wide), w.astype(wide),
                                                           labels, chunk_size=chunk)
        d_rows, d_w = linear_softmax_cross_entropy_bwd(loss_res, jnp.ones_like(value),
                                                       chunk_size=chunk)
        dh = d_rows.reshape(h.shape).astype(h.dtype)
        body_grads, dx = ((), dh) if body is None else body.bwd(p[:-1], res, dh)
        grads = (*body_grads, {"w": d_w})
        grads = jax.tree_util.tree_map(lambda d, p: d.astype(p.dtype), grads, params)
        if l2:
            penalty, d_penalty = l2_penalty(params, l2)
            value = value + penalty.astype(value.dtype)
            grads = jax.tree_util.tree_map(jnp.add, grads, d_penalty)
        if net.stateful:
            new_state = (*new_state, {})
        else:
            new_state = {}
        return (value, grads, new_state, dx) if with_dx else (value, grads, new_state)

    return fused


def _full(pred, low):
    """Under a low-precision policy the loss runs in float32 (no overflow in log-sum-exp)."""
    return pred if low is None else pred.astype(jnp.float32)


def custom_vjp(layer: Layer, *, train: bool = False) -> Callable[..., Array]:
    """f(params, x, key=None) -> y whose derivative under JAX is `layer.bwd`.

    `jax.grad`, `jax.vjp` and `jax.vmap` (e.g. per-example gradients) through `f` all
    run the hand-written backward, so fbp layers can sit inside any JAX program. (For a
    stateful layer use it in evaluation, with its state fixed: f(params, x, key, state).)

    Args:
        layer: any fbp layer (a whole net too).
        train: run the training forward (dropout on); refused for a stateful layer, whose
            moved statistics f could not return.

    Returns:
        f(params, x, key=None, state=None) -> y, differentiable in params and x.

    Raises:
        TypeError: `layer` is not a fbp.Layer.
        ValueError: train=True for a stateful layer.

    Examples:
        >>> import jax, jax.numpy as jnp, fbp
        >>> from fbp import layers as L
        >>> layer = L.dense(3)
        >>> _, params = layer.init(jax.random.key(0), (2, 4))
        >>> f = fbp.custom_vjp(layer)
        >>> x = jnp.ones((2, 4))
        >>> gx = jax.grad(lambda x: f(params, x).sum())(x)   # runs dense's bwd: ∂x = g Wᵀ
        >>> bool(jnp.allclose(gx, jnp.ones((2, 3)) @ params["w"].T))
        True
        >>> per_example = jax.vmap(jax.grad(lambda p, x: f(p, x[None]).sum()), (None, 0))
        >>> per_example(params, x)["w"].shape   # one ∂W per example, by dense's bwd
        (2, 4, 3)
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"custom_vjp: expected a fbp.Layer, got {type(layer).__name__}")
    if layer.stateful and train:
        raise ValueError(f"custom_vjp: {layer.name} keeps running statistics, which a training "
                         "pass moves and f would drop; use train=False here, or "
                         "fbp.value_and_grad(..., state=state), which returns them")

    @jax.custom_vjp
    def f(params, x, key=None, state=None):
        return fwd_with_state(layer, params, x, key=key, train=train, state=state)[0]

    # f_fwd :: (P, X, key, S) -> (Y, (P, res))
    def f_fwd(params, x, key=None, state=None):
        y, res, _ = fwd_with_state(layer, params, x, key=key, train=train, state=state)
        return y, (params, res)

    # f_bwd :: ((P, res), CT Y) -> (CT P, CT X, CT key = None, CT S = None)
    def f_bwd(saved, g):
        params, res = saved
        return (*layer.bwd(params, res, g), None, None)

    f.defvjp(f_fwd, f_bwd)
    return f


__all__ = ["value_and_grad", "autodiff_value_and_grad", "training_pass", "custom_vjp",
           "l2_penalty", "compute_dtype", "PRECISIONS"]
