"""batch_norm: running statistics as state apart from the params, in every path that moves
them (value_and_grad, make_step, fit, checkpoints, bf16), and evaluation with them."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import init_state_of, normal, rel_err

import fbp
from fbp import layers as L
from fbp import losses
from fbp.optim import gd
from fbp.train import evaluate, fit, init_state, make_step, predict


def _bn_inputs(rng, n=256, d=3, dtype=np.float32):
    """Inputs with mean 1.0 and std 0.1 per feature, targets from a fixed linear map."""
    x = (1.0 + 0.1 * rng.standard_normal((n, d))).astype(dtype)
    y = (x @ rng.standard_normal((d, 2))).astype(dtype)
    return x, y


def test_params_and_state_are_apart():
    bn = L.batch_norm(0.9)
    out_shape, params, state = bn.init(jax.random.key(0), (5, 4))
    assert bn.stateful and out_shape == (5, 4)
    assert sorted(params) == ["bias", "scale"] and sorted(state) == ["mean", "var"]
    np.testing.assert_array_equal(state["mean"], 0)
    np.testing.assert_array_equal(state["var"], 1)
    net = L.serial(L.dense(4), L.batch_norm(), L.relu(), L.dense(2))
    assert net.stateful and not L.serial(L.dense(4), L.relu()).stateful
    _, params, state = net.init(jax.random.key(0), (5, 3))
    assert state[0] == {} and sorted(state[1]) == ["mean", "var"] and state[2:] == ({}, {})
    assert sorted(params[1]) == ["bias", "scale"]


@pytest.mark.x64  # against the formula to 1e-10: an ε misplaced (1e-5 / var) shows
@pytest.mark.parametrize("momentum", [0.75, 0.0])
def test_training_pass_returns_the_moved_statistics(momentum):
    rng = np.random.default_rng(1)
    bn = L.batch_norm(momentum)
    params = {"scale": normal(rng, (3,), jnp.float64), "bias": normal(rng, (3,), jnp.float64)}
    state = {"mean": normal(rng, (3,), jnp.float64), "var": jnp.asarray(rng.uniform(0.5, 2, 3))}
    x = normal(rng, (64, 3), jnp.float64) * 2 + 5
    y, new_state = bn.apply(params, x, train=True, state=state)
    x, p, s = np.asarray(x), jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, state)
    np.testing.assert_allclose(new_state["mean"], momentum * s["mean"]
                               + (1 - momentum) * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(new_state["var"], momentum * s["var"]
                               + (1 - momentum) * x.var(0), rtol=1e-12)
    # y: the batch normalized by its own statistics (the formula, not fbp's code)
    x_hat = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(y, x_hat * p["scale"] + p["bias"], rtol=1e-10)
    # evaluation reads the running statistics and leaves them as they were
    y_eval, same = bn.apply(params, jnp.asarray(x), train=False, state=state)
    assert same is state
    x_hat = (x - s["mean"]) / np.sqrt(s["var"] + 1e-5)
    np.testing.assert_allclose(y_eval, x_hat * p["scale"] + p["bias"], rtol=1e-10)


def test_a_stateful_layer_needs_its_state():
    bn = L.batch_norm()
    _, params, _ = bn.init(jax.random.key(0), (4, 2))
    with pytest.raises(ValueError, match=r"batch_norm\(0.9\): keeps running statistics"):
        bn.apply(params, jnp.ones((4, 2)))


@pytest.mark.standard_dtype_promotion
def test_bf16_statistics_match_float32():
    """Finding 1: under precision='bf16' the running statistics were moved in bfloat16
    (from the bf16 copies of the params) and stalled: running variance 0.0130 against a
    batch variance of 0.0102, eval-mode x̂ mean ≈ 1.4. Now they are float32 state."""
    rng = np.random.default_rng(0)
    x, y = _bn_inputs(rng)
    net = L.serial(L.batch_norm(0.99), L.dense(2))
    runs = {}
    for precision in (None, "bf16"):
        state = init_state(net, gd(0.01), jax.random.key(0), x.shape)  # float32 master params
        step = make_step(net, losses.mse, gd(0.01), precision=precision)
        for _ in range(2000):
            state, metrics = step(state, x, y)
        runs[precision] = state
    stats16, stats32 = runs["bf16"].net_state[0], runs[None].net_state[0]
    assert stats16["mean"].dtype == stats16["var"].dtype == jnp.float32
    np.testing.assert_allclose(stats32["var"], x.var(0), rtol=1e-3)
    np.testing.assert_allclose(stats16["var"], x.var(0), rtol=2e-2)   # bf16 x, f32 statistics
    np.testing.assert_allclose(stats16["mean"], x.mean(0), rtol=2e-3)
    # eval-mode x̂ has mean ≈ 0 and std ≈ 1 on the training distribution
    x_hat = (x - np.asarray(stats16["mean"])) / np.sqrt(np.asarray(stats16["var"]) + 1e-5)
    assert np.abs(x_hat.mean(0)).max() < 0.05 and np.abs(x_hat.std(0) - 1).max() < 0.05
    # and so the eval-mode loss is the train-mode loss
    bf16 = runs["bf16"]
    train_loss = float(fbp.value_and_grad(net, losses.mse, precision="bf16")(
        bf16.params, x, y, state=bf16.net_state)[0])
    eval_loss = evaluate(net, losses.mse, bf16, x, y)["loss"]
    assert eval_loss == pytest.approx(train_loss, rel=0.05)


@pytest.mark.standard_dtype_promotion
def test_value_and_grad_cannot_drop_the_state():
    """Finding 2: fbp.value_and_grad dropped the moved statistics; the README's pattern
    (value_and_grad + optax) left the running mean at 0 (eval loss 4.86 against 0.24)."""
    rng = np.random.default_rng(3)
    x, y = _bn_inputs(rng, n=128)
    x = x * 10 + 4  # far from the initial running mean 0
    net = L.serial(L.dense(8), L.batch_norm(0.8), L.tanh(), L.dense(2))
    _, params, state = net.init(jax.random.key(0), x.shape)
    for make in (fbp.value_and_grad, fbp.autodiff_value_and_grad):
        with pytest.raises(ValueError, match=r"serial\[1\] batch_norm\(0.8\).*state=state"):
            make(net, losses.mse)(params, x, y)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    vg = jax.jit(fbp.value_and_grad(net, losses.mse))
    expected = {k: np.asarray(v) for k, v in state[1].items()}
    for _ in range(50):
        h = (np.asarray(x, np.float64) @ np.asarray(params[0]["w"], np.float64)
             + np.asarray(params[0]["b"], np.float64))  # BN's input
        expected = {"mean": 0.8 * expected["mean"] + 0.2 * h.mean(0),
                    "var": 0.8 * expected["var"] + 0.2 * h.var(0)}
        loss, grads, state = vg(params, x, y, state=state)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    # the running statistics moved, step by step, by the momentum rule (float32: ~2e-7)
    np.testing.assert_allclose(state[1]["mean"], expected["mean"], rtol=1e-5)
    np.testing.assert_allclose(state[1]["var"], expected["var"], rtol=1e-5)
    # with the params held, the statistics settle on this batch's: eval loss = train loss
    for _ in range(30):
        train_loss, _, state = vg(params, x, y, state=state)
    eval_loss = evaluate(net, losses.mse, params, x, y, state=state)["loss"]
    assert eval_loss == pytest.approx(float(train_loss), rel=1e-3)
    stale = net.init(jax.random.key(0), x.shape)[2]  # what was left before: mean 0, var 1
    assert evaluate(net, losses.mse, params, x, y, state=stale)["loss"] > 2 * eval_loss
    with pytest.raises(ValueError, match="pass the TrainState that fit returns"):
        predict(net, params, x)


@pytest.mark.standard_dtype_promotion
def test_statistics_get_no_gradient_no_decay_no_moments():
    """Finding 3: the statistics lived in the params, so they got gradients in eval mode,
    AdamW decayed them and Adam kept moments for them."""
    rng = np.random.default_rng(4)
    x, y = _bn_inputs(rng, n=64)
    net = L.serial(L.dense(4), L.batch_norm(0.5), L.dense(2))
    optimizer = optax.adamw(1e-2, weight_decay=0.5)
    state = init_state(net, optimizer, jax.random.key(0), x.shape)
    for train in (True, False):
        _, grads, _ = fbp.value_and_grad(net, losses.mse)(state.params, x, y, train=train,
                                                          state=state.net_state)
        assert sorted(grads[1]) == ["bias", "scale"]
    # optimizer moments for the params only
    assert len(jax.tree.leaves(state.opt_state)) == 2 * len(jax.tree.leaves(state.params)) + 1
    w, b = np.asarray(state.params[0]["w"]), np.asarray(state.params[0]["b"])
    state, _ = make_step(net, losses.mse, optimizer)(state, x, y)
    # the new statistics are exactly this batch's, by the momentum rule (no decay on them)
    h = x @ w + b  # what batch_norm saw
    np.testing.assert_allclose(state.net_state[1]["mean"], 0.5 * 0 + 0.5 * h.mean(0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.net_state[1]["var"], 0.5 * 1 + 0.5 * h.var(0), rtol=1e-5)


@pytest.mark.standard_dtype_promotion
def test_fit_with_batch_norm_manual_equals_auto_and_learns_the_statistics(tmp_path):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((128, 4)) * 3 + 7).astype(np.float32)
    y = (x[:, 0] > 7).astype(np.int32)
    net = L.serial(L.batch_norm(0.5), L.dense(8), L.relu(), L.dense(2))
    runs = {g: fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=4, batch_size=32,
                   grad=g, progress=False) for g in ("manual", "auto")}
    assert rel_err(runs["manual"][0].params, runs["auto"][0].params) < 1e-5
    assert rel_err(runs["manual"][0].net_state, runs["auto"][0].net_state) < 1e-6
    stats = runs["manual"][0].net_state[0]
    np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=0.05)
    np.testing.assert_allclose(stats["var"], x.var(0), rtol=0.25)
    assert runs["manual"][1]["train_loss"][-1] < runs["manual"][1]["train_loss"][0]
    # evaluate and predict take the TrainState that fit returns
    state = runs["manual"][0]
    assert evaluate(net, losses.softmax_cross_entropy, state, x, y)["accuracy"] > 0.8
    logits = predict(net, state, x[:5])
    ref = predict(net, state.params, x[:5], state=state.net_state)
    np.testing.assert_array_equal(logits, ref)
    # a checkpointed run resumes its statistics too, bit for bit
    full, _ = fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=4, batch_size=32,
                  progress=False, checkpoint_dir=tmp_path)
    half, _ = fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=2, batch_size=32,
                  progress=False, checkpoint_dir=tmp_path / "b")
    resumed, _ = fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=4, batch_size=32,
                     progress=False, checkpoint_dir=tmp_path / "b")
    for a, b in zip(jax.tree.leaves(full[:4]), jax.tree.leaves(resumed[:4])):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(half.net_state[0]["mean"], full.net_state[0]["mean"])


def test_state_of_init_helper():
    state = init_state_of(L.serial(L.dense(3), L.batch_norm()), (4, 2))
    assert state[0] == {} and sorted(state[1]) == ["mean", "var"]


def test_bad_batch_norm_configuration():
    with pytest.raises(ValueError, match=r"batch_norm: momentum must be in \[0, 1\), got 1.5"):
        L.batch_norm(1.5)
    with pytest.raises(ValueError, match="batch_norm.*rank >= 2"):
        L.batch_norm().init(jax.random.key(0), (4,))


@pytest.mark.standard_dtype_promotion
@pytest.mark.parametrize("precision", [None, "bf16"])
def test_the_returned_state_feeds_back_without_a_retrace(precision):
    """The new state has the structure and dtypes of the old one (float32 statistics under
    bf16 too), so a jitted gradient function compiles once for a whole training loop."""
    rng = np.random.default_rng(5)
    x, y = _bn_inputs(rng, n=32)
    net = L.serial(L.dense(4), L.batch_norm(0.9), L.relu(), L.dense(2))
    _, params, state = net.init(jax.random.key(0), x.shape)
    chex.clear_trace_counter()  # chex counts traces per function code, across tests
    vg = jax.jit(chex.assert_max_traces(
        fbp.value_and_grad(net, losses.mse, precision=precision), n=1))
    for _ in range(3):
        _, grads, new_state = vg(params, x, y, state=state)
        chex.assert_trees_all_equal_dtypes(new_state, state)
        chex.assert_trees_all_equal_shapes(grads, params)
        state = new_state
