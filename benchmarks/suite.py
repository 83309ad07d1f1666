"""What `python -m benchmarks` runs: the suites (`Settings.suites`) and their settings.

The "steps" suite, for each config: one jitted `fbp.train.make_step` per gradient
("manual": the hand-written backward, "auto": `jax.grad`), same initial state, same
batch, compiled fresh (timed), warmed up, then timed interleaved (with the peers, when
asked). Beside them: the measured matmul rate (the ceiling a step's flops are compared
with), one epoch as a compiled `lax.scan` vs a Python loop of steps through
`fbp.train.fit`, and fused vs unfused linear + cross-entropy. The other suites live in
`benchmarks.attention` ("attention") and `benchmarks.contract` ("remat", "fused-head",
"diagnostics"); all of them measure with `benchmarks.measure` and report through
`benchmarks.report`.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from benchmarks import measure
from benchmarks.configs import CONFIGS, DEFAULT_CONFIGS, QUICK_CONFIGS, SUITES, Config

LEARNING_RATE = 0.01
SEED = 0


@dataclasses.dataclass(frozen=True)
class AttentionSettings:
    """`multi_head_attention(heads, causal=True)` forward + backward on (batch, T, heads ·
    head_dim), float32, for each T; timed where a program's temporaries fit in
    `max_run_gib`, `repeats` times (`long_repeats` from T = `long_from` on)."""

    lengths: tuple[int, ...] = tuple(2**k for k in range(9, 15))  # 512 … 16384
    heads: int = 4
    head_dim: int = 64
    batch: int = 1
    chunk: int = 256
    max_run_gib: float = 4.0
    repeats: int = 7
    long_repeats: int = 3
    long_from: int = 8192
    warmup: int = 1


@dataclasses.dataclass(frozen=True)
class RematSettings:
    """Value-and-grad of two block stacks, float32: an MLP (dense(width) → `mlp_depth` ×
    [dense-gelu-dense-tanh] → dense(10)) on (mlp_batch, width), and a transformer
    (dense(width) → `blocks` × causal transformer_block(heads) → dense(vocab)) on
    (batch, seq, features), labels per token."""

    mlp_depth: int = 16
    mlp_batch: int = 512
    mlp_width: int = 256
    blocks: int = 4
    batch: int = 8
    seq: int = 256
    features: int = 16
    width: int = 128
    heads: int = 4
    vocab: int = 32
    repeats: int = 20
    warmup: int = 3


@dataclasses.dataclass(frozen=True)
class FusedHeadSettings:
    """One `make_step` (gd) of embedding(vocab, width) → dense(width) → gelu → head over
    `tokens` tokens (rows of `seq`): `linear_softmax_head` + `fused_softmax_cross_entropy`
    (chunks of `chunk`) against `dense(vocab, use_bias=False)` + `softmax_cross_entropy`."""

    tokens: int = 4096
    seq: int = 512
    vocab: int = 32768
    width: int = 64
    chunk: int = 1024
    lr: float = 0.1
    repeats: int = 20
    warmup: int = 3


@dataclasses.dataclass(frozen=True)
class DiagnosticsSettings:
    """`fit` on the digits MLP (64-256-128-10, dropout 0.2, batch 32) with
    `diagnostics_every` = each of `every` (None: off), `rounds` × (1 + `epochs`) epochs."""

    every: tuple = (None, 10, 1)
    rounds: int = 4
    epochs: int = 8


QUICK_ATTENTION = AttentionSettings(lengths=(128, 256), chunk=64, repeats=3, long_repeats=3)
QUICK_REMAT = RematSettings(mlp_depth=4, mlp_batch=64, blocks=2, batch=2, seq=64, repeats=5)
QUICK_FUSED_HEAD = FusedHeadSettings(tokens=512, seq=128, vocab=2048, chunk=512, repeats=5,
                                     warmup=2)
QUICK_DIAGNOSTICS = DiagnosticsSettings(rounds=1, epochs=3)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to run and how often (the defaults are the full "steps" suite)."""

    suites: tuple[str, ...] = ("steps",)
    configs: tuple[str, ...] = DEFAULT_CONFIGS
    dtype: str = "float32"
    precision: str | None = None  # "bf16": bfloat16 compute, `dtype` master params
    devices: tuple[int, ...] = ()  # a data-parallel sweep over these device counts
    devices_check_steps: int = 1  # steps from the same state compared across device counts
    device: str | None = None  # "cpu", "gpu" or None for JAX's default
    repeats: int = 30
    warmup: int = 3
    compile_repeats: int = 2  # fresh compiles per gradient; the min is reported
    matmul_size: int = 2048
    # scan vs steps cases: (MLP sizes, batch, examples, epochs timed, rounds)
    epoch_modes: tuple = (((784, 256, 256, 10), 128, 8192, 5, 2),
                          ((64, 32, 32, 10), 32, 4096, 5, 2),
                          ((4, 16, 3), 8, 2048, 5, 2))
    # fused linear + cross-entropy vs dense + softmax_cross_entropy: (tokens, d, vocab, chunk)
    fused_ce: tuple | None = (4096, 256, 32768, 2048)
    peers: bool = False
    progress: bool = True
    attention: AttentionSettings = AttentionSettings()
    remat: RematSettings = RematSettings()
    fused_head: FusedHeadSettings = FusedHeadSettings()
    diagnostics: DiagnosticsSettings = DiagnosticsSettings()

    def __post_init__(self):
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown or not self.suites:
            raise ValueError(f"unknown suite(s) {unknown or self.suites}; expected some of "
                             f"{', '.join(SUITES)}")
        unknown = [c for c in self.configs if c not in CONFIGS]
        if unknown:
            raise ValueError(f"unknown config(s) {unknown}; expected some of "
                             f"{', '.join(CONFIGS)}")

    def with_repeats(self, repeats: int) -> Settings:
        """Every suite timed `repeats` times per contender (diagnostics: not timed so)."""
        attention = dataclasses.replace(self.attention, repeats=repeats,
                                        long_repeats=min(self.attention.long_repeats, repeats))
        return dataclasses.replace(
            self, repeats=repeats, attention=attention,
            remat=dataclasses.replace(self.remat, repeats=repeats),
            fused_head=dataclasses.replace(self.fused_head, repeats=repeats))


def quick_settings(**overrides) -> Settings:
    """Tiny configs and sizes, few repetitions: a smoke test that runs in seconds."""
    base = dict(configs=QUICK_CONFIGS, repeats=5, warmup=2, compile_repeats=1, matmul_size=256,
                epoch_modes=(((64, 32, 10), 32, 512, 2, 1),), fused_ce=(256, 32, 2048, 512),
                attention=QUICK_ATTENTION, remat=QUICK_REMAT, fused_head=QUICK_FUSED_HEAD,
                diagnostics=QUICK_DIAGNOSTICS)
    base.update(overrides)
    return Settings(**base)


def _put(a: np.ndarray, dtype, device) -> jax.Array:
    """A host array, cast on the host (no XLA compile for the cast), onto the device."""
    return jax.device_put(np.asarray(a).astype(jnp.dtype(dtype)), device)


def _batch(sizes, batch_size, dtype, device, example=None, label_shape=()):
    """Random inputs (standard normal) and integer labels, from a fixed numpy seed."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((batch_size,) + tuple(example or (sizes[0],)))
    y = rng.integers(0, sizes[-1], (batch_size,) + tuple(label_shape))
    return _put(x, dtype, device), _put(y, np.int32, device)


def mlp(sizes):
    """dense → relu → … → dense(sizes[-1]) (the input width comes from the data)."""
    from fbp import layers as L

    blocks = []
    for width in sizes[1:-1]:
        blocks += [L.dense(width), L.relu()]
    return L.serial(*blocks, L.dense(sizes[-1]))


def build_model(config: Config):
    """(net, label shape of one example) for a config."""
    from fbp import layers as L

    if config.kind == "mlp":
        return mlp(config.sizes), ()
    if config.kind == "cnn":
        stages = []
        for features in config.channels:
            stages += [L.conv2d(features, 3), L.relu(), L.max_pool(2)]
        return L.serial(*stages, L.flatten(), L.dense(config.hidden_width), L.relu(),
                        L.dense(config.sizes[-1])), ()
    if config.kind == "transformer":
        blocks = [L.transformer_block(config.heads, causal=True) for _ in range(config.blocks)]
        return L.serial(*blocks, L.layer_norm(), L.dense(config.sizes[-1])), config.example[:1]
    raise ValueError(f"unknown config kind {config.kind!r}; expected mlp, cnn or transformer")


def _initial_state(net, optimizer, input_shape, dtype, device):
    """A `TrainState` shaped by `net.init`, filled from numpy (fixed seed): weights Glorot-
    uniform, biases zero. (Drawing them with jax.random would compile XLA programs for the
    initializers, seconds on a small CPU, for numbers the timing does not depend on.)"""
    from fbp.train import TrainState

    shapes = jax.eval_shape(lambda key: net.init(key, input_shape)[1:], jax.random.key(SEED))
    rng = np.random.default_rng(SEED)

    def leaf(path, s):
        if len(s.shape) >= 2:  # Glorot: fan-in · receptive field, fan-out
            field = int(np.prod(s.shape[:-2]))
            limit = np.sqrt(6 / (field * (s.shape[-2] + s.shape[-1])))
            return _put(rng.uniform(-limit, limit, s.shape), dtype, device)
        ones = "scale" in jax.tree_util.keystr(path) or "var" in jax.tree_util.keystr(path)
        return _put(np.ones(s.shape) if ones else np.zeros(s.shape), dtype, device)

    params = jax.tree_util.tree_map_with_path(leaf, shapes[0])
    net_state = jax.tree_util.tree_map_with_path(leaf, shapes[1]) if net.stateful else {}
    with jax.default_device(device):
        state = TrainState(params, net_state, optimizer.init(params), np.zeros((), np.int32),
                           jax.random.key(SEED))
    # every leaf committed to the device, like the step's outputs: a mix of committed and
    # uncommitted inputs would make the second call compile again
    return jax.device_put(state, device)


def _stepper(step, state, x, y):
    """A runner for `measure.interleaved`: one step on the donated state, kept in a box."""
    box = {"state": state}

    def run():
        box["state"], box["metrics"] = step(box["state"], x, y)
        return box["state"], box["metrics"]

    return run, box


class MatmulProbe:
    """The measured rate of one large square GEMM in the benchmark dtype (flops/s).

    Timed in bursts, one before the first config and one after each, so that the samples
    span the whole run. The ceiling the steps are compared with is the best (least
    disturbed) product: on a shared machine a burst can land in a busy moment, and a
    median-of-bursts ceiling would then make a step seem to beat the GEMM.
    """

    def __init__(self, settings: Settings, device):
        n = self.n = settings.matmul_size
        rng = np.random.default_rng(SEED)
        # the dtype of the steps' dots
        self.dtype = "bfloat16" if settings.precision == "bf16" else settings.dtype
        a, b = (_put(rng.standard_normal((n, n)), self.dtype, device) for _ in range(2))
        self.stats, _ = measure.compile_stats(jax.jit(jnp.matmul), a, b)
        matmul = jax.jit(jnp.matmul)
        self.run = lambda: matmul(a, b)
        self.flops = 2.0 * n**3
        self.burst_size = min(10, max(3, settings.repeats // 4))
        self.warmup = settings.warmup
        self.samples: list[float] = []
        self.burst_rates: list[float] = []

    def burst(self) -> list[float]:
        """Time `burst_size` products; their times."""
        times = measure.interleaved({"matmul": self.run}, repeats=self.burst_size,
                                    warmup=self.warmup if not self.samples else 1)["matmul"]
        self.samples += times
        self.burst_rates.append(self.flops / statistics.median(times))
        return times

    def record(self) -> dict[str, Any]:
        record = {"kind": "matmul", "config": f"matmul {self.n}x{self.n} @ {self.n}x{self.n}",
                  "n": self.n, "dtype": self.dtype, **self.stats, **measure.summary(self.samples),
                  "repeats": len(self.samples), "xla_flops": self.stats["flops"],
                  "flops": self.flops, "burst_rates": self.burst_rates}
        record["flops_per_s"] = self.flops / record["step_time_s"]  # at the median time
        record["peak_flops_per_s"] = self.flops / record["step_time_min_s"]  # the ceiling
        return record


def bench_config(config: Config, settings: Settings,
                 device) -> tuple[list[dict[str, Any]], list[str]]:
    """Records for the manual and auto steps (and peers) of one config; notes on skipped peers."""
    from fbp import losses
    from fbp.optim import gd
    from fbp.train import make_step

    net, label_shape = build_model(config)
    loss, optimizer = losses.softmax_cross_entropy, gd(LEARNING_RATE)
    x, y = _batch(config.sizes, config.batch_size, settings.dtype, device, config.example,
                  label_shape)
    states = {grad: _initial_state(net, optimizer, x.shape, settings.dtype, device)
              for grad in ("manual", "auto")}  # the same numbers; each step donates its own
    initial_params = jax.device_get(states["manual"].params)  # host copy, for the peers
    n_params = sum(p.size for p in jax.tree_util.tree_leaves(states["manual"].params))
    if config.kind == "mlp":
        assert n_params == config.params, (n_params, config.params)

    stats: dict[str, dict] = {}
    steps = {}
    for _ in range(settings.compile_repeats):  # manual, auto, manual, auto, ...
        for grad in ("manual", "auto"):
            steps[grad] = make_step(net, loss, optimizer, grad=grad,  # a fresh jit object
                                    precision=settings.precision)
            s, _ = measure.compile_stats(steps[grad], states[grad], x, y)
            if grad in stats:
                s["compile_time_s"] = min(s["compile_time_s"], stats[grad]["compile_time_s"])
                s["lower_time_s"] = min(s["lower_time_s"], stats[grad]["lower_time_s"])
            stats[grad] = s
    runners, boxes, meta = {}, {}, {}
    for grad in ("manual", "auto"):
        runners[grad], boxes[grad] = _stepper(steps[grad], states[grad], x, y)
        # the first step's loss is the loss at the initial parameters (before the update)
        first_loss = float(jax.block_until_ready(runners[grad]())[1]["loss"])
        meta[grad] = {"framework": "fbp", "grad": grad, "first_loss": first_loss,
                      **stats[grad]}
    reference_loss = meta["manual"]["first_loss"]

    notes: list[str] = []
    if settings.peers:
        from benchmarks import peers

        for name in peers.PEERS:
            try:
                peer = peers.build(name, config, x, y, settings.dtype, device, LEARNING_RATE,
                                   init=initial_params)
            except peers.Unavailable as e:
                notes.append(f"{name} on {config.name}: skipped ({e})")
                continue
            s = measure.compile_stats(peer.fresh_jit(), *peer.lower_args)[0] \
                if peer.fresh_jit is not None else {}
            first_loss = float(jax.block_until_ready(peer.run())[1])  # a jax or torch scalar
            runners[name] = peer.run
            meta[name] = {"framework": name, "grad": peer.grad, "peer_version": peer.version,
                          "peer_params": peer.n_params, "peer_init": peer.init,
                          "first_loss": first_loss, **peer.extra, **s}
            if peer.init == "fbp":  # same function, same numbers: the same first loss
                meta[name]["first_loss_rel_diff_vs_fbp"] = (
                    abs(first_loss - reference_loss) / abs(reference_loss))
            else:
                notes.append(f"{name} on {config.name}: its own initialisation (fbp's "
                             f"parameters did not map: {peer.note})")

    # manual vs auto on their own first: a peer in the same rotation disturbs its neighbours
    # (PyTorch's worker threads spin on after each call), which skews a millisecond step
    fbp_runners = {grad: runners[grad] for grad in ("manual", "auto")}
    times = measure.interleaved(fbp_runners, repeats=settings.repeats, warmup=settings.warmup)
    if len(runners) > 2:  # then everything together, for the fbp / peer ratios
        peer_times = measure.interleaved(runners, repeats=settings.repeats,
                                         warmup=settings.warmup)
        times.update({name: peer_times[name] for name in runners if name not in fbp_runners})
        fbp_in_peer_round = {grad: measure.summary(peer_times[grad])["step_time_s"]
                             for grad in fbp_runners}
    common = {"config": config.name, "model_kind": config.kind, "layers": config.layers,
              "sizes": list(config.sizes),
              "params": n_params, "batch_size": config.batch_size, "dtype": settings.dtype,
              "precision": settings.precision,
              "repeats": settings.repeats, "optimizer": f"gd({LEARNING_RATE})",
              "loss": loss.name, **measure.environment(device)}
    records = []
    for name in runners:
        r = {"kind": "step" if name in ("manual", "auto") else "peer", **common, **meta[name],
             **measure.summary(times[name])}
        r["samples_per_s"] = config.batch_size / r["step_time_s"]
        flops = r.get("flops")
        r["flops_per_s"] = flops / r["step_time_s"] if flops else None
        if name in boxes:  # same init, batch and number of steps: manual and auto agree
            r["final_loss"] = float(boxes[name]["metrics"]["loss"])
        records.append(r)
    ratio = records[0]["step_time_s"] / records[1]["step_time_s"]
    for r in records:
        if r["kind"] == "step":
            r["manual_over_auto"] = ratio
        else:
            r["fbp_manual_over_peer"] = fbp_in_peer_round["manual"] / r["step_time_s"]
            r["fbp_auto_over_peer"] = fbp_in_peer_round["auto"] / r["step_time_s"]
    return records, notes


def bench_devices(config: Config, settings: Settings,
                  device) -> tuple[list[dict[str, Any]], list[str]]:
    """Data-parallel train steps (`make_step(mesh=…)`) over 1, 2, 4, … devices of `device`'s
    platform, manual gradients: the batch split along the mesh's "data" axis, parameters
    replicated, XLA's all-reduce for the gradient mean.

    Correctness first: `devices_check_steps` steps from the same state and batch on each
    device count, the parameters compared with the one-device run. Then the step times,
    the device counts interleaved. On forced CPU devices
    (`--xla_force_host_platform_device_count`) all "devices" share the same cores, so the
    times say what the partitioning costs there, not what more devices would gain.
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from fbp import losses
    from fbp.optim import gd
    from fbp.train import data_mesh, make_step, replicate

    available = jax.devices(device.platform)
    net, label_shape = build_model(config)
    loss, optimizer = losses.softmax_cross_entropy, gd(LEARNING_RATE)
    x, y = _batch(config.sizes, config.batch_size, settings.dtype, device, config.example,
                  label_shape)
    notes, runs = [], {}
    for count in settings.devices:
        if count > len(available):
            notes.append(f"devices sweep, {config.name}: {count} {device.platform} devices "
                         f"asked for, {len(available)} present; skipped")
            continue
        if config.batch_size % count:
            notes.append(f"devices sweep, {config.name}: batch {config.batch_size} does not "
                         f"divide by {count} devices; skipped")
            continue
        mesh = data_mesh(available[:count])
        split = NamedSharding(mesh, P("data"))
        xs, ys = jax.device_put(x, split), jax.device_put(y, split)
        step = make_step(net, loss, optimizer, grad="manual", precision=settings.precision,
                         mesh=mesh)

        def fresh_state(mesh=mesh):
            return replicate(mesh, _initial_state(net, optimizer, x.shape, settings.dtype,
                                                  device))

        state = fresh_state()
        for _ in range(settings.devices_check_steps):
            state, metrics = step(state, xs, ys)
        runs[count] = {"params": jax.device_get(state.params), "loss": float(metrics["loss"]),
                       "step": step, "state": fresh_state(), "x": xs, "y": ys}
    if not runs:
        return [], notes
    runners = {}
    for count, r in runs.items():
        runners[count], _ = _stepper(r["step"], r["state"], r["x"], r["y"])
    times = measure.interleaved(runners, repeats=settings.repeats, warmup=settings.warmup)
    reference = runs[min(runs)]
    records = []
    for count, r in runs.items():
        diff = measure.max_rel_diff(r["params"], reference["params"])  # max |Δθ| / max |θ|
        rec = {"kind": "devices", "config": config.name, "layers": config.layers,
               "batch_size": config.batch_size, "devices": count,
               "reference_devices": min(runs), "dtype": settings.dtype,
               "precision": settings.precision, "grad": "manual",
               "check_steps": settings.devices_check_steps, "check_loss": r["loss"],
               "max_rel_param_diff": diff, "forced_host_devices": device.platform == "cpu",
               "repeats": settings.repeats, **measure.environment(device),
               **measure.summary(times[count])}
        rec["samples_per_s"] = config.batch_size / rec["step_time_s"]
        records.append(rec)
    return records, notes


def bench_epoch_modes(case, device) -> dict[str, Any]:
    """`fit(epoch_mode="scan")` vs `fit(epoch_mode="steps")`: samples/s of the epochs after the
    first (which compiles), from fit's own per-epoch times; the two modes alternate."""
    from fbp import losses
    from fbp.optim import gd
    from fbp.train import fit

    sizes, batch_size, n, epochs, rounds = case
    net, loss = mlp(sizes), losses.softmax_cross_entropy
    rng = np.random.default_rng(SEED)
    with jax.default_device(device):
        # fit makes its params in the default float dtype: float32, or float64 under x64
        dtype = jax.dtypes.canonicalize_dtype(np.float64)
        x = rng.standard_normal((n, sizes[0])).astype(dtype)
        y = rng.integers(0, sizes[-1], n).astype(np.int32)
        epoch_s = {"scan": [], "steps": []}
        first_s = {"scan": [], "steps": []}
        for _ in range(rounds):
            for mode in ("scan", "steps"):
                _, history = fit(net, loss, gd(LEARNING_RATE), (x, y), epochs=1 + epochs,
                                 batch_size=batch_size, epoch_mode=mode, progress=False,
                                 seed=SEED)
                first_s[mode].append(history["time_s"][0])
                epoch_s[mode] += history["time_s"][1:]
    samples = (n // batch_size) * batch_size
    record = {"kind": "epoch_mode", "config": "scan_vs_steps", "sizes": list(sizes),
              "layers": "-".join(map(str, sizes)), "batch_size": batch_size, "n": n,
              "steps_per_epoch": n // batch_size, "epochs_timed": len(epoch_s["scan"]),
              "dtype": str(np.dtype(dtype)), "grad": "manual", **measure.environment(device)}
    for mode in ("scan", "steps"):
        record[f"{mode}_epoch_s"] = statistics.median(epoch_s[mode])
        record[f"{mode}_epoch_min_s"] = min(epoch_s[mode])
        record[f"{mode}_epoch_max_s"] = max(epoch_s[mode])
        record[f"{mode}_first_epoch_s"] = statistics.median(first_s[mode])
        record[f"{mode}_samples_per_s"] = samples / record[f"{mode}_epoch_s"]
    record["scan_over_steps"] = record["scan_samples_per_s"] / record["steps_samples_per_s"]
    return record


def bench_fused_ce(case, settings: Settings, device) -> dict[str, Any]:
    """Loss and gradient of softmax cross-entropy on logits x W: unfused (fbp's dense layer
    and loss, hand-written backward, the (tokens × vocab) logits in memory) against
    `fbp.losses.linear_softmax_cross_entropy` (vocabulary chunks, recomputed in the backward)."""
    import fbp
    from fbp import layers as L
    from fbp import losses

    tokens, d, vocab, chunk = case
    rng = np.random.default_rng(SEED)
    x = _put(rng.standard_normal((tokens, d)), settings.dtype, device)
    w = _put(rng.standard_normal((d, vocab)) / np.sqrt(d), settings.dtype, device)
    labels = _put(rng.integers(0, vocab, tokens), np.int32, device)
    unfused_grad = fbp.value_and_grad(L.serial(L.dense(vocab, use_bias=False)),
                                      losses.softmax_cross_entropy)

    def unfused(x, w, labels):
        return unfused_grad(({"w": w},), x, labels)

    def fused(x, w, labels):
        return jax.value_and_grad(
            lambda x, w: losses.linear_softmax_cross_entropy(x, w, labels, chunk_size=chunk),
            argnums=(0, 1))(x, w)

    fns = {"unfused": unfused, "fused": fused}
    stats, runners, values = {}, {}, {}
    for name, f in fns.items():
        stats[name], compiled = measure.compile_stats(jax.jit(f), x, w, labels)
        runners[name] = lambda compiled=compiled: compiled(x, w, labels)
        values[name] = float(runners[name]()[0])
    times = measure.interleaved(runners, repeats=max(3, settings.repeats // 4), warmup=1)
    record = {"kind": "fused_ce", "config": "linear_softmax_cross_entropy", "tokens": tokens,
              "d": d, "vocab": vocab, "chunk_size": chunk, **measure.environment(device)}
    for name in fns:
        for k, v in {**stats[name], **measure.summary(times[name])}.items():
            record[f"{name}_{k}"] = v
        record[f"{name}_loss"] = values[name]
    record["temp_ratio"] = record["unfused_temp_bytes"] / record["fused_temp_bytes"]
    record["time_ratio"] = record["fused_step_time_s"] / record["unfused_step_time_s"]
    return record


def run_steps(settings: Settings, device) -> tuple[list[dict[str, Any]], list[str]]:
    """The "steps" suite: the configs (manual, auto, peers), the matmul ceiling, the devices
    sweep, scan vs steps and the fused cross-entropy."""
    notes: list[str] = []
    probe = MatmulProbe(settings, device)
    probe.burst()
    records = []
    for name in tqdm(settings.configs, desc="steps", unit="config",
                     disable=not settings.progress):
        config_records, config_notes = bench_config(CONFIGS[name], settings, device)
        probe.burst()
        records += config_records
        notes += [n for n in config_notes if n not in notes]
    matmul = probe.record()
    for r in records:  # a step's flops/s (at its median time) over the measured GEMM ceiling
        r["matmul_peak_flops_per_s"] = matmul["peak_flops_per_s"]
        r["matmul_fraction"] = (r["flops_per_s"] / matmul["peak_flops_per_s"]
                                if r["flops_per_s"] else None)
    records.insert(0, matmul)
    for name in settings.configs if settings.devices else ():
        sweep, sweep_notes = bench_devices(CONFIGS[name], settings, device)
        records += sweep
        notes += sweep_notes
    records += [bench_epoch_modes(case, device) for case in settings.epoch_modes]
    if settings.fused_ce:
        records.append(bench_fused_ce(settings.fused_ce, settings, device))
    for r in records:
        r.setdefault("dtype", settings.dtype)
    return records, notes


def run(settings: Settings) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the chosen suites; the records (a `run` record first) and notes for the report."""
    from benchmarks import attention, contract

    if settings.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    device = measure.pick_device(settings.device)
    suites = {
        "steps": lambda: run_steps(settings, device),
        "attention": lambda: attention.bench(settings.attention, device, settings.progress),
        "remat": lambda: contract.bench_remat(settings.remat, device),
        "fused-head": lambda: contract.bench_fused_head(settings.fused_head, device),
        "diagnostics": lambda: contract.bench_diagnostics(settings.diagnostics, device),
    }
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    for suite in settings.suites:
        suite_records, suite_notes = suites[suite]()
        for r in suite_records:
            r.setdefault("suite", suite)
        records += suite_records
        notes += [n for n in suite_notes if n not in notes]
    env = measure.environment(device)
    for r in records:
        for k, v in env.items():
            r.setdefault(k, v)
    head = {"kind": "run", "suites": list(settings.suites),
            "settings": dataclasses.asdict(settings), "notes": notes, **env}
    return [head] + records, notes
