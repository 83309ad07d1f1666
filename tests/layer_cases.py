"""Every built-in layer, with a random configuration: the one registry the VJP test runs over.

A case is  name -> builder(rng) -> (layer, input_shape, needs_key); rng is a numpy Generator,
so each seed gives other shapes and sizes. New layers join by adding an entry.
"""

import zlib

import jax
import jax.numpy as jnp
import numpy as np

from fbp import layers as L


def _batch_feat(rng):
    return (int(rng.integers(1, 6)), int(rng.integers(1, 9)))


def _act(make):
    return lambda rng: (make(), _batch_feat(rng), False)


CASES = {
    "dense": lambda rng: (L.dense(int(rng.integers(1, 9))), _batch_feat(rng), False),
    "dense_no_bias": lambda rng: (L.dense(int(rng.integers(1, 9)), use_bias=False),
                                  _batch_feat(rng), False),
    "linear_softmax_head": lambda rng: (L.linear_softmax_head(int(rng.integers(1, 9))),
                                        _batch_feat(rng), False),
    "dense_rank3": lambda rng: (L.dense(int(rng.integers(1, 9))),
                                (2, int(rng.integers(1, 5)), int(rng.integers(1, 7))), False),
    "relu": _act(L.relu),
    "leaky_relu": _act(lambda: L.leaky_relu(0.2)),
    "sigmoid": _act(L.sigmoid),
    "tanh": _act(L.tanh),
    "gelu": _act(L.gelu),
    "gelu_tanh": _act(lambda: L.gelu(approximate=True)),
    "elu": _act(L.elu),
    "softplus": _act(L.softplus),
    "silu": _act(L.silu),
    "softmax": _act(L.softmax),
    "log_softmax": _act(L.log_softmax),
    "flatten": lambda rng: (L.flatten(), (2, int(rng.integers(1, 4)), int(rng.integers(1, 4)), 3),
                            False),
    "dropout": lambda rng: (L.dropout(float(rng.uniform(0.1, 0.7))), _batch_feat(rng), True),
    "serial": lambda rng: (L.serial(L.dense(5), L.tanh(), L.dense(int(rng.integers(1, 6)))),
                           _batch_feat(rng), False),
    "residual": lambda rng: (L.residual(L.serial(L.dense(4), L.sigmoid(), L.dense(4))),
                             (3, 4), False),
    "parallel_concat": lambda rng: (L.parallel(L.dense(3), L.serial(L.dense(2), L.elu()),
                                               L.softplus()), _batch_feat(rng), False),
    "parallel_sum": lambda rng: (L.parallel(L.dense(4), L.serial(L.dense(4), L.relu()),
                                            merge="sum"), _batch_feat(rng), False),
    "nested": lambda rng: (L.serial(L.flatten(), L.dense(6),
                                    L.residual(L.serial(L.dense(6), L.gelu())),
                                    L.parallel(L.dense(2), L.dropout(0.3)), L.log_softmax()),
                           (3, 2, 2), True),
}


def _image(rng, channels=None):
    """(batch, height, width, channels), tiny."""
    return (int(rng.integers(1, 4)), int(rng.integers(3, 8)), int(rng.integers(3, 8)),
            int(channels or rng.integers(1, 5)))


def _window_padding(rng):
    """'SAME', 'VALID' or explicit ((lo, hi), (lo, hi)) with each side < 2."""
    kind = rng.integers(3)
    if kind == 2:
        return tuple((int(rng.integers(0, 2)), int(rng.integers(0, 2))) for _ in range(2))
    return ("SAME", "VALID")[kind]


def _conv2d(rng):
    kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    strides = (int(rng.integers(1, 3)), int(rng.integers(1, 4)))
    layer = L.conv2d(int(rng.integers(1, 5)), kernel, strides=strides,
                     padding=_window_padding(rng), dilation=(1, 2)[rng.integers(2)],
                     use_bias=bool(rng.integers(2)))
    return layer, (int(rng.integers(1, 4)), 7, 6, int(rng.integers(1, 5))), False


def _pool(make):
    def build(rng):
        window = (2, int(rng.integers(2, 4)))
        strides = (None, 1, (2, 1))[rng.integers(3)]
        return make(window, strides=strides, padding=_window_padding(rng)), _image(rng), False
    return build


def _seq(rng, width):
    """(batch, seq, width), tiny."""
    return (int(rng.integers(1, 4)), int(rng.integers(1, 6)), width)


def _attention(rng):
    heads = int(rng.integers(1, 4))
    layer = L.multi_head_attention(heads, causal=bool(rng.integers(2)))
    return layer, _seq(rng, heads * int(rng.integers(1, 3))), False


def _chunked_attention(rng):
    """T from 1 to 9 against chunks of 1 to 4: most T are no multiple of the chunk."""
    heads = int(rng.integers(1, 3))
    layer = L.multi_head_attention(heads, causal=bool(rng.integers(2)),
                                   chunk_size=int(rng.integers(1, 5)))
    return layer, (int(rng.integers(1, 3)), int(rng.integers(1, 10)),
                   heads * int(rng.integers(1, 3))), False


CASES.update({
    "conv2d": _conv2d,
    "max_pool": _pool(L.max_pool),
    "avg_pool": _pool(L.avg_pool),
    "global_avg_pool": lambda rng: (L.global_avg_pool(), _image(rng), False),
    "layer_norm": lambda rng: (L.layer_norm(), _seq(rng, int(rng.integers(3, 9))), False),
    "multi_head_attention": _attention,
    "multi_head_attention_chunked": _chunked_attention,
    "positional_embedding": lambda rng: (L.positional_embedding(int(rng.integers(5, 9))),
                                         _seq(rng, int(rng.integers(1, 7))), False),
    # a batch of 3 or more: with 2, x̂ = ±1 and ∂L/∂x vanishes up to ε, so a relative error
    # compares rounding noise with rounding noise
    "batch_norm": lambda rng: (L.batch_norm(0.9), (int(rng.integers(3, 7)), int(rng.integers(1, 6))),
                               False),
    "batch_norm_nhwc": lambda rng: (L.batch_norm(0.5), (2, 3, 2, int(rng.integers(1, 4))), False),
    "transformer_block": lambda rng: (L.transformer_block(2, mlp_ratio=2,
                                                          causal=bool(rng.integers(2)),
                                                          dropout=0.2), _seq(rng, 4), False),
    "remat": lambda rng: (L.remat(L.serial(L.dense(5), L.gelu(), L.dropout(0.3), L.dense(3))),
                          _batch_feat(rng), False),
    # no bias before batch_norm: its true gradient is 0, and float32 noise over 0 is no test
    "remat_batch_norm": lambda rng: (L.remat(L.serial(L.dense(4, use_bias=False),
                                                      L.batch_norm(0.8))),
                                     (int(rng.integers(3, 7)), 3), False),
    "from_function": lambda rng: (L.from_function(lambda x: jnp.sin(x) * x), _batch_feat(rng),
                                  False),
    "from_function_params": lambda rng: (L.from_function(
        lambda p, x: jnp.tanh(x @ p["w"]),
        init=lambda key, s: (s[:-1] + (3,), {"w": jax.random.normal(key, (s[-1], 3))})),
        _batch_feat(rng), False),
})

# Layers whose training pass differs from evaluation (dropout masks, batch statistics):
# checked with train=True as well.
TRAIN_DIFFERS = {"dropout", "nested", "batch_norm", "batch_norm_nhwc", "transformer_block",
                 "remat", "remat_batch_norm"}


def embedding_case(rng):
    """(layer, integer ids) for the one built-in layer that reads integers, negative ids too."""
    vocab = int(rng.integers(3, 9))
    ids = rng.integers(-vocab, vocab, (int(rng.integers(1, 4)), int(rng.integers(1, 5))))
    return L.embedding(vocab, int(rng.integers(1, 5))), ids


def rng_for(name, seed):
    return np.random.default_rng([zlib.crc32(name.encode()), seed])
