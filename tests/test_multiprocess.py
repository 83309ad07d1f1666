"""fit over the devices of several processes (multi-controller JAX): two processes on this
machine, two CPU devices each, CPU collectives over gloo, against a single-process run."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from fbp import checkpoint, losses
from fbp import layers as L
from fbp.optim import gd
from fbp.train import CHECKPOINT_FILE, evaluate, fit, predict

pytestmark = [pytest.mark.slow, pytest.mark.standard_dtype_promotion]

N, BATCH, EPOCHS = 90, 12, 3  # 90 rows over 4 devices: the last share is padded
CONFIGS = [(grad, mode) for grad in ("manual", "auto") for mode in ("scan", "steps")]


def data(seed=0):
    rng = np.random.default_rng(seed)
    centers = 3 * rng.standard_normal((3, 5))
    y = rng.integers(0, 3, N).astype(np.int32)
    return (centers[y] + rng.standard_normal((N, 5))).astype(np.float32), y


def net(kind="dropout"):
    if kind == "dropout":  # dropout: the masks must not depend on how the batch is split
        return L.serial(L.dense(16), L.tanh(), L.dropout(0.2), L.dense(3))
    return L.serial(L.dense(16), L.batch_norm(0.8), L.relu(), L.dense(3))  # whole-batch stats


PREAMBLE = textwrap.dedent("""
    import json, sys
    process, port, out, tests, folder = int(sys.argv[1]), sys.argv[2], *sys.argv[3:6]
    import jax
    try:  # gloo: JAX's default in recent versions, named for older ones
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:
        pass
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=process, initialization_timeout=60)
    import numpy as np
    import fbp.train as T
    from fbp import losses
    from fbp.optim import gd
    sys.path.insert(0, tests)
    from test_multiprocess import BATCH, CONFIGS, EPOCHS, data, net
""")

WORKER = PREAMBLE + textwrap.dedent("""
    assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    placed = []  # the data arrays fit puts on the devices
    device_data = T._device_data
    T._device_data = lambda *a: placed.append(device_data(*a)) or placed[-1]
    x, y = data()
    ce = losses.softmax_cross_entropy
    arrays, result = {}, {}
    for grad, mode in CONFIGS:
        state, history = T.fit(net(), ce, gd(0.1), (x, y), epochs=EPOCHS, batch_size=BATCH,
                               grad=grad, epoch_mode=mode, devices=jax.devices(),
                               progress=(grad, mode) == ("manual", "scan"))
        assert history["epoch_mode"] == mode
        for i, leaf in enumerate(jax.tree.leaves(state.params)):
            arrays[f"{grad}_{mode}_{i}"] = np.asarray(leaf)
        result[f"{grad}_{mode}"] = history["train_loss"]
    # the data set split over the 4 devices: 23 rows each (90 padded to 92), 2 of them here
    result["shards"] = sorted({(len(a.addressable_shards), a.addressable_shards[0].data.shape[0],
                                a.shape[0]) for a in placed})
    # batch_norm, diagnostics, validation and a checkpoint that process 0 writes; resumed
    save, result["saves"] = T.checkpoint.save, 0

    def counted_save(*a, **k):
        result["saves"] += 1
        return save(*a, **k)

    T.checkpoint.save = counted_save
    kw = dict(batch_size=BATCH, devices=jax.devices(), progress=False, diagnostics_every=2,
              val_data=data(seed=1), epoch_mode="scan")
    T.fit(net("bn"), ce, gd(0.1), (x, y), epochs=EPOCHS - 1, checkpoint_dir=folder, **kw)
    resume = T._resume

    def recorded_resume(*a):
        found = resume(*a)
        result["resumed_from"] = found[0]
        return found

    T._resume = recorded_resume
    state, history = T.fit(net("bn"), ce, gd(0.1), (x, y), epochs=EPOCHS, checkpoint_dir=folder,
                           **kw)
    for i, leaf in enumerate(jax.tree.leaves((state.params, state.net_state))):
        arrays[f"bn_{i}"] = np.asarray(leaf)
    result["bn"] = {k: history[k] for k in ("train_loss", "val_loss", "val_accuracy")}
    result["bn_diagnostics_steps"] = history["diagnostics"]["step"]
    result["evaluate"] = T.evaluate(net("bn"), ce, state, *data(seed=1))
    result["predict"] = np.asarray(T.predict(net("bn"), state, x[:5])).tolist()
    # each process must pass the same data set
    other = (x + process, y)
    try:
        T.fit(net(), ce, gd(0.1), other, epochs=1, batch_size=BATCH, devices=jax.devices(),
              progress=False)
    except ValueError as e:
        result["different_data"] = str(e)
    np.savez(out + ".npz", **arrays)
    with open(out + ".json", "w") as f:
        json.dump(result, f)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_two_processes(script, tmp_path):
    """Processes 0 and 1 running `script`, their stderr into files."""
    port, tests = free_port(), os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs, logs = [], []
    for i in range(2):
        log = open(tmp_path / f"stderr{i}.txt", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", script, str(i), str(port), str(tmp_path / f"out{i}"), tests,
             str(tmp_path / "ckpt")], stdout=subprocess.DEVNULL, stderr=log, env=env))
    return procs, logs


def finish(procs, logs, timeout):
    """Both processes' stderr once they end; if one fails or they take over `timeout`
    seconds (then both are killed), both stderr tails in the failure message."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    errors = []
    for i, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        text = log.read()
        log.close()
        if p.returncode != 0:
            errors.append(f"--- process {i}: exit {p.returncode} (killed after {timeout} s if "
                          f"negative) ---\n{text[-3000:]}")
        logs[i] = text
    assert not errors, "\n".join(errors)
    return logs


def run_two_processes(tmp_path, timeout=400):
    """Both workers' results and stderr."""
    logs = finish(*start_two_processes(WORKER, tmp_path), timeout)
    return [(dict(np.load(tmp_path / f"out{i}.npz")),
             json.loads((tmp_path / f"out{i}.json").read_text())) for i in range(2)], logs


def leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def test_fit_over_two_processes_equals_one_process(tmp_path):
    t0 = time.perf_counter()
    ((arrays0, out0), (arrays1, out1)), logs = run_two_processes(tmp_path)
    seconds = time.perf_counter() - t0
    with jax.enable_x64(False):  # the workers train in float32, as JAX does by default
        compare(arrays0, out0, arrays1, out1, tmp_path)
    # one progress bar: process 0's
    assert "fit (manual)" in logs[0] and "100%" in logs[0] and "fit (manual)" not in logs[1]
    print(f"two processes, 4 devices, 8 fits: {seconds:.1f} s")


def compare(arrays0, out0, arrays1, out1, tmp_path):
    """The workers' results against the same fits in this process, on one device."""
    x, y = data()
    ce = losses.softmax_cross_entropy
    for grad, mode in CONFIGS:
        state, history = fit(net(), ce, gd(0.1), (x, y), epochs=EPOCHS, batch_size=BATCH,
                             grad=grad, epoch_mode=mode, progress=False)
        ref = leaves(state.params)
        for arrays in (arrays0, arrays1):
            got = [arrays[f"{grad}_{mode}_{i}"] for i in range(len(ref))]
            assert all(g.dtype == np.float32 for g in got)
            err = max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref))
            assert err < 1e-5, (grad, mode, err)
        np.testing.assert_allclose(out0[f"{grad}_{mode}"], history["train_loss"], rtol=1e-5)
        assert out0[f"{grad}_{mode}"] == out1[f"{grad}_{mode}"]  # one history for all
        assert history["train_loss"][-1] < history["train_loss"][0]  # it trained
    # the data set is split: each process holds 2 of the 4 shares of 23 rows (92 = 90 padded)
    assert out0["shards"] == out1["shards"] == [[2, 23, 92]], out0["shards"]
    # batch_norm + diagnostics + validation, resumed from the checkpoint process 0 wrote
    assert out0["resumed_from"] == out1["resumed_from"] == EPOCHS - 1
    assert checkpoint.read(tmp_path / "ckpt" / CHECKPOINT_FILE)[1]["epoch"] == EPOCHS
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    kw = dict(batch_size=BATCH, progress=False, diagnostics_every=2, val_data=data(seed=1),
              epoch_mode="scan")
    state, history = fit(net("bn"), ce, gd(0.1), (x, y), epochs=EPOCHS, **kw)
    ref = leaves((state.params, state.net_state))
    for arrays in (arrays0, arrays1):
        err = max(float(np.max(np.abs(arrays[f"bn_{i}"] - r))) for i, r in enumerate(ref))
        assert err < 1e-4, err
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(out0["bn"][key], history[key], rtol=1e-5)
    assert out0["bn"] == out1["bn"] and out0["evaluate"] == out1["evaluate"]
    ref_eval = evaluate(net("bn"), ce, state, *data(seed=1))
    assert abs(out0["evaluate"]["loss"] - ref_eval["loss"]) < 1e-5 * ref_eval["loss"]
    np.testing.assert_allclose(out0["predict"], np.asarray(predict(net("bn"), state, x[:5])),
                               rtol=1e-4, atol=1e-5)
    assert out0["saves"] == EPOCHS and out1["saves"] == 0  # process 0 alone writes
    assert out0["bn_diagnostics_steps"] == history["diagnostics"]["step"]
    for out in (out0, out1):
        assert out["different_data"].startswith("fit: the processes hold different training "
                                                "data"), out


SIGTERM_WORKER = PREAMBLE + textwrap.dedent("""
    _, history = T.fit(net(), losses.softmax_cross_entropy, gd(0.1), data(), epochs=10**6,
                       batch_size=BATCH, devices=jax.devices(), progress=False,
                       checkpoint_dir=folder)
    with open(out + ".json", "w") as f:
        json.dump({"epochs": len(history["epoch"]), "stopped": history["stopped"]}, f)
""")


@pytest.mark.skipif(os.name != "posix", reason="SIGTERM to a child process")
def test_a_sigterm_to_one_process_stops_all_after_the_same_epoch(tmp_path):
    procs, logs = start_two_processes(SIGTERM_WORKER, tmp_path)
    written = tmp_path / "ckpt" / CHECKPOINT_FILE
    deadline = time.monotonic() + 300
    while not written.exists() and time.monotonic() < deadline and all(
            p.poll() is None for p in procs):
        time.sleep(0.05)
    if written.exists():
        procs[1].send_signal(signal.SIGTERM)  # to process 1 only
    finish(procs, logs, timeout=300)
    out = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
    assert out[0] == out[1] and out[0]["stopped"] == "sigterm", out
    assert 1 <= out[0]["epochs"] < 10**6
    meta = checkpoint.read(written)[1]  # written by process 0, when process 1 was told
    assert meta["epoch"] == out[0]["epochs"] and meta["history"]["stopped"] == "sigterm"
