"""GS-LRM model sizes x resolutions at equal GPU time: which GS-LRM to train from scratch in a session.

    python scripts/gslrm_sizes.py DATA OUT [--seconds 90] [--sizes 6x384,12x768,24x1024] [--resolutions 128,256]
        [--target-sizes 0,256] [--score-sizes 256,128] [--splits val,test]

DATA is notebook 01's output folder of a run (``runs/NAME/data``: ``samples/`` and ``splits/``). For
every (layers x width, resolution) pair, one from-scratch training with params/gpu.yaml's recipe (qk
norm, pixel colours from the input, no global Gaussians, lr 2e-4 with 15% warm-up and a cosine decay,
batch 16, bf16, the training split resident on the GPU) for the same number of seconds: the schedule's length comes from the step time
measured on a few warm-up steps, so every run finishes its decay inside the budget
(``time_limit_s`` stops a run that would overrun). Then the validation split is scored by the one
scorer (:func:`mousefacelift.gslrm.train.evaluate`: every view held out in turn, rendered from 5 of
the others) at each of ``--score-sizes`` pixels for every model, whatever its own resolution, so all rows
score the same pixels, on each of ``--splits`` -> ``OUT/sizes.json`` and ``OUT/sizes.md``. ``--target-sizes``
also trains each model supervised at finer target views (``DataConfig.target_size``).

Head dimension 64 throughout (FaceLift's). ``scale_bias`` keeps the initial Gaussian about one pixel
wide at every resolution (-5.0 at 256 px, as in params/gpu.yaml).
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from mousefacelift import evaluation
from mousefacelift.bench import timed
from mousefacelift.data.samples import read_split
from mousefacelift.gslrm.data import DataConfig, collate
from mousefacelift.gslrm.model import GSLRMConfig
from mousefacelift.gslrm.train import Trainer, TrainConfig, evaluate
from mousefacelift.tracking import TrackingConfig

log = logging.getLogger("gslrm_sizes")


def recipe(data: Path, out: Path, layers: int, width: int, size: int, steps: int, seconds: float,
           grad_checkpointing: bool, resident: bool = True, target_size: int = 0) -> TrainConfig:
    model = GSLRMConfig(layers=layers, width=width, heads=width // 64, image_size=size, render_global=False,
                        color_from_input=True, qk_norm=True, scale_bias=-5.0 + math.log(256 / size),
                        grad_checkpointing=grad_checkpointing)
    return TrainConfig(out_dir=str(out), data_root=str(data), train_split="splits/train.txt",
                       model=model, data=DataConfig(input_views=5, target_size=target_size),
                       steps=steps, batch_size=16, lr=2e-4, warmup_steps=max(1, int(0.15 * steps)),
                       time_limit_s=seconds, precision="bf16", num_workers=6, resident_data=resident,
                       checkpoint_every=10 ** 6, keep_last=1, log_every=10, resume=False, progress_bar=False,
                       tracking=TrackingConfig(mode="disabled"))


def step_seconds(cfg: TrainConfig, warmup: int = 3, repeats: int = 6) -> float:
    """Median seconds of one training step on a real batch (the trainer's own train_step)."""
    trainer = Trainer(cfg)
    batch = collate([trainer.dataset[(j, 0)] for j in range(cfg.batch_size)])
    ms = timed(functools.partial(trainer.train_step, batch), trainer.device, repeats=repeats, warmup=warmup)
    del trainer
    torch.cuda.empty_cache()
    return ms / 1e3


def run_one(data: Path, out: Path, layers: int, width: int, size: int, seconds: float, score_sizes: list[int],
            val_samples: int, target_size: int = 0, splits: tuple[str, ...] = ("val",)) -> dict:
    probe = recipe(data, out / "probe", layers, width, size, 100, seconds, False, resident=False,
                   target_size=target_size)  # compute only
    try:
        sec, ckpt = step_seconds(probe), False
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        sec, ckpt = step_seconds(replace(probe, model=replace(probe.model, grad_checkpointing=True))), True
    steps = max(10, int(seconds / sec))
    cfg = recipe(data, out, layers, width, size, steps, seconds * 1.1, ckpt, target_size=target_size)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    summary = trainer.run()
    wall = time.perf_counter() - t0
    scores = {}
    for split in splits:
        for score_size in score_sizes:
            ev = evaluation.EvalConfig(max_samples=val_samples, n_examples=0, bf16=True, score_size=score_size)
            res = evaluate(trainer.model, data, read_split(data / "splits" / f"{split}.txt"), 5, ev)
            scores[f"{split}@{score_size}"] = {k: res.get(k) for k in ("psnr_fg", "psnr_fg_ci95", "mask_iou",
                                                                       "mask_iou_ci95", "ssim_fg", "n_views")}
    val = scores[f"{splits[0]}@{score_sizes[0]}"]
    row = {"layers": layers, "width": width, "resolution": size, "target_size": target_size or size,
           "params_M": round(trainer.model.num_parameters() / 1e6, 1),
           "grad_checkpointing": ckpt, "probe_s_per_step": round(sec, 4), "steps": summary["step"],
           "objects_seen": summary["step"] * cfg.batch_size, "train_seconds": round(summary["seconds"], 1),
           "wall_seconds": round(wall, 1), "stopped_at_time_limit": summary["stopped_at_time_limit"],
           "score_size": score_sizes[0], "split": splits[0], **val, "scores": scores}
    del trainer
    torch.cuda.empty_cache()
    return row


def to_markdown(rows: list[dict], seconds: float, machine: str) -> str:
    keys = next((list(r["scores"]) for r in rows if "scores" in r), [])
    lines = [f"# GS-LRM sizes at equal GPU time: {seconds:.0f} s of training each, {machine}", "",
             "Every view of each sample held out in turn and rendered from 5 others; columns `split@px` score that "
             "split at that size for every model, whatever its own; PSNR_fg (dB) / mask IoU, ± the 95% interval "
             "clustered by frame.", "",
             "| layers x width | px | supervised at | params (M) | steps | objects seen | s/step | "
             + " | ".join(keys) + " |", "|---" * (7 + len(keys)) + "|"]
    for r in rows:
        head = f"| {r['layers']} x {r['width']}{' (ckpt)' if r.get('grad_checkpointing') else ''} | {r['resolution']} | "
        if "error" in r:
            lines.append(head + f"{r.get('target_size', '')} | failed: {r['error']} |")
            continue
        cells = [f"{v['psnr_fg']:.2f} ± {v['psnr_fg_ci95']:.2f} / {v['mask_iou']:.3f} ± {v['mask_iou_ci95']:.3f}"
                 for v in r["scores"].values()]
        lines.append(head + f"{r['target_size']} | {r['params_M']} | {r['steps']} | {r['objects_seen']} | "
                     f"{r['probe_s_per_step']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def plans(resolutions: list[int], target_sizes: list[int]) -> list[tuple[int, int]]:
    """(model resolution, target size; 0: its own) pairs in the given order, a model supervised at its
    own size once whether asked for by 0 or by that size."""
    return list(dict.fromkeys((res, target if target != res else 0) for res in resolutions for target in target_sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--sizes", default="6x384,12x768,24x1024")
    ap.add_argument("--resolutions", default="128,256")
    ap.add_argument("--target-sizes", default="0", help="sides the targets are supervised at (0: the model's own)")
    ap.add_argument("--score-sizes", default="256", help="sides every model is scored at (the first: the headline)")
    ap.add_argument("--splits", default="val", help="splits scored (the first: the headline)")
    ap.add_argument("--val-samples", type=int, default=48, help="samples scored per split (0: all)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("gslrm_sizes: a comparison of GPU time needs a CUDA device")
    splits = tuple(x for x in a.splits.split(",") if x)
    for split in splits:
        if not (a.data / "splits" / f"{split}.txt").is_file():
            raise SystemExit(f"gslrm_sizes: {a.data / 'splits' / f'{split}.txt'} is missing: DATA is notebook 01's data folder")
    a.out.mkdir(parents=True, exist_ok=True)
    sizes = [tuple(int(x) for x in s.split("x")) for s in a.sizes.split(",")]
    rows = []
    for res, target in plans(ints(a.resolutions), ints(a.target_sizes)):
        for layers, width in sizes:
            log.info("%d x %d at %d px, targets at %d px, for %.0f s", layers, width, res, target or res, a.seconds)
            try:
                rows.append(run_one(a.data, a.out / f"{layers}x{width}_{res}_t{target or res}", layers, width, res,
                                    a.seconds, ints(a.score_sizes), a.val_samples, target, splits))
            except Exception as e:  # one failing size must not lose the others
                log.exception("%d x %d at %d px failed", layers, width, res)
                rows.append({"layers": layers, "width": width, "resolution": res, "target_size": target or res,
                             "error": f"{type(e).__name__}: {e}"})
            log.info("row %s", json.dumps(rows[-1]))
            (a.out / "sizes.json").write_text(json.dumps({"seconds": a.seconds, "gpu": torch.cuda.get_device_name(),
                                                          "rows": rows}, indent=1))
            (a.out / "sizes.md").write_text(to_markdown(rows, a.seconds, torch.cuda.get_device_name()))
    print((a.out / "sizes.md").read_text())


if __name__ == "__main__":
    main()
