"""The benchmark suite: `--quick` end to end into a tmp dir, and its JAX-version shims."""

import argparse
import json
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks import cli, measure, peers  # noqa: E402
from benchmarks.configs import CONFIGS  # noqa: E402

STEP_FIELDS = {
    "config", "grad", "device", "platform", "device_kind", "dtype", "batch_size", "params",
    "step_time_s", "step_time_min_s", "step_time_max_s", "compile_time_s", "temp_bytes",
    "flops", "flops_per_s", "matmul_fraction", "manual_over_auto", "jax_version",
    "jaxlib_version", "python_version", "cpu_count", "timestamp",
}


def test_quick_suite_writes_json_md_png(tmp_path, capsys):
    out = tmp_path / "results"
    assert cli.main(["--quick", "--config", "tiny", "--no-progress", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md",
                                                      "results.png"]  # no temp files left
    records = json.loads((out / "results.json").read_text())

    steps = {r["grad"]: r for r in records if r["kind"] == "step"}
    assert set(steps) == {"manual", "auto"}
    for r in steps.values():
        assert STEP_FIELDS <= set(r), STEP_FIELDS - set(r)
        assert r["config"] == "tiny" and r["dtype"] == "float32"
        assert r["params"] == CONFIGS["tiny"].params
        assert 0 < r["step_time_min_s"] <= r["step_time_s"] <= r["step_time_max_s"]
        assert r["compile_time_s"] > 0
        assert r["temp_bytes"] is None or r["temp_bytes"] >= 0
        assert r["flops"] is None or r["flops"] > 0
    # same initial state, batch and number of steps: manual and auto trained alike
    assert steps["manual"]["final_loss"] == pytest.approx(steps["auto"]["final_loss"], rel=1e-4)

    (matmul,) = [r for r in records if r["kind"] == "matmul"]
    assert matmul["flops_per_s"] > 0 and matmul["dtype"] == "float32"
    (epochs,) = [r for r in records if r["kind"] == "epoch_mode"]
    assert epochs["scan_samples_per_s"] > 0 and epochs["steps_samples_per_s"] > 0
    assert epochs["scan_over_steps"] == pytest.approx(
        epochs["scan_samples_per_s"] / epochs["steps_samples_per_s"])

    md = (out / "results.md").read_text()
    assert "| tiny |" in md and "manual/auto" in md and "scan / steps" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "written:" in capsys.readouterr().out


class _Compiled:
    def __init__(self, cost, memory):
        self._cost, self._memory = cost, memory

    def cost_analysis(self):
        if isinstance(self._cost, Exception):
            raise self._cost
        return self._cost

    def memory_analysis(self):
        return self._memory


@pytest.mark.parametrize(("cost", "flops"), [
    ({"flops": 12.0, "bytes accessed": 3.0}, 12.0),  # JAX >= 0.4.3x: a dict
    ([{"flops": 7.0}], 7.0),                          # older: a list of one dict per module
    ([], None), (None, None), ({"flops": -1.0}, None),
    (NotImplementedError("no cost model"), None),
])
def test_cost_flops_handles_dict_list_and_missing(cost, flops):
    assert measure.cost_flops(_Compiled(cost, None)) == flops


def test_memory_stats_handles_missing():
    assert measure.memory_stats(_Compiled(None, None))["temp_bytes"] is None

    class Stats:
        temp_size_in_bytes = 1024

    stats = measure.memory_stats(_Compiled(None, Stats()))
    assert stats["temp_bytes"] == 1024 and stats["argument_bytes"] is None


def test_missing_peer_is_skipped_with_a_reason(monkeypatch):
    def no_import(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(peers.importlib, "import_module", no_import)
    for name in peers.PEERS:
        with pytest.raises(peers.Unavailable, match="does not import"):
            peers.build(name, CONFIGS["tiny"], None, None, "float32", None, 0.01)


def test_options():
    parser = cli.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--quick", "--config", "tiny", "--config", "tiny",
                              "--repeats", "7", "--dtype", "float64"])
    settings = cli.settings_from_args(args)
    assert settings.configs == ("tiny",) and settings.repeats == 7
    assert settings.dtype == "float64"
    assert settings.epoch_modes and settings.fused_ce
    steps_only = cli.settings_from_args(parser.parse_args(["--steps-only"]))
    assert steps_only.epoch_modes == () and steps_only.fused_ce is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--repeats", "0"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", "nope"])


def test_fbp_bench_subcommand(capsys):
    from fbp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_missing_device_is_a_clear_error(tmp_path, capsys):
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present")
    assert cli.main(["--quick", "--device", "gpu", "--out", str(tmp_path / "r")]) == 2
    assert "no gpu device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "tol"), [(None, 1e-5), ("bf16", 1e-2)])
def test_devices_sweep_and_precision(tmp_path, precision, tol):
    """`--devices 1,2` forces two CPU devices in a fresh process; both counts take the same
    steps to the same parameters (up to rounding: the sums run in another order)."""
    import os
    import subprocess

    out = tmp_path / "r"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--config", "tiny", "--devices", "1,2",
         "--no-progress", "--out", str(out)] + (["--precision", precision] if precision else []),
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((out / "results.json").read_text())
    steps = [r for r in records if r["kind"] == "step"]
    assert {r["precision"] for r in steps} == {precision}
    assert {r["dtype"] for r in steps} == {"float32"}
    (matmul,) = [r for r in records if r["kind"] == "matmul"]
    assert matmul["dtype"] == ("bfloat16" if precision else "float32")
    sweep = {r["devices"]: r for r in records if r["kind"] == "devices"}
    assert set(sweep) == {1, 2}
    assert sweep[1]["max_rel_param_diff"] == 0.0
    assert sweep[2]["max_rel_param_diff"] < tol
    assert sweep[2]["check_loss"] == pytest.approx(sweep[1]["check_loss"], rel=tol)
    assert sweep[2]["forced_host_devices"] and "device_count=2" in sweep[2]["xla_flags"]
    md = (out / "results.md").read_text()
    assert ("precision **bf16**" in md) == (precision == "bf16")
    assert "not a speed-up claim" in md


def test_devices_option():
    parser = cli.add_arguments(argparse.ArgumentParser())
    assert parser.parse_args(["--devices", "4,1,2,2"]).devices == (1, 2, 4)
    for bad in ("0", "a,b", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(["--devices", bad])


# --- the suites as options of `python -m benchmarks` -------------------------------------

def _parse(argv):
    return cli.add_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_suite_option_expands_groups_and_sets_defaults():
    from benchmarks.suite import QUICK_ATTENTION

    settings = cli.settings_from_args(_parse(["--suite", "contract", "--suite", "remat"]))
    assert settings.suites == ("remat", "fused-head", "diagnostics")
    assert cli.settings_from_args(_parse([])).suites == ("steps",)
    quick = cli.settings_from_args(_parse(["--quick", "--suite", "attention"]))
    assert quick.attention == QUICK_ATTENTION
    custom = cli.settings_from_args(_parse(["--suite", "attention", "--lengths", "64,32,64",
                                            "--chunk", "16", "--max-run-gib", "0.5",
                                            "--repeats", "2"]))
    assert custom.attention.lengths == (32, 64) and custom.attention.chunk == 16
    assert custom.attention.max_run_gib == 0.5
    assert custom.attention.repeats == 2 and custom.attention.long_repeats == 2
    assert custom.remat.repeats == 2 and custom.fused_head.repeats == 2 and custom.repeats == 2
    for bad in (["--suite", "nope"], ["--lengths", "0"], ["--lengths", "a"],
                ["--max-run-gib", "-1"], ["--chunk", "0"]):
        with pytest.raises(SystemExit):
            _parse(bad)


@pytest.mark.parametrize(("argv", "named"), [
    (["--suite", "attention", "--peers"], "--peers"),
    (["--suite", "remat", "--config", "tiny"], "--config"),
    (["--suite", "fused-head", "--dtype", "bfloat16"], "--dtype"),
    (["--suite", "steps", "--chunk", "8"], "--chunk"),
])
def test_option_for_a_suite_not_run_is_refused(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.settings_from_args(_parse(argv))
    assert named in str(exit_info.value) and "not selected" in str(exit_info.value)


def test_default_out_names_the_suite_and_keeps_quick_runs_out_of_results():
    def out(argv, quick=False):
        return cli.default_out(cli.settings_from_args(_parse(argv)), "cpu", quick)

    assert out([]) == cli.RESULTS / "cpu-float32"
    assert out(["--precision", "bf16"]) == cli.RESULTS / "cpu-bf16"
    assert out(["--devices", "1,2"]) == cli.RESULTS / "cpu-devices"
    assert out(["--suite", "attention"]) == cli.RESULTS / "cpu-attention"
    assert out(["--suite", "contract"]) == cli.RESULTS / "cpu-contract"
    assert out(["--suite", "remat", "--suite", "fused-head"]).name == "cpu-remat+fused-head"
    assert cli.RESULTS not in out(["--quick"], quick=True).parents


def test_aliases_are_the_main_command(capsys):
    from benchmarks import attention, contract

    for module, prog in ((attention, "benchmarks.attention"), (contract, "benchmarks.contract")):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
        assert prog in capsys.readouterr().out


def test_max_rel_diff():
    import numpy as np

    a = {"w": np.array([1.0, 2.0], np.float32), "b": np.zeros(2, np.float32)}
    assert measure.max_rel_diff(a, a) == 0.0
    b = {"w": np.array([1.0, 2.5], np.float32), "b": np.array([0.0, 0.1], np.float32)}
    # w: 0.5 / 2.5; b: 0.1 / 0.1 (relative to the second tree's scale)
    assert measure.max_rel_diff(a, b) == pytest.approx(1.0)
    assert measure.max_rel_diff({"w": a["w"]}, {"w": b["w"]}) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="trees differ"):
        measure.max_rel_diff(a, {"w": a["w"]})
    with pytest.raises(ValueError, match="shapes differ"):
        measure.max_rel_diff({"w": a["w"]}, {"w": np.zeros(3, np.float32)})


def _attention_records(ratio_4096=24.0, time_ratio=1.2, long_mib=128.0):
    """Synthetic attention records at T = 512, 4096, 16384 (MiB figures, seconds)."""
    from benchmarks.attention import AUTODIFF, DENSE, chunked_name

    MiB = 2**20
    rows = []
    for t, dense_mib, dense_s in ((512, 18.0, 0.03), (4096, 24.0 * 32, 3.7),
                                  (16384, 12352.0, None)):
        chunk_mib = {4096: 24.0 * 32 / ratio_4096, 16384: long_mib}.get(t, 8.0)
        variants = {DENSE: (dense_mib, dense_s),
                    chunked_name(256): (chunk_mib, dense_s * time_ratio if dense_s else 9.0)}
        variants.update({n: (dense_mib * 1.3, dense_s * 1.4 if dense_s else None)
                         for n in AUTODIFF})
        for name, (mib, s) in variants.items():
            rows.append({"kind": "attention", "suite": "attention", "T": t, "variant": name,
                         "chunk": 256, "heads": 4, "head_dim": 64, "batch": 1,
                         "dtype": "float32", "max_run_gib": 4.0, "temp_bytes": int(mib * MiB),
                         "step_time_s": s, "step_time_min_s": s, "step_time_max_s": s,
                         "timed": s is not None, "rel_diff_vs_fbp_dense":
                             (1e-7 if s is not None and t < 16384 else None)})
    return rows


def test_attention_goals_met_not_met_and_not_evaluated():
    from benchmarks.attention import goals

    met = {g["goal"]: g for g in goals(_attention_records(), 256)}
    assert len(met) == 4 and all(g["met"] is True for g in met.values()), met
    missed = goals(_attention_records(ratio_4096=10.0, time_ratio=1.6, long_mib=2048.0), 256)
    assert [g["met"] for g in missed] == [False, True, False, False]
    assert "10.0×" in missed[0]["figures"] and "worst 1.60×" in missed[2]["figures"]
    short = [r for r in _attention_records() if r["T"] == 512]
    assert [g["met"] for g in goals(short, 256)] == [None, None, True, None]


def _contract_records():
    env = {"device": "cpu: cpu", "jax_version": "0", "jaxlib_version": "0",
           "python_version": "3", "cpu_count": 2, "timestamp": "t"}
    rows = []
    for model in ("mlp", "transformer"):
        for variant, mib, s in (("fbp", 49.0, 0.06), ("fbp remat", 11.5, 0.056),
                                ("jax.grad", 49.0, 0.058), ("jax.grad + jax.checkpoint", 57.0,
                                                            0.065)):
            rows.append({"kind": "remat", "suite": "remat", "model": model, "depth": 4,
                         "input": [8, 16], "variant": variant, "repeats": 3,
                         "temp_bytes": int(mib * 2**20), "compile_time_s": 0.5,
                         "step_time_s": s, "step_time_min_s": s, "step_time_max_s": s,
                         "grad_rel_diff_vs_fbp": 0.0, **env})
    for variant, mib, s, chunk in (("dense + softmax_cross_entropy", 1542.0, 0.9, None),
                                   ("linear_softmax_head + fused_softmax_cross_entropy", 39.0,
                                    0.6, 1024)):
        rows.append({"kind": "fused_head", "suite": "fused-head", "variant": variant,
                     "tokens": 4096, "seq": 512, "vocab": 32768, "width": 64,
                     "chunk_size": chunk, "repeats": 3, "temp_bytes": int(mib * 2**20),
                     "compile_time_s": 1.0, "step_time_s": s, "step_time_min_s": s,
                     "step_time_max_s": s, "first_loss": 10.4, "final_loss": 10.3,
                     "dense_over_fused_temp": 1542 / 39, "fused_over_dense_time": 0.6 / 0.9,
                     **env})
    for k, ms in ((None, 11.7), (10, 11.3), (1, 12.3)):
        rows.append({"kind": "diagnostics", "suite": "diagnostics", "model": "digits MLP",
                     "diagnostics_every": k, "epoch_time_s": ms / 1e3,
                     "epoch_time_min_s": ms / 1e3, "epoch_time_max_s": ms / 1e3,
                     "cost_vs_off": ms / 11.7 - 1, "epochs_timed": 28, **env})
    return rows


def _all_suite_records():
    from benchmarks.attention import goals

    records = ([{"kind": "run", "suites": ["attention", "remat", "fused-head", "diagnostics"],
                 "settings": {}, "timestamp": "t"}]
               + _attention_records(ratio_4096=10.0) + _contract_records())
    return records + goals(records, 256)


def test_one_report_for_every_suite(tmp_path, monkeypatch):
    """report.write_all writes the three files for the non-step suites, each section with
    its figures; the goals with their verdicts. (The plot itself: the slow test below.)"""
    from benchmarks import report

    monkeypatch.setattr(report, "png", lambda records: b"\x89PNG\r\n\x1a\nstub")
    records = _all_suite_records()
    paths = report.write_all(records, ["a note"], tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["results.json", "results.md",
                                                                  "results.png"]
    assert json.loads(paths[0].read_text()) == records
    md = paths[1].read_text()
    for title in report.SECTION_TITLES.values():
        if not title.startswith("Train step"):
            assert f"## {title}" in md, title
    assert "| **not met** |" in md and "| **met** |" in md and "10.0×" in md
    assert "12352.0" in md  # T = 16384 memory of fbp dense, compiled but not run
    assert "fbp remat: memory 49.0 → 11.5 MiB (×0.23)" in md
    assert "temporary memory dense / fused: **39.5×**" in md
    assert "| off | 11.70" in md and "+5.1%" in md
    assert "- a note" in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_peer_table_reports_params_start_and_faster_peers():
    from benchmarks import report

    env = {"device": "cpu: cpu", "platform": "cpu", "jax_version": "0"}
    step = {"config": "transformer", "model_kind": "transformer", "layers": "2 blocks",
            "params": 1_645_312, "batch_size": 16, "step_time_s": 0.2, "step_time_min_s": 0.2,
            "step_time_max_s": 0.2, "compile_time_s": 1.0, "temp_bytes": 2**20,
            "matmul_fraction": 0.5, **env}
    records = [{"kind": "run", "suites": ["steps"], "settings": {"repeats": 3}},
               {"kind": "step", "grad": "manual", **step}, {"kind": "step", "grad": "auto", **step},
               {"kind": "peer", **step, "framework": "torch", "peer_version": "2",
                "peer_params": 1_645_824, "peer_init": "fbp", "first_loss_rel_diff_vs_fbp": 1e-7,
                "step_time_s": 0.1, "fbp_manual_over_peer": 2.0, "fbp_auto_over_peer": 2.1}]
    md = report.markdown(records, [])
    assert "| transformer | torch 2 | 1,645,824 (1,645,312) | fbp | 1.0e-07 |" in md
    assert "key bias" in md
    assert "- transformer: torch 2.00× — the matrix-product kernels" in md
    assert "page faults" not in md  # no host memory recorded: nothing said about it
    # the page faults are named only where the run had glibc's default host memory
    for host, faults in (("glibc default", True), ("kept (fbp.keep_host_memory)", False),
                         ("huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)", False)):
        md = report.markdown([{**r, "host_memory": host} for r in records], [])
        assert ("page faults per step" in md) is faults, host


@pytest.mark.slow
def test_plot_for_every_suite():
    from benchmarks import report

    assert report.png(_all_suite_records())[:8] == b"\x89PNG\r\n\x1a\n"


def test_fbp_layers_are_read_in_order_and_checked_against_the_peer_model():
    import numpy as np

    def dense(i, o):
        return {"w": np.zeros((i, o), np.float32), "b": np.zeros(o, np.float32)}

    ln = {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}
    attn = {f"w_{z}": np.zeros((4, 4), np.float32) for z in "qkvo"}
    block = ((ln, attn), (ln, dense(4, 16), {}, dense(16, 4)))  # transformer_block's nesting
    params = (block, ln, dense(4, 4))
    assert [peers._kind(p) for p in peers.fbp_layers(params)] == \
        ["ln", "attn", "ln", "dense", "dense", "ln", "dense"]
    assert len(peers._matched(CONFIGS["tiny-transformer"], params)) == 7
    with pytest.raises(peers.Mismatch, match="fbp's layers are"):
        peers._matched(CONFIGS["tiny-cnn"], params)
    assert peers.expected_kinds(CONFIGS["tiny-cnn"]) == ["conv", "conv", "dense", "dense"]


# --- end to end, tiny (each compiles a dozen programs: seconds on two cores) ---------------

@pytest.mark.slow
def test_attention_suite_end_to_end(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["--suite", "attention", "--lengths", "32,64", "--chunk", "16",
                     "--max-run-gib", "0.5", "--repeats", "1", "--no-progress",
                     "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    rows = [r for r in records if r["kind"] == "attention"]
    assert {(r["T"], r["variant"]) for r in rows} >= {(32, "fbp dense"),
                                                      (64, "fbp chunked (c=16)")}
    assert len(rows) == 10
    for r in rows:
        assert r["temp_bytes"] > 0 and r["compile_time_s"] > 0 and r["timed"]
        assert 0 < r["step_time_min_s"] <= r["step_time_s"] <= r["step_time_max_s"]
        assert r["rel_diff_vs_fbp_dense"] < 1e-4  # every variant computes the same gradients
        assert r["jax_version"] and r["device"] and r["suite"] == "attention"
    goals = [g for g in records if g["kind"] == "goal"]
    assert len(goals) == 4 and goals[0]["met"] is None and goals[3]["met"] is None  # no T=4096
    assert goals[2]["met"] in (True, False)  # the time goal: dense was timed
    md = (out / "results.md").read_text()
    assert "## Attention forward + backward against T" in md and "not evaluated" in md


@pytest.mark.slow
def test_contract_suites_end_to_end(tmp_path):
    out = tmp_path / "r"
    assert cli.main(["--quick", "--suite", "contract", "--repeats", "1", "--no-progress",
                     "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    remat = [r for r in records if r["kind"] == "remat"]
    assert {r["variant"] for r in remat} == {"fbp", "fbp remat", "jax.grad",
                                             "jax.grad + jax.checkpoint"}
    for r in remat:
        assert r["temp_bytes"] > 0 and r["step_time_s"] > 0 and r["grad_rel_diff_vs_fbp"] < 1e-4
    by = {(r["model"], r["variant"]): r for r in remat}
    for model in ("mlp", "transformer"):  # remat keeps less
        assert by[model, "fbp remat"]["temp_bytes"] < by[model, "fbp"]["temp_bytes"]
    dense, fused = [r for r in records if r["kind"] == "fused_head"]
    assert fused["temp_bytes"] < dense["temp_bytes"]
    assert fused["first_loss"] == pytest.approx(dense["first_loss"], rel=1e-5)
    assert fused["final_loss"] == pytest.approx(dense["final_loss"], rel=1e-4)
    diagnostics = [r for r in records if r["kind"] == "diagnostics"]
    assert [r["diagnostics_every"] for r in diagnostics] == [None, 10, 1]
    md = (out / "results.md").read_text()
    assert "## remat" in md and "## Fused head" in md and "## Diagnostics" in md


@pytest.mark.slow
def test_steps_with_peers_on_cnn_and_transformer(tmp_path):
    pytest.importorskip("flax")
    pytest.importorskip("torch")
    out = tmp_path / "r"
    assert cli.main(["--quick", "--config", "tiny-cnn", "--config", "tiny-transformer",
                     "--peers", "--steps-only", "--repeats", "2", "--no-progress",
                     "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    peer_records = {(r["config"], r["framework"]): r for r in records if r["kind"] == "peer"}
    assert set(peer_records) == {(c, f) for c in ("tiny-cnn", "tiny-transformer")
                                 for f in ("flax", "torch")}
    for r in peer_records.values():
        assert r["peer_init"] == "fbp"  # fbp's parameters mapped onto the peer's model
        assert r["first_loss_rel_diff_vs_fbp"] < 1e-5  # and it is the same function
        assert r["fbp_manual_over_peer"] > 0 and r["step_time_s"] > 0
    md = (out / "results.md").read_text()
    assert "equinox on tiny-cnn: skipped" in md


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["flax", "torch"])
def test_peer_model_is_fbp_model(peer):
    """With fbp's parameters (perturbed: no zero bias or unit scale), the peer's loss is
    fbp's; a model that differs in one respect (no causal mask) gives another loss."""
    pytest.importorskip(peer)
    import jax
    import numpy as np

    from benchmarks import suite
    from fbp import layers as L
    from fbp import losses
    from fbp.optim import gd

    device = jax.devices("cpu")[0]
    for name in ("tiny-cnn", "tiny-transformer"):
        config = CONFIGS[name]
        net, label_shape = suite.build_model(config)
        x, y = suite._batch(config.sizes, config.batch_size, "float32", device, config.example,
                            label_shape)
        state = suite._initial_state(net, gd(0.01), x.shape, "float32", device)
        rng = np.random.default_rng(1)
        params = jax.tree.map(lambda a, rng=rng: np.asarray(a) + np.float32(0.1) * rng.normal(
            size=a.shape).astype(np.float32), jax.device_get(state.params))
        built = peers.build(peer, config, x, y, "float32", device, 0.01, init=params)
        assert built.init == "fbp", built.note
        loss = float(np.asarray(built.run()[1]))
        want = float(losses.softmax_cross_entropy(net.apply(params, x), y))
        assert loss == pytest.approx(want, rel=1e-5)
        if config.kind == "transformer":
            unmasked = L.serial(L.transformer_block(config.heads), L.layer_norm(),
                                L.dense(config.sizes[-1]))
            other = float(losses.softmax_cross_entropy(unmasked.apply(params, x), y))
            assert abs(other - loss) > 1e-3 * abs(loss)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
def test_keep_host_memory_after_jax_started_is_refused(tmp_path, capsys):
    """In a process where JAX has run, --keep-host-memory cannot take effect: exit 2 with a
    line saying so (and fbp's warning), nothing measured under a setting it did not get."""
    import jax.numpy as jnp

    jnp.ones(1).block_until_ready()
    with pytest.warns(UserWarning, match="before the first computation"):
        code = cli.main(["--quick", "--config", "tiny", "--keep-host-memory", "--no-progress",
                         "--out", str(tmp_path / "r")])
    assert code == 2 and not (tmp_path / "r").exists()
    assert "--keep-host-memory" in capsys.readouterr().err


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
def test_keep_host_memory_is_recorded(tmp_path):
    """A fresh process: the setting is applied before JAX starts and every record says so."""
    import subprocess

    out = tmp_path / "r"
    subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--config", "tiny",
                    "--steps-only", "--keep-host-memory", "--no-progress", "--out", str(out)],
                   cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True,
                   timeout=600)
    records = json.loads((out / "results.json").read_text())
    kept = {r.get("host_memory") for r in records if "jax_version" in r}
    assert kept == {"kept (fbp.keep_host_memory)"}
    assert "host memory kept (fbp.keep_host_memory)" in (out / "results.md").read_text()


def _dot_products(jaxpr):
    """(output shape, contraction size) of every dot_general in a jaxpr, nested ones too."""
    import math

    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out.append((tuple(eqn.outvars[0].aval.shape),
                        math.prod(lhs[i] for i in lhs_contract)))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out += _dot_products(inner)
    return out


def test_gemm_shapes_are_every_product_of_the_transformer_step():
    """`transformer_profile --gemms` claims to time the suite's transformer step's products
    as fbp's layers write them: its list must be exactly the step's dot_generals (shape of
    each result, size of each contraction, how many), read from the step's jaxpr."""
    import collections

    import jax
    import jax.numpy as jnp

    import fbp
    from benchmarks import suite, transformer_profile
    from fbp import losses

    config = CONFIGS["transformer"]
    net, label_shape = suite.build_model(config)
    shape = (config.batch_size, *config.example)
    _, params = net.init(jax.random.key(0), shape)
    jaxpr = jax.make_jaxpr(fbp.value_and_grad(net, losses.softmax_cross_entropy))(
        params, jnp.zeros(shape), jnp.zeros((config.batch_size, *label_shape), jnp.int32))
    found = collections.Counter(_dot_products(jaxpr.jaxpr))

    listed: collections.Counter = collections.Counter()
    for sa, sb, form, count in transformer_profile.gemm_shapes().values():
        a = sa[:-2] + sa[:-3:-1] if form[0] == "t" else sa   # the operands as multiplied
        b = sb[:-2] + sb[:-3:-1] if form[1] == "t" else sb
        assert a[-1] == b[-2], (sa, sb, form)
        listed[(a[:-1] + b[-1:], a[-1])] += count
    assert sum(found.values()) == 39
    assert listed == found


def test_host_memory_names_how_large_blocks_are_allocated(monkeypatch):
    from benchmarks import measure

    monkeypatch.delenv("FBP_KEEP_HOST_MEMORY", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert measure.host_memory() == "glibc default"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert measure.host_memory() == "huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2")
    assert measure.host_memory() == (
        "glibc default (GLIBC_TUNABLES=glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2)")
    monkeypatch.setenv("FBP_KEEP_HOST_MEMORY", "1")
    assert measure.host_memory() == "kept (fbp.keep_host_memory)"
