"""The suite's outputs: results.json (the records), results.md (tables), results.png (plots).

Every file is written atomically (temp file in the same folder, then rename), so a reader
never sees half a file and an interrupted run leaves the previous results whole.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

MiB = 2**20


def write_all(records: list[dict[str, Any]], notes: list[str], out: str | Path) -> list[Path]:
    out = Path(out)
    paths = [out / "results.json", out / "results.md", out / "results.png"]
    write_atomic(paths[0], (json.dumps(records, indent=2, default=_jsonable) + "\n").encode())
    write_atomic(paths[1], markdown(records, notes).encode())
    write_atomic(paths[2], png(records))
    return paths


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename over `path`: never a half-written file.
    The file gets the usual permissions (umask), not mkstemp's private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(value):
    if hasattr(value, "item"):  # numpy / jax scalars
        return value.item()
    return str(value)


def _of(records, kind):
    return [r for r in records if r.get("kind") == kind]


def _num(value, fmt: str, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value * scale, fmt)


def _pair(a, b, fmt, scale=1.0) -> str:
    return f"{_num(a, fmt, scale)} / {_num(b, fmt, scale)}"


def _ms(r) -> str:
    return (f"{_num(r['step_time_s'], '.3f', 1e3)} "
            f"({_num(r['step_time_min_s'], '.3f', 1e3)}–{_num(r['step_time_max_s'], '.3f', 1e3)})")


def _step_pairs(records):
    """(manual, auto) record pairs in config order."""
    steps = _of(records, "step")
    configs = list(dict.fromkeys(r["config"] for r in steps))
    by = {(r["config"], r["grad"]): r for r in steps}
    return [(by[c, "manual"], by[c, "auto"]) for c in configs]


def markdown(records: list[dict[str, Any]], notes: list[str]) -> str:
    run = (_of(records, "run") or [{}])[0]
    env = next((r for r in records if "jax_version" in r), {})
    matmul = (_of(records, "matmul") or [None])[0]
    settings = run.get("settings", {})
    lines = ["# fbp benchmarks: manual vs automatic gradients", "",
             f"Device **{env.get('device')}**, dtype **{settings.get('dtype')}**"
             + (f", precision **{settings['precision']}** (bfloat16 forward and backward, "
                f"{settings.get('dtype')} master parameters, loss and update)"
                if settings.get("precision") else "") + ", "
             f"JAX {env.get('jax_version')} / jaxlib {env.get('jaxlib_version')}, "
             f"Python {env.get('python_version')}, {env.get('cpu_count')} CPUs, "
             f"{env.get('timestamp')}. Train step = forward + loss + gradient + gd(0.01) update, "
             f"jitted with the state donated; median of {settings.get('repeats')} interleaved "
             "repetitions (min–max in parentheses).", ""]
    if matmul:
        bursts = ", ".join(_num(r, ".0f", 1e-9) for r in matmul.get("burst_rates", []))
        lines += [f"Measured matmul rate: **{_num(matmul['peak_flops_per_s'], '.1f', 1e-9)} "
                  f"GFLOP/s** at best, {_num(matmul['flops_per_s'], '.1f', 1e-9)} at the median "
                  f"({matmul['n']}×{matmul['n']} @ {matmul['n']}×{matmul['n']} in {matmul.get('dtype')}, "
                  f"{matmul['repeats']} products in bursts before and after each config, burst "
                  f"medians {bursts} GFLOP/s). The % matmul columns divide a step's flops/s "
                  "(XLA's flop count over the median step time) by the best rate.", ""]
    lines += ["| config | layers | params | batch | manual ms | auto ms | manual/auto "
              "| compile manual/auto s | temp manual/auto MiB | % matmul manual/auto |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m, a in _step_pairs(records):
        lines.append(
            f"| {m['config']} | {m['layers']} | {m['params']:,} | {m['batch_size']} | {_ms(m)} "
            f"| {_ms(a)} | **{m['step_time_s'] / a['step_time_s']:.2f}** "
            f"| {_pair(m['compile_time_s'], a['compile_time_s'], '.2f')} "
            f"| {_pair(m['temp_bytes'], a['temp_bytes'], '.2f', 1 / MiB)} "
            f"| {_pair(m['matmul_fraction'], a['matmul_fraction'], '.1f', 100)} |")
    peers = _of(records, "peer")
    if peers:
        lines += ["", "Peers (same MLP, plain SGD step, own init and loss, timed interleaved "
                  "with fbp):", "",
                  "| config | peer | ms | fbp manual / peer | fbp auto / peer | compile s "
                  "| temp MiB |", "|---|---|---:|---:|---:|---:|---:|"]
        for p in peers:
            lines.append(
                f"| {p['config']} | {p['framework']} {p.get('peer_version', '')} | {_ms(p)} "
                f"| {p['fbp_manual_over_peer']:.2f} | {p['fbp_auto_over_peer']:.2f} "
                f"| {_num(p.get('compile_time_s'), '.2f')} "
                f"| {_num(p.get('temp_bytes'), '.2f', 1 / MiB)} |")
    sweep = _of(records, "devices")
    if sweep:
        forced = any(r.get("forced_host_devices") for r in sweep)
        lines += ["", "Data parallel (`make_step(mesh=data_mesh(n))`, manual gradients): the "
                  "batch split over n devices, parameters replicated. Each count first takes "
                  f"{_steps(sweep[0]['check_steps'])} from the same state and batch; the "
                  "parameters are compared with the fewest-devices run (max |Δθ| / max |θ| "
                  "over leaves). Then the counts are timed interleaved."
                  + (" **These are forced CPU devices sharing the same cores: the column "
                     "checks correctness and shows the cost of partitioning, it is not a "
                     "speed-up claim.**" if forced else ""), "",
                  "| config | devices | ms | samples/s | loss after the check steps "
                  "| max rel. Δθ vs fewest |", "|---|---:|---:|---:|---:|---:|"]
        for r in sweep:
            lines.append(f"| {r['config']} | {r['devices']} | {_ms(r)} "
                         f"| {_num(r['samples_per_s'], ',.0f')} | {r['check_loss']:.6f} "
                         f"| {r['max_rel_param_diff']:.1e} |")
    for e in _of(records, "epoch_mode"):
        lines += ["", f"One epoch as one compiled loop (`lax.scan`) vs a Python loop of jitted "
                  f"steps: `fbp.train.fit`, MLP {e['layers']}, batch {e['batch_size']}, "
                  f"{e['steps_per_epoch']} steps per epoch, {e['dtype']}, median of "
                  f"{e['epochs_timed']} epochs after the compiling first one:", "",
                  "| epoch_mode | epoch ms | samples/s | first epoch (compiles) ms |",
                  "|---|---:|---:|---:|"]
        for mode in ("scan", "steps"):
            lines.append(f"| {mode} | {_num(e[f'{mode}_epoch_s'], '.2f', 1e3)} "
                         f"| {_num(e[f'{mode}_samples_per_s'], ',.0f')} "
                         f"| {_num(e[f'{mode}_first_epoch_s'], '.0f', 1e3)} |")
        lines += ["", f"scan / steps throughput: **{e['scan_over_steps']:.2f}×**"]
    for f in _of(records, "fused_ce"):
        lines += ["", f"Softmax cross-entropy of logits x W, loss and gradient: {f['tokens']} "
                  f"tokens, d = {f['d']}, vocabulary {f['vocab']:,} — unfused (dense layer + "
                  f"loss, logits materialized) vs `linear_softmax_cross_entropy` (chunks of "
                  f"{f['chunk_size']}):", "",
                  "| | ms | temp MiB | loss |", "|---|---:|---:|---:|"]
        for name in ("unfused", "fused"):
            lines.append(f"| {name} | {_num(f[f'{name}_step_time_s'], '.1f', 1e3)} "
                         f"| {_num(f.get(f'{name}_temp_bytes'), '.1f', 1 / MiB)} "
                         f"| {f[f'{name}_loss']:.6f} |")
        lines += ["", f"temporary memory unfused / fused: **{f['temp_ratio']:.1f}×**; "
                  f"time fused / unfused: **{f['time_ratio']:.2f}**"]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines += ["", "Columns and method: see benchmarks/README.md.", ""]
    return "\n".join(lines)


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def png(records: list[dict[str, Any]]) -> bytes:
    """Two panels: manual/auto per config (bars, line at 1), step time vs params (log-log)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    pairs = _step_pairs(records)
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax_ratio, ax_time = fig.subplots(1, 2)
    names = [m["config"] for m, _ in pairs]
    ratios = [m["step_time_s"] / a["step_time_s"] for m, a in pairs]
    ax_ratio.bar(names, ratios, color="tab:blue")
    ax_ratio.axhline(1.0, color="black", linewidth=1, linestyle="--")
    for i, r in enumerate(ratios):
        ax_ratio.annotate(f"{r:.2f}", (i, r), ha="center", va="bottom", fontsize=9)
    ax_ratio.set_ylabel("step time manual / auto")
    ax_ratio.set_title("manual vs jax.grad (< 1: manual faster)")

    series = {"manual": [m for m, _ in pairs], "auto": [a for _, a in pairs]}
    for p in _of(records, "peer"):
        series.setdefault(p["framework"], []).append(p)
    for name, rs in series.items():
        # the MLPs are one family, joined by a line; other models (CNN, transformer) are
        # points of their own
        rs = sorted(rs, key=lambda r: r["params"])
        mlps = [r for r in rs if r["model_kind"] == "mlp"]
        line, = ax_time.plot([r["params"] for r in mlps], [1e3 * r["step_time_s"] for r in mlps],
                             marker="o", label=name)
        others = [r for r in rs if r["model_kind"] != "mlp"]
        ax_time.plot([r["params"] for r in others], [1e3 * r["step_time_s"] for r in others],
                     marker="s", linestyle="none", color=line.get_color())
        if name == "manual":
            for r in rs:
                ax_time.annotate(r["config"], (r["params"], 1e3 * r["step_time_s"]),
                                 textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax_time.set_xscale("log")
    ax_time.set_yscale("log")
    ax_time.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap
    ax_time.set_xlabel("parameters")
    ax_time.set_ylabel("median step time (ms)")
    ax_time.set_title("train step time vs model size (■: not an MLP)")
    ax_time.legend()
    env = next((r for r in records if r.get("kind") == "step"), {})
    precision = f", precision {env['precision']}" if env.get("precision") else ""
    fig.suptitle(f"fbp train step, {env.get('device')}, {env.get('dtype')}{precision}",
                 fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
