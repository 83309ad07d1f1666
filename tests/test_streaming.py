"""fit and evaluate on a stream of (x, y) batches: a list of them, a function returning an
iterator of them (called each epoch), a re-iterable dataset (grain)."""

import functools

import jax
import numpy as np
import optax
import pytest

from fbp import layers as L
from fbp import losses
from fbp.train import evaluate, fit, init_state, make_step

CE = losses.softmax_cross_entropy
N, BATCH, SEED = 48, 16, 3


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n)


X, Y = _data()
NET = L.serial(L.dense(8), L.tanh(), L.dense(3))


def _leaves(state):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(state.params)]


def _assert_same(a, b):
    for u, v in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


def _fit_order(epoch, seed=SEED, n=N, batch=BATCH):
    """The row order of fit's shuffle of arrays in `epoch` (its batches, concatenated)."""
    shuffle_key = jax.random.fold_in(jax.random.key(seed), 1)
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n))
    return perm[:n // batch * batch]


def _shuffled_batches(epoch):
    """A generator of the batches fit visits on (X, Y) with batch_size=BATCH in `epoch`."""
    order = _fit_order(epoch)
    for i in range(0, len(order), BATCH):
        yield X[order[i:i + BATCH]], Y[order[i:i + BATCH]]


def _loop_of_steps(batches_per_epoch, epochs, lr=0.1):
    """The reference: make_step over the given batches, from fit's initial state."""
    state = init_state(NET, optax.sgd(lr), jax.random.fold_in(jax.random.key(SEED), 0),
                       (BATCH, 5))
    step = make_step(NET, CE, optax.sgd(lr))
    for epoch in range(epochs):
        for xb, yb in batches_per_epoch(epoch):
            state, _ = step(state, xb, yb)
    return state


def test_a_generator_factory_of_fits_batches_equals_fit_on_arrays():
    arrays, h_arrays = fit(NET, CE, optax.sgd(0.1), (X, Y), epochs=2, batch_size=BATCH,
                           seed=SEED, epoch_mode="steps", progress=False)
    streamed, h_stream = fit(NET, CE, optax.sgd(0.1), _shuffled_batches, epochs=2, seed=SEED,
                             progress=False)
    _assert_same(arrays, streamed)
    assert h_stream["train_loss"] == h_arrays["train_loss"]
    assert h_stream["epoch"] == [1, 2] and h_stream["stopped"] == "epochs"
    # each epoch has its own order: a stream that did not follow it could not match
    assert not np.array_equal(_fit_order(0), _fit_order(1))


class _Reiterable:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


MOMENTUM = optax.sgd(0.05, momentum=0.9)  # a state that resume must restore
BATCHES = [(X[i:i + BATCH], Y[i:i + BATCH]) for i in range(0, N, BATCH)]


@functools.cache
def _reference_of_batches():
    return _loop_of_steps(lambda epoch: BATCHES, 2)


def _grain_map_dataset(batches):
    grain = pytest.importorskip("grain")
    return grain.MapDataset.source(batches)


@pytest.mark.parametrize("kind", ["list", "tuple", "factory", "reiterable", "grain"])
def test_a_stream_of_the_same_batches_each_epoch_equals_a_loop_of_make_step(kind):
    data = {"list": lambda: BATCHES, "tuple": lambda: tuple(BATCHES),
            "factory": lambda: lambda: iter(BATCHES), "reiterable": lambda: _Reiterable(BATCHES),
            "grain": lambda: _grain_map_dataset(BATCHES)}[kind]()
    state, history = fit(NET, CE, optax.sgd(0.1), data, epochs=2, seed=SEED, progress=False)
    _assert_same(state, _reference_of_batches())
    assert len(history["train_loss"]) == 2


def test_a_grain_pipeline_of_the_epoch_equals_a_loop_of_make_step():
    grain = pytest.importorskip("grain")
    source = grain.MapDataset.source(range(N)).map(lambda i: (X[i], Y[i]))

    def pipeline(epoch):  # a fresh shuffle each epoch, the same on a rerun
        return source.shuffle(seed=epoch).batch(BATCH)

    orders = [np.concatenate([yb for _, yb in pipeline(e)]) for e in range(2)]
    assert not np.array_equal(orders[0], orders[1])  # the epochs differ: order is tested
    reference = _loop_of_steps(lambda epoch: list(pipeline(epoch)), 2)
    state, _ = fit(NET, CE, optax.sgd(0.1), pipeline, epochs=2, seed=SEED, progress=False)
    _assert_same(state, reference)


def test_a_one_shot_generator_is_refused():
    with pytest.raises(TypeError, match="one-shot iterator.*pass a function that returns"):
        fit(NET, CE, optax.sgd(0.1), _shuffled_batches(0), epochs=2, progress=False)
    with pytest.raises(TypeError, match="one-shot iterator"):
        evaluate(NET, CE, {}, iter([(X, Y)]))


def test_a_batch_of_another_shape_is_refused_naming_it():
    batches = [(X[:16], Y[:16]), (X[16:32], Y[16:32]), (X[32:40], Y[32:40]), (X[:16], Y[:16])]
    with pytest.raises(ValueError, match=r"batch 3 of epoch 1 has x \(8, 5\) float32.*"
                                         r"expected x \(16, 5\) float32"):
        fit(NET, CE, optax.sgd(0.1), batches, epochs=1, progress=False)
    wrong_dtype = [(X[:16], Y[:16]), (X[16:32], Y[16:32].astype(np.float32))]
    with pytest.raises(ValueError, match=r"batch 2 of epoch 1 has .*y \(16,\) float32.*"
                                         r"expected .*y \(16,\) int32"):
        fit(NET, CE, optax.sgd(0.1), wrong_dtype, epochs=1, progress=False)


def test_a_smaller_last_batch_is_dropped_with_a_warning():
    with pytest.warns(UserWarning, match="last batch .* holds 8 examples.*dropped"):
        ragged, _ = fit(NET, CE, optax.sgd(0.1), BATCHES + [(X[:8], Y[:8])], epochs=2,
                        seed=SEED, progress=False)
    _assert_same(ragged, _reference_of_batches())


def test_stream_input_checks():
    batches = [(X[:16], Y[:16])]
    with pytest.raises(ValueError, match="batch_size must be None .* stream"):
        fit(NET, CE, optax.sgd(0.1), batches, epochs=1, batch_size=16, progress=False)
    with pytest.raises(ValueError, match="diagnostics_every .* not available .* stream"):
        fit(NET, CE, optax.sgd(0.1), batches, epochs=1, diagnostics_every=1, progress=False)
    bad_labels = [(X[:16], Y[:16]), (X[16:32], np.full(16, 7))]
    with pytest.raises(ValueError, match="batch 2 of epoch 1 y"):
        fit(NET, CE, optax.sgd(0.1), bad_labels, epochs=1, progress=False)
    with pytest.raises(ValueError, match="gave no batches"):
        fit(NET, CE, optax.sgd(0.1), lambda: iter([]), epochs=1, progress=False)


def test_resume_from_a_checkpoint_mid_run_equals_an_uninterrupted_run(tmp_path):
    whole, h_whole = fit(NET, CE, MOMENTUM, _shuffled_batches, epochs=3, seed=SEED,
                         progress=False)
    fit(NET, CE, MOMENTUM, _shuffled_batches, epochs=2, seed=SEED, progress=False,
        checkpoint_dir=tmp_path)
    resumed, h_resumed = fit(NET, CE, MOMENTUM, _shuffled_batches, epochs=3, seed=SEED,
                             progress=False, checkpoint_dir=tmp_path)
    _assert_same(whole, resumed)
    assert h_resumed["train_loss"] == h_whole["train_loss"]
    with pytest.raises(ValueError, match="n='stream'.*this run has n=48"):
        fit(NET, CE, MOMENTUM, (X, Y), epochs=3, batch_size=BATCH, seed=SEED,
            progress=False, checkpoint_dir=tmp_path)


def test_evaluate_on_a_stream_equals_evaluate_on_arrays():
    state, _ = fit(NET, CE, optax.sgd(0.1), _shuffled_batches, epochs=1, seed=SEED,
                   progress=False)
    arrays = evaluate(NET, CE, state, X, Y)
    sizes = [(0, 20), (20, 40), (40, N)]  # batches of any sizes
    streamed = evaluate(NET, CE, state, [(X[a:b], Y[a:b]) for a, b in sizes])
    assert streamed["accuracy"] == arrays["accuracy"]
    np.testing.assert_allclose(streamed["loss"], arrays["loss"], rtol=1e-6)
    with pytest.raises(TypeError, match="x without y"):
        evaluate(NET, CE, state, X)


def test_val_data_as_a_stream_matches_val_data_as_arrays():
    xv, yv = _data(seed=1, n=24)
    kwargs = dict(epochs=2, seed=SEED, progress=False, patience=5)
    _, h_arrays = fit(NET, CE, optax.sgd(0.1), _shuffled_batches, val_data=(xv, yv), **kwargs)
    _, h_stream = fit(NET, CE, optax.sgd(0.1), _shuffled_batches,
                      val_data=lambda epoch: iter([(xv[:12], yv[:12]), (xv[12:], yv[12:])]),
                      **kwargs)
    assert h_stream["val_accuracy"] == h_arrays["val_accuracy"]
    np.testing.assert_allclose(h_stream["val_loss"], h_arrays["val_loss"], rtol=1e-6)
