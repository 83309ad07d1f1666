"""The benchmark suite: `--quick` end to end into a tmp dir, and its JAX-version shims."""

import argparse
import json
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
