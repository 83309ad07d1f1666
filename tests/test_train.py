"""Training: make_step, fit (batch modes, stopping, checkpoints, bad input), data, CLI."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import rel_err

import fbp
from fbp import data, losses
from fbp import layers as L
from fbp.cli import main as cli_main
from fbp.optim import gd
from fbp.train import evaluate, fit, init_state, make_step

pytestmark = pytest.mark.standard_dtype_promotion  # optax's optimizers need it

F32 = np.float32


def blobs(n=96, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = 3 * rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (centers[y] + rng.standard_normal((n, d))).astype(F32)
    return x, y


def small_net(classes=3):
    return L.serial(L.dense(16), L.tanh(), L.dense(classes))


OPTIMIZERS = {
    "gd": lambda: gd(0.1),
    "adam": lambda: optax.adam(1e-2),
    "momentum_wd": lambda: optax.chain(optax.add_decayed_weights(1e-3),
                                       optax.sgd(0.05, momentum=0.9)),
    "gd_schedule": lambda: gd(optax.exponential_decay(0.2, 5, 0.5)),
}


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_manual_and_auto_steps_agree(opt):
    x, y = blobs()
    net, loss = small_net(), losses.softmax_cross_entropy
    optimizer = OPTIMIZERS[opt]()
    states = {}
    for grad in ("manual", "auto"):
        step = make_step(net, loss, optimizer, grad=grad)
        state = init_state(net, optimizer, jax.random.key(1), x.shape)
        x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
        for _ in range(8):
            state, metrics = step(state, x_dev, y_dev)
        states[grad] = state
        assert step._cache_size() == 1  # the second and later calls never retraced
    assert int(states["manual"].step) == 8
    assert rel_err(states["manual"].params, states["auto"].params) < 1e-5  # float32 rounding
    # and training did something
    first = init_state(net, optimizer, jax.random.key(1), x.shape).params
    assert rel_err(states["manual"].params, first) > 1e-3


def test_grad_norm_metric_on_request():
    x, y = jnp.asarray(blobs()[0]), jnp.asarray(blobs()[1])
    net, loss = small_net(), losses.softmax_cross_entropy
    state = init_state(net, gd(0.1), jax.random.key(1), x.shape)
    _, grads = fbp.value_and_grad(net, loss)(state.params, x, y, key=jax.random.split(
        state.key)[1])
    expected = np.sqrt(sum(float(jnp.sum(g ** 2)) for g in jax.tree_util.tree_leaves(grads)))
    _, metrics = make_step(net, loss, gd(0.1), grad_norm=True)(state, x, y)
    assert float(metrics["grad_norm"]) == pytest.approx(expected, rel=1e-6)  # float32
    state = init_state(net, gd(0.1), jax.random.key(1), x.shape)
    _, metrics = make_step(net, loss, gd(0.1))(state, x, y)
    assert set(metrics) == {"loss"}


def test_gd_is_w_minus_lr_g():
    params = {"w": jnp.asarray([1.0, -2.0], jnp.float32)}
    grads = {"w": jnp.asarray([0.5, 0.25], jnp.float32)}
    opt = gd(0.1)
    updates, state = opt.update(grads, opt.init(params))
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["w"], [1.0 - 0.05, -2.0 - 0.025], rtol=1e-7)
    assert int(state.count) == 1
    with pytest.raises(ValueError, match="learning_rate must be positive"):
        gd(0.0)


def test_make_step_rejects_unknown_grad():
    with pytest.raises(ValueError, match="grad must be 'manual'.*got 'jax'"):
        make_step(small_net(), losses.mse, gd(0.1), grad="jax")


@pytest.mark.parametrize(("batch_size", "steps_per_epoch"), [(None, 1), (1, 96), (32, 3), (40, 2)])
def test_batch_modes(batch_size, steps_per_epoch):
    x, y = blobs()
    state, history = fit(small_net(), losses.softmax_cross_entropy, gd(0.05), (x, y), epochs=3,
                         batch_size=batch_size, progress=False)
    assert int(state.step) == 3 * steps_per_epoch
    assert len(history["train_loss"]) == 3
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_scan_and_python_loop_epochs_agree():
    x, y = blobs()
    runs = {mode: fit(small_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=3,
                      batch_size=16, epoch_mode=mode, progress=False)
            for mode in ("scan", "steps")}
    assert rel_err(runs["scan"][0].params, runs["steps"][0].params) < 1e-5
    np.testing.assert_allclose(runs["scan"][1]["train_loss"], runs["steps"][1]["train_loss"],
                               rtol=1e-5)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the choice differs by platform")
@pytest.mark.parametrize("grad", ["manual", "auto"])
def test_auto_epoch_mode_loops_steps_for_conv_nets_on_cpu(grad):
    """XLA:CPU is slow at convolutions inside a compiled loop: "auto" sees them and loops.
    (Four input channels: conv2d computes 1-3 channels without XLA's convolution.)"""
    x, y = blobs()
    images = np.repeat(x[:, :4], 4, axis=1).reshape(-1, 2, 2, 4)
    conv = L.serial(L.conv2d(2, 2), L.relu(), L.flatten(), L.dense(3))
    mlp = small_net()
    for net, train_data, mode in [(conv, (images, y), "steps"), (mlp, (x, y), "scan")]:
        _, history = fit(net, losses.softmax_cross_entropy, gd(0.1), train_data, epochs=1,
                         batch_size=16, grad=grad, progress=False)
        assert history["epoch_mode"] == mode, net.name


def test_manual_and_auto_fit_give_the_same_curve():
    x, y = blobs()
    curves = {g: fit(small_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=5,
                     batch_size=16, grad=g, progress=False)[1]["train_loss"]
              for g in ("manual", "auto")}
    np.testing.assert_allclose(curves["manual"], curves["auto"], rtol=1e-4)


def test_stop_at_loss():
    x, y = blobs()
    _, history = fit(small_net(), losses.softmax_cross_entropy, gd(0.2), (x, y), epochs=200,
                     batch_size=16, stop_at_loss=0.05, progress=False)
    assert history["stopped"] == "stop_at_loss"
    assert history["train_loss"][-1] < 0.05 <= min(history["train_loss"][:-1])
    assert len(history["epoch"]) < 200


def test_patience_returns_best_params():
    x, y = blobs(n=64, seed=1)
    xv, yv = blobs(n=64, seed=2)
    xv = xv + 1.5  # a shifted validation set, so validation loss turns up while training goes on
    net, loss = L.serial(L.dense(64), L.relu(), L.dense(3)), losses.softmax_cross_entropy
    state, history = fit(net, loss, optax.adam(0.05), (x, y), epochs=300, batch_size=16,
                         val_data=(xv, yv), patience=3, progress=False)
    assert history["stopped"] == "patience"
    best_epoch = int(np.argmin(history["val_loss"]))
    assert len(history["epoch"]) == best_epoch + 1 + 3
    assert math.isclose(evaluate(net, loss, state.params, xv, yv)["loss"],
                        min(history["val_loss"]), rel_tol=1e-5)
    assert 0 <= history["val_accuracy"][-1] <= 1


def test_resume_is_bitwise_equal(tmp_path):
    x, y = blobs()
    kw = dict(batch_size=16, seed=3, progress=False)
    full, full_hist = fit(small_net(), losses.softmax_cross_entropy, optax.adam(1e-2), (x, y),
                          epochs=6, **kw)
    ckpt = tmp_path / "run"
    fit(small_net(), losses.softmax_cross_entropy, optax.adam(1e-2), (x, y), epochs=3,
        checkpoint_dir=ckpt, **kw)
    assert (ckpt / "checkpoint.safetensors").exists()
    resumed, hist = fit(small_net(), losses.softmax_cross_entropy, optax.adam(1e-2), (x, y),
                        epochs=6, checkpoint_dir=ckpt, **kw)
    leaves = zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params))
    for a, b in leaves:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(resumed.step) == int(full.step)
    assert hist["train_loss"] == full_hist["train_loss"]
    assert not [p for p in os.listdir(ckpt) if p.endswith(".tmp")]


def test_resume_with_other_settings_is_refused(tmp_path):
    x, y = blobs()
    fit(small_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=1, batch_size=16,
        checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    with pytest.raises(ValueError, match="was written with"):
        fit(small_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=2, batch_size=8,
            checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


BAD_INPUTS = [
    (lambda x, y: dict(train_data=(x[:0], y[:0])), ValueError, "empty"),
    (lambda x, y: dict(train_data=(x, y[:-1])), ValueError, "96 inputs but 95 targets"),
    (lambda x, y: dict(train_data=(x, y), batch_size=0), ValueError, "batch_size must"),
    (lambda x, y: dict(train_data=(x, y), batch_size=-4), ValueError, "batch_size must"),
    (lambda x, y: dict(train_data=(x, y), batch_size=1000), ValueError, "larger than the 96"),
    (lambda x, y: dict(train_data=(x, y), epochs=0), ValueError, "epochs must be a positive"),
    (lambda x, y: dict(train_data=(x, np.where(y == 2, 7, y))), ValueError,
     r"labels must lie in \[0, 3\).*to 7"),
    (lambda x, y: dict(train_data=(np.where(x > 2, np.nan, x), y)), ValueError, "NaN/Inf"),
    (lambda x, y: dict(train_data=(np.where(x > 2, np.inf, x), y)), ValueError, "NaN/Inf"),
    (lambda x, y: dict(train_data=(x, y), val_data=(x[:, :2], y)), ValueError, "example shape"),
    (lambda x, y: dict(train_data=(x, y), patience=2), ValueError, "patience needs val_data"),
    (lambda x, y: dict(train_data=x), TypeError, r"\(x, y\) pair"),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_is_refused_and_checkpoint_kept(case, tmp_path):
    x, y = blobs()
    fit(small_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=1,
        checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    make_kwargs, error, message = BAD_INPUTS[case]
    kwargs = {"epochs": 2, **make_kwargs(x, y)}
    with pytest.raises(error, match=message):
        fit(small_net(), losses.softmax_cross_entropy, gd(0.1), checkpoint_dir=tmp_path,
            progress=False, **kwargs)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


def test_diverging_loss_stops_with_error_and_keeps_checkpoint(tmp_path):
    x, y = blobs()
    x = x * 1e3
    net = L.serial(L.dense(8), L.dense(3))
    with pytest.raises(FloatingPointError, match="training loss became nan in epoch"):
        fit(net, losses.softmax_cross_entropy, gd(1e6), (x, y), epochs=50, batch_size=32,
            checkpoint_dir=tmp_path, checkpoint_every=1000, progress=False)
    assert not (tmp_path / "checkpoint.safetensors").exists()
    # with a checkpoint already there, it survives the failure untouched
    fit(net, losses.softmax_cross_entropy, gd(1e-3), (x, y), epochs=1, batch_size=32,
        checkpoint_dir=tmp_path / "kept", progress=False)
    before = (tmp_path / "kept" / "checkpoint.safetensors").read_bytes()
    with pytest.raises(FloatingPointError):
        fit(net, losses.softmax_cross_entropy, gd(1e6), (x, y),
            epochs=50, batch_size=32, checkpoint_dir=tmp_path / "kept", checkpoint_every=1000,
            progress=False)
    assert (tmp_path / "kept" / "checkpoint.safetensors").read_bytes() == before


def test_progress_bar_can_be_off(capsys):
    x, y = blobs()
    fit(small_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=2, progress=False)
    assert capsys.readouterr().err == ""
    fit(small_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=2, progress=True)
    assert "epoch" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_data_sets(name):
    (x_tr, y_tr), (x_te, y_te) = data.load(name, seed=0)
    assert x_tr.dtype == np.float32 and len(x_tr) == len(y_tr) and len(x_te) == len(y_te)
    assert np.isfinite(x_tr).all()
    if name in data.CLASSIFICATION:
        assert y_tr.dtype == np.int32 and set(np.unique(y_te)) <= set(np.unique(y_tr))
    else:
        assert y_tr.dtype == np.float32 and y_tr.ndim == 2
    if name != "xor":
        np.testing.assert_allclose(x_tr.mean(0), 0, atol=1e-4)
    again = data.load(name, seed=0)
    np.testing.assert_array_equal(again[0][0], x_tr)


def test_unknown_data_set_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown data set 'mnist'; available: .*digits"):
        data.load("mnist")


def test_loss_curves_png(tmp_path):
    from fbp.plot import loss_curves

    history = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.2], "val_loss": [1.1, 0.6, 0.4]}
    loss_curves(history, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data", "--hidden", "--activation", "--loss", "--optimizer", "--lr",
                 "--batch-size", "--epochs", "--grad", "--checkpoint-dir", "--plot"):
        assert flag in out


def test_cli_short_run(capsys, tmp_path):
    code = cli_main(["train", "--data", "iris", "--hidden", "8", "--epochs", "3", "--lr", "0.1",
                     "--batch-size", "16", "--no-progress", "--no-extras",
                     "--plot", str(tmp_path / "curves.png"), "--checkpoint-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "test accuracy" in out and (tmp_path / "curves.png").exists()
    assert (tmp_path / "checkpoint.safetensors").exists()


def test_cli_validation_split_is_carved_from_train(capsys):
    code = cli_main(["train", "--data", "iris", "--hidden", "8", "--epochs", "4",
                     "--batch-size", "16", "--val-fraction", "0.25", "--patience", "2",
                     "--no-progress", "--no-extras"])
    out = capsys.readouterr().out
    assert code == 0
    assert "(90 train / 30 validation / 30 test," in out  # iris: 120 train + 30 test
    with pytest.raises(SystemExit, match="needs --val-fraction > 0"):
        cli_main(["train", "--data", "iris", "--val-fraction", "0", "--patience", "2"])
    with pytest.raises(SystemExit, match=r"must lie in \[0, 1\)"):
        cli_main(["train", "--data", "iris", "--val-fraction", "1.5"])


def test_cli_run_with_dropout_prints_the_gradient_check_and_step_times(capsys):
    code = cli_main(["train", "--data", "iris", "--hidden", "8", "--dropout", "0.1", "--epochs", "2",
                     "--batch-size", "16", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "gradient check on trained params" in out and ": OK" in out
    assert "manual/auto" in out


def test_l2_shrinks_the_weights_and_both_gradients_agree():
    x, y = blobs()
    runs = {(g, lam): fit(small_net(), losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=5,
                          batch_size=16, grad=g, l2=lam, progress=False)
            for g in ("manual", "auto") for lam in (0.0, 0.1)}
    np.testing.assert_allclose(runs["manual", 0.1][1]["train_loss"],
                               runs["auto", 0.1][1]["train_loss"], rtol=1e-4)

    def weight_norm(state):
        return sum(float(jnp.sum(w ** 2)) for w in jax.tree_util.tree_leaves(state.params)
                   if w.ndim >= 2)

    assert weight_norm(runs["manual", 0.1][0]) < 0.9 * weight_norm(runs["manual", 0.0][0])


def test_cli_l2(capsys):
    code = cli_main(["train", "--data", "iris", "--hidden", "8", "--epochs", "2", "--l2", "0.01",
                     "--batch-size", "16", "--no-progress", "--no-extras"])
    assert code == 0 and "test accuracy" in capsys.readouterr().out
