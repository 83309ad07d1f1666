"""The same MLP and plain SGD step (θ ← θ − η ∇L) in other libraries, timed beside fbp.

    peer = build("flax", config, x, y, "float32", device, lr=0.01)   # or raises Unavailable
    peer.run()            # one training step on its own donated state

Each peer uses its library's own layers, initialisation and loss (mean softmax cross-entropy
on integer labels), its gradient by autodiff, and is skipped with a reason when it does not
import. The JAX peers are jitted with the parameters donated, like `fbp.train.make_step`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PEERS = ("flax", "equinox", "torch")


class Unavailable(Exception):
    """The peer library does not import, or cannot run this config here."""


@dataclasses.dataclass
class Peer:
    name: str
    version: str
    grad: str  # how it differentiates
    run: Callable[[], Any]  # one step; returns what to block on
    fresh_jit: Callable[[], Any] | None = None  # a new jax.jit of the step (for compile stats)
    lower_args: tuple = ()


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise Unavailable(f"{name} does not import: {e}") from None


def _sgd(params, grads, lr):
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)


def _cross_entropy(logits, y):
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=-1))


def _jax_peer(name, version, step, params, x, y, device) -> Peer:
    """A runner for a pure JAX step(params, x, y) -> (params, loss), params donated."""
    params = jax.device_put(params, device)
    fresh_jit = lambda: jax.jit(step, donate_argnums=0)
    jitted = fresh_jit()
    box = {"params": params}

    def run():
        box["params"], value = jitted(box["params"], x, y)
        return box["params"], value

    return Peer(name, version, "jax.grad", run, fresh_jit,
                (jax.tree_util.tree_map(jnp.copy, params), x, y))


def _flax(config, x, y, dtype, device, lr) -> Peer:
    flax = _import("flax")
    nn = importlib.import_module("flax.linen")

    class MLP(nn.Module):
        sizes: tuple[int, ...]

        @nn.compact
        def __call__(self, h):
            for width in self.sizes[1:-1]:
                h = nn.relu(nn.Dense(width, dtype=dtype, param_dtype=dtype)(h))
            return nn.Dense(self.sizes[-1], dtype=dtype, param_dtype=dtype)(h)

    model = MLP(tuple(config.sizes))
    with jax.default_device(device):
        params = jax.jit(model.init)(jax.random.key(0), x)  # one compile, not one per op

    def step(params, x, y):
        value, grads = jax.value_and_grad(lambda p: _cross_entropy(model.apply(p, x), y))(params)
        return _sgd(params, grads, lr), value

    return _jax_peer("flax", flax.__version__, step, params, x, y, device)


def _equinox(config, x, y, dtype, device, lr) -> Peer:
    eqx = _import("equinox")
    hidden = config.sizes[1:-1]
    if len(set(hidden)) != 1:
        raise Unavailable("equinox.nn.MLP needs equal hidden widths")
    with jax.default_device(device):
        model = eqx.nn.MLP(config.sizes[0], config.sizes[-1], hidden[0], len(hidden),
                           activation=jax.nn.relu, key=jax.random.key(0))
    model = jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)
    params, static = eqx.partition(model, eqx.is_array)

    def step(params, x, y):
        def objective(p):
            return _cross_entropy(jax.vmap(eqx.combine(p, static))(x), y)
        value, grads = jax.value_and_grad(objective)(params)
        return _sgd(params, grads, lr), value

    return _jax_peer("equinox", eqx.__version__, step, params, x, y, device)


def _torch(config, x, y, dtype, device, lr) -> Peer:
    torch = _import("torch")
    if device.platform != "cpu":
        raise Unavailable("the torch peer runs on CPU only")
    torch_dtype = {"float32": torch.float32, "float64": torch.float64,
                   "bfloat16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    sizes = config.sizes
    layers = []
    for a, b in pairwise(sizes[:-1]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-2], sizes[-1])).to(torch_dtype)
    xt = torch.from_numpy(np.array(x, np.float32)).to(torch_dtype)  # a writable copy
    yt = torch.from_numpy(np.asarray(y).astype(np.int64))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        optimizer.step()

    return Peer("torch", torch.__version__, "torch.autograd", run)


def build(name: str, config, x, y, dtype: str, device, lr: float) -> Peer:
    """The peer `name`'s step for `config` on batch (x, y), or `Unavailable`."""
    builders = {"flax": _flax, "equinox": _equinox, "torch": _torch}
    try:
        return builders[name](config, x, y, dtype, device, lr)
    except Unavailable:
        raise
    except Exception as e:  # a peer that imports but fails here is skipped, with the reason
        raise Unavailable(f"{type(e).__name__}: {e}") from None
