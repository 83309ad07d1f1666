"""What fbp ships: the wheel holds the `fbp` package only (and py.typed), its public modules
say what they export, and an installed wheel runs `fbp` without the source checkout."""

import ast
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from fbp import _layer

ROOT = Path(__file__).resolve().parent.parent

# fbp's public modules; each says what it exports in __all__
PUBLIC = ["fbp", "fbp.cli", "fbp.contract", "fbp.models", "fbp.data", "fbp.losses", "fbp.optim",
          "fbp.backprop", "fbp.check", "fbp.layercheck", "fbp.plot", "fbp.fused", "fbp.layers",
          "fbp.layers.dense", "fbp.layers.activations", "fbp.layers.reshape",
          "fbp.layers.embedding", "fbp.layers.combinators", "fbp.layers.wrap",
          "fbp.layers.batch_norm"]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_module_exports_what_it_lists(name):
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(set(exported)) == len(exported), "a name listed twice"
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists names it lacks: {missing}"


def test_contract_is_the_layer_implementation():
    """fbp.contract re-exports fbp._layer's objects themselves, and its example layer works."""
    import jax.numpy as jnp

    from fbp import contract

    for name in contract.__all__:
        assert getattr(contract, name) is getattr(_layer, name), name
    for needed in ("Layer", "check_shape", "check_input", "check_param_shapes", "split_key",
                   "child_fwd", "child_bwd", "combinator", "shape_residual", "residual_shape",
                   "init_with_state", "fwd_with_state", "default_float_dtype",
                   "at_least_float32"):
        assert needed in contract.__all__

    def scale(c):  # the module doc's example
        def init(key, input_shape):
            return contract.check_shape("scale", input_shape), {}

        def fwd(params, x, *, key=None, train=False):
            contract.check_input("scale", x)
            return c * x, ()

        def bwd(params, res, g):
            return {}, c * g

        return contract.Layer(f"scale({c})", init, fwd, bwd)

    layer = scale(3.0)
    x = jnp.ones((2, 3), contract.default_float_dtype())
    shape, params, state = contract.init_with_state(layer, None, x.shape)
    y, res, _ = contract.fwd_with_state(layer, params, x)
    assert shape == (2, 3) and state == {} and float(y[0, 0]) == 3.0
    assert float(layer.bwd(params, res, x)[1][1, 2]) == 3.0
    with pytest.raises(TypeError, match="scale: expected a floating-point input"):
        layer.apply(params, jnp.ones((2, 3), jnp.int32))


def test_models_mlp():
    from fbp.models import ACTIVATIONS, mlp

    assert mlp([8, 4], 3, "tanh", 0.1).name == (
        "serial(dense(8), tanh, dropout(0.1), dense(4), tanh, dropout(0.1), dense(3))")
    assert mlp((), 2).name == "serial(dense(2))"
    assert "relu" in ACTIVATIONS
    with pytest.raises(ValueError, match=r"hidden widths must be positive ints, got \[8, 0\]"):
        mlp([8, 0], 3)
    with pytest.raises(TypeError, match="hidden must be a sequence of widths"):
        mlp("128,64", 3)
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp([8], 3, "swish")
    with pytest.raises(ValueError, match=r"dropout .* must be in \[0, 1\), got 1"):
        mlp([8], 3, dropout=1)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_fbp_imports_none_of_benchmarks_examples_tests():
    """Imports go one way: benchmarks, examples and tests use fbp, never the reverse (fbp
    bench loads the checkout's benchmarks/ by its path, and only for that command)."""
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & {"benchmarks", "examples", "tests"})
                 for p in (ROOT / "fbp").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_pyproject_ships_fbp_only():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["license"] == "Apache-2.0"  # an SPDX expression, not a table
    setuptools = config["tool"]["setuptools"]
    assert setuptools["packages"]["find"]["include"] == ["fbp", "fbp.*"]
    assert "py.typed" in setuptools["package-data"]["fbp"]
    assert (ROOT / "fbp" / "py.typed").is_file()
    markers = " ".join(config["tool"]["pytest"]["ini_options"]["markers"])
    assert "x64:" in markers and "slow:" in markers


def _run(argv, cwd, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_wheel_installs_and_runs_without_the_checkout(tmp_path):
    """Build the wheel from a copy of the sources, check it holds fbp/ only, install it into
    a fresh venv (the test environment's packages visible, the checkout not), and run
    `fbp --help`, `fbp check`, a short `fbp train` on a CSV file and `fbp bench`."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "fbp", src / "fbp", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):  # all the build reads
        shutil.copy(ROOT / name, src / name)
    built = _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                  "-w", str(tmp_path / "dist")], cwd=src)
    assert built.returncode == 0, built.stderr
    assert "deprecat" not in (built.stdout + built.stderr).lower()
    (wheel,) = (tmp_path / "dist").glob("fbp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"fbp", wheel.name.split("-py")[0] + ".dist-info"}
    assert "fbp/py.typed" in names and "fbp/cli.py" in names

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path).returncode == 0
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).stdout.strip())
    # this environment's packages (jax, optax, ...) after the venv's own, through a folder
    # of links to them that leaves out fbp's own install (the checkout's editable finder)
    outer, view = Path(sysconfig.get_paths()["purelib"]), tmp_path / "outer"
    view.mkdir()
    for entry in outer.iterdir():
        if not entry.name.lower().replace("-", "_").startswith(("fbp", "__editable__")):
            (view / entry.name).symlink_to(entry)
    (site / "outer.pth").write_text(f"{view}\n")
    installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install",
                      "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = _run([str(python), "-c", "import fbp, importlib.util as u; print(fbp.__file__); "
                  "print(u.find_spec('benchmarks'))"], cwd=work, env=env)
    assert where.returncode == 0, where.stderr
    location, benchmarks = where.stdout.splitlines()
    assert Path(location).resolve().is_relative_to(site.resolve()) and benchmarks == "None"

    fbp_cmd = str(venv / "bin" / "fbp")
    helped = _run([fbp_cmd, "--help"], cwd=work, env=env)
    assert helped.returncode == 0 and "train" in helped.stdout, helped.stderr
    checked = _run([fbp_cmd, "check", "--dtype", "float32"], cwd=work, env=env)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr
    assert "checks agree with jax.grad" in checked.stdout

    rows = "".join(f"{i % 7},{(i * 3) % 5},{'ab'[i % 2]}\n" for i in range(60))
    (work / "mine.csv").write_text("u,v,kind\n" + rows)
    trained = _run([fbp_cmd, "train", "--data", "mine.csv", "--target", "kind", "--hidden", "8",
                    "--epochs", "2", "--no-progress", "--no-extras"], cwd=work, env=env)
    assert trained.returncode == 0, trained.stderr
    assert "fbp train: mine.csv (43 train / 5 validation / 12 test, 2 features)" in trained.stdout
    assert "test accuracy" in trained.stdout

    benched = _run([fbp_cmd, "bench", "--quick"], cwd=work, env=env)
    assert benched.returncode == 2 and benched.stdout == ""
    (line,) = benched.stderr.strip().splitlines()
    assert line.startswith("fbp bench: error: ") and "python -m benchmarks" in line
    bad = _run([fbp_cmd, "train", "--hidden", "0"], cwd=work, env=env)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "fbp train: error: --hidden: must be positive integer widths separated by commas, "
        "such as 128,64; got '0'"]
