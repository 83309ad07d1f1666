"""The suite's outputs: results.json (the records), results.md (tables), results.png (plots).

Every file is written atomically (`fbp.io.write_atomic`: temp file in the same folder,
fsync, rename, fsync of the folder), so a reader never sees half a file and an interrupted
run leaves the previous results whole.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from fbp.io import write_atomic

MiB = 2**20


def write_all(records: list[dict[str, Any]], notes: list[str], out: str | Path) -> list[Path]:
    out = Path(out)
    paths = [out / "results.json", out / "results.md", out / "results.png"]
    write_atomic(paths[0], (json.dumps(records, indent=2, default=_jsonable) + "\n").encode())
    write_atomic(paths[1], markdown(records, notes).encode())
    write_atomic(paths[2], png(records))
    return paths


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


SECTION_TITLES = {
    "steps": "Train step: manual vs automatic gradients",
    "attention": "Attention forward + backward against T",
    "remat": "remat: temporary memory and time of one value-and-grad",
    "fused-head": "Fused head: one train step",
    "diagnostics": "Diagnostics inside fit: epoch time",
}


def _suites(records) -> list[str]:
    run = (_of(records, "run") or [{}])[0]
    present = list(dict.fromkeys(r.get("suite", "steps") for r in records
                                 if r.get("kind") != "run"))
    return run.get("suites") or present


def markdown(records: list[dict[str, Any]], notes: list[str]) -> str:
    """results.md: a header (device, versions, method), then one section per suite run."""
    run = (_of(records, "run") or [{}])[0]
    env = next((r for r in records if "jax_version" in r), {})
    suites = _suites(records)
    peer_versions = sorted({f"{r['framework']} {r['peer_version']}"
                            for r in _of(records, "peer")})
    lines = ["# fbp benchmarks: " + ", ".join(suites), "",
             f"Device **{env.get('device')}**, JAX {env.get('jax_version')} / jaxlib "
             f"{env.get('jaxlib_version')}, Python {env.get('python_version')}, "
             f"{env.get('cpu_count')} CPUs"
             + (f", host memory {env['host_memory']}" if env.get("host_memory") else "")
             + (f"; peers: {', '.join(peer_versions)}" if peer_versions else "")
             + f"; {run.get('timestamp', env.get('timestamp'))}. Times are medians of "
             "repetitions after warm-up, the contenders of a table interleaved in one process, "
             "each call ended by `block_until_ready` (min–max in parentheses where shown); "
             "memory is XLA's temporary bytes of the compiled program "
             "(`jax.jit(f).lower(...).compile().memory_analysis()`).", ""]
    sections = {"steps": _steps_section, "attention": _attention_section,
                "remat": _remat_section, "fused-head": _fused_head_section,
                "diagnostics": _diagnostics_section}
    for suite in suites:
        body = sections[suite](records, run.get("settings", {}))
        if body:
            lines += [f"## {SECTION_TITLES[suite]}", ""] + body + [""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["Columns and method: see benchmarks/README.md.", ""]
    return "\n".join(lines)


def _steps_section(records, settings) -> list[str]:
    matmul = (_of(records, "matmul") or [None])[0]
    pairs = _step_pairs(records)
    if not pairs and not _of(records, "epoch_mode") and not _of(records, "fused_ce"):
        return []
    lines = [f"dtype **{settings.get('dtype')}**"
             + (f", precision **{settings['precision']}** (bfloat16 forward and backward, "
                f"{settings.get('dtype')} master parameters, loss and update)"
                if settings.get("precision") else "")
             + ". Train step = forward + loss + gradient + gd(0.01) update, jitted with the "
             f"state donated; median of {settings.get('repeats')} interleaved repetitions.", ""]
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
    lines += _peers_block(records)
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
    return lines




def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


# Why a peer is faster than fbp where it is, per (peer, model kind, platform): what was
# measured about it (benchmarks/README.md, "Peers"). Printed only under a run where that
# peer is faster; elsewhere (another platform, say) the reason is "not investigated".
_SAME_AS_AUTO = ("jax.grad of the same layers, so XLA compiles what fbp auto gets (compare the "
                 "fbp auto / peer column and the temp MiB): where it beats fbp manual, the "
                 "difference is manual vs auto on this config (manual/auto above) or noise")
_TORCH_CPU = ("its own kernels (MKL/oneDNN GEMMs and convolutions, a fused scaled_dot_product_"
              "attention) run eagerly on its own threads; op by op on one thread they were not "
              "faster than fbp's programs, but on both cores its matrix products are "
              "(0.98–1.75× XLA:CPU's speed on the transformer step's products, python -m "
              "benchmarks.transformer_profile --gemms; benchmarks/README.md, Peers); the "
              "convolutions were not compared on both cores")
_TORCH_CPU_TRANSFORMER = (
    "the matrix-product kernels, measured (2026-12-02): the step's 39 products, each timed "
    "alone on both cores (python -m benchmarks.transformer_profile --gemms), take 92.4 ms in "
    "XLA:CPU against 68.7 in PyTorch (MKL/oneDNN), 0.98–1.75× slower on the 2-D products "
    "and 2.3–2.7× on the attention's per-head batched ones: more than the whole gap, so "
    "fbp's work outside the products is no slower than PyTorch's")
# added where the run's host memory was glibc's default (no kept memory, no huge pages)
_PAGE_FAULTS = ("; here also ~29,000 page faults per step: XLA:CPU allocates the step's "
                "temporaries anew on every call and glibc faults every 4 KiB page in again "
                "(fbp.keep_host_memory(), or GLIBC_TUNABLES=glibc.malloc.hugetlb=1)")
PEER_FASTER_BECAUSE: dict[tuple[str, str, str], str] = {
    **{(peer, kind, "cpu"): _SAME_AS_AUTO for peer in ("flax", "equinox")
       for kind in ("mlp", "cnn", "transformer")},
    **{("torch", kind, "cpu"): _TORCH_CPU for kind in ("mlp", "cnn")},
    ("torch", "transformer", "cpu"): _TORCH_CPU_TRANSFORMER,
}
FASTER = 1.05  # fbp manual / peer above this: the peer counts as faster


def _peers_block(records) -> list[str]:
    peers = _of(records, "peer")
    if not peers:
        return []
    fbp_params = {r["config"]: r["params"] for r in _of(records, "step")}
    lines = ["", "Peers: the same model, loss (mean softmax cross-entropy) and plain SGD step in "
             "other libraries, started from fbp's initial parameters where they map (then the "
             "first loss must equal fbp's: the rel. diff column), timed in one interleaved "
             "rotation with fbp manual and auto (the ratios come from that rotation; > 1: the "
             "peer is faster):", "",
             "| config | peer | params (fbp) | start | first loss rel. diff | ms "
             "| fbp manual / peer | fbp auto / peer | compile s | temp MiB |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for p in peers:
        params = f"{p.get('peer_params', 0):,}"
        if p.get("peer_params") != fbp_params.get(p["config"]):
            params += f" ({fbp_params.get(p['config'], 0):,})"
        lines.append(
            f"| {p['config']} | {p['framework']} {p.get('peer_version', '')} | {params} "
            f"| {'fbp' if p.get('peer_init') == 'fbp' else 'own init'} "
            f"| {_num(p.get('first_loss_rel_diff_vs_fbp'), '.1e')} | {_ms(p)} "
            f"| {p['fbp_manual_over_peer']:.2f} | {p['fbp_auto_over_peer']:.2f} "
            f"| {_num(p.get('compile_time_s'), '.2f')} "
            f"| {_num(p.get('temp_bytes'), '.2f', 1 / MiB)} |")
    faster = [p for p in peers if p["fbp_manual_over_peer"] > FASTER]
    if any(p.get("peer_params") != fbp_params.get(p["config"]) for p in peers):
        lines += ["", "A peer's parameter count differs where its attention has a key bias "
                  "(fbp's has none: the softmax cancels it, its gradient is zero); it starts "
                  "at zero, so the function is the same."]
    if faster:
        lines += ["", "Where a peer is faster than fbp manual (by more than "
                  f"{100 * (FASTER - 1):.0f}%):", ""]
        for p in faster:
            why = PEER_FASTER_BECAUSE.get((p["framework"], p.get("model_kind"),
                                           p.get("platform")), "not investigated")
            if (why is _TORCH_CPU_TRANSFORMER
                    and str(p.get("host_memory", "")).startswith("glibc default")):
                why += _PAGE_FAULTS
            lines.append(f"- {p['config']}: {p['framework']} {p['fbp_manual_over_peer']:.2f}× "
                         f"— {why}")
    else:
        lines += ["", "No peer is faster than fbp manual by more than "
                  f"{100 * (FASTER - 1):.0f}% here."]
    return lines


def _attention_section(records, settings) -> list[str]:
    from benchmarks.attention import DENSE

    rows = _of(records, "attention")
    if not rows:
        return []
    first = rows[0]
    lengths = sorted({r["T"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    chunked = next(n for n in names if n.startswith("fbp chunked"))
    by = {(r["T"], r["variant"]): r for r in rows}
    lines = [f"Causal `multi_head_attention({first['heads']})` on ({first['batch']}, T, "
             f"{first['heads'] * first['head_dim']}) ({first['heads']} heads of "
             f"{first['head_dim']}), {first['dtype']}: forward then backward for a given "
             "cotangent (no loss in the program). Time: median of interleaved runs, "
             f"— where not run (temporaries over {first['max_run_gib']:g} GiB).", "",
             "### Goals", "", "| goal | figures | |", "|---|---|---|"]
    for g in _of(records, "goal"):
        verdict = {True: "**met**", False: "**not met**", None: "not evaluated"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['figures']} | {verdict} |")
    header = "| T | " + " | ".join(names) + " |"
    rule = "|---|" + "---:|" * len(names)
    lines += ["", "### Temporary memory (MiB)", "", header, rule]
    for t in lengths:
        lines.append(f"| {t} | " + " | ".join(_num(by[t, n]["temp_bytes"], ".1f", 1 / MiB)
                                             for n in names) + " |")
    lines += ["", "### Time (ms)", "", header, rule]
    for t in lengths:
        lines.append(f"| {t} | " + " | ".join(
            "—" if by[t, n]["step_time_s"] is None else _num(by[t, n]["step_time_s"], ".1f", 1e3)
            for n in names) + " |")
    lines += ["", "### Chunked against fbp dense", "",
              "| T | dense / chunked memory | chunked / dense time | max rel. diff |",
              "|---|---:|---:|---:|"]
    for t in lengths:
        d, c = by[t, DENSE], by[t, chunked]
        time_ratio = (f"{c['step_time_s'] / d['step_time_s']:.2f}"
                      if c["step_time_s"] and d["step_time_s"] else "—")
        mem = (f"{d['temp_bytes'] / c['temp_bytes']:.1f}×"
               if d["temp_bytes"] and c["temp_bytes"] else "n/a")
        diff = c["rel_diff_vs_fbp_dense"]
        lines.append(f"| {t} | {mem} | {time_ratio} | "
                     f"{'—' if diff is None else _num(diff, '.1e')} |")
    return lines


def _remat_section(records, settings) -> list[str]:
    rows = _of(records, "remat")
    if not rows:
        return []
    lines = ["Each block plain or rematerialized: `fbp.layers.remat(block)` on the manual "
             "side, `jax.checkpoint(block.apply)` under `jax.value_and_grad` on the other; "
             f"float32, median of {rows[0]['repeats']} interleaved repetitions.", "",
             "| model (input) | blocks | variant | temp MiB | ms | compile s "
             "| grad rel. diff vs fbp |", "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} {tuple(r['input'])} | {r['depth']} | {r['variant']} "
                     f"| {_num(r['temp_bytes'], '.1f', 1 / MiB)} | {_ms(r)} "
                     f"| {_num(r['compile_time_s'], '.2f')} "
                     f"| {_num(r['grad_rel_diff_vs_fbp'], '.1e')} |")
    lines.append("")
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["variant"]: r for r in rows if r["model"] == model}
        parts = []
        for base, remat, what in (("fbp", "fbp remat", "fbp remat"),
                                  ("jax.grad", "jax.grad + jax.checkpoint", "jax.checkpoint")):
            b, c = by.get(base), by.get(remat)
            if b and c and b["temp_bytes"] and c["temp_bytes"]:
                parts.append(f"{what}: memory {_num(b['temp_bytes'], '.1f', 1 / MiB)} → "
                             f"{_num(c['temp_bytes'], '.1f', 1 / MiB)} MiB "
                             f"(×{c['temp_bytes'] / b['temp_bytes']:.2f}), time "
                             f"×{c['step_time_s'] / b['step_time_s']:.2f}")
        lines.append(f"- {model}: " + "; ".join(parts))
    return lines


def _fused_head_section(records, settings) -> list[str]:
    rows = _of(records, "fused_head")
    if not rows:
        return []
    r0 = rows[0]
    lines = [f"`fbp.train.make_step` (gd) of embedding({r0['vocab']}, {r0['width']}) → "
             f"dense({r0['width']}) → gelu → head over {r0['tokens']:,} tokens "
             f"({r0['tokens'] // r0['seq']} rows of {r0['seq']}) × {r0['vocab']:,} vocabulary, "
             "float32; both start from the same parameters, so they take the same steps "
             f"(first and final losses agree). Median of {r0['repeats']} interleaved steps.",
             "", "| head + loss | temp MiB | ms | compile s | first loss | final loss |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        chunk = f" (chunks of {r['chunk_size']})" if r.get("chunk_size") else ""
        lines.append(f"| {r['variant']}{chunk} | {_num(r['temp_bytes'], '.1f', 1 / MiB)} "
                     f"| {_ms(r)} | {_num(r['compile_time_s'], '.2f')} "
                     f"| {r['first_loss']:.6f} | {r['final_loss']:.6f} |")
    lines += ["", f"temporary memory dense / fused: **{_num(r0['dense_over_fused_temp'], '.1f')}×**;"
              f" time fused / dense: **{r0['fused_over_dense_time']:.2f}**"]
    return lines


def _diagnostics_section(records, settings) -> list[str]:
    rows = _of(records, "diagnostics")
    if not rows:
        return []
    lines = [f"`fbp.train.fit(..., diagnostics_every=k)`, {rows[0]['model']}; median epoch "
             "time over the epochs after each run's first (which compiles), the settings "
             "interleaved run by run.", "",
             "| diagnostics_every | epoch ms | cost vs off | epochs timed |",
             "|---|---:|---:|---:|"]
    for r in rows:
        k = r["diagnostics_every"]
        lines.append(f"| {'off' if k is None else k} "
                     f"| {1e3 * r['epoch_time_s']:.2f} ({1e3 * r['epoch_time_min_s']:.2f}–"
                     f"{1e3 * r['epoch_time_max_s']:.2f}) "
                     f"| {100 * r['cost_vs_off']:+.1f}% | {r['epochs_timed']} |")
    return lines


# --- results.png: one row of panels per suite ---------------------------------------------

def png(records: list[dict[str, Any]]) -> bytes:
    """One row of (up to) two panels per suite run; see benchmarks/README.md."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    painters = {"steps": _plot_steps, "attention": _plot_attention, "remat": _plot_remat,
                "fused-head": _plot_fused_head, "diagnostics": _plot_diagnostics}
    rows = [s for s in _suites(records) if painters[s](records, None)]
    rows = rows or ["none"]
    fig = Figure(figsize=(11, 4.2 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for suite, (left, right) in zip(rows, axes):
        if suite == "none":
            left.text(0.5, 0.5, "no results", ha="center", va="center")
            left.set_axis_off()
            right.set_axis_off()
            continue
        painters[suite](records, (left, right))
    env = next((r for r in records if "device" in r), {})
    fig.suptitle(f"fbp benchmarks: {', '.join(_suites(records))} — {env.get('device')}, "
                 f"JAX {env.get('jax_version')}", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _plot_steps(records, axes) -> bool:
    """manual/auto per config (bars, line at 1); step time vs params (log-log)."""
    from matplotlib.ticker import NullFormatter

    pairs = _step_pairs(records)
    if not pairs:
        return False
    if axes is None:
        return True
    ax_ratio, ax_time = axes
    names = [m["config"] for m, _ in pairs]
    ratios = [m["step_time_s"] / a["step_time_s"] for m, a in pairs]
    ax_ratio.bar(names, ratios, color="tab:blue")
    ax_ratio.axhline(1.0, color="black", linewidth=1, linestyle="--")
    for i, r in enumerate(ratios):
        ax_ratio.annotate(f"{r:.2f}", (i, r), ha="center", va="bottom", fontsize=9)
    ax_ratio.set_ylabel("step time manual / auto")
    env = pairs[0][0]
    precision = f", precision {env['precision']}" if env.get("precision") else ""
    ax_ratio.set_title(f"manual vs jax.grad (< 1: manual faster), {env.get('dtype')}{precision}",
                       fontsize=10)

    series = {"manual": [m for m, _ in pairs], "auto": [a for _, a in pairs]}
    for p in _of(records, "peer"):
        series.setdefault(p["framework"], []).append(p)
    for name, rs in series.items():
        # the MLPs are one family, joined by a line; other models (CNN, transformer) are
        # points of their own; every contender is placed at fbp's parameter count
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
    ax_time.set_title("train step time vs model size (■: not an MLP)", fontsize=10)
    ax_time.legend(fontsize=8)
    return True


def _plot_attention(records, axes) -> bool:
    """Temporary memory and time against T, log-log, one line per variant."""
    rows = _of(records, "attention")
    if not rows:
        return False
    if axes is None:
        return True
    ax_m, ax_t = axes
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["T"])
        sized = [r for r in mine if r["temp_bytes"] is not None]
        ax_m.plot([r["T"] for r in sized], [r["temp_bytes"] / MiB for r in sized], "o-",
                  label=name)
        timed = [r for r in mine if r["step_time_s"]]
        ax_t.plot([r["T"] for r in timed], [1e3 * r["step_time_s"] for r in timed], "o-",
                  label=name)
    for ax, what in ((ax_m, "temporary memory (MiB)"), (ax_t, "fwd + bwd time (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.set_title("attention memory: O(T²) dense, O(T) chunked", fontsize=10)
    ax_t.set_title("attention time", fontsize=10)
    ax_m.legend(fontsize=7)
    return True


def _grouped_bars(ax, groups: dict[str, dict[str, float]], ylabel: str, title: str) -> None:
    """Bars per group (x) and variant (colour)."""
    variants = list(dict.fromkeys(v for g in groups.values() for v in g))
    width = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [g.get(v, 0.0) for g in groups.values()], width, label=v,
               color=f"C{j}")
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def _plot_remat(records, axes) -> bool:
    rows = _of(records, "remat")
    if not rows:
        return False
    if axes is None:
        return True
    groups_m: dict[str, dict[str, float]] = {}
    groups_t: dict[str, dict[str, float]] = {}
    for r in rows:
        key = f"{r['model']}, {r['depth']} blocks"
        groups_m.setdefault(key, {})[r["variant"]] = (r["temp_bytes"] or 0) / MiB
        groups_t.setdefault(key, {})[r["variant"]] = 1e3 * r["step_time_s"]
    _grouped_bars(axes[0], groups_m, "XLA temporary memory (MiB)", "remat: memory")
    _grouped_bars(axes[1], groups_t, "value-and-grad time (ms)", "remat: time")
    return True


def _plot_fused_head(records, axes) -> bool:
    rows = _of(records, "fused_head")
    if not rows:
        return False
    if axes is None:
        return True
    labels = ["dense + CE" if "fused" not in r["variant"] else "fused head + loss"
              for r in rows]
    title = f"fused head: {rows[0]['tokens']} tokens × {rows[0]['vocab']} vocabulary"
    for ax, values, what in ((axes[0], [(r["temp_bytes"] or 0) / MiB for r in rows],
                              "train step temporary memory (MiB)"),
                             (axes[1], [1e3 * r["step_time_s"] for r in rows],
                              "train step time (ms)")):
        ax.bar(labels, values, color=["C0", "C1"][:len(rows)])
        for i, v in enumerate(values):
            ax.annotate(f"{v:.1f}", (i, v), ha="center", va="bottom", fontsize=9)
        ax.set_ylabel(what)
        ax.set_title(title, fontsize=10)
    return True


def _plot_diagnostics(records, axes) -> bool:
    rows = _of(records, "diagnostics")
    if not rows:
        return False
    if axes is None:
        return True
    labels = ["off" if r["diagnostics_every"] is None else f"every {r['diagnostics_every']}"
              for r in rows]
    values = [1e3 * r["epoch_time_s"] for r in rows]
    axes[0].bar(labels, values, color="tab:blue")
    axes[0].set_ylabel("median epoch time (ms)")
    axes[0].set_title("fit with diagnostics_every = k", fontsize=10)
    costs = [100 * r["cost_vs_off"] for r in rows]
    axes[1].bar(labels, costs, color="tab:orange")
    axes[1].axhline(0.0, color="black", linewidth=1)
    axes[1].set_ylabel("epoch time vs off (%)")
    axes[1].set_title("cost of the diagnostics", fontsize=10)
    return True
