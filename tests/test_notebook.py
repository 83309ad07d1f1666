"""examples/backprop_ninja.ipynb runs top to bottom in a fresh kernel of this venv's python.

Its cells assert that every hand-derived gradient matches jax's, that `fbp.explain` agrees,
and the pictures are written; here we check it ran, on which python, and what it printed.
"""

import json
import pathlib
import re
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "examples" / "backprop_ninja.ipynb"

# the intermediates and parameters the notebook derives by hand, each printed by its `cmp`
DERIVED = ("log_probs", "logsumexp", "counts_sum", "counts", "logit_max", "logits",
           "logits (fused)", "h", "W2", "b2", "h_bn", "gamma", "beta", "x_hat", "inv_std", "var",
           "diff_sq", "diff", "mu", "h_pre", "h_pre (fused)", "x", "W1", "b1")
CMP_LINE = re.compile(r"^(.+?)\s*\| exact: (True|False)\s*\| approximate: (True|False)\s*"
                      r"\| maxdiff: (\S+)$")


def _kernel_manager(kernel_dir: pathlib.Path) -> KernelManager:
    """A KernelManager whose "python3" is this interpreter (the venv's), whatever other
    python3 kernelspecs the machine has installed."""
    spec_dir = kernel_dir / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (fbp venv)", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    assert km.kernel_spec.argv[0] == sys.executable
    return km


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o["output_type"] == "stream" and o["name"] == "stdout")


@pytest.mark.slow  # the default suite's time budget
def test_backprop_ninja_notebook_runs(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # committed clean: no outputs, no execution counts
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    n_cells = len(nb.cells)
    # a last cell, of the test's own, saying which python the kernel ran
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))

    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # no second process on this process's GPU
    for var in ("JAX_ENABLE_X64", "JAX_NUMPY_RANK_PROMOTION", "JAX_NUMPY_DTYPE_PROMOTION",
                "JAX_DEFAULT_MATMUL_PRECISION"):
        monkeypatch.delenv(var, raising=False)  # the notebook runs on jax's defaults
    # no user IPython profile or startup files; connection files in the tmp dir
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    work = tmp_path / "run"
    work.mkdir()
    client = NotebookClient(nb, km=_kernel_manager(tmp_path / "kernels"), kernel_name="python3",
                            timeout=120, resources={"metadata": {"path": str(work)}})
    # cleanup_kc: shut the kernel down and close its channels when done (nbclient leaves a
    # kernel it was handed running). Raises CellExecutionError, with the cell's traceback.
    client.execute(cleanup_kc=True)

    assert _stdout(nb.cells[-1]).strip() == sys.prefix
    out = "\n".join(_stdout(cell) for cell in nb.cells[:n_cells])

    # every hand-derived gradient printed a makemore cmp line, and all agree with jax's
    lines = {m.group(1).strip(): m.groups()[1:] for m in map(CMP_LINE.match, out.splitlines()) if m}
    assert set(lines) == set(DERIVED), sorted(set(lines) ^ set(DERIVED))
    assert all(approximate == "True" for _, approximate, _ in lines.values())
    assert "every layer's hand-written gradients agree with jax.vjp" in out

    accuracy = float(re.search(r"test accuracy (\S+)%", out).group(1))
    assert accuracy > 80

    # the pictures were written in the working directory and shown inline
    for name in ("activations", "gradients", "update_ratio", "grad_norms"):
        assert (work / "diagnostics" / f"{name}.png").stat().st_size > 0
    assert (work / "graph.png").stat().st_size > 0
    images = [o for cell in nb.cells for o in cell.get("outputs", [])
              if o["output_type"] == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 5
