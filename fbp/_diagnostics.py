"""Training diagnostics (makemore part 3), recorded inside the compiled train step.

Every k steps the step runs its pass through `_tape.recorded_pass` and measures, for each
innermost layer: the output's mean, std and fraction saturated (tanh, sigmoid) or zero
(ReLU-like), the norm of the gradient arriving at its output, and histograms of both; and,
after the update, ‖Δθ‖/‖θ‖ for every weight leaf (rank ≥ 2). The other steps run the
plain step (`lax.cond`), so the cost is one recorded pass every k steps.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fbp import _tape
from fbp._explain import RELU_LIKE, SQUASHING, histogram, saturated_fraction, widened


@dataclasses.dataclass(frozen=True)
class Spec:
    """What one record holds (static: found by tracing the net once)."""

    paths: tuple[str, ...]      # innermost layers, forward order
    labels: tuple[str, ...]     # "serial[1] tanh"
    kinds: tuple[str, ...]
    weights: tuple[str, ...]    # "serial[0] dense(64) ['w']"
    weight_index: tuple[int, ...]  # each weight's position in jax.tree_util.tree_leaves(params)


def innermost(paths) -> list[str]:
    """The paths with no other path below them (the root "" only when it is alone)."""
    paths = list(paths)
    return [p for p in paths if not any(
        q != p and (p == "" or q.startswith(p + "/")) for q in paths)]


def spec_of(tape: _tape.Tape, params) -> Spec:
    """The record's layout, from a pass recorded on `params` themselves (not a cast copy):
    a weight is found by identity among params' leaves."""
    paths = [p for p in innermost(tape.calls)
             if jnp.issubdtype(tape.calls[p].y.dtype, jnp.floating)]
    position = {id(leaf): i for i, leaf in enumerate(jax.tree_util.tree_leaves(params))}
    labels, weights, index = [], [], []
    for path in paths:
        call = tape.calls[path]
        label = f"{path} {call.layer.name}" if path else call.layer.name
        labels.append(label)
        for key_path, leaf in jax.tree_util.tree_leaves_with_path(call.params):
            if leaf.ndim >= 2 and id(leaf) in position:
                weights.append(f"{label} {jax.tree_util.keystr(key_path)}")
                index.append(position[id(leaf)])
    return Spec(tuple(paths), tuple(labels), tuple(tape.calls[p].layer.kind for p in paths),
                tuple(weights), tuple(index))


def layer_stats(tape: _tape.Tape, spec: Spec, *, histograms: bool = False) -> dict:
    """Per innermost layer (stacked in spec order): act_mean, act_std, act_frac, grad_norm,
    and with `histograms` act_hist/grad_hist as (counts, lo, hi)."""
    rows = []
    for path, kind in zip(spec.paths, spec.kinds):
        call = tape.calls[path]
        y = widened(call.y)
        if kind in SQUASHING:
            frac = saturated_fraction(y, kind)
        elif kind in RELU_LIKE:
            frac = jnp.mean(y == 0)
        else:
            frac = jnp.array(jnp.nan, y.dtype)
        g = widened(call.g) if call.g is not None else jnp.zeros_like(y)
        row: dict[str, jax.Array | tuple[jax.Array, ...]] = {
            "act_mean": jnp.mean(y), "act_std": jnp.std(y), "act_frac": frac.astype(y.dtype),
            "grad_norm": jnp.sqrt(jnp.sum(jnp.square(g)))}
        if histograms:
            row.update(act_hist=histogram(y), grad_hist=histogram(g))
        rows.append(row)
    if not rows:
        return {}
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *rows)


def update_ratios(spec: Spec, old_params, new_params) -> jax.Array:
    """‖Δθ‖/‖θ‖ of every weight leaf in spec, after an update."""
    old = jax.tree_util.tree_leaves(old_params)
    new = jax.tree_util.tree_leaves(new_params)
    ratios = [jnp.sqrt(jnp.sum(jnp.square(widened(new[i]) - widened(old[i]))))
              / jnp.sqrt(jnp.sum(jnp.square(widened(old[i])))) for i in spec.weight_index]
    return jnp.stack(ratios) if ratios else jnp.zeros((0,), jnp.float32)


SCALARS = ("act_mean", "act_std", "act_frac", "grad_norm")


class Recorder:
    """Collects the records of a run into history["diagnostics"] (plain JSON-able data)."""

    def __init__(self, spec: Spec, every: int, history: dict):
        self.spec = spec
        self.pending: list = []  # records still on the device (see fbp.train._flush)
        d = history.setdefault("diagnostics", {
            "every": every, "step": [], "layers": list(spec.labels), "kinds": list(spec.kinds),
            **{k: [] for k in SCALARS}, "weights": list(spec.weights), "update_ratio": [],
            "hist": {}})
        self.d = d

    def add(self, step: int, stats: dict, ratios) -> None:
        """One record: `stats` as from layer_stats (numpy), ratios per weight."""
        self.d["step"].append(int(step))
        for k in SCALARS:
            self.d[k].append(np.asarray(stats[k], np.float64).tolist())
        self.d["update_ratio"].append(np.asarray(ratios, np.float64).tolist())

    def set_hist(self, which: str, record: dict) -> None:
        """record: {"step", "act_hist", "grad_hist"}, each histogram (counts, lo, hi) stacked
        over the layers."""
        from fbp._explain import hist_dict

        self.d["hist"][which] = {"step": int(record["step"]), **{
            name: [hist_dict(*(h[i] for h in record[key])) for i in range(len(self.spec.paths))]
            for name, key in (("act", "act_hist"), ("grad", "grad_hist"))}}
