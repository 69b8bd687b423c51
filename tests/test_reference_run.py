"""The committed GPU runs (runs/h200-reference, runs/h200-question3, runs/h200-session-1, runs/h200-session-2):
their READMEs quote their own records.

A number in a README that no longer matches the run's results/*.json, eval/metrics.json or
bench/bench.json (a re-run committed without updating the text, or a typo) fails here.
"""
import json
from pathlib import Path

import pytest

RUNS = Path(__file__).resolve().parents[1] / "runs"
RUN = RUNS / "h200-reference"
QUESTION_3 = RUNS / "h200-question3"
pytestmark = pytest.mark.skipif(not (RUN / "README.md").is_file(), reason="no committed reference run")


def results(stem: str, run: Path = RUN) -> dict:
    return json.loads((run / "results" / f"{stem}.json").read_text())


def quoted(value: float, fmt: str, run: Path = RUN) -> str:
    text = format(value, fmt)
    readme = (run / "README.md").read_text()
    assert text in readme, f"{run.relative_to(RUNS.parent)}/README.md does not quote {text} (recorded value {value})"
    return text


def quoted_behaviours_and_curve(r6: dict, metrics_val: Path, run: Path) -> None:
    """A GS-LRM record's walking and high-rear scores and every point of its validation curve are quoted."""
    for b in ("walking", "rear > 45 deg"):
        quoted(r6["by_behaviour"][b]["psnr_fg"], ".2f", run)
        quoted(r6["by_behaviour"][b]["mask_iou"], ".3f", run)
    for line in metrics_val.read_text().splitlines():
        val = json.loads(line)
        quoted(val["val/psnr_fg"], ".2f", run)
        quoted(val["val/mask_iou"], ".3f", run)


def test_readme_quotes_the_recorded_quality_figures():
    r6, r4, r7 = results("06_gslrm_finetune"), results("04_mvdiffusion_finetune"), results("07_evaluation")
    for v, f in ((r6["psnr_fg"], ".2f"), (r6["ssim_fg"], ".3f"), (r6["mask_iou"], ".3f"),
                 (r4["test_psnr_fg"], ".2f"), (r4["test_mask_iou"], ".3f"), (r4["baseline_psnr_fg"], ".2f"),
                 (r7["end_to_end_psnr_fg"], ".2f"), (r7["end_to_end_mask_iou"], ".3f"), (r7["mvdiffusion_psnr_fg"], ".2f"),
                 (r7["chamfer_mm"], ".2f")):
        quoted(v, f)
    for n in "12345":
        quoted(r7["reconstruction_psnr_fg"][n], ".2f")
    for d in ("shift_1px", "shift_2px", "blur_0.5px", "blur_1px", "blur_2px", "flat_colour"):
        quoted(r7["degraded_gt_psnr_fg"][d], ".2f")
        quoted(r7["degraded_gt_mask_iou"][d], ".3f")


def test_the_evaluation_document_agrees_with_the_recorded_results():
    doc = json.loads((RUN / "eval" / "metrics.json").read_text())
    r7 = results("07_evaluation")
    assert doc["protocol"]["name"] == r7["protocol"] and doc["protocol"]["version"] == r7["protocol_version"]
    assert r7["inputs_scored"] == 0 and r7["n_samples"] == results("01_data_extraction")["test"]


def test_readme_quotes_the_benchmark():
    bench = json.loads((RUN / "bench" / "bench.json").read_text())
    rows = {r["case"]: r["value"] for r in bench["rows"] if r.get("value") is not None}
    quoted(rows["train step @512, batch 1, 5+1 views (full): time"], ".1f")
    quoted(rows["train step @512, batch 1, 5+1 views (full): fraction of bf16 peak"], ".3f")
    quoted(rows["inference 6 views @512: eager (SDPA default)"], ".1f")
    quoted(rows["inference 6 views @512: torch.compile"], ".1f")


def test_question_3_readme_quotes_its_records():
    run = QUESTION_3
    r7, r6, r4 = results("07_evaluation", run), results("06_gslrm_finetune", run), results("04_mvdiffusion_finetune", run)
    synthetic = results("06_gslrm_finetune", RUNS / "h200-question3-synthetic")
    assert synthetic["train_on"] == "synthetic" and r6["train_on"] == "real" and synthetic["steps"] == r6["steps"]
    doc = json.loads((run / "eval" / "metrics.json").read_text())
    rows = {(s["model"], s["n_inputs"]): s for s in doc["summaries"] if s["question"] == "reconstruction"}
    paired = doc["paired_real_minus_synthetic"]
    for v, f in ((r7["reconstruction_psnr_fg"]["5"], ".2f"), (rows[("synthetic", 5)]["psnr_fg"], ".2f"),
                 (rows[("real", 5)]["mask_iou"], ".3f"), (rows[("synthetic", 5)]["mask_iou"], ".3f"),
                 (r7["real_minus_synthetic_psnr_fg"]["5"], "+.2f"), (paired["psnr_fg"]["n_inputs"]["5"]["ci95"], ".2f"),
                 (paired["mask_iou"]["n_inputs"]["5"]["mean"], "+.3f"), (r7["chamfer_mm"], ".2f"),
                 (r6["psnr_fg"], ".2f"), (synthetic["psnr_fg"], ".2f"), (r4["test_psnr_fg"], ".2f"),
                 (r4["baseline_psnr_fg"], ".2f"), (results("05_synthetic_generation", run)["fit_psnr_fg"], ".2f"),
                 (results("03_preprocessing_comparison", run)["hull_iou_consistent"], ".3f")):
        quoted(v, f, run)
    assert paired["psnr_fg"]["n_inputs"]["5"]["n"] == 6 * r7["n_samples"]  # every view of every test sample, paired
    assert r7["n_samples"] == results("01_data_extraction", run)["test"] == results("01_data_extraction")["test"]


def test_session_run_readme_quotes_its_records():
    """runs/h200-session-1 (the one-session run that ended inside notebook 07): its README quotes its results,
    its validation curve and the N-curve copied from notebook 07's printed table."""
    run = RUNS / "h200-session-1"
    r6, r4, r1 = (results(s, run) for s in ("06_gslrm_finetune", "04_mvdiffusion_finetune", "01_data_extraction"))
    for v, f in ((r6["psnr_fg"], ".2f"), (r6["mask_iou"], ".3f"), (r6["ssim_fg"], ".3f"),
                 (r4["test_psnr_fg"], ".2f"), (r4["test_mask_iou"], ".3f"), (r4["baseline_psnr_fg"], ".2f"),
                 (r4["baseline_mask_iou"], ".3f"), (r1["seconds"], ".1f"),
                 (results("03_preprocessing_comparison", run)["hull_iou_consistent"], ".3f")):
        quoted(v, f, run)
    quoted_behaviours_and_curve(r6, run / "gslrm" / "metrics_val.jsonl", run)
    curve = json.loads((run / "eval" / "n_curve_partial.json").read_text())["rows"]
    assert [r["n_inputs"] for r in curve] == [1, 2, 3, 4, 5]
    assert abs(curve[-1]["psnr_fg"] - r6["psnr_fg"]) < 1e-3  # notebooks 06 and 07 share one scorer
    for r in curve:
        quoted(r["psnr_fg"], ".2f", run)
        quoted(r["mask_iou"], ".3f", run)
    assert r1["test"] == curve[0]["n_rows"] // 6


LEVERS = ("base", "random-reference", "generated-loss", "dense", "camera-embedding", "all")


def test_levers_and_objects_run_readme_quotes_its_records():
    """runs/h200-session-2: the lever table is recomputed from each arm's per-view test rows (summaries and
    paired differences clustered by frame, as the README says), the guidance table, the GS-LRM figures and
    validation curve, and the bench rows are quoted."""
    import pandas as pd

    from mousefacelift import evaluation

    run = RUNS / "h200-session-2"
    rows = {a: pd.read_csv(run / "levers" / a / "test_per_view.csv.gz").to_dict("records") for a in LEVERS}

    def pm(d: dict, fmt: str, sign: str = "") -> None:
        text = f"{d['mean']:{sign}{fmt}} ± {d['ci95']:{fmt}}"
        assert text in (run / "README.md").read_text(), f"README does not quote {text}"

    for a in LEVERS:
        r = json.loads((run / "levers" / a / "04_mvdiffusion_finetune.json").read_text())
        s = evaluation.summarize_rows(rows[a], by=(), metric_names=("psnr_fg", "mask_iou", "copies"))[0]
        assert abs(s["mask_iou"] - r["test_mask_iou"]) < 1e-6 and abs(s["psnr_fg"] - r["test_psnr_fg"]) < 1e-6
        assert s["n_frames"] == r["test_n_objects"] == 64 and s["n_rows"] == r["test_n_views"]
        pm({"mean": s["mask_iou"], "ci95": s["mask_iou_ci95"]}, ".3f")
        pm({"mean": s["psnr_fg"], "ci95": s["psnr_fg_ci95"]}, ".2f")
        quoted(r["test_copy_fraction"], ".3f", run)
        quoted(r["steps"], "d", run)
        copy = [{**x, "psnr_fg": x["reference_psnr_fg"], "mask_iou": x["reference_mask_iou"]} for x in rows[a]]
        pm(evaluation.paired_difference(rows[a], copy, "mask_iou")["n_inputs"][1], ".3f", "+")
        if a != "base":
            pm(evaluation.paired_difference(rows[a], rows["base"], "mask_iou")["n_inputs"][1], ".3f", "+")
            pm(evaluation.paired_difference(rows[a], rows["base"], "psnr_fg")["n_inputs"][1], ".2f", "+")
        assert [q["guidance_scale"] for q in r["quality_vs_steps"]] == [1.0, 2.0, 3.0]
        for q in r["quality_vs_steps"]:
            quoted(q["mask_iou"], ".3f", run)
            quoted(q["copy_fraction"], ".3f", run)
    quoted(r["baseline_mask_iou"], ".3f", run)
    quoted(r["baseline_psnr_fg"], ".2f", run)
    gs = run / "gslrm-objects"
    r6 = results("06_gslrm_finetune", gs)
    assert results("01_data_extraction", gs)["recording"] == \
        results("01_data_extraction", RUNS / "h200-session-1")["recording"]  # the same recording as the run it is set beside
    for v, f in ((r6["psnr_fg"], ".2f"), (r6["mask_iou"], ".3f"), (r6["ssim_fg"], ".3f")):
        quoted(v, f, run)
    quoted_behaviours_and_curve(r6, gs / "gslrm" / "metrics_val.jsonl", run)
    fmt = {"objects/s": ".1f", "x": ".2f"}
    for b in json.loads((run / "bench" / "bench.json").read_text())["rows"]:
        if b["unit"] in fmt:
            quoted(b["value"], fmt[b["unit"]], run)
        elif b["case"].endswith(("one plan at a time", "one batch")):
            quoted(b["value"], ".0f" if b["value"] > 1000 else ".1f", run)
