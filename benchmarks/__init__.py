"""fbp's benchmarks: the train step with manual vs automatic gradients, against peers;
attention, remat, the fused head and diagnostics.

    python -m benchmarks [--suite NAME ...] [--quick]      # or: fbp bench ...

Modules: `configs` (the suites and train-step configs), `suite` (settings and the steps
suite), `attention` and `contract` (the other suites), `measure` (how everything is timed
and its memory read), `peers` (Flax / Equinox / PyTorch versions of the same step),
`report` (json, md, png, written atomically), `cli` (the options). See
benchmarks/README.md.
"""

from benchmarks.cli import add_arguments, main, run_from_args

__all__ = ["add_arguments", "main", "run_from_args"]
