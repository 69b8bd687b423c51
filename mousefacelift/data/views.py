"""One view of a frame resampled for a sample, and its camera updated to match: the two view
policies (``rectify``: turn the camera about its centre to look at the mouse with FaceLift's
intrinsics, an exact rotation homography; ``crop``: a square around the projected centre, resized)
and the check that the cameras and the warps agree (ground-truth keypoints through both)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .. import cameras
from ..constants import FACELIFT_FOV_DEG
from . import samples


# ----------------------------------------------------------------------------------------------
# View policies: each returns the image AND its camera
# ----------------------------------------------------------------------------------------------
@dataclass
class View:
    """One resampled view: rgba [S, S, 4] uint8; K [3, 3] and w2c [4, 4] float64 (mm, OpenCV) of the
    new image; H [3, 3] maps source pixels to new pixels (project convention, centres at +0.5)."""
    rgba: np.ndarray
    K: torch.Tensor
    w2c: torch.Tensor
    H: torch.Tensor


def _antialias(img: np.ndarray, scale: float) -> np.ndarray:
    """Gaussian pre-blur for a resampling that shrinks by ``scale`` (< 1); identity otherwise."""
    import cv2

    sigma = (1.0 / scale - 1.0) / 2.0
    return cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0.3 else img


def rectify_view(rgb: np.ndarray, mask: np.ndarray, K: torch.Tensor, w2c: torch.Tensor, center: torch.Tensor,
                 image_size: int, antialias: bool = True, fov_deg: float = FACELIFT_FOV_DEG) -> View:
    """Turn the camera about its own centre to look at ``center`` [3] (world) with zero roll about
    world +Z, give it square intrinsics with a ``fov_deg`` field of view at ``image_size`` (FaceLift's
    canonical FACELIFT_FOV_DEG gives FACELIFT_FOCAL at FACELIFT_IMAGE_SIZE, bit for bit) and warp the image by the exact rotation homography.
    rgb [H, W, 3] uint8, mask [H, W] bool; K [3, 3], w2c [4, 4] of the source.
    Pixels that come from outside the source frame are transparent (alpha 0)."""
    import cv2

    f = (cameras.FACELIFT_FOCAL * image_size / cameras.FACELIFT_IMAGE_SIZE if fov_deg == FACELIFT_FOV_DEG
         else cameras.focal_from_fov(fov_deg, image_size))  # the canonical constant, bit for bit
    K_new = cameras.intrinsics(f, f, image_size / 2, image_size / 2, dtype=K.dtype)
    C = cameras.camera_centers(w2c)
    R_new = cameras.look_at_rotation(C, center.to(C.dtype))
    w2c_new = cameras.w2c_from_RT(R_new, -(R_new @ C))
    H = cameras.rotation_homography(K, w2c[:3, :3], K_new, R_new)
    # one RGBA image, blurred and warped in one call each (channels are independent: the same result
    # as colour and alpha apart, with no numpy copies holding the GIL on extraction's threads)
    rgba = cv2.merge([rgb, mask.view(np.uint8) * np.uint8(255)])
    if antialias:
        # local area scale at the source point that lands on the output centre: |J| = det(H) / w^3
        src = torch.linalg.solve(H, torch.tensor([image_size / 2, image_size / 2, 1.0], dtype=H.dtype))
        w = (H @ (src / src[2]))[2]
        scale = abs(float(torch.linalg.det(H) / w ** 3)) ** 0.5
        rgba = _antialias(rgba, scale)
    M = cameras.homography_to_opencv(H).numpy()
    out = cv2.warpPerspective(rgba, M, (image_size, image_size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    return View(rgba=out, K=K_new, w2c=w2c_new, H=H)


def crop_view(rgb: np.ndarray, mask: np.ndarray, K: torch.Tensor, w2c: torch.Tensor, center: torch.Tensor,
              crop_size: int, image_size: int) -> View:
    """Square crop of ``crop_size`` source pixels around the projection of ``center`` [3], resized to
    ``image_size``; R and T unchanged, K updated by crop_intrinsics and scale_intrinsics. Outside
    the source frame is transparent. rgb [H, W, 3] uint8, mask [H, W] bool; K [3, 3], w2c [4, 4]."""
    import cv2

    uv, _ = cameras.project(center[None].to(w2c.dtype), w2c, K)
    x0 = int(round(uv[0, 0].item() - crop_size / 2))
    y0 = int(round(uv[0, 1].item() - crop_size / 2))
    h, w = mask.shape
    rgba = np.zeros((crop_size, crop_size, 4), np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + crop_size, w), min(y0 + crop_size, h)
    if sx1 > sx0 and sy1 > sy0:
        rgba[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0, :3] = rgb[sy0:sy1, sx0:sx1]
        rgba[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0, 3] = mask[sy0:sy1, sx0:sx1].astype(np.uint8) * 255
    s = image_size / crop_size
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    out = cv2.resize(rgba, (image_size, image_size), interpolation=interp)
    K_new = cameras.scale_intrinsics(cameras.crop_intrinsics(K, x0, y0), s, s)
    H = torch.tensor([[s, 0.0, -s * x0], [0.0, s, -s * y0], [0.0, 0.0, 1.0]], dtype=K.dtype)
    return View(rgba=out, K=K_new, w2c=w2c.clone(), H=H)



# ----------------------------------------------------------------------------------------------
# Check: ground-truth keypoints through the sample cameras vs through the image warp
# ----------------------------------------------------------------------------------------------
def reproject_keypoints_check(samples_dir: str | os.PathLike,
                              keypoints3d: Mapping[int, np.ndarray] | Callable[[int], np.ndarray]) -> dict:
    """For every sample in ``samples_dir``: project ground-truth 3D keypoints (world mm, [J, 3] per
    frame index, from a mapping or a function) (a) through the sample's normalized camera and (b)
    through the ORIGINAL camera, then mapped by the homography the image was warped with. Both
    must agree: the per-keypoint difference is the camera bookkeeping error in sample pixels.

    Returns {"errors_px": tensor [S, V, J] (NaN where a keypoint is behind a camera),
    "frames": [S], "mean_px", "max_px"}."""
    get = keypoints3d if callable(keypoints3d) else keypoints3d.__getitem__
    errs, frames = [], []
    for sdir in sorted(Path(samples_dir).glob("sample_*")):
        if not samples.is_complete(sdir):
            continue
        meta, w2c, K = samples.read_cameras(sdir)
        prov = meta["provenance"]
        f = int(prov["frame_index"])
        X = torch.as_tensor(np.asarray(get(f), dtype=np.float64))  # [J, 3] mm
        norm = prov["normalization"]
        sim = cameras.Similarity(scale=norm["scale"], center=tuple(norm["center_mm"]))
        uv_new, z_new = cameras.project(sim.apply_points(X)[None], w2c, K)  # [V, J, 2]
        K0 = torch.tensor(prov["original_K"], dtype=torch.float64)
        w2c0 = torch.tensor(prov["original_w2c_mm"], dtype=torch.float64)
        H = torch.tensor(prov["homography_src_to_sample"], dtype=torch.float64)
        uv_old, z_old = cameras.project(X[None], w2c0, K0)
        uv_mapped = cameras.apply_homography(H, uv_old)
        e = (uv_new - uv_mapped).norm(dim=-1)
        e[(z_new <= 0) | (z_old <= 0)] = float("nan")
        errs.append(e)
        frames.append(f)
    if not errs:
        raise ValueError(f"{samples_dir}: no complete samples to check; run the extraction first")
    E = torch.stack(errs)
    return {"errors_px": E, "frames": frames, "mean_px": float(E.nanmean()),
            "max_px": float(E[~E.isnan()].max())}
