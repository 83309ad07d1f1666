"""The command line: a bad option is one argparse-style line on stderr and exit status 2,
before anything is trained; `--data FILE` trains on a .npz or .csv of one's own.

Everything runs `fbp.cli.main` in-process; where a test gets as far as training, `fit` and
`evaluate` are replaced by stand-ins that keep what they were given (the real ones run in
test_train.py and in test_packaging.py's installed-wheel test)."""

import sys

import numpy as np
import pytest

import fbp.cli
import fbp.train
from fbp import data
from fbp.cli import main

QUICK = ["--no-progress", "--no-extras", "--epochs", "1"]


def one_error_line(capsys, argv) -> str:
    """Run `fbp argv`, which must fail as a usage error; its one stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing loaded, trained or printed before the error
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(exit_info.value) == lines[0]  # the exception says it too
    return lines[0]


@pytest.mark.parametrize(("argv", "start", "says"), [
    (["--hidden", "0"], "--hidden: ", "positive integer widths"),
    (["--hidden", "a,b"], "--hidden: ", "got 'a,b'"),
    (["--hidden", "64,-1"], "--hidden: ", "got '64,-1'"),
    (["--lr", "-1"], "--lr: ", "must be a positive number, got -1"),
    (["--lr", "nan"], "--lr: ", "got nan"),
    (["--lr", "fast"], "--lr: ", "invalid float value: 'fast'"),  # argparse's own, one line too
    (["--epochs", "0"], "--epochs: ", "must be a positive integer, got 0"),
    (["--epochs", "2.5"], "--epochs: ", "invalid int value: '2.5'"),
    (["--dropout", "1"], "--dropout: ", "in [0, 1), got 1"),
    (["--dropout", "-0.5"], "--dropout: ", "got -0.5"),
    (["--batch-size", "-2"], "--batch-size: ", "got -2"),
    (["--momentum", "0.9"], "--momentum: ", "only --optimizer sgd uses it"),
    (["--optimizer", "sgd", "--momentum", "1"], "--momentum: ", "in [0, 1), got 1"),
    (["--weight-decay", "-1"], "--weight-decay: ", ">= 0, got -1"),
    (["--l2", "inf"], "--l2: ", "got inf"),
    (["--val-fraction", "1.5"], "--val-fraction: ", "must lie in [0, 1), got 1.5"),
    (["--val-fraction", "0", "--patience", "2"], "--patience: ", "needs --val-fraction > 0"),
    (["--patience", "0"], "--patience: ", "got 0"),
    (["--devices", "0"], "--devices: ", "got 0"),
    (["--diagnostics-every", "0"], "--diagnostics-every: ", "got 0"),
    (["--seed", "-1"], "--seed: ", "got -1"),
    (["--activation", "swish"], "--activation: ", "invalid choice: 'swish'"),
    (["--data", "mnist"], "--data: ", "a bundled data set (breast_cancer, diabetes, digits"),
    (["--data", "digits", "--target", "label"], "--target: ", "a bundled data set"),
    (["--bogus"], "", "unrecognized arguments: --bogus"),
])
def test_bad_train_option_is_one_line(capsys, argv, start, says):
    line = one_error_line(capsys, ["train", *QUICK, *argv])
    assert line.startswith(f"fbp train: error: {start}")
    assert says in line


@pytest.mark.parametrize(("argv", "start", "says"), [
    (["--batch-size", "99999"], "--batch-size: ",
     "99999 is larger than the 108 training examples"),  # iris: 120 train, 12 held out
    (["--loss", "mse"], "--loss: ", "iris has class labels; use --loss ce"),
    (["--loss", "bce"], "--loss: ", "bce needs 0/1 labels; iris has 3 classes"),
    (["--val-fraction", "0.01"], "--val-fraction: ", "the number of classes = 3"),
])
def test_bad_option_seen_in_the_data_is_one_line(capsys, argv, start, says):
    line = one_error_line(capsys, ["train", "--data", "iris", *QUICK, *argv])
    assert line.startswith(f"fbp train: error: {start}") and says in line


@pytest.mark.parametrize(("argv", "line"), [
    (["explain", "--hidden", "8,x"], "fbp explain: error: --hidden: "),
    (["explain", "--batch-size", "0"], "fbp explain: error: --batch-size: "),
    (["explain", "--data", "diabetes"], "fbp explain: error: --loss: diabetes is a regression"),
    (["check", "--seed", "-3"], "fbp check: error: --seed: "),
    (["check", "--dtype", "float16"], "fbp check: error: --dtype: invalid choice"),
    (["tran"], "fbp: error: argument command: invalid choice: 'tran'"),
    (["--bogus"], "fbp: error: the following arguments are required: command"),  # fbp alone: the help
])
def test_bad_option_of_the_other_commands_is_one_line(capsys, argv, line):
    assert one_error_line(capsys, argv).startswith(line)


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 3))
    np.savez(tmp_path / "good.npz", x=x, y=np.arange(30) % 2)
    np.savez(tmp_path / "no_y.npz", x=x, target=np.zeros(30))
    np.savez(tmp_path / "short_y.npz", x=x, y=np.zeros(29, np.int64))
    np.savez(tmp_path / "objects.npz", x=np.array([[1, "a"]] * 30, dtype=object), y=np.zeros(30))
    np.savez(tmp_path / "fractions.npz", x=x, y=np.linspace(0, 1, 30))
    header = ["a", "b", "kind"]
    write_csv(tmp_path / "good.csv", header, [(i, i % 3, "ab"[i % 2]) for i in range(30)])
    write_csv(tmp_path / "numbers.csv", ["a", "b", "price"],
              [(i, i % 3, 2.5 * i + 1) for i in range(30)])
    write_csv(tmp_path / "words.csv", header, [(1, 2, "a"), (3, "red", "b")])
    write_csv(tmp_path / "gap.csv", header, [(1, 2, "a"), (3, "", "b")])
    write_csv(tmp_path / "ragged.csv", header, [(1, 2, "a"), (3, 4)])
    (tmp_path / "notes.txt").write_text("x")
    return tmp_path


@pytest.mark.parametrize(("name", "extra", "start", "says"), [
    ("missing.csv", ["--target", "kind"], "--data: ", "no such file: "),
    ("notes.txt", [], "--data: ", "expected a .npz or .csv file"),
    ("good.csv", [], "--target: ", "name the column to predict (target); its columns: a, b, kind"),
    ("good.csv", ["--target", "label"], "--target: ", "no column 'label'; its columns: a, b, kind"),
    ("good.npz", ["--target", "y"], "--target: ", "good.npz is a .npz file"),
    ("words.csv", ["--target", "kind"], "--data: ", "line 3, column 'b': 'red' is not a number"),
    ("gap.csv", ["--target", "kind"], "--data: ", "line 3, column 'b': is empty"),
    ("ragged.csv", ["--target", "kind"], "--data: ", "line 3: 2 fields, but the header has 3"),
    ("no_y.npz", [], "--data: ", "no array 'y'; it holds x, target"),
    ("short_y.npz", [], "--data: ", "x has 30 examples but y has 29"),
    ("objects.npz", [], "--data: ", "array 'x' holds Python objects"),
    ("fractions.npz", [], "--data: ", "non-integer values such as 0.0344828"),
    ("good.csv", ["--target", "kind", "--loss", "mse"], "--data: ", "'a' is not a number"),
])
def test_bad_data_file_is_one_line(capsys, files, name, extra, start, says):
    line = one_error_line(capsys, ["train", "--data", str(files / name), *QUICK, *extra])
    assert line.startswith(f"fbp train: error: {start}") and says in line


@pytest.fixture
def fake_fit(monkeypatch):
    """fit and evaluate stand-ins: what the CLI hands them, without training."""
    seen = {}

    def fit(net, loss, optimizer, train_data, **kw):
        seen.update(net=net, loss=loss, train=train_data, **kw)
        return None, {"epoch": [1], "train_loss": [0.5], "stopped": "epochs"}

    def evaluate(net, loss, state, x, y):
        seen["test"] = (x, y)
        return {"loss": 0.25, "accuracy": 0.5}

    monkeypatch.setattr(fbp.train, "fit", fit)
    monkeypatch.setattr(fbp.train, "evaluate", evaluate)
    return seen


def test_train_on_an_npz_file(capsys, files, fake_fit):
    assert main(["train", "--data", str(files / "good.npz"), "--hidden", "4", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "(21 train / 3 validation / 6 test, 3 features)" in out  # 30: 80/20, then 10%
    x, y = fake_fit["train"]
    assert x.shape == (21, 3) and y.dtype == np.int32 and set(y.tolist()) == {0, 1}
    assert fake_fit["net"].name == "serial(dense(4), relu, dense(2))"
    assert fake_fit["batch_size"] == 21  # the default 32, cut to the training split
    assert len(fake_fit["val_data"][0]) == 3 and len(fake_fit["test"][0]) == 6


def test_train_on_a_csv_file(capsys, files, fake_fit):
    """String labels become class indices; a numeric column is a regression target."""
    argv = ["--hidden", "", *QUICK]
    assert main(["train", "--data", str(files / "good.csv"), "--target", "kind",
                 "--batch-size", "0", *argv]) == 0
    x, y = fake_fit["train"]
    assert x.shape == (21, 2) and set(y.tolist()) == {0, 1}
    assert fake_fit["net"].name == "serial(dense(2))" and fake_fit["batch_size"] is None
    assert main(["train", "--data", str(files / "numbers.csv"), "--target", "price",
                 "--loss", "mse", *argv]) == 0
    x, y = fake_fit["train"]
    assert x.shape == (21, 2) and y.shape == (21, 1) and np.issubdtype(y.dtype, np.floating)
    assert abs(float(y.mean())) < 0.5  # standardized with the training split's statistics
    assert "loss mse" in capsys.readouterr().out


def test_load_file_labels_and_split():
    """Labels sort as numbers where they all are numbers; the split is the bundled sets'."""
    labels = np.array(["10", "9", "10", "9", "2", "2"] * 5)
    y = data._labels("t", labels)
    assert y.tolist()[:6] == [2, 1, 2, 1, 0, 0]
    with pytest.raises(data.DataFileError, match="a single class"):
        data._labels("t", np.array(["a"] * 4))
    with pytest.raises(ValueError, match="task must be one of"):
        data.load_file("x.csv", task="ranking")


def test_diverged_training_is_one_line_and_status_1(capsys, monkeypatch):
    def fit(*args, **kw):
        raise fbp.train.NonFiniteError("fit: the training loss became nan in epoch 1 (try a "
                                       "smaller learning rate)", state=None, history={})

    monkeypatch.setattr(fbp.train, "fit", fit)
    assert main(["train", "--data", "iris", *QUICK]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fbp train: fit: the training loss became nan in epoch 1 (try a smaller "
                   "learning rate)"]


def test_fbp_bench_from_a_wheel_says_where_the_suite_is(capsys, monkeypatch):
    monkeypatch.setattr(fbp.cli, "_benchmarks", lambda: None)  # as installed from a wheel
    line = one_error_line(capsys, ["bench", "--quick"])
    assert line.startswith("fbp bench: error: the benchmark suite is not installed with fbp")
    assert "python -m benchmarks" in line


def test_other_commands_do_not_import_benchmarks(capsys, monkeypatch):
    """With `benchmarks` unimportable, every other command's help and errors still work,
    and none of them tried to load it (the loader would have replaced the None)."""
    monkeypatch.setitem(sys.modules, "benchmarks", None)
    for argv in (["--help"], ["check", "--help"], ["train", "--help"], ["explain", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
    assert "NAME|FILE" in capsys.readouterr().out
    one_error_line(capsys, ["train", "--lr", "0"])
    assert sys.modules["benchmarks"] is None
