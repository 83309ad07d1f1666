"""The `fbp` command line."""

from __future__ import annotations

import argparse
import sys


def _check(args) -> int:
    from fbp.check import check_builtins

    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    reports = check_builtins(dtypes=dtypes, seed=args.seed)
    for i, report in enumerate(reports):
        print(report.table(header=i == 0))
    bad = [r.name for r in reports if not r.ok]
    print(f"\n{len(reports) - len(bad)}/{len(reports)} checks agree with jax.grad and finite "
          "differences" + (f"; MISMATCH: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fbp", description="Forward and back propagation by hand.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check every built-in layer's and loss's hand-written "
                                     "gradient against jax.grad and finite differences")
    p.add_argument("--dtype", choices=("float64", "float32", "both"), default="both")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_check)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
