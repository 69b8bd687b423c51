"""Multi-view silhouette consistency: leave-one-out visual hull IoU.

A set of masks is 3D-consistent with its cameras when the shape carved from all views but one
re-projects onto the mask of the held-out view. Needs no ground truth, so it also works on real
recordings. Per held-out view (numbered as in :func:`leave_one_out_iou`):

1. a cube of ``resolution^3`` voxels about the mouse centre; each voxel centre is projected into
   every view and marked inside when it lands on a mask pixel (outside the image or behind the
   camera counts as outside: transparent pixels say "no mouse");
2. the hull without view h keeps the voxels inside every other view;
3. that hull is rendered into view h by marching each pixel's ray through the occupancy grid
   (trilinear lookup, > 0.5, a sample every ``step_voxels`` voxels), at ``image_size`` pixels;
4. IoU between the rendered silhouette and view h's mask (area-resized to ``image_size``).

A visual hull is a superset of the true shape, so consistent views score high but below 1; views
whose images moved without their cameras carve each other away and score lower.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import cameras, metrics


@dataclass(frozen=True)
class HullConfig:
    """Knobs of the leave-one-out visual hull check."""
    resolution: int = 64  # voxels per side of the cube
    half_size_mm: float = 90.0  # half side of the cube about the mouse centre (world units, mm)
    image_size: int = 128  # held-out silhouettes are compared at this size (px)
    step_voxels: float = 0.5  # ray-marching step along each ray, in voxel sizes
    ray_chunk: int = 8192  # rays marched at once (memory: ray_chunk x samples per ray points)
    device: str = "cpu"  # torch device for carving and marching

    def validate(self) -> None:
        if self.resolution < 2 or self.image_size < 4 or self.step_voxels <= 0 or self.half_size_mm <= 0:
            raise ValueError(f"HullConfig: resolution >= 2, image_size >= 4, step_voxels > 0 and "
                             f"half_size_mm > 0 required, got {self}")


def voxel_centers(center: torch.Tensor, half_size: float, resolution: int) -> torch.Tensor:
    """Centres of a cube of voxels about ``center`` [3] -> [R, R, R, 3], indexed [iz, iy, ix] and
    holding world (x, y, z): the layout ``F.grid_sample`` expects for a [D=z, H=y, W=x] volume."""
    step = 2.0 * half_size / resolution
    a = (torch.arange(resolution, dtype=center.dtype, device=center.device) + 0.5) * step - half_size
    z, y, x = torch.meshgrid(a, a, a, indexing="ij")
    return torch.stack([x, y, z], -1) + center


def inside_masks(points: torch.Tensor, masks: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    """Whether each point projects onto a mask pixel of each view.

    points [N, 3] world; masks [V, H, W] bool; K [V, 3, 3] (pixel centres at +0.5); w2c [V, 4, 4]
    -> [V, N] bool. Pixel (i, j) covers [j, j+1) x [i, i+1); outside the image or depth <= 0 is False."""
    V, H, W = masks.shape
    uv, z = cameras.project(points, w2c, K)  # [V, N, 2], [V, N]
    iu, iv = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    ok = (z > 0) & (iu >= 0) & (iu < W) & (iv >= 0) & (iv < H)
    view = torch.arange(V, device=masks.device)[:, None].expand_as(iu)
    hit = masks[view, iv.clamp(0, H - 1), iu.clamp(0, W - 1)]
    return hit & ok


def render_silhouette(occupancy: torch.Tensor, center: torch.Tensor, half_size: float, K: torch.Tensor,
                      w2c: torch.Tensor, height: int, width: int, step_voxels: float = 0.5,
                      ray_chunk: int = 8192) -> torch.Tensor:
    """Silhouette of an occupancy grid seen by one camera.

    occupancy [R, R, R] bool ([iz, iy, ix], the cube of :func:`voxel_centers`); center [3];
    K [3, 3], w2c [4, 4] of the camera -> [height, width] bool: the pixel's ray passes through
    occupied space (trilinear occupancy > 0.5 at a sample; samples every ``step_voxels`` voxel
    sizes). Only the rays that can hit it are marched: those in the bounding box of the occupied
    voxels' projections, over the depth range of those voxels."""
    R = occupancy.shape[0]
    voxel = 2.0 * half_size / R
    out = torch.zeros(height, width, dtype=torch.bool, device=occupancy.device)
    idx = occupancy.nonzero()  # [M, 3] = (iz, iy, ix)
    if idx.shape[0] == 0:
        return out
    occ_pts = center + (idx.flip(-1).to(center.dtype) + 0.5) * voxel - half_size  # [M, 3] world
    c2w = cameras.invert_rigid(w2c)
    uv, z = cameras.project(occ_pts, w2c, K)
    if (z <= 0).any():
        raise ValueError("render_silhouette: the camera is inside the voxel cube; lower half_size_mm")
    # 1. the rays worth marching: pixel box around the projections, widened by a voxel's footprint
    margin = 0.5 * math.sqrt(3.0) * voxel * K[:2, :2].abs().max().item() / z.min().item() + 1.0
    x0, y0 = (uv.amin(0) - margin).floor().clamp(min=0).long().tolist()
    x1 = int(min(width, math.ceil(uv[:, 0].max().item() + margin)))
    y1 = int(min(height, math.ceil(uv[:, 1].max().item() + margin)))
    if x1 <= x0 or y1 <= y0:
        return out
    dtype, dev = K.dtype, K.device
    yy, xx = torch.meshgrid(torch.arange(y0, y1, dtype=dtype, device=dev) + 0.5,
                            torch.arange(x0, x1, dtype=dtype, device=dev) + 0.5, indexing="ij")
    origins, dirs = cameras.rays_through_pixels(torch.stack([xx, yy], -1).reshape(-1, 2), c2w, K)
    # 2. samples along each ray over the occupied depth range, in the grid's [-1, 1] coordinates
    dist = (occ_pts - c2w[:3, 3]).norm(dim=-1)
    t0, t1 = dist.min().item() - voxel, dist.max().item() + voxel
    n = max(2, int(math.ceil((t1 - t0) / (step_voxels * voxel))) + 1)
    t = torch.linspace(t0, t1, n, dtype=torch.float32, device=dev)
    o = ((origins - center) / half_size).to(torch.float32)
    d = (dirs / half_size).to(torch.float32)
    vol = occupancy.to(torch.float32)[None, None]  # [1, 1, D, H, W]
    hits = []
    for s in range(0, o.shape[0], ray_chunk):
        grid = o[s:s + ray_chunk, None, :] + t[None, :, None] * d[s:s + ray_chunk, None, :]  # [P, n, 3]
        occ = F.grid_sample(vol, grid[None, :, :, None, :], mode="bilinear", padding_mode="zeros",
                            align_corners=False)  # [1, 1, P, n, 1]
        hits.append(occ[0, 0, :, :, 0].amax(dim=1) > 0.5)
    out[y0:y1, x0:x1] = torch.cat(hits).reshape(y1 - y0, x1 - x0)
    return out


def resize_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Area-resize a mask [H, W] bool to [size, size] bool (coverage > 0.5). Square inputs keep
    their geometry exactly (pixel edges map to edges), so K scales by size / W."""
    m = mask.to(torch.float32)[None, None]
    return F.interpolate(m, size=(size, size), mode="area")[0, 0] > 0.5


def leave_one_out_iou(masks: torch.Tensor | np.ndarray, K: torch.Tensor, w2c: torch.Tensor,
                      center: torch.Tensor, config: HullConfig) -> torch.Tensor:
    """Leave-one-out visual hull IoU of each view (steps 1-4 of the module docstring).

    masks [V, S, S] bool (one square size for all views); K [V, 3, 3] (pixel centres at +0.5) and
    w2c [V, 4, 4] (OpenCV, world units) of those images; center [3] world point the cube is
    centred on -> iou [V] float64 (NaN where hull and mask are both empty)."""
    config.validate()
    device = torch.device(config.device)
    masks = torch.as_tensor(masks, device=device).bool()
    V, S, S2 = masks.shape
    if S != S2:
        raise ValueError(f"leave_one_out_iou: masks must be square, got {S}x{S2}")
    K, w2c = K.to(device, torch.float64), w2c.to(device, torch.float64)
    center = center.to(device, torch.float64)
    R = config.resolution
    # 1. carve: which voxels each view keeps
    pts = voxel_centers(center, config.half_size_mm, R).reshape(-1, 3)  # float32 is ample here (mm)
    inside = inside_masks(pts.float(), masks, K.float(), w2c.float())  # [V, N]
    count = inside.sum(0)
    K_small = cameras.scale_intrinsics(K, config.image_size / S, config.image_size / S)
    ious = []
    for h in range(V):
        # 2. the hull of every view but h
        occ = ((count - inside[h].long()) == V - 1).reshape(R, R, R)
        # 3. render it into view h; 4. compare with h's mask
        sil = render_silhouette(occ, center, config.half_size_mm, K_small[h], w2c[h], config.image_size,
                                config.image_size, config.step_voxels, config.ray_chunk)
        ious.append(float(metrics.mask_iou(sil[None].float(), resize_mask(masks[h], config.image_size)[None].float())))
    return torch.tensor(ious, dtype=torch.float64)
