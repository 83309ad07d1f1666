"""XOR, the textbook case: a sigmoid hidden layer, MSE, full-batch gradient descent.

    forward  z1 = x W1 + b1,  a1 = σ(z1),  ŷ = σ(a1 W2 + b2)
    loss     L = mean (ŷ − y)²
    backward by hand (fbp.value_and_grad), update  w ← w − lr · ∂L/∂w,
    epoch after epoch until L < 0.01.
"""

import numpy as np

from fbp import data, losses
from fbp import layers as L
from fbp.optim import gd
from fbp.train import fit, predict


def main(epochs: int = 5000, progress: bool = True):
    (x, y), _ = data.load("xor")
    net = L.serial(L.dense(4), L.sigmoid(), L.dense(1), L.sigmoid())
    state, history = fit(net, losses.mse, gd(2.0), (x, y), epochs=epochs, batch_size=None,
                         grad="manual", seed=0, stop_at_loss=0.01, progress=progress)
    pred = np.asarray(predict(net, state.params, x))
    print(f"stopped after {len(history['epoch'])} epochs ({history['stopped']}), "
          f"loss {history['train_loss'][-1]:.4f}")
    for xi, yi, pi in zip(x, y, pred):
        print(f"  x = {xi.astype(int)}  target {int(yi[0])}  prediction {pi[0]:.3f}")
    return history


if __name__ == "__main__":
    main()
