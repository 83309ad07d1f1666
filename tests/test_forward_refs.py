"""The FORWARD pass of every built-in layer and loss against an independent reference.

The gradient tests compare each layer's hand-written bwd with jax.vjp of its own
forward, so a wrong forward would pass them; here the forward itself is checked, never
against fbp's code: against jax.nn, optax, lax.reduce_window, jax.nn.dot_product_attention,
or formulas written out in numpy (float64) with explicit loops where the indexing is the
point (convolution, pooling). batch_norm is left out (its API is changing).

Parameters are random everywhere (no zero biases, no unit scales), so a dropped bias or
a swapped projection shows.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from fbp import layers as L
from fbp import losses
from fbp.fused import linear_softmax_cross_entropy, linear_softmax_cross_entropy_fwd

F64 = pytest.param("float64", marks=pytest.mark.x64)  # float64 runs with x64 on
DTYPES = (F64, "float32")
# normwise relative error, max|a − b| / max|b|, for sums of products (matmuls, convolutions)
NORMWISE = {"float64": 1e-12, "float32": 1e-5}
# elementwise relative error, for elementwise maps and scalar losses
ELEMENTWISE = {"float64": 1e-12, "float32": 1e-6}
DPA_TOL = 1e-5  # jax.nn.dot_product_attention: its softmax runs in float32 (see below)
LARGE = np.array([-30.0, -8.0, -3.0, -1.0, -0.0, 0.0, 1e-3, 1.0, 3.0, 8.0, 30.0])


# --- helpers -------------------------------------------------------------------------------

def _rng(*seed):
    return np.random.default_rng(list(seed) or 0)


def _f64(a):
    return np.asarray(a, np.float64)


def assert_elementwise(actual, desired, rtol, *, dtype=None):
    """|a − b| ≤ rtol |b| at every element (atol = 0: tails count), shapes (and dtype) equal."""
    assert tuple(actual.shape) == tuple(np.shape(desired)), (actual.shape, np.shape(desired))
    if dtype is not None:
        assert actual.dtype == jnp.dtype(dtype), actual.dtype
    np.testing.assert_allclose(_f64(actual), _f64(desired), rtol=rtol, atol=0)


def assert_normwise(actual, desired, tol, *, dtype=None):
    """max |a − b| ≤ tol · max |b|, shapes (and dtype) equal."""
    assert tuple(actual.shape) == tuple(np.shape(desired)), (actual.shape, np.shape(desired))
    if dtype is not None:
        assert actual.dtype == jnp.dtype(dtype), actual.dtype
    a, b = _f64(actual), _f64(desired)
    assert np.all(np.isfinite(a)), "non-finite output"
    err, scale = float(np.max(np.abs(a - b), initial=0)), float(np.max(np.abs(b), initial=0))
    assert err <= tol * scale, f"normwise relative error {err / scale:.3g} > {tol:g}"


def random_params(layer, in_shape, rng, dtype, scale=0.5):
    """The layer's params pytree (shapes from init, traced not run), every leaf random normal."""
    def init(key):
        return layer.init(key, in_shape)[1]

    shapes = jax.eval_shape(init, jax.random.key(0))
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), dtype), shapes)


def to_np(tree):
    return jax.tree_util.tree_map(_f64, tree)


def apply(layer, params, x, **kw):
    """layer.apply, run eagerly (op by op, as a user first meets it)."""
    return layer.apply(params, x, **kw)


def apply_jit(layer, params, x):
    """layer.apply under jit: one compile instead of one per op (keeps the file fast)."""
    return jax.jit(layer.apply)(params, x)


# --- activations ---------------------------------------------------------------------------

ACTIVATIONS = {
    "relu": (L.relu, jax.nn.relu),
    "leaky_relu(0.2)": (lambda: L.leaky_relu(0.2), lambda z: jax.nn.leaky_relu(z, 0.2)),
    "leaky_relu(0)": (lambda: L.leaky_relu(0.0), lambda z: jax.nn.leaky_relu(z, 0.0)),
    "sigmoid": (L.sigmoid, jax.nn.sigmoid),
    "tanh": (L.tanh, jax.nn.tanh),
    "gelu": (L.gelu, lambda z: jax.nn.gelu(z, approximate=False)),
    "gelu_tanh": (lambda: L.gelu(approximate=True), lambda z: jax.nn.gelu(z, approximate=True)),
    "elu": (L.elu, jax.nn.elu),
    "elu(0.5)": (lambda: L.elu(0.5), lambda z: jax.nn.elu(z, 0.5)),
    "softplus": (L.softplus, jax.nn.softplus),
    "silu": (L.silu, jax.nn.silu),
    "softmax": (L.softmax, lambda z: jax.nn.softmax(z, axis=-1)),
    "log_softmax": (L.log_softmax, lambda z: jax.nn.log_softmax(z, axis=-1)),
}


def _activation_input(rng, dtype):
    """(4, 3, 11): random normal rows (×3), a row of LARGE, and a row of LARGE shifted."""
    x = 3 * rng.standard_normal((4, 3, 11))
    x[0, 0] = LARGE
    x[1, 1] = LARGE[::-1] + 0.5
    x[2, 2] = rng.permutation(LARGE)
    return jnp.asarray(x, dtype)


@functools.cache
def _activation_references(dtype):
    """Every jax.nn reference at once, on _activation_input: one compile per dtype."""
    def all_refs(z):
        return {name: reference(z) for name, (_, reference) in ACTIVATIONS.items()}
    return jax.jit(all_refs)(_activation_input(_rng(1), dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_jax_nn(name, dtype):
    make, _ = ACTIVATIONS[name]
    z = _activation_input(_rng(1), dtype)
    y = apply_jit(make(), {}, z)
    assert_elementwise(y, _activation_references(dtype)[name], ELEMENTWISE[dtype], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_exact_negative_tail(dtype):
    """z Φ(z) for z in [−10, −3]: Φ(z) is tiny there, so ½(1 + erf(z/√2)) loses it to
    cancellation; jax.nn.gelu uses ½ erfc(−z/√2), accurate to the last bits."""
    z = jnp.asarray(np.linspace(-10.0, -3.0, 29), dtype)
    y = apply(L.gelu(), {}, z[None, :])  # eagerly
    assert_elementwise(y, jax.nn.gelu(z, approximate=False)[None, :], 1e-5, dtype=dtype)


# --- dense, flatten, dropout -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("in_shape", "features", "use_bias"),
                         [((5, 7), 4, True), ((2, 3, 5), 6, True), ((3, 4), 2, False),
                          ((1, 1), 1, True)])
def test_dense(in_shape, features, use_bias, dtype):
    rng = _rng(2, len(in_shape), features)
    layer = L.dense(features, use_bias=use_bias)
    params = random_params(layer, in_shape, rng, dtype)
    x = jnp.asarray(rng.standard_normal(in_shape), dtype)
    p = to_np(params)
    expected = np.einsum("...i,io->...o", _f64(x), p["w"])
    if use_bias:
        expected = expected + p["b"]
    assert set(params) == ({"w", "b"} if use_bias else {"w"})
    assert_normwise(apply(layer, params, x), expected, NORMWISE[dtype], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_softmax_head_gives_the_logits(dtype):
    """The fused head's layer on its own: logits x W (no bias), for predict and evaluate."""
    rng = _rng(2, 7)
    layer = L.linear_softmax_head(11)
    params = random_params(layer, (2, 3, 5), rng, dtype)
    x = jnp.asarray(rng.standard_normal((2, 3, 5)), dtype)
    assert set(params) == {"w"}
    expected = np.einsum("...i,io->...o", _f64(x), to_np(params)["w"])
    assert_normwise(apply(layer, params, x), expected, NORMWISE[dtype], dtype=dtype)


@pytest.mark.parametrize("in_shape", [(2, 3), (2, 3, 4), (3, 2, 4, 5), (1, 1, 1, 1)])
def test_flatten(in_shape):
    x = jnp.asarray(_rng(3).standard_normal(in_shape))
    y = apply(L.flatten(), {}, x)
    np.testing.assert_array_equal(np.asarray(y), np.reshape(np.asarray(x), (in_shape[0], -1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.75])
def test_dropout(rate, dtype):
    n = 100_000
    rng = _rng(4)
    # |x| in [0.5, 2): no zeros, so a zero in y means dropped
    x_np = (rng.uniform(0.5, 2.0, (n // 100, 100)) * rng.choice([-1.0, 1.0], (n // 100, 100)))
    x = jnp.asarray(x_np, dtype)
    layer = L.dropout(rate)

    # evaluation: identity, key or not
    np.testing.assert_array_equal(np.asarray(apply(layer, {}, x)), np.asarray(x))
    np.testing.assert_array_equal(
        np.asarray(apply(layer, {}, x, key=jax.random.key(0), train=False)), np.asarray(x))

    key = jax.random.key(7)
    y = np.asarray(apply(layer, {}, x, key=key, train=True))
    assert y.dtype == jnp.dtype(dtype) and y.shape == x.shape
    scaled = np.asarray(x) / np.asarray(1 - rate, dtype)  # x / (1 − p), in the dtype
    kept = y != 0
    assert np.all(y[~kept] == 0)
    # within 1 ulp of x / (1 − p) (fbp may multiply by a rounded 1 / (1 − p))
    np.testing.assert_array_max_ulp(y[kept], scaled[kept], maxulp=1)

    # kept fraction ~ Binomial(n, 1 − p) / n: within 5 standard deviations of 1 − p
    frac = kept.mean()
    sigma = math.sqrt(rate * (1 - rate) / n)
    assert abs(frac - (1 - rate)) < 5 * sigma, (frac, 1 - rate, sigma)

    # the same key, the same mask; another key, another mask
    np.testing.assert_array_equal(np.asarray(apply(layer, {}, x, key=key, train=True)), y)
    y_other = np.asarray(apply(layer, {}, x, key=jax.random.key(8), train=True))
    assert np.any((y_other != 0) != kept)


def test_dropout_rate_zero_is_identity_in_training():
    x = jnp.asarray(_rng(5).standard_normal((4, 6)))
    y = apply(L.dropout(0.0), {}, x, key=jax.random.key(0), train=True)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


# --- window geometry (independent of fbp.layers.conv) ---------------------------------------

def _pads(padding, in_hw, eff_window, strides):
    """Explicit ((lo, hi), (lo, hi)): 'SAME' total = max((⌈n/s⌉ − 1)s + k_eff − n, 0), lo = total//2."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        out = []
        for n, k, s in zip(in_hw, eff_window, strides):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    return tuple(tuple(p) for p in padding)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# --- conv2d: explicit loops ------------------------------------------------------------------

def conv2d_loops(x, w, b, strides, dilation, padding):
    """y[n, p, q, o] = Σ_{i, j, c} x̃[n, p s_h + i d_h, q s_w + j d_w, c] W[i, j, c, o] + b[o]."""
    x, w = _f64(x), _f64(w)
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    (sh, sw), (dh, dw) = strides, dilation
    eff = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    (lo_h, hi_h), (lo_w, hi_w) = _pads(padding, (h, wd), eff, strides)
    xp = np.zeros((n, h + lo_h + hi_h, wd + lo_w + hi_w, c))
    xp[:, lo_h:lo_h + h, lo_w:lo_w + wd, :] = x
    out_h = (xp.shape[1] - eff[0]) // sh + 1
    out_w = (xp.shape[2] - eff[1]) // sw + 1
    y = np.zeros((n, out_h, out_w, f))
    for p in range(out_h):
        for q in range(out_w):
            for i in range(kh):
                for j in range(kw):
                    for ch in range(c):
                        y[:, p, q, :] += np.outer(xp[:, p * sh + i * dh, q * sw + j * dw, ch],
                                                  w[i, j, ch, :])
    if b is not None:
        y += _f64(b)
    return y


CONV_CASES = {
    # name: (input shape, features, kernel, strides, dilation, padding, use_bias)
    "3x3-same": ((2, 5, 6, 3), 4, (3, 3), 1, 1, "SAME", True),
    "3x3-valid-nobias": ((2, 5, 6, 3), 4, (3, 3), 1, 1, "VALID", False),
    "3x2-stride23-same": ((1, 7, 6, 2), 3, (3, 2), (2, 3), 1, "SAME", True),
    "2x3-stride2-dil21-valid": ((1, 7, 6, 2), 3, (2, 3), 2, (2, 1), "VALID", True),
    "3x3-stride12-dil2-explicit": ((2, 6, 7, 3), 2, (3, 3), (1, 2), 2, ((1, 2), (0, 1)), True),
    "1x1-stride2-same-nobias": ((1, 8, 7, 1), 1, (1, 1), 2, 1, "SAME", False),
    "4x4-same-even-kernel": ((1, 4, 5, 2), 2, (4, 4), 1, 1, "SAME", True),
    "2x2-stride3-dil3-same": ((2, 6, 5, 2), 3, (2, 2), 3, 3, "SAME", True),
    "3x3-stride2-explicit-wide": ((1, 5, 5, 2), 2, (3, 3), 2, 1, ((2, 2), (2, 2)), False),
    "3x1-valid-exact-fit": ((1, 3, 4, 2), 2, (3, 1), (3, 1), 1, "VALID", True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_matches_loops(case, dtype):
    in_shape, features, kernel, strides, dilation, padding, use_bias = CONV_CASES[case]
    rng = _rng(6, len(case))
    layer = L.conv2d(features, kernel, strides=strides, padding=padding, dilation=dilation,
                     use_bias=use_bias)
    params = random_params(layer, in_shape, rng, dtype)
    x = jnp.asarray(rng.standard_normal(in_shape), dtype)
    expected = conv2d_loops(x, params["w"], params["b"] if use_bias else None,
                            _pair(strides), _pair(dilation), padding)
    assert params["w"].shape == (*kernel, in_shape[-1], features)
    assert_normwise(apply(layer, params, x), expected, NORMWISE[dtype], dtype=dtype)


# --- pooling -------------------------------------------------------------------------------

POOL_CASES = {
    # name: (input shape, window, strides, padding)
    "2x2-valid": ((2, 6, 7, 3), (2, 2), None, "VALID"),
    "3x3-stride2-same": ((2, 7, 6, 3), (3, 3), 2, "SAME"),
    "3x3-stride1-same-overlap": ((1, 5, 6, 2), (3, 3), 1, "SAME"),
    "2x3-stride12-explicit": ((2, 6, 7, 2), (2, 3), (1, 2), ((1, 0), (1, 2))),
    "3x2-stride21-valid": ((1, 7, 5, 3), (3, 2), (2, 1), "VALID"),
    "2x2-stride3-same": ((1, 7, 8, 1), (2, 2), 3, "SAME"),
}


def _pool_reference(kind, x, window, strides, padding):
    """lax.reduce_window: max with −∞ padding; avg = window sum of x / window sum of ones
    (the ones unpadded, so the count leaves the padding out)."""
    strides = window if strides is None else _pair(strides)
    pads = ((0, 0), *_pads(padding, x.shape[1:3], window, strides), (0, 0))
    dims, steps = (1, *window, 1), (1, *strides, 1)
    if kind == "max":
        return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, dims, steps, pads)
    sums = lax.reduce_window(x, np.array(0, x.dtype), lax.add, dims, steps, pads)
    counts = lax.reduce_window(jnp.ones_like(x), np.array(0, x.dtype), lax.add, dims, steps, pads)
    return sums / counts


def _pool_loops(kind, x, window, strides, padding):
    """Explicit loops over output positions and window offsets, padding left out."""
    x = _f64(x)
    strides = window if strides is None else _pair(strides)
    n, h, w, c = x.shape
    (lo_h, hi_h), (lo_w, hi_w) = _pads(padding, (h, w), window, strides)
    out_h = (h + lo_h + hi_h - window[0]) // strides[0] + 1
    out_w = (w + lo_w + hi_w - window[1]) // strides[1] + 1
    y = np.zeros((n, out_h, out_w, c))
    for p in range(out_h):
        for q in range(out_w):
            vals = [x[:, r, s, :]
                    for i in range(window[0]) for j in range(window[1])
                    for r, s in [(p * strides[0] + i - lo_h, q * strides[1] + j - lo_w)]
                    if 0 <= r < h and 0 <= s < w]
            y[:, p, q, :] = np.max(vals, axis=0) if kind == "max" else np.mean(vals, axis=0)
    return y


POOLS = {"max": L.max_pool, "avg": L.avg_pool}


@pytest.mark.parametrize("kind", list(POOLS))
@pytest.mark.parametrize(("case", "dtype"),
                         [pytest.param(c, "float64", marks=pytest.mark.x64) for c in POOL_CASES]
                         + [(c, "float32") for c in ("3x3-stride2-same", "2x3-stride12-explicit")])
def test_pool_matches_reduce_window(kind, case, dtype):
    in_shape, window, strides, padding = POOL_CASES[case]
    x = jnp.asarray(_rng(7, len(case)).standard_normal(in_shape), dtype)
    y = apply_jit(POOLS[kind](window, strides=strides, padding=padding), {}, x)
    expected = jax.jit(_pool_reference, static_argnums=(0, 2, 3, 4))(
        kind, x, window, strides, padding)
    tol = 0 if kind == "max" else ELEMENTWISE[dtype]
    assert_normwise(y, expected, tol, dtype=dtype)
    if kind == "max":  # a max picks an element: exact
        np.testing.assert_array_equal(np.asarray(y), np.asarray(expected))


@pytest.mark.x64
@pytest.mark.parametrize("case", ["3x3-stride2-same", "2x3-stride12-explicit", "2x2-valid"])
@pytest.mark.parametrize("kind", list(POOLS))
def test_pool_matches_loops(kind, case):
    in_shape, window, strides, padding = POOL_CASES[case]
    x = jnp.asarray(_rng(8, len(case)).standard_normal(in_shape))
    y = apply(POOLS[kind](window, strides=strides, padding=padding), {}, x)
    assert_normwise(y, _pool_loops(kind, x, window, strides, padding), NORMWISE["float64"],
                    dtype="float64")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_shape", [(2, 5, 6, 3), (1, 1, 1, 4)])
def test_global_avg_pool(in_shape, dtype):
    x = jnp.asarray(_rng(9).standard_normal(in_shape), dtype)
    y = apply(L.global_avg_pool(), {}, x)
    assert_normwise(y, np.mean(_f64(x), axis=(1, 2)), ELEMENTWISE[dtype], dtype=dtype)


# --- layer_norm ----------------------------------------------------------------------------

def layer_norm_np(x, scale, bias, eps=1e-5):
    """(x − μ) / √(σ² + ε) · γ + β over the last axis, σ² the biased variance."""
    x = _f64(x)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * _f64(scale) + _f64(bias)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("in_shape", "eps"), [((4, 7), 1e-5), ((2, 3, 5), 1e-5),
                                               ((3, 6), 0.5), ((2, 1), 1e-5)])
def test_layer_norm(in_shape, eps, dtype):
    rng = _rng(10, len(in_shape))
    layer = L.layer_norm() if eps == 1e-5 else L.layer_norm(eps=eps)
    params = random_params(layer, in_shape, rng, dtype)
    # an offset and a spread per row, so μ and σ matter
    x_np = 3 * rng.standard_normal(in_shape) * rng.uniform(0.1, 3.0, in_shape[:-1] + (1,)) + 2.0
    x = jnp.asarray(x_np, dtype)
    expected = layer_norm_np(x, params["scale"], params["bias"], eps)
    assert_normwise(apply_jit(layer, params, x), expected, NORMWISE[dtype], dtype=dtype)


# --- attention -----------------------------------------------------------------------------

def _softmax_np(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _attention_np(p, x, num_heads, causal):
    """Multi-head self-attention written out in numpy (no jax.nn.dot_product_attention)."""
    b, t, d = x.shape
    dh = d // num_heads
    q = (x @ p["w_q"] + p["b_q"]).reshape(b, t, num_heads, dh)
    k = (x @ p["w_k"]).reshape(b, t, num_heads, dh)
    v = (x @ p["w_v"] + p["b_v"]).reshape(b, t, num_heads, dh)
    s = np.einsum("bihe,bjhe->bhij", q, k) / math.sqrt(dh)
    if causal:
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    o = np.einsum("bhij,bjhe->bihe", _softmax_np(s), v).reshape(b, t, d)
    return o @ p["w_o"] + p["b_o"]


_DPA = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal",))


def mha_dpa(p, x, num_heads, causal, explicit_mask):
    """Q = x W_q + b_q, K = x W_k, V = x W_v + b_v; jax.nn.dot_product_attention per head
    (is_causal, or an explicit boolean lower-triangular mask); heads merged; @ W_o + b_o."""
    p, x = to_np(p), _f64(x)
    b, t, d = x.shape
    split = (b, t, num_heads, d // num_heads)
    q = (x @ p["w_q"] + p["b_q"]).reshape(split)
    k = (x @ p["w_k"]).reshape(split)
    v = (x @ p["w_v"] + p["b_v"]).reshape(split)
    # it promotes internally (promote_types(dtype, float32)), which conftest's strict
    # promotion refuses: the reference runs under standard promotion
    with jax.numpy_dtype_promotion("standard"):
        if explicit_mask:
            mask = np.tril(np.ones((t, t), bool))[None, None]
            o = _DPA(q, k, v, mask=mask)
        else:
            o = _DPA(q, k, v, is_causal=causal)
    return np.asarray(o).reshape(b, t, d) @ p["w_o"] + p["b_o"]


MHA_CASES = {
    # name: (input shape, num_heads, causal, explicit mask in the reference)
    "1head": ((2, 5, 4), 1, False, False),
    "2heads": ((2, 5, 6), 2, False, False),
    "3heads-causal": ((2, 6, 6), 3, True, False),
    "3heads-causal-mask": ((2, 6, 6), 3, True, True),
    "4heads-causal-t1": ((3, 1, 8), 4, True, False),
}


@pytest.mark.parametrize(("case", "dtype"),
                         [pytest.param(c, "float64", marks=pytest.mark.x64) for c in MHA_CASES]
                         + [(c, "float32") for c in ("2heads", "3heads-causal-mask")])
def test_multi_head_attention(case, dtype):
    in_shape, num_heads, causal, explicit_mask = MHA_CASES[case]
    rng = _rng(11, len(case))
    layer = L.multi_head_attention(num_heads, causal=causal)
    params = random_params(layer, in_shape, rng, dtype)
    assert set(params) == {"w_q", "w_k", "w_v", "w_o", "b_q", "b_v", "b_o"}
    x = jnp.asarray(rng.standard_normal(in_shape), dtype)
    y = apply_jit(layer, params, x)
    # jax.nn.dot_product_attention computes its softmax in float32 even for float64 inputs
    # (XLA implementation, jax 0.10), so it is a float32-accurate reference in both dtypes
    assert_normwise(y, mha_dpa(params, x, num_heads, causal, explicit_mask), DPA_TOL,
                    dtype=dtype)
    # and, to the dtype's accuracy, attention written out in float64 numpy
    expected = _attention_np(to_np(params), _f64(x), num_heads, causal)
    assert_normwise(y, expected, NORMWISE[dtype], dtype=dtype)


def test_causal_attention_ignores_the_future():
    """Changing position t's input leaves the causal outputs at positions < t unchanged."""
    rng = _rng(12)
    layer = L.multi_head_attention(2, causal=True)
    params = random_params(layer, (1, 5, 4), rng, "float32")
    x = rng.standard_normal((1, 5, 4)).astype(np.float32)
    x2 = x.copy()
    x2[0, 3:] += rng.standard_normal((2, 4))
    f = jax.jit(layer.apply)
    y, y2 = (np.asarray(f(params, jnp.asarray(a))) for a in (x, x2))
    np.testing.assert_array_equal(y[0, :3], y2[0, :3])
    assert np.all(y[0, 3:] != y2[0, 3:])


# --- embeddings ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("in_shape", "max_len"), [((2, 5, 3), 8), ((3, 8, 4), 8), ((1, 1, 2), 3)])
def test_positional_embedding(in_shape, max_len, dtype):
    rng = _rng(13, max_len)
    layer = L.positional_embedding(max_len)
    params = random_params(layer, in_shape, rng, dtype)
    x = jnp.asarray(rng.standard_normal(in_shape), dtype)
    expected = _f64(x) + _f64(params["table"])[None, :in_shape[1], :]
    assert_elementwise(apply(layer, params, x), expected, ELEMENTWISE[dtype], dtype=dtype)


@pytest.mark.parametrize("id_dtype", ["int32", pytest.param("int64", marks=pytest.mark.x64)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding(dtype, id_dtype):
    vocab, features = 11, 5
    rng = _rng(14)
    layer = L.embedding(vocab, features)
    params = random_params(layer, (3, 7), rng, dtype)
    ids_np = rng.integers(-vocab, vocab, (3, 7))  # negative ids count from the end
    ids_np[0, :4] = [0, vocab - 1, -1, -vocab]
    ids = jnp.asarray(ids_np, id_dtype)
    y = apply(layer, params, ids)
    expected = np.asarray(params["table"])[ids_np]
    assert y.shape == (3, 7, features) and y.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(y), expected)


# --- transformer block ---------------------------------------------------------------------

def transformer_block_np(params, x, num_heads, causal):
    """Pre-LN: h = x + MHA(LN₁(x)); y = h + W₂ gelu_exact(W₁ LN₂(h) + b₁) + b₂."""
    (ln1, mha), (ln2, fc1, act, fc2) = to_np(params)
    assert act == {}
    x = _f64(x)
    h = x + _attention_np(mha, layer_norm_np(x, ln1["scale"], ln1["bias"]), num_heads, causal)
    u = layer_norm_np(h, ln2["scale"], ln2["bias"]) @ fc1["w"] + fc1["b"]
    with jax.enable_x64(True):  # in float64, for the float32 test too
        gelu_u = np.asarray(jax.nn.gelu(jnp.asarray(u), approximate=False))
    return h + gelu_u @ fc2["w"] + fc2["b"]


@pytest.mark.parametrize(("in_shape", "num_heads", "mlp_ratio", "causal", "dtype"),
                         [pytest.param((2, 5, 8), 2, 4, False, "float64", marks=pytest.mark.x64),
                          pytest.param((2, 6, 6), 3, 2, True, "float64", marks=pytest.mark.x64),
                          ((2, 6, 6), 3, 2, True, "float32")])
def test_transformer_block(in_shape, num_heads, mlp_ratio, causal, dtype):
    rng = _rng(15, num_heads)
    layer = L.transformer_block(num_heads, mlp_ratio=mlp_ratio, causal=causal)
    params = random_params(layer, in_shape, rng, dtype)
    d = in_shape[-1]
    (ln1, mha), (ln2, fc1, act, fc2) = params  # the documented nesting
    assert set(ln1) == set(ln2) == {"scale", "bias"} and act == {}
    assert set(mha) == {"w_q", "w_k", "w_v", "w_o", "b_q", "b_v", "b_o"}
    assert fc1["w"].shape == (d, mlp_ratio * d) and fc2["w"].shape == (mlp_ratio * d, d)
    x = jnp.asarray(rng.standard_normal(in_shape), dtype)
    y = jax.jit(layer.apply)(params, x)
    assert_normwise(y, transformer_block_np(params, x, num_heads, causal), NORMWISE[dtype],
                    dtype=dtype)


# --- losses --------------------------------------------------------------------------------
# fbp's losses and optax's references both run under jit (one compile each, not one per op);
# the references see the inputs in float64.

def _loss_arrays(rng, shape, dtype, large=False):
    pred = 2 * rng.standard_normal(shape)
    if large:  # some logits far out in both tails
        flat = pred.reshape(-1)
        flat[: len(LARGE)] = LARGE[: flat.size]
    return jnp.asarray(pred, dtype)


def _value(loss, pred, target):
    return jax.jit(loss.__call__)(pred, target)


def _mean_jit(per_element):
    """x ↦ mean(per_element(x)) under jit, made once so that every test shares its compiles."""
    return jax.jit(lambda *a: jnp.mean(per_element(*a)))


OPTAX_MEAN = {
    "l2": _mean_jit(optax.l2_loss),
    "huber": {d: _mean_jit(functools.partial(optax.huber_loss, delta=d)) for d in (1.0, 0.5, 2.5)},
    "ce_int": _mean_jit(optax.softmax_cross_entropy_with_integer_labels),
    "ce": _mean_jit(optax.softmax_cross_entropy),
    "bce": _mean_jit(optax.sigmoid_binary_cross_entropy),
}


def _mean_of(reference, *args):
    """A reference of OPTAX_MEAN, with every float argument in float64 (x64 on for it, in
    the float32 tests too)."""
    with jax.enable_x64(True):
        args = [jnp.asarray(_f64(a)) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)
                else jnp.asarray(a) for a in args]
        return float(reference(*args))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 5), (7,)])
def test_mse(shape, dtype):
    rng = _rng(16, len(shape))
    pred, target = _loss_arrays(rng, shape, dtype), _loss_arrays(rng, shape, dtype)
    expected = 2 * _mean_of(OPTAX_MEAN["l2"], pred, target)  # l2_loss = ½(p − t)²
    assert_elementwise(_value(losses.mse, pred, target), expected, ELEMENTWISE[dtype],
                       dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("delta", [1.0, 0.5, 2.5])
def test_huber(delta, dtype):
    rng = _rng(17)
    pred, target = _loss_arrays(rng, (8, 5), dtype), _loss_arrays(rng, (8, 5), dtype)
    loss = losses.huber if delta == 1.0 else losses.huber_loss(delta)
    expected = _mean_of(OPTAX_MEAN["huber"][delta], pred, target)
    r = np.abs(_f64(pred) - _f64(target))
    assert np.any(r <= delta) and np.any(r > delta)  # both branches
    assert_elementwise(_value(loss, pred, target), expected, ELEMENTWISE[dtype], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "label_dtype"),
                         [((6, 5), "int32"), pytest.param((2, 3, 4), "int64", marks=pytest.mark.x64),
                          ((1, 1), "int32")])
def test_softmax_cross_entropy_integer_labels(shape, label_dtype, dtype):
    """Mean over the rows (every axis but the last) of −log softmax(z)[label]."""
    rng = _rng(18, len(shape))
    logits = _loss_arrays(rng, shape, dtype, large=True)
    labels = jnp.asarray(rng.integers(0, shape[-1], shape[:-1]), label_dtype)
    expected = _mean_of(OPTAX_MEAN["ce_int"], logits, labels)
    value = _value(losses.softmax_cross_entropy, logits, labels)
    assert_elementwise(value, expected, ELEMENTWISE[dtype], dtype=dtype)
    if shape == (6, 5):  # eagerly too: concrete labels take fbp's range check
        value = losses.softmax_cross_entropy(logits, labels)
        assert_elementwise(value, expected, ELEMENTWISE[dtype], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("targets", ["soft", "one_hot"])
@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 4)])
def test_softmax_cross_entropy_distribution_targets(shape, targets, dtype):
    rng = _rng(19, len(shape))
    logits = _loss_arrays(rng, shape, dtype, large=True)
    if targets == "soft":
        t = _softmax_np(rng.standard_normal(shape))
    else:
        t = np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
    target = jnp.asarray(t, dtype)
    expected = _mean_of(OPTAX_MEAN["ce"], logits, target)
    value = _value(losses.softmax_cross_entropy, logits, target)
    assert_elementwise(value, expected, ELEMENTWISE[dtype], dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("targets", ["binary", "soft"])
@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 5)])
def test_binary_cross_entropy_from_logits(shape, targets, dtype):
    """fbp's binary_cross_entropy takes logits (not probabilities), mean over all elements."""
    rng = _rng(20, len(shape))
    logits = _loss_arrays(rng, shape, dtype, large=True)
    t = rng.integers(0, 2, shape).astype(float) if targets == "binary" else rng.random(shape)
    target = jnp.asarray(t, dtype)
    expected = _mean_of(OPTAX_MEAN["bce"], logits, target)
    # and the formula: −t log σ(z) − (1 − t) log(1 − σ(z)), with −log σ(z) = log(1 + e^{−z})
    z, t64 = _f64(logits), _f64(target)
    formula = np.mean(t64 * np.logaddexp(0, -z) + (1 - t64) * np.logaddexp(0, z))
    np.testing.assert_allclose(expected, formula, rtol=1e-13)
    value = _value(losses.binary_cross_entropy, logits, target)
    assert_elementwise(value, expected, ELEMENTWISE[dtype], dtype=dtype)


@pytest.mark.parametrize(("chunk_size", "dtype"),
                         [pytest.param(c, "float64", marks=pytest.mark.x64) for c in (1, 8, 1024)]
                         + [(8, "float32")])
def test_linear_softmax_cross_entropy(chunk_size, dtype):
    """Fused x W → softmax cross-entropy against optax on the full logits (vocab 37: chunks
    of 1, of 8 with a padded last chunk, one chunk larger than the vocab)."""
    tokens, d, vocab = 9, 6, 37
    rng = _rng(21, chunk_size)
    x = jnp.asarray(rng.standard_normal((tokens, d)), dtype)
    w = jnp.asarray(rng.standard_normal((d, vocab)), dtype)
    labels_np = rng.integers(0, vocab, tokens)
    labels_np[:2] = [0, vocab - 1]
    labels = jnp.asarray(labels_np, "int32")
    expected = _mean_of(OPTAX_MEAN["ce_int"], _f64(x) @ _f64(w), labels)
    value = jax.jit(lambda x, w, y: linear_softmax_cross_entropy(x, w, y, chunk_size=chunk_size))(
        x, w, labels)
    assert_elementwise(value, expected, NORMWISE[dtype], dtype=dtype)
    if (chunk_size, dtype) == (8, "float64"):  # the fwd half, eagerly
        fwd_value, _ = linear_softmax_cross_entropy_fwd(x, w, labels, chunk_size=chunk_size)
        assert_elementwise(fwd_value, expected, NORMWISE[dtype], dtype=dtype)
