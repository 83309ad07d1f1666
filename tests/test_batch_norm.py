"""batch_norm: running statistics as state, evaluation mode, and training with them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal, rel_err

from fbp import layers as L
from fbp import losses
from fbp.optim import gd
from fbp.train import fit


def random_bn_params(rng, c):
    return {"scale": normal(rng, (c,), jnp.float64), "bias": normal(rng, (c,), jnp.float64),
            "mean": normal(rng, (c,), jnp.float64),
            "var": jnp.asarray(rng.uniform(0.5, 2.0, c))}


@pytest.mark.parametrize("train", [True, False])
def test_bwd_matches_jax_vjp_in_both_modes(train):
    rng = np.random.default_rng(0)
    bn = L.batch_norm()
    params = random_bn_params(rng, 4)
    x, g = normal(rng, (5, 3, 4), jnp.float64), normal(rng, (5, 3, 4), jnp.float64)
    y, res = bn.fwd(params, x, train=train)
    grads, dx = bn.bwd(params, res, g)
    y_ref, vjp = jax.vjp(lambda p, x: bn.apply(p, x, train=train), params, x)
    grads_ref, dx_ref = vjp(g)
    assert rel_err(y, y_ref) < 1e-12 and rel_err(dx, dx_ref) < 1e-10
    assert rel_err(grads, grads_ref) < 1e-10
    if train:  # the batch is normalized: per-feature mean 0, variance ~1 before γ, β
        x_hat = (y - params["bias"][None, None]) / params["scale"][None, None]
        np.testing.assert_allclose(np.asarray(x_hat).mean((0, 1)), 0, atol=1e-10)


def test_update_stats_moves_the_running_statistics():
    rng = np.random.default_rng(1)
    bn = L.batch_norm(0.75)
    params = random_bn_params(rng, 3)
    x = normal(rng, (64, 3), jnp.float64) * 2 + 5
    _, res = bn.fwd(params, x, train=True)
    stats = bn.update_stats(params, res)
    assert stats["scale"] is None and stats["bias"] is None
    np.testing.assert_allclose(stats["mean"], 0.75 * params["mean"] + 0.25 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["var"], 0.75 * params["var"] + 0.25 * x.var(0), rtol=1e-12)
    _, res_eval = bn.fwd(params, x, train=False)
    assert all(v is None for v in jax.tree.leaves(bn.update_stats(params, res_eval),
                                                  is_leaf=lambda v: v is None))


@pytest.mark.standard_dtype_promotion
def test_fit_with_batch_norm_manual_equals_auto_and_learns_the_statistics():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((128, 4)) * 3 + 7).astype(np.float32)
    y = (x[:, 0] > 7).astype(np.int32)
    net = L.serial(L.batch_norm(0.5), L.dense(8), L.relu(), L.dense(2))
    runs = {g: fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=4, batch_size=32,
                   grad=g, progress=False) for g in ("manual", "auto")}
    assert rel_err(runs["manual"][0].params, runs["auto"][0].params) < 1e-10
    stats = runs["manual"][0].params[0]
    np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=0.05)
    np.testing.assert_allclose(stats["var"], x.var(0), rtol=0.25)
    assert runs["manual"][1]["train_loss"][-1] < runs["manual"][1]["train_loss"][0]


def test_bad_batch_norm_configuration():
    with pytest.raises(ValueError, match=r"batch_norm: momentum must be in \[0, 1\), got 1.5"):
        L.batch_norm(1.5)
    with pytest.raises(ValueError, match="batch_norm.*rank >= 2"):
        L.batch_norm().init(jax.random.key(0), (4,))
