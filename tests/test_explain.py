"""fbp.explain (one pass, layer by layer) and fit's diagnostics (recorded inside the epoch)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomize

import fbp
from fbp import layers as L
from fbp import losses
from fbp._layer import init_with_state
from fbp.optim import gd
from fbp.train import fit, init_state, make_step


def _wrong_dx(layer, name):
    def bwd(params, res, g):
        grads, dx = layer.bwd(params, res, g)
        return grads, 1.5 * dx
    return fbp.Layer(name, layer.init, layer.fwd, bwd)


def _problem(net, in_shape, n_out, seed=0):
    rng = np.random.default_rng(seed)
    _, params, state = init_with_state(net, jax.random.key(0), in_shape)
    params = randomize(rng, params)
    x = jnp.asarray(rng.standard_normal(in_shape))
    y = jnp.asarray(rng.integers(0, n_out, in_shape[0]))
    return params, x, y, state if net.stateful else None


NET = L.serial(L.dense(6), L.batch_norm(), L.tanh(),
               L.residual(L.serial(L.dense(6), L.relu())),
               L.parallel(L.dense(2), L.serial(L.dense(3), L.sigmoid())),
               L.from_function(jnp.sin), L.dense(4))


def test_rows_match_the_layers_one_for_one():
    params, x, y, state = _problem(NET, (8, 5), 4)
    report = fbp.explain(NET, losses.softmax_cross_entropy, params, x, y, state=state)
    assert [(r.path, r.name) for r in report.rows] == [
        ("", NET.name), ("serial[0]", "dense(6)"), ("serial[1]", "batch_norm(0.9)"),
        ("serial[2]", "tanh"), ("serial[3]", "residual(serial(dense(6), relu))"),
        ("serial[3]/residual[0]", "serial(dense(6), relu)"),
        ("serial[3]/residual[0]/serial[0]", "dense(6)"),
        ("serial[3]/residual[0]/serial[1]", "relu"),
        ("serial[4]", "parallel(dense(2), serial(dense(3), sigmoid); concat)"),
        ("serial[4]/parallel[0]", "dense(2)"),
        ("serial[4]/parallel[1]", "serial(dense(3), sigmoid)"),
        ("serial[4]/parallel[1]/serial[0]", "dense(3)"),
        ("serial[4]/parallel[1]/serial[1]", "sigmoid"),
        ("serial[5]", "from_function(sin)"), ("serial[6]", "dense(4)")]
    assert [r.depth for r in report.rows][:8] == [0, 1, 1, 1, 1, 2, 3, 3]
    assert [r.autodiff for r in report.rows].count(True) == 1
    assert "from_function(sin) [autodiff]" in str(report)
    assert report.disagreeing == [] and "agree with jax.vjp" in str(report)
    assert report.loss == pytest.approx(float(losses.softmax_cross_entropy(
        NET.apply(params, x, train=True, state=state)[0], y)), rel=1e-12)


def test_rows_hold_the_statistics_of_the_pass():
    """Each row's numbers against the same quantities computed outside explain."""
    params, x, y, state = _problem(NET, (8, 5), 4)
    report = fbp.explain(NET, losses.softmax_cross_entropy, params, x, y, state=state)
    rows = {r.path: r for r in report.rows}
    # forward: dense → batch_norm → tanh, by hand
    h0 = np.asarray(x) @ np.asarray(params[0]["w"]) + np.asarray(params[0]["b"])
    hn = (h0 - h0.mean(0)) / np.sqrt(h0.var(0) + 1e-5) * np.asarray(params[1]["scale"]) \
        + np.asarray(params[1]["bias"])
    t = np.tanh(hn)
    # float32 statistics against float64 numpy: ~1e-7 of the values' scale (~1)
    assert rows["serial[0]"].mean == pytest.approx(h0.mean(), rel=1e-5, abs=1e-6)
    assert rows["serial[2]"].std == pytest.approx(t.std(), rel=1e-5)
    assert rows["serial[2]"].frac_saturated == pytest.approx(np.mean(np.abs(t) > 0.97))
    assert rows["serial[3]/residual[0]/serial[1]"].frac_zero > 0
    assert sum(rows["serial[2]"].act_hist["counts"]) == t.size
    # backward: the gradient arriving at the output, and ∂θ of the last layer
    loss_of_pred = lambda pred: losses.softmax_cross_entropy(pred, y)  # noqa: E731
    pred = NET.apply(params, x, train=True, state=state)[0]
    g = jax.grad(loss_of_pred)(pred)
    assert rows[""].g_norm == pytest.approx(float(jnp.linalg.norm(g)), rel=1e-5)
    assert rows["serial[6]"].g_norm == pytest.approx(float(jnp.linalg.norm(g)), rel=1e-5)
    grads = jax.grad(lambda p: loss_of_pred(NET.apply(p, x, train=True, state=state)[0]))(params)
    w = {leaf.name: leaf for leaf in rows["serial[6]"].leaves}["['w']"]
    assert w.grad_norm == pytest.approx(float(jnp.linalg.norm(grads[6]["w"])), rel=1e-5)
    assert w.ratio == pytest.approx(w.grad_norm / float(jnp.linalg.norm(params[6]["w"])))
    # comparison columns: the hand-written gradients agree with jax.vjp at every layer
    for r in report.rows:
        if r.cmp_x is not None:
            assert r.cmp_x.close and r.cmp_x.max_diff < 1e-6, r.label  # float32 rounding


def test_a_wrong_layer_shows_as_the_disagreeing_row():
    net = L.serial(L.dense(5), _wrong_dx(L.dense(5), "off"), L.tanh(), L.dense(3))
    params, x, y, _ = _problem(net, (6, 4), 3)
    report = fbp.explain(net, losses.softmax_cross_entropy, params, x, y)
    bad = {r.path: r for r in report.rows}["serial[1]"]
    assert not bad.cmp_x.close and not bad.cmp_x.exact and bad.cmp_x.max_diff > 1e-3
    assert bad.cmp_params.close  # its ∂θ is right
    # the net itself disagrees too (its ∂x goes through the wrong layer): both are listed
    assert report.disagreeing == [net.name, "serial[1] off"]
    assert "DIFFERS" in str(report)


def test_explain_needs_the_state_of_a_stateful_net():
    params, x, y, _ = _problem(NET, (8, 5), 4)
    with pytest.raises(ValueError, match="keeps running statistics; pass state="):
        fbp.explain(NET, losses.softmax_cross_entropy, params, x, y)


# --- diagnostics inside fit ------------------------------------------------------------------

DIAG_NET = L.serial(L.dense(16), L.tanh(), L.dense(8), L.relu(), L.dense(3))


def _data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((48, 5))
    return x, (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0)


@pytest.mark.parametrize("epoch_mode", ["scan", "steps"])
def test_diagnostics_equal_the_statistics_computed_outside(epoch_mode):
    """Full batch: every step sees the same (x, y), so the run can be replayed step by step
    with make_step, and each recorded step measured with fbp.explain."""
    x, y = _data()
    opt = gd(0.2)
    _, history = fit(DIAG_NET, losses.softmax_cross_entropy, opt, (x, y), epochs=7,
                     progress=False, diagnostics_every=3, epoch_mode=epoch_mode)
    d = history["diagnostics"]
    assert d["step"] == [0, 3, 6] and d["every"] == 3
    assert d["layers"] == ["serial[0] dense(16)", "serial[1] tanh", "serial[2] dense(8)",
                           "serial[3] relu", "serial[4] dense(3)"]
    assert d["weights"] == [f"{name} ['w']" for name in d["layers"][::2]]
    state = init_state(DIAG_NET, opt, jax.random.fold_in(jax.random.key(0), 0), x.shape)
    step = make_step(DIAG_NET, losses.softmax_cross_entropy, opt)
    for t in range(7):
        before = jax.tree.map(np.asarray, state.params)
        if t in d["step"]:
            i = d["step"].index(t)
            report = fbp.explain(DIAG_NET, losses.softmax_cross_entropy, state.params,
                                 jnp.asarray(x), jnp.asarray(y))
            rows = [r for r in report.rows if r.path]
            # float32: two programs (fit's epoch, explain's pass) round apart, ~1e-7
            np.testing.assert_allclose(d["act_mean"][i], [r.mean for r in rows], rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(d["act_std"][i], [r.std for r in rows], rtol=1e-5)
            np.testing.assert_allclose(d["grad_norm"][i], [r.g_norm for r in rows], rtol=1e-5)
            assert d["act_frac"][i][1] == rows[1].frac_saturated
            assert d["act_frac"][i][3] == rows[3].frac_zero
            assert math.isnan(d["act_frac"][i][0])
        state, _ = step(state, x, y)
        if t in d["step"]:
            after = jax.tree.map(np.asarray, state.params)
            want = [np.linalg.norm(after[j]["w"] - before[j]["w"]) / np.linalg.norm(before[j]["w"])
                    for j in (0, 2, 4)]
            np.testing.assert_allclose(d["update_ratio"][d["step"].index(t)], want, rtol=1e-5)
    first, last = d["hist"]["first"], d["hist"]["last"]
    assert first["step"] == 0 and last["step"] == 7  # before and after the 7 steps
    assert [sum(h["counts"]) for h in last["act"]] == [48 * 16, 48 * 16, 48 * 8, 48 * 8, 48 * 3]


def test_the_step_without_diagnostics_is_the_plain_step():
    """With diagnostics off, make_step's program is value_and_grad + the optimizer update:
    the same jaxpr as that step written out here, no cond, nothing recorded."""
    import optax

    x, y = _data()
    opt = gd(0.1)
    state = init_state(DIAG_NET, opt, jax.random.key(0), x.shape)
    vg = fbp.value_and_grad(DIAG_NET, losses.softmax_cross_entropy)

    def written_out(state, x, y):
        key, dropout_key = jax.random.split(state.key)
        value, grads = vg(state.params, x, y, key=dropout_key)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        return (state._replace(params=optax.apply_updates(state.params, updates),
                               opt_state=opt_state, step=state.step + 1, key=key),
                {"loss": value})

    from fbp.train import _train_step
    ours = str(jax.make_jaxpr(_train_step(DIAG_NET, losses.softmax_cross_entropy, opt,
                                          "manual"))(state, x, y))
    assert ours == str(jax.make_jaxpr(written_out)(state, x, y))
    assert "cond" not in ours


def test_diagnostics_survive_a_checkpointed_resume(tmp_path):
    x, y = _data()
    kwargs = dict(batch_size=16, progress=False, diagnostics_every=2)
    _, full = fit(DIAG_NET, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=4, **kwargs)
    fit(DIAG_NET, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=2,
        checkpoint_dir=tmp_path, **kwargs)
    _, resumed = fit(DIAG_NET, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=4,
                     checkpoint_dir=tmp_path, **kwargs)
    # 3 steps an epoch, k = 2: each epoch records its steps 0 and 2
    assert resumed["diagnostics"]["step"] == full["diagnostics"]["step"] == [
        0, 2, 3, 5, 6, 8, 9, 11]
    np.testing.assert_array_equal(resumed["diagnostics"]["update_ratio"],
                                  full["diagnostics"]["update_ratio"])
    assert resumed["diagnostics"]["hist"] == full["diagnostics"]["hist"]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_diagnostics_every(bad):
    x, y = _data()
    with pytest.raises(ValueError, match="diagnostics_every must be a positive int"):
        fit(DIAG_NET, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=1,
            diagnostics_every=bad, progress=False)


# --- the command line ------------------------------------------------------------------------

def test_cli_explain_prints_the_table_and_the_initial_loss_check(capsys):
    import fbp.cli

    assert fbp.cli.main(["explain", "--data", "digits", "--hidden", "16,8",
                         "--activation", "tanh", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "serial[1] tanh" in out and "serial[4] dense(10)" in out
    assert "agree with jax.vjp" in out
    assert "against ln C = ln 10 = 2.3026" in out


@pytest.mark.standard_dtype_promotion
def test_cli_train_writes_the_diagnostics(tmp_path, capsys):
    import fbp.cli

    out_dir = tmp_path / "diag"
    assert fbp.cli.main(["train", "--data", "digits", "--hidden", "16", "--epochs", "2",
                         "--no-progress", "--no-extras", "--diagnostics", str(out_dir),
                         "--diagnostics-every", "5"]) == 0
    names = sorted(p.name for p in out_dir.iterdir())
    assert {"activations.png", "gradients.png", "update_ratio.png", "grad_norms.png",
            "graph.png"} <= set(names)
    for name in names:
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "diagnostics (" in capsys.readouterr().out
