"""GS-LRM training: FaceLift's recipe, exact resume, DDP under torchrun, single process otherwise.

    python -m mousefacelift.gslrm.train --config cfg.json                 # one process
    torchrun --nproc_per_node 4 -m mousefacelift.gslrm.train --config cfg.json   # DDP

or in process: ``train(TrainConfig(...)) -> summary dict``; from a notebook through
:func:`mousefacelift.launch.launch`. The JSON holds the fields of :class:`TrainConfig` (the run
settings of :class:`mousefacelift.training.RunConfig`, nested ``model``, ``loss``, ``data``,
``tracking``); unknown keys are errors.

Recipe: AdamW (0.9, 0.95), weight decay on matrices only, cosine schedule with linear warm-up,
grad clip; a step is skipped when the pre-clip grad norm exceeds ``skip_factor * grad_clip`` or
is not finite (both counted; the applied-step ratio is logged and a warning is raised below 90%).
Checkpoints ``ckpt_{step:016d}.pt`` (FaceLift's layout + our config + RNG states) are written
atomically into ``out_dir``; the last ``keep_last`` are kept; a run resumes from the latest
readable one, loaded with weights_only (:mod:`mousefacelift.training`).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import evaluation
from ..gaussians import warm_up_gsplat
from .. import launch
from ..configs import bounded
from ..stage import warn_schedule_change
from ..tracking import Tracker
from ..training import (RunConfig, clear_checkpoints, configure_backends, latest_checkpoint, load_latest_checkpoint,
                        resolve_device, rng_state, save_checkpoint, set_rng_state, time_is_up)
from ..data.samples import read_split
from ..data.resident import ResidentSplit
from .data import DataConfig, GSLRMDataset, StepBatchSampler, collate, prepare_rgba, resident_batch
from .losses import GSLRMLoss, LossConfig
from .model import GSLRM, GSLRMConfig, load_model_state, read_checkpoint

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    """GS-LRM's run: the shared settings of RunConfig (``out_dir`` holds the checkpoints, FaceLift's
    layout; ``init_from`` is a checkpoint file, e.g. FaceLift's, loaded strictly; ``precision``
    "bf16" by default) and its own below."""
    data_root: str                         # sample folders; split paths are relative to it
    train_split: str                       # split file (one sample folder per line)
    val_split: str = ""                    # "" = no validation during training
    val_data_root: str = ""                # root of val_split's sample folders ("" = data_root)
    model: GSLRMConfig = field(default_factory=GSLRMConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = bounded(10000, min=1)     # length of the schedule (forward/backward passes)
    batch_size: int = bounded(4, min=1)    # samples per process and step
    lr: float = bounded(1e-4, gt=0)
    betas: tuple[float, float] = bounded((0.9, 0.95), min=0, lt=1)
    weight_decay: float = bounded(0.05, min=0)  # on parameters with ndim >= 2 only
    warmup_steps: int = bounded(500, min=0)  # linear warm-up, then cosine to min_lr_ratio * lr
    min_lr_ratio: float = bounded(0.0, min=0, max=1)
    grad_clip: float = bounded(1.0, gt=0)
    skip_factor: float = bounded(20.0, gt=0)  # skip the update when pre-clip grad norm > skip_factor * grad_clip
    val_every: int = bounded(1000, min=0)  # 0 = validate only at the end (when val_split is set)
    val_max_samples: int = bounded(8, min=0)  # 0 = the whole validation split
    score_size: int = bounded(0, min=0)    # validation scored at this side (px; 0: the model's size), as EvalConfig's
    precision: str = "bf16"                # bf16 autocast of the transformer on CUDA (always fp32 on CPU) | fp32
    num_workers: int = bounded(0, min=0)   # DataLoader workers per process (threads decoding the split when resident)
    resident_data: bool = False            # decode the training split once at the model's size and build batches on
    #                                        the training device (same keyed draws as the DataLoader path; memory
    #                                        N x V x 4 x S^2 x 4 bytes: 1300 samples at 256 px = 8 GB)
    overfit_samples: int = bounded(0, min=0)  # > 0: train on the first N samples only, no augmentation
    progress_bar: bool = True              # tqdm on rank 0


# ----------------------------------------------------------------------------------------------
# Distributed setup, optimizer, schedule
# ----------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def setup_distributed(device_knob: str) -> tuple[DistInfo, torch.device]:
    """Init the process group when launched by torchrun (RANK/WORLD_SIZE set), pick the device."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
        device = resolve_device(device_knob, info.local_rank)
        use_cuda = device.type == "cuda"
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:  # gsplat builds its CUDA extension on first use (serialised machine-wide) before training
            warm_up_gsplat(device)
        return info, device
    return DistInfo(), resolve_device(device_knob)


# model settings that may differ from the weights' own: memory, resolution and the attention kernel,
# not what the weights compute
INIT_FREE_FIELDS = ("grad_checkpointing", "image_size", "attention")


def check_init_config(model: GSLRMConfig, stored: dict | None, source: str) -> None:
    """Raise when the weights in ``source`` were trained with other model settings than ``model``
    (e.g. ``color_from_input`` or ``scale_bias``, which change no state-dict key, so a strict load
    alone would not notice). ``stored``: the checkpoint's config (None for FaceLift's file: nothing
    to compare)."""
    if stored is None:
        return
    own = dataclasses.asdict(model)
    differ = {k: (own[k], v) for k, v in stored.items() if k in own and own[k] != v}  # scalar fields only
    if differ.get("image_size"):
        log.warning("%s was trained at %s px; training at %s px", source, differ["image_size"][1], model.image_size)
    differ = {k: d for k, d in differ.items() if k not in INIT_FREE_FIELDS}
    if differ:
        raise ValueError(f"{source} was trained with other model settings: " + ", ".join(
            f"{k} = {v!r} (the params say {o!r})" for k, (o, v) in differ.items())
            + "; set them in the params to the weights' values")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (ndim >= 2) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in params)  # one kernel for all 300 M parameters on a GPU
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr at ``step`` (0-based): linear warm-up, then cosine to min_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# Validation: the evaluation protocol's scorer (mousefacelift.evaluation), one home for every score
# ----------------------------------------------------------------------------------------------
def evaluate(model: GSLRM, data_root: str | os.PathLike, names: list[str], n_inputs: int,
             cfg: evaluation.EvalConfig) -> dict:
    """Every view of each sample held out in turn and rendered from ``n_inputs`` other views
    (:func:`mousefacelift.evaluation.reconstruction_rows`, the scorer of notebooks 06 and 07).

    -> the overall summary of :func:`mousefacelift.evaluation.summarize_rows` ("psnr_fg",
    "psnr_fg_ci95", ..., "n_rows"), plus "n_views" (scored views) and "per_view" (the rows)."""
    was_training = model.training
    model.eval()
    rows = evaluation.reconstruction_rows(model, data_root, names, [n_inputs], cfg, label="val").rows
    model.train(was_training)
    if not rows:
        raise ValueError(f"evaluate: no views scored in {data_root} ({len(names)} samples)")
    return {**evaluation.summarize_rows(rows, by=())[0], "n_views": len(rows), "per_view": rows}


# ----------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------
class Trainer:
    """Holds model, optimizer, schedule and counters; ``run()`` trains to the configured step."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist, self.device = setup_distributed(cfg.device)
        configure_backends(cfg, self.device)
        self.is_main = self.dist.rank == 0
        self.out = cfg.checkpoint_dir
        self.out.mkdir(parents=True, exist_ok=True)
        # 1. model (same seed on every rank; DDP also broadcasts rank 0's weights)
        torch.manual_seed(cfg.seed)
        self.model = GSLRM(cfg.model).to(self.device)
        self.loss_fn = GSLRMLoss(cfg.loss).to(self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.step = 0              # forward/backward passes done (FaceLift's fwdbwd_pass_step)
        self.applied = 0           # optimizer updates done (param_update_step)
        self.skipped_norm = 0      # skipped: pre-clip grad norm > skip_factor * grad_clip
        self.skipped_nonfinite = 0  # skipped: loss or grad norm NaN/inf
        # 2. resume, or start from given weights
        found = load_latest_checkpoint(self.out) if cfg.resume else None  # weights_only; skips corrupt ones
        if found is not None:
            self.restore(*found)
        elif cfg.init_from:
            init = read_checkpoint(cfg.init_from)
            check_init_config(cfg.model, init.get("config"), cfg.init_from)
            load_model_state(self.model, init["model"], cfg.init_from)
            log.info("initialised from %s", cfg.init_from)
        if not cfg.resume and self.is_main:  # after init_from was read: it may lie in this folder
            clear_checkpoints(self.out)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled else self.model)
        # 3. data
        data_cfg = dataclasses.replace(cfg.data, augment=cfg.data.augment and not cfg.overfit_samples)
        self.dataset = GSLRMDataset(Path(cfg.data_root), Path(cfg.data_root) / cfg.train_split,
                                    cfg.model.image_size, data_cfg, seed=cfg.seed, limit=cfg.overfit_samples)
        self.resident = self.resident_targets = None
        if cfg.resident_data:
            def resident(size: int) -> ResidentSplit:
                split = ResidentSplit.load(cfg.data_root, Path(cfg.data_root) / cfg.train_split, size,
                                           device=self.device, workers=cfg.num_workers or 8, prepare=prepare_rgba)
                n = len(self.dataset)  # overfit_samples: the first n
                return dataclasses.replace(split, images=split.images[:n], w2c=split.w2c[:n], K=split.K[:n],
                                           names=split.names[:n])
            self.resident = resident(cfg.model.image_size)
            T = cfg.data.target_size
            self.resident_targets = resident(T) if T and T != cfg.model.image_size else None
        self.tracker = Tracker.create(cfg.tracking, self.out, name="gslrm", params=asdict(cfg), rank=self.dist.rank)
        self.tracker.truncate_after(self.step)
        self.use_bf16 = cfg.autocast_bf16(self.device)
        log.info("GS-LRM %.1f M params on %s (bf16 %s, world %d), %d training samples, from step %d",
                 self.model.num_parameters() / 1e6, self.device, self.use_bf16, self.dist.world_size,
                 len(self.dataset), self.step)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> Path | None:
        if not self.is_main:
            return None
        return save_checkpoint(self.out, self.step, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "lr_scheduler": self.scheduler.state_dict(), "fwdbwd_pass_step": self.step,
                     "param_update_step": self.applied, "config": asdict(self.cfg.model),
                     "train_config": json.dumps(asdict(self.cfg)),
                     "counters": {"skipped_norm": self.skipped_norm, "skipped_nonfinite": self.skipped_nonfinite},
                     "rng": rng_state(), "data": {"seed": self.cfg.seed, "next_step": self.step}},
                               self.cfg.keep_last)

    def restore(self, path: Path, ckpt: dict) -> None:
        """Continue from ``ckpt``, read from ``path`` on the CPU (RNG states must stay there; the
        rest is copied over)."""
        load_model_state(self.model, ckpt["model"], str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["lr_scheduler"])
        self.step, self.applied = int(ckpt["fwdbwd_pass_step"]), int(ckpt["param_update_step"])
        counters = ckpt.get("counters", {})  # absent in FaceLift's own checkpoints
        self.skipped_norm = int(counters.get("skipped_norm", 0))
        self.skipped_nonfinite = int(counters.get("skipped_nonfinite", 0))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        log.info("resumed from %s at step %d (%d updates applied)", path, self.step, self.applied)
        saved = json.loads(ckpt["train_config"]) if "train_config" in ckpt else {}  # absent in FaceLift's
        warn_schedule_change(path, self.step, saved, asdict(self.cfg),
                             ("steps", "warmup_steps", "lr", "min_lr_ratio"), log)

    # -- one step ----------------------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Forward, render the targets, losses. batch: a collated dict on self.device."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            g = self.ddp(batch["input_images"], batch["input_c2w"], batch["input_K"])
        S = batch["target_images"].shape[-1]
        r = g.render(batch["target_w2c"], batch["target_K"], S, S)
        return self.loss_fn(r.rgb.permute(0, 1, 4, 2, 3), r.alpha.permute(0, 1, 4, 2, 3),
                            batch["target_images"], batch["target_alpha"], self.step)

    def train_step(self, batch: dict) -> dict[str, float]:
        """One forward/backward pass and, unless skipped, one update. -> logged scalars."""
        cfg = self.cfg
        self.model.train()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        terms = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)  # pre-clip norm
        ok = torch.isfinite(terms["loss"].detach()) & torch.isfinite(grad_norm)
        if self.dist.enabled:  # every rank must take the same decision
            ok = ok.float()
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
            ok = ok > 0
        applied = 0.0
        if not bool(ok):
            self.skipped_nonfinite += 1
            log.warning("step %d: non-finite loss (%s) or grad norm (%s): update skipped", self.step,
                        float(terms["loss"].detach()), float(grad_norm))
        elif float(grad_norm) > cfg.skip_factor * cfg.grad_clip:
            self.skipped_norm += 1
        else:
            self.optimizer.step()
            self.applied += 1
            applied = 1.0
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        with warnings.catch_warnings():  # the schedule follows fwdbwd_pass_step, updates or not
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            self.scheduler.step()
        self.step += 1
        out = {k: float(v.detach()) for k, v in terms.items()}
        out.update(grad_norm=float(grad_norm), lr=lr, applied=applied,
                   applied_step_ratio=self.applied / self.step, skipped_grad_norm=self.skipped_norm,
                   skipped_nonfinite=self.skipped_nonfinite)
        return out

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        end = min(cfg.steps, cfg.stop_at_step) if cfg.stop_at_step else cfg.steps
        sampler = StepBatchSampler(len(self.dataset), cfg.batch_size, cfg.seed, start_step=self.step,
                                   rank=self.dist.rank, world_size=self.dist.world_size)
        if self.resident is not None:  # batches built on the device, step by step
            it = (resident_batch(self.resident, self.dataset.cfg, cfg.seed, step, sampler.indices(step),
                                 self.resident_targets)
                  for step in itertools.count(self.step))
        else:
            it = iter(torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,
                                                  num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda"))
        from tqdm.auto import tqdm
        bar = tqdm(total=end, initial=self.step, disable=not (self.is_main and cfg.progress_bar), desc="gslrm")
        losses, step_seconds, t0, start_step, timed_out = [], [], time.time(), self.step, False
        while self.step < end:
            t_step = time.perf_counter()
            scalars = self.train_step(next(it))  # its .item() calls wait for the GPU
            step_seconds.append(time.perf_counter() - t_step)
            losses.append(scalars["loss"])
            bar.update(1)
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", psnr_fg=f"{scalars['psnr_fg']:.1f}")
            if self.step % cfg.log_every == 0 or self.step == end:
                self.tracker.log({k: v for k, v in scalars.items() if k != "applied"}, step=self.step)
                if self.step >= 10 and scalars["applied_step_ratio"] < 0.9:
                    log.warning("only %.0f%% of steps applied an update (grad-norm skips %d, non-finite %d): "
                                "check the loss weights / learning rate", 100 * scalars["applied_step_ratio"],
                                self.skipped_norm, self.skipped_nonfinite)
            if self.step % cfg.checkpoint_every == 0 and self.step < end:
                self.save()
            if cfg.val_split and cfg.val_every and self.step % cfg.val_every == 0 and self.step < end:
                self.validate()
            if self.step % cfg.log_every == 0 and time_is_up(t0, cfg.time_limit_s, self.dist.enabled):
                timed_out = True
                log.warning("time limit of %.0f s reached at step %d of %d: stopping here (the learning rate "
                            "had not decayed to its end)", cfg.time_limit_s, self.step, end)
                break
        bar.close()
        ckpt = self.save() if self.step > start_step or latest_checkpoint(self.out) is None else latest_checkpoint(self.out)
        summary = {"step": self.step, "param_update_step": self.applied, "world_size": self.dist.world_size,
                   "applied_step_ratio": self.applied / max(1, self.step), "skipped_grad_norm": self.skipped_norm,
                   "skipped_nonfinite": self.skipped_nonfinite, "losses": losses, "stopped_at_time_limit": timed_out,
                   "seconds": time.time() - t0, "checkpoint": str(ckpt) if ckpt else "",
                   # steady-state step time (data wait included): the median after 3 warm-up steps
                   "step_seconds_median": float(np.median(step_seconds[3:] or step_seconds or [float("nan")]))}
        if cfg.val_split:
            summary["val"] = self.validate()
        if self.dist.enabled:
            dist.barrier()
        self.tracker.finish()
        return summary

    def validate(self) -> dict:
        """evaluate() on the validation split (rank 0): each view held out in turn, from
        ``data.input_views`` other views."""
        if not self.is_main:
            return {}
        cfg = self.cfg
        root = Path(cfg.val_data_root or cfg.data_root)
        ev_cfg = evaluation.EvalConfig(seed=cfg.seed, max_samples=cfg.val_max_samples, n_examples=0, bf16=self.use_bf16,
                                       score_size=cfg.score_size)
        res = evaluate(self.model, root, read_split(root / cfg.val_split), cfg.data.input_views, ev_cfg)
        self.tracker.log({f"val/{k}": res[k] for k in ("psnr_fg", "ssim_fg", "mask_iou")}, step=self.step)
        log.info("val at step %d: PSNR_fg %.2f dB, SSIM_fg %.3f, IoU %.3f over %d views", self.step,
                 res["psnr_fg"], res["ssim_fg"], res["mask_iou"], res["n_views"])
        return res


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) per ``cfg``; -> summary dict (steps, applied ratio, losses, checkpoint, val)."""
    return Trainer(cfg).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m mousefacelift.gslrm.train --config cfg.json`` (alone or under torchrun)."""
    return launch.main(TrainConfig, train, argv)


if __name__ == "__main__":
    raise SystemExit(main())
