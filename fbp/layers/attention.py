"""Multi-head self-attention, and the pre-LN transformer block built from it."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from fbp._layer import (
    Initializer,
    Layer,
    after,
    check_initializers,
    check_input,
    check_param_shapes,
    check_shape,
    child_bwd,
    child_fwd,
    default_float_dtype,
)
from fbp.layers import _chunked
from fbp.layers._heads import merge_heads, split_heads
from fbp.layers.activations import gelu
from fbp.layers.combinators import residual, serial
from fbp.layers.dense import dense
from fbp.layers.normalization import layer_norm
from fbp.layers.reshape import dropout as dropout_layer

_PROJECTIONS = ("q", "k", "v", "o")
_BIASES = ("q", "v", "o")  # no key bias: see multi_head_attention


def _check_heads(name: str, d: int, num_heads: int) -> None:
    if d % num_heads:
        raise ValueError(f"{name}: num_heads = {num_heads} must divide the feature width, "
                         f"got features {d}")


def _check_bsd(name: str, shape) -> None:
    if len(shape) != 3:
        raise ValueError(f"{name}: expected an input of rank 3 (batch, seq, features), "
                         f"got shape {tuple(shape)}")


def _qkv(params):
    """W = [W_q | W_k | W_v] (d, 3d) and its bias [b_q | 0 | b_v]: the three projections as
    one matrix product."""
    w = jnp.concatenate([params["w_q"], params["w_k"], params["w_v"]], axis=1)
    b = jnp.concatenate([params["b_q"], jnp.zeros_like(params["b_q"]), params["b_v"]])
    return w, b


def _projections(params):
    return params["w_q"], params["w_k"], params["w_v"]


def _biases(params):
    return params["b_q"], params["b_v"]


def _causal(t: int):
    """(T, T) booleans, True where key j ≤ query i (built from iotas inside the program)."""
    return lax.broadcasted_iota(jnp.int32, (t, t), 0) >= lax.broadcasted_iota(jnp.int32, (t, t), 1)


def multi_head_attention(num_heads: int, *, causal: bool = False, chunk_size: int | None = None,
                         w_init: Initializer = jax.nn.initializers.glorot_uniform(),
                         b_init: Initializer = jax.nn.initializers.zeros) -> Layer:
    """Self-attention over x (B, T, d) with h = num_heads heads of width d_h = d / h.

        Q = x W_q + b_q,  K = x W_k,  V = x W_v + b_v      (each (B, T, d), split in h heads)
        S = Q Kᵀ / √d_h                 per head, (T, T); if causal, S_ij = −∞ for j > i
        P = softmax(S)                  on the key axis j
        O = P V                         per head, heads merged back to (B, T, d)
        y = O W_o + b_o

    Params: "w_q", "w_k", "w_v", "w_o", each (d, d), and biases "b_q", "b_v", "b_o", each
    (d,). There is no key bias (as in Whisper): it would add q_i·b_k to every score of row
    i, which the softmax cancels, so its gradient is identically zero.

    Computed as: `[Q | K | V] = x [W_q | W_k | W_v] + [b_q | 0 | b_v]` (one matrix product),
    the heads laid out (B·h, T, d_h) for the batched products (Q as (B·h, d_h, T), ∂O both
    ways, so that no product is of the Aᵀ B form, the slowest in XLA:CPU), Q scaled by
    1/√d_h first;
    P kept unnormalized, E = exp(S − rowmax S) (masked entries exactly 0), with the row
    factor r = 1 / rowsum E, so P = r ⊙ E and O = r ⊙ (E V).

    Backward, for g = ∂L/∂y (per head where the arrays are per head):
        ∂W_o = Oᵀ g,  ∂b_o = Σ g,  ∂O = g W_oᵀ                          (dense)
        ∂V = Pᵀ ∂O = Eᵀ (r ⊙ ∂O)
        ∂P = ∂O Vᵀ
        ∂S = P ⊙ (∂P − rowsum(P ⊙ ∂P))      (the softmax VJP)
           = E ⊙ (∂P' − r ⊙ rowsum(E ⊙ ∂P')),  ∂P' = r ⊙ ∂P = (r ⊙ ∂O) Vᵀ
             (masked entries: E = 0 ⇒ 0; a row with one allowed key: E = 1, r = 1 ⇒ exactly 0)
        ∂Q = ∂S K / √d_h,   ∂K = ∂Sᵀ Q / √d_h
        [∂W_q | ∂W_k | ∂W_v] = xᵀ [∂Q | ∂K | ∂V];   ∂b_q = Σ ∂Q,  ∂b_v = Σ ∂V
        ∂x = [∂Q | ∂K | ∂V] · [W_q | W_k | W_v]ᵀ   (x feeds all three projections)

    chunk_size=c: the same function and gradients, but P is never formed whole. The forward
    runs an online softmax over blocks of c keys and keeps only O and the per-row
    log-sum-exp; the backward recomputes each (c × c) block of P from them (FlashAttention;
    see `fbp.layers._chunked`), with the projections done block by block inside the loops
    (neither [Q | K | V] nor its gradient is held whole in the backward). Memory O(T·d + c²)
    per head instead of O(T²); with `causal`, the blocks above the diagonal are skipped. T
    need not be a multiple of c.

    Args:
        num_heads: h, a positive int that divides the feature width d.
        causal: mask the keys after each query (S_ij = −∞ for j > i): a decoder's attention.
        chunk_size: None (default) for the dense layer; a positive int c for the chunked,
            FlashAttention-style forward and backward (the same function and gradients).
            c trades memory for time: the scores take h·c² per block instead of h·T², and
            each block's products get smaller. Measured on 2 CPU cores (causal, 4 heads of
            64, batch 1, `benchmarks/results/cpu-attention`), c = 256 is 1.4× the dense
            layer's time at T = 512, level at 1024 and 0.6–0.7× from 2048 on (causal blocks
            above the diagonal are skipped, and no T × T array goes through memory), with
            27× less temporary memory at T = 4096.
        w_init: the initializer of the four (d, d) weights (Glorot uniform by default).
        b_init: the initializer of the three (d,) biases (zeros by default).

    Returns:
        A stateless `Layer` on (B, T, d) -> (B, T, d), params `w_q`, `w_k`, `w_v`, `w_o`
        (d, d) and `b_q`, `b_v`, `b_o` (d,), named `multi_head_attention(h[, causal][,
        chunk_size=c])`.

    Raises:
        ValueError: `num_heads` or `chunk_size` is not a positive int (chunk_size: or None).
            (`init` and `fwd` raise ValueError for an input that is not rank 3 or whose
            width h does not divide, or params of other shapes.)
        TypeError: `w_init` or `b_init` is not callable.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from fbp import layers as L
        >>> layer = L.multi_head_attention(2, causal=True)
        >>> _, params = layer.init(jax.random.key(0), (1, 5, 4))
        >>> sorted(params)
        ['b_o', 'b_q', 'b_v', 'w_k', 'w_o', 'w_q', 'w_v']
        >>> x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 5, 4)), jnp.float32)
        >>> y = layer.apply(params, x)
        >>> y.shape
        (1, 5, 4)
        >>> y2 = layer.apply(params, x.at[:, 3:].set(9.0))   # causal: a later token changes
        >>> bool(jnp.allclose(y[:, :3], y2[:, :3]))             # nothing before it
        True
        >>> chunked = L.multi_head_attention(2, causal=True, chunk_size=2)
        >>> bool(jnp.allclose(chunked.apply(params, x), y, atol=1e-6))   # the same function
        True
    """
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads <= 0:
        raise ValueError(f"multi_head_attention: num_heads must be a positive int, "
                         f"got {num_heads!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
                                   or chunk_size <= 0):
        raise ValueError(f"multi_head_attention: chunk_size must be a positive int or None, "
                         f"got {chunk_size!r}")
    check_initializers("multi_head_attention", w_init=w_init, b_init=b_init)
    name = (f"multi_head_attention({num_heads}{', causal' if causal else ''}"
            f"{f', chunk_size={chunk_size}' if chunk_size else ''})")

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        _check_bsd(name, input_shape)
        d = input_shape[-1]
        _check_heads(name, d, num_heads)
        dtype = default_float_dtype()
        params = {}
        for z, k in zip(_PROJECTIONS, jax.random.split(key, len(_PROJECTIONS))):
            w_key, b_key = jax.random.split(k)
            params[f"w_{z}"] = w_init(w_key, (d, d), dtype)
            if z in _BIASES:
                params[f"b_{z}"] = b_init(b_key, (d,), dtype)
        return input_shape, params

    def expected_shapes(d):
        return {**{f"w_{z}": (d, d) for z in _PROJECTIONS},
                **{f"b_{z}": (d,) for z in _BIASES}}

    # fwd :: (P, X) -> (Y, res)
    #   dense:   res = (x, (Q/√d_h)ᵀ as (B·h, d_h, T), K, V as (B·h, T, d_h), E, r, O rows)
    #   chunked: res = (x, O rows, lse)   — O(T) per head: no P; Q, K, V recomputed from x
    def fwd(params, x, *, key=None, train=False):
        del key, train
        w_q = params.get("w_q") if isinstance(params, dict) else None
        d = w_q.shape[0] if w_q is not None and w_q.ndim == 2 else x.shape[-1]
        check_param_shapes(name, params, expected_shapes(d))
        check_input(name, x)
        _check_bsd(name, x.shape)
        check_input(name, x, last_dim=d)
        _check_heads(name, d, num_heads)
        b, t, _ = x.shape
        if chunk_size:  # the projections inside the blocks' loops: see fbp.layers._chunked
            o, lse = _chunked.forward(x, _projections(params), _biases(params),
                                      heads=num_heads, chunk=chunk_size, causal=causal)
            o = o.reshape(b * t, d)
            y = o @ params["w_o"] + params["b_o"][None, :]
            return y.reshape(x.shape), (x, o, lse)
        scale = 1 / math.sqrt(d // num_heads)
        w, bias = _qkv(params)
        # Qᵀ per head, (d_h, T): the backward's ∂Kᵀ = Qᵀ ∂S is then a plain product
        qt, k, v = split_heads(x.reshape(b * t, d) @ w + bias[None, :], b, t, 3, num_heads,
                          transposed=(0,))
        qt = qt * scale
        s = jnp.einsum("bdi,bjd->bij", qt, k)                     # Q Kᵀ / √d_h
        if causal:
            s = jnp.where(_causal(t)[None], s, -jnp.inf)  # diagonal kept: rowmax finite
        e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        r = 1 / jnp.sum(e, axis=-1, keepdims=True)
        o = merge_heads(b, (e @ v) * r)
        y = o @ params["w_o"] + params["b_o"][None, :]
        return y.reshape(x.shape), (x, qt, k, v, e, r, o)

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, res, g):
        x, o = res[0], res[-2 if chunk_size else -1]
        b, t, d = x.shape
        g = g.reshape(b * t, d)
        grads = {"w_o": o.T @ g, "b_o": jnp.sum(g, axis=0)}
        if chunk_size:  # the blocks of P recomputed from lse, one at a time
            # dO after O: where g does not come from the forward (a given cotangent), XLA
            # would compute dO first and hold it through the forward (4 MiB of 24 at T = 4096)
            do = after(g, o) @ params["w_o"].T
            (dw_q, dw_k, dw_v), (db_q, db_v), dx = _chunked.backward(
                x, _projections(params), _biases(params), o.reshape(b, t, d), res[2],
                do.reshape(b, t, d), heads=num_heads, chunk=chunk_size, causal=causal)
            grads.update(w_q=dw_q, w_k=dw_k, w_v=dw_v, b_q=db_q, b_v=db_v)
            return grads, dx
        do = g @ params["w_o"].T
        x = x.reshape(b * t, d)
        scale = 1 / math.sqrt(d // num_heads)
        w, bias = _qkv(params)
        _, qt, k, v, e, r, _ = res
        # ∂O per head both ways, (T, d_h) and (d_h, T): no product below is then of the
        # Aᵀ B form, which XLA:CPU's batched dots run ~2x slower; and ∂P's product from
        # (T, d_h) fuses with the softmax VJP after it (∂P is not written out: 240 MiB
        # less at T = 4096, 4 heads)
        (dot,) = split_heads(do, b, t, 1, num_heads, transposed=(0,))
        (do,) = split_heads(do, b, t, 1, num_heads)
        dvt = (dot * jnp.swapaxes(r, 1, 2)) @ e                  # ∂Vᵀ = (r ⊙ ∂O)ᵀ E
        dp = jnp.einsum("bid,bjd->bij", do * r, v)               # r ⊙ ∂P = (r ⊙ ∂O) Vᵀ
        ds = e * (dp - r * jnp.sum(e * dp, axis=-1, keepdims=True))  # softmax VJP
        dq = ds @ k                                              # ∂S K
        dkt = qt @ ds                                            # ∂Kᵀ = Qᵀ ∂S / √d_h
        dqkv = merge_heads(b, dq * scale, dkt, dvt, transposed=(1, 2))  # (B·T, 3d)
        dw = x.T @ dqkv
        db = jnp.sum(dqkv, axis=0)
        grads.update(w_q=dw[:, :d], w_k=dw[:, d:2 * d], w_v=dw[:, 2 * d:],
                     b_q=db[:d], b_v=db[2 * d:])
        return grads, (dqkv @ w.T).reshape(b, t, d)

    return Layer(name, init, fwd, bwd)


def transformer_block(num_heads: int, mlp_ratio: int = 4, causal: bool = False,
                      dropout: float = 0.0, chunk_size: int | None = None) -> Layer:
    """Pre-LN transformer block on (B, T, d):

        h = x + MHA(LN₁(x))
        y = h + MLP(LN₂(h)),   MLP = dense(mlp_ratio·d) → gelu → dense(d)

    With `dropout` > 0, each branch's output passes through dropout(rate) before it is added
    (in training; the block then needs a key).

    Built from `serial`, `residual`, `layer_norm`, `multi_head_attention`, `dense` and
    `gelu`, for the d that `init` (or the input) brings; so its backward is theirs,
    composed: ∂h = g + MLP-branch.bwd(g), then ∂x = ∂h + attention-branch.bwd(∂h).
    Params: those of serial(residual(serial(LN₁, MHA)), residual(serial(LN₂, dense, gelu,
    dense))).

    Args:
        num_heads: the attention's h, a positive int that divides d.
        mlp_ratio: the MLP's hidden width as a multiple of d (default 4).
        causal: the attention's causal mask.
        dropout: the rate of dropout on each branch's output in training (0: none).
        chunk_size: the attention's chunk size (None: dense; see `multi_head_attention`).

    Returns:
        A stateless `Layer` on (B, T, d) -> (B, T, d).

    Raises:
        ValueError: `num_heads`, `mlp_ratio` or `chunk_size` is not a positive int, or
            `dropout` not in [0, 1).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> block = L.transformer_block(2, mlp_ratio=2, causal=True)
        >>> out_shape, params = block.init(jax.random.key(0), (1, 3, 4))
        >>> out_shape
        (1, 3, 4)
        >>> attention, mlp = params                 # the two residual branches
        >>> jax.tree.map(jnp.shape, mlp)            # LN₂, dense(2d), gelu, dense(d)
        ({'bias': (4,), 'scale': (4,)}, {'b': (8,), 'w': (4, 8)}, {}, {'b': (4,), 'w': (8, 4)})
    """
    if not isinstance(mlp_ratio, int) or isinstance(mlp_ratio, bool) or mlp_ratio <= 0:
        raise ValueError(f"transformer_block: mlp_ratio must be a positive int, got {mlp_ratio!r}")
    attention = multi_head_attention(num_heads, causal=causal,
                                     chunk_size=chunk_size)  # checks num_heads, chunk_size
    drop = dropout_layer(dropout) if dropout else None  # checks the rate
    name = (f"transformer_block({num_heads}, mlp_ratio={mlp_ratio}"
            f"{', causal' if causal else ''}{f', dropout={dropout}' if dropout else ''}"
            f"{f', chunk_size={chunk_size}' if chunk_size else ''})")

    def branch(*layers) -> Layer:
        return residual(serial(*layers, drop) if drop else serial(*layers))

    @functools.cache
    def block(d: int) -> Layer:
        return serial(branch(layer_norm(), attention),
                      branch(layer_norm(), dense(mlp_ratio * d), gelu(), dense(d)))

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        _check_bsd(name, input_shape)
        _check_heads(name, input_shape[-1], num_heads)
        return block(input_shape[-1]).init(key, input_shape)

    # fwd :: (P, X) -> (Y, res = the composition's res)
    def fwd(params, x, *, key=None, train=False):
        check_input(name, x)
        _check_bsd(name, x.shape)
        y, res, _ = child_fwd("transformer_block", 0, block(x.shape[-1]), params, x, key=key,
                              train=train, state=None)
        return y, res

    # bwd :: (P, res, CT Y) -> (CT P, CT X); d is g's last axis
    def bwd(params, res, g):
        return child_bwd("transformer_block", 0, block(g.shape[-1]), params, res, g)

    return Layer(name, init, fwd, bwd)


__all__ = ["multi_head_attention", "transformer_block"]
