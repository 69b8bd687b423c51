"""Training of the multi-view diffusion model (notebook 04).

One step, for a batch of B objects of V views each (views of an object contiguous):
  1. augment: per-object brightness/contrast and a random background colour (white/black/gray)
     composited under alpha, the same for every view of the object and its reference;
  2. encode targets (pixel space: RGBA in [-1, 1]); the reference = view ``reference_view`` (fixed:
     a random reference view made FaceLift collapse; ``random_reference`` swaps a random view of each
     object into that slot, so the model must read the cameras instead of the slot order);
  3. ray maps of every view relative to the reference camera, at model resolution;
  4. condition dropout for classifier-free guidance (5% each: reference dropped, camera/class
     dropped, both dropped);
  5. one timestep per object, noise, v- or epsilon-target, min-SNR-weighted MSE (gamma 5), over every
     view or, without ``loss_on_reference``, over the generated views only;
  6. AdamW + warmup/cosine, grad clip, EMA (diffusers ``EMAModel``).

The training split is decoded once at the model's resolution and kept on the device
(:class:`~mousefacelift.data.resident.ResidentSplit`); batch indices, augmentation, dropout and noise
are drawn on the device from generators keyed by (seed, step, rank, stream)
(:func:`~mousefacelift.training.keyed_generator`), and the loop reads nothing back from the device
except at logging steps, so the GPU never waits for the host. Checkpoints hold model, EMA,
optimizer, LR scheduler and step, written atomically, so a resumed run reproduces the
uninterrupted one exactly. Runs single-process, or under ``torchrun`` (DDP) when WORLD_SIZE > 1:

    torchrun --nproc_per_node 8 -m mousefacelift.mvdiffusion.train --config train.json

From a notebook: :func:`mousefacelift.launch.launch` (in process, or torchrun with the log streamed).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

from .. import cameras, launch, training
from ..configs import bounded
from ..data.resident import ResidentSplit
from ..data.samples import SampleDataset
from ..stage import warn_schedule_change
from ..tracking import Tracker
from ..training import (RunConfig, clear_checkpoints, configure_backends, keyed_generator, load_latest_checkpoint,
                        resolve_device, save_checkpoint, time_is_up)
from .model import MVDiffusionConfig, MVDiffusionModel, relative_ray_map
from .pipeline import FaceLiftLoadConfig, MVDiffusionPipeline, PixelCodec, SamplerConfig, composite, resize_views
from .quality import evaluate, validation_grid

log = logging.getLogger(__name__)

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}
PREDICTION_TYPES = ("v_prediction", "epsilon")


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """MVDiffusion's run: the shared settings of RunConfig (``out_dir`` holds checkpoints/, pipeline/,
    val/; ``init_from`` is a pipeline folder, ours or FaceLift's, to fine-tune) and its own below."""
    data_root: str = ""                     # folder that the split files' sample paths are relative to
    train_split: str = ""                   # split file of training samples
    val_split: str = ""                     # split file for validation; empty = no validation
    model: MVDiffusionConfig = field(default_factory=MVDiffusionConfig)  # from-scratch architecture
    facelift: FaceLiftLoadConfig = field(default_factory=lambda: FaceLiftLoadConfig(camera_conditioning=True))
    views: list[int] | None = None          # view positions to use from each sample (model.reference_view
                                            # indexes this list); None = all
    steps: int = bounded(3000, min=1)       # optimizer steps in total
    batch_size: int = bounded(8, min=1)     # objects per step per process
    lr: float = bounded(2e-4, gt=0)         # peak AdamW learning rate (FaceLift mouse fine-tune: 5e-5)
    weight_decay: float = bounded(0.01, min=0)  # AdamW weight decay
    warmup_steps: int = bounded(100, min=0)  # linear warmup, then cosine decay to 0
    grad_clip: float = bounded(1.0, gt=0)   # max gradient norm
    prediction_type: str = "v_prediction"   # v_prediction | epsilon (from-scratch; init_from keeps its own)
    beta_schedule: str = "squaredcos_cap_v2"  # noise schedule (pixel space: cosine)
    num_train_timesteps: int = bounded(1000, min=1)  # diffusion steps of the noise schedule
    snr_gamma: float = bounded(5.0, min=0)  # min-SNR weighting; 0 = plain MSE
    use_ema: bool = True                    # keep an EMA of the weights (validation and export use it)
    ema_decay: float = bounded(0.999, min=0, max=1)  # EMA decay ceiling
    drop_reference: float = bounded(0.05, min=0, max=1)  # P(reference image dropped)
    drop_camera: float = bounded(0.05, min=0, max=1)  # P(camera ray map and class label dropped)
    drop_both: float = bounded(0.05, min=0, max=1)  # P(both dropped)
    loss_on_reference: bool = True          # False: the loss leaves out the reference view (a copy of the input)
    random_reference: bool = False          # a random view of each object takes the reference slot (learned or
    #                                         zero context only: FaceLift's prompts tie each slot to a camera)
    brightness: float = bounded(0.1, min=0)  # +- additive brightness jitter (per object)
    contrast: float = bounded(0.1, min=0, max=1)  # +- relative contrast jitter (per object)
    backgrounds: tuple[str, ...] = ("white", "black", "gray")  # random background colours
    num_workers: int = bounded(0, min=0)    # threads decoding the training split once (0: 8)
    compile: bool = False                   # torch.compile the model (CUDA: ~2 min of compiling, then faster steps)
    channels_last: bool = False             # NHWC weights and activations, so cuDNN's convolutions need no layout
    #                                         conversions around them (`mfl bench --only mvdiffusion_trainer` compares)
    keep_last: int = bounded(2, min=0)      # newest checkpoints kept in out_dir/checkpoints (0 = all)
    val_every: int = bounded(500, min=1)    # steps between validations (and at the end)
    val_objects: int = bounded(4, min=1)    # validation objects
    val_sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=25))

    def __post_init__(self):
        super().__post_init__()
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        unknown = set(self.backgrounds) - set(BACKGROUNDS)
        if unknown:
            raise ValueError(f"unknown backgrounds {sorted(unknown)}; choose from {sorted(BACKGROUNDS)}")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.out_dir) / "checkpoints"


def config_from_dict(d: dict) -> TrainConfig:
    """Nested dict (e.g. from JSON/YAML) -> TrainConfig, checked (:meth:`RunConfig.from_dict`)."""
    return TrainConfig.from_dict(d)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
def _generator(seed: int, step: int, rank: int, stream: int, device: torch.device) -> torch.Generator:
    """The generator of one random stream of one step of one process, on ``device``."""
    return keyed_generator(seed, step, rank, stream, device=device)


def batch_indices(n: int, batch_size: int, seed: int, step: int, rank: int, device: torch.device) -> torch.Tensor:
    """The training objects of one step of one process: [batch_size] long on ``device``, drawn
    with replacement from (seed, step, rank) only."""
    return torch.randint(n, (batch_size,), generator=_generator(seed, step, rank, 0, device), device=device)


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights [B] for timesteps t [B] (Hang et al. 2023); alphas_cumprod on t's device."""
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    if gamma <= 0:
        return torch.ones_like(snr)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def augment(images: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """images [B, V, 4, S, S] RGBA -> brightness/contrast-jittered RGB composited over a random
    background per object (alpha kept)."""
    B = images.shape[0]
    dev = images.device
    c = (1 + (torch.rand(B, generator=g, device=dev) * 2 - 1) * cfg.contrast).view(B, 1, 1, 1, 1)
    b = ((torch.rand(B, generator=g, device=dev) * 2 - 1) * cfg.brightness).view(B, 1, 1, 1, 1)
    rgb = ((images[:, :, :3] - 0.5) * c + 0.5 + b).clamp(0, 1)
    choice = torch.randint(len(cfg.backgrounds), (B,), generator=g, device=dev)
    palette = torch.tensor([BACKGROUNDS[name] for name in cfg.backgrounds], dtype=images.dtype, device=dev)
    bg = palette[choice]
    return composite(torch.cat([rgb, images[:, :, 3:]], dim=2), bg.view(B, 1, 3, 1, 1))


def swap_reference(images: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor, reference_view: int,
                   g: torch.Generator, context_mode: str = "learned") -> tuple[torch.Tensor, ...]:
    """Per object, a view drawn with ``g`` trades places with the view in slot ``reference_view``.
    images [B, V, C, S, S], w2c [B, V, 4, 4], K [B, V, 3, 3] -> the same, reordered alike. Refused for
    FaceLift's per-view prompt context, which ties each slot to one camera of its rig."""
    if context_mode == "prompt_embeds":
        raise ValueError("random_reference needs a model whose views are told apart by their ray maps (context "
                         "'learned' or 'zero'); FaceLift's prompt embeddings tie each slot to one camera")
    B, V = images.shape[:2]
    r = torch.randint(V, (B,), generator=g, device=images.device)
    order = torch.arange(V, device=images.device).repeat(B, 1)                   # [B, V]
    order[torch.arange(B, device=images.device), r] = reference_view
    order[:, reference_view] = r

    def take(x):
        return torch.gather(x, 1, order.view(B, V, *[1] * (x.dim() - 2)).expand_as(x))
    return take(images), take(w2c), take(K)


def training_loss(model, pipe: MVDiffusionPipeline, noise_sched: DDPMScheduler, batch: dict, cfg: TrainConfig,
                  step: int, rank: int) -> torch.Tensor:
    """The loss of one step (a 0-d tensor on the model's device; nothing is read back to the host).
    batch: images [B, V, 4, H, W], w2c [B, V, 4, 4], K [B, V, 3, 3]."""
    dev = next(model.parameters()).device
    g_aug, g_noise, g_drop = (_generator(cfg.seed, step, rank, s, dev) for s in (1, 2, 3))
    ref_v = pipe.model.config.reference_view
    S = pipe.image_size
    # 1. augmentation at model resolution
    images, K = resize_views(batch["images"].to(dev), batch["K"].to(dev, torch.float64), S)
    w2c = batch["w2c"].to(dev, torch.float64)
    if cfg.random_reference:
        images, w2c, K = swap_reference(images, w2c, K, ref_v, _generator(cfg.seed, step, rank, 4, dev),
                                        pipe.model.config.context_mode)
    images = augment(images, cfg, g_aug)
    B, V = images.shape[:2]
    # 2. encode targets and reference
    with torch.no_grad():
        x0 = pipe.codec.encode(images.flatten(0, 1)).unflatten(0, (B, V))
        labels = pipe.class_labels(images[:, ref_v], None) if pipe.model.unet.class_embedding is not None else None
    ref = x0[:, ref_v]
    h, w = x0.shape[-2:]
    # 3. ray maps relative to the reference camera
    rays = None
    if pipe.model.config.camera_channels:
        K_lat = cameras.scale_intrinsics(K, 1 / pipe.codec.factor, 1 / pipe.codec.factor)
        rays = relative_ray_map(w2c, K_lat, w2c[:, ref_v], h, w).to(x0.dtype)
    # 4. condition dropout: u < p_ref -> reference; next p_cam -> camera; next p_both -> both
    u = torch.rand(B, generator=g_drop, device=dev)
    p1, p2, p3 = cfg.drop_reference, cfg.drop_reference + cfg.drop_camera, \
        cfg.drop_reference + cfg.drop_camera + cfg.drop_both
    keep_ref = ~((u < p1) | ((u >= p2) & (u < p3)))
    keep_cam = ~((u >= p1) & (u < p3))
    ref = ref * keep_ref.view(B, 1, 1, 1).to(ref.dtype)
    if rays is not None:
        rays = rays * keep_cam.view(B, 1, 1, 1, 1).to(rays.dtype)
    if labels is not None:
        labels = labels * keep_cam.view(B, 1).to(labels.dtype)
    # 5. noise one timestep per object, predict, min-SNR-weighted MSE
    t = torch.randint(noise_sched.config.num_train_timesteps, (B,), generator=g_noise, device=dev)
    noise = torch.randn(x0.shape, generator=g_noise, device=dev, dtype=x0.dtype)
    t_views = t.repeat_interleave(V)
    noisy = noise_sched.add_noise(x0.flatten(0, 1), noise.flatten(0, 1), t_views).unflatten(0, (B, V))
    if noise_sched.config.prediction_type == "v_prediction":
        target = noise_sched.get_velocity(x0.flatten(0, 1), noise.flatten(0, 1), t_views).unflatten(0, (B, V))
    else:
        target = noise
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16(dev)):
        pred = model(noisy, t, ref, rays, labels)
    if cfg.loss_on_reference:
        per_object = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3, 4))
    else:
        gen = [v for v in range(V) if v != ref_v]
        per_object = F.mse_loss(pred[:, gen].float(), target[:, gen].float(), reduction="none").mean(dim=(1, 2, 3, 4))
    weight = min_snr_weight(noise_sched.alphas_cumprod, t, cfg.snr_gamma, noise_sched.config.prediction_type)
    return (per_object * weight).mean()


def build_pipeline(cfg: TrainConfig) -> MVDiffusionPipeline:
    """The pipeline to train: loaded from ``init_from`` or built from ``cfg.model`` (seeded)."""
    if cfg.init_from:
        pipe = MVDiffusionPipeline.from_pretrained(cfg.init_from, cfg.facelift)
        if pipe.scheduler.config.prediction_type != cfg.prediction_type:
            log.warning("init_from %s was trained with %s; keeping it (TrainConfig.prediction_type=%s ignored)",
                        cfg.init_from, pipe.scheduler.config.prediction_type, cfg.prediction_type)
        return pipe
    model = MVDiffusionModel.from_dataclass(cfg.model, seed=cfg.seed)
    sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                          prediction_type=cfg.prediction_type, clip_sample=False)
    return MVDiffusionPipeline(model, sched, PixelCodec())


# Checkpoints: <out_dir>/checkpoints/ckpt_{step:016d}.pt (cfg.checkpoint_dir), named, written and
# read by mousefacelift.training
def latest_checkpoint(out_dir: Path) -> Path | None:
    return training.latest_checkpoint(Path(out_dir) / "checkpoints")


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
def _validate(pipe, ema, cfg: TrainConfig, val_set, out_dir: Path, step: int) -> dict:
    import cv2

    params = list(pipe.model.parameters())
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    pipe.model.eval()
    res = evaluate(pipe, val_set, cfg.val_sampler, cfg.seed, cfg.val_objects)
    pipe.model.train()
    if ema is not None:
        ema.restore(params)
    (out_dir / "val").mkdir(parents=True, exist_ok=True)
    paths = []
    for j, (ref, gen, gt) in enumerate(res["samples"]):
        p = out_dir / "val" / f"step_{step:08d}_obj{j:02d}.png"
        cv2.imwrite(str(p), validation_grid(ref, gen, gt)[..., ::-1])
        paths.append(str(p))
    log.info("step %d: validation PSNR_fg %.2f dB, mask IoU %.3f over %d objects; copy score: %.0f%% of views closer "
             "to the reference mask (IoU %.3f vs own %.3f; copying the reference scores %.3f)", step, res["psnr_fg"],
             res["mask_iou"], res["n_objects"], 100 * res["copy_fraction"], res["copy_mask_iou"], res["mask_iou"],
             res["reference_mask_iou"])
    return {"step": step, "grids": paths, **{k: res[k] for k in VAL_KEYS}}


VAL_KEYS = ("psnr_fg", "mask_iou", "copy_fraction", "copy_margin_iou", "copy_psnr_fg", "copy_mask_iou",
            "reference_psnr_fg", "reference_mask_iou")  # per validation: logged as val_<key>, kept in the summary


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) and export ``<out_dir>/pipeline`` with the EMA weights.
    -> {"losses": {step: loss} of the steps run in this call, "val": [...], "pipeline_dir", "step"}."""
    world, rank, local = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    device = resolve_device(cfg.device, local if "LOCAL_RANK" in os.environ else None)
    configure_backends(cfg, device)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    out_dir = Path(cfg.out_dir)
    # 1. model, noise schedule, optimizer, EMA
    pipe = build_pipeline(cfg)
    pipe.to(device)
    if cfg.channels_last:  # the parameters change layout in place: optimizer, EMA and checkpoints follow
        pipe.model.to(memory_format=torch.channels_last)
    pipe.model.train()
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    noise_sched.alphas_cumprod = noise_sched.alphas_cumprod.to(device)
    params = [p for p in pipe.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")
    lr_sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    ema = EMAModel(params, decay=cfg.ema_decay, foreach=True) if cfg.use_ema else None
    # 2. resume
    step = 0
    if not cfg.resume and rank == 0:
        clear_checkpoints(cfg.checkpoint_dir)
    found = load_latest_checkpoint(cfg.checkpoint_dir) if cfg.resume else None  # weights_only
    if found is not None:
        ckpt, state = found
        pipe.model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
            ema.to(device)
        step = state["step"]
        log.info("resumed from %s at step %d", ckpt, step)
        warn_schedule_change(ckpt, step, state.get("config") or {}, asdict(cfg),
                             ("steps", "warmup_steps", "lr"), log)
    model = pipe.model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    tracker = Tracker.create(cfg.tracking, out_dir, name="04_mvdiffusion", params=asdict(cfg), rank=rank)
    tracker.truncate_after(step)
    # 3. data
    train_set = ResidentSplit.load(cfg.data_root, cfg.train_split, pipe.image_size, cfg.views, device,
                                   workers=cfg.num_workers or 8)
    val_set = SampleDataset(cfg.data_root, cfg.val_split, cfg.views) if cfg.val_split else None
    if val_set is not None and len(val_set) == 0:
        raise ValueError(f"validation split {cfg.val_split} lists no samples: extract more frames (notebook 01's "
                         "n_samples / synthetic_frames) or set val_split to '' to train without validation")
    # 4. loop: losses stay on the device until a logging step reads them all at once
    end = min(cfg.steps, cfg.stop_at_step) if cfg.stop_at_step else cfg.steps
    losses, pending, vals, t0 = {}, {}, [], time.time()
    marks = [(step, time.perf_counter())]  # (step, time) at logging steps, where the host waits for the device
    timed_out = False
    while step < end and not timed_out:
        batch = train_set.batch(batch_indices(len(train_set), cfg.batch_size, cfg.seed, step, rank, device))
        loss = training_loss(model, pipe, noise_sched, batch, cfg, step, rank)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        lr_sched.step()
        if ema is not None:
            ema.step(params)
        step += 1
        pending[step] = loss.detach()
        if step % cfg.log_every == 0 or step == end:
            losses.update(zip(pending, torch.stack(list(pending.values())).tolist()))
            pending.clear()
            marks.append((step, time.perf_counter()))
            tracker.log({"loss": losses[step], "lr": lr_sched.get_last_lr()[0], "grad_norm": grad_norm.item(),
                         "sec_per_step": (time.time() - t0) / len(losses)}, step=step)
            timed_out = time_is_up(t0, cfg.time_limit_s, world > 1)
            if timed_out:
                log.warning("time limit of %.0f s reached at step %d of %d: stopping here and exporting (the learning "
                            "rate had not decayed to its end)", cfg.time_limit_s, step, cfg.steps)
        if rank == 0 and (step % cfg.checkpoint_every == 0 or step == end or timed_out):
            save_checkpoint(cfg.checkpoint_dir, step, {
                "model": pipe.model.state_dict(), "ema": ema.state_dict() if ema else None,
                "optimizer": opt.state_dict(), "lr_scheduler": lr_sched.state_dict(), "step": step,
                "config": asdict(cfg)}, cfg.keep_last)
        if rank == 0 and val_set is not None and (step % cfg.val_every == 0 or step == cfg.steps or timed_out):
            vals.append(_validate(pipe, ema, cfg, val_set, out_dir, step))
            tracker.log({f"val_{k}": vals[-1][k] for k in VAL_KEYS}, step=step)
    # 5. export with the EMA weights
    pipeline_dir = out_dir / "pipeline"
    if rank == 0 and (step >= cfg.steps or timed_out):
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        pipe.save_pretrained(pipeline_dir)
        if ema is not None:
            ema.restore(params)
    tracker.finish()
    if world > 1:
        torch.distributed.destroy_process_group()
    return {"step": step, "world_size": world, "losses": losses, "val": vals, "pipeline_dir": str(pipeline_dir), "stopped_at_time_limit": timed_out,
            "seconds": time.time() - t0, "step_seconds_median": _steady_step_seconds(marks)}


def _steady_step_seconds(marks: list[tuple[int, float]]) -> float | None:
    """Median seconds per step between logging marks [(step, time)], leaving out the first interval
    (compilation, cuDNN autotuning; the median also discounts the few that held a validation or a
    checkpoint); None when fewer than two intervals were timed."""
    rates = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(marks[1:-1], marks[2:]) if s1 > s0]
    return sorted(rates)[len(rates) // 2] if rates else None


def main(argv: list[str] | None = None) -> int:
    """``python -m mousefacelift.mvdiffusion.train --config train.json`` (alone or under torchrun)."""
    return launch.main(TrainConfig, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
