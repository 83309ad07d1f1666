"""Reliability: output paths checked before training, checkpoints that check themselves (and
a fuzz of them), the previous checkpoint as a fallback, NaN/Inf and Ctrl-C handing back the
last good state, SIGTERM finishing the epoch and writing the checkpoint."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import optax
import pytest

import fbp.train
from fbp import checkpoint, losses
from fbp import layers as L
from fbp.checkpoint import CheckpointError
from fbp.cli import main as cli_main
from fbp.optim import gd
from fbp.train import CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, Interrupted, NonFiniteError, fit

pytestmark = pytest.mark.standard_dtype_promotion  # optax's optimizers need it

LOSS = losses.softmax_cross_entropy
KW = dict(batch_size=16, seed=3, progress=False)


def blobs(n=96, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = 3 * rng.standard_normal((classes, d))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = (centers[y] + rng.standard_normal((n, d))).astype(np.float32)
    return x, y


def small_net():
    return L.serial(L.dense(16), L.tanh(), L.dense(3))


def assert_same_state(a, b):
    la, lb = jax.tree_util.tree_leaves(a[:4]), jax.tree_util.tree_leaves(b[:4])
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def flip(path, offset, xor=0xFF):
    data = bytearray(path.read_bytes())
    data[offset] ^= xor
    path.write_bytes(bytes(data))


def data_offset(path) -> int:
    """Where the tensors start: after the 8-byte length and the JSON header."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


# --- 1. output paths, before anything runs -------------------------------------------------------

@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_checkpoint_dir_in_the_way_fails_before_anything_runs(tmp_path, where):
    x, y = blobs()
    blocker = tmp_path / "f"
    blocker.write_text("not a folder")
    ckpt = blocker if where == "file" else blocker / "run"
    expected = "is a file, not a directory" if where == "file" else f"cannot be created: {blocker}"
    # empty data would fail its own check, later: the folder is checked first
    with pytest.raises(ValueError, match=f"fit: checkpoint_dir {ckpt}.*{expected}"):
        fit(small_net(), LOSS, gd(0.1), (x[:0], y[:0]), epochs=1, checkpoint_dir=ckpt, **KW)
    assert blocker.read_text() == "not a folder"


def _chmod_denies(folder) -> bool:
    """Whether a folder chmod-ed to r-x refuses a new file here (not for root, who has
    CAP_DAC_OVERRIDE)."""
    folder.chmod(0o500)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return True
    (folder / "probe").unlink()
    return False


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("sub", ["", "run"])
def test_checkpoint_dir_without_permission_fails_fast(tmp_path, sub):
    x, y = blobs()
    locked = tmp_path / "locked"
    locked.mkdir()
    try:
        if not _chmod_denies(locked):
            pytest.skip("chmod does not deny here (root); the permission path is covered "
                        "by test_permission_check_runs_as_root_too")
        with pytest.raises(PermissionError, match=f"fit: checkpoint_dir {locked}.* not writable"):
            fit(small_net(), LOSS, gd(0.1), (x[:0], y[:0]), epochs=1,
                checkpoint_dir=locked / sub if sub else locked, **KW)
    finally:
        locked.chmod(0o700)


def test_permission_check_runs_as_root_too(tmp_path, monkeypatch):
    """What chmod cannot show as root: the check asks os.access, and says so in fbp's words."""
    x, y = blobs()
    monkeypatch.setattr(checkpoint.os, "access", lambda *a, **k: False)
    with pytest.raises(PermissionError, match=f"fit: checkpoint_dir {tmp_path}.*permission denied"):
        fit(small_net(), LOSS, gd(0.1), (x, y), epochs=1, checkpoint_dir=tmp_path, **KW)


@pytest.mark.parametrize("flag", ["--plot", "--plot-dir", "--checkpoint-dir", "--diagnostics"])
def test_cli_checks_output_paths_before_training(tmp_path, capsys, flag):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    if flag == "--plot-dir":  # a folder where the PNG should go
        flag, value = "--plot", tmp_path
    elif flag == "--plot":
        value = blocker / "curves.png"
    else:
        value = blocker if flag == "--checkpoint-dir" else blocker / "diag"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--data", "iris", "--epochs", "1", "--no-progress", "--no-extras",
                  flag, str(value)])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing loaded, nothing trained
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fbp train: error: {flag}: ")
    assert str(value) in lines[0]


# --- 2. checkpoints that check themselves ----------------------------------------------------------

def test_tensor_names_come_from_the_key_paths():
    from typing import NamedTuple

    class S(NamedTuple):
        params: list
        count: np.ndarray

    tree = {"state": S([{"w": np.zeros(2)}, {}, {"a/b%": np.ones(1)}], np.int32(0))}
    names = [checkpoint.tensor_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    assert names == ["state/params/0/w", "state/params/2/a%2Fb%25", "state/count"]

    class Twice:  # a pytree node naming both its children "a"
        pass

    jax.tree_util.register_pytree_with_keys(
        Twice, lambda t: (((jax.tree_util.GetAttrKey("a"), np.zeros(1)),) * 2, None),
        lambda aux, children: Twice())
    with pytest.raises(ValueError, match=r"same name \['a'\]"):
        checkpoint.to_bytes(Twice())


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory):
    """A real fit checkpoint (adam, validation): its folder and bytes."""
    folder = tmp_path_factory.mktemp("ckpt")
    x, y = blobs()
    fit(small_net(), LOSS, optax.adam(1e-2), (x, y), epochs=2, val_data=blobs(seed=1),
        checkpoint_dir=folder, **KW)
    return folder, (folder / CHECKPOINT_FILE).read_bytes()


def test_checkpoint_round_trip_and_names(run_checkpoint):
    folder, raw = run_checkpoint
    stored, meta = checkpoint.read(folder / CHECKPOINT_FILE)
    assert {"state/params/0/w", "state/opt_state/0/mu/2/b", "state/step", "state/key",
            "best_params/0/0/w"} <= set(stored)
    assert meta["epoch"] == 2 and meta["history"]["stopped"] == "epochs"
    assert meta["config"]["optimizer"].startswith("ScaleByAdamState+EmptyState sha256:")
    prev_stored, prev_meta = checkpoint.read(folder / PREVIOUS_CHECKPOINT_FILE)
    assert prev_meta["epoch"] == 1


def _rewrite(path, stored, header):
    from safetensors.numpy import save
    path.write_bytes(save(stored, metadata=header))


def _header(path):
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("damage", ["truncated", "flipped", "metadata_edited", "tensor_edited",
                                    "tensor_removed", "foreign"])
def test_damaged_checkpoints_are_refused(run_checkpoint, tmp_path, damage):
    _, raw = run_checkpoint
    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(raw)
    header, stored = _header(path)
    expected = {"truncated": "damaged or truncated", "flipped": "do not match its checksum",
                "metadata_edited": "metadata that does not match its checksum",
                "tensor_edited": "state/params/0/w with bytes that do not match",
                "tensor_removed": "lacks", "foreign": "not an fbp checkpoint"}[damage]
    if damage == "truncated":
        path.write_bytes(raw[:len(raw) - 3])
    elif damage == "flipped":  # the last byte of the tensors
        flip(path, len(raw) - 1, 0x01)
    elif damage == "metadata_edited":  # a by-hand edit of the history, re-serialized
        meta = json.loads(header["fbp"])
        meta["history"]["train_loss"][0] = 0.001
        _rewrite(path, stored, {**header, "fbp": json.dumps(meta)})
    elif damage == "tensor_edited":
        stored["state/params/0/w"] = stored["state/params/0/w"] * 2
        _rewrite(path, stored, header)
    elif damage == "tensor_removed":
        del stored["state/params/0/w"]
        _rewrite(path, stored, header)
    else:
        _rewrite(path, stored, {"fbp": header["fbp"]})
    with pytest.raises(CheckpointError, match=expected) as info:
        checkpoint.read(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def _outcome(path, reference):
    """'refused' (CheckpointError naming the file) or 'harmless' (everything read is
    bit-identical to the original); anything else fails the test."""
    try:
        stored, meta = checkpoint.read(path)
    except CheckpointError as e:
        assert str(path) in str(e)
        return "refused"
    ref_stored, ref_meta = reference
    assert sorted(stored) == sorted(ref_stored)
    for name, arr in stored.items():
        ref = ref_stored[name]
        assert arr.dtype == ref.dtype and arr.shape == ref.shape and arr.tobytes() == ref.tobytes()
    assert json.dumps(meta) == json.dumps(ref_meta)
    return "harmless"


def test_fuzz_truncations_and_byte_flips(run_checkpoint, tmp_path):
    _, raw = run_checkpoint
    original = tmp_path / "original.safetensors"
    original.write_bytes(raw)
    reference = checkpoint.read(original)
    path = tmp_path / CHECKPOINT_FILE
    counts = {}
    for cut in np.linspace(0, len(raw) - 1, 16).astype(int):  # 16 truncations, 0 .. size − 1
        path.write_bytes(raw[:cut])
        assert _outcome(path, reference) == "refused", cut
        counts["truncated refused"] = counts.get("truncated refused", 0) + 1
    rng = np.random.default_rng(0)
    header_end = data_offset(original)
    for offset, xor in zip(rng.integers(0, len(raw), 48), rng.integers(1, 256, 48)):
        path.write_bytes(raw)
        flip(path, int(offset), int(xor))
        where = "header" if offset < header_end else "tensors"
        key = f"flip in {where} {_outcome(path, reference)}"
        counts[key] = counts.get(key, 0) + 1
    print(f"\nfuzz of a {len(raw)}-byte checkpoint ({header_end} header): {counts}")
    assert counts["truncated refused"] == 16
    assert sum(v for k, v in counts.items() if k.startswith("flip")) == 48
    assert counts.get("flip in tensors harmless", 0) == 0  # every tensor byte is covered


def test_a_newline_in_the_header_padding_is_harmless(tmp_path):
    """safetensors pads its JSON header with spaces to a multiple of 8 bytes: JSON
    whitespace, so another whitespace byte there changes nothing that is read."""
    path = tmp_path / "c.safetensors"
    for k in range(8):  # one of eight metadata lengths needs padding
        checkpoint.save(path, {"w": np.arange(3.0)}, {"x": "a" * k})
        raw = path.read_bytes()
        end = data_offset(path)
        if raw[end - 1:end] == b" ":
            break
    reference = checkpoint.read(path)
    path.write_bytes(raw[:end - 1] + b"\n" + raw[end:])
    assert _outcome(path, reference) == "harmless"


def test_fallback_to_the_previous_checkpoint_is_bitwise(tmp_path):
    x, y = blobs()
    full, full_hist = fit(small_net(), LOSS, optax.adam(1e-2), (x, y), epochs=6, **KW)
    fit(small_net(), LOSS, optax.adam(1e-2), (x, y), epochs=4, checkpoint_dir=tmp_path, **KW)
    latest, prev = tmp_path / CHECKPOINT_FILE, tmp_path / PREVIOUS_CHECKPOINT_FILE
    assert checkpoint.read(prev)[1]["epoch"] == 3
    flip(latest, len(latest.read_bytes()) // 2 + 5)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.warns(UserWarning, match=f"{latest} .*resuming from the previous checkpoint "
                                         f"{prev} \\(epoch 3\\)"):
        resumed, hist = fit(small_net(), LOSS, optax.adam(1e-2), (x, y), epochs=6,
                            checkpoint_dir=tmp_path, **KW)
    assert_same_state(full, resumed)
    assert hist["train_loss"] == full_hist["train_loss"] and hist["stopped"] == "epochs"
    assert signal.getsignal(signal.SIGTERM) is handler  # put back
    # the damaged file was replaced, not kept as the previous one: both are good now
    assert checkpoint.read(latest)[1]["epoch"] == 6 and checkpoint.read(prev)[1]["epoch"] == 5
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_latest_missing_or_both_bad(tmp_path):
    x, y = blobs()
    fit(small_net(), LOSS, gd(0.1), (x, y), epochs=2, checkpoint_dir=tmp_path, **KW)
    latest, prev = tmp_path / CHECKPOINT_FILE, tmp_path / PREVIOUS_CHECKPOINT_FILE
    latest.unlink()  # as after a crash between the two renames
    with pytest.warns(UserWarning, match="is missing; resuming from the previous checkpoint"):
        _, hist = fit(small_net(), LOSS, gd(0.1), (x, y), epochs=2, checkpoint_dir=tmp_path, **KW)
    assert hist["epoch"] == [1, 2]
    for p in (latest, prev):
        p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"no usable checkpoint in {tmp_path}.*"
                                              f"{latest}.*{prev}"):
        fit(small_net(), LOSS, gd(0.1), (x, y), epochs=3, checkpoint_dir=tmp_path, **KW)


def test_another_optimizer_is_refused(tmp_path):
    x, y = blobs()
    fit(small_net(), LOSS, gd(0.1), (x, y), epochs=1, checkpoint_dir=tmp_path, **KW)
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(ValueError, match="was written with optimizer='GDState sha256:.*"
                                         "this run has optimizer='ScaleByAdamState"):
        fit(small_net(), LOSS, optax.adam(1e-2), (x, y), epochs=2, checkpoint_dir=tmp_path, **KW)
    assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before


@pytest.mark.parametrize("how", ["epochs", "patience"])
def test_a_finished_run_reopened_is_returned_as_it_was(tmp_path, how):
    x, y = blobs(n=64, seed=1)
    kw = dict(KW)
    if how == "patience":  # a shifted validation set: its loss turns up while training goes on
        xv, yv = blobs(n=64, seed=2)
        kw.update(val_data=(xv + 1.5, yv), patience=2)
    net = L.serial(L.dense(64), L.relu(), L.dense(3))
    epochs = 60 if how == "patience" else 3
    first, hist = fit(net, LOSS, optax.adam(0.05), (x, y), epochs=epochs, checkpoint_dir=tmp_path,
                      **kw)
    assert hist["stopped"] == how
    t0 = time.perf_counter()
    again, hist2 = fit(net, LOSS, optax.adam(0.05), (x, y), epochs=epochs,
                       checkpoint_dir=tmp_path, **kw)
    assert time.perf_counter() - t0 < 2  # nothing compiled, nothing trained
    assert hist2["stopped"] == how and hist2["epoch"] == hist["epoch"]
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(again))
    assert_same_state(first, again)


# --- 3. NaN / Inf -------------------------------------------------------------------------------

@pytest.mark.parametrize("epoch_mode", ["scan", "steps"])  # the epoch keeps / donates its input
def test_nonfinite_hands_back_the_last_good_state(epoch_mode):
    x, y = blobs()
    x = x * 30  # float32: the loss grows ~1e10× an epoch and turns NaN in epoch 5
    net = L.serial(L.dense(8), L.relu(), L.dense(3))
    kw = dict(KW, epoch_mode=epoch_mode)
    with pytest.raises(NonFiniteError, match="training loss became nan in epoch") as info:
        fit(net, LOSS, gd(0.25), (x, y), epochs=30, **kw)
    err = info.value
    good = len(err.history["epoch"])
    assert good >= 3 and f"in epoch {good + 1} " in str(err) and isinstance(err, FloatingPointError)
    assert err.history["stopped"] == "nonfinite" and err.history["epoch"] == list(range(1, good + 1))
    before, hist = fit(net, LOSS, gd(0.25), (x, y), epochs=good, **kw)
    assert_same_state(err.state, before)  # the state after the last good epoch, bit for bit
    assert err.history["train_loss"] == hist["train_loss"]


# --- 4. Ctrl-C and SIGTERM ----------------------------------------------------------------------

def _interrupt_at_call(monkeypatch, n):
    """Ctrl-C during the n-th epoch's validation (fit calls evaluate after each epoch)."""
    calls = []
    real = fbp.train.evaluate

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fbp.train, "evaluate", evaluate)


def test_ctrl_c_hands_back_the_last_complete_epoch(tmp_path, monkeypatch):
    x, y = blobs()
    kw = dict(KW, val_data=blobs(seed=1))
    full, full_hist = fit(small_net(), LOSS, optax.adam(1e-2), (x, y), epochs=5, **kw)
    two, _ = fit(small_net(), LOSS, optax.adam(1e-2), (x, y), epochs=2, **kw)
    for ckpt in ({}, dict(checkpoint_dir=tmp_path, checkpoint_every=1000)):
        _interrupt_at_call(monkeypatch, 3)
        with pytest.raises(Interrupted, match="state after epoch 2") as info:
            fit(small_net(), LOSS, optax.adam(1e-2), (x, y), epochs=5, **kw, **ckpt)
        monkeypatch.undo()
        assert isinstance(info.value, KeyboardInterrupt)
        assert info.value.history["stopped"] == "interrupted"
        assert info.value.history["epoch"] == [1, 2]
        assert_same_state(info.value.state, two)
    # with a checkpoint_dir, the last complete epoch was written: a rerun goes on, bit for bit
    assert checkpoint.read(tmp_path / CHECKPOINT_FILE)[1]["epoch"] == 2
    resumed, hist = fit(small_net(), LOSS, optax.adam(1e-2), (x, y), epochs=5, **kw, **ckpt)
    assert_same_state(full, resumed)
    assert hist["train_loss"] == full_hist["train_loss"] and hist["stopped"] == "epochs"


CHILD = textwrap.dedent("""
    import json, signal, sys
    import numpy as np
    from fbp import layers as L, losses
    from fbp.optim import gd
    from fbp.train import fit
    data = np.load(sys.argv[1])
    net = L.serial(L.dense(16), L.tanh(), L.dense(3))
    _, history = fit(net, losses.softmax_cross_entropy, gd(0.1), (data["x"], data["y"]),
                     epochs=100_000, batch_size=16, seed=3, progress=False,
                     checkpoint_dir=sys.argv[2])
    print(json.dumps({"epochs": len(history["epoch"]), "stopped": history["stopped"],
                      "handler_put_back": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL}))
""")


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM to a child process")
def test_sigterm_finishes_the_epoch_writes_the_checkpoint_and_resumes_bitwise(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    ckpt = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "data.npz"), str(ckpt)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (ckpt / CHECKPOINT_FILE).exists():  # training has begun, the handler is in
        assert child.poll() is None, child.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["stopped"] == "sigterm" and result["handler_put_back"]
    k = result["epochs"]
    assert 1 <= k < 100_000
    stored, meta = checkpoint.read(ckpt / CHECKPOINT_FILE)  # whole: every checksum holds
    assert meta["epoch"] == k and meta["history"]["stopped"] == "sigterm"
    assert not [p for p in os.listdir(ckpt) if p.endswith(".tmp")]
    resumed, hist = fit(small_net(), LOSS, gd(0.1), (x, y), epochs=k + 2, checkpoint_dir=ckpt,
                        **KW)
    full, full_hist = fit(small_net(), LOSS, gd(0.1), (x, y), epochs=k + 2, **KW)
    assert_same_state(full, resumed)
    assert hist["train_loss"] == full_hist["train_loss"] and hist["stopped"] == "epochs"


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers live in the main thread")
@pytest.mark.parametrize("signals", [1, 2])
def test_a_second_sigterm_goes_to_the_handler_before(tmp_path, monkeypatch, signals):
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    before = signal.signal(signal.SIGTERM, mine)
    real = fbp.train.evaluate
    calls = []

    def evaluate(*args, **kwargs):  # SIGTERM(s) during the second epoch's validation
        calls.append(1)
        if len(calls) == 2:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(fbp.train, "evaluate", evaluate)
    try:
        x, y = blobs()
        _, hist = fit(small_net(), LOSS, gd(0.1), (x, y), epochs=5, val_data=blobs(seed=1),
                      checkpoint_dir=tmp_path, checkpoint_every=1000, **KW)
    finally:
        handler = signal.signal(signal.SIGTERM, before)
    assert hist["stopped"] == "sigterm" and hist["epoch"] == [1, 2]
    assert checkpoint.read(tmp_path / CHECKPOINT_FILE)[1]["epoch"] == 2
    assert seen == [signal.SIGTERM] * (signals - 1)  # the first one was fit's
    assert handler is mine  # put back


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers live in the main thread")
def test_the_sigterm_handler_is_only_there_during_a_checkpointed_fit(tmp_path):
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    before = signal.signal(signal.SIGTERM, mine)
    try:
        x, y = blobs()
        fit(small_net(), LOSS, gd(0.1), (x, y), epochs=1, checkpoint_dir=tmp_path, **KW)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)
    assert seen == []
