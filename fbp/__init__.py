"""fbp: forward and back propagation by hand, in JAX.

Networks are pure functions over parameter pytrees; every layer, activation, loss and
combinator carries its own hand-written backward pass, checked against `jax.grad`.
"""

from fbp import layers, losses
from fbp._explain import explain
from fbp._layer import Layer
from fbp.backprop import autodiff_value_and_grad, custom_vjp, l2_penalty, value_and_grad
from fbp.check import GradReport, check_grads
from fbp.layercheck import LayerReport, check_layer

__version__ = "0.1.0"

__all__ = [
    "Layer", "layers", "losses", "value_and_grad", "autodiff_value_and_grad", "custom_vjp",
    "l2_penalty", "check_grads", "GradReport", "check_layer", "LayerReport", "explain",
    "__version__",
]
