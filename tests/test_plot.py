"""fbp.plot: PNGs of training diagnostics, of a net's structure, of loss curves — written
without touching pyplot's backend, with titles and legends inside the figure."""

import math

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

import fbp
from fbp import layers as L
from fbp import losses, plot

PNG = b"\x89PNG\r\n\x1a\n"


def _net():
    return L.serial(
        L.batch_norm(),
        L.residual(L.serial(L.dense(4), L.relu())),
        L.parallel(L.dense(2), L.sigmoid()),
        L.from_function(lambda x: 2.0 * x, name="double"),
        L.transformer_block(1, mlp_ratio=1))


IN_SHAPE = (2, 2, 4)


@pytest.fixture(scope="module")
def explained():
    """(net, report): one explain pass of a net with every kind of combinator, batch_norm
    (stateful), a from_function layer and a transformer_block."""
    net = _net()
    with jax.numpy_dtype_promotion("strict"):
        out_shape, params, state = net.init(jax.random.key(0), IN_SHAPE)
        x = jax.random.normal(jax.random.key(1), IN_SHAPE)
        y = jax.random.normal(jax.random.key(2), out_shape)
        report = fbp.explain(net, losses.mse, params, x, y, state=state)
    return net, report


def _hist(rng, lo=-1.0, hi=1.0):
    return {"counts": rng.integers(0, 50, 40).tolist(), "range": [lo, hi]}


def _history(n_layers=2, long=False):
    """A training history in fit(..., diagnostics_every=k)'s format: 3 records."""
    rng = np.random.default_rng(0)
    path = "serial[0]/residual[0]/parallel[1]/" if long else ""
    layers = [f"{path}serial[{i}] {'dense(64)' if i % 2 == 0 else 'tanh'}" for i in range(n_layers)]
    kinds = ["dense" if i % 2 == 0 else "tanh" for i in range(n_layers)]
    weights = [f"{layers[0]} ['w']"]

    def per_layer(value):
        return [[value + 0.1 * r + 0.01 * j for j in range(n_layers)] for r in range(3)]

    return {"epoch": [1, 2], "train_loss": [1.0, 0.5], "diagnostics": {
        "every": 10, "step": [0, 10, 20], "layers": layers, "kinds": kinds,
        "act_mean": per_layer(0.0), "act_std": per_layer(0.7),
        "act_frac": [[math.nan if k == "dense" else 0.05 for k in kinds]] * 3,
        "grad_norm": per_layer(0.3), "weights": weights,
        "update_ratio": [[1e-2], [3e-3], [1e-3]],
        "hist": {w: {"step": s, "act": [_hist(rng) for _ in layers],
                     "grad": [_hist(rng, -1e-3, 1e-3) for _ in layers]}
                 for w, s in (("first", 0), ("last", 20))}}}


def _check_png(path, min_side=100):
    import matplotlib.pyplot as plt

    data = path.read_bytes()
    assert data[:8] == PNG, path
    image = plt.imread(path)
    h, w = image.shape[:2]
    assert min_side <= h <= 40000 and min_side <= w <= 40000, (path, image.shape)
    return image


@pytest.fixture
def figures(monkeypatch):
    """Every figure fbp.plot saves, kept for inspection; and matplotlib.use forbidden."""
    saved = []
    real_save = plot._save

    def save(fig, path):
        saved.append(fig)
        return real_save(fig, path)

    def no_use(*args, **kwargs):
        raise AssertionError("fbp.plot must not switch the matplotlib backend")

    monkeypatch.setattr(plot, "_save", save)
    monkeypatch.setattr(matplotlib, "use", no_use)
    return saved


def _assert_inside(fig):
    """Titles, texts and legends lie within the figure once drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    artists = list(fig.texts)
    for ax in fig.axes:
        artists += [ax.title, ax.get_legend()] if ax.get_legend() else [ax.title]
    for artist in artists:
        if artist is None or not artist.get_visible() or (
                hasattr(artist, "get_text") and not artist.get_text()):
            continue
        ext = artist.get_window_extent(renderer)
        assert (ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y0 >= box.y0 - 1
                and ext.y1 <= box.y1 + 1), (artist, ext, box)


def test_diagnostics_of_a_report(explained, tmp_path, figures):
    _, report = explained
    paths = plot.diagnostics(report, tmp_path / "report")
    assert [p.name for p in paths] == ["activations.png", "gradients.png", "grad_norms.png"]
    for p in paths:
        _check_png(p)
    for fig in figures:
        _assert_inside(fig)


def test_diagnostics_of_a_history(tmp_path, figures):
    history = _history()
    paths = plot.diagnostics(history, tmp_path / "new" / "dir")
    assert [p.name for p in paths] == ["activations.png", "gradients.png", "update_ratio.png",
                                       "grad_norms.png"]
    for p in paths:
        _check_png(p)
    for fig in figures:
        _assert_inside(fig)
    # the first and the last histograms: two panels
    assert len(figures[0].axes) == 2
    # the update ratio: one line per weight and the guide at 1e-3
    ax = figures[2].axes[0]
    guide = [line for line in ax.get_lines() if "rule of thumb" in line.get_label()]
    assert len(guide) == 1 and list(guide[0].get_ydata()) == [-3, -3]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), np.log10([1e-2, 3e-3, 1e-3]))
    # the "diagnostics" entry itself is accepted too
    d = dict(history["diagnostics"], hist={})
    assert len(plot.diagnostics(d, tmp_path / "d")) == 2


def test_diagnostics_legends_of_many_layers_fit(tmp_path, figures):
    paths = plot.diagnostics(_history(n_layers=12, long=True), tmp_path)
    assert len(paths) == 4
    for fig in figures:
        _assert_inside(fig)
    legend = figures[0].axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert len(labels) == 12
    # shortened: the path's last component and the name, not the whole path
    assert labels[0].startswith("serial[0] dense(64): mean")
    assert all("residual[0]" not in label for label in labels)


def test_diagnostics_skips_absent_data(tmp_path):
    history = _history()
    d = history["diagnostics"]
    d["hist"] = {}
    assert [p.name for p in plot.diagnostics(history, tmp_path)] == ["update_ratio.png",
                                                                     "grad_norms.png"]
    with pytest.raises(ValueError, match="diagnostics_every"):
        plot.diagnostics({"epoch": [1], "train_loss": [1.0]}, tmp_path)


def test_graph_with_report(explained, tmp_path, figures):
    net, report = explained
    path = plot.graph(net, tmp_path / "g.png", report=report)
    assert path == tmp_path / "g.png"
    _check_png(path)
    texts = [t.get_text() for t in figures[0].axes[0].texts]
    # transformer_block's inside appears, with statistics and the verdict
    assert any(t.startswith("multi_head_attention") for t in texts)
    assert any(t.startswith("double [autodiff]") for t in texts)
    assert any(t.startswith("μ ") for t in texts) and any("vs vjp" in t for t in texts)
    assert "concat" in texts and "+" in texts


def test_graph_from_input_shape_and_from_names_only(tmp_path, figures):
    net = _net()
    with jax.numpy_dtype_promotion("strict"):
        _check_png(plot.graph(net, tmp_path / "shapes.png", input_shape=IN_SHAPE))
    _check_png(plot.graph(net, tmp_path / "names.png"))
    shapes = [t.get_text() for t in figures[0].axes[0].texts]
    names = [t.get_text() for t in figures[1].axes[0].texts]
    assert "→ (2, 2, 2)" in shapes  # parallel's dense(2) branch
    assert any(t.startswith("multi_head_attention") for t in shapes)
    assert not any(t.startswith("→") for t in names)
    assert any(t.startswith("transformer_block(1") for t in names)


def test_graph_of_token_ids_and_of_a_wrong_gradient(tmp_path, figures):
    net = L.serial(L.embedding(10, 4), L.dense(3))
    with jax.numpy_dtype_promotion("strict"):
        _check_png(plot.graph(net, tmp_path / "ids.png", input_shape=(2, 5)))
    assert "→ (2, 5, 3)" in [t.get_text() for t in figures[0].axes[0].texts]

    bad = fbp.Layer("bad_tanh", lambda key, s: (tuple(s), {}),
                    lambda p, x, *, key=None, train=False: (jnp.tanh(x), jnp.tanh(x)),
                    lambda p, y, g: ({}, 2 * g * (1 - y * y)))
    net = L.serial(L.dense(3), L.residual(bad))
    with jax.numpy_dtype_promotion("strict"):
        out, params = net.init(jax.random.key(0), (2, 3))
        report = fbp.explain(net, losses.mse, params, jnp.ones((2, 3)), jnp.zeros(out))
    _check_png(plot.graph(net, tmp_path / "bad.png", report=report))
    title = figures[1].axes[0].texts[0].get_text().replace("\n", " ")
    assert "DIFFERS from jax.vjp at serial[1]/residual[0] bad_tanh" in title
    with pytest.raises(ValueError, match="another net"):
        plot.graph(_net(), tmp_path / "x.png", report=report)


def test_plots_leave_the_backend_and_pyplot_alone(explained, tmp_path, figures):
    import matplotlib.pyplot as plt

    net, report = explained
    backend, open_figures = matplotlib.get_backend(), plt.get_fignums()
    assert plot.loss_curves({"epoch": [1, 2], "train_loss": [1.0, 0.5]},
                            tmp_path / "c.png") == tmp_path / "c.png"
    history = _history()
    history["diagnostics"]["hist"].pop("first")
    plot.diagnostics(history, tmp_path)
    plot.graph(net, tmp_path / "g.png", report=report)
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == open_figures


def test_loss_curves_long_title_fits(tmp_path, figures):
    history = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.2], "val_loss": [1.1, 0.6, 0.4]}
    title = "digits: " + _net().name + " with a very long description" * 3
    plot.loss_curves(history, tmp_path / "c.png", title=title)
    _check_png(tmp_path / "c.png")
    (fig,) = figures
    _assert_inside(fig)
    assert fig.texts and "\n" in fig.texts[0].get_text()  # wrapped


def test_short_labels():
    labels = ["serial[2]/residual[0]/serial[1] dense(8)", "serial[3]/residual[0]/serial[1] dense(8)",
              "serial[0] dense(64) ['w']", "x[0] " + "y" * 100, "serial(dense(3), relu)"]
    short = plot.short_labels(labels)
    assert short[0] != short[1] and short[0].endswith("serial[1] dense(8)")
    assert short[2] == "serial[0] dense(64) ['w']"
    assert len(short[3]) <= plot.LABEL_MAX and short[3].endswith("…")
    assert short[4] == "serial(dense(3), relu)"
