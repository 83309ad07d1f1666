"""Every built-in layer, with a random configuration: the one registry the VJP test runs over.

A case is  name -> builder(rng) -> (layer, input_shape, needs_key); rng is a numpy Generator,
so each seed gives other shapes and sizes. New layers join by adding an entry.
"""

import zlib

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


def rng_for(name, seed):
    return np.random.default_rng([zlib.crc32(name.encode()), seed])
