"""The benchmark configs: ReLU MLPs, softmax cross-entropy on integer labels, gd(0.01).

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
           description="conv3×3(32)-relu-maxpool2-conv3×3(64)-relu-maxpool2-dense(128)-dense(10)"),
    Config("transformer", (256, 256), 16, kind="transformer", example=(128, 256),
           description="2 × transformer_block(d=256, 8 heads, causal), seq 128, dense(256) per token"),
    # --quick
    Config("tiny", (64, 32, 32, 10), 32),
    Config("tiny-deep", (64,) + (32,) * 6 + (10,), 16),
]}
DEFAULT_CONFIGS = ("small", "medium", "large", "deep", "cnn", "transformer")
QUICK_CONFIGS = ("tiny", "tiny-deep")
