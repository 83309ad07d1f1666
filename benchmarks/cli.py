"""`python -m benchmarks` and `fbp bench`: options, then run the suite and write the results.

Light on imports (argparse only) until it runs, so `fbp` can add these options cheaply.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "bfloat16", "float64")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(t) for t in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) <= 0:
        raise argparse.ArgumentTypeError(f"expected device counts like 1,2,4, got {text!r}")
    return tuple(sorted(set(counts)))


def force_host_devices(count: int) -> None:
    """Ask XLA for `count` CPU devices (read when JAX first starts its CPU backend, so this
    must run before anything touches a device)."""
    flag = "--xla_force_host_platform_device_count"
    flags = os.environ.get("XLA_FLAGS", "")
    if flag not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}={count}".strip()


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark options, on `parser` (a fresh one, or fbp's `bench` subparser)."""
    from benchmarks.configs import CONFIGS, DEFAULT_CONFIGS, QUICK_CONFIGS

    parser.add_argument("--quick", action="store_true",
                        help=f"tiny configs ({', '.join(QUICK_CONFIGS)}) and few repetitions: "
                             "a smoke test in well under a minute on two CPU cores")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), metavar="NAME",
                        help="run only this config (repeatable); one of "
                             f"{', '.join(CONFIGS)} (default: {', '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of parameters and inputs (float64 turns on jax x64)")
    parser.add_argument("--precision", choices=("bf16",), default=None,
                        help="bf16: bfloat16 forward and backward against --dtype master "
                             "parameters, loss and update (fbp's mixed-precision policy)")
    parser.add_argument("--devices", type=_counts, default=None, metavar="N,N,...",
                        help="also sweep data-parallel steps over these device counts, e.g. "
                             "1,2,4 (on CPU, that many host devices are forced: a correctness "
                             "check, not a speed claim)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None,
                        help="run on the first device of this platform (default: JAX's default)")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="timed steps per contender (default 30, 5 with --quick)")
    parser.add_argument("--peers", action="store_true",
                        help="also time the same MLP in Flax (linen), Equinox and PyTorch (CPU), "
                             "where they import")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for results.json, results.md and results.png "
                             "(default: benchmarks/results)")
    parser.add_argument("--steps-only", action="store_true",
                        help="time the train-step configs (and --devices) only: no scan-vs-steps "
                             "and no fused cross-entropy runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def settings_from_args(args):
    from benchmarks.suite import Settings, quick_settings

    options = {"dtype": args.dtype, "device": args.device, "peers": args.peers,
               "precision": args.precision, "progress": not args.no_progress}
    if args.devices:
        options["devices"] = args.devices
    if args.steps_only:
        options.update(epoch_modes=(), fused_ce=None)
    if args.config:
        options["configs"] = tuple(dict.fromkeys(args.config))
    if args.repeats is not None:
        options["repeats"] = args.repeats
    return quick_settings(**options) if args.quick else Settings(**options)


def run_from_args(args) -> int:
    """Run the suite as `args` say; print the table and where the files went."""
    if args.devices and args.device != "gpu":
        force_host_devices(max(args.devices))
    from benchmarks import measure, report, suite

    try:
        records, notes = suite.run(settings_from_args(args))
    except measure.NoDevice as e:  # --device gpu without a GPU
        print(f"benchmarks: {e}", file=sys.stderr)
        return 2
    paths = report.write_all(records, notes, args.out)
    print(report.markdown(records, notes))
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time fbp's train step with manual (hand-written) vs automatic (jax.grad) "
                    "gradients on MLPs; write results.json, results.md and results.png.")
    return run_from_args(add_arguments(parser).parse_args(argv))
