"""Strict JAX settings for every test: float32 by default (x64 off, as users get it) and
float64 only in tests marked `x64`, no implicit rank promotion, no silent dtype promotion
(see the fixtures below), full-precision matmuls (GPUs default to TF32)."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fbp._layer import init_with_state

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _x64_only_where_marked(request):
    """x64 on for the tests marked `x64` (float64 is their point: tight gradient comparisons,
    finite differences, float64 references), off for every other test. Fixtures wider than
    a test (module, session) run outside this one, with x64 off.

    A test that turns x64 on for the whole process (jax.config.update) is an error: every
    test after it in the worker would run in float64."""
    with jax.enable_x64(bool(request.node.get_closest_marker("x64"))):
        yield
    if jax.enable_x64.value:
        jax.config.update("jax_enable_x64", False)
        pytest.fail("the test left jax_enable_x64 on for the whole process")


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
    """Strict dtype promotion (no silent float32 -> float64 upcasts) in fbp's own code.
    Tests that run optax's optimizers, which rely on standard promotion, opt out with
    the `standard_dtype_promotion` marker."""
    if request.node.get_closest_marker("standard_dtype_promotion"):
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    if any(d.platform == "gpu" for d in jax.devices()):
        return
    skip = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def rel_err(a, b) -> float:
    """max |a − b| / max |b|, over a whole pytree."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    la = [np.asarray(x, np.float64) for x in la]  # numpy: eager jnp would compile per shape
    lb = [np.asarray(y, np.float64) for y in lb]
    num = max((float(np.max(np.abs(x - y))) for x, y in zip(la, lb) if x.size), default=0.0)
    den = max((float(np.max(np.abs(y))) for y in lb if y.size), default=0.0)
    return num / den if den > 0 else num


def cast_tree(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def randomize(rng, params, scale=0.5):
    """Replace every parameter with random normal values (no zero biases, no kinks).

    numpy draws them: eager jax.random would compile anew for every shape."""
    return jax.tree_util.tree_map(
        lambda leaf: jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype), params)


def normal(rng, shape, dtype):
    return jnp.asarray(rng.standard_normal(shape), dtype)


def init_shapes(layer, in_shape):
    """(output shape, params as ShapeDtypeStructs): init traced, not run (tests randomize
    params). A stateful layer's state is left out (see `init_state_of`)."""
    out = {}

    def init(key):
        out["shape"], params, _ = init_with_state(layer, key, in_shape)
        return params

    params = jax.eval_shape(init, jax.random.key(0))
    return tuple(out["shape"]), params


def init_state_of(layer, in_shape):
    """The state `init` gives (running mean 0, variance 1 for batch_norm); {} if stateless."""
    return jax.jit(lambda key: init_with_state(layer, key, in_shape)[2])(jax.random.key(0))


EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    """examples/<name>.py as a module (its `main` is then called with small settings)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
