"""Training: forward → loss → backward → update, step after step, epoch after epoch.

    state = init_state(net, optimizer, key, input_shape)
    step = make_step(net, loss, optimizer, grad="manual")     # or grad="auto": jax.grad
    state, metrics = step(state, x_batch, y_batch)            # one jitted update θ ← θ + u(g)

`fit` runs whole epochs of such steps — full-batch (batch_size=None), stochastic
(batch_size=1) or mini-batch descent — until a stopping criterion, each epoch as one
compiled loop (`lax.scan` over the shuffled batches' row indices) on the device, on one
device, several, or the devices of several processes (`devices=`).
"""

from __future__ import annotations

import collections.abc
import hashlib
import inspect
import math
import os
import signal
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike
from tqdm import tqdm  # plain text bars: no notebook-widget warnings

from fbp import _diagnostics, _tape, checkpoint
from fbp._layer import (
    Layer,
    Params,
    PyTree,
    State,
    fwd_with_state,
    init_with_state,
    stateful_layers,
)
from fbp.backprop import _check_net_and_loss, compute_dtype, training_pass
from fbp.layers.embedding import check_token_ids
from fbp.losses import Loss, check_labels

CHECKPOINT_FILE = "checkpoint.safetensors"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.safetensors"  # the one before, kept by `fit`

Batch = tuple[ArrayLike, ArrayLike]
"""One `(x, y)` pair: inputs and targets with the same number of rows (the first axis)."""
Stream = Iterable[Batch] | Callable[[], Iterable[Batch]] | Callable[[int], Iterable[Batch]]
"""`(x, y)` batches, passed over once each epoch: a list (or tuple) of them; a function
returning an iterator of them, called each epoch (with the epoch, 0, 1, ..., when it takes
one required argument); or a re-iterable object whose `iter()` starts a fresh pass (a grain
dataset or `DataLoader`). A one-shot iterator (a generator object) is refused at run time
(TypeError), which typing cannot express: it would be empty after the first epoch."""
Data = Batch | Stream
"""What `fit` trains on: an `(x, y)` pair of whole arrays, or a `Stream` of batches."""


class NonFiniteError(FloatingPointError):
    """`fit` stopped: the training loss or the parameters became NaN/Inf. `.state` is the
    last finite TrainState (the state before the bad epoch), `.history` the history up to it
    (`history["stopped"] == "nonfinite"`).

    A `FloatingPointError`; the checkpoint in fit's `checkpoint_dir`, if any, is left as it
    was.

    Attributes:
        state (TrainState): the last finite state: the one the bad epoch began from.
        history (dict): fit's history up to that state (the bad epoch is not in it), with
            `history["stopped"] == "nonfinite"`; with `diagnostics_every`, its diagnostics
            keep the bad epoch's records, which show where it blew up.

    Examples:
        >>> import numpy as np, optax
        >>> from fbp import layers as L, losses
        >>> from fbp.train import NonFiniteError, fit
        >>> x, y = np.ones((8, 3), np.float32), np.full((8, 1), 1e3, np.float32)
        >>> try:                            # a learning rate far too large: the loss overflows
        ...     fit(L.dense(1), losses.mse, optax.sgd(1e30), (x, y), epochs=3, progress=False)
        ... except NonFiniteError as e:
        ...     print(e.history["stopped"], e.history["epoch"], int(e.state.step))
        nonfinite [1] 1
    """

    def __init__(self, message: str, *, state, history: dict):
        super().__init__(message)
        self.state, self.history = state, history


class Interrupted(KeyboardInterrupt):
    """`fit` was interrupted (Ctrl-C). `.state` is the TrainState after the last complete
    epoch, `.history` its history (`history["stopped"] == "interrupted"`).

    A `KeyboardInterrupt`, so code that does not catch it stops as on any Ctrl-C.

    Attributes:
        state (TrainState): the state after the last complete epoch; with a
            `checkpoint_dir` (within one process) it is written there first, so that the
            same fit call, run again, resumes from it.
        history (dict): its history, with `history["stopped"] == "interrupted"`.

    Examples:
        A Ctrl-C in the third epoch, played here by a stream of batches that raises
        KeyboardInterrupt when asked for that epoch's batches:

        >>> import numpy as np, optax
        >>> from fbp import layers as L, losses
        >>> from fbp.train import Interrupted, fit
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 3, 16)
        >>> def batches(epoch):
        ...     if epoch == 2:
        ...         raise KeyboardInterrupt
        ...     yield x, y
        >>> net = L.serial(L.dense(4), L.relu(), L.dense(3))
        >>> try:
        ...     fit(net, losses.softmax_cross_entropy, optax.sgd(0.1), batches, epochs=5,
        ...         progress=False)
        ... except Interrupted as e:
        ...     print(e.history["stopped"], e.history["epoch"], int(e.state.step))
        interrupted [1, 2] 2
    """

    def __init__(self, message: str, *, state, history: dict):
        super().__init__(message)
        self.state, self.history = state, history


class _Best(TypedDict):
    """fit's best epoch by validation loss (with val_data): its loss, the epochs since it,
    and its (params, net state) — None until a validation loss is the best."""

    val_loss: float
    bad_epochs: int
    params: tuple[Params, State] | None


class TrainState(NamedTuple):
    """Everything that changes during training (a pytree).

    params are trained by the optimizer; net_state (the running statistics of batch_norm,
    {} for a stateless net) is set by each training pass and never touched by the
    optimizer.

    Attributes:
        params: the parameters, a pytree as the net's `init` makes it.
        net_state: the net's state: batch_norm's running statistics, `{}` for a stateless
            net.
        opt_state: the optimizer's state, of `params` only.
        step: the number of steps taken, an int32 scalar array.
        key: the PRNG key that dropout draws from; split once per step.

    Examples:
        >>> import jax, optax
        >>> from fbp import layers as L
        >>> from fbp.train import init_state
        >>> state = init_state(L.dense(2), optax.sgd(0.1), jax.random.key(0), (4, 3))
        >>> state._fields
        ('params', 'net_state', 'opt_state', 'step', 'key')
        >>> int(state.step), state.net_state
        (0, {})
    """

    params: Params
    net_state: State
    opt_state: optax.OptState
    step: jax.Array
    key: jax.Array  # for dropout; split once per step


def init_state(net: Layer, optimizer: optax.GradientTransformation, key: jax.Array,
               input_shape: tuple[int, ...]) -> TrainState:
    """Initial parameters (shapes inferred from `input_shape`, batch first), the net's state
    and the optimizer's state (of the params only).

    Args:
        net: the network.
        optimizer: an optax optimizer, e.g. `optax.adam(1e-3)`; its state is built for the
            parameters.
        key: a PRNG key, e.g. `jax.random.key(0)`, split in two: one draws the
            parameters, the other becomes the state's `key` (for dropout).
        input_shape: the shape of a batch of inputs, batch first: (batch, features) for a
            dense net, (batch, height, width, channels) for conv2d; the parameters do not
            depend on the batch size.

    Returns:
        The `TrainState` at step 0.

    Raises:
        ValueError: `input_shape` does not suit the net (each layer checks the shape it
            receives and names the mismatch, e.g. conv2d one of rank other than 4).

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from fbp import layers as L
        >>> from fbp.train import init_state
        >>> net = L.serial(L.dense(4), L.relu(), L.dense(2))
        >>> state = init_state(net, optax.adam(1e-3), jax.random.key(0), (8, 3))
        >>> jax.tree.map(jnp.shape, state.params)   # one entry per layer; relu has none
        ({'b': (4,), 'w': (3, 4)}, {}, {'b': (2,), 'w': (4, 2)})
        >>> int(state.step), state.net_state
        (0, {})
    """
    init_key, key = jax.random.split(key)
    _, params, net_state = init_with_state(net, init_key, input_shape)
    return TrainState(params, net_state, optimizer.init(params), jnp.zeros([], jnp.int32), key)


def _train_step(net: Layer, loss: Loss, optimizer, grad: str, precision: str | None = None,
                mesh: Mesh | None = None, l2: float = 0.0, grad_norm: bool = False,
                diagnostics: _diagnostics.Spec | None = None, histograms: bool = False):
    """The un-jitted step; `grad` picks how ∂L/∂θ is computed and nothing else.

    With a `mesh`, the batch is split along its first axis over the mesh's data axis while
    parameters and optimizer state are replicated; the mean over the batch in the loss
    becomes, in XLA's SPMD partitioning, a sum across devices.

    With a diagnostics `spec`, this is the recorded step: its pass runs recorded layer by
    layer, and its metrics hold the per-layer statistics (with `histograms`, their
    histograms too) and the weights' update ratios (`fbp._diagnostics`). `fit` runs it
    every k steps and the plain step in between.
    """
    pass_ = training_pass(net, loss, grad=grad, precision=precision, l2=l2)
    # the recorded manual pass is the manual pass itself when nothing is cast or added
    reuse = grad == "manual" and compute_dtype(precision) is None and not l2

    def step(state: TrainState, x, y) -> tuple[TrainState, dict[str, jax.Array]]:
        if mesh is not None:
            x, y = shard_batch(mesh, x), shard_batch(mesh, y)
        key, dropout_key = jax.random.split(state.key)

        def plain():
            return pass_(state.params, x, y, key=dropout_key, train=True, state=state.net_state)

        if diagnostics is None:
            value, grads, net_state = plain()
        else:
            tape = _tape.recorded_pass(net, loss, state.params, x, y, key=dropout_key,
                                       train=True, state=state.net_state)
            stats = _diagnostics.layer_stats(tape, diagnostics, histograms=histograms)
            root = tape.calls[""]
            value, grads, net_state = ((tape.loss, root.grads, root.new_state) if reuse
                                       else plain())
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": value}
        if grad_norm:  # one more pass over every gradient: only when asked for
            metrics["grad_norm"] = global_norm(grads)
        if diagnostics is not None:
            metrics["diagnostics"] = {
                "stats": stats, "update_ratio": _diagnostics.update_ratios(
                    diagnostics, state.params, params), "step": state.step}
        return TrainState(params, net_state, opt_state, state.step + 1, key), metrics

    return step


def global_norm(tree: PyTree) -> jax.Array:
    """‖g‖₂ over every leaf of a pytree: √(Σ g²).

    Args:
        tree: arrays, e.g. gradients or parameters, in any nesting of tuples, lists and
            dicts.

    Returns:
        The norm, a scalar array (0 for a tree without leaves).

    Examples:
        >>> import jax.numpy as jnp
        >>> from fbp.train import global_norm
        >>> float(global_norm({"a": jnp.array([3.0]), "b": [jnp.array([[4.0]])]}))  # √(9 + 16)
        5.0
    """
    return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(tree)))


def data_mesh(devices: int | Sequence[jax.Device]) -> Mesh:
    """A one-axis mesh ("data") over `devices` (a sequence of jax devices, or a count).

    Args:
        devices: a count n, for the first n of `jax.devices()`, or the devices
            themselves; on several processes (after `jax.distributed.initialize`),
            `jax.devices()` holds those of all of them.

    Returns:
        A mesh of shape (len(devices),), its one axis named "data".

    Raises:
        ValueError: a count below 1 or above `jax.device_count()`, or no devices.

    Examples:
        >>> from fbp.train import data_mesh
        >>> mesh = data_mesh(1)
        >>> mesh.axis_names, mesh.devices.size
        (('data',), 1)
    """
    if isinstance(devices, int):
        if not 0 < devices <= jax.device_count():
            raise ValueError(f"devices={devices}: this process sees {jax.device_count()} "
                             "device(s)")
        devices = jax.devices()[:devices]
    devices = list(devices)
    if not devices:
        raise ValueError("devices: expected at least one device")
    return Mesh(np.array(devices), ("data",))


def shard_batch(mesh: Mesh, a: jax.Array, axis: int = 0) -> jax.Array:
    """Constrain `a` to be split along `axis` over the mesh's data axis (inside jit).

    Args:
        mesh: the mesh, e.g. from `data_mesh`; its first axis is the data axis.
        a: the array to split, typically a batch of inputs or targets being traced by
            `jax.jit`.
        axis: the axis to split (default 0, the batch axis); its size must divide by the
            mesh's device count.

    Returns:
        `a`, constrained to equal slices along `axis`, one per device of the mesh; XLA
            partitions the computation on it accordingly.

    Raises:
        ValueError: `a.shape[axis]` does not divide by the number of devices of the mesh.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from fbp.train import data_mesh, shard_batch
        >>> mesh = data_mesh(1)
        >>> double = jax.jit(lambda a: 2 * shard_batch(mesh, a))
        >>> double(jnp.ones((4, 3))).shape
        (4, 3)
    """
    n = mesh.devices.size
    if a.shape[axis] % n:
        raise ValueError(f"batch size {a.shape[axis]} does not divide by the {n} devices of "
                         "the mesh; choose a batch size that is a multiple of the device count")
    spec = [None] * a.ndim
    spec[axis] = mesh.axis_names[0]
    return lax.with_sharding_constraint(a, NamedSharding(mesh, P(*spec)))


def replicate(mesh: Mesh | None, tree: PyTree) -> PyTree:
    """Put a pytree on every device of the mesh (a no-op without a mesh).

    On a mesh that spans several processes (multi-controller JAX, after
    `jax.distributed.initialize`), every process calls this with the same values and each
    puts its copy on its own devices of the mesh; the result is one global array per leaf.

    Args:
        mesh: the mesh, e.g. from `data_mesh`, or None.
        tree: arrays, e.g. a `TrainState` before `make_step(..., mesh=mesh)`
            runs on it; on several processes, the same values in each.

    Returns:
        The tree, each leaf a jax array replicated on every device of the
            mesh; `tree` itself when `mesh` is None.

    Examples:
        >>> import numpy as np
        >>> from fbp.train import data_mesh, replicate
        >>> tree = {"w": np.ones((2, 3), np.float32)}
        >>> on_mesh = replicate(data_mesh(1), tree)
        >>> on_mesh["w"].shape, on_mesh["w"].sharding.is_fully_replicated
        ((2, 3), True)
        >>> replicate(None, tree) is tree
        True
    """
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, P())
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(lambda a: _global_replica(a, sharding), tree)


def _global_replica(a, sharding: NamedSharding) -> jax.Array:
    """`a` (the same on every process) as a global array replicated over `sharding`'s mesh."""
    if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(sharding, a.ndim):
        return a
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_global_replica(jax.random.key_data(a), sharding),
                                        impl=jax.random.key_impl(a))
    host = _host(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _host(a) -> np.ndarray:
    """A device array's value on this host: a replicated array's local copy, or the whole of
    an array split over the devices of several processes (gathered from all of them, so every
    process must call this for it)."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


def _local(tree):
    """A pytree of global arrays (the parameters a multi-process fit returns) as arrays on
    this process's first device, so that a jitted program can take them with local data."""
    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return a
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(a)),
                                            impl=jax.random.key_impl(a))
        return jnp.asarray(_host(a)) if not a.is_fully_replicated else a.addressable_data(0)
    return jax.tree_util.tree_map(one, tree)


def _spans_processes(mesh: Mesh | None) -> bool:
    return mesh is not None and any(d.process_index != jax.process_index()
                                    for d in mesh.devices.flat)


def _any_process(flag: bool, mesh: Mesh | None) -> bool:
    """Whether `flag` holds in any of the processes the mesh spans (a collective: all of
    them call this); `flag` itself on a mesh within one process."""
    if not _spans_processes(mesh):
        return bool(flag)
    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


def make_step(net: Layer, loss: Loss, optimizer: optax.GradientTransformation, *,
              grad: str = "manual", precision: str | None = None, mesh: Mesh | None = None,
              l2: float = 0.0, grad_norm: bool = False
              ) -> Callable[[TrainState, Any, Any],
                                            tuple[TrainState, dict[str, jax.Array]]]:
    """A jitted `step(state, x, y) -> (state, metrics)`; the state's buffers are donated.

    metrics: `loss` (before the update), and with grad_norm=True `grad_norm` (‖g‖₂ over all
    parameters; it costs a pass over the gradients, 1–5% of a step on CPU).
    precision="bf16" computes forward and backward in bfloat16 against float32 master
    parameters (see `fbp.value_and_grad`). mesh: data-parallel over its devices (put the
    state there with `replicate(mesh, state)`); the batch size must divide by their count.
    l2=λ adds λ/2·Σ‖W‖² over the weight matrices and kernels to the loss (`fbp.l2_penalty`).

    Args:
        net: the network.
        loss: the loss, e.g. `losses.mse` or `losses.softmax_cross_entropy`.
        optimizer: an optax optimizer; the state's `opt_state` must be its state (as
            `init_state` builds it).
        grad: "manual" (default: the hand-written backward passes) or "auto"
            (`jax.grad`); nothing else differs.
        precision: None (default: compute in the parameters' dtype) or "bf16".
        mesh: data-parallel over this mesh's devices (`data_mesh`); None (default): no
            mesh.
        l2: λ ≥ 0 of the penalty λ/2·Σ‖W‖²; default 0.0, none.
        grad_norm: also report ‖g‖₂ as `metrics["grad_norm"]`; default False.

    Returns:
        `step(state, x, y) -> (state, metrics)`, jitted: one update on the batch `x`, `y`
            (batch first). The state passed in is donated (its buffers may be reused), so
            keep only the one it returns; `metrics["loss"]` is the loss before the update,
            a scalar array.

    Raises:
        TypeError: `net` is not an fbp Layer, or `loss` not an fbp Loss.
        ValueError: an unknown `grad` or `precision`, or a negative `l2`; and, when
            `step` is called with a mesh, a batch size that does not divide by its
            device count.

    Examples:
        >>> import jax, numpy as np, optax
        >>> from fbp import layers as L, losses
        >>> from fbp.train import init_state, make_step
        >>> net = L.dense(2)
        >>> state = init_state(net, optax.sgd(0.1), jax.random.key(0), (4, 3))
        >>> step = make_step(net, losses.mse, optax.sgd(0.1))
        >>> x, y = np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32)
        >>> state, metrics = step(state, x, y)
        >>> int(state.step), metrics["loss"].shape
        (1, ())
    """
    return jax.jit(_train_step(net, loss, optimizer, grad, precision, mesh, l2, grad_norm),
                   donate_argnums=0)


def _params_and_state(fn_name: str, net: Layer, params_or_state, state):
    """(params, net state) from a TrainState, or from bare params (+ state= for a stateful net);
    arrays of a mesh over several processes as this process's copy (`_local`)."""
    if isinstance(params_or_state, TrainState):
        if state is not None:
            raise ValueError(f"{fn_name}: got a TrainState and state=; the TrainState "
                             "already carries the net's state")
        return _local((params_or_state.params, params_or_state.net_state))
    if net.stateful and state is None:
        raise ValueError(f"{fn_name}: the net keeps running statistics "
                         f"({', '.join(stateful_layers(net))}); pass the TrainState that fit "
                         "returns, or params with state=")
    return _local((params_or_state, {} if state is None else state))


def evaluate(net: Layer, loss: Loss, params: Params | TrainState, x: ArrayLike | Stream,
             y: ArrayLike | None = None, *,
             state: State = None, batch_size: int | None = 4096) -> dict[str, float]:
    """Loss, and accuracy when `y` holds integer class labels, with training off.

    `params`: the TrainState that `fit` returns, or bare params (with `state=` for a
    stateful net). The data: arrays `x, y`, or, with `y` left out, a stream of (x, y)
    batches as `fit` takes one (a list of them, a function returning an iterator of them,
    or a re-iterable dataset; one pass, batches of any sizes, `batch_size` unused). The
    arrays run through the net `batch_size` rows at a time (None: all at once), each batch
    a jitted pass (two programs at most: the full batches and the last partial one); the
    results are the batch means weighted by the rows they cover (by the kept labels for a
    loss with `ignore_index`), so they equal the full-batch values (a stream's, up to
    rounding, those of its batches concatenated). Token ids outside an input embedding's
    vocabulary and labels outside [0, classes) are refused (ValueError) before anything runs
    (in a stream, before the batch that holds them). With the state of a fit over several
    processes, each process runs on its own first device, with its copy of the parameters,
    on the data it passes.

    Args:
        net: the network.
        loss: the loss to report, e.g. the one trained with.
        params: the `TrainState` that `fit` returns, or bare parameters.
        x: the inputs, (n, ...) with n > 0 (floating x is cast to the
            parameters' dtype), or, with `y` left out, a stream of (x, y) batches.
        y: the targets, (n, ...): integer class labels or arrays shaped
            like the net's output; None (default) when `x` is a stream.
        state: the net's state, for bare `params` of a stateful net (batch_norm); None
            (default) otherwise.
        batch_size: how many rows of the arrays each jitted pass takes (default 4096;
            None: all at once); it bounds the memory, not the result. Unused for a stream.

    Returns:
        `{"loss": ...}`, and `"accuracy"` (the fraction of argmax predictions equal to
            their label, among the labels not ignored) when `y` holds integer class
            labels; Python floats.

    Raises:
        ValueError: `batch_size` is not a positive int or None; x and y are empty or of
            different lengths; token ids outside an input embedding's vocabulary, or
            labels outside [0, classes); a stream that gives no batches, or whose
            batches change their example shape or hold NaN/Inf; bare `params` of a
            stateful net without `state=`, or a TrainState with `state=`.
        TypeError: `x` alone is not a stream of batches (a one-shot iterator is refused:
            pass a function that returns one), or a stream gives something other than
            an (x, y) pair of numeric arrays.

    Examples:
        >>> import jax, numpy as np, optax
        >>> from fbp import layers as L, losses
        >>> from fbp.train import evaluate, init_state
        >>> net = L.dense(3)
        >>> state = init_state(net, optax.sgd(0.1), jax.random.key(0), (8, 4))
        >>> x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
        >>> y = np.arange(8) % 3
        >>> whole = evaluate(net, losses.softmax_cross_entropy, state, x, y)
        >>> batches = [(x[:4], y[:4]), (x[4:], y[4:])]
        >>> streamed = evaluate(net, losses.softmax_cross_entropy, state, batches)
        >>> sorted(whole), abs(whole["loss"] - streamed["loss"]) < 1e-6
        (['accuracy', 'loss'], True)
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, int) or batch_size <= 0):
        raise ValueError(f"evaluate: batch_size must be a positive int or None (all at once), "
                         f"got {batch_size!r}")
    params, net_state = _params_and_state("evaluate", net, params, state)
    if y is None:
        stream = _stream_of("evaluate", x)
        if stream is None:
            raise TypeError(f"evaluate: got x without y; expected arrays x and y, or, alone, a "
                            f"stream of (x, y) batches (a list of them, a function returning "
                            f"an iterator of them, or a re-iterable dataset), got "
                            f"{type(x).__name__}")
        return _reduced(jax.device_get(_evaluate_stream(net, loss, params, net_state, stream,
                                                        0)))
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"evaluate: expected x and y with the same number (> 0) of examples, "
                         f"got shapes {x.shape} and {y.shape}")
    check_token_ids("evaluate: x", net, x)
    step = len(x) if batch_size is None else min(batch_size, len(x))
    x_first = _as_param_dtype(x[:step], params)
    out_shape = jax.eval_shape(_predict_fn(net), params, net_state, x_first).shape
    _check_labels("evaluate: y", y, out_shape, loss)
    metrics = _evaluate(net, loss)
    return _reduced(jax.device_get([  # every batch dispatched before one transfer back
        metrics(params, net_state, x_first if i == 0 else _as_param_dtype(x[i:i + step], params),
                _as_param_dtype(y[i:i + step], params)) for i in range(0, len(x), step)]))


def _reduced(sums: list) -> dict[str, float]:
    """evaluate's result from its batches' sums (`_evaluate`, on the host)."""
    out = {"loss": (sum(float(b["loss"]) for b in sums)
                    / max(sum(float(b["loss_weight"]) for b in sums), 1.0))}
    if "correct" in sums[0]:
        counted = sum(int(b["counted"]) for b in sums)
        out["accuracy"] = sum(int(b["correct"]) for b in sums) / counted if counted else math.nan
    return out


def predict(net: Layer, params: Params | TrainState, x: ArrayLike, *,
            state: State = None) -> jax.Array:
    """net(params, x) with training off; floating x is cast to the parameters' dtype.

    `params`: the TrainState that `fit` returns, or bare params (with `state=` for a
    stateful net). Token ids outside an input embedding's vocabulary are refused. With the
    state of a fit over several processes, each process runs on its own first device and
    gets an array there.

    Args:
        net: the network.
        params: the `TrainState` that `fit` returns, or bare parameters.
        x: the inputs, batch first, e.g. (n, features) or NHWC images.
        state: the net's state, for bare `params` of a stateful net (batch_norm); None
            (default) otherwise.

    Returns:
        The net's output for `x`, e.g. (n, classes) logits, from one jitted pass with
            training off (no dropout; batch_norm uses its running statistics).

    Raises:
        ValueError: `x` does not suit the net (the layer names the mismatch), or holds
            token ids outside an input embedding's vocabulary; bare `params` of a
            stateful net without `state=`, or a TrainState with `state=`.

    Examples:
        >>> import jax, numpy as np, optax
        >>> from fbp import layers as L
        >>> from fbp.train import init_state, predict
        >>> net = L.dense(2)
        >>> state = init_state(net, optax.sgd(0.1), jax.random.key(0), (4, 3))
        >>> predict(net, state, np.ones((5, 3), np.float32)).shape
        (5, 2)
    """
    params, net_state = _params_and_state("predict", net, params, state)
    x = np.asarray(x)
    check_token_ids("predict: x", net, x)
    return _predict_fn(net)(params, net_state, _as_param_dtype(x, params))


# The jitted programs of predict and evaluate, per net: weakly keyed (a net dropped by its
# caller takes its programs with it; the jitted functions hold the net only by a weak
# reference) and at most _CACHED_NETS nets, the least recently used evicted first, so a
# hyper-parameter sweep of fresh nets keeps the process's memory flat.
_CACHED_NETS = 32
_PREDICT_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> jitted fn
_EVAL_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> (ref, {loss: fn})


def _cached(cache: weakref.WeakKeyDictionary, net: Layer, build):
    """cache[net], built by build(weakref to net) on first use, marked most recently used."""
    entry = cache.pop(net, None)
    cache[net] = entry = build(weakref.ref(net)) if entry is None else entry
    while len(cache) > _CACHED_NETS:
        del cache[next(iter(cache))]
    return entry


def _predict_fn(net: Layer):
    return _cached(_PREDICT_CACHE, net, lambda net_ref: jax.jit(
        lambda p, s, x: fwd_with_state(net_ref(), p, x, state=s)[0]))


def _evaluate(net: Layer, loss: Loss):
    """A jitted (params, state, x, y) -> the batch's sums: loss × weight, weight (its rows,
    or its kept labels under ignore_index), and with class labels the correct and counted."""
    net_ref, per_loss = _cached(_EVAL_CACHE, net, lambda net_ref: (net_ref, {}))
    if loss not in per_loss:
        def metrics(params, net_state, x, y):
            pred = fwd_with_state(net_ref(), params, x, state=net_state)[0]
            value = loss(pred, y)
            out = {"loss": value * y.shape[0], "loss_weight": jnp.asarray(y.shape[0], value.dtype)}
            if jnp.issubdtype(y.dtype, jnp.integer) and pred.shape[:-1] == y.shape:
                hit = jnp.argmax(pred, axis=-1).astype(y.dtype) == y
                kept = jnp.ones_like(hit) if loss.ignore_index is None else y != loss.ignore_index
                out["correct"], out["counted"] = jnp.sum(hit & kept), jnp.sum(kept)
                if loss.ignore_index is not None:  # the loss is a mean over the kept labels
                    n_kept = out["counted"].astype(value.dtype)
                    out["loss"], out["loss_weight"] = value * n_kept, n_kept
            return out
        per_loss[loss] = jax.jit(metrics)
    return per_loss[loss]


# --- fit ------------------------------------------------------------------------------------

def _check_array(name: str, a, prefix: str = "fit") -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 0 or a.shape[0] == 0:
        raise ValueError(f"{prefix}: {name} is empty (shape {a.shape}); expected at least one "
                         "example")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        bad = int(np.size(a) - np.isfinite(a).sum())
        raise ValueError(f"{prefix}: {name} holds {bad} NaN/Inf value(s); clean the data first")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{prefix}: {name} must be a numeric array, got dtype {a.dtype}")
    return a


def _check_data(name: str, data, out_shape, loss: Loss,
                net: Layer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as host arrays, refused (ValueError/TypeError) if empty, of unequal lengths,
    non-finite or non-numeric, if x holds token ids outside the vocabulary of an embedding
    of `net` that reads it, or if class labels lie outside [0, out_shape[-1])."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"fit: {name} must be an (x, y) pair of arrays or a stream of (x, y) "
                        f"batches (a list of them, a function returning an iterator of them, or "
                        f"a re-iterable dataset), got {type(data).__name__}")
    x, y = _check_array(f"{name} x", data[0]), _check_array(f"{name} y", data[1])
    if len(x) != len(y):
        raise ValueError(f"fit: {name} has {len(x)} inputs but {len(y)} targets; "
                         "x and y must have the same length")
    if net is not None:
        check_token_ids(f"fit: {name} x", net, x)
    if out_shape is not None:
        _check_labels(f"fit: {name} y", y, out_shape, loss)
    return x, y


def _check_labels(where: str, y: np.ndarray, out_shape, loss: Loss) -> None:
    """Integer y shaped like the output less its class axis holds class labels: each must
    lie in [0, classes) or be the loss's ignore_index."""
    if np.issubdtype(y.dtype, np.integer) and y.shape[1:] == tuple(out_shape[1:-1]):
        check_labels(f"{where} (a network with {out_shape[-1]} outputs)", y, out_shape[-1],
                     loss.ignore_index)


def _output_shape(net: Layer, input_shape) -> tuple[int, ...]:
    box = {}

    def init(key):
        box["shape"], params, _ = init_with_state(net, key, input_shape)
        return params

    jax.eval_shape(init, jax.random.key(0))
    return tuple(box["shape"])


def _as_param_dtype(a: np.ndarray, params) -> jax.Array:
    """Floating data in the dtype of the (first) parameter, so x64 mode or float64 data
    never silently mixes precisions; integer labels stay as they are."""
    leaves = jax.tree_util.tree_leaves(params)
    if leaves and np.issubdtype(a.dtype, np.floating):
        return jnp.asarray(a, leaves[0].dtype)
    return jnp.asarray(a)


def _data_dtype(a: np.ndarray, params) -> np.dtype:
    """The dtype `_as_param_dtype` gives `a`: floating data in the parameters' dtype, other
    data in its own (as JAX holds it: int64 is int32 without x64)."""
    leaves = jax.tree_util.tree_leaves(params)
    if leaves and np.issubdtype(a.dtype, np.floating):
        return np.dtype(leaves[0].dtype)
    return np.dtype(jax.dtypes.canonicalize_dtype(a.dtype))


def _device_data(mesh: Mesh | None, a: np.ndarray, params) -> jax.Array:
    """The training data on the device(s), in `_data_dtype`: without a mesh one array; with
    one, split by rows over the mesh's devices — each device holds len(a) / devices rows
    (rounded up; the last one padded by zero rows, which no batch ever reads) — and each
    process puts on its own devices only their rows, cast row block by row block."""
    if mesh is None:
        return _as_param_dtype(a, params)
    dtype = _data_dtype(a, params)
    count = mesh.devices.size
    rows = -(-len(a) // count) * count

    def block(index):
        start, stop, _ = index[0].indices(rows)
        part = np.asarray(a[start:min(stop, len(a))], dtype)
        if stop > len(a):
            part = np.concatenate([part, np.zeros((stop - max(start, len(a)),) + a.shape[1:],
                                                  dtype)])
        return part

    return jax.make_array_from_callback((rows,) + a.shape[1:],
                                        NamedSharding(mesh, P(mesh.axis_names[0])), block)


def _check_same_data(mesh: Mesh | None, arrays) -> None:
    """On a mesh over several processes, every process must pass the same data set: its
    sha256 is compared across them (a collective), and a difference is refused."""
    if not _spans_processes(mesh):
        return
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    mine = np.frombuffer(digest.digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine))
    differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    if differ:
        raise ValueError(
            f"fit: the processes hold different training data (process {differ[0]} differs "
            f"from process 0; this is process {jax.process_index()}); on a mesh over several "
            "processes each process must pass the same full data set")


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]))


def _saveable(state: TrainState) -> TrainState:
    """Typed PRNG keys as their raw uint32 data, so they can be written to disk."""
    if jnp.issubdtype(state.key.dtype, jax.dtypes.prng_key):
        return state._replace(key=jax.random.key_data(state.key))
    return state


def _restore_key(saved: TrainState, like: TrainState) -> TrainState:
    if jnp.issubdtype(like.key.dtype, jax.dtypes.prng_key):
        return saved._replace(key=jax.random.wrap_key_data(saved.key))
    return saved


def _scan_suits(step, state: TrainState, x, y, batch_size: int, mesh: Mesh | None) -> bool:
    """epoch_mode="auto": run each epoch as one compiled loop, unless the step convolves on
    a CPU.

    XLA:CPU runs convolutions inside a compiled loop far slower than the same step
    dispatched on its own (12× for conv2d(16) → conv2d(32) on digits, with manual and
    jax.grad gradients alike), which outweighs the dispatch the loop saves. (The size of
    the data set does not matter: neither mode copies it in the epoch's order.)
    """
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    if device.platform != "cpu":
        return True
    batch = [jax.ShapeDtypeStruct((batch_size,) + a.shape[1:], a.dtype) for a in (x, y)]
    return "conv_general_dilated" not in str(jax.make_jaxpr(step)(state, *batch))


class _RecordedEpoch(NamedTuple):
    """An epoch that records diagnostics (`_epoch_fn` with recorded steps): `run(state, x,
    y, epoch)` as the plain epoch function, with its steps 0, k, 2k, ... recorded (k =
    `every`), and `snapshot(state, x, y, epoch)`, the histograms its first step records."""

    run: Callable[..., Any]
    snapshot: Callable[..., Any]
    every: int


def _epoch_fn(step, n: int, batch_size: int, shuffle_key, scan: bool, mesh: Mesh | None = None,
              recorded_steps=None, every: int | None = None):
    """One epoch: shuffle, cut into n // batch_size batches (the remainder waits for the next
    shuffle), and run the steps — as one `lax.scan` (one dispatch) or a Python loop.

    The data set is never copied in the epoch's order: the shuffle is a permutation of the
    row indices, and each step gathers its batch, x[idx], inside the compiled step (with a
    mesh, from the devices' shares of the data set: each device picks the rows it holds and
    XLA sums the picks across the devices). A full batch is the data set as it is.

    With `recorded_steps` = (the recorded step, the same with histograms) for diagnostics,
    the epoch's steps 0, k, 2k, ... (k = `every`) are recorded and the others are plain:
    the epoch runs as chunks of one recorded step and k − 1 plain steps, so a plain step
    costs what it costs without diagnostics; the result is then a `_RecordedEpoch`, whose
    `snapshot(state, x, y, epoch)` gives the histograms that the epoch's first step would
    record (its update is not kept). The epoch function (or its `run`) returns (state,
    mean loss, the epoch's records or None); on a mesh all of them replicated, so that
    every process can read them.
    """
    steps = n // batch_size
    full_batch = batch_size == n
    # on a mesh, what an epoch returns is replicated: readable by every process
    out: dict[str, Any] = {} if mesh is None else {"out_shardings": NamedSharding(mesh, P())}

    def order(epoch):
        """The epoch's batches as rows of indices into the data set, (steps, batch_size);
        for a full batch an empty (1, 0) (the data set is the batch, in its order)."""
        if full_batch:
            return jnp.zeros((1, 0), jnp.int32)
        perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
        return perm[:steps * batch_size].reshape(steps, batch_size)

    def rows(a, idx):
        return a if full_batch else a[idx]

    recorded, with_histograms = recorded_steps or (None, None)

    def packed(d):
        """A step's diagnostics as three arrays: (4, layers) statistics, ratios, step."""
        return (jnp.stack([d["stats"][k] for k in _diagnostics.SCALARS]), d["update_ratio"],
                d["step"])

    def plain_steps(state, x, y, idx):
        return lax.scan(lambda s, i: step(s, rows(x, i), rows(y, i)), state, idx)

    def scanned(state, x, y, epoch):
        idx = order(epoch)
        if recorded is None:
            state, metrics = plain_steps(state, x, y, idx)
            return state, jnp.mean(metrics["loss"]), None

        def chunk(s, chunk_idx):  # one recorded step, then plain ones
            s, m = recorded(s, rows(x, chunk_idx[0]), rows(y, chunk_idx[0]))
            s, plain = plain_steps(s, x, y, chunk_idx[1:])
            return s, (jnp.concatenate([m["loss"][None], plain["loss"]]), packed(m["diagnostics"]))

        full, rest = divmod(steps, every)
        losses, records = [], []
        for start, count, size in ((0, full, every), (full * every, 1 if rest else 0, rest)):
            if count:
                stop = start + count * size
                state, (chunk_losses, chunk_records) = lax.scan(
                    chunk, state, idx[start:stop].reshape((count, size) + idx.shape[1:]))
                losses.append(chunk_losses.reshape(-1))
                records.append(chunk_records)
        records = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *records)
        return state, jnp.mean(jnp.concatenate(losses)), records

    # one dispatch per step; the batch is gathered inside the jitted step
    def at(step_fn):
        return jax.jit(lambda state, x, y, idx, i: step_fn(state, rows(x, idx[i]),
                                                           rows(y, idx[i])),
                       donate_argnums=0, **out)

    step_at = at(step)
    recorded_at = at(recorded) if recorded is not None else None
    order_of = jax.jit(order, **out)

    def looped(state, x, y, epoch):
        idx = order_of(epoch)
        losses, records = [], []
        for i in range(steps):
            if recorded_at is not None and i % every == 0:
                state, metrics = recorded_at(state, x, y, idx, i)
                records.append(packed(metrics["diagnostics"]))
            else:
                state, metrics = step_at(state, x, y, idx, i)
            losses.append(metrics["loss"])
        # stacked eagerly, as arrays of a mesh: a scalar is replicated, records go through
        # `_host` (which gathers them from the processes of a mesh if they are split)
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *records) if records else None
        return state, jnp.mean(jnp.stack(losses)), stacked

    # the scanned epoch does not donate its input: fit keeps the state an epoch began from (a
    # NaN or a Ctrl-C hands it back), and XLA's copy into the loop costs less than a copy
    # dispatched apart (CPU, interleaved: within ±2% of a donated epoch, against +1–14%)
    run = jax.jit(scanned, **out) if scan else looped
    if recorded is None:
        return run
    assert every is not None, "_epoch_fn: recorded_steps come with `every`"

    def snapshot(state, x, y, epoch):
        idx = order(epoch)[0]
        d = with_histograms(state, rows(x, idx), rows(y, idx))[1]["diagnostics"]
        return {"step": d["step"], **{k: d["stats"][k] for k in ("act_hist", "grad_hist")}}

    return _RecordedEpoch(run, jax.jit(snapshot, **out), every)


# --- streams: (x, y) batches, re-iterated each epoch ------------------------------------------

def _is_batch(item) -> bool:
    """An (x, y) pair of arrays (anything with a shape and a dtype), as a stream yields."""
    return (isinstance(item, (tuple, list)) and len(item) == 2
            and all(hasattr(a, "shape") and hasattr(a, "dtype") for a in item))


def _takes_epoch(fn) -> bool:
    """Whether a batch factory takes the epoch: it has exactly one required positional
    parameter (one with none is called with no argument)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    required = [p for p in parameters if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) == 1


class _Stream:
    """A source of (x, y) batches that starts a fresh pass each epoch: `epoch(e)` (e from
    0) is an iterator over that epoch's batches."""

    def __init__(self, where: str, what: str, open_pass):
        self.where, self.what, self._open = where, what, open_pass

    def epoch(self, e: int):
        source = self._open(e)
        try:
            return iter(source)
        except TypeError:
            raise TypeError(f"{self.where}: {self.what} returned {type(source).__name__}, "
                            "which is not iterable; expected an iterator of (x, y) "
                            "batches") from None


def _stream_of(where: str, data) -> _Stream | None:
    """`data` as a stream of (x, y) batches, or None when it is not one (an (x, y) pair of
    arrays, or something the array checks refuse). A stream is a list or tuple of (x, y)
    pairs of arrays, a callable returning an iterator of them (called each epoch, with the
    epoch from 0 if it takes one required argument), or a re-iterable object (its iter()
    starts a fresh pass); a one-shot iterator is refused (TypeError): it would be empty
    after the first epoch."""
    if isinstance(data, (tuple, list)):
        if data and all(_is_batch(b) for b in data):
            return _Stream(where, f"the {type(data).__name__} of {len(data)} batches",
                           lambda e: data)
        return None
    if isinstance(data, (np.ndarray, jax.Array, str, bytes, dict)) or data is None:
        return None
    if isinstance(data, collections.abc.Iterator):
        raise TypeError(
            f"{where}: got a one-shot iterator ({type(data).__name__}), which cannot be "
            "re-iterated for each epoch; pass a function that returns a fresh iterator (the "
            "generator function itself, or `lambda: batches(...)`; one that takes an argument "
            "is given the epoch, from 0), a list of (x, y) batches, or a re-iterable dataset")
    if callable(data):
        name = getattr(data, "__name__", type(data).__name__)
        if _takes_epoch(data):
            return _Stream(where, f"the batch function {name}(epoch)", lambda e: data(e))
        return _Stream(where, f"the batch function {name}()", lambda e: data())
    if isinstance(data, collections.abc.Iterable):
        return _Stream(where, f"the {type(data).__name__}", lambda e: data)
    return None


def _check_batch(prefix: str, where: str, batch, net: Layer | None, loss: Loss,
                 out_shape) -> tuple[np.ndarray, np.ndarray]:
    """One batch of a stream as host arrays, with the checks that arrays get: an (x, y)
    pair, non-empty, numeric, finite, of equal lengths, token ids in the vocabulary and
    class labels in range."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        got = (f"a {type(batch).__name__} of {len(batch)}"
               if isinstance(batch, (tuple, list)) else type(batch).__name__)
        raise TypeError(f"{prefix}: {where}: expected an (x, y) pair of arrays, got {got}")
    x = _check_array(f"{where} x", batch[0], prefix)
    y = _check_array(f"{where} y", batch[1], prefix)
    if len(x) != len(y):
        raise ValueError(f"{prefix}: {where} has {len(x)} inputs but {len(y)} targets; x and "
                         "y must have the same length")
    if net is not None:
        check_token_ids(f"{prefix}: {where} x", net, x)
    if out_shape is not None:
        _check_labels(f"{prefix}: {where} y", y, out_shape, loss)
    return x, y


def _describe(x: np.ndarray, y: np.ndarray, params) -> str:
    return (f"x {tuple(x.shape)} {_data_dtype(x, params).name}, "
            f"y {tuple(y.shape)} {_data_dtype(y, params).name}")


def _train_batches(stream: _Stream, epoch: int, first, net: Layer, loss: Loss, out_shape,
                   params, warned: list):
    """The checked (x, y) host batches of one epoch of a stream; `first` = (batch 1's x, y,
    the rest of its iterator) when the pass is already open. Every batch must have the
    shapes and dtypes (as the step takes them) of batch 1, which the step is compiled for;
    a smaller last batch is dropped, with a warning the first time (`warned`)."""
    where = f"train_data batch {{}} of epoch {epoch + 1}"
    if first is not None:
        x0, y0, rest = first
    else:
        rest = stream.epoch(epoch)
        batch = next(rest, None)
        if batch is None:
            raise ValueError(f"fit: {stream.what} (train_data) gave no batches in epoch "
                             f"{epoch + 1}; a stream must give at least one each epoch")
        x0, y0 = _check_batch("fit", where.format(1), batch, net, loss, out_shape)
    expected = _describe(x0, y0, params)
    yield x0, y0
    size = len(x0)
    for i, batch in enumerate(rest, 2):
        if not _is_batch(batch):
            _check_batch("fit", where.format(i), batch, None, loss, None)  # raises
        x, y = np.asarray(batch[0]), np.asarray(batch[1])
        got = _describe(x, y, params)
        if got != expected:
            smaller = (len(x) < size and len(x) == len(y) and x.shape[1:] == x0.shape[1:]
                       and y.shape[1:] == y0.shape[1:]
                       and got == _describe(x0[:len(x)], y0[:len(x)], params))
            if smaller and next(rest, None) is None:  # the last batch: dropped
                if not warned:
                    warned.append(True)
                    warnings.warn(
                        f"fit: the last batch of train_data in epoch {epoch + 1} holds "
                        f"{len(x)} examples, fewer than the {size} of the others; it is "
                        "dropped (each epoch; this warning is given once)", stacklevel=4)
                return
            raise ValueError(
                f"fit: {where.format(i)} has {got}; expected {expected} (the shapes and "
                "dtypes of batch 1: every batch of a stream must keep them, the step is "
                "compiled for them; only a smaller last batch is dropped)")
        yield _check_batch("fit", where.format(i), (x, y), net, loss, out_shape)


def _evaluate_stream(net: Layer, loss: Loss, params, net_state, stream: _Stream, epoch: int,
                     example_shape=None) -> list:
    """evaluate's per-batch sums over one pass of a stream (batches of any sizes), each
    batch checked as evaluate checks arrays; `example_shape` (a batch's x less its first
    axis) that every batch must have, else the first batch's."""
    metrics = _evaluate(net, loss)
    sums, out_shape = [], None
    for i, batch in enumerate(stream.epoch(epoch), 1):
        where = f"batch {i} of {stream.what}"
        x, y = _check_batch("evaluate", where, batch, net, loss, None)
        if example_shape is None:
            example_shape = x.shape[1:]
        elif x.shape[1:] != tuple(example_shape):
            raise ValueError(f"evaluate: {where} has x of example shape {x.shape[1:]}; "
                             f"expected {tuple(example_shape)}")
        xb = _as_param_dtype(x, params)
        if out_shape is None:
            out_shape = jax.eval_shape(_predict_fn(net), params, net_state, xb).shape
        _check_labels(f"evaluate: {where} y", y, out_shape, loss)
        sums.append(metrics(params, net_state, xb, _as_param_dtype(y, params)))
    if not sums:
        raise ValueError(f"evaluate: {stream.what} gave no batches; expected at least one")
    return sums


def fit(net: Layer, loss: Loss, optimizer: optax.GradientTransformation, train_data: Data, *,
        epochs: int, batch_size: int | None = None, grad: str = "manual", seed: int = 0,
        val_data: Data | None = None, stop_at_loss: float | None = None,
        patience: int | None = None, checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 1, progress: bool = True, epoch_mode: str = "auto",
        devices: int | Sequence[jax.Device] | None = None, precision: str | None = None,
        l2: float = 0.0, diagnostics_every: int | None = None) -> tuple[TrainState, dict[str, Any]]:
    """Train `net` on `train_data`; returns the final (or best) state and the history.

    - train_data: an `(x, y)` pair of arrays, or a stream of `(x, y)` batches, passed over
      once each epoch: a list (or tuple) of batches; a function returning an iterator of
      them (a generator function), called each epoch — with the epoch (0, 1, ...) when it
      takes one required argument, so it can shuffle per epoch; or a re-iterable object
      whose `iter()` starts a fresh pass (e.g. a grain `MapDataset`, `IterDataset` or
      `DataLoader`). A one-shot iterator (a generator object) is refused: it would be empty
      after the first epoch. A stream's epoch is a Python loop of the jitted step (its state
      donated); batch 1 fixes the shapes and dtypes, a batch of other ones is refused
      (ValueError naming the epoch, the batch and both shapes) but a smaller last batch,
      which is dropped (with a warning, once). Each batch is checked on the host as arrays
      are (finite, numeric, token ids, labels) before it runs. `batch_size` must be None;
      `diagnostics_every` and epoch_mode="scan" need arrays; `val_data` may be arrays or a
      stream; on a mesh (`devices=`) each batch is split over the devices (its size must
      divide by their count), within one process only. `train_loss` is the mean of the
      epoch's batch losses. Resuming from a checkpoint is bit for bit only when the stream
      gives the same batches for an epoch on a rerun (the function of the epoch is the way
      to shuffle); a function of the epoch is called once more at the start of a run, for
      epoch 0, to read the shapes.
    - batch_size: None → full-batch gradient descent, 1 → stochastic, b → mini-batches of b;
      the data is reshuffled every epoch from `seed` (the last n mod b examples of a shuffle
      sit that epoch out).
    - stops after `epochs`, or when the epoch's mean training loss < `stop_at_loss`, or —
      with `val_data` and `patience` — when the validation loss has not improved for
      `patience` epochs, returning the best parameters.
    - history: per epoch `train_loss`, and `val_loss`/`val_accuracy` with `val_data`;
      `stopped` says why it ended: "epochs", "stop_at_loss", "patience", "sigterm", or (on
      the exceptions below) "nonfinite" / "interrupted".
    - checkpoint_dir: checked before anything runs (a file in the way or no permission to
      write: ValueError / PermissionError naming it). The state is saved there every
      `checkpoint_every` epochs and at the end (safetensors with a sha256 of every tensor
      and of the metadata, written atomically; the previous file is kept as
      checkpoint.prev.safetensors), and a run finding a checkpoint there resumes from it,
      bit for bit — from the previous one, with a warning, when the latest is missing or
      fails its checksums. A checkpoint written with another seed, batch size, data size,
      grad, precision, l2, diagnostics_every or optimizer is refused. The optimizer is told
      apart by its state (node types, leaf shapes and dtypes): `optax.adam` from `gd`, but
      not gd(0.1) from gd(0.2) — hyper-parameters are not in the state. A run that had
      finished (`epochs` epochs done, or stopped by `patience` / `stop_at_loss`) returns
      at once, as device arrays, its history as it was.
    - SIGTERM (with a checkpoint_dir, in the main thread): the current epoch is finished,
      the checkpoint written, and fit returns with `history["stopped"] == "sigterm"`; a
      second SIGTERM goes to the handler that was there before (by default, the process
      ends at once). The handler is put back when fit returns.
    - Raises `NonFiniteError` (a FloatingPointError) when the epoch's training loss or the
      parameters become NaN/Inf: `.state` is the last finite state (before the bad epoch),
      `.history` the history up to it with `stopped == "nonfinite"` (its diagnostics keep
      the bad epoch's records, which show where it blew up); the checkpoint is left as it
      was. On Ctrl-C it raises `Interrupted` (a KeyboardInterrupt) carrying the state after
      the last complete epoch and its history (`stopped == "interrupted"`); with a
      checkpoint_dir that state is written there first, so a rerun resumes from it. (For
      both, fit keeps the state each epoch began from: the memory of one more state.)
    - epoch_mode: "scan" (each epoch one compiled loop), "steps" (a Python loop of jitted
      steps), or "auto": scan, unless the net convolves on a CPU, where XLA runs
      convolutions slowly inside a compiled loop. `history["epoch_mode"]` says which ran.
      Neither copies the data set in the epoch's order: the shuffle permutes row indices,
      and each step gathers its batch from the data set on the device.
    - devices: data-parallel training over these devices (a sequence, or a count of the
      first ones): the data set is split by rows over them (each holds about 1/devices of
      it), each batch is split across them, parameters and optimizer state are replicated,
      and XLA sums the gradient across devices. The batch size must divide by the device
      count. Several processes (multi-controller JAX: `jax.distributed.initialize` in each,
      then `devices=jax.devices()`, the devices of all of them): every process runs the
      same fit call with the same full data set (checked: its sha256 is compared across
      the processes) and puts only its devices' rows of it there; the returned state
      holds global arrays (replicated, so `np.asarray` reads them in any process) and the
      history is the same in every process (but `time_s`). The progress bar is drawn by
      process 0; a checkpoint_dir must be one folder that all processes see (a shared file
      system): process 0 writes it, all of them resume from it. A SIGTERM to any process
      stops all of them after the same epoch, with the checkpoint written; on Ctrl-C
      nothing is written (the processes may be in different epochs).
    - precision: None (compute in the params' dtype) or "bf16" (bfloat16 forward and
      backward, float32 master parameters, loss and update).
    - l2: λ of the penalty λ/2·Σ‖W‖² on weight matrices and kernels (`fbp.l2_penalty`),
      included in the training loss; validation and test losses are the data loss alone.
    - diagnostics_every: k → the steps 0, k, 2k, ... of every epoch (with fewer than k
      steps per epoch, the first step of every epoch that holds a multiple of k among its
      global step numbers: full-batch training records every k-th step), inside the
      compiled epoch, record per layer the output's mean, std and fraction saturated/zero, the norm
      of the gradient reaching it, and per weight leaf the update ratio ‖Δθ‖/‖θ‖, into
      `history["diagnostics"]`, with histograms of the activations and gradients before
      and after training (one pass each on the next batch, its update not kept);
      `fbp.plot.diagnostics` draws them. The other steps are the plain step. None
      (default): no recording at all.

    Args:
        net: the network to train.
        loss: the loss, e.g. `losses.softmax_cross_entropy` (integer class labels) or
            `losses.mse`.
        optimizer: an optax optimizer, e.g. `optax.adam(1e-3)`.
        train_data: an `(x, y)` pair of numeric arrays with the same number of examples
            (the first axis): x (n, ...), floating x cast to the parameters' dtype; y
            integer class labels (n, ...) or targets shaped like the net's output. Or a
            stream of `(x, y)` batches (above).
        epochs: how many epochs to train, in all: a resumed run goes on to this many.
        batch_size: None (default): full batch; b: mini-batches of b examples (at most
            the number of examples). None for a stream.
        grad: "manual" (default: the hand-written backward passes) or "auto"
            (`jax.grad`).
        seed: seeds the initial parameters, the shuffles and dropout; default 0.
        val_data: arrays or a stream, as `train_data`, evaluated with training off after
            every epoch; None (default): no validation.
        stop_at_loss: stop once an epoch's mean training loss falls below it; None
            (default): no such stop.
        patience: with `val_data`, stop after this many epochs without a better
            validation loss and return the best parameters; None (default): no early
            stopping.
        checkpoint_dir: the folder to write checkpoints to and resume from; None
            (default): no checkpoints.
        checkpoint_every: write a checkpoint every this many epochs (default 1), and at
            the end.
        progress: draw a progress bar over the epochs on stderr (default True).
        epoch_mode: "auto" (default), "scan" or "steps" (above).
        devices: train data-parallel over these devices, or over the first this many;
            None (default): on the default device.
        precision: None (default: compute in the parameters' dtype) or "bf16".
        l2: λ ≥ 0 of the penalty λ/2·Σ‖W‖² in the training loss; default 0.0, none.
        diagnostics_every: record per-layer statistics every k-th step into
            `history["diagnostics"]` (above); None (default): no recording.

    Returns:
        The final `TrainState` (with `patience`, the best epoch's parameters and net
            state), as device arrays, and the history: a dict with the per-epoch lists
            `epoch`, `train_loss`, `time_s` (seconds) and, with `val_data`, `val_loss`
            and `val_accuracy` (NaN without class labels); `stopped` (why it ended);
            `epoch_mode` (which ran); with `diagnostics_every`, `diagnostics`.

    Raises:
        ValueError: an argument out of range: `epochs`, `batch_size` (larger than the
            data, or given with a stream), `checkpoint_every`, `patience` (or patience
            without `val_data`), `diagnostics_every`, `epoch_mode`, `grad`, `precision`,
            `l2`; data that is empty, holds NaN/Inf, has x and y of different lengths, labels
            outside [0, classes) or token ids outside an embedding's vocabulary;
            `val_data` of another example shape; a stream's batch of other shapes or
            dtypes than batch 1 (but a smaller last one); a batch size that does not
            divide by the device count; a `checkpoint_dir` that is a file, or whose
            checkpoint another run setup wrote.
        TypeError: `net` is not an fbp Layer, or `loss` not an fbp Loss; `train_data`
            is neither an (x, y) pair of arrays nor a stream (a one-shot iterator is
            refused); data that is not numeric.
        PermissionError: `checkpoint_dir` cannot be written.
        fbp.checkpoint.CheckpointError: neither the checkpoint in `checkpoint_dir` nor
            the previous one can be read (a ValueError).
        NonFiniteError: the training loss or the parameters became NaN/Inf.
        Interrupted: Ctrl-C during training.

    Examples:
        >>> import numpy as np, optax
        >>> from fbp import layers as L, losses
        >>> from fbp.train import fit
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(32, 4)).astype(np.float32)
        >>> y = rng.integers(0, 3, 32)
        >>> net = L.serial(L.dense(8), L.tanh(), L.dense(3))
        >>> state, history = fit(net, losses.softmax_cross_entropy, optax.sgd(0.1), (x, y),
        ...                      epochs=2, batch_size=8, progress=False)
        >>> history["stopped"], history["epoch"]
        ('epochs', [1, 2])

        The same data as a stream of batches, a generator function of the epoch:

        >>> def batches(epoch):
        ...     order = np.random.default_rng(epoch).permutation(32)
        ...     for i in range(0, 32, 8):
        ...         yield x[order[i:i + 8]], y[order[i:i + 8]]
        >>> state, history = fit(net, losses.softmax_cross_entropy, optax.sgd(0.1), batches,
        ...                      epochs=2, progress=False)
        >>> history["stopped"], len(history["train_loss"])
        ('epochs', 2)
    """
    _check_net_and_loss(net, loss)
    if not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"fit: epochs must be a positive int, got {epochs!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise ValueError(f"fit: batch_size must be a positive int or None (full batch), "
                         f"got {batch_size!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every <= 0:
        raise ValueError(f"fit: checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if patience is not None and (val_data is None or patience <= 0):
        raise ValueError("fit: patience needs val_data and must be a positive int, got "
                         f"patience={patience!r} with val_data="
                         f"{'given' if val_data is not None else None}")
    if diagnostics_every is not None and (isinstance(diagnostics_every, bool) or not isinstance(
            diagnostics_every, int) or diagnostics_every <= 0):
        raise ValueError(f"fit: diagnostics_every must be a positive int (record every k steps) "
                         f"or None, got {diagnostics_every!r}")
    if epoch_mode not in ("auto", "scan", "steps"):
        raise ValueError(f"fit: epoch_mode must be 'auto', 'scan' or 'steps', got {epoch_mode!r}")
    if checkpoint_dir is not None:  # before any compile or training
        try:
            checkpoint.check_output_dir(checkpoint_dir)
        except ValueError as e:
            raise ValueError(f"fit: checkpoint_dir {e}") from None
        except PermissionError as e:
            raise PermissionError(f"fit: checkpoint_dir {e}") from None

    stream = _stream_of("fit: train_data", train_data)
    val_stream = _stream_of("fit: val_data", val_data)
    first = None  # a stream's batch 1 of epoch 1: (x, y, the rest of its pass)
    if stream is None:
        x_np = np.asarray(train_data[0]) if isinstance(train_data, (tuple, list)) else None
        if x_np is None or x_np.ndim == 0 or x_np.shape[0] == 0:
            _check_data("train_data", train_data, None, loss)  # raises the precise error
            raise AssertionError("unreachable: _check_data refuses such train_data")
        n = len(x_np)
        batch = n if batch_size is None else batch_size
        if batch > n:
            raise ValueError(f"fit: batch_size {batch} is larger than the {n} training examples")
    else:
        if batch_size is not None:
            raise ValueError(f"fit: batch_size must be None when train_data is a stream of "
                             f"batches (the stream decides the batch size), got {batch_size!r}")
        if diagnostics_every is not None:
            raise ValueError("fit: diagnostics_every records inside the compiled epoch of an "
                             "(x, y) pair of arrays; it is not available when train_data is a "
                             "stream of batches (pass arrays, or diagnostics_every=None)")
        if epoch_mode == "scan":
            raise ValueError("fit: epoch_mode='scan' needs train_data as an (x, y) pair of "
                             "arrays; a stream of batches runs as a loop of steps "
                             "(epoch_mode='auto' or 'steps')")
        rest = stream.epoch(0)
        opened = next(rest, None)
        if opened is None:
            raise ValueError(f"fit: {stream.what} (train_data) gave no batches; a stream "
                             "must give at least one each epoch")
        x_np, _ = _check_batch("fit", "train_data batch 1 of epoch 1", opened, None, loss, None)
        n, batch = 0, len(x_np)  # n: the stream's size is not known (0 is never used)
    mesh = data_mesh(devices) if devices is not None else None
    if stream is not None and _spans_processes(mesh):
        raise ValueError("fit: train_data as a stream of batches runs on the devices of this "
                         "process only; on a mesh over several processes pass an (x, y) pair "
                         "of arrays")
    if mesh is not None and batch % mesh.devices.size:
        what = "batch size" if stream is None else "batch size of train_data's batch 1:"
        raise ValueError(f"fit: {what} {batch} does not divide by the {mesh.devices.size} "
                         "devices; choose a multiple of the device count")
    compute_dtype(precision)  # validates
    input_shape = (batch,) + x_np.shape[1:]
    out_shape = _output_shape(net, input_shape)
    # the training data (batch 1 of a stream): checked host arrays, later (arrays) on the device
    x: np.ndarray | jax.Array
    y: np.ndarray | jax.Array
    if stream is None:
        x, y = _check_data("train_data", train_data, out_shape, loss, net)
    else:
        x, y = _check_batch("fit", "train_data batch 1 of epoch 1", opened, net, loss, out_shape)
        first = (x, y, rest)
    if val_data is not None and val_stream is None:
        xv, yv = _check_data("val_data", val_data, out_shape, loss, net)
        if xv.shape[1:] != x.shape[1:]:
            raise ValueError(f"fit: val_data x has example shape {xv.shape[1:]}, train_data x "
                             f"has {x.shape[1:]}")
    _check_same_data(mesh, (x, y) if val_data is None or val_stream else (x, y, xv, yv))

    key = jax.random.key(seed)
    state = init_state(net, optimizer, jax.random.fold_in(key, 0), input_shape)
    shuffle_key = jax.random.fold_in(key, 1)
    config = {"seed": seed, "batch_size": batch, "grad": grad, "n": "stream" if stream else n,
              "precision": precision,
              "optimizer": _optimizer_fingerprint(state.opt_state)}
    if l2:
        config["l2"] = l2
    if diagnostics_every:
        config["diagnostics_every"] = diagnostics_every
    history: dict[str, Any] = {"epoch": [], "train_loss": [], "time_s": []}
    if val_data is not None:
        history.update(val_loss=[], val_accuracy=[])
    best: _Best = {"val_loss": math.inf, "params": None, "bad_epochs": 0}

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    start, rotate = 0, True  # rotate: the latest file is good, keep it as the previous one
    resumed = False
    if ckpt_path is not None and (ckpt_path.exists() or _previous(ckpt_path).exists()):
        resumed = True
        start, state, history, best, rotate = _resume(ckpt_path, state, config)
    if ckpt_path is not None and _spans_processes(mesh):
        _check_same_start(ckpt_path.parent, start)
    if resumed:
        if history.get("stopped") in ("patience", "stop_at_loss") or start >= epochs:
            if history.get("stopped") not in ("patience", "stop_at_loss"):
                history["stopped"] = "epochs"
            return _result(mesh, state, best, patience), history

    recorder: _diagnostics.Recorder | None = None
    recorded_epoch: _RecordedEpoch | None = None  # the epoch that records, with the recorder
    step = _train_step(net, loss, optimizer, grad, precision, mesh, l2)
    epoch_rows = {"rows": 0}  # the examples of the last epoch, for samples/s
    if stream is None:
        x, y = _device_data(mesh, x, state.params), _device_data(mesh, y, state.params)
        if diagnostics_every:
            spec = _diagnostics_spec(net, loss, state, x, y, batch)
            recorder = _diagnostics.Recorder(spec, diagnostics_every, history)
        recorded_steps = None
        if recorder:
            recorded_steps = tuple(_train_step(net, loss, optimizer, grad, precision, mesh, l2,
                                               diagnostics=recorder.spec, histograms=h)
                                   for h in (False, True))
        scan = epoch_mode == "scan" or (epoch_mode == "auto" and _scan_suits(step, state, x, y,
                                                                             batch, mesh))
        run_epoch = _epoch_fn(step, n, batch, shuffle_key, scan, mesh)
        if recorder:
            recorded_epoch = _epoch_fn(step, n, batch, shuffle_key, scan, mesh, recorded_steps,
                                       diagnostics_every)
        epoch_rows["rows"] = (n // batch) * batch
    else:  # a Python loop of the jitted step over each epoch's batches, put on the device
        scan = False
        out: dict[str, Any] = {} if mesh is None else {"out_shardings": NamedSharding(mesh, P())}
        stream_step = jax.jit(step, donate_argnums=0, **out)
        warned: list = []

        def run_epoch(state, x, y, epoch):
            nonlocal first
            losses, rows = [], 0
            for xb, yb in _train_batches(stream, epoch, first, net, loss, out_shape,
                                         state.params, warned):
                first = None
                state, metrics = stream_step(state, _device_data(mesh, xb, state.params),
                                             _device_data(mesh, yb, state.params))
                losses.append(metrics["loss"])
                rows += len(xb)
            epoch_rows["rows"] = rows
            return state, jnp.mean(jnp.stack(losses)), None

        if start > 0:
            first = None  # the pass opened for epoch 1 is not needed
    if val_data is not None and val_stream is None:
        val_xy = _as_param_dtype(xv, state.params), _as_param_dtype(yv, state.params)
    state = replicate(mesh, jax.tree_util.tree_map(jnp.asarray, state))

    history["stopped"] = None  # in a checkpoint: the run goes on
    history["epoch_mode"] = "scan" if scan else "steps"
    bar = _progress_bar(range(start, epochs), start, epochs, f"fit ({grad})",
                        progress and jax.process_index() == 0)
    saved_epoch, kept = start, None
    with _SigtermStop(ckpt_path is not None) as sigterm:
        try:
            for epoch in bar:
                # the state before this epoch, what a NaN or a Ctrl-C hands back: a scanned
                # epoch leaves its input alone, a loop of steps donates it
                kept = state if scan else _copy(state), best, len(history["epoch"])
                t0 = time.perf_counter()
                recording = None  # the recorder, when this epoch records diagnostics
                if (recorder is not None and recorded_epoch is not None
                        and _records_in(epoch, n // batch, recorded_epoch.every)):
                    recording = recorder
                    if "first" not in recorder.d["hist"]:  # histograms before training
                        recorder.set_hist("first", jax.device_get(
                            recorded_epoch.snapshot(state, x, y, epoch)))
                    state, train_loss, diag = recorded_epoch.run(state, x, y, epoch)
                else:
                    state, train_loss, diag = run_epoch(state, x, y, epoch)
                train_loss = float(train_loss)
                if recording is not None:
                    recording.pending.append(diag)
                seconds = time.perf_counter() - t0
                if not (math.isfinite(train_loss) and _all_finite((state.params,
                                                                    state.net_state))):
                    history["stopped"] = "nonfinite"
                    _flush(recorder)
                    left = (f"; the checkpoint in {checkpoint_dir} is kept as it was"
                            if ckpt_path else "")
                    what = "training loss" if not math.isfinite(train_loss) else "parameters"
                    raise NonFiniteError(
                        f"fit: the {what} became "
                        f"{train_loss if what[0] == 't' else 'non-finite'} in epoch {epoch + 1} "
                        f"(try a smaller learning rate){left}; the error's .state holds the "
                        f"state after epoch {epoch} and .history its history",
                        state=kept[0], history=history)
                history["epoch"].append(epoch + 1)
                history["train_loss"].append(train_loss)
                history["time_s"].append(seconds)
                samples_per_s = epoch_rows["rows"] / seconds
                postfix = {"loss": f"{train_loss:.4g}", "samples/s": f"{samples_per_s:.3g}"}
                stop = None
                if val_data is not None:
                    if val_stream is None:
                        val = evaluate(net, loss, state, *val_xy)
                    else:
                        val_params, val_net_state = _local((state.params, state.net_state))
                        val = _reduced(jax.device_get(_evaluate_stream(
                            net, loss, val_params, val_net_state, val_stream, epoch,
                            x.shape[1:])))
                    history["val_loss"].append(val["loss"])
                    history["val_accuracy"].append(val.get("accuracy", math.nan))
                    postfix["val"] = f"{val['loss']:.4g}"
                    if val["loss"] < best["val_loss"]:
                        best = {"val_loss": val["loss"], "bad_epochs": 0,
                                "params": jax.tree_util.tree_map(
                                    jnp.copy, (state.params, state.net_state))}
                    else:
                        best = {**best, "bad_epochs": best["bad_epochs"] + 1}
                    if patience is not None and best["bad_epochs"] >= patience:
                        stop = "patience"
                if stop_at_loss is not None and train_loss < stop_at_loss:
                    stop = "stop_at_loss"
                if stop is None and ckpt_path is not None and _any_process(sigterm.requested,
                                                                           mesh):
                    stop, sigterm.handled = "sigterm", True
                bar.set_postfix(postfix, refresh=False)  # drawn at the bar's pace
                done = stop is not None or epoch + 1 == epochs
                if done:
                    history["stopped"] = stop or "epochs"
                if recorder is not None and recorded_epoch is not None and done:
                    recorder.set_hist("last", jax.device_get(  # histograms after training
                        recorded_epoch.snapshot(state, x, y, epoch + 1)))
                if ckpt_path is not None and ((epoch + 1) % checkpoint_every == 0 or done):
                    _flush(recorder)
                    _save(ckpt_path, epoch + 1, state, history, best, config, rotate, mesh)
                    saved_epoch, rotate = epoch + 1, True
                if stop is not None:
                    break
        except KeyboardInterrupt as interrupt:
            if kept is None:
                raise
            state, best, epochs_done = kept
            _back_to(history, recorder, epochs_done, int(state.step))
            history["stopped"] = "interrupted"
            done_epoch = history["epoch"][-1] if history["epoch"] else 0
            # on a mesh over several processes, each may have stopped in another epoch:
            # nothing is written (SIGTERM stops them all after the same epoch)
            if ckpt_path is not None and done_epoch != saved_epoch and not _spans_processes(mesh):
                _save(ckpt_path, done_epoch, state, history, best, config, rotate)
            raise Interrupted(f"fit: interrupted; the error's .state holds the state after "
                              f"epoch {done_epoch} and .history its history"
                              + (f" (written to {checkpoint_dir})" if ckpt_path else ""),
                              state=state, history=history) from interrupt
        finally:
            bar.close()
    _flush(recorder)
    return _result(mesh, state, best, patience), history


# How often fit's progress bar is drawn again, at most: in place on a terminal or in a
# notebook; as whole lines, one each LOG_INTERVAL_S, where the stream is a file or a pipe.
TERMINAL_INTERVAL_S, NOTEBOOK_INTERVAL_S, LOG_INTERVAL_S = 0.1, 0.5, 10.0


class _Lines:
    """A stream that is neither a terminal nor a notebook, as tqdm's file: each redraw
    ("\\r" + the bar) is written as a line of its own, so that a log file reads as a few
    whole lines rather than one line of carriage returns."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None)

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        getattr(self.stream, "flush", lambda: None)()


def _progress_bar(epochs, start: int, total: int, desc: str, enabled: bool) -> tqdm:
    """fit's bar over the epochs, on stderr, drawn at most every TERMINAL_INTERVAL_S in a
    terminal, NOTEBOOK_INTERVAL_S in a notebook and LOG_INTERVAL_S (as whole lines) where
    stderr is a file or a pipe; the postfix (loss, samples/s) is set without drawing."""
    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        file, every = stream, TERMINAL_INTERVAL_S
    elif type(stream).__module__.startswith("ipykernel"):
        file, every = stream, NOTEBOOK_INTERVAL_S
    else:
        file, every = _Lines(stream), LOG_INTERVAL_S
    return tqdm(epochs, initial=start, total=total, desc=desc, unit="epoch",
                disable=not enabled, file=file, mininterval=every)


def _diagnostics_spec(net, loss, state: TrainState, x, y, batch: int) -> _diagnostics.Spec:
    """The layout of a diagnostics record, found by tracing one recorded pass."""
    box = {}

    def trace(params, net_state, xb, yb):
        tape = _tape.recorded_pass(net, loss, params, xb, yb, key=jax.random.key(0), train=True,
                                   state=net_state)
        box["spec"] = _diagnostics.spec_of(tape, params)
        return tape.loss

    xb = jax.ShapeDtypeStruct((batch,) + x.shape[1:], x.dtype)
    yb = jax.ShapeDtypeStruct((batch,) + y.shape[1:], y.dtype)
    jax.eval_shape(trace, state.params, state.net_state, xb, yb)
    return box["spec"]


def _records_in(epoch: int, steps: int, every: int) -> bool:
    """Whether an epoch records diagnostics: always when it has k = `every` steps or more
    (its steps 0, k, 2k, ...); with fewer (full batch), when it holds a multiple of k among
    the global step numbers [epoch·steps, (epoch + 1)·steps)."""
    first = epoch * steps
    return steps >= every or -(-first // every) * every < first + steps


def _flush(recorder: _diagnostics.Recorder | None) -> None:
    """The epochs' records, kept on the device as they came, into the history (plain data):
    once before a checkpoint is written and once at the end, not after every epoch."""
    if recorder is None or not recorder.pending:
        return
    pending = recorder.pending
    if all(a.is_fully_addressable for a in jax.tree_util.tree_leaves(pending)):
        pending = jax.device_get(pending)
    else:  # arrays of a mesh over several processes
        pending = jax.tree_util.tree_map(_host, pending)
    for stats, ratios, steps in pending:
        for i, step in enumerate(steps):
            recorder.add(step, dict(zip(_diagnostics.SCALARS, stats[i])), ratios[i])
    recorder.pending.clear()


def _previous(path: Path) -> Path:
    return path.with_name(PREVIOUS_CHECKPOINT_FILE)


def _save(path: Path, epoch: int, state: TrainState, history, best: _Best, config,
          rotate: bool = True, mesh: Mesh | None = None) -> None:
    """Write the checkpoint; with `rotate`, the file it replaces becomes the previous one
    (not after a resume from the previous file: the latest was bad, the previous stays).

    On a mesh over several processes every process calls this: each brings the state to
    its host, process 0 alone writes, and the others learn whether it could (if not, they
    raise too, instead of waiting for it in the next epoch)."""
    tree: dict[str, TrainState | tuple[Params, State]] = {"state": _saveable(state)}
    if best["params"] is not None:
        tree["best_params"] = best["params"]
    meta = {"epoch": epoch, "history": history, "config": config,
            "best_val_loss": best["val_loss"], "bad_epochs": best["bad_epochs"]}
    previous = _previous(path) if rotate else None
    if not _spans_processes(mesh):
        checkpoint.save(path, tree, meta, previous=previous)
        return
    tree = jax.tree_util.tree_map(_host, tree)
    failure = None
    if jax.process_index() == 0:
        try:
            checkpoint.save(path, tree, meta, previous=previous)
        except Exception as e:  # raised below, once the other processes know
            failure = e
    if _any_process(failure is not None, mesh):
        if failure is not None:
            raise failure
        raise RuntimeError(f"fit: process 0 could not write the checkpoint {path} (its own "
                           "error says why); this process stops too")


def _check_same_start(folder: Path, start: int) -> None:
    """On a mesh over several processes, all must resume from the same epoch (they read
    the same checkpoint) or all start afresh."""
    gathered = multihost_utils.process_allgather(np.asarray([start], np.int64))
    starts = np.asarray(gathered).reshape(-1).tolist()
    if len(set(starts)) > 1:
        raise ValueError(
            f"fit: the processes found different checkpoints in {folder} (epochs {starts}, "
            "by process); on a mesh over several processes, checkpoint_dir must be one "
            "folder that every process sees (a shared file system): process 0 writes it, "
            "all of them resume from it")


def _resume(path: Path, state: TrainState, config):
    """(start epoch, state, history, best, whether the latest file was good) from the
    checkpoint written by the same run setup — the latest, or, when it is missing or fails
    its checksums, the previous one, with a warning that says why."""
    problems = []
    for candidate in (path, _previous(path)):
        if not candidate.exists():
            problems.append(f"checkpoint {candidate} is missing")
            continue
        try:
            stored, meta = checkpoint.read(candidate)
        except checkpoint.CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"fit: {problems[0]}; resuming from the previous checkpoint "
                          f"{candidate} (epoch {meta.get('epoch')})", stacklevel=3)
        written = meta.get("config") or {}
        if written != config:
            keys = sorted(k for k in set(written) | set(config) if written.get(k) != config.get(k))
            raise ValueError(
                f"fit: the checkpoint {candidate} was written with "
                f"{', '.join(f'{k}={written.get(k)!r}' for k in keys)}; this run has "
                f"{', '.join(f'{k}={config.get(k)!r}' for k in keys)}; use another "
                "checkpoint_dir (nothing was overwritten)")
        template: dict[str, TrainState | tuple[Params, State]] = {"state": _saveable(state)}
        if any(name.startswith("best_params/") for name in stored):
            template["best_params"] = (state.params, state.net_state)
        tree = checkpoint.unflatten(candidate, stored, template)
        saved = _restore_key(TrainState(*tree["state"]), state)
        best: _Best = {"val_loss": meta["best_val_loss"], "bad_epochs": meta["bad_epochs"],
                       "params": tree.get("best_params")}
        return meta["epoch"], saved, meta["history"], best, candidate == path
    raise checkpoint.CheckpointError(
        f"fit: no usable checkpoint in {path.parent}: {'; '.join(problems)}. Move these "
        "files away (or use another checkpoint_dir) to start afresh")


def _result(mesh: Mesh | None, state: TrainState, best: _Best,
            patience: int | None) -> TrainState:
    """The state fit returns, as device arrays: with `patience`, the best parameters."""
    if patience is not None and best["params"] is not None:
        params, net_state = best["params"]
        state = state._replace(params=params, net_state=net_state)
    return replicate(mesh, jax.tree_util.tree_map(jnp.asarray, state))


@jax.jit
def _copy(tree):
    """A copy on the device (not donated when the original is)."""
    return jax.tree_util.tree_map(jnp.copy, tree)


def _back_to(history, recorder, epochs: int, step: int) -> None:
    """The history as it was after `epochs` epochs (at global `step`): later entries, and
    diagnostics records of later steps, dropped."""
    for k in ("epoch", "train_loss", "time_s", "val_loss", "val_accuracy"):
        if k in history:
            del history[k][epochs:]
    if recorder is not None:
        _flush(recorder)
        d = recorder.d
        keep = sum(s < step for s in d["step"])
        for k in ("step", "update_ratio", *_diagnostics.SCALARS):
            del d[k][keep:]
        d["hist"].pop("last", None)


def _optimizer_fingerprint(opt_state) -> str:
    """What tells optimizers apart in their state: its node types, keys, leaf dtypes and
    shapes, as "ScaleByAdamState+EmptyState sha256:…". Hyper-parameters such as the
    learning rate are not in it unless they live in the state (optax.inject_hyperparams)."""
    types = []

    def describe(node) -> str:
        children = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda c: c is not node)[0]
        if len(children) == 1 and children[0][0] == ():  # a leaf
            return f"{np.dtype(node.dtype).name}{list(np.shape(node))}"
        name = type(node).__name__
        if name not in types and type(node) not in (tuple, list, dict):
            types.append(name)
        return name + "(" + ",".join(f"{checkpoint.tensor_name(p)}:{describe(c)}"
                                     for p, c in children) + ")"

    full = describe(opt_state)
    return f"{'+'.join(types) or 'stateless'} sha256:{hashlib.sha256(full.encode()).hexdigest()[:16]}"


class _SigtermStop:
    """While a checkpointed fit runs in the main thread, the first SIGTERM sets `requested`
    (fit stops after the current epoch and writes its checkpoint); a second one goes to the
    handler that was there before. That handler is put back on exit — and given a SIGTERM
    that came too late to stop the run (`handled` still False)."""

    def __init__(self, active: bool):
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested = self.handled = False
        self.previous = None

    def __enter__(self):
        if self.active:
            self.previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame):
        del signum, frame
        if self.requested:  # a second one: no more waiting
            self._restore()
            signal.raise_signal(signal.SIGTERM)
        self.requested = True

    def _restore(self):
        signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None else self.previous)

    def __exit__(self, *exc):
        if self.active:
            self._restore()
            if self.requested and not self.handled:
                signal.raise_signal(signal.SIGTERM)
        return False


__all__ = ["fit", "make_step", "evaluate", "predict", "init_state", "TrainState",
           "NonFiniteError", "Interrupted", "data_mesh", "shard_batch", "replicate",
           "global_norm", "Data", "Batch", "Stream"]
