"""The same model and plain SGD step (θ ← θ − η ∇L) in other libraries, timed beside fbp.

    peer = build("flax", config, x, y, "float32", device, lr=0.01, init=fbp_params)
    state, loss = peer.run()   # one training step on its own (donated) state

Models, per config kind, each in the library's own layers:

- mlp: dense → relu → … → dense (Flax linen `nn.Dense`; Equinox `eqx.nn.MLP`, vmapped;
  PyTorch `nn.Linear`/`nn.ReLU`);
- cnn: conv 3×3 "SAME" → relu → max-pool 2×2 (stride 2, "VALID") per stage, flatten,
  dense → relu → dense (`nn.Conv`, `nn.max_pool`; `nn.Conv2d(padding=1)`, `nn.MaxPool2d(2)`,
  on NCHW);
- transformer: pre-LN causal blocks x + MHA(LN(x)), then h + MLP(LN(h)) with
  MLP = dense(4d) → exact (erf) GELU → dense(d), LayerNorm ε = 1e-5; then LayerNorm and a
  dense head per token (`nn.MultiHeadDotProductAttention` with a causal mask;
  `nn.TransformerEncoderLayer(norm_first=True, dropout=0, activation="gelu")` with a causal
  mask). Their attention has a key bias, which fbp's leaves out (the softmax cancels it:
  its gradient is zero); it starts at zero, so the function is the same.

Loss: mean softmax cross-entropy over the examples (over the tokens for the transformer),
gradient by the library's autodiff. Given `init` (fbp's initial parameters, on the host),
the peer starts from the same numbers — so its first loss must equal fbp's, a check that
the model is the same function — and otherwise from its own initialiser. A library that
does not import, or has no such model here, raises `Unavailable` with the reason. The JAX
peers are jitted with their parameters donated, like `fbp.train.make_step`; PyTorch runs
eagerly (no `torch.compile`) on the CPU with its default threads.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PEERS = ("flax", "equinox", "torch")
LN_EPS = 1e-5  # fbp.layers.layer_norm's default


class Unavailable(Exception):
    """The peer library does not import, or cannot run this config here."""


class Mismatch(ValueError):
    """fbp's parameters do not map onto the peer's model (another layout or shape)."""


@dataclasses.dataclass
class Peer:
    name: str
    version: str
    grad: str  # how it differentiates
    run: Callable[[], Any]  # one step; returns (state, loss) to block on
    fresh_jit: Callable[[], Any] | None = None  # a new jax.jit of the step (for compile stats)
    lower_args: tuple = ()
    n_params: int = 0  # trainable scalars in the peer's model
    init: str = "own"  # "fbp": started from fbp's initial parameters
    note: str | None = None  # why it did not start from fbp's parameters
    extra: dict = dataclasses.field(default_factory=dict)


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise Unavailable(f"{name} does not import: {e}") from None


def _sgd(params, grads, lr):
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)


def _cross_entropy(logits, y):
    """Mean over every position of −log softmax(logits)[label]."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, y[..., None], axis=-1))


# --- fbp's parameters, as a list of layers ---------------------------------------------------

def fbp_layers(params) -> list[dict]:
    """fbp's parameter dicts in forward order, each {name: array}: a dense or conv layer
    {"w", "b"}, a layer norm {"scale", "bias"}, an attention {"w_q", …}. Parameter-free
    layers (their {}) are left out; containers (serial's tuples, nested blocks) are walked
    in order."""
    if isinstance(params, dict):
        if params and all(not isinstance(v, (dict, list, tuple)) for v in params.values()):
            return [params]
        return [d for key in params for d in fbp_layers(params[key])]
    if isinstance(params, (list, tuple)):
        return [d for p in params for d in fbp_layers(p)]
    raise Mismatch(f"unexpected parameter container {type(params).__name__}")


def _kind(layer: dict) -> str:
    if "w_q" in layer:
        return "attn"
    if "scale" in layer:
        return "ln"
    w = layer.get("w")
    if w is not None and np.ndim(w) == 4:
        return "conv"
    if w is not None and np.ndim(w) == 2:
        return "dense"
    return "unknown " + "/".join(sorted(layer))


def expected_kinds(config) -> list[str]:
    """The layers with parameters, in order, of the model of `config` (fbp's and peers')."""
    if config.kind == "mlp":
        return ["dense"] * (len(config.sizes) - 1)
    if config.kind == "cnn":
        return ["conv"] * len(config.channels) + ["dense", "dense"]
    if config.kind == "transformer":
        return ["ln", "attn", "ln", "dense", "dense"] * config.blocks + ["ln", "dense"]
    raise Mismatch(f"unknown config kind {config.kind!r}")


def _matched(config, params) -> list[dict]:
    layers = fbp_layers(params)
    kinds = [_kind(p) for p in layers]
    if kinds != expected_kinds(config):
        raise Mismatch(f"fbp's layers are {kinds}, the peer's {expected_kinds(config)}")
    return [{k: np.asarray(v) for k, v in p.items()} for p in layers]


def _check_shapes(what: str, got: dict, want: dict) -> None:
    """Raise Mismatch unless two flat {path: shape} maps agree."""
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:6]
        raise Mismatch(f"{what}: parameter shapes differ from fbp's ({diff})")


def _flat_shapes(tree) -> dict[str, tuple]:
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _count(tree) -> int:
    return int(sum(np.size(a) for a in jax.tree_util.tree_leaves(tree)))


# --- JAX peers ----------------------------------------------------------------------------

def _jax_peer(name, version, step, params, x, y, device, **fields) -> Peer:
    """A runner for a pure JAX step(params, x, y) -> (params, loss), params donated."""
    params = jax.device_put(params, device)
    lower_args = (jax.tree_util.tree_map(jnp.copy, params), x, y)

    def fresh_jit():
        return jax.jit(step, donate_argnums=0)

    jitted = fresh_jit()
    box = {"params": params}

    def run():
        box["params"], value = jitted(box["params"], x, y)
        return box["params"], value

    return Peer(name, version, "jax.grad", run, fresh_jit, lower_args, **fields)


def _flax_model(nn, config, dtype):
    kw = {"dtype": dtype, "param_dtype": dtype}
    n_out = config.sizes[-1]

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, h):
            widths = config.sizes[1:]
            for i, width in enumerate(widths):
                h = nn.Dense(width, name=f"dense{i}", **kw)(h)
                if i < len(widths) - 1:
                    h = nn.relu(h)
            return h

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, h):
            for i, c in enumerate(config.channels):
                h = nn.relu(nn.Conv(c, (3, 3), padding="SAME", name=f"conv{i}", **kw)(h))
                h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
            h = h.reshape((h.shape[0], -1))  # (H, W, C) order, as fbp's flatten
            h = nn.relu(nn.Dense(config.hidden_width, name="dense0", **kw)(h))
            return nn.Dense(n_out, name="dense1", **kw)(h)

    class Block(nn.Module):
        heads: int

        @nn.compact
        def __call__(self, x):
            d = x.shape[-1]
            mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
            h = nn.LayerNorm(epsilon=LN_EPS, name="ln1", **kw)(x)
            x = x + nn.MultiHeadDotProductAttention(
                num_heads=self.heads, qkv_features=d, out_features=d, deterministic=True,
                name="attn", **kw)(h, mask=mask)
            h = nn.LayerNorm(epsilon=LN_EPS, name="ln2", **kw)(x)
            h = nn.gelu(nn.Dense(4 * d, name="mlp_in", **kw)(h), approximate=False)
            return x + nn.Dense(d, name="mlp_out", **kw)(h)

    class Transformer(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i in range(config.blocks):
                x = Block(config.heads, name=f"block{i}")(x)
            x = nn.LayerNorm(epsilon=LN_EPS, name="ln", **kw)(x)
            return nn.Dense(n_out, name="head", **kw)(x)

    models = {"mlp": MLP, "cnn": CNN, "transformer": Transformer}
    if config.kind not in models:
        raise Unavailable(f"no flax model for config kind {config.kind!r}")
    return models[config.kind]()


def _flax_names(config) -> list[tuple[str, ...]]:
    """The Flax module paths of the layers with parameters, in fbp's order."""
    if config.kind == "mlp":
        return [(f"dense{i}",) for i in range(len(config.sizes) - 1)]
    if config.kind == "cnn":
        return [(f"conv{i}",) for i in range(len(config.channels))] + [("dense0",), ("dense1",)]
    names = []
    for i in range(config.blocks):
        names += [(f"block{i}", n) for n in ("ln1", "attn", "ln2", "mlp_in", "mlp_out")]
    return names + [("ln",), ("head",)]


def _flax_params(config, fbp_params, heads: int):
    """fbp's parameters in the Flax model's layout ({"params": {...}})."""
    out: dict = {}
    for names, layer in zip(_flax_names(config), _matched(config, fbp_params)):
        kind = _kind(layer)
        if kind in ("dense", "conv"):
            p = {"kernel": layer["w"], "bias": layer["b"]}
        elif kind == "ln":
            p = {"scale": layer["scale"], "bias": layer["bias"]}
        else:  # attention: heads split as fbp splits them, column h·d_h + e
            d = layer["w_q"].shape[0]
            split = (heads, d // heads)

            def proj(w, b, d=d, split=split):
                return {"kernel": w.reshape(d, *split), "bias": b.reshape(split)}

            p = {"query": proj(layer["w_q"], layer["b_q"]),
                 "key": proj(layer["w_k"], np.zeros(d, layer["w_k"].dtype)),
                 "value": proj(layer["w_v"], layer["b_v"]),
                 "out": {"kernel": layer["w_o"].reshape(*split, d), "bias": layer["b_o"]}}
        node = out
        for n in names[:-1]:
            node = node.setdefault(n, {})
        node[names[-1]] = p
    return {"params": out}


def _flax(config, x, y, dtype, device, lr, init) -> Peer:
    flax = _import("flax")
    nn = importlib.import_module("flax.linen")
    model = _flax_model(nn, config, dtype)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)  # no compile
    params, note, start = None, None, "own"
    if init is not None:
        try:
            params = _flax_params(config, init, config.heads)
            _check_shapes("flax", _flat_shapes(params), _flat_shapes(shapes))
            params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
            start = "fbp"
        except Mismatch as e:
            params, note = None, str(e)
    if params is None:
        with jax.default_device(device):
            params = jax.jit(model.init)(jax.random.key(0), x)  # one compile, not one per op

    def step(params, x, y):
        value, grads = jax.value_and_grad(lambda p: _cross_entropy(model.apply(p, x), y))(params)
        return _sgd(params, grads, lr), value

    return _jax_peer("flax", flax.__version__, step, params, x, y, device,
                     n_params=_count(shapes), init=start, note=note)


def _equinox(config, x, y, dtype, device, lr, init) -> Peer:
    eqx = _import("equinox")
    if config.kind != "mlp":
        raise Unavailable("equinox: MLP configs only (eqx.nn.MLP)")
    hidden = config.sizes[1:-1]
    if len(set(hidden)) != 1:
        raise Unavailable("equinox.nn.MLP needs equal hidden widths")
    with jax.default_device(device):
        model = eqx.nn.MLP(config.sizes[0], config.sizes[-1], hidden[0], len(hidden),
                           activation=jax.nn.relu, key=jax.random.key(0))
    model = jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)
    note, start = None, "own"
    if init is not None:
        try:
            layers = _matched(config, init)
            for i, (lin, p) in enumerate(zip(model.layers, layers)):
                w, b = jnp.asarray(p["w"].T, dtype), jnp.asarray(p["b"], dtype)
                if w.shape != lin.weight.shape or b.shape != lin.bias.shape:
                    raise Mismatch(f"equinox layer {i}: {lin.weight.shape} vs fbp {w.shape}")
                model = eqx.tree_at(lambda m, i=i: (m.layers[i].weight, m.layers[i].bias),
                                    model, (w, b))
            start = "fbp"
        except Mismatch as e:
            note = str(e)
    params, static = eqx.partition(model, eqx.is_array)

    def step(params, x, y):
        def objective(p):
            return _cross_entropy(jax.vmap(eqx.combine(p, static))(x), y)
        value, grads = jax.value_and_grad(objective)(params)
        return _sgd(params, grads, lr), value

    return _jax_peer("equinox", eqx.__version__, step, params, x, y, device,
                     n_params=_count(params), init=start, note=note)


# --- PyTorch ------------------------------------------------------------------------------

def _torch_model(torch, config, dtype):
    nn = torch.nn
    sizes = config.sizes
    if config.kind == "mlp":
        layers = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1])).to(dtype)
    if config.kind == "cnn":
        h, w, c = config.example
        layers = []
        for features in config.channels:
            layers += [nn.Conv2d(c, features, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = features, h // 2, w // 2
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, config.hidden_width),
                             nn.ReLU(), nn.Linear(config.hidden_width, sizes[-1])).to(dtype)
    if config.kind == "transformer":
        t, d = config.example

        class Transformer(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.ModuleList([
                    nn.TransformerEncoderLayer(d, config.heads, dim_feedforward=4 * d,
                                               dropout=0.0, activation="gelu",
                                               layer_norm_eps=LN_EPS, batch_first=True,
                                               norm_first=True)
                    for _ in range(config.blocks)])
                self.ln = nn.LayerNorm(d, eps=LN_EPS)
                self.head = nn.Linear(d, sizes[-1])
                self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(
                    t, dtype=dtype))

            def forward(self, x):
                for block in self.blocks:
                    x = block(x, src_mask=self.mask, is_causal=True)
                return self.head(self.ln(x))

        return Transformer().to(dtype)
    raise Unavailable(f"no torch model for config kind {config.kind!r}")


def _torch_modules(model, config) -> list[tuple[str, Any]]:
    """(kind, module) of the layers with parameters, in fbp's order."""
    if config.kind in ("mlp", "cnn"):
        kinds = {"Linear": "dense", "Conv2d": "conv"}
        return [(kinds[type(m).__name__], m) for m in model
                if type(m).__name__ in kinds]
    out = []
    for block in model.blocks:
        out += [("ln", block.norm1), ("attn", block.self_attn), ("ln", block.norm2),
                ("dense", block.linear1), ("dense", block.linear2)]
    return out + [("ln", model.ln), ("dense", model.head)]


def _torch_load(torch, model, config, fbp_params) -> None:
    """Copy fbp's parameters into the torch model (Mismatch if they do not fit)."""
    layers = _matched(config, fbp_params)
    modules = _torch_modules(model, config)
    if [k for k, _ in modules] != [_kind(p) for p in layers]:
        raise Mismatch("torch model layers differ from fbp's")
    values = []  # (tensor, array) pairs, all checked before anything is copied
    after_conv = config.kind == "cnn"
    for (kind, m), p in zip(modules, layers):
        if kind == "conv":  # HWIO -> OIHW
            values += [(m.weight, p["w"].transpose(3, 2, 0, 1)), (m.bias, p["b"])]
        elif kind == "dense":
            w = p["w"]
            if after_conv:  # fbp flattens (H, W, C), torch (C, H, W)
                c = config.channels[-1]
                side = int(round((w.shape[0] // c) ** 0.5))
                w = w.reshape(side, side, c, -1).transpose(2, 0, 1, 3).reshape(w.shape[0], -1)
                after_conv = False
            values += [(m.weight, w.T), (m.bias, p["b"])]
        elif kind == "ln":
            values += [(m.weight, p["scale"]), (m.bias, p["bias"])]
        else:  # attention: in_proj stacks q, k, v (out × in); no key bias in fbp
            d = p["w_q"].shape[0]
            values += [(m.in_proj_weight, np.concatenate([p["w_q"].T, p["w_k"].T, p["w_v"].T])),
                       (m.in_proj_bias, np.concatenate([p["b_q"], np.zeros(d, p["b_q"].dtype),
                                                        p["b_v"]])),
                       (m.out_proj.weight, p["w_o"].T), (m.out_proj.bias, p["b_o"])]
    for tensor, array in values:
        if tuple(tensor.shape) != tuple(array.shape):
            raise Mismatch(f"torch parameter {tuple(tensor.shape)} vs fbp {array.shape}")
    with torch.no_grad():
        for tensor, array in values:
            tensor.copy_(torch.from_numpy(np.array(array, np.float32))  # a writable copy
                         .to(tensor.dtype))


def _torch(config, x, y, dtype, device, lr, init) -> Peer:
    torch = _import("torch")
    if device.platform != "cpu":
        raise Unavailable("the torch peer runs on CPU only")
    torch_dtype = {"float32": torch.float32, "float64": torch.float64,
                   "bfloat16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    model = _torch_model(torch, config, torch_dtype)
    note, start = None, "own"
    if init is not None:
        try:
            _torch_load(torch, model, config, init)
            start = "fbp"
        except Mismatch as e:
            note = str(e)
    xt = torch.from_numpy(np.array(x, np.float32)).to(torch_dtype)  # a writable copy
    if config.kind == "cnn":
        xt = xt.permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW, once, outside the step
    yt = torch.from_numpy(np.asarray(y).astype(np.int64))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()

    def run():
        optimizer.zero_grad(set_to_none=True)
        logits = model(xt)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 yt.reshape(-1))
        loss.backward()
        optimizer.step()
        return None, loss.detach()

    return Peer("torch", torch.__version__, "torch.autograd", run,
                n_params=sum(p.numel() for p in model.parameters()), init=start, note=note,
                extra={"torch_threads": torch.get_num_threads()})


def build(name: str, config, x, y, dtype: str, device, lr: float, init=None) -> Peer:
    """The peer `name`'s step for `config` on batch (x, y), starting from `init` (fbp's
    initial parameters, host arrays) when given and they map onto the peer's model; or
    `Unavailable`."""
    builders = {"flax": _flax, "equinox": _equinox, "torch": _torch}
    if name not in builders:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(builders)}")
    try:
        return builders[name](config, x, y, dtype, device, lr, init)
    except Unavailable:
        raise
    except Exception as e:  # a peer that imports but fails here is skipped, with the reason
        raise Unavailable(f"{type(e).__name__}: {e}") from None
