"""fbp's benchmark suite: the train step with manual vs automatic gradients.

    python -m benchmarks [--quick]      # or: fbp bench [--quick]

Modules: `suite` (configs and what is run), `measure` (how it is timed), `peers`
(Flax / Equinox / PyTorch versions of the same step), `report` (json, md, png),
`cli` (the options). See benchmarks/README.md.
"""

from benchmarks.cli import add_arguments, main, run_from_args

__all__ = ["add_arguments", "main", "run_from_args"]
