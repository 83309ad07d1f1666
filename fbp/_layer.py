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
from jax.typing import DTypeLike

from fbp import _tape

Array = jax.Array
"""A JAX array (`jax.Array`)."""
Shape = tuple[int, ...]
"""A shape, batch first: `input_shape` and the output shape `init` returns."""
Params = Any
"""A layer's parameters: a pytree of arrays (`{}` for a layer without any)."""
State = Any
"""A stateful layer's running statistics: a pytree of arrays apart from the params."""
Res = Any
"""What `fwd` keeps for `bwd`: a pytree of arrays only."""
PyTree = Any
"""A pytree of arrays: arrays in any nesting of tuples, lists and dicts, or another JAX
pytree (a `TrainState`). `Any`, as JAX has no static type for pytrees."""
Initializer = Callable[[Array, Shape, DTypeLike], Array]
"""A parameter initializer, `init(key, shape, dtype) -> array`: any of `jax.nn.initializers`
(`glorot_uniform()`, `zeros`, ...). fbp's layers call it with a PRNG key, the parameter's
shape and the floating dtype of their params (`default_float_dtype()`)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Layer:
    """A layer: `init`, `fwd` and its hand-written VJP `bwd` (see the module doc).

    Layers are static Python values (hashable by identity, not pytrees); their
    parameters (and state) live apart from them, in the pytrees that `init` returns.

    Attributes:
        name: how reports, errors and paths name it ("dense(8)"); `kind` is its first part.
        init: `init(key, input_shape) -> (output_shape, params)` (and the state third, for
            a stateful layer).
        fwd: `fwd(params, x, *, key, train) -> (y, res)` (`state=` in, the new state out
            third, for a stateful layer).
        bwd: `bwd(params, res, g) -> (grads, g_x)`, the hand-written VJP: ∂L/∂params
            shaped like params and ∂L/∂x shaped like x, from g = ∂L/∂y.
        stateful: `init` and `fwd` also return the state, `fwd` and `apply` take `state=`.
        autodiff: the backward is `jax.vjp` of the forward (`layers.from_function`), not
            written by hand; reports say so.
        children: the layers a combinator is made of, in order (for reports and pictures).

    Examples:
        A layer y = w·x with one scalar parameter w, and its backward written out:

        >>> import jax, jax.numpy as jnp
        >>> from fbp.contract import Layer
        >>> def init(key, input_shape):
        ...     return input_shape, {"w": jnp.ones(())}
        >>> def fwd(params, x, *, key=None, train=False):
        ...     return params["w"] * x, (x,)              # res: what bwd needs
        >>> def bwd(params, res, g):                      # ∂w = Σ g·x,  ∂x = w·g
        ...     (x,) = res
        ...     return {"w": jnp.sum(g * x)}, params["w"] * g
        >>> layer = Layer("scalar_scale", init, fwd, bwd)
        >>> out_shape, params = layer.init(jax.random.key(0), (2, 3))
        >>> x = jnp.arange(6.0).reshape(2, 3)
        >>> y, res = layer.fwd(params, x)
        >>> grads, dx = layer.bwd(params, res, jnp.ones_like(y))
        >>> float(grads["w"]), dx.shape                    # Σ x = 15, ∂x shaped like x
        (15.0, (2, 3))
        >>> float(jax.grad(lambda p: layer.apply(p, x).sum())(params)["w"])   # jax.grad agrees
        15.0
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
        """y = f(params, x): the forward pass alone; (y, new_state) for a stateful layer.

        Args:
            params: the layer's parameters.
            x: its input.
            key: a PRNG key for a random layer (dropout) in training.
            train: the training pass (dropout on, batch statistics) or evaluation.
            state: the running statistics of a stateful layer (required there).

        Returns:
            (Array | tuple[Array, State]): y; (y, new_state) for a stateful layer.

        Raises:
            ValueError: a stateful layer without `state`, or a stateless one with a state.
        """
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
    """(output_shape, params, state) for any layer; a stateless layer's state is {}.

    Args:
        layer: any layer, stateful or not.
        key: the PRNG key of the parameters' initial values.
        input_shape: the input's shape, batch first.

    Returns:
        (output_shape, params, state).

    Examples:
        >>> import jax
        >>> from fbp import layers as L
        >>> from fbp.contract import init_with_state
        >>> init_with_state(L.dense(2), jax.random.key(0), (4, 3))[2]      # stateless: {}
        {}
        >>> shape, params, state = init_with_state(L.batch_norm(), jax.random.key(0), (4, 3))
        >>> shape, sorted(state)
        ((4, 3), ['mean', 'var'])
    """
    if layer.stateful:
        return layer.init(key, input_shape)
    out_shape, params = layer.init(key, input_shape)
    return out_shape, params, {}


def fwd_with_state(layer: Layer, params: Params, x: Array, *, key: Array | None = None,
                   train: bool = False, state: State = None) -> tuple[Array, Res, State]:
    """(y, res, new_state) for any layer; a stateless layer's state stays {}.

    Args:
        layer: any layer, stateful or not.
        params: its parameters.
        x: its input.
        key: a PRNG key for a random layer in training.
        train: the training pass or evaluation.
        state: a stateful layer's state (required there; ignored for a stateless one).

    Returns:
        (y, res, new_state); `bwd` then takes res.

    Raises:
        ValueError: a stateful layer without `state`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp import layers as L
        >>> from fbp.contract import fwd_with_state, init_with_state
        >>> bn = L.batch_norm()
        >>> _, params, state = init_with_state(bn, jax.random.key(0), (4, 3))
        >>> x = 2.0 + jnp.arange(12.0).reshape(4, 3)
        >>> y, res, new_state = fwd_with_state(bn, params, x, train=True, state=state)
        >>> bool(jnp.allclose(y.mean(axis=0), 0, atol=1e-5))   # normalized by the batch
        True
        >>> bool(jnp.all(new_state["mean"] > state["mean"]))    # the statistics moved on
        True
    """
    if layer.stateful:
        if state is None:
            raise ValueError(f"{layer.name}: keeps running statistics; pass state=")
        return layer.fwd(params, x, key=key, train=train, state=state)
    y, res = layer.fwd(params, x, key=key, train=train)
    return y, res, {}


def child_fwd(parent: str, i: int, layer: Layer, params: Params, x: Array, *,
              key: Array | None, train: bool, state: State) -> tuple[Array, Res, State]:
    """A combinator's call of its i-th child's fwd: `fwd_with_state`, seen by an
    inspection (`check_grads`' faulty-layer search) at the path `parent[i]`. See
    `combinator` for an example.

    Args:
        parent: the combinator's kind ("serial"), the first part of the child's path.
        i: the child's index.
        layer: the child.
        params: the child's params.
        x: the child's input.
        key: the child's key (from `split_key`).
        train: the training pass or evaluation.
        state: the child's state (from `children_state`).

    Returns:
        (y, res, new_state), as `fwd_with_state`.

    Raises:
        ValueError: a stateful child without `state`.
    """
    with _tape.at(parent, i) as tape:
        if tape is not None:  # recorded on entry: the tape lists calls parents first
            tape.record_call(layer, params, x, key, train, state)
        out = fwd_with_state(layer, params, x, key=key, train=train, state=state)
        if tape is not None:
            tape.record_fwd(out)
    return out


def child_bwd(parent: str, i: int, layer: Layer, params: Params, res: Res,
              g: Array) -> tuple[Params, Array]:
    """A combinator's call of its i-th child's bwd (seen at `parent[i]` by an inspection).
    See `combinator` for an example.

    Args:
        parent: the combinator's kind, as given to `child_fwd`.
        i: the child's index.
        layer: the child.
        params: the child's params.
        res: what the child's fwd kept.
        g: ∂L/∂(the child's output).

    Returns:
        (grads, g_x), as `layer.bwd`.
    """
    with _tape.at(parent, i) as tape:
        out = layer.bwd(params, res, g)
        if tape is not None:
            tape.record_bwd(g, out)
    return out


def combinator(name: str, init: Callable[..., tuple], fwd: Callable[..., tuple],
               bwd: Callable[[Params, Res, Array], tuple[Params, Array]],
               children: Sequence[Layer]) -> Layer:
    """A Layer from `init` and `fwd` written with state (init -> (shape, params, state),
    fwd(..., state) -> (y, res, state)); stateful exactly when a child is. Without a
    stateful child, the state (`{}`) is left out of the signatures.

    Args:
        name: the combinator's name, "kind(children...)".
        init: `init(key, input_shape) -> (output_shape, params, state)`.
        fwd: `fwd(params, x, *, key, train, state) -> (y, res, new_state)`;
            `state` is None when no child is stateful (`children_state` handles it).
        bwd: `bwd(params, res, g) -> (grads, g_x)`.
        children: the child layers, in order.

    Returns:
        The layer, with `children` set.

    Examples:
        b(a(x)), written as `serial` is: each child called through `child_fwd` /
        `child_bwd`, so that checks can name a faulty child by its path.

        >>> import jax, fbp
        >>> from fbp import layers as L
        >>> from fbp.contract import (child_bwd, child_fwd, children_state, combinator,
        ...                           init_with_state, split_key)
        >>> def chain(a, b):
        ...     name = f"chain({a.name}, {b.name})"
        ...     def init(key, input_shape):
        ...         key_a, key_b = split_key(key, 2)
        ...         mid, params_a, state_a = init_with_state(a, key_a, input_shape)
        ...         out, params_b, state_b = init_with_state(b, key_b, mid)
        ...         return out, (params_a, params_b), (state_a, state_b)
        ...     def fwd(params, x, *, key=None, train=False, state=None):
        ...         (key_a, key_b), (state_a, state_b) = split_key(key, 2), children_state(name, state, 2)
        ...         h, res_a, state_a = child_fwd("chain", 0, a, params[0], x, key=key_a,
        ...                                       train=train, state=state_a)
        ...         y, res_b, state_b = child_fwd("chain", 1, b, params[1], h, key=key_b,
        ...                                       train=train, state=state_b)
        ...         return y, (res_a, res_b), (state_a, state_b)
        ...     def bwd(params, res, g):                 # b's backward first, then a's
        ...         grads_b, g_h = child_bwd("chain", 1, b, params[1], res[1], g)
        ...         grads_a, g_x = child_bwd("chain", 0, a, params[0], res[0], g_h)
        ...         return (grads_a, grads_b), g_x
        ...     return combinator(name, init, fwd, bwd, [a, b])
        >>> net = chain(L.dense(4), L.tanh())
        >>> net.stateful, fbp.check_layer(net, (3, 2)).ok
        (False, True)
        >>> chain(L.dense(4), L.batch_norm()).stateful             # stateful when a child is
        True
    """
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
    """A combinator's state: one entry per child ({} for a stateless one).

    Args:
        name: the combinator's name (for the error).
        state: the state `fwd` received: a tuple of one entry per child, or None (no
            stateful child).
        n: the number of children.

    Returns:
        One state per child.

    Raises:
        ValueError: a state that is not a tuple (or list) of n entries.

    Examples:
        >>> from fbp.contract import children_state
        >>> children_state("serial", None, 2)
        ({}, {})
        >>> children_state("serial", ({}, {}), 3)
        Traceback (most recent call last):
        ValueError: serial: expected state as a tuple of 3 (one per child layer), got a tuple of length 2 ...
    """
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
    back with `residual_shape`.

    Args:
        shape: the shape to keep.

    Returns:
        An int8 array of shape (0, *shape).

    Examples:
        >>> from fbp.contract import residual_shape, shape_residual
        >>> token = shape_residual((4, 5))
        >>> token.shape, token.nbytes
        ((0, 4, 5), 0)
        >>> residual_shape(token)
        (4, 5)
    """
    return jnp.zeros((0, *shape), jnp.int8)


def residual_shape(token: Array) -> Shape:
    """The shape that `shape_residual` kept.

    Args:
        token: what `shape_residual` returned.

    Returns:
        The shape (see `shape_residual` for an example).
    """
    return tuple(token.shape[1:])


# --- dtypes, shapes, inputs ------------------------------------------------------------------

def default_float_dtype() -> jnp.dtype:
    """float64 when x64 is enabled, float32 otherwise.

    Returns:
        The dtype `init` makes floating params in.

    Examples:
        >>> from fbp.contract import default_float_dtype
        >>> default_float_dtype()                     # x64 off, JAX's default
        dtype('float32')
    """
    return jnp.zeros(()).dtype


def at_least_float32(dtype: DTypeLike) -> jnp.dtype:
    """The dtype statistics and scales are computed in: float32, or the input's if wider.

    Args:
        dtype: a floating dtype.

    Returns:
        float32 for bfloat16, float16 and float32; `dtype` itself if wider.

    Examples:
        >>> import jax.numpy as jnp
        >>> from fbp.contract import at_least_float32
        >>> at_least_float32(jnp.bfloat16), at_least_float32("float64")
        (dtype('float32'), dtype('float64'))
    """
    dtype = jnp.dtype(dtype)
    return dtype if jnp.finfo(dtype).bits >= 32 else jnp.dtype(jnp.float32)


def cast_floating(tree: PyTree, dtype: DTypeLike | None) -> PyTree:
    """The pytree with its floating leaves cast to `dtype` (None: unchanged); integer leaves
    (labels, token ids) stay as they are. The one cast fbp uses for params, inputs, state.

    Args:
        tree: arrays (or anything `jnp.asarray` takes).
        dtype: the floating dtype to cast to, or None.

    Returns:
        The same structure, its leaves as jax arrays (`tree` itself for None).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp.contract import cast_floating
        >>> tree = {"w": jnp.ones(2), "ids": jnp.array([1, 2])}
        >>> jax.tree.map(lambda a: a.dtype.name, cast_floating(tree, jnp.bfloat16))
        {'ids': 'int32', 'w': 'bfloat16'}
    """
    if dtype is None:
        return tree

    def cast(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return jax.tree_util.tree_map(cast, tree)


def after(x: Array, g: Array) -> Array:
    """x + (−0.0), the −0.0 computed from g: the same x, bit for bit, but a value that XLA
    sees depending on g, so that what is computed from it is neither scheduled before g
    exists nor merged with an earlier computation from x (remat's recomputation, chunked
    attention's Q in its backward). An optimization barrier alone does not stop XLA:CPU from
    merging a recomputation with the first forward (measured: no memory saved); this does,
    on every backend. Integer x (token ids) is left as it is."""
    if not jnp.issubdtype(x.dtype, jnp.floating) or g.size == 0:
        return x
    g0 = g.reshape(-1)[0]
    minus_zero = -jnp.abs(jnp.where(jnp.isfinite(g0), g0 * 0, 0))  # −0.0 whatever g0 is
    return x + minus_zero.astype(x.dtype)


def check_initializers(name: str, **inits: Any) -> None:
    """Raise TypeError, naming the layer and the argument, for an initializer that is not
    callable (a layer constructor's check, before anything is built).

    Args:
        name: the layer's name for the message.
        **inits: the initializers by argument name (`w_init=...`, `b_init=...`).

    Raises:
        TypeError: one is not a function (key, shape, dtype) -> array.

    Examples:
        >>> import jax
        >>> from fbp.contract import check_initializers
        >>> check_initializers("dense", w_init=jax.nn.initializers.lecun_normal())
        >>> check_initializers("dense", w_init="glorot")
        Traceback (most recent call last):
        TypeError: dense: w_init must be a function (key, shape, dtype) -> array, got str
    """
    for what, init in inits.items():
        if not callable(init):
            raise TypeError(f"{name}: {what} must be a function (key, shape, dtype) -> array, "
                            f"got {type(init).__name__}")


def check_shape(name: str, shape: Sequence[int], *, min_rank: int = 1) -> Shape:
    """Validate an `input_shape` given to `init`.

    Args:
        name: the layer's name, for the error.
        shape: the input shape, batch first.
        min_rank: the least number of dimensions the layer takes.

    Returns:
        The shape as a tuple of ints.

    Raises:
        TypeError: not a sequence of ints.
        ValueError: fewer than `min_rank` dimensions, or one that is not positive.

    Examples:
        >>> from fbp.contract import check_shape
        >>> check_shape("mine", [4, 3])
        (4, 3)
        >>> check_shape("mine", (4,), min_rank=2)
        Traceback (most recent call last):
        ValueError: mine: expected an input of rank >= 2 (batch first), got input_shape (4,)
    """
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
    """Validate the array a layer's `fwd` receives (at trace time, before XLA sees it).

    Args:
        name: the layer's name, for the error.
        x: the input.
        min_rank: the least number of dimensions the layer takes.
        last_dim: the size the last dimension must have (None: any).
        floating: require a floating-point dtype (False for token ids).
        dtype: the dtype x must have (the params' dtype), or None for any.

    Raises:
        TypeError: not an array, not floating when it must be, or not of `dtype`.
        ValueError: fewer than `min_rank` dimensions, or a last dimension other than
            `last_dim`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from fbp.contract import check_input
        >>> check_input("mine", jnp.ones((4, 3)), last_dim=3)          # fine: returns None
        >>> check_input("mine", jnp.ones((4, 3), jnp.int32))
        Traceback (most recent call last):
        TypeError: mine: expected a floating-point input, got dtype int32 (shape (4, 3))
    """
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
    """A parameter-free layer must be given its own empty params, `{}`.

    Args:
        name: the layer's name, for the error.
        params: what the layer's fwd or bwd received.

    Raises:
        ValueError: anything but `{}` (params of another network, most likely).

    Examples:
        >>> from fbp.contract import check_no_params
        >>> check_no_params("relu", {})
        >>> check_no_params("relu", {"w": 1.0})
        Traceback (most recent call last):
        ValueError: relu: takes no parameters and expects params {}, got a dict with keys ['w'] ...
    """
    if not (isinstance(params, dict) and not params):
        raise ValueError(f"{name}: takes no parameters and expects params {{}}, "
                         f"got {_describe(params)} (params from another network?)")


def check_param_shapes(name: str, params: Params, expected: dict[str, Shape], *,
                       what: str = "params") -> None:
    """`params` (or the state: what="state") must be a dict with exactly these keys and
    array shapes.

    Args:
        name: the layer's name, for the error.
        params: what the layer received.
        expected: the shape of each key.
        what: "params" or "state", for the error.

    Raises:
        ValueError: not a dict of exactly these keys, or a leaf of another shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> from fbp.contract import check_param_shapes
        >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
        >>> check_param_shapes("dense(2)", params, {"w": (3, 2), "b": (2,)})
        >>> check_param_shapes("dense(2)", params, {"w": (4, 2), "b": (2,)})
        Traceback (most recent call last):
        ValueError: dense(2): expected params['w'] of shape (4, 2), got (3, 2) (params from another network?)
    """
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
    """n independent keys for n children (or n Nones when there is no key).

    Args:
        key: the combinator's key, or None (evaluation, or no random layer).
        n: the number of children.

    Returns:
        n keys, or n Nones.

    Examples:
        >>> import jax
        >>> from fbp.contract import split_key
        >>> split_key(None, 3)
        [None, None, None]
        >>> len(split_key(jax.random.key(0), 3))
        3
    """
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))
