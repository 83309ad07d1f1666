"""A character-level transformer language model, trained with hand-written backprop on the
first chapter of Lewis Carroll's "Alice's Adventures in Wonderland" (1865, public domain;
examples/data/alice.txt, about 11 000 characters, 59 distinct).

    embedding(vocab, 64) → positional_embedding(32) → dropout(0.2) → transformer_block(4, causal) ×2
        → layer_norm → dense(vocab)

Each example is a window of 32 characters; the targets are the same window shifted by one
character, so the loss is softmax cross-entropy over (batch, 32, vocab) with integer
next-character labels. The last 10% of the text is held out for validation. The
positions are learned: a (32, d) table added to every sequence. AdamW (peak learning rate
3e-3, warm-up and cosine decay, weight decay 0.1), mini-batches of 32, 4 epochs over every
window.

The unigram baseline is the entropy of the training text's character distribution (what
a model that ignores the context can do at best): 3.02 nats. The transformer ends near
2.0 nats per character on the held-out text (seeds 0-2: 2.04, 2.00, 2.02 in float32;
2.02 in float64; train loss ≈ 1.2), in about 30 s on 2 CPU cores. At the end it writes
text from a prompt, one character at a time.
"""

from pathlib import Path

import numpy as np
import optax

from fbp import layers as L
from fbp import losses
from fbp.train import evaluate, fit, predict

TEXT = Path(__file__).resolve().parent / "data" / "alice.txt"


def load_text(path=TEXT) -> str:
    """The text without its '#' header line(s)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith("#"))


def windows(ids: np.ndarray, seq_len: int, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ids[i : i + T] and next-character targets ids[i + 1 : i + T + 1]."""
    starts = np.arange(0, len(ids) - seq_len, stride)
    idx = starts[:, None] + np.arange(seq_len)[None, :]
    return ids[idx], ids[idx + 1]


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """H = −Σ_c p_c log p_c (nats) of the character frequencies."""
    p = np.bincount(ids, minlength=vocab_size) / len(ids)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def generate(net, params, prompt: str, chars: list[str], length: int, seq_len: int, *,
             temperature: float = 0.7, seed: int = 0) -> str:
    """Sample `length` characters after `prompt`, one at a time.

    The network always sees a window of exactly `seq_len` ids (one compiled shape): the
    last `seq_len` characters, or, while the text is shorter, the text followed by filler.
    With causal attention the logits at position t depend on positions ≤ t only, so the
    filler after the last real character changes nothing there.
    """
    index = {c: i for i, c in enumerate(chars)}
    ids = [index[c] for c in prompt]
    rng = np.random.default_rng(seed)
    for _ in range(length):
        context = ids[-seq_len:]
        window = np.zeros((1, seq_len), np.int32)
        window[0, :len(context)] = context
        logits = np.asarray(predict(net, params, window)[0, len(context) - 1], np.float64)
        if temperature == 0:
            ids.append(int(np.argmax(logits)))
            continue
        z = logits / temperature
        p = np.exp(z - z.max())
        ids.append(int(rng.choice(len(chars), p=p / p.sum())))
    return "".join(chars[i] for i in ids[len(prompt):])


def main(epochs: int = 4, progress: bool = True, seed: int = 0, seq_len: int = 32,
         d_model: int = 64, stride: int = 1, sample_length: int = 200,
         prompt: str = "Alice was ", fused_head: bool = False,
         chunk_size: int | None = None) -> dict:
    """Train on every `stride`-th window of the first 90% of the text; return the unigram
    `baseline`, the final `train_loss` and `val_loss` (nats per character), a generated
    `sample`, the fit `history` and `state`.

    fused_head: the last layer is `linear_softmax_head(vocab)` and the loss
    `fused_softmax_cross_entropy(head)`, so training never forms the (tokens × vocab)
    logits. chunk_size: the attention runs over key blocks of that size (flash-style)."""
    text = load_text()
    chars = sorted(set(text))
    vocab = len(chars)
    ids = np.array([chars.index(c) for c in text], np.int32)
    split = int(0.9 * len(ids))
    train_ids, val_ids = ids[:split], ids[split:]
    x_tr, y_tr = windows(train_ids, seq_len, stride)
    x_val, y_val = windows(val_ids, seq_len, seq_len // 2)
    baseline = unigram_entropy(train_ids, vocab)
    print(f"{len(text)} characters, vocabulary {vocab}; {len(x_tr)} training windows of "
          f"{seq_len}, validation on the last {len(val_ids)} characters")
    print(f"unigram baseline (entropy of the character distribution): {baseline:.3f} nats")

    head = L.linear_softmax_head(vocab) if fused_head else L.dense(vocab)
    net = L.serial(L.embedding(vocab, d_model), L.positional_embedding(seq_len), L.dropout(0.2),
                   L.transformer_block(4, causal=True, chunk_size=chunk_size),
                   L.transformer_block(4, causal=True, chunk_size=chunk_size),
                   L.layer_norm(), head)
    loss = (losses.fused_softmax_cross_entropy(head) if fused_head
            else losses.softmax_cross_entropy)
    batch_size = 32
    steps = epochs * (len(x_tr) // batch_size)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 3e-3, min(100, steps // 10), steps)
    optimizer = optax.adamw(schedule, weight_decay=0.1)
    state, history = fit(net, loss, optimizer, (x_tr, y_tr), epochs=epochs,
                         batch_size=batch_size, grad="manual", seed=seed,
                         val_data=(x_val, y_val), progress=progress)
    train = evaluate(net, loss, state, x_tr, y_tr)
    val = evaluate(net, loss, state, x_val, y_val)
    print(f"after {epochs} epoch(s), {steps} steps: train loss {train['loss']:.3f}, "
          f"validation loss {val['loss']:.3f} nats/char (unigram baseline {baseline:.3f})")
    sample = generate(net, state.params, prompt, chars, sample_length, seq_len, seed=seed)
    print(f"sample: {prompt}{sample}")
    return {"baseline": baseline, "train_loss": train["loss"], "val_loss": val["loss"],
            "sample": sample, "history": history, "state": state}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--fused-head", action="store_true",
                        help="train through the fused linear + cross-entropy head: no logits")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="chunked (flash-style) attention over key blocks of this size")
    args = parser.parse_args()
    main(epochs=args.epochs, fused_head=args.fused_head, chunk_size=args.chunk_size)
