"""Turntables: cameras on an orbit about the origin and the frames of a set of Gaussians seen from them."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from mousefacelift import cameras
from mousefacelift.constants import FACELIFT_DISTANCE, FACELIFT_FOV_DEG, FACELIFT_FRONT_AZIMUTH, FACELIFT_IMAGE_SIZE
from mousefacelift.viz import to_uint8

if TYPE_CHECKING:
    from mousefacelift.gaussians import Gaussians


def turntable_cameras(n_frames: int = 150, radius: float = FACELIFT_DISTANCE, elevation_deg: float = 0.0,
                      start_azimuth_deg: float = FACELIFT_FRONT_AZIMUTH, image_size: int = FACELIFT_IMAGE_SIZE,
                      fov_deg: float = FACELIFT_FOV_DEG) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras orbiting the origin (world Z-up), counter-clockwise seen from above, starting at
    FaceLift's front camera (azimuth -90: at (0, -radius, 0)) -> w2c [T, 4, 4], K [T, 3, 3] float32."""
    az = [start_azimuth_deg + 360.0 * k / n_frames for k in range(n_frames)]
    w2c = cameras.orbit_cameras(az, elevation_deg, radius)
    f = cameras.focal_from_fov(fov_deg, image_size)
    K = cameras.intrinsics(f, f, image_size / 2, image_size / 2).expand(n_frames, 3, 3)
    return w2c.float(), K.float().clone()


@torch.no_grad()
def render_turntable(gaussians: Gaussians, n_frames: int = 150, radius: float = FACELIFT_DISTANCE,
                     elevation_deg: float = 0.0, start_azimuth_deg: float = FACELIFT_FRONT_AZIMUTH,
                     image_size: int = FACELIFT_IMAGE_SIZE, fov_deg: float = FACELIFT_FOV_DEG, *, background=(1.0, 1.0, 1.0), views_per_call: int = 8,
                     backend: str = "auto") -> np.ndarray:
    """Render a turntable (see :func:`turntable_cameras`) -> uint8 frames [T, H, W, 3]."""
    w2c, K = turntable_cameras(n_frames, radius, elevation_deg, start_azimuth_deg, image_size, fov_deg)
    frames = []
    for i in range(0, n_frames, views_per_call):
        r = gaussians.render(w2c[i:i + views_per_call], K[i:i + views_per_call], image_size, image_size,
                             background=background, backend=backend)
        frames.append(to_uint8(r.rgb[0]))
    return np.concatenate(frames)
