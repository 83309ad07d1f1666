"""Ready-made networks built from `fbp.layers`.

    mlp(hidden, n_out, activation="relu", dropout=0.0) -> Layer

`fbp train` and `fbp explain` train and inspect the `mlp` built here; anything else is
written with `fbp.layers` directly (`L.serial(L.dense(64), L.relu(), L.dense(10))`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from fbp._layer import Layer

# The activations `mlp` takes by name: each is `fbp.layers.<name>()` with its defaults.
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus", "silu")
"""The activations `mlp` takes by name: each is `fbp.layers.<name>()` with its defaults."""


def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) > 0


def mlp(hidden: Sequence[int], n_out: int, activation: str = "relu",
        dropout: float = 0.0) -> Layer:
    """A multilayer perceptron: dense(h₁) → act → … → dense(h_k) → act → dense(n_out).

    Input (batch, features); the first dense layer's size follows from the input shape
    given to `init`. `mlp([128, 64], 10)` is the network `fbp train --hidden 128,64` trains.

    Args:
        hidden: the hidden layers' widths, first to last (empty: one dense layer, a linear
            model).
        n_out: the output width (the number of classes for a classifier; the output is
            logits, to go with `losses.softmax_cross_entropy`).
        activation: one of `ACTIVATIONS`, after every hidden dense layer (default "relu").
        dropout: in [0, 1); when non-zero, `layers.dropout(dropout)` follows every
            activation (default 0.0: none).

    Returns:
        The network, a `serial` of the layers above.

    Raises:
        TypeError: `hidden` is not a sequence of widths (a string, a single int).
        ValueError: a width or `n_out` that is not a positive int, an unknown activation,
            or a dropout outside [0, 1).

    Examples:
        >>> import jax
        >>> from fbp.models import mlp
        >>> net = mlp([16, 8], 3, activation="tanh")
        >>> net
        serial(dense(16), tanh, dense(8), tanh, dense(3))
        >>> out_shape, params = net.init(jax.random.key(0), (5, 4))   # a batch of 5, 4 features
        >>> out_shape, [p["w"].shape for p in params if p]             # activations have no params
        ((5, 3), [(4, 16), (16, 8), (8, 3)])
        >>> mlp([], 2), mlp([8], 2, dropout=0.1)
        (serial(dense(2)), serial(dense(8), relu, dropout(0.1), dense(2)))
        >>> mlp([16], 3, activation="swish")
        Traceback (most recent call last):
        ValueError: mlp: activation must be one of relu, leaky_relu, sigmoid, ..., got 'swish'
    """
    from fbp import layers as L

    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"mlp: hidden must be a sequence of widths such as [128, 64], "
                        f"got {hidden!r}")
    bad = [h for h in hidden if not _positive_int(h)]
    if bad:
        raise ValueError(f"mlp: hidden widths must be positive ints, got {list(hidden)!r}")
    if not _positive_int(n_out):
        raise ValueError(f"mlp: n_out must be a positive int, got {n_out!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: activation must be one of {', '.join(ACTIVATIONS)}, "
                         f"got {activation!r}")
    if (not isinstance(dropout, numbers.Real) or isinstance(dropout, bool)
            or not 0 <= dropout < 1):
        raise ValueError(f"mlp: dropout (the probability to drop) must be in [0, 1), "
                         f"got {dropout!r}")
    blocks = []
    for h in hidden:
        blocks += [L.dense(int(h)), getattr(L, activation)()]
        if dropout:
            blocks.append(L.dropout(dropout))
    return L.serial(*blocks, L.dense(int(n_out)))


__all__ = ["mlp", "ACTIVATIONS"]
