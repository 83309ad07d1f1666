"""Layer constructors check their own arguments: a bad one raises at construction, from fbp,
naming the layer, what it expected and what came; the valid edge values still construct."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbp import layers as L

NAN, INF = float("nan"), float("inf")


def _got(value) -> str:
    """The message's tail, `got <repr>`, as a regex."""
    return rf"got {re.escape(repr(value))}$"


# --- linear_softmax_head: vocab checked by the head itself -------------------------------------

@pytest.mark.parametrize("vocab", [0, -2, 2.5, 3.0, "4", None, True, np.float64(4)])
def test_head_vocab_must_be_a_positive_int(vocab):
    with pytest.raises(ValueError, match=rf"^linear_softmax_head: vocab must be a positive int, "
                                         rf"{_got(vocab)}"):
        L.linear_softmax_head(vocab)


def test_head_accepts_numpy_ints_and_names_itself_in_errors():
    head = L.linear_softmax_head(np.int64(5))
    assert head.name == "linear_softmax_head(5)"
    out_shape, params = head.init(jax.random.key(0), (2, 3))
    assert out_shape == (2, 5) and params["w"].shape == (3, 5)
    with pytest.raises(ValueError, match=r"^linear_softmax_head\(5\): expected an input whose "
                                         r"last dimension is 3, got shape \(2, 4\)"):
        head.apply(params, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"^linear_softmax_head\(5\): expected params with keys"):
        head.apply({"w": params["w"], "b": jnp.zeros(5)}, jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=r"^linear_softmax_head: w_init must be a function"):
        L.linear_softmax_head(5, w_init="glorot")


def test_head_is_dense_without_bias():
    """The head's own init/fwd/bwd give what dense(vocab, use_bias=False) gives, bit for bit."""
    head, dense = L.linear_softmax_head(4), L.dense(4, use_bias=False)
    key = jax.random.key(3)
    (s1, p1), (s2, p2) = head.init(key, (2, 3, 5)), dense.init(key, (2, 3, 5))
    assert s1 == s2 and np.array_equal(p1["w"], p2["w"])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5)), jnp.float32)
    g = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4)), jnp.float32)
    (y1, r1), (y2, r2) = head.fwd(p1, x), dense.fwd(p2, x)
    assert np.array_equal(y1, y2)
    (gr1, dx1), (gr2, dx2) = head.bwd(p1, r1, g), dense.bwd(p2, r2, g)
    assert np.array_equal(gr1["w"], gr2["w"]) and np.array_equal(dx1, dx2)


# --- embedding, positional_embedding: the integers dense takes --------------------------------

@pytest.mark.parametrize("value", [0, -1, 2.0, "5", None, True, False, np.float32(5)])
def test_embedding_sizes_must_be_positive_ints(value):
    with pytest.raises(ValueError, match=rf"^embedding: vocab_size must be a positive int, "
                                         rf"{_got(value)}"):
        L.embedding(value, 3)
    with pytest.raises(ValueError, match=rf"^embedding: features must be a positive int, "
                                         rf"{_got(value)}"):
        L.embedding(5, value)
    with pytest.raises(ValueError, match=rf"^positional_embedding: max_len must be a positive "
                                         rf"int, {_got(value)}"):
        L.positional_embedding(value)


@pytest.mark.parametrize("int_type", [int, np.int64, np.int32, np.uint8])
def test_embedding_accepts_numpy_integers(int_type):
    emb = L.embedding(int_type(5), int_type(3))
    assert emb.name == "embedding(5, 3)"
    out_shape, params = emb.init(jax.random.key(0), (2, 4))
    assert out_shape == (2, 4, 3) and params["table"].shape == (5, 3)
    pos = L.positional_embedding(int_type(4))
    assert pos.name == "positional_embedding(4)"
    assert pos.init(jax.random.key(0), (2, 4, 3))[1]["table"].shape == (4, 3)


def test_embedding_table_init_must_be_callable():
    with pytest.raises(TypeError, match=r"^embedding: table_init must be a function .* got str"):
        L.embedding(5, 3, table_init="normal")
    with pytest.raises(TypeError, match=r"^positional_embedding: table_init must be a function"):
        L.positional_embedding(4, table_init=None)


# --- activations --------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0, -1.0, NAN, INF, -INF, True, "1", None, np.float32(NAN)])
def test_elu_alpha_must_be_positive_and_finite(alpha):
    with pytest.raises(ValueError, match=rf"^elu: alpha must be a positive finite number, "
                                         rf"{_got(alpha)}"):
        L.elu(alpha)


def test_elu_valid_alphas():
    assert L.elu().name == "elu" and L.elu(1).name == "elu"
    assert L.elu(0.5).name == "elu(0.5)" and L.elu(np.float32(0.5)).name == "elu(0.5)"
    assert L.elu(1e-30).name == "elu(1e-30)"
    # a NumPy alpha does not widen a bfloat16 input (alpha is kept as a Python float)
    y = L.elu(np.float32(0.5)).apply({}, -jnp.ones(3, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16


@pytest.mark.parametrize("slope", ["a", None, -0.1, 1, 1.0, NAN, INF, False, True, [0.1]])
def test_leaky_relu_slope_must_be_a_number_in_0_1(slope):
    with pytest.raises(ValueError, match=rf"^leaky_relu: negative_slope must be in \[0, 1\), "
                                         rf"{_got(slope)}"):
        L.leaky_relu(slope)


def test_leaky_relu_valid_slopes():
    assert L.leaky_relu().name == "leaky_relu(0.01)"
    assert L.leaky_relu(0).name == "leaky_relu(0)"
    assert L.leaky_relu(0.0).name == "leaky_relu(0.0)"
    assert L.leaky_relu(np.float64(0.5)).name == "leaky_relu(0.5)"
    assert L.leaky_relu(0.999).name == "leaky_relu(0.999)"


@pytest.mark.parametrize("approximate", ["tanh", "none", None, 1, 0, 1.0])
def test_gelu_approximate_must_be_a_bool(approximate):
    with pytest.raises(ValueError, match=rf"^gelu: approximate must be True or False, "
                                         rf"{_got(approximate)}"):
        L.gelu(approximate=approximate)


def test_gelu_valid_approximate():
    assert L.gelu().name == "gelu(approximate=False)"
    assert L.gelu(approximate=True).name == "gelu(approximate=True)"
    assert L.gelu(approximate=np.bool_(True)).name == "gelu(approximate=True)"
    assert L.gelu(False).name == "gelu(approximate=False)"


# --- batch_norm, layer_norm, dropout ------------------------------------------------------------

@pytest.mark.parametrize("momentum", ["x", None, -0.1, 1, 1.5, NAN, INF, True, False])
def test_batch_norm_momentum_must_be_a_number_in_0_1(momentum):
    with pytest.raises(ValueError, match=rf"^batch_norm: momentum must be in \[0, 1\), "
                                         rf"{_got(momentum)}"):
        L.batch_norm(momentum=momentum)


@pytest.mark.parametrize("eps", ["x", None, 0, -1e-5, NAN, INF, True])
def test_batch_norm_eps_must_be_positive_and_finite(eps):
    with pytest.raises(ValueError, match=rf"^batch_norm: eps must be a positive finite number, "
                                         rf"{_got(eps)}"):
        L.batch_norm(eps=eps)


def test_batch_norm_valid_edges():
    assert L.batch_norm(0).name == "batch_norm(0)"
    assert L.batch_norm(0.0).name == "batch_norm(0.0)"
    assert L.batch_norm(np.float32(0.5), eps=np.float64(1e-3)).name == "batch_norm(0.5)"
    assert L.batch_norm(0.99, eps=1).stateful


@pytest.mark.parametrize("eps", ["x", None, 0, -1.0, NAN, INF, True, np.float32(NAN)])
def test_layer_norm_eps_must_be_positive_and_finite(eps):
    with pytest.raises(ValueError, match=rf"^layer_norm: eps must be a positive finite number, "
                                         rf"{_got(eps)}"):
        L.layer_norm(eps=eps)


def test_layer_norm_valid_edges_and_initializers():
    assert L.layer_norm().name == "layer_norm"
    assert L.layer_norm(eps=1e-3).name == "layer_norm(eps=0.001)"
    assert L.layer_norm(eps=np.float32(0.5)).name == "layer_norm(eps=0.5)"
    assert L.layer_norm(eps=1).name == "layer_norm(eps=1)"
    with pytest.raises(TypeError, match=r"^layer_norm: scale_init must be a function .* got int"):
        L.layer_norm(scale_init=1)
    with pytest.raises(TypeError, match=r"^layer_norm: bias_init must be a function .* got str"):
        L.layer_norm(bias_init="zeros")


@pytest.mark.parametrize("rate", [NAN, INF, True, False, "0.5", None])
def test_dropout_rate_rejects_non_numbers_nan_and_bools(rate):
    with pytest.raises(ValueError, match=rf"^dropout: rate .* must be in \[0, 1\), {_got(rate)}"):
        L.dropout(rate)


def test_dropout_valid_edges():
    assert L.dropout(0).name == "dropout(0.0)"
    assert L.dropout(np.float64(0.25)).name == "dropout(0.25)"
    assert math.isclose(float(L.dropout(0.999).name[8:-1]), 0.999)


# --- from_function ------------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [3, "sin", None, jnp.ones(2)])
def test_from_function_fn_must_be_callable(fn):
    with pytest.raises(TypeError, match=rf"^from_function: expected a function, "
                                        rf"got {type(fn).__name__}"):
        L.from_function(fn)


@pytest.mark.parametrize("init", [3, "init", {"w": 1.0}])
def test_from_function_init_must_be_none_or_callable(init):
    with pytest.raises(TypeError, match=rf"^from_function: init must be a function "
                                        rf"\(key, input_shape\) -> \(output_shape, params\), "
                                        rf"got {type(init).__name__}"):
        L.from_function(jnp.sin, init=init)


def test_from_function_name_must_be_a_str():
    with pytest.raises(TypeError, match=r"^from_function: name must be a str, got int 3$"):
        L.from_function(jnp.sin, name=3)


def test_from_function_valid_arguments():
    assert L.from_function(jnp.sin).name == "from_function(sin)"
    assert L.from_function(jnp.sin, init=None, name="s").name == "s"

    def init(key, input_shape):
        return input_shape, {"a": jnp.ones(())}
    layer = L.from_function(lambda p, x: p["a"] * x, init=init, name="scale")
    assert layer.init(jax.random.key(0), (2, 3))[0] == (2, 3)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: L.dense(3, w_init="glorot"), r"^dense: w_init must be a function .* got str"),
    (lambda: L.dense(3, b_init=0.0), r"^dense: b_init must be a function .* got float"),
    (lambda: L.conv2d(4, 3, w_init=None), r"^conv2d: w_init must be a function .* got NoneType"),
    (lambda: L.multi_head_attention(2, b_init=[0]),
     r"^multi_head_attention: b_init must be a function .* got list"),
])
def test_uncallable_initializers_are_refused_at_construction(build, message):
    with pytest.raises(TypeError, match=message):
        build()
