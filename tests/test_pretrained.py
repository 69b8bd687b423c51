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
                                                   "params": {"06_gslrm_finetune": {"steps": 5, "st_lpips_weights": "/o" "pt/w/alex.pth"}},
                                                   "from_run": None}))
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
    assert prov["gslrm"]["params"]["06_gslrm_finetune"]["st_lpips_weights"] == "alex.pth"  # no machine paths
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
        assert k == k2 and w.dtype == torch.float32  # fine-tuning on a CPU runs in fp32
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


# -- the weights the demo fine-tunes from (weights/demo) --------------------------------------------
def test_shipped_weights_match_their_provenance_and_the_demo_params():
    """weights/demo: every file as exported (sha256), small enough to ship, trained on another
    recording than the demo's, with the model settings params/demo.yaml states."""
    from mousefacelift.data import procedural
    from mousefacelift.params import load_yaml

    prov = pretrained.check(SHIPPED)
    assert pretrained.total_bytes(SHIPPED) <= 12e6
    demo = load_yaml(REPO / "params" / "demo.yaml")
    demo_rec = procedural.config_hash(procedural.ProceduralConfig.from_dict(
        {"n_frames": demo["01_data_extraction"]["synthetic_frames"],
         "resolution_scale": demo["01_data_extraction"]["synthetic_scale"]}))
    for part in ("gslrm", "mvdiffusion"):
        assert prov[part]["recording"]["config_hash"] != demo_rec          # a real adaptation, not the demo's mouse
        assert prov[part]["recording"]["config"]["seed"] != 0
        assert prov[part]["git_commit"] and prov[part]["step"] > 0 and prov[part]["val"]["mask_iou"] > 0
    stored = prov["gslrm"]["model_config"]
    six = demo["06_gslrm_finetune"]
    assert Path(six["init_checkpoint"]) == Path("weights/demo") / pretrained.GSLRM_FILE
    for param, field in (("layers", "layers"), ("width", "width"), ("heads", "heads"), ("image_size", "image_size"),
                         ("color_from_input", "color_from_input"), ("qk_norm", "qk_norm"), ("scale_bias", "scale_bias"),
                         ("render_global_gaussians", "render_global")):
        assert six[param] == stored[field], param
    assert Path(demo["04_mvdiffusion_finetune"]["init_from"]) == Path("weights/demo") / pretrained.MVDIFFUSION_DIR


def test_a_few_cpu_steps_from_the_shipped_gslrm_lower_its_loss(tmp_path):
    """The demo's start: the shipped GS-LRM loads into the trainer (init_from, settings checked)
    and 8 CPU steps on one fixed batch (2 samples, inputs 0-4, target 5) lower the loss."""
    from test_gslrm_train import make_blob_samples

    from mousefacelift.configs import from_dict
    from mousefacelift.gslrm.data import DataConfig
    from mousefacelift.gslrm.train import TrainConfig, train

    model_cfg = from_dict(GSLRMConfig, pretrained.check(SHIPPED)["gslrm"]["model_config"], "shipped")
    root = make_blob_samples(tmp_path / "data", 2, model_cfg.image_size, seed=4)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), data_root=str(root), train_split="splits/train.txt",
                      model=model_cfg, init_from=str(SHIPPED / pretrained.GSLRM_FILE), steps=8, warmup_steps=1,
                      lr=1e-4, batch_size=2, overfit_samples=2, data=DataConfig(input_views=5, fixed_targets=[5]),
                      checkpoint_every=100, log_every=1, progress_bar=False, device="cpu", seed=0)
    losses = train(cfg)["losses"]
    assert losses[-1] < 0.9 * losses[0], losses


def test_a_few_cpu_steps_from_the_shipped_mvdiffusion_lower_its_loss(tmp_path):
    """The shipped pipeline loads as notebook 04's init_from, and 8 CPU steps on one fixed batch and
    noise draw (step key 0) lower that draw's loss."""
    from diffusers import DDPMScheduler

    from mousefacelift.data import samples
    from mousefacelift.mvdiffusion.train import TrainConfig, build_pipeline, training_loss
    from test_mvdiffusion import make_samples

    names = make_samples(tmp_path / "s", 2, size=64)
    samples.write_split(tmp_path / "train.txt", names)
    cfg = TrainConfig(data_root=str(tmp_path / "s"), train_split=str(tmp_path / "train.txt"),
                      out_dir=str(tmp_path / "run"), init_from=str(SHIPPED / pretrained.MVDIFFUSION_DIR),
                      batch_size=2, lr=1e-4, device="cpu", seed=0)
    pipe = build_pipeline(cfg)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    ds = samples.SampleDataset(cfg.data_root, cfg.train_split, None)
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ("images", "w2c", "K")}
    opt = torch.optim.AdamW(pipe.model.parameters(), lr=cfg.lr)
    losses = []
    for _ in range(8):
        loss = training_loss(pipe.model, pipe, sched, batch, cfg, 0, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses
