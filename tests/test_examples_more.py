"""Smoke tests: the CNN and the tiny language model examples run and learn; the full runs
(marked slow) reach what they promise."""

import numpy as np
import pytest
from conftest import load_example as load

pytestmark = pytest.mark.standard_dtype_promotion



@pytest.mark.slow  # the default suite's time budget
def test_cnn_digits_smoke():
    state, history = load("cnn_digits").main(epochs=3, progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["val_accuracy"][-1] > 0.9  # val_data is the test split


@pytest.mark.slow  # the default suite's time budget
def test_tiny_lm_smoke():
    out = load("tiny_lm").main(epochs=1, stride=8, sample_length=20, progress=False)
    assert out["val_loss"] < out["baseline"]
    assert isinstance(out["sample"], str) and len(out["sample"]) == 20


@pytest.mark.slow  # compiling two chunked transformer blocks: ~20-50 s on 2 cores
def test_tiny_lm_with_the_fused_head_and_chunked_attention():
    out = load("tiny_lm").main(epochs=1, stride=16, sample_length=5, progress=False,
                               fused_head=True, chunk_size=8)
    assert out["val_loss"] < out["baseline"]
    assert out["history"]["train_loss"][0] < 10


def test_tiny_lm_text_and_data():
    lm = load("tiny_lm")
    text = lm.load_text()
    assert len(text) > 5000 and text.startswith("Alice was beginning") and "#" not in text
    ids = np.arange(10, dtype=np.int32)
    x, y = lm.windows(ids, 4, stride=3)
    np.testing.assert_array_equal(x, [[0, 1, 2, 3], [3, 4, 5, 6]])
    np.testing.assert_array_equal(y, x + 1)
    assert lm.unigram_entropy(np.array([0, 1, 0, 1]), 3) == pytest.approx(np.log(2))


@pytest.mark.slow
def test_cnn_digits_reaches_98_percent():
    state, history = load("cnn_digits").main(progress=False)
    assert history["val_accuracy"][-1] >= 0.98


@pytest.mark.slow
def test_tiny_lm_beats_the_unigram_baseline_by_far():
    out = load("tiny_lm").main(sample_length=100, progress=False)
    assert out["val_loss"] < out["baseline"] - 0.75  # ≈ 3.02 nats → ≈ 2.0
    assert out["train_loss"] < out["val_loss"]
    assert len(out["sample"]) == 100
