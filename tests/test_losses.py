"""Every loss: its hand-written gradient against jax.grad / jax.vjp, its value against a
direct numpy formula, and its numerical stability at logits of ±1000."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from fbp import losses

TOL = {"float64": 1e-10, "float32": 1e-5}
DTYPES = [pytest.param("float64", marks=pytest.mark.x64), "float32"]  # float64 with x64 on


def _huber_residuals(rng, shape, delta):
    """Residuals with |r| < δ in about half the entries and |r| > δ in the rest, none near δ."""
    small = rng.uniform(0.05, 0.9, shape) * delta
    large = rng.uniform(1.1, 3.0, shape) * delta
    magnitude = np.where(rng.random(shape) < 0.5, small, large)
    return np.where(rng.random(shape) < 0.5, -magnitude, magnitude)


def _huber_case(delta):
    def make(rng):
        target = rng.standard_normal((6, 4))
        return target + _huber_residuals(rng, (6, 4), delta), target
    return make


def _labels(shape):
    def make(rng):
        return rng.standard_normal(shape), rng.integers(0, shape[-1], shape[:-1])
    return make


def _one_hot(shape):
    def make(rng):
        return rng.standard_normal(shape), np.eye(shape[-1])[rng.integers(0, shape[-1], shape[:-1])]
    return make


def _soft(shape):
    def make(rng):
        z = rng.standard_normal(shape)
        return rng.standard_normal(shape), np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return make


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_ce(z, t):
    log_p = _np_log_softmax(z)
    if np.issubdtype(t.dtype, np.integer):
        return -np.mean(np.take_along_axis(log_p, t[..., None], -1))
    return -np.mean(np.sum(t * log_p, -1))


def _np_huber(delta):
    def value(p, t):
        r = np.abs(p - t)
        return np.mean(np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta)))
    return value


# name -> (loss, make(rng) -> (pred, target) as numpy float64 / int, numpy formula for L)
CASES = {
    "mse": (losses.mse, lambda rng: (rng.standard_normal((5, 3)), rng.standard_normal((5, 3))),
            lambda p, t: np.mean((p - t) ** 2)),
    "huber": (losses.huber, _huber_case(1.0), _np_huber(1.0)),
    "huber(0.5)": (losses.huber_loss(0.5), _huber_case(0.5), _np_huber(0.5)),
    "huber(2.0)": (losses.huber_loss(2.0), _huber_case(2.0), _np_huber(2.0)),
    "ce_labels": (losses.softmax_cross_entropy, _labels((6, 5)), _np_ce),
    "ce_one_hot": (losses.softmax_cross_entropy, _one_hot((6, 5)), _np_ce),
    "ce_soft": (losses.softmax_cross_entropy, _soft((6, 5)), _np_ce),
    "ce_labels_rank3": (losses.softmax_cross_entropy, _labels((2, 3, 5)), _np_ce),
    "ce_soft_rank3": (losses.softmax_cross_entropy, _soft((2, 3, 5)), _np_ce),
    "bce": (losses.binary_cross_entropy,
            lambda rng: (2 * rng.standard_normal((5, 3)), rng.integers(0, 2, (5, 3)).astype(float)),
            lambda z, t: np.mean(np.logaddexp(0, z) - t * z)),
    "bce_soft": (losses.binary_cross_entropy,
                 lambda rng: (2 * rng.standard_normal((5, 3)), rng.random((5, 3))),
                 lambda z, t: np.mean(np.logaddexp(0, z) - t * z)),
}


def _data(name, dtype, seed=0):
    loss, make, formula = CASES[name]
    rng = np.random.default_rng([seed, len(name), sum(map(ord, name))])
    pred, target = make(rng)
    target_j = jnp.asarray(target if np.issubdtype(target.dtype, np.integer)
                           else target.astype(dtype))
    return loss, formula, pred, target, jnp.asarray(pred, dtype), target_j, rng


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_loss_matches_jax_and_numpy(dtype):
    """Per case: L and ∂L/∂pred by hand == jax.value_and_grad; bwd(res, g) == jax.vjp at a
    random scalar g ≠ 1; L == the numpy formula (in float64).

    All cases in one jit: compiling each case on its own costs ~1 s, all of them ~4 s."""
    inputs, numpy_data = {}, {}
    for name in CASES:
        _, _, pred_np, target_np, pred, target, rng = _data(name, dtype)
        inputs[name] = (pred, target, jnp.asarray(rng.standard_normal() + 2.0, dtype))
        numpy_data[name] = (pred_np, target_np)

    @jax.jit
    def run(inputs):
        out = {}
        for name, (pred, target, g) in inputs.items():
            loss = CASES[name][0]
            value, grad = loss.value_and_grad(pred, target)
            value_fwd, res = loss.fwd(pred, target)
            manual = (value, grad, value_fwd, loss.bwd(res, g))
            value_ref, grad_ref = jax.value_and_grad(loss)(pred, target)
            _, vjp = jax.vjp(lambda p, target=target, loss=loss: loss(p, target), pred)
            out[name] = (manual, (value_ref, grad_ref, vjp(g)[0]))
        return out

    tol = TOL[dtype]
    failures = []
    for name, ((value, grad, value_fwd, g_pred), (value_ref, grad_ref, g_pred_ref)) in \
            run(inputs).items():
        pred, _, g = inputs[name]
        expected = CASES[name][2](*numpy_data[name])
        checks = {
            "value is a scalar of pred's dtype": value.shape == () and value.dtype == pred.dtype,
            "grad and bwd shaped like pred": (grad.shape == g_pred.shape == pred.shape
                                              and grad.dtype == g_pred.dtype == pred.dtype),
            "value == jax": rel_err(value, value_ref) <= tol,
            "fwd value == jax": rel_err(value_fwd, value_ref) <= tol,
            "value == numpy formula": abs(float(value) - expected)
            <= (1e-12 if dtype == "float64" else 1e-6) * max(1.0, abs(expected)),
            "grad == jax.value_and_grad": rel_err(grad, grad_ref) <= tol,
            "bwd(res, g) == jax.vjp(g)": rel_err(g_pred, g_pred_ref) <= tol,
            "bwd(res, g) == g * grad": rel_err(g_pred, float(g) * np.asarray(grad)) <= tol,
            "grad is nonzero": np.abs(np.asarray(grad)).max() > 0,
        }
        failures += [f"{name}: {what} (grad rel err {rel_err(grad, grad_ref):.1e}, value "
                     f"{float(value)!r} vs jax {float(value_ref)!r}, numpy {expected!r})"
                     for what, ok in checks.items() if not ok]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
def test_huber_covers_both_regimes(delta):
    """The huber cases above really test both branches (and stay clear of the kink at δ)."""
    name = {0.5: "huber(0.5)", 1.0: "huber", 2.0: "huber(2.0)"}[delta]
    for seed in (0, 1):
        _, _, pred, target, *_ = _data(name, "float32", seed=seed)  # the numpy pred, target
        r = np.abs(pred - target)
        assert (r < delta).sum() >= 3 and (r > delta).sum() >= 3
        assert np.min(np.abs(r - delta)) > 0.05 * delta


def test_huber_regimes_values():
    """ℓ(r) = ½r² inside δ, δ(|r| − ½δ) outside; ∂ℓ/∂r = clip(r, −δ, δ)."""
    huber = losses.huber_loss(2.0)
    pred = jnp.asarray([0.5, -1.0, 3.0, -5.0])
    value, grad = jax.jit(huber.value_and_grad)(pred, jnp.zeros(4))
    expected = np.mean([0.125, 0.5, 2.0 * (3.0 - 1.0), 2.0 * (5.0 - 1.0)])
    np.testing.assert_allclose(float(value), expected, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(grad), np.array([0.5, -1.0, 2.0, -2.0]) / 4, rtol=1e-14)


# --- numerical stability: logits of ±1000 ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_stable_at_large_logits(dtype):
    ce = losses.softmax_cross_entropy
    logits = jnp.asarray([[1000.0, -1000.0], [-1000.0, 1000.0], [1000.0, -1000.0]], dtype)
    labels = jnp.asarray([0, 0, 1])
    soft = jnp.asarray([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]], dtype)

    @jax.jit
    def run(logits):
        single = [ce(logits[:1], jnp.asarray([k])) for k in (0, 1)]
        return (single, ce.value_and_grad(logits, labels), ce.value_and_grad(logits, soft),
                jax.value_and_grad(ce)(logits, labels))

    (v0, v1), (v, g), (v_soft, g_soft), (v_ref, g_ref) = run(logits)
    # CE([1000, -1000], label 0) = log(1 + e^-2000) ≈ 0;  label 1: ≈ 2000
    assert abs(float(v0)) <= 1e-6 and abs(float(v1) - 2000.0) <= 1e-3
    for a in (v, g, v_soft, g_soft):
        assert np.all(np.isfinite(np.asarray(a)))
    np.testing.assert_allclose(float(v), 4000 / 3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g), np.array([[0, 0], [-1, 1], [1, -1]]) / 3, atol=1e-7)
    # soft rows: −Σ t log p = [0.5·2000, 2000, 0.75·2000]
    np.testing.assert_allclose(float(v_soft), (1000 + 2000 + 1500) / 3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_soft),
                               np.array([[0.5, -0.5], [-1, 1], [0.75, -0.75]]) / 3, atol=1e-7)
    assert rel_err(v, v_ref) <= TOL[dtype] and rel_err(g, g_ref) <= TOL[dtype]


@pytest.mark.x64  # against numpy to 1e-9 (value) and 1e-15 (gradient)
def test_cross_entropy_stable_mixed_scales():
    """Some logits at ±1000 beside ordinary ones, three classes, rank 3."""
    ce = losses.softmax_cross_entropy
    rng = np.random.default_rng(7)
    z = rng.standard_normal((2, 4, 3))
    z[0, 0] = [1000.0, -1000.0, 0.0]
    z[1, 2] = [-1000.0, 3.0, 1000.0]
    labels = rng.integers(0, 3, (2, 4))
    labels[0, 0], labels[1, 2] = 1, 0
    v, g = jax.jit(ce.value_and_grad)(jnp.asarray(z), jnp.asarray(labels))
    assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g)))
    assert abs(float(v) - _np_ce(z, labels)) <= 1e-9 * abs(_np_ce(z, labels))
    p = np.exp(_np_log_softmax(z))
    np.testing.assert_allclose(np.asarray(g), (p - np.eye(3)[labels]) / 8, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_stable_at_large_logits(dtype):
    bce = losses.binary_cross_entropy
    z = jnp.asarray([1000.0, -1000.0, 1000.0, -1000.0, 0.5, -2.0], dtype)
    t = jnp.asarray([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype)
    v, g = jax.jit(bce.value_and_grad)(z, t)
    v_ref, g_ref = jax.jit(jax.value_and_grad(bce))(z, t)
    assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g)))
    # per element: log(1 + e^z) − t z = [0, 0, 1000, 1000, …]  (a naive log(1 + e^1000) is inf)
    zn, tn = np.asarray(z, np.float64), np.asarray(t, np.float64)
    expected = np.mean(np.logaddexp(0, zn) - tn * zn)
    np.testing.assert_allclose(float(v), expected, rtol=1e-6)
    assert float(v) > 2000 / 6 - 1
    sig = 0.5 * (1 + np.tanh(zn / 2))  # σ(z), without overflow
    np.testing.assert_allclose(np.asarray(g), (sig - tn) / 6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(g)[:4], np.array([0, 0, 1, -1]) / 6, atol=1e-7)
    assert rel_err(v, v_ref) <= TOL[dtype] and rel_err(g, g_ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_autodiff_reference_at_a_zero_logit(dtype):
    """z = 0 is no kink of log(1 + eᶻ) − t z, so jax.grad of the forward (the reference that
    check_grads and explain compare the hand-written bwd with) must give σ(0) − t there too;
    written as max(z, 0) + log(1 + e^{−|z|}), it gave 1 − t."""
    bce = losses.binary_cross_entropy
    z = jnp.asarray([0.0, 0.0, -0.0, 1.5], dtype)
    t = jnp.asarray([1.0, 0.0, 0.25, 1.0], dtype)
    expected = (np.array([0.5, 0.5, 0.5, 1 / (1 + np.exp(-1.5))]) - np.asarray(t)) / 4
    np.testing.assert_allclose(np.asarray(jax.grad(bce)(z, t)), expected, rtol=TOL[dtype])
    np.testing.assert_allclose(np.asarray(bce.value_and_grad(z, t)[1]), expected, rtol=TOL[dtype])
    np.testing.assert_allclose(float(bce(z, t)), np.mean(np.logaddexp(0, np.asarray(z, np.float64))
                                                      - np.asarray(t) * np.asarray(z)), rtol=TOL[dtype])


@pytest.mark.parametrize("bad", [-1, 5])
def test_an_out_of_range_label_makes_both_cross_entropies_nan(bad):
    """In a jax.Array (unchecked under jit) a label outside [0, vocab) makes the loss NaN —
    the plain one and the fused linear + cross-entropy alike, so neither trains quietly on it."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 5)), jnp.float32)
    labels = jnp.asarray([0, bad, 2])
    plain = jax.jit(losses.softmax_cross_entropy)(x @ w, labels)
    fused = jax.jit(losses.linear_softmax_cross_entropy)(x, w, labels)
    assert np.isnan(float(plain)) and np.isnan(float(fused))
    ok = jnp.asarray([0, 4, 2])
    np.testing.assert_allclose(float(losses.linear_softmax_cross_entropy(x, w, ok)),
                               float(losses.softmax_cross_entropy(x @ w, ok)), rtol=1e-5)
