"""Recording -> FaceLift samples: select frames, find the mouse, normalize, resample views, write.

Per frame (numbered as in :func:`process_frame`):
1. skip the frame when the mouse is missing or touches the image border in some view;
2. triangulate the mouse's 3D centre from the mask centroids of all views (residual in mm);
3. build ONE similarity (centre -> origin, mean camera distance -> 2.7; the scale per sample or
   one for the whole recording); the world stays Z-up;
4. resample every view by a view policy, which returns the image AND its matching camera:
   ``rectify`` (default) turns each camera about its own centre to look at the mouse with zero
   roll and FaceLift's intrinsics, warping the image by the exact rotation homography; ``crop``
   cuts a square around the projected centre and resizes it (rotation unchanged);
5. write ``samples/sample_{frame:06d}`` (RGBA, alpha = mask) with FaceLift's camera json and the
   provenance needed to map anything back to the recording.

Outputs under ``<out_dir>/data/``: ``samples/``, ``splits/{train,val,test}.txt`` (lines are
``samples/sample_XXXXXX`` relative to ``data/``), ``extraction.json`` (params, per-frame status,
residual statistics) and ``extraction_config.json`` (the config hash that guards re-runs).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .. import cameras
from ..configs import bounded, check_ranges, from_dict
from ..constants import FACELIFT_FOV_DEG
from . import samples
from .recording import (CAMERA_FILE, MASK_THRESHOLD, Frame, FrameSelection, Recording, RecordingError,
                        open_recording, read_frames, select_frames)
from .views import crop_view, rectify_view

log = logging.getLogger(__name__)

VIEW_POLICIES = ("rectify", "crop")
SCALE_MODES = ("per_sample", "recording")
SPLIT_MODES = ("temporal", "random")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ExtractConfig:
    """Every knob of the extraction; defaults are stated here only."""
    selection: FrameSelection = field(default_factory=FrameSelection)  # which frames
    view_policy: str = "rectify"  # "rectify" (look at the mouse, canonical K) | "crop" (square crop, K updated)
    image_size: int = bounded(512, min=8)  # output side in pixels; rectify: fx = fy = FACELIFT_FOCAL * image_size / 512
    fov_deg: float = bounded(FACELIFT_FOV_DEG, gt=0, lt=180)  # rectify: field of view of every view (FaceLift's canonical
    #                                               intrinsics; less makes the mouse larger, for small image sizes)
    crop_size: int = bounded(640, min=8)  # crop policy only: side of the square crop in source pixels
    antialias: bool = True  # Gaussian pre-blur before a shrinking warp (sigma = (1/scale - 1) / 2)
    scale_mode: str = "per_sample"  # "per_sample" | "recording" (one scale from the rig's focus point)
    target_distance: float = bounded(cameras.FACELIFT_DISTANCE, gt=0)  # mean camera distance after normalization
    min_mask_pixels: int = bounded(100, min=1)  # fewer mask pixels in a view = mouse missing, frame skipped
    border_margin: int = bounded(1, min=0)  # width (px) of the frame-edge strip where mask pixels touch the border
    border_contact_max: float = bounded(0.2, min=0)  # skip when the mask runs along the edge for more than this x
    #                                  sqrt(mask pixels): the body is cut off; a thin tail tip crossing the edge is fine
    border_thin_fraction: float = bounded(0.1, min=0)  # parts thinner than this x sqrt(mask pixels) (the tail) are
    #                                    ignored at the border: they may leave the frame without cutting the body
    split_mode: str = "temporal"  # "temporal" (contiguous blocks with a gap) | "random" (seeded permutation)
    split_fractions: tuple[float, float, float] = bounded((0.8, 0.1, 0.1), min=0, max=1)  # train, val, test
    split_gap: int = bounded(100, min=0)  # temporal split: frames dropped at the start of the val and test blocks
    split_blocks: int = bounded(1, min=1)  # temporal split: the range is cut into this many chunks, each split
    #                                        train/val/test, so val and test span separate parts of the recording
    split_seed: int = 42  # random split: permutation seed
    chunk_size: int = bounded(8, min=1)  # frames decoded per chunk (memory: chunk_size x V full frames)
    workers: int | None = bounded(None, min=1)  # decoding threads and frame-processing threads (None: one per
    #                                            video for decoding, one per core, at most 8, for processing)
    progress: bool = True  # tqdm progress bar
    allow_calibration_failure: bool = False  # extract even when the calibration check fails (logged in
    #                                          extraction.json; see data/calibration_check.py)

    # knobs that do not change the samples written (left out of the config hash)
    RUNTIME_KEYS = ("chunk_size", "workers", "progress", "allow_calibration_failure")

    def __post_init__(self):
        check_ranges(self)

    def validate(self) -> None:
        for name, value, allowed in (("view_policy", self.view_policy, VIEW_POLICIES),
                                     ("scale_mode", self.scale_mode, SCALE_MODES),
                                     ("split_mode", self.split_mode, SPLIT_MODES)):
            if value not in allowed:
                raise ValueError(f"ExtractConfig.{name} = {value!r}; choose one of {allowed}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1.0) > 1e-6 or \
                min(self.split_fractions) < 0:
            raise ValueError(f"ExtractConfig.split_fractions must be 3 non-negative numbers summing to 1, "
                             f"got {self.split_fractions}")

    def output_dict(self) -> dict:
        """The knobs that determine the output (hashed to guard re-runs)."""
        d = dataclasses.asdict(self)
        for k in self.RUNTIME_KEYS:
            d.pop(k)
        if d["split_blocks"] == 1:  # the one-block split of earlier folders: their hash stays as it was
            d.pop("split_blocks")
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "ExtractConfig":
        """Build from a params mapping; an unknown key is an error naming the closest valid one."""
        return from_dict(cls, d, "ExtractConfig")


# ----------------------------------------------------------------------------------------------
# Finding the mouse
# ----------------------------------------------------------------------------------------------
def frame_skip_reason(mask: np.ndarray, min_pixels: int, border_margin: int, border_contact_max: float,
                      thin_fraction: float = 0.1) -> str | None:
    """Why a frame cannot be used, or None. mask [V, H, W] bool.

    A view is unusable when its mask has fewer than ``min_pixels`` pixels (mouse missing) or when
    the mouse is cut by the frame: its body (the mask without parts thinner than ``thin_fraction *
    sqrt(area)``, such as the tail) covers more than ``border_contact_max * sqrt(area)`` pixels of
    the frame-edge strip of width ``border_margin``."""
    import cv2

    b = max(1, border_margin)
    for v, m in enumerate(mask):
        n = int(m.sum())
        if n < min_pixels:
            return f"mouse missing in view {v} ({n} mask pixels < {min_pixels})"
        edge = np.zeros_like(m)
        edge[:b], edge[-b:], edge[:, :b], edge[:, -b:] = True, True, True, True
        # only the body counts: an opening as wide as thin_fraction x sqrt(area) removes the tail
        # and other thin parts, which may cross the frame edge without cutting the mouse off
        k = int(round(thin_fraction * np.sqrt(n)))
        body = m
        if k >= 2:
            body = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN,
                                    cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)
        contact = int((body & edge).sum())
        if contact > border_contact_max * b * np.sqrt(n):
            return (f"mouse touches the image border in view {v} ({contact} edge pixels > "
                    f"{border_contact_max} x {b} x sqrt({n}))")
    return None


def mask_centroids(mask: np.ndarray) -> torch.Tensor:
    """Centroid of each view's mask, uv [V, 2] float64 in the project convention (pixel (i, j) has
    its centre at (j + 0.5, i + 0.5)). mask [V, H, W] bool, every view non-empty."""
    import cv2

    out = []
    for m in mask:  # image moments: sums in float64, computed by OpenCV without holding the GIL
        mo = cv2.moments(m.view(np.uint8), binaryImage=True)
        out.append((mo["m10"] / mo["m00"] + 0.5, mo["m01"] / mo["m00"] + 0.5))
    return torch.tensor(out, dtype=torch.float64)


def triangulate_center(uv: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3D point [3] (world, mm) nearest to the rays through uv [V, 2] of cameras w2c [V, 4, 4],
    K [V, 3, 3], and each ray's distance to it [V] (mm)."""
    origins, dirs = cameras.rays_through_pixels(uv[:, None, :], cameras.invert_rigid(w2c), K)
    return cameras.triangulate_rays(origins[:, 0], dirs[:, 0])


def recording_scale(w2c: torch.Tensor, target_distance: float) -> tuple[float, torch.Tensor]:
    """One scale for a whole recording: target / mean distance of the cameras w2c [V, 4, 4] to the
    rig's focus point (the least-squares meeting point of the optical axes, near the arena centre).
    Returns (scale, focus point [3])."""
    focus, _ = cameras.triangulate_rays(cameras.camera_centers(w2c), cameras.optical_axes(w2c))
    dist = (cameras.camera_centers(w2c) - focus).norm(dim=-1).mean().item()
    return target_distance / dist, focus


# ----------------------------------------------------------------------------------------------
# One frame
# ----------------------------------------------------------------------------------------------
@dataclass
class ProcessedFrame:
    """A frame ready to write: images [V, S, S, 4] uint8; w2c [V, 4, 4] (normalized units) and
    K [V, 3, 3] of the sample; provenance (json-ready)."""
    images: np.ndarray
    w2c: torch.Tensor
    K: torch.Tensor
    view_ids: list[int]
    provenance: dict
    residual_rms_mm: float


def process_frame(frame: Frame, rec: Recording, config: ExtractConfig, rec_scale: float | None = None
                  ) -> ProcessedFrame:
    """Steps 2-4 of the module docstring for one frame whose masks passed :func:`frame_skip_reason`.
    ``rec_scale`` is required when ``config.scale_mode == "recording"``."""
    K_src, w2c_src = rec.K[frame.cameras], rec.w2c[frame.cameras]
    # 2. triangulate the mouse centre from the mask centroids
    uv = mask_centroids(frame.mask)
    center, residual = triangulate_center(uv, w2c_src, K_src)
    # 3. one similarity for the whole sample
    if config.scale_mode == "per_sample":
        sim = cameras.normalizing_similarity(w2c_src, center, config.target_distance)
    else:
        if rec_scale is None:
            raise ValueError("process_frame: scale_mode 'recording' needs rec_scale (see recording_scale)")
        sim = cameras.Similarity(scale=rec_scale, center=tuple(float(x) for x in center))
    # 4. resample each view; the view policy returns the matching camera
    views = []
    for i in range(len(frame.cameras)):
        if config.view_policy == "rectify":
            views.append(rectify_view(frame.rgb[i], frame.mask[i], K_src[i], w2c_src[i], center,
                                      config.image_size, config.antialias, config.fov_deg))
        else:
            views.append(crop_view(frame.rgb[i], frame.mask[i], K_src[i], w2c_src[i], center,
                                   config.crop_size, config.image_size))
    w2c_mm = torch.stack([v.w2c for v in views])
    rms = float(residual.pow(2).mean().sqrt())
    provenance = {
        "recording": str(rec.path.resolve()),
        "frame_index": frame.index,
        "view_policy": config.view_policy,
        "normalization": {"scale": sim.scale, "center_mm": list(sim.center), "matrix": sim.as_matrix(),
                          "scale_mode": config.scale_mode, "target_distance": config.target_distance},
        "center_mm": center.tolist(),
        "center_residual_mm": residual.tolist(),
        "center_residual_rms_mm": rms,
        "mask_centroids_px": uv.tolist(),
        "original_K": K_src.tolist(),  # project convention (pixel centres at +0.5)
        "original_w2c_mm": w2c_src.tolist(),
        "sample_w2c_mm": w2c_mm.tolist(),
        "homography_src_to_sample": [v.H.tolist() for v in views],  # project pixel convention
        "source_size": [rec.width, rec.height],
    }
    return ProcessedFrame(images=np.stack([v.rgba for v in views]), w2c=sim.apply_w2c(w2c_mm),
                          K=torch.stack([v.K for v in views]), view_ids=list(frame.cameras),
                          provenance=provenance, residual_rms_mm=rms)


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------
def split_frames(frames: list[int], config: ExtractConfig) -> dict[int, str | None]:
    """Assign each frame to "train" / "val" / "test", or None when it falls in a temporal gap.

    temporal: the frame range [first, last] is cut into ``split_blocks`` equal chunks, and each chunk
    into consecutive train / val / test blocks by ``split_fractions``; frames within ``split_gap``
    frames after a block boundary (also where a chunk's train block follows the previous chunk's
    test block) belong to no split (100 fps neighbours are near-duplicates). With one chunk the
    test split is the last stretch of the recording; with several it spans separate parts of it.
    random: a permutation seeded by ``split_seed``."""
    frames = sorted(frames)
    if not frames:
        return {}
    f_train, f_val, _ = config.split_fractions
    if config.split_mode == "random":
        g = torch.Generator().manual_seed(config.split_seed)
        perm = torch.randperm(len(frames), generator=g).tolist()
        n_train, n_val = round(f_train * len(frames)), round(f_val * len(frames))
        names = ["train"] * n_train + ["val"] * n_val + ["test"] * (len(frames) - n_train - n_val)
        return {frames[p]: names[i] for i, p in enumerate(perm)}
    first, total = frames[0], frames[-1] - frames[0] + 1
    span = total / config.split_blocks
    for name, frac in zip(SPLITS, config.split_fractions):
        if config.split_blocks > 1 and 0 < frac and frac * span <= config.split_gap:
            raise ValueError(f"split {name!r} would be empty: each of the {config.split_blocks} split_blocks spans "
                             f"{span:.0f} frames, so its {name} block ({frac} of it: {frac * span:.0f} frames) lies "
                             f"inside the split_gap of {config.split_gap} frames; use fewer split_blocks, a smaller "
                             f"split_gap or a longer recording")
    out: dict[int, str | None] = {}
    for f in frames:
        c = min(int((f - first) // span), config.split_blocks - 1)     # the chunk of f
        lo = first + c * span
        b1, b2 = lo + f_train * span, lo + (f_train + f_val) * span
        if f < b1:
            out[f] = "train" if c == 0 or f >= lo + config.split_gap else None
        elif f < b2:
            out[f] = "val" if f >= b1 + config.split_gap else None
        else:
            out[f] = "test" if f >= b2 + config.split_gap else None
    return out


# ----------------------------------------------------------------------------------------------
# The whole extraction
# ----------------------------------------------------------------------------------------------
def _guard_config(data_dir: Path, rec: Recording, config: ExtractConfig) -> str:
    """Store the config hash; raise if an earlier extraction in this folder used other params."""
    content = {"recording": str(rec.path.resolve()), "config": config.output_dict()}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    path = data_dir / "extraction_config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("hash") != digest:
            raise ValueError(
                f"{path}: this folder was extracted with other params (hash {old.get('hash')} vs {digest}; "
                f"old {old.get('content')}, new {content}). Use a new run name or delete {data_dir} to re-extract.")
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"hash": digest, "content": content}, indent=1))
    return digest


def _stats(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    a = np.asarray(values)
    return {"count": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)),
            "p95": float(np.percentile(a, 95)), "max": float(a.max())}


_MISSING_RE = re.compile(r"^mouse missing in view (\d+) \((\d+) mask pixels")
_BORDER_RE = re.compile(r"^mouse touches the image border in view (\d+) .*sqrt\((\d+)\)\)$")


def _why_no_samples(rec: Recording, frames: list[int], status: dict[int, dict], config: ExtractConfig) -> str:
    """Why an extraction wrote no sample, from the skip reasons of :func:`frame_skip_reason`: the
    view(s) at fault and the likely cause, worst first."""
    if not frames:
        sel = config.selection
        return (f"{rec.path}: no frame selected from its {rec.n_frames} frames (skip_edges {sel.skip_edges} at "
                f"each end, cut_frames {list(sel.cut_frames)} +- {sel.cut_margin}); lower skip_edges or fix cut_frames")
    missing: dict[int, list[int]] = {}
    border: dict[int, list[int]] = {}
    gap = other = 0
    for s in status.values():
        reason = s.get("reason") or ""
        if m := _MISSING_RE.match(reason):
            missing.setdefault(int(m[1]), []).append(int(m[2]))
        elif m := _BORDER_RE.match(reason):
            border.setdefault(int(m[1]), []).append(int(m[2]))
        elif reason == "temporal split gap":
            gap += 1
        else:
            other += 1
    causes = []
    for v, counts in sorted(missing.items(), key=lambda kv: -len(kv[1])):
        what = f"mouse missing in view {v} in {len(counts)} of {len(frames)} frames"
        if max(counts) == 0:
            causes.append(f"{what}: {rec.mask_path(v)} is empty: no pixel brighter than {MASK_THRESHOLD} (the mask "
                          "must show the mouse in white on black)")
        else:
            causes.append(f"{what} (at most {max(counts)} mask pixels, fewer than min_mask_pixels "
                          f"{config.min_mask_pixels}): lower min_mask_pixels or check {rec.mask_path(v)}")
    for v, areas in sorted(border.items(), key=lambda kv: -len(kv[1])):
        what = f"mouse touching the image border in view {v} in {len(areas)} of {len(frames)} frames"
        cover = float(np.median(areas)) / (rec.width * rec.height)
        if cover > 0.5:
            causes.append(f"{what}: the mask covers {cover:.0%} of the frame, so {rec.mask_path(v)} looks inverted "
                          "(the mouse must be white on black)")
        else:
            causes.append(f"{what}: the mouse is cut off by the frame there; raise border_contact_max "
                          f"({config.border_contact_max}) or leave that camera out")
    if gap:
        causes.append(f"{gap} of {len(frames)} frames fall in temporal split gaps (split_gap {config.split_gap}): "
                      "select more frames or lower split_gap")
    if other:
        causes.append(f"{other} frames skipped for other reasons")
    return f"{rec.path}: no sample extracted: " + "; ".join(causes)


def extract(recording_dir: str | os.PathLike, out_dir: str | os.PathLike, config: ExtractConfig) -> dict:
    """Extract samples from a recording into ``<out_dir>/data`` (see the module docstring).

    The calibration check (:func:`calibration_check.check_calibration`) runs first: a recording that
    fails it raises RecordingError naming the mix-up and the fix, unless
    ``config.allow_calibration_failure``. Re-running with the same config skips finished samples; a
    different config raises instead of overwriting. Returns a summary: counts, residual statistics
    (mm), the check's verdict, paths and timing."""
    from .calibration_check import check_calibration

    t_start = time.perf_counter()
    config.validate()
    rec = open_recording(recording_dir)
    check = check_calibration(rec.path, frame_filter=config, rec=rec)
    # no frame passed this config's mask filter: that is no verdict on the cameras; the extraction
    # below then writes nothing and names the cause per view (empty, inverted masks, min_mask_pixels)
    if not check.ok and not config.allow_calibration_failure and check.frames:
        raise RecordingError(f"{rec.path}: the calibration check ({CAMERA_FILE} against the videos and masks) "
                             f"failed; nothing was extracted. Fix what the FAIL lines below name, or set "
                             f"allow_calibration_failure to extract anyway.\n{check.text()}")
    if check.findings:
        log.warning("calibration check%s:\n%s", "" if check.ok else " FAILED, extracting anyway (allow_calibration_"
                    "failure)", check.text())
    data_dir = Path(out_dir) / "data"
    digest = _guard_config(data_dir, rec, config)
    samples_dir = data_dir / "samples"

    # select frames and assign splits up front (gap frames are never extracted)
    frames = select_frames(rec.n_frames, config.selection)
    split_of = split_frames(frames, config)
    status: dict[int, dict] = {}
    todo = []
    for f in frames:
        sdir = samples_dir / samples.sample_name(f)
        if split_of[f] is None:
            status[f] = {"frame": f, "status": "skipped", "reason": "temporal split gap", "split": None}
        elif samples.is_complete(sdir):
            meta, _, _ = samples.read_cameras(sdir)
            status[f] = {"frame": f, "status": "written", "reused": True, "split": split_of[f],
                         "residual_rms_mm": meta["provenance"]["center_residual_rms_mm"]}
        else:
            todo.append(f)
    n_reused = sum(1 for s in status.values() if s.get("reused"))
    log.info("%d frames selected: %d to extract, %d already done, %d in split gaps", len(frames), len(todo),
             n_reused, sum(1 for s in split_of.values() if s is None))

    rec_scale = None
    if config.scale_mode == "recording":
        rec_scale, focus = recording_scale(rec.w2c, config.target_distance)
        log.info("recording scale %.6g (focus point %s mm)", rec_scale, focus.tolist())

    # decode in order; check, warp and write each frame on a pool of threads (OpenCV's warps, blurs
    # and PNG encoder release the GIL), at most 2 x threads frames in flight
    def one(frame: Frame) -> dict:
        f = frame.index
        reason = frame_skip_reason(frame.mask, config.min_mask_pixels, config.border_margin,
                                   config.border_contact_max, config.border_thin_fraction)
        if reason is not None:
            log.info("frame %d skipped: %s", f, reason)
            return {"frame": f, "status": "skipped", "reason": reason, "split": split_of[f]}
        pf = process_frame(frame, rec, config, rec_scale)
        samples.write_sample(samples_dir / samples.sample_name(f), pf.images, pf.w2c, pf.K, pf.view_ids,
                             {**pf.provenance, "split": split_of[f], "config_hash": digest})
        return {"frame": f, "status": "written", "reused": False, "split": split_of[f],
                "residual_rms_mm": pf.residual_rms_mm}

    threads = config.workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: list = []
        for frame in read_frames(rec, todo, chunk_size=config.chunk_size, workers=config.workers,
                                 progress=config.progress):
            pending.append(pool.submit(one, frame))
            while len(pending) > 2 * threads:
                done = pending.pop(0).result()
                status[done["frame"]] = done
        for fut in pending:
            done = fut.result()
            status[done["frame"]] = done

    # splits, report
    split_files = {}
    for name in SPLITS:
        rows = [f"samples/{samples.sample_name(f)}" for f in frames
                if status[f]["status"] == "written" and status[f]["split"] == name]
        split_files[name] = str(data_dir / "splits" / f"{name}.txt")
        samples.write_split(split_files[name], rows)
    residuals = [s["residual_rms_mm"] for s in status.values() if s["status"] == "written"]
    written = [s for s in status.values() if s["status"] == "written"]
    summary = {
        "recording": str(rec.path.resolve()),
        "config_hash": digest,
        "n_selected": len(frames),
        "n_written": len(written),
        "n_reused": n_reused,
        "n_skipped": len(frames) - len(written),
        "split_sizes": {n: sum(1 for s in written if s["split"] == n) for n in SPLITS},
        "residual_rms_mm": _stats(residuals),
        "calibration_ok": check.ok,
        "allow_calibration_failure": config.allow_calibration_failure,
        "data_dir": str(data_dir),
        "samples_dir": str(samples_dir),
        "split_files": split_files,
        "seconds": time.perf_counter() - t_start,
    }
    report = {"params": config.output_dict(), "summary": summary, "frames": [status[f] for f in frames],
              "calibration_check": {"allow_calibration_failure": config.allow_calibration_failure,
                                    "report": check.text(), **check.to_dict()}}
    (data_dir / "extraction.json").write_text(json.dumps(report, indent=1))
    log.info("extraction: %d written (%d reused), %d skipped, residual rms median %.2f mm",
             summary["n_written"], n_reused, summary["n_skipped"], summary["residual_rms_mm"].get("median", float("nan")))
    if not written:
        raise RecordingError(f"{_why_no_samples(rec, frames, status, config)}. Each frame's reason is in "
                             f"{data_dir / 'extraction.json'}")
    return summary
