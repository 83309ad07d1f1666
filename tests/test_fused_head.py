"""The fused head in training: fit, make_step, value_and_grad and check_grads train a
language model through fused_softmax_cross_entropy without forming the logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomize, rel_err

import fbp
from fbp import layers as L
from fbp import losses
from fbp.optim import gd
from fbp.train import fit, predict

V, D, T, B = 37, 8, 6, 4


def _lm(head):
    """A small language model (the attention is tested elsewhere: kept out, for speed)."""
    return L.serial(L.embedding(V, D), L.positional_embedding(T), L.dense(D), L.gelu(),
                    L.layer_norm(), head)


def _data(seed=0, n=B):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, V, (n, T)), jnp.int32),
            jnp.asarray(rng.integers(0, V, (n, T)), jnp.int32))


def test_fused_pass_equals_the_plain_one_and_passes_check_grads():
    head = L.linear_softmax_head(V)
    net = _lm(head)
    fused = losses.fused_softmax_cross_entropy(head, chunk_size=10)  # 4 chunks, the last short
    _, params = net.init(jax.random.key(0), (B, T))
    params = randomize(np.random.default_rng(1), params, scale=0.3)
    ids, y = _data()
    value, grads = jax.jit(fbp.value_and_grad(net, fused))(params, ids, y)
    ref_value, ref_grads = jax.jit(fbp.value_and_grad(net, losses.softmax_cross_entropy))(
        params, ids, y)
    # float32: the chunked and the plain log-sum-exp round apart (~1e-7)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-6)
    assert rel_err(grads, ref_grads) < 1e-5
    report = fbp.check_grads(net, fused, params, ids, y)  # manual fused vs jax.grad of logits
    assert report.ok, str(report)
    assert [r.path for r in report.leaves][-1] == "[5]['w']"  # integer ids: no x row


def test_the_fused_training_pass_forms_no_logits():
    """XLA's temporary memory of value-and-grad at 2048 tokens × 16384 vocabulary: the plain
    pass holds the logits and their gradient (2 × 128 MiB in float32), the fused one a
    (tokens × chunk) block."""
    vocab, tokens = 16384, 2048
    head = L.linear_softmax_head(vocab)
    net = L.serial(L.dense(32), head)
    _, params = jax.eval_shape(lambda k: net.init(k, (tokens, 16)), jax.random.key(0))
    x = jax.ShapeDtypeStruct((tokens, 16), jnp.float32)
    y = jax.ShapeDtypeStruct((tokens,), jnp.int32)

    def temp_mib(loss):
        f = jax.jit(fbp.value_and_grad(net, loss))
        return f.lower(params, x, y).compile().memory_analysis().temp_size_in_bytes / 2**20

    plain = temp_mib(losses.softmax_cross_entropy)
    fused = temp_mib(losses.fused_softmax_cross_entropy(head, chunk_size=512))
    logits_mib = tokens * vocab * 4 / 2**20
    assert plain > logits_mib and fused < 0.1 * logits_mib, (plain, fused)


@pytest.mark.standard_dtype_promotion
def test_fit_with_the_fused_head_trains_like_the_plain_loss():
    head = L.linear_softmax_head(V)
    net = _lm(head)
    ids, y = _data(n=32)
    ids, y = np.asarray(ids), np.asarray(y)
    runs = {}
    for name, loss in (("fused", losses.fused_softmax_cross_entropy(head, chunk_size=16)),
                       ("plain", losses.softmax_cross_entropy)):
        runs[name] = fit(net, loss, gd(0.05), (ids, y), epochs=3, batch_size=8, progress=False)
    (s_fused, h_fused), (s_plain, h_plain) = runs["fused"], runs["plain"]
    # float32: 12 steps of rounding apart (~1e-7 a step)
    np.testing.assert_allclose(h_fused["train_loss"], h_plain["train_loss"], rtol=1e-5)
    assert rel_err(s_fused.params, s_plain.params) < 1e-5
    logits = predict(net, s_fused, ids[:2])
    assert logits.shape == (2, T, V)  # predict still gives logits


def test_the_head_must_close_a_serial():
    head = L.linear_softmax_head(V)
    loss = losses.fused_softmax_cross_entropy(head)
    with pytest.raises(ValueError, match="must be a serial.*whose last layer is this loss's head"):
        fbp.value_and_grad(L.serial(head, L.tanh()), loss)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        losses.fused_softmax_cross_entropy(head, chunk_size=0)
    assert repr(loss) == "fused_softmax_cross_entropy(linear_softmax_head(37))"
