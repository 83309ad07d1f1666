"""Gradient checks: the manual backprop against `jax.grad` and central finite differences."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike

from fbp import _tape
from fbp._layer import Layer, Params, State, cast_floating, fwd_with_state, init_with_state
from fbp.backprop import training_pass
from fbp.losses import Loss

# Relative error allowed for manual vs jax.grad (by dtype) and manual vs finite differences.
AUTODIFF_RTOL = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}
"""The relative error `check_grads` allows between the manual gradient and `jax.grad`'s, by
the dtype of the params."""
FD_RTOL = 1e-6
"""The relative error `check_grads` allows between the manual gradient (in float64) and
central finite differences."""
# A layer's own bwd against jax.vjp of its fwd, both in float64 at one point: they differ
# by rounding (~1e-14) unless the bwd is wrong.
LAYER_RTOL = 1e-7
"""The relative error above which a layer's own bwd, against `jax.vjp` of its own fwd (both
in float64, at the point one pass reached), makes it a faulty layer."""


@dataclasses.dataclass(frozen=True)
class LeafError:
    """Errors of one parameter leaf's manual gradient (or of ∂L/∂x: path "x").

    Attributes:
        path: the leaf's key path in the params (`[0]['w']`), or "x".
        shape: the leaf's shape.
        abs_err_autodiff: max |manual − jax.grad| over the leaf, in the params' dtype.
        rel_err_autodiff: that, relative to the leaf's largest jax.grad entry (floored at
            `SCALE_FLOOR` of the net's largest).
        abs_err_fd: max |manual − finite differences| at the checked coordinates (float64).
        rel_err_fd: that, relative to the leaf's scale.
    """

    path: str
    shape: tuple[int, ...]
    abs_err_autodiff: float
    rel_err_autodiff: float
    abs_err_fd: float
    rel_err_fd: float


# A leaf's error is relative to its own gradient scale, but never to less than this
# fraction of the largest gradient in the net: some leaves have an exactly zero true
# gradient (a bias just before a normalization), where the relative error would be
# rounding noise divided by rounding noise.
SCALE_FLOOR = 1e-2


def _max_errors(a, b, floor: float = 0.0) -> tuple[float, float]:
    """max |a − b|, and that relative to max(max |b|, floor) (the leaf's scale)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0, 0.0
    abs_err = float(np.max(np.abs(a - b)))
    scale = max(float(np.max(np.abs(b))), floor)
    return abs_err, abs_err / scale if scale > 0 else abs_err


@dataclasses.dataclass(frozen=True)
class LayerError:
    """One layer's own bwd against `jax.vjp` of its own fwd, at the input, params and
    cotangent it met in one pass through the net (float64): relative errors of ∂θ and ∂x.

    Attributes:
        path: where the layer sits: "" for the net itself, "serial[1]",
            "serial[2]/residual[0]".
        name: the layer's name ("dense(8)").
        rel_err_params: relative error of its ∂θ (0 without parameters).
        rel_err_x: relative error of its ∂x.
        autodiff: its bwd is jax.vjp (`from_function`), so it agrees by construction.
    """

    path: str           # where it sits: "" for the net itself, "serial[1]", "serial[2]/residual[0]"
    name: str
    rel_err_params: float
    rel_err_x: float
    autodiff: bool      # its bwd is jax.vjp (from_function): agrees by construction

    @property
    def label(self) -> str:
        """`path name` ("serial[1] tanh"), or the name alone for the net itself."""
        return f"{self.path} {self.name}" if self.path else self.name


@dataclasses.dataclass(frozen=True)
class GradReport:
    """What `check_grads` found: one row per parameter leaf and one for ∂L/∂x, whether all
    agree, and which layers' own backward passes do not (`faulty_layers`).

    `report.ok` is the verdict; `str(report)` (or `report.table()`) the table.

    Attributes:
        name: what was checked ("serial(...) + mse", or the `name` given).
        dtype: the dtype of the gradients ("float32").
        loss_manual: the loss of the manual pass.
        loss_autodiff: the loss of the jax.grad pass (the same forward: they agree).
        leaves: one `LeafError` per parameter leaf, then one for x (floating x only).
        autodiff_rtol: the tolerance against jax.grad (`AUTODIFF_RTOL` of the dtype).
        fd_rtol: the tolerance against finite differences (`FD_RTOL`).
        layers: one `LayerError` per layer in the net, the net itself first.
        layer_rtol: the tolerance of a layer's own bwd (`LAYER_RTOL`).

    Examples:
        A layer whose backward doubles its gradient, caught and named:

        >>> import dataclasses, jax, jax.numpy as jnp, fbp
        >>> from fbp import layers as L, losses
        >>> tanh = L.tanh()
        >>> wrong = dataclasses.replace(tanh, bwd=lambda p, res, g: tanh.bwd(p, res, 2 * g))
        >>> net = L.serial(L.dense(4), wrong)
        >>> _, params = net.init(jax.random.key(0), (3, 2))
        >>> x = jax.random.normal(jax.random.key(1), (3, 2))
        >>> report = fbp.check_grads(net, losses.mse, params, x, jnp.zeros((3, 4)))
        >>> report.ok, report.faulty_layers
        (False, ['serial[1] tanh'])
        >>> report.max_rel_err_autodiff > report.autodiff_rtol      # manual ≠ jax.grad
        True
        >>> print(report)                       # doctest: +SKIP
    """

    name: str
    dtype: str
    loss_manual: float
    loss_autodiff: float
    leaves: tuple[LeafError, ...]
    autodiff_rtol: float
    fd_rtol: float
    layers: tuple[LayerError, ...] = ()
    layer_rtol: float = LAYER_RTOL

    @property
    def max_rel_err_autodiff(self) -> float:
        """The largest relative error against jax.grad, over the leaves and x."""
        return max((leaf.rel_err_autodiff for leaf in self.leaves), default=0.0)

    @property
    def max_rel_err_fd(self) -> float:
        """The largest relative error against finite differences, over the leaves and x."""
        return max((leaf.rel_err_fd for leaf in self.leaves), default=0.0)

    @property
    def faulty_layers(self) -> list[str]:
        """The innermost layers whose own bwd disagrees with jax.vjp of their fwd, each as
        `path name` (e.g. "serial[1] scale"); a combinator is listed only when none of the
        layers inside it is. Empty when every layer agrees."""
        bad = [e for e in self.layers
               if max(e.rel_err_params, e.rel_err_x) > self.layer_rtol
               or not (math.isfinite(e.rel_err_params) and math.isfinite(e.rel_err_x))]
        inner = [e for e in bad if not any(
            o is not e and (e.path == "" or o.path.startswith(e.path + "/")) for o in bad)]
        return [e.label for e in inner]

    @property
    def ok(self) -> bool:
        """The verdict: the losses agree and are finite, every leaf is within both
        tolerances, and no layer is faulty."""
        loss_ok = math.isclose(self.loss_manual, self.loss_autodiff,
                               rel_tol=self.autodiff_rtol, abs_tol=self.autodiff_rtol)
        return (loss_ok and math.isfinite(self.loss_manual)
                and self.max_rel_err_autodiff <= self.autodiff_rtol
                and self.max_rel_err_fd <= self.fd_rtol and not self.faulty_layers)

    def table(self, *, header: bool = True) -> str:
        """The report as a text table: a row per leaf (and x), then the faulty layers.

        Args:
            header: start with the column names (False: rows only, to append to another
                report's table, as `fbp check` does).

        Returns:
            The table, one line per row.
        """
        rows = []
        if header:
            rows.append(f"{'check':<44} {'param':<22} {'shape':<12} {'|Δ| auto':>9} "
                        f"{'rel auto':>9} {'|Δ| fd':>9} {'rel fd':>9}  ok")
        for leaf in self.leaves or (None,):
            if leaf is None:
                rows.append(f"{self.name:<44} {'(no params, x)':<22} {'':<12} {'':>9} {'':>9} "
                            f"{'':>9} {'':>9}  {'yes' if self.ok else 'NO'}")
                continue
            ok = (leaf.rel_err_autodiff <= self.autodiff_rtol and leaf.rel_err_fd <= self.fd_rtol)
            rows.append(f"{self.name[:44]:<44} {leaf.path[:22]:<22} {str(leaf.shape):<12} "
                        f"{leaf.abs_err_autodiff:9.1e} {leaf.rel_err_autodiff:9.1e} "
                        f"{leaf.abs_err_fd:9.1e} {leaf.rel_err_fd:9.1e}  {'yes' if ok else 'NO'}")
        for label in self.faulty_layers:
            rows.append(f"{self.name[:44]:<44} faulty layer: {label} (its bwd disagrees with "
                        "jax.vjp of its fwd)")
        return "\n".join(rows)

    def __str__(self) -> str:
        faulty = (f"; faulty layers: {', '.join(self.faulty_layers)}" if self.faulty_layers
                  else "")
        return (f"{self.table()}\n{self.name} [{self.dtype}]: loss {self.loss_manual:.6g} "
                f"(autodiff {self.loss_autodiff:.6g}); max rel err vs jax.grad "
                f"{self.max_rel_err_autodiff:.1e} (tol {self.autodiff_rtol:.0e}), vs finite "
                f"differences {self.max_rel_err_fd:.1e} (tol {self.fd_rtol:.0e}){faulty}: "
                f"{'OK' if self.ok else 'MISMATCH'}")


def _rel_err(a_leaves, b_leaves, floor):
    """max |a − b| / max(max |b|, floor), over lists of arrays (inside jit)."""
    pairs = [(a, b) for a, b in zip(a_leaves, b_leaves)
             if b.size and jnp.issubdtype(b.dtype, jnp.inexact)]
    if not pairs:
        return jnp.zeros(())
    diff = jnp.max(jnp.stack([jnp.max(jnp.abs(a.astype(b.dtype) - b)) for a, b in pairs]))
    scale = jnp.maximum(jnp.max(jnp.stack([jnp.max(jnp.abs(b)) for _, b in pairs])), floor)
    return jnp.where(scale > 0, diff / jnp.where(scale > 0, scale, 1), diff)


def layer_errors(net: Layer, loss: Loss) -> Callable:
    """f(params, x, y, key, train, state) -> {path: (rel err ∂θ, rel err ∂x)}: every layer's
    own bwd in one manual backprop through `net`, against `jax.vjp` of its own fwd at the
    input, params, key and state it received and the cotangent that reached it (makemore's
    `cmp` on every intermediate). Jit it; `layer_calls` gives the layers by path."""
    def f(params, x, y, key, train, state):
        tape = _tape.recorded_pass(net, loss, params, x, y, key=key, train=train, state=state)
        errors = {}
        for path, call in tape.calls.items():
            if call.g is None:  # not reached by the backward
                continue
            ref_grads, ref_dx = _tape.reference_vjp(call)
            ref_p, got_p = jax.tree_util.tree_leaves(ref_grads), jax.tree_util.tree_leaves(call.grads)
            if len(ref_p) != len(got_p):
                errors[path] = (jnp.array(jnp.inf), jnp.array(jnp.inf))
                continue
            refs = [r for r in ref_p + [ref_dx] if r.size and jnp.issubdtype(r.dtype, jnp.inexact)]
            floor = SCALE_FLOOR * (jnp.max(jnp.stack([jnp.max(jnp.abs(r)) for r in refs]))
                                   if refs else jnp.zeros(()))
            errors[path] = (_rel_err(got_p, ref_p, floor), _rel_err([call.dx], [ref_dx], floor))
        return errors
    return f


def layer_calls(net: Layer, loss: Loss, params, x, y, *, key=None, train=True,
                state=None) -> dict:
    """{path: layer} of every layer one pass through `net` calls (traced, not run)."""
    calls = {}

    def f(params, x, y):
        tape = _tape.recorded_pass(net, loss, params, x, y, key=key, train=train, state=state)
        calls.update({path: call.layer for path, call in tape.calls.items()})
        return tape.loss

    jax.eval_shape(f, params, x, y)
    return calls


@functools.lru_cache(maxsize=64)
def _compiled(net: Layer, loss: Loss) -> dict:
    """The jitted functions `check_grads` calls, made once per (net, loss) (the last 64
    kept): manual and autodiff value-and-grad (with ∂L/∂x), the central differences at
    chosen coordinates of (params, x), and the per-layer search. jit then compiles once
    per shape and dtype, so repeated checks of a net compile nothing."""
    def central_differences(params, x, idx, eps, y, *, key, train, state, with_x):
        flat, unravel = ravel_pytree((params, x) if with_x else params)

        def loss_at(i, step):
            p, x_at = unravel(flat.at[i].add(step)) if with_x else (
                unravel(flat.at[i].add(step)), x)
            return loss(fwd_with_state(net, p, x_at, key=key, train=train, state=state)[0], y)

        at = jax.vmap(loss_at, (0, None))
        return (at(idx, eps) - at(idx, -eps)) / (2 * eps)

    return {
        "manual": jax.jit(training_pass(net, loss, grad="manual", with_dx=True),
                          static_argnames="train"),
        "auto": jax.jit(training_pass(net, loss, grad="auto", with_dx=True),
                        static_argnames="train"),
        "fd": jax.jit(central_differences, static_argnames=("train", "with_x")),
        "layers": jax.jit(layer_errors(net, loss), static_argnames="train")}


def check_grads(net: Layer, loss: Loss, params: Params, x: ArrayLike, y: ArrayLike, *,
                key: jax.Array | None = None, train: bool = True, state: State = None,
                fd_coords: int = 8, fd_eps: float = 1e-6, seed: int = 0,
                autodiff_rtol: float | None = None, fd_rtol: float = FD_RTOL,
                name: str | None = None) -> GradReport:
    """Compare the manual gradient of `loss(net(params, x), y)` — ∂L/∂θ for every parameter
    leaf and ∂L/∂x — with `jax.grad` and with central finite differences, and search the
    net for the layers whose own backward is wrong.

    - manual vs `jax.grad`: in the dtype of `params` (every leaf, every entry);
    - manual vs finite differences: in float64, at `fd_coords` random coordinates of each
      leaf (and of x), (L(θ + εe_i) − L(θ − εe_i)) / 2ε with ε = `fd_eps`;
    - every layer in the net (`report.layers`, `report.faulty_layers`): its own bwd against
      `jax.vjp` of its own fwd, at the input and cotangent it met in one float64 pass.

    Errors are relative to the leaf's largest gradient entry, floored at 1% of the largest
    in the whole net (`SCALE_FLOOR`), so a leaf whose true gradient is exactly zero (a bias
    just before a normalization) is judged by its absolute error against the net's scale.
    ∂L/∂x is checked when x is floating (integer token ids have no gradient).

    A stateful net (batch_norm) needs `state=`. Check at a point where the function is
    differentiable: a ReLU input exactly at 0 or a tie in a max makes autodiff pick an
    arbitrary subgradient.

    Args:
        net: the network.
        loss: the loss.
        params: the point to check at (their dtype sets the tolerance).
        x: a batch of inputs.
        y: its targets.
        key: the key of the training pass (dropout); the same for every pass, so all see
            one mask.
        train: check the training pass (dropout, batch statistics) or, False, evaluation.
        state: the net's state, for a stateful net.
        fd_coords: how many random coordinates of each leaf (and of x) the finite
            differences check.
        fd_eps: ε of the central differences.
        seed: picks those coordinates.
        autodiff_rtol: the tolerance against jax.grad (default: `AUTODIFF_RTOL` of the
            params' dtype, 1e-4 for one not listed).
        fd_rtol: the tolerance against finite differences.
        name: the report's name (default "net name + loss name").

    Returns:
        What was found; `report.ok` is the verdict.

    Raises:
        ValueError: a stateful net without `state=`.
        AssertionError: the manual gradient's pytree structure differs from jax.grad's
            (a bwd that returns grads not shaped like params).

    Examples:
        >>> import jax, jax.numpy as jnp, fbp
        >>> from fbp import layers as L, losses
        >>> net = L.serial(L.dense(8), L.tanh(), L.dense(3))
        >>> _, params = net.init(jax.random.key(0), (4, 5))
        >>> x = jax.random.normal(jax.random.key(1), (4, 5))
        >>> report = fbp.check_grads(net, losses.softmax_cross_entropy, params, x, jnp.array([0, 2, 1, 0]))
        >>> report.ok, report.faulty_layers
        (True, [])
        >>> [leaf.path for leaf in report.leaves]      # one row per parameter leaf, and x
        ["[0]['b']", "[0]['w']", "[2]['b']", "[2]['w']", 'x']
        >>> [layer.label for layer in report.layers]   # each layer's bwd against jax.vjp
        ['serial(dense(8), tanh, dense(3))', 'serial[0] dense(8)', 'serial[1] tanh', 'serial[2] dense(3)']
    """
    if net.stateful and state is None:
        init_state = "init(key, input_shape)[2]"
        raise ValueError(f"check_grads: {net.name} keeps running statistics; pass state= "
                         f"(the third value of net.{init_state}, or TrainState.net_state)")
    state = {} if state is None else state
    fns = _compiled(net, loss)
    with_x = jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
    loss_m, grads_m, _, dx_m = fns["manual"](params, x, y, key=key, train=train, state=state)
    loss_a, grads_a, _, dx_a = fns["auto"](params, x, y, key=key, train=train, state=state)
    if jax.tree_util.tree_structure(grads_m) != jax.tree_util.tree_structure(grads_a):  # type: ignore[operator]  # jaxlib's PyTreeDef stub
        raise AssertionError(f"manual gradient has structure {jax.tree_util.tree_structure(grads_m)}"
                             f", jax.grad's {jax.tree_util.tree_structure(grads_a)}")
    dtype = str(jax.tree_util.tree_leaves(grads_m)[0].dtype) if jax.tree_util.tree_leaves(
        grads_m) else str(jnp.asarray(x).dtype)

    with jax.enable_x64(True):
        p64, x64, y64, s64 = (cast_floating(t, jnp.float64) for t in (params, x, y, state))
        _, grads64, _, dx64 = fns["manual"](p64, x64, y64, key=key, train=train, state=s64)
        layer_err = fns["layers"](p64, x64, y64, key, train, s64)
        calls = layer_calls(net, loss, p64, x64, y64, key=key, train=train, state=s64)
        flat_g = np.asarray(ravel_pytree((grads64, dx64 if with_x else jnp.zeros((0,))))[0])
        # fd_coords random coordinates of each leaf (and of x), all perturbed in one call
        rng = np.random.default_rng(seed)
        sizes = [leaf.size for leaf in jax.tree_util.tree_leaves(p64)]
        if with_x:
            sizes.append(x64.size)
        offsets = np.cumsum([0] + sizes)
        picks = [start + rng.choice(size, size=min(fd_coords, size), replace=False)
                 for start, size in zip(offsets[:-1], sizes)]
        idx = np.concatenate(picks) if picks else np.zeros(0, np.int64)
        fd = np.asarray(fns["fd"](p64, x64, jnp.asarray(idx), fd_eps, y64, key=key,
                                  train=train, state=s64, with_x=with_x)
                        ) if idx.size else np.zeros(0)
        net_scale = float(np.max(np.abs(flat_g))) if flat_g.size else 0.0
        fd_errors, done = [], 0
        for start, size, pick in zip(offsets[:-1], sizes, picks):
            if size == 0:
                fd_errors.append((0.0, 0.0))
                continue
            fd_pick = fd[done:done + len(pick)]
            abs_err = float(np.max(np.abs(flat_g[pick] - fd_pick)))
            done += len(pick)
            scale = max(float(np.max(np.abs(flat_g[start:start + size]))),
                        float(np.max(np.abs(fd_pick))), SCALE_FLOOR * net_scale)
            fd_errors.append((abs_err, abs_err / scale if scale > 0 else abs_err))

    named_m = [(jax.tree_util.keystr(path), g) for path, g in
               jax.tree_util.tree_leaves_with_path(grads_m)]
    auto_leaves = jax.tree_util.tree_leaves(grads_a)
    if with_x:
        named_m.append(("x", dx_m))
        auto_leaves.append(dx_a)
    auto_scale = max((float(np.max(np.abs(np.asarray(g, np.float64)))) for g in auto_leaves
                      if g.size), default=0.0)
    rows = []
    for (path, g_m), g_a, (fd_abs, fd_rel) in zip(named_m, auto_leaves, fd_errors):
        a_abs, a_rel = _max_errors(g_m, g_a, floor=SCALE_FLOOR * auto_scale)
        rows.append(LeafError(path, tuple(g_m.shape), a_abs, a_rel, fd_abs, fd_rel))
    layers = tuple(LayerError(path, calls[path].name, float(e_p), float(e_x),
                              calls[path].autodiff)
                   for path, (e_p, e_x) in layer_err.items())
    rtol = autodiff_rtol if autodiff_rtol is not None else AUTODIFF_RTOL.get(dtype, 1e-4)
    return GradReport(name or f"{net.name} + {loss.name}", dtype, float(loss_m), float(loss_a),
                      tuple(rows), rtol, fd_rtol, layers)


# --- every built-in layer and loss, for `fbp check` -----------------------------------------

def builtin_cases():
    """(name, net, loss, input_shape, make_target, needs_key) for every built-in layer and loss."""
    from fbp import layers as L
    from fbp import losses

    def regression(n_out):
        return lambda key, batch: jax.random.normal(key, (batch, n_out))

    def labels(n_classes):
        return lambda key, batch: jax.random.randint(key, (batch,), 0, n_classes)

    def soft(n_classes):
        return lambda key, batch: jax.nn.softmax(jax.random.normal(key, (batch, n_classes)))

    def bits(n_out):
        return lambda key, batch: jax.random.bernoulli(key, 0.5, (batch, n_out)).astype(float)

    activations = [L.relu(), L.leaky_relu(0.1), L.sigmoid(), L.tanh(), L.gelu(),
                   L.gelu(approximate=True), L.elu(), L.softplus(), L.silu(), L.softmax(),
                   L.log_softmax()]
    cases = [("dense", L.serial(L.dense(5)), losses.mse, (6, 4), regression(5), False)]
    for act in activations:
        cases.append((act.name, L.serial(L.dense(7), act, L.dense(3)), losses.mse, (6, 4),
                      regression(3), False))
    cases += [
        ("flatten", L.serial(L.flatten(), L.dense(3)), losses.mse, (6, 2, 3), regression(3), False),
        ("dropout(0.3)", L.serial(L.dense(7), L.dropout(0.3), L.dense(3)), losses.mse, (6, 4),
         regression(3), True),
        ("serial (nested)", L.serial(L.dense(6), L.serial(L.tanh(), L.dense(5)), L.relu(),
                                     L.dense(3)), losses.mse, (6, 4), regression(3), False),
        ("residual", L.serial(L.dense(5), L.residual(L.serial(L.dense(5), L.tanh())),
                              L.dense(3)), losses.mse, (6, 4), regression(3), False),
        ("parallel (concat)", L.serial(L.parallel(L.dense(3), L.serial(L.dense(4), L.sigmoid())),
                                       L.dense(2)), losses.mse, (6, 4), regression(2), False),
        ("parallel (sum)", L.serial(L.parallel(L.dense(3), L.serial(L.dense(3), L.silu()),
                                               merge="sum"), L.dense(2)), losses.mse, (6, 4),
         regression(2), False),
        ("batch_norm", L.serial(L.dense(5), L.batch_norm(), L.tanh(), L.dense(3)), losses.mse,
         (6, 4), regression(3), False),
        ("huber", L.serial(L.dense(5)), losses.huber, (6, 4),
         lambda key, b: 2 * jax.random.normal(key, (b, 5)), False),
        ("softmax_cross_entropy (labels)", L.serial(L.dense(5)), losses.softmax_cross_entropy,
         (6, 4), labels(5), False),
        ("softmax_cross_entropy (soft)", L.serial(L.dense(5)), losses.softmax_cross_entropy,
         (6, 4), soft(5), False),
        ("binary_cross_entropy", L.serial(L.dense(3)), losses.binary_cross_entropy, (6, 4),
         bits(3), False),
    ]

    def image_head(*layers):
        return L.serial(*layers, L.flatten(), L.dense(3))

    def token_labels(seq, vocab):
        return lambda key, batch: jax.random.randint(key, (batch, seq), 0, vocab)

    # conv2d, pooling, layer_norm, positional_embedding, and (inside transformer_block)
    # multi_head_attention.
    # embedding is checked by the tests only: the inputs drawn here are floats.
    cases += [
        ("conv2d (SAME) + max_pool", image_head(L.conv2d(3, 3), L.tanh(), L.max_pool(2)),
         losses.mse, (3, 5, 5, 2), regression(3), False),
        ("conv2d (VALID, dilated) + avg/global pool", L.serial(
            L.conv2d(3, (3, 2), strides=2, padding="VALID", dilation=(1, 2)), L.tanh(),
            L.avg_pool(2, strides=1, padding="SAME"), L.global_avg_pool(), L.dense(3)),
         losses.mse, (3, 6, 7, 2), regression(3), False),
        ("layer_norm", L.serial(L.dense(6), L.layer_norm(), L.dense(3)), losses.mse, (6, 4),
         regression(3), False),
        ("transformer_block (causal) + positional_embedding", L.serial(
            L.positional_embedding(4), L.transformer_block(2, mlp_ratio=2, causal=True),
            L.dense(5)),
         losses.softmax_cross_entropy, (2, 3, 4), token_labels(3, 5), False),
        ("transformer_block (causal, chunked attention)", L.serial(
            L.transformer_block(2, mlp_ratio=2, causal=True, chunk_size=2), L.dense(5)),
         losses.softmax_cross_entropy, (2, 5, 4), token_labels(5, 5), False),
    ]
    head = L.linear_softmax_head(7)
    cases.append(("linear_softmax_head + fused_softmax_cross_entropy",
                  L.serial(L.dense(6), L.tanh(), head),
                  losses.fused_softmax_cross_entropy(head, chunk_size=3), (6, 4), labels(7),
                  False))
    return cases


def random_params(key, params, scale: float = 0.5):
    """params + noise: biases leave 0, so no activation sits on a kink at the check point."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    return jax.tree_util.tree_unflatten(treedef, [
        leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)])


def check_builtins(dtypes: Sequence[str] = ("float64", "float32"),
                   seed: int = 0) -> list[GradReport]:
    """Run `check_grads` over every built-in layer and loss, in each dtype.

    What `fbp check` runs: each built-in layer in a small net, with random params (no zero
    biases) and inputs, and each loss with fitting targets (`builtin_cases`).

    Args:
        dtypes: the dtypes to check in ("float64", "float32", ...).
        seed: the seed of the random params, inputs and targets.

    Returns:
        One report per case and dtype, named "case [dtype]".
    """
    reports = []
    with jax.enable_x64(True):
        for i, (name, net, loss, in_shape, make_target, needs_key) in enumerate(builtin_cases()):
            k_init, k_noise, k_x, k_y, k_drop = jax.random.split(jax.random.key(seed + i), 5)
            _, params, state = init_with_state(net, k_init, in_shape)
            params = random_params(k_noise, params)
            x = jax.random.normal(k_x, in_shape)
            y = make_target(k_y, in_shape[0])
            for dtype in dtypes:
                cast = (lambda a, dtype=dtype: a.astype(dtype)
                        if jnp.issubdtype(a.dtype, jnp.floating) else a)
                reports.append(check_grads(
                    net, loss, jax.tree_util.tree_map(cast, params), cast(x), cast(y),
                    key=k_drop if needs_key else None, name=f"{name} [{dtype}]",
                    state=state if net.stateful else None))
    return reports


__all__ = ["check_grads", "GradReport", "LeafError", "LayerError", "check_builtins",
           "AUTODIFF_RTOL", "FD_RTOL", "LAYER_RTOL"]
