"""Rendering the procedural recording: every pixel an exact ray cast against the mouse's quadrics.

The scene: a white floor disk on a dark floor, dark background, one mouse of ellipsoids and capsules
(:mod:`.mouse`) with black procedurally textured fur, pink ears and tail, Lambertian lighting from one
directional light plus ambient, a cast shadow on the floor (a shadow map sampled every 0.5 mm,
looked up bilinearly). Pixels are cast in tiles of 16 px culled by the pieces' screen boxes; the mask
is "the mouse is the nearest hit". Frames are rendered in batches: the pieces of all frames in one
set of quadrics and one shadow map per frame, so a batch costs about the kernel launches of one frame.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ... import cameras
from . import geometry as geo
from . import mouse as mm
from .config import ProceduralConfig, image_size

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


def _camera_tiles(cfg: ProceduralConfig, w2c: torch.Tensor, K: torch.Tensor, light: torch.Tensor) -> dict:
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


def build_scene(cfg: ProceduralConfig, w2c: torch.Tensor, K: torch.Tensor) -> Scene:
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


def _cast_tiles(q: geo.Quadrics, origins: torch.Tensor, dirs: torch.Tensor, over: torch.Tensor,
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
            t, jj = geo.ray_hits_batched(q, origins[k], dirs[k], order[i:i + per], valid[i:i + per]).min(-1)
            t_out[k] = t
            j_out[k] = order[i:i + per].gather(1, jj)
    return t_out, j_out


def _concat_quadrics(shapes: list[mm.MouseShapes], qs: list[geo.Quadrics],
                     device: torch.device) -> tuple[geo.Quadrics, int]:
    """The pieces of B frames (shapes and their float32 quadrics) in one Quadrics on ``device`` (frame
    b's Q pieces at b*Q .. (b+1)*Q - 1; ``piece`` offset into the frames' concatenated MouseShapes
    pieces) -> (quadrics, Q)."""
    Q, n_pieces = len(qs[0].k), len(shapes[0].albedo)
    if any(len(x.k) != Q for x in qs):
        raise ValueError("frames of one recording must have the same pieces (one BodyConfig)")
    fields = {}
    for f in dataclasses.fields(geo.Quadrics):
        parts = [torch.as_tensor(getattr(x, f.name)) + (b * n_pieces if f.name == "piece" else 0)
                 for b, x in enumerate(qs)]
        fields[f.name] = torch.cat(parts).to(device, non_blocking=True)
    return geo.Quadrics(**fields), Q


def _shadow_maps(cfg: ProceduralConfig, q: geo.Quadrics, light: torch.Tensor,
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


def _shade(cfg: ProceduralConfig, sc: Scene, q: geo.Quadrics, tex: dict, p: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Colour [N, 3] of mouse surface points p [N, 3] on quadric j [N]: textured albedo x Lambert."""
    n = (q.G[j] @ (p - q.center[j]).unsqueeze(-1)).squeeze(-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    piece = q.piece[j]
    local = ((p - tex["t"][piece]).unsqueeze(-2) @ tex["R"][piece].transpose(-1, -2)).squeeze(-2)
    noise = torch.sin(local @ sc.tex_freq.T + sc.tex_phase).mean(-1) * 2.0   # ~ unit std
    albedo = tex["albedo"][piece] * (1 + tex["amp"][piece] * noise.clamp(-1.5, 1.5)).unsqueeze(-1)
    lam = cfg.scene.ambient + cfg.scene.diffuse * (n @ sc.light).clamp_min(0)
    return albedo.clamp_min(0) * lam.unsqueeze(-1)


def render_frame(cfg: ProceduralConfig, sc: Scene, shapes: mm.MouseShapes) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame of every camera -> rgb [V, H, W, 3] float in [0, 1], mask [V, H, W] bool
    (:func:`render_frames` of one frame)."""
    rgb, mask = render_frames(cfg, sc, [shapes])
    return rgb[0], mask[0]


def render_frames(cfg: ProceduralConfig, sc: Scene, shapes: list[mm.MouseShapes],
                  quadrics: list[geo.Quadrics] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """B frames of every camera (their shapes, and optionally their float32 CPU quadrics
    ``geo.to_quadrics(shape)``, made ahead by workers) -> rgb [B, V, H, W, 3] float in [0, 1] (before sensor noise) and
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
    q, Q = _concat_quadrics(shapes, quadrics or [geo.to_quadrics(x) for x in shapes], dev)
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


def keypoints_2d(cfg: ProceduralConfig, w2c: torch.Tensor, K: torch.Tensor, shapes: mm.MouseShapes,
                 kp3d: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """kp3d [22, 3] world mm seen by cameras w2c [V, 4, 4], K [V, 3, 3] (float64, project convention)
    -> [V, 22, 3] float64 = (x, y) OpenCV pixels (centres at integers), confidence: 0 when outside
    the image or occluded by a primitive that does not contain the keypoint, else uniform in
    cfg.keypoint_confidence."""
    w, h = image_size(cfg)
    X = torch.as_tensor(kp3d, dtype=torch.float64)
    uv, z = cameras.project(X.unsqueeze(0), w2c, K)                              # [V, 22, 2]
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
    q = geo.to_quadrics(shapes, dtype=torch.float64)
    own = geo.contains(q, X, margin=1e-3)                                          # [22, Q]
    lo, hi = cfg.keypoint_confidence
    conf = lo + (hi - lo) * torch.rand(len(w2c), len(X), generator=generator, dtype=torch.float64)
    origins = cameras.camera_centers(w2c)
    for v in range(len(w2c)):
        t = geo.ray_hits(q, origins[v], X - origins[v])                           # kp at t = 1
        occluded = ((t < 1 - 1e-6) & ~own).any(-1)
        conf[v] = torch.where(inside[v] & ~occluded, conf[v], torch.zeros_like(conf[v]))
    return torch.cat([uv - 0.5, conf.unsqueeze(-1)], -1).numpy()
