"""Smoke tests: the CNN and the tiny language model examples run and learn; the full runs
(marked slow) reach what they promise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_example as load

import fbp
from fbp import layers as L
from fbp import losses

pytestmark = pytest.mark.standard_dtype_promotion



def test_cnn_digits_smoke():
    state, history = load("cnn_digits").main(epochs=3, progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_accuracy"][-1] > 0.9  # val_data is the test split


def test_tiny_lm_smoke():
    out = load("tiny_lm").main(epochs=1, stride=8, sample_length=20, progress=False)
    assert out["val_loss"] < out["baseline"]
    assert isinstance(out["sample"], str) and len(out["sample"]) == 20


def test_tiny_lm_text_and_data():
    lm = load("tiny_lm")
    text = lm.load_text()
    assert len(text) > 5000 and text.startswith("Alice was beginning") and "#" not in text
    ids = np.arange(10, dtype=np.int32)
    x, y = lm.windows(ids, 4, stride=3)
    np.testing.assert_array_equal(x, [[0, 1, 2, 3], [3, 4, 5, 6]])
    np.testing.assert_array_equal(y, x + 1)
    assert lm.unigram_entropy(np.array([0, 1, 0, 1]), 3) == pytest.approx(np.log(2))


def test_tiny_lm_positions_backward_is_the_vjp():
    """The example's own layer: its hand-written bwd against jax.vjp of its fwd, for a
    sequence shorter than max_len (the unused rows of the table get zero gradient)."""
    positions = load("tiny_lm").positions(6)
    rng = np.random.default_rng(0)
    with jax.numpy_dtype_promotion("strict"):
        _, params = positions.init(jax.random.key(0), (2, 4, 3))
        x = jnp.asarray(rng.standard_normal((2, 4, 3)))
        g = jnp.asarray(rng.standard_normal((2, 4, 3)))
        y, res = positions.fwd(params, x)
        grads, dx = positions.bwd(params, res, g)
        y_ref, vjp = jax.vjp(lambda p, x: positions.apply(p, x), params, x)
        grads_ref, dx_ref = vjp(g)
    np.testing.assert_allclose(y, y_ref)
    np.testing.assert_allclose(grads["pos"], grads_ref["pos"], rtol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12)
    assert not np.any(np.asarray(grads["pos"][4:]))


def test_tiny_lm_positions_in_a_network_check_grads():
    """The layer between embedding and dense: manual gradients against jax.grad and finite
    differences (the transformer blocks are checked in fbp's own tests)."""
    lm = load("tiny_lm")
    vocab, seq = 7, 5
    net = L.serial(L.embedding(vocab, 4), lm.positions(seq), L.tanh(), L.dense(vocab))
    with jax.numpy_dtype_promotion("strict"):
        _, params = net.init(jax.random.key(1), (3, seq))
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.integers(0, vocab, (3, seq)), jnp.int32)
        y = jnp.asarray(rng.integers(0, vocab, (3, seq)), jnp.int32)
        report = fbp.check_grads(net, losses.softmax_cross_entropy, params, x, y)
    assert report.ok, str(report)


@pytest.mark.slow
def test_cnn_digits_reaches_98_percent():
    state, history = load("cnn_digits").main(progress=False)
    assert history["val_accuracy"][-1] >= 0.98


@pytest.mark.slow
def test_tiny_lm_beats_the_unigram_baseline_by_far():
    out = load("tiny_lm").main(sample_length=100, progress=False)
    assert out["val_loss"] < out["baseline"] - 0.75  # ≈ 3.02 nats → ≈ 2.0
    assert out["train_loss"] < out["val_loss"]
    assert len(out["sample"]) == 100
