"""Recording every layer call of one pass, by its path in the net (for inspections).

Combinators call their children through `fbp._layer.child_fwd`/`child_bwd`, which enter
`at(parent, i)`. While a `Tape` is active (`recording()`), each such call records, under
the child's path (`serial[1]`, `serial[2]/residual[0]`, ...), the layer, its params, input,
key, train flag and state, and in the backward the cotangent it received and what its bwd
returned. This happens at trace time, so it works inside `jax.jit`: the records then hold
tracers of that trace. With no tape active, `at` costs one thread-local lookup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

_local = threading.local()


@dataclasses.dataclass
class Call:
    """One layer's part of a pass: what its fwd received and returned, and its bwd."""

    layer: Any
    params: Any = None
    x: Any = None
    key: Any = None
    train: bool = False
    state: Any = None
    y: Any = None
    res: Any = None
    new_state: Any = None
    g: Any = None
    grads: Any = None
    dx: Any = None


class Tape:
    def __init__(self):
        self.calls: dict[str, Call] = {}
        self._path: list[str] = []
        self.loss: Any = None  # the loss of the recorded pass, set by `recorded_pass`

    @property
    def path(self) -> str:
        return "/".join(self._path)

    def record_call(self, layer, params, x, key, train, state) -> None:
        self.calls[self.path] = Call(layer, params, x, key, train, state)

    def record_fwd(self, out) -> None:
        call = self.calls[self.path]
        call.y, call.res, call.new_state = out

    def record_bwd(self, g, out) -> None:
        call = self.calls.get(self.path)
        if call is not None:
            call.g, (call.grads, call.dx) = g, out


def active() -> Tape | None:
    return getattr(_local, "tape", None)


def recorded_pass(net, loss, params, x, y, *, key, train, state) -> Tape:
    """One manual backprop through `net` (forward, loss, backward), every layer call
    recorded by its path ("" for the net itself), in the order the forward makes them."""
    import jax.numpy as jnp

    from fbp._layer import fwd_with_state  # the layer module imports this one

    with recording() as tape:
        root = tape.calls[""] = Call(net, params, x, key, train, state)
        root.y, root.res, root.new_state = fwd_with_state(net, params, x, key=key, train=train,
                                                          state=state)
        value, loss_res = loss.fwd(root.y, y)
        root.g = loss.bwd(loss_res, jnp.ones_like(value)).astype(root.y.dtype)  # ∂L/∂L = 1
        root.grads, root.dx = net.bwd(params, root.res, root.g)
    tape.loss = value
    return tape


def reference_vjp(call: Call):
    """(∂θ, ∂x) of `jax.vjp` of the call's own forward, at its input, with its cotangent."""
    import jax

    from fbp._layer import fwd_with_state

    def forward(p, x):
        return fwd_with_state(call.layer, p, x, key=call.key, train=call.train,
                              state=call.state)[0]

    with paused():
        return jax.vjp(forward, call.params, call.x)[1](call.g)


@contextlib.contextmanager
def recording():
    """Record every child call made inside the block; yields the Tape."""
    outer, _local.tape = active(), Tape()
    try:
        yield _local.tape
    finally:
        _local.tape = outer


@contextlib.contextmanager
def paused():
    """No recording inside the block (for reference computations made during an inspection)."""
    outer, _local.tape = active(), None
    try:
        yield
    finally:
        _local.tape = outer


@contextlib.contextmanager
def at(parent: str, i: int):
    """Enter the child path `parent[i]`; yields the active tape (or None)."""
    tape = active()
    if tape is None:
        yield None
        return
    tape._path.append(f"{parent}[{i}]")
    try:
        yield tape
    finally:
        tape._path.pop()
