"""The procedural mouse as quadrics: exact ray casting, containment and uniform surface sampling.

Every piece of the surface is one quadric ``(p - c)^T G (p - c) = k`` with an optional axial range
``lo <= (p - c) . u <= hi`` (capsules are split into a finite cylinder and two spheres). A ray from a
shared origin then needs only a quadratic form in its direction, which is a matmul over all rays
and pieces (:func:`ray_hits_batched`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .mouse import MouseShapes


# ----------------------------------------------------------------------------------------------
# Quadrics: exact ray casting and containment
# ----------------------------------------------------------------------------------------------
@dataclass
class Quadrics:
    """Q surface pieces ``(p - center)^T G (p - center) = k`` limited to ``lo <= (p - center) . u <= hi``.

    G [Q, 3, 3] symmetric, center [Q, 3], k [Q], u [Q, 3] (zero for closed pieces), lo, hi [Q];
    piece [Q] long: index into the MouseShapes pieces (for albedo / texture);
    box [Q, 8, 3]: corners of an oriented box bounding each piece (for screen-space culling).
    Outward normal at p: G (p - center)."""
    G: torch.Tensor
    center: torch.Tensor
    k: torch.Tensor
    u: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    piece: torch.Tensor
    box: torch.Tensor


_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)


def _box(center, R, half) -> np.ndarray:
    """Corners [8, 3] of the box centre + R @ (signs * half) (R columns = box axes)."""
    return np.asarray(center) + (_SIGNS * np.asarray(half)) @ np.asarray(R).T


def to_quadrics(shapes: MouseShapes, *, dtype=torch.float32, device=None) -> Quadrics:
    """Ellipsoids -> one quadric each; capsules -> finite cylinder + two end spheres."""
    E, C = len(shapes.ell_axes), len(shapes.cap_r)
    G, cen, k, u, lo, hi, piece, box = [], [], [], [], [], [], [], []
    for e in range(E):
        R, a = shapes.ell_rot[e], shapes.ell_axes[e]
        G.append(R @ np.diag(1.0 / a ** 2) @ R.T); cen.append(shapes.ell_center[e]); k.append(1.0)
        u.append(np.zeros(3)); lo.append(-1.0); hi.append(1.0); piece.append(e)
        box.append(_box(shapes.ell_center[e], R, a))
    for c in range(C):
        a, b, r = shapes.cap_a[c], shapes.cap_b[c], shapes.cap_r[c]
        L = float(np.linalg.norm(b - a))
        ax = (b - a) / max(L, 1e-12)
        e1 = np.cross(ax, [0.0, 0.0, 1.0]) if abs(ax[2]) < 0.9 else np.cross(ax, [1.0, 0.0, 0.0])
        e1 /= np.linalg.norm(e1)
        G.append(np.eye(3) - np.outer(ax, ax)); cen.append(a); k.append(r * r)
        u.append(ax); lo.append(0.0); hi.append(L); piece.append(E + c)
        box.append(_box(0.5 * (a + b), np.stack([ax, e1, np.cross(ax, e1)], 1), (0.5 * L, r, r)))
        for end in (a, b):
            G.append(np.eye(3)); cen.append(end); k.append(r * r)
            u.append(np.zeros(3)); lo.append(-1.0); hi.append(1.0); piece.append(E + c)
            box.append(_box(end, np.eye(3), (r, r, r)))
    t = lambda x: torch.as_tensor(np.asarray(x), dtype=dtype, device=device)  # noqa: E731
    return Quadrics(G=t(np.stack(G)), center=t(np.stack(cen)), k=t(k), u=t(np.stack(u)), lo=t(lo), hi=t(hi),
                    piece=torch.as_tensor(piece, dtype=torch.long, device=device), box=t(np.stack(box)))


def ray_hits(q: Quadrics, origin: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Entry distances of rays from one origin [3] along dirs [N, 3] (any length; t is in units of
    |dir|) into every piece -> t [N, Q] (inf where the ray misses the piece or hits it behind)."""
    pieces = torch.arange(len(q.k), device=q.k.device).unsqueeze(0)
    return ray_hits_batched(q, origin.to(q.center).unsqueeze(0), dirs.to(q.center).unsqueeze(0), pieces)[0]


def ray_hits_batched(q: Quadrics, origins: torch.Tensor, dirs: torch.Tensor, pieces: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """K bundles of rays, bundle k from origins [K, 3] along dirs [K, n, 3], each tested against its
    own pieces [K, P] (indices into q; ``valid`` [K, P] marks padding) -> t [K, n, P] (inf: miss).

    With o - c fixed per bundle and piece, a = d^T G d, b/2 = d . G (o - c) and
    c = (o - c)^T G (o - c) - k, so a and b are batched matmuls of ray features against per-piece
    coefficients; the entry is t = (-b/2 - sqrt(b^2/4 - a c)) / a, valid inside the axial range."""
    G = q.G[pieces]                                                         # [K, P, 3, 3]
    oc = origins.unsqueeze(1) - q.center[pieces]                            # [K, P, 3]
    Goc = (G @ oc.unsqueeze(-1)).squeeze(-1)                                # [K, P, 3]
    u = q.u[pieces]
    d = dirs
    feat = torch.stack([d[..., 0] ** 2, d[..., 1] ** 2, d[..., 2] ** 2, 2 * d[..., 0] * d[..., 1],
                        2 * d[..., 0] * d[..., 2], 2 * d[..., 1] * d[..., 2]], -1)   # [K, n, 6]
    G6 = torch.stack([G[..., 0, 0], G[..., 1, 1], G[..., 2, 2], G[..., 0, 1], G[..., 0, 2], G[..., 1, 2]], 1)
    a = feat @ G6                                                           # [K, n, P]
    hb = d @ Goc.transpose(1, 2)
    c = ((oc * Goc).sum(-1) - q.k[pieces]).unsqueeze(1)                     # [K, 1, P]
    disc = hb * hb - a * c
    t = (-hb - disc.clamp_min(0).sqrt()) / a.clamp_min(1e-12)
    s = (oc * u).sum(-1).unsqueeze(1) + t * (d @ u.transpose(1, 2))         # axial coordinate
    ok = (disc >= 0) & (a > 1e-12) & (t > 0) & (s >= q.lo[pieces].unsqueeze(1)) & (s <= q.hi[pieces].unsqueeze(1))
    if valid is not None:
        ok &= valid.unsqueeze(1)
    return torch.where(ok, t, torch.full_like(t, math.inf))


def contains(q: Quadrics, points: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """points [N, 3] -> [N, Q] bool: inside piece (quadric value <= k (1 + margin) within its range)."""
    pc = points.to(q.center).unsqueeze(1) - q.center                        # [N, Q, 3]
    val = (pc.unsqueeze(-2) @ q.G @ pc.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    s = (pc * q.u).sum(-1)
    return (val <= q.k * (1 + margin)) & (s >= q.lo) & (s <= q.hi)


# ----------------------------------------------------------------------------------------------
# Surface sampling (ground truth for 3D metrics)
# ----------------------------------------------------------------------------------------------
def _ellipsoid_area(a: np.ndarray) -> float:
    """Knud Thomsen's approximation (error < 1.1%)."""
    p = 1.6075
    x, y, z = a ** p
    return 4 * math.pi * ((x * y + x * z + y * z) / 3) ** (1 / p)


def sample_surface_points(shapes: MouseShapes, n_points: int, generator: torch.Generator) -> torch.Tensor:
    """Points uniformly distributed over the outer surface of the union of all primitives, above the
    floor -> [n_points, 3] float64 world mm.

    1. draw candidates on every primitive surface in proportion to its area (ellipsoids: sphere
       points mapped by the axes, thinned by the area element |S^-1 u| to stay uniform; capsules:
       cylinder wall + two spheres);
    2. drop candidates inside any other piece or below z = 0; 3. keep a random n_points."""
    q = to_quadrics(shapes, dtype=torch.float64)
    ell_area = [_ellipsoid_area(a) for a in shapes.ell_axes]
    cyl_area = [2 * math.pi * r * np.linalg.norm(b - a) for a, b, r in zip(shapes.cap_a, shapes.cap_b, shapes.cap_r)]
    sph_area = [4 * math.pi * r * r for r in shapes.cap_r]
    kept = torch.zeros(0, 3, dtype=torch.float64)
    total = sum(ell_area) + sum(cyl_area) + 2 * sum(sph_area)
    budget = 3 * n_points
    for _ in range(20):
        pts, owner = [], []  # owner: quadric index the point lies on
        qi = 0
        for e, area in enumerate(ell_area):
            m = int(math.ceil(budget * area / total * 1.6))
            u = torch.randn(m, 3, generator=generator, dtype=torch.float64)
            u = u / u.norm(dim=-1, keepdim=True)
            ax = torch.as_tensor(shapes.ell_axes[e])
            g = (u / ax).norm(dim=-1)
            keep = torch.rand(m, generator=generator, dtype=torch.float64) * g.max() < g
            p = (u[keep] * ax) @ torch.as_tensor(shapes.ell_rot[e]).T + torch.as_tensor(shapes.ell_center[e])
            pts.append(p); owner += [qi] * len(p); qi += 1
        for c in range(len(shapes.cap_r)):
            a, b, r = (torch.as_tensor(x) for x in (shapes.cap_a[c], shapes.cap_b[c], shapes.cap_r[c]))
            ax = (b - a) / (b - a).norm()
            e1 = torch.linalg.cross(ax, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
            if e1.norm() < 1e-6:
                e1 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
            e1 = e1 / e1.norm()
            e2 = torch.linalg.cross(ax, e1)
            m = int(math.ceil(budget * cyl_area[c] / total))
            s, ang = torch.rand(m, 2, generator=generator, dtype=torch.float64).unbind(-1)
            ang = 2 * math.pi * ang
            p = a + s[:, None] * (b - a) + r * (ang.cos()[:, None] * e1 + ang.sin()[:, None] * e2)
            pts.append(p); owner += [qi] * m; qi += 1
            for end in (a, b):
                m = int(math.ceil(budget * sph_area[c] / total))
                u = torch.randn(m, 3, generator=generator, dtype=torch.float64)
                pts.append(end + r * u / u.norm(dim=-1, keepdim=True)); owner += [qi] * m; qi += 1
        pts = torch.cat(pts)
        owner = torch.as_tensor(owner, dtype=torch.long)
        inside = contains(q, pts, margin=-1e-6)
        inside[torch.arange(len(pts)), owner] = False
        good = ~inside.any(-1) & (pts[:, 2] >= 0)
        kept = torch.cat([kept, pts[good]])
        if len(kept) >= n_points:
            break
        budget *= 2
    if len(kept) < n_points:
        raise RuntimeError(f"sample_surface_points: only {len(kept)} of {n_points} points found; "
                           "the shapes are degenerate (check BodyConfig)")
    return kept[torch.randperm(len(kept), generator=generator)[:n_points]]
