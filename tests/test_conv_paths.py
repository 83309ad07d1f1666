"""conv2d's formulations: y, ∂W and ∂x as sums over the kernel taps (on CPU with few input
channels) or through XLA's convolutions (∂W on CPU summed over batch chunks). Each, forced,
against numpy loops over the output (y, ∂W, ∂b, ∂x) on geometries with strides, dilation,
explicit and uneven padding; the rule that picks them; under -m slow, the convolution path
(which the small layer_cases never reach on CPU) through check_layer too, and the tap path
in bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import init_shapes, randomize, rel_err

import fbp
from fbp import layers as L
from fbp.layers import conv as conv_module

GEOMETRIES = {
    # name: ((H, W), kernel, strides, dilation, padding, the padding it means)
    "3x3-same": ((6, 5), (3, 3), (1, 1), (1, 1), "SAME", ((1, 1), (1, 1))),
    "3x2-stride23-dil12-explicit": ((7, 7), (3, 2), (2, 3), (1, 2), ((1, 2), (0, 1)),
                                    ((1, 2), (0, 1))),
    # 7 rows, 2×2 windows by 2: the last row is read by no window
    "2x2-stride2-valid-remainder": ((7, 6), (2, 2), (2, 2), (1, 1), "VALID",
                                    ((0, 0), (0, 0))),
}


def _loops(x, w, b, g, strides, dilation, pads):
    """y, ∂W, ∂b, ∂x from the defining sums, one output position at a time."""
    (kh, kw), (sh, sw), (dh, dw) = w.shape[:2], strides, dilation
    (lo_h, hi_h), (lo_w, hi_w) = pads
    xp = np.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    y, dxp, dw_ref = np.zeros(g.shape), np.zeros_like(xp), np.zeros_like(w)
    for p in range(g.shape[1]):
        for q in range(g.shape[2]):
            rows, cols = p * sh + dh * np.arange(kh), q * sw + dw * np.arange(kw)
            patch = xp[:, rows][:, :, cols]                          # (N, kh, kw, C)
            y[:, p, q] = np.einsum("nijc,ijco->no", patch, w) + b
            dw_ref += np.einsum("nijc,no->ijco", patch, g[:, p, q])
            dxp[:, rows[:, None], cols[None, :]] += np.einsum("ijco,no->nijc", w, g[:, p, q])
    return y, dw_ref, g.sum((0, 1, 2)), dxp[:, lo_h:lo_h + x.shape[1], lo_w:lo_w + x.shape[2]]


PATHS = {  # name: (by_taps, dw_chunk_size) forced
    "taps": (lambda c_in: True, None),
    "conv": (lambda c_in: False, lambda batch, nbytes: batch),
    "conv-dw-in-chunks-of-2": (lambda c_in: False, lambda batch, nbytes: 2),  # 3 = 2 + 1
}


@pytest.mark.x64
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_conv2d_paths_match_loops(geometry, path, monkeypatch):
    (h, wd), kernel, strides, dilation, padding, pads = GEOMETRIES[geometry]
    by_taps, chunk = PATHS[path]
    monkeypatch.setattr(conv_module, "by_taps", by_taps)
    if chunk is not None:
        monkeypatch.setattr(conv_module, "dw_chunk_size", chunk)
    rng = np.random.default_rng(len(geometry) + len(path))
    layer = L.conv2d(4, kernel, strides=strides, dilation=dilation, padding=padding)
    in_shape = (3, h, wd, 3)
    params = randomize(rng, init_shapes(layer, in_shape)[1])
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    x = rng.standard_normal(in_shape)
    y, res = jax.jit(layer.fwd)(params, jnp.asarray(x, jnp.float64))
    g = rng.standard_normal(y.shape)
    grads, dx = jax.jit(layer.bwd)(params, res, jnp.asarray(g, jnp.float64))

    y_ref, dw_ref, db_ref, dx_ref = _loops(x, np.asarray(params["w"]), np.asarray(params["b"]),
                                           g, strides, dilation, pads)
    assert y.dtype == dx.dtype == grads["w"].dtype == jnp.float64
    assert rel_err(y, y_ref) < 1e-12
    assert rel_err(grads["w"], dw_ref) < 1e-12
    assert rel_err(grads["b"], db_ref) < 1e-12
    assert rel_err(dx, dx_ref) < 1e-12


def test_conv2d_path_rule():
    on_cpu = jax.default_backend() == "cpu"
    assert conv_module.by_taps(conv_module.FEW_CHANNELS) == on_cpu
    assert not conv_module.by_taps(conv_module.FEW_CHANNELS + 1)
    mib = conv_module.DW_CHUNK_BYTES
    if on_cpu:  # as many examples as fit in DW_CHUNK_BYTES, at least 1, at most 16 chunks
        assert conv_module.dw_chunk_size(128, mib // 10) == 10
        assert conv_module.dw_chunk_size(128, 4 * mib) == 8
        assert conv_module.dw_chunk_size(5, 4 * mib) == 1
        assert conv_module.dw_chunk_size(4, 16) == 4
    else:
        assert conv_module.dw_chunk_size(128, mib // 10) == 128


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [pytest.param("float64", marks=pytest.mark.x64), "float32"])
def test_conv2d_deep_channels_check_layer(dtype):
    """C = 6 > FEW_CHANNELS: XLA's convolutions, against jax.vjp and finite differences."""
    assert not conv_module.by_taps(6)
    layer = L.conv2d(3, (3, 2), strides=(2, 1), dilation=(1, 2), padding=((1, 0), (2, 1)))
    report = fbp.check_layer(layer, (2, 7, 6, 6), dtype=dtype, key=jax.random.key(3))
    assert report.ok, str(report)
    assert [r.path for r in report.rows][-1] == "x"


@pytest.mark.slow
def test_conv2d_few_channels_bfloat16(monkeypatch):
    """The tap path in bfloat16: sums accumulate in float32, results come back bfloat16,
    within bfloat16 rounding of the float32 layer on the same (bfloat16-valued) inputs."""
    monkeypatch.setattr(conv_module, "by_taps", lambda c_in: True)
    rng = np.random.default_rng(0)
    layer = L.conv2d(8, 3)

    def cast(tree, dtype):
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a).astype(dtype), tree)

    params = cast(randomize(rng, init_shapes(layer, (2, 6, 6, 3))[1]), jnp.bfloat16)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 3))).astype(jnp.bfloat16)
    g = jnp.asarray(rng.standard_normal((2, 6, 6, 8))).astype(jnp.bfloat16)
    fwd, bwd = jax.jit(layer.fwd), jax.jit(layer.bwd)
    y16, res16 = fwd(params, x)
    grads16, dx16 = bwd(params, res16, g)
    p32 = cast(params, jnp.float32)
    y32, res32 = fwd(p32, x.astype(jnp.float32))
    grads32, dx32 = bwd(p32, res32, g.astype(jnp.float32))
    assert y16.dtype == dx16.dtype == grads16["w"].dtype == jnp.bfloat16
    for a, b in [(y16, y32), (grads16["w"], grads32["w"]), (dx16, dx32)]:
        assert rel_err(a, b) < 1e-2
