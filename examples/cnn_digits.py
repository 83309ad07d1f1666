"""A small CNN on scikit-learn's 8×8 digits, every layer's backward pass written by hand:

    conv2d(16, 3) → relu → conv2d(32, 3) → relu → max_pool(2) → flatten → dropout(0.25)
        → dense(64) → relu → dropout(0.25) → dense(10)

The flat (n, 64) standardized features become NHWC images (n, 8, 8, 1). Momentum SGD
(momentum 0.9, learning rate 0.02 on a cosine decay to 0, weight decay 2e-3) on
mini-batches of 32, with hand-written gradients (grad="manual").

Test accuracy over seeds 0-7: 98.1%-99.4%, mean 98.8% (float32 and float64). About
13 s on 2 CPU cores, start-up included; the first epoch (compiling) takes 3 s, the others
0.1 s.

Each epoch runs as a Python loop of jitted steps: on CPU, XLA runs the convolutions of
conv2d(32, 3) about ten times slower inside a compiled `lax.scan` than as separate steps,
and `fit`'s epoch_mode="auto" sees the convolutions and picks "steps" there.
"""

import optax

from fbp import data, losses
from fbp import layers as L
from fbp.train import evaluate, fit


def images(x):
    """(n, 64) -> (n, 8, 8, 1): NHWC, one channel."""
    return x.reshape(-1, 8, 8, 1)


def main(epochs: int = 30, progress: bool = True, seed: int = 0):
    (x_tr, y_tr), (x_te, y_te) = data.load("digits")
    x_tr, x_te = images(x_tr), images(x_te)
    net = L.serial(L.conv2d(16, 3), L.relu(), L.conv2d(32, 3), L.relu(), L.max_pool(2),
                   L.flatten(), L.dropout(0.25), L.dense(64), L.relu(), L.dropout(0.25),
                   L.dense(10))
    loss = losses.softmax_cross_entropy
    batch_size = 32
    schedule = optax.cosine_decay_schedule(0.02, epochs * (len(x_tr) // batch_size))
    optimizer = optax.chain(optax.add_decayed_weights(2e-3), optax.sgd(schedule, momentum=0.9))
    state, history = fit(net, loss, optimizer, (x_tr, y_tr), epochs=epochs,
                         batch_size=batch_size, grad="manual", seed=seed,
                         val_data=(x_te, y_te), progress=progress)
    test = evaluate(net, loss, state.params, x_te, y_te)
    print(f"CNN (seed {seed}): test accuracy {100 * test['accuracy']:.2f}%, "
          f"test loss {test['loss']:.4f}")
    return state, history


if __name__ == "__main__":
    main()
