"""The language model's last layer, which its loss may fuse with: logits = x W."""

from __future__ import annotations

import jax

from fbp._layer import Layer
from fbp.layers.dense import dense


def linear_softmax_head(vocab: int, *, w_init=jax.nn.initializers.glorot_uniform()):
    """Logits z = x W over a vocabulary (no bias): x (..., d), W (d, vocab), z (..., vocab).

    On its own it is `dense(vocab, use_bias=False)` (backward ∂W = xᵀg, ∂x = gWᵀ), and
    `predict` gives the logits. Trained with `fbp.losses.fused_softmax_cross_entropy(head)`
    as the last layer of a `serial`, the training pass never forms the (tokens × vocab)
    logits nor their gradient: the loss walks the vocabulary in chunks
    (`fbp.fused.linear_softmax_cross_entropy_fwd`/`_bwd`) and returns ∂x and ∂W itself.
    """
    layer = dense(vocab, use_bias=False, w_init=w_init)
    return Layer(f"linear_softmax_head({vocab})", layer.init, layer.fwd, layer.bwd)


__all__ = ["linear_softmax_head"]
