"""conv2d, pooling, layer_norm, embedding, attention, transformer_block and the fused
linear + softmax cross-entropy: errors, direct references, properties, whole networks.

(Each layer's bwd against jax.vjp, over random configurations, is in test_vjp.py via
layer_cases.py; embedding, whose input is integer, is checked here.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_shapes, randomize, rel_err

import fbp
from fbp import layers as L
from fbp import losses
from fbp.fused import linear_softmax_cross_entropy_bwd, linear_softmax_cross_entropy_fwd


def _params(layer, in_shape, seed=0):
    """Random params for `layer` at `in_shape`, drawn with numpy (init traced, not compiled)."""
    return randomize(np.random.default_rng(seed), init_shapes(layer, in_shape)[1])


# --- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize(("make", "in_shape", "error", "message"), [
    (lambda: L.conv2d(2, 3, padding="FULL"), None, ValueError,
     r"conv2d\(2, 3\): unknown padding 'FULL'; expected 'SAME', 'VALID'"),
    (lambda: L.conv2d(2, 3, padding=((1, 1),)), None, ValueError, r"padding must be"),
    (lambda: L.conv2d(0, 3), None, ValueError, r"conv2d: features must be a positive int"),
    (lambda: L.conv2d(2, (3, 0)), None, ValueError, r"kernel_size must be a positive int"),
    (lambda: L.conv2d(2, 3, strides=0), None, ValueError, r"strides must be a positive"),
    (lambda: L.conv2d(2, 5, padding="VALID"), (1, 4, 6, 1), ValueError,
     r"conv2d\(2, 5\): the kernel \(5, 5\) is larger than the input \(4, 6\)"),
    (lambda: L.conv2d(2, 3, padding="VALID", dilation=2), (1, 6, 4, 1), ValueError,
     r"the dilated kernel \(5, 5\) is larger than the input \(6, 4\)"),
    (lambda: L.conv2d(2, 3), (2, 5, 5), ValueError,
     r"conv2d\(2, 3\): expected an NHWC input of rank 4 \(batch, height, width, channels\), "
     r"got shape \(2, 5, 5\)"),
    (lambda: L.max_pool(2, padding="full"), None, ValueError, r"max_pool\(2\): unknown padding"),
    (lambda: L.max_pool(4), (1, 3, 5, 1), ValueError,
     r"max_pool\(4\): the window \(4, 4\) is larger than the input \(3, 5\)"),
    (lambda: L.avg_pool(2, padding=((2, 0), (0, 0))), None, ValueError,
     r"avg_pool\(2\): explicit padding .* must be smaller than the window"),
    (lambda: L.global_avg_pool(), (2, 3, 4), ValueError, r"global_avg_pool: expected an NHWC"),
    (lambda: L.multi_head_attention(3), (2, 5, 8), ValueError,
     r"multi_head_attention\(3\): num_heads = 3 must divide the feature width, got features 8"),
    (lambda: L.multi_head_attention(2), (5, 8), ValueError,
     r"multi_head_attention\(2\): expected an input of rank 3 \(batch, seq, features\), "
     r"got shape \(5, 8\)"),
    (lambda: L.multi_head_attention(2), (2, 3, 5, 8), ValueError,
     r"multi_head_attention\(2\): expected an input of rank 3 \(batch, seq, features\)"),
    (lambda: L.transformer_block(3), (2, 5, 8), ValueError, r"num_heads = 3 must divide"),
    (lambda: L.layer_norm(eps=0), None, ValueError, r"layer_norm: eps must be a positive"),
    (lambda: L.embedding(0, 4), None, ValueError, r"embedding: vocab_size must be a positive"),
])
def test_bad_configuration_raises(make, in_shape, error, message):
    with pytest.raises(error, match=message):
        layer = make()
        init_shapes(layer, in_shape)


def test_errors_at_apply_time():
    """fwd checks the array it gets, not only init's shape."""
    conv = L.conv2d(2, 3, padding="VALID")
    params = _params(conv, (1, 5, 5, 1))
    with pytest.raises(ValueError, match=r"expected an NHWC input of rank 4 .* got shape \(5, 5, 1\)"):
        conv.apply(params, jnp.ones((5, 5, 1)))
    with pytest.raises(ValueError, match=r"kernel \(3, 3\) is larger than the input \(2, 5\)"):
        conv.apply(params, jnp.ones((1, 2, 5, 1)))
    with pytest.raises(ValueError, match=r"expected an input whose last dimension is 1"):
        conv.apply(params, jnp.ones((1, 5, 5, 2)))
    mha = L.multi_head_attention(2)
    with pytest.raises(ValueError, match=r"multi_head_attention\(2\): expected an input whose "
                                         r"last dimension is 4, got shape \(1, 3, 6\)"):
        mha.apply(_params(mha, (1, 3, 4)), jnp.ones((1, 3, 6)))
    with pytest.raises(ValueError, match=r"multi_head_attention\(2\): expected params with keys"):
        mha.apply(_params(L.dense(4), (1, 3, 4)), jnp.ones((1, 3, 4)))
    emb = L.embedding(10, 3)
    with pytest.raises(TypeError, match=r"embedding\(10, 3\): expected integer token ids, "
                                        r"got dtype float32 \(shape \(2, 4\)\)"):
        emb.apply(_params(emb, (2, 4)), jnp.ones((2, 4)))


def test_fused_cross_entropy_errors():
    x, w = jnp.ones((4, 3)), jnp.ones((3, 7))
    with pytest.raises(ValueError, match=r"expected integer labels of shape \(tokens,\) = \(4,\)"):
        losses.linear_softmax_cross_entropy(x, w, jnp.ones(4))
    with pytest.raises(ValueError, match=r"expected x \(tokens, d\) and w \(d, vocab\)"):
        losses.linear_softmax_cross_entropy(x, w.T, jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int, got 0"):
        losses.linear_softmax_cross_entropy(x, w, jnp.zeros(4, jnp.int32), chunk_size=0)


# --- conv2d against a direct reference ----------------------------------------------------

def test_conv2d_matches_direct_loops():
    """y, ∂W, ∂x, ∂b against the defining sums, written as numpy loops over the output."""
    rng = np.random.default_rng(0)
    (kh, kw), (sh, sw), (dh, dw), ((lo_h, hi_h), (lo_w, hi_w)) = (3, 2), (2, 3), (1, 2), \
        ((1, 2), (0, 1))
    layer = L.conv2d(3, (kh, kw), strides=(sh, sw), dilation=(dh, dw),
                     padding=((lo_h, hi_h), (lo_w, hi_w)))
    # padded 10 × 8: 1 and 2 rows/cols past the last window
    x = rng.standard_normal((2, 7, 7, 2)).astype(np.float32)
    params = _params(layer, x.shape)
    w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
    y, res = layer.fwd(params, jnp.asarray(x))
    g = rng.standard_normal(y.shape).astype(np.float32)
    grads, dx = layer.bwd(params, res, jnp.asarray(g))

    xp = np.pad(x.astype(np.float64), ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    g = g.astype(np.float64)  # the reference in float64
    y_ref, dxp, dw_ref = np.zeros(y.shape), np.zeros_like(xp), np.zeros_like(w)
    for p in range(y.shape[1]):
        for q in range(y.shape[2]):
            rows = p * sh + dh * np.arange(kh)
            cols = q * sw + dw * np.arange(kw)
            patch = xp[:, rows][:, :, cols]                          # (N, kh, kw, C)
            y_ref[:, p, q] = np.einsum("nijc,ijco->no", patch, w) + b
            dw_ref += np.einsum("nijc,no->ijco", patch, g[:, p, q])
            dxp[:, rows[:, None], cols[None, :]] += np.einsum("ijco,no->nijc", w, g[:, p, q])
    assert y.shape == (2, 4, 2, 3)
    tol = 1e-5  # float32 sums of products against float64 loops
    assert rel_err(y, y_ref) < tol
    assert rel_err(grads["w"], dw_ref) < tol
    assert rel_err(grads["b"], g.sum((0, 1, 2))) < tol
    assert rel_err(dx, dxp[:, lo_h:lo_h + 7, lo_w:lo_w + 7]) < tol


@pytest.mark.parametrize(("padding", "strides", "out_hw"), [
    ("SAME", 1, (5, 7)), ("SAME", 2, (3, 4)), ("VALID", 1, (3, 5)), ("VALID", 2, (2, 3))])
def test_conv2d_output_shape(padding, strides, out_hw):
    assert init_shapes(L.conv2d(4, 3, strides=strides, padding=padding),
                       (2, 5, 7, 1))[0] == (2, *out_hw, 4)


# --- pooling ------------------------------------------------------------------------------

def test_max_pool_routes_gradient_to_argmax():
    """Overlapping 2×2 windows, stride 1: each window's g lands on its maximum, and an
    element that is the maximum of several windows collects all of their g."""
    x = np.array([[1., 9., 2.],
                  [3., 4., 8.],
                  [7., 5., 6.]])[None, :, :, None]
    layer = L.max_pool(2, strides=1)
    y, res = layer.fwd({}, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y)[0, :, :, 0], [[9., 9.], [7., 8.]])
    g = np.array([[1., 10.], [100., 1000.]])[None, :, :, None]
    _, dx = layer.bwd({}, res, jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], [[0., 11., 0.],
                                                                [0., 0., 1000.],
                                                                [100., 0., 0.]])


def test_avg_pool_same_leaves_padding_out():
    """'SAME' averages only the input elements a window covers (count_include_pad=False)."""
    x = jnp.asarray(np.arange(1., 5.).reshape(1, 2, 2, 1))
    y = L.avg_pool(2, strides=1, padding="SAME").apply({}, x)
    np.testing.assert_allclose(np.asarray(y)[0, :, :, 0], [[2.5, 3.], [3.5, 4.]])


# --- layer_norm ---------------------------------------------------------------------------

def test_layer_norm_output_statistics():
    rng = np.random.default_rng(0)
    x = jnp.asarray(3 + 5 * rng.standard_normal((2, 3, 16)))
    layer = L.layer_norm()
    y = np.asarray(layer.apply({"scale": jnp.ones(16), "bias": jnp.zeros(16)}, x))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-6)  # float32: 16 terms of ~1, ε 6e-8
    np.testing.assert_allclose(y.var(-1), 1, atol=1e-5)  # σ²/(σ² + ε)
    params = {"scale": jnp.full((16,), 2.0), "bias": jnp.full((16,), -1.0)}
    y = np.asarray(layer.apply(params, x))
    np.testing.assert_allclose(y.mean(-1), -1, atol=1e-6)
    np.testing.assert_allclose(y.std(-1), 2, atol=1e-5)


# --- attention ----------------------------------------------------------------------------

def test_causal_attention_does_not_look_ahead():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4))
    x_changed = x.copy()
    x_changed[:, 3] += 1.0  # change token 3 only
    for causal, same_before in ((True, True), (False, False)):
        layer = L.multi_head_attention(2, causal=causal)
        params = _params(layer, x.shape)
        y = np.asarray(layer.apply(params, jnp.asarray(x)))
        y_changed = np.asarray(layer.apply(params, jnp.asarray(x_changed)))
        assert np.array_equal(y[:, :3], y_changed[:, :3]) == same_before
        assert not np.allclose(y[:, 3:], y_changed[:, 3:])


# --- embedding ----------------------------------------------------------------------------

def test_embedding_bwd_matches_jax_vjp():
    """Repeated ids add up in their row; the integer ids get a float0 zero, as from jax.vjp."""
    rng = np.random.default_rng(0)
    layer = L.embedding(6, 3)
    ids = jnp.asarray([[0, 2, 2], [5, 2, 0]], jnp.int32)
    params = _params(layer, ids.shape)
    g = jnp.asarray(rng.standard_normal((2, 3, 3)))
    y, res = layer.fwd(params, ids)
    grads, d_ids = layer.bwd(params, res, g)
    y_ref, vjp = jax.vjp(layer.apply, params, ids)
    grads_ref, d_ids_ref = vjp(g)
    assert rel_err(y, y_ref) == 0 and rel_err(grads, grads_ref) < 1e-15
    assert d_ids.dtype == d_ids_ref.dtype == jax.dtypes.float0 and d_ids.shape == ids.shape
    np.testing.assert_array_equal(np.asarray(grads["table"])[[1, 3, 4]], 0)  # ids not seen
    # and jax.grad through fbp.custom_vjp runs this bwd
    f = fbp.custom_vjp(layer)
    d_table = jax.grad(lambda p: jnp.sum(f(p, ids) * g))(params)["table"]
    assert rel_err(d_table, grads["table"]) < 1e-15


# --- whole networks: manual backprop = jax.grad -------------------------------------------

@pytest.mark.x64  # manual == jax.grad to 1e-10
def test_cnn_value_and_grad_matches_autodiff():
    net = L.serial(L.conv2d(4, 3, strides=(1, 2)), L.relu(), L.max_pool(2, padding="SAME"),
                   L.conv2d(3, 2, padding="VALID", dilation=(2, 1)), L.tanh(), L.flatten(),
                   L.dense(5))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 7, 7, 2)))
    labels = jnp.asarray(rng.integers(0, 5, 3))
    params = _params(net, x.shape)
    loss = losses.softmax_cross_entropy
    value, grads = jax.jit(fbp.value_and_grad(net, loss))(params, x, labels)
    value_ref, grads_ref = jax.jit(fbp.autodiff_value_and_grad(net, loss))(params, x, labels)
    assert abs(float(value) - float(value_ref)) < 1e-12
    assert rel_err(grads, grads_ref) < 1e-10


@pytest.mark.x64  # manual == jax.grad to 1e-10
def test_transformer_value_and_grad_matches_autodiff():
    """embedding → transformer_block (causal) → dense to the vocabulary, cross-entropy over
    (batch, seq, vocab)."""
    vocab, d = 7, 8
    net = L.serial(L.embedding(vocab, d), L.transformer_block(2, mlp_ratio=2, causal=True),
                   L.dense(vocab))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, vocab, (2, 5)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, vocab, (2, 5)), jnp.int32)
    params = _params(net, tokens.shape)
    loss = losses.softmax_cross_entropy
    value, grads = jax.jit(fbp.value_and_grad(net, loss))(params, tokens, targets)
    value_ref, grads_ref = jax.jit(fbp.autodiff_value_and_grad(net, loss))(
        params, tokens, targets)
    assert abs(float(value) - float(value_ref)) < 1e-12
    assert rel_err(grads, grads_ref) < 1e-10
    for leaf in jax.tree_util.tree_leaves(grads):
        assert np.abs(np.asarray(leaf)).max() > 0


@pytest.mark.x64  # manual == jax.grad to 1e-10
def test_transformer_with_dropout_and_positions_matches_autodiff():
    """positional_embedding, and dropout inside both branches of each block: the same key
    draws the same masks for the manual backward and for jax.grad."""
    vocab, d = 7, 8
    block = L.transformer_block(2, mlp_ratio=2, causal=True, dropout=0.3)
    assert block.name == "transformer_block(2, mlp_ratio=2, causal, dropout=0.3)"
    net = L.serial(L.embedding(vocab, d), L.positional_embedding(6), block, L.dense(vocab))
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, vocab, (3, 5)), jnp.int32)
    targets = jnp.asarray(rng.integers(0, vocab, (3, 5)), jnp.int32)
    params = _params(net, tokens.shape, seed=1)
    loss, key = losses.softmax_cross_entropy, jax.random.key(3)
    value, grads = jax.jit(fbp.value_and_grad(net, loss))(params, tokens, targets, key=key)
    value_ref, grads_ref = jax.jit(fbp.autodiff_value_and_grad(net, loss))(
        params, tokens, targets, key=key)
    assert abs(float(value) - float(value_ref)) < 1e-12
    assert rel_err(grads, grads_ref) < 1e-10
    # the rows of the position table past the sequence length get no gradient
    pos = np.asarray(grads[1]["table"])
    assert np.all(pos[5:] == 0) and np.abs(pos[:5]).min() > 0
    # dropout acts in training only, and differs between keys
    apply = jax.jit(net.apply, static_argnames="train")
    train = [apply(params, tokens, key=jax.random.key(k), train=True) for k in (0, 1)]
    assert not np.allclose(train[0], train[1])
    assert np.allclose(apply(params, tokens), apply(params, tokens, train=False))
    with pytest.raises(ValueError, match=r"dropout: rate"):
        L.transformer_block(2, dropout=1.0)
    with pytest.raises(ValueError, match=r"positional_embedding\(4\): expected an input "
                                         r"\(batch, T ≤ 4, features\), got shape \(3, 5, 8\)"):
        init_shapes(L.positional_embedding(4), (3, 5, 8))


# --- fused linear + softmax cross-entropy -------------------------------------------------

@pytest.mark.x64  # fused == unfused to 1e-12
@pytest.mark.parametrize(("vocab", "chunk_size"), [(23, 5), (20, 5), (3, 8)],
                         ids=["ragged-last-chunk", "exact-chunks", "one-small-chunk"])
def test_fused_cross_entropy_matches_unfused(vocab, chunk_size):
    rng = np.random.default_rng(vocab)
    x = jnp.asarray(rng.standard_normal((9, 4)))
    w = jnp.asarray(2 * rng.standard_normal((4, vocab)))
    labels = jnp.asarray(rng.integers(0, vocab, 9), jnp.int32)

    def unfused(x, w):
        return losses.softmax_cross_entropy(x @ w, labels)

    def fused(x, w):
        return losses.linear_softmax_cross_entropy(x, w, labels, chunk_size=chunk_size)

    def by_hand(x, w):
        value, res = linear_softmax_cross_entropy_fwd(x, w, labels, chunk_size=chunk_size)
        return value, linear_softmax_cross_entropy_bwd(res, jnp.ones_like(value),
                                                       chunk_size=chunk_size)

    value_ref, grads_ref = jax.jit(jax.value_and_grad(unfused, (0, 1)))(x, w)
    value, grads = jax.jit(jax.value_and_grad(fused, (0, 1)))(x, w)
    value_hand, grads_hand = jax.jit(by_hand)(x, w)
    assert abs(float(value) - float(value_ref)) < 1e-12
    assert abs(float(value_hand) - float(value_ref)) < 1e-12
    assert rel_err(grads, grads_ref) < 1e-12 and rel_err(grads_hand, grads_ref) < 1e-12


def test_fused_cross_entropy_uses_much_less_memory():
    """Compiled temp memory of value_and_grad at tokens 512, vocab 8192, d 64 (float32)."""
    tokens, d, vocab = 512, 64, 8192
    args = (jax.ShapeDtypeStruct((tokens, d), jnp.float32),
            jax.ShapeDtypeStruct((d, vocab), jnp.float32),
            jax.ShapeDtypeStruct((tokens,), jnp.int32))

    def temp_bytes(f):
        compiled = jax.jit(jax.value_and_grad(f, (0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    unfused = temp_bytes(lambda x, w, y: losses.softmax_cross_entropy(x @ w, y))
    fused = temp_bytes(lambda x, w, y: losses.linear_softmax_cross_entropy(
        x, w, y, chunk_size=1024))
    assert unfused >= tokens * vocab * 4  # at least the float32 logits
    assert fused * 4 <= unfused, f"fused {fused} B vs unfused {unfused} B"
