"""The embedded procedural recording: a MAMMAL-format folder rendered exactly from analytic primitives.

```
<recording>/
  videos_undist/{v}.mp4               RGB, H.264 (keyframe every 250) or mp4v, fps from the rig (100)
  simpleclick_undist/{v}.mp4          masks (white = mouse; lossy, readers use gray > 127)
  new_cam.pkl                         list of V dicts: K (3,3) OpenCV pixel centres, R (3,3), T (3,); mm
  keypoints2d_undist/result_view_{v}.pkl   float64 (frames, 22, 3) = x_px, y_px (OpenCV), confidence
  ground_truth/poses.npz              per-frame pose parameters (mouse_model.POSE_FIELDS)
  ground_truth/keypoints3d.npz        keypoints (frames, 22, 3), mm world
  ground_truth/params.json            the SyntheticConfig, its hash, keypoint names, image size
```
The scene: a white floor disk on a dark floor, dark background, one mouse of ellipsoids and capsules
(:mod:`mouse_model`) with black procedurally textured fur, pink ears and tail, Lambertian lighting
from one directional light plus ambient, a cast shadow on the floor (a shadow map sampled every
0.5 mm, looked up bilinearly) and optional sensor noise. Every pixel is an exact ray cast (nearest
hit, tiles of 16 px culled by the pieces' screen boxes); the mask is "the mouse is the nearest hit".
Same config and seed -> identical ground-truth bytes and identical decoded frames.

Frames are independent (sensor noise and keypoint confidences come from generators keyed by the
frame). One frame alone is about 2 ms of GPU work on an H200 but about 1000 kernel launches (70 ms
of Python), so frames are rendered ``render_batch`` at a time (the pieces of all frames in one
set of quadrics, one shadow map per frame: a batch costs about the launches of one frame), while
``workers`` processes build the bodies and keypoints ahead (CPU work) and one encoder thread per
video writes them in order. On a busy 2-core CPU, one torch thread: the demo, 6 cameras x 120
frames at 576x512, takes 17-24 s.

Entry points: :func:`generate_recording`, :func:`ensure_recording` (cached by config hash),
:func:`simulate_motion`, :func:`sample_surface`, :func:`contact_sheet`, :func:`demo_config`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pickle
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import cameras
from ..configs import bounded, check_ranges, from_dict
from ..training import keyed_generator
from . import mouse_model as mm
from .mouse_model import KEYPOINT_NAMES, BodyConfig, MotionConfig, PoseTrack

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: sensor noise and keypoint confidences drawn per frame (keyed), so frames render in any order
GT_DIR = "ground_truth"

# The real rig (shared/reference/mammal_recording.md): camera centres (mm), fx at 1152x1024.
_REAL_CENTERS = ((-199.5, -129.3, 63.4), (321.6, 216.8, 145.9), (24.0, 355.8, 71.2),
                 (327.6, -65.3, 63.3), (-230.4, 167.4, 142.2), (114.6, -236.3, 156.5))
_REAL_FX = (1632.3, 1556.8, 1630.3, 1606.2, 1618.3, 1636.9)


@dataclass(frozen=True)
class RigConfig:
    """Cameras, all at full resolution (width x height); pixel centres at +0.5 (project convention).
    Each camera sits at ``centers[v]`` and looks at ``targets[v]`` with zero roll."""
    centers: tuple[tuple[float, float, float], ...] = _REAL_CENTERS
    # on the arena axis, 50-64 mm up: the mouse sits ~130-330 px below the image centre at full size
    targets: tuple[tuple[float, float, float], ...] = tuple(
        (*mm.ARENA_CENTER_MM, z) for z in (64.0, 52.0, 58.0, 56.0, 55.0, 50.0))
    fx: tuple[float, ...] = bounded(_REAL_FX, gt=0)
    fy_over_fx: float = bounded(1.00428, gt=0)          # camera 0: 1639.30 / 1632.31
    cx: tuple[float, ...] = (601.85, 622.9, 589.4, 640.8, 584.1, 611.7)
    cy: tuple[float, ...] = (491.72, 538.4, 449.1, 549.9, 434.0, 471.3)
    width: int = bounded(1152, min=8)
    height: int = bounded(1024, min=8)
    fps: float = bounded(100.0, gt=0)

    def __post_init__(self):
        check_ranges(self)


@dataclass(frozen=True)
class SceneConfig:
    """Arena, lighting and sensor. Colours are linear RGB in [0, 1]."""
    disk_center: tuple[float, float] = mm.ARENA_CENTER_MM
    disk_radius: float = bounded(97.0, gt=0)
    disk_rgb: tuple[float, float, float] = bounded((0.86, 0.86, 0.84), min=0, max=1)
    # dark floor beyond the disk
    floor_rgb: tuple[float, float, float] = bounded((0.07, 0.07, 0.08), min=0, max=1)
    floor_radius: float = bounded(450.0, gt=0)                    # beyond it: background
    background_rgb: tuple[float, float, float] = bounded((0.025, 0.025, 0.03), min=0, max=1)
    light_dir: tuple[float, float, float] = (0.3, -0.4, 1.0)      # towards the light (normalized)
    ambient: float = bounded(0.5, min=0)
    diffuse: float = bounded(0.65, min=0)
    shadows: bool = True
    shadow_grid_mm: float = bounded(0.5, gt=0)                    # shadow map resolution on the floor
    sensor_noise_std: float = bounded(1.5, min=0)                 # in 8-bit levels; 0 = off

    def __post_init__(self):
        check_ranges(self)


RUNTIME_KEYS = ("workers", "render_batch", "chunk_elements")  # SyntheticConfig knobs that change speed, not the files (left out of the hash)


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that defines a procedural recording (its hash names the cache folder)."""
    n_frames: int = bounded(300, min=1)
    seed: int = 0
    resolution_scale: float = bounded(1.0, gt=0)    # image size and intrinsics scale together (even sizes)
    supersample: int = bounded(1, min=1)            # anti-aliasing: s x s rays per pixel
    device: str = "cpu"                             # the render device, e.g. "cpu" or "cuda"
    cpu_threads: int = bounded(1, min=0)            # torch CPU threads while generating (small ops: 1 is
                                                    # fastest on a shared machine; 0 = leave torch's setting)
    workers: int = bounded(0, min=0)                # processes that build bodies and keypoints ahead of the
                                                    # renderer (0: this process); speed only, same files
    render_batch: int = bounded(8, min=1)           # frames per render call (fewer kernel launches per frame);
                                                    # speed only: same files up to float rounding (tested)
    chunk_elements: int = bounded(2 ** 21, min=1)   # ray-piece pairs per batched intersection (memory bound;
                                                    # speed only: a GPU renders a batch in fewer calls with 2 ** 25)
    keypoint_confidence: tuple[float, float] = bounded((0.9, 1.0), min=0, max=1)
    video_codec: str = "h264"                       # "h264" (imageio-ffmpeg) or "mp4v" (OpenCV)
    video_gop: int = bounded(250, min=1)            # h264: frames between keyframes (x264's default, as cameras)
    video_crf: int = bounded(18, min=0, max=51)     # h264: quality (lower = better; 18 is visually lossless)
    rig: RigConfig = field(default_factory=RigConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    body: BodyConfig = field(default_factory=BodyConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)

    def __post_init__(self):
        check_ranges(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SyntheticConfig":
        """Build from a (nested) dict; an unknown key is an error naming the closest valid key."""
        return from_dict(cls, d, "SyntheticConfig")

    def to_dict(self) -> dict:
        """The fields that define the files (runtime knobs such as ``workers`` left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_KEYS}


def config_hash(cfg: SyntheticConfig) -> str:
    """12 hex digits of sha256 over the format version and the json of dataclasses.asdict(cfg)
    (without RUNTIME_KEYS) with sorted keys."""
    text = json.dumps({"format_version": FORMAT_VERSION, **cfg.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def demo_config(**overrides) -> SyntheticConfig:
    """The demo recording: 6 cameras x 120 frames at 576x512 (resolution_scale 0.5)."""
    return dataclasses.replace(SyntheticConfig(n_frames=120, resolution_scale=0.5), **overrides)


# ----------------------------------------------------------------------------------------------
# Cameras and motion
# ----------------------------------------------------------------------------------------------
def image_size(cfg: SyntheticConfig) -> tuple[int, int]:
    """(width, height) of the rendered images: the rig size times resolution_scale, rounded to even."""
    w = 2 * max(1, round(cfg.rig.width * cfg.resolution_scale / 2))
    h = 2 * max(1, round(cfg.rig.height * cfg.resolution_scale / 2))
    return w, h


def rig_cameras(cfg: SyntheticConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """-> w2c [V, 4, 4] float64 (OpenCV, world Z-up, mm) and K [V, 3, 3] float64 (project convention,
    pixel centres at +0.5) at the rendered size :func:`image_size`."""
    rig = cfg.rig
    n = len(rig.centers)
    lens = {"targets": len(rig.targets), "fx": len(rig.fx), "cx": len(rig.cx), "cy": len(rig.cy)}
    bad = {k: v for k, v in lens.items() if v != n}
    if bad:
        raise ValueError(f"RigConfig: {n} centers but {bad}; give one target, fx, cx and cy per camera")
    eye = torch.tensor(rig.centers, dtype=torch.float64)
    w2c = cameras.look_at_w2c(eye, torch.tensor(rig.targets, dtype=torch.float64))
    K = torch.stack([cameras.intrinsics(f, f * rig.fy_over_fx, cx, cy) for f, cx, cy in zip(rig.fx, rig.cx, rig.cy)])
    w, h = image_size(cfg)
    return w2c, cameras.scale_intrinsics(K, w / rig.width, h / rig.height)


def simulate_motion(config: SyntheticConfig | MotionConfig, n_frames: int, generator: torch.Generator,
                    fps: float | None = None) -> PoseTrack:
    """Motion only (no rendering) -> PoseTrack of n_frames; fps defaults to the rig's (100)."""
    if isinstance(config, SyntheticConfig):
        fps = config.rig.fps if fps is None else fps
        config = config.motion
    return mm.simulate_motion(config, n_frames, RigConfig.fps if fps is None else fps, generator)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
@dataclass
class Scene:
    """Static per-recording tensors on the render device, in tiles of TILE x TILE pixels.

    With Ty x Tx tiles per image (padded past the border) and n = (TILE * supersample)^2 rays per
    tile: dirs [V, Ty, Tx, n, 3] unit world rays; floor_t [V, Ty, Tx, n] (inf: no floor);
    floor_xy [V, Ty, Tx, n, 2] floor hit points (mm); background [V, Ty, Tx, n, 3] lit floor or
    background colour; frame0 [V, Ty, Tx, TILE, TILE, 3] the same, pooled to pixels;
    origins [V, 3]; w2c [V, 4, 4], K [V, 3, 3] at the image size; light [3] unit vector."""
    dirs: torch.Tensor
    floor_t: torch.Tensor
    floor_xy: torch.Tensor
    background: torch.Tensor
    frame0: torch.Tensor
    origins: torch.Tensor
    w2c: torch.Tensor
    K: torch.Tensor
    light: torch.Tensor
    tex_freq: torch.Tensor
    tex_phase: torch.Tensor


TILE = 16


def _to_tiles(img: torch.Tensor, tile: int) -> torch.Tensor:
    """[V, Ty*tile, Tx*tile, C] -> [V, Ty, Tx, tile*tile, C]."""
    V, H, W, C = img.shape
    return img.view(V, H // tile, tile, W // tile, tile, C).permute(0, 1, 3, 2, 4, 5).reshape(
        V, H // tile, W // tile, tile * tile, C)


def _camera_tiles(cfg: SyntheticConfig, w2c: torch.Tensor, K: torch.Tensor, light: torch.Tensor) -> dict:
    """Static tiles of one camera (w2c [4, 4], K [3, 3] float64): rays, floor hits, background."""
    s, sc = cfg.supersample, cfg.scene
    w, h = image_size(cfg)
    ty, tx = -(-h // TILE), -(-w // TILE)
    origin, dirs = cameras.pixel_rays(cameras.invert_rigid(w2c), cameras.scale_intrinsics(K, s, s),
                                      ty * TILE * s, tx * TILE * s)
    # floor plane z = 0: white disk (~0.6 mm soft edge), dark floor, background beyond floor_radius
    dz = dirs[..., 2]
    t = torch.where(dz < -1e-9, -origin[..., 2] / dz.clamp(max=-1e-9), torch.full_like(dz, math.inf))
    xy = (origin + t.nan_to_num(posinf=0.0).unsqueeze(-1) * dirs)[..., :2]
    r = (xy - torch.tensor(sc.disk_center, dtype=xy.dtype)).norm(dim=-1)
    t = torch.where(r <= sc.floor_radius, t, torch.full_like(t, math.inf))
    disk_w = (0.5 - (r - sc.disk_radius) / 0.6).clamp(0, 1).unsqueeze(-1)
    floor = disk_w * torch.tensor(sc.disk_rgb) + (1 - disk_w) * torch.tensor(sc.floor_rgb)
    floor = floor * (sc.ambient + sc.diffuse * light[2].item())
    bg = torch.where(torch.isfinite(t).unsqueeze(-1), floor, torch.tensor(sc.background_rgb, dtype=floor.dtype))
    pooled = bg.view(ty * TILE, s, tx * TILE, s, 3).mean((1, 3))
    f32 = dict(dtype=torch.float32, device=torch.device(cfg.device))
    return {"dirs": _to_tiles(dirs[None], TILE * s)[0].to(**f32),
            "floor_t": _to_tiles(t[None, ..., None], TILE * s)[0, ..., 0].to(**f32),
            "floor_xy": _to_tiles(xy[None], TILE * s)[0].to(**f32),
            "background": _to_tiles(bg[None], TILE * s)[0].to(**f32),
            "frame0": _to_tiles(pooled[None], TILE)[0].view(ty, tx, TILE, TILE, 3).to(**f32),
            "origins": origin[0, 0].to(**f32)}


def build_scene(cfg: SyntheticConfig, w2c: torch.Tensor, K: torch.Tensor) -> Scene:
    """Static tensors of all cameras w2c [V, 4, 4], K [V, 3, 3] (float64, project convention, at
    image_size(cfg)) on cfg.device, built one camera at a time to bound memory."""
    light = torch.tensor(cfg.scene.light_dir, dtype=torch.float64)
    light = light / light.norm()
    per_cam = [_camera_tiles(cfg, w2c[v], K[v], light) for v in range(len(w2c))]
    # a fixed set of plane waves for the fur texture (deterministic in body coordinates)
    g = torch.Generator().manual_seed(cfg.body.texture_seed)
    k_dir = torch.randn(8, 3, generator=g, dtype=torch.float64)
    k_len = 2 * math.pi / cfg.body.texture_wavelength_mm * (0.6 + 0.8 * torch.rand(8, 1, generator=g, dtype=torch.float64))
    phase = 2 * math.pi * torch.rand(8, generator=g, dtype=torch.float64)
    f32 = dict(dtype=torch.float32, device=torch.device(cfg.device))
    return Scene(**{k: torch.stack([c[k] for c in per_cam]) for k in per_cam[0]},
                  w2c=w2c.to(**f32), K=K.to(**f32), light=light.to(**f32),
                  tex_freq=(k_dir / k_dir.norm(dim=-1, keepdim=True) * k_len).to(**f32), tex_phase=phase.to(**f32))


def _screen_boxes(sc: Scene, corners: torch.Tensor) -> torch.Tensor:
    """Pixel boxes (x0, y0, x1, y1) [V, P, 4] of the projections of point sets corners [P, M, 3]
    (conservative for anything inside their convex hulls; every camera must see them in front)."""
    P, M, _ = corners.shape
    uv, z = cameras.project(corners.reshape(1, P * M, 3), sc.w2c, sc.K)       # [V, P*M, 2]
    if (z <= 1e-3).any():
        raise ValueError("the mouse reaches behind a camera; move the cameras further out (RigConfig.centers)")
    uv = uv.view(-1, P, M, 2)
    return torch.cat([uv.amin(2) - 1.0, uv.amax(2) + 1.0], -1)


def _tiles_hit(boxes: torch.Tensor, ty: int, tx: int) -> torch.Tensor:
    """boxes [V, P, 4] (pixels) -> [V, Ty, Tx, P] bool: box overlaps tile."""
    e = torch.arange(tx + 1, device=boxes.device, dtype=boxes.dtype) * TILE
    f = torch.arange(ty + 1, device=boxes.device, dtype=boxes.dtype) * TILE
    ox = (boxes[..., None, 0] < e[1:]) & (boxes[..., None, 2] > e[:-1])     # [V, P, Tx]
    oy = (boxes[..., None, 1] < f[1:]) & (boxes[..., None, 3] > f[:-1])     # [V, P, Ty]
    return (oy.unsqueeze(-1) & ox.unsqueeze(-2)).permute(0, 2, 3, 1)


def _cast_tiles(q: mm.Quadrics, origins: torch.Tensor, dirs: torch.Tensor, over: torch.Tensor,
                budget: int, offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest hits of K ray bundles (origins [K, 3], dirs [K, n, 3]) against the pieces each bundle
    touches (over [K, Q] bool: piece i of the bundle is q's piece offset[k] + i; offset [K] long,
    default 0) -> t [K, n] (inf: miss, in units of |dir|), index into q [K, n].
    Bundles are grouped by piece count in powers of two so that padding wastes little; each batched
    call holds at most ``budget`` ray-piece pairs."""
    K, n = dirs.shape[:2]
    t_out = torch.full((K, n), math.inf, dtype=dirs.dtype, device=dirs.device)
    j_out = torch.zeros(K, n, dtype=torch.long, device=dirs.device)
    counts = over.sum(-1)
    most = int(counts.max()) if counts.numel() else 0
    P = 1
    while P // 2 < most:
        sel = ((counts > P // 2) & (counts <= P)).nonzero().squeeze(-1)
        P_here, P = P, 2 * P
        if not len(sel):
            continue
        order = over[sel].to(torch.uint8).argsort(dim=-1, descending=True, stable=True)[:, :P_here]
        valid = over[sel].gather(1, order)
        if offset is not None:
            order = order + offset[sel].unsqueeze(-1)
        per = max(1, budget // (n * P_here))
        for i in range(0, len(sel), per):
            k = sel[i:i + per]
            t, jj = mm.ray_hits_batched(q, origins[k], dirs[k], order[i:i + per], valid[i:i + per]).min(-1)
            t_out[k] = t
            j_out[k] = order[i:i + per].gather(1, jj)
    return t_out, j_out


def _concat_quadrics(shapes: list[mm.MouseShapes], qs: list[mm.Quadrics],
                     device: torch.device) -> tuple[mm.Quadrics, int]:
    """The pieces of B frames (shapes and their float32 quadrics) in one Quadrics on ``device`` (frame
    b's Q pieces at b*Q .. (b+1)*Q - 1; ``piece`` offset into the frames' concatenated MouseShapes
    pieces) -> (quadrics, Q)."""
    Q, n_pieces = len(qs[0].k), len(shapes[0].albedo)
    if any(len(x.k) != Q for x in qs):
        raise ValueError("frames of one recording must have the same pieces (one BodyConfig)")
    fields = {}
    for f in dataclasses.fields(mm.Quadrics):
        parts = [torch.as_tensor(getattr(x, f.name)) + (b * n_pieces if f.name == "piece" else 0)
                 for b, x in enumerate(qs)]
        fields[f.name] = torch.cat(parts).to(device, non_blocking=True)
    return mm.Quadrics(**fields), Q


def _shadow_maps(cfg: SyntheticConfig, q: mm.Quadrics, light: torch.Tensor,
                 B: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hard shadows of B frames' mice (q: their pieces concatenated, Q = len(q) / B each) on the floor,
    sampled every cfg.scene.shadow_grid_mm -> (maps [B, Gy, Gx] float 0/1, lo [B, 2] mm: the floor
    point of sample (0, 0) of each map, hi [B, 2] mm: the far corner of the samples that can be in
    shadow; beyond it a map is 0). The light is a point 100 m away along ``light`` (directional
    in effect; float64 keeps the far origin exact); each frame's grid starts at its own footprint,
    all grids share the largest footprint's size and are cast in tiles like camera images."""
    q = dataclasses.replace(q, **{f.name: getattr(q, f.name).double() if getattr(q, f.name).is_floating_point()
                                  else getattr(q, f.name) for f in dataclasses.fields(q)})
    Q = len(q.k) // B
    L = q.center.view(B, Q, 3).mean(1) + 1e5 * light.double()                   # [B, 3]
    Lb = L[:, None, None]
    box = q.box.view(B, Q, 8, 3)
    foot = Lb[..., :2] + (box[..., :2] - Lb[..., :2]) * (Lb[..., 2:] / (Lb[..., 2:] - box[..., 2:]))  # [B, Q, 8, 2]
    lo, step = foot.amin((1, 2)) - 1.0, cfg.scene.shadow_grid_mm                # [B, 2]
    tiles = ((foot.amax((1, 2)) + 1.0 - lo) / step).ceil().long() // TILE + 1  # [B, 2] (x, y)
    tx, ty = tiles.amax(0).tolist()
    gx = lo[:, :1] + step * torch.arange(tx * TILE, device=lo.device, dtype=lo.dtype)   # [B, Gx]
    gy = lo[:, 1:] + step * torch.arange(ty * TILE, device=lo.device, dtype=lo.dtype)   # [B, Gy]
    Gy, Gx = gy.shape[1], gx.shape[1]
    grid = torch.stack([gx[:, None, :].expand(B, Gy, Gx), gy[:, :, None].expand(B, Gy, Gx),
                        torch.zeros(B, Gy, Gx, dtype=lo.dtype, device=lo.device)], -1)
    dirs = _to_tiles(grid, TILE).reshape(B, ty * tx, TILE * TILE, 3) - Lb
    boxes = torch.cat([(foot.amin(2) - lo[:, None]) / step - 1, (foot.amax(2) - lo[:, None]) / step + 1], -1)
    over = _tiles_hit(boxes, ty, tx).reshape(B * ty * tx, Q)
    offset = (torch.arange(B, device=lo.device) * Q).repeat_interleave(ty * tx)
    t, _ = _cast_tiles(q, L.repeat_interleave(ty * tx, 0), dirs.reshape(B * ty * tx, TILE * TILE, 3), over,
                       cfg.chunk_elements, offset)
    hit = (t < 1.0).float().view(B, ty, tx, TILE, TILE).permute(0, 1, 3, 2, 4).reshape(B, Gy, Gx)
    hi = lo + step * (tiles * TILE - 1)
    return hit.to(light.dtype), lo.to(light.dtype), hi.to(light.dtype)


def _bilinear(maps: torch.Tensor, b: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """maps [B, H, W], map index b [N] long, uv [N, 2] (x, y) in samples -> [N] bilinear values
    (samples outside a map count as 0, like grid_sample's zero padding with align_corners)."""
    _, H, W = maps.shape
    i0 = uv.floor()
    fx, fy = (uv - i0).unbind(-1)
    x0, y0 = i0.long().unbind(-1)
    flat, out = maps.reshape(-1), torch.zeros_like(fx)
    for dx, wx in ((0, 1 - fx), (1, fx)):
        for dy, wy in ((0, 1 - fy), (1, fy)):
            x, y = x0 + dx, y0 + dy
            inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
            v = flat[(b * H + y.clamp(0, H - 1)) * W + x.clamp(0, W - 1)]
            out = out + torch.where(inside, wx * wy * v, torch.zeros_like(v))
    return out


def _shade(cfg: SyntheticConfig, sc: Scene, q: mm.Quadrics, tex: dict, p: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Colour [N, 3] of mouse surface points p [N, 3] on quadric j [N]: textured albedo x Lambert."""
    n = (q.G[j] @ (p - q.center[j]).unsqueeze(-1)).squeeze(-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    piece = q.piece[j]
    local = ((p - tex["t"][piece]).unsqueeze(-2) @ tex["R"][piece].transpose(-1, -2)).squeeze(-2)
    noise = torch.sin(local @ sc.tex_freq.T + sc.tex_phase).mean(-1) * 2.0   # ~ unit std
    albedo = tex["albedo"][piece] * (1 + tex["amp"][piece] * noise.clamp(-1.5, 1.5)).unsqueeze(-1)
    lam = cfg.scene.ambient + cfg.scene.diffuse * (n @ sc.light).clamp_min(0)
    return albedo.clamp_min(0) * lam.unsqueeze(-1)


def render_frame(cfg: SyntheticConfig, sc: Scene, shapes: mm.MouseShapes) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame of every camera -> rgb [V, H, W, 3] float in [0, 1], mask [V, H, W] bool
    (:func:`render_frames` of one frame)."""
    rgb, mask = render_frames(cfg, sc, [shapes])
    return rgb[0], mask[0]


def render_frames(cfg: SyntheticConfig, sc: Scene, shapes: list[mm.MouseShapes],
                  quadrics: list[mm.Quadrics] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """B frames of every camera (their shapes, and optionally their float32 CPU quadrics
    ``mm.to_quadrics(shape)``, made ahead by workers) -> rgb [B, V, H, W, 3] float in [0, 1] (before sensor noise) and
    mask [B, V, H, W] bool (the mouse is the nearest hit in at least half of the pixel's rays).
    Frames are independent: a frame renders the same in any batch (up to float rounding of batched
    kernels; tests pin it), and a batch costs about as many kernel launches as one frame.

    1. cull: screen boxes of every piece -> tiles touched and their piece lists (padded to P);
    2. shadow: a floor shadow map per frame, looked up (bilinear = soft edge) by floor pixels near it;
    3. cast the rays of every touched tile against its frame's pieces, nearest hit in front of the floor;
    4. shade hits, pool the s x s rays of each pixel, and write the tiles into the frames."""
    s, dev = cfg.supersample, sc.dirs.device
    w, h = image_size(cfg)
    V, ty, tx, n = sc.floor_t.shape
    B = len(shapes)
    q, Q = _concat_quadrics(shapes, quadrics or [mm.to_quadrics(x) for x in shapes], dev)
    tex = {k: torch.as_tensor(np.concatenate([getattr(x, a) for x in shapes]), dtype=torch.float32, device=dev)
           for k, a in (("albedo", "albedo"), ("amp", "tex_amp"), ("R", "tex_R"), ("t", "tex_t"))}
    # 1. culling: images are indexed b * V + v
    boxes = _screen_boxes(sc, q.box).view(V, B, Q, 4).transpose(0, 1).reshape(B * V, Q, 4)
    over = _tiles_hit(boxes, ty, tx)                                      # [B*V, Ty, Tx, Q]
    active = over.any(-1)
    if cfg.scene.shadows:
        smap, lo, hi = _shadow_maps(cfg, q, sc.light, B)
        corner = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1]], device=dev)
        ext = torch.where(corner.bool(), hi.unsqueeze(1), lo.unsqueeze(1))          # [B, 4, 2] shadowed area
        rect = torch.cat([ext, torch.zeros_like(ext[..., :1])], -1)
        rect_boxes = _screen_boxes(sc, rect).transpose(0, 1).reshape(B * V, 1, 4)
        active |= _tiles_hit(rect_boxes, ty, tx)[..., 0]
    ik, yk, xk = active.nonzero(as_tuple=True)
    bk, vk = ik.div(V, rounding_mode="floor"), ik.remainder(V)
    frame = sc.frame0.repeat(B, 1, 1, 1, 1, 1)                               # [B*V, Ty, Tx, TILE, TILE, 3]
    maskt = torch.zeros(B * V, ty, tx, TILE, TILE, dtype=torch.bool, device=dev)
    if len(ik):
        col = sc.background[vk, yk, xk].clone()                               # [K, n, 3]
        ft = sc.floor_t[vk, yk, xk]                                           # [K, n]
        # 2. shadows
        if cfg.scene.shadows:
            uv = (sc.floor_xy[vk, yk, xk] - lo[bk].unsqueeze(1)) / cfg.scene.shadow_grid_mm
            val = _bilinear(smap, bk.unsqueeze(1).expand(-1, n).reshape(-1), uv.reshape(-1, 2)).view(-1, n)
            shade = 1 - (1 - cfg.scene.ambient / (cfg.scene.ambient + cfg.scene.diffuse * sc.light[2])) * val
            col = col * torch.where(torch.isfinite(ft), shade, torch.ones_like(shade)).unsqueeze(-1)
        # 3. ray casting
        o, d = sc.origins[vk], sc.dirs[vk, yk, xk]
        t, j = _cast_tiles(q, o, d, over[ik, yk, xk], cfg.chunk_elements, bk * Q)
        hit = t < ft
        kk, rr = hit.nonzero(as_tuple=True)
        p = o[kk] + t[kk, rr, None] * d[kk, rr]
        col[kk, rr] = _shade(cfg, sc, q, tex, p, j[kk, rr])
        # 4. pool s x s rays per pixel and write the tiles
        K = len(ik)
        frame[ik, yk, xk] = col.view(K, TILE, s, TILE, s, 3).mean((2, 4))
        maskt[ik, yk, xk] = hit.float().view(K, TILE, s, TILE, s).mean((2, 4)) >= 0.5
    rgb = frame.permute(0, 1, 3, 2, 4, 5).reshape(B, V, ty * TILE, tx * TILE, 3)[:, :, :h, :w]
    mask = maskt.permute(0, 1, 3, 2, 4).reshape(B, V, ty * TILE, tx * TILE)[:, :, :h, :w]
    return rgb.clamp_(0, 1), mask


def keypoints_2d(cfg: SyntheticConfig, w2c: torch.Tensor, K: torch.Tensor, shapes: mm.MouseShapes,
                 kp3d: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """kp3d [22, 3] world mm seen by cameras w2c [V, 4, 4], K [V, 3, 3] (float64, project convention)
    -> [V, 22, 3] float64 = (x, y) OpenCV pixels (centres at integers), confidence: 0 when outside
    the image or occluded by a primitive that does not contain the keypoint, else uniform in
    cfg.keypoint_confidence."""
    w, h = image_size(cfg)
    X = torch.as_tensor(kp3d, dtype=torch.float64)
    uv, z = cameras.project(X.unsqueeze(0), w2c, K)                              # [V, 22, 2]
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
    q = mm.to_quadrics(shapes, dtype=torch.float64)
    own = mm.contains(q, X, margin=1e-3)                                          # [22, Q]
    lo, hi = cfg.keypoint_confidence
    conf = lo + (hi - lo) * torch.rand(len(w2c), len(X), generator=generator, dtype=torch.float64)
    origins = cameras.camera_centers(w2c)
    for v in range(len(w2c)):
        t = mm.ray_hits(q, origins[v], X - origins[v])                           # kp at t = 1
        occluded = ((t < 1 - 1e-6) & ~own).any(-1)
        conf[v] = torch.where(inside[v] & ~occluded, conf[v], torch.zeros_like(conf[v]))
    return torch.cat([uv - 0.5, conf.unsqueeze(-1)], -1).numpy()


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez without timestamps (fixed zip dates), so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


class _VideoSet:
    """V writers for one folder: H.264 through imageio-ffmpeg (the default, like camera recordings:
    a keyframe every ``gop`` frames, so sequential decoding beats seeking), or OpenCV's mp4v.
    Each writer encodes on its own thread (both encoders release the GIL), frames in order."""

    def __init__(self, folder: Path, n: int, size: tuple[int, int], fps: float, codec: str = "h264",
                 gop: int = 250, crf: int = 18):
        from concurrent.futures import ThreadPoolExecutor

        folder.mkdir(parents=True, exist_ok=True)
        self.codec = codec
        paths = [folder / f"{v}.mp4" for v in range(n)]
        if codec == "h264":
            try:
                import imageio_ffmpeg
            except ImportError as e:
                raise OSError("the h264 video codec needs imageio-ffmpeg (pip install imageio-ffmpeg), or set "
                              "video_codec: mp4v") from e
            # one encoder thread and fixed settings: same frames in -> same bytes out
            self.writers = [imageio_ffmpeg.write_frames(
                str(p), size, fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                quality=None, macro_block_size=2, ffmpeg_log_level="error",
                output_params=["-crf", str(crf), "-g", str(gop), "-preset", "fast", "-threads", "1"])
                for p in paths]
            for wr in self.writers:
                wr.send(None)
        elif codec == "mp4v":
            import cv2

            self.writers = [cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), fps, size) for p in paths]
            if not all(wr.isOpened() for wr in self.writers):
                raise OSError(f"{folder}: OpenCV cannot open an mp4v VideoWriter; reinstall opencv-python "
                              "(the pip wheel bundles FFmpeg)")
        else:
            raise ValueError(f"video_codec {codec!r}: use 'h264' or 'mp4v'")
        self.threads = [ThreadPoolExecutor(max_workers=1) for _ in self.writers]
        self.pending: list = []

    def _write_one(self, v: int, frame: np.ndarray) -> None:
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=-1)
        if self.codec == "h264":
            self.writers[v].send(np.ascontiguousarray(frame))
        else:
            self.writers[v].write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR

    def write(self, frames: np.ndarray, max_pending: int = 4) -> None:
        """frames [V, H, W, 3] RGB or [V, H, W] gray, uint8 (not modified afterwards). Returns once
        at most ``max_pending`` earlier frames are still being encoded; raises an encoder's error."""
        self.pending.append([t.submit(self._write_one, v, f) for v, (t, f) in enumerate(zip(self.threads, frames))])
        while len(self.pending) > max_pending:
            for fut in self.pending.pop(0):
                fut.result()

    def close(self) -> None:
        try:
            for futs in self.pending:
                for fut in futs:
                    fut.result()
        finally:
            for t in self.threads:
                t.shutdown(wait=True)
            for wr in self.writers:
                wr.close() if self.codec == "h264" else wr.release()


NOISE_STREAM, KEYPOINT_STREAM = 1, 2  # keyed_generator(seed, stream, frame)


@dataclass
class _Rig:
    """What the CPU side of a frame needs: the config, cameras w2c [V, 4, 4] and K [V, 3, 3]
    (float64, at the image size) and the motion."""
    cfg: SyntheticConfig
    w2c: torch.Tensor
    K: torch.Tensor
    pose: PoseTrack

    @classmethod
    def build(cls, cfg: SyntheticConfig) -> "_Rig":
        w2c, K = rig_cameras(cfg)
        cameras.check_rotation(w2c[:, :3, :3], what="synthetic rig")
        return cls(cfg, w2c, K, simulate_motion(cfg, cfg.n_frames, torch.Generator().manual_seed(cfg.seed)))

    def body(self, f: int) -> tuple[mm.MouseShapes, mm.Quadrics, np.ndarray, np.ndarray]:
        """Frame f's CPU side -> (shapes, their float32 quadrics, keypoints2d [V, 22, 3],
        keypoints3d [22, 3]); depends on (config, f) only."""
        shapes, kp3d = mm.build_mouse(self.pose, f, self.cfg.body)
        kp2d = keypoints_2d(self.cfg, self.w2c, self.K, shapes, kp3d,
                            keyed_generator(self.cfg.seed, KEYPOINT_STREAM, f))
        return shapes, mm.to_quadrics(shapes), kp2d, kp3d


_WORKER_RIG: _Rig | None = None  # the rig of a CPU worker process (set by its initializer)


def _init_worker(cfg: SyntheticConfig) -> None:
    global _WORKER_RIG
    torch.set_num_threads(1)
    _WORKER_RIG = _Rig.build(cfg)


def _worker_body(f: int) -> tuple[mm.MouseShapes, mm.Quadrics, np.ndarray, np.ndarray]:
    """:meth:`_Rig.body` in a worker, the quadrics as numpy arrays (plain pickles: tensors would
    travel as shared-memory handles, one file descriptor each)."""
    shapes, q, kp2d, kp3d = _WORKER_RIG.body(f)
    return shapes, mm.Quadrics(**{k: v.numpy() for k, v in vars(q).items()}), kp2d, kp3d


def _bodies(rig: _Rig):
    """Yield frame f's :meth:`_Rig.body` for f = 0 .. n_frames - 1 in order: from this process, or
    computed ahead by ``cfg.workers`` spawned processes (bodies and keypoints are CPU work; the
    rendering stays in this process, one context on the device)."""
    cfg = rig.cfg
    if cfg.workers <= 0:
        for f in range(cfg.n_frames):
            yield rig.body(f)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: CUDA cannot be forked; a worker that dies raises BrokenProcessPool here, never hangs
    with ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(cfg,)) as pool:
        yield from pool.map(_worker_body, range(cfg.n_frames), chunksize=max(1, min(16, cfg.n_frames // (4 * cfg.workers))))


def _rendered_frames(cfg: SyntheticConfig, rig: _Rig, scene: Scene, seconds: dict | None = None):
    """Yield (f, rgb [V, H, W, 3] uint8 with sensor noise, mask [V, H, W] uint8 0/255,
    keypoints2d [V, 22, 3], keypoints3d [22, 3]) for f = 0 .. n_frames - 1 in order, rendering
    ``cfg.render_batch`` frames per call. Each frame depends on (config, f) only. ``seconds``, when
    given, accumulates the time spent waiting for bodies ("bodies") and rendering ("render")."""
    seconds = {} if seconds is None else seconds
    batch, f0, t0 = [], 0, time.perf_counter()
    for f, body in enumerate(_bodies(rig)):
        batch.append(body)
        if len(batch) < cfg.render_batch and f < cfg.n_frames - 1:
            continue
        t1 = time.perf_counter()
        seconds["bodies"] = seconds.get("bodies", 0.0) + t1 - t0
        rgb, mask = render_frames(cfg, scene, [b[0] for b in batch], [b[1] for b in batch])
        img = rgb.mul_(255.0)
        if cfg.scene.sensor_noise_std > 0:
            for i in range(len(batch)):
                g = keyed_generator(cfg.seed, NOISE_STREAM, f0 + i, device=img.device)
                img[i].add_(torch.randn(img.shape[1:], generator=g, device=img.device).mul_(cfg.scene.sensor_noise_std))
        img = img.round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        mask = mask.to(torch.uint8).mul_(255).cpu().numpy()
        seconds["render"] = seconds.get("render", 0.0) + time.perf_counter() - t1
        for i, (_, _, kp2d, kp3d) in enumerate(batch):
            yield f0 + i, img[i], mask[i], kp2d, kp3d
        f0, batch, t0 = f + 1, [], time.perf_counter()


def generate_recording(out_dir: str | os.PathLike, config: SyntheticConfig) -> Path:
    """Render the recording described by ``config`` into ``out_dir`` (which must not exist) -> its path.

    It is written into a sibling temp folder and renamed when complete, so a killed run never
    leaves a folder that looks complete.
    1. cameras and motion; 2. per frame (here or in ``config.workers`` processes): body, render,
    noise, keypoints; written in order, each video encoding on its own thread;
    3. cameras, keypoints and ground truth files; 4. rename."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; delete it or use ensure_recording() to reuse it")
    threads = torch.get_num_threads()
    if config.cpu_threads > 0:
        torch.set_num_threads(config.cpu_threads)
    try:
        return _generate(out_dir, config)
    finally:
        torch.set_num_threads(threads)


def _generate(out_dir: Path, config: SyntheticConfig) -> Path:
    from tqdm.auto import tqdm

    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    cfg = config
    w, h = image_size(cfg)
    # 1. cameras and motion
    rig = _Rig.build(cfg)
    w2c, K, pose = rig.w2c, rig.K, rig.pose
    V = len(w2c)
    log.info("rendering %d frames x %d cameras at %dx%d on %s, %d frames per call, bodies in %s, into %s",
             cfg.n_frames, V, w, h, cfg.device, cfg.render_batch,
             f"{cfg.workers} processes" if cfg.workers > 0 else "this process", tmp)
    scene = build_scene(cfg, w2c, K)
    videos = _VideoSet(tmp / "videos_undist", V, (w, h), cfg.rig.fps, cfg.video_codec, cfg.video_gop, cfg.video_crf)
    masks = _VideoSet(tmp / "simpleclick_undist", V, (w, h), cfg.rig.fps, cfg.video_codec, cfg.video_gop,
                      cfg.video_crf)
    kp3d = np.zeros((cfg.n_frames, len(KEYPOINT_NAMES), 3))
    kp2d = np.zeros((V, cfg.n_frames, len(KEYPOINT_NAMES), 3))
    seconds, start = {"encoders": 0.0}, time.perf_counter()
    try:
        # 2. frames
        for f, rgb, mask, kp2d_f, kp3d_f in tqdm(_rendered_frames(cfg, rig, scene, seconds), total=cfg.n_frames,
                                                 desc="synthetic recording", leave=False):
            # encoders may lag a whole batch behind, so the next batch renders while they work
            t = time.perf_counter()
            videos.write(rgb, max_pending=2 * cfg.render_batch)
            masks.write(mask, max_pending=2 * cfg.render_batch)
            seconds["encoders"] += time.perf_counter() - t
            kp2d[:, f], kp3d[f] = kp2d_f, kp3d_f
        t = time.perf_counter()
    finally:
        videos.close()
        masks.close()
    seconds["encoders"] += time.perf_counter() - t
    log.info("%d frames in %.1f s (%.1f frames/s): waiting for bodies %.1f s, rendering %.1f s, waiting for "
             "encoders %.1f s", cfg.n_frames, time.perf_counter() - start, cfg.n_frames / (time.perf_counter() - start),
             seconds.get("bodies", 0.0), seconds.get("render", 0.0), seconds["encoders"])
    # 3. cameras, keypoints, ground truth
    K_cv = cameras.K_to_opencv(K)
    cams = [{"K": K_cv[v].numpy().copy(), "R": w2c[v, :3, :3].numpy().copy(), "T": w2c[v, :3, 3].numpy().copy()}
            for v in range(V)]
    (tmp / "new_cam.pkl").write_bytes(pickle.dumps(cams, protocol=4))
    (tmp / "keypoints2d_undist").mkdir()
    for v in range(V):
        (tmp / "keypoints2d_undist" / f"result_view_{v}.pkl").write_bytes(pickle.dumps(kp2d[v], protocol=4))
    gt = tmp / GT_DIR
    gt.mkdir()
    _save_npz(gt / "poses.npz", pose.as_dict())
    _save_npz(gt / "keypoints3d.npz", {"keypoints3d": kp3d})
    meta = {"format_version": FORMAT_VERSION, "config": cfg.to_dict(), "config_hash": config_hash(cfg),
            "keypoint_names": list(KEYPOINT_NAMES), "pose_fields": list(mm.POSE_FIELDS),
            "image_size": [w, h], "units": "mm, world Z-up, floor z = 0"}
    (gt / "params.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    # 4. publish
    try:
        tmp.rename(out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileExistsError(f"{out_dir} appeared while generating it (another process?): {e}") from e
    log.info("wrote %s (rearing in %.1f%% of frames)", out_dir, 100 * pose.rearing.mean())
    return out_dir


def ensure_recording(cache_root: str | os.PathLike, config: SyntheticConfig) -> Path:
    """The recording for ``config`` under cache_root/synthetic_<hash>, generated only when missing."""
    out = Path(cache_root) / f"synthetic_{config_hash(config)}"
    if out.is_dir():
        log.info("using cached synthetic recording %s", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):
        if not _process_alive(stale.name.rsplit("-", 1)[-1]):
            log.warning("removing the unfinished generation %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
    try:
        return generate_recording(out, config)
    except FileExistsError:
        if out.is_dir():  # a concurrent call finished the same recording first
            return out
        raise


def _process_alive(pid: str) -> bool:
    """True when ``pid`` names another running process (its partial folder is still being written)."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------------------------
# Ground truth and inspection
# ----------------------------------------------------------------------------------------------
def load_ground_truth(recording_dir: str | os.PathLike) -> tuple[SyntheticConfig, PoseTrack, np.ndarray]:
    """-> (config, poses, keypoints3d [F, 22, 3] mm world) of a procedural recording."""
    gt = Path(recording_dir) / GT_DIR
    try:
        meta = json.loads((gt / "params.json").read_text())
        cfg = SyntheticConfig.from_dict(meta["config"])
        with np.load(gt / "poses.npz") as z:
            pose = PoseTrack(**{k: z[k] for k in mm.POSE_FIELDS})
        with np.load(gt / "keypoints3d.npz") as z:
            kp = z["keypoints3d"]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{gt}: not a procedural recording's ground truth ({e}); "
                         "regenerate it with mousefacelift.data.synthetic.ensure_recording") from e
    return cfg, pose, kp


def sample_surface(recording_dir_or_pose: str | os.PathLike | PoseTrack, frame: int, n_points: int,
                   generator: torch.Generator, body: BodyConfig | None = None) -> torch.Tensor:
    """Points uniformly on the true mouse surface of ``frame`` -> [n_points, 3] float64, mm world.
    Give a recording folder, or a PoseTrack (with ``body``, default BodyConfig())."""
    if isinstance(recording_dir_or_pose, PoseTrack):
        pose, body = recording_dir_or_pose, body or BodyConfig()
    else:
        cfg, pose, _ = load_ground_truth(recording_dir_or_pose)
        body = body or cfg.body
    if not 0 <= frame < len(pose):
        raise IndexError(f"frame {frame} out of range: the recording has {len(pose)} frames")
    shapes, _ = mm.build_mouse(pose, frame, body)
    return mm.sample_surface_points(shapes, n_points, generator)


def _read_frame(path: Path, frame: int) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        for _ in range(frame):
            if not cap.grab():
                break
        ok, img = cap.read()
    finally:
        cap.release()
    if not ok:
        raise ValueError(f"{path}: cannot decode frame {frame}")
    return img[..., ::-1]


def contact_sheet(recording_dir: str | os.PathLike, frame: int, columns: int = 3) -> np.ndarray:
    """All views of one frame tiled (RGB uint8 [rows * H, columns * W, 3]), mask outlines in green,
    keypoints with confidence >= 0.25 as red dots, the camera index in the corner."""
    import cv2

    root = Path(recording_dir)
    n = len(list((root / "videos_undist").glob("*.mp4")))
    tiles = []
    for v in range(n):
        img = np.ascontiguousarray(_read_frame(root / "videos_undist" / f"{v}.mp4", frame))
        m = (_read_frame(root / "simpleclick_undist" / f"{v}.mp4", frame)[..., 0] > 127).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, (0, 255, 0), 1)
        kp_file = root / "keypoints2d_undist" / f"result_view_{v}.pkl"
        if kp_file.is_file():
            from .recording import load_pickle_restricted  # a recording from elsewhere must not run code
            kp = np.asarray(load_pickle_restricted(kp_file))[frame]
            for x, y, c in kp:
                if c >= 0.25:
                    cv2.circle(img, (int(round(x)), int(round(y))), 2, (255, 0, 0), -1)
        cv2.putText(img, f"cam {v}  frame {frame}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 0), 2)
        tiles.append(img)
    rows = -(-n // columns)
    tiles += [np.zeros_like(tiles[0])] * (rows * columns - n)
    return np.concatenate([np.concatenate(tiles[r * columns:(r + 1) * columns], 1) for r in range(rows)], 0)
