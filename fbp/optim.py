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
    """The step count, for a learning-rate schedule η(t)."""

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, like optax's states


def gd(learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
    """Plain gradient descent: the update is −η g, for a fixed η or a schedule η(t).

    Apply it with `optax.apply_updates(params, updates)`, i.e. θ ← θ + (−η g).
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
