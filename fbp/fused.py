"""Fused linear + softmax cross-entropy: the loss of logits x W without the logits.

For a language model's last layer, the logits x W (tokens × vocab) are the largest array
in the whole step; their gradient is another one. Here the vocabulary is walked in chunks
of `chunk_size` columns, forward and backward, so at most a (tokens × chunk_size) block
exists at any time:

    linear_softmax_cross_entropy_fwd(x, w, labels) -> (L, res)
    linear_softmax_cross_entropy_bwd(res, g)       -> (∂x, ∂W)          # hand-written
                                                      (the same chunk_size for both)
    linear_softmax_cross_entropy(x, w, labels)     -> L, with ∂x, ∂W under jax.grad
                                                      given by the bwd above
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

Array = jax.Array


def _check(x, w, labels, chunk_size) -> None:
    name = "linear_softmax_cross_entropy"
    for what, a in (("x", x), ("w", w), ("labels", labels)):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name}: expected {what} as an array, got {type(a).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating) or w.dtype != x.dtype:
        raise TypeError(f"{name}: expected x and w of one floating dtype, got x {x.dtype}, "
                        f"w {w.dtype}")
    if x.ndim != 2 or w.ndim != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(f"{name}: expected x (tokens, d) and w (d, vocab), got x "
                         f"{tuple(x.shape)} and w {tuple(w.shape)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.shape != x.shape[:1]:
        raise ValueError(f"{name}: expected integer labels of shape (tokens,) = "
                         f"{tuple(x.shape[:1])}, got {labels.dtype} of shape "
                         f"{tuple(labels.shape)}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"{name}: chunk_size must be a positive int, got {chunk_size!r}")


def _chunks(w, chunk_size):
    """W with zero columns appended up to n·c columns, c = min(chunk_size, vocab); and n, c."""
    vocab = w.shape[1]
    c = min(chunk_size, vocab)
    n = -(-vocab // c)
    return jnp.pad(w, ((0, 0), (0, n * c - vocab))), n, c


def _chunk_logits(x, w_padded, i, c, vocab):
    """z = x W[:, i·c : (i+1)·c], the chunk's column ids, and which of them are real."""
    w_c = lax.dynamic_slice_in_dim(w_padded, i * c, c, axis=1)
    cols = i * c + jnp.arange(c, dtype=i.dtype)
    return x @ w_c, w_c, cols, cols < vocab


# fwd :: (X, W, labels) -> (L, res = (x, w, labels, lse))
def linear_softmax_cross_entropy_fwd(
        x: Array, w: Array, labels: Array, *,
        chunk_size: int = 1024) -> tuple[Array, tuple[Array, Array, Array, Array]]:
    """L = (1/T) Σ_t [lse_t − z_t,y_t],  z = x W,  lse_t = log Σ_v e^{z_tv}.

    One pass over the vocabulary chunks keeps, per token, the running max m, the running
    sum s = Σ e^{z − m} (rescaled by e^{m_old − m_new} when the max grows) and the label's
    logit; then lse = m + log s. Padded columns of the last chunk count as −∞.

    Args:
        x: the head's input, (tokens, d), floating.
        w: the head's weight, (d, vocab), of x's dtype.
        labels: integer ids, (tokens,), in [0, vocab).
        chunk_size: vocabulary columns per chunk (the last chunk is padded).

    Returns:
        L, the scalar mean loss, and res, the residuals for
            `linear_softmax_cross_entropy_bwd`: (x, w, labels as int32, lse per token).

    Raises:
        TypeError: an input that is not an array, or x and w not of one floating dtype.
        ValueError: shapes other than x (tokens, d), w (d, vocab), labels (tokens,) of
            integers, or a `chunk_size` that is not a positive int.
    """
    _check(x, w, labels, chunk_size)
    labels = labels.astype(jnp.int32)  # chunk column ids are int32 too
    tokens, vocab = x.shape[0], w.shape[1]
    w_padded, n, c = _chunks(w, chunk_size)

    def step(carry, i):
        m, s, z_label = carry
        z, _, cols, real = _chunk_logits(x, w_padded, i, c, vocab)
        z = jnp.where(real[None, :], z, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(z, axis=1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[:, None]), axis=1)
        z_label = z_label + jnp.sum(jnp.where(cols[None, :] == labels[:, None], z, 0), axis=1)
        return (m_new, s, z_label), None

    init = (jnp.full((tokens,), -jnp.inf, x.dtype), jnp.zeros((tokens,), x.dtype),
            jnp.zeros((tokens,), x.dtype))
    (m, s, z_label), _ = lax.scan(step, init, jnp.arange(n, dtype=jnp.int32))
    lse = m + jnp.log(s)
    z_label = jnp.where((labels >= 0) & (labels < vocab), z_label, jnp.nan)  # as in
    return jnp.mean(lse - z_label), (x, w, labels, lse)  # softmax_cross_entropy: loud


# bwd :: (res, CT L) -> (CT X, CT W)
def linear_softmax_cross_entropy_bwd(res: tuple[Array, Array, Array, Array], g: ArrayLike, *,
                                     chunk_size: int = 1024) -> tuple[Array, Array]:
    """∂z = g (p − onehot(y)) / T with p = e^{z − lse}, chunk by chunk (z recomputed):

        ∂x += ∂z_chunk W_chunkᵀ,     ∂W_chunk = xᵀ ∂z_chunk.

    Args:
        res: the residuals `linear_softmax_cross_entropy_fwd` returned.
        g: the scalar cotangent of L (1 for a plain gradient).
        chunk_size: the same chunk size the forward used.

    Returns:
        (∂x, ∂W), shaped like x and w.
    """
    x, w, labels, lse = res
    tokens, vocab = x.shape[0], w.shape[1]
    w_padded, n, c = _chunks(w, chunk_size)

    def step(carry, i):
        dx, dw = carry
        z, w_c, cols, real = _chunk_logits(x, w_padded, i, c, vocab)
        p = jnp.where(real[None, :], jnp.exp(z - lse[:, None]), 0)
        onehot = (cols[None, :] == labels[:, None]).astype(x.dtype)
        dz = (p - onehot) * (g / tokens)
        dx = dx + dz @ w_c.T
        dw = lax.dynamic_update_slice_in_dim(dw, x.T @ dz, i * c, axis=1)
        return (dx, dw), None

    init = (jnp.zeros_like(x), jnp.zeros_like(w_padded))
    (dx, dw), _ = lax.scan(step, init, jnp.arange(n, dtype=jnp.int32))
    return dx, dw[:, :vocab]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(x, w, labels, chunk_size):
    return linear_softmax_cross_entropy_fwd(x, w, labels, chunk_size=chunk_size)[0]


def _fused_fwd(x, w, labels, chunk_size):
    return linear_softmax_cross_entropy_fwd(x, w, labels, chunk_size=chunk_size)


def _fused_bwd(chunk_size, saved, g):
    dx, dw = linear_softmax_cross_entropy_bwd(saved, g, chunk_size=chunk_size)
    return dx, dw, None  # integer labels: no cotangent


_fused.defvjp(_fused_fwd, _fused_bwd)


def linear_softmax_cross_entropy(x: Array, w: Array, labels: Array, *,
                                 chunk_size: int = 1024) -> Array:
    """Mean softmax cross-entropy of the logits x W for integer labels, never forming x W.

    x (tokens, d), w (d, vocab), labels (tokens,) in [0, vocab). Equals
    `softmax_cross_entropy(x @ w, labels)`; `jax.grad` through it (wrt x and w) runs the
    hand-written `linear_softmax_cross_entropy_bwd`. Memory: O(tokens · chunk_size)
    temporaries instead of O(tokens · vocab). Any vocab works: the last chunk is padded
    and its padding masked out.

    Args:
        x: the head's input, (tokens, d), floating.
        w: the head's weight, (d, vocab), of x's dtype.
        labels: integer ids, (tokens,), in [0, vocab).
        chunk_size: vocabulary columns per chunk.

    Returns:
        The scalar mean loss.

    Raises:
        TypeError: an input that is not an array, or x and w not of one floating dtype.
        ValueError: shapes other than x (tokens, d), w (d, vocab), labels (tokens,) of
            integers, or a `chunk_size` that is not a positive int.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import losses
        >>> from fbp.fused import linear_softmax_cross_entropy
        >>> x = jax.random.normal(jax.random.key(0), (6, 4))
        >>> w = jax.random.normal(jax.random.key(1), (4, 10))
        >>> labels = jnp.array([0, 3, 9, 1, 5, 7])
        >>> fused = linear_softmax_cross_entropy(x, w, labels, chunk_size=4)  # 4 + 4 + 2 columns
        >>> bool(jnp.isclose(fused, losses.softmax_cross_entropy(x @ w, labels)))
        True
        >>> dx, dw = jax.grad(linear_softmax_cross_entropy, (0, 1))(x, w, labels, chunk_size=4)
        >>> ref = jax.grad(lambda x, w: losses.softmax_cross_entropy(x @ w, labels), (0, 1))(x, w)
        >>> bool(jnp.allclose(dx, ref[0], atol=1e-6)), bool(jnp.allclose(dw, ref[1], atol=1e-6))
        (True, True)
    """
    _check(x, w, labels, chunk_size)
    return _fused(x, w, labels, chunk_size)


__all__ = ["linear_softmax_cross_entropy", "linear_softmax_cross_entropy_fwd",
           "linear_softmax_cross_entropy_bwd"]
