"""Small real data sets (shipped inside scikit-learn, nothing is downloaded), synthetic ones,
and a user's own data from a file.

    load(name, seed=0) -> ((x_train, y_train), (x_test, y_test))
    load_file(path, target=None, task="classification", seed=0) -> the same

Features are standardized with the training split's mean and standard deviation.
Classification labels are int32 class indices; regression targets are float32 columns
(n, 1), standardized too. The split (80/20, stratified for classification) is fixed by
`seed`.

`load_file` reads a `.npz` (arrays `x`, shape (n, features), and `y`, shape (n,)) or a
`.csv` (a header row of column names; `target` names the column to predict, every other
column is a numeric feature) and splits it the same way. For classification the labels may
be integers or strings; they become the indices 0..C-1 of the classes in sorted order.
"""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

import numpy as np

Split = tuple[np.ndarray, np.ndarray]
"""One split of a data set: (x, y)."""


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def _split(x, y, seed, *, classification, test_size=0.2):
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y if classification else None)
    x_tr, x_te = _standardize(x_tr, x_te)
    if classification:
        return (x_tr, y_tr.astype(np.int32)), (x_te, y_te.astype(np.int32))
    y_tr, y_te = _standardize(y_tr.reshape(len(y_tr), -1), y_te.reshape(len(y_te), -1))
    return (x_tr, y_tr), (x_te, y_te)


def _sklearn(loader_name: str, classification: bool):
    def load(seed):
        from sklearn import datasets

        x, y = getattr(datasets, loader_name)(return_X_y=True)
        return _split(x, y, seed, classification=classification)
    return load


def _xor(seed):
    """The four XOR points; train and test are the same four (the textbook case)."""
    del seed
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([[0], [1], [1], [0]], np.float32)
    return (x, y), (x.copy(), y.copy())


def _spirals(seed, n_per_class=200, noise=0.2):
    """Two interleaved spirals in the plane, labels 0/1."""
    rng = np.random.default_rng(seed)
    t = np.sqrt(rng.uniform(0, 1, (2, n_per_class))) * 3 * np.pi
    xs = []
    for c, sign in enumerate((1, -1)):
        r = t[c]
        xs.append(np.stack([sign * r * np.cos(r), sign * r * np.sin(r)], axis=1))
    x = np.concatenate(xs) + noise * rng.standard_normal((2 * n_per_class, 2))
    y = np.repeat(np.arange(2), n_per_class)
    return _split(x, y, seed, classification=True)


def _linear(seed, n=500, d=5, noise=0.1):
    """y = x w + b + noise, with a random true w and b."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w, b = rng.standard_normal(d), rng.standard_normal()
    y = x @ w + b + noise * rng.standard_normal(n)
    return _split(x, y, seed, classification=False)


DATASETS = {
    "digits": _sklearn("load_digits", classification=True),
    "iris": _sklearn("load_iris", classification=True),
    "breast_cancer": _sklearn("load_breast_cancer", classification=True),
    "diabetes": _sklearn("load_diabetes", classification=False),
    "xor": _xor,
    "spirals": _spirals,
    "linear": _linear,
}
"""The named data sets `load` takes, each a function of the seed: digits (8×8 images of
0-9, 64 features), iris (4 features, 3 classes), breast_cancer (30 features, 2 classes),
diabetes (10 features, a regression), xor (the four XOR points, train = test), spirals (two
interleaved spirals, 2 classes) and linear (y = x w + b + noise, 5 features)."""
CLASSIFICATION = {"digits", "iris", "breast_cancer", "spirals"}
"""The data sets of `DATASETS` whose targets are class labels (xor's are 0/1 floats, for a
regression or binary cross-entropy)."""


def load(name: str, *, seed: int = 0) -> tuple[Split, Split]:
    """((x_train, y_train), (x_test, y_test)) of a named data set; see `DATASETS`.

    Features are float32, standardized with the training split's mean and standard
    deviation; classification labels are int32 class indices, regression targets float32
    columns (n, 1), standardized too. The 80/20 split (stratified for classification) is
    fixed by `seed`. Nothing is downloaded: the real data sets ship with scikit-learn.

    Args:
        name: a key of `DATASETS`: "digits", "iris", "breast_cancer", "diabetes", "xor",
            "spirals" or "linear".
        seed: fixes the split (and the points of the synthetic sets).

    Returns:
        ((x_train, y_train), (x_test, y_test)) as NumPy arrays.

    Raises:
        ValueError: an unknown name.

    Examples:
        >>> from fbp import data
        >>> (x_train, y_train), (x_test, y_test) = data.load("iris")
        >>> x_train.shape, y_train.shape, x_test.shape       # 150 flowers, split 80/20
        ((120, 4), (120,), (30, 4))
        >>> x_train.dtype, y_train.dtype, data.num_classes(y_train)
        (dtype('float32'), dtype('int32'), 3)
        >>> bool(abs(x_train.mean(axis=0)).max() < 1e-5)   # standardized on the training split
        True
        >>> (x, y), _ = data.load("xor")                     # the four XOR points
        >>> x.tolist(), y.ravel().tolist()
        ([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], [0.0, 1.0, 1.0, 0.0])
        >>> data.load("mnist")
        Traceback (most recent call last):
        ValueError: unknown data set 'mnist'; available: breast_cancer, diabetes, digits, iris, ...
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](seed)


def num_classes(y: np.ndarray) -> int:
    """The number of classes of int labels 0..C-1 (the largest label + 1).

    Args:
        y: integer class labels.

    Returns:
        The largest label + 1.

    Examples:
        >>> import numpy as np
        >>> from fbp import data
        >>> data.num_classes(np.array([0, 2, 1, 2]))
        3
    """
    return int(np.max(y)) + 1


# --- a user's own data ------------------------------------------------------------------------

FILE_SUFFIXES = (".npz", ".csv")
TASKS = ("classification", "regression")


class DataFileError(ValueError):
    """A data file that `load_file` cannot use. `argument` names what is wrong: "path" (the
    file and what is in it) or "target" (the column to predict).

    A ValueError; its message names the file and, where it can, the array, column or line.

    Attributes:
        argument: "path" or "target".
    """

    def __init__(self, message: str, argument: str = "path"):
        super().__init__(message)
        self.argument = argument


def load_file(path: str | os.PathLike, *, target: str | None = None, task: str = "classification",
              seed: int = 0) -> tuple[Split, Split]:
    """((x_train, y_train), (x_test, y_test)) from a `.npz` or `.csv` file, split and
    standardized as `load`'s data sets are.

    .npz: arrays `x` (n, features) — more dimensions are flattened into features — and `y`
        (n,) (a regression target may be (n, k)). Written by `np.savez(path, x=x, y=y)`.
    .csv: a header row of column names, then one example a row, comma-separated; `target`
        names the column to predict, and every other column is a numeric feature.
    task: "classification" (labels: integers or strings, mapped to 0..C-1 in sorted order)
        or "regression" (numeric targets).

    Raises FileNotFoundError for a missing file, and `DataFileError` (a ValueError) naming
    the file, array, column or line for anything it cannot use: a missing array or column,
    a non-numeric or missing value, x and y of different lengths, too few examples.

    Args:
        path: the `.npz` or `.csv` file.
        target: the CSV column to predict (required for a CSV file, refused for a .npz).
        task: "classification" or "regression".
        seed: fixes the 80/20 split.

    Returns:
        ((x_train, y_train), (x_test, y_test)): float32 features, standardized; int32
            labels 0..C-1, or float32 regression targets (n, k), standardized.

    Raises:
        FileNotFoundError: there is no file at `path`.
        DataFileError: the file cannot be used (see above; a ValueError).
        ValueError: `task` is neither "classification" nor "regression".

    Examples:
        >>> import os, tempfile, numpy as np
        >>> from fbp import data
        >>> x = np.random.default_rng(0).normal(size=(50, 3))
        >>> y = np.array(["cat", "dog"] * 25)                # string labels
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     np.savez(os.path.join(tmp, "pets.npz"), x=x, y=y)
        ...     (x_train, y_train), (x_test, y_test) = data.load_file(os.path.join(tmp, "pets.npz"))
        >>> x_train.shape, x_test.shape                       # split 80/20
        ((40, 3), (10, 3))
        >>> sorted(set(y_train.tolist()))                     # "cat", "dog" -> 0, 1
        [0, 1]
        >>> data.load_file("houses.csv", target="price", task="regression")  # doctest: +SKIP
    """
    if task not in TASKS:
        raise ValueError(f"load_file: task must be one of {', '.join(TASKS)}, got {task!r}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataFileError(f"{path}: expected a .npz or .csv file, got a {suffix or 'suffix-less'} "
                            "file")
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise DataFileError(f"{path} is a directory, not a {suffix} file")
    if suffix == ".npz":
        if target is not None:
            raise DataFileError(f"target names a CSV column; {path.name} is a .npz file, whose "
                                "arrays x and y are the features and the target", "target")
        x, y = _read_npz(path)
    else:
        if target is None:
            raise DataFileError(f"{path.name} is a CSV file: name the column to predict "
                                f"(target); its columns: {_columns(path)}", "target")
        x, y = _read_csv(path, target, task)
    y = _labels(path.name, y) if task == "classification" else _numeric_target(path.name, y)
    classification = task == "classification"
    try:
        return _split(x, y, seed, classification=classification)
    except ValueError as e:
        raise DataFileError(f"{path.name}: cannot split its {len(x)} examples 80/20"
                            f"{' by class' if classification else ''}: {e}") from None


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise DataFileError(f"{path.name} is not a .npz file (a zip archive of arrays; write "
                            "one with np.savez(path, x=x, y=y))")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a .npy saved under a .npz name
            raise DataFileError(f"{path.name} holds a single array, not the arrays x and y "
                                "(write it with np.savez(path, x=x, y=y))")
        with loaded as arrays:
            missing = [k for k in ("x", "y") if k not in arrays.files]
            if missing:
                raise DataFileError(f"{path.name} has no array {' or '.join(map(repr, missing))}; "
                                    f"it holds {', '.join(arrays.files) or 'no arrays'} (expected "
                                    "x, the features, and y, the target: np.savez(path, x=x, y=y))")
            out = {}
            for k in ("x", "y"):
                try:
                    out[k] = arrays[k]
                except ValueError:  # an object array: reading it would unpickle
                    raise DataFileError(f"{path.name}: array {k!r} holds Python objects, not "
                                        "numbers or strings (it is not read: that would "
                                        "unpickle it)") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, DataFileError):
            raise
        raise DataFileError(f"{path.name} is not a readable .npz file ({e})") from None
    x, y = out["x"], out["y"]
    if x.ndim < 2:
        raise DataFileError(f"{path.name}: x must be (examples, features), got shape {x.shape}"
                            + (" (one feature? store x.reshape(-1, 1))" if x.ndim == 1 else ""))
    if y.ndim == 0:
        raise DataFileError(f"{path.name}: y must hold one target per example, got a scalar")
    if len(x) != len(y):
        raise DataFileError(f"{path.name}: x has {len(x)} examples but y has {len(y)}; "
                            "expected one target per example")
    if x.dtype.kind not in "biuf":
        raise DataFileError(f"{path.name}: x must be numeric, got dtype {x.dtype}")
    x = x.reshape(len(x), -1).astype(np.float64)
    _check_finite(path.name, "x", x)
    return x, y


def _columns(path: Path) -> str:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return "(unreadable)"
    return ", ".join(h.strip() for h in header) or "(none: the file is empty)"


def _read_csv(path: Path, target: str, task: str) -> tuple[np.ndarray, np.ndarray]:
    name = path.name
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows, lines = [], []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank lines
                if len(row) != len(header):
                    raise DataFileError(f"{name}, line {reader.line_num}: {len(row)} fields, but "
                                        f"the header has {len(header)} columns")
                rows.append(row)
                lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise DataFileError(f"{name} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataFileError(f"{name} is not a readable CSV file ({e})") from None
    if not header:
        raise DataFileError(f"{name} is empty; expected a header row of column names, then "
                            "one example a row")
    if target not in header:
        raise DataFileError(f"{name} has no column {target!r}; its columns: {', '.join(header)}",
                            "target")
    if header.count(target) > 1:
        raise DataFileError(f"{name} has {header.count(target)} columns named {target!r}",
                            "target")
    if not rows:
        raise DataFileError(f"{name} has a header but no rows of data")
    t = header.index(target)
    features = [i for i in range(len(header)) if i != t]
    if not features:
        raise DataFileError(f"{name} has no feature columns besides the target {target!r}")
    table = np.array(rows)  # (examples, columns) of strings
    cells = table[:, features]
    try:
        x = cells.astype(np.float64)  # surrounding spaces allowed, as float() allows them
    except ValueError:  # find the first cell that is not a number, to name it
        for r, row in enumerate(cells.tolist()):
            for c, cell in enumerate(row):
                cell = cell.strip()
                try:
                    float(cell)
                except ValueError:
                    what = "is empty (a missing value)" if not cell else f"{cell!r} is not a number"
                    raise DataFileError(f"{name}, line {lines[r]}, column "
                                        f"{header[features[c]]!r}: {what}; the features must "
                                        "be numeric") from None
        raise
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        r, c = bad[0]
        raise DataFileError(f"{name}, line {lines[r]}, column {header[features[c]]!r}: "
                            f"{str(cells[r, c]).strip()!r} is not a finite number ({len(bad)} such values)")
    y = np.char.strip(table[:, t])
    missing = np.flatnonzero(y == "")
    if len(missing):
        raise DataFileError(f"{name}, line {lines[missing[0]]}, column {target!r}: the target "
                            f"is empty (a missing value; {len(missing)} such rows)")
    if task == "regression":
        try:
            y = y.astype(np.float64)
        except ValueError:
            r = next(i for i, v in enumerate(y) if not _is_number(v))
            raise DataFileError(f"{name}, line {lines[r]}, column {target!r}: {str(y[r])!r} is not a "
                                "number; a regression target must be numeric") from None
    return x, y


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_finite(name: str, what: str, a: np.ndarray) -> None:
    bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise DataFileError(f"{name}: {what} holds {bad} NaN or infinite value(s); clean the "
                            "data first")


def _labels(name: str, y: np.ndarray) -> np.ndarray:
    """Class labels (ints, integer-valued floats, or strings) as indices 0..C-1 of the sorted
    classes."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataFileError(f"{name}: class labels must be one per example, shape (n,), got "
                            f"shape {y.shape}")
    if y.dtype.kind in "US":  # strings: numbers among them are compared as numbers
        if all(_is_number(v) for v in y):
            y = y.astype(np.float64)
    elif y.dtype.kind not in "biuf":
        raise DataFileError(f"{name}: class labels must be integers or strings, got dtype "
                            f"{y.dtype}")
    if y.dtype.kind == "f":
        _check_finite(name, "the target", y)
        fractional = y[y != np.round(y)]
        if len(fractional):
            raise DataFileError(f"{name}: class labels must be integers or strings; the target "
                                f"holds non-integer values such as {fractional[0]:g} (a "
                                "regression target? then train a regression on it)")
    classes, index = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataFileError(f"{name}: the target holds a single class ({classes[0].item()!r}); a "
                            "classifier needs at least two")
    return index.reshape(-1).astype(np.int32)


def _numeric_target(name: str, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise DataFileError(f"{name}: a regression target must be numeric, got dtype {y.dtype}")
    y = y.astype(np.float64)
    if y.ndim == 1:
        y = y[:, None]
    elif y.ndim > 2:
        raise DataFileError(f"{name}: a regression target must be (n,) or (n, k), got shape "
                            f"{y.shape}")
    _check_finite(name, "the target", y)
    return y


__all__ = ["load", "load_file", "num_classes", "DATASETS", "CLASSIFICATION", "Split",
           "DataFileError"]
