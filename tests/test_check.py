"""fbp.check_grads and `fbp check`: they pass correct gradients and catch wrong ones."""

import jax
import numpy as np
import pytest
from conftest import init_shapes, normal, randomize

import fbp
import fbp.check
import fbp.cli
from fbp import layers as L
from fbp import losses


def _scaled_bwd(layer, factor, name):
    """`layer` with the same init and fwd, and a bwd that returns factor × the true gradients."""
    def bwd(params, res, g):
        grads, dx = layer.bwd(params, res, g)
        return jax.tree_util.tree_map(lambda a: factor * a, grads), factor * dx
    return fbp.Layer(name, layer.init, layer.fwd, bwd)


def _problem(net, in_shape, n_out, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    _, params = init_shapes(net, in_shape)
    return (randomize(rng, params), normal(rng, in_shape, dtype),
            normal(rng, (in_shape[0], n_out), dtype))


@pytest.mark.x64  # the float64 report: its tolerances, and agreement to 1e-12
def test_correct_net_passes():
    net = L.serial(L.dense(4), L.tanh(), L.dense(2))
    params, x, y = _problem(net, (5, 3), 2, dtype="float64")
    report = fbp.check_grads(net, losses.mse, params, x, y)
    assert isinstance(report, fbp.GradReport)
    assert report.ok
    assert report.dtype == "float64" and report.autodiff_rtol == 1e-9
    assert [(leaf.path, leaf.shape) for leaf in report.leaves] == [
        ("[0]['b']", (4,)), ("[0]['w']", (3, 4)), ("[2]['b']", (2,)), ("[2]['w']", (4, 2)),
        ("x", (5, 3))]
    for leaf in report.leaves:
        assert leaf.rel_err_autodiff <= 1e-12 and leaf.rel_err_fd <= report.fd_rtol
    expected_loss = float(np.mean((np.asarray(net.apply(params, x)) - np.asarray(y)) ** 2))
    np.testing.assert_allclose([report.loss_manual, report.loss_autodiff], expected_loss,
                               rtol=1e-12)
    text = str(report)
    lines = text.splitlines()
    assert lines[0].split() == ["check", "param", "shape", "|Δ|", "auto", "rel", "auto", "|Δ|",
                                "fd", "rel", "fd", "ok"]
    for leaf, line in zip(report.leaves, lines[1:6], strict=True):
        assert line.startswith(report.name[:44]) and leaf.path in line and line.endswith("yes")
    assert lines[-1].endswith(": OK") and "MISMATCH" not in text


def test_wrong_bwd_is_caught():
    """A last layer whose bwd is 1% off: every leaf upstream of it is 1% off too."""
    off = _scaled_bwd(L.dense(2), 1.01, "dense(2) with a 1% error")
    net = L.serial(L.dense(4), L.tanh(), off)
    params, x, y = _problem(net, (5, 3), 2, seed=1)
    report = fbp.check_grads(net, losses.mse, params, x, y)
    assert not report.ok
    assert len(report.leaves) == 5  # four parameter leaves and x
    for leaf in report.leaves:
        # caught by both references, with about the size of the error put in
        assert 0.005 < leaf.rel_err_autodiff < 0.02 and leaf.rel_err_autodiff > report.autodiff_rtol
        assert 0.005 < leaf.rel_err_fd < 0.02 and leaf.rel_err_fd > report.fd_rtol
    # the loss itself comes from fwd, which is right
    np.testing.assert_allclose(report.loss_manual, report.loss_autodiff, rtol=1e-12)
    text = str(report)
    assert text.count(" NO") == 5 and text.endswith("MISMATCH")
    assert report.faulty_layers == ["serial[2] dense(2) with a 1% error"]


def _cli_cases(names, extra=()):
    """Replace builtin_cases (check_builtins has no case filter) with a few of them."""
    cases = [case for case in fbp.check.builtin_cases() if case[0] in names]
    assert [case[0] for case in cases] == list(names)
    return lambda: cases + list(extra)


def test_cli_check_subset(monkeypatch, capsys):
    monkeypatch.setattr(fbp.check, "builtin_cases", _cli_cases(["dense"]))
    assert fbp.cli.main(["check", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("check") and "rel auto" in out
    assert "dense [float64]" in out and "float32" not in out
    assert "1/1 checks agree with jax.grad and finite differences" in out


def test_cli_check_reports_a_mismatch(monkeypatch, capsys):
    wrong = ("wrong", L.serial(_scaled_bwd(L.dense(3), 0.9, "dense(3) x0.9")), losses.mse, (6, 4),
             lambda key, batch: jax.random.normal(key, (batch, 3)), False)
    monkeypatch.setattr(fbp.check, "builtin_cases", lambda: [wrong])
    assert fbp.cli.main(["check", "--dtype", "float64"]) == 1
    out = capsys.readouterr().out
    assert "0/1 checks agree" in out and "MISMATCH: wrong [float64]" in out


# `fbp check --dtype float64` runs every built-in case: ~80 s on 2 busy CPU cores.
@pytest.mark.slow
def test_cli_check_all_builtins(capsys):
    assert fbp.cli.main(["check", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    n = len(fbp.check.builtin_cases())
    assert f"{n}/{n} checks agree with jax.grad and finite differences" in out
    for name, *_ in fbp.check.builtin_cases():
        assert f"{name} [float64]"[:44] in out


def test_a_leaf_with_an_exactly_zero_gradient_is_judged_against_the_net_scale():
    """A bias just before batch_norm has true gradient 0: its relative error would be
    noise over noise; check_grads floors the scale at 1% of the net's largest gradient."""
    import jax

    from fbp import layers as L
    from fbp import losses as fl
    from fbp.check import check_grads, random_params

    net = L.serial(L.dense(5), L.batch_norm(), L.tanh(), L.dense(3))
    _, params, state = net.init(jax.random.key(0), (6, 4))
    params = random_params(jax.random.key(1), params)
    x = jax.random.normal(jax.random.key(2), (6, 4))
    y = jax.random.normal(jax.random.key(3), (6, 3))
    report = check_grads(net, fl.mse, params, x, y, state=state)
    assert report.ok, str(report)
    bias_row = next(r for r in report.leaves if r.path == "[0]['b']")
    # the true gradient is 0 up to rounding: float32's, ~1e-8 beside gradients of ~1
    assert bias_row.abs_err_autodiff < 1e-6
