"""`python -m benchmarks` and `fbp bench`: options, then run the suites and write the results.

Light on imports (argparse only) until it runs, so `fbp` can add these options cheaply.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "bfloat16", "float64")
# options that change only the "steps" suite: given without it, they would do nothing
STEPS_OPTIONS = {"config": "--config", "peers": "--peers", "devices": "--devices",
                 "precision": "--precision", "steps_only": "--steps-only"}
ATTENTION_OPTIONS = {"lengths": "--lengths", "chunk": "--chunk", "max_run_gib": "--max-run-gib"}


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


def _lengths(text: str) -> tuple[int, ...]:
    try:
        lengths = tuple(int(t) for t in text.split(","))
    except ValueError:
        lengths = ()
    if not lengths or min(lengths) <= 0:
        raise argparse.ArgumentTypeError(f"expected sequence lengths like 512,1024, got {text!r}")
    return tuple(sorted(set(lengths)))


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def force_host_devices(count: int) -> None:
    """Ask XLA for `count` CPU devices (read when JAX first starts its CPU backend, so this
    must run before anything touches a device)."""
    flag = "--xla_force_host_platform_device_count"
    flags = os.environ.get("XLA_FLAGS", "")
    if flag not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}={count}".strip()


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark options, on `parser` (a fresh one, or fbp's `bench` subparser)."""
    from benchmarks.configs import CONFIGS, DEFAULT_CONFIGS, QUICK_CONFIGS, SUITE_GROUPS, SUITES

    suites = ", ".join(f"{name} ({what})" for name, what in SUITES.items())
    groups = ", ".join(f"{name} = {' + '.join(members)}" for name, members in SUITE_GROUPS.items())
    parser.add_argument("--suite", action="append", choices=[*SUITES, *SUITE_GROUPS],
                        metavar="NAME",
                        help=f"what to run (repeatable; default steps): {suites}; {groups}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repetitions in every suite (steps: configs "
                             f"{', '.join(QUICK_CONFIGS)}): a smoke test; its results go to a "
                             "temporary folder unless --out says otherwise")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for results.json, results.md and results.png (default: "
                             "benchmarks/results/<platform>-<suite>, e.g. cpu-float32, "
                             "cpu-attention, cpu-contract; with --quick, a temporary folder)")
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None,
                        help="run on the first device of this platform (default: JAX's default)")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="timed repetitions per contender in every suite (defaults: steps "
                             "30, attention 7 (3 from T = 8192), remat 20, fused-head 20; "
                             "5 or 3 with --quick); diagnostics times fit's epochs instead")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--keep-host-memory", action="store_true",
                        help="call fbp.keep_host_memory() before JAX starts: glibc keeps freed "
                             "memory, so XLA:CPU's per-call temporaries are not faulted in "
                             "anew on every call (the whole process, peers included)")

    steps = parser.add_argument_group("steps suite")
    steps.add_argument("--config", action="append", choices=sorted(CONFIGS), metavar="NAME",
                       help="run only this config (repeatable); one of "
                            f"{', '.join(CONFIGS)} (default: {', '.join(DEFAULT_CONFIGS)})")
    steps.add_argument("--dtype", choices=DTYPES, default="float32",
                       help="dtype of parameters and inputs (float64 turns on jax x64); the "
                            "other suites run in float32")
    steps.add_argument("--precision", choices=("bf16",), default=None,
                       help="bf16: bfloat16 forward and backward against --dtype master "
                            "parameters, loss and update (fbp's mixed-precision policy)")
    steps.add_argument("--devices", type=_counts, default=None, metavar="N,N,...",
                       help="also sweep data-parallel steps over these device counts, e.g. "
                            "1,2,4 (on CPU, that many host devices are forced: a correctness "
                            "check, not a speed claim)")
    steps.add_argument("--peers", action="store_true",
                       help="also time the same model and SGD step in Flax (linen), Equinox "
                            "(MLPs) and PyTorch (CPU), where they import")
    steps.add_argument("--steps-only", action="store_true",
                       help="time the train-step configs (and --devices) only: no "
                            "scan-vs-steps and no fused cross-entropy runs")

    attention = parser.add_argument_group("attention suite")
    attention.add_argument("--lengths", type=_lengths, default=None, metavar="T,T,...",
                           help="sequence lengths (default 512,1024,...,16384; 128,256 with "
                                "--quick)")
    attention.add_argument("--chunk", type=_positive_int, default=None,
                           help="chunk size of fbp chunked (default 256; 64 with --quick)")
    attention.add_argument("--max-run-gib", type=_positive_float, default=None,
                           help="time only programs whose temporaries fit in this many GiB "
                                "(default 4); the others are compiled for their memory only")
    return parser


def _suites(args) -> tuple[str, ...]:
    from benchmarks.configs import SUITE_GROUPS

    names = []
    for name in args.suite or ["steps"]:
        names += SUITE_GROUPS.get(name, [name])
    return tuple(dict.fromkeys(names))


def _check_options(args, suites) -> None:
    """An option for a suite that is not run would do nothing: refuse it, naming both."""
    for suite, options in (("steps", STEPS_OPTIONS), ("attention", ATTENTION_OPTIONS)):
        if suite in suites:
            continue
        given = [flag for dest, flag in options.items() if getattr(args, dest, None)]
        if suite == "steps" and getattr(args, "dtype", "float32") != "float32":
            given.append("--dtype")
        if given:
            raise SystemExit(f"benchmarks: {', '.join(given)} apply to the {suite} suite, "
                             f"which is not selected (--suite {' --suite '.join(suites)})")


def settings_from_args(args):
    from benchmarks.suite import Settings, quick_settings

    suites = _suites(args)
    _check_options(args, suites)
    options = {"suites": suites, "dtype": args.dtype, "device": args.device,
               "peers": args.peers, "precision": args.precision,
               "progress": not args.no_progress}
    if args.devices:
        options["devices"] = args.devices
    if args.steps_only:
        options.update(epoch_modes=(), fused_ce=None)
    if args.config:
        options["configs"] = tuple(dict.fromkeys(args.config))
    settings = quick_settings(**options) if args.quick else Settings(**options)
    attention = {k: v for k, v in (("lengths", args.lengths), ("chunk", args.chunk),
                                   ("max_run_gib", args.max_run_gib)) if v is not None}
    if attention:
        settings = dataclasses.replace(
            settings, attention=dataclasses.replace(settings.attention, **attention))
    if args.repeats is not None:
        settings = settings.with_repeats(args.repeats)
    return settings


def default_out(settings, platform: str, quick: bool) -> Path:
    """benchmarks/results/<platform>-<name>: the dtype (or bf16, or devices) for the steps
    suite alone, "contract" for remat + fused-head + diagnostics, else the suites joined by
    "+". A --quick run goes to a temporary folder, never over committed results."""
    from benchmarks.configs import SUITE_GROUPS

    suites = settings.suites
    if suites == ("steps",):
        name = ("devices" if settings.devices else "bf16" if settings.precision == "bf16"
                else settings.dtype)
    else:
        name = next((group for group, members in SUITE_GROUPS.items()
                     if tuple(members) == suites), "+".join(suites))
    folder = f"{platform}-{name}"
    if quick:
        return Path(tempfile.gettempdir()) / "fbp-benchmarks-quick" / folder
    return RESULTS / folder


def run_from_args(args) -> int:
    """Run the suites as `args` say; print the report and where the files went."""
    settings = settings_from_args(args)  # bad combinations fail before JAX starts
    if args.devices and args.device != "gpu":
        force_host_devices(max(args.devices))
    if args.keep_host_memory:
        import fbp

        if not fbp.keep_host_memory():
            print("benchmarks: --keep-host-memory: not applied (not Linux with glibc, or JAX "
                  "has already run a computation in this process)",
                  file=sys.stderr)
            return 2
        os.environ["FBP_KEEP_HOST_MEMORY"] = "1"  # for measure.environment's records
    from benchmarks import measure, report, suite

    try:
        device = measure.pick_device(settings.device)
    except measure.NoDevice as e:  # --device gpu without a GPU
        print(f"benchmarks: {e}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else default_out(settings, device.platform,
                                                              args.quick)
    records, notes = suite.run(settings)
    paths = report.write_all(records, notes, out)
    print(report.markdown(records, notes))
    print("written: " + ", ".join(str(p) for p in paths))
    return 0


def main(argv=None, prog: str = "python -m benchmarks") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="fbp's benchmarks: the train step with manual (hand-written) vs automatic "
                    "(jax.grad) gradients on MLP, CNN and transformer configs, against Flax, "
                    "Equinox and PyTorch peers (steps); attention memory and time against T "
                    "(attention); remat, the fused head and diagnostics (remat, fused-head, "
                    "diagnostics). Writes results.json, results.md and results.png. See "
                    "benchmarks/README.md.")
    return run_from_args(add_arguments(parser).parse_args(argv))
