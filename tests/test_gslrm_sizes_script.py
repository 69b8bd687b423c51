"""scripts/gslrm_sizes.py's bookkeeping on a CPU (its trainings need a GPU): which runs it plans and
the table it writes."""
import importlib.util

from mousefacelift.runner import repo_root

spec = importlib.util.spec_from_file_location("gslrm_sizes", repo_root() / "scripts" / "gslrm_sizes.py")
sizes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sizes)


def test_plans_train_a_model_at_its_own_size_once():
    assert sizes.plans([128, 256], [256, 0]) == [(128, 256), (128, 0), (256, 0)]
    assert sizes.plans([128], [0]) == [(128, 0)]


def test_table_has_a_column_per_split_and_size_and_keeps_failed_rows():
    score = {"psnr_fg": 18.17, "psnr_fg_ci95": 0.12, "mask_iou": 0.846, "mask_iou_ci95": 0.002}
    ok = {"layers": 6, "width": 384, "resolution": 128, "target_size": 256, "params_M": 11.2, "steps": 3764,
          "objects_seen": 60224, "probe_s_per_step": 0.0319, "grad_checkpointing": False,
          "scores": {"val@256": score, "test@128": {**score, "psnr_fg": 19.26}}}
    failed = {"layers": 12, "width": 768, "resolution": 256, "target_size": 256, "error": "OutOfMemoryError: x"}
    lines = sizes.to_markdown([ok, failed], 120, "a GPU").splitlines()
    header = next(line for line in lines if line.startswith("| layers"))
    assert header.endswith("| val@256 | test@128 |")
    row = next(line for line in lines if line.startswith("| 6 x 384"))
    assert "| 128 | 256 | 11.2 | 3764 |" in row and "18.17 ± 0.12 / 0.846 ± 0.002" in row and "19.26 ±" in row
    assert any(line.startswith("| 12 x 768") and "failed: OutOfMemoryError" in line for line in lines)
