"""Files: a net's parameters saved for inference, and the one way fbp writes any file.

    state, history = fit(net, loss, optimizer, (x, y), epochs=10)      # fbp.train.fit
    save_params("model.safetensors", net, state)
    ...
    params, net_state = load_params("model.safetensors", net, input_shape=(1, 784))
    y = predict(net, params, x, state=net_state)                         # fbp.train.predict

A params file is a safetensors file: raw little-endian tensors by name, and a
string-to-string metadata header; no pickle, nothing in it is run when it is read. Each
tensor is named by where it sits in the net: "params/" or "state/", the layer's path (the
path `fbp.explain` and `fbp.check_grads` print: "serial[2]/residual[0]"), and the leaf's
name inside that layer ("w", "b", "scale", "mean"), e.g. "params/serial[0]/w" and
"state/serial[1]/var". The header holds the sha256 of every tensor (with its dtype and
shape) and of the metadata JSON, as fbp's training checkpoints do (`fbp.checkpoint`);
reading recomputes them all and refuses a truncated, bit-flipped or hand-edited file with
a `CheckpointError` naming the file and what is wrong. (A checksum, not a signature: it
catches damage, not someone who recomputes it.)

`write_atomic` is how every fbp file reaches the disk (checkpoints, params, plots): a
temporary file in the same folder, written and flushed to disk, renamed over the target,
then the folder flushed. A reader sees the old file or the new one, never half of one,
and a failure leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import jax
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey
from safetensors import safe_open
from safetensors.numpy import save as _safetensors_bytes

from fbp._layer import Layer, default_float_dtype, init_with_state, stateful_layers

PARAMS_FORMAT = "fbp-params/1"
"""The format name a params file carries in its header (`load_params` refuses any other)."""

__all__ = ["save_params", "load_params", "write_atomic", "CheckpointError", "PARAMS_FORMAT"]


class CheckpointError(ValueError):
    """A saved file (a checkpoint or a params file) that cannot be trusted: truncated,
    damaged, edited, or not fbp's.

    Its message names the file and what is wrong with it.

    Examples:
        >>> import os, tempfile, numpy as np
        >>> from fbp import checkpoint
        >>> from fbp.io import CheckpointError
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "run.safetensors")
        ...     checkpoint.save(path, {"w": np.zeros(4, np.float32)})
        ...     with open(path, "r+b") as f:             # flip a bit of w's last byte
        ...         _ = f.seek(-1, os.SEEK_END)
        ...         _ = f.write(bytes([1]))
        ...     try:
        ...         checkpoint.read(path)
        ...     except CheckpointError as e:
        ...         print(str(e).split(" holds ")[1])
        w with bytes that do not match its checksum; it was damaged or edited after fbp wrote it
    """


# --- writing a file atomically ----------------------------------------------------------------

_TEMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
               | getattr(os, "O_CLOEXEC", 0))


def _temp_name(path: Path) -> Path:
    """A hidden, unpredictable name next to `path` (short enough for any file system)."""
    return path.with_name(f".{path.name[:180]}.{secrets.token_hex(6)}.tmp")


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new, empty temporary file next to `path`, opened for writing: (its path, fd).

    os.open with O_EXCL and mode 0o666: the system applies the umask itself, so the file
    gets the mode any new file gets there, and the process umask is never changed (changing
    it, even briefly, races with other threads creating files)."""
    for _ in range(16):
        tmp = _temp_name(path)
        try:
            return tmp, os.open(tmp, _TEMP_FLAGS, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}: 16 random names "
                          "were all taken")


_NO_FOLDER_FSYNC = {errno.EINVAL, errno.EBADF, getattr(errno, "ENOTSUP", errno.EINVAL),
                    getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk. A no-op where folders cannot be opened
    (Windows) or flushed (some file systems say so with EINVAL); an I/O error is raised."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _NO_FOLDER_FSYNC:
            raise
    finally:
        os.close(fd)


def _keep_previous(path: Path, previous: Path) -> None:
    """Make `previous` a copy of the file at `path` (if any), leaving `path` in place: a hard
    link under a temporary name renamed over `previous`. Where hard links are not possible,
    `path` itself is renamed to `previous` (then `path` is absent until the new file takes
    its place)."""
    if not path.exists():
        return
    link = _temp_name(previous)
    try:
        os.link(path, link)
    except OSError:
        os.replace(path, previous)
        return
    try:
        os.replace(link, previous)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | bytearray | memoryview
                 | Callable[[BinaryIO], Any], *,
                 previous: str | os.PathLike | None = None) -> Path:
    """Write a file so that it is either whole or not there: never half-written.

    The data goes to a new temporary file in the same folder, is flushed to disk (fsync),
    then the temporary file is renamed over `path` and the folder is flushed, so the
    rename survives a power loss too. The file gets the mode any new file gets (0o666 less
    the umask); the process umask is never changed. On any failure (an exception from
    `data`, a full disk, Ctrl-C) the temporary file is removed and the file at `path` is
    left exactly as it was. Missing parent folders are created.

    Args:
        path: the file to write (replaced if it exists).
        data: the bytes, or a function that writes them to the binary file it is given
            (e.g. `lambda f: fig.savefig(f, format="png")`), so large data need not be
            held in memory twice.
        previous: if given and `path` exists, the file it held is kept there (replacing
            whatever `previous` held) before the new one takes its place: the last two
            versions are kept. Same file system as `path`.

    Returns:
        `path`, as a Path.

    Raises:
        TypeError: `data` is neither bytes nor a function.
        IsADirectoryError: `path` is a folder.
        OSError: the write, flush or rename failed (the target is untouched), or flushing
            the folder failed after the rename (the new file is in place but may not
            survive a power loss).

    Examples:
        >>> from fbp.io import write_atomic
        >>> write_atomic("out/report.json", b'{"loss": 0.1}')  # doctest: +SKIP
        >>> write_atomic("out/fig.png", lambda f: fig.savefig(f, format="png"))  # doctest: +SKIP
    """
    if not (callable(data) or isinstance(data, (bytes, bytearray, memoryview))):
        raise TypeError(f"write_atomic: data must be bytes or a function that writes to a "
                        f"binary file, got {type(data).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None:
            _keep_previous(path, Path(previous))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    for folder in {path.parent, *(() if previous is None else (Path(previous).parent,))}:
        _fsync_dir(folder)
    return path


# --- tensors by name, with checksums (shared with fbp.checkpoint) -----------------------------

def _key_name(entry) -> str:
    if isinstance(entry, DictKey):
        name = str(entry.key)
    elif isinstance(entry, SequenceKey):
        name = str(entry.idx)
    elif isinstance(entry, GetAttrKey):
        name = entry.name
    elif isinstance(entry, FlattenedIndexKey):
        name = str(entry.key)
    else:
        raise TypeError(f"cannot name a pytree key of type {type(entry).__name__}")
    return name.replace("%", "%25").replace("/", "%2F")  # "/" only ever separates entries


def _path_name(path) -> str:
    """A leaf's name from its pytree key path, built from the key entries themselves (not
    `jax.tree_util.keystr`'s format, which may change between JAX versions): entries
    joined by "/" ("params/0/w"); "." for a tree that is a single leaf."""
    return "/".join(_key_name(entry) for entry in path) or "."


def _check_unique(names: list[str]) -> None:
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"two leaves get the same name {twice[:3]} (a dict with keys "
                         "such as 1 and '1'); rename them")


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).tobytes()).hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _as_tensor(name: str, leaf) -> np.ndarray:
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        raise TypeError(f"{name} is a typed PRNG key array; save jax.random.key_data(key)")
    # np.require, not np.ascontiguousarray: that one makes a scalar (1,)
    return np.require(np.asarray(leaf), requirements="C")


def _encode(tensors: dict[str, Any], metadata: dict | None, fmt: str) -> bytes:
    """A safetensors file's bytes: the tensors by name, and in its header the format, the
    metadata JSON, and the checksums of both."""
    tensors = {name: _as_tensor(name, a) for name, a in tensors.items()}
    meta = json.dumps(metadata or {})
    table = {name: {"dtype": a.dtype.name, "shape": list(a.shape), "sha256": _digest(a)}
             for name, a in tensors.items()}
    header = {"format": fmt, "fbp": meta, "fbp.sha256": _text_digest(meta),
              "fbp.tensors": json.dumps(table)}
    return _safetensors_bytes(tensors, metadata=header)


def _decode(path: str | os.PathLike, fmt: str, what: str,
            hint: Callable[[str | None], str] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors by name, metadata) of a file `_encode` wrote with format `fmt`, every
    checksum verified; `what` names the kind of file in errors ("checkpoint"), `hint(found
    format)` may add a sentence to the error for a file of another format.

    Raises `CheckpointError` for a file that is not whole and unchanged since fbp wrote it
    (FileNotFoundError / PermissionError / IsADirectoryError pass through)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            stored = {name: f.get_tensor(name) for name in f.keys()}
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # SafetensorError, and whatever a damaged header makes numpy say
        raise CheckpointError(f"{what} {path} is damaged or truncated: safetensors cannot "
                              f"read it ({type(e).__name__}: {e})") from e

    def refuse(problem: str):
        raise CheckpointError(f"{what} {path} {problem}; it was damaged or edited after fbp "
                              "wrote it")

    if header.get("format") != fmt:
        found = header.get("format")
        extra = hint(found) if hint is not None else ""
        raise CheckpointError(f"{what} {path} is not an fbp {what} of format {fmt} "
                              f"(format {found!r}" + (", an older fbp's file without checksums"
                                                      if found is None and "fbp" in header else "")
                              + f"); it cannot be verified{extra}")
    meta = header.get("fbp")
    if meta is None or _text_digest(meta) != header.get("fbp.sha256"):
        refuse("has metadata that does not match its checksum")
    try:
        table = json.loads(header.get("fbp.tensors", ""))
        metadata = json.loads(str(meta))
        assert isinstance(table, dict) and isinstance(metadata, dict)
        for record in table.values():
            assert isinstance(record, dict) and {"dtype", "shape", "sha256"} <= set(record)
    except (ValueError, AssertionError):
        refuse("has an unreadable tensor table or metadata")
    if set(table) != set(stored):
        refuse(f"holds tensors {sorted(set(stored) - set(table))[:3]} not in its table and "
               f"lacks {sorted(set(table) - set(stored))[:3]}")
    for name, record in table.items():
        arr = stored[name]
        if record["shape"] == [] and arr.shape == (1,):  # older safetensors read scalars as (1,)
            arr = stored[name] = arr.reshape(())
        if arr.dtype.name != record["dtype"] or list(arr.shape) != record["shape"]:
            refuse(f"holds {name} as {arr.dtype.name}{list(arr.shape)}, its table says "
                   f"{record['dtype']}{record['shape']}")
        if _digest(arr) != record["sha256"]:
            refuse(f"holds {name} with bytes that do not match its checksum")
    return stored, metadata


# --- tensor names from the net's structure ----------------------------------------------------

_PER_CHILD = ("serial", "parallel")     # params and state: a tuple, one entry per child
_AS_CHILD = ("residual", "remat")       # params and state: the one child's own


def _describe(tree) -> str:
    if isinstance(tree, dict):
        return f"a dict with keys {sorted(map(str, tree))}"
    if isinstance(tree, (tuple, list)):
        return f"a {type(tree).__name__} of length {len(tree)}"
    return f"a {type(tree).__name__}"


def _layer_leaves(net: Layer, tree, what: str, path: str = "") -> list[tuple[str, Layer, Any]]:
    """[(tensor name, the layer it belongs to, leaf)] of `net`'s params (what="params") or
    state (what="state"), in the order of `jax.tree_util.tree_leaves(tree)`.

    A combinator's part is named by its children's paths ("serial[2]/residual[0]", as
    `fbp.explain` prints them); inside a layer, by the leaf's key path ("w", "0/scale")."""
    kids = net.children
    if net.kind in _PER_CHILD and kids:
        if isinstance(tree, (tuple, list)) and len(tree) == len(kids):
            return [leaf for i, (child, sub) in enumerate(zip(kids, tree))
                    for leaf in _layer_leaves(child, sub, what,
                                              f"{path}/{net.kind}[{i}]".lstrip("/"))]
        if jax.tree_util.tree_leaves(tree):
            where = f" at {path}" if path else ""
            raise ValueError(f"{net.name}{where}: expected {what} as a tuple of {len(kids)} "
                             f"(one per child layer), got {_describe(tree)} ({what} of "
                             "another network?)")
    if net.kind in _AS_CHILD and len(kids) == 1:
        return _layer_leaves(kids[0], tree, what, f"{path}/{net.kind}[0]".lstrip("/"))
    named = []
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        inner = _path_name(key_path)
        named.append(("/".join(p for p in (what, path, inner) if p and p != "."), net, leaf))
    return named


def _named(net: Layer, params, net_state) -> list[tuple[str, Layer, Any]]:
    named = _layer_leaves(net, params, "params") + _layer_leaves(net, net_state, "state")
    _check_unique([name for name, _, _ in named])
    return named


def _spec(a) -> str:
    """float32[784, 10]"""
    return f"{np.dtype(a.dtype).name}{list(np.shape(a))}"


# --- save_params / load_params ----------------------------------------------------------------

def save_params(path: str | os.PathLike, net: Layer, params_or_state: Any, *,
                state: Any = None) -> Path:
    """Save a net's parameters (and running statistics) for inference, atomically.

    The file is safetensors (no pickle) with a tensor per leaf, named by where it sits in
    the net ("params/serial[0]/w", "state/serial[1]/mean"; see the module doc), the sha256
    of every tensor, and the net's description (`net.name`). The optimizer's state, step
    and key are not saved: for resuming training, `fit(checkpoint_dir=...)` keeps all of
    them. The file is written with `write_atomic`: an existing file at `path` is replaced
    only once the new one is whole on disk.

    Args:
        path: the file to write, conventionally `*.safetensors`.
        net: the network the parameters belong to (its structure names the tensors).
        params_or_state: the TrainState that `fit` (or `init_state`) returns — its
            params and net_state are saved — or bare params (then, for a net with
            running statistics such as batch_norm, pass them with `state=`).
        state: the net's state, with bare params only.

    Returns:
        `path`, as a Path.

    Raises:
        TypeError: `net` is not a fbp.Layer.
        ValueError: the params do not fit the net's structure, or a stateful net's state
            is missing.

    Examples:
        >>> import jax, optax, fbp
        >>> from fbp import layers as L
        >>> from fbp.io import load_params, save_params
        >>> from fbp.train import init_state
        >>> net = L.serial(L.dense(8), L.batch_norm(), L.relu(), L.dense(3))
        >>> state = init_state(net, optax.sgd(0.1), jax.random.key(0), (1, 4))
        >>> save_params("model.safetensors", net, state)  # doctest: +SKIP
        >>> params, net_state = load_params("model.safetensors", net, (1, 4))  # doctest: +SKIP
        >>> y = fbp.train.predict(net, params, x, state=net_state)  # doctest: +SKIP
    """
    from fbp.train import TrainState  # fbp.train imports fbp.checkpoint, which imports this

    if not isinstance(net, Layer):
        raise TypeError(f"save_params: expected a fbp.Layer as net, got {type(net).__name__}")
    if isinstance(params_or_state, TrainState):
        if state is not None:
            raise ValueError("save_params: got a TrainState and state=; the TrainState "
                             "already carries the net's state")
        params, net_state = params_or_state.params, params_or_state.net_state
    else:
        params, net_state = params_or_state, state
    if net_state is None:
        if net.stateful:
            raise ValueError(f"save_params: the net keeps running statistics "
                             f"({', '.join(stateful_layers(net))}); pass the TrainState that "
                             "fit returns, or params with state=")
        net_state = {}
    if not net.stateful and jax.tree_util.tree_leaves(net_state):
        raise ValueError(f"save_params: {net.name} keeps no state, but a state with "
                         f"{len(jax.tree_util.tree_leaves(net_state))} arrays was given")
    try:
        named = _named(net, params, net_state)
    except (TypeError, ValueError) as e:
        raise type(e)(f"save_params: {e}") from None
    tensors = {name: jax.device_get(leaf) for name, _, leaf in named}
    try:
        data = _encode(tensors, {"net": net.name}, PARAMS_FORMAT)
    except TypeError as e:
        raise TypeError(f"save_params: {e}") from None
    return write_atomic(path, data)


def _checkpoint_hint(found: str | None) -> str:
    if isinstance(found, str) and found.startswith("fbp-checkpoint/"):
        return (". It is a training checkpoint written by fit(checkpoint_dir=...), not a params "
                "file: rerun that fit to get its state (it resumes from the checkpoint, and "
                "returns at once if the run had finished), then save_params(path, net, state)")
    return ""


def load_params(path: str | os.PathLike, net: Layer, input_shape: tuple[int, ...], *,
                strict: bool = True) -> tuple[Any, Any]:
    """Load what `save_params` saved, checked against the net: (params, net_state).

    Every checksum in the file is verified first. The net is then initialized, traced
    only (`jax.eval_shape`: nothing is computed), for `input_shape`, and each tensor the
    net expects must be in the file with the same shape and dtype (the dtype of params
    `init` makes here: float64 with jax_enable_x64 on, float32 otherwise), and the file
    must hold no other. The params and state come back as jax arrays in the structure
    `init` gives, ready for `fbp.train.predict(net, params, x, state=net_state)`.

    Args:
        path: the file `save_params` wrote.
        net: the network, built as it was when saved.
        input_shape: an input shape the net takes, batch first (the batch size does not
            matter); it sets the parameters' shapes.
        strict: also require the net's description (`net.name`: its layers and their
            settings, such as an activation or a dropout rate) to be the one saved. With
            False only the tensors must fit.

    Returns:
        (params, net_state): net_state is the running statistics of a stateful net (e.g.
            batch_norm), `{}` for a stateless one.

    Raises:
        CheckpointError: (a ValueError) the file is truncated, damaged or edited (a
            checksum fails), or is not an fbp params file.
        ValueError: the file does not fit the net: a tensor missing, extra, or of another
            shape or dtype (named, with the expected and found shape and dtype), or, with
            `strict`, saved from a net described otherwise.
        FileNotFoundError: there is no file at `path`.

    Examples:
        >>> import fbp
        >>> from fbp import layers as L
        >>> from fbp.io import load_params
        >>> net = L.serial(L.conv2d(8, 3), L.relu(), L.flatten(), L.dense(10))
        >>> params, net_state = load_params("digits.safetensors", net, (1, 8, 8, 1))  # doctest: +SKIP
        >>> logits = fbp.train.predict(net, params, x, state=net_state)  # doctest: +SKIP

        A round trip, in a temporary folder:

        >>> import os, tempfile, jax, jax.numpy as jnp
        >>> from fbp.io import save_params
        >>> net = L.serial(L.dense(4), L.batch_norm(), L.dense(2))
        >>> _, params, state = net.init(jax.random.key(0), (1, 3))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_params(os.path.join(tmp, "net.safetensors"), net, params, state=state)
        ...     loaded, loaded_state = load_params(path, net, (1, 3))
        >>> all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves((params, state)),
        ...                                                 jax.tree.leaves((loaded, loaded_state))))
        True
        >>> jax.tree.map(jnp.shape, loaded_state)      # batch_norm's running statistics
        ({}, {'mean': (4,), 'var': (4,)}, {})
    """
    if not isinstance(net, Layer):
        raise TypeError(f"load_params: expected a fbp.Layer as net, got {type(net).__name__}")
    stored, meta = _decode(path, PARAMS_FORMAT, "params file", _checkpoint_hint)
    input_shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else input_shape
    params_t, state_t = jax.eval_shape(
        lambda key: init_with_state(net, key, input_shape)[1:], jax.random.key(0))
    named = _named(net, params_t, state_t)
    saved_net = meta.get("net")
    from_net = (f" It was saved from the net {saved_net}; this net is {net.name}."
                if saved_net != net.name else "")
    expected = {name: (layer, like) for name, layer, like in named}
    missing = [n for n in expected if n not in stored]
    extra = [n for n in stored if n not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append("it lacks " + ", ".join(
                f"{n} ({expected[n][0].name}: {_spec(expected[n][1])})" for n in missing[:5])
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        if extra:
            parts.append("it holds " + ", ".join(f"{n} ({_spec(stored[n])})" for n in extra[:5])
                         + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
                         + " that this net has no place for")
        raise ValueError(f"load_params: {path} does not fit this net with input_shape "
                         f"{input_shape}: {'; '.join(parts)}.{from_net}")
    wrong = []
    for name, (layer, like) in expected.items():
        found = stored[name]
        if found.shape != tuple(like.shape) or found.dtype != like.dtype:
            why = ""
            if found.shape == tuple(like.shape) and np.issubdtype(found.dtype, np.floating):
                x64 = "on" if default_float_dtype() == np.float64 else "off"
                why = (f" (init makes {np.dtype(like.dtype).name} params here: "
                       f"jax_enable_x64 is {x64})")
            wrong.append(f"tensor {name} (of {layer.name}) is {_spec(found)} in the file; this "
                         f"net expects {_spec(like)}{why}")
    if wrong:
        more = f"; and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise ValueError(f"load_params: {path} does not fit this net with input_shape "
                         f"{input_shape}: {'; '.join(wrong[:3])}{more}.{from_net}")
    if strict and from_net:
        raise ValueError(f"load_params: {path} was saved from the net {saved_net}; this net "
                         f"is {net.name}. Every tensor fits, but the layers differ (an "
                         "activation, a setting); pass strict=False to load it anyway")
    leaves = [jax.numpy.asarray(stored[name]) for name in expected]
    n_params = len(jax.tree_util.tree_leaves(params_t))
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params_t),
                                          leaves[:n_params])
    net_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(state_t),
                                             leaves[n_params:])
    return params, net_state
