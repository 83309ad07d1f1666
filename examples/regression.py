"""Regression on scikit-learn's diabetes data: MSE, mini-batch gradient descent, manual backprop."""

from fbp import data, losses
from fbp import layers as L
from fbp.optim import gd
from fbp.train import evaluate, fit


def main(epochs: int = 40, progress: bool = True):
    (x_tr, y_tr), (x_te, y_te) = data.load("diabetes")
    net = L.serial(L.dense(32), L.tanh(), L.dense(1))
    state, history = fit(net, losses.mse, gd(0.01), (x_tr, y_tr), epochs=epochs, batch_size=16,
                         val_data=(x_te, y_te), progress=progress)
    test = evaluate(net, losses.mse, state.params, x_te, y_te)
    # targets are standardized: MSE 1.0 is what predicting the mean would score
    print(f"diabetes: train MSE {history['train_loss'][-1]:.3f}, test MSE {test['loss']:.3f} "
          f"(predicting the mean: 1.0), R² ≈ {1 - test['loss']:.2f}")
    return test


if __name__ == "__main__":
    main()
