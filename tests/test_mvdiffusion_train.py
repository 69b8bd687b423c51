"""MVDiffusion training: loss pieces, exact resume from atomic checkpoints, the subprocess entry,
and (slow) a tiny model overfitting two objects to PSNR_fg >= 20 dB."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time

import pytest
import torch
from diffusers import DDPMScheduler

from mousefacelift.data import samples
from mousefacelift.mvdiffusion import MVDiffusionConfig, MVDiffusionPipeline, SamplerConfig, evaluate
from mousefacelift.launch import launch
from mousefacelift.mvdiffusion.train import (TrainConfig, augment, build_pipeline, config_from_dict, main,
                                            min_snr_weight, swap_reference, train, training_loss)
from mousefacelift.training import keyed_generator
from test_mvdiffusion import make_samples


def tiny_config(tmp_path, out: str, **kw) -> TrainConfig:
    base = dict(data_root=str(tmp_path / "s"), train_split=str(tmp_path / "train.txt"), out_dir=str(tmp_path / out),
                model=MVDiffusionConfig.tiny(image_size=16), views=[0, 1, 2], batch_size=2, lr=1e-3,
                warmup_steps=2, checkpoint_every=2, log_every=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def data(tmp_path):
    names = make_samples(tmp_path / "s", 3, size=32)
    samples.write_split(tmp_path / "train.txt", names)
    return tmp_path


def test_min_snr_weight_matches_formula():
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    t = torch.tensor([0, 10, 500, 999])
    a = sched.alphas_cumprod[t]
    snr = a / (1 - a)
    torch.testing.assert_close(min_snr_weight(sched.alphas_cumprod, t, 5.0, "epsilon"), torch.clamp(snr, max=5) / snr)
    torch.testing.assert_close(min_snr_weight(sched.alphas_cumprod, t, 5.0, "v_prediction"),
                               torch.clamp(snr, max=5) / (snr + 1))
    assert torch.equal(min_snr_weight(sched.alphas_cumprod, t, 0.0, "epsilon"), torch.ones(4))


def test_augment_keeps_alpha_and_composites_one_background_per_object(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), brightness=0.0, contrast=0.0, backgrounds=("black", "white"))
    img = torch.rand(8, 3, 4, 4, 4)
    img[..., 3, :, :] = (img[..., 3, :, :] > 0.5).float()
    out = augment(img, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, 3], img[:, :, 3])
    bg = out[:, :, :3][img[:, :, 3:4].expand_as(img[:, :, :3]) == 0].view(-1)
    assert set(bg.unique().tolist()) <= {0.0, 1.0}
    seen = {tuple(out[b, :, :3][img[b, :, 3:4].expand(3, 3, 4, 4) == 0].unique().tolist()) for b in range(8)}
    assert seen == {(0.0,), (1.0,)}  # each object has one background colour, and both were drawn
    fg = img[:, :, 3:4] == 1
    torch.testing.assert_close(out[:, :, :3][fg.expand_as(out[:, :, :3])], img[:, :, :3][fg.expand_as(img[:, :, :3])])


def test_swap_reference_trades_one_drawn_view_with_the_reference_slot():
    B, V, ref = 64, 4, 1
    views = torch.arange(V, dtype=torch.float64).view(1, V, 1, 1, 1).expand(B, V, 1, 2, 2)
    w2c = torch.arange(V, dtype=torch.float64).view(1, V, 1, 1).expand(B, V, 4, 4)
    K = w2c[..., :3, :3]
    a, b, c = swap_reference(views, w2c, K, ref, keyed_generator(0, 5))
    drawn = a[:, ref, 0, 0, 0].long()
    assert set(drawn.tolist()) == set(range(V))  # every view reaches the slot
    for i in range(B):
        want = list(range(V))
        want[ref], want[int(drawn[i])] = int(drawn[i]), ref
        assert a[i, :, 0, 0, 0].tolist() == want and b[i, :, 0, 0].tolist() == want and c[i, :, 0, 0].tolist() == want
    again = swap_reference(views, w2c, K, ref, keyed_generator(0, 5))[0]
    assert torch.equal(again, a)  # keyed: a resumed run draws the same
    with pytest.raises(ValueError, match="prompt embeddings"):
        swap_reference(views, w2c, K, ref, keyed_generator(0), "prompt_embeds")


@pytest.mark.parametrize("on_reference", [True, False])
def test_loss_on_generated_views_only_ignores_the_reference_slot(data, on_reference):
    """Without loss_on_reference the gradient reaches no prediction of the reference view; with it,
    every view's prediction gets one."""
    cfg = tiny_config(data, "x", loss_on_reference=on_reference, random_reference=True)
    pipe = build_pipeline(cfg)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)

    class Fixed(torch.nn.Module):  # predicts a learnable tensor, so its gradient shows which views count
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(2, 3, 4, 16, 16))

        def forward(self, noisy, t, ref, rays, labels):
            return self.p
    ds = samples.SampleDataset(cfg.data_root, cfg.train_split, cfg.views)
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ("images", "w2c", "K")}
    model = Fixed()
    training_loss(model, pipe, sched, batch, cfg, 0, 0).backward()
    per_view = model.p.grad.abs().sum(dim=(0, 2, 3, 4))
    ref_v = pipe.model.config.reference_view
    assert (per_view[ref_v] > 0) == on_reference
    assert all(per_view[v] > 0 for v in range(3) if v != ref_v)


def test_config_from_dict_rejects_unknown_keys(tmp_path):
    cfg = config_from_dict({"out_dir": str(tmp_path), "model": {"image_size": 32, "block_out_channels": [8, 16]},
                            "backgrounds": ["white"]})
    assert cfg.model.image_size == 32 and cfg.model.block_out_channels == (8, 16) and cfg.backgrounds == ("white",)
    with pytest.raises(ValueError, match="valid keys"):
        config_from_dict({"out_dir": str(tmp_path), "learning_rate": 1.0})
    with pytest.raises(ValueError, match="valid keys"):
        config_from_dict({"out_dir": str(tmp_path), "model": {"channels": 3}})


@pytest.mark.slow
def test_exact_resume_reproduces_losses(data):
    full = train(tiny_config(data, "full", steps=4, checkpoint_every=100))
    part = train(tiny_config(data, "resumed", steps=4, stop_at_step=2))
    ckpts = sorted((data / "resumed" / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["ckpt_0000000000000002.pt"]  # atomic: no .tmp left behind
    assert not (data / "resumed" / "pipeline").exists()  # not exported before the last step
    rest = train(tiny_config(data, "resumed", steps=4))
    assert sorted(full["losses"]) == [1, 2, 3, 4] and sorted(part["losses"]) == [1, 2]
    assert sorted(rest["losses"]) == [3, 4]
    for s in (1, 2):
        assert abs(part["losses"][s] - full["losses"][s]) < 1e-6
    for s in (3, 4):
        assert abs(rest["losses"][s] - full["losses"][s]) < 1e-6, (s, rest["losses"][s], full["losses"][s])
    a = MVDiffusionPipeline.from_pretrained(data / "full" / "pipeline").model.state_dict()
    b = MVDiffusionPipeline.from_pretrained(data / "resumed" / "pipeline").model.state_dict()
    for k in a:  # the exported EMA weights agree too
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    logged = [json.loads(line)["step"] for line in (data / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


def test_channels_last_trains_like_the_default_layout_and_resumes_exactly(data):
    """NHWC weights and activations change the convolutions' summation order only: the same losses and
    exported weights as the default layout to float tolerance; a resumed NHWC run matches an uninterrupted
    one exactly (its checkpoints hold the NHWC tensors)."""
    nchw = train(tiny_config(data, "nchw", steps=3, checkpoint_every=100))
    nhwc = train(tiny_config(data, "nhwc", steps=3, checkpoint_every=100, channels_last=True))
    part = train(tiny_config(data, "nhwc_resumed", steps=3, stop_at_step=2, channels_last=True))
    rest = train(tiny_config(data, "nhwc_resumed", steps=3, channels_last=True))
    for s in (1, 2, 3):
        assert abs(nhwc["losses"][s] - nchw["losses"][s]) < 1e-4 * max(1.0, abs(nchw["losses"][s]))
    assert part["losses"][2] == nhwc["losses"][2] and rest["losses"][3] == nhwc["losses"][3]
    ckpt = torch.load(data / "nhwc_resumed" / "checkpoints" / "ckpt_0000000000000002.pt", weights_only=True)
    w = ckpt["model"]["unet.conv_in.weight"]  # [C_out, C_in, 3, 3] trained in NHWC
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    a = MVDiffusionPipeline.from_pretrained(data / "nchw" / "pipeline").model.state_dict()
    b = MVDiffusionPipeline.from_pretrained(data / "nhwc" / "pipeline").model.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_resume_with_a_changed_schedule_warns(data, caplog):
    train(tiny_config(data, "cut", steps=4, stop_at_step=2))
    with caplog.at_level(logging.WARNING, logger="mousefacelift.mvdiffusion.train"):
        out = train(tiny_config(data, "cut", steps=3))  # cut short: the rest follows a 3-step schedule
    assert sorted(out["losses"]) == [3]
    warned = [r.getMessage() for r in caplog.records if "schedule" in r.getMessage()]
    assert len(warned) == 1 and "steps 4 -> 3" in warned[0] and "ckpt_0000000000000002.pt" in warned[0]


def test_main_runs_from_a_json_config(data):
    cfg = {"data_root": str(data / "s"), "train_split": str(data / "train.txt"), "val_split": str(data / "train.txt"),
           "out_dir": str(data / "cli"), "steps": 1, "batch_size": 1, "views": [0, 1],
           "model": {"image_size": 16, "block_out_channels": [16, 32], "down_block_types": ["DownBlock2D",
                     "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                     "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 16},
           "val_objects": 1, "val_sampler": {"steps": 1}}
    (data / "train.json").write_text(json.dumps(cfg))
    assert main(["--config", str(data / "train.json")]) == 0
    summary = json.loads((data / "cli" / "summary.json").read_text())
    assert summary["step"] == 1 and math.isfinite(summary["val"][0]["psnr_fg"])
    assert (data / "cli" / "val" / "step_00000001_obj00.png").is_file()
    assert (data / "cli" / "pipeline" / "unet" / "config.json").is_file()


@pytest.mark.slow
def test_launch_writes_a_config_that_round_trips_and_restarts_cleanly(data):
    cfg = tiny_config(data, "launched", steps=2, val_split=str(data / "train.txt"), val_objects=1,
                      val_sampler=SamplerConfig(steps=1), backgrounds=("white", "gray"))
    summary = launch(cfg)
    assert summary["step"] == 2 and sorted(summary["losses"]) == ["1", "2"]
    assert math.isfinite(summary["val"][0]["psnr_fg"]) and 0 <= summary["val"][0]["mask_iou"] <= 1
    assert config_from_dict(json.loads((data / "launched" / "train_config.json").read_text())) == cfg
    # re-launching resumes at the end: nothing left to train, the pipeline is exported again
    again = launch(cfg)
    assert again["step"] == 2 and again["losses"] == {}
    # resume=False starts over and leaves no stale checkpoint of the earlier run behind
    fresh = launch(dataclasses.replace(cfg, steps=1, resume=False))
    assert fresh["step"] == 1 and sorted(fresh["losses"]) == ["1"]
    assert [p.name for p in (data / "launched" / "checkpoints").iterdir()] == ["ckpt_0000000000000001.pt"]
    with pytest.raises(ValueError, match="launcher"):
        launch(cfg, launcher="mpirun")


@pytest.mark.slow
def test_torchrun_launcher_streams_and_trains(data, caplog):
    """The subprocess path: torchrun with 2 CPU processes (gloo DDP), about 20 s."""
    cfg = tiny_config(data, "ddp", steps=1, batch_size=1)
    with caplog.at_level(logging.INFO, logger="mousefacelift.launch"):
        summary = launch(cfg, launcher="torchrun", nproc_per_node=2)
    assert summary["step"] == 1 and "[train]" in caplog.text
    assert (data / "ddp" / "pipeline" / "model_index.json").is_file()


@pytest.mark.slow
def test_tiny_model_overfits_two_objects(tmp_path):
    """About 150 s on two free CPU cores (1000 steps); the figure goes into the report."""
    names = make_samples(tmp_path / "s", 2, size=32)
    samples.write_split(tmp_path / "train.txt", names)
    views = [0, 1, 2, 3]
    cfg = TrainConfig(data_root=str(tmp_path / "s"), train_split=str(tmp_path / "train.txt"),
                      out_dir=str(tmp_path / "run"), model=MVDiffusionConfig.tiny(), views=views, steps=1000,
                      batch_size=2, lr=1e-3, warmup_steps=20, drop_reference=0, drop_camera=0, drop_both=0,
                      brightness=0, contrast=0, backgrounds=("white",), use_ema=False, checkpoint_every=10 ** 9,
                      log_every=100)
    t0 = time.time()
    summary = train(cfg)
    pipe = MVDiffusionPipeline.from_pretrained(summary["pipeline_dir"])
    res = evaluate(pipe, samples.SampleDataset(tmp_path / "s", tmp_path / "train.txt", views),
                   SamplerConfig(steps=25, eta=0.0, guidance_scale=1.0), seed=0, max_objects=2)
    print(f"overfit: PSNR_fg {res['per_object']} dB, {time.time() - t0:.0f} s")
    assert min(res["per_object"]) >= 20.0, res["per_object"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_training_step_and_sampling_on_gpu(data):
    summary = train(tiny_config(data, "gpu", steps=2, device="cuda", precision="bf16"))
    assert all(math.isfinite(v) for v in summary["losses"].values())
    pipe = MVDiffusionPipeline.from_pretrained(summary["pipeline_dir"]).to(torch.device("cuda"))
    res = evaluate(pipe, samples.SampleDataset(data / "s", data / "train.txt", [0, 1, 2]),
                   SamplerConfig(steps=2), seed=0, max_objects=2)
    assert math.isfinite(res["psnr_fg"])


def test_time_limit_stops_validates_and_exports(data):
    """time_limit_s: stops at the first logging step past the limit, with a checkpoint, a validation
    and the exported pipeline, as at the end of the schedule."""
    cfg = tiny_config(data, "t", steps=50, log_every=2, checkpoint_every=100, val_every=100,
                      val_split=str(data / "train.txt"), val_objects=1, time_limit_s=1e-6,
                      val_sampler=SamplerConfig(steps=2))
    s = train(cfg)
    assert s["stopped_at_time_limit"] and s["step"] == 2 and [v["step"] for v in s["val"]] == [2]
    assert (data / "t" / "pipeline" / "model_index.json").is_file()
    assert (data / "t" / "checkpoints" / "ckpt_0000000000000002.pt").is_file()
