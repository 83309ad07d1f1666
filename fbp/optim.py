"""Gradient descent, written by hand as an optax `GradientTransformation`.

    θ ← θ − η g

`gd` is the whole update rule; anything from optax (adam, momentum SGD, weight decay,
clipping, schedules) has the same `init` / `update` shape and can stand in its place.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class GDState(NamedTuple):
    """The step count, for a learning-rate schedule η(t).

    Attributes:
        count: the number of updates made (an int32 scalar).
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, like optax's states


def gd(learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
    """Plain gradient descent: the update is −η g, for a fixed η or a schedule η(t).

    Apply it with `optax.apply_updates(params, updates)`, i.e. θ ← θ + (−η g).

    Args:
        learning_rate: η > 0, or an optax schedule: a function of the step count t
            (0, 1, ...) giving η(t).

    Returns:
        `init(params) -> GDState` and `update(grads, state, params=None) -> (updates,
            state)`; each update is −η g in the gradient's dtype.

    Raises:
        ValueError: a fixed `learning_rate` that is not positive.

    Examples:
        >>> import jax.numpy as jnp, optax
        >>> from fbp.optim import gd
        >>> params, grads = {"w": jnp.array([1.0, -2.0])}, {"w": jnp.array([0.5, 1.0])}
        >>> opt = gd(0.5)
        >>> state = opt.init(params)
        >>> updates, state = opt.update(grads, state)
        >>> optax.apply_updates(params, updates)["w"].tolist()      # θ − η g
        [0.75, -2.5]
        >>> sgd = optax.sgd(0.5)                                    # optax's, without momentum
        >>> bool(jnp.allclose(updates["w"], sgd.update(grads, sgd.init(params))[0]["w"]))
        True
        >>> opt = gd(lambda t: 0.5 ** t)                            # a schedule: η(t) = 0.5ᵗ
        >>> state = opt.init(params)
        >>> for _ in range(2):
        ...     updates, state = opt.update(grads, state)
        >>> updates["w"].tolist(), int(state.count)                 # step 2 used η(1) = 0.5
        ([-0.25, -0.5], 2)
        >>> gd(0.0)
        Traceback (most recent call last):
        ValueError: gd: learning_rate must be positive (or an optax schedule), got 0.0
    """
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(f"gd: learning_rate must be positive (or an optax schedule), "
                         f"got {learning_rate!r}")

    def init(params):
        del params
        return GDState(count=jnp.zeros([], jnp.int32))

    def update(grads, state, params=None):
        del params
        eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
        updates = jax.tree_util.tree_map(lambda g: -jnp.asarray(eta, g.dtype) * g, grads)
        return updates, GDState(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


__all__ = ["gd", "GDState"]
