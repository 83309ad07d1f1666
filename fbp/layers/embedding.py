"""Embeddings: integer ids -> rows of a learned table; learned positions added to a sequence."""

from __future__ import annotations

import numbers
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fbp._layer import (
    Initializer,
    Layer,
    check_initializers,
    check_input,
    check_param_shapes,
    check_shape,
    default_float_dtype,
)


def embedding(vocab_size: int, features: int, *,
              table_init: Initializer = jax.nn.initializers.normal(stddev=1.0)) -> Layer:
    """y[..., :] = T[x[...], :]:  each integer id picks its row of the table T (vocab, features).

    x: integer ids of any shape (e.g. (batch, seq)), each in [0, vocab_size); y: x.shape +
    (features,). Negative ids count from the end, as in NumPy: the valid ids are
    [−vocab_size, vocab_size). `fit`, `evaluate` and `predict` refuse any other id before
    anything runs, when this embedding reads the net's input (`check_token_ids`). The layer
    itself does not read ids back (under `jit` it cannot): an id outside
    [−vocab_size, vocab_size) reads a row of NaNs (`jnp.take(..., mode="fill")`), so the
    loss turns NaN rather than silently wrong, and the backward drops that position's
    gradient (the scatter-add's `mode="drop"`): no row of T receives it.

    Backward, for g = ∂L/∂y: every position adds its gradient into the row it read,
        ∂T[v, :] = Σ_{positions with x = v} g[position, :]        (a scatter-add)
    and the ids, integers, have no gradient: ∂x is a float0 zero (what `jax.vjp` gives).

    Args:
        vocab_size: the number of rows of T (ids in [0, vocab_size)), a positive int.
        features: the width of each row, a positive int.
        table_init: initializer of T, called as
            `table_init(key, (vocab_size, features), dtype)`; default normal, stddev 1.

    Returns:
        A stateless `Layer`, `embedding(vocab_size, features)`: params
            `{"table": (vocab_size, features)}`; input integer ids of any shape S, output
            S + (features,).

    Raises:
        ValueError: `vocab_size` or `features` is not a positive int (Python or NumPy; not
            a bool). (`fwd` raises TypeError for ids that are not integers.)
        TypeError: `table_init` is not callable.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> layer = L.embedding(10, 4)
        >>> out_shape, params = layer.init(jax.random.key(0), (2, 3))   # (batch, seq) of ids
        >>> out_shape, jax.tree.map(jnp.shape, params)
        ((2, 3, 4), {'table': (10, 4)})
        >>> ids = jnp.array([[1, 2, 1], [0, 9, -1]])        # −1 counts from the end: row 9
        >>> y, res = layer.fwd(params, ids)
        >>> bool(jnp.array_equal(y[0, 0], params["table"][1])), bool(jnp.array_equal(y[1, 2], y[1, 1]))
        (True, True)
        >>> grads, dx = layer.bwd(params, res, jnp.ones((2, 3, 4)))
        >>> grads["table"][:, 0].tolist()                   # each row: how often it was read
        [1.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
        >>> dx.shape, dx.dtype == jax.dtypes.float0          # integer ids: no gradient
        ((2, 3), True)
    """
    for what, v in (("vocab_size", vocab_size), ("features", features)):
        if not _is_positive_int(v):
            raise ValueError(f"embedding: {what} must be a positive int, got {v!r}")
    check_initializers("embedding", table_init=table_init)
    vocab_size, features = int(vocab_size), int(features)
    name = f"embedding({vocab_size}, {features})"

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        return input_shape + (features,), {
            "table": table_init(key, (vocab_size, features), default_float_dtype())}

    # fwd :: (P, ids) -> (Y, res = ids)
    def fwd(params, ids, *, key=None, train=False):
        del key, train
        check_param_shapes(name, params, {"table": (vocab_size, features)})
        check_input(name, ids, floating=False)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"{name}: expected integer token ids, got dtype {ids.dtype} "
                            f"(shape {tuple(ids.shape)}); cast them, e.g. ids.astype(jnp.int32)")
        return jnp.take(params["table"], ids, axis=0, mode="fill"), ids

    # bwd :: (P, res, CT Y) -> (CT P, CT ids = float0 zeros)
    def bwd(params, ids, g):
        table = params["table"]
        d_table = jnp.zeros_like(table).at[ids.reshape(-1)].add(
            g.reshape(-1, features), mode="drop")
        return {"table": d_table}, np.zeros(ids.shape, jax.dtypes.float0)

    layer = Layer(name, init, fwd, bwd)
    _VOCAB[layer] = vocab_size
    return layer


def _is_positive_int(v) -> bool:
    """A positive Python or NumPy integer, not a bool (what `dense` takes as features)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) > 0


# the vocabulary size of each live embedding layer (Layers hash by identity; no name parsing)
_VOCAB: weakref.WeakKeyDictionary[Layer, int] = weakref.WeakKeyDictionary()


def input_embeddings(net: Layer, path: str = "") -> list[tuple[str, Layer]]:
    """(path, layer) of the embeddings that read `net`'s own input, found by walking
    `Layer.children`: the first layer of a `serial`, the inner layer of a `residual` or
    `remat`, every branch of a `parallel`. Paths read like `serial[0]` or
    `serial[0]/residual[0]`. A first layer that is no embedding (or a combinator of another
    kind) ends the walk with nothing found."""
    if net.children and net.kind in ("serial", "residual", "remat", "parallel"):
        branches = range(len(net.children)) if net.kind == "parallel" else (0,)
        return [found for i in branches for found in
                input_embeddings(net.children[i], f"{path}/{net.kind}[{i}]".lstrip("/"))]
    return [(path, net)] if net in _VOCAB else []


def check_token_ids(fn_name: str, net: Layer, x: ArrayLike) -> None:
    """ValueError, naming the layer and the ids found, if integer `x` holds an id outside
    [−vocab, vocab) of an embedding that reads it (`input_embeddings`); nothing for float x
    or a net whose input no embedding reads. Meant for host data, where data enters
    (`fit`, `evaluate`, `predict`): a jax.Array is read back to the host."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer) or x.size == 0:
        return
    found = input_embeddings(net)
    if not found:
        return
    lo, hi = x.min(), x.max()
    for path, layer in found:
        vocab = _VOCAB[layer]
        if lo < -vocab or hi >= vocab:
            bad = int(np.count_nonzero((x < -vocab) | (x >= vocab)))
            raise ValueError(
                f"{fn_name}: {f'{path} {layer.name}'.strip()} takes token ids in "
                f"[{-vocab}, {vocab}) (negative ones count from the end), but x holds ids "
                f"from {lo} to {hi}, {bad} of {x.size} out of range; is the vocabulary "
                f"larger than embedding's vocab_size={vocab}?")


def positional_embedding(
        max_len: int, *,
        table_init: Initializer = jax.nn.initializers.normal(stddev=0.02)) -> Layer:
    """Learned positions: y[b, t, :] = x[b, t, :] + P[t, :], for sequences (batch, T, d) with
    T ≤ max_len; P = params["table"], (max_len, d).

    Backward, for g = ∂L/∂y: each row of P gets the gradients of its position, summed over
    the batch, and the rows past T get none,
        ∂P[t] = Σ_b g[b, t]   (t < T),   0   (t ≥ T)
        ∂x = g

    Args:
        max_len: the longest sequence T the table covers, a positive int.
        table_init: initializer of P, called as `table_init(key, (max_len, d), dtype)`;
            default normal, stddev 0.02.

    Returns:
        A stateless `Layer`, `positional_embedding(max_len)`: params `{"table": (max_len,
            d)}`, d read off the last axis of `input_shape`; input (batch, T, d) with
            T ≤ max_len, output of the same shape.

    Raises:
        ValueError: `max_len` is not a positive int (Python or NumPy; not a bool); (from
            `init` and `fwd`) an input that is not (batch, T ≤ max_len, d).
        TypeError: `table_init` is not callable.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> layer = L.positional_embedding(8)
        >>> out_shape, params = layer.init(jax.random.key(0), (2, 5, 3))
        >>> out_shape, jax.tree.map(jnp.shape, params)
        ((2, 5, 3), {'table': (8, 3)})
        >>> x = jnp.zeros((2, 5, 3))
        >>> y, res = layer.fwd(params, x)
        >>> bool(jnp.array_equal(y[1], params["table"][:5]))   # every example gets P[:T]
        True
        >>> grads, dx = layer.bwd(params, res, jnp.ones((2, 5, 3)))
        >>> grads["table"][:, 0].tolist()                   # Σ_b g for t < 5; none past T
        [2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0]
    """
    if not _is_positive_int(max_len):
        raise ValueError(f"positional_embedding: max_len must be a positive int, got {max_len!r}")
    check_initializers("positional_embedding", table_init=table_init)
    max_len = int(max_len)
    name = f"positional_embedding({max_len})"

    def check_length(shape):
        if len(shape) != 3 or shape[1] > max_len:
            raise ValueError(f"{name}: expected an input (batch, T ≤ {max_len}, features), "
                             f"got shape {tuple(shape)}")

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        check_length(input_shape)
        return input_shape, {"table": table_init(key, (max_len, input_shape[2]),
                                                 default_float_dtype())}

    # fwd :: (P, X) -> (Y, res = nothing: T is g's sequence length)
    def fwd(params, x, *, key=None, train=False):
        del key, train
        check_input(name, x)
        check_length(x.shape)
        check_param_shapes(name, params, {"table": (max_len, x.shape[2])})
        check_input(name, x, dtype=params["table"].dtype)
        return x + params["table"][None, :x.shape[1], :], ()

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, res, g):
        del params, res
        d_table = jnp.pad(g.sum(axis=0), ((0, max_len - g.shape[1]), (0, 0)))
        return {"table": d_table}, g

    return Layer(name, init, fwd, bwd)


__all__ = ["embedding", "positional_embedding", "input_embeddings", "check_token_ids"]
