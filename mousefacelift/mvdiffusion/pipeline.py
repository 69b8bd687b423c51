"""Sampling: reference image + cameras -> multi-view images; saving and loading (ours and
FaceLift's folder). Quality measures live in :mod:`.quality`, the synthetic-data generator of
notebook 05 in :mod:`.synthetic`.

Folder layouts that :meth:`MVDiffusionPipeline.from_pretrained` reads:

* ours: ``model_index.json``, ``unet/`` (an :class:`MVDiffusionModel`: config.json +
  safetensors), ``scheduler/`` (DDIM), ``vae/`` only for a latent-space model, and
  ``pipeline_mousefacelift.py``: one import naming :class:`MVDiffusionDiffusersPipeline`, the
  custom pipeline class that ``model_index.json`` declares (``"_class_name":
  ["pipeline_mousefacelift", "MVDiffusionDiffusersPipeline"]``), so diffusers' own
  ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads the folder too (it
  runs that file; mousefacelift must be installed). Folders written before that file existed
  (``"_class_name": "MVDiffusionPipeline"``) load through ours;
* FaceLift's (``wlyu/OpenFaceLift`` layout): ``model_index.json`` naming a custom UNet class,
  ``unet/`` (a ``UNet2DConditionModel`` plus custom config keys), ``vae/``, ``scheduler/``,
  ``image_encoder/`` + ``feature_extractor/`` (CLIP, needs ``transformers``), ``image_normalizer/``,
  ``image_noising_scheduler/``, ``tokenizer/``, ``text_encoder/`` (unused: the per-view prompt
  embeddings come precomputed from a file).
"""
from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler,
                       UNet2DConditionModel)
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.utils.torch_utils import randn_tensor

from .. import cameras
from ..configs import bounded, check_ranges
from ..data.samples import resize_views  # re-exported: views and intrinsics resized together
from .model import MVDiffusionModel, relative_ray_map

log = logging.getLogger(__name__)

PIPELINE_CLASS = "MVDiffusionPipeline"  # model_index.json's _class_name in folders saved before the diffusers class
DIFFUSERS_MODULE, DIFFUSERS_CLASS = "pipeline_mousefacelift", "MVDiffusionDiffusersPipeline"
SAMPLERS = ("ddim", "dpm")


# ----------------------------------------------------------------------------------------------
# Image <-> model space
# ----------------------------------------------------------------------------------------------
def composite(images: torch.Tensor, background: torch.Tensor | tuple[float, float, float]) -> torch.Tensor:
    """RGBA images [..., 4, H, W] in [0, 1] -> same shape with RGB composited over ``background``
    (an RGB triple, or a tensor broadcastable to [..., 3, 1, 1]); alpha kept."""
    bg = torch.as_tensor(background, dtype=images.dtype, device=images.device)
    if bg.ndim == 1:
        bg = bg.view(3, 1, 1)
    a = images[..., 3:4, :, :]
    return torch.cat([images[..., :3, :, :] * a + bg * (1 - a), a], dim=-3)


class PixelCodec:
    """Pixel space: RGBA [0, 1] <-> [-1, 1], 4 channels, full resolution (factor 1)."""
    factor = 1
    kind = "pixel"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 4, H, W] in [0, 1] (RGB already composited) -> [N, 4, H, W] in [-1, 1]."""
        return images * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 4, H, W] -> RGBA [N, 4, H, W] in [0, 1]."""
        return ((x + 1) / 2).clamp(0, 1)


class VAECodec:
    """SD-2.1 latent space (FaceLift): RGB -> VAE latent mode x scaling factor. The VAE has no
    alpha: decoded views get alpha = 1 (segment them downstream)."""
    kind = "vae"

    def __init__(self, vae: AutoencoderKL):
        self.vae = vae
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scale = vae.config.scaling_factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 4, H, W] in [0, 1] (RGB composited) -> latents [N, 4, H/f, W/f]."""
        x = images[:, :3].to(self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mode() * self.scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latents [N, 4, h, w] -> RGBA [N, 4, h*f, w*f] in [0, 1] (alpha = 1)."""
        rgb = ((self.vae.decode(z.to(self.vae.dtype) / self.scale).sample + 1) / 2).clamp(0, 1)
        return torch.cat([rgb, torch.ones_like(rgb[:, :1])], dim=1)


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------
@dataclass
class SamplerConfig:
    sampler: str = "ddim"                   # ddim | dpm (DPMSolverMultistepScheduler, fewer steps)
    steps: int = bounded(50, min=1)         # denoising steps
    eta: float = bounded(1.0, min=0)        # DDIM stochasticity (FaceLift: 1.0); ignored by dpm
    guidance_scale: float = bounded(3.0, min=0)  # classifier-free guidance; 1.0 = no unconditional branch
    background: tuple[float, float, float] = bounded((1.0, 1.0, 1.0), min=0, max=1)  # RGB under the reference alpha
    bf16: bool = True                       # CUDA: the UNet under bf16 autocast, the precision it was trained
    #                                         in (notebook 04's precision bf16); the scheduler stays fp32. CPU: fp32

    def __post_init__(self):
        check_ranges(self)
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler {self.sampler!r} is not one of {SAMPLERS}")


@dataclass
class FaceLiftLoadConfig:
    prompt_embeds_path: str = ""            # .pt with FaceLift's per-view prompt embeddings [V, 77, 1024]
    camera_conditioning: bool = False       # add zero-initialised ray-map channels (for fine-tuning)
    attention_mode: str = "sparse"          # FaceLift's default
    num_views: int = bounded(6, min=1)

    def __post_init__(self):
        check_ranges(self)


class MVDiffusionPipeline:
    """model (:class:`MVDiffusionModel`) + scheduler (its training noise schedule) + codec (pixel
    or VAE); optional FaceLift image-embedding parts (image_encoder, image_normalizer,
    image_noising_scheduler) for a UNet with a class embedding."""

    def __init__(self, model: MVDiffusionModel, scheduler, codec=None, image_encoder=None, feature_extractor_config=None,
                 image_normalizer=None, image_noising_scheduler=None):
        self.model = model
        self.scheduler = scheduler
        self.codec = codec or PixelCodec()
        self.image_encoder = image_encoder
        self.feature_extractor_config = feature_extractor_config or {}
        self.image_normalizer = image_normalizer
        self.image_noising_scheduler = image_noising_scheduler

    @property
    def image_size(self) -> int:
        return self.model.config.unet_config["sample_size"] * self.codec.factor

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device=None, dtype=None) -> "MVDiffusionPipeline":
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        for m in (self.model, getattr(self.codec, "vae", None), self.image_encoder, self.image_normalizer):
            if m is not None:
                m.to(**kwargs)
        return self

    # -- conditioning -----------------------------------------------------------------------
    def class_labels(self, reference: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor | None:
        """FaceLift's class label [B, 2E] = [CLIP image embedding ; embedding of noise level 0],
        or None when the UNet has no class embedding. reference [B, 4, H, W] RGBA in [0, 1];
        image_embeds [B, E] skips the CLIP encoder. The unCLIP noising at level 0 is applied without
        random noise (deterministic; its std at level 0 is about 1e-2)."""
        if self.model.unet.class_embedding is None:
            return None
        if image_embeds is None:
            image_embeds = self._clip_embed(reference)
        level = torch.zeros(image_embeds.shape[0], dtype=torch.long, device=image_embeds.device)
        if self.image_normalizer is not None and self.image_noising_scheduler is not None:
            x = self.image_normalizer.scale(image_embeds)
            x = self.image_noising_scheduler.add_noise(x, torch.zeros_like(x), level)
            image_embeds = self.image_normalizer.unscale(x)
        emb = get_timestep_embedding(level, image_embeds.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0)
        return torch.cat([image_embeds, emb.to(image_embeds.dtype)], dim=1)

    def _clip_embed(self, reference: torch.Tensor) -> torch.Tensor:
        if self.image_encoder is None:
            raise ValueError("this UNet needs an image embedding (class_embed_type set) but the pipeline has no "
                             "image_encoder/: pass image_embeds=[B, E] or load a folder with image_encoder/")
        fe = self.feature_extractor_config
        crop = fe.get("crop_size", 224)  # CLIPImageProcessor writes {"height", "width"} or an int
        size = int(crop["height"] if isinstance(crop, dict) else crop)
        mean = torch.tensor(fe.get("image_mean", [0.48145466, 0.4578275, 0.40821073]), device=reference.device)
        std = torch.tensor(fe.get("image_std", [0.26862954, 0.26130258, 0.27577711]), device=reference.device)
        x = F.interpolate(reference[:, :3], size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0, 1) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        return self.image_encoder(x.to(self.image_encoder.dtype)).image_embeds

    # -- sampling -----------------------------------------------------------------------------
    def _sampling_scheduler(self, cfg: SamplerConfig):
        if cfg.sampler == "ddim":
            return DDIMScheduler.from_config(self.scheduler.config)
        return DPMSolverMultistepScheduler.from_config(self.scheduler.config)

    def _conditions(self, reference: torch.Tensor, reference_w2c: torch.Tensor, target_w2c: torch.Tensor,
                    target_K: torch.Tensor, cfg: SamplerConfig, image_embeds: torch.Tensor | None) -> dict:
        """The model's conditions for B objects, in model space, with the unconditional half first when
        ``cfg`` guides: {"reference" [B or 2B, C, h, w], "rays" [B or 2B, V, 6, h, w] or None,
        "labels" [B or 2B, P] or None, "guided"}. Arguments as in :meth:`__call__`."""
        S = self.image_size
        if reference.shape[-2:] != (S, S):
            raise ValueError(f"reference is {tuple(reference.shape[-2:])} but the model works at {S}x{S}: "
                             "resize images and K together with resize_views() first")
        device, dtype = self.device, self.model.dtype
        f = self.codec.factor
        ref = composite(reference.to(device, torch.float32), cfg.background)
        ref_lat = self.codec.encode(ref).to(dtype)
        h, w = ref_lat.shape[-2:]
        rays = None
        if self.model.config.camera_channels:
            K_lat = cameras.scale_intrinsics(target_K.to(device, torch.float64), 1 / f, 1 / f)
            rays = relative_ray_map(target_w2c.to(device, torch.float64), K_lat,
                                    reference_w2c.to(device, torch.float64), h, w).to(dtype)
        labels = self.class_labels(ref, image_embeds)
        guided = cfg.guidance_scale != 1.0
        if guided:  # unconditional branch first: zero reference, camera and class label
            ref_lat = torch.cat([torch.zeros_like(ref_lat), ref_lat])
            rays = None if rays is None else torch.cat([torch.zeros_like(rays), rays])
            labels = None if labels is None else torch.cat([torch.zeros_like(labels), labels])
        return {"reference": ref_lat, "rays": rays, "labels": labels, "guided": guided}

    def _predict(self, x: torch.Tensor, t, cond: dict, cfg: SamplerConfig) -> torch.Tensor:
        """The (guided) model prediction for x [B, V, C, h, w] at timestep t, in x's dtype."""
        xin = torch.cat([x, x]) if cond["guided"] else x
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and self.device.type == "cuda"):
            pred = self.model(xin, t, cond["reference"], cond["rays"], cond["labels"]).to(x.dtype)
        if cond["guided"]:
            uncond, c = pred.chunk(2)
            pred = uncond + cfg.guidance_scale * (c - uncond)
        return pred

    def _initial_noise(self, B: int, V: int, generator, sigma: float = 1.0) -> torch.Tensor:
        """x_T [B, V, C, h, w]: one generator per object keeps each object's result batch-independent."""
        C, h = self.model.config.image_channels, self.image_size // self.codec.factor
        x = randn_tensor((B, V * C, h, h), generator=generator, device=self.device, dtype=self.model.dtype)
        return x.view(B, V, C, h, h) * sigma

    @torch.no_grad()
    def __call__(self, reference: torch.Tensor, reference_w2c: torch.Tensor, target_w2c: torch.Tensor,
                 target_K: torch.Tensor, config: SamplerConfig | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Generate the target views of B objects.

        reference [B, 4, S, S] RGBA in [0, 1] at S = ``self.image_size`` (use :func:`resize_views`);
        reference_w2c [B, 4, 4]; target_w2c [B, V, 4, 4] and target_K [B, V, 3, 3] (for S x S
        images), OpenCV, normalized world. View ``model.config.reference_view`` of the targets should
        be the reference camera (as in training). generator: one, or one per object.
        -> views [B, V, 4, S, S] RGBA in [0, 1] (RGB over ``config.background``).
        """
        cfg = config or SamplerConfig()
        B, V = target_w2c.shape[:2]
        cond = self._conditions(reference, reference_w2c, target_w2c, target_K, cfg, image_embeds)
        sched = self._sampling_scheduler(cfg)
        sched.set_timesteps(cfg.steps, device=self.device)
        x = self._initial_noise(B, V, generator, sched.init_noise_sigma)
        C, h = x.shape[2], x.shape[3]
        step_gen = [g for g in generator for _ in range(V)] if isinstance(generator, list) else generator
        for t in sched.timesteps:
            pred = self._predict(sched.scale_model_input(x, t), t, cond, cfg)
            kwargs = {"eta": cfg.eta} if cfg.sampler == "ddim" else {}
            x = sched.step(pred.flatten(0, 1), t, x.flatten(0, 1), generator=step_gen, **kwargs
                           ).prev_sample.view(B, V, C, h, h)
        return self.codec.decode(x.flatten(0, 1).float()).view(B, V, 4, self.image_size, self.image_size)

    @torch.no_grad()
    def mean_from_noise(self, reference: torch.Tensor, reference_w2c: torch.Tensor, target_w2c: torch.Tensor,
                        target_K: torch.Tensor, config: SamplerConfig | None = None,
                        generator: torch.Generator | list[torch.Generator] | None = None,
                        image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """What the model expects each view to be before anything is sampled: its clean-image estimate
        from pure noise at the last training timestep, one (guided) call. Trained by mean squared
        error, this estimates the mean of the views given the reference and cameras, so it shows
        what the model learnt of the rig apart from the spread of its samples (a pose it is unsure of
        averages to a blur here, while a sample draws one pose). Arguments and output as in
        :meth:`__call__` (``config``: guidance, precision, background; its sampler and steps are not
        used; guidance 1 gives the conditional mean itself). v-prediction models only: for epsilon
        prediction the estimate divides by the signal level at that timestep, close to 0."""
        cfg = config or SamplerConfig()
        kind = self.scheduler.config.prediction_type
        if kind != "v_prediction":
            raise ValueError(f"mean_from_noise needs a v-prediction model (this one predicts {kind!r}): from pure "
                             "noise an epsilon model's clean-image estimate divides by a signal level near 0")
        B, V = target_w2c.shape[:2]
        cond = self._conditions(reference, reference_w2c, target_w2c, target_K, cfg, image_embeds)
        t = self.scheduler.config.num_train_timesteps - 1
        x = self._initial_noise(B, V, generator)
        a = self.scheduler.alphas_cumprod[t].to(self.device, torch.float32)
        v = self._predict(x, torch.tensor(t, device=self.device), cond, cfg)
        x0 = a.sqrt() * x.float() - (1 - a).sqrt() * v.float()   # v = sqrt(a) eps - sqrt(1 - a) x0
        return self.codec.decode(x0.flatten(0, 1)).view(B, V, 4, self.image_size, self.image_size)

    # -- saving and loading ---------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write our layout (model_index.json, unet/, scheduler/, vae/ for a latent model)."""
        import diffusers

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder / "unet")
        DDIMScheduler.from_config(self.scheduler.config).save_pretrained(folder / "scheduler")
        index = {"_class_name": [DIFFUSERS_MODULE, DIFFUSERS_CLASS], "_diffusers_version": diffusers.__version__,
                 "codec": self.codec.kind,
                 "unet": ["mousefacelift.mvdiffusion.model", "MVDiffusionModel"],
                 "scheduler": ["diffusers", "DDIMScheduler"], "vae": [None, None]}
        (folder / f"{DIFFUSERS_MODULE}.py").write_text(
            "# The pipeline class of this folder for diffusers' DiffusionPipeline.from_pretrained (written by\n"
            "# mousefacelift's MVDiffusionPipeline.save_pretrained; needs mousefacelift installed).\n"
            f"from mousefacelift.mvdiffusion.pipeline import {DIFFUSERS_CLASS}  # noqa: F401\n")
        if self.codec.kind == "vae":
            self.codec.vae.save_pretrained(folder / "vae")
            index["vae"] = ["diffusers", "AutoencoderKL"]
        if self.image_encoder is not None or self.image_normalizer is not None:
            log.warning("save_pretrained: the CLIP image-embedding parts are not re-saved; keep FaceLift's folder")
        (folder / "model_index.json").write_text(json.dumps(index, indent=1))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, facelift: FaceLiftLoadConfig | None = None
                        ) -> "MVDiffusionPipeline":
        """Load our layout, or FaceLift's (detected from model_index.json; ``facelift`` options)."""
        folder = Path(folder)
        index_path = folder / "model_index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"{index_path} not found: pass the pipeline folder written by notebook 04 "
                                    "(runs/<run>/mvdiffusion/pipeline) or FaceLift's mvdiffusion folder")
        index = json.loads(index_path.read_text())
        if index.get("_class_name") not in (PIPELINE_CLASS, [DIFFUSERS_MODULE, DIFFUSERS_CLASS]):
            return load_facelift(folder, facelift or FaceLiftLoadConfig())
        model = MVDiffusionModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False)
        scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
        codec = VAECodec(AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False)) \
            if index.get("codec") == "vae" else PixelCodec()
        return cls(model, scheduler, codec)


class MVDiffusionDiffusersPipeline(DiffusionPipeline):
    """Our pipeline as a diffusers ``DiffusionPipeline``, which is what
    ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` returns for a folder that
    :meth:`MVDiffusionPipeline.save_pretrained` wrote: components ``unet`` (:class:`MVDiffusionModel`),
    ``scheduler`` and ``vae`` (None for a pixel-space model). Calling it samples exactly as
    :class:`MVDiffusionPipeline` does (same arguments, same result)."""

    _optional_components = ["vae"]

    def __init__(self, unet: MVDiffusionModel, scheduler, vae: AutoencoderKL | None = None, codec: str = "pixel"):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(codec=codec)

    def mvdiffusion(self) -> MVDiffusionPipeline:
        """The same components as our :class:`MVDiffusionPipeline` (shared, not copied)."""
        return MVDiffusionPipeline(self.unet, self.scheduler, VAECodec(self.vae) if self.vae is not None else None)

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        """See :meth:`MVDiffusionPipeline.__call__`: views [B, V, 4, S, S] RGBA in [0, 1]."""
        return self.mvdiffusion()(*args, **kwargs)


# ----------------------------------------------------------------------------------------------
# FaceLift's folder
# ----------------------------------------------------------------------------------------------
def load_unet_lenient_config(unet_dir: Path) -> UNet2DConditionModel:
    """A custom-class UNet folder (e.g. FaceLift's UNetMV2DConditionModel) as a stock
    UNet2DConditionModel: config keys our class does not take are dropped (logged), weights strict."""
    config = json.loads((unet_dir / "config.json").read_text())
    accepted = set(inspect.signature(UNet2DConditionModel.__init__).parameters) - {"self"}
    ignored = sorted(k for k in config if k not in accepted and not k.startswith("_"))
    if ignored:
        log.info("%s: ignoring config keys of %s: %s", unet_dir, config.get("_class_name"), ignored)
    unet = UNet2DConditionModel.from_config({k: v for k, v in config.items() if k in accepted})
    st, pt = unet_dir / "diffusion_pytorch_model.safetensors", unet_dir / "diffusion_pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file
        state = load_file(str(st))
    elif pt.is_file():
        state = torch.load(pt, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{unet_dir}: no diffusion_pytorch_model.safetensors or .bin")
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{unet_dir}: weights do not match UNet2DConditionModel: missing {missing[:10]} "
                         f"({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)}); is this a FaceLift "
                         "MVDiffusion unet/ folder?")
    return unet


def load_facelift(folder: Path, options: FaceLiftLoadConfig) -> MVDiffusionPipeline:
    """FaceLift's pipeline folder -> :class:`MVDiffusionPipeline` (latent space, prompt embeddings)."""
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    unet = load_unet_lenient_config(folder / "unet")
    if not options.prompt_embeds_path:
        raise ValueError(f"{folder}: FaceLift's UNet needs its per-view prompt embeddings [V, 77, "
                         f"{unet.config.cross_attention_dim}]: set prompt_embeds_path (a .pt file)")
    embeds = torch.load(options.prompt_embeds_path, map_location="cpu", weights_only=True)
    if embeds.ndim != 3 or embeds.shape[0] != options.num_views or embeds.shape[-1] != unet.config.cross_attention_dim:
        raise ValueError(f"{options.prompt_embeds_path}: prompt embeddings {tuple(embeds.shape)} do not match "
                         f"[{options.num_views}, 77, {unet.config.cross_attention_dim}] (wrong text encoder width?)")
    latent_channels = unet.config.out_channels
    model = MVDiffusionModel.from_unet(unet, image_channels=latent_channels,
                                       camera_channels=6 if options.camera_conditioning else 0,
                                       num_views=options.num_views, attention_mode=options.attention_mode,
                                       context="prompt_embeds", context_tensor=embeds.float())
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    vae = AutoencoderKL.from_pretrained(folder / "vae", low_cpu_mem_usage=False)
    normalizer = noising = encoder = None
    fe_config = {}
    if (folder / "image_normalizer").is_dir():
        normalizer = StableUnCLIPImageNormalizer.from_pretrained(folder / "image_normalizer", low_cpu_mem_usage=False)
    if (folder / "image_noising_scheduler").is_dir():
        noising = DDPMScheduler.from_pretrained(folder / "image_noising_scheduler")
    if (folder / "image_encoder").is_dir():
        try:
            from transformers import CLIPVisionModelWithProjection
        except ImportError:
            log.warning("%s: image_encoder/ needs `transformers` (not installed): pass image_embeds to the "
                        "pipeline or `pip install transformers`", folder)
        else:
            encoder = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder")
    fe_file = folder / "feature_extractor" / "preprocessor_config.json"
    if fe_file.is_file():
        fe_config = json.loads(fe_file.read_text())
    return MVDiffusionPipeline(model, scheduler, VAECodec(vae), encoder, fe_config, normalizer, noising)


__all__ = ["MVDiffusionPipeline", "SamplerConfig", "FaceLiftLoadConfig", "PixelCodec", "VAECodec", "composite",
           "resize_views", "load_unet_lenient_config", "load_facelift"]
