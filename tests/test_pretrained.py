"""Pretrained weights (mousefacelift.pretrained): export from a run folder to bf16 safetensors with
provenance, check, load back into both trainers' loaders; and the weights the repository ships."""
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from mousefacelift import pretrained
from mousefacelift.cli import main as mfl
from mousefacelift.gslrm.model import GSLRM, GSLRMConfig, from_pretrained, load_model_state, read_checkpoint
from mousefacelift.mvdiffusion.pipeline import MVDiffusionPipeline
from mousefacelift.training import save_checkpoint

from test_mvdiffusion import tiny_pipeline

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "weights" / "demo"


def _fake_run(root: Path, recording: Path) -> tuple[Path, GSLRM, MVDiffusionPipeline]:
    """A run folder in the layout mfl run writes (manifest, notebook 01's record, 04's pipeline,
    06's checkpoint and summaries), with tiny models."""
    run = root / "run"
    (run / "data").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"git_commit": "abc123", "params_file": "params/x.yaml",
                                                   "params": {"06_gslrm_finetune": {"steps": 5}}, "from_run": None}))
    (run / "data" / "extraction.json").write_text(json.dumps(
        {"summary": {"recording": str(recording), "n_written": 10, "split_sizes": {"train": 8}}}))
    pipe = tiny_pipeline()
    pipe.save_pretrained(run / "mvdiffusion" / "pipeline")
    (run / "mvdiffusion" / "summary.json").write_text(json.dumps(
        {"step": 7, "val": [{"psnr_fg": 9.0, "mask_iou": 0.5}], "seconds": 1.0}))
    (run / "mvdiffusion" / "train_config.json").write_text(json.dumps({"batch_size": 4, "steps": 7}))
    torch.manual_seed(0)
    model = GSLRM(GSLRMConfig.tiny(image_size=32))
    save_checkpoint(run / "gslrm", 5, {"model": model.state_dict(), "config": asdict(model.cfg),
                                       "fwdbwd_pass_step": 5}, keep_last=1)
    (run / "gslrm" / "summary.json").write_text(json.dumps(
        {"step": 5, "val": {"psnr_fg": 12.0, "mask_iou": 0.7, "per_view": []}, "seconds": 2.0}))
    (run / "gslrm" / "train_config.json").write_text(json.dumps({"batch_size": 2, "steps": 5}))
    return run, model, pipe


def test_export_check_and_load_back(tmp_path, procedural_recording):
    run, model, pipe = _fake_run(tmp_path, procedural_recording)
    dest = tmp_path / "weights"
    assert mfl(["weights", "export", str(run), str(dest)]) == 0
    prov = pretrained.check(dest)
    assert prov["gslrm"]["git_commit"] == "abc123" and prov["gslrm"]["step"] == 5
    assert prov["gslrm"]["objects_seen"] == 10 and prov["mvdiffusion"]["objects_seen"] == 28
    assert prov["gslrm"]["val"] == {"psnr_fg": 12.0, "mask_iou": 0.7}
    rec = json.loads((procedural_recording / "ground_truth" / "params.json").read_text())
    assert prov["gslrm"]["recording"]["config_hash"] == rec["config_hash"]
    assert set(prov["files"]) >= {pretrained.GSLRM_FILE, "mvdiffusion/model_index.json"}
    # GS-LRM: bf16 on disk, fp32 back, equal to the bf16-rounded original; the trainer's loader reads it
    ckpt = read_checkpoint(dest / pretrained.GSLRM_FILE)
    assert ckpt["fwdbwd_pass_step"] == 5 and ckpt["config"] == asdict(model.cfg)
    for k, v in model.state_dict().items():
        assert ckpt["model"][k].dtype == torch.float32
        torch.testing.assert_close(ckpt["model"][k], v.to(torch.bfloat16).float(), rtol=0, atol=0)
    fresh = GSLRM(model.cfg)
    load_model_state(fresh, ckpt["model"], "exported")
    loaded = from_pretrained(dest / pretrained.GSLRM_FILE)  # the config comes from the file's metadata
    assert loaded.cfg == model.cfg
    torch.testing.assert_close(loaded.state_dict(), fresh.state_dict(), rtol=0, atol=0)
    # MVDiffusion: the pipeline loader reads the bf16 folder; weights equal the bf16-rounded originals
    back = MVDiffusionPipeline.from_pretrained(dest / pretrained.MVDIFFUSION_DIR)
    for (k, v), (k2, w) in zip(pipe.model.state_dict().items(), back.model.state_dict().items()):
        assert k == k2
        torch.testing.assert_close(w.float(), v.to(torch.bfloat16).float(), rtol=0, atol=0)
    # bf16 on disk is about half of fp32
    assert (dest / pretrained.GSLRM_FILE).stat().st_size < 0.6 * 4 * sum(v.numel() for v in model.state_dict().values())


def test_check_names_a_changed_file(tmp_path, procedural_recording):
    run, _, _ = _fake_run(tmp_path, procedural_recording)
    dest = tmp_path / "weights"
    pretrained.export(run, dest)
    (dest / pretrained.GSLRM_FILE).write_bytes((dest / pretrained.GSLRM_FILE).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="gslrm.safetensors: sha256 differs"):
        pretrained.check(dest)
    (dest / "extra.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="extra.bin: not listed"):
        pretrained.check(dest)
    assert mfl(["weights", "check", str(dest)]) == 1


def test_export_names_what_is_missing(tmp_path, procedural_recording):
    run, _, _ = _fake_run(tmp_path, procedural_recording)
    for ckpt in (run / "gslrm").glob("ckpt_*.pt"):
        ckpt.unlink()
    with pytest.raises(FileNotFoundError, match=r"ckpt_\*\.pt \(notebook 06\)"):
        pretrained.export(run, tmp_path / "w")


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a GS-LRM weights file"):
        read_checkpoint(path)
