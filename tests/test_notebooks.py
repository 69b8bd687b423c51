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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path):
    """papermill parses the parameters cell itself; a line it cannot read (e.g. "=" in a comment)
    makes it warn "Passed unknown parameter" for a valid key in every run log."""
    import papermill

    assert set(notebook_parameters(path)) <= set(papermill.inspect_notebook(str(path)))


def test_params_files_validate():
    notebooks = runner.find_notebooks(ROOT / "notebooks")
    from mousefacelift.params import resolve
    for p in sorted((ROOT / "params").glob("*.yaml")):
        resolve(p, notebooks)


def test_test_params_validate():
    from mousefacelift.params import resolve
    resolve(ROOT / "tests" / "tiny.yaml", runner.find_notebooks(ROOT / "notebooks"))


@pytest.fixture(scope="module")  # tests that use it are marked slow (conftest.SLOW_FIXTURES)
def tiny_run(tmp_path_factory):
    """Every numbered notebook executed with tests/tiny.yaml into a fresh run folder, by `mfl run` in
    its own process; the console it printed (stdout and stderr, kernels included) is in console.txt."""
    import os
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("nbrun")
    env = {**os.environ, "MFL_CACHE_DIR": str(root / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "mousefacelift.cli", "run", str(ROOT / "tests" / "tiny.yaml"),
                           "--runs", str(root / "runs"), "--name", "tiny", "--notebooks", str(ROOT / "notebooks")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
    run = root / "runs" / "tiny"
    (root / "console.txt").write_text(proc.stdout)
    manifest = json.loads((run / "manifest.json").read_text())
    assert proc.returncode == 0, ({k: v.get("error") for k, v in manifest["notebooks"].items()}, proc.stdout[-3000:])
    return run, manifest


def test_the_console_shows_one_line_per_notebook(tiny_run):
    """`make demo` runs the same notebooks: its console must stay short and hold no false warning."""
    run, manifest = tiny_run
    lines = (run.parent.parent / "console.txt").read_text().splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    assert not [line for line in lines if "WARN" in line.upper()], "\n".join(lines)
    for i, stem in enumerate(manifest["notebooks"]):
        line = next(line for line in lines if line.startswith(f"[{i + 1}/{len(NOTEBOOKS)}] {stem}"))
        assert " ok in " in line and all(f"{k}=" in line for k in list(manifest["notebooks"][stem]["headline"])[:4])
        log = run / "logs" / f"{stem}.log"
        assert "Executing Cell 1" in log.read_text()  # the cell log went to the file instead


def test_progress_bars_collapse_to_their_final_line(tiny_run):
    """tqdm refreshes its bars with carriage returns; the executed notebooks keep the last state of each."""
    import re

    run, _ = tiny_run
    bar = re.compile(r"\d+%\|")
    total = 0
    for path in NOTEBOOKS:
        nb = json.loads((run / path.name).read_text())
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                if out["output_type"] == "stream":
                    text = "".join(out["text"])
                    assert not re.search(r"\r[^\n]", text), f"{path.name}: an uncollapsed carriage return"
                    total += sum(1 for line in text.splitlines() if bar.search(line))
    assert 0 < total <= 50


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
    assert set(r["highest_pitch_deg"]) == {"train", "val", "test"} and isinstance(r["coverage_warnings"], list)


def test_02_reprojection_is_exact(tiny_run):
    r = results(tiny_run, "02_camera_analysis")
    assert r["reprojection_mean_px"] < 0.5 and r["reprojection_max_px"] < 0.5
    assert abs(r["normalized_mean_distance"] - 2.7) < 1e-6
    assert abs(r["mean_distance_mm"] - 331.4) < 1.0  # the real rig's published mean distance
    assert r["angle_in_order_mean_deg"] > 20  # the rig is far from FaceLift's canonical rig
    assert r["calibration_ok"] is True and r["calibration_worst_relative_residual"] < 0.04  # section 5, no ground truth
    assert r["calibration_up_angle_deg"] < 2.0


def test_03_pixel_based_is_uniform_but_inconsistent_without_camera_updates(tiny_run):
    r = results(tiny_run, "03_preprocessing_comparison")
    assert r["default_strategy"] == "rectify"
    assert r["pixel_based_com_offset_px"] < 3 and r["pixel_based_size_cv"] < 0.02
    assert r["pixel_based_reproj_updated_px"] < 1.0 < 3.0 < r["pixel_based_reproj_unchanged_px"]
    assert r["hull_iou_consistent"] > r["hull_iou_inconsistent"] + 0.05


def test_04_mvdiffusion_trains_exports_and_scores_held_out_views(tiny_run):
    import math

    run, _ = tiny_run
    r = results(tiny_run, "04_mvdiffusion_finetune")
    assert r["steps"] == r["steps_this_call"] == 100 and r["resumed_from_step"] == 0
    assert r["loss_last"] < r["loss_first"]  # the tiny model learns something in 100 steps
    assert (run / "mvdiffusion" / "pipeline" / "model_index.json").is_file()
    assert (run / "mvdiffusion" / "checkpoints" / "ckpt_0000000000000100.pt").is_file()  # resume point
    # held-out numbers: every test sample, the 5 non-reference views of each
    assert r["test_n_objects"] == results(tiny_run, "01_data_extraction")["test"]
    assert r["test_n_views"] == 5 * r["test_n_objects"]
    assert math.isfinite(r["test_psnr_fg"]) and 0.0 <= r["test_mask_iou"] <= 1.0
    assert math.isfinite(r["baseline_psnr_fg"])
    assert 0.0 <= r["test_mean_mask_iou"] <= 1.0 and math.isfinite(r["test_mean_psnr_fg"])  # the model's mean view
    # the scale: the held-out ground truth blurred by 1 px scores higher than moved by 1 px, and neither is perfect
    assert r["scale_psnr_fg"]["blur_1px"] > r["scale_psnr_fg"]["shift_1px"] > 0
    assert 0.0 < r["scale_mask_iou"]["shift_1px"] < 1.0
    assert [(q["sampler"], q["steps"]) for q in r["quality_vs_steps"]] == [("ddim", 2), ("ddim", 6), ("dpm", 2),
                                                                          ("dpm", 6)]


def test_05_synthetic_samples_keep_the_source_cameras(tiny_run):
    import math

    from mousefacelift.data import samples

    run, _ = tiny_run
    r = results(tiny_run, "05_synthetic_generation")
    train = samples.read_split(run / "data" / "splits" / "train.txt")
    assert r["n_samples"] == min(6, len(train)) and r["written"] + r["skipped"] == r["n_samples"]
    names = samples.read_split(run / r["split_file"])
    assert names == train[:r["n_samples"]]  # same relative paths, under data/synthetic/
    for name in names:
        syn, src = samples.read_sample(run / "data" / "synthetic" / name), samples.read_sample(run / "data" / name)
        assert syn.images.shape[-1] == r["image_size"] == 32 and syn.view_ids == src.view_ids
        assert bool((syn.w2c == src.w2c).all())
        assert syn.provenance["source_sample"] == f"data/{name}"
    assert r["w2c_max_abs_diff"] == 0.0 and r["K_max_abs_diff"] < 1e-9
    assert r["fit_n_views"] == 5 * r["n_samples"] and r["fit_is_held_out"] is False
    assert math.isfinite(r["fit_psnr_fg"]) and 0.0 <= r["fit_mask_iou"] <= 1.0



def test_07_evaluation_scores_held_out_views_by_the_protocol(tiny_run):
    import csv
    import math

    from mousefacelift import metrics

    run, _ = tiny_run
    r = results(tiny_run, "07_evaluation")
    assert r["protocol"] == metrics.PROTOCOL["name"] and r["protocol_version"] == metrics.PROTOCOL["version"]
    assert r["inputs_scored"] == 0 and r["n_samples"] == 1
    rows = list(csv.DictReader((run / "eval" / "per_view.csv").open()))
    # N = 1, 3, 5 by GS-LRM and by the two baselines; end to end + generated + GS-LRM from the reference
    # alone + the reference copied; question 3; the GT degraded 6 ways and the 1-px shift against an
    # equal-MSE blur (no model)
    assert len(rows) == r["n_views_scored"] == 3 * 3 * 6 + 4 * 5 + 6 + 6 * len(metrics.DEGRADATIONS) + 2 * 6
    models = {(row["question"], row["model"]) for row in rows}
    assert {("reconstruction", "visual_hull"), ("reconstruction", "gaussian_fit"), ("end_to_end", "gslrm_one_view"),
            ("end_to_end", "copy_reference"), ("shift_vs_blur", "shift_1px"), ("shift_vs_blur", "blur_equal_mse")} <= models
    assert math.isfinite(r["copy_reference_psnr_fg"]) and 0.0 <= r["copy_reference_mask_iou"] <= 1.0
    for row in rows:
        assert row["target_is_input"] == "False" and row["target_view"] not in row["inputs"].split()
    assert sorted(r["reconstruction_psnr_fg"]) == ["1", "3", "5"]
    assert all(math.isfinite(v) for v in r["reconstruction_psnr_fg"].values())
    assert math.isfinite(r["end_to_end_psnr_fg"]) and 0.0 <= r["end_to_end_mask_iou"] <= 1.0
    assert r["real_minus_synthetic_psnr_fg"] == {"5": 0.0}  # tiny.yaml compares the checkpoint with itself
    scale = r["degraded_gt_psnr_fg"]
    assert sorted(scale) == sorted(metrics.DEGRADATIONS) and all(math.isfinite(v) for v in scale.values())
    assert scale["shift_1px"] > scale["shift_2px"] and scale["blur_0.5px"] > scale["blur_1px"] > scale["blur_2px"]
    assert r["chamfer_mm"] is not None and 0 < r["chamfer_mm"] < 500  # procedural data: 3D error in mm
    by = r["by_behaviour_psnr_fg"]  # procedural data: the GS-LRM beside each baseline, by behaviour
    assert {"real", *r["baseline_psnr_fg"]} == set(by) and all(set(b) <= {"walking", "rear <= 45 deg", "rear > 45 deg"}
                                                              for b in by.values())
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    assert doc["protocol"]["name"] == metrics.PROTOCOL["name"]
    assert doc["lpips"]["available"] == r["lpips_available"] and (doc["lpips"]["available"] or doc["lpips"]["reason"])
    assert r["plys"] and all((run / p).is_file() for p in r["plys"] + r["videos"])


def test_06_gslrm_trains_resumably_and_scores_real_test_views(tiny_run):
    import math

    import torch

    from mousefacelift.gslrm.model import read_checkpoint

    run, _ = tiny_run
    r = results(tiny_run, "06_gslrm_finetune")
    assert r["steps"] == r["steps_this_call"] == 30 and r["resumed_from_step"] == 0  # tiny.yaml: 30 steps
    assert r["applied_step_ratio"] == r["param_update_step"] / r["steps"] and 0.9 <= r["applied_step_ratio"] <= 1.0
    assert r["train_on"] == "real" and r["n_test_views"] >= 1
    assert all(math.isfinite(r[k]) for k in ("psnr_fg", "ssim_fg", "psnr_full", "loss_first", "loss_last"))
    assert 0.0 <= r["mask_iou"] <= 1.0 and r["loss_last"] < r["loss_first"]
    ckpts = sorted(p.name for p in (run / "gslrm").glob("ckpt_*.pt"))
    assert ckpts == ["ckpt_0000000000000020.pt", "ckpt_0000000000000030.pt"]  # every 10 steps, keep_last 2
    ckpt = read_checkpoint(run / "gslrm" / ckpts[-1])
    assert {"model", "optimizer", "lr_scheduler", "fwdbwd_pass_step", "param_update_step", "config"} <= set(ckpt)
    assert ckpt["fwdbwd_pass_step"] == 30 and ckpt["config"]["image_size"] == 32
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    rows = [json.loads(line) for line in (run / "gslrm" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 30 and "applied_step_ratio" in rows[0]
    held = (run / "gslrm" / "test_per_view.csv").read_text().splitlines()
    assert len(held) == 1 + r["n_test_views"]
    assert (run / r["ply"]).is_file() and (run / r["turntable"]).is_file()
    # the procedural recording's test frames scored by behaviour: every scored frame once
    n_frames = len({line.split(",")[3] for line in held[1:]})
    assert sum(b["n_frames"] for b in r["by_behaviour"].values()) == n_frames
    assert set(r["by_behaviour"]) <= {"walking", "rear <= 45 deg", "rear > 45 deg"}
