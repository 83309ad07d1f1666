"""Small real data sets (shipped inside scikit-learn, nothing is downloaded) and synthetic ones.

    load(name, seed=0) -> ((x_train, y_train), (x_test, y_test))

Features are standardized with the training split's mean and standard deviation.
Classification labels are int32 class indices; regression targets are float32 columns
(n, 1), standardized too. The split (80/20, stratified for classification) is fixed by
`seed`.
"""

from __future__ import annotations

import numpy as np

Split = tuple[np.ndarray, np.ndarray]


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
    y_tr, y_te = _standardize(y_tr.reshape(-1, 1), y_te.reshape(-1, 1))
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
CLASSIFICATION = {"digits", "iris", "breast_cancer", "spirals"}


def load(name: str, *, seed: int = 0) -> tuple[Split, Split]:
    """((x_train, y_train), (x_test, y_test)) of a named data set; see `DATASETS`."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](seed)


def num_classes(y: np.ndarray) -> int:
    return int(np.max(y)) + 1
