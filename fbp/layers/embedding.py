"""Embedding: integer ids -> rows of a learned table."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fbp._layer import Layer, check_input, check_param_shapes, check_shape, default_float_dtype


def embedding(vocab_size: int, features: int, *,
              table_init=jax.nn.initializers.normal(stddev=1.0)) -> Layer:
    """y[..., :] = T[x[...], :]:  each integer id picks its row of the table T (vocab, features).

    x: integer ids of any shape (e.g. (batch, seq)), each in [0, vocab_size); y: x.shape +
    (features,). Negative ids count from the end, as in NumPy; an id outside
    [−vocab_size, vocab_size) reads a row of NaNs and gets no gradient.

    Backward, for g = ∂L/∂y: every position adds its gradient into the row it read,
        ∂T[v, :] = Σ_{positions with x = v} g[position, :]        (a scatter-add)
    and the ids, integers, have no gradient: ∂x is a float0 zero (what `jax.vjp` gives).
    """
    for what, v in (("vocab_size", vocab_size), ("features", features)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"embedding: {what} must be a positive int, got {v!r}")
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

    return Layer(name, init, fwd, bwd)


__all__ = ["embedding"]
