"""The language model's last layer, which its loss may fuse with: logits = x W."""

from __future__ import annotations

import numbers

import jax

from fbp._layer import Initializer, Layer, check_initializers
from fbp.layers.dense import affine


def linear_softmax_head(vocab: int, *,
                        w_init: Initializer = jax.nn.initializers.glorot_uniform()) -> Layer:
    """Logits z = x W over a vocabulary (no bias): x (..., d), W (d, vocab), z (..., vocab).

    On its own it computes what `dense(vocab, use_bias=False)` does (backward ∂W = xᵀg,
    ∂x = gWᵀ), under its own name, and `predict` gives the logits. Trained with
    `fbp.losses.fused_softmax_cross_entropy(head)` as the last layer of a `serial`, the
    training pass never forms the (tokens × vocab) logits nor their gradient: the loss
    walks the vocabulary in chunks
    (`fbp.fused.linear_softmax_cross_entropy_fwd`/`_bwd`) and returns ∂x and ∂W itself.

    Args:
        vocab: the vocabulary size, the number of logits per token, a positive int.
        w_init: initializer of W, called as `w_init(key, (d, vocab), dtype)`;
            default Glorot uniform.

    Returns:
        A stateless `Layer`, `linear_softmax_head(vocab)`: params `{"w": (d, vocab)}`, d read
            off the last axis of `input_shape`; input (..., d), output logits (..., vocab).

    Raises:
        ValueError: `vocab` is not a positive int (Python or NumPy; not a bool).
        TypeError: `w_init` is not callable. (`fwd` raises ValueError for params or an
            input of other shapes, TypeError for an input of another dtype.)

    Examples:
        >>> import jax, jax.numpy as jnp, fbp
        >>> from fbp import layers as L, losses
        >>> head = L.linear_softmax_head(10)
        >>> net = L.serial(L.embedding(10, 8), head)        # token ids -> d = 8 -> 10 logits
        >>> out_shape, params = net.init(jax.random.key(0), (2, 3))   # (batch, seq) of ids
        >>> out_shape, jax.tree.map(jnp.shape, params[1])   # the head's W: (d, vocab)
        ((2, 3, 10), {'w': (8, 10)})
        >>> h = params[0]["table"][:2]                      # two vectors of width d
        >>> bool(jnp.allclose(head.apply(params[1], h), h @ params[1]["w"]))
        True
        >>> ids, labels = jnp.array([[1, 2, 3], [4, 5, 6]]), jnp.array([[2, 3, 4], [5, 6, 7]])
        >>> loss = losses.fused_softmax_cross_entropy(head)   # never forms the logits
        >>> value, grads = fbp.value_and_grad(net, loss)(params, ids, labels)
        >>> auto_value, auto_grads = fbp.autodiff_value_and_grad(net, loss)(params, ids, labels)
        >>> bool(jnp.allclose(value, auto_value))
        True
        >>> bool(jnp.allclose(grads[1]["w"], auto_grads[1]["w"], atol=1e-6))
        True
    """
    if not isinstance(vocab, numbers.Integral) or isinstance(vocab, bool) or vocab <= 0:
        raise ValueError(f"linear_softmax_head: vocab must be a positive int, got {vocab!r}")
    check_initializers("linear_softmax_head", w_init=w_init)
    vocab = int(vocab)
    return affine(f"linear_softmax_head({vocab})", vocab, use_bias=False, w_init=w_init)


__all__ = ["linear_softmax_head"]
