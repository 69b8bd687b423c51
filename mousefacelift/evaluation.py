"""Notebook 07's evaluation: every number follows the protocol of :mod:`mousefacelift.metrics`.

Questions and how inputs and targets are chosen (a target is NEVER an input; :func:`check_plan`
guards every forward pass):

1. ``reconstruction``: N real input views -> GS-LRM -> held-out real views. Each view of a test
   sample is held out in turn; its inputs are the first N views of a seeded permutation of the
   other views (nested: N + 1 adds one view to the N inputs), so every N scores the same targets.
2. ``end_to_end``: the reference view alone -> MVDiffusion (all views of the rig) -> GS-LRM ->
   every other real view. The only real input is the reference view, which is never scored.
   ``mvdiffusion`` rows score the generated views themselves against the same real views.
3. ``reconstruction`` rows of a second checkpoint (label "synthetic") on the same plans, compared
   view by view with :func:`paired_difference`.
4. 3D error on procedural data: :func:`chamfer_to_surface` maps opacity-weighted Gaussian centres
   back to world mm with the sample's normalization and measures the Chamfer distance to points on
   the true surface.

The scale of the metrics: :func:`degradation_rows` scores the test views against shifted, blurred
or flat-coloured copies of themselves (no model), so a reconstruction's PSNR_fg can be read as
"about as good as the truth moved by one pixel".

Images are composited on white and resized with their intrinsics to the GS-LRM's size
(:func:`mousefacelift.gslrm.data.prepare_images`); cameras are OpenCV, normalized world.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import cameras, metrics, perceptual
from .data import samples as samples_io
from .gaussians import Gaussians
from .gslrm.data import prepare_images
from .training import keyed_generator
from .viz import to_uint8

log = logging.getLogger(__name__)

METRICS = ("psnr_fg", "psnr_full", "ssim_fg", "mask_iou", "st_lpips", "lpips")
COPY_REFERENCE = "copy_reference"  # question 2's model-free baseline: the reference view copied into every target


@dataclass
class EvalConfig:
    seed: int = 0                 # seeds the input-view permutations (and MVDiffusion noise: seed + sample index)
    max_samples: int = 0          # first N test samples (0 = all)
    plans_per_batch: int = 6      # (inputs, target) plans reconstructed per GS-LRM call
    generation_batch: int = 8     # objects per MVDiffusion call in question 2 (noise is per object, so the
    #                               views do not depend on it; a GPU wants 16-32, a CPU 1-4)
    backend: str = "auto"         # rasterizer: "auto", "gsplat" or "torch"
    n_examples: int = 1           # samples whose images (and Gaussians) are kept for figures
    min_opacity: float = 0.01     # Gaussians fainter than this are dropped for Chamfer and PLY
    surface_points: int = 5000    # samples of the true surface per frame (3D error)
    st_lpips_net: str = "alex"    # ST-LPIPS backbone: "alex", "vgg" or "" (off: the column is NaN)
    st_lpips_weights: str = ""    # its weights file ("": the one inside the installed stlpips-pytorch package)
    bf16: bool = False            # bf16 autocast of the GS-LRM transformer (CUDA only; training validation
    #                               follows its run, the notebooks score in fp32)
    score_size: int = 0           # side of the scored images: targets are loaded and the Gaussians rendered
    #                               at it (0: the GS-LRM's own image size); compares models of other resolutions


@dataclass
class EvalResult:
    """rows: one dict per scored (sample, target view); examples: per kept sample, {"name", "title",
    "gt" [V, 3, S, S], "pred" [V, 3, S, S], "gt_alpha" [V, 1, S, S], "views" (camera ids), and
    optionally "pred_alpha" [V, 1, S, S], "generated" [V, 3, S, S] and "gaussians" (:class:`Gaussians`)}."""
    rows: list[dict] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Inputs and targets
# ----------------------------------------------------------------------------------------------

def view_plans(n_views: int, n_inputs: int, sample_index: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """One plan per view t of a sample: (inputs, [t]) with inputs the first ``n_inputs`` views
    (sorted positions) of a permutation of the other views, seeded by (seed, sample_index, t), so
    plans are nested in ``n_inputs`` and identical across checkpoints."""
    if not 1 <= n_inputs < n_views:
        raise ValueError(f"n_inputs={n_inputs}: need 1 <= n_inputs < {n_views} views so that a view is held out")
    plans = []
    for t in range(n_views):
        others = [v for v in range(n_views) if v != t]
        perm = torch.randperm(len(others), generator=keyed_generator(seed, sample_index, t)).tolist()
        plans.append((sorted(others[p] for p in perm[:n_inputs]), [t]))
    return plans


def check_plan(inputs: list[int], targets: list[int]) -> None:
    """Raise unless the targets are disjoint from the inputs (an input view is never scored)."""
    both = sorted(set(inputs) & set(targets))
    if both or not targets:
        raise ValueError(f"evaluation plan inputs {inputs} / targets {targets}: views {both} would be scored "
                         "although the model saw them (or there are no targets)")


def load_eval_sample(sample_dir: str | os.PathLike, image_size: int) -> dict:
    """A sample at the GS-LRM's size: rgb [V, 3, S, S] on white, alpha [V, 1, S, S], w2c / c2w
    [V, 4, 4], K [V, 3, 3] (float32, scaled to S), view_ids, provenance, name."""
    return load_eval_sizes(sample_dir, image_size)[0]


def load_eval_sizes(sample_dir: str | os.PathLike, image_size: int, score_size: int = 0) -> tuple[dict, dict]:
    """The sample read once -> (at the GS-LRM's ``image_size``, at ``score_size``), each as
    :func:`load_eval_sample`'s; the same dict twice when ``score_size`` is 0 or equal."""
    s = samples_io.read_sample(sample_dir)

    def at(size: int) -> dict:
        rgb, alpha, K = prepare_images(s.images, s.K, size)
        return {"rgb": rgb, "alpha": alpha, "w2c": s.w2c.float(), "c2w": s.c2w.float(), "K": K.float(),
                "view_ids": s.view_ids, "provenance": s.provenance, "name": Path(sample_dir).name}
    own = at(image_size)
    return own, (own if score_size in (0, image_size) else at(score_size))


def _names(names: list[str], cfg: EvalConfig) -> list[str]:
    return names[:cfg.max_samples] if cfg.max_samples > 0 else list(names)


# ----------------------------------------------------------------------------------------------
# Model calls and scoring
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruct_and_render(model, rgb: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, target_w2c: torch.Tensor,
                           target_K: torch.Tensor, backend: str = "auto", bf16: bool = False, size: int = 0):
    """GS-LRM on input views, rendered at target views (on white; RGB clamped to [0, 1]).

    rgb [B, Vi, 3, S, S] on white; c2w [B, Vi, 4, 4]; K [B, Vi, 3, 3]; target_w2c [B, Vt, 4, 4];
    target_K [B, Vt, 3, 3] for images of side ``size`` (0: S) -> (GaussianOutput,
    rgb [B, Vt, 3, size, size], alpha [B, Vt, 1, size, size]).
    ``bf16``: autocast the transformer on CUDA (ignored on the CPU)."""
    dev = next(model.parameters()).device
    S = size or rgb.shape[-1]
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16 and dev.type == "cuda"):
        out = model(rgb.to(dev), c2w.to(dev), K.to(dev))
    r = out.render(target_w2c.to(dev), target_K.to(dev), S, S, backend=backend)
    return out, r.rgb.permute(0, 1, 4, 2, 3).clamp(0, 1), r.alpha.permute(0, 1, 4, 2, 3)


def st_lpips_model(cfg: EvalConfig, device: str | torch.device = "cpu") -> perceptual.STLPIPS | None:
    """The ST-LPIPS network that ``cfg`` names on ``device`` (cached), or None (off, or weights
    missing: see :func:`st_lpips_status`)."""
    return perceptual.create(cfg.st_lpips_net, cfg.st_lpips_weights, device)[0]


def st_lpips_status(cfg: EvalConfig) -> dict:
    """For metrics.json: {"name": "ST-LPIPS (<net>)", "available", "weights" or "reason"}."""
    model, why = perceptual.create(cfg.st_lpips_net, cfg.st_lpips_weights)
    out = {"name": f"ST-LPIPS ({cfg.st_lpips_net or 'off'})", "available": model is not None}
    if model is None:
        out["reason"] = why
    else:
        out["weights"] = perceptual.describe_weights(cfg.st_lpips_net, cfg.st_lpips_weights)
    return out


def score(pred_rgb: torch.Tensor, pred_alpha: torch.Tensor, gt_rgb: torch.Tensor, gt_alpha: torch.Tensor,
          lpips=None, st_lpips=None) -> dict[str, torch.Tensor]:
    """Protocol metrics; [..., 3|1, H, W] -> each [...] on the CPU; "lpips" (LPIPS-VGG) and
    "st_lpips" (:class:`mousefacelift.perceptual.STLPIPS`, masked as in :func:`perceptual.st_lpips_fg`)
    are NaN without their model."""
    m = metrics.image_metrics(pred_rgb.float(), pred_alpha.float(), gt_rgb.to(pred_rgb).float(),
                              gt_alpha.to(pred_rgb).float(), st_lpips)
    lead = pred_rgb.shape[:-3]
    m.setdefault("st_lpips", torch.full(lead, float("nan")))
    m["lpips"] = lpips(pred_rgb.float(), gt_rgb.to(pred_rgb).float()) if lpips is not None else \
        torch.full(lead, float("nan"))
    return {k: v.detach().cpu() for k, v in m.items()}


def view_row(question: str, label: str, sample: str, frame: int, inputs: list, target, m: dict, idx) -> dict:
    """One scored view, the row format of every evaluation (GS-LRM, MVDiffusion, baselines): question,
    model, sample, frame (the cluster of the bootstrap), n_inputs, inputs (ids joined by spaces),
    target_view, target_is_input, and each metric of ``m`` at index ``idx`` (m: name -> tensor)."""
    return {"question": question, "model": label, "sample": sample, "frame": frame, "n_inputs": len(inputs),
            "inputs": " ".join(str(v) for v in inputs), "target_view": target,
            "target_is_input": target in inputs, **{k: float(v[idx]) for k, v in m.items()}}


def sample_row(question: str, label: str, s: dict, n_inputs: int, inputs: list[int], target: int, m: dict, idx) -> dict:
    """:func:`view_row` for a sample of :func:`load_eval_sample`, inputs and target as view positions."""
    row = view_row(question, label, s["name"], s["provenance"].get("frame_index", -1),
                   [s["view_ids"][v] for v in inputs], s["view_ids"][target], m, idx)
    return {**row, "n_inputs": n_inputs}


def reconstruction_rows(model, data_root: str | os.PathLike, names: list[str], n_inputs: list[int], cfg: EvalConfig,
                        lpips=None, label: str = "real") -> EvalResult:
    """Question 1 (and 3 with another checkpoint): for each sample and each N in ``n_inputs``, every
    view held out in turn (:func:`view_plans`), reconstructed from N real views and scored."""
    S = model.cfg.image_size
    R = cfg.score_size or S
    res = EvalResult()
    for i, name in enumerate(_names(names, cfg)):
        s, t = load_eval_sizes(Path(data_root) / name, S, R)         # the inputs; the targets, at the scored size
        V = s["rgb"].shape[0]
        for n in n_inputs:
            plans = view_plans(V, n, i, cfg.seed)
            preds, alphas = [None] * V, [None] * V
            for start in range(0, V, cfg.plans_per_batch):
                chunk = plans[start:start + cfg.plans_per_batch]
                for inputs, targets in chunk:
                    check_plan(inputs, targets)
                ii = torch.tensor([p[0] for p in chunk])              # [B, n]
                tt = torch.tensor([p[1] for p in chunk])              # [B, 1]
                _, rgb, alpha = reconstruct_and_render(model, s["rgb"][ii], s["c2w"][ii], s["K"][ii], t["w2c"][tt],
                                                       t["K"][tt], cfg.backend, cfg.bf16, R)
                m = score(rgb, alpha, t["rgb"][tt], t["alpha"][tt], lpips, st_lpips_model(cfg, rgb.device))  # [B, 1]
                for b, (inputs, targets) in enumerate(chunk):
                    res.rows.append(sample_row("reconstruction", label, s, n, inputs, targets[0], m, (b, 0)))
                    preds[targets[0]], alphas[targets[0]] = rgb[b, 0].cpu(), alpha[b, 0].cpu()
            if i < cfg.n_examples:
                title = f"{label}: {n} input view(s), each view held out in turn"
                res.examples.append({"name": s["name"], "title": title,
                                     "n_inputs": n, "gt": t["rgb"], "pred": torch.stack(preds),
                                     "pred_alpha": torch.stack(alphas), "gt_alpha": t["alpha"],
                                     "views": s["view_ids"]})
    return res


def end_to_end_rows(pipe, model, data_root: str | os.PathLike, names: list[str], sampler, cfg: EvalConfig,
                    lpips=None, gslrm_views: list[int] | None = None, keep_reference: bool = True,
                    label: str = "real") -> EvalResult:
    """Question 2: reference view (position ``pipe.model.config.reference_view``) -> MVDiffusion at
    every camera of the sample -> GS-LRM on the views at positions ``gslrm_views`` (None = all; the
    reference slot holds the real reference when ``keep_reference``) -> every real view except the
    reference. Also scores the generated views themselves (question "mvdiffusion"). Objects are
    generated ``cfg.generation_batch`` at a time; object i's noise comes from seed + i either way."""
    from .mvdiffusion.pipeline import resize_views

    S, Sm = model.cfg.image_size, pipe.image_size
    R = cfg.score_size or S
    ref = pipe.model.config.reference_view
    res = EvalResult()
    todo = _names(names, cfg)
    for start in range(0, len(todo), max(1, cfg.generation_batch)):
        chunk = todo[start:start + max(1, cfg.generation_batch)]
        raws = [samples_io.read_sample(Path(data_root) / name) for name in chunk]
        if len({tuple(r.images.shape) for r in raws}) > 1:
            raise ValueError(f"{data_root}: samples {chunk} differ in views or size "
                             f"({sorted({tuple(r.images.shape) for r in raws})}); set generation_batch to 1")
        imgs, Km = resize_views(torch.stack([r.images for r in raws]), torch.stack([r.K for r in raws]), Sm)  # [b, V, 4, Sm, Sm]
        w2c = torch.stack([r.w2c for r in raws])                           # [b, V, 4, 4]
        gens = pipe(imgs[:, ref], w2c[:, ref], w2c, Km, sampler,          # object i's noise: seed + i
                    generator=[torch.Generator().manual_seed(cfg.seed + start + j) for j in range(len(chunk))]).cpu()
        for j, name in enumerate(chunk):
            s_in, s = load_eval_sizes(Path(data_root) / name, S, R)       # GS-LRM's inputs; targets at the scored size
            _end_to_end_object(res, start + j, s, s_in["K"], gens[j], imgs[j], Km[j], model, ref, cfg, lpips, gslrm_views,
                               keep_reference, label)
    return res


def _end_to_end_object(res: EvalResult, i: int, s: dict, K_in: torch.Tensor, gen: torch.Tensor, imgs: torch.Tensor,
                       Km: torch.Tensor, model, ref: int, cfg: EvalConfig, lpips, gslrm_views: list[int] | None,
                       keep_reference: bool, label: str) -> None:
    """Question 2 for object ``i`` of the split: its generated views gen [V, 4, Sm, Sm] (real views
    imgs [V, 4, Sm, Sm] with intrinsics Km [V, 3, 3] at the generator's size) -> GS-LRM (inputs at
    its size S, intrinsics K_in [V, 3, 3]) -> rows scored against sample ``s`` (loaded at the scored
    size R: ``cfg.score_size`` or S)."""
    from .mvdiffusion.pipeline import composite

    S, R, V = model.cfg.image_size, s["rgb"].shape[-1], len(s["view_ids"])
    if keep_reference:
        gen[ref] = composite(imgs[ref], (1.0, 1.0, 1.0))
    # generated RGB is already over white: resize it as opaque, and its alpha separately
    opaque = torch.cat([gen[:, :3], torch.ones_like(gen[:, 3:])], 1)
    g_in = prepare_images(opaque, Km, S)[0]                          # [V, 3, S, S]: GS-LRM's inputs
    g_rgb = g_in if R == S else prepare_images(opaque, Km, R)[0]     # [V, 3, R, R]: scored
    g_alpha = prepare_images(gen, Km, R)[1]                          # [V, 1, R, R]
    used = list(range(V)) if not gslrm_views else list(gslrm_views)
    targets = [v for v in range(V) if v != ref]
    check_plan([ref], targets)  # the reference is the only real input
    uu, tt = torch.tensor(used), torch.tensor(targets)
    out, rgb, alpha = reconstruct_and_render(model, g_in[uu][None], s["c2w"][uu][None], K_in[uu][None],
                                             s["w2c"][tt][None], s["K"][tt][None], cfg.backend, cfg.bf16, R)
    st = st_lpips_model(cfg, rgb.device)
    m = score(rgb[0], alpha[0], s["rgb"][tt], s["alpha"][tt], lpips, st)   # each [Vt]
    st_cpu = st_lpips_model(cfg)  # the generated views and the sample's own views live on the CPU
    mg = score(g_rgb[tt], g_alpha[tt], s["rgb"][tt], s["alpha"][tt], lpips, st_cpu)
    same = [ref] * len(targets)  # the baseline that needs no model: the reference view copied into every target
    mc = score(s["rgb"][same], s["alpha"][same], s["rgb"][tt], s["alpha"][tt], lpips, st_cpu)
    for a, t in enumerate(targets):
        res.rows.append(sample_row("end_to_end", label, s, 1, [ref], t, m, a))
        res.rows.append(sample_row("mvdiffusion", label, s, 1, [ref], t, mg, a))
        res.rows.append(sample_row("end_to_end", COPY_REFERENCE, s, 1, [ref], t, mc, a))
    if i < cfg.n_examples:
        res.examples.append({"name": s["name"], "title": f"end to end from view {s['view_ids'][ref]}",
                             "gt": s["rgb"][tt], "pred": rgb[0].cpu(), "gt_alpha": s["alpha"][tt],
                             "generated": g_rgb, "views": [s["view_ids"][t] for t in targets],
                             "gaussians": gaussians_from_output(out, 0, cfg.min_opacity).to("cpu"),
                             "provenance": s["provenance"]})


# ----------------------------------------------------------------------------------------------
# Gaussians and 3D error
# ----------------------------------------------------------------------------------------------
def gaussians_from_output(out, b: int = 0, min_opacity: float = 0.0) -> Gaussians:
    """Scene ``b`` of a GS-LRM GaussianOutput as a :class:`Gaussians` (degree-0 colours), keeping
    those with opacity >= ``min_opacity``."""
    if out.sh_degree != 0:
        raise ValueError(f"gaussians_from_output: sh_degree {out.sh_degree} is not supported (PLY writes degree 0)")
    g = Gaussians(out.means[b].float(), out.quats[b].float(), out.scales[b].float(), out.opacities[b].float(),
                  out.sh0[b].float())
    return g.prune_opacity(min_opacity) if min_opacity > 0 else g


def to_world_mm(g: Gaussians, normalization: dict) -> Gaussians:
    """Gaussians in a sample's normalized space -> world mm, with the sample's provenance
    ``normalization`` ({"scale", "center_mm"}): centres by Similarity.invert_points, scales / scale."""
    sim = cameras.Similarity(scale=float(normalization["scale"]), center=tuple(normalization["center_mm"]))
    return Gaussians(sim.invert_points(g.means), g.quats, g.scales / sim.scale, g.opacities, g.sh0)


def chamfer_to_surface(means: torch.Tensor, opacities: torch.Tensor, normalization: dict, surface_mm: torch.Tensor,
                       min_opacity: float = 0.01) -> dict:
    """3D error of a reconstruction: means [N, 3] (normalized space) with opacities [N] -> world mm
    (the sample's normalization) -> :func:`metrics.chamfer_mm` against surface_mm [M, 3]; Gaussians
    with opacity < ``min_opacity`` are left out. -> {"accuracy_mm", "completeness_mm", "chamfer_mm",
    "n_gaussians"}."""
    keep = opacities >= min_opacity
    if not keep.any():
        nan = float("nan")
        return {"accuracy_mm": nan, "completeness_mm": nan, "chamfer_mm": nan, "n_gaussians": 0}
    sim = cameras.Similarity(scale=float(normalization["scale"]), center=tuple(normalization["center_mm"]))
    pts = sim.invert_points(means[keep].double())
    res = metrics.chamfer_mm(pts, surface_mm.to(pts), opacities[keep].to(pts))
    return {**res, "n_gaussians": int(keep.sum())}


def ground_truth_frame(provenance: dict) -> tuple[str | None, int | None, str]:
    """The procedural recording and frame a sample's provenance names -> (recording, frame, ""), or
    (None, None, reason) when there is no ground truth to read (a real recording, or no frame named)."""
    from .data import procedural

    rec, frame = provenance.get("recording"), provenance.get("frame_index")
    if rec is None or frame is None:
        return None, None, "the sample's provenance names no recording frame (not from notebook 01?)"
    if not (Path(rec) / procedural.GT_DIR / "params.json").is_file():
        return None, None, f"{rec} has no {procedural.GT_DIR}/ (not a procedural recording)"
    return rec, int(frame), ""


def true_surface(provenance: dict, n_points: int, generator: torch.Generator) -> tuple[torch.Tensor | None, str]:
    """Points on the true surface (mm) of the sample's frame, or (None, reason) when the sample does
    not come from a procedural recording with ground truth."""
    from .data import procedural

    rec, frame, why = ground_truth_frame(provenance)
    if rec is None:
        return None, why
    return procedural.sample_surface(rec, frame, n_points, generator), ""


def behaviour_labels(data_root: str | os.PathLike, names: list[str], high_deg: float = 45.0) -> dict[int, str] | None:
    """frame index -> what the mouse does there (:func:`procedural.behaviour`: walking, a low or a high
    rear) for the samples ``names`` under ``data_root``, from their recording's true poses; None when
    they do not come from a procedural recording (a real one has no ground truth). See
    :func:`summarize_by_behaviour`."""
    from .data import procedural

    poses, labels = {}, {}
    for name in names:
        rec, frame, _ = ground_truth_frame(samples_io.read_cameras(Path(data_root) / name)[0].get("provenance", {}))
        if rec is None:
            return None
        if rec not in poses:
            poses[rec] = procedural.load_ground_truth(rec)[1]
        labels[frame] = procedural.behaviour(poses[rec], frame, high_deg)
    return labels


def summarize_by_behaviour(rows: list[dict], labels: dict[int, str], by: tuple[str, ...] = (),
                           metric_names: tuple[str, ...] = ("psnr_fg", "ssim_fg", "mask_iou")) -> list[dict]:
    """:func:`summarize_rows` of ``rows`` grouped by ``by`` and by what the mouse does in each row's frame
    (``labels`` from :func:`behaviour_labels`), clustered by frame as always."""
    return summarize_rows([{**r, "behaviour": labels[r["frame"]]} for r in rows], by=(*by, "behaviour"),
                          metric_names=metric_names)


@torch.no_grad()
def reconstruct_sample(model, sample_dir: str | os.PathLike, input_views: list[int] | None = None):
    """GS-LRM on the real views at positions ``input_views`` (None = all) of one sample
    -> (GaussianOutput with B = 1, the sample from :func:`load_eval_sample`)."""
    s = load_eval_sample(sample_dir, model.cfg.image_size)
    uu = torch.tensor(list(range(len(s["view_ids"]))) if not input_views else list(input_views))
    dev = next(model.parameters()).device
    return model(s["rgb"][uu][None].to(dev), s["c2w"][uu][None].to(dev), s["K"][uu][None].to(dev)), s


def chamfer_rows(model, data_root: str | os.PathLike, names: list[str], cfg: EvalConfig,
                 input_views: list[int] | None = None, label: str = "real") -> tuple[list[dict], str]:
    """Question 4: reconstruct each sample from the real views at ``input_views`` (None = all) and
    measure the 3D error. -> (rows {"sample", "frame", "model", "inputs", accuracy/completeness/
    chamfer mm, "n_gaussians"}, reason why there are none or "")."""
    rows, why = [], ""
    for i, name in enumerate(_names(names, cfg)):
        prov = samples_io.read_cameras(Path(data_root) / name)[0].get("provenance", {})
        surface, why = true_surface(prov, cfg.surface_points, torch.Generator().manual_seed(cfg.seed + i))
        if surface is None:
            log.info("3D error skipped: %s", why)
            return [], why
        out, s = reconstruct_sample(model, Path(data_root) / name, input_views)
        used = list(range(len(s["view_ids"]))) if not input_views else list(input_views)
        c = chamfer_to_surface(out.means[0].cpu(), out.opacities[0].cpu(), s["provenance"]["normalization"], surface,
                               cfg.min_opacity)
        rows.append({"question": "3d_error", "model": label, "sample": name, "frame": s["provenance"]["frame_index"],
                     "inputs": " ".join(str(s["view_ids"][v]) for v in used), **c})
    return rows, why


def degradation_rows(data_root: str | os.PathLike, names: list[str], image_size: int, cfg: EvalConfig,
                     degradations: tuple[str, ...] = metrics.DEGRADATIONS,
                     device: str | torch.device = "cpu") -> list[dict]:
    """The scale of the metrics: every view of every test sample at ``image_size`` (the GS-LRM's),
    scored against a degraded copy of itself (:func:`metrics.degradation_metrics`, on ``device``). One
    row per (sample, view, degradation) with question "degraded_gt" and the degradation as "model"; no
    model, no inputs (n_inputs 0). ST-LPIPS as configured in ``cfg``; LPIPS-VGG is not computed here (NaN)."""
    rows = []
    st = st_lpips_model(cfg, device)
    for name in _names(names, cfg):
        s = load_eval_sample(Path(data_root) / name, image_size)
        for d in degradations:
            m = metrics.degradation_metrics(s["rgb"].to(device), s["alpha"].to(device), d, st)     # each [V]
            m = {k: v.cpu() for k, v in m.items()}
            m.setdefault("st_lpips", torch.full_like(m["psnr_fg"], float("nan")))
            m["lpips"] = torch.full_like(m["psnr_fg"], float("nan"))
            for v in range(s["rgb"].shape[0]):
                rows.append(sample_row("degraded_gt", d, s, 0, [], v, m, v))
    return rows


def shift_vs_blur_rows(data_root: str | os.PathLike, names: list[str], image_size: int, cfg: EvalConfig,
                       lpips=None, device: str | torch.device = "cpu") -> list[dict]:
    """The property ST-LPIPS was published for: every view of every test sample against (a) itself
    moved by one pixel (image and alpha, the mean of the four directions, as "shift_1px") and (b)
    itself blurred by the Gaussian whose PSNR_fg equals (a)'s (:func:`metrics.blur_sigma_for_psnr`),
    so both errors have the same MSE over GT-foreground pixels. Rows as :func:`degradation_rows`
    (question "shift_vs_blur", model "shift_1px" or "blur_equal_mse", column "blur_sigma_px"), with
    LPIPS-VGG when ``lpips`` is given."""
    rows = []
    st = st_lpips_model(cfg, device)
    for name in _names(names, cfg):
        s = load_eval_sample(Path(data_root) / name, image_size)
        rgb, alpha = s["rgb"].to(device), s["alpha"].to(device)                  # [V, 3|1, S, S]
        copies = metrics.degraded_copies(rgb, alpha, "shift_1px")
        runs = [score(c_rgb, c_alpha, rgb, alpha, lpips, st) for c_rgb, c_alpha in copies]
        shifted = {k: torch.stack([r[k] for r in runs]).mean(0) for k in runs[0]}  # each [V]
        sigmas = [metrics.blur_sigma_for_psnr(rgb[v], alpha[v], float(shifted["psnr_fg"][v]))
                  for v in range(rgb.shape[0])]
        blurred = [(metrics.gaussian_blur(rgb[v], sg), metrics.gaussian_blur(alpha[v], sg))
                   for v, sg in enumerate(sigmas)]
        m = score(torch.stack([b[0] for b in blurred]), torch.stack([b[1] for b in blurred]), rgb, alpha, lpips, st)
        for v in range(rgb.shape[0]):
            rows.append({**sample_row("shift_vs_blur", "shift_1px", s, 0, [], v, shifted, v), "blur_sigma_px": 0.0})
            rows.append({**sample_row("shift_vs_blur", "blur_equal_mse", s, 0, [], v, m, v), "blur_sigma_px": sigmas[v]})
    return rows


# ----------------------------------------------------------------------------------------------
# Summaries and figures
# ----------------------------------------------------------------------------------------------
def summarize_rows(rows: list[dict], by: tuple[str, ...] = ("question", "model", "n_inputs"),
                   metric_names: tuple[str, ...] = METRICS, cluster: str = "sample", n_boot: int = 2000,
                   seed: int = 0) -> list[dict]:
    """Group rows by ``by`` -> one flat dict per group: the keys, "n_rows", "n_frames", and for each
    metric ``<m>`` (mean), ``<m>_ci95`` (half-width of the 95% bootstrap interval clustered by the
    rows' ``cluster`` key, :func:`metrics.bootstrap_ci`: views of one frame are resampled together),
    ``<m>_ci95_views`` (the naive per-view normal interval of :func:`metrics.summarize`, which treats
    views as independent) and ``<m>_n`` (undefined views left out). ``cluster=""``: the naive
    interval in ``<m>_ci95`` too."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        d = {**dict(zip(by, key)), "n_rows": len(rs)}
        if cluster:
            d["n_frames"] = len({r[cluster] for r in rs})
        for m in metric_names:
            if m in rs[0]:
                s = metrics.summarize([r[m] for r in rs])
                ci = metrics.bootstrap_ci([r[m] for r in rs], [r[cluster] for r in rs], n_boot, seed)["ci95"] \
                    if cluster else s["ci95"]
                d.update({m: s["mean"], f"{m}_ci95": ci, f"{m}_ci95_views": s["ci95"], f"{m}_n": s["n"]})
        out.append(d)
    return out


def paired_difference(rows_a: list[dict], rows_b: list[dict], metric: str = "psnr_fg", n_boot: int = 2000,
                      seed: int = 0) -> dict:
    """``metric`` of a minus b on the views both scored (matched on question, sample, n_inputs,
    inputs, target view) -> {"n_inputs": {N: summarize(differences) with "ci95" the bootstrap
    interval clustered by sample (:func:`metrics.bootstrap_ci`) and "ci95_views" the naive one},
    "n_pairs"}."""
    def key(r):
        return (r["question"], r["sample"], r["n_inputs"], r["inputs"], r["target_view"])

    b = {key(r): r for r in rows_b}
    diffs: dict[int, list[tuple[str, float]]] = {}
    for r in rows_a:
        if key(r) in b:
            diffs.setdefault(r["n_inputs"], []).append((r["sample"], r[metric] - b[key(r)][metric]))
    out = {}
    for n, pairs in sorted(diffs.items()):
        s = metrics.summarize([d for _, d in pairs])
        ci = metrics.bootstrap_ci([d for _, d in pairs], [c for c, _ in pairs], n_boot, seed)
        out[n] = {**s, "ci95_views": s["ci95"], "ci95": ci["ci95"], "n_frames": ci["n_clusters"]}
    return {"metric": metric, "n_pairs": sum(len(v) for v in diffs.values()), "n_inputs": out}


def comparison_grid(gt: torch.Tensor, pred: torch.Tensor, gain: float = 4.0) -> np.ndarray:
    """One row per view: ground truth | render | error, as uint8 [V*H, 3*W, 3]. gt, pred
    [V, 3, H, W] in [0, 1] on white; the error |pred - gt| (mean over RGB) x ``gain`` is drawn
    white (0) to red (>= 1)."""
    e = ((pred - gt).abs().mean(-3, keepdim=True) * gain).clamp(0, 1)          # [V, 1, H, W]
    err = torch.cat([torch.ones_like(e), 1 - e, 1 - e], -3)
    rows = torch.cat([gt, pred, err], -1)                                       # [V, 3, H, 3W]
    img = torch.cat(list(rows), -2).clamp(0, 1)                                 # [3, V*H, 3W]
    return to_uint8(img.permute(1, 2, 0))


def metrics_document(summaries: list[dict], lpips_reason: str, **sections) -> dict:
    """The content of ``eval/metrics.json``: the protocol (name, version, rules), LPIPS availability
    (with the reason when unavailable), the summaries, and any further sections."""
    lp = {"available": not lpips_reason}
    if lpips_reason:
        lp["reason"] = lpips_reason
    return {"protocol": dict(metrics.PROTOCOL), "lpips": lp, "summaries": summaries, **sections}


__all__ = ["COPY_REFERENCE", "EvalConfig", "EvalResult", "view_plans", "check_plan", "load_eval_sample", "load_eval_sizes", "reconstruct_and_render",
           "score", "view_row", "sample_row", "reconstruction_rows", "end_to_end_rows", "gaussians_from_output",
           "to_world_mm", "chamfer_to_surface", "ground_truth_frame", "true_surface", "behaviour_labels", "summarize_by_behaviour",
           "reconstruct_sample", "chamfer_rows", "degradation_rows",
           "shift_vs_blur_rows", "st_lpips_model", "st_lpips_status", "summarize_rows",
           "paired_difference",
           "comparison_grid", "metrics_document"]
