"""The notebooks run top to bottom against a fresh MLflow store, and are committed clean
(no outputs, no execution counts): a notebook that no longer runs fails here, not for the
first reader."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient

from forecast.cli import demo_config_path
from forecast.config import load_config
from forecast.synthetic import synthetic_frame
from forecast.tracking import train_tracked

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "forecast-test-python"

# Small enough that each training takes seconds: 2 epochs of at most 512 windows each.
FAST = ["train.max_windows_per_epoch=512", "train.num_threads=1", "train.progress=false",
        "eval.linear_max_windows=2000"]


def quickstart_params(name: str) -> str:
    return f"""EPOCHS = 2
SEED = 0
EXPERIMENT = "{name}"
REGISTERED_MODEL = "{name}"
OVERRIDES = {FAST!r}"""


def compare_params(name: str) -> str:
    return f"""EXPERIMENT = "{name}"
LAST = 10"""


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def parameters_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), "first code cell must be `parameters`"
    return first


def test_committed_notebooks_are_clean() -> None:
    paths = notebook_paths()
    assert [p.name for p in paths] == ["01_quickstart.ipynb", "02_compare_runs.ipynb"]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path.name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name}: outputs in cell {cell.id}"
                assert cell.execution_count is None, f"{path.name}: cell {cell.id} numbered"
        parameters_cell(nb)


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernel spec that starts this interpreter, found before any user-level `python3`
    spec that may point at another Python without the project installed."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "forecast tests", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user startup files
    return KERNEL


def execute(name: str, params: str, cwd: Path, kernel: str) -> nbformat.NotebookNode:
    """Run a notebook with its parameters cell replaced, in `cwd`; raises on a cell error."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    parameters_cell(nb).source = params
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('kernel:', sys.executable)"))
    NotebookClient(nb, kernel_name=kernel, timeout=300,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def text_of(nb: nbformat.NotebookNode) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            assert o.output_type != "error", f"cell {cell.id}: {o.get('ename')}"
            if o.output_type == "stream":
                out.append(o.text)
            elif "data" in o and "text/plain" in o.data:
                out.append(o.data["text/plain"])
    return "\n".join(out)


def images_in(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_notebooks_run_against_a_fresh_store(tmp_path: Path, kernel: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run_notebooks(f"sqlite:///{tmp_path / 'mlflow.db'}", "forecast-demo", tmp_path, kernel,
                  monkeypatch)


def run_notebooks(uri: str, name: str, cwd: Path, kernel: str,
                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Both notebooks, as a user runs them with MLFLOW_TRACKING_URI set to `uri`: experiment
    and registered model `name` must be new in that store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    horizon = load_config(demo_config_path()).windows.horizon

    quickstart = execute("01_quickstart.ipynb", quickstart_params(name), cwd, kernel)
    text = text_of(quickstart)
    assert f"kernel: {sys.executable}" in text
    assert f"tracking URI: {uri}" in text
    assert f"registered {name} v1: champion (first model" in text
    assert f"models:/{name}@champion is v1" in text
    # the forecast continues the demo series (seed 0) hour by hour after its last row
    first = synthetic_frame(seed=0)["date"].iloc[-1] + pd.Timedelta(hours=1)
    last = first + pd.Timedelta(hours=horizon - 1)
    assert f"{horizon} forecast rows from {first} to {last}" in text
    assert "pyfunc agrees with the Forecaster: True" in text
    assert images_in(quickstart) >= 2  # the run's forecast_vs_actual.png and the forecast
    assert (cwd / "outputs" / "demo" / "model").is_dir()  # wrote under cwd, not the repo

    # A second run, so that there is something to compare.
    cfg = load_config(demo_config_path(), [*FAST, "train.epochs=2", "train.seed=1",
                                           f"output_dir={cwd / 'outputs-seed1'}",
                                           f"tracking.experiment={name}",
                                           f"tracking.registered_model={name}"])
    second = train_tracked(cfg, uri)

    compare = execute("02_compare_runs.ipynb", compare_params(name), cwd, kernel)
    text = text_of(compare)
    assert f"2 finished runs in experiment '{name}'" in text
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([second.experiment_id], order_by=["attributes.start_time DESC"])
    assert [r.info.run_id for r in runs][0] == second.run_id
    for run in runs:
        label = run.info.run_id[:8]
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        assert steps[0] == 0  # the demo solves its skip by least squares: epoch 0 is logged
        best = int(run.data.metrics["best_epoch"])
        assert re.search(rf"{label}: epochs 0-{steps[-1]}, best val_loss \d\.\d+ at epoch "
                         rf"{best}\b", text), label
    assert f"error per step: {horizon} steps x 2 runs" in text
    assert images_in(compare) >= 3  # bars, validation curves, error per step
