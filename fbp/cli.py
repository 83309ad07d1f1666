"""The `fbp` command line: `fbp check`, `fbp train`, `fbp explain`, `fbp bench`."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

LOSSES = {"ce": "softmax_cross_entropy", "mse": "mse", "huber": "huber",
          "bce": "binary_cross_entropy"}
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "elu", "softplus", "silu")


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


def mlp(hidden, n_out: int, activation: str = "relu", dropout: float = 0.0):
    """dense(h1) → act → ... → dense(h_k) → act → dense(n_out)."""
    from fbp import layers as L

    blocks = []
    for h in hidden:
        blocks += [L.dense(h), getattr(L, activation)()]
        if dropout:
            blocks.append(L.dropout(dropout))
    return L.serial(*blocks, L.dense(n_out))


def make_optimizer(name: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    import optax

    from fbp.optim import gd

    base = {"gd": lambda: gd(lr), "sgd": lambda: optax.sgd(lr, momentum=momentum or None),
            "adam": lambda: optax.adam(lr)}[name]()
    if weight_decay:
        return optax.chain(optax.add_decayed_weights(weight_decay), base)
    return base


def interleaved_step_times(net, loss, optimizer, x, y, *, repeats: int = 30):
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
    times = {"manual": [], "auto": []}
    for _ in range(repeats):
        for grad in ("manual", "auto"):
            t0 = time.perf_counter()
            states[grad], m = steps[grad](states[grad], x, y)
            jax.block_until_ready(m)
            times[grad].append(time.perf_counter() - t0)
    return {grad: statistics.median(t) for grad, t in times.items()}


def _prepare_data(args, command: str):
    """The data set of `--data`, split (train, validation, test) and cast, and its loss:
    (x_tr, y_tr, val_data, x_te, y_te, loss, n_out)."""
    import numpy as np

    from fbp import data, losses
    from fbp._layer import default_float_dtype

    (x_tr, y_tr), (x_te, y_te) = data.load(args.data, seed=args.seed)
    loss = getattr(losses, LOSSES[args.loss])
    if args.loss == "bce":
        if not np.issubdtype(y_tr.dtype, np.integer) or y_tr.max() > 1:
            raise SystemExit(f"fbp {command}: --loss bce needs 0/1 labels; {args.data} has "
                             f"{int(y_tr.max()) + 1} classes (use --loss ce)")
        y_tr, y_te = y_tr[:, None].astype(np.float32), y_te[:, None].astype(np.float32)
    if np.issubdtype(y_tr.dtype, np.integer):
        if args.loss != "ce":
            raise SystemExit(f"fbp {command}: {args.data} has class labels; use --loss ce (or bce "
                             "for two classes)")
        n_out = data.num_classes(y_tr)
    else:
        if args.loss == "ce":
            raise SystemExit(f"fbp {command}: {args.data} is a regression set; use --loss mse or huber")
        n_out = y_tr.shape[1]
    dtype = default_float_dtype()  # float32, or float64 when x64 is on: the params' dtype
    x_tr, x_te = x_tr.astype(dtype), x_te.astype(dtype)
    if np.issubdtype(y_tr.dtype, np.floating):
        y_tr, y_te = y_tr.astype(dtype), y_te.astype(dtype)
    val_fraction = getattr(args, "val_fraction", 0.0)
    if not 0 <= val_fraction < 1:
        raise SystemExit(f"fbp {command}: --val-fraction must lie in [0, 1), got {val_fraction}")
    if getattr(args, "patience", None) is not None and val_fraction == 0:
        raise SystemExit(f"fbp {command}: --patience stops on the validation loss; it needs "
                         "--val-fraction > 0")
    val_data = None
    if val_fraction > 0:  # carved from the training split: the test split stays unseen
        from sklearn.model_selection import train_test_split

        classes = y_tr if np.issubdtype(y_tr.dtype, np.integer) else None
        x_tr, x_val, y_tr, y_val = train_test_split(
            x_tr, y_tr, test_size=val_fraction, random_state=args.seed, stratify=classes)
        val_data = (x_val, y_val)
    return x_tr, y_tr, val_data, x_te, y_te, loss, n_out


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
            print(f"fbp train: error: {flag}: {e}", file=sys.stderr)
            raise SystemExit(2) from None


def _train(args) -> int:
    import jax

    from fbp.check import check_grads
    from fbp.train import evaluate, fit

    _check_output_paths(args)
    x_tr, y_tr, val_data, x_te, y_te, loss, n_out = _prepare_data(args, "train")
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    net = mlp(hidden, n_out, args.activation, args.dropout)
    optimizer = make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay)
    val = f"{len(val_data[0])} validation / " if val_data is not None else ""
    print(f"fbp train: {args.data} ({len(x_tr)} train / {val}{len(x_te)} test, {x_tr.shape[1]} "
          f"features), net {net.name}, loss {loss.name}, {args.optimizer} lr={args.lr}, "
          f"batch {args.batch_size or 'full'}, grad={args.grad}, on {jax.devices()[0].platform}")

    state, history = fit(net, loss, optimizer, (x_tr, y_tr), epochs=args.epochs,
                         batch_size=args.batch_size, grad=args.grad, seed=args.seed,
                         val_data=val_data, patience=args.patience,
                         checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress,
                         devices=args.devices, precision=args.precision, l2=args.l2,
                         diagnostics_every=args.diagnostics_every if args.diagnostics else None)
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
        batch = min(args.batch_size or len(x_tr), 64)
        report = explain(net, loss, state.params, x_tr[:batch], y_tr[:batch],
                         key=jax.random.key(args.seed))
        paths.append(graph(net, Path(args.diagnostics) / "graph.png", report=report))
        print(f"diagnostics ({len(history['diagnostics']['step'])} records, every "
              f"{args.diagnostics_every} steps) and the net's graph written to "
              f"{args.diagnostics}: {', '.join(p.name for p in paths)}")
    if not args.no_extras:
        batch = args.batch_size or len(x_tr)
        xb, yb = x_tr[:min(batch, 64)], y_tr[:min(batch, 64)]
        # one dropout mask, the same for manual, jax.grad and finite differences
        report = check_grads(net, loss, state.params, xb, yb, key=jax.random.key(args.seed))
        print(f"gradient check on trained params: manual vs jax.grad max rel err "
              f"{report.max_rel_err_autodiff:.1e}, vs finite differences (float64) "
              f"{report.max_rel_err_fd:.1e}: {'OK' if report.ok else 'MISMATCH'}")
        xs, ys = x_tr[:batch], y_tr[:batch]
        t = interleaved_step_times(net, loss, optimizer, xs, ys)
        print(f"train step (batch {batch}, median of 30, interleaved): manual "
              f"{1e3 * t['manual']:.3f} ms, auto {1e3 * t['auto']:.3f} ms, manual/auto "
              f"{t['manual'] / t['auto']:.2f}")
    return 0


def _explain(args) -> int:
    import math

    import jax

    from fbp import explain
    from fbp._layer import init_with_state

    x_tr, y_tr, _, _, _, loss, n_out = _prepare_data(args, "explain")
    hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    net = mlp(hidden, n_out, args.activation)
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
    """The `benchmarks` package (not installed with fbp): from the path, or beside fbp/ in a
    source checkout; None when neither has it."""
    import importlib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if (root / "benchmarks" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module("benchmarks")
    except ModuleNotFoundError:
        return None


def _bench(args) -> int:
    benchmarks = _benchmarks()
    if benchmarks is None:
        raise SystemExit("fbp bench: the benchmarks package is not here; run it from a source "
                         "checkout of fbp (python -m benchmarks)")
    return benchmarks.run_from_args(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fbp", description="Forward and back propagation by hand.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="check every built-in layer's and loss's hand-written "
                                     "gradient against jax.grad and finite differences")
    p.add_argument("--dtype", choices=("float64", "float32", "both"), default="both")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_check)

    from fbp.data import DATASETS

    p = sub.add_parser("train", help="train an MLP on a data set with manual (or auto) gradients",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", choices=sorted(DATASETS), default="digits")
    p.add_argument("--hidden", default="128,64", help="hidden widths, comma-separated")
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
    p.add_argument("--batch-size", type=int, default=32, help="0 for full-batch descent")
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
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-extras", action="store_true",
                   help="skip the gradient check and the manual vs auto step timing")
    p.add_argument("--diagnostics", default=None, metavar="DIR",
                   help="record per-layer diagnostics while training and write their PNGs "
                        "and the net's graph to DIR")
    p.add_argument("--diagnostics-every", type=int, default=10, metavar="K",
                   help="with --diagnostics: record every K steps")
    p.set_defaults(run=_train)

    p = sub.add_parser("explain", help="one batch of backprop through a fresh MLP, layer by "
                                       "layer: statistics and each hand-written gradient "
                                       "against jax.vjp",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", choices=sorted(DATASETS), default="digits")
    p.add_argument("--hidden", default="64,32", help="hidden widths, comma-separated")
    p.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    p.add_argument("--loss", choices=sorted(LOSSES), default="ce")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="also write the pictures (histograms, gradient norms, graph) to DIR")
    p.set_defaults(run=_explain)

    p = sub.add_parser("bench", help="benchmark the train step with manual vs automatic "
                                     "gradients (the `benchmarks` suite of a source checkout)")
    benchmarks = _benchmarks()
    if benchmarks is not None:
        benchmarks.add_arguments(p)
    p.set_defaults(run=_bench)

    args = parser.parse_args(argv)
    if getattr(args, "batch_size", None) == 0:
        args.batch_size = None
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
