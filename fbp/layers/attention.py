"""Multi-head self-attention, and the pre-LN transformer block built from it."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from fbp._layer import (
    Layer,
    check_input,
    check_param_shapes,
    check_shape,
    child_bwd,
    child_fwd,
    default_float_dtype,
)
from fbp.layers import _chunked
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


def multi_head_attention(num_heads: int, *, causal: bool = False, chunk_size: int | None = None,
                         w_init=jax.nn.initializers.glorot_uniform(),
                         b_init=jax.nn.initializers.zeros) -> Layer:
    """Self-attention over x (B, T, d) with h = num_heads heads of width d_h = d / h.

        Q = x W_q + b_q,  K = x W_k,  V = x W_v + b_v      (each (B, T, d), split in h heads)
        S = Q Kᵀ / √d_h                 per head, (T, T); if causal, S_ij = −∞ for j > i
        P = softmax(S)                  on the key axis j
        O = P V                         per head, heads merged back to (B, T, d)
        y = O W_o + b_o

    Params: "w_q", "w_k", "w_v", "w_o", each (d, d), and biases "b_q", "b_v", "b_o", each
    (d,). There is no key bias (as in Whisper): it would add q_i·b_k to every score of row
    i, which the softmax cancels, so its gradient is identically zero. The causal mask
    uses the dtype's most negative finite number, so exp gives exactly 0 there.

    Backward, for g = ∂L/∂y (per head where the arrays are per head):
        ∂W_o = Oᵀ g,  ∂b_o = Σ g,  ∂O = g W_oᵀ                          (dense)
        ∂V = Pᵀ ∂O
        ∂P = ∂O Vᵀ
        ∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))     (the softmax VJP; masked entries: P = 0 ⇒ 0)
        ∂Q = ∂S K / √d_h,   ∂K = ∂Sᵀ Q / √d_h
        ∂W_z = xᵀ ∂Z  for Z = Q, K, V;   ∂b_q = Σ ∂Q,  ∂b_v = Σ ∂V            (dense)
        ∂x = ∂Q W_qᵀ + ∂K W_kᵀ + ∂V W_vᵀ   (x feeds all three projections)

    chunk_size=c: the same function and gradients, but P is never formed whole. The forward
    runs an online softmax over blocks of c keys and keeps only O and the per-row
    log-sum-exp; the backward recomputes each (c × c) block of P from them (FlashAttention;
    see `fbp.layers._chunked`). Memory O(T·c) instead of O(T²); with `causal`, the blocks
    above the diagonal are skipped. T need not be a multiple of c.
    """
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads <= 0:
        raise ValueError(f"multi_head_attention: num_heads must be a positive int, "
                         f"got {num_heads!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
                                   or chunk_size <= 0):
        raise ValueError(f"multi_head_attention: chunk_size must be a positive int or None, "
                         f"got {chunk_size!r}")
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

    def project(params, z, a):
        """a W_z (+ b_z) on (B, T, d)."""
        y = a @ params[f"w_{z}"]
        return y + params[f"b_{z}"][None, None, :] if z in _BIASES else y

    def heads(a):
        """(B, T, d) -> (B, T, h, d_h)."""
        b, t, d = a.shape
        return a.reshape(b, t, num_heads, d // num_heads)

    # fwd :: (P, X) -> (Y, res)   (Q, K, V, O split in heads)
    #   dense:   res = (x, Q, K, V, P, O)
    #   chunked: res = (x, O, lse)   — O(T) per head: no P, and Q, K, V recomputed from x
    def fwd(params, x, *, key=None, train=False):
        del key, train
        w_q = params.get("w_q") if isinstance(params, dict) else None
        d = w_q.shape[0] if w_q is not None and w_q.ndim == 2 else x.shape[-1]
        check_param_shapes(name, params, expected_shapes(d))
        check_input(name, x)
        _check_bsd(name, x.shape)
        check_input(name, x, last_dim=d)
        _check_heads(name, d, num_heads)
        scale = 1 / math.sqrt(d // num_heads)
        q, k, v = (heads(project(params, z, x)) for z in "qkv")
        if chunk_size:
            o, lse = _chunked.forward(q * scale, k, v, chunk=chunk_size, causal=causal)
            return project(params, "o", o.reshape(x.shape)), (x, o, lse)
        s = jnp.einsum("bihe,bjhe->bhij", q, k) * scale
        if causal:
            t = x.shape[1]
            keep = jnp.tril(jnp.ones((t, t), dtype=bool))
            s = jnp.where(keep[None, None, :, :], s, jnp.finfo(s.dtype).min)
        p = jax.nn.softmax(s, axis=-1)
        o = jnp.einsum("bhij,bjhe->bihe", p, v)
        y = project(params, "o", o.reshape(x.shape))
        return y, (x, q, k, v, p, o)

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, res, g):
        x = res[0]
        b, t, d = x.shape
        scale = 1 / math.sqrt(d // num_heads)

        def rows(a):
            """(B, T, ...) -> (B·T, d): one row per position, as dense sees them."""
            return a.reshape(b * t, d)

        if chunk_size:
            _, o, lse = res
            q, k, v = (heads(project(params, z, x)) for z in "qkv")  # recomputed
        else:
            _, q, k, v, p, o = res
        grads = {"w_o": rows(o).T @ rows(g), "b_o": rows(g).sum(axis=0)}
        do = heads(g @ params["w_o"].T)
        if chunk_size:  # the blocks of P recomputed from lse, one at a time
            dq, dk, dv = _chunked.backward(q * scale, k, v, o, lse, do, chunk=chunk_size,
                                           causal=causal)
            dq = dq * scale
        else:
            dv = jnp.einsum("bhij,bihe->bjhe", p, do)                 # Pᵀ ∂O
            dp = jnp.einsum("bihe,bjhe->bhij", do, v)                 # ∂O Vᵀ
            ds = p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))  # softmax VJP
            dq = jnp.einsum("bhij,bjhe->bihe", ds, k) * scale         # ∂S K / √d_h
            dk = jnp.einsum("bhij,bihe->bjhe", ds, q) * scale         # ∂Sᵀ Q / √d_h
        dx = jnp.zeros_like(x)
        for z, dz in zip("qkv", (dq, dk, dv)):
            grads[f"w_{z}"] = rows(x).T @ rows(dz)
            if z in _BIASES:
                grads[f"b_{z}"] = rows(dz).sum(axis=0)
            dx = dx + dz.reshape(b, t, d) @ params[f"w_{z}"].T
        return grads, dx

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
