"""2-D convolution on NHWC images (kernel HWIO), and the window geometry pooling shares.

For one spatial axis, with input size n, kernel size k, dilation d (effective size
k_eff = (k − 1)d + 1), stride s and padding (lo, hi), the padded input has n + lo + hi
positions and the output has m = ⌊(n + lo + hi − k_eff) / s⌋ + 1; output position p reads
padded inputs p·s + i·d for i = 0..k−1. The last r = (n + lo + hi − k_eff) mod s padded
positions are read by no window.
"""

from __future__ import annotations

import jax
from jax import lax

from fbp._layer import Layer, check_input, check_param_shapes, check_shape, default_float_dtype

Pads = tuple[tuple[int, int], tuple[int, int]]
_DIMS = ("NHWC", "HWIO", "NHWC")  # lax.conv_general_dilated's dimension_numbers for the forward


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
    return pads


def _check_nhwc(name: str, shape) -> None:
    if len(shape) != 4:
        raise ValueError(f"{name}: expected an NHWC input of rank 4 (batch, height, width, "
                         f"channels), got shape {tuple(shape)}")


def window_pads(name: str, padding: str | Pads, in_hw, eff_window, strides, *,
                what: str = "window") -> Pads:
    """The explicit ((lo, hi), (lo, hi)) padding, checked: every window fits the padded input.

    SAME pads the fewest zeros so that m = ⌈n / s⌉, the odd one at the high end (as XLA).
    """
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":
        pads = []
        for n, k, s in zip(in_hw, eff_window, strides):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        pads = tuple(pads)
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


def conv2d(features: int, kernel_size, *, strides=1, padding="SAME", dilation=1,
           use_bias: bool = True, w_init=jax.nn.initializers.lecun_normal(),
           b_init=jax.nn.initializers.zeros) -> Layer:
    """2-D convolution (a cross-correlation, as in every deep-learning library):

        y[n, p, q, o] = Σ_{i, j, c} x̃[n, p·s_h + i·d_h, q·s_w + j·d_w, c] W[i, j, c, o] + b[o]

    x (N, H, W, C) NHWC, W (k_h, k_w, C, features) HWIO, x̃ = x zero-padded by `padding`
    ('SAME', 'VALID' or ((lo_h, hi_h), (lo_w, hi_w))), s = strides, d = dilation.

    Backward, for g = ∂L/∂y (N, P, Q, features):
        ∂b = Σ_{n,p,q} g
        ∂W[i, j, c, o] = Σ_{n,p,q} x̃[n, p·s_h + i·d_h, q·s_w + j·d_w, c] g[n, p, q, o]
            — a correlation of x̃ with g, contracting the batch: g dilated by s is the
              "kernel", stepping by d over x̃.
        ∂x = the transposed convolution: g dilated by s (s − 1 zeros between entries),
            padded by k_eff − 1 − lo before and k_eff − 1 − hi + r after (negative = crop:
            this drops the gradient of the padding and adds the r unread positions),
            correlated with the kernel flipped in space, its in/out channels swapped.
    """
    name = f"conv2d({features}, {kernel_size})"
    if not _is_int(features) or features <= 0:
        raise ValueError(f"conv2d: features must be a positive int, got {features!r}")
    kernel_size = _pair(name, "kernel_size", kernel_size)
    strides = _pair(name, "strides", strides)
    dilation = _pair(name, "dilation", dilation)
    padding = _padding_arg(name, padding)
    eff_kernel = tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation))
    kernel_what = "kernel" if dilation == (1, 1) else "dilated kernel"

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
        y = lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                     dimension_numbers=_DIMS)
        if use_bias:
            y = y + params["b"][None, None, None, :]
        return y, x

    # bwd :: (P, res, CT Y) -> (CT P, CT X)
    def bwd(params, x, g):
        pads = explicit_pads(x.shape[1:3])
        w = params["w"]
        in_hw, out_hw = x.shape[1:3], g.shape[1:3]
        # r: padded positions past the last window (n + lo + hi − k_eff) mod s, per axis.
        rem = [n + lo + hi - k - (m - 1) * s
               for n, m, k, s, (lo, hi) in zip(in_hw, out_hw, eff_kernel, strides, pads)]

        # ∂W: x̃ correlated with g (dilated by s) over the batch; x is the lhs with N as its
        # feature axis ("CHWN"), g the rhs with N as its input axis ("IHWO"); the result's
        # spatial axes are the kernel taps i, j, reached by stepping d (the high padding
        # less the r unread positions, so that exactly k taps come out).
        dw = lax.conv_general_dilated(
            x, g, window_strides=dilation,
            padding=[(lo, hi - r) for (lo, hi), r in zip(pads, rem)],
            rhs_dilation=strides, dimension_numbers=("CHWN", "IHWO", "HWNC"))
        grads = {"w": dw}
        if use_bias:
            grads["b"] = g.sum(axis=(0, 1, 2))

        # ∂x: g dilated by s, correlated with W flipped in space; "HWOI" reads W's input
        # axis as this convolution's output axis (the channel swap).
        w_flipped = w[::-1, ::-1, :, :]
        dx = lax.conv_general_dilated(
            g, w_flipped, window_strides=(1, 1),
            padding=[(k - 1 - lo, k - 1 - hi + r) for k, (lo, hi), r in zip(eff_kernel, pads, rem)],
            lhs_dilation=strides, rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWOI", "NHWC"))
        return grads, dx

    return Layer(name, init, fwd, bwd)


__all__ = ["conv2d"]
