"""Bad input gets a clear error from fbp itself, naming the layer (or loss), what it expected
and what came, instead of a shape error deep inside XLA.

Messages raised while JAX traces (init_shapes, jit) get a note appended after a newline,
hence `(\n|$)` instead of `$` there."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_shapes, randomize

import fbp
from fbp import layers as L
from fbp import losses


def _params(layer, in_shape, seed=0):
    """Real random params for `layer` at `in_shape`, drawn with numpy (no compile)."""
    return randomize(np.random.default_rng(seed), init_shapes(layer, in_shape)[1])


def _x(*shape, dtype=np.float32):
    return jnp.asarray(np.ones(shape, dtype))


# --- constructors -------------------------------------------------------------------------

@pytest.mark.parametrize("features", [0, -3, 2.5, "4", None])
def test_dense_features_must_be_a_positive_int(features):
    with pytest.raises(ValueError, match=rf"^dense: features must be a positive int, "
                                         rf"got {re.escape(repr(features))}$"):
        L.dense(features)


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rate_must_be_in_0_1(rate):
    with pytest.raises(ValueError, match=rf"^dropout: rate .* must be in \[0, 1\), "
                                         rf"got {re.escape(repr(rate))}$"):
        L.dropout(rate)


@pytest.mark.parametrize("make", [L.serial, L.residual, L.parallel], ids=lambda f: f.__name__)
def test_combinators_want_layers_not_functions(make):
    name = make.__name__
    with pytest.raises(TypeError, match=rf"^{name}: argument 0 is not a Layer but function "
                                        r"\(did you pass `relu` instead of `relu\(\)`\?\)"):
        make(L.relu)


def test_serial_rejects_a_layer_after_a_function():
    with pytest.raises(TypeError, match=r"^serial: argument 1 is not a Layer but function"):
        L.serial(L.dense(3), L.tanh)


def test_serial_needs_a_layer():
    with pytest.raises(ValueError, match=r"^serial: needs at least one layer$"):
        L.serial()


def test_parallel_unknown_merge():
    with pytest.raises(ValueError, match=r"^parallel: merge must be 'concat' or 'sum', "
                                         r"got 'max'$"):
        L.parallel(L.dense(2), L.dense(2), merge="max")


def test_huber_delta_must_be_positive():
    with pytest.raises(ValueError, match=r"^huber: delta must be positive, got 0$"):
        losses.huber_loss(0)


# --- init: shapes that cannot work --------------------------------------------------------

def test_residual_inner_layer_must_keep_the_shape():
    layer = L.residual(L.serial(L.dense(3), L.tanh()))
    with pytest.raises(ValueError, match=r"^residual\(serial\(dense\(3\), tanh\)\): the inner "
                                         r"layer must keep the shape for x \+ f\(x\); it maps "
                                         r"\(2, 4\) to \(2, 3\)(\n|$)"):
        init_shapes(layer, (2, 4))


def test_residual_shape_checked_at_apply_too():
    """Without init: the check in fwd catches it as well."""
    with pytest.raises(ValueError, match=r"^residual\(flatten\): the inner layer must keep the "
                                         r"shape for x \+ f\(x\); it maps \(2, 3, 4\) to "
                                         r"\(2, 12\)$"):
        L.residual(L.flatten()).apply({}, _x(2, 3, 4))


def test_parallel_concat_leading_dims_disagree():
    layer = L.parallel(L.flatten(), L.dense(5))  # (2, 12) vs (2, 3, 5)
    with pytest.raises(ValueError, match=r"^parallel\(flatten, dense\(5\); concat\): "
                                         r"merge='concat' needs branch outputs that agree on all "
                                         r"but the last axis, "
                                         r"got \[\(2, 12\), \(2, 3, 5\)\](\n|$)"):
        init_shapes(layer, (2, 3, 4))


def test_parallel_concat_leading_dims_disagree_at_apply():
    layer = L.parallel(L.flatten(), L.dense(5))
    params = ({}, _params(L.dense(5), (2, 3, 4)))
    with pytest.raises(ValueError, match=r"merge='concat' needs branch outputs that agree on "
                                         r"all but the last axis, got \[\(2, 12\), \(2, 3, 5\)\]"):
        layer.apply(params, _x(2, 3, 4))


def test_parallel_sum_shapes_disagree():
    layer = L.parallel(L.dense(2), L.dense(3), merge="sum")
    with pytest.raises(ValueError, match=r"^parallel\(dense\(2\), dense\(3\); sum\): merge='sum' "
                                         r"needs branches of one output shape, "
                                         r"got \[\(2, 2\), \(2, 3\)\](\n|$)"):
        init_shapes(layer, (2, 4))


def test_flatten_on_rank_1():
    with pytest.raises(ValueError, match=r"^flatten: expected an input of rank >= 2 \(batch "
                                         r"first\), got input_shape \(5,\)(\n|$)"):
        init_shapes(L.flatten(), (5,))
    with pytest.raises(ValueError, match=r"^flatten: expected an input of rank >= 2, "
                                         r"got shape \(5,\)(\n|$)"):
        L.flatten().apply({}, _x(5))


def test_init_shape_must_be_positive():
    with pytest.raises(ValueError, match=r"^dense\(3\): input_shape must be positive, "
                                         r"got \(2, 0\)(\n|$)"):
        init_shapes(L.dense(3), (2, 0))


# --- apply: x that does not fit the params ------------------------------------------------

def test_dense_last_dim_differs_from_params():
    layer = L.dense(3)
    params = _params(layer, (2, 4))
    with pytest.raises(ValueError, match=r"^dense\(3\): expected an input whose last dimension "
                                         r"is 4, got shape \(2, 5\)$"):
        layer.apply(params, _x(2, 5))


def test_dense_last_dim_checked_at_trace_time_under_jit():
    net = L.serial(L.dense(3), L.relu())
    params = _params(net, (2, 4))
    with pytest.raises(ValueError, match=r"^dense\(3\): expected an input whose last dimension "
                                         r"is 4, got shape \(2, 5\)(\n|$)"):
        jax.jit(net.apply)(params, _x(2, 5))


def test_dense_integer_input():
    layer = L.dense(3)
    params = _params(layer, (2, 4))
    with pytest.raises(TypeError, match=r"^dense\(3\): expected a floating-point input, "
                                        r"got dtype int\d+ \(shape \(2, 4\)\)$"):
        layer.apply(params, _x(2, 4, dtype=np.int32))


def test_dense_list_input():
    layer = L.dense(3)
    with pytest.raises(TypeError, match=r"^dense\(3\): expected an array, got list$"):
        layer.apply(_params(layer, (2, 4)), [[1.0, 2.0, 3.0, 4.0]])


# --- apply: params from another network ---------------------------------------------------

def test_serial_of_3_given_params_of_serial_of_2():
    net3 = L.serial(L.dense(4), L.tanh(), L.dense(2))
    params2 = _params(L.serial(L.dense(4), L.dense(2)), (2, 3))
    with pytest.raises(ValueError, match=r"^serial\(dense\(4\), tanh, dense\(2\)\): expected "
                                         r"params as a tuple of 3 \(one per child layer\), got a "
                                         r"tuple of length 2 \(params from another network\?\)$"):
        net3.apply(params2, _x(2, 3))


def test_serial_given_a_dict():
    net = L.serial(L.dense(4), L.dense(2))
    with pytest.raises(ValueError, match=r"expected params as a tuple of 2 .*got a dict"):
        net.apply(_params(L.dense(4), (2, 3)), _x(2, 3))


def test_dense_given_activation_params():
    with pytest.raises(ValueError, match=r"^dense\(3\): expected params with keys \['b', 'w'\], "
                                         r"got a dict with keys \[\] \(params from another "
                                         r"network\?\)$"):
        L.dense(3).apply({}, _x(2, 4))


def test_dense_params_of_wrong_shape():
    params = _params(L.dense(2), (2, 4))  # w (4, 2), b (2,)
    with pytest.raises(ValueError, match=r"^dense\(3\): expected params\['w'\] of shape \(4, 3\), "
                                         r"got \(4, 2\)"):
        L.dense(3).apply(params, _x(2, 4))


def test_dense_without_bias_given_bias():
    params = _params(L.dense(3), (2, 4))
    with pytest.raises(ValueError, match=r"^dense\(3\): expected params with keys \['w'\], got a "
                                         r"dict with keys \['b', 'w'\]"):
        L.dense(3, use_bias=False).apply(params, _x(2, 4))


@pytest.mark.parametrize("make", [L.relu, L.softmax, L.flatten, lambda: L.dropout(0.5)],
                         ids=["relu", "softmax", "flatten", "dropout"])
def test_parameter_free_layer_given_dense_params(make):
    layer = make()
    with pytest.raises(ValueError, match=rf"^{re.escape(layer.name)}: takes no parameters and "
                                         r"expects params \{\}, got a dict with keys "
                                         r"\['b', 'w'\] \(params from another network\?\)$"):
        layer.apply(_params(L.dense(3), (2, 4)), _x(2, 4))


# --- dropout without a key ----------------------------------------------------------------

def test_dropout_train_without_key():
    with pytest.raises(ValueError, match=r"^dropout\(0.5\): train=True needs a PRNG key, e\.g\. "
                                         r"apply\(params, x, key=jax\.random\.key\(0\), "
                                         r"train=True\)$"):
        L.dropout(0.5).apply({}, _x(2, 4), train=True)


def test_dropout_inside_a_net_train_without_key():
    net = L.serial(L.dense(3), L.dropout(0.25))
    params = _params(net, (2, 4))
    loss_and_grad = fbp.value_and_grad(net, losses.mse)  # train=True by default
    with pytest.raises(ValueError, match=r"^dropout\(0.25\): train=True needs a PRNG key"):
        loss_and_grad(params, _x(2, 4), _x(2, 3))


# --- losses -------------------------------------------------------------------------------

@pytest.mark.parametrize("loss", [losses.mse, losses.huber, losses.binary_cross_entropy],
                         ids=str)
def test_loss_shapes_disagree(loss):
    with pytest.raises(ValueError, match=rf"^{loss.name}: prediction and target shapes disagree: "
                                         r"pred \(4, 1\), target \(4,\) \(no broadcasting; "
                                         r"reshape one of them\)$"):
        loss(_x(4, 1), _x(4))


def test_cross_entropy_labels_of_wrong_shape():
    with pytest.raises(ValueError, match=r"^softmax_cross_entropy: integer labels must have shape "
                                         r"logits.shape\[:-1\] = \(4,\), got \(4, 1\)$"):
        losses.softmax_cross_entropy(_x(4, 3), _x(4, 1, dtype=np.int32))


def test_cross_entropy_float_targets_of_wrong_shape():
    with pytest.raises(ValueError, match=r"^softmax_cross_entropy: expected integer labels of "
                                         r"shape \(4,\) or one-hot/soft targets of shape \(4, 3\), "
                                         r"got float32 of shape \(4, 2\)$"):
        losses.softmax_cross_entropy(_x(4, 3), _x(4, 2))


@pytest.mark.parametrize("loss", [losses.mse, losses.huber, losses.softmax_cross_entropy,
                                  losses.binary_cross_entropy], ids=str)
def test_loss_integer_predictions(loss):
    target = _x(4, dtype=np.int32) if loss is losses.softmax_cross_entropy else _x(4, 3)
    with pytest.raises(TypeError, match=rf"^{loss.name}: expected floating-point predictions, "
                                        r"got int32$"):
        loss(_x(4, 3, dtype=np.int32), target)


def test_value_and_grad_with_a_non_loss():
    net = L.dense(3)
    with pytest.raises(TypeError, match=r"^expected a fbp\.losses\.Loss, got function "
                                        r"\(e\.g\. fbp\.losses\.mse\)$"):
        fbp.value_and_grad(net, lambda pred, y: jnp.mean((pred - y) ** 2))
    with pytest.raises(TypeError, match=r"^expected a fbp\.losses\.Loss, got str"):
        fbp.autodiff_value_and_grad(net, "mse")


def test_value_and_grad_with_a_non_layer():
    with pytest.raises(TypeError, match=r"^expected a fbp\.Layer as the network, got function"):
        fbp.value_and_grad(L.dense, losses.mse)
    with pytest.raises(TypeError, match=r"^custom_vjp: expected a fbp\.Layer, got function$"):
        fbp.custom_vjp(L.relu)


# --- gaps found while writing these tests, now closed ---------------------------------------

def test_parameter_free_layer_given_an_array():
    with pytest.raises(ValueError, match=r"^relu: takes no parameters"):
        L.relu().apply(jnp.ones(3), _x(2, 4))


def test_dense_given_empty_params_and_a_list():
    with pytest.raises((ValueError, TypeError), match=r"^dense\(3\): "):
        L.dense(3).apply({}, [[1.0, 2.0]])


def test_cross_entropy_negative_label_value_and_grad_agree():
    ce = losses.softmax_cross_entropy
    z = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)))
    labels = jnp.asarray([0, 1, -1])
    _, grad = jax.jit(ce.value_and_grad)(z, labels)
    _, grad_ref = jax.jit(jax.value_and_grad(ce))(z, labels)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(grad_ref), atol=1e-7)  # float32


def test_cross_entropy_refuses_out_of_range_labels_eagerly():
    z = jnp.zeros((2, 3))  # NumPy labels are checked; a jax.Array's are not read back (NaN)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); 1 of 2 do not "
                                         r"\(from 3 to 3\)"):
        losses.softmax_cross_entropy(z, np.asarray([0, 3]))


def test_cross_entropy_accepts_integer_one_hot_targets():
    z = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3)))
    one_hot = jnp.asarray([[0, 1, 0], [0, 0, 1]])
    labels = jnp.asarray([1, 2])
    assert float(losses.softmax_cross_entropy(z, one_hot)) == pytest.approx(
        float(losses.softmax_cross_entropy(z, labels)), rel=1e-12)


def test_numpy_integer_and_real_hyperparameters():
    assert L.dense(np.int64(3)).name == "dense(3)"
    assert L.dropout(np.float32(0.5)).name == "dropout(0.5)"
