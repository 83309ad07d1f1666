"""The benchmark configs: ReLU MLPs, softmax cross-entropy on integer labels, gd(0.01).

No JAX here, so the command line can list them without importing it.
"""

from __future__ import annotations

import dataclasses
from itertools import pairwise


@dataclasses.dataclass(frozen=True)
class Config:
    """An MLP 784 → hidden … → 10 (ReLU) and the batch it is timed on."""

    name: str
    sizes: tuple[int, ...]  # input, hidden..., output
    batch_size: int

    @property
    def hidden(self) -> tuple[int, ...]:
        return self.sizes[1:-1]

    @property
    def params(self) -> int:
        return sum(a * b + b for a, b in pairwise(self.sizes))

    @property
    def layers(self) -> str:
        inner = self.sizes[1:-1]
        if len(inner) > 3 and len(set(inner)) == 1:
            return f"{self.sizes[0]}-{len(inner)}×{inner[0]}-{self.sizes[-1]}"
        return "-".join(map(str, self.sizes))


CONFIGS = {c.name: c for c in [
    Config("small", (784, 256, 256, 10), 128),
    Config("medium", (784, 1024, 1024, 10), 512),
    Config("large", (784, 2048, 2048, 10), 1024),
    Config("deep", (784,) + (512,) * 16 + (10,), 256),
    # --quick
    Config("tiny", (64, 32, 32, 10), 32),
    Config("tiny-deep", (64,) + (32,) * 6 + (10,), 16),
]}
DEFAULT_CONFIGS = ("small", "medium", "large", "deep")
QUICK_CONFIGS = ("tiny", "tiny-deep")
