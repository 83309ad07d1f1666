"""What a layer author needs: the `Layer` contract and the helpers fbp's own layers use.

A layer is four functions; its parameters live apart from it, in the pytree `init` returns:

    init(key, input_shape)              -> (output_shape, params)
    fwd(params, x, *, key, train)       -> (y, res)          # res: what the backward needs
    bwd(params, res, g)                 -> (grads, g_x)      # the hand-written VJP
    apply(params, x, *, key, train)     -> y                 # fwd without res

`input_shape` includes the batch dimension. `res` holds arrays only (keep a static shape
with `shape_residual`), so `fwd` and `bwd` can be jitted apart. A layer with running
statistics is `stateful`: its `init` and `fwd` also return the state, and `fwd` takes
`state=` (`init_with_state` and `fwd_with_state` call either kind the same way).

    from fbp.contract import Layer, check_input, check_shape, check_param_shapes

    def scale(c):
        def init(key, input_shape):
            return check_shape("scale", input_shape), {}
        def fwd(params, x, *, key=None, train=False):
            check_input("scale", x)
            return c * x, ()
        def bwd(params, res, g):
            return {}, c * g
        return Layer(f"scale({c})", init, fwd, bwd)

Then `fbp.check_layer(scale(3.0), (4, 5))` checks it against `jax.vjp` and finite
differences. A combinator (a layer made of layers) calls its children through
`child_fwd` / `child_bwd`, so that `fbp.check_grads` can name a faulty child by its path,
splits its key with `split_key`, reads its state with `children_state`, and is built by
`combinator`, which makes it stateful exactly when a child is; `fbp/layers/combinators.py`
is the worked example.

Names here are fbp's stable surface for layer authors; the implementation lives in the
private `fbp._layer`.
"""

from fbp._layer import (
    Array,
    Initializer,
    Layer,
    Params,
    PyTree,
    Res,
    Shape,
    State,
    at_least_float32,
    cast_floating,
    check_initializers,
    check_input,
    check_no_params,
    check_param_shapes,
    check_shape,
    child_bwd,
    child_fwd,
    children_state,
    combinator,
    default_float_dtype,
    fwd_with_state,
    init_with_state,
    residual_shape,
    shape_residual,
    split_key,
)

__all__ = [
    # the contract
    "Layer", "Array", "Shape", "Params", "State", "Res", "PyTree", "Initializer",
    # calling any layer, stateful or not
    "init_with_state", "fwd_with_state",
    # checks on what init and fwd receive
    "check_shape", "check_input", "check_no_params", "check_param_shapes", "check_initializers",
    # dtypes
    "default_float_dtype", "at_least_float32", "cast_floating",
    # residuals: arrays only
    "shape_residual", "residual_shape",
    # combinators
    "split_key", "child_fwd", "child_bwd", "children_state", "combinator",
]
