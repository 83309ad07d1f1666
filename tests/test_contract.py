"""Layer contract v2: residuals of arrays across jit/scan/custom_vjp boundaries, check_layer
and check_grads catching a user's wrong backward (and naming the layer), from_function,
remat (its memory measured), and the numerics of exact GELU and dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_shapes, randomize, rel_err
from layer_cases import CASES, rng_for

import fbp
from fbp import layers as L
from fbp import losses
from fbp._layer import fwd_with_state, init_with_state


def _scaled_dx(layer, factor, name):
    """`layer` with a bwd whose ∂x is `factor` times too large (∂θ right)."""
    def bwd(params, res, g):
        grads, dx = layer.bwd(params, res, g)
        return grads, factor * dx
    return fbp.Layer(name, layer.init, layer.fwd, bwd)


def _zero_bwd_tanh():
    """A parameter-free tanh whose bwd returns 0."""
    t = L.tanh()
    return fbp.Layer("tanh with a zero bwd", t.init, t.fwd, lambda p, r, g: ({}, jnp.zeros_like(g)))


def _problem(net, in_shape, seed=0):
    rng = np.random.default_rng(seed)
    out_shape, params, state = init_with_state(net, jax.random.key(0), in_shape)
    params = randomize(rng, params)
    x = jnp.asarray(rng.standard_normal(in_shape))
    y = jnp.asarray(rng.standard_normal(out_shape))
    return params, x, y, state if net.stateful else None


# --- finding 4: ∂x is checked, alone and in a net -------------------------------------------

def test_check_layer_fails_a_wrong_dx_and_a_wrong_parameter_free_bwd():
    wrong_dx = _scaled_dx(L.dense(4), 3.0, "scale")
    report = fbp.check_layer(wrong_dx, (5, 3))
    assert not report.ok
    rows = {r.path: r for r in report.rows}
    assert rows["['w']"].ok and rows["['b']"].ok and not rows["x"].ok
    assert rows["x"].rel_err_vjp == pytest.approx(2.0, rel=1e-6)  # 3g Wᵀ against g Wᵀ
    assert "x: rel err vs jax.vjp 2.0e+00" in str(report)
    report = fbp.check_layer(_zero_bwd_tanh(), (5, 3))
    assert not report.ok and [r.path for r in report.rows] == ["x"]
    assert report.rows[0].rel_err_vjp == pytest.approx(1.0) and report.rows[0].rel_err_fd > 0.5


def test_check_grads_checks_dx_of_a_layer_alone():
    """Finding 4: check_grads compared parameter leaves only, so a dense layer with a wrong
    ∂x passed alone, and a parameter-free layer passed with zero rows checked."""
    for net in (_scaled_dx(L.dense(4), 3.0, "scale"), _zero_bwd_tanh()):
        params, x, y, _ = _problem(net, (5, 3))
        report = fbp.check_grads(net, losses.mse, params, x, y)
        assert not report.ok, str(report)
        x_row = next(r for r in report.leaves if r.path == "x")
        assert x_row.rel_err_autodiff > 0.5 and x_row.rel_err_fd > 0.5
        assert report.faulty_layers == [net.name]


@pytest.mark.parametrize("where", ["first", "middle", "nested"])
def test_check_grads_names_exactly_the_faulty_layers(where):
    wrong = _scaled_dx(L.dense(4), 3.0, "scale")
    if where == "first":  # its ∂x reaches no parameter: only ∂L/∂x and the search see it
        net = L.serial(wrong, L.tanh(), L.dense(2))
        expected = ["serial[0] scale"]
    elif where == "middle":
        net = L.serial(L.dense(4), wrong, L.tanh(), L.dense(2))
        expected = ["serial[1] scale"]
    else:  # two faulty layers, one deep inside combinators
        net = L.serial(L.dense(4), L.residual(L.serial(_zero_bwd_tanh(), L.dense(4))),
                       L.parallel(L.dense(2), wrong), L.dense(2))
        expected = ["serial[1]/residual[0]/serial[0] tanh with a zero bwd",
                    "serial[2]/parallel[1] scale"]
    params, x, y, _ = _problem(net, (5, 3))
    report = fbp.check_grads(net, losses.mse, params, x, y)
    assert not report.ok
    assert sorted(report.faulty_layers) == sorted(expected)
    for label in expected:
        assert f"faulty layer: {label}" in str(report)
    # every layer of the net was compared, at its own input
    assert {e.path for e in report.layers} >= {"", "serial[0]", "serial[1]"}


def test_a_correct_net_has_no_faulty_layer():
    net = L.serial(L.dense(4), L.residual(L.serial(L.dense(4), L.gelu())), L.batch_norm(),
                   L.parallel(L.dense(2), L.serial(L.dense(3), L.tanh())), L.dense(2))
    params, x, y, state = _problem(net, (6, 3))
    report = fbp.check_grads(net, losses.mse, params, x, y, state=state)
    assert report.ok, str(report)
    assert report.faulty_layers == []
    assert len(report.layers) == 13  # the net, its 5 children, and 7 layers below them
    assert max(max(e.rel_err_params, e.rel_err_x) for e in report.layers) < 1e-12


# --- finding 5: residuals are arrays: fwd and bwd apart --------------------------------------

# transformer_block is split too, by check_layer's contract over every built-in layer
SPLIT_CASES = ["flatten", "conv2d", "batch_norm", "parallel_concat", "max_pool", "avg_pool",
               "global_avg_pool", "dropout", "remat_batch_norm"]


@pytest.mark.parametrize("name", SPLIT_CASES)
def test_fwd_and_bwd_under_separate_jits_and_through_a_scan(name):
    """Finding 5: flatten, conv2d, batch_norm, parallel and transformer_block failed under
    jax.jit(fwd) then jax.jit(bwd): their residuals held shapes, paddings and flags."""
    layer, in_shape, _ = CASES[name](rng_for(name, 0))
    rng = np.random.default_rng(0)
    out_shape, params = init_shapes(layer, in_shape)
    params = randomize(rng, params)
    state = init_with_state(layer, jax.random.key(0), in_shape)[2] if layer.stateful else None
    x = jnp.asarray(rng.standard_normal(in_shape))
    g = jnp.asarray(rng.standard_normal(out_shape))
    key = jax.random.key(1)

    def fwd(p, x):
        return fwd_with_state(layer, p, x, key=key, train=True, state=state)[:2]

    y, res = jax.jit(fwd)(params, x)
    grads, dx = jax.jit(layer.bwd)(params, res, g)
    ref_grads, ref_dx = jax.vjp(lambda p, x: fwd(p, x)[0], params, x)[1](g)
    tol = 1e-5  # float32: the hand-written bwd and jax.vjp round apart
    assert rel_err(dx, ref_dx) < tol and rel_err(grads, ref_grads) < tol
    # residuals stacked by a scan over a batch of inputs, then the bwd scanned over them
    xs, gs = jnp.stack([x, 2 * x]), jnp.stack([g, -g])
    _, stacked = jax.lax.scan(lambda c, x: (c, fwd(params, x)[1]), 0, xs)
    _, (grads_s, dx_s) = jax.lax.scan(lambda c, rg: (c, layer.bwd(params, *rg)), 0, (stacked, gs))
    assert rel_err(dx_s[0], dx) < tol and rel_err(jax.tree.map(lambda a: a[0], grads_s),
                                                   grads) < tol


@pytest.mark.parametrize("name", ["flatten", "conv2d", "parallel_concat",
                                  pytest.param("transformer_block", marks=pytest.mark.slow)])
def test_custom_vjp_runs_the_hand_written_bwd(name):
    """fbp.custom_vjp is the JAX guide's few lines now: no side channel for static residuals."""
    layer, in_shape, _ = CASES[name](rng_for(name, 0))
    rng = np.random.default_rng(1)
    _, params = init_shapes(layer, in_shape)
    params = randomize(rng, params)
    x = jnp.asarray(rng.standard_normal(in_shape))
    calls = []

    def spy_bwd(p, r, g):
        calls.append(1)
        return layer.bwd(p, r, g)

    f = fbp.custom_vjp(fbp.Layer(layer.name, layer.init, layer.fwd, spy_bwd))
    g_manual = jax.grad(lambda p, x: jnp.sum(jnp.sin(f(p, x))), argnums=(0, 1))(params, x)
    g_auto = jax.grad(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x))), argnums=(0, 1))(
        params, x)
    assert calls and rel_err(g_manual, g_auto) < 1e-5  # float32 rounding
    # and through jit with fwd and bwd apart, as JAX runs a custom_vjp under jit
    g_jit = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(f(p, x))), argnums=(0, 1)))(params, x)
    assert rel_err(g_jit, g_auto) < 1e-5


# --- finding 6: exact GELU in the far tail, dropout's mask ------------------------------------

@pytest.mark.x64  # against jax.nn.gelu in float64, for float32 as well
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_exact_gelu_keeps_its_digits_in_the_negative_tail(dtype):
    """Finding 6: ½(1 + erf(z/√2)) cancelled: relative error 6e-2 at z = −5, 1.0 at −6 in
    float32. Through erfc it stays at jax.nn.gelu's accuracy, its derivative too."""
    z = jnp.linspace(-12, 3, 61, dtype=dtype)
    gelu = L.gelu()
    y, res = gelu.fwd({}, z)
    ref = jax.nn.gelu(z.astype(jnp.float64), approximate=False)
    tol = 1e-5 if dtype == jnp.float32 else 1e-13
    np.testing.assert_allclose(y, ref, rtol=tol, atol=0)
    _, dz = gelu.bwd({}, res, jnp.ones_like(z))
    dref = jax.vmap(jax.grad(lambda z: jax.nn.gelu(z, approximate=False)))(z.astype(jnp.float64))
    np.testing.assert_allclose(dz, dref, rtol=tol * 10, atol=0)


def test_dropout_keeps_a_boolean_mask_and_scales_in_float32():
    """Finding 6: the scaled mask was kept in x's dtype (1/(1 − p) rounded in bfloat16,
    4 bytes an element in float32)."""
    drop = L.dropout(0.3)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 32)) + 3, jnp.bfloat16)
    y, mask = drop.fwd({}, x, key=jax.random.key(0), train=True)
    assert mask.dtype == jnp.bool_ and mask.shape == x.shape
    x32 = np.asarray(x, np.float32)
    want = np.where(np.asarray(mask), x32 / np.float32(0.7), 0).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y), want)  # x/(1−p) rounded once, to bf16
    _, dx = drop.bwd({}, mask, jnp.ones_like(x))
    np.testing.assert_array_equal(np.asarray(dx), np.where(
        np.asarray(mask), np.float32(1 / 0.7), 0).astype(jnp.bfloat16))
    # the old way: 1/(1 − p) first rounded to bf16, then multiplied
    old = (x32 * np.float32(np.asarray(jnp.asarray(1 / 0.7, jnp.bfloat16), np.float32)))
    assert (np.asarray(y, np.float32) != old.astype(jnp.bfloat16).astype(np.float32))[
        np.asarray(mask)].any()


# --- from_function --------------------------------------------------------------------------

def test_from_function_trains_inside_a_net_and_is_marked_autodiff():
    def swish_by_autodiff(x):
        return x * jax.nn.sigmoid(x)

    def affine_init(key, input_shape):
        return input_shape[:-1] + (3,), {"w": jax.random.normal(key, (input_shape[-1], 3)),
                                         "b": jnp.ones((3,))}

    act = L.from_function(swish_by_autodiff)
    aff = L.from_function(lambda p, x: x @ p["w"] + p["b"][None, :], init=affine_init, name="affine")
    assert act.autodiff and aff.autodiff and not L.dense(3).autodiff
    assert act.name == "from_function(swish_by_autodiff)" and aff.name == "affine"
    assert fbp.check_layer(act, (4, 5)).ok and fbp.check_layer(aff, (4, 5)).ok
    assert "(autodiff: bwd is jax.vjp)" in str(fbp.check_layer(act, (4, 5)))
    # the same net with silu's hand-written bwd: same gradients
    net = L.serial(L.dense(5), act, aff)
    hand = L.serial(L.dense(5), L.silu(), L.dense(3))
    params, x, y, _ = _problem(net, (6, 4))
    report = fbp.check_grads(net, losses.mse, params, x, y)
    assert report.ok and [e.autodiff for e in report.layers if e.path == "serial[1]"] == [True]
    g_net = fbp.value_and_grad(net, losses.mse)(params, x, y)[1]
    g_hand = fbp.value_and_grad(hand, losses.mse)(params, x, y)[1]
    assert rel_err(g_net, g_hand) < 1e-5  # float32: autodiff of x σ(x) and silu's bwd


def test_from_function_infers_the_output_shape():
    layer = L.from_function(lambda x: x.reshape(x.shape[0], -1).sum(-1, keepdims=True))
    out_shape, params = layer.init(jax.random.key(0), (3, 4, 5))
    assert out_shape == (3, 1) and params == {}
    with pytest.raises(TypeError, match="from_function: expected a function"):
        L.from_function(3)


# --- remat ----------------------------------------------------------------------------------

def _deep(block, depth, width, use_remat):
    blocks = [L.remat(block(width)) if use_remat else block(width) for _ in range(depth)]
    return L.serial(L.dense(width), *blocks, L.dense(10))


def _mlp_block(width):
    return L.serial(L.dense(width), L.gelu(), L.dense(width), L.tanh())


def _temp_bytes(net, params, x, y):
    f = jax.jit(fbp.value_and_grad(net, losses.softmax_cross_entropy))
    return f.lower(params, x, y).compile().memory_analysis().temp_size_in_bytes


def test_remat_gives_equal_gradients_and_less_temporary_memory():
    width, depth, batch = 256, 8, 512
    plain, remat = (_deep(_mlp_block, depth, width, r) for r in (False, True))
    rng = np.random.default_rng(0)
    _, params = init_shapes(plain, (batch, 64))
    params = randomize(rng, params, scale=0.05)  # float32
    x = jnp.asarray(rng.standard_normal((batch, 64)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    l_plain, g_plain = jax.jit(fbp.value_and_grad(plain, losses.softmax_cross_entropy))(
        params, x, y)
    l_remat, g_remat = jax.jit(fbp.value_and_grad(remat, losses.softmax_cross_entropy))(
        params, x, y)
    assert float(l_plain) == float(l_remat)
    assert rel_err(g_remat, g_plain) < 1e-6
    mem_plain, mem_remat = _temp_bytes(plain, params, x, y), _temp_bytes(remat, params, x, y)
    # each block keeps 4 (batch × width) activations without remat, its input with it
    assert mem_remat < 0.6 * mem_plain, (mem_plain, mem_remat)


def test_remat_keeps_only_its_input():
    block = L.serial(L.dense(7), L.tanh(), L.dense(7))
    r = L.remat(block)
    _, params = r.init(jax.random.key(0), (3, 7))
    x = jnp.ones((3, 7))
    _, res = r.fwd(params, x)
    assert [a.shape for a in jax.tree.leaves(res)] == [(3, 7)]
    assert fbp.check_layer(r, (3, 7)).ok
    assert fbp.check_layer(L.remat(L.serial(L.dense(4), L.dropout(0.5))), (3, 4), train=True).ok


def test_the_readme_write_your_own_layer_steps():
    def scale(c, *, bwd_factor=1.0):
        def init(key, input_shape):
            return input_shape, {}

        def fwd(params, x, *, key=None, train=False):
            return c * x, ()

        def bwd(params, res, g):
            return {}, bwd_factor * c * g
        return fbp.Layer(f"scale({c})", init, fwd, bwd)

    report = fbp.check_layer(scale(3.0), (4, 5))
    assert report.ok and [r.path for r in report.rows] == ["x"]
    net = L.serial(L.dense(5), scale(3.0, bwd_factor=2.0), L.tanh(), L.dense(2))
    params, x, y, _ = _problem(net, (4, 3))
    report = fbp.check_grads(net, losses.mse, params, x, y)
    assert report.faulty_layers == ["serial[1] scale(3.0)"]
    assert "faulty layer: serial[1] scale(3.0)" in report.table()
    assert fbp.check_layer(L.from_function(lambda x: 3.0 * x), (4, 5)).ok
