"""Notebooks opened by hand work in runs/interactive/ with the demo's laptop settings, never in notebooks/."""
import os
import shutil
from pathlib import Path

import nbformat
import pytest

from mousefacelift import stage
from mousefacelift.params import notebook_parameters

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo(tmp_path):
    """A copy of the repository's notebooks and params."""
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    shutil.copytree(ROOT / "params", tmp_path / "params")
    (tmp_path / "weights").symlink_to(ROOT / "weights")  # the demo fine-tunes the shipped weights
    return tmp_path


def test_by_hand_a_notebook_moves_to_runs_interactive_with_the_demo_settings(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo / "notebooks")
    stem = "06_gslrm_finetune"
    ns = {k: p.default for k, p in notebook_parameters(repo / "notebooks" / f"{stem}.ipynb").items()}
    assert ns["steps"] > 300 and ns["device"] != "cpu"  # the defaults are full scale
    assert stage.interactive_session(ns, stem) == repo / "runs" / "interactive"
    assert Path.cwd() == repo / "runs" / "interactive"
    assert ns["steps"] == 60 and ns["device"] == "cpu" and ns["image_size"] == 64  # params/demo.yaml's
    assert ns["init_checkpoint"] == str(repo / "weights" / "demo" / "gslrm.safetensors")
    out = capsys.readouterr().out
    assert "runs/interactive" in out and "steps=60" in out


def test_under_mfl_run_it_does_nothing(tmp_path, monkeypatch):
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    ns = {"steps": 5000}
    assert stage.interactive_session(ns, "06_gslrm_finetune") is None
    assert Path.cwd() == tmp_path and ns == {"steps": 5000}


def test_every_notebook_calls_it_right_after_its_parameters_cell():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(str(path), as_version=4).cells
        i = next(k for k, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        assert f'interactive_session(globals(), "{path.stem}")' in cells[i + 1].source, path.name


def test_a_notebook_run_by_hand_writes_nothing_into_notebooks(repo, monkeypatch):
    """A kernel started in notebooks/ (as JupyterLab does) runs a notebook that writes a file."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "mousefacelift", "display_name": "Python (mousefacelift)",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell("steps = 5000  # steps\ndevice = 'auto'  # device")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
                    "from mousefacelift.stage import interactive_session\n"
                    "interactive_session(globals(), '06_gslrm_finetune')"),
                nbformat.v4.new_code_cell("from pathlib import Path\nPath('gslrm').mkdir()\n"
                                          "Path('gslrm/steps.txt').write_text(str(steps))")]
    before = sorted(p.name for p in (repo / "notebooks").iterdir())
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    NotebookClient(nb, resources={"metadata": {"path": str(repo / "notebooks")}}).execute()
    assert sorted(p.name for p in (repo / "notebooks").iterdir()) == before
    assert (repo / "runs" / "interactive" / "gslrm" / "steps.txt").read_text() == "60"  # params/demo.yaml's


def test_under_plain_papermill_it_does_nothing(tmp_path, monkeypatch):
    """papermill with its own working directory (no manifest.json, not notebooks/): the injected
    parameters and the folder stay the caller's."""
    monkeypatch.chdir(tmp_path)
    ns = {"steps": 5000}
    assert stage.interactive_session(ns, "06_gslrm_finetune") is None
    assert Path.cwd() == tmp_path and ns == {"steps": 5000}
