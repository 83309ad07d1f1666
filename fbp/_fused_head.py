"""The fused head's loss: softmax cross-entropy that, in a training pass, takes the head's
input and weight instead of the logits (`fbp.backprop.training_pass` does the pairing)."""

from __future__ import annotations

import dataclasses

from fbp._layer import Layer
from fbp.losses import Loss, softmax_cross_entropy


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class FusedLoss(Loss):
    """softmax cross-entropy on logits (evaluation, jax.grad's reference), and the fused
    linear + cross-entropy of `head` in the manual training pass.

    Made by `fused_softmax_cross_entropy`; the fields of `Loss`, and:

    Attributes:
        head: the `linear_softmax_head` layer whose input and weight the training pass
            takes instead of the logits.
        chunk_size: vocabulary columns per chunk.
    """

    head: Layer | None = None
    chunk_size: int = 1024


def fused_softmax_cross_entropy(head: Layer, *, chunk_size: int = 1024) -> FusedLoss:
    """Mean softmax cross-entropy over the tokens, for a net `serial(..., head)` whose last
    layer is `head = fbp.layers.linear_softmax_head(vocab)`.

    `fit`, `make_step`, `fbp.value_and_grad` and `check_grads` (manual side) run the net up
    to the head, then `fbp.fused.linear_softmax_cross_entropy_fwd`/`_bwd` on (h, W, labels)
    in vocabulary chunks of `chunk_size`: memory O(tokens · chunk_size) instead of
    O(tokens · vocab). Called on logits (`evaluate`, `jax.grad`'s reference pass) it is
    `softmax_cross_entropy`. Labels: integer ids in [0, vocab), shaped like the logits
    without their last axis.

    Args:
        head: the net's last layer, `fbp.layers.linear_softmax_head(vocab)`.
        chunk_size: vocabulary columns per chunk (default 1024).

    Returns:
        The loss, named "fused_softmax_cross_entropy(head name)". A training pass with it
            raises ValueError unless the net is a `serial(...)` ending in `head`.

    Raises:
        TypeError: `head` is not a fbp.Layer.
        ValueError: `chunk_size` is not a positive int.

    Examples:
        >>> import jax, jax.numpy as jnp, fbp
        >>> from fbp import layers as L, losses
        >>> head = L.linear_softmax_head(5)
        >>> loss = losses.fused_softmax_cross_entropy(head, chunk_size=2)
        >>> logits, labels = jnp.array([[1.0, 2.0, 0.0, -1.0, 0.5]]), jnp.array([1])
        >>> bool(jnp.isclose(loss(logits, labels), losses.softmax_cross_entropy(logits, labels)))
        True
        >>> net = L.serial(L.dense(4), head)
        >>> _, params = net.init(jax.random.key(0), (3, 2))
        >>> x, y = jax.random.normal(jax.random.key(1), (3, 2)), jnp.array([0, 4, 2])
        >>> fused = fbp.value_and_grad(net, loss)(params, x, y)      # chunks of 2, 2 and 1 logits
        >>> plain = fbp.value_and_grad(net, losses.softmax_cross_entropy)(params, x, y)
        >>> all(bool(jnp.allclose(a, b, atol=1e-6)) for a, b in zip(jax.tree.leaves(fused),
        ...                                                          jax.tree.leaves(plain)))
        True
    """
    if not isinstance(head, Layer):
        raise TypeError(f"fused_softmax_cross_entropy: expected the head layer "
                        f"(fbp.layers.linear_softmax_head), got {type(head).__name__}")
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size <= 0:
        raise ValueError(f"fused_softmax_cross_entropy: chunk_size must be a positive int, "
                         f"got {chunk_size!r}")
    return FusedLoss(f"fused_softmax_cross_entropy({head.name})", softmax_cross_entropy.fwd,
                     softmax_cross_entropy.bwd, head=head, chunk_size=chunk_size)


__all__ = ["FusedLoss", "fused_softmax_cross_entropy"]
