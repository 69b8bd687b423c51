"""The committed GPU reference run (runs/h200-reference): its README quotes its own records.

A number in the README that no longer matches the run's results/*.json, eval/metrics.json or
bench/bench.json (a re-run committed without updating the text, or a typo) fails here.
"""
import json
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "runs" / "h200-reference"
pytestmark = pytest.mark.skipif(not (RUN / "README.md").is_file(), reason="no committed reference run")


def results(stem: str) -> dict:
    return json.loads((RUN / "results" / f"{stem}.json").read_text())


def quoted(value: float, fmt: str) -> str:
    text = format(value, fmt)
    readme = (RUN / "README.md").read_text()
    assert text in readme, f"runs/h200-reference/README.md does not quote {text} (recorded value {value})"
    return text


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
