"""The suites and the train-step configs (MLPs, a CNN, a transformer; softmax
cross-entropy on integer labels, gd(0.01)).

No JAX here, so the command line can list them without importing it.
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise


@dataclasses.dataclass(frozen=True)
class Config:
    """An MLP 784 → hidden … → 10 (ReLU) and the batch it is timed on — or, with `kind`
    "cnn" / "transformer", one of the layer-zoo models (built in `suite.build_model`);
    `sizes` is then (input features, output classes) and `example` the shape of one
    example."""

    name: str
    sizes: tuple[int, ...]  # input, hidden..., output
    batch_size: int
    kind: str = "mlp"
    example: tuple[int, ...] = ()
    description: str = ""
    # cnn: conv features per stage (conv 3×3 "SAME" → relu → max-pool 2) and the dense width
    channels: tuple[int, ...] = ()
    hidden_width: int = 0
    # transformer: pre-LN causal blocks and their heads
    blocks: int = 0
    heads: int = 0

    @property
    def hidden(self) -> tuple[int, ...]:
        return self.sizes[1:-1]

    @property
    def params(self) -> int:
        return sum(a * b + b for a, b in pairwise(self.sizes))

    @property
    def layers(self) -> str:
        if self.kind != "mlp":
            return self.description
        inner = self.sizes[1:-1]
        if len(inner) > 3 and len(set(inner)) == 1:
            return f"{self.sizes[0]}-{len(inner)}×{inner[0]}-{self.sizes[-1]}"
        return "-".join(map(str, self.sizes))


CONFIGS = {c.name: c for c in [
    Config("small", (784, 256, 256, 10), 128),
    Config("medium", (784, 1024, 1024, 10), 512),
    Config("large", (784, 2048, 2048, 10), 1024),
    Config("deep", (784,) + (512,) * 16 + (10,), 256),
    Config("cnn", (784, 10), 128, kind="cnn", example=(28, 28, 1),
           description="conv3×3(32)-relu-maxpool2-conv3×3(64)-relu-maxpool2-dense(128)-dense(10)",
           channels=(32, 64), hidden_width=128),
    Config("transformer", (256, 256), 16, kind="transformer", example=(128, 256),
           description="2 × transformer_block(d=256, 8 heads, causal), seq 128, dense(256) per token",
           blocks=2, heads=8),
    # --quick
    Config("tiny", (64, 32, 32, 10), 32),
    Config("tiny-deep", (64,) + (32,) * 6 + (10,), 16),
    # tests: the CNN and transformer shapes at a size that compiles in a second
    Config("tiny-cnn", (64, 10), 8, kind="cnn", example=(8, 8, 1),
           description="conv3×3(4)-relu-maxpool2-conv3×3(8)-relu-maxpool2-dense(16)-dense(10)",
           channels=(4, 8), hidden_width=16),
    Config("tiny-transformer", (16, 16), 2, kind="transformer", example=(8, 16),
           description="1 × transformer_block(d=16, 2 heads, causal), seq 8, dense(16) per token",
           blocks=1, heads=2),
]}
DEFAULT_CONFIGS = ("small", "medium", "large", "deep", "cnn", "transformer")
QUICK_CONFIGS = ("tiny", "tiny-deep")

# what `python -m benchmarks --suite NAME` runs (see benchmarks/README.md)
SUITES = {
    "steps": "train step, manual vs jax.grad gradients, on the configs (and --peers)",
    "attention": "attention forward + backward: temporary memory and time against T",
    "remat": "value-and-grad with and without remat per block, against jax.checkpoint",
    "fused-head": "train step with the fused head and loss against dense + cross-entropy",
    "diagnostics": "fit epochs with diagnostics_every = off, 10, 1",
}
# names for several suites at once: the committed result folders that hold them together
SUITE_GROUPS = {"contract": ("remat", "fused-head", "diagnostics")}
