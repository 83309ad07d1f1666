"""The examples run end to end and print what they promise."""

import pathlib
import re
import runpy

import jax
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.x64  # the example turns x64 on: its gradients agree with jax.grad to ~1e-16
def test_backprop_by_hand(capsys):
    # runpy, as `python examples/backprop_by_hand.py` would, in this process (no second JAX
    # start-up), under the strict dtype and rank promotion of conftest
    try:
        runpy.run_path(str(EXAMPLES / "backprop_by_hand.py"), run_name="__main__")
    finally:  # its jax.config.update holds for the whole process: not for the tests after it
        jax.config.update("jax_enable_x64", False)
    out = capsys.readouterr().out
    assert "jax.grad" in out
    for label in ("z1 = x W1 + b1", "a1 = σ(z1)", "δ_out = ∂L/∂z2", "δ_hidden = ∂L/∂z1",
                  "∂W1 = xᵀ δ_hidden", "∂b2 = Σ δ_out"):
        assert label in out
    # the hand-written gradients agree with jax.grad, and one descent step lowers the loss
    max_diff = float(re.search(r"over all gradients: (\S+)", out).group(1))
    assert max_diff <= 1e-12
    before, after = map(float, re.search(r"loss (\S+) → (\S+)", out).groups())
    assert after < before
