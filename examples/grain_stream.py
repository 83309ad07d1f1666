"""The digits MLP trained from a grain pipeline: `fit` takes a stream of (x, y) batches.

The pipeline is a function of the epoch, so every epoch has its own shuffle and a rerun
(or a resume from a checkpoint) sees the same batches: grain's MapDataset, shuffled with a
seed drawn from the epoch, cut into batches of 32 (the last, smaller one dropped).
Needs grain (`pip install grain`); without it, this says so and stops."""

import sys

from fbp import data, losses
from fbp import layers as L
from fbp.optim import gd
from fbp.train import evaluate, fit

BATCH = 32


def main(epochs: int = 10, progress: bool = True, seed: int = 0):
    try:
        import grain
    except ImportError:
        print("examples/grain_stream.py needs grain: pip install grain", file=sys.stderr)
        return None
    (x_tr, y_tr), (x_te, y_te) = data.load("digits")
    rows = grain.MapDataset.source(range(len(x_tr))).map(lambda i: (x_tr[i], y_tr[i]))

    def batches(epoch):  # a fresh, reproducible shuffle each epoch
        return rows.shuffle(seed=seed * 1000 + epoch).batch(BATCH, drop_remainder=True)

    test_batches = grain.MapDataset.source(range(len(x_te))).map(
        lambda i: (x_te[i], y_te[i])).batch(256)  # evaluate takes batches of any size
    net = L.serial(L.dense(256), L.relu(), L.dense(128), L.relu(), L.dense(10))
    loss = losses.softmax_cross_entropy
    state, history = fit(net, loss, gd(0.1), batches, epochs=epochs, val_data=test_batches,
                         progress=progress)
    test = evaluate(net, loss, state, test_batches)
    print(f"grain stream: {len(history['epoch'])} epochs, test accuracy "
          f"{100 * test['accuracy']:.2f}%, test loss {test['loss']:.4f}")
    return state, history


if __name__ == "__main__":
    main()
