"""Data parallelism over (forced) CPU devices, and the bfloat16 mixed-precision policy."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal, randomize, rel_err

import fbp
from fbp import layers as L
from fbp import losses

pytestmark = pytest.mark.standard_dtype_promotion

FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from fbp import data, layers as L, losses
    from fbp.optim import gd
    from fbp.train import fit, init_state, make_step, data_mesh, replicate

    assert jax.device_count() == 4, jax.devices()
    (x, y), _ = data.load("digits")
    net = L.serial(L.dense(32), L.tanh(), L.dropout(0.1), L.dense(10))
    out = {}
    for grad in ("manual", "auto"):
        one, _ = fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=3, batch_size=32,
                     grad=grad, progress=False)
        four, _ = fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=3, batch_size=32,
                      grad=grad, devices=4, progress=False)
        out[grad] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)))
        out[grad + "_replicated"] = all(a.sharding.is_fully_replicated
                                        for a in jax.tree.leaves(four.params))
    # batch_norm: statistics of the whole batch, across the devices, and the state replicated
    bn_net = L.serial(L.dense(32), L.batch_norm(0.8), L.tanh(), L.dense(10))
    one, _ = fit(bn_net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=2, batch_size=32,
                 progress=False)
    four, _ = fit(bn_net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=2,
                  batch_size=32, devices=4, progress=False)
    out["bn"] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(jax.tree.leaves(one[:2]), jax.tree.leaves(four[:2])))
    out["bn_state_replicated"] = all(a.sharding.is_fully_replicated
                                     for a in jax.tree.leaves(four.net_state))
    mesh = data_mesh(4)
    optimizer = gd(0.1)
    state = replicate(mesh, init_state(net, optimizer, jax.random.key(0), (32, 64)))
    step = make_step(net, losses.softmax_cross_entropy, optimizer, mesh=mesh)
    hlo = step.lower(state, x[:32], y[:32]).compile().as_text()
    out["all_reduce"] = "all-reduce" in hlo
    try:
        step(state, x[:30], y[:30])
    except ValueError as e:
        out["step_error"] = str(e)
    try:
        fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=1, batch_size=30,
            devices=4, progress=False)
    except ValueError as e:
        out["fit_error"] = str(e)
    print(json.dumps(out))
""")


@pytest.mark.slow  # the default suite's time budget
def test_four_devices_equal_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["manual"] < 1e-5 and out["auto"] < 1e-5, out
    assert out["manual_replicated"] and out["auto_replicated"]  # parameters replicated
    assert out["bn"] < 1e-4 and out["bn_state_replicated"], out
    assert out["all_reduce"]  # gradients summed across devices by XLA
    assert "batch size 30 does not divide by the 4 devices" in out["step_error"]
    assert "batch size 30 does not divide by the 4 devices" in out["fit_error"]


def mlp():
    return L.serial(L.dense(32), L.gelu(), L.dense(32), L.silu(), L.dense(10))


@pytest.mark.parametrize("loss", [losses.softmax_cross_entropy, losses.mse])
def test_bf16_gradients_agree_with_float32_autodiff(loss):
    rng = np.random.default_rng(0)
    net = mlp()
    _, params = net.init(jax.random.key(0), (64, 16))
    params = randomize(rng, params, scale=0.3)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    x = normal(rng, (64, 16), jnp.float32)
    y = (jnp.asarray(rng.integers(0, 10, 64), jnp.int32) if loss is losses.softmax_cross_entropy
         else normal(rng, (64, 10), jnp.float32))
    ref_value, ref = jax.jit(fbp.autodiff_value_and_grad(net, loss))(params, x, y)
    for make in (fbp.value_and_grad, fbp.autodiff_value_and_grad):
        value, grads = jax.jit(make(net, loss, precision="bf16"))(params, x, y)
        assert value.dtype == jnp.float32
        assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))  # for the f32 update
        assert abs(float(value) - float(ref_value)) < 2e-2 * abs(float(ref_value))
        assert rel_err(grads, ref) < 3e-2
        assert rel_err(grads, ref) > 0  # it really did compute in lower precision


@pytest.mark.parametrize("causal", [False, True])
def test_bf16_transformer_block_gradients_agree_with_float32_autodiff(causal):
    """The dense attention's per-head layouts and gelu's backward under bf16 precision: the
    manual gradients of a transformer block stay within bf16's error of float32 jax.grad."""
    rng = np.random.default_rng(1)
    net = L.serial(L.transformer_block(2, mlp_ratio=2, causal=causal), L.dense(4))
    _, params = net.init(jax.random.key(0), (2, 8, 16))
    params = randomize(rng, params, scale=0.3)
    x = normal(rng, (2, 8, 16), jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, (2, 8)), jnp.int32)
    loss = losses.softmax_cross_entropy
    ref_value, ref = jax.jit(fbp.autodiff_value_and_grad(net, loss))(params, x, y)
    value, grads = jax.jit(fbp.value_and_grad(net, loss, precision="bf16"))(params, x, y)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    assert abs(float(value) - float(ref_value)) < 2e-2 * abs(float(ref_value))
    assert 0 < rel_err(grads, ref) < 3e-2


def test_bf16_runs_the_layers_in_bfloat16():
    net = mlp()
    _, params = net.init(jax.random.key(0), (8, 16))
    x = jnp.ones((8, 16), jnp.float32)
    y = jnp.zeros((8,), jnp.int32)
    jaxpr = str(jax.make_jaxpr(fbp.value_and_grad(net, losses.softmax_cross_entropy,
                                                  precision="bf16"))(params, x, y))
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert dots and all("bf16" in line for line in dots)


def test_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of .*got 'fp8'"):
        fbp.value_and_grad(mlp(), losses.mse, precision="fp8")


@pytest.mark.slow
def test_bf16_digits_reaches_float32_accuracy():
    from fbp import data
    from fbp.optim import gd
    from fbp.train import fit

    (x, y), (xt, yt) = data.load("digits")
    acc = {}
    for precision in (None, "bf16"):
        net = L.serial(L.dense(256), L.relu(), L.dropout(0.2), L.dense(128), L.relu(),
                       L.dropout(0.2), L.dense(10))
        _, h = fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=40, batch_size=32,
                   precision=precision, val_data=(xt, yt), progress=False)
        acc[precision] = h["val_accuracy"][-1]
    assert acc["bf16"] >= acc[None] - 0.01, acc
