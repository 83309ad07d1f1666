"""The layer contract, and the helpers every layer shares.

A layer is four functions; its parameters live apart from it, in the pytree `init` returns:

    init(key, input_shape)              -> (output_shape, params)
    fwd(params, x, *, key, train)       -> (y, res)          # res: what the backward needs
    bwd(params, res, g)                 -> (grads, g_x)      # the hand-written VJP
    apply(params, x, *, key, train)     -> y                 # fwd without res

`input_shape` includes the batch dimension; `init` infers every other size from it,
so a network is written once and its shapes follow. `g` is ∂L/∂y, the gradient
arriving from the layer above; `bwd` returns ∂L/∂params (shaped like `params`) and
∂L/∂x (shaped like `x`). Composing `bwd` from the last layer to the first is backprop.

`res` is a pytree of arrays only. What is static (shapes, paddings, split sizes, the train
flag) lives in the layer's closure, is read off array shapes (`shape_residual` keeps a
shape in a zero-byte array) or off the residual's structure (a train-mode residual may be a
different tuple than an eval-mode one). So `jax.jit(layer.fwd)` and `jax.jit(layer.bwd)`
can run apart, and the residuals can cross a `scan`, `custom_vjp` or remat boundary.

A layer with running statistics (batch_norm, and every combinator holding one) is
`stateful`: its statistics are a second pytree, `state`, apart from the trainable params —
they get no gradient, no weight decay, no optimizer moments. Such a layer's `init` and
`fwd` return one thing more, and `fwd`/`apply` take the state (as Haiku's
`transform_with_state` does):

    init(key, input_shape)                   -> (output_shape, params, state)
    fwd(params, x, *, key, train, state)     -> (y, res, new_state)
    bwd(params, res, g)                      -> (grads, g_x)
    apply(params, x, *, key, train, state)   -> (y, new_state)

In training the new state is the statistics moved on by this batch; in evaluation it is
`state` itself. Whoever calls `fwd` keeps the new state: nothing is updated in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from fbp import _tape

Array = jax.Array
Shape = tuple[int, ...]
Params = Any
State = Any
Res = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A layer: `init`, `fwd` and its hand-written VJP `bwd` (see the module doc).

    Layers are static Python values (hashable by identity, not pytrees); their
    parameters (and state) live apart from them, in the pytrees that `init` returns.

    stateful: `init` and `fwd` also return the state, `fwd` and `apply` take `state=`.
    autodiff: the backward is `jax.vjp` of the forward (`layers.from_function`), not written
        by hand; reports say so.
    children: the layers a combinator is made of, in order (for reports and pictures).
    """

    name: str
    init: Callable[..., tuple]
    fwd: Callable[..., tuple]
    bwd: Callable[[Params, Res, Array], tuple[Params, Array]]
    stateful: bool = False
    autodiff: bool = False
    children: tuple[Layer, ...] = ()

    def apply(self, params: Params, x: Array, *, key: Array | None = None,
              train: bool = False, state: State = None):
        """y = f(params, x): the forward pass alone; (y, new_state) for a stateful layer."""
        if not self.stateful:
            if state is not None and jax.tree_util.tree_leaves(state):
                raise ValueError(f"{self.name}: keeps no state, but state= was given")
            return self.fwd(params, x, key=key, train=train)[0]
        if state is None:
            raise ValueError(f"{self.name}: keeps running statistics; pass them, "
                             "apply(params, x, state=state), and keep the new state it returns")
        y, _, new_state = self.fwd(params, x, key=key, train=train, state=state)
        return y, new_state

    @property
    def kind(self) -> str:
        """The name without its arguments: `serial`, `dense`, ... (paths use it)."""
        return self.name.split("(", 1)[0]

    def __repr__(self) -> str:
        return self.name


# --- calling any layer the same way, stateful or not ------------------------------------------

def init_with_state(layer: Layer, key: Array, input_shape: Shape) -> tuple[Shape, Params, State]:
    """(output_shape, params, state) for any layer; a stateless layer's state is {}."""
    if layer.stateful:
        return layer.init(key, input_shape)
    out_shape, params = layer.init(key, input_shape)
    return out_shape, params, {}


def fwd_with_state(layer: Layer, params: Params, x: Array, *, key: Array | None = None,
                   train: bool = False, state: State = None) -> tuple[Array, Res, State]:
    """(y, res, new_state) for any layer; a stateless layer's state stays {}."""
    if layer.stateful:
        if state is None:
            raise ValueError(f"{layer.name}: keeps running statistics; pass state=")
        return layer.fwd(params, x, key=key, train=train, state=state)
    y, res = layer.fwd(params, x, key=key, train=train)
    return y, res, {}


def child_fwd(parent: str, i: int, layer: Layer, params: Params, x: Array, *,
              key: Array | None, train: bool, state: State) -> tuple[Array, Res, State]:
    """A combinator's call of its i-th child's fwd: `fwd_with_state`, seen by an
    inspection (`check_grads`' faulty-layer search) at the path `parent[i]`."""
    with _tape.at(parent, i) as tape:
        if tape is not None:  # recorded on entry: the tape lists calls parents first
            tape.record_call(layer, params, x, key, train, state)
        out = fwd_with_state(layer, params, x, key=key, train=train, state=state)
        if tape is not None:
            tape.record_fwd(out)
    return out


def child_bwd(parent: str, i: int, layer: Layer, params: Params, res: Res,
              g: Array) -> tuple[Params, Array]:
    """A combinator's call of its i-th child's bwd (seen at `parent[i]` by an inspection)."""
    with _tape.at(parent, i) as tape:
        out = layer.bwd(params, res, g)
        if tape is not None:
            tape.record_bwd(g, out)
    return out


def combinator(name: str, init, fwd, bwd, children: Sequence[Layer]) -> Layer:
    """A Layer from `init` and `fwd` written with state (init -> (shape, params, state),
    fwd(..., state) -> (y, res, state)); stateful exactly when a child is. Without a
    stateful child, the state (`{}`) is left out of the signatures."""
    children = tuple(children)
    if any(child.stateful for child in children):
        return Layer(name, init, fwd, bwd, stateful=True, children=children)

    def init_params(key, input_shape):
        out_shape, params, _ = init(key, input_shape)
        return out_shape, params

    def fwd_params(params, x, *, key=None, train=False):
        y, res, _ = fwd(params, x, key=key, train=train, state=None)
        return y, res

    return Layer(name, init_params, fwd_params, bwd, children=children)


def children_state(name: str, state: State, n: int) -> tuple:
    """A combinator's state: one entry per child ({} for a stateless one)."""
    if state is None:
        return ({},) * n
    if not isinstance(state, (tuple, list)) or len(state) != n:
        raise ValueError(f"{name}: expected state as a tuple of {n} (one per child layer), "
                         f"got {_describe(state)} (state from another network?)")
    return tuple(state)


def stateful_layers(layer: Layer, path: str = "") -> list[str]:
    """`path name` of every innermost stateful layer in `layer` (for error messages)."""
    if not layer.stateful:
        return []
    inner = [found for i, child in enumerate(layer.children)
             for found in stateful_layers(child, f"{path}/{layer.kind}[{i}]".lstrip("/"))]
    return inner or [f"{path} {layer.name}".strip()]


# --- residuals: arrays only ------------------------------------------------------------------

def shape_residual(shape: Sequence[int]) -> Array:
    """A residual that keeps a static shape and no data: a (0, *shape) array of zero bytes.

    Its shape survives jit, scan and custom_vjp boundaries as every array's does; read it
    back with `residual_shape`."""
    return jnp.zeros((0, *shape), jnp.int8)


def residual_shape(token: Array) -> Shape:
    """The shape that `shape_residual` kept."""
    return tuple(token.shape[1:])


# --- dtypes, shapes, inputs ------------------------------------------------------------------

def default_float_dtype() -> jnp.dtype:
    """float64 when x64 is enabled, float32 otherwise."""
    return jnp.zeros(()).dtype


def at_least_float32(dtype) -> jnp.dtype:
    """The dtype statistics and scales are computed in: float32, or the input's if wider."""
    dtype = jnp.dtype(dtype)
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def cast_floating(tree, dtype):
    """The pytree with its floating leaves cast to `dtype` (None: unchanged); integer leaves
    (labels, token ids) stay as they are. The one cast fbp uses for params, inputs, state."""
    if dtype is None:
        return tree

    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return jax.tree_util.tree_map(cast, tree)
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


def check_param_shapes(name: str, params: Params, expected: dict[str, Shape], *,
                       what: str = "params") -> None:
    """`params` (or the state: what="state") must be a dict with exactly these keys and
    array shapes."""
    if not isinstance(params, dict) or set(params) != set(expected):
        raise ValueError(f"{name}: expected {what} with keys {sorted(expected)}, "
                         f"got {_describe(params)} ({what} from another network?)")
    for k, shape in expected.items():
        got = tuple(getattr(params[k], "shape", ()))
        if got != tuple(shape):
            raise ValueError(f"{name}: expected {what}[{k!r}] of shape {tuple(shape)}, "
                             f"got {got} ({what} from another network?)")


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
