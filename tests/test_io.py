"""fbp.io: params saved for inference and loaded back (same predictions, the net checked,
damage refused), and write_atomic (all or nothing, no temp files left, the umask's mode)."""

import errno
import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from fbp import checkpoint
from fbp import layers as L
from fbp._layer import init_with_state
from fbp.io import CheckpointError, load_params, save_params, write_atomic
from fbp.train import TrainState, predict


def tensor_names(path):
    with safe_open(str(path), framework="numpy") as f:
        return list(f.keys())


def random_params(net, input_shape, seed=0):
    """params and state of `net`, every leaf random (running variances positive): init
    traced, not run, and numpy's draws (eager jax.random would compile for every shape)."""
    params, state = jax.eval_shape(lambda key: init_with_state(net, key, input_shape)[1:],
                                   jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        values = rng.standard_normal(leaf.shape)
        if path and getattr(path[-1], "key", None) == "var":
            values = np.abs(values) + 0.5
        return jnp.asarray(0.5 * values, leaf.dtype)

    return (jax.tree_util.tree_map_with_path(fill, params),
            jax.tree_util.tree_map_with_path(fill, state))


def train_state(params, net_state, opt_state=()):
    """A TrainState as fit returns one (its optimizer state, step and key not saved)."""
    return TrainState(params, net_state, opt_state, np.zeros((), np.int32),
                      np.zeros(2, np.uint32))


def x_of(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


MLP = ((lambda: L.serial(L.dense(16), L.tanh(), L.dense(3))), (4, 5))


# --- round trips ------------------------------------------------------------------------------

def test_mlp_round_trip_gives_the_same_predictions(tmp_path):
    make, shape = MLP
    net = make()
    params, _ = random_params(net, shape)
    path = save_params(tmp_path / "mlp.safetensors", net, params)
    assert sorted(tensor_names(path)) == ["params/serial[0]/b", "params/serial[0]/w",
                                          "params/serial[2]/b", "params/serial[2]/w"]
    loaded, net_state = load_params(path, make(), (1, 5))  # a fresh net, another batch size
    assert net_state == {}
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(params)
    x = x_of(shape)
    np.testing.assert_array_equal(predict(net, loaded, x), predict(net, params, x))


def test_cnn_round_trip_from_a_train_state(tmp_path):
    net = L.serial(L.conv2d(4, 3), L.relu(), L.max_pool(2), L.flatten(), L.dense(3))
    shape = (2, 6, 6, 2)
    params, _ = random_params(net, shape)
    state = train_state(params, {})
    path = save_params(tmp_path / "cnn.safetensors", net, state)
    assert "params/serial[0]/w" in tensor_names(path)  # the kernel, named by its layer
    loaded, net_state = load_params(path, net, shape)
    x = x_of(shape)
    np.testing.assert_array_equal(predict(net, loaded, x, state=net_state), predict(net, state, x))


def test_batch_norm_running_statistics_are_saved_and_used(tmp_path):
    net = L.serial(L.dense(8), L.batch_norm(), L.relu(), L.dense(3))
    shape = (4, 5)
    params, net_state = random_params(net, shape)
    state = train_state(params, net_state)
    path = save_params(tmp_path / "bn.safetensors", net, state)
    assert {"state/serial[1]/mean", "state/serial[1]/var", "params/serial[1]/scale"} <= set(
        tensor_names(path))
    loaded, loaded_state = load_params(path, net, shape)
    x = x_of(shape)
    expected = predict(net, state, x)  # eval mode: normalized by the running statistics
    np.testing.assert_array_equal(predict(net, loaded, x, state=loaded_state), expected)
    # the statistics matter: others predict otherwise
    other = jax.tree_util.tree_map(lambda a: np.asarray(a) + 1, loaded_state)
    assert not np.allclose(predict(net, loaded, x, state=other), expected)
    # bare params with state= save the same tensors under the same names
    again = save_params(tmp_path / "bn2.safetensors", net, loaded, state=loaded_state)
    with safe_open(str(path), "numpy") as a, safe_open(str(again), "numpy") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for name in a.keys():
            np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name))


def test_tensor_names_follow_the_layer_paths(tmp_path):
    net = L.serial(L.residual(L.serial(L.dense(4), L.batch_norm())),
                   L.parallel(L.dense(3), L.dense(2)), L.remat(L.dense(5)))
    params, net_state = random_params(net, (2, 4))
    path = save_params(tmp_path / "p.safetensors", net, params, state=net_state)
    assert sorted(tensor_names(path)) == sorted([
        "params/serial[0]/residual[0]/serial[0]/w", "params/serial[0]/residual[0]/serial[0]/b",
        "params/serial[0]/residual[0]/serial[1]/scale",
        "params/serial[0]/residual[0]/serial[1]/bias",
        "params/serial[1]/parallel[0]/w", "params/serial[1]/parallel[0]/b",
        "params/serial[1]/parallel[1]/w", "params/serial[1]/parallel[1]/b",
        "params/serial[2]/remat[0]/w", "params/serial[2]/remat[0]/b",
        "state/serial[0]/residual[0]/serial[1]/mean", "state/serial[0]/residual[0]/serial[1]/var"])
    loaded, loaded_state = load_params(path, net, (2, 4))
    for a, b in zip(jax.tree_util.tree_leaves((loaded, loaded_state)),
                    jax.tree_util.tree_leaves((params, net_state))):
        np.testing.assert_array_equal(a, b)


# --- refused: another net, another shape or dtype, damage --------------------------------------

@pytest.fixture
def saved_mlp(tmp_path):
    make, shape = MLP
    net = make()
    params, _ = random_params(net, shape)
    return save_params(tmp_path / "mlp.safetensors", net, params), params


def test_another_width_names_the_tensor_and_both_shapes(saved_mlp):
    path, _ = saved_mlp
    net = L.serial(L.dense(8), L.tanh(), L.dense(3))
    with pytest.raises(ValueError, match=r"does not fit this net with input_shape \(1, 5\): "
                                         r"tensor params/serial\[0\]/b \(of dense\(8\)\) is "
                                         r"float\d+\[16\] in the file; this net expects "
                                         r"float\d+\[8\]; tensor params/serial\[0\]/w \(of "
                                         r"dense\(8\)\) is float\d+\[5, 16\] in the file; this "
                                         r"net expects float\d+\[5, 8\]") as e:
        load_params(path, net, (1, 5))
    assert str(path) in str(e.value) and "saved from the net serial(dense(16)" in str(e.value)


def test_another_input_shape_names_the_tensor(saved_mlp):
    path, _ = saved_mlp
    with pytest.raises(ValueError, match=r"input_shape \(1, 7\): tensor params/serial\[0\]/w "
                                         r"\(of dense\(16\)\) is float\d+\[5, 16\] in the "
                                         r"file; this net expects float\d+\[7, 16\]\.$"):
        load_params(path, MLP[0](), (1, 7))


def test_another_structure_lists_what_is_missing_and_extra(saved_mlp):
    path, _ = saved_mlp
    net = L.serial(L.dense(16), L.tanh(), L.dense(3), L.tanh(), L.dense(2))
    with pytest.raises(ValueError, match=r"does not fit this net .*lacks params/serial\[4\]/b "
                                         r"\(dense\(2\): float\d+\[2\]\), params/serial\[4\]/w "
                                         r"\(dense\(2\): float\d+\[3, 2\]\)"):
        load_params(path, net, (1, 5))
    with pytest.raises(ValueError, match=r"holds params/serial\[2\]/b \(float\d+\[3\]\)"
                                         r".* that this net has no place for"):
        load_params(path, L.serial(L.dense(16), L.tanh()), (1, 5))


def test_another_dtype_names_the_tensor(tmp_path):
    make, shape = MLP
    net = make()
    params, _ = random_params(net, shape)
    path = save_params(tmp_path / "half.safetensors", net,
                       jax.tree_util.tree_map(lambda a: np.asarray(a, np.float16), params))
    with pytest.raises(ValueError, match=r"params/serial\[0\]/b \(of dense\(16\)\) is "
                                         r"float16\[16\] in the file; .* expects float(32|64)"
                                         r"\[16\] \(init makes .* jax_enable_x64 is o(n|ff)\)"):
        load_params(path, net, shape)


def test_same_tensors_other_layers_needs_strict_false(saved_mlp):
    path, params = saved_mlp
    relu_net = L.serial(L.dense(16), L.relu(), L.dense(3))
    with pytest.raises(ValueError, match=r"saved from the net serial\(dense\(16\), tanh, "
                                         r"dense\(3\)\); this net is serial\(dense\(16\), relu"
                                         r".*strict=False"):
        load_params(path, relu_net, (1, 5))
    loaded, _ = load_params(path, relu_net, (1, 5), strict=False)
    np.testing.assert_array_equal(loaded[0]["w"], params[0]["w"])


def test_truncated_and_flipped_files_are_refused(saved_mlp):
    path, _ = saved_mlp
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) - 5])
    with pytest.raises(CheckpointError, match="damaged or truncated") as e:
        load_params(path, MLP[0](), (1, 5))
    assert f"params file {path}" in str(e.value)
    flipped = bytearray(raw)
    flipped[-3] ^= 0x10  # in the last tensor's data
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"holds params/serial\[\d\]/\w with bytes that do "
                                              "not match its checksum"):
        load_params(path, MLP[0](), (1, 5))


def test_checkpoints_and_params_files_are_told_apart(tmp_path, saved_mlp):
    path, _ = saved_mlp
    with pytest.raises(CheckpointError, match="params file written by fbp.io.save_params"):
        checkpoint.read(path)
    ckpt = tmp_path / "checkpoint.safetensors"
    checkpoint.save(ckpt, {"state": {"w": np.zeros(2, np.float32)}}, {"epoch": 1})
    with pytest.raises(CheckpointError, match="training checkpoint written by fit"):
        load_params(ckpt, MLP[0](), (1, 5))


def test_save_refuses_params_of_another_net_and_missing_state(tmp_path):
    make, shape = MLP
    params, _ = random_params(make(), shape)
    with pytest.raises(ValueError, match=r"save_params: serial\(dense\(16\), tanh\): expected "
                                         r"params as a tuple of 2 .*got a tuple of length 3"):
        save_params(tmp_path / "p.safetensors", L.serial(L.dense(16), L.tanh()), params)
    bn = L.serial(L.dense(4), L.batch_norm())
    bn_params, _ = random_params(bn, (2, 3))
    with pytest.raises(ValueError, match=r"running statistics \(serial\[1\] batch_norm"):
        save_params(tmp_path / "p.safetensors", bn, bn_params)
    with pytest.raises(TypeError, match="expected a fbp.Layer as net, got tuple"):
        save_params(tmp_path / "p.safetensors", params, make())
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_failed_save_keeps_the_file_it_would_replace(saved_mlp, monkeypatch):
    path, params = saved_mlp
    before = path.read_bytes()
    net = MLP[0]()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_params(path, net, jax.tree_util.tree_map(lambda a: np.asarray(a) + 1, params))
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(path.parent) == [path.name]
    np.testing.assert_array_equal(load_params(path, net, (1, 5))[0][0]["w"], params[0]["w"])


@pytest.mark.x64
def test_float64_params_round_trip(tmp_path):
    with jax.enable_x64(True):
        make, shape = MLP
        net = make()
        params, _ = random_params(net, shape)
        assert params[0]["w"].dtype == jnp.float64
        path = save_params(tmp_path / "f64.safetensors", net, params)
        loaded, _ = load_params(path, net, shape)
        assert loaded[0]["w"].dtype == jnp.float64
        np.testing.assert_array_equal(loaded[2]["w"], params[2]["w"])


# --- write_atomic -----------------------------------------------------------------------------

@pytest.fixture
def old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents")
    return path


class Boom(Exception):
    pass


def test_a_writer_failing_midway_leaves_the_old_file_and_no_temp_file(old_file):
    def half_then_fail(f):
        f.write(b"new cont")
        f.flush()
        assert len(os.listdir(old_file.parent)) == 2  # the temp file exists while writing
        raise Boom("midway")

    with pytest.raises(Boom):
        write_atomic(old_file, half_then_fail)
    assert old_file.read_bytes() == b"old contents"
    assert os.listdir(old_file.parent) == [old_file.name]

    def interrupted(f):
        f.write(b"new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(old_file, interrupted)
    assert old_file.read_bytes() == b"old contents"
    assert os.listdir(old_file.parent) == [old_file.name]


def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(old_file, monkeypatch):
    def no_rename(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(PermissionError):
        write_atomic(old_file, b"new contents")
    monkeypatch.undo()
    assert old_file.read_bytes() == b"old contents"
    assert os.listdir(old_file.parent) == [old_file.name]


def test_the_file_and_the_folder_are_flushed(old_file, monkeypatch):
    flushed = []
    real_fsync = os.fsync

    def fsync(fd):
        flushed.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(old_file, b"new contents")
    assert flushed == [False, True]  # the temp file's data, then the folder's rename
    assert old_file.read_bytes() == b"new contents"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_the_file_gets_the_umasks_mode_and_the_umask_is_not_touched(tmp_path, monkeypatch,
                                                                    umask):
    old = os.umask(umask)
    try:
        def no_umask(mask):
            raise AssertionError("write_atomic changed the process umask")

        monkeypatch.setattr(os, "umask", no_umask)
        path = write_atomic(tmp_path / "new.bin", b"data")
        monkeypatch.undo()
    finally:
        os.umask(old)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert path.read_bytes() == b"data"


def test_previous_keeps_the_replaced_file_and_the_target_never_goes_missing(old_file,
                                                                            monkeypatch):
    prev = old_file.with_name("out.prev.bin")
    write_atomic(old_file, b"second", previous=prev)
    assert old_file.read_bytes() == b"second" and prev.read_bytes() == b"old contents"
    real_replace = os.replace

    def fail_on_the_target(src, dst):  # the previous file is kept, then the rename fails
        if str(dst) == str(old_file):
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_the_target)
    with pytest.raises(OSError, match="Input/output"):
        write_atomic(old_file, b"third", previous=prev)
    monkeypatch.undo()
    assert old_file.read_bytes() == b"second" and prev.read_bytes() == b"second"
    assert sorted(os.listdir(old_file.parent)) == sorted([old_file.name, prev.name])


def test_bad_data_and_a_folder_in_the_way_are_refused(tmp_path):
    with pytest.raises(TypeError, match="data must be bytes or a function .* got str"):
        write_atomic(tmp_path / "a.txt", "text")
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match=r"d: it is a directory"):
        write_atomic(tmp_path / "d", b"x")
    assert sorted(os.listdir(tmp_path)) == ["d"] and not os.listdir(tmp_path / "d")


def test_missing_folders_are_made(tmp_path):
    path = write_atomic(tmp_path / "a" / "b" / "c.bin", lambda f: f.write(b"abc"))
    assert path.read_bytes() == b"abc"


def test_train_state_round_trip_keeps_only_what_inference_needs(tmp_path):
    """The optimizer state is not in a params file (a TrainState's params and net_state are)."""
    make, shape = MLP
    net = make()
    params, _ = random_params(net, shape)
    state = train_state(params, {}, opt_state=(params, params))  # adam's moments, say
    path = save_params(tmp_path / "s.safetensors", net, state)
    assert all(n.startswith("params/") for n in tensor_names(path)) and len(
        tensor_names(path)) == 4
