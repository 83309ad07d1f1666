"""Pooling on NHWC images: max, average, and global average.

A window of size (k_h, k_w) slides with strides (s_h, s_w) over the padded input x̃;
output position (p, q) sees x̃[p·s_h + i, q·s_w + j] for the window offsets (i, j)
(geometry as in `fbp.layers.conv`). Channels and batch are pooled independently.
Both backward passes visit the window offsets one by one: offset (i, j) of every window
is the strided slice x̃[i::s_h, j::s_w] (cut to the output size; `window_view`), and its
gradient goes back to that same slice (`window_spread`: s − 1 zeros between entries);
the offsets' parts are summed, which XLA fuses into one pass (no scatter). max_pool with
windows that tile the input (strides = window, the default) writes each (k_h, k_w) block
of ∂x̃ directly instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from fbp._layer import (
    Layer,
    check_input,
    check_no_params,
    check_shape,
    residual_shape,
    shape_residual,
)
from fbp.layers.conv import (
    _check_nhwc,
    _padding_arg,
    _pair,
    window_out_hw,
    window_pads,
    window_spread,
    window_view,
)


def _offsets(window):
    """The window offsets (i, j), row-major."""
    return [(i, j) for i in range(window[0]) for j in range(window[1])]


def _pool_layer(kind: str, window, strides, padding, fwd, bwd) -> Layer:
    """A parameter-free NHWC pooling layer from fwd :: (x, pads) -> (y, res) and
    bwd :: (res, g, pads_for) -> dx, where pads_for(x's height and width) gives the explicit
    padding again (the residual keeps x, or its shape)."""
    name = f"{kind}({window})"
    window = _pair(name, "window", window)
    strides = window if strides is None else _pair(name, "strides", strides)
    padding = _padding_arg(name, padding)
    if not isinstance(padding, str) and any(
            lo >= k or hi >= k for k, (lo, hi) in zip(window, padding)):
        raise ValueError(f"{name}: explicit padding {padding} must be smaller than the window "
                         f"{window} on each side (a window of padding alone has no input)")
    geometry = (window, strides)

    def init(key, input_shape):
        del key
        input_shape = check_shape(name, input_shape)
        _check_nhwc(name, input_shape)
        n, h, w, c = input_shape
        pads = window_pads(name, padding, (h, w), window, strides)
        return (n, *window_out_hw((h, w), window, strides, pads), c), {}

    def pads_for(in_hw):
        return window_pads(name, padding, in_hw, window, strides)

    def layer_fwd(params, x, *, key=None, train=False):
        del key, train
        check_no_params(name, params)
        check_input(name, x)
        _check_nhwc(name, x.shape)
        return fwd(x, pads_for(x.shape[1:3]), *geometry)

    def layer_bwd(params, res, g):
        del params
        return {}, bwd(res, g, pads_for, *geometry)

    return Layer(name, init, layer_fwd, layer_bwd)


def _tile_windows(winner, g, window, padded_hw):
    """∂x̃ for windows that tile x̃ (strides = window): block (p, q) of ∂x̃, (k_h, k_w), holds
    g[n, p, q, c] at its offset winner[n, p, q, c] (row-major) and zeros elsewhere; rows and
    columns past the last window are zero. One elementwise pass over ∂x̃."""
    (kh, kw), (n, m_h, m_w, c) = window, g.shape
    shape = (1, 1, kh, 1, kw, 1)   # (n, p, i, q, j, c)
    offset = lax.broadcasted_iota(jnp.int32, shape, 2) * kw + lax.broadcasted_iota(
        jnp.int32, shape, 4)
    blocks = jnp.where(winner[:, :, None, :, None, :] == offset, g[:, :, None, :, None, :], 0)
    blocks = blocks.reshape(n, m_h * kh, m_w * kw, c)
    return jnp.pad(blocks, ((0, 0), (0, padded_hw[0] - m_h * kh), (0, padded_hw[1] - m_w * kw),
                            (0, 0)))


def _pad_nhwc(x, pads, value):
    return jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)


def _crop_nhwc(xp, pads, in_hw):
    (lo_h, _), (lo_w, _) = pads
    return xp[:, lo_h:lo_h + in_hw[0], lo_w:lo_w + in_hw[1], :]


def max_pool(window: int | Sequence[int], *, strides: int | Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> Layer:
    """y[n, p, q, c] = max_{i, j} x̃[n, p·s_h + i, q·s_w + j, c]   (x̃ padded with −∞).

    strides default to the window (non-overlapping windows).

    Backward: each window's gradient goes to its arg-max, the first maximum in row-major
    window order (as XLA picks); overlapping windows add up:
        ∂x̃[n, p·s_h + i, q·s_w + j, c] += g[n, p, q, c] · [(i, j) = argmax of window (p, q)]
    then ∂x = ∂x̃ without the padding. (With ties in a window only one element gets g.)

    Args:
        window: the window (k_h, k_w); an int k means (k, k).
        strides: the steps (s_h, s_w) between windows; an int s means (s, s); None
            (default) means the window itself.
        padding: "VALID" (default: no padding), "SAME" (the fewest elements so that each
            output size is ⌈n / s⌉, the odd one at the high end) or explicit
            ((lo_h, hi_h), (lo_w, hi_w)), each side smaller than the window.

    Returns:
        A stateless, parameter-free `Layer`, `max_pool(window)`: params `{}`; input NHWC
            (N, H, W, C), output (N, P, Q, C), P = ⌊(H + lo_h + hi_h − k_h) / s_h⌋ + 1 (Q
            alike).

    Raises:
        ValueError: `window` or `strides` is not a positive int or pair of them, `padding`
            is none of the above, or an explicit padding is not smaller than the window;
            (from `init` and `fwd`) an input that is not NHWC or in which not one window
            fits.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> layer = L.max_pool(2)                           # 2×2 windows, side by side
        >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        >>> layer.init(jax.random.key(0), x.shape)
        ((1, 2, 2, 1), {})
        >>> y, res = layer.fwd({}, x)
        >>> y[0, :, :, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
        >>> g = jnp.ones_like(y)
        >>> _, dx = layer.bwd({}, res, g)                   # each window's g goes to its max
        >>> dx[0, :, :, 0].tolist()
        [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
        >>> _, vjp = jax.vjp(lambda x: layer.apply({}, x), x)
        >>> bool(jnp.array_equal(dx, vjp(g)[0]))
        True
    """
    # fwd :: X -> (Y, res = x)
    def fwd(x, pads, window, strides):
        neg_inf = np.array(-np.inf, x.dtype)  # concrete, so XLA sees a max-pool it can differentiate
        y = lax.reduce_window(x, neg_inf, lax.max, (1, *window, 1), (1, *strides, 1),
                              ((0, 0), *pads, (0, 0)))
        return y, x

    # bwd :: (res, CT Y) -> CT X
    def bwd(x, g, pads_for, window, strides):
        pads = pads_for(x.shape[1:3])
        xp = _pad_nhwc(x, pads, -jnp.inf)
        offsets = _offsets(window)
        views = [window_view(xp, offset, strides, g.shape[1:3]) for offset in offsets]
        # the first maximum per window, offsets in row-major order: an offset wins only by
        # being larger (or the first NaN, as argmax), so ties stay with the earlier one
        best, winner = views[0], jnp.zeros(g.shape, jnp.int32)
        for k, v in enumerate(views[1:], 1):
            wins = (v > best) | (jnp.isnan(v) & ~jnp.isnan(best))
            best, winner = jnp.where(wins, v, best), jnp.where(wins, k, winner)
        if strides == window:  # windows side by side: each ∂x̃ element is in one window
            dxp = _tile_windows(winner, g, window, xp.shape[1:3])
        else:
            dxp = sum(window_spread(jnp.where(winner == k, g, 0), offset, strides,
                                    xp.shape[1:3])
                      for k, offset in enumerate(offsets))
        return _crop_nhwc(dxp, pads, x.shape[1:3])

    return _pool_layer("max_pool", window, strides, padding, fwd, bwd)


def avg_pool(window: int | Sequence[int], *, strides: int | Sequence[int] | None = None,
             padding: str | Sequence[tuple[int, int]] = "VALID") -> Layer:
    """y[n, p, q, c] = (1 / |w_pq|) Σ_{(i, j) ∈ w_pq} x̃[n, p·s_h + i, q·s_w + j, c].

    |w_pq| counts the input (not padding) elements of window (p, q): padding is left out
    of the average (flax's count_include_pad=False); with 'VALID' it is k_h·k_w.
    strides default to the window.

    Backward: each window spreads its gradient evenly over its input elements:
        ∂x̃[n, p·s_h + i, q·s_w + j, c] += g[n, p, q, c] / |w_pq|   for every offset (i, j)
    then ∂x = ∂x̃ without the padding (the padding's share is dropped, as it is not counted).

    Args:
        window: the window (k_h, k_w); an int k means (k, k).
        strides: the steps (s_h, s_w) between windows; an int s means (s, s); None
            (default) means the window itself.
        padding: "VALID" (default: no padding), "SAME" (the fewest elements so that each
            output size is ⌈n / s⌉, the odd one at the high end) or explicit
            ((lo_h, hi_h), (lo_w, hi_w)), each side smaller than the window.

    Returns:
        A stateless, parameter-free `Layer`, `avg_pool(window)`: params `{}`; input NHWC
            (N, H, W, C), output (N, P, Q, C), P = ⌊(H + lo_h + hi_h − k_h) / s_h⌋ + 1 (Q
            alike).

    Raises:
        ValueError: `window` or `strides` is not a positive int or pair of them, `padding`
            is none of the above, or an explicit padding is not smaller than the window;
            (from `init` and `fwd`) an input that is not NHWC or in which not one window
            fits.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> layer = L.avg_pool(2, strides=1)                # overlapping 2×2 windows
        >>> x = jnp.arange(9.0).reshape(1, 3, 3, 1)
        >>> y, res = layer.fwd({}, x)
        >>> y[0, :, :, 0].tolist()
        [[2.0, 3.0], [5.0, 6.0]]
        >>> g = jnp.ones_like(y)
        >>> _, dx = layer.bwd({}, res, g)                   # g/4 to each element of a window
        >>> dx[0, :, :, 0].tolist()
        [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]
        >>> _, vjp = jax.vjp(lambda x: layer.apply({}, x), x)
        >>> bool(jnp.allclose(dx, vjp(g)[0]))
        True
        >>> same = L.avg_pool(2, padding="SAME")            # pads one row and column, uncounted
        >>> same.apply({}, x)[0, :, :, 0].tolist()
        [[2.0, 3.5], [6.5, 8.0]]
    """
    def window_sum(a, pads, window, strides):
        return lax.reduce_window(a, np.array(0, a.dtype), lax.add, (1, *window, 1),
                                 (1, *strides, 1), ((0, 0), *pads, (0, 0)))

    def window_count(in_hw, pads, window, strides, dtype):
        """|w_pq|: how many input (not padding) elements each window holds."""
        return window_sum(jnp.ones((1, *in_hw, 1), dtype), pads, window, strides)

    # fwd :: X -> (Y, res = x's shape past the batch)
    def fwd(x, pads, window, strides):
        count = window_count(x.shape[1:3], pads, window, strides, x.dtype)
        return window_sum(x, pads, window, strides) / count, shape_residual(x.shape[1:])

    # bwd :: (res, CT Y) -> CT X
    def bwd(res, g, pads_for, window, strides):
        x_shape = g.shape[:1] + residual_shape(res)
        pads = pads_for(x_shape[1:3])
        g_share = g / window_count(x_shape[1:3], pads, window, strides, g.dtype)
        padded_hw = (x_shape[1] + sum(pads[0]), x_shape[2] + sum(pads[1]))
        dxp = sum(window_spread(g_share, offset, strides, padded_hw) for offset in _offsets(window))
        return _crop_nhwc(dxp, pads, x_shape[1:3])

    return _pool_layer("avg_pool", window, strides, padding, fwd, bwd)


def global_avg_pool() -> Layer:
    """(N, H, W, C) -> (N, C):  y[n, c] = (1 / HW) Σ_{h, w} x[n, h, w, c].

    Backward: ∂x[n, h, w, c] = g[n, c] / HW, the same at every position.

    Returns:
        A stateless, parameter-free `Layer`, `global_avg_pool`: params `{}`; input NHWC
            (N, H, W, C), output (N, C).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> layer = L.global_avg_pool()
        >>> x = jnp.arange(8.0).reshape(1, 2, 2, 2)         # channel 0: 0, 2, 4, 6
        >>> y, res = layer.fwd({}, x)
        >>> y.tolist()
        [[3.0, 4.0]]
        >>> _, dx = layer.bwd({}, res, jnp.ones((1, 2)))     # g / HW everywhere
        >>> dx.shape, bool(jnp.all(dx == 0.25))
        ((1, 2, 2, 2), True)
    """
    name = "global_avg_pool"

    def init(key, input_shape):
        del key
        input_shape = check_shape(name, input_shape)
        _check_nhwc(name, input_shape)
        return (input_shape[0], input_shape[3]), {}

    # fwd :: (P = {}, X) -> (Y, res = x's height and width)
    def fwd(params, x, *, key=None, train=False):
        del key, train
        check_no_params(name, params)
        check_input(name, x)
        _check_nhwc(name, x.shape)
        return jnp.mean(x, axis=(1, 2)), shape_residual(x.shape[1:3])

    # bwd :: (P, res, CT Y) -> (CT P = {}, CT X)
    def bwd(params, hw, g):
        del params
        (n, c), (h, w) = g.shape, residual_shape(hw)
        x_shape = (n, h, w, c)
        return {}, jnp.broadcast_to(g[:, None, None, :] / (h * w), x_shape)

    return Layer(name, init, fwd, bwd)


__all__ = ["max_pool", "avg_pool", "global_avg_pool"]
