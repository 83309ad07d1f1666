"""max_pool's and avg_pool's backward passes against numpy loops over the windows, in both
of max_pool's formulations (windows that tile the input, strides = window; and windows
that overlap or leave gaps), with padding and rows past the last window; ties and NaN go
to the first maximum in row-major window order, as argmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from fbp import layers as L

CASES = {
    # name: (input (N, H, W, C), window, strides, padding, the padding it means)
    "2x2-tiles": ((2, 6, 8, 3), (2, 2), None, "VALID", ((0, 0), (0, 0))),
    "2x3-tiles-remainder": ((1, 7, 7, 2), (2, 3), None, "VALID", ((0, 0), (0, 0))),
    "3x3-tiles-same": ((2, 7, 5, 2), (3, 3), None, "SAME", ((1, 1), (0, 1))),
    "2x2-tiles-explicit": ((1, 5, 6, 2), (2, 2), None, ((1, 0), (0, 1)), ((1, 0), (0, 1))),
    "2x2-overlap": ((2, 5, 6, 2), (2, 2), 1, "VALID", ((0, 0), (0, 0))),
    "2x2-gaps": ((1, 8, 7, 2), (2, 2), 3, "SAME", ((0, 0), (0, 1))),
}


def _max_pool_loops(x, g, window, strides, pads):
    """∂x: each window's g to its first maximum (np.argmax: the first NaN if any)."""
    (kh, kw), (sh, sw) = window, strides
    (lo_h, hi_h), (lo_w, hi_w) = pads
    xp = np.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)), constant_values=-np.inf)
    dxp = np.zeros_like(xp)
    for n in range(x.shape[0]):
        for p in range(g.shape[1]):
            for q in range(g.shape[2]):
                for c in range(x.shape[3]):
                    win = xp[n, p * sh:p * sh + kh, q * sw:q * sw + kw, c]
                    i, j = divmod(int(np.argmax(win)), kw)
                    dxp[n, p * sh + i, q * sw + j, c] += g[n, p, q, c]
    return dxp[:, lo_h:lo_h + x.shape[1], lo_w:lo_w + x.shape[2]]


def _pool_grads(layer, x, rng):
    y, res = jax.jit(layer.fwd)({}, x)
    g = jnp.asarray(rng.standard_normal(y.shape), x.dtype)
    return g, jax.jit(layer.bwd)({}, res, g)[1]


@pytest.mark.x64
@pytest.mark.parametrize("case", list(CASES))
def test_max_pool_backward_matches_loops(case):
    shape, window, strides, padding, pads = CASES[case]
    rng = np.random.default_rng(len(case))
    x = rng.standard_normal(shape)
    x[0, 0, :3, 0] = 9.0                        # ties: the first of them takes g
    layer = L.max_pool(window, strides=strides, padding=padding)
    g, dx = _pool_grads(layer, jnp.asarray(x, jnp.float64), rng)
    expected = _max_pool_loops(x, np.asarray(g), window, (strides,) * 2 if strides else window,
                               pads)
    assert dx.dtype == jnp.float64
    assert rel_err(dx, expected) < 1e-15


@pytest.mark.parametrize("strides", [None, 1])
def test_max_pool_nan_takes_the_gradient(strides):
    """A NaN in a window is its maximum (as the forward's max gives NaN): the first NaN
    gets g, the window's other elements nothing."""
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    x[0, 0, 1, 0] = x[0, 1, 0, 0] = np.nan      # both in the first 2×2 window
    layer = L.max_pool(2, strides=strides)
    rng = np.random.default_rng(0)
    g, dx = _pool_grads(layer, jnp.asarray(x), rng)
    expected = _max_pool_loops(x, np.asarray(g), (2, 2), (strides or 2,) * 2, ((0, 0), (0, 0)))
    np.testing.assert_array_equal(np.asarray(dx), expected)
    if strides is None:  # one window holds both NaNs: the first one only
        assert float(dx[0, 1, 0, 0]) == 0 != float(dx[0, 0, 1, 0])


@pytest.mark.x64
@pytest.mark.parametrize("case", ["2x3-tiles-remainder", "3x3-tiles-same", "2x2-overlap"])
def test_avg_pool_backward_matches_loops(case):
    """∂x̃[window (p, q)] += g[p, q] / (the window's count of input elements)."""
    shape, window, strides, padding, pads = CASES[case]
    (kh, kw), (sh, sw) = window, ((strides, strides) if strides else window)
    rng = np.random.default_rng(len(case))
    layer = L.avg_pool(window, strides=strides, padding=padding)
    g, dx = _pool_grads(layer, jnp.asarray(rng.standard_normal(shape), jnp.float64), rng)
    g = np.asarray(g)
    (lo_h, hi_h), (lo_w, hi_w) = pads
    inside = np.pad(np.ones(shape[1:3]), ((lo_h, hi_h), (lo_w, hi_w)))
    dxp = np.zeros((shape[0], *inside.shape, shape[3]))
    for p in range(g.shape[1]):
        for q in range(g.shape[2]):
            count = inside[p * sh:p * sh + kh, q * sw:q * sw + kw].sum()
            dxp[:, p * sh:p * sh + kh, q * sw:q * sw + kw] += g[:, p, q][:, None, None] / count
    expected = dxp[:, lo_h:lo_h + shape[1], lo_w:lo_w + shape[2]]
    assert rel_err(dx, expected) < 1e-14
