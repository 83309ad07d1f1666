"""2-D convolution on NHWC images (kernel HWIO), and the window geometry pooling shares.

For one spatial axis, with input size n, kernel size k, dilation d (effective size
k_eff = (k − 1)d + 1), stride s and padding (lo, hi), the padded input has n + lo + hi
positions and the output has m = ⌊(n + lo + hi − k_eff) / s⌋ + 1; output position p reads
padded inputs p·s + i·d for i = 0..k−1. The last r = (n + lo + hi − k_eff) mod s padded
positions are read by no window.

Tap (i, j) of every window, x̃[:, p·s_h + i·d_h, q·s_w + j·d_w, :] over all (p, q), is one
strided slice of x̃ (`window_view`); its transpose puts an (N, P, Q, ·) array back at those
positions, zeros elsewhere (`window_spread`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fbp._layer import (
    Initializer,
    Layer,
    at_least_float32,
    check_initializers,
    check_input,
    check_param_shapes,
    check_shape,
    default_float_dtype,
)

Pads = tuple[tuple[int, int], tuple[int, int]]
_DIMS = ("NHWC", "HWIO", "NHWC")  # lax.conv_general_dilated's dimension_numbers for the forward
# Up to this many input channels (grey and RGB images), conv2d on CPU computes y, ∂W and ∂x
# from the k_h·k_w taps directly (a few multiply-adds per output, which XLA fuses into one
# pass; ∂W and ∂x one matmul each) rather than through XLA's convolution, which is built for
# deep channels: measured on one core (3×3 kernel, 128×28×28 → 32 features) 1.7-2.3× faster
# for y, 3× for ∂W and 1.2-2.7× for ∂x with 1 to 3 channels; from 4 channels on, XLA's
# convolution is as fast or faster.
FEW_CHANNELS = 3
# On CPU, ∂W (a convolution over the batch) takes 1.3-2.5× less time (one core, 3×3 kernels,
# 32-64 channels, 14×14 and 28×28 images, batches of 128-256) in chunks of the batch whose
# x and g fit in a core's cache (about 1 MiB) than over the whole batch at once; at most
# this many chunks, so that huge batches do not unroll into hundreds of convolutions.
DW_CHUNK_BYTES = 1 << 20
DW_MAX_CHUNKS = 16


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pair(name: str, what: str, v) -> tuple[int, int]:
    """An int or a pair of ints, all positive, as a pair (height, width)."""
    pair = (v, v) if _is_int(v) else tuple(v) if isinstance(v, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(_is_int(a) and a > 0 for a in pair):
        raise ValueError(f"{name}: {what} must be a positive int or a pair of positive ints, "
                         f"got {v!r}")
    return pair


def _padding_arg(name: str, padding) -> str | Pads:
    """'SAME', 'VALID', or explicit ((lo_h, hi_h), (lo_w, hi_w)) of non-negative ints."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"{name}: unknown padding {padding!r}; expected 'SAME', 'VALID' "
                             "or explicit ((lo_h, hi_h), (lo_w, hi_w))")
        return padding.upper()
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        ok = len(pads) == 2 and all(_is_int(a) and a >= 0 for pair in padding for a in pair)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name}: padding must be 'SAME', 'VALID' or explicit "
                         f"((lo_h, hi_h), (lo_w, hi_w)) of non-negative ints, got {padding!r}")
    return pads[0], pads[1]


def _check_nhwc(name: str, shape) -> None:
    if len(shape) != 4:
        raise ValueError(f"{name}: expected an NHWC input of rank 4 (batch, height, width, "
                         f"channels), got shape {tuple(shape)}")


def window_pads(name: str, padding: str | Pads, in_hw, eff_window, strides, *,
                what: str = "window") -> Pads:
    """The explicit ((lo, hi), (lo, hi)) padding, checked: every window fits the padded input.

    SAME pads the fewest zeros so that m = ⌈n / s⌉, the odd one at the high end (as XLA).
    """
    pads: Pads
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        same = []
        for n, k, s in zip(in_hw, eff_window, strides):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            same.append((total // 2, total - total // 2))
        pads = (same[0], same[1])
    elif isinstance(padding, str):  # `_padding_arg` lets no other string through
        raise ValueError(f"{name}: unknown padding {padding!r}; expected 'SAME', 'VALID' or "
                         "explicit ((lo_h, hi_h), (lo_w, hi_w))")
    else:
        pads = padding
    for n, k, (lo, hi) in zip(in_hw, eff_window, pads):
        if n + lo + hi < k:
            padded = f"with padding {padding!r}" if isinstance(padding, str) else f"padded by {pads}"
            raise ValueError(f"{name}: the {what} {tuple(eff_window)} is larger than "
                             f"the input {tuple(in_hw)} {padded}, so not one window fits")
    return pads


def window_out_hw(in_hw, eff_window, strides, pads) -> tuple[int, int]:
    """m = ⌊(n + lo + hi − k_eff) / s⌋ + 1 on each spatial axis."""
    return tuple((n + lo + hi - k) // s + 1
                 for n, k, s, (lo, hi) in zip(in_hw, eff_window, strides, pads))


def window_view(xp, start, strides, out_hw):
    """x̃[:, p·s_h + a, q·s_w + b, :] for p < P, q < Q: (N, P, Q, C), with start = (a, b)."""
    (a, b), (sh, sw), (m_h, m_w) = start, strides, out_hw
    return lax.slice(xp, (0, a, b, 0),
                     (xp.shape[0], a + (m_h - 1) * sh + 1, b + (m_w - 1) * sw + 1, xp.shape[3]),
                     (1, sh, sw, 1))


def window_spread(part, start, strides, padded_hw):
    """The transpose of `window_view`: (N, P, Q, C) -> (N, H̃, W̃, C) with part[n, p, q, c] at
    x̃[n, p·s_h + a, q·s_w + b, c] and zeros elsewhere (s − 1 zeros between entries).
    Sums of these fuse into one pass (no scatter)."""
    spread = [(a, n - a - (m - 1) * s - 1, s - 1)
              for a, s, m, n in zip(start, strides, part.shape[1:3], padded_hw)]
    return lax.pad(part, np.array(0, part.dtype), ((0, 0, 0), *spread, (0, 0, 0)))


def by_taps(c_in: int) -> bool:
    """Whether conv2d computes through its taps: C ≤ FEW_CHANNELS on CPU (elsewhere, where
    this was not measured, through XLA's convolutions)."""
    return c_in <= FEW_CHANNELS and jax.default_backend() == "cpu"


def dw_chunk_size(batch: int, bytes_per_example: int) -> int:
    """How many examples each ∂W convolution takes: all of them but on CPU, where as many as
    fit in DW_CHUNK_BYTES (at least 1, and few enough for at most DW_MAX_CHUNKS chunks)."""
    if jax.default_backend() != "cpu":
        return batch
    fits = max(1, DW_CHUNK_BYTES // max(1, bytes_per_example))
    return min(batch, max(fits, -(-batch // DW_MAX_CHUNKS)))


def conv2d(features: int, kernel_size: int | Sequence[int], *, strides: int | Sequence[int] = 1,
           padding: str | Sequence[tuple[int, int]] = "SAME", dilation: int | Sequence[int] = 1,
           use_bias: bool = True, w_init: Initializer = jax.nn.initializers.lecun_normal(),
           b_init: Initializer = jax.nn.initializers.zeros) -> Layer:
    """2-D convolution (a cross-correlation, as in every deep-learning library):

        y[n, p, q, o] = Σ_{i, j, c} x̃[n, p·s_h + i·d_h, q·s_w + j·d_w, c] W[i, j, c, o] + b[o]

    x (N, H, W, C) NHWC, W (k_h, k_w, C, features) HWIO, x̃ = x zero-padded by `padding`
    ('SAME', 'VALID' or ((lo_h, hi_h), (lo_w, hi_w))), s = strides, d = dilation.
    With x̃_ij = x̃[:, i·d_h + p·s_h, j·d_w + q·s_w, :] (N, P, Q, C), tap (i, j) of every
    window, this is y = Σ_{i,j} x̃_ij W[i, j] + b.

    Backward, for g = ∂L/∂y (N, P, Q, features):
        ∂b = Σ_{n,p,q} g
        ∂W[i, j] = Σ_{n,p,q} x̃_ij[n, p, q]ᵀ g[n, p, q]
            — a correlation of x̃ with g, contracting the batch: g dilated by s is the
              "kernel", stepping by d over x̃.
        ∂x̃ = Σ_{i,j} g W[i, j]ᵀ put back at tap (i, j)'s positions; ∂x = ∂x̃ without the padding
            — the transposed convolution: g dilated by s (s − 1 zeros between entries),
            padded by k_eff − 1 − lo before and k_eff − 1 − hi + r after (negative = crop:
            this drops the gradient of the padding and adds the r unread positions),
            correlated with the kernel flipped in space, its in/out channels swapped.

    On CPU with C ≤ FEW_CHANNELS the sums over taps are computed as written (y: the taps'
    multiply-adds fused into one pass; ∂W: one matmul of the stacked taps with g; ∂x: one
    matmul g Wᵀ, its k_h·k_w parts spread back); otherwise with XLA's convolutions, ∂W on
    CPU as a sum over batch chunks (`dw_chunk_size`).

    Args:
        features: the number of output channels, a positive int.
        kernel_size: (k_h, k_w); an int k means (k, k).
        strides: (s_h, s_w); an int s means (s, s); default 1.
        padding: "SAME" (default: the fewest zeros so that each output size is ⌈n / s⌉,
            the odd one at the high end, as XLA), "VALID" (none) or explicit
            ((lo_h, hi_h), (lo_w, hi_w)) of non-negative ints.
        dilation: (d_h, d_w), the step between kernel taps; an int d means (d, d);
            default 1.
        use_bias: add the bias b (default True); False leaves it out of params.
        w_init: initializer of W, called as `w_init(key, (k_h, k_w, C, features),
            dtype)`; default LeCun normal.
        b_init: initializer of b, called as `b_init(key, (features,), dtype)`;
            default zeros.

    Returns:
        A stateless `Layer`, `conv2d(features, kernel_size)`: params `{"w": (k_h, k_w, C,
            features), "b": (features,)}` (no "b" without `use_bias`), C read off the last axis
            of `input_shape`; input NHWC (N, H, W, C), output (N, P, Q, features) with
            P = ⌊(H + lo_h + hi_h − k_eff) / s_h⌋ + 1 (Q alike; ⌈H / s_h⌉ for "SAME").

    Raises:
        ValueError: `features` is not a positive int; `kernel_size`, `strides` or
            `dilation` is not a positive int or pair of them; `padding` is none of the
            above. (`init` and `fwd` raise ValueError for an input that is not NHWC or that
            the (dilated) kernel does not fit, or params of other shapes.)
        TypeError: `w_init` or `b_init` is not callable.

    Examples:
        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from fbp import layers as L
        >>> layer = L.conv2d(4, 3)                          # 3×3 kernel, stride 1, "SAME"
        >>> out_shape, params = layer.init(jax.random.key(0), (2, 8, 8, 4))
        >>> out_shape, jax.tree.map(jnp.shape, params)
        ((2, 8, 8, 4), {'b': (4,), 'w': (3, 3, 4, 4)})
        >>> L.conv2d(4, 3, strides=2, padding="VALID").init(jax.random.key(0), (2, 8, 8, 4))[0]
        (2, 3, 3, 4)
        >>> rng = np.random.default_rng(0)
        >>> x, g = jnp.asarray(rng.normal(size=(2, 2, 8, 8, 4)), jnp.float32)   # x, and g = ∂L/∂y
        >>> y, res = layer.fwd(params, x)
        >>> dims = ("NHWC", "HWIO", "NHWC")
        >>> ref = jax.lax.conv_general_dilated(x, params["w"], (1, 1), "SAME", dimension_numbers=dims)
        >>> bool(jnp.allclose(y, ref + params["b"][None, None, None, :], atol=1e-5))
        True
        >>> grads, dx = layer.bwd(params, res, g)
        >>> _, vjp = jax.vjp(lambda p, x: layer.apply(p, x), params, x)
        >>> auto_grads, auto_dx = vjp(g)
        >>> bool(jnp.allclose(grads["w"], auto_grads["w"], atol=1e-4))
        True
        >>> bool(jnp.allclose(dx, auto_dx, atol=1e-5))
        True
    """
    name = f"conv2d({features}, {kernel_size})"
    if not _is_int(features) or features <= 0:
        raise ValueError(f"conv2d: features must be a positive int, got {features!r}")
    check_initializers("conv2d", w_init=w_init, b_init=b_init)
    kernel_size = _pair(name, "kernel_size", kernel_size)
    strides = _pair(name, "strides", strides)
    dilation = _pair(name, "dilation", dilation)
    padding = _padding_arg(name, padding)
    eff_kernel = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation))
    kernel_what = "kernel" if dilation == (1, 1) else "dilated kernel"
    taps = [(i, j) for i in range(kernel_size[0]) for j in range(kernel_size[1])]

    def init(key, input_shape):
        input_shape = check_shape(name, input_shape)
        _check_nhwc(name, input_shape)
        n, h, w, c = input_shape
        pads = window_pads(name, padding, (h, w), eff_kernel, strides, what=kernel_what)
        out_h, out_w = window_out_hw((h, w), eff_kernel, strides, pads)
        dtype = default_float_dtype()
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (*kernel_size, c, features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        return (n, out_h, out_w, features), params

    def expected_shapes(c_in):
        shapes = {"w": (*kernel_size, c_in, features)}
        if use_bias:
            shapes["b"] = (features,)
        return shapes

    def explicit_pads(in_hw):
        return window_pads(name, padding, in_hw, eff_kernel, strides, what=kernel_what)

    def padded(x, pads):
        return jnp.pad(x, ((0, 0), *pads, (0, 0)))

    def tap_views(xp, out_hw):
        """x̃_ij for every tap (i, j), row-major: (N, P, Q, C) each."""
        return [window_view(xp, (i * dilation[0], j * dilation[1]), strides, out_hw)
                for i, j in taps]

    # fwd :: (P, X) -> (Y, res = x)
    def fwd(params, x, *, key=None, train=False):
        del key, train
        w = params.get("w") if isinstance(params, dict) else None
        check_input(name, x)
        _check_nhwc(name, x.shape)
        c_in = w.shape[2] if w is not None and w.ndim == 4 else x.shape[-1]
        check_param_shapes(name, params, expected_shapes(c_in))
        check_input(name, x, last_dim=c_in)
        pads = explicit_pads(x.shape[1:3])
        if by_taps(c_in):  # y = Σ_{i,j,c} x̃_ij[..., c] W[i, j, c, :]
            out_hw = window_out_hw(x.shape[1:3], eff_kernel, strides, pads)
            # each term an outer product (N, P, Q) × (O,): XLA fuses them into one pass, and
            # jax.grad of it gets ∂W as dot products, not one reduction per term
            acc = at_least_float32(x.dtype)
            xa, wa = x.astype(acc), w.astype(acc)
            y = sum(jnp.einsum("npq,o->npqo", x_ij[..., c], wa[i, j, c])
                    for (i, j), x_ij in zip(taps, tap_views(padded(xa, pads), out_hw))
                    for c in range(c_in)).astype(x.dtype)
        else:
            y = lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                         dimension_numbers=_DIMS)
        if use_bias:
            y = y + params["b"][None, None, None, :]
        return y, x

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, x, g):
        pads = explicit_pads(x.shape[1:3])
        w = params["w"]
        if by_taps(x.shape[-1]):
            dw, dx = tap_grads(w, x, g, pads)
        else:
            dw, dx = conv_grads(w, x, g, pads)
        grads = {"w": dw}
        if use_bias:
            grads["b"] = g.sum(axis=(0, 1, 2))
        return grads, dx

    def tap_grads(w, x, g, pads):
        xp = padded(x, pads)
        n, c_in, o = x.shape[0], x.shape[-1], g.shape[-1]
        acc = at_least_float32(g.dtype)

        def matmul(a, b, dtype):
            return jnp.matmul(a, b, preferred_element_type=acc).astype(dtype)

        g_rows = g.reshape(-1, o)                                       # (N·P·Q, O)
        # ∂W[i, j, c, :] = Σ_{n,p,q} x̃_ij[n, p, q, c] g[n, p, q, :]: the taps' channels as
        # rows (k_h·k_w·C, N·P·Q), times g
        x_rows = jnp.stack([jnp.moveaxis(x_ij, 3, 0) for x_ij in tap_views(xp, g.shape[1:3])])
        dw = matmul(x_rows.reshape(len(taps) * c_in, -1), g_rows, w.dtype).reshape(w.shape)
        # ∂x̃ = Σ_{i,j} (g W[i, j]ᵀ) at tap (i, j)'s positions
        gw = matmul(g_rows, w.reshape(-1, o).T, x.dtype).reshape(n, *g.shape[1:3], len(taps),
                                                                  c_in)
        dxp = sum(window_spread(gw[..., t, :], (i * dilation[0], j * dilation[1]), strides,
                                xp.shape[1:3])
                  for t, (i, j) in enumerate(taps))
        (lo_h, _), (lo_w, _) = pads
        return dw, dxp[:, lo_h:lo_h + x.shape[1], lo_w:lo_w + x.shape[2], :]

    def conv_grads(w, x, g, pads):
        in_hw, out_hw = x.shape[1:3], g.shape[1:3]
        # r: padded positions past the last window (n + lo + hi − k_eff) mod s, per axis.
        rem = [n + lo + hi - k - (m - 1) * s
               for n, m, k, s, (lo, hi) in zip(in_hw, out_hw, eff_kernel, strides, pads)]

        # ∂W: x̃ correlated with g (dilated by s) over the batch; x is the lhs with N as its
        # feature axis ("CHWN"), g the rhs with N as its input axis ("IHWO"); the result's
        # spatial axes are the kernel taps i, j, reached by stepping d (the high padding
        # less the r unread positions, so that exactly k taps come out). A sum over batch
        # chunks: ∂W = Σ_chunks (the same correlation over the chunk's images).
        acc = at_least_float32(g.dtype)

        def dw_over(xb, gb):
            return lax.conv_general_dilated(
                xb, gb, window_strides=dilation,
                padding=[(lo, hi - r) for (lo, hi), r in zip(pads, rem)],
                rhs_dilation=strides, dimension_numbers=("CHWN", "IHWO", "HWNC"),
                preferred_element_type=acc)

        n = x.shape[0]
        per_example = (np.prod(x.shape[1:]) + np.prod(g.shape[1:])) * x.dtype.itemsize
        size = dw_chunk_size(n, int(per_example))
        dw = sum(dw_over(x[b:b + size], g[b:b + size]) for b in range(0, n, size))
        dw = dw.astype(w.dtype)

        # ∂x: g dilated by s, correlated with W flipped in space; "HWOI" reads W's input
        # axis as this convolution's output axis (the channel swap).
        w_flipped = w[::-1, ::-1, :, :]
        dx = lax.conv_general_dilated(
            g, w_flipped, window_strides=(1, 1),
            padding=[(k - 1 - lo, k - 1 - hi + r) for k, (lo, hi), r in zip(eff_kernel, pads, rem)],
            lhs_dilation=strides, rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWOI", "NHWC"))
        return dw, dx

    return Layer(name, init, fwd, bwd)


__all__ = ["conv2d"]
