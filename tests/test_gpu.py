"""On a GPU (skipped elsewhere, see conftest): the hand-written gradients, training and the
benchmark suite run there unchanged, and the arrays really live on the GPU."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fbp import data, losses
from fbp import layers as L
from fbp.check import check_builtins
from fbp.optim import gd
from fbp.train import evaluate, fit, init_state, make_step

pytestmark = pytest.mark.gpu


def test_default_device_is_a_gpu():
    assert jax.devices()[0].platform == "gpu"


def test_every_builtin_gradient_agrees_on_gpu():
    """float32 on the GPU, against jax.grad (matmuls at 'highest' precision, see conftest:
    TF32 would put float32 products at ~1e-3) and float64 finite differences."""
    reports = check_builtins(dtypes=("float32",))
    bad = [str(r) for r in reports if not r.ok]
    assert not bad, "\n\n".join(bad)


def test_step_runs_on_the_gpu():
    net = L.serial(L.dense(16), L.relu(), L.dense(3))
    state = init_state(net, gd(0.1), jax.random.key(0), (8, 4))
    step = make_step(net, losses.softmax_cross_entropy, gd(0.1))
    x = jax.random.normal(jax.random.key(1), (8, 4))
    y = jax.random.randint(jax.random.key(2), (8,), 0, 3)
    state, metrics = step(state, x, y)
    leaf = jax.tree_util.tree_leaves(state.params)[0]
    assert {d.platform for d in leaf.devices()} == {"gpu"}
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.standard_dtype_promotion
@pytest.mark.parametrize("precision", [None, "bf16"])
def test_digits_mlp_trains_on_gpu(precision):
    (x_tr, y_tr), (x_te, y_te) = data.load("digits")
    net = L.serial(L.dense(128), L.relu(), L.dense(10))
    state, _ = fit(net, losses.softmax_cross_entropy, gd(0.1), (x_tr, y_tr), epochs=15,
                   batch_size=32, precision=precision, progress=False)
    assert evaluate(net, losses.softmax_cross_entropy, state.params, x_te, y_te)["accuracy"] > 0.95


def test_quick_benchmark_on_gpu(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import cli

    assert cli.main(["--quick", "--device", "gpu", "--no-progress", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "results.json").read_text())
    steps = [r for r in records if r["kind"] == "step"]
    assert steps and {r["platform"] for r in steps} == {"gpu"}
