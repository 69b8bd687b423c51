"""Notebook hygiene, and every numbered notebook executed end to end on tiny params."""
import json
from pathlib import Path

import pytest

from mousefacelift import runner
from mousefacelift.params import notebook_parameters

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ has no numbered notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_hygiene(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path.name} has outputs: clear them before committing (Kernel > Restart & Clear)"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    assert nb["metadata"]["kernelspec"]["name"] == runner.KERNEL_NAME
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# ")
    params = notebook_parameters(path)
    undocumented = [n for n, p in params.items() if not p.comment]
    assert not undocumented, f"{path.name}: parameters without a comment: {undocumented}"
    assert "from_run" in params and "record_results" in "".join("".join(c["source"]) for c in code[-1:])


def test_params_files_validate():
    notebooks = runner.find_notebooks(ROOT / "notebooks")
    from mousefacelift.params import resolve
    for p in sorted((ROOT / "params").glob("*.yaml")):
        resolve(p, notebooks)


def test_test_params_validate():
    from mousefacelift.params import resolve
    resolve(ROOT / "tests" / "tiny.yaml", runner.find_notebooks(ROOT / "notebooks"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Every numbered notebook executed with tests/tiny.yaml into a fresh run folder."""
    import os
    from mousefacelift import cli

    root = tmp_path_factory.mktemp("nbrun")
    old = os.environ.get("MFL_CACHE_DIR")
    os.environ["MFL_CACHE_DIR"] = str(root / "cache")
    try:
        code = cli.main(["run", str(ROOT / "tests" / "tiny.yaml"), "--runs", str(root / "runs"), "--name", "tiny",
                         "--notebooks", str(ROOT / "notebooks")])
    finally:
        if old is None:
            os.environ.pop("MFL_CACHE_DIR")
        else:
            os.environ["MFL_CACHE_DIR"] = old
    run = root / "runs" / "tiny"
    manifest = json.loads((run / "manifest.json").read_text())
    assert code == 0, {k: v.get("error") for k, v in manifest["notebooks"].items()}
    return run, manifest


def results(tiny_run, stem):
    entry = tiny_run[1]["notebooks"][stem]
    assert entry["status"] == "ok"
    return entry["results"]


def test_run_is_complete(tiny_run):
    run, manifest = tiny_run
    assert manifest["status"] == "ok" and set(manifest["notebooks"]) == {p.stem for p in NOTEBOOKS}
    assert (run / "report.html").is_file()


def test_01_extracts_consistent_samples(tiny_run):
    r = results(tiny_run, "01_data_extraction")
    assert r["n_written"] >= 8 and r["train"] >= 4 and r["test"] >= 1
    assert r["centre_within_5mm"] >= 0.95  # triangulated vs true centre of the procedural mouse


def test_02_reprojection_is_exact(tiny_run):
    r = results(tiny_run, "02_camera_analysis")
    assert r["reprojection_mean_px"] < 0.5 and r["reprojection_max_px"] < 0.5
    assert abs(r["normalized_mean_distance"] - 2.7) < 1e-6
    assert abs(r["mean_distance_mm"] - 331.4) < 1.0  # the real rig's published mean distance
    assert r["angle_in_order_mean_deg"] > 20  # the rig is far from FaceLift's canonical rig


def test_03_pixel_based_is_uniform_but_inconsistent_without_camera_updates(tiny_run):
    r = results(tiny_run, "03_preprocessing_comparison")
    assert r["default_strategy"] == "rectify"
    assert r["pixel_based_com_offset_px"] < 3 and r["pixel_based_size_cv"] < 0.02
    assert r["pixel_based_reproj_updated_px"] < 1.0 < 3.0 < r["pixel_based_reproj_unchanged_px"]
    assert r["hull_iou_consistent"] > r["hull_iou_inconsistent"] + 0.05
