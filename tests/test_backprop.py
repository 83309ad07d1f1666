"""Whole-network backprop: fbp.value_and_grad against jax.grad on random deep nets, dropout
with keys, the custom_vjp bridge into JAX transformations, and the dtypes of the gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cast_tree, init_shapes, init_state_of, normal, randomize, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import fbp
from fbp import layers as L
from fbp import losses

TOL = {"float64": 1e-10, "float32": 1e-5}

# --- a) random deep nets: manual backprop == jax.grad ----------------------------------------

ACTIVATIONS = [L.relu, lambda: L.leaky_relu(0.1), L.sigmoid, L.tanh, L.gelu,
               lambda: L.gelu(approximate=True), L.elu, L.softplus, L.silu, L.softmax,
               L.log_softmax]
MAX_DEPTH = 3


@st.composite
def blocks(draw, width, depth):
    """(block, its output width) for an input of `width` features, nested at most MAX_DEPTH.

    Every activation follows a dense layer with random normal weights and biases, so no
    kink (ReLU at 0) is hit with probability 1.
    """
    kinds = ["dense", "dense", "residual"] + (["parallel"] if depth < MAX_DEPTH else [])
    kind = draw(st.sampled_from(kinds))
    act = draw(st.sampled_from(ACTIVATIONS))()
    if kind == "dense":
        w = draw(st.integers(1, 5))
        return L.serial(L.dense(w), act), w
    if kind == "residual":  # keeps the width: x + f(x)
        inner = [L.dense(width), act]
        if depth < MAX_DEPTH and draw(st.booleans()):
            inner = [draw(blocks(width, depth + 1))[0], *inner]
        return L.residual(L.serial(*inner)), width
    merge = draw(st.sampled_from(["concat", "sum"]))
    (b1, w1), (b2, w2) = draw(blocks(width, depth + 1)), draw(blocks(width, depth + 1))
    if merge == "concat":
        return L.parallel(b1, b2, merge="concat"), w1 + w2
    w = draw(st.integers(1, 5))  # sum needs one output width: end both branches with dense(w)
    return L.parallel(L.serial(b1, L.dense(w)), L.serial(b2, L.dense(w)), merge="sum"), w


@st.composite
def nets(draw, n_out_min):
    """(net, input shape, n_out, seed): a serial of 2-6 blocks and a dense head."""
    lead = draw(st.sampled_from([(), (draw(st.integers(1, 3)),)]))  # optional sequence axis
    in_shape = (draw(st.integers(1, 5)), *lead, draw(st.integers(1, 6)))
    width, layers = in_shape[-1], []
    for _ in range(draw(st.integers(2, 6))):
        block, width = draw(blocks(width, 1))
        layers.append(block)
    n_out = draw(st.integers(n_out_min, 4))
    return L.serial(*layers, L.dense(n_out)), in_shape, n_out, draw(st.integers(0, 2**32 - 1))


# Compiling a deep net dominates (seconds each): two tests, one per loss, run in parallel
# under xdist, with a few examples each. In float64: manual == jax.grad to 1e-10.
@pytest.mark.x64
@pytest.mark.parametrize("loss", [losses.mse, losses.softmax_cross_entropy], ids=str)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_random_deep_net_matches_jax_grad(loss, data):
    n_out_min = 2 if loss is losses.softmax_cross_entropy else 1
    net, in_shape, n_out, seed = data.draw(nets(n_out_min), label="net")
    rng = np.random.default_rng(seed)
    out_shape, params = init_shapes(net, in_shape)
    assert out_shape == (*in_shape[:-1], n_out)
    params = randomize(rng, params, scale=1.0)
    x = normal(rng, in_shape, "float64")
    if loss is losses.softmax_cross_entropy:
        y = jnp.asarray(rng.integers(0, n_out, in_shape[:-1]))
    else:
        y = normal(rng, out_shape, "float64")

    manual = fbp.value_and_grad(net, loss)
    autodiff = fbp.autodiff_value_and_grad(net, loss)

    @jax.jit
    def all_three(params, x, y):
        direct = jax.value_and_grad(lambda p: loss(net.apply(p, x), y))(params)
        return manual(params, x, y), autodiff(params, x, y), direct

    (v, g), (v_auto, g_auto), (v_direct, g_direct) = all_three(params, x, y)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(params)
    assert rel_err(v, v_direct) <= 1e-10 and rel_err(v_auto, v_direct) <= 1e-10
    assert rel_err(g, g_direct) <= 1e-10, f"{net}: rel err {rel_err(g, g_direct):.2e}"
    assert rel_err(g, g_auto) <= 1e-10, f"{net}: rel err {rel_err(g, g_auto):.2e}"
    assert max(np.abs(np.asarray(leaf)).max() for leaf in jax.tree_util.tree_leaves(g)) > 0


# --- b) dropout: the same key, the same mask, on both paths -----------------------------------

def test_dropout_net_keys_and_train_flag():
    rate = 0.5
    drop = L.dropout(rate)
    net = L.serial(L.dense(8), drop, L.dense(3))
    rng = np.random.default_rng(0)
    _, params = init_shapes(net, (6, 4))
    params = randomize(rng, params)
    x, y = normal(rng, (6, 4), "float32"), normal(rng, (6, 3), "float32")
    big = normal(rng, (40, 50), "float32")
    k1, k2 = jax.random.key(1), jax.random.key(2)
    manual = fbp.value_and_grad(net, losses.mse)
    autodiff = fbp.autodiff_value_and_grad(net, losses.mse)
    no_dropout = L.serial(L.dense(8), L.dense(3))

    @jax.jit
    def run(params, x, y, big, k1, k2):
        return dict(
            m1=manual(params, x, y, key=k1), a1=autodiff(params, x, y, key=k1),
            m2=manual(params, x, y, key=k2), a2=autodiff(params, x, y, key=k2),
            m_eval=manual(params, x, y, train=False),
            ref_eval=fbp.value_and_grad(no_dropout, losses.mse)((params[0], params[2]), x, y),
            y_eval=net.apply(params, x, train=False),
            y_ref=no_dropout.apply((params[0], params[2]), x),
            d_eval=drop.apply({}, big, train=False),
            d1=drop.apply({}, big, key=k1, train=True), d1_again=drop.apply({}, big, key=k1,
                                                                            train=True),
            d2=drop.apply({}, big, key=k2, train=True))

    r = jax.tree_util.tree_map(np.asarray, run(params, x, y, big, k1, k2))
    for m, a in (("m1", "a1"), ("m2", "a2")):
        assert rel_err(r[m], r[a]) <= TOL["float32"], f"{m} vs {a}: {rel_err(r[m], r[a]):.2e}"
    assert rel_err(r["m1"][1], r["m2"][1]) > 1e-3  # other key, other mask, other gradient
    # train=False: dropout is the identity, so the net is dense ∘ dense
    np.testing.assert_array_equal(r["d_eval"], np.asarray(big))
    np.testing.assert_array_equal(r["y_eval"], r["y_ref"])
    assert rel_err(r["m_eval"][1][0], r["ref_eval"][1][0]) <= 1e-14
    assert rel_err(r["m_eval"][1][2], r["ref_eval"][1][1]) <= 1e-14
    # masks: scaled by 1/(1 − p), the same for the same key, different for another key
    mask1, mask2 = r["d1"] / np.asarray(big), r["d2"] / np.asarray(big)
    np.testing.assert_allclose(np.unique(np.round(mask1, 12)), [0.0, 1 / (1 - rate)])
    np.testing.assert_array_equal(r["d1"], r["d1_again"])
    assert np.mean(mask1 != mask2) > 0.2
    assert abs(np.mean(mask1 > 0) - (1 - rate)) < 0.05


# --- c) the custom_vjp bridge: JAX transformations run the hand-written bwd --------------------

BRIDGE_CASES = {
    "dense": (lambda: L.dense(3), (5, 4), False),
    "serial": (lambda: L.serial(L.dense(6), L.tanh(), L.dense(2)), (5, 4), False),
    "flatten": (lambda: L.serial(L.flatten(), L.dense(5), L.sigmoid(), L.dense(2)), (5, 2, 3),
                False),
    "parallel_concat": (lambda: L.serial(L.parallel(L.dense(3), L.serial(L.dense(2), L.elu())),
                                         L.dense(2)), (5, 4), False),
    "residual_dropout": (lambda: L.serial(L.dense(4), L.residual(L.serial(L.dense(4), L.silu())),
                                          L.dropout(0.3), L.dense(2)), (5, 3), True),
}


def _bridge_results(layer, params, x, y, w, key, train):
    """The same quantities through custom_vjp(layer) and through autodiff of layer.apply."""
    f = fbp.custom_vjp(layer, train=train)
    paths = {"bridge": lambda p, x: f(p, x, key),
             "autodiff": lambda p, x: layer.apply(p, x, key=key, train=train)}
    out = {}
    for name, fn in paths.items():
        def scalar(p, x, fn=fn):
            return jnp.sum(w * jnp.sin(fn(p, x)))

        def per_example_loss(p, xi, yi, fn=fn):
            return losses.mse(fn(p, xi[None]), yi[None])

        y_out, vjp = jax.vjp(fn, params, x)
        out[name] = dict(
            y=y_out, grad=jax.grad(scalar, argnums=(0, 1))(params, x), vjp=vjp(w),
            per_example=jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0, 0))(params, x, y))
    return out


# Under jit for every case; eagerly only for the smallest (eager compiles per op and shape).
# In float64: the bridge's gradients == autodiff's to 1e-10.
@pytest.mark.x64
@pytest.mark.parametrize(("name", "jit"), [("dense", False)] + [(n, True) for n in BRIDGE_CASES],
                         ids=lambda v: {False: "eager", True: "jit"}.get(v, v))
def test_custom_vjp_bridge_matches_autodiff(name, jit):
    make, in_shape, train = BRIDGE_CASES[name]
    layer = make()
    rng = np.random.default_rng(len(name))
    out_shape, params = init_shapes(layer, in_shape)
    params = randomize(rng, params)
    x, w = normal(rng, in_shape, "float64"), normal(rng, out_shape, "float64")
    y = normal(rng, out_shape, "float64")
    key = jax.random.key(3) if train else None
    run = jax.jit(_bridge_results, static_argnums=(0, 6)) if jit else _bridge_results
    out = run(layer, params, x, y, w, key, train)
    bridge, ref = out["bridge"], out["autodiff"]
    assert rel_err(bridge["y"], ref["y"]) <= 1e-14
    for what in ("grad", "vjp", "per_example"):
        err = rel_err(bridge[what], ref[what])
        assert err <= TOL["float64"], f"{what}: rel err {err:.2e}"
    # per-example gradients: a leading axis of one gradient per example, summing to the batch's
    for g in jax.tree_util.tree_leaves(bridge["per_example"]):
        assert g.shape[0] == in_shape[0]
    assert max(np.abs(np.asarray(g)).max() for g in jax.tree_util.tree_leaves(bridge["grad"])) > 0


def test_custom_vjp_runs_the_hand_written_bwd():
    """A bwd that returns 2× the true gradient must show up as 2× under jax.grad: the bridge
    differentiates with `layer.bwd`, not by autodiff of `layer.fwd`."""
    d = L.dense(3)

    def bwd_doubled(params, res, g):
        grads, dx = d.bwd(params, res, g)
        return jax.tree_util.tree_map(lambda a: 2 * a, grads), 2 * dx

    doubled = fbp.Layer("dense(3)x2", d.init, d.fwd, bwd_doubled)
    rng = np.random.default_rng(0)
    _, params = init_shapes(doubled, (4, 5))
    params = randomize(rng, params)
    x = normal(rng, (4, 5), "float32")
    f = fbp.custom_vjp(doubled)

    @jax.jit
    def grads(params, x):
        through_bridge = jax.grad(lambda p, x: jnp.sum(jnp.tanh(f(p, x))), (0, 1))(params, x)
        through_fwd = jax.grad(lambda p, x: jnp.sum(jnp.tanh(doubled.apply(p, x))), (0, 1))(
            params, x)
        return through_bridge, through_fwd

    bridged, true = grads(params, x)
    doubled_true = jax.tree_util.tree_map(lambda a: 2 * np.asarray(a), true)
    assert rel_err(bridged, doubled_true) <= TOL["float32"]
    assert rel_err(bridged, true) > 0.5


# --- d) gradients have the params' structure, shapes and dtypes ------------------------------

def _dtype_net():
    return L.serial(L.dense(4), L.tanh(), L.parallel(L.dense(2), L.relu()), L.dense(3))


def test_grads_are_float32_by_default():
    """With x64 off (JAX's default, and this suite's), init gives float32 params and
    float32 gradients."""
    net = _dtype_net()
    rng = np.random.default_rng(0)
    _, params = init_shapes(net, (5, 2))
    params = randomize(rng, params)
    x = jnp.asarray(rng.standard_normal((5, 2)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((5, 3)), jnp.float32)
    value, grads = jax.jit(fbp.value_and_grad(net, losses.mse))(params, x, y)
    leaves = jax.tree_util.tree_leaves(grads)
    assert value.dtype == jnp.float32
    assert leaves and all(g.dtype == jnp.float32 for g in leaves)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)


@pytest.mark.x64  # float32 and float64 params side by side, against float64 gradients
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_grads_shaped_like_params(dtype):
    net = _dtype_net()
    rng = np.random.default_rng(1)
    _, params64 = init_shapes(net, (5, 2))
    params64 = randomize(rng, params64)
    x64, y64 = normal(rng, (5, 2), "float64"), normal(rng, (5, 3), "float64")
    params, x, y = cast_tree((params64, x64, y64), dtype)
    f = jax.jit(fbp.value_and_grad(net, losses.mse))
    value, grads = f(params, x, y)
    assert value.shape == () and value.dtype == jnp.dtype(dtype)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert grads[1] == {} and grads[2][1] == {}  # parameter-free layers: empty grads
    for g, p in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(params),
                    strict=True):
        assert g.shape == p.shape and g.dtype == p.dtype == jnp.dtype(dtype)
    # float32 gradients are float32-accurate versions of the float64 ones
    _, grads64 = f(params64, x64, y64)
    assert rel_err(grads, grads64) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [pytest.param(jnp.float64, marks=pytest.mark.x64),
                                   jnp.float32])
def test_l2_penalty_value_and_gradient_match_autodiff(dtype):
    """λ/2·Σ‖W‖² on the weight matrices only; manual (λW added by hand) against jax.grad of
    the penalized loss, with a batch_norm whose 1-D scale, bias and statistics go free."""
    net = L.serial(L.dense(6), L.batch_norm(), L.tanh(), L.dense(3))
    rng = np.random.default_rng(0)
    params = cast_tree(randomize(rng, init_shapes(net, (5, 4))[1]), dtype)
    x = jnp.asarray(rng.standard_normal((5, 4)), dtype)
    y = jnp.asarray(rng.standard_normal((5, 3)), dtype)
    lam = 0.3
    state = cast_tree(init_state_of(net, (5, 4)), dtype)
    value, grads, _ = fbp.value_and_grad(net, losses.mse, l2=lam)(params, x, y, state=state)
    value_ref, grads_ref, _ = fbp.autodiff_value_and_grad(net, losses.mse, l2=lam)(
        params, x, y, state=state)
    plain, plain_grads, _ = fbp.value_and_grad(net, losses.mse)(params, x, y, state=state)
    tol = 1e-12 if dtype == jnp.float64 else 1e-5
    assert rel_err(grads, grads_ref) < tol
    weights = [params[0]["w"], params[3]["w"]]
    penalty = 0.5 * lam * sum(float(np.sum(np.asarray(w, np.float64) ** 2)) for w in weights)
    assert float(value) == pytest.approx(float(plain) + penalty, rel=tol)
    assert float(value_ref) == pytest.approx(float(value), rel=tol)
    np.testing.assert_allclose(grads[0]["w"], plain_grads[0]["w"] + lam * params[0]["w"],
                               rtol=tol, atol=tol)
    # biases and normalization scales are not penalized
    np.testing.assert_array_equal(grads[0]["b"], plain_grads[0]["b"])
    np.testing.assert_array_equal(grads[1]["scale"], plain_grads[1]["scale"])


@pytest.mark.parametrize("bad", [-0.1, "0.1", True, float("nan")])
def test_l2_must_be_a_non_negative_number(bad):
    with pytest.raises(ValueError, match="l2 must be a non-negative number"):
        fbp.value_and_grad(L.serial(L.dense(2)), losses.mse, l2=bad)
