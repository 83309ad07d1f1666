"""Layers, each with its hand-written backward pass (`fbp.Layer`)."""

from fbp.layers.activations import (
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from fbp.layers.combinators import parallel, residual, serial
from fbp.layers.dense import dense
from fbp.layers.reshape import dropout, flatten

__all__ = [
    "dense", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus", "silu",
    "softmax", "log_softmax", "flatten", "dropout", "serial", "residual", "parallel",
]
