"""Preprocessing strategies (image AND matching camera) and the metrics that compare them.

Every strategy turns one source view (rgb, mask, K, w2c) and the triangulated mouse centre into a
square :class:`~mousefacelift.data.views.View` by ONE warp from the source, reusing
:func:`~mousefacelift.data.views.crop_view` and :func:`~mousefacelift.data.views.rectify_view`:

* ``crop``: notebook 01's crop policy, the reference: a fixed square (``crop_fraction`` of the
  source height) around the projection of the 3D centre;
* ``centered``: the same fixed square around the mask's bounding-box centre (no scaling);
* ``uniform``: a square around the projected 3D centre whose side is chosen ONCE per sample so that
  the mean of sqrt(mouse pixels / all pixels) over the views is ``target_ratio``;
* ``pixel_based`` (per-view 2D normalization): per view, the mask's centre of mass to the image centre
  and the side chosen so that sqrt(mouse pixels / all pixels) = ``target_ratio``;
* ``rectify``: notebook 01's default: the camera turns about its centre to look at the mouse,
  FaceLift's intrinsics (its field of view, or ``fov_deg``), exact rotation homography.

``update_cameras=False`` leaves the cameras unchanged: the image is the strategy's, the camera stays
the reference (``crop``) camera, so the image content and the camera disagree.

Metrics (:func:`evaluate_strategies` per view, :func:`strategy_table` per strategy x flag): size ratio
mean and coefficient of variation, centre-of-mass offset from the image centre (px), fraction of
views cut by the image border, effective field of view (mean, spread), reprojection error of
ground-truth 3D keypoints (procedural recordings) and leave-one-out visual hull IoU
(:mod:`consistency`).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .. import cameras
from ..constants import FACELIFT_FOV_DEG, MASK_THRESHOLD
from .consistency import HullConfig, leave_one_out_iou
from .extract import ExtractConfig, frame_skip_reason, mask_centroids, triangulate_center
from .views import View, crop_view, rectify_view
from .recording import Frame, Recording, open_recording, read_frames

log = logging.getLogger(__name__)

STRATEGIES = ("crop", "centered", "uniform", "pixel_based", "rectify")


@dataclass(frozen=True)
class PreprocessConfig:
    """Every knob of the strategies and their metrics; defaults are stated here only."""
    image_size: int = 512  # output side (px) of every strategy
    crop_fraction: float = 0.9  # crop / centered (and the reference camera): square side / source height
    target_ratio: float = 0.3  # pixel_based / uniform: sqrt(mouse pixels / all pixels) to aim for
    antialias: bool = True  # rectify: Gaussian pre-blur before a shrinking warp
    fov_deg: float = FACELIFT_FOV_DEG  # rectify: field of view of each view (notebook 01's fov_deg)
    alpha_threshold: int = MASK_THRESHOLD  # output alpha above this counts as mouse
    min_mask_pixels: int = ExtractConfig.min_mask_pixels  # frame skipping, as in the extraction
    border_margin: int = ExtractConfig.border_margin
    border_contact_max: float = ExtractConfig.border_contact_max
    hull: HullConfig = field(default_factory=HullConfig)  # visual hull check

    def validate(self) -> None:
        if (self.image_size < 8 or not 0 < self.crop_fraction or not 0 < self.target_ratio < 1
                or not 0 < self.fov_deg < 180):
            raise ValueError(f"PreprocessConfig: image_size >= 8, crop_fraction > 0, 0 < target_ratio < 1 and "
                             f"0 < fov_deg < 180 required, got {self.image_size}, {self.crop_fraction}, "
                             f"{self.target_ratio}, {self.fov_deg}")
        self.hull.validate()


# ----------------------------------------------------------------------------------------------
# Strategies: per view, (rgb [H, W, 3] uint8, mask [H, W] bool, K [3, 3], w2c [4, 4], center [3]
# world mm, config) -> View (rgba [S, S, 4], K, w2c (mm) of the image, H source px -> image px)
# ----------------------------------------------------------------------------------------------
def _fixed_crop_size(mask: np.ndarray, config: PreprocessConfig) -> int:
    return max(8, int(round(config.crop_fraction * mask.shape[0])))


def _point_projecting_to(uv: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """A world point [3] that projects exactly to pixel uv [2]: on the ray through uv, at the depth
    of ``center`` along it. Lets crop_view (which centres on a projected 3D point) centre on a
    2D position."""
    o, d = cameras.rays_through_pixels(uv[None].to(K.dtype), cameras.invert_rigid(w2c), K)
    t = ((center.to(K.dtype) - o[0]) * d[0]).sum()
    return o[0] + t * d[0]


def _require_mask(mask: np.ndarray) -> None:
    if not mask.any():
        raise ValueError("preprocessing: a view's mask is empty (mouse missing); skip the frame first "
                         "(extract.frame_skip_reason does)")


def _with_reference_camera(view: View, rgb, mask, K, w2c, center, config: PreprocessConfig) -> View:
    """Cameras left unchanged: keep the image (and its warp H) but give it the reference crop's camera."""
    ref = crop(rgb, mask, K, w2c, center, config)
    return View(rgba=view.rgba, K=ref.K, w2c=ref.w2c, H=view.H)


def crop(rgb: np.ndarray, mask: np.ndarray, K: torch.Tensor, w2c: torch.Tensor, center: torch.Tensor,
         config: PreprocessConfig, *, update_cameras: bool = True) -> View:
    """The reference: fixed square around the projected 3D centre (its camera is always right)."""
    return crop_view(rgb, mask, K, w2c, center, _fixed_crop_size(mask, config), config.image_size)


def centered(rgb: np.ndarray, mask: np.ndarray, K: torch.Tensor, w2c: torch.Tensor, center: torch.Tensor,
             config: PreprocessConfig, *, update_cameras: bool = True) -> View:
    """Fixed square (no scaling) around the mask's bounding-box centre."""
    _require_mask(mask)
    ii, jj = np.nonzero(mask)
    uv = torch.tensor([(jj.min() + jj.max() + 1) / 2.0, (ii.min() + ii.max() + 1) / 2.0], dtype=torch.float64)
    view = crop_view(rgb, mask, K, w2c, _point_projecting_to(uv, K, w2c, center), _fixed_crop_size(mask, config),
                     config.image_size)
    return view if update_cameras else _with_reference_camera(view, rgb, mask, K, w2c, center, config)


def uniform_crop_size(masks: np.ndarray, config: PreprocessConfig) -> int:
    """The one square side (source px) of a sample for ``uniform``: masks [V, H, W] bool ->
    sqrt(mean mask area) / target_ratio, so the views' mean size ratio is the target."""
    area = float(np.mean([m.sum() for m in masks]))
    return max(8, int(round(math.sqrt(area) / config.target_ratio)))


def uniform(rgb: np.ndarray, mask: np.ndarray, K: torch.Tensor, w2c: torch.Tensor, center: torch.Tensor,
            config: PreprocessConfig, *, crop_size: int, update_cameras: bool = True) -> View:
    """Square of ``crop_size`` (from :func:`uniform_crop_size`, one per sample) around the
    projected 3D centre."""
    view = crop_view(rgb, mask, K, w2c, center, crop_size, config.image_size)
    return view if update_cameras else _with_reference_camera(view, rgb, mask, K, w2c, center, config)


def pixel_based(rgb: np.ndarray, mask: np.ndarray, K: torch.Tensor, w2c: torch.Tensor, center: torch.Tensor,
                config: PreprocessConfig, *, update_cameras: bool = True) -> View:
    """Per-view 2D normalization: the mask's centre of mass to the image centre,
    the square's side sqrt(mask area) / target_ratio so that sqrt(mouse px / all px) = target."""
    _require_mask(mask)
    uv = mask_centroids(mask[None])[0]
    size = max(8, int(round(math.sqrt(float(mask.sum())) / config.target_ratio)))
    view = crop_view(rgb, mask, K, w2c, _point_projecting_to(uv, K, w2c, center), size, config.image_size)
    return view if update_cameras else _with_reference_camera(view, rgb, mask, K, w2c, center, config)


def rectify(rgb: np.ndarray, mask: np.ndarray, K: torch.Tensor, w2c: torch.Tensor, center: torch.Tensor,
            config: PreprocessConfig, *, update_cameras: bool = True) -> View:
    """Notebook 01's default: look at the 3D centre, FaceLift's intrinsics, rotation homography."""
    view = rectify_view(rgb, mask, K, w2c, center, config.image_size, config.antialias, config.fov_deg)
    return view if update_cameras else _with_reference_camera(view, rgb, mask, K, w2c, center, config)


_PER_VIEW = {"crop": crop, "centered": centered, "pixel_based": pixel_based, "rectify": rectify}


def preprocess_views(rgb: np.ndarray, mask: np.ndarray, K: torch.Tensor, w2c: torch.Tensor, center: torch.Tensor,
                     strategy: str, config: PreprocessConfig, *, update_cameras: bool = True) -> list[View]:
    """All views of one frame under ``strategy``: rgb [V, H, W, 3] uint8, mask [V, H, W] bool,
    K [V, 3, 3], w2c [V, 4, 4] (mm) of the source, center [3] (world mm) -> V Views."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown preprocessing strategy {strategy!r}; choose from {STRATEGIES}")
    if strategy == "uniform":
        size = uniform_crop_size(mask, config)
        return [uniform(rgb[v], mask[v], K[v], w2c[v], center, config, crop_size=size, update_cameras=update_cameras)
                for v in range(len(rgb))]
    fn = _PER_VIEW[strategy]
    return [fn(rgb[v], mask[v], K[v], w2c[v], center, config, update_cameras=update_cameras) for v in range(len(rgb))]


def frame_center(frame: Frame, rec: Recording) -> torch.Tensor:
    """The mouse centre [3] (world mm), triangulated from the mask centroids as notebook 01 does."""
    center, _ = triangulate_center(mask_centroids(frame.mask), rec.w2c[frame.cameras], rec.K[frame.cameras])
    return center


def preprocess_frame(frame: Frame, rec: Recording, strategy: str, config: PreprocessConfig, *,
                     update_cameras: bool = True) -> list[View]:
    """:func:`preprocess_views` for a decoded frame of ``rec`` (centre triangulated here)."""
    cams = frame.cameras
    return preprocess_views(frame.rgb, frame.mask, rec.K[cams], rec.w2c[cams], frame_center(frame, rec),
                            strategy, config, update_cameras=update_cameras)


def extraction_inputs(extraction_json: str | os.PathLike, n_frames: int) -> tuple[str, list[int]]:
    """What notebook 01 extracted: (recording path, up to ``n_frames`` of its written frames, evenly
    spaced). Reads ``data/extraction.json``; when its summary lacks the recording path, falls back
    to the provenance of the samples next to it (``samples/*/opencv_cameras.json``)."""
    import json
    from pathlib import Path

    from . import samples

    path = Path(extraction_json)
    report = json.loads(path.read_text())
    written = [int(f["frame"]) for f in report.get("frames", []) if f.get("status") == "written"]
    recording = report.get("summary", {}).get("recording")
    if recording is None or not written:
        provs = [samples.read_cameras(d)[0]["provenance"] for d in sorted((path.parent / "samples").glob("sample_*"))
                 if samples.is_complete(d)]
        if not provs:
            raise ValueError(f"{path}: no recording path in its summary and no samples in {path.parent / 'samples'}; "
                             "re-run notebook 01 (01_data_extraction)")
        recording = provs[0]["recording"]
        written = written or [int(p["frame_index"]) for p in provs]
    if not written:
        raise ValueError(f"{path}: notebook 01 wrote no frames; nothing to compare")
    pick = np.unique(np.round(np.linspace(0, len(written) - 1, min(n_frames, len(written)))).astype(int))
    return str(recording), [written[i] for i in pick]


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------
def view_mask(view: View, config: PreprocessConfig) -> np.ndarray:
    """The mouse mask [S, S] bool of a View (alpha > alpha_threshold)."""
    return view.rgba[..., 3] > config.alpha_threshold


def size_ratio(mask: np.ndarray) -> float:
    """sqrt(mouse pixels / all pixels) of a mask [H, W] bool."""
    return math.sqrt(float(mask.mean()))


def com_offset_px(mask: np.ndarray) -> float:
    """Distance (px) of the mask's centre of mass from the image centre (W/2, H/2) (pixel centres
    at +0.5); NaN for an empty mask."""
    ii, jj = np.nonzero(mask)
    if ii.size == 0:
        return float("nan")
    h, w = mask.shape
    return float(math.hypot(jj.mean() + 0.5 - w / 2.0, ii.mean() + 0.5 - h / 2.0))


def touches_border(mask: np.ndarray) -> bool:
    """Whether the mask reaches the outermost pixel row or column: the mouse is cut by the border."""
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def keypoint_errors(view: View, K_src: torch.Tensor, w2c_src: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Reprojection error (px) of world points [J, 3] in one view: through the view's camera
    (view.K, view.w2c) versus where the image content went (source camera K_src [3, 3], w2c_src
    [4, 4], then the warp view.H) -> [J] (NaN behind either camera)."""
    X = points.to(torch.float64)
    uv_src, z_src = cameras.project(X, w2c_src, K_src)
    uv_img = cameras.apply_homography(view.H, uv_src)
    uv_cam, z_cam = cameras.project(X, view.w2c, view.K)
    err = (uv_cam - uv_img).norm(dim=-1)
    err[(z_src <= 0) | (z_cam <= 0)] = float("nan")
    return err


def ground_truth_keypoints(recording_dir: str | os.PathLike) -> np.ndarray | None:
    """Keypoints [F, J, 3] (world mm) of a procedural recording, or None for a real one."""
    from . import procedural

    try:
        _, _, kp = procedural.load_ground_truth(recording_dir)
    except ValueError:
        log.info("%s has no ground-truth keypoints (not procedural): reprojection error is NaN", recording_dir)
        return None
    return kp


def evaluate_strategies(recording_dir: str | os.PathLike, frames: Sequence[int], strategies: Sequence[str],
                        config: PreprocessConfig, *, progress: bool = False) -> "pandas.DataFrame":
    """Per-view metrics of every strategy, with cameras updated and left unchanged.

    Frames that extraction would skip (mouse missing or cut by the frame) are skipped. Returns one
    row per frame x view x strategy x cameras_updated with columns: frame, view, strategy,
    cameras_updated, size_ratio, com_offset_px, cut, fov_deg (of the image's true camera, the same
    for both flags), reproj_mean_px, reproj_max_px (NaN without ground truth), hull_iou."""
    import pandas as pd

    config.validate()
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        raise ValueError(f"unknown preprocessing strategies {bad}; choose from {STRATEGIES}")
    rec = open_recording(recording_dir)
    kp3d = ground_truth_keypoints(recording_dir)
    rows = []
    for frame in read_frames(rec, frames, progress=progress):
        reason = frame_skip_reason(frame.mask, config.min_mask_pixels, config.border_margin, config.border_contact_max)
        if reason is not None:
            log.info("frame %d skipped: %s", frame.index, reason)
            continue
        cams = frame.cameras
        K_src, w2c_src = rec.K[cams], rec.w2c[cams]
        center = frame_center(frame, rec)
        points = None if kp3d is None else torch.as_tensor(kp3d[frame.index], dtype=torch.float64)
        for strategy in strategies:
            true_views = preprocess_views(frame.rgb, frame.mask, K_src, w2c_src, center, strategy, config)
            masks = np.stack([view_mask(v, config) for v in true_views])
            for updated in (True, False):
                views = true_views if updated else preprocess_views(
                    frame.rgb, frame.mask, K_src, w2c_src, center, strategy, config, update_cameras=False)
                iou = leave_one_out_iou(masks, torch.stack([v.K for v in views]), torch.stack([v.w2c for v in views]),
                                        center, config.hull)
                for i, (view, true_view) in enumerate(zip(views, true_views)):
                    err = (torch.full((1,), float("nan")) if points is None
                           else keypoint_errors(view, K_src[i], w2c_src[i], points))
                    rows.append({
                        "frame": frame.index, "view": cams[i], "strategy": strategy, "cameras_updated": updated,
                        "size_ratio": size_ratio(masks[i]), "com_offset_px": com_offset_px(masks[i]),
                        "cut": touches_border(masks[i]),
                        "fov_deg": float(cameras.fov_from_focal(true_view.K[0, 0], config.image_size)),
                        "reproj_mean_px": float(err.nanmean()) if not err.isnan().all() else float("nan"),
                        "reproj_max_px": float(err[~err.isnan()].max()) if not err.isnan().all() else float("nan"),
                        "hull_iou": float(iou[i]),
                    })
    if not rows:
        raise ValueError(f"{recording_dir}: none of the frames {list(frames)[:10]}... could be used; "
                         "pick frames where the mouse is fully visible in every view")
    return pd.DataFrame(rows)


def strategy_table(per_view: "pandas.DataFrame", image_size: int | None = None) -> "pandas.DataFrame":
    """One row per strategy x cameras_updated (strategies in first-seen order, updated first):
    n_frames, n_views, size_ratio_mean, size_ratio_cv (std / mean over all views and frames),
    com_offset_px (mean), cut_fraction, fov_mean_deg, fov_std_deg, reproj_mean_px, reproj_max_px,
    hull_iou_mean, hull_iou_min; plus image_size when given."""
    import pandas as pd

    out = []
    for strategy in dict.fromkeys(per_view["strategy"]):
        for updated in (True, False):
            d = per_view[(per_view["strategy"] == strategy) & (per_view["cameras_updated"] == updated)]
            if d.empty:
                continue
            r = d["size_ratio"].to_numpy()
            row = {"strategy": strategy, "cameras_updated": updated, "n_frames": d["frame"].nunique(),
                   "n_views": len(d), "size_ratio_mean": float(r.mean()), "size_ratio_cv": float(r.std() / r.mean()),
                   "com_offset_px": float(d["com_offset_px"].mean()), "cut_fraction": float(d["cut"].mean()),
                   "fov_mean_deg": float(d["fov_deg"].mean()), "fov_std_deg": float(d["fov_deg"].to_numpy().std()),
                   "reproj_mean_px": float(d["reproj_mean_px"].mean()), "reproj_max_px": float(d["reproj_max_px"].max()),
                   "hull_iou_mean": float(d["hull_iou"].mean()), "hull_iou_min": float(d["hull_iou"].min())}
            if image_size is not None:
                row["image_size"] = image_size
            out.append(row)
    return pd.DataFrame(out)


def compare_strategies(recording_dir: str | os.PathLike, frames: Sequence[int], strategies: Sequence[str],
                       config: PreprocessConfig) -> "pandas.DataFrame":
    """The comparison table: :func:`strategy_table` of :func:`evaluate_strategies`."""
    return strategy_table(evaluate_strategies(recording_dir, frames, strategies, config), config.image_size)
