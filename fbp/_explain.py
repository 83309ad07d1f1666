"""`explain`: one pass of backprop through a net, layer by layer, as a table.

One row per layer — the net itself, every combinator and every layer inside — in the order
the forward pass calls them, so the table reads top to bottom as the forward pass and
bottom to top as backprop. Each row has the layer's output shape and statistics, the
gradient that reached it and the ones it sent on, and, like makemore's `cmp`, its
hand-written ∂x and ∂θ against `jax.vjp` of its own forward at the input it received.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fbp import _tape
from fbp._layer import Layer, Params, State
from fbp.losses import Loss

# Relative max difference under which "close" is said, by dtype (as check_grads' tolerances).
CLOSE_RTOL = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}
# |y| above which a tanh unit counts as saturated, and how near 0 or 1 a sigmoid's output
# counts (makemore: |t| > 0.97, where 1 − t² < 0.06 lets almost no gradient through).
SATURATED = 0.97
RELU_LIKE = ("relu", "leaky_relu", "elu", "dropout")
SQUASHING = ("tanh", "sigmoid")


@dataclasses.dataclass(frozen=True)
class Compare:
    """makemore's `cmp`: the hand-written gradient against jax.vjp's.

    `str()` says "exact", "close 3e-07" or "DIFFERS 2e-01" (with the max difference).

    Attributes:
        exact: equal to the last bit.
        close: within the dtype's tolerance (`CLOSE_RTOL`), relative to the largest entry.
        max_diff: the max absolute difference.
    """

    exact: bool
    close: bool
    max_diff: float

    def __str__(self) -> str:
        verdict = "exact" if self.exact else "close" if self.close else "DIFFERS"
        return f"{verdict} {self.max_diff:.0e}" if not self.exact else verdict


@dataclasses.dataclass(frozen=True)
class LeafStats:
    """One parameter leaf of a layer: ‖∂θ‖, ‖θ‖ and their ratio.

    Attributes:
        name: the leaf's key path in the layer's params (`['w']`).
        shape: the leaf's shape.
        grad_norm: ‖∂θ‖, the Frobenius norm of its gradient.
        param_norm: ‖θ‖.
    """

    name: str
    shape: tuple[int, ...]
    grad_norm: float
    param_norm: float

    @property
    def ratio(self) -> float:
        """‖∂θ‖ / ‖θ‖ (inf for θ = 0)."""
        return self.grad_norm / self.param_norm if self.param_norm > 0 else math.inf


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer in one pass (see the module doc).

    Norms are Frobenius norms, statistics are over every entry of the batch; a row the
    backward did not reach has nan for its gradient statistics.

    Attributes:
        path: where the layer sits: "" for the net itself, "serial[1]",
            "serial[2]/residual[0]".
        name: the layer's name ("dense(8)").
        kind: its name without arguments ("dense").
        depth: its nesting depth (0 for the net).
        autodiff: its bwd is jax.vjp (`from_function`).
        out_shape: its output's shape.
        mean: the output's mean.
        std: the output's standard deviation.
        frac_zero: the fraction of output entries that are exactly 0.
        frac_saturated: tanh: |y| > 0.97; sigmoid: y < 0.03 or y > 0.97; nan otherwise.
        g_norm: ‖g‖, the gradient arriving from above.
        dx_norm: ‖∂x‖, the gradient it sends below (nan for integer input).
        leaves: ‖∂θ‖ and ‖θ‖ of each parameter leaf.
        cmp_x: its ∂x against jax.vjp's; None for integer input.
        cmp_params: its ∂θ against jax.vjp's; None without parameters.
        act_hist: {"counts": [...], "range": [lo, hi]}, a histogram of the output.
        grad_hist: the same of g, the gradient arriving at the output.
    """

    path: str                 # "" for the net itself, "serial[1]", "serial[2]/residual[0]"
    name: str
    kind: str
    depth: int
    autodiff: bool            # its bwd is jax.vjp (from_function)
    out_shape: tuple[int, ...]
    mean: float               # of the output
    std: float
    frac_zero: float          # of the output entries that are exactly 0
    frac_saturated: float     # tanh: |y| > 0.97; sigmoid: y < 0.03 or y > 0.97; else nan
    g_norm: float             # ‖g‖, the gradient arriving from above
    dx_norm: float            # ‖∂x‖, the gradient it sends below (nan for integer input)
    leaves: tuple[LeafStats, ...]
    cmp_x: Compare | None     # None: integer input
    cmp_params: Compare | None  # None: no parameters
    act_hist: dict | None = None   # {"counts": [...], "range": [lo, hi]} of the output
    grad_hist: dict | None = None  # the same of g, the gradient arriving at the output

    @property
    def label(self) -> str:
        """`path name` ("serial[1] relu"), or the name alone for the net itself."""
        return f"{self.path} {self.name}" if self.path else self.name

    @property
    def grad_norm(self) -> float:
        """‖∂θ‖ over all of the layer's parameter leaves."""
        return math.sqrt(sum(leaf.grad_norm ** 2 for leaf in self.leaves))

    @property
    def ratio(self) -> float:
        """‖∂θ‖ / ‖θ‖ over all of its leaves (nan without parameters)."""
        norm = math.sqrt(sum(leaf.param_norm ** 2 for leaf in self.leaves))
        return self.grad_norm / norm if norm > 0 else math.nan

    @property
    def agrees(self) -> bool:
        """Its ∂x and ∂θ are close to jax.vjp's (or not compared)."""
        return all(c is None or c.close for c in (self.cmp_x, self.cmp_params))


@dataclasses.dataclass(frozen=True)
class Report:
    """What `explain` found: `.rows` (one per layer, forward order) and the loss; `str`
    gives the table.

    Attributes:
        name: the net's name.
        loss_name: the loss's name.
        loss: the loss of this pass.
        dtype: the params' dtype.
        train: whether the training pass was explained.
        rows: one `Row` per layer, the net itself first, in forward order.
    """

    name: str
    loss_name: str
    loss: float
    dtype: str
    train: bool
    rows: tuple[Row, ...]

    @property
    def disagreeing(self) -> list[str]:
        """Labels of the rows whose hand-written gradients differ from jax.vjp's."""
        return [r.label for r in self.rows if not r.agrees]

    def table(self, *, width: int = 44) -> str:
        """The rows as a text table (what `str(report)` shows between its two lines).

        Args:
            width: the characters of the layer column (longer labels are cut with …).

        Returns:
            The table, one line per row under a header.
        """
        head = (f"{'layer (forward ↓, backprop ↑)':<{width}} {'output':<14} {'mean':>8} "
                f"{'std':>7} {'zero/sat':>8} {'‖g‖':>8} {'‖∂x‖':>8} {'‖∂θ‖':>8} "
                f"{'∂θ:θ':>8}  {'∂x vs vjp':<12} {'∂θ vs vjp':<12}")
        lines = [head]
        for r in self.rows:
            label = ("  " * r.depth + (r.label.rsplit("/", 1)[-1] if r.path else r.name))
            if r.autodiff:
                label += " [autodiff]"
            if len(label) > width:
                label = label[:width - 1] + "…"
            frac = (r.frac_saturated if r.kind in SQUASHING
                    else r.frac_zero if r.kind in RELU_LIKE else math.nan)
            lines.append(
                f"{label:<{width}} {str(r.out_shape)[:14]:<14} {r.mean:8.3g} {r.std:7.3g} "
                f"{_pct(frac):>8} {r.g_norm:8.2e} {_num(r.dx_norm):>8} "
                f"{_num(r.grad_norm if r.leaves else math.nan):>8} "
                f"{_num(r.ratio):>8}  {_cmp(r.cmp_x):<12} {_cmp(r.cmp_params):<12}")
        return "\n".join(lines)

    def __str__(self) -> str:
        verdict = ("every layer's hand-written gradients agree with jax.vjp" if
                   not self.disagreeing else
                   f"DIFFERS from jax.vjp: {', '.join(self.disagreeing)}")
        return (f"{self.name} + {self.loss_name} [{self.dtype}, train={self.train}]: "
                f"loss {self.loss:.6g}\n{self.table()}\n{verdict}")


def _pct(v: float) -> str:
    return "" if math.isnan(v) else f"{100 * v:.1f}%"


def _num(v: float) -> str:
    return "" if math.isnan(v) else f"{v:8.2e}"


def _cmp(c: Compare | None) -> str:
    return "" if c is None else str(c)


HIST_BINS = 40


def histogram(a: jax.Array, bins: int = HIST_BINS) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(counts, lo, hi): a histogram of a's entries over `bins` equal bins from its min to
    its max, inside jit (the range is data, not static).

    Args:
        a: the values, any shape (computed in float32, float64 stays).
        bins: the number of bins.

    Returns:
        The int32 counts per bin, then lo and hi, the range's ends; the max falls in the
            last bin, and an array of equal entries puts them all in the first.
    """
    a = a.reshape(-1).astype(jnp.float32 if a.dtype != jnp.float64 else jnp.float64)
    lo, hi = jnp.min(a), jnp.max(a)
    width = jnp.where(hi > lo, (hi - lo) / bins, 1)
    idx = jnp.clip(jnp.floor((a - lo) / width).astype(jnp.int32), 0, bins - 1)
    return jnp.zeros((bins,), jnp.int32).at[idx].add(1), lo, hi


def hist_dict(counts, lo, hi) -> dict:
    """A histogram as plain data: {"counts": [...], "range": [lo, hi]} (JSON-able)."""
    return {"counts": np.asarray(counts, np.int64).tolist(), "range": [float(lo), float(hi)]}


def widened(a) -> jax.Array:
    """a in float32 (float64 stays): statistics of bfloat16 activations keep their digits."""
    return a.astype(jnp.float64 if a.dtype == jnp.float64 else jnp.float32)


def saturated_fraction(y, kind: str) -> jax.Array:
    """The share of units a squashing layer has saturated: tanh |y| > 0.97, sigmoid within
    0.03 of 0 or 1 (there σ′, 1 − tanh² < 0.06: almost no gradient passes)."""
    if kind == "tanh":
        return jnp.mean(jnp.abs(y) > SATURATED)
    return jnp.mean((y < 1 - SATURATED) | (y > SATURATED))


def _norm(a) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(widened(a))))


def _compare(got, ref):
    """(exact, max |Δ|, max |Δ| / max |ref|) over lists of arrays, inside jit."""
    pairs = [(a, b) for a, b in zip(got, ref)
             if b.size and jnp.issubdtype(b.dtype, jnp.inexact)]
    if not pairs:
        return None
    exact = jnp.all(jnp.stack([jnp.all(a == b) for a, b in pairs]))
    diff = jnp.max(jnp.stack([jnp.max(jnp.abs(a - b)) for a, b in pairs]))
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(b)) for _, b in pairs]))
    return exact, diff, jnp.where(scale > 0, diff / jnp.where(scale > 0, scale, 1), diff)


@functools.lru_cache(maxsize=32)
def _inspect(net: Layer, loss: Loss):
    """The jitted pass that records and measures every layer (made once per (net, loss))."""
    def f(params, x, y, key, train, state):
        tape = _tape.recorded_pass(net, loss, params, x, y, key=key, train=train, state=state)
        out = {}
        for path, call in tape.calls.items():
            y_out = call.y
            floating = jnp.issubdtype(y_out.dtype, jnp.floating)
            yf = widened(y_out) if floating else y_out
            stats = {"mean": jnp.mean(yf), "std": jnp.std(yf), "frac_zero": jnp.mean(y_out == 0),
                     "frac_saturated": saturated_fraction(yf, call.layer.kind)}
            if floating and y_out.size:
                stats["act_hist"] = histogram(y_out)
            if call.g is None:  # not reached by the backward: nothing more to say
                out[path] = stats
                continue
            if call.g.size:
                stats["grad_hist"] = histogram(call.g)
            ref_grads, ref_dx = _tape.reference_vjp(call)
            x_float = jnp.issubdtype(jnp.asarray(call.x).dtype, jnp.floating)
            stats["g_norm"] = _norm(call.g)
            stats["dx_norm"] = _norm(call.dx) if x_float else jnp.array(jnp.nan)
            got_p = jax.tree_util.tree_leaves(call.grads)
            ref_p = jax.tree_util.tree_leaves(ref_grads)
            p_leaves = jax.tree_util.tree_leaves(call.params)
            stats["grad_norms"] = [_norm(a) for a in got_p]
            stats["param_norms"] = [_norm(a) for a in p_leaves]
            stats["cmp_x"] = _compare([call.dx], [ref_dx]) if x_float else None
            stats["cmp_params"] = (_compare(got_p, ref_p) if len(got_p) == len(ref_p)
                                   else (jnp.array(False), jnp.array(jnp.inf),
                                         jnp.array(jnp.inf)))
            out[path] = stats
        return tape.loss, out

    calls = {}

    def layers(params, x, y, key, train, state):
        """{path: (layer, output shape, parameter leaf names)}, traced, not run."""
        tape = _tape.recorded_pass(net, loss, params, x, y, key=key, train=train, state=state)
        for path, call in tape.calls.items():
            names = [jax.tree_util.keystr(p) for p, _ in
                     jax.tree_util.tree_leaves_with_path(call.params)]
            shapes = [tuple(a.shape) for a in jax.tree_util.tree_leaves(call.params)]
            calls[path] = (call.layer, tuple(call.y.shape), names, shapes)
        return tape.loss

    return jax.jit(f, static_argnames="train"), layers, calls


def explain(net: Layer, loss: Loss, params: Params, x: ArrayLike, y: ArrayLike, *,
            key: jax.Array | None = None, train: bool = True, state: State = None) -> Report:
    """One pass of backprop through `net` on (x, y), layer by layer: a `Report` whose
    `.rows` hold, for the net itself and every layer in it (forward order, with its path):

    - forward: output shape, mean, std, the fraction of zeros (ReLU-like outputs) or of
      saturated units (tanh |y| > 0.97, sigmoid within 0.03 of 0 or 1);
    - backward: ‖g‖ arriving from above, ‖∂x‖ sent below, ‖∂θ‖ and ‖θ‖ per parameter leaf
      (and the ∂θ:θ ratio);
    - makemore's `cmp`: the layer's hand-written ∂x and ∂θ against `jax.vjp` of its own
      forward at the input, params and cotangent it met in this pass — exact, close
      (relative max difference ≤ CLOSE_RTOL of the dtype) or DIFFERS, with the max
      difference.

    `str(report)` is the table, read top to bottom as the forward pass and bottom to top as
    backprop; `from_function` layers are marked [autodiff]. A stateful net needs `state=`.

    Args:
        net: the network.
        loss: the loss.
        params: the net's parameters.
        x: a batch of inputs.
        y: its targets.
        key: the key of the training pass (dropout).
        train: explain the training pass (dropout, batch statistics) or, False, evaluation.
        state: the net's state, for a stateful net.

    Returns:
        One row per layer; `report.disagreeing` lists the layers whose gradients differ
            from jax.vjp's.

    Raises:
        TypeError: `net` is not a fbp.Layer or `loss` not a fbp.losses.Loss.
        ValueError: a stateful net without `state=`.

    Examples:
        >>> import jax, jax.numpy as jnp, fbp
        >>> from fbp import layers as L, losses
        >>> net = L.serial(L.dense(8), L.relu(), L.dense(3))
        >>> _, params = net.init(jax.random.key(0), (4, 5))
        >>> x = jax.random.normal(jax.random.key(1), (4, 5))
        >>> report = fbp.explain(net, losses.softmax_cross_entropy, params, x, jnp.array([0, 2, 1, 0]))
        >>> [row.path for row in report.rows]
        ['', 'serial[0]', 'serial[1]', 'serial[2]']
        >>> print(report)                       # doctest: +SKIP
    """
    if not isinstance(net, Layer) or not isinstance(loss, Loss):
        raise TypeError(f"explain: expected a fbp.Layer and a fbp.losses.Loss, got "
                        f"{type(net).__name__} and {type(loss).__name__}")
    if net.stateful and state is None:
        raise ValueError(f"explain: {net.name} keeps running statistics; pass state= "
                         "(TrainState.net_state, or the third value of net.init)")
    state = {} if state is None else state
    run, trace_layers, calls = _inspect(net, loss)
    value, stats = run(params, x, y, key, train, state)
    jax.eval_shape(lambda p, x, y, s: trace_layers(p, x, y, key, train, s), params, x, y, state)
    leaves = jax.tree_util.tree_leaves(params)
    dtype = str(leaves[0].dtype) if leaves else str(jnp.asarray(x).dtype)
    rtol = CLOSE_RTOL.get(dtype, 1e-4)

    def compare(c):
        if c is None:
            return None
        exact, diff, rel = (np.asarray(v) for v in c)
        return Compare(bool(exact), bool(rel <= rtol), float(diff))

    rows = []
    for path, s in stats.items():
        layer, out_shape, names, shapes = calls[path]
        s = jax.tree_util.tree_map(np.asarray, s)
        reached = "g_norm" in s
        rows.append(Row(
            path=path, name=layer.name, kind=layer.kind, depth=path.count("/") + bool(path),
            autodiff=layer.autodiff, out_shape=out_shape, mean=float(s["mean"]),
            std=float(s["std"]), frac_zero=float(s["frac_zero"]),
            frac_saturated=float(s["frac_saturated"]) if layer.kind in SQUASHING else math.nan,
            g_norm=float(s["g_norm"]) if reached else math.nan,
            dx_norm=float(s["dx_norm"]) if reached else math.nan,
            leaves=tuple(LeafStats(n, sh, float(gn), float(pn)) for n, sh, gn, pn in zip(
                names, shapes, s["grad_norms"], s["param_norms"])) if reached else (),
            cmp_x=compare(s.get("cmp_x")),
            cmp_params=compare(s.get("cmp_params")) if reached and names else None,
            act_hist=hist_dict(*s["act_hist"]) if "act_hist" in s else None,
            grad_hist=hist_dict(*s["grad_hist"]) if "grad_hist" in s else None))
    return Report(net.name, loss.name, float(value), dtype, train, tuple(rows))


__all__ = ["explain", "Report", "Row", "LeafStats", "Compare", "histogram"]
