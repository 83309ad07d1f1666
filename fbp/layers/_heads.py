"""Attention's head layout, shared by the dense and the chunked layer: rows (B·T, n·d) of
n projections side by side <-> n arrays (B·h, T, d_h), batch and head merged in front."""

from __future__ import annotations

import jax.numpy as jnp


def split_heads(a, b: int, t: int, n: int, num_heads: int, transposed: tuple[int, ...] = ()):
    """(B·T, n·d) rows -> n arrays (B·h, T, d_h): the heads split, batch and head merged in
    front (the layout XLA's batched dots run fastest on); the i-th in `transposed` comes as
    (B·h, d_h, T) instead."""
    dh = a.shape[-1] // (n * num_heads)
    a = a.reshape(b, t, n, num_heads, dh)
    out = []
    for i in range(n):
        if i in transposed:
            out.append(jnp.transpose(a[:, :, i], (0, 2, 3, 1)).reshape(b * num_heads, dh, t))
        else:
            out.append(jnp.transpose(a[:, :, i], (0, 2, 1, 3)).reshape(b * num_heads, t, dh))
    return tuple(out)


def merge_heads(b: int, *heads, transposed: tuple[int, ...] = ()):
    """n arrays (B·h, T, d_h) — (B·h, d_h, T) for the i-th in `transposed` — -> (B·T, n·d)
    rows: the heads merged back, side by side."""
    bh = heads[0].shape[0]
    rows = []
    for i, a in enumerate(heads):
        if i in transposed:
            dh, t = a.shape[1:]
            a = jnp.transpose(a.reshape(b, bh // b, dh, t), (0, 3, 1, 2))
        else:
            t, dh = a.shape[1:]
            a = jnp.transpose(a.reshape(b, bh // b, t, dh), (0, 2, 1, 3))
        rows.append(a.reshape(b * t, -1))
    return rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=1)
