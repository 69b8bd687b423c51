"""Honest baselines for notebook 07: what the same N input views give without a learned model.

Scored with the same plans, rows and metrics as the GS-LRM (:mod:`mousefacelift.evaluation`): each
view of a test sample held out in turn, its inputs the same seeded N other views
(:func:`mousefacelift.evaluation.view_plans`), images at the GS-LRM's size on white, cameras in the
sample's normalized space.

1. ``visual_hull``: the voxels of a cube about the origin whose centres project inside the mask of
   every input view (the carving of :mod:`mousefacelift.data.consistency`), ray-marched into the
   held-out view for its silhouette, painted one flat colour: the mean foreground colour of the
   input views (so its PSNR_fg says how far the right shape in one colour gets).
2. ``gaussian_fit``: one Gaussian per surface voxel of that hull, coloured by the mean of the input
   pixels it projects to (no occlusion test), then fitted to the input views' colours (on white) and
   masks by Adam for ``fit_iterations`` steps; rendered by :func:`mousefacelift.gaussians.rasterize`
   (gsplat on CUDA, the repository's differentiable torch rasterizer on the CPU).
3. ``gslrm_one_view`` (end to end's baseline): the GS-LRM given the reference view alone, scored on
   the same targets as the end-to-end path (every other view).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import cameras, evaluation
from .configs import bounded, check_ranges
from .data.consistency import inside_masks, render_silhouette, voxel_centers
from .gaussians import rasterize

log = logging.getLogger(__name__)

METHODS = ("visual_hull", "gaussian_fit")


@dataclass
class BaselineConfig:
    hull_resolution: int = bounded(64, min=4)     # voxels per side of the carved cube
    hull_half_size: float = bounded(1.2, gt=0)    # half side of the cube about the origin (normalized; cameras at 2.7)
    hull_step_voxels: float = bounded(0.5, gt=0)  # ray-marching step of the hull's silhouette, in voxel sizes
    fit_iterations: int = bounded(300, min=0)     # Adam steps of the per-frame Gaussian fit
    fit_lr: float = bounded(0.01, gt=0)           # Adam learning rate (colours, opacities, log-scales; means x 0.1)
    fit_mask_weight: float = bounded(1.0, min=0)  # weight of the alpha-vs-mask MSE beside the RGB MSE
    backend: str = "auto"                         # rasterizer: "auto" (gsplat on CUDA), "gsplat" or "torch"

    def __post_init__(self):
        check_ranges(self)


# ----------------------------------------------------------------------------------------------
# 1. Visual hull
# ----------------------------------------------------------------------------------------------
def visual_hull(alpha: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, cfg: BaselineConfig) -> torch.Tensor:
    """Carve: alpha [V, 1, S, S] (mask = alpha > 0.5), K [V, 3, 3], w2c [V, 4, 4] -> occupancy
    [R, R, R] bool ([iz, iy, ix], the cube of :func:`voxel_centers` about the origin)."""
    R = cfg.hull_resolution
    pts = voxel_centers(torch.zeros(3, dtype=torch.float64, device=alpha.device), cfg.hull_half_size, R).reshape(-1, 3)
    inside = inside_masks(pts.float(), alpha[:, 0] > 0.5, K.float(), w2c.float())     # [V, R^3]
    return inside.all(0).reshape(R, R, R)


def mean_colour(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Mean colour of the foreground pixels (alpha > 0.5) of views rgb [V, 3, S, S] -> [3] (grey without any)."""
    fg = (alpha > 0.5).to(rgb.dtype)
    n = fg.sum()
    return (rgb * fg).sum((0, 2, 3)) / n if n > 0 else torch.full((3,), 0.5, dtype=rgb.dtype, device=rgb.device)


def render_hull(occ: torch.Tensor, colour: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, size: int,
                cfg: BaselineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The hull seen by cameras K [Vt, 3, 3], w2c [Vt, 4, 4]: rgb [Vt, 3, S, S] (``colour`` [3] inside
    the silhouette, white outside) and alpha [Vt, 1, S, S] (0 or 1)."""
    origin = torch.zeros(3, dtype=torch.float64, device=occ.device)
    sil = torch.stack([render_silhouette(occ, origin, cfg.hull_half_size, K[v].double(), w2c[v].double(), size, size,
                                         cfg.hull_step_voxels)
                       for v in range(K.shape[0])])[:, None].float()                  # [Vt, 1, S, S]
    rgb = sil * colour.view(1, 3, 1, 1).float() + (1 - sil)
    return rgb, sil


# ----------------------------------------------------------------------------------------------
# 2. Per-frame Gaussian fit
# ----------------------------------------------------------------------------------------------
def hull_gaussians(occ: torch.Tensor, rgb: torch.Tensor, alpha: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor,
                   cfg: BaselineConfig) -> dict[str, torch.Tensor]:
    """Initial Gaussians from the hull's surface voxels (occupied with an empty 6-neighbour): means
    [N, 3] at the voxel centres, log_scales [N, 3] (half a voxel), opacity_logits [N] (0.9), rgb_logits
    [N, 3] from the mean colour of the input pixels rgb [V, 3, S, S] each projects into inside its mask
    (alpha [V, 1, S, S]); K [V, 3, 3], w2c [V, 4, 4]. Empty hull -> N = 0."""
    R = occ.shape[0]
    pad = F.pad(occ[None, None].float(), (1, 1, 1, 1, 1, 1))[0, 0]
    inner = occ.clone()
    for dim in range(3):
        for shift in (0, 2):
            inner &= pad.narrow(dim, shift, R).narrow((dim + 1) % 3, 1, R).narrow((dim + 2) % 3, 1, R) > 0.5
    surface = occ & ~inner
    centres = voxel_centers(torch.zeros(3, dtype=torch.float64, device=occ.device), cfg.hull_half_size,
                            R)[surface].float()                                                   # [N, 3]
    voxel = 2 * cfg.hull_half_size / R
    V, _, S, _ = rgb.shape
    uv, z = cameras.project(centres, w2c.float(), K.float())                           # [V, N, 2], [V, N]
    iu, iv = uv[..., 0].floor().long().clamp(0, S - 1), uv[..., 1].floor().long().clamp(0, S - 1)
    view = torch.arange(V, device=iu.device)[:, None].expand_as(iu)
    seen = (alpha[view, 0, iv, iu] > 0.5) & (z > 0)                                    # [V, N]
    col = rgb.permute(0, 2, 3, 1)[view, iv, iu]                                         # [V, N, 3]
    w = seen.float()[..., None]
    colour = (col * w).sum(0) / w.sum(0).clamp_min(1)
    colour = torch.where(w.sum(0) > 0, colour, torch.full_like(colour, 0.5)).clamp(0.02, 0.98)
    n = centres.shape[0]
    return {"means": centres, "log_scales": torch.full((n, 3), math.log(0.5 * voxel), device=centres.device),
            "opacity_logits": torch.full((n,), math.log(0.9 / 0.1), device=centres.device),
            "rgb_logits": torch.logit(colour)}


def stack_gaussians(inits: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Several plans' Gaussians of :func:`hull_gaussians` (N_b each) as one batch padded to N = max N_b:
    means [B, N, 3], log_scales [B, N, 3], opacity_logits [B, N], rgb_logits [B, N, 3], and valid [B, N]
    (1 for a plan's own Gaussians, 0 for padding: :func:`render_params` gives padding no opacity)."""
    n = max(1, max(p["means"].shape[0] for p in inits))
    pad = {"means": 0.0, "log_scales": -10.0, "opacity_logits": 0.0, "rgb_logits": 0.0}  # padding: tiny, at the origin
    out = {k: torch.stack([F.pad(p[k], (0, 0) * (p[k].dim() - 1) + (0, n - p[k].shape[0]), value=v) for p in inits])
           for k, v in pad.items()}
    out["valid"] = torch.stack([(torch.arange(n, device=p["means"].device) < p["means"].shape[0]).float()
                                for p in inits])
    return out


def render_params(p: dict[str, torch.Tensor], K: torch.Tensor, w2c: torch.Tensor, size: int,
                  backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """B plans' Gaussians of :func:`stack_gaussians` (raw parameters) seen by K [B, V, 3, 3], w2c
    [B, V, 4, 4] -> rgb [B, V, 3, S, S] on white, alpha [B, V, 1, S, S] (differentiable)."""
    B, n = p["means"].shape[:2]
    quats = torch.zeros(B, n, 4, dtype=p["means"].dtype, device=p["means"].device)
    quats[..., 0] = 1
    r = rasterize(p["means"], quats, p["log_scales"].exp(), torch.sigmoid(p["opacity_logits"]) * p["valid"],
                  torch.sigmoid(p["rgb_logits"]), w2c.to(p["means"]), K.to(p["means"]), size, size,
                  background=(1.0, 1.0, 1.0), sh_degree=None, backend=backend)
    return r.rgb.permute(0, 1, 4, 2, 3), r.alpha.permute(0, 1, 4, 2, 3)


def fit_gaussians(init: dict[str, torch.Tensor], rgb: torch.Tensor, alpha: torch.Tensor, K: torch.Tensor,
                  w2c: torch.Tensor, cfg: BaselineConfig) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Fit B plans at once: the Gaussians ``init`` of :func:`stack_gaussians` to their input views rgb
    [B, V, 3, S, S] on white and alpha [B, V, 1, S, S] (cameras K [B, V, 3, 3], w2c [B, V, 4, 4]).
    Adam on the sum over plans of MSE(rgb) + fit_mask_weight * MSE(alpha), on the device of ``rgb``.
    A plan's loss reaches only its own Gaussians and Adam updates each element on its own, so each
    plan is fitted as if alone, while the GPU renders all of them in one call per step.
    -> (fitted parameters, detached; the summed loss before each step)."""
    dev = rgb.device
    p = {k: v.detach().clone().to(dev).requires_grad_(k != "valid") for k, v in init.items()}
    if not bool(p["valid"].any()) or cfg.fit_iterations == 0:
        return {k: v.detach() for k, v in p.items()}, []
    opt = torch.optim.Adam([{"params": [p["means"]], "lr": 0.1 * cfg.fit_lr},
                            {"params": [p["log_scales"], p["opacity_logits"], p["rgb_logits"]], "lr": cfg.fit_lr}])
    K, w2c, S = K.to(dev), w2c.to(dev), rgb.shape[-1]
    mask = (alpha > 0.5).to(rgb.dtype)
    losses = []  # kept on the device: one host sync at the end, not one per step
    for _ in range(cfg.fit_iterations):
        r_rgb, r_alpha = render_params(p, K, w2c, S, cfg.backend)
        loss = ((r_rgb - rgb) ** 2).flatten(1).mean(1).sum() \
            + cfg.fit_mask_weight * ((r_alpha - mask) ** 2).flatten(1).mean(1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return {k: v.detach() for k, v in p.items()}, torch.stack(losses).tolist()


# ----------------------------------------------------------------------------------------------
# Rows for notebook 07
# ----------------------------------------------------------------------------------------------
def baseline_rows(data_root: str | os.PathLike, names: list[str], n_inputs: list[int], image_size: int,
                  eval_cfg: evaluation.EvalConfig, cfg: BaselineConfig, methods: tuple[str, ...] = METHODS,
                  lpips=None, device: str | torch.device = "cpu") -> evaluation.EvalResult:
    """Question 1's plans (:func:`evaluation.view_plans`, same seed: same inputs and targets as the
    GS-LRM) answered by the baselines ``methods``; rows as :func:`evaluation.reconstruction_rows`'s
    with the method as "model". Samples: the first ``eval_cfg.max_samples`` (0 = all); images at
    ``image_size`` (the scored size: the GS-LRM's, or notebook 07's score_size)."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}; choose from {METHODS}")
    res = evaluation.EvalResult()
    st = evaluation.st_lpips_model(eval_cfg)  # ST-LPIPS in every row, as the GS-LRM's (None: NaN)
    todo = names[:eval_cfg.max_samples] if eval_cfg.max_samples > 0 else list(names)
    for i, name in enumerate(todo):
        s = evaluation.load_eval_sample(Path(data_root) / name, image_size)
        d = {k: s[k].to(device) for k in ("rgb", "alpha", "K", "w2c")}  # carving, marching and fitting on the device
        V = s["rgb"].shape[0]
        for n in n_inputs:
            plans = evaluation.view_plans(V, n, i, eval_cfg.seed)
            preds = {m: [] for m in methods}  # per plan: (rgb [Vt, 3, S, S], alpha [Vt, 1, S, S])
            inits = []
            for inputs, targets in plans:
                evaluation.check_plan(inputs, targets)
                ii, tt = torch.tensor(inputs), torch.tensor(targets)
                occ = visual_hull(d["alpha"][ii], d["K"][ii], d["w2c"][ii], cfg)
                if "visual_hull" in methods:
                    preds["visual_hull"].append(render_hull(occ, mean_colour(d["rgb"][ii], d["alpha"][ii]),
                                                            d["K"][tt], d["w2c"][tt], image_size, cfg))
                if "gaussian_fit" in methods:
                    inits.append(hull_gaussians(occ, d["rgb"][ii], d["alpha"][ii], d["K"][ii], d["w2c"][ii], cfg))
            if "gaussian_fit" in methods:  # every plan of this N in one batched fit (same N inputs, same Vt)
                ii = torch.tensor([inputs for inputs, _ in plans])                      # [B, n]
                tt = torch.tensor([targets for _, targets in plans])                    # [B, Vt]
                fitted, _ = fit_gaussians(stack_gaussians(inits), d["rgb"][ii], d["alpha"][ii], d["K"][ii],
                                          d["w2c"][ii], cfg)
                with torch.no_grad():
                    rgb, a = render_params(fitted, d["K"][tt], d["w2c"][tt], image_size, cfg.backend)
                preds["gaussian_fit"] = list(zip(rgb, a))
            for b, (inputs, targets) in enumerate(plans):
                for method in methods:
                    rgb, a = preds[method][b]
                    m = evaluation.score(rgb.clamp(0, 1).cpu(), a.cpu(), s["rgb"][targets], s["alpha"][targets],
                                         lpips, st)  # each [Vt]
                    for k, t in enumerate(targets):
                        res.rows.append(evaluation.sample_row("reconstruction", method, s, n, inputs, t, m, k))
        log.info("baselines: %s done (%d/%d)", name, i + 1, len(todo))
    return res


def one_view_rows(model, data_root: str | os.PathLike, names: list[str], reference_view: int,
                  eval_cfg: evaluation.EvalConfig, lpips=None) -> evaluation.EvalResult:
    """End to end's baseline: the GS-LRM on the reference view alone, rendered into every other view
    (the end-to-end path's targets); rows with question "end_to_end", model "gslrm_one_view". Input at
    the GS-LRM's size, targets at ``eval_cfg.score_size`` (0: the same)."""
    S = model.cfg.image_size
    R = eval_cfg.score_size or S
    res = evaluation.EvalResult()
    todo = names[:eval_cfg.max_samples] if eval_cfg.max_samples > 0 else list(names)
    for name in todo:
        s_in, s = evaluation.load_eval_sizes(Path(data_root) / name, S, R)
        targets = [v for v in range(s["rgb"].shape[0]) if v != reference_view]
        evaluation.check_plan([reference_view], targets)
        uu, tt = torch.tensor([reference_view]), torch.tensor(targets)
        _, rgb, alpha = evaluation.reconstruct_and_render(
            model, s_in["rgb"][uu][None], s_in["c2w"][uu][None], s_in["K"][uu][None], s["w2c"][tt][None],
            s["K"][tt][None], eval_cfg.backend, eval_cfg.bf16, R)
        m = evaluation.score(rgb[0], alpha[0], s["rgb"][tt], s["alpha"][tt], lpips,
                             evaluation.st_lpips_model(eval_cfg, rgb.device))
        for k, t in enumerate(targets):
            res.rows.append(evaluation.sample_row("end_to_end", "gslrm_one_view", s, 1, [reference_view], t, m, k))
    return res


__all__ = ["BaselineConfig", "METHODS", "visual_hull", "mean_colour", "render_hull", "hull_gaussians",
           "render_params", "fit_gaussians", "baseline_rows", "one_view_rows"]
