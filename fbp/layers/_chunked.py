"""Attention over blocks of keys (FlashAttention's algorithm, written for XLA), with the
projections inside the loops: the forward keeps O(T) per head instead of the (T × T)
probabilities, and the backward recomputes them, one (c × c) block at a time.

x is (B, T, d); heads are h of width d_h = d / h, laid out heads major, (B·h, T, d_h): Q, K,
V and dO are transposed into it once, whole (in the backward K_j and V_j block by block), so
that each block's products are plain batched products over B·h. Taking the heads in place
from (B, T, h, d_h) instead made XLA:CPU copy the operands of every block's products; with
the transposed backward blocks below, this layout took forward + backward from 121 to 93 ms
(T = 2048, c = 256, 4 heads of 64). The sequence is cut into n = ⌈T / c⌉ blocks of c
positions (the last one padded; padded keys are masked out, padded queries get a zero
cotangent), read in place with dynamic slices.
Q = (x W_q + b_q) / √d_h,  K = x W_k,  V = x W_v + b_v.

Forward, for query block i (its Q_i projected from x_i there), over key blocks j (j ≤ i
when causal: the blocks above the diagonal are skipped), with S_ij = Q_i K_jᵀ:
    m ← max(m, rowmax S_ij);   ℓ ← ℓ e^{m_old − m} + rowsum e^{S_ij − m};
    A ← A e^{m_old − m} + e^{S_ij − m} V_j
    O_i = A / ℓ,   lse_i = m + log ℓ       (kept: O and lse, the per-row log-sum-exp)

Backward, with D = rowsum(dO ⊙ O), for key block j (K_j, V_j projected from x_j there) over
query blocks i (i ≥ j if causal):
    P_ij = e^{S_ij − lse_i}                 (recomputed, exact)
    dV_j += P_ijᵀ dO_i,   dP_ij = dO_i V_jᵀ,   dS_ij = P_ij ⊙ (dP_ij − D_i)
    dQ_i += dS_ij K_j,    dK_j += dS_ijᵀ Q_i
each block computed transposed (Sᵀ_ji = K_j Q_iᵀ, Pᵀ, dPᵀ, dSᵀ), so that dV_j and dK_j are
plain products Pᵀ dO_i and dSᵀ Q_i;
and, once block j's dK_j and dV_j are whole, their projections' backward at once:
    ∂W_k += x_jᵀ dK_j,  ∂W_v += x_jᵀ dV_j,  ∂b_v += Σ dV_j,  ∂x_j = dK_j W_kᵀ + dV_j W_vᵀ
and after the loop, for dQ (∂L/∂Q, so ∂L/∂(x W_q + b_q) = dQ / √d_h):
    ∂W_q = xᵀ dQ / √d_h,  ∂b_q = Σ dQ / √d_h,  ∂x += dQ W_qᵀ / √d_h

So neither pass holds [Q | K | V] or [∂Q | ∂K | ∂V] whole: the forward holds K and V, the
backward Q, dO, dQ and ∂x (each (B, T, d)), plus one block's scores.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from fbp._layer import after, at_least_float32
from fbp.layers._heads import merge_heads, split_heads


def _geometry(t: int, chunk: int) -> tuple[int, int]:
    c = min(chunk, t)
    return c, -(-t // c)


def _padded(a, n: int, c: int, axis: int):
    """a with its sequence axis zero-padded to n·c."""
    extra = n * c - a.shape[axis]
    if not extra:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, extra)
    return jnp.pad(a, pad)


def _block(a, b, c: int, axis: int = 1):
    """Block b (c positions) of a's sequence axis."""
    return lax.dynamic_slice_in_dim(a, b * c, c, axis=axis)


def _heads(a, h: int):
    """(B, T, d) -> (B·h, T, d_h), heads major (one transposing copy), so that every
    block's products below are plain batched products over B·h, with no copies of their own."""
    b, t, d = a.shape
    return split_heads(a.reshape(b * t, d), b, t, 1, h)[0]


def _rows(a, b: int):
    """(B·h, T, d_h) -> (B, T, d): `_heads` undone."""
    return merge_heads(b, a).reshape(b, a.shape[1], -1)


def _mask(i, j, c: int, t: int, causal: bool):
    """(c, c) booleans: which (query, key) pairs of blocks (i, j) are real and allowed."""
    rows = i * c + jnp.arange(c, dtype=jnp.int32)
    cols = j * c + jnp.arange(c, dtype=jnp.int32)
    keep = (cols < t)[None, :]
    if causal:
        keep = keep & (cols[None, :] <= rows[:, None])
    return keep


def _visit(body, carry, n: int, allowed):
    """carry ← body(b, carry) for the blocks b = 0..n−1 that `allowed(b)` lets through (all
    when it gives None): a scan with static bounds (so JAX can differentiate it too) whose
    skipped blocks run the empty branch of a cond — they cost nothing."""
    def step(carry, b):
        keep = allowed(b)
        if keep is None:
            return body(b, carry), None
        return lax.cond(keep, lambda c: body(b, c), lambda c: c, carry), None

    return lax.scan(step, carry, jnp.arange(n, dtype=jnp.int32))[0]


def _matmul(a, b, acc):
    """a @ b accumulated and returned in `acc` (float32 at least: bf16 blocks summed)."""
    return jnp.matmul(a, b, preferred_element_type=acc)


def forward(x, w, bias, *, heads: int, chunk: int, causal: bool):
    """(O, lse): O (B, T, d) in x's dtype (before W_o), lse (B, h, T) in float32 or wider.

    w = (W_q, W_k, W_v), each (d, d); bias = (b_q, b_v), each (d,)."""
    (w_q, w_k, w_v), (b_q, b_v) = w, bias
    b, t, d = x.shape
    c, n = _geometry(t, chunk)
    dtype, acc = x.dtype, at_least_float32(x.dtype)
    scale = 1 / math.sqrt(d // heads)
    xp = _padded(x, n, c, axis=1)
    k = _heads((xp @ w_k).astype(acc), heads)                      # K, V whole: every query
    v = _heads((xp @ w_v + b_v[None, None, :]).astype(acc), heads)  # block visits their blocks

    def query_block(carry, i):
        o_all, lse_all = carry
        qi = _heads((_block(xp, i, c) @ w_q + b_q[None, None, :]).astype(acc), heads) * scale

        def key_block(j, carry):
            m, ell, out = carry
            s = jnp.einsum("zqd,zkd->zqk", qi, _block(k, j, c))      # S_ij = Q_i K_jᵀ
            s = jnp.where(_mask(i, j, c, t, causal), s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))  # finite: key 0 is always allowed
            p = jnp.exp(s - m_new[..., None])
            rescale = jnp.exp(m - m_new)
            ell = ell * rescale + jnp.sum(p, axis=-1)
            out = out * rescale[..., None] + p @ _block(v, j, c)
            return m_new, ell, out

        z = b * heads
        init = (jnp.full((z, c), -jnp.inf, acc), jnp.zeros((z, c), acc),
                jnp.zeros((z, c, d // heads), acc))
        m, ell, out = _visit(key_block, init, n, (lambda j: j <= i) if causal else lambda j: None)
        o_i = _rows(out / ell[..., None], b)
        lse_i = (m + jnp.log(ell)).reshape(b, heads, c)
        o_all = lax.dynamic_update_slice_in_dim(o_all, o_i.astype(dtype), i * c, axis=1)
        lse_all = lax.dynamic_update_slice_in_dim(lse_all, lse_i, i * c, axis=2)
        return (o_all, lse_all), None

    init = (jnp.zeros((b, n * c, d), dtype), jnp.zeros((b, heads, n * c), acc))
    (o, lse), _ = lax.scan(query_block, init, jnp.arange(n, dtype=jnp.int32))
    return o[:, :t], lse[:, :, :t]


def backward(x, w, bias, o, lse, do, *, heads: int, chunk: int, causal: bool):
    """((∂W_q, ∂W_k, ∂W_v), (∂b_q, ∂b_v), ∂x) for dO = ∂L/∂O (B, T, d), O and lse from
    `forward`. The gradients come in the params' dtype, ∂x in x's.

    Each block is taken transposed, key rows by query columns (Sᵀ_ji = K_j Q_iᵀ): then
    dV_j and dK_j are plain products and only dQ_i's is of the Aᵀ B form, which XLA:CPU's
    batched dots run ~1.4x slower (measured at (4, 256, 64) blocks)."""
    (w_q, w_k, w_v), (b_q, b_v) = w, bias
    b, t, d = x.shape
    c, n = _geometry(t, chunk)
    dtype, acc = x.dtype, at_least_float32(x.dtype)
    scale = 1 / math.sqrt(d // heads)
    delta = jnp.sum((do.astype(acc) * o.astype(acc)).reshape(b, t, heads, d // heads), axis=-1)
    delta = _padded(jnp.transpose(delta, (0, 2, 1)), n, c, axis=2).reshape(b * heads, n * c)
    lse = _padded(lse.astype(acc), n, c, axis=2).reshape(b * heads, n * c)  # D, lse: (B·h, T)
    xp = _padded(x, n, c, axis=1)
    xq = after(xp, delta)  # Q is recomputed here in the backward, not hoisted into the forward
    q = _heads((xq @ w_q + b_q[None, None, :]).astype(acc), heads) * scale  # Q, dO whole: every
    do = _heads(_padded(do, n, c, axis=1).astype(acc), heads)  # key block visits their blocks

    def key_block(carry, j):
        dq, dx, dw_k, dw_v, db_v = carry
        xj = _block(xp, j, c)
        kj = _heads((xj @ w_k).astype(acc), heads)
        vj = _heads((xj @ w_v + b_v[None, None, :]).astype(acc), heads)

        def query_block(i, carry):
            dk, dv, dq = carry
            qi, doi = _block(q, i, c), _block(do, i, c)
            lse_i, delta_i = (_block(a, i, c)[:, None, :] for a in (lse, delta))
            st = jnp.einsum("zkd,zqd->zkq", kj, qi)                  # Sᵀ_ji = K_j Q_iᵀ
            pt = jnp.where(_mask(i, j, c, t, causal).T, jnp.exp(st - lse_i), 0)  # Pᵀ_ji
            dv = dv + pt @ doi                                        # dV_j += Pᵀ dO_i
            dpt = jnp.einsum("zkd,zqd->zkq", vj, doi)                 # dPᵀ = V_j dO_iᵀ
            dst = pt * (dpt - delta_i)                                # dSᵀ = Pᵀ ⊙ (dPᵀ − D_i)
            dq = lax.dynamic_update_slice_in_dim(                     # dQ_i += dS K_j
                dq, _block(dq, i, c) + jnp.einsum("zkq,zkd->zqd", dst, kj), i * c, axis=1)
            dk = dk + dst @ qi                                        # dK_j += dSᵀ Q_i
            return dk, dv, dq

        dk, dv, dq = _visit(query_block, (jnp.zeros_like(kj), jnp.zeros_like(vj), dq), n,
                            (lambda i: i >= j) if causal else lambda i: None)
        # dK_j, dV_j whole: their projections' backward now, x_j's rows of ∂x written once
        xj, dk, dv = (a.reshape(b * c, d) for a in (xj, _rows(dk, b).astype(dtype),
                                                     _rows(dv, b).astype(dtype)))
        dw_k = dw_k + _matmul(xj.T, dk, acc)
        dw_v = dw_v + _matmul(xj.T, dv, acc)
        db_v = db_v + jnp.sum(dv.astype(acc), axis=0)
        dxj = (dk @ w_k.T + dv @ w_v.T).reshape(b, c, d)
        return (dq, lax.dynamic_update_slice_in_dim(dx, dxj, j * c, axis=1),
                dw_k, dw_v, db_v), None

    wacc = jnp.zeros((d, d), acc)
    init = (jnp.zeros_like(q), jnp.zeros((b, n * c, d), dtype), wacc, wacc, jnp.zeros(d, acc))
    (dq, dx, dw_k, dw_v, db_v), _ = lax.scan(key_block, init, jnp.arange(n, dtype=jnp.int32))
    dq = (_rows(dq, b)[:, :t] * scale).astype(dtype).reshape(b * t, d)  # ∂L/∂(x W_q + b_q)
    dw_q = _matmul(x.reshape(b * t, d).T, dq, acc)
    dx = dx[:, :t] + (dq @ w_q.T).reshape(b, t, d)
    pdtype = w_q.dtype
    return ((dw_q.astype(pdtype), dw_k.astype(pdtype), dw_v.astype(pdtype)),
            (jnp.sum(dq.astype(acc), axis=0).astype(pdtype), db_v.astype(pdtype)), dx)
