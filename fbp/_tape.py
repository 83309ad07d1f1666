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

    @property
    def path(self) -> str:
        return "/".join(self._path)

    def record_fwd(self, layer, params, x, key, train, state, out) -> None:
        y, res, new_state = out
        self.calls[self.path] = Call(layer, params, x, key, train, state, y, res, new_state)

    def record_bwd(self, g, out) -> None:
        call = self.calls.get(self.path)
        if call is not None:
            call.g, (call.grads, call.dx) = g, out


def active() -> Tape | None:
    return getattr(_local, "tape", None)


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
