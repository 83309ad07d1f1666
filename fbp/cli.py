"""The `fbp` command line: `fbp check`, `fbp train`, `fbp explain`, `fbp bench`.

A bad option value gets one line on stderr, the way argparse says it
(`fbp train: error: --lr: must be a positive number, got -1.0`), and exit status 2: before
anything is loaded or trained where it can be told from the options alone, and otherwise
as soon as the data shows it (a batch larger than the training set). `fbp bench` runs the
`benchmarks` suite of a source checkout; no other command imports it.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fbp.models import ACTIVATIONS, mlp  # mlp: also importable from here, as it was

if TYPE_CHECKING:  # for annotations only: the commands import jax and optax when they run
    import jax
    import numpy as np
    import optax

    from fbp._layer import Layer
    from fbp.losses import Loss

LOSSES = {"ce": "softmax_cross_entropy", "mse": "mse", "huber": "huber",
          "bce": "binary_cross_entropy"}
MAX_SEED = 2**32  # scikit-learn's random_state (the splits) takes seeds below this
DEFAULT_BATCH = 32
BENCH_ELSEWHERE = ("the benchmark suite is not installed with fbp: it lives in fbp's source "
                   "repository; clone it and run `python -m benchmarks` (or `fbp bench`) there")


class UsageError(SystemExit):
    """Exit status 2 after a one-line `prog: error: ...` on stderr; str() is that line."""

    def __init__(self, line: str):
        super().__init__(2)
        self.line = line

    def __str__(self) -> str:
        return self.line


class _Parser(argparse.ArgumentParser):
    """argparse, with every error one line on stderr (no usage block above it): argparse's
    own (`argument --lr: invalid float value`, said as `--lr: ...`) and fbp's."""

    def error(self, message: str):
        message = re.sub(r"^argument (?:\S+/)?(-\S+): ", r"\1: ", " ".join(message.split()))
        line = f"{self.prog}: error: {message}"
        print(line, file=sys.stderr)
        raise UsageError(line)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where there is none to show (None, a switch's False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _fail(args, flag: str, message: str):
    args.parser.error(f"{flag}: {message}")


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _require(args, ok: bool, flag: str, what: str, value) -> None:
    """Unless `ok`: `fbp CMD: error: FLAG: must be WHAT, got VALUE` and exit status 2."""
    if not ok:
        _fail(args, flag, f"must be {what}, got {_number(value)}")


def _widths(args) -> list[int]:
    """`--hidden 128,64` -> [128, 64] (an empty string: no hidden layer, a linear model)."""
    parts = [part.strip() for part in args.hidden.split(",") if part.strip()]
    widths = []
    for part in parts:
        try:
            width = int(part)
        except ValueError:
            width = 0
        if width <= 0:
            _fail(args, "--hidden", "must be positive integer widths separated by commas, such "
                                    f"as 128,64; got {args.hidden!r}")
        widths.append(width)
    return widths


def _check_seed(args) -> None:
    _require(args, 0 <= args.seed < MAX_SEED, "--seed", "an integer in [0, 2**32)", args.seed)


def _check_data_options(args) -> None:
    """--data names a bundled set or a .npz/.csv file; --target goes with a CSV file."""
    from pathlib import Path

    from fbp.data import DATASETS, FILE_SUFFIXES

    if args.data in DATASETS:
        if args.target is not None:
            _fail(args, "--target", f"names the column to predict in a CSV file; --data "
                                    f"{args.data} is a bundled data set")
        return
    path = Path(args.data)
    if path.suffix.lower() not in FILE_SUFFIXES:
        if path.exists():
            _fail(args, "--data", f"{args.data}: expected a .npz or .csv file")
        _fail(args, "--data", f"expected a bundled data set ({', '.join(sorted(DATASETS))}) or a "
                              f".npz or .csv file, got {args.data!r}")
    if not path.is_file():
        _fail(args, "--data", f"no such file: {args.data}" if not path.exists() else
              f"{args.data} is a directory, not a {path.suffix} file")


def _check(args) -> int:
    from fbp.check import check_builtins

    _check_seed(args)
    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    reports = check_builtins(dtypes=dtypes, seed=args.seed)
    for i, report in enumerate(reports):
        print(report.table(header=i == 0))
    bad = [r.name for r in reports if not r.ok]
    print(f"\n{len(reports) - len(bad)}/{len(reports)} checks agree with jax.grad and finite "
          "differences" + (f"; MISMATCH: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def make_optimizer(name: str, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
    import optax

    from fbp.optim import gd

    base = {"gd": lambda: gd(lr), "sgd": lambda: optax.sgd(lr, momentum=momentum or None),
            "adam": lambda: optax.adam(lr)}[name]()
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), base)
    return base


def interleaved_step_times(net: Layer, loss: Loss, optimizer: optax.GradientTransformation,
                           x: jax.Array | np.ndarray, y: jax.Array | np.ndarray, *,
                           repeats: int = 30) -> dict[str, float]:
    """Median seconds per jitted train step, manual and auto timed A B A B ... in one process."""
    import jax

    from fbp.train import init_state, make_step

    steps, states = {}, {}
    for grad in ("manual", "auto"):
        steps[grad] = make_step(net, loss, optimizer, grad=grad)
        states[grad] = init_state(net, optimizer, jax.random.key(0), x.shape)
        for _ in range(3):  # compile and warm up
            states[grad], m = steps[grad](states[grad], x, y)
        jax.block_until_ready(m)
    times: dict[str, list[float]] = {"manual": [], "auto": []}
    for _ in range(repeats):
        for grad in ("manual", "auto"):
            t0 = time.perf_counter()
            states[grad], m = steps[grad](states[grad], x, y)
            jax.block_until_ready(m)
            times[grad].append(time.perf_counter() - t0)
    return {grad: statistics.median(t) for grad, t in times.items()}


def _check_train_options(args) -> None:
    """Every `fbp train` option that can be judged before the data is loaded."""
    import jax

    _check_seed(args)
    _check_data_options(args)
    args.widths = _widths(args)
    _require(args, 0 <= args.dropout < 1, "--dropout", "a probability in [0, 1)", args.dropout)
    _require(args, math.isfinite(args.lr) and args.lr > 0, "--lr", "a positive number", args.lr)
    _require(args, 0 <= args.momentum < 1, "--momentum", "in [0, 1)", args.momentum)
    if args.momentum and args.optimizer != "sgd":
        _fail(args, "--momentum", f"only --optimizer sgd uses it, got --optimizer {args.optimizer}")
    for flag, value in (("--weight-decay", args.weight_decay), ("--l2", args.l2)):
        _require(args, math.isfinite(value) and value >= 0, flag, "a number >= 0", value)
    _require(args, args.batch_size is None or args.batch_size >= 0, "--batch-size",
             "a positive integer, or 0 for full-batch descent", args.batch_size)
    _require(args, args.epochs >= 1, "--epochs", "a positive integer", args.epochs)
    if not 0 <= args.val_fraction < 1:
        _fail(args, "--val-fraction", f"must lie in [0, 1), got {_number(args.val_fraction)}")
    if args.patience is not None:
        _require(args, args.patience >= 1, "--patience", "a positive integer (epochs)",
                 args.patience)
        if args.val_fraction == 0:
            _fail(args, "--patience", "stops on the validation loss; it needs --val-fraction > 0")
    if args.devices is not None:
        count = jax.device_count()
        if not 0 < args.devices <= count:
            _fail(args, "--devices", f"must be between 1 and the {count} device(s) this process "
                                     f"sees ({jax.devices()[0].platform}), got {args.devices}")
    _require(args, args.diagnostics_every >= 1, "--diagnostics-every",
             "a positive integer (steps)", args.diagnostics_every)
    _check_output_paths(args)


def _check_explain_options(args) -> None:
    _check_seed(args)
    _check_data_options(args)
    args.widths = _widths(args)
    _require(args, args.batch_size >= 1, "--batch-size", "a positive integer", args.batch_size)


def _load(args):
    """((x_tr, y_tr), (x_te, y_te)) of `--data`: a bundled set, or a user's file (read as a
    classification for --loss ce/bce, a regression for mse/huber)."""
    from fbp import data

    if args.data in data.DATASETS:
        return data.load(args.data, seed=args.seed)
    task = "classification" if args.loss in ("ce", "bce") else "regression"
    try:
        return data.load_file(args.data, target=args.target, task=task, seed=args.seed)
    except data.DataFileError as e:
        _fail(args, f"--{e.argument.replace('path', 'data')}", str(e))
    except OSError as e:
        _fail(args, "--data", f"cannot read {args.data}: {e.strerror or e}")


def _prepare_data(args):
    """The data set of `--data`, split (train, validation, test) and cast, and its loss:
    (x_tr, y_tr, val_data, x_te, y_te, loss, n_out)."""
    import numpy as np

    from fbp import data, losses
    from fbp._layer import default_float_dtype

    (x_tr, y_tr), (x_te, y_te) = _load(args)
    loss = getattr(losses, LOSSES[args.loss])
    if args.loss == "bce":
        if not np.issubdtype(y_tr.dtype, np.integer) or y_tr.max() > 1:
            what = (f"{int(y_tr.max()) + 1} classes (use --loss ce)"
                    if np.issubdtype(y_tr.dtype, np.integer) else "a regression target")
            _fail(args, "--loss", f"bce needs 0/1 labels; {args.data} has {what}")
        y_tr, y_te = y_tr[:, None].astype(np.float32), y_te[:, None].astype(np.float32)
    if np.issubdtype(y_tr.dtype, np.integer):
        if args.loss != "ce":
            _fail(args, "--loss", f"{args.data} has class labels; use --loss ce (or bce for two "
                                  "classes)")
        n_out = data.num_classes(y_tr)
    else:
        if args.loss == "ce":
            _fail(args, "--loss", f"{args.data} is a regression set; use --loss mse or huber")
        n_out = y_tr.shape[1]
    dtype = default_float_dtype()  # float32, or float64 when x64 is on: the params' dtype
    x_tr, x_te = x_tr.astype(dtype), x_te.astype(dtype)
    if np.issubdtype(y_tr.dtype, np.floating):
        y_tr, y_te = y_tr.astype(dtype), y_te.astype(dtype)
    val_fraction = getattr(args, "val_fraction", 0.0)
    val_data = None
    if val_fraction > 0:  # carved from the training split: the test split stays unseen
        from sklearn.model_selection import train_test_split

        classes = y_tr if np.issubdtype(y_tr.dtype, np.integer) else None
        try:
            x_tr, x_val, y_tr, y_val = train_test_split(
                x_tr, y_tr, test_size=val_fraction, random_state=args.seed, stratify=classes)
        except ValueError as e:
            _fail(args, "--val-fraction", f"cannot hold out {_number(val_fraction)} of the "
                                          f"{len(x_tr)} training examples: {e}")
        val_data = (x_val, y_val)
    return x_tr, y_tr, val_data, x_te, y_te, loss, n_out


def _batch_size(args, n: int) -> int | None:
    """The training batch: --batch-size (0: None, the full batch), or by default 32, or all
    `n` training examples when there are fewer."""
    if args.batch_size is None:
        batch = min(DEFAULT_BATCH, n)
    elif args.batch_size == 0:
        batch = None
    else:
        batch = args.batch_size
        if batch > n:
            held = (f" (after --val-fraction {_number(args.val_fraction)} held some out)"
                    if args.val_fraction else "")
            _fail(args, "--batch-size", f"{batch} is larger than the {n} training examples"
                                        f"{held}; use at most {n}, or 0 for full-batch descent")
    if args.devices is not None and (batch or n) % args.devices:
        _fail(args, "--batch-size", f"{batch or n}{' (the full batch)' if batch is None else ''} "
                                    f"does not divide by --devices {args.devices}")
    return batch


def _check_output_paths(args) -> None:
    """Before loading or training anything: every path `fbp train` will write to can be
    written; if not, one argparse-style line and exit status 2."""
    from fbp.checkpoint import check_output_dir, check_output_file

    for flag, value, check in (("--checkpoint-dir", args.checkpoint_dir, check_output_dir),
                               ("--diagnostics", args.diagnostics, check_output_dir),
                               ("--plot", args.plot, check_output_file)):
        if value is None:
            continue
        try:
            check(value)
        except (ValueError, PermissionError) as e:
            _fail(args, flag, str(e))


def _train(args) -> int:
    import jax

    from fbp.check import check_grads
    from fbp.train import NonFiniteError, evaluate, fit

    _check_train_options(args)
    x_tr, y_tr, val_data, x_te, y_te, loss, n_out = _prepare_data(args)
    batch_size = _batch_size(args, len(x_tr))
    net = mlp(args.widths, n_out, args.activation, args.dropout)
    optimizer = make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay)
    val = f"{len(val_data[0])} validation / " if val_data is not None else ""
    print(f"fbp train: {args.data} ({len(x_tr)} train / {val}{len(x_te)} test, {x_tr.shape[1]} "
          f"features), net {net.name}, loss {loss.name}, {args.optimizer} lr={args.lr}, "
          f"batch {batch_size or 'full'}, grad={args.grad}, on {jax.devices()[0].platform}")

    try:
        state, history = fit(net, loss, optimizer, (x_tr, y_tr), epochs=args.epochs,
                             batch_size=batch_size, grad=args.grad, seed=args.seed,
                             val_data=val_data, patience=args.patience,
                             checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress,
                             devices=args.devices, precision=args.precision, l2=args.l2,
                             diagnostics_every=args.diagnostics_every if args.diagnostics else None)
    except NonFiniteError as e:  # diverged: a result, not a usage error
        print(f"fbp train: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # what fit refuses (a checkpoint from another run, ...)
        args.parser.error(str(e))
    test = evaluate(net, loss, state, x_te, y_te)
    acc = f", test accuracy {100 * test['accuracy']:.2f}%" if "accuracy" in test else ""
    print(f"after {len(history['epoch'])} epochs ({history['stopped']}): train loss "
          f"{history['train_loss'][-1]:.4g}, test loss {test['loss']:.4g}{acc}")
    if args.plot:
        from fbp.plot import loss_curves

        loss_curves(history, args.plot, title=f"{args.data}: {net.name}")
        print(f"loss curves written to {args.plot}")
    if args.diagnostics:
        from pathlib import Path

        from fbp import explain
        from fbp.plot import diagnostics, graph

        paths = diagnostics(history, args.diagnostics)
        batch = min(batch_size or len(x_tr), 64)
        report = explain(net, loss, state.params, x_tr[:batch], y_tr[:batch],
                         key=jax.random.key(args.seed))
        paths.append(graph(net, Path(args.diagnostics) / "graph.png", report=report))
        print(f"diagnostics ({len(history['diagnostics']['step'])} records, every "
              f"{args.diagnostics_every} steps) and the net's graph written to "
              f"{args.diagnostics}: {', '.join(p.name for p in paths)}")
    if not args.no_extras:
        batch = batch_size or len(x_tr)
        xb, yb = x_tr[:min(batch, 64)], y_tr[:min(batch, 64)]
        # one dropout mask, the same for manual, jax.grad and finite differences
        grad_report = check_grads(net, loss, state.params, xb, yb, key=jax.random.key(args.seed))
        print(f"gradient check on trained params: manual vs jax.grad max rel err "
              f"{grad_report.max_rel_err_autodiff:.1e}, vs finite differences (float64) "
              f"{grad_report.max_rel_err_fd:.1e}: {'OK' if grad_report.ok else 'MISMATCH'}")
        xs, ys = x_tr[:batch], y_tr[:batch]
        t = interleaved_step_times(net, loss, optimizer, xs, ys)
        print(f"train step (batch {batch}, median of 30, interleaved): manual "
              f"{1e3 * t['manual']:.3f} ms, auto {1e3 * t['auto']:.3f} ms, manual/auto "
              f"{t['manual'] / t['auto']:.2f}")
    return 0


def _explain(args) -> int:
    import jax

    from fbp import explain
    from fbp._layer import init_with_state

    _check_explain_options(args)
    x_tr, y_tr, _, _, _, loss, n_out = _prepare_data(args)
    net = mlp(args.widths, n_out, args.activation)
    batch = min(args.batch_size, len(x_tr))
    _, params, state = init_with_state(net, jax.random.key(args.seed), (batch,) + x_tr.shape[1:])
    report = explain(net, loss, params, x_tr[:batch], y_tr[:batch], key=jax.random.key(args.seed),
                     state=state if net.stateful else None)
    print(f"fbp explain: one batch of {batch} from {args.data} through a fresh net "
          f"(seed {args.seed})\n{report}")
    if loss.name == "softmax_cross_entropy":
        expected = math.log(n_out)
        near = abs(report.loss - expected) <= 0.25 * expected
        print(f"initial loss {report.loss:.4f} against ln C = ln {n_out} = {expected:.4f} "
              f"(a fresh net should spread its probability evenly over the classes; within 25%): "
              + ("near, as it should be" if near else
                 "FAR: the last layer's initial weights are too large or biased; scale them "
                 "down before training"))
    if args.out:
        from pathlib import Path

        from fbp.plot import diagnostics, graph

        paths = diagnostics(report, args.out) + [graph(net, Path(args.out) / "graph.png",
                                                       report=report)]
        print(f"pictures written to {args.out}: {', '.join(p.name for p in paths)}")
    return 0 if not report.disagreeing else 1


def _benchmarks():
    """The `benchmarks` package of a source checkout (beside fbp/, under a pyproject.toml),
    imported by its path; None where fbp is installed from a wheel, which holds fbp only."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    init = root / "benchmarks" / "__init__.py"
    if not (init.is_file() and (root / "pyproject.toml").is_file()):
        return None
    loaded = sys.modules.get("benchmarks")
    if loaded is not None:  # imported already: ours, or another package of that name
        where = getattr(loaded, "__file__", None)
        return loaded if where and Path(where).resolve() == init else None
    spec = importlib.util.spec_from_file_location("benchmarks", init,
                                                  submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["benchmarks"]
        raise
    return module


def _bench(args) -> int:
    return _benchmarks().run_from_args(args)


def _command(argv) -> str | None:
    """The subcommand `argv` names: its first word that is not an option (`fbp` itself
    takes only -h)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(prog="fbp", description="Forward and back propagation by hand.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check every built-in layer's and loss's hand-written "
                                     "gradient against jax.grad and finite differences",
                       formatter_class=_Formatter)
    p.add_argument("--dtype", choices=("float64", "float32", "both"), default="both")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_check, parser=p)

    from fbp.data import DATASETS

    data_help = (f"a bundled data set ({', '.join(sorted(DATASETS))}), or a file of your own: "
                 ".npz with arrays x (examples, features) and y, or .csv with a header row and "
                 "--target; split 80/20 into train and test like the bundled sets")
    target_help = ("with a .csv --data: the column to predict (class labels for --loss ce/bce, "
                   "numbers for mse/huber); every other column is a numeric feature")
    p = sub.add_parser("train", help="train an MLP on a data set with manual (or auto) gradients",
                       formatter_class=_Formatter)
    p.add_argument("--data", default="digits", metavar="NAME|FILE", help=data_help)
    p.add_argument("--target", default=None, metavar="COLUMN", help=target_help)
    p.add_argument("--hidden", default="128,64",
                   help="hidden widths, comma-separated ('' for none: a linear model)")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout rate after each hidden layer")
    p.add_argument("--loss", choices=sorted(LOSSES), default="ce")
    p.add_argument("--optimizer", choices=("gd", "sgd", "adam"), default="gd")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.0, help="for --optimizer sgd")
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="decoupled weight decay in the optimizer (optax.add_decayed_weights)")
    p.add_argument("--l2", type=float, default=0.0,
                   help="L2 penalty λ/2·Σ‖W‖² on weight matrices, in the loss and its gradient")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"examples per step (default: {DEFAULT_BATCH}, or the whole training "
                        "split when it is smaller); 0 for full-batch descent")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training split held out for validation (the progress "
                        "bar's val loss, --patience); 0 for none. The test split is only "
                        "used at the end")
    p.add_argument("--patience", type=int, default=None,
                   help="stop when the validation loss has not improved for this many epochs "
                        "(and keep the best parameters)")
    p.add_argument("--grad", choices=("manual", "auto"), default="manual")
    p.add_argument("--precision", choices=("float32", "bf16"), default=None,
                   help="bf16: bfloat16 forward/backward, float32 master weights and loss")
    p.add_argument("--devices", type=int, default=None,
                   help="data-parallel over the first N devices (batch must divide by N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument("--plot", default=None, help="write loss curves to this PNG")
    p.add_argument("--keep-host-memory", action="store_true",
                   help="keep freed host memory in the process (fbp.keep_host_memory): "
                        "steps with large temporaries run faster, compiling is slower")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-extras", action="store_true",
                   help="skip the gradient check and the manual vs auto step timing")
    p.add_argument("--diagnostics", default=None, metavar="DIR",
                   help="record per-layer diagnostics while training and write their PNGs "
                        "and the net's graph to DIR")
    p.add_argument("--diagnostics-every", type=int, default=10, metavar="K",
                   help="with --diagnostics: record every K steps")
    p.set_defaults(run=_train, parser=p)

    p = sub.add_parser("explain", help="one batch of backprop through a fresh MLP, layer by "
                                       "layer: statistics and each hand-written gradient "
                                       "against jax.vjp",
                       formatter_class=_Formatter)
    p.add_argument("--data", default="digits", metavar="NAME|FILE", help=data_help)
    p.add_argument("--target", default=None, metavar="COLUMN", help=target_help)
    p.add_argument("--hidden", default="64,32",
                   help="hidden widths, comma-separated ('' for none: a linear model)")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    p.add_argument("--loss", choices=sorted(LOSSES), default="ce")
    p.add_argument("--batch-size", type=int, default=32,
                   help="examples in the batch (at most the training split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write the pictures (histograms, gradient norms, graph) to DIR")
    p.set_defaults(run=_explain, parser=p)

    p = sub.add_parser("bench", help="benchmark the train step with manual vs automatic "
                                     "gradients (the `benchmarks` suite of a source checkout)")
    p.set_defaults(run=_bench, parser=p)
    if _command(argv) == "bench":  # the suite is imported for `fbp bench` only
        benchmarks = _benchmarks()
        if benchmarks is None:
            p.error(BENCH_ELSEWHERE)
        benchmarks.add_arguments(p)

    if not argv:  # `fbp` alone: what it can do, as `fbp --help` says it
        parser.print_help()
        return 0
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand's parser: `fbp train: error: ...`
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.run(args)


def entry() -> int:
    """The `fbp` command: `main` in a process of its own. `fbp train --keep-host-memory`
    calls `fbp.keep_host_memory` here, before JAX starts, as it must be (`fbp bench
    --keep-host-memory` does so in the benchmarks' own start)."""
    argv = sys.argv[1:]
    if _command(argv) == "train" and "--keep-host-memory" in argv:
        from fbp.host import keep_host_memory

        keep_host_memory()
    return main(argv)


__all__ = ["main", "entry", "UsageError", "LOSSES", "make_optimizer", "interleaved_step_times"]

if __name__ == "__main__":
    sys.exit(entry())
