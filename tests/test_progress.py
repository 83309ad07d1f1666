"""fit's progress bar: drawn at a bounded pace, not once per epoch; whole lines where stderr
is a file or a pipe."""

import io
import sys
import time

import jax
import numpy as np
import pytest

import fbp.train as T
from fbp import layers as L
from fbp import losses
from fbp.optim import gd

EPOCHS = 300


def quick_fit():
    """A full-batch fit of many quick epochs; the seconds it took."""
    x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(8, 2)
    y = np.stack([x[:, 0] * x[:, 1]], axis=1)
    t0 = time.perf_counter()
    with jax.enable_x64(False):
        _, history = T.fit(L.dense(1), losses.mse, gd(0.1), (x, y), epochs=EPOCHS,
                           epoch_mode="scan")
    assert len(history["epoch"]) == EPOCHS
    return time.perf_counter() - t0


def test_a_log_file_gets_a_few_whole_lines(capsys):
    """stderr not a terminal (a log file, a pipe, pytest's capture): the bar is written as
    lines of their own, the first and the last, and one per 10 s at most between."""
    seconds = quick_fit()
    err = capsys.readouterr().err
    assert "\r" not in err and err.endswith("\n")
    lines = err.splitlines()
    assert 2 <= len(lines) <= 2 + seconds / 10, lines  # a line per 10 s at most
    assert lines[0].startswith("fit (manual):") and f"0/{EPOCHS}" in lines[0]
    assert f"{EPOCHS}/{EPOCHS}" in lines[-1] and "loss=" in lines[-1], lines[-1]


class Terminal(io.StringIO):
    def isatty(self):
        return True


class Notebook(io.StringIO):  # an output stream of a Jupyter kernel, as the bar sees it
    pass


Notebook.__module__ = "ipykernel.iostream"


@pytest.mark.parametrize(("stream", "interval"), [(Terminal, 0.1), (Notebook, 0.5)])
def test_a_terminal_or_a_notebook_redraws_in_place_at_a_bounded_pace(monkeypatch, stream,
                                                                     interval):
    """In place ("\r"), at most once per 0.1 s in a terminal and 0.5 s in a notebook."""
    out = stream()
    monkeypatch.setattr(sys, "stderr", out)
    seconds = quick_fit()
    text = out.getvalue()
    redraws = text.count("\r")
    assert 2 <= redraws <= 3 + seconds / interval, (redraws, seconds)
    assert text.count("\n") == 1 and f"{EPOCHS}/{EPOCHS}" in text.rsplit("\r", 1)[-1]
