"""Inputs checked against the net (token ids, labels), cross-entropy with an ignore index,
and bounded memory in predict/evaluate (weakly held, bounded jit caches; batched evaluate)."""

import gc
import re
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import rel_err

import fbp
import fbp.train as T
from fbp import layers as L
from fbp import losses
from fbp.layers.embedding import input_embeddings
from fbp.optim import gd
from fbp.train import evaluate, fit, predict

F32 = np.float32
CE_IGNORE = losses.softmax_cross_entropy_with_ignore(-100)


def tokens(n=12, seq=5, vocab=50, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, vocab, (n, seq)).astype(np.int32),
            rng.integers(0, classes, (n, seq)).astype(np.int32))


def token_net(vocab=50):
    return L.serial(L.embedding(vocab, 8), L.dense(4))


def params_of(net, in_shape, dtype=F32):
    """Random params drawn by numpy (eager jax.random would compile per shape)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda k: net.init(k, in_shape)[1], jax.random.key(0))
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), dtype), shapes)


def boom(*args, **kwargs):
    raise AssertionError("reached the device: the input should have been refused first")


@pytest.fixture
def nothing_runs(monkeypatch):
    """Fails the test if fit, evaluate or predict get as far as building a program."""
    for name in ("init_state", "_evaluate", "_predict_fn"):
        monkeypatch.setattr(T, name, boom)


# --- 1. token ids checked against the net's input embedding --------------------------------

ID_MSG = (r"serial\[0\] embedding\(50, 8\) takes token ids in \[-50, 50\) .*from -3 to 57, "
          r"2 of 60 out of range")


def bad_ids():
    x, y = tokens()
    x[0, 0], x[7, 4] = 57, 50  # out of range
    x[5, 1] = -3  # negative: valid, counts from the end
    return x, y


@pytest.mark.standard_dtype_promotion
def test_fit_refuses_ids_outside_the_vocabulary(nothing_runs):
    x, y = bad_ids()
    with pytest.raises(ValueError, match=r"^fit: train_data x: " + ID_MSG):
        fit(token_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=1,
            progress=False)
    good, _ = tokens()
    with pytest.raises(ValueError, match=r"^fit: val_data x: " + ID_MSG):
        fit(token_net(), losses.softmax_cross_entropy, gd(0.1), (good, y), epochs=1,
            val_data=(x, y), progress=False)


def test_evaluate_and_predict_refuse_ids_outside_the_vocabulary(nothing_runs):
    net, (x, y) = token_net(), bad_ids()
    params = params_of(net, x.shape)
    with pytest.raises(ValueError, match=r"^evaluate: x: " + ID_MSG):
        evaluate(net, losses.softmax_cross_entropy, params, x, y)
    with pytest.raises(ValueError, match=r"^predict: x: " + ID_MSG):
        predict(net, params, x)


@pytest.mark.parametrize("make, path", [
    (lambda e: L.serial(L.serial(e, L.dense(3)), L.relu()), "serial[0]/serial[0]"),
    (lambda e: L.serial(L.remat(L.serial(e)), L.dense(3)), "serial[0]/remat[0]/serial[0]"),
    (lambda e: L.parallel(L.embedding(100, 2), e), "parallel[1]"),
    (lambda e: e, ""),
], ids=["nested", "remat", "parallel", "alone"])
def test_the_embedding_is_found_where_the_input_enters(make, path):
    net = make(L.embedding(10, 2))
    found = input_embeddings(net)
    assert [p for p, _ in found][-1] == path
    ids = np.array([[0, 9, -10, 12]])
    where = re.escape(f"{path} embedding(10, 2)".strip())
    with pytest.raises(ValueError, match=rf"^predict: x: {where} takes token ids in \[-10, 10\) "
                                         r".*from -10 to 12, 1 of 4 out of range"):
        predict(net, params_of(net, ids.shape), ids)


def test_integer_input_read_by_another_layer_is_left_alone():
    cast = L.from_function(lambda ids: ids.astype(jnp.float32))
    assert input_embeddings(L.serial(cast, L.embedding(2, 3))) == []  # it does not read x
    x = np.array([[7, -9]])
    net = L.serial(cast, L.dense(2))
    assert predict(net, params_of(net, x.shape), x).shape == (1, 2)


def test_negative_ids_count_from_the_end_in_fit_predict_and_the_layer():
    """The documented range [−vocab, vocab): −1 reads the last row, in fit's check, the
    forward and the backward alike."""
    net = L.serial(L.embedding(5, 3))
    params = params_of(net, (1, 4))
    table = np.asarray(params[0]["table"])
    ids = np.array([[-5, -1, 0, 4]])
    np.testing.assert_array_equal(np.asarray(predict(net, params, ids))[0], table[[0, 4, 0, 4]])
    _, res = net.fwd(params, jnp.asarray(ids))
    grads, _ = net.bwd(params, res, jnp.ones((1, 4, 3), F32))
    np.testing.assert_array_equal(np.asarray(grads[0]["table"])[:, 0], [2, 0, 0, 0, 2])


def test_under_jit_an_out_of_range_id_reads_nan_and_gets_no_gradient():
    """What the embedding's docstring says happens where ids cannot be checked."""
    layer = L.embedding(4, 2)
    params = params_of(layer, (3,))
    ids = jnp.asarray([1, 4, -5])
    y, res = jax.jit(layer.fwd)(params, ids)
    assert not np.isnan(np.asarray(y[0])).any() and np.isnan(np.asarray(y[1:])).all()
    grads, _ = jax.jit(layer.bwd)(params, res, jnp.ones((3, 2), F32))
    np.testing.assert_array_equal(np.asarray(grads["table"]), [[0, 0], [1, 1], [0, 0], [0, 0]])


# --- 2. cross-entropy with an ignore index ---------------------------------------------------

def padded(dtype, seed=0, shape=(3, 6, 5)):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape).astype(dtype)
    labels = rng.integers(0, shape[-1], shape[:-1])
    labels[rng.random(shape[:-1]) < 0.4] = -100
    labels[0, 0], labels[0, 1] = -100, 2
    return z, labels


@pytest.mark.standard_dtype_promotion  # optax's loss promotes
@pytest.mark.parametrize("dtype, tol", [pytest.param(np.float64, 1e-14, marks=pytest.mark.x64),
                                        (np.float32, 1e-6)])
def test_ignore_forward_against_optax_on_the_kept_tokens(dtype, tol):
    z, labels = padded(dtype)
    keep = labels != -100
    expected = np.mean(optax.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(z[keep]), jnp.asarray(labels[keep])))
    for call in (CE_IGNORE, jax.jit(CE_IGNORE)):
        value = call(jnp.asarray(z), jnp.asarray(labels))
        assert value.dtype == dtype
        assert float(value) == pytest.approx(float(expected), rel=tol)
    # padding does not count: only the kept rows' logits matter
    z2 = np.where(keep[..., None], z, 1e3).astype(dtype)
    assert float(CE_IGNORE(jnp.asarray(z2), labels)) == pytest.approx(float(expected), rel=tol)


@pytest.mark.parametrize("dtype, tol", [pytest.param(np.float64, 1e-12, marks=pytest.mark.x64),
                                        (np.float32, 1e-5)])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_ignore_gradient_against_jax_grad(dtype, tol, jit):
    z, labels = padded(dtype, seed=1)
    z, labels = jnp.asarray(z), jnp.asarray(labels)
    mine = jax.jit(CE_IGNORE.value_and_grad) if jit else CE_IGNORE.value_and_grad
    ref = jax.value_and_grad(lambda z: CE_IGNORE(z, labels))
    (value, grad), (value_ref, grad_ref) = mine(z, labels), (jax.jit(ref) if jit else ref)(z)
    assert grad.dtype == dtype and grad.shape == z.shape
    assert rel_err(value, value_ref) < tol and rel_err(grad, grad_ref) < tol
    assert not np.asarray(grad)[np.asarray(labels) == -100].any()  # padding: zero rows


def test_ignore_edge_cases():
    z = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3)))
    value, grad = CE_IGNORE.value_and_grad(z, jnp.full((4,), -100))
    assert float(value) == 0 and not np.asarray(grad).any()  # all padding: 0, not NaN
    pad0 = losses.softmax_cross_entropy_with_ignore(0)  # a pad token that is a class id
    labels = np.array([0, 2, 1, 0])
    assert float(pad0(z, labels)) == pytest.approx(
        float(losses.softmax_cross_entropy(z[1:3], labels[1:3])), rel=1e-14)
    assert repr(pad0) == "softmax_cross_entropy(ignore_index=0)" and pad0.ignore_index == 0
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) or be ignore_index=-100; "
                                         r"1 of 4 do not \(from -1 to -1\)"):
        CE_IGNORE(z, np.array([0, -100, -1, 2]))
    with pytest.raises(ValueError, match="ignore_index must be an int"):
        losses.softmax_cross_entropy_with_ignore(1.5)
    with pytest.raises(ValueError, match=r"ignore_index needs labels"):
        CE_IGNORE(z, jnp.zeros((4, 3)))


def test_ignore_trains_and_checks_with_fit_and_check_grads():
    x, _ = tokens(n=16, vocab=20)
    y = np.where(np.arange(5) < 3, x % 4, -100).astype(np.int32)  # padded after 3 tokens
    net = L.serial(L.embedding(20, 8), L.dense(4))
    params = params_of(net, x.shape)
    report = fbp.check_grads(net, CE_IGNORE, params, x, y)
    assert report.ok, report
    state, history = fit(net, CE_IGNORE, gd(0.5), (x, y), epochs=30, batch_size=8,
                         progress=False, val_data=(x, y))
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    metrics = evaluate(net, CE_IGNORE, state, x, y)
    pred = np.argmax(np.asarray(predict(net, state, x)), -1)
    assert metrics["accuracy"] == pytest.approx(np.mean(pred[:, :3] == y[:, :3]), abs=1e-12)
    assert metrics["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-6)


def test_fit_and_evaluate_refuse_labels_outside_the_classes(monkeypatch):
    monkeypatch.setattr(T, "init_state", boom)
    monkeypatch.setattr(T, "_evaluate", boom)  # evaluate traces the net for its classes, no more
    x, y = tokens(vocab=50)
    y[2, 2] = -100  # allowed by the ignore loss only
    with pytest.raises(ValueError, match=r"^fit: train_data y \(a network with 4 outputs\): "
                                         r"labels must lie in \[0, 4\); 1 of 60 do not"):
        fit(token_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=1,
            progress=False)
    y[3, 3] = 4
    net = token_net()
    with pytest.raises(ValueError, match=r"^evaluate: y \(a network with 4 outputs\): labels "
                                         r"must lie in \[0, 4\) or be ignore_index=-100; 1 of 60 "
                                         r"do not \(from 4 to 4\)"):
        evaluate(net, CE_IGNORE, params_of(net, x.shape), x, y)


def test_plain_cross_entropy_under_jit_out_of_range_label_is_nan():
    """Documented: a jax.Array's labels are not checked; an out-of-range one (negative too)
    makes the loss NaN, and its row's gradient is jax.grad's of that forward: zero."""
    ce = losses.softmax_cross_entropy
    z = jnp.asarray(np.random.default_rng(3).standard_normal((3, 4)))
    for bad in (4, -1):
        labels = jnp.asarray([0, bad, 2])
        value, grad = jax.jit(ce.value_and_grad)(z, labels)
        assert np.isnan(float(value)) and np.isnan(float(ce(z, labels)))  # eager too
        grad_ref = jax.jit(jax.grad(ce))(z, labels)
        np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_ref), atol=1e-15)
        assert not np.asarray(grad)[1].any()


@pytest.mark.parametrize("loss", [losses.softmax_cross_entropy, CE_IGNORE], ids=str)
def test_label_check_costs_no_host_round_trip(loss):
    z = jnp.asarray(np.random.default_rng(4).standard_normal((5, 3)), F32)
    labels = jnp.asarray([0, 1, 2, 1, 0])
    jaxpr = str(jax.make_jaxpr(loss.value_and_grad)(z, labels))
    hlo = jax.jit(loss.value_and_grad).lower(z, labels).as_text()
    assert "callback" not in jaxpr and "callback" not in hlo.lower()
    with jax.transfer_guard_device_to_host("disallow"):  # eager, on a jax.Array: never read back
        jax.block_until_ready(loss.value_and_grad(z, labels))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).* 1 of 5 do not "
                                         r"\(from 3 to 3\)"):
        loss(z, np.array([0, 1, 3, 1, 0]))  # host labels: still refused, eagerly


# --- 3. bounded memory: predict and evaluate's caches; evaluate in batches -------------------

def sweep_step(x, y):
    net = L.serial(L.dense(3))
    params = params_of(net, x.shape)
    predict(net, params, x)
    evaluate(net, losses.softmax_cross_entropy, params, x, y)
    return weakref.ref(net)


def test_predict_and_evaluate_do_not_keep_nets_alive():
    x, y = np.ones((4, 2), F32), np.array([0, 1, 2, 0])
    gc.collect()
    before = len(T._PREDICT_CACHE), len(T._EVAL_CACHE)
    refs = [sweep_step(x, y) for _ in range(12)]
    gc.collect()
    assert [r() for r in refs] == [None] * 12  # dropped by the caller: gone, programs and all
    assert (len(T._PREDICT_CACHE), len(T._EVAL_CACHE)) == before


def test_caches_hold_at_most_a_bounded_number_of_nets(monkeypatch):
    monkeypatch.setattr(T, "_CACHED_NETS", 3)
    x = np.ones((4, 2), F32)
    nets = [L.serial(L.dense(2)) for _ in range(5)]  # kept alive by the caller
    params = params_of(nets[0], x.shape)
    for net in nets:
        predict(net, params, x)
    assert list(T._PREDICT_CACHE.keys()) == nets[2:]
    predict(nets[2], params, x)  # a hit moves it to the most recent end
    assert list(T._PREDICT_CACHE.keys()) == [nets[3], nets[4], nets[2]]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_a_sweep_of_fresh_nets_keeps_memory_flat():
    """250 fresh nets, each through predict and evaluate (a hyper-parameter sweep): the
    process grows by less than 100 MB from the 50th to the last (it grew ~3.7 MB a net,
    ~925 MB over 250, when the caches held every net)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 8)).astype(F32), rng.integers(0, 3, 64)
    for i in range(250):
        net = L.serial(L.dense(16), L.relu(), L.dense(3))
        params = params_of(net, x.shape)
        predict(net, params, x)
        evaluate(net, losses.softmax_cross_entropy, params, x, y)
        if i == 49:
            gc.collect()
            start = rss_mb()
    gc.collect()
    growth = rss_mb() - start
    print(f"RSS growth from net 50 to 250: {growth:.1f} MB")
    assert growth < 100


EVAL_CASES = {
    "ce": (lambda: L.serial(L.dense(3)), losses.softmax_cross_entropy,
           lambda rng, n: rng.integers(0, 3, n)),
    "mse": (lambda: L.serial(L.dense(2)), losses.mse,
            lambda rng, n: rng.standard_normal((n, 2))),
    "ignore": (lambda: L.serial(L.dense(3)), CE_IGNORE,
               lambda rng, n: np.where(rng.random(n) < 0.5, -100, rng.integers(0, 3, n))),
}


@pytest.mark.parametrize("case", list(EVAL_CASES))
def test_evaluate_in_batches_equals_full_batch(case):
    make, loss, targets = EVAL_CASES[case]
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((103, 4)), targets(rng, 103)  # 6 batches of 16, then 7
    net = make()
    params = params_of(net, x.shape)
    full = evaluate(net, loss, params, x, y, batch_size=None)
    pred = np.asarray(predict(net, params, x))
    expected = float(loss(jnp.asarray(pred), y if case != "mse" else jnp.asarray(y)))
    # float32: sums over 103 examples, whole or in batches, round apart (~1e-7)
    assert full["loss"] == pytest.approx(expected, rel=1e-6)
    for batch_size in (16, 103, 4096):
        batched = evaluate(net, loss, params, x, y, batch_size=batch_size)
        assert batched.keys() == full.keys()
        for k in full:
            assert batched[k] == pytest.approx(full[k], rel=1e-6), (k, batch_size)
    if "accuracy" in full:
        kept = y != loss.ignore_index if loss.ignore_index is not None else np.ones(103, bool)
        assert full["accuracy"] == pytest.approx(np.mean((pred.argmax(-1) == y)[kept]), abs=1e-15)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_evaluate_batch_size_must_be_positive(bad):
    with pytest.raises(ValueError, match=r"^evaluate: batch_size must be a positive int"):
        evaluate(L.dense(2), losses.mse, {}, np.ones((2, 2)), np.ones((2, 2)), batch_size=bad)
