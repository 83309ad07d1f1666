"""Checkpoints: a pytree of arrays in one safetensors file that checks itself.

No pickle: safetensors stores raw little-endian tensors by name and a string-to-string
metadata header. fbp names each tensor by its path in the pytree, built from the key
entries themselves ("state/params/0/w"), not from `jax.tree_util.keystr`'s format, so the
names stay the same across JAX versions. The header also holds the sha256 of every tensor
(with its dtype and shape) and of the metadata JSON; `read` and `load` recompute them all
and refuse a truncated, bit-flipped or hand-edited file with a `CheckpointError` that
names the file and what is wrong. (A checksum, not a signature: it catches damage, not
someone who recomputes it.)

A write goes to a temporary file in the same folder, is flushed to disk, then renamed over
the old file, and the folder is flushed, so a checkpoint on disk is always whole. With
`save(..., previous=P)` the file it replaces is first renamed to P: the last two
checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey
from safetensors import safe_open
from safetensors.numpy import save as _safetensors_bytes

FORMAT = "fbp-checkpoint/2"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: truncated, damaged, edited, or not fbp's."""


# --- names ------------------------------------------------------------------------------------

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
        raise TypeError(f"checkpoint: cannot name a pytree key of type {type(entry).__name__}")
    return name.replace("%", "%25").replace("/", "%2F")  # "/" only ever separates entries


def tensor_name(path) -> str:
    """The name of a leaf from its key path: entries joined by "/" ("state/params/0/w");
    "." for a tree that is a single leaf."""
    return "/".join(_key_name(entry) for entry in path) or "."


def _named_leaves(tree) -> list[tuple[str, Any]]:
    named = [(tensor_name(p), leaf) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)]
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"checkpoint: two leaves get the same name {twice[:3]} (a dict with "
                         "keys such as 1 and '1'); rename them")
    return named


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)).hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- writing ----------------------------------------------------------------------------------

def to_bytes(tree: Any, metadata: dict | None = None) -> bytes:
    """The checkpoint file's bytes: the leaves by name, the metadata JSON, their checksums."""
    # np.require, not np.ascontiguousarray: that one makes a scalar (1,)
    tensors = {name: np.require(np.asarray(leaf), requirements="C")
               for name, leaf in _named_leaves(tree)}
    meta = json.dumps(metadata or {})
    table = {name: {"dtype": a.dtype.name, "shape": list(a.shape), "sha256": _digest(a)}
             for name, a in tensors.items()}
    header = {"format": FORMAT, "fbp": meta, "fbp.sha256": _text_digest(meta),
              "fbp.tensors": json.dumps(table)}
    return _safetensors_bytes(tensors, metadata=header)


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *,
                       previous: str | os.PathLike | None = None) -> None:
    """Write `data` to `path` by temp file + fsync + rename; `path` is never half-written.

    With `previous`, an existing file at `path` is first renamed to `previous` (replacing
    it), then the new one takes its place: write new to temp, fsync, rename old → previous,
    rename temp → path, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def save(path: str | os.PathLike, tree: Any, metadata: dict | None = None, *,
         previous: str | os.PathLike | None = None) -> None:
    """Save a pytree of arrays (and JSON-able metadata) to a safetensors file, atomically;
    with `previous`, the file it replaces is kept there (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, to_bytes(tree, metadata), previous=previous)


# --- reading ----------------------------------------------------------------------------------

def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors by name, metadata) of a checkpoint, every checksum verified.

    Raises `CheckpointError` for a file that is not whole and unchanged since fbp wrote it
    (FileNotFoundError / PermissionError pass through)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            stored = {name: f.get_tensor(name) for name in f.keys()}
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # SafetensorError, and whatever a damaged header makes numpy say
        raise CheckpointError(f"checkpoint {path} is damaged or truncated: safetensors cannot "
                              f"read it ({type(e).__name__}: {e})") from e

    def refuse(what: str):
        raise CheckpointError(f"checkpoint {path} {what}; it was damaged or edited after fbp "
                              "wrote it")

    if header.get("format") != FORMAT:
        fmt = header.get("format")
        raise CheckpointError(f"checkpoint {path} is not an fbp checkpoint of format {FORMAT} "
                              f"(format {fmt!r}" + (", an older fbp's file without checksums"
                                                    if fmt is None and "fbp" in header else "")
                              + "); it cannot be verified")
    meta = header.get("fbp")
    if meta is None or _text_digest(meta) != header.get("fbp.sha256"):
        refuse("has metadata that does not match its checksum")
    try:
        table = json.loads(header.get("fbp.tensors", ""))
        metadata = json.loads(meta)
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


def unflatten(path: str | os.PathLike, stored: dict[str, np.ndarray], template: Any) -> Any:
    """The tensors of `read` in the structure of `template` (names, shapes and dtypes must
    match; a mismatch is a ValueError naming the file, the leaf and both sides)."""
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
    """Load a checkpoint, verified, into the structure of `template`: (tree, metadata)."""
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
    naming the path; nothing is created."""
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
    """Check, before any work, that a file can be written (atomically) at `path`."""
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
