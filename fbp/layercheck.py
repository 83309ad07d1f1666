"""`check_layer`: the check a person writing a new layer runs first.

It checks one layer alone, at a random point: its hand-written ∂θ and ∂x against `jax.vjp`
of its own forward and against central finite differences, and the layer contract itself
(gradients shaped and typed like what they differentiate, residuals that are arrays only,
fwd and bwd that work under separate jits and do not retrace).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from fbp._layer import (
    Layer,
    Shape,
    at_least_float32,
    cast_floating,
    fwd_with_state,
    init_with_state,
)

# Relative error allowed for bwd against jax.vjp of fwd (by dtype), and against finite
# differences (always in float64).
VJP_RTOL = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 5e-2, "float16": 5e-2}
FD_RTOL = 1e-6
SCALE_FLOOR = 1e-2  # a leaf's scale is floored at 1% of the layer's largest gradient


@dataclasses.dataclass(frozen=True)
class GradRow:
    """One parameter leaf (or x): the bwd's gradient against jax.vjp and finite differences.

    Attributes:
        path: the leaf's key path in the params (`['w']`), or "x".
        shape: the gradient's shape.
        rel_err_vjp: relative error against jax.vjp, in the checked dtype.
        rel_err_fd: relative error against central finite differences, in float64.
        ok: both within their tolerances.
        note: a remark ("integer input: no gradient"), or "".
    """

    path: str
    shape: tuple[int, ...]
    rel_err_vjp: float
    rel_err_fd: float
    ok: bool
    note: str = ""


@dataclasses.dataclass(frozen=True)
class ContractCheck:
    """One clause of the layer contract, and whether the layer keeps it.

    Attributes:
        what: the clause ("residuals are arrays only").
        ok: whether the layer keeps it.
        detail: what is wrong when it does not ("" otherwise).
    """

    what: str
    ok: bool
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """What `check_layer` found: `.ok`, `.rows` (one per parameter leaf, then x) and
    `.contract`; `str(report)` is the table.

    Attributes:
        name: the layer's name.
        dtype: the dtype checked in.
        train: whether the training pass was checked.
        input_shape: the input shape checked at.
        rows: one `GradRow` per parameter leaf, then x.
        contract: one `ContractCheck` per clause of the layer contract.
        vjp_rtol: the tolerance against jax.vjp (`VJP_RTOL` of the dtype).
        fd_rtol: the tolerance against finite differences (`FD_RTOL`).
        autodiff: the layer's bwd is jax.vjp (`from_function`), not written by hand.

    Examples:
        >>> import fbp
        >>> from fbp import layers as L
        >>> report = fbp.check_layer(L.dense(3), (2, 4))
        >>> report.ok, report.failures
        (True, [])
        >>> [row.path for row in report.rows]            # each parameter leaf, then x
        ["['b']", "['w']", 'x']
        >>> [c.what for c in report.contract][:3]
        ['∂θ shaped and typed like params', '∂x shaped and typed like x', 'residuals are arrays only']
        >>> print(report)                               # doctest: +SKIP
    """

    name: str
    dtype: str
    train: bool
    input_shape: tuple[int, ...]
    rows: tuple[GradRow, ...]
    contract: tuple[ContractCheck, ...]
    vjp_rtol: float
    fd_rtol: float
    autodiff: bool = False

    @property
    def ok(self) -> bool:
        """Every gradient row and every contract clause passed."""
        return all(r.ok for r in self.rows) and all(c.ok for c in self.contract)

    @property
    def failures(self) -> list[str]:
        """One line per failed row or clause (empty when `ok`)."""
        return ([f"{r.path}: rel err vs jax.vjp {r.rel_err_vjp:.1e}, vs finite differences "
                 f"{r.rel_err_fd:.1e}" for r in self.rows if not r.ok]
                + [f"{c.what}: {c.detail}" for c in self.contract if not c.ok])

    def table(self) -> str:
        """The gradient rows and the contract clauses as a text table."""
        lines = [f"{'gradient':<26} {'shape':<16} {'rel vs vjp':>10} {'rel vs fd':>10}  ok"]
        for r in self.rows:
            lines.append(f"{r.path[:26]:<26} {str(r.shape)[:16]:<16} {r.rel_err_vjp:10.1e} "
                         f"{r.rel_err_fd:10.1e}  {'yes' if r.ok else 'NO'}"
                         f"{'  ' + r.note if r.note else ''}")
        lines.append(f"{'contract':<55}  ok")
        for c in self.contract:
            lines.append(f"{c.what[:55]:<55}  {'yes' if c.ok else 'NO'}"
                         f"{'  ' + c.detail if c.detail and not c.ok else ''}")
        return "\n".join(lines)

    def __str__(self) -> str:
        kind = " (autodiff: bwd is jax.vjp)" if self.autodiff else ""
        return (f"check_layer {self.name}{kind} at input {self.input_shape} [{self.dtype}, "
                f"train={self.train}]\n{self.table()}\n"
                f"{'OK' if self.ok else 'FAILED: ' + '; '.join(self.failures)}")


def _floating(a) -> bool:
    return jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)


def _noisy(rng, tree, dtype, scale=0.5):
    """Every floating leaf plus normal noise, in `dtype` (no zero biases: no kinks).
    numpy draws the noise: eager jax.random would compile once per shape."""
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.asarray(a, np.float64) + scale * rng.standard_normal(a.shape),
                              dtype) if _floating(a) else a, tree)


def _errors(got, ref, floor):
    """(max |got − ref|, that / max(max |ref|, floor)) in float64."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0, 0.0
    if got.shape != ref.shape:
        return math.inf, math.inf
    abs_err = float(np.max(np.abs(got - ref)))
    scale = max(float(np.max(np.abs(ref))), floor)
    return abs_err, abs_err / scale if scale > 0 else abs_err


def _like(what: str, got, want) -> ContractCheck:
    """got has want's pytree structure, and each leaf its shape and dtype."""
    s_got, s_want = jax.tree_util.tree_structure(got), jax.tree_util.tree_structure(want)
    if s_got != s_want:  # type: ignore[operator]  # jaxlib's PyTreeDef stub
        return ContractCheck(what, False, f"structure {s_got}, expected {s_want}")
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got),
                            jax.tree_util.tree_leaves(want)):
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            return ContractCheck(what, False, f"{jax.tree_util.keystr(path) or 'leaf'} is "
                                 f"{a.dtype}{list(a.shape)}, expected {b.dtype}{list(b.shape)}")
    return ContractCheck(what, True)


def check_layer(layer: Layer, input_shape: Shape, *, key: jax.Array | None = None,
                train: bool = False, dtype: str = "float64", x: ArrayLike | None = None,
                fd_coords: int = 6, fd_eps: float = 1e-6) -> LayerReport:
    """Check one layer alone: its bwd against `jax.vjp` of its fwd and against central
    finite differences, and the layer contract.

    At a random point: params from `init` plus normal noise (no zero biases), a normal
    input x of `input_shape` (or the `x` given, e.g. integer ids for an embedding) and a
    normal cotangent g. Then:

    - ∂θ (each parameter leaf) and ∂x from `layer.bwd` against `jax.vjp` of `layer.fwd`,
      in `dtype` (relative error ≤ VJP_RTOL[dtype]), and — both in float64 — against central
      differences of ⟨g, f(θ, x)⟩ at `fd_coords` coordinates of each leaf and of x
      (≤ FD_RTOL); errors are relative to the leaf's largest entry, floored at 1% of the
      layer's largest gradient;
      a parameter-free layer is checked through ∂x;
    - the contract: grads shaped and typed like params, ∂x like x (a float0 zero for
      integer x), the new state like the state; residuals are arrays only; `jax.jit(fwd)`
      then `jax.jit(bwd)` on its residuals gives what the eager calls give; a second call
      with new values of the same shapes does not retrace.

    train=True checks the training pass (dropout, batch statistics); a key for the layer is
    drawn from `key` then.

    Args:
        layer: the layer to check.
        input_shape: the input's shape, batch first.
        key: the key of the random point (and of the layer's key when train=True);
            default `jax.random.key(0)`.
        train: check the training pass instead of evaluation.
        dtype: the dtype to check in: "float64" (default), "float32", "bfloat16" or
            "float16"; it sets the tolerance against jax.vjp (`VJP_RTOL`).
        x: the input to check at instead of a normal one (integer ids
            for an embedding, or a point away from a kink).
        fd_coords: how many random coordinates of each leaf (and of x) the finite
            differences check.
        fd_eps: ε of the central differences.

    Returns:
        What was found; `report.ok` is the verdict, `str(report)` the table.

    Raises:
        TypeError: `layer` is not a fbp.Layer.
        ValueError: `dtype` is not one of those four.

    Examples:
        >>> import jax.numpy as jnp, fbp
        >>> def scale(c):                       # y = c·x, backward ∂x = c·g
        ...     def init(key, input_shape):
        ...         return input_shape, {}
        ...     def fwd(params, x, *, key=None, train=False):
        ...         return c * x, ()
        ...     def bwd(params, res, g):
        ...         return {}, c * g
        ...     return fbp.Layer(f"scale({c})", init, fwd, bwd)
        >>> fbp.check_layer(scale(3.0), (4, 5)).ok
        True
        >>> import dataclasses
        >>> wrong = dataclasses.replace(scale(3.0), bwd=lambda params, res, g: ({}, 2 * 3.0 * g))
        >>> fbp.check_layer(wrong, (4, 5)).ok
        False
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"check_layer: expected a fbp.Layer, got {type(layer).__name__}")
    if dtype not in VJP_RTOL:
        raise ValueError(f"check_layer: dtype must be one of {sorted(VJP_RTOL)}, got {dtype!r}")
    key = jax.random.key(0) if key is None else key
    with jax.enable_x64(True):
        return _check(layer, tuple(input_shape), key, train, dtype, x, fd_coords, fd_eps)


def _check(layer, input_shape, key, train, dtype, x, fd_coords, fd_eps) -> LayerReport:
    k_init, k_layer, k_rng = jax.random.split(key, 3)
    layer_key = k_layer if train else None
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_rng)).ravel())
    _, params, state = jax.jit(lambda k: init_with_state(layer, k, input_shape))(k_init)
    params = _noisy(rng, params, dtype)
    state = cast_floating(state, at_least_float32(dtype))
    x = (jnp.asarray(rng.standard_normal(input_shape), dtype) if x is None
         else jnp.asarray(x).astype(dtype) if _floating(x) else jnp.asarray(x))
    x_floating = _floating(x)

    def fwd(p, x, s):
        return fwd_with_state(layer, p, x, key=layer_key, train=train, state=s)

    non_arrays = []

    def joint(p, x, s, g):  # fwd and bwd in one jit, as a train step runs them
        y, res, new_s = fwd(p, x, s)
        non_arrays.extend(jax.tree_util.keystr(path) or "res" for path, leaf
                          in jax.tree_util.tree_leaves_with_path(res)
                          if not isinstance(leaf, (jax.Array, np.ndarray)))
        return (y, new_s, *layer.bwd(p, res, g.astype(y.dtype)))

    y_shape = jax.eval_shape(lambda p, x, s: fwd(p, x, s)[0], params, x, state)
    g = jnp.asarray(rng.standard_normal(y_shape.shape), y_shape.dtype)
    y, new_state, grads, dx = jax.jit(joint)(params, x, state, g)
    contract = [_like("∂θ shaped and typed like params", grads, params)]
    if x_floating:
        contract.append(_like("∂x shaped and typed like x", dx, x))
    else:
        ok = getattr(dx, "dtype", None) == jax.dtypes.float0 and tuple(dx.shape) == x.shape
        contract.append(ContractCheck("∂x of integer x is a float0 zero", ok,
                                      f"got {getattr(dx, 'dtype', type(dx).__name__)}"))
    if layer.stateful:
        contract.append(_like("new state shaped and typed like state", new_state, state))
    contract.append(ContractCheck("residuals are arrays only", not non_arrays,
                                  f"non-array residual leaves: {', '.join(non_arrays)}"))
    contract += _jit_checks(layer, fwd, params, x, state, g, (y, grads, dx), dtype)

    # against jax.vjp of the layer's own forward
    @jax.jit
    def reference(p, x, s, g):
        return jax.vjp(lambda p, x: fwd(p, x, s)[0], p, x)[1](g)

    ref_grads, ref_dx = reference(params, x, state, g)
    # against central differences of s(θ, x) = ⟨g, f(θ, x)⟩, in float64, and so the bwd
    # in float64 too
    fd = _finite_differences(fwd, params, x, state, g, x_floating, fd_coords, fd_eps, rng)
    p64, x64, s64, g64 = (cast_floating(t, jnp.float64) for t in (params, x, state, g))
    _, _, grads64, dx64 = (jax.jit(joint)(p64, x64, s64, g64) if dtype != "float64"
                           else (y, new_state, grads, dx))

    named = [(jax.tree_util.keystr(p), a) for p, a in jax.tree_util.tree_leaves_with_path(grads)]
    refs = jax.tree_util.tree_leaves(ref_grads)
    in64 = jax.tree_util.tree_leaves(grads64)
    if x_floating:
        named.append(("x", dx))
        refs.append(ref_dx)
        in64.append(dx64)
    if len(named) != len(refs):  # the structure check above already failed
        named = []
    scale = max((float(np.max(np.abs(np.asarray(r, np.float64)))) for r in refs if r.size),
                default=0.0)
    rtol = VJP_RTOL[dtype]
    rows = []
    for (path, got), ref, got64, (idx, fd_vals) in zip(named, refs, in64, fd):
        _, rel_vjp = _errors(got, ref, SCALE_FLOOR * scale)
        flat = np.asarray(got64, np.float64).reshape(-1)
        _, rel_fd = _errors(flat[idx], fd_vals, max(SCALE_FLOOR * scale,
                                                    float(np.max(np.abs(flat), initial=0.0))))
        ok = rel_vjp <= rtol and rel_fd <= FD_RTOL and math.isfinite(rel_vjp)
        rows.append(GradRow(path, tuple(got.shape), rel_vjp, rel_fd, ok))
    if not x_floating:
        rows.append(GradRow("x", tuple(x.shape), 0.0, 0.0, True, "integer input: no gradient"))
    return LayerReport(layer.name, dtype, train, input_shape, tuple(rows), tuple(contract), rtol,
                       FD_RTOL, layer.autodiff)


def _jit_checks(layer, fwd, params, x, state, g, eager, dtype) -> list[ContractCheck]:
    """fwd and bwd under two separate jits agree with the one-jit pass; no retrace."""
    traces = {"fwd": 0, "bwd": 0}

    def fwd_traced(p, x, s):
        traces["fwd"] += 1
        return fwd(p, x, s)

    def bwd_traced(p, res, g):
        traces["bwd"] += 1
        return layer.bwd(p, res, g)

    jit_fwd, jit_bwd = jax.jit(fwd_traced), jax.jit(bwd_traced)
    try:
        y, res, _ = jit_fwd(params, x, state)
        grads, dx = jit_bwd(params, res, g)
    except Exception as err:  # noqa: BLE001 - reported, not raised: this is the check
        return [ContractCheck("fwd and bwd under separate jits", False,
                              f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")]
    rtol = VJP_RTOL[dtype]
    errs = [_errors(a, b, 0.0)[1] for a, b in zip(
        jax.tree_util.tree_leaves((y, grads, dx)), jax.tree_util.tree_leaves(eager))
        if getattr(b, "dtype", None) != jax.dtypes.float0]
    worst = max(errs, default=0.0)
    checks = [ContractCheck("fwd and bwd under separate jits", worst <= rtol,
                            f"results differ from fwd and bwd in one jit by {worst:.1e}")]
    # a second call with new values of the same shapes: no retrace
    params2 = jax.tree_util.tree_map(lambda a: a * 0.5 if _floating(a) else a, params)
    x2 = x * 0.5 if _floating(x) else x
    try:
        _, res2, _ = jit_fwd(params2, x2, state)
        jit_bwd(params2, res2, g * 2)
        again = None
    except Exception as err:  # noqa: BLE001
        again = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    checks.append(ContractCheck("no retrace on a second call",
                                again is None and traces == {"fwd": 1, "bwd": 1},
                                again or f"traced fwd {traces['fwd']}×, bwd {traces['bwd']}×"))
    return checks


def _finite_differences(fwd, params, x, state, g, x_floating, fd_coords, eps, rng):
    """[(coordinates, ∂s/∂coordinate)] for each parameter leaf (and x), s = ⟨g, f(θ, x)⟩,
    by central differences in float64."""
    p64, x64, s64, g64 = (cast_floating(t, jnp.float64) for t in (params, x, state, g))
    wrt = (p64, x64) if x_floating else (p64,)
    flat, unravel = ravel_pytree(wrt)
    sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(wrt)]
    picks = [rng.choice(size, size=min(fd_coords, size), replace=False) for size in sizes]
    offsets = np.cumsum([0] + sizes)[:-1]
    idx = np.concatenate([o + p for o, p in zip(offsets, picks)]) if picks else np.zeros(0, int)

    def s_at(i, step):
        args = unravel(flat.at[i].add(step))
        p, x_at = args if x_floating else (args[0], x64)
        return jnp.sum(g64 * fwd(p, x_at, s64)[0].astype(jnp.float64))

    if idx.size:
        at = jax.jit(jax.vmap(s_at, (0, None)))
        d = np.asarray((at(jnp.asarray(idx), eps) - at(jnp.asarray(idx), -eps)) / (2 * eps))
    else:
        d = np.zeros(0)
    out, done = [], 0
    for pick in picks:
        out.append((pick, d[done:done + len(pick)]))
        done += len(pick)
    return out


__all__ = ["check_layer", "LayerReport", "GradRow", "ContractCheck"]
