"""Plots of training histories (matplotlib, written atomically to PNG)."""

from __future__ import annotations

import io
import os

from fbp.checkpoint import atomic_write_bytes


def loss_curves(history: dict, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Write the train (and validation) loss per epoch, log scale, to a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = history["epoch"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(epochs, history["train_loss"], label="train loss")
    if history.get("val_loss"):
        ax.plot(epochs, history["val_loss"], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
