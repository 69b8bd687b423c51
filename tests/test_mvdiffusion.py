"""Multi-view diffusion: attention against a slow reference, cross-view behaviour, zero-initialised
camera conditioning, rig-independent ray maps, save/load (ours and FaceLift's folder), sampling and
the synthetic-sample generator. Tiny models, CPU, a few seconds each."""
from __future__ import annotations

import copy
import json
import logging
import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from mousefacelift import cameras
from mousefacelift.data import samples
from mousefacelift.mvdiffusion import (FaceLiftLoadConfig, MVDiffusionConfig, MVDiffusionModel, MVDiffusionPipeline,
                                       MultiViewAttnProcessor, SamplerConfig, SyntheticConfig, compare_synthetic,
                                       evaluate, generate_synthetic, quality_vs_steps, relative_ray_map,
                                       resize_views, validation_grid, widen_conv_in)
from mousefacelift.mvdiffusion.pipeline import PixelCodec, composite


# ----------------------------------------------------------------------------------------------
# Fixtures: analytic ellipsoids seen by FaceLift's 6-camera rig
# ----------------------------------------------------------------------------------------------
def render_ellipsoid(w2c: torch.Tensor, K: torch.Tensor, size: int, radii, col_a, col_b) -> np.ndarray:
    """Ray-traced axis-aligned ellipsoid at the origin, colour col_a on its +x half and col_b on
    the other, Lambert-shaded -> uint8 [V, size, size, 4] (alpha = hit)."""
    o, d = cameras.pixel_rays(cameras.invert_rigid(w2c), K, size, size)
    r = torch.as_tensor(radii, dtype=torch.float64)
    o2, d2 = o / r, d / r
    a, b, c = (d2 * d2).sum(-1), 2 * (o2 * d2).sum(-1), (o2 * o2).sum(-1) - 1
    disc = b * b - 4 * a * c
    hit = disc > 0
    t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
    n = (o + t[..., None] * d) / r ** 2
    n = n / n.norm(dim=-1, keepdim=True)
    light = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    shade = 0.45 + 0.55 * (n @ (light / light.norm())).clamp_min(0)
    col = torch.where(n[..., :1] > 0, torch.as_tensor(col_a, dtype=torch.float64),
                      torch.as_tensor(col_b, dtype=torch.float64))
    rgba = torch.cat([(col * shade[..., None]).clamp(0, 1) * hit[..., None], hit[..., None].double()], -1)
    return (rgba.numpy() * 255 + 0.5).astype(np.uint8)


def make_samples(root, n: int, size: int = 32, seed: int = 0) -> list[str]:
    """n ellipsoid samples (6 views, FaceLift's rig scaled to ``size`` px) under root; -> names."""
    g = np.random.default_rng(seed)
    w2c, K = cameras.canonical_rig(image_size=size)
    names = []
    for i in range(n):
        imgs = render_ellipsoid(w2c, K, size, g.uniform(0.5, 1.0, 3), g.uniform(0.2, 1.0, 3), g.uniform(0.2, 1.0, 3))
        names.append(samples.sample_name(i))
        samples.write_sample(root / names[-1], imgs, w2c, K, list(range(6)), {"fixture": "ellipsoid", "index": i})
    return names


def tiny_model(mode: str = "sparse", **kw) -> MVDiffusionModel:
    return MVDiffusionModel.from_dataclass(MVDiffusionConfig.tiny(attention_mode=mode, image_size=16, **kw), seed=0)


def tiny_pipeline(**kw) -> MVDiffusionPipeline:
    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False)
    return MVDiffusionPipeline(tiny_model(**kw), sched, PixelCodec())


def rig(B: int, V: int, size: int):
    w2c, K = cameras.canonical_rig(image_size=size)
    return w2c[:V].expand(B, V, 4, 4).clone(), K[:V].expand(B, V, 3, 3).clone()


# ----------------------------------------------------------------------------------------------
# Multi-view attention
# ----------------------------------------------------------------------------------------------
def reference_attention(attn: Attention, x: torch.Tensor, V: int, mode: str, ref: int) -> torch.Tensor:
    """Slow and obvious: for each view, explicit softmax attention over its concatenated keys."""
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    H = attn.heads
    d = q.shape[-1] // H
    out = torch.empty_like(q)
    for n in range(x.shape[0]):
        obj, view = divmod(n, V)
        views = list(range(V)) if mode == "dense" else [ref, view]
        keys = torch.cat([k[obj * V + j] for j in views])     # [L', H*d]
        vals = torch.cat([v[obj * V + j] for j in views])
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            w = torch.softmax(q[n, :, sl] @ keys[:, sl].T / math.sqrt(d), dim=-1)
            out[n, :, sl] = w @ vals[:, sl]
    return attn.to_out[0](out)


@pytest.mark.parametrize("mode", ["sparse", "dense"])
@pytest.mark.parametrize("B,V,ref", [(1, 6, 0), (2, 3, 1), (3, 1, 0)])
def test_processor_matches_reference(mode, B, V, ref):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, heads=2, dim_head=8)
    attn.set_processor(MultiViewAttnProcessor(mode, ref))
    x = torch.randn(B * V, 5, 16)
    got = attn(x, num_views=V)
    want = reference_attention(attn, x, V, mode, ref)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_attention_crosses_views_in_the_unet():
    """Perturbing the reference view changes the others; in sparse mode view 2 cannot reach view 1,
    in dense mode it can."""
    torch.manual_seed(1)
    B, V = 1, 4
    x, ref, rays = torch.randn(B, V, 4, 16, 16), torch.randn(B, 4, 16, 16), torch.randn(B, V, 6, 16, 16)
    t = torch.tensor([500])
    with torch.no_grad():
        for mode in ("sparse", "dense"):
            model = tiny_model(mode)
            base = model(x, t, ref, rays)
            x0 = x.clone()
            x0[:, 0] += torch.randn_like(x0[:, 0])
            out0 = model(x0, t, ref, rays)
            assert (out0[:, 1:] - base[:, 1:]).abs().amax() > 1e-3, mode
            x2 = x.clone()
            x2[:, 2] += torch.randn_like(x2[:, 2])
            out2 = model(x2, t, ref, rays)
            assert (out2[:, 2] - base[:, 2]).abs().amax() > 1e-3
            change_v1 = (out2[:, 1] - base[:, 1]).abs().amax()
            if mode == "sparse":
                assert change_v1 < 1e-5, change_v1
            else:
                assert change_v1 > 1e-3, change_v1


# ----------------------------------------------------------------------------------------------
# Camera conditioning
# ----------------------------------------------------------------------------------------------
def facelift_like_unet(cross_dim: int = 32, class_dim: int | None = None) -> UNet2DConditionModel:
    """A tiny UNet with FaceLift's wiring: 8 input channels (noisy + reference latents)."""
    torch.manual_seed(3)
    extra = dict(class_embed_type="projection", projection_class_embeddings_input_dim=class_dim) if class_dim else {}
    unet = UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                attention_head_dim=4, norm_num_groups=8, cross_attention_dim=cross_dim,
                                use_linear_projection=True, **extra)
    with torch.no_grad():  # diffusers zero-initialises some output layers: make them count
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet


def test_camera_conditioning_is_zero_initialised():
    unet = facelift_like_unet()
    ctx = torch.randn(6, 7, 32)
    plain = MVDiffusionModel.from_unet(copy.deepcopy(unet), 4, 0, 6, context_tensor=ctx)
    adapted = MVDiffusionModel.from_unet(copy.deepcopy(unet), 4, 6, 6, context_tensor=ctx)
    assert adapted.unet.conv_in.in_channels == 14 and adapted.unet.config.in_channels == 14
    assert adapted.unet.conv_in.weight[:, 8:].abs().sum() == 0
    torch.testing.assert_close(adapted.unet.conv_in.weight[:, :8], unet.conv_in.weight)
    torch.manual_seed(4)
    x, ref, rays = torch.randn(2, 6, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 6, 6, 8, 8)
    with torch.no_grad():
        a = plain(x, torch.tensor([10, 700]), ref)
        b = adapted(x, torch.tensor([10, 700]), ref, rays)
        # and once the new channels learn something, the rays do matter
        adapted.unet.conv_in.weight[:, 8:].normal_()
        c = adapted(x, torch.tensor([10, 700]), ref, rays)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert (c - a).abs().amax() > 1e-3


def test_widen_conv_in_keeps_output():
    unet = facelift_like_unet()
    x = torch.randn(2, 8, 8, 8)
    ctx = torch.randn(2, 7, 32)
    with torch.no_grad():
        before = unet(x, 5, ctx).sample
        widen_conv_in(unet, 3)
        after = unet(torch.cat([x, torch.randn(2, 3, 8, 8)], 1), 5, ctx).sample
    torch.testing.assert_close(before, after, atol=1e-6, rtol=0)


def test_ray_map_is_relative_to_the_reference_camera():
    """Rotating the whole rig about the object leaves the ray map unchanged, and the reference
    view's own directions are its camera-frame pixel directions."""
    B, V, S = 1, 6, 8
    w2c, K = rig(B, V, S)
    rays = relative_ray_map(w2c, K, w2c[:, 0], S, S)
    assert rays.shape == (B, V, 6, S, S)
    R = cameras.look_at_rotation(torch.tensor([[0.3, 1.0, 0.4]], dtype=torch.float64),
                                 torch.zeros(1, 3, dtype=torch.float64))[0]  # any rotation
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R.T  # world' = R^T world, so w2c' = w2c @ [R | 0]
    w2c_rot = w2c @ torch.linalg.inv(M)
    torch.testing.assert_close(relative_ray_map(w2c_rot, K, w2c_rot[:, 0], S, S), rays)
    u = (torch.arange(S, dtype=torch.float64) + 0.5 - K[0, 0, 0, 2]) / K[0, 0, 0, 0]
    d = torch.stack([u.view(1, S).expand(S, S), u.view(S, 1).expand(S, S), torch.ones(S, S, dtype=torch.float64)])
    torch.testing.assert_close(rays[0, 0, :3], d / d.norm(dim=0, keepdim=True))


# ----------------------------------------------------------------------------------------------
# Sampling, save/load
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_sampling_is_seeded_and_batch_independent():
    pipe = tiny_pipeline()
    w2c, K = rig(2, 3, 16)
    ref = torch.rand(2, 4, 16, 16)
    for cfg in (SamplerConfig(steps=2, guidance_scale=2.0), SamplerConfig(sampler="dpm", steps=2, guidance_scale=1.0)):
        both = pipe(ref, w2c[:, 0], w2c, K, cfg, generator=[torch.Generator().manual_seed(s) for s in (7, 8)])
        second = pipe(ref[1:], w2c[1:, 0], w2c[1:], K[1:], cfg, generator=[torch.Generator().manual_seed(8)])
        assert both.shape == (2, 3, 4, 16, 16) and both.min() >= 0 and both.max() <= 1
        torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=0)
        assert (both[0] - both[1]).abs().amax() > 1e-3
    with pytest.raises(ValueError, match="resize_views"):
        pipe(torch.rand(1, 4, 32, 32), w2c[:1, 0], w2c[:1], K[:1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16 autocast)")
def test_bf16_sampling_on_cuda_follows_fp32():
    """SamplerConfig.bf16 runs the UNet under bf16 autocast on CUDA: the samples of the same noise stay
    close to fp32's (the scheduler's state is fp32) but are not bit-identical (the flag took effect)."""
    pipe = tiny_pipeline().to(torch.device("cuda"))
    w2c, K = rig(2, 3, 16)
    ref = torch.rand(2, 4, 16, 16)
    out = {bf16: pipe(ref, w2c[:, 0], w2c, K, SamplerConfig(sampler="dpm", steps=4, bf16=bf16),
                      generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).float().cpu() for bf16 in (False, True)}
    diff = (out[True] - out[False]).abs()
    assert out[True].dtype == torch.float32 and diff.amax() > 0 and diff.mean() < 0.02


def test_save_load_round_trip_is_exact(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "p")
    assert {p.name for p in (tmp_path / "p").iterdir()} == {"model_index.json", "unet", "scheduler",
                                                             "pipeline_mousefacelift.py"}
    assert (tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    back = MVDiffusionPipeline.from_pretrained(tmp_path / "p")
    for (k, a), (k2, b) in zip(pipe.model.state_dict().items(), back.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert back.model.config.attention_mode == "sparse" and back.scheduler.config.prediction_type == "v_prediction"
    w2c, K = rig(1, 3, 16)
    ref = torch.rand(1, 4, 16, 16)
    cfg = SamplerConfig(steps=2)
    a = pipe(ref, w2c[:, 0], w2c, K, cfg, generator=torch.Generator().manual_seed(0))
    b = back(ref, w2c[:, 0], w2c, K, cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        MVDiffusionPipeline.from_pretrained(tmp_path / "nowhere")


def test_a_saved_pipeline_loads_through_diffusers_own_diffusion_pipeline(tmp_path, monkeypatch, caplog):
    """DiffusionPipeline.from_pretrained resolves the custom class that model_index.json declares
    (offline: a local folder), and it samples as ours does; ours still loads the same folder."""
    import logging

    from diffusers import DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_mousefacelift", "MVDiffusionDiffusersPipeline"]
    diffusers_logging.enable_propagation()  # diffusers' warnings to caplog
    try:
        with caplog.at_level(logging.WARNING):
            hf = DiffusionPipeline.from_pretrained(tmp_path / "p", trust_remote_code=True, low_cpu_mem_usage=False)
    finally:
        diffusers_logging.disable_propagation()
    assert type(hf).__name__ == "MVDiffusionDiffusersPipeline" and isinstance(hf, DiffusionPipeline)  # the class
    # comes from a copy of pipeline_mousefacelift.py in diffusers' module cache, which imports ours
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [r.getMessage() for r in caplog.records]
    assert isinstance(hf.unet, type(pipe.model)) and hf.vae is None and hf.config.codec == "pixel"
    for (k, a), (k2, b) in zip(pipe.model.state_dict().items(), hf.unet.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    ours = MVDiffusionPipeline.from_pretrained(tmp_path / "p")
    w2c, K = rig(1, 3, 16)
    ref = torch.rand(1, 4, 16, 16)
    cfg = SamplerConfig(steps=2)
    a = ours(ref, w2c[:, 0], w2c, K, cfg, generator=torch.Generator().manual_seed(0))
    b = hf(ref, w2c[:, 0], w2c, K, cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (1, 3, 4, 16, 16)


def write_facelift_folder(folder, unet: UNet2DConditionModel, embed_dim: int):
    """A FaceLift-layout pipeline folder with tiny parts (no text encoder / CLIP weights)."""
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    unet.save_pretrained(folder / "unet")
    cfg = json.loads((folder / "unet" / "config.json").read_text())
    cfg.update({"_class_name": "UNetMV2DConditionModel", "num_views": 6, "sparse_mv_attention": True,
                "selfattn_block": "custom", "mvcd_attention": True})
    (folder / "unet" / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(5)
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  sample_size=16).save_pretrained(folder / "vae")
    DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction").save_pretrained(folder / "scheduler")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2").save_pretrained(folder / "image_noising_scheduler")
    StableUnCLIPImageNormalizer(embedding_dim=embed_dim).save_pretrained(folder / "image_normalizer")
    for d in ("tokenizer", "text_encoder", "feature_extractor"):
        (folder / d).mkdir()
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableUnCLIPImg2ImgPipeline", "unet": ["mvdiffusion.models.unet_mv2d_condition",
                                                              "UNetMV2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    torch.save(torch.randn(6, 77, unet.config.cross_attention_dim), folder / "prompt_embeds.pt")


def test_facelift_folder_loads(tmp_path, caplog):
    E = 16
    unet = facelift_like_unet(cross_dim=32, class_dim=2 * E)
    write_facelift_folder(tmp_path, unet, E)
    opts = FaceLiftLoadConfig(prompt_embeds_path=str(tmp_path / "prompt_embeds.pt"))
    with caplog.at_level(logging.INFO, logger="mousefacelift.mvdiffusion.pipeline"):
        pipe = MVDiffusionPipeline.from_pretrained(tmp_path, opts)
    assert "selfattn_block" in caplog.text and "sparse_mv_attention" in caplog.text
    for k, v in unet.state_dict().items():
        assert torch.equal(pipe.model.unet.state_dict()[k], v), k
    assert pipe.codec.kind == "vae" and pipe.image_size == 16 and pipe.model.config.camera_channels == 0
    torch.testing.assert_close(pipe.model.context, torch.load(tmp_path / "prompt_embeds.pt"))
    w2c, K = rig(1, 6, 16)
    out = pipe(torch.rand(1, 4, 16, 16), w2c[:, 0], w2c, K, SamplerConfig(steps=2),
               generator=torch.Generator().manual_seed(0), image_embeds=torch.randn(1, E))
    assert out.shape == (1, 6, 4, 16, 16) and torch.isfinite(out).all()
    assert torch.equal(out[:, :, 3], torch.ones_like(out[:, :, 3]))  # the VAE has no alpha
    with pytest.raises(ValueError, match="image_embeds"):
        pipe(torch.rand(1, 4, 16, 16), w2c[:, 0], w2c, K, SamplerConfig(steps=1))
    # fine-tuning variant: ray-map channels, zero-initialised
    tuned = MVDiffusionPipeline.from_pretrained(tmp_path, FaceLiftLoadConfig(str(tmp_path / "prompt_embeds.pt"), True))
    assert tuned.model.unet.conv_in.in_channels == 14
    # missing prompt embeddings and mismatching weights are errors that say what to do
    with pytest.raises(ValueError, match="prompt_embeds_path"):
        MVDiffusionPipeline.from_pretrained(tmp_path)
    from safetensors.torch import load_file, save_file
    wfile = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(wfile))
    state["extra_cd_attention.weight"] = torch.zeros(1)
    save_file(state, str(wfile))
    with pytest.raises(ValueError, match="extra_cd_attention"):
        MVDiffusionPipeline.from_pretrained(tmp_path, opts)


def test_facelift_clip_image_encoder(tmp_path):
    """With transformers installed, the CLIP image embedding feeds the class label."""
    transformers = pytest.importorskip("transformers")
    E = 16
    unet = facelift_like_unet(cross_dim=32, class_dim=2 * E)
    write_facelift_folder(tmp_path, unet, E)
    cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8, projection_dim=E)
    transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "image_encoder")
    pipe = MVDiffusionPipeline.from_pretrained(tmp_path, FaceLiftLoadConfig(str(tmp_path / "prompt_embeds.pt")))
    assert pipe.image_encoder is not None
    ref = torch.rand(2, 4, 16, 16)
    labels = pipe.class_labels(ref, None)
    assert labels.shape == (2, 2 * E) and (labels[0] - labels[1]).abs().amax() > 0
    w2c, K = rig(2, 6, 16)
    assert pipe(ref, w2c[:, 0], w2c, K, SamplerConfig(steps=1)).shape == (2, 6, 4, 16, 16)


# ----------------------------------------------------------------------------------------------
# Quality helpers and the synthetic-sample generator
# ----------------------------------------------------------------------------------------------
def slow_psnr_fg_and_iou(pred: torch.Tensor, gt: torch.Tensor) -> tuple[float, float]:
    """Obvious per-pixel loops: PSNR_fg over GT alpha > 0.5 and IoU of alpha > 0.5, one view [4, H, W]."""
    se, n, inter, union = 0.0, 0, 0, 0
    for y in range(gt.shape[1]):
        for x in range(gt.shape[2]):
            g, p = gt[3, y, x] > 0.5, pred[3, y, x] > 0.5
            inter += int(g and p)
            union += int(g or p)
            if g:
                se += float(((pred[:3, y, x] - gt[:3, y, x]) ** 2).sum())
                n += 3
    return (-10 * math.log10(se / n) if n else math.nan), (inter / union if union else math.nan)


@pytest.mark.slow
def test_evaluate_uses_the_protocol_on_held_out_views_only(tmp_path):
    """evaluate's PSNR_fg and mask IoU equal a per-pixel loop over the non-reference views of its
    own generated samples; the reference view never enters."""
    names = make_samples(tmp_path / "s", 3, size=16)
    samples.write_split(tmp_path / "val.txt", names)
    data = samples.SampleDataset(tmp_path / "s", tmp_path / "val.txt", [0, 1, 2, 3])
    for ref_v in (0, 2):
        pipe = tiny_pipeline(reference_view=ref_v)
        res = evaluate(pipe, data, SamplerConfig(steps=2, guidance_scale=1.0), seed=5, max_objects=2, batch_size=1)
        assert res["n_objects"] == 2 and res["n_views"] == 2 * 3 and len(res["samples"]) == 2
        assert {r["view"] for r in res["per_view"]} == {0, 1, 2, 3} - {ref_v}
        psnrs, ious = [], []
        for ref, gen, gt in res["samples"]:
            torch.testing.assert_close(ref, gt[ref_v])
            for v in range(4):
                if v != ref_v:
                    p, i = slow_psnr_fg_and_iou(gen[v], gt[v])
                    psnrs.append(p)
                    ious.append(i)
        ious = [i for i in ious if not math.isnan(i)]
        assert abs(res["psnr_fg"] - sum(psnrs) / len(psnrs)) < 1e-4
        assert abs(res["mask_iou"] - sum(ious) / len(ious)) < 1e-6
    # a perfect generator scores infinite-like PSNR and IoU 1 on every held-out view
    class Oracle:
        model, image_size = pipe.model, 16

        def __call__(self, reference, reference_w2c, w2c, K, config, generator):
            return composite(torch.stack([data[i]["images"] for i in range(len(generator))]), (1.0, 1.0, 1.0))
    res = evaluate(Oracle(), data, SamplerConfig(steps=1), seed=0, max_objects=0)
    assert res["n_objects"] == 3 and res["psnr_fg"] > 100 and res["mask_iou"] == 1.0
    assert res["copy_fraction"] == 0.0  # its own views: never closer to the reference mask

    class Copier(Oracle):  # paints the reference view into every camera
        def __call__(self, reference, reference_w2c, w2c, K, config, generator):
            real = super().__call__(reference, reference_w2c, w2c, K, config, generator)
            return real[:, ref_v:ref_v + 1].expand_as(real).clone()
    res = evaluate(Copier(), data, SamplerConfig(steps=1), seed=0, max_objects=0)
    # every view whose mask differs from the reference's is a copy; the others cannot tell (NaN, left out)
    differs = [r["reference_mask_iou"] < 1 for r in res["per_view"]]
    assert 0 < sum(differs) < len(differs) and res["copy_fraction"] == 1.0
    assert all(math.isnan(r["copies"]) for r, d in zip(res["per_view"], differs) if not d)
    assert res["copy_mask_iou"] == 1.0 and res["copy_psnr_fg"] > 100
    assert res["mask_iou"] == pytest.approx(res["reference_mask_iou"])  # it earns exactly what copying earns
    assert res["copy_margin_iou"] == pytest.approx(1.0 - res["mask_iou"]) and res["mask_iou"] < 0.99


def test_mean_from_noise_is_the_clean_view_a_v_prediction_implies(tmp_path, monkeypatch):
    """From pure noise at the last timestep, v = sqrt(a) eps - sqrt(1 - a) x0 with a close to 0: a model
    whose v is minus the true views (every view, guided or not) has them as its mean, which evaluate then
    scores as perfect on the held-out views; a sampled view of the same model is not the mean. Epsilon
    models are refused."""
    names = make_samples(tmp_path / "s", 2, size=16)
    samples.write_split(tmp_path / "val.txt", names)
    data = samples.SampleDataset(tmp_path / "s", tmp_path / "val.txt")
    pipe = tiny_pipeline()
    truth = PixelCodec().encode(composite(torch.stack([data[i]["images"] for i in range(2)]).flatten(0, 1),
                                          (1.0, 1.0, 1.0))).unflatten(0, (2, 6))      # [2, 6, 4, 16, 16] in [-1, 1]

    def v_of_the_truth(noisy, t, reference, rays=None, labels=None):
        return -truth.repeat(noisy.shape[0] // 2, 1, 1, 1, 1)                   # guided calls stack 2 x the batch
    monkeypatch.setattr(pipe.model, "forward", v_of_the_truth)
    res = evaluate(pipe, data, SamplerConfig(guidance_scale=3.0), seed=0, max_objects=2, batch_size=2,
                   mean_from_noise=True)
    assert res["mask_iou"] == 1.0 and res["psnr_fg"] > 40 and res["copy_fraction"] == 0.0
    assert {r["model"] for r in res["per_view"]} == {"mean from noise"}
    w2c, K = rig(2, 6, 16)
    mean = pipe.mean_from_noise(torch.rand(2, 4, 16, 16), w2c[:, 0], w2c, K, SamplerConfig(guidance_scale=1.0),
                                generator=[torch.Generator().manual_seed(s) for s in (0, 1)])
    assert mean.shape == (2, 6, 4, 16, 16) and mean.min() >= 0 and mean.max() <= 1
    sampled = evaluate(pipe, data, SamplerConfig(steps=2, guidance_scale=1.0), seed=0, max_objects=2, batch_size=2)
    assert sampled["psnr_fg"] < res["psnr_fg"]
    eps = MVDiffusionPipeline(tiny_model(), DDPMScheduler(prediction_type="epsilon"), PixelCodec())
    with pytest.raises(ValueError, match="v-prediction"):
        eps.mean_from_noise(torch.rand(2, 4, 16, 16), w2c[:, 0], w2c, K)


def test_validation_grid_layout():
    gt = torch.zeros(2, 4, 8, 8)
    gen = torch.ones(2, 4, 8, 8)
    grid = validation_grid(gt[0], gen, gt)
    assert grid.shape == (16, 24, 3) and grid.dtype == np.uint8
    assert (grid[:8, 8:] == 255).all() and (grid[8:] == 0).all() and (grid[:8, :8] == 0).all()


def test_scaled_config():
    cfg = MVDiffusionConfig.scaled(16, (1, 2, 4), image_size=32)
    assert cfg.block_out_channels == (16, 32, 64) and cfg.image_size == 32
    assert cfg.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert cfg.up_block_types == ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    assert cfg.unet_config()["in_channels"] == 4 + 4 + 6


def test_resize_views_keeps_projection():
    w2c, K = rig(1, 2, 32)
    X = torch.tensor([[[0.2, -0.1, 0.3]]], dtype=torch.float64)
    uv32, _ = cameras.project(X, w2c[0], K[0])
    img, K16 = resize_views(torch.rand(1, 2, 4, 32, 32), K, 16)
    uv16, _ = cameras.project(X, w2c[0], K16[0])
    assert img.shape == (1, 2, 4, 16, 16)
    torch.testing.assert_close(uv16, uv32 / 2)


@pytest.mark.slow
def test_generate_synthetic_writes_conditioned_cameras_and_resumes(tmp_path):
    names = ["samples/" + n for n in make_samples(tmp_path / "src" / "samples", 3, size=32)]
    samples.write_split(tmp_path / "src" / "splits" / "train.txt", names)
    tiny_pipeline().save_pretrained(tmp_path / "ckpt")
    cfg = SyntheticConfig(batch_size=2, sampler=SamplerConfig(steps=2), seed=11)
    run = (tmp_path / "ckpt", tmp_path / "src", tmp_path / "src" / "splits" / "train.txt", tmp_path / "out", cfg)
    res = generate_synthetic(*run)
    assert res["written"] == 3 and res["skipped"] == 0 and res["image_size"] == 16
    # the synthetic data root mirrors data/: same relative sample paths, its own split file
    assert res["split_file"] == str(tmp_path / "out" / "splits" / "train.txt")
    assert samples.read_split(res["split_file"]) == names
    for i, name in enumerate(names):
        src, out = samples.read_sample(tmp_path / "src" / name), samples.read_sample(tmp_path / "out" / name)
        assert out.images.shape == (6, 4, 16, 16) and out.view_ids == src.view_ids
        torch.testing.assert_close(out.w2c, src.w2c)
        torch.testing.assert_close(out.K, cameras.scale_intrinsics(src.K, 0.5, 0.5))
        p = out.provenance
        assert p["seed"] == 11 + i and p["steps"] == 2 and p["sampler"] == "ddim" and p["guidance_scale"] == 3.0
        assert p["source_sample"].endswith(name) and p["checkpoint"] == str(tmp_path / "ckpt")
        ref, _ = resize_views(src.images[:1], src.K[:1], 16)  # the reference view is the real one
        assert (out.images[0] - composite(ref, (1.0, 1.0, 1.0))[0]).abs().amax() < 1.5 / 255
    # the comparison against the sources: cameras equal, metrics over the 5 generated views only
    cmp = compare_synthetic(tmp_path / "src", tmp_path / "out", names, n_grids=2)
    assert cmp["w2c_max_abs_diff"] < 1e-6 and cmp["K_max_abs_diff"] < 1e-6
    assert cmp["n_samples"] == 3 and cmp["n_views"] == 3 * 5 and len(cmp["grids"]) == 2
    assert {r["view"] for r in cmp["per_view"]} == {1, 2, 3, 4, 5}
    assert math.isfinite(cmp["psnr_fg"]) and 0 <= cmp["mask_iou"] <= 1
    one = compare_synthetic(tmp_path / "src", tmp_path / "out", names, n_grids=2, read_threads=1)  # read ahead or not
    assert repr(one["per_view"]) == repr(cmp["per_view"]) and [r["sample"] for r in one["per_view"][::5]] == names
    # a second call skips complete samples; a deleted one is regenerated identically
    first = samples.read_sample(tmp_path / "out" / names[1]).images
    import shutil
    shutil.rmtree(tmp_path / "out" / names[1])
    res = generate_synthetic(*run)
    assert res["written"] == 1 and res["skipped"] == 2
    again = samples.read_sample(tmp_path / "out" / names[1]).images
    assert (again - first).abs().amax() <= 1.01 / 255  # same seed; uint8 rounding may differ by one level
    # max_samples takes the first samples of the split
    res = generate_synthetic(*run[:3], tmp_path / "out2", SyntheticConfig(sampler=SamplerConfig(steps=1), max_samples=2))
    assert res["written"] == 2 and samples.read_split(res["split_file"]) == names[:2]


def test_compare_synthetic_of_a_copy_is_perfect(tmp_path):
    """A synthetic root that holds the real views scores IoU 1 and PSNR_fg at the uint8 floor (at the
    source resolution: resampled alphas near 0.5 would flip in uint8 and blur the point)."""
    names = ["samples/" + n for n in make_samples(tmp_path / "src" / "samples", 2, size=32)]
    for name in names:
        s = samples.read_sample(tmp_path / "src" / name)
        rgba = (composite(s.images, (1.0, 1.0, 1.0)).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        samples.write_sample(tmp_path / "syn" / name, rgba, s.w2c, s.K, s.view_ids, {"reference_view": 0})
    cmp = compare_synthetic(tmp_path / "src", tmp_path / "syn", names)
    assert cmp["mask_iou"] == 1.0 and cmp["psnr_fg"] > 50 and cmp["w2c_max_abs_diff"] == 0.0


def test_quality_vs_steps_reports_each_setting(tmp_path):
    names = make_samples(tmp_path / "s", 2, size=16)
    samples.write_split(tmp_path / "val.txt", names)
    rows = quality_vs_steps(tiny_pipeline(), samples.SampleDataset(tmp_path / "s", tmp_path / "val.txt"), [1, 2],
                            SamplerConfig(sampler="dpm", guidance_scale=1.0), max_objects=1)
    assert [r["steps"] for r in rows] == [1, 2] and all(math.isfinite(r["psnr_fg"]) for r in rows)
    rows = quality_vs_steps(tiny_pipeline(), samples.SampleDataset(tmp_path / "s", tmp_path / "val.txt"), [1],
                            SamplerConfig(guidance_scale=1.0), max_objects=1, samplers=["ddim", "dpm"])
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ddim", 1), ("dpm", 1)]
    assert all(0 <= r["mask_iou"] <= 1 for r in rows)
    # guidance scales: one row each, in order, and the scale reaches the sampler (the unguided and the
    # guided sample of the same noise differ: the untrained model reads its reference and rays)
    rows = quality_vs_steps(tiny_pipeline(), samples.SampleDataset(tmp_path / "s", tmp_path / "val.txt"), [2],
                            SamplerConfig(sampler="dpm"), max_objects=1, guidance_scales=[1.0, 4.0])
    assert [(r["guidance_scale"], r["steps"]) for r in rows] == [(1.0, 2), (4.0, 2)]
    assert rows[0]["psnr_fg"] != rows[1]["psnr_fg"] and all("copy_fraction" in r for r in rows)


@pytest.mark.parametrize("embedding", [False, True])
def test_camera_embedding_carries_the_camera_beside_conv_in(tmp_path, embedding):
    """With the ray channels of conv_in zeroed, the camera still changes the prediction through the
    per-view timestep code when camera_embedding is on, and not at all when it is off; dropped
    (zero) rays give a zero code; the option survives save/load."""
    from mousefacelift.mvdiffusion import MVDiffusionModel
    torch.manual_seed(0)
    model = MVDiffusionModel.from_dataclass(MVDiffusionConfig.tiny(image_size=8, camera_embedding=embedding), seed=1).eval()
    with torch.no_grad():
        model.unet.conv_in.weight[:, 8:] = 0  # [noisy 4 ; reference 4 ; rays 6]: the map itself is silenced
    noisy, ref = torch.randn(1, 6, 4, 8, 8), torch.randn(1, 4, 8, 8)
    rays_a, rays_b = torch.randn(1, 6, 6, 8, 8), torch.randn(1, 6, 6, 8, 8) * 2 + 1
    with torch.no_grad():
        a, b = (model(noisy, torch.tensor([500]), ref, r) for r in (rays_a, rays_b))
        none, zero = model(noisy, torch.tensor([500]), ref, None), model(noisy, torch.tensor([500]), ref, 0 * rays_a)
    assert ((a - b).abs().max() > 1e-4) == embedding
    torch.testing.assert_close(none, zero)
    model.save_pretrained(tmp_path / "m")
    back = MVDiffusionModel.from_pretrained(tmp_path / "m")
    assert bool(back.unet.config.time_cond_proj_dim) == embedding
    with pytest.raises(ValueError, match="needs camera_conditioning"):
        MVDiffusionConfig.tiny(camera_embedding=True, camera_conditioning=False)
