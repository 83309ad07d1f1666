"""Every layer's hand-written bwd against jax.vjp of its own forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cast_tree, init_shapes, normal, randomize, rel_err
from layer_cases import CASES, rng_for

TOL = {"float64": 1e-10, "float32": 1e-5}


# Random shapes under jit (seeds 0, 1, both dtypes); eagerly too for seed 0 in float64
# (eager mode compiles per op and shape, so it is the slow part of the suite).
@pytest.mark.parametrize(("dtype", "seed", "jit"),
                         [("float64", 0, False), ("float64", 0, True), ("float64", 1, True),
                          ("float32", 0, True), ("float32", 1, True)],
                         ids=["float64-0-eager", "float64-0-jit", "float64-1-jit",
                              "float32-0-jit", "float32-1-jit"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_bwd_matches_jax_vjp(name, dtype, seed, jit):
    rng = rng_for(name, seed)
    layer, in_shape, needs_key = CASES[name](rng)
    out_shape, params = init_shapes(layer, in_shape)
    params = cast_tree(randomize(rng, params), dtype)
    x = normal(rng, in_shape, dtype)
    g = normal(rng, out_shape, dtype)
    key = jax.random.key(int(rng.integers(2**31))) if needs_key else None

    def manual(params, x, g):
        y, res = layer.fwd(params, x, key=key, train=True)
        return (y, *layer.bwd(params, res, g))

    def reference(params, x, g):
        y, vjp = jax.vjp(lambda p, x: layer.apply(p, x, key=key, train=True), params, x)
        return (y, *vjp(g))

    if jit:
        manual, reference = jax.jit(manual), jax.jit(reference)
    y, grads, dx = manual(params, x, g)
    y_ref, grads_ref, dx_ref = reference(params, x, g)

    assert y.shape == tuple(out_shape) and y.dtype == jnp.dtype(dtype)
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    for gp, p in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(params)):
        assert gp.shape == p.shape and gp.dtype == p.dtype
    assert rel_err(y, y_ref) <= TOL[dtype]
    assert rel_err(dx, dx_ref) <= TOL[dtype], f"dx rel err {rel_err(dx, dx_ref):.2e}"
    assert rel_err(grads, grads_ref) <= TOL[dtype], f"grads rel err {rel_err(grads, grads_ref):.2e}"
    assert np.abs(np.asarray(dx)).max() > 0  # a zero gradient would pass vacuously


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
@pytest.mark.parametrize("name", sorted(CASES))
def test_bwd_matches_jax_vjp_more_shapes(name, seed, dtype):
    test_bwd_matches_jax_vjp(name, dtype, seed, jit=True)
