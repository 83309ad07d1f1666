"""Checkpoints: a pytree of arrays in one safetensors file, written atomically.

No pickle: safetensors stores raw little-endian tensors by name (the pytree path) and a
string-to-string metadata header. A write goes to a temporary file in the same folder,
is flushed to disk, then renamed over the old file, so a checkpoint on disk is always
whole: the previous one stays until the new one is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as _safetensors_bytes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` by temp file + fsync + rename; `path` is never half-written."""
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
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> None:
    """Save a pytree of arrays (and JSON-able metadata) to a safetensors file, atomically."""
    tensors = {jax.tree_util.keystr(p): np.ascontiguousarray(np.asarray(leaf))
               for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    header = {"fbp": json.dumps(metadata or {})}
    atomic_write_bytes(path, _safetensors_bytes(tensors, metadata=header))


def load(path: str | os.PathLike, template: Any) -> tuple[Any, dict]:
    """Load a checkpoint into the structure of `template` (names, shapes and dtypes must match)."""
    path = Path(path)
    with safe_open(str(path), framework="numpy") as f:
        metadata = json.loads((f.metadata() or {}).get("fbp", "{}"))
        stored = {name: f.get_tensor(name) for name in f.keys()}
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    names = [jax.tree_util.keystr(p) for p, _ in paths_and_leaves]
    if set(names) != set(stored):
        raise ValueError(f"checkpoint {path} does not match this network/optimizer: it holds "
                         f"{sorted(set(stored) - set(names))[:5]} not expected, and lacks "
                         f"{sorted(set(names) - set(stored))[:5]}")
    leaves = []
    for name, (_, like) in zip(names, paths_and_leaves):
        arr = stored[name]
        like = np.asarray(like)
        if like.ndim == 0 and arr.shape == (1,):  # safetensors' numpy reader gives scalars as (1,)
            arr = arr.reshape(())
        if arr.shape != like.shape or arr.dtype != like.dtype:
            raise ValueError(f"checkpoint {path}: {name} has shape {arr.shape} and dtype "
                             f"{arr.dtype}, expected {like.shape} and {like.dtype}")
        leaves.append(arr)
    return jax.tree_util.tree_unflatten(treedef, leaves), metadata
