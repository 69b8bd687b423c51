"""How good are generated views: the evaluation protocol (:mod:`mousefacelift.metrics`) applied to
multi-view diffusion, quality vs sampler steps, and validation grids.

Generated views are compared with the ground truth of the same cameras, on the views that were
NOT the model's input (the reference view is a copy of the input and would inflate every mean).
PSNR_fg and mask IoU follow the protocol: GT alpha > 0.5 is the foreground, generated alpha > 0.5
the predicted mask, RGB composited on white. Rows are :func:`mousefacelift.evaluation.view_row`'s,
summaries :func:`mousefacelift.evaluation.summarize_rows`'s, as for every other evaluation.

The copy score: a model that has not learnt the rig paints the reference view into every camera.
Each generated view is therefore also scored against the REFERENCE view's ground truth
(``copy_psnr_fg``, ``copy_mask_iou``); a view "copies" when its mask is closer to the reference's
than to its own target's (``copies`` = 1; NaN, left out, where the target's mask is the reference's). ``reference_psnr_fg`` / ``reference_mask_iou`` score the
reference ground truth itself against each target: what copying would earn.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import torch

from .. import evaluation, metrics
from ..viz import to_uint8
from .pipeline import MVDiffusionPipeline, SamplerConfig, composite, resize_views

log = logging.getLogger(__name__)

WHITE = (1.0, 1.0, 1.0)


def held_out_views(n_views: int, reference_view: int) -> list[int]:
    """The view positions that were not the model's input: all but ``reference_view``."""
    return [v for v in range(n_views) if v != reference_view]


def view_metrics(generated: torch.Tensor, target: torch.Tensor, views: list[int]) -> dict[str, torch.Tensor]:
    """Protocol metrics of the selected views.

    generated, target [B, V, 4, H, W] RGBA in [0, 1], RGB composited on white; views: positions in V
    -> {"psnr_fg", "psnr_full", "ssim_fg", "mask_iou"}: each [B, len(views)] (NaN where undefined)."""
    g, t = generated[:, views].float(), target[:, views].float()
    return metrics.image_metrics(g[:, :, :3], g[:, :, 3:], t[:, :, :3], t[:, :, 3:])


def generated_rows(generated: torch.Tensor, target: torch.Tensor, reference_view: int, sample: str,
                   view_ids: list, label: str = "generated", frame: int = -1) -> list[dict]:
    """Rows of one object's generated views that were not the input, with the copy score.

    generated, target [V, 4, H, W] RGBA in [0, 1], RGB composited on white; view_ids [V] camera ids
    -> one :func:`mousefacelift.evaluation.view_row` per held-out view (question "mvdiffusion", input
    the reference view) with the protocol metrics, copy_psnr_fg, copy_mask_iou, copies (0/1),
    reference_psnr_fg, reference_mask_iou, and "view" (the position in V)."""
    views = held_out_views(generated.shape[0], reference_view)
    g, t = generated[views].float(), target[views].float()
    r = target[reference_view].float().expand_as(t)                                    # [Vh, 4, H, W]
    m = metrics.image_metrics(g[:, :3], g[:, 3:], t[:, :3], t[:, 3:])
    cp = metrics.image_metrics(g[:, :3], g[:, 3:], r[:, :3], r[:, 3:])
    ref = metrics.image_metrics(r[:, :3], r[:, 3:], t[:, :3], t[:, 3:])
    undefined = cp["mask_iou"].isnan() | m["mask_iou"].isnan() | (ref["mask_iou"] >= 1)  # same mask: cannot tell
    copies = torch.where(undefined, torch.full_like(m["mask_iou"], math.nan), (cp["mask_iou"] > m["mask_iou"]).float())
    m.update(copy_psnr_fg=cp["psnr_fg"], copy_mask_iou=cp["mask_iou"], reference_psnr_fg=ref["psnr_fg"],
             reference_mask_iou=ref["mask_iou"], copies=copies)
    return [{**evaluation.view_row("mvdiffusion", label, sample, frame, [view_ids[reference_view]], view_ids[v], m, a),
             "view": v} for a, v in enumerate(views)]


COPY_METRICS = ("copy_psnr_fg", "copy_mask_iou", "copies", "reference_psnr_fg", "reference_mask_iou")


def rows_summary(rows: list[dict]) -> dict:
    """Means over all rows (NaN views left out; :func:`mousefacelift.evaluation.summarize_rows`) of
    the protocol metrics and, when present, the copy metrics; "copy_fraction" is the mean of
    ``copies`` and "copy_margin_iou" = copy_mask_iou - mask_iou. NaN where nothing is defined."""
    names = tuple(k for k in (*evaluation.METRICS[:4], *COPY_METRICS) if rows and k in rows[0])
    d = evaluation.summarize_rows(rows, by=(), metric_names=names)[0] if rows else {}
    out = {k: math.nan if d.get(k) is None else d[k] for k in names}
    if "copies" in out:
        out["copy_fraction"] = out["copies"]
        out["copy_margin_iou"] = out["copy_mask_iou"] - out["mask_iou"]
    return out


def mean_defined(values: list[float]) -> float:
    """Mean over the defined (finite) values; NaN when there are none."""
    s = metrics.summarize(values)
    return math.nan if s["mean"] is None else s["mean"]


def evaluate(pipe: MVDiffusionPipeline, dataset, config: SamplerConfig, seed: int, max_objects: int = 0,
             batch_size: int = 4, mean_from_noise: bool = False) -> dict:
    """Generate every view of the first ``max_objects`` objects of ``dataset`` (a SampleDataset;
    0 = all) from its reference view (``pipe.model.config.reference_view``) and compare with the
    ground truth on the held-out views. Object i uses ``torch.Generator().manual_seed(seed + i)``.
    ``mean_from_noise``: score the model's one-call mean estimate
    (:meth:`~mousefacelift.mvdiffusion.pipeline.MVDiffusionPipeline.mean_from_noise`) instead of samples.

    -> {"psnr_fg", "mask_iou", "ssim_fg", "psnr_full", and the copy score ("copy_fraction",
    "copy_margin_iou", "copy_*", "reference_*"; module docstring) of :func:`rows_summary`: means
    over held-out views (NaN views left out), "n_objects", "n_views": held-out views counted,
    "per_object": mean PSNR_fg per object, "per_view": the rows of :func:`generated_rows` (with
    "object": the index), "seconds", and "samples": per object (reference [4, S, S], generated [V, 4, S, S], ground truth [V, 4, S, S]) on the
    sampler's background, for grids}."""
    if tuple(config.background) != WHITE:
        log.warning("evaluate: background %s is not white; PSNR_full assumes white (PSNR_fg and IoU do not)",
                    config.background)
    ref_v = pipe.model.config.reference_view
    S = pipe.image_size
    n = len(dataset) if max_objects <= 0 else min(max_objects, len(dataset))
    rows, per_object, samples, t0 = [], [], [], time.time()
    names = getattr(dataset, "names", None)
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(n, start + batch_size))]
        imgs, K = resize_views(torch.stack([it["images"] for it in items]), torch.stack([it["K"] for it in items]), S)
        w2c = torch.stack([it["w2c"] for it in items])
        gens = [torch.Generator().manual_seed(seed + start + j) for j in range(len(items))]
        generate = pipe.mean_from_noise if mean_from_noise else pipe
        out = generate(imgs[:, ref_v], w2c[:, ref_v], w2c, K, config, generator=gens).cpu()
        gt = composite(imgs, config.background)
        for j in range(len(items)):
            i = start + j
            obj = generated_rows(out[j], gt[j], ref_v, names[i] if names else str(i), list(range(w2c.shape[1])),
                                 "mean from noise" if mean_from_noise else "generated")
            per_object.append(mean_defined([r["psnr_fg"] for r in obj]))
            rows += [{**r, "object": i} for r in obj]
            samples.append((gt[j, ref_v], out[j], gt[j]))
    return {**rows_summary(rows), "n_objects": n, "n_views": len(rows), "per_object": per_object, "per_view": rows,
            "seconds": time.time() - t0, "samples": samples}


def quality_vs_steps(pipe: MVDiffusionPipeline, dataset, steps: list[int], config: SamplerConfig, seed: int = 0,
                     max_objects: int = 8, samplers: list[str] | None = None, batch_size: int = 4,
                     guidance_scales: list[float] | None = None) -> list[dict]:
    """PSNR_fg, mask IoU, copy fraction (means over held-out views) and time for each sampler
    (default: ``config.sampler``), classifier-free guidance scale (default: ``config.guidance_scale``)
    and number of steps; the other sampler settings come from ``config``; ``batch_size`` objects per
    call (as in :func:`evaluate`). Guidance mixes the prediction without reference and camera into the
    conditional one, so it can amplify whatever the model reads from the reference: the guidance rows
    show whether copying comes from the sampler or from the model.
    -> one dict per setting: {"sampler", "guidance_scale", "steps", "psnr_fg", "mask_iou", "copy_fraction", "seconds"}."""
    rows = []
    for sampler in samplers or [config.sampler]:
        for scale in guidance_scales or [config.guidance_scale]:
            for n in steps:
                cfg = dataclasses.replace(config, sampler=sampler, steps=n, guidance_scale=scale)
                res = evaluate(pipe, dataset, cfg, seed, max_objects, batch_size)
                rows.append({"sampler": sampler, "guidance_scale": scale, "steps": n, "psnr_fg": res["psnr_fg"],
                             "mask_iou": res["mask_iou"], "copy_fraction": res["copy_fraction"],
                             "seconds": res["seconds"]})
                log.info("quality vs steps: %s, guidance %.1f, %d steps -> PSNR_fg %.2f dB, mask IoU %.3f, copy "
                         "fraction %.2f (%.1f s)", sampler, scale, n, res["psnr_fg"], res["mask_iou"],
                         res["copy_fraction"], res["seconds"])
    return rows


def validation_grid(reference: torch.Tensor, generated: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """One object's grid as uint8 [2*S, (V+1)*S, 3]: column 0 the reference, then the V views;
    row 0 generated, row 1 ground truth (reference [4, S, S], generated / target [V, 4, S, S],
    RGB over a background)."""
    top = torch.cat([reference[:3]] + list(generated[:, :3]), dim=2)
    bot = torch.cat([reference[:3]] + list(target[:, :3]), dim=2)
    return to_uint8(torch.cat([top, bot], dim=1).permute(1, 2, 0))


__all__ = ["held_out_views", "generated_rows", "rows_summary", "COPY_METRICS", "mean_defined", "view_metrics", "evaluate",
           "quality_vs_steps", "validation_grid"]
