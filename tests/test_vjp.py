"""Every built-in layer and combinator through `fbp.check_layer`: its bwd (∂θ and ∂x)
against jax.vjp of its own forward and against finite differences, and the contract
(array-only residuals, fwd and bwd under separate jits, no retrace, gradients shaped and
typed like params and x). Forwards are checked against independent references in
test_forward_refs.py."""

import pytest
from layer_cases import CASES, TRAIN_DIFFERS, embedding_case, rng_for

import fbp

TOL = {"float64": 1e-10, "float32": 1e-5}


def _check(name, dtype, seed, train):
    rng = rng_for(name, seed)
    layer, in_shape, needs_key = CASES[name](rng)
    report = fbp.check_layer(layer, in_shape, train=train or needs_key, dtype=dtype,
                             key=fbp_key(rng))
    assert report.ok, str(report)
    assert report.vjp_rtol == TOL[dtype]
    # every gradient was compared (parameter-free layers through x), none vacuously
    assert [r.path for r in report.rows][-1] == "x"
    assert {c.what for c in report.contract} >= {
        "residuals are arrays only", "fwd and bwd under separate jits",
        "no retrace on a second call", "∂θ shaped and typed like params"}


def fbp_key(rng):
    import jax
    return jax.random.key(int(rng.integers(2**31)))


# the costliest cases (the transformer block, the nested combinators, chunked attention,
# 4-10 s each): float32 runs under -m slow, float64 in the default suite (test_chunked
# checks the chunked layer in float32 against the dense one)
HEAVY = {"transformer_block", "nested", "multi_head_attention_chunked"}


def _grid(names):
    return [pytest.param(name, dtype, marks=pytest.mark.slow)
            if name in HEAVY and dtype == "float32" else (name, dtype)
            for name in sorted(names) for dtype in ("float64", "float32")]


@pytest.mark.parametrize(("name", "dtype"), _grid(CASES))
def test_check_layer_passes_every_builtin(name, dtype):
    _check(name, dtype, seed=0, train=False)


@pytest.mark.parametrize(("name", "dtype"), _grid(TRAIN_DIFFERS))
def test_check_layer_passes_every_builtin_in_training(name, dtype):
    _check(name, dtype, seed=1, train=True)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", [0, 1])
def test_check_layer_passes_embedding_on_integer_ids(seed, dtype):
    layer, ids = embedding_case(rng_for("embedding", seed))
    report = fbp.check_layer(layer, ids.shape, x=ids, dtype=dtype)
    assert report.ok, str(report)
    assert report.rows[-1].note == "integer input: no gradient"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
@pytest.mark.parametrize("name", sorted(CASES))
def test_check_layer_more_shapes(name, seed, dtype):
    _check(name, dtype, seed, train=name in TRAIN_DIFFERS)
