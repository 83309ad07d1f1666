"""fit's data path: each step gathers its batch from the data set by index (no shuffled copy
of the data set per epoch), in the order fit always had."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fbp.train as T
from fbp import layers as L
from fbp import losses
from fbp.optim import gd

pytestmark = pytest.mark.standard_dtype_promotion  # optax's optimizers need it

@pytest.fixture(autouse=True)
def _float32():
    """Training in float32 whether or not the suite turns x64 on."""
    with jax.enable_x64(False):
        yield


N, D, BATCH = 4096, 64, 64  # 1 MiB of float32 inputs, 64 steps per epoch


def large_ish(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, D)).astype(np.float32),
            rng.integers(0, 4, N).astype(np.int32))


def setup(x, y, step_wrapper=None):
    net = L.dense(4)
    optimizer = gd(0.1)
    state = T.init_state(net, optimizer, jax.random.key(0), (BATCH, D))
    step = T._train_step(net, losses.softmax_cross_entropy, optimizer, "manual")
    if step_wrapper is not None:
        step = step_wrapper(step)
    return net, optimizer, state, step, jnp.asarray(x), jnp.asarray(y)


def test_a_scanned_epoch_holds_no_shuffled_copy_of_the_data():
    """The compiled epoch's scratch memory is a small part of the data set, where a copy of
    it in the epoch's order (the way before) is at least its size."""
    net, optimizer = L.dense(4), gd(0.1)
    state = jax.eval_shape(lambda k: T.init_state(net, optimizer, k, (BATCH, D)),
                           jax.random.key(0))  # shapes only: nothing runs
    x = jax.ShapeDtypeStruct((N, D), jnp.float32)
    y = jax.ShapeDtypeStruct((N,), jnp.int32)
    step = T._train_step(net, losses.softmax_cross_entropy, optimizer, "manual")
    run = T._epoch_fn(step, N, BATCH, jax.random.key(1), scan=True)
    memory = run.lower(state, x, y, 0).compile().memory_analysis()
    if memory is None:
        pytest.skip("this backend reports no memory analysis")
    data_bytes = N * D * 4 + N * 4
    assert memory.temp_size_in_bytes < data_bytes / 8, memory


def test_a_loop_of_steps_keeps_no_shuffled_copy_alive():
    """In a loop of jitted steps, the arrays alive while a step runs are the data set, the
    state and the epoch's indices: no copy of the data set in the epoch's order."""
    x, y = large_ish()
    seen = []

    def wrapper(step):
        def watched(state, xb, yb):
            jax.debug.callback(lambda: seen.append(sum(
                a.nbytes for a in jax.live_arrays() if not a.is_deleted())))
            return step(state, xb, yb)
        return watched

    _, _, state, step, xd, yd = setup(x, y, wrapper)
    before = sum(a.nbytes for a in jax.live_arrays() if not a.is_deleted())
    run = T._epoch_fn(step, N, BATCH, jax.random.key(1), scan=False)
    state, loss, _ = run(state, xd, yd, 0)
    float(loss)
    assert len(seen) == N // BATCH
    assert max(seen) - before < (x.nbytes + y.nbytes) / 4, (max(seen) - before, x.nbytes)


@pytest.mark.slow
def test_fit_takes_the_batches_of_the_shuffled_order():
    """fit equals steps over x[perm] cut into batches, perm = the permutation of the rows
    from fold_in(fold_in(key(seed), 1), epoch) (the last n mod b rows sit the epoch out),
    bit for bit: the order fit has always had, so older checkpoints resume the same."""
    rng = np.random.default_rng(1)
    n, batch_size, seed, epochs = 30, 7, 4, 2
    x = rng.standard_normal((n, 5)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int32)
    net = L.serial(L.dense(8), L.tanh(), L.dense(3))
    state, history = T.fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=epochs,
                           batch_size=batch_size, seed=seed, epoch_mode="steps", progress=False)
    b = batch_size
    key = jax.random.key(seed)
    ref = T.init_state(net, gd(0.1), jax.random.fold_in(key, 0), (b, 5))
    step = T.make_step(net, losses.softmax_cross_entropy, gd(0.1))
    losses_by_epoch = []
    for epoch in range(epochs):
        perm = np.asarray(jax.random.permutation(
            jax.random.fold_in(jax.random.fold_in(key, 1), epoch), n))
        epoch_losses = []
        for i in range(n // b):
            rows = perm[i * b:(i + 1) * b]
            ref, metrics = step(ref, jnp.asarray(x[rows]), jnp.asarray(y[rows]))
            epoch_losses.append(metrics["loss"])
        losses_by_epoch.append(float(jnp.mean(jnp.stack(epoch_losses))))
    for got, want in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(ref)):
        if jnp.issubdtype(got.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert history["train_loss"] == losses_by_epoch
