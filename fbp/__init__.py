"""fbp: forward and back propagation by hand, in JAX.

Networks are pure functions over parameter pytrees; every layer, activation, loss and
combinator carries its own hand-written backward pass, checked against `jax.grad`.

Modules: `layers` (the built-in layers), `losses`, `models` (`mlp`), `contract` (what a
layer author needs: `Layer` and the shape, dtype, key and combinator helpers), `train`
(`fit`, `make_step`, `evaluate`), `optim`, `data`, `check` and `layercheck`, `plot`, `io`
(`save_params`, `load_params`: a trained net's parameters for inference).
"""

from fbp import contract, layers, losses, models
from fbp._explain import explain
from fbp._layer import Layer
from fbp.backprop import autodiff_value_and_grad, custom_vjp, l2_penalty, value_and_grad
from fbp.check import GradReport, check_grads
from fbp.host import keep_host_memory
from fbp.io import load_params, save_params
from fbp.layercheck import LayerReport, check_layer

__version__ = "0.1.0"

__all__ = [
    "Layer", "layers", "losses", "models", "contract", "value_and_grad",
    "autodiff_value_and_grad", "custom_vjp", "l2_penalty", "check_grads", "GradReport",
    "check_layer", "LayerReport", "explain", "save_params", "load_params", "keep_host_memory",
    "__version__",
]
