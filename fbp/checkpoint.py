"""Checkpoints: a pytree of arrays in one safetensors file that checks itself.

No pickle: safetensors stores raw little-endian tensors by name and a string-to-string
metadata header. fbp names each tensor by its path in the pytree, built from the key
entries themselves ("state/params/0/w"), not from `jax.tree_util.keystr`'s format, so the
names stay the same across JAX versions. The header also holds the sha256 of every tensor
(with its dtype and shape) and of the metadata JSON; `read` and `load` recompute them all
and refuse a truncated, bit-flipped or hand-edited file with a `CheckpointError` that
names the file and what is wrong. (A checksum, not a signature: it catches damage, not
someone who recomputes it.)

A write goes through `fbp.io.write_atomic`: a temporary file in the same folder, flushed
to disk, then renamed over the old file, and the folder flushed, so a checkpoint on disk
is always whole. With `save(..., previous=P)` the file it replaces is first kept as P
(a hard link, so the latest file never goes missing): the last two checkpoints are kept.
The file format, checksums and tensor naming are shared with `fbp.io`'s params files,
which name tensors by layer path instead of pytree path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fbp.io import CheckpointError, _check_unique, _decode, _encode, _path_name, write_atomic

FORMAT = "fbp-checkpoint/2"
"""The format name a checkpoint carries in its header (`read` refuses any other)."""

__all__ = ["CheckpointError", "FORMAT", "tensor_name", "to_bytes", "save",
           "read", "unflatten", "load", "check_output_dir", "check_output_file"]


# --- names ------------------------------------------------------------------------------------

def tensor_name(path: jax.tree_util.KeyPath) -> str:
    """The name of a leaf from its key path: entries joined by "/" ("state/params/0/w");
    "." for a tree that is a single leaf.

    Args:
        path: a key path, as `jax.tree_util.tree_leaves_with_path` gives it.

    Returns:
        The name ("%" and "/" inside a key are escaped as "%25" and "%2F").

    Raises:
        TypeError: a key entry of an unknown kind.

    Examples:
        >>> import jax
        >>> from fbp.checkpoint import tensor_name
        >>> tree = {"params": ({"w": 1, "b": 2},), "step": 3}
        >>> [tensor_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]
        ['params/0/b', 'params/0/w', 'step']
    """
    return _path_name(path)


def _named_leaves(tree) -> list[tuple[str, Any]]:
    named = [(tensor_name(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)]
    try:
        _check_unique([n for n, _ in named])
    except ValueError as e:
        raise ValueError(f"checkpoint: {e}") from None
    return named


# --- writing ----------------------------------------------------------------------------------

def to_bytes(tree: Any, metadata: dict | None = None) -> bytes:
    """The checkpoint file's bytes: the leaves by name, the metadata JSON, their checksums.

    Args:
        tree: a pytree of arrays (jax or NumPy; a typed PRNG key must be saved as its
            `jax.random.key_data`).
        metadata: JSON-able data to keep with it (default: none).

    Returns:
        The safetensors file's bytes.

    Raises:
        ValueError: two leaves get the same name (dict keys such as 1 and "1").
        TypeError: a leaf that is a typed PRNG key array, or a key entry of an unknown kind.
    """
    return _encode(dict(_named_leaves(tree)), metadata, FORMAT)


def save(path: str | os.PathLike, tree: Any, metadata: dict | None = None, *,
         previous: str | os.PathLike | None = None) -> None:
    """Save a pytree of arrays (and JSON-able metadata) to a safetensors file, atomically;
    with `previous`, the file it replaces is kept there (see `fbp.io.write_atomic`).

    Args:
        path: the file to write (replaced once the new one is whole on disk).
        tree: a pytree of arrays.
        metadata: JSON-able data to keep with it (default: none).
        previous: where to keep the file `path` held before, if any.

    Raises:
        ValueError: two leaves get the same name.
        TypeError: a leaf that is a typed PRNG key array.
        OSError: the write failed (the file at `path` is left as it was).

    Examples:
        >>> import os, tempfile, numpy as np
        >>> from fbp import checkpoint
        >>> tree = {"params": ({"w": np.ones((2, 2), np.float32)},), "step": np.int32(3)}
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "run.safetensors")
        ...     checkpoint.save(path, tree, {"epoch": 1})
        ...     stored, metadata = checkpoint.read(path)        # tensors by name, verified
        ...     restored, _ = checkpoint.load(path, tree)       # in the template's structure
        >>> sorted(stored), metadata
        (['params/0/w', 'step'], {'epoch': 1})
        >>> restored["params"][0]["w"].tolist(), int(restored["step"])
        ([[1.0, 1.0], [1.0, 1.0]], 3)
    """
    write_atomic(path, to_bytes(tree, metadata), previous=previous)


# --- reading ----------------------------------------------------------------------------------

def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors by name, metadata) of a checkpoint, every checksum verified.

    Raises `CheckpointError` for a file that is not whole and unchanged since fbp wrote it
    (FileNotFoundError / PermissionError pass through).

    Args:
        path: the checkpoint file.

    Returns:
        (tensors, metadata): NumPy arrays by tensor name, and the metadata saved with them.

    Raises:
        CheckpointError: the file is truncated, damaged or edited, or is not a checkpoint
            (a params file of `fbp.io.save_params` is named as such).
        FileNotFoundError: there is no file at `path`.
    """
    return _decode(path, FORMAT, "checkpoint", _params_file_hint)


def _params_file_hint(found: str | None) -> str:
    if isinstance(found, str) and found.startswith("fbp-params/"):
        return (". It is a params file written by fbp.io.save_params (for inference): read it "
                "with fbp.io.load_params")
    return ""


def unflatten(path: str | os.PathLike, stored: dict[str, np.ndarray], template: Any) -> Any:
    """The tensors of `read` in the structure of `template` (names, shapes and dtypes must
    match; a mismatch is a ValueError naming the file, the leaf and both sides).

    Args:
        path: the file the tensors came from (for the error messages).
        stored: the tensors by name, as `read` returns them.
        template: a pytree of the structure, shapes and dtypes expected (arrays, or
            anything with `shape` and `dtype`).

    Returns:
        The template's structure holding the stored NumPy arrays.

    Raises:
        ValueError: a tensor missing or not expected, or of another shape or dtype.
    """
    named = _named_leaves(template)
    names = [n for n, _ in named]
    if set(names) != set(stored):
        raise ValueError(f"checkpoint {path} does not match this network/optimizer: it holds "
                         f"{sorted(set(stored) - set(names))[:5]} not expected, and lacks "
                         f"{sorted(set(names) - set(stored))[:5]}")
    leaves = []
    for name, like in named:
        arr, like = stored[name], np.asarray(like)
        if arr.shape != like.shape or arr.dtype != like.dtype:
            raise ValueError(f"checkpoint {path}: {name} has shape {arr.shape} and dtype "
                             f"{arr.dtype}, expected {like.shape} and {like.dtype}")
        leaves.append(arr)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def load(path: str | os.PathLike, template: Any) -> tuple[Any, dict]:
    """Load a checkpoint, verified, into the structure of `template`: (tree, metadata).

    `read` then `unflatten` (see `save` for an example).

    Args:
        path: the checkpoint file.
        template: a pytree of the structure, shapes and dtypes expected.

    Returns:
        (tree, metadata): the template's structure holding the stored NumPy arrays, and
            the metadata saved with them.

    Raises:
        CheckpointError: the file is truncated, damaged or edited, or is not a checkpoint.
        ValueError: the file does not fit the template.
        FileNotFoundError: there is no file at `path`.
    """
    stored, metadata = read(path)
    return unflatten(path, stored, template), metadata


# --- where a run writes ----------------------------------------------------------------------

def _writable(folder: Path) -> bool:
    mode = os.W_OK | os.X_OK
    if os.access in os.supports_effective_ids:
        return os.access(folder, mode, effective_ids=True)
    return os.access(folder, mode)


def check_output_dir(path: str | os.PathLike) -> Path:
    """Check, before any work, that `path` is a folder that exists or can be made, and that
    files can be written there. ValueError (a file in the way) or PermissionError, both
    naming the path; nothing is created.

    Args:
        path: the folder.

    Returns:
        `path`, as a Path.

    Raises:
        ValueError: `path`, or a folder above it, is a file.
        PermissionError: the folder (or the nearest existing one above it) is not writable.
    """
    path = Path(path)
    try:
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    except PermissionError as e:  # a folder on the way that cannot be searched
        raise PermissionError(f"{path} is not writable (permission denied: {e.filename})") from None
    if existing == path and not path.is_dir():
        raise ValueError(f"{path} is a file, not a directory")
    if not existing.is_dir():
        raise ValueError(f"{path} cannot be created: {existing} is a file")
    if not _writable(existing):
        where = "" if existing == path else f": no permission to create it in {existing}"
        raise PermissionError(f"{path} is not writable (permission denied{where})")
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Check, before any work, that a file can be written (atomically) at `path`.

    Args:
        path: the file.

    Returns:
        `path`, as a Path.

    Raises:
        ValueError: `path` is a folder, or a file is in the way of its folder.
        PermissionError: its folder is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a file")
    try:
        check_output_dir(path.parent)
    except ValueError as e:
        raise ValueError(f"cannot write {path}: {e}") from None
    except PermissionError as e:
        raise PermissionError(f"cannot write {path}: {e}") from None
    return path
