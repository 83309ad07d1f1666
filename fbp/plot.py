"""Pictures of training and of a net (matplotlib, written atomically to PNG).

    loss_curves(history, path)        the train (and validation) loss per epoch
    diagnostics(history_or_report, out_dir)
                                      makemore part 3's plots: activation and gradient
                                      histograms per layer, update:data ratios over training,
                                      gradient norms per layer
    graph(net, path, report=...)      the net as boxes and arrows (micrograd's draw_dot, by
                                      layer), with each layer's statistics from `fbp.explain`

Figures are made with `matplotlib.figure.Figure` on an Agg canvas of their own, never
through pyplot: the caller's backend and open figures are left alone.
"""

from __future__ import annotations

import io
import math
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fbp.io import write_atomic

if TYPE_CHECKING:  # for annotations only: graph imports fbp's layers when it runs
    from jax.typing import DTypeLike

    from fbp._explain import Report
    from fbp._layer import Layer

# Kinds whose output is reported as the fraction saturated, and as the fraction exactly zero
# (as in fbp.explain).
SQUASHING = ("tanh", "sigmoid")
RELU_LIKE = ("relu", "leaky_relu", "elu", "dropout")

LEGEND_INSIDE_MAX = 6   # more legend entries than this go outside the axes
LEGEND_ROWS_MAX = 32    # legend entries per column outside the axes
LABEL_MAX = 40          # characters of a shortened label
FONT = 8                # points, legends and graph boxes
_CHAR = 0.602 * FONT / 72  # inches per character of DejaVu Sans Mono at FONT


# --- figures, text and files ------------------------------------------------------------------

def _figure(width: float, height: float, *, dpi: int = 110, layout: Any = "constrained"):
    """A Figure on its own Agg canvas (pyplot and its backend are not touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_atomic(path, buf.getvalue())
    return Path(path)


def _wrap(text: str, width_in: float, fontsize: float = 12, max_lines: int = 5) -> str:
    """`text` broken into lines that fit `width_in` inches at `fontsize` points (at most
    `max_lines`, the last one cut short with … if need be)."""
    chars = max(16, int(width_in * 72 / (0.62 * fontsize)) - 2)
    return "\n".join(textwrap.wrap(text, chars, max_lines=max_lines, placeholder=" …")) or text


def _text_width(chars: int, fontsize: float = FONT) -> float:
    """Inches taken by `chars` characters (DejaVu Sans averages ~0.6 em)."""
    return chars * 0.6 * fontsize / 72


def _truncate(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


_PATH = re.compile(r"^\w+\[\d+\](?:/\w+\[\d+\])*$")
_LEAF = re.compile(r"\s((?:\[[^\s\]]*\])+)$")  # a parameter leaf's key path: " ['w']"


def _split_label(label: str) -> tuple[list[str], str, str]:
    """"serial[2]/residual[0]/serial[1] dense(8) ['w']" -> (path components, name, leaf)."""
    leaf = ""
    m = _LEAF.search(label)
    if m:
        label, leaf = label[:m.start()], m.group(1)
    head, _, rest = label.partition(" ")
    if _PATH.match(head) and rest:
        return head.split("/"), rest, leaf
    return [], label, leaf


def short_labels(labels: Sequence[str], n: int = LABEL_MAX) -> list[str]:
    """Legend-sized labels: the path's last component and the layer's name (and a weight's
    leaf), more of the path where two would read the same, the name cut to fit `n`.

    Args:
        labels: labels as `fbp.explain` and the training diagnostics write them:
            `path name` or `path name ['leaf']` (`serial[2]/residual[0] dense(8) ['w']`).
        n: the characters a label may take (the name is cut with … to fit).

    Returns:
        One short label per label, in order.

    Examples:
        >>> from fbp.plot import short_labels
        >>> short_labels(["serial[0]/residual[0] dense(8) ['w']", "serial[1] relu"])
        ["residual[0] dense(8) ['w']", 'serial[1] relu']
        >>> short_labels(["serial[0]/serial[1] tanh", "serial[2]/serial[1] tanh"])   # alike
        ['serial[0]/serial[1] tanh', 'serial[2]/serial[1] tanh']
    """
    parts = [_split_label(label) for label in labels]
    keep = [1] * len(parts)
    while True:
        out = []
        for (path, name, leaf), k in zip(parts, keep):
            prefix = "/".join(path[-k:]) if path else ""
            room = max(8, n - len(prefix) - len(leaf) - 2)
            out.append(" ".join(s for s in (prefix, _truncate(name, room), leaf) if s))
        dup = {s for s in out if out.count(s) > 1}
        grow = [i for i, s in enumerate(out) if s in dup and keep[i] < len(parts[i][0])]
        if not grow:
            return out
        for i in grow:
            keep[i] += 1


def _legend(ax, n_entries: int, *, fontsize: float = FONT, title: str | None = None) -> None:
    """A legend inside the axes for a few entries, outside to the right for more."""
    if n_entries == 0:
        return
    if n_entries <= LEGEND_INSIDE_MAX:
        ax.legend(fontsize=fontsize, loc="best", title=title, title_fontsize=fontsize)
        return
    ncols = math.ceil(n_entries / LEGEND_ROWS_MAX)
    ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0,
              ncols=ncols, title=title, title_fontsize=fontsize)


def _legend_size(labels: Sequence[str], fontsize: float = FONT) -> tuple[float, float]:
    """(width, height) in inches a legend outside the axes needs (0, 0 when it is inside)."""
    n = len(labels)
    if n <= LEGEND_INSIDE_MAX:
        return 0.0, 0.0
    ncols = math.ceil(n / LEGEND_ROWS_MAX)
    rows = math.ceil(n / ncols)
    width = ncols * (_text_width(max(map(len, labels)), fontsize) + 0.55) + 0.3
    return width, rows * fontsize / 72 * 1.45 + 0.5


def loss_curves(history: dict, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write the train (and validation) loss per epoch, log scale, to a PNG at `path`, and
    return its path.

    The file is written atomically (`fbp.io.write_atomic`); pyplot is not touched.

    Args:
        history: the history `fit` returns, or any dict with "epoch" and "train_loss"
            lists (and optionally "val_loss").
        path: the PNG to write (missing folders are made).
        title: a title above the plot (wrapped to fit).

    Returns:
        The path written, as a `pathlib.Path`.

    Raises:
        KeyError: `history` lacks "epoch" or "train_loss".

    Examples:
        >>> import os, tempfile
        >>> from fbp.plot import loss_curves
        >>> history = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.6, 0.4]}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = loss_curves(history, os.path.join(tmp, "curves.png"), title="xor")
        ...     with open(path, "rb") as f:
        ...         f.read(4)[1:]                      # a PNG file's signature
        b'PNG'
    """
    width = 6.0
    title = _wrap(title, width - 0.3, 12) if title else None
    fig = _figure(width, 4.0 + (title.count("\n") * 0.25 if title else 0), dpi=120)
    ax = fig.add_subplot()
    epochs = history["epoch"]
    ax.plot(epochs, history["train_loss"], label="train loss")
    if history.get("val_loss"):
        ax.plot(epochs, history["val_loss"], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


# --- diagnostics ------------------------------------------------------------------------------

def diagnostics(history_or_report: Any, out_dir: str | os.PathLike) -> list[Path]:
    """PNGs of makemore part 3's diagnostics in `out_dir` (made if missing); their paths.

    From a `fbp.explain` Report (one pass) or from a training history of
    `fit(..., diagnostics_every=k)` (or its "diagnostics" entry itself):

    - activations.png: a histogram of every innermost layer's output, one curve per layer,
      with its mean, std and % saturated (tanh, sigmoid) or zero (ReLU-like); for a history
      at the last recorded step, and at the first below it;
    - gradients.png: the same of the gradient arriving at each layer's output;
    - update_ratio.png (history): log10 ‖Δθ‖/‖θ‖ of every weight over the steps, against
      the rule of thumb ≈ 1e-3;
    - grad_norms.png: ‖g‖ per layer over the steps (history), or ‖g‖ and ‖∂θ‖ of every
      layer as bars (report).

    A figure whose data is absent is left out.

    Args:
        history_or_report: a `fbp.explain` Report, a history of
            `fit(..., diagnostics_every=k)`, or its "diagnostics" entry.
        out_dir: the folder to write the PNGs to (made if missing).

    Returns:
        The paths of the PNGs written.

    Raises:
        TypeError: neither a Report nor a dict.
        ValueError: a history that holds no diagnostics (trained without
            `diagnostics_every`).

    Examples:
        >>> import os, tempfile, jax, jax.numpy as jnp, fbp
        >>> from fbp import layers as L, losses
        >>> from fbp.plot import diagnostics
        >>> net = L.serial(L.dense(6), L.tanh(), L.dense(2))
        >>> _, params = net.init(jax.random.key(0), (4, 3))
        >>> report = fbp.explain(net, losses.mse, params, jnp.ones((4, 3)), jnp.zeros((4, 2)))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     [path.name for path in diagnostics(report, tmp)]
        ['activations.png', 'gradients.png', 'grad_norms.png']
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if hasattr(history_or_report, "rows"):
        return _report_diagnostics(history_or_report, out_dir)
    if not isinstance(history_or_report, dict):
        raise TypeError(f"diagnostics: expected a fbp.explain Report or a training history dict, "
                        f"got {type(history_or_report).__name__}")
    d: Any = history_or_report
    if "step" not in d or "layers" not in d:
        d = history_or_report.get("diagnostics")
        if not d:
            raise ValueError("diagnostics: this history holds no diagnostics; train with "
                             "fit(..., diagnostics_every=k) to record them")
    return _history_diagnostics(d, out_dir)


def _innermost(paths: Sequence[str]) -> list[str]:
    """The paths with no other path below them (the root "" only when it is alone)."""
    return [p for p in paths if not any(
        q != p and (p == "" or q.startswith(p + "/")) for q in paths)]


def _hist_curve(hist: dict | None):
    """(bin centers, density) of {"counts", "range"}, or None (absent or not finite)."""
    if not hist:
        return None
    counts = np.asarray(hist["counts"], dtype=float)
    lo, hi = (float(v) for v in hist["range"])
    total = counts.sum()
    if not (math.isfinite(lo) and math.isfinite(hi)) or total <= 0 or counts.size == 0:
        return None
    if hi <= lo:  # every entry equal: one spike
        return np.array([lo]), np.array([1.0])
    width = (hi - lo) / counts.size
    centers = lo + (np.arange(counts.size) + 0.5) * width
    return centers, counts / (total * width)


def _hist_moments(hist: dict | None) -> tuple[float, float]:
    """(mean, std) estimated from a histogram's bins."""
    curve = _hist_curve(hist)
    if curve is None:
        return math.nan, math.nan
    centers, density = curve
    w = density / density.sum()
    mean = float(np.sum(w * centers))
    return mean, float(np.sqrt(np.sum(w * (centers - mean) ** 2)))


def _frac_text(kind: str, frac: float) -> str:
    if frac is None or not math.isfinite(frac):
        return ""
    return f", {'saturated' if kind in SQUASHING else 'zero'} {100 * frac:.1f}%"


def _style(i: int) -> dict:
    """The i-th curve's color and line style (10 colors, then dashed, dash-dotted, dotted)."""
    return {"color": f"C{i % 10}", "ls": ("-", "--", "-.", ":")[(i // 10) % 4]}


def _num(v: float, fmt: str = ".2e") -> str:
    return "nan" if v is None or not math.isfinite(v) else format(v, fmt)


def _hist_figure(panels: list[dict], path: Path, what: str) -> Path | None:
    """One axes per panel {"title", "curves": [(label, hist)]}: a line per histogram."""
    panels = [p for p in panels if any(_hist_curve(h) for _, h in p["curves"])]
    if not panels:
        return None
    sizes = [_legend_size([lab for lab, h in p["curves"] if _hist_curve(h) is not None])
             for p in panels]
    legend_w, legend_h = max(w for w, _ in sizes), max(h for _, h in sizes)
    width = 6.5 + legend_w
    fig = _figure(width, len(panels) * max(3.3, legend_h) + 0.4)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        drawn, spikes = 0, []
        left_out = []
        for i, (label, hist) in enumerate(panel["curves"]):
            curve = _hist_curve(hist)
            if curve is None:
                left_out.append(label)
                continue
            centers, density = curve
            if centers.size == 1:
                ax.axvline(centers[0], lw=1.2, label=label + " (constant)", **_style(i))
                spikes.append(centers[0])
            else:
                ax.plot(centers, density, lw=1.2, label=label, **_style(i))
            drawn += 1
        if spikes and len(spikes) == drawn:  # constants only: center them
            ax.set_xlim(min(spikes) - 1, max(spikes) + 1)
        title = panel["title"]
        if left_out:
            title += f"\n({len(left_out)} layer(s) left out: no finite values)"
        ax.set_title(_wrap(title, 6.0, 10), fontsize=10)
        ax.set_xlabel(what)
        ax.set_ylabel("density")
        ax.grid(True, alpha=0.3)
        _legend(ax, drawn)
    return _save(fig, path)


def _report_diagnostics(report, out_dir: Path) -> list[Path]:
    rows = list(report.rows)
    by_path = {r.path: r for r in rows}
    inner = [by_path[p] for p in _innermost([r.path for r in rows])]
    labels = short_labels([r.label for r in inner])
    title = f"{_truncate(report.name, 90)} + {report.loss_name}: loss {report.loss:.4g}"
    written = []

    act = []
    grad = []
    for label, r in zip(labels, inner):
        frac = r.frac_saturated if r.kind in SQUASHING else (
            r.frac_zero if r.kind in RELU_LIKE else math.nan)
        act.append((f"{label}: mean {r.mean:+.2f}, std {r.std:.2f}{_frac_text(r.kind, frac)}",
                    r.act_hist))
        _, std = _hist_moments(r.grad_hist)
        grad.append((f"{label}: std ≈ {_num(std)}, ‖g‖ {_num(r.g_norm)}", r.grad_hist))
    for name, curves, what, head in (
            ("activations.png", act, "activation (layer output)", "activations"),
            ("gradients.png", grad, "gradient ∂L/∂(layer output)", "gradients")):
        p = _hist_figure([{"title": f"{head}: {title}", "curves": curves}], out_dir / name, what)
        if p:
            written.append(p)

    bars = [r for r in rows if math.isfinite(r.g_norm) or r.leaves]
    if bars:
        written.append(_grad_bars(bars, title, out_dir / "grad_norms.png"))
    return written


def _grad_bars(rows, title: str, path: Path) -> Path:
    """Horizontal bars of ‖g‖ and ‖∂θ‖ per row, forward order top to bottom."""
    names = []
    for r in rows:
        last = r.path.rsplit("/", 1)[-1] if r.path else ""
        text = f"{last} {_truncate(r.name, 28)}".strip() + (" [autodiff]" if r.autodiff else "")
        names.append("  " * r.depth + text)
    label_w = max(map(len, names)) * _CHAR
    width = max(7.0, 4.8 + label_w)
    fig = _figure(width, 0.3 * len(rows) + 1.6)
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    g = np.array([r.g_norm for r in rows], dtype=float)
    dtheta = np.array([r.grad_norm if r.leaves else math.nan for r in rows], dtype=float)
    positive = [v for v in np.concatenate([g, dtheta]) if math.isfinite(v) and v > 0]
    with np.errstate(invalid="ignore"):
        g = np.where(np.isfinite(g) & (g > 0), g, np.nan)
        dtheta = np.where(np.isfinite(dtheta) & (dtheta > 0), dtheta, np.nan)
    ax.barh(y - 0.2, np.nan_to_num(g), height=0.38, color="C0",
            label="‖g‖ (gradient arriving at the output)")
    ax.barh(y + 0.2, np.nan_to_num(dtheta), height=0.38, color="C1",
            label="‖∂θ‖ (parameter gradient)")
    if positive:
        ax.set_xscale("log")
        ax.set_xlim(min(positive) / 3, max(positive) * 3)
    ax.set_yticks(y, names, fontsize=FONT, fontfamily="monospace")
    for tick in ax.get_yticklabels():  # left-aligned, so the indentation shows the nesting
        tick.set_horizontalalignment("left")
    ax.tick_params(axis="y", pad=label_w * 72 + 4)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # forward order, top to bottom
    ax.set_xlabel("norm")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=FONT, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2,
              frameon=False)
    fig.suptitle(_wrap(f"gradient norms: {title}", width - 0.3, 11), fontsize=11)
    return _save(fig, path)


def _history_diagnostics(d: dict, out_dir: Path) -> list[Path]:
    steps = [int(s) for s in d.get("step", [])]
    layers = list(d.get("layers", []))
    kinds = list(d.get("kinds", [])) or [""] * len(layers)
    labels = short_labels(layers)
    written = []

    def matrix(key, n):
        a = np.array(d.get(key) or [], dtype=float)
        return a if a.ndim == 2 and a.shape == (len(steps), n) and a.size else None

    def record_at(step: int) -> int:
        return steps.index(step) if step in steps else len(steps) - 1

    hist = d.get("hist") or {}
    shown = [w for w in ("last", "first") if hist.get(w)]
    if len(shown) == 2 and hist["first"].get("step") == hist["last"].get("step"):
        shown = ["last"]
    act_mean, act_std = matrix("act_mean", len(layers)), matrix("act_std", len(layers))
    act_frac, grad_norm = matrix("act_frac", len(layers)), matrix("grad_norm", len(layers))
    for key, name, what in (("act", "activations.png", "activation (layer output)"),
                            ("grad", "gradients.png", "gradient ∂L/∂(layer output)")):
        panels = []
        for which in shown:
            h = hist[which]
            hists = list(h.get(key) or [])
            if not hists:
                continue
            step = h.get("step")
            rec = record_at(step) if steps else None
            curves = []
            for j, (label, kind) in enumerate(zip(labels, kinds)):
                hj = hists[j] if j < len(hists) else None
                if key == "act":
                    if rec is not None and act_mean is not None and act_std is not None:
                        mean, std = act_mean[rec, j], act_std[rec, j]
                    else:
                        mean, std = _hist_moments(hj)
                    frac = act_frac[rec, j] if rec is not None and act_frac is not None else math.nan
                    text = f"{label}: mean {mean:+.2f}, std {std:.2f}{_frac_text(kind, frac)}"
                else:
                    _, std = _hist_moments(hj)
                    gn = grad_norm[rec, j] if rec is not None and grad_norm is not None else math.nan
                    text = f"{label}: std ≈ {_num(std)}, ‖g‖ {_num(gn)}"
                curves.append((text, hj))
            head = "activations" if key == "act" else "gradients"
            panels.append({"title": f"{head} at step {step} ({which} record)", "curves": curves})
        p = _hist_figure(panels, out_dir / name, what)
        if p:
            written.append(p)

    weights = list(d.get("weights", []))
    ratio = matrix("update_ratio", len(weights))
    if steps and weights and ratio is not None:
        written.append(_update_ratio_figure(steps, short_labels(weights), ratio,
                                            out_dir / "update_ratio.png", d.get("every")))
    if steps and layers and grad_norm is not None:
        written.append(_lines_figure(
            steps, labels, grad_norm, out_dir / "grad_norms.png",
            title="‖g‖, the gradient arriving at each layer's output", ylabel="‖g‖"))
    return written


def _positive_or_nan(a: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def _steps_xaxis(ax, steps, every) -> None:
    ax.set_xlabel(f"step (recorded every {every})" if every else "step")
    ax.grid(True, alpha=0.3)
    if len(steps) == 1:
        ax.set_xlim(steps[0] - 1, steps[0] + 1)


def _update_ratio_figure(steps, labels, ratio, path: Path, every) -> Path:
    guide = "≈ 1e-3 (Karpathy's rule of thumb)"
    legend_w, legend_h = _legend_size(labels + [guide])
    width = 7.0 + legend_w
    fig = _figure(width, max(4.0, legend_h + 0.8))
    ax = fig.add_subplot()
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(_positive_or_nan(ratio))
    for j, label in enumerate(labels):
        ax.plot(steps, logs[:, j], lw=1.2, **_style(j),
                marker="o" if len(steps) < 30 else None, ms=3, label=label)
    ax.axhline(-3, color="k", ls="--", lw=1, label=guide)
    _steps_xaxis(ax, steps, every)
    ax.set_ylabel("log10(‖Δθ‖ / ‖θ‖)")
    ax.set_title(_wrap("update : data ratio of every weight", width - legend_w - 0.5, 11),
                 fontsize=11)
    _legend(ax, len(labels) + 1)
    return _save(fig, path)


def _lines_figure(steps, labels, values, path: Path, *, title: str, ylabel: str) -> Path:
    legend_w, legend_h = _legend_size(labels)
    width = 7.0 + legend_w
    fig = _figure(width, max(4.0, legend_h + 0.8))
    ax = fig.add_subplot()
    values = _positive_or_nan(values)
    for j, label in enumerate(labels):
        ax.plot(steps, values[:, j], lw=1.2, **_style(j),
                marker="o" if len(steps) < 30 else None, ms=3, label=label)
    if np.isfinite(values).any():
        ax.set_yscale("log")
    _steps_xaxis(ax, steps, None)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title, width - legend_w - 0.5, 11), fontsize=11)
    _legend(ax, len(labels))
    return _save(fig, path)


# --- the net as a picture ---------------------------------------------------------------------

_LINE = FONT / 72 * 1.45   # inches per line of box text
_PAD = 0.08
_GAP = 0.3                 # the arrow between two chained blocks
_R = 0.12                  # radius of the "+" of a residual
_NAME_MAX = 34

_FACE = {"leaf": "#dbe9f6", "autodiff": "#fdf0c2", "differs": "#f9d2d2", "residual": "#eef7ea",
         "parallel": "#fdf1e4", "remat": "#f0f0f0", "transformer_block": "#f1ecf8",
         "serial": "#f7f7f7", "other": "#f4f4f4", "io": "#ffffff"}
_RED = "#c62828"
_EDGE = "#555555"


class _Node:
    """One layer in the picture: what it is, its children, and what is known about it."""

    def __init__(self, path, name, kind, autodiff, children, shape, row):
        self.path, self.name, self.kind, self.autodiff = path, name, kind, autodiff
        self.children, self.shape, self.row = children, shape, row

    @property
    def differs(self) -> bool:
        return self.row is not None and not self.row.agrees

    @property
    def culprit(self) -> bool:
        """It differs from jax.vjp while every layer inside it agrees: the error is here."""
        return self.differs and not any(_differs_within(c) for c in self.children)


def _differs_within(node: _Node) -> bool:
    return node.differs or any(_differs_within(c) for c in node.children)


def _child_paths(path: str, known) -> list[str]:
    """The paths in `known` one level below `path`, by index."""
    prefix = f"{path}/" if path else ""
    found = []
    for q in known:
        rest = q[len(prefix):] if q.startswith(prefix) and q != path else None
        if rest and "/" not in rest:
            m = re.fullmatch(r"\w+\[(\d+)\]", rest)
            if m:
                found.append((int(m.group(1)), q))
    return [q for _, q in sorted(found)]


def _build(path: str, layer, info: dict, shapes: dict, rows: dict) -> _Node:
    """The node at `path`: from its Layer (children in order) where known, else from the
    paths the tape or the report recorded (so transformer_block's inside appears)."""
    if layer is None and path in info:
        layer = info[path]
    name = getattr(layer, "name", None) or (rows[path].name if path in rows else "?")
    kind = getattr(layer, "kind", None) or (rows[path].kind if path in rows else name)
    autodiff = bool(getattr(layer, "autodiff", False) or (path in rows and rows[path].autodiff))
    prefix = f"{path}/" if path else ""
    kids = tuple(getattr(layer, "children", ()) or ())
    if kids:
        children = [_build(f"{prefix}{kind}[{i}]", child, info, shapes, rows)
                    for i, child in enumerate(kids)]
    else:
        children = [_build(q, None, info, shapes, rows)
                    for q in _child_paths(path, set(info) | set(rows))]
    shape = shapes.get(path) or (tuple(rows[path].out_shape) if path in rows else None)
    return _Node(path, name, kind, autodiff, children, shape, rows.get(path))


def _traced(net, input_shape, input_dtype=None) -> tuple[dict, dict]:
    """({path: output shape}, {path: Layer}) of one forward pass, traced (nothing computed):
    init and fwd under jax.eval_shape, every call recorded by the tape."""
    import jax
    import jax.numpy as jnp

    from fbp import _tape
    from fbp._layer import default_float_dtype, fwd_with_state, init_with_state

    input_shape = tuple(int(d) for d in input_shape)
    shapes, layers = {}, {}

    def trace(dtype):
        def f(key):
            _, params, state = init_with_state(net, key, input_shape)
            x = jnp.zeros(input_shape, dtype)
            with _tape.recording() as tape:
                y, _, _ = fwd_with_state(net, params, x, state=state)
            for p, call in tape.calls.items():
                shapes[p], layers[p] = tuple(call.y.shape), call.layer
            shapes[""], layers[""] = tuple(y.shape), net
            return y

        jax.eval_shape(f, jax.random.key(0))

    if input_dtype is not None:
        trace(jnp.dtype(input_dtype))
    else:
        try:
            trace(default_float_dtype())
        except TypeError as err:  # a net that takes integer input (token ids): try those
            shapes.clear()
            layers.clear()
            try:
                trace(jnp.int32)
            except Exception:
                raise err from None
    return shapes, layers


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")" if shape is not None else ""


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _leaf_lines(node: _Node) -> list[str]:
    name = _truncate(node.name, _NAME_MAX) + (" [autodiff]" if node.autodiff else "")
    lines = [name]
    if node.shape is not None:
        lines.append(f"→ {_shape_text(node.shape)}")
    r = node.row
    if r is not None:
        fwd = f"μ {r.mean:.3g}  σ {r.std:.3g}"
        if r.kind in SQUASHING and math.isfinite(r.frac_saturated):
            fwd += f"  sat {_pct(r.frac_saturated)}"
        elif r.kind in RELU_LIKE:
            fwd += f"  zero {_pct(r.frac_zero)}"
        lines.append(fwd)
        bwd = f"‖g‖ {_num(r.g_norm)}"
        if r.leaves:
            bwd += f"  ‖∂θ‖ {_num(r.grad_norm)}"
        lines.append(bwd)
        verdict = _verdict(r)
        if verdict:
            lines.append(verdict)
    return lines


def _verdict(r) -> str:
    parts = [f"{what} {c}" for what, c in (("∂x", r.cmp_x), ("∂θ", r.cmp_params)) if c is not None]
    return "  ".join(parts) + (" vs vjp" if parts else "")


def _frame_lines(node: _Node) -> list[str]:
    title = node.kind if node.kind in ("serial", "residual", "parallel", "remat") else node.name
    lines = [_truncate(title, _NAME_MAX) + (" [autodiff]" if node.autodiff else "")]
    if node.shape is not None:
        lines.append(f"→ {_shape_text(node.shape)}")
    r = node.row
    if r is not None:
        lines.append(f"‖g‖ {_num(r.g_norm)}" + (f"  ‖∂θ‖ {_num(r.grad_norm)}" if r.leaves else ""))
        verdict = _verdict(r)
        if verdict:
            lines.append(verdict)
    return lines


def _text_w(lines: Sequence[str]) -> float:
    return max((len(s) for s in lines), default=0) * _CHAR


def _arrow(ax, points, *, head: bool = True, color: str = _EDGE) -> None:
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as MPath

    path = MPath(points, [MPath.MOVETO] + [MPath.LINETO] * (len(points) - 1))
    ax.add_patch(FancyArrowPatch(path=path, arrowstyle="-|>" if head else "-",
                                 mutation_scale=9, color=color, lw=1.0, zorder=3))


def _box(ax, x0, y0, w, h, *, face, edge=_EDGE, lw=1.0, ls="-", rounding=0.05, z=1):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x0, y0), w, h, boxstyle=f"round,pad=0,rounding_size={rounding}",
                                facecolor=face, edgecolor=edge, lw=lw, ls=ls, zorder=z))


def _lines_at(ax, lines, x, top, *, ha="center", color="black", z=4):
    for i, line in enumerate(lines):
        ax.text(x, top - _PAD - (i + 0.5) * _LINE, line, ha=ha, va="center", fontsize=FONT,
                family="monospace", color=color, weight="bold" if i == 0 else "normal", zorder=z)


class _Leaf:
    """A box: the layer's name, output shape and (with a report) its statistics."""

    def __init__(self, lines, *, face, differs=False):
        self.lines, self.face, self.differs = lines, face, differs
        w = _text_w(lines) + 2 * _PAD
        self.left = self.right = w / 2
        self.h = len(lines) * _LINE + 2 * _PAD

    def draw(self, ax, x, top, z=1):
        _box(ax, x - self.left, top - self.h, self.left + self.right, self.h, face=self.face,
             edge=_RED if self.differs else _EDGE, lw=2.0 if self.differs else 1.0, z=z)
        _lines_at(ax, self.lines, x, top, color=_RED if self.differs else "black", z=z + 1)


class _Chain:
    """serial: its blocks one under the other, an arrow between each two."""

    def __init__(self, items):
        self.items = items
        self.left = max(i.left for i in items)
        self.right = max(i.right for i in items)
        self.h = sum(i.h for i in items) + _GAP * (len(items) - 1)

    def draw(self, ax, x, top, z=1):
        y = top
        for k, item in enumerate(self.items):
            if k:
                _arrow(ax, [(x, y + _GAP), (x, y)])
            item.draw(ax, x, y, z)
            y -= item.h + _GAP


class _Frame:
    """A labeled frame around an inner part: residual (a skip arrow around the inner chain
    to a "+"), parallel (branches side by side, joined by concat or sum), and any other
    combinator (remat, transformer_block, a serial whose gradients differ): its children
    chained."""

    def __init__(self, node: _Node, style: str, inner: list, merge: str = ""):
        self.style, self.inner, self.merge = style, inner, merge
        self.lines = _frame_lines(node)
        self.differs = node.differs   # red edge; red face where the error is its own
        self.face = _FACE["differs"] if node.culprit else _FACE.get(style, _FACE["other"])
        self.head = len(self.lines) * _LINE + 2 * _PAD
        head_w = _text_w(self.lines) + 0.15   # the header sits left of the arrow
        if style == "parallel":
            self.widths = [b.left + b.right for b in inner]
            span = sum(self.widths) + 0.35 * (len(inner) - 1)
            self.merge_box = _Leaf([merge], face=_FACE["io"])
            body_left, body_right = span / 2, span / 2
            body_h = _GAP + max(b.h for b in inner) + _GAP + self.merge_box.h
        else:
            self.chain = _Chain(inner)
            body_left, body_right = self.chain.left, self.chain.right
            body_h = _GAP + self.chain.h
            if style == "residual":
                body_right += 0.3
                body_h += _GAP + 2 * _R
        self.left = max(body_left, head_w) + _PAD
        self.right = body_right + _PAD
        self.h = self.head + body_h + 0.15

    def draw(self, ax, x, top, z=1):
        edge = _RED if self.differs else "#888888"
        _box(ax, x - self.left, top - self.h, self.left + self.right, self.h, face=self.face,
             edge=edge, lw=1.6 if self.differs else 1.0, ls="-" if self.differs else "--",
             rounding=0.1, z=z)
        _lines_at(ax, self.lines, x - self.left + _PAD + 0.04, top, ha="left",
                  color=_RED if self.differs else "#333333", z=z + 1)
        y = top - self.head   # the split point, on the arrow's line
        _arrow(ax, [(x, top), (x, y)], head=False)
        if self.style == "parallel":
            self._draw_parallel(ax, x, y, top - self.h, z)
            return
        self.chain.draw(ax, x, y - _GAP, z + 2)
        _arrow(ax, [(x, y), (x, y - _GAP)])
        bottom = y - _GAP - self.chain.h
        if self.style == "residual":
            from matplotlib.patches import Circle

            cy = bottom - _GAP - _R
            _arrow(ax, [(x, bottom), (x, cy + _R)])
            skip_x = x + self.chain.right + 0.2
            _arrow(ax, [(x, y), (skip_x, y), (skip_x, cy), (x + _R, cy)])
            ax.add_patch(Circle((x, cy), _R, facecolor="white", edgecolor=_EDGE, lw=1.0,
                                zorder=z + 3))
            ax.text(x, cy, "+", ha="center", va="center", fontsize=FONT + 2, zorder=z + 4)
            bottom = cy - _R
        _arrow(ax, [(x, bottom), (x, top - self.h)], head=False)

    def _draw_parallel(self, ax, x, y, bottom, z):
        left = x - (sum(self.widths) + 0.35 * (len(self.inner) - 1)) / 2
        branch_top = y - _GAP
        merge_top = branch_top - max(b.h for b in self.inner) - _GAP
        ax.plot([x], [y], marker="o", ms=3, color=_EDGE, zorder=z + 3)
        for b, w in zip(self.inner, self.widths):
            bx = left + b.left
            _arrow(ax, [(x, y), (bx, y - _GAP / 2), (bx, branch_top)])
            b.draw(ax, bx, branch_top, z + 2)
            _arrow(ax, [(bx, branch_top - b.h), (bx, merge_top + _GAP / 2), (x, merge_top)])
            left += w + 0.35
        self.merge_box.draw(ax, x, merge_top, z + 2)
        _arrow(ax, [(x, merge_top - self.merge_box.h), (x, bottom)], head=False)


def _merge_of(name: str) -> str:
    m = re.search(r";\s*(concat|sum)\)$", name)
    return m.group(1) if m else "merge"


def _block(node: _Node):
    if not node.children:
        face = (_FACE["differs"] if node.differs else
                _FACE["autodiff"] if node.autodiff else _FACE["leaf"])
        return _Leaf(_leaf_lines(node), face=face, differs=node.differs)
    inner = [_block(c) for c in node.children]
    if node.kind == "serial":
        # a frame only to show that the composition itself is wrong
        return _Frame(node, "serial", inner) if node.culprit else _Chain(inner)
    if node.kind == "parallel":
        return _Frame(node, "parallel", inner, merge=_merge_of(node.name))
    if node.kind == "residual":
        return _Frame(node, "residual", inner)
    return _Frame(node, node.kind, inner)


def _culprits(node: _Node) -> list[_Node]:
    found = [n for c in node.children for n in _culprits(c)]
    return [node] + found if node.culprit else found


def graph(net: Layer, out_path: str | os.PathLike, *, report: Report | None = None,
          input_shape: Sequence[int] | None = None, input_dtype: DTypeLike | None = None) -> Path:
    """Write a picture of `net` to the PNG `out_path`, and return its path: micrograd's
    draw_dot, by layer. serial is a chain of boxes top to bottom (forward ↓); residual a
    frame around its inner chain with a skip arrow to a "+"; parallel its branches side by
    side, joined by a concat or sum node; remat and transformer_block (its inside shown)
    a labeled frame around their part. Each box has the layer's name and output shape.
    With neither a report nor an input shape, the boxes show names only.

    Args:
        net: the network.
        out_path: the PNG to write (missing folders are made).
        report: a `fbp.explain` report of this net: each box
            also shows the forward statistics (mean μ, std σ, % saturated or zero), the
            backward ones (‖g‖ arriving, ‖∂θ‖) and the check against jax.vjp (exact /
            close / DIFFERS; a box that DIFFERS is red; [autodiff] marks from_function
            layers). Output shapes are the report's.
        input_shape: without a report, the output shapes are
            found by tracing init and the forward pass on an input of this shape (nothing
            is computed).
        input_dtype: the input's dtype for that trace (default: floating
            point, then int32 if the net refuses it).

    Returns:
        `out_path`, as a Path.

    Raises:
        TypeError: `net` is not a fbp.Layer.
        ValueError: the report is of another net.

    Examples:
        >>> import os, tempfile
        >>> from fbp import layers as L
        >>> from fbp.plot import graph
        >>> net = L.serial(L.dense(8), L.residual(L.serial(L.dense(8), L.relu())), L.dense(2))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     graph(net, os.path.join(tmp, "net.png"), input_shape=(1, 4)).name
        'net.png'
    """
    from fbp._layer import Layer

    if not isinstance(net, Layer):
        raise TypeError(f"graph: expected a fbp.Layer, got {type(net).__name__}")
    rows: dict = {}
    shapes: dict = {}
    info: dict = {}
    if report is not None:
        if report.name != net.name:
            raise ValueError(f"graph: the report is of another net ({_truncate(report.name, 60)}),"
                             f" not of {_truncate(net.name, 60)}")
        rows = {r.path: r for r in report.rows}
    elif input_shape is not None:
        shapes, info = _traced(net, input_shape, input_dtype)
    root = _build("", net, info, shapes, rows)
    body = _block(root)

    io_in = ["input" + (f" {_shape_text(input_shape)}" if input_shape is not None else "")]
    top_box = _Leaf(io_in, face=_FACE["io"])
    if report is not None:
        bottom_box = _Leaf([f"loss: {report.loss_name} = {report.loss:.5g}"], face=_FACE["io"])
    else:
        bottom_box = _Leaf(["output" + (f" {_shape_text(root.shape)}" if root.shape else "")],
                           face=_FACE["io"])
    margin = 0.3
    half = max(body.left, body.right, top_box.left, bottom_box.left)
    width = max(2 * half + 2 * margin, 4.0)
    title = net.name
    if report is not None:
        culprits = _culprits(root)
        verdict = ("every layer's gradients agree with jax.vjp" if not culprits else
                   "DIFFERS from jax.vjp at " + ", ".join(
                       f"{n.path} {_truncate(n.name, 40)}".strip() for n in culprits))
        title = (f"{_truncate(net.name, 200)} + {report.loss_name} [{report.dtype}, "
                 f"train={report.train}]: {verdict}")
    title = _wrap(_truncate(title, 600), width - 0.4, 10)
    title_h = (title.count("\n") + 1) * 10 / 72 * 1.4 + 0.25
    height = title_h + top_box.h + _GAP + body.h + _GAP + bottom_box.h + margin
    dpi = int(max(40, min(110, 16000 / max(width, height))))
    fig = _figure(width, height, dpi=dpi, layout=None)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    x = width / 2   # the spine: every block is drawn around it
    ax.text(width / 2, height - 0.15, title, ha="center", va="top", fontsize=10,
            color=_RED if report is not None and report.disagreeing else "black")
    y = height - title_h
    top_box.draw(ax, x, y)
    y -= top_box.h
    _arrow(ax, [(x, y), (x, y - _GAP)])
    y -= _GAP
    body.draw(ax, x, y)
    y -= body.h
    _arrow(ax, [(x, y), (x, y - _GAP)])
    bottom_box.draw(ax, x, y - _GAP)
    return _save(fig, out_path)


__all__ = ["loss_curves", "diagnostics", "graph", "short_labels"]
