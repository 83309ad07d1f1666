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
from fbp.layers.attention import multi_head_attention, transformer_block
from fbp.layers.batch_norm import batch_norm
from fbp.layers.combinators import parallel, residual, serial
from fbp.layers.conv import conv2d
from fbp.layers.dense import dense
from fbp.layers.embedding import embedding, positional_embedding
from fbp.layers.head import linear_softmax_head
from fbp.layers.normalization import layer_norm
from fbp.layers.pooling import avg_pool, global_avg_pool, max_pool
from fbp.layers.reshape import dropout, flatten
from fbp.layers.wrap import from_function, remat

__all__ = [
    "dense", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus", "silu",
    "softmax", "log_softmax", "flatten", "dropout", "serial", "residual", "parallel",
    "conv2d", "max_pool", "avg_pool", "global_avg_pool", "layer_norm", "embedding",
    "positional_embedding", "multi_head_attention", "transformer_block", "batch_norm",
    "from_function", "remat", "linear_softmax_head",
]
