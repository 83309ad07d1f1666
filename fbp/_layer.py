"""The layer contract, and the input checks every layer shares.

A layer is four things (five for a layer with running statistics, see `Layer`):

    init(key, input_shape)              -> (output_shape, params)
    fwd(params, x, *, key, train)       -> (y, res)          # res: what the backward needs
    bwd(params, res, g)                 -> (grads, g_x)      # the hand-written VJP
    apply(params, x, *, key, train)     -> y                 # fwd without res

`input_shape` includes the batch dimension; `init` infers every other size from it,
so a network is written once and its shapes follow. `g` is ∂L/∂y, the gradient
arriving from the layer above; `bwd` returns ∂L/∂params (shaped like `params`) and
∂L/∂x (shaped like `x`). Composing `bwd` from the last layer to the first is backprop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Shape = tuple[int, ...]
Params = Any
Res = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A layer: `init`, `fwd` and its hand-written VJP `bwd` (see the module doc).

    Layers are static Python values (hashable by identity, not pytrees); their
    parameters live apart from them, in the pytree that `init` returns.
    """

    name: str
    init: Callable[[Array, Shape], tuple[Shape, Params]]
    fwd: Callable[..., tuple[Array, Res]]
    bwd: Callable[[Params, Res, Array], tuple[Params, Array]]
    # Layers with running statistics (batch_norm) also have
    #   update_stats(params, res) -> stats
    # giving those statistics as moved on by the training pass that produced `res`, in a
    # params-shaped pytree with None at every other leaf (see `merge_stats`). Their
    # gradient is zero; the train step sets them after the optimizer's update.
    update_stats: Callable[[Params, Res], Any] | None = None

    def apply(self, params: Params, x: Array, *, key: Array | None = None,
              train: bool = False) -> Array:
        """y = f(params, x): the forward pass alone."""
        return self.fwd(params, x, key=key, train=train)[0]

    def __repr__(self) -> str:
        return self.name


def merge_stats(params: Params, stats: Any) -> Params:
    """`params` with the leaves that `stats` holds (not None) replaced by them."""
    return jax.tree_util.tree_map(lambda s, p: p if s is None else s.astype(p.dtype),
                                  stats, params, is_leaf=lambda s: s is None)


def no_stats(params: Params) -> Any:
    """The stats of a layer that keeps none: None at every leaf."""
    return jax.tree_util.tree_map(lambda _: None, params)


def default_float_dtype() -> jnp.dtype:
    """float64 when x64 is enabled, float32 otherwise."""
    return jnp.zeros(()).dtype


def check_shape(name: str, shape: Sequence[int], *, min_rank: int = 1) -> Shape:
    """Validate an `input_shape` given to `init`."""
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"{name}: input_shape must be a tuple of ints, got {shape!r}") from None
    if len(shape) < min_rank:
        raise ValueError(f"{name}: expected an input of rank >= {min_rank} "
                         f"(batch first), got input_shape {shape}")
    if any(d <= 0 for d in shape):
        raise ValueError(f"{name}: input_shape must be positive, got {shape}")
    return shape


def check_input(name: str, x: Any, *, min_rank: int = 1, last_dim: int | None = None,
                floating: bool = True, dtype: Any = None) -> None:
    """Validate the array a layer's `fwd` receives (at trace time, before XLA sees it)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    if floating and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point input, got dtype {x.dtype} "
                        f"(shape {tuple(x.shape)})")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} differs from the parameters' dtype "
                        f"{jnp.dtype(dtype)}; cast one of them (e.g. x.astype({jnp.dtype(dtype).name!r}))")
    if x.ndim < min_rank:
        raise ValueError(f"{name}: expected an input of rank >= {min_rank}, "
                         f"got shape {tuple(x.shape)}")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ValueError(f"{name}: expected an input whose last dimension is {last_dim}, "
                         f"got shape {tuple(x.shape)}")


def check_no_params(name: str, params: Params) -> None:
    """A parameter-free layer must be given its own empty params, `{}`."""
    if not (isinstance(params, dict) and not params):
        raise ValueError(f"{name}: takes no parameters and expects params {{}}, "
                         f"got {_describe(params)} (params from another network?)")


def check_param_shapes(name: str, params: Params, expected: dict[str, Shape]) -> None:
    """`params` must be a dict with exactly these keys and array shapes."""
    if not isinstance(params, dict) or set(params) != set(expected):
        raise ValueError(f"{name}: expected params with keys {sorted(expected)}, "
                         f"got {_describe(params)} (params from another network?)")
    for k, shape in expected.items():
        got = tuple(getattr(params[k], "shape", ()))
        if got != tuple(shape):
            raise ValueError(f"{name}: expected params[{k!r}] of shape {tuple(shape)}, "
                             f"got {got} (params from another network?)")


def _describe(params: Params) -> str:
    if isinstance(params, dict):
        return f"a dict with keys {sorted(params)}"
    if isinstance(params, (tuple, list)):
        return f"a {type(params).__name__} of length {len(params)}"
    return f"a {type(params).__name__}"


def split_key(key: Array | None, n: int) -> list[Array | None]:
    """n independent keys for n children (or n Nones when there is no key)."""
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))
