"""The fused head's loss: softmax cross-entropy that, in a training pass, takes the head's
input and weight instead of the logits (`fbp.backprop.training_pass` does the pairing)."""

from __future__ import annotations

import dataclasses

from fbp._layer import Layer
from fbp.losses import Loss, softmax_cross_entropy


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class FusedLoss(Loss):
    """softmax cross-entropy on logits (evaluation, jax.grad's reference), and the fused
    linear + cross-entropy of `head` in the manual training pass."""

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
