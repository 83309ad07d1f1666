"""Attention over blocks of keys (FlashAttention's algorithm, written for XLA): the forward
keeps O(T) per head instead of the (T × T) probabilities, and the backward recomputes them,
one (c × c) block at a time.

Arrays are (B, H, T, D), heads split, batch and head leading; q comes scaled by 1/√D. The sequence is cut into
n = ⌈T / c⌉ blocks of c positions (the last one padded; padded keys are masked out), read
in place with dynamic slices.

Forward, for query block i, over key blocks j (j ≤ i when causal: the blocks above the
diagonal are skipped), with S_ij = Q_i K_jᵀ:
    m ← max(m, rowmax S_ij);   ℓ ← ℓ e^{m_old − m} + rowsum e^{S_ij − m};
    A ← A e^{m_old − m} + e^{S_ij − m} V_j
    O_i = A / ℓ,   lse_i = m + log ℓ       (kept: O and lse, the per-row log-sum-exp)

Backward, with D = rowsum(dO ⊙ O), for key block j over query blocks i (i ≥ j if causal):
    P_ij = e^{S_ij − lse_i}                 (recomputed, exact)
    dV_j += P_ijᵀ dO_i,   dP_ij = dO_i V_jᵀ,   dS_ij = P_ij ⊙ (dP_ij − D_i)
    dQ_i += dS_ij K_j,    dK_j += dS_ijᵀ Q_i
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from fbp._layer import at_least_float32


def _geometry(t: int, chunk: int) -> tuple[int, int]:
    c = min(chunk, t)
    return c, -(-t // c)


def _padded(a, n: int, c: int):
    """a with its sequence axis (2) zero-padded to n·c."""
    extra = n * c - a.shape[2]
    return a if not extra else jnp.pad(a, [(0, 0), (0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 3))


def _block(a, b, c: int):
    """Block b (c positions) of a's sequence axis (2)."""
    return lax.dynamic_slice_in_dim(a, b * c, c, axis=2)


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


def forward(q, k, v, *, chunk: int, causal: bool):
    """(O, lse): O (B, H, T, D) in q's dtype, lse (B, H, T) in float32 or wider."""
    b, h, t, d = q.shape
    c, n = _geometry(t, chunk)
    dtype, acc = q.dtype, at_least_float32(q.dtype)
    q, k, v = (_padded(a.astype(acc), n, c) for a in (q, k, v))

    def query_block(_, i):
        qi = _block(q, i, c)

        def key_block(j, carry):
            m, ell, out = carry
            s = jnp.einsum("bhqd,bhkd->bhqk", qi, _block(k, j, c))
            s = jnp.where(_mask(i, j, c, t, causal), s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))  # finite: key 0 is always allowed
            p = jnp.exp(s - m_new[..., None])
            rescale = jnp.exp(m - m_new)
            ell = ell * rescale + jnp.sum(p, axis=-1)
            out = out * rescale[..., None] + jnp.einsum("bhqk,bhkd->bhqd", p, _block(v, j, c))
            return m_new, ell, out

        init = (jnp.full((b, h, c), -jnp.inf, acc), jnp.zeros((b, h, c), acc),
                jnp.zeros((b, h, c, d), acc))
        m, ell, out = _visit(key_block, init, n, (lambda j: j <= i) if causal else lambda j: None)
        return None, (out / ell[..., None], m + jnp.log(ell))

    _, (o, lse) = lax.scan(query_block, None, jnp.arange(n, dtype=jnp.int32))
    o = jnp.moveaxis(o, 0, 2).reshape(b, h, n * c, d)[:, :, :t]  # (n, B, H, c, D) → (B, H, T, D)
    lse = jnp.moveaxis(lse, 0, 2).reshape(b, h, n * c)[:, :, :t]  # (n, B, H, c) → (B, H, T)
    return o.astype(dtype), lse


def backward(q, k, v, o, lse, do, *, chunk: int, causal: bool):
    """(dQ, dK, dV), each (B, H, T, D); dQ is ∂L/∂(q scaled)."""
    b, h, t, d = q.shape
    c, n = _geometry(t, chunk)
    dtype, acc = q.dtype, at_least_float32(q.dtype)
    delta = jnp.einsum("bhtd,bhtd->bht", do.astype(acc), o.astype(acc))  # D = rowsum(dO ⊙ O)
    q, k, v, do = (_padded(a.astype(acc), n, c) for a in (q, k, v, do))
    lse, delta = (_padded(a[..., None], n, c) for a in (lse.astype(acc), delta))

    def key_block(dq, j):
        kj, vj = _block(k, j, c), _block(v, j, c)

        def query_block(i, carry):
            dk, dv, dq = carry
            qi, doi, lse_i, delta_i = (_block(a, i, c) for a in (q, do, lse, delta))
            s = jnp.einsum("bhqd,bhkd->bhqk", qi, kj)
            p = jnp.where(_mask(i, j, c, t, causal), jnp.exp(s - lse_i), 0)
            dv = dv + jnp.einsum("bhqk,bhqd->bhkd", p, doi)
            dp = jnp.einsum("bhqd,bhkd->bhqk", doi, vj)
            ds = p * (dp - delta_i)
            dq_i = _block(dq, i, c) + jnp.einsum("bhqk,bhkd->bhqd", ds, kj)
            dq = lax.dynamic_update_slice_in_dim(dq, dq_i, i * c, axis=2)
            dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds, qi)
            return dk, dv, dq

        dk, dv, dq = _visit(query_block, (jnp.zeros_like(kj), jnp.zeros_like(vj), dq), n,
                            (lambda i: i >= j) if causal else lambda i: None)
        return dq, (dk, dv)

    dq, (dk, dv) = lax.scan(key_block, jnp.zeros_like(q), jnp.arange(n, dtype=jnp.int32))
    dk, dv = (jnp.moveaxis(a, 0, 2).reshape(b, h, n * c, d) for a in (dk, dv))
    return tuple(a[:, :, :t].astype(dtype) for a in (dq, dk, dv))
