"""The README's pictures: `python docs/make_pictures.py` (from a checkout, after `make venv`).

A small net with a residual block and parallel branches, one explained pass on the digits,
drawn by `fbp.plot.graph`; and the diagnostics of a short training run.
"""

from pathlib import Path

import jax

import fbp
from fbp import data, losses
from fbp import layers as L
from fbp.optim import gd
from fbp.plot import diagnostics, graph
from fbp.train import fit

HERE = Path(__file__).resolve().parent


def main() -> None:
    (x, y), _ = data.load("digits")
    net = L.serial(L.dense(32), L.batch_norm(), L.tanh(),
                   L.residual(L.serial(L.dense(32), L.relu())),
                   L.parallel(L.dense(8), L.serial(L.dense(8), L.sigmoid())), L.dense(10))
    _, params, state = net.init(jax.random.key(0), (64, 64))
    report = fbp.explain(net, losses.softmax_cross_entropy, params, x[:64], y[:64], state=state)
    print(report)
    graph(net, HERE / "graph.png", report=report)
    _, history = fit(net, losses.softmax_cross_entropy, gd(0.1), (x, y), epochs=10,
                     batch_size=32, diagnostics_every=10, progress=False)
    for path in diagnostics(history, HERE / "diagnostics"):
        print("wrote", path)


if __name__ == "__main__":
    main()
