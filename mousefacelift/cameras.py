"""All camera math of the project, in one place.

Conventions (every function here follows them; so does every caller):

* Cameras are OpenCV pinhole cameras: x right, y down, z forward. A camera maps a world point
  X to camera coordinates ``x_cam = R @ X + T`` and to pixels ``(u, v) = (K @ x_cam)[:2] / z``.
* ``w2c [..., 4, 4]`` is stored on disk; ``c2w = inv(w2c)`` is used in memory. Both are rigid
  (``det(R) = +1``; :func:`check_rotation` is called on every load).
* The world is Z-up. Recording units are millimetres; normalized space puts the mouse at the
  origin and the cameras at mean distance 2.7 with ONE similarity transform per sample.
* Pixel coordinates are continuous with pixel ``(i, j)`` covering ``[j, j+1) x [i, i+1)``, so
  its centre is at ``(j + 0.5, i + 0.5)``. This is FaceLift's, gsplat's and graphdeco's
  convention (``cx = cy = 256`` is the exact centre of a 512 image). OpenCV calibrations
  (``new_cam.pkl``) and ``cv2`` warps put pixel centres at integers: convert at the border with
  :func:`K_from_opencv` / :func:`K_to_opencv` and :func:`homography_to_opencv`.
* Functions take torch tensors of any float dtype with leading batch dimensions ``...`` and
  return tensors on the same device. Use float64 for calibration-grade work.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# FaceLift's canonical inference rig: stated in constants.py, named here for the camera code's callers.
from .constants import (FACELIFT_AZIMUTH_OFFSETS, FACELIFT_DISTANCE, FACELIFT_FOCAL,  # noqa: F401
                        FACELIFT_FOV_DEG, FACELIFT_FRONT_AZIMUTH, FACELIFT_IMAGE_SIZE, FACELIFT_VIEW_NAMES)

WORLD_UP = (0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
def intrinsics(fx, fy, cx, cy, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """K [3, 3] from focal lengths and principal point (pixels, centre-at-+0.5 convention)."""
    K = torch.zeros(3, 3, dtype=dtype, device=device)
    K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[2, 2] = float(fx), float(fy), float(cx), float(cy), 1.0
    return K


def K_from_opencv(K: torch.Tensor) -> torch.Tensor:
    """K [..., 3, 3] with integer pixel centres (OpenCV calibration) -> project convention."""
    K = K.clone()
    K[..., 0, 2] += 0.5
    K[..., 1, 2] += 0.5
    return K


def K_to_opencv(K: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`K_from_opencv`: project convention -> integer pixel centres."""
    K = K.clone()
    K[..., 0, 2] -= 0.5
    K[..., 1, 2] -= 0.5
    return K


def w2c_from_RT(R: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """R [..., 3, 3] (world->camera), T [..., 3] -> w2c [..., 4, 4]."""
    w2c = torch.zeros(*R.shape[:-2], 4, 4, dtype=R.dtype, device=R.device)
    w2c[..., :3, :3] = R
    w2c[..., :3, 3] = T
    w2c[..., 3, 3] = 1.0
    return w2c


def invert_rigid(M: torch.Tensor) -> torch.Tensor:
    """Exact inverse of a rigid transform M [..., 4, 4] (w2c <-> c2w): [R|t]^-1 = [R^T|-R^T t]."""
    R, t = M[..., :3, :3], M[..., :3, 3]
    Rt = R.transpose(-1, -2)
    return w2c_from_RT(Rt, -(Rt @ t.unsqueeze(-1)).squeeze(-1))


def camera_centers(w2c: torch.Tensor) -> torch.Tensor:
    """Camera centres C = -R^T T, [..., 3] in world units."""
    R, T = w2c[..., :3, :3], w2c[..., :3, 3]
    return -(R.transpose(-1, -2) @ T.unsqueeze(-1)).squeeze(-1)


def optical_axes(w2c: torch.Tensor) -> torch.Tensor:
    """World direction of each camera's +z axis (viewing direction), [..., 3]."""
    return w2c[..., 2, :3]


def check_rotation(R: torch.Tensor, *, atol: float = 1e-3, what: str = "camera") -> None:
    """Raise ValueError unless every R [..., 3, 3] is finite, orthonormal and has det(R) = +1.

    A determinant of -1 is a mirrored camera: it flips handedness
    and silently breaks 3D consistency, so it is an error, never a warning.
    """
    if not torch.isfinite(R).all():
        raise ValueError(f"{what}: rotation has non-finite entries: {R.tolist()}")
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    ortho_err = (R @ R.transpose(-1, -2) - eye).abs().amax().item()
    det = torch.linalg.det(R)
    bad_det = (det - 1.0).abs() > atol
    if bad_det.any():
        raise ValueError(
            f"{what}: det(R) = {det.flatten()[bad_det.flatten()].tolist()} (must be +1 within {atol}); "
            "a determinant of -1 is a mirrored camera: negate one axis of R (and T) consistently "
            "or rebuild the rotation")
    if ortho_err > atol:
        raise ValueError(f"{what}: R is not orthonormal (max |R R^T - I| = {ortho_err:.2e} > {atol})")


# ----------------------------------------------------------------------------------------------
# Projection and rays
# ----------------------------------------------------------------------------------------------
def project(points: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points.

    points [..., N, 3]; w2c [..., 4, 4]; K [..., 3, 3] -> uv [..., N, 2] (pixels), depth [..., N]
    (camera z; points behind the camera get depth <= 0 and meaningless uv).
    """
    R, T = w2c[..., :3, :3], w2c[..., :3, 3]
    x_cam = points @ R.transpose(-1, -2) + T.unsqueeze(-2)
    z = x_cam[..., 2]
    pix = x_cam @ K.transpose(-1, -2)
    uv = pix[..., :2] / z.unsqueeze(-1)
    return uv, z


def pixel_rays(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World rays through the pixel centres (u + 0.5, v + 0.5).

    c2w [..., 4, 4]; K [..., 3, 3] -> origins [..., H, W, 3], unit directions [..., H, W, 3].
    """
    dtype, device = c2w.dtype, c2w.device
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype, device=device) + 0.5,
                          torch.arange(width, dtype=dtype, device=device) + 0.5, indexing="ij")
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    d_cam = torch.stack(torch.broadcast_tensors((u - cx) / fx, (v - cy) / fy, torch.ones_like(u)), -1)
    d_world = d_cam @ c2w[..., None, :3, :3].transpose(-1, -2)  # [..., H, W, 3]
    d_world = d_world / d_world.norm(dim=-1, keepdim=True)
    origins = c2w[..., None, None, :3, 3].expand_as(d_world)
    return origins, d_world


def rays_through_pixels(uv: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World rays through arbitrary pixel positions (continuous, centre-at-+0.5 convention).

    uv [..., N, 2]; c2w [..., 4, 4]; K [..., 3, 3] -> origins [..., N, 3], unit directions [..., N, 3].
    The inverse of :func:`project`: every point on the ray projects to ``uv``."""
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    skew = K[..., 0, 1, None]
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - skew * y) / fx
    d_cam = torch.stack([x, y, torch.ones_like(x)], -1)
    d_world = d_cam @ c2w[..., :3, :3].transpose(-1, -2)
    d_world = d_world / d_world.norm(dim=-1, keepdim=True)
    return c2w[..., None, :3, 3].expand_as(d_world), d_world


def closest_point_to_origin(origins: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """p0 = o + (-(o . d)) d: the point of each ray nearest the world origin (d unit), [..., 3]."""
    t0 = -(origins * dirs).sum(-1, keepdim=True)
    return origins + t0 * dirs


def triangulate_rays(origins: torch.Tensor, dirs: torch.Tensor, weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares intersection of N rays: argmin_X sum_i w_i |(I - d_i d_i^T)(X - o_i)|^2.

    origins, dirs [..., N, 3] (dirs need not be unit), weights [..., N] (default 1; a ray of
    weight 0 is ignored but still gets its residual) -> point [..., 3], per-ray distance
    residuals [..., N]. Leading dimensions solve independent problems at once.
    """
    d = dirs / dirs.norm(dim=-1, keepdim=True)
    w = torch.ones(d.shape[:-1], dtype=d.dtype, device=d.device) if weights is None else weights.to(d.dtype)
    P = torch.eye(3, dtype=d.dtype, device=d.device) - d.unsqueeze(-1) * d.unsqueeze(-2)  # [..., N, 3, 3]
    wP = w[..., None, None] * P
    A = wP.sum(-3)
    b = (wP @ origins.unsqueeze(-1)).sum(-3).squeeze(-1)
    X = torch.linalg.solve(A, b)
    residual = (P @ (X.unsqueeze(-2) - origins).unsqueeze(-1)).squeeze(-1).norm(dim=-1)
    return X, residual


# ----------------------------------------------------------------------------------------------
# Building cameras
# ----------------------------------------------------------------------------------------------
def look_at_rotation(eye: torch.Tensor, target: torch.Tensor, up=WORLD_UP) -> torch.Tensor:
    """World->camera rotation R [..., 3, 3] of an OpenCV camera at eye [..., 3] looking at
    target [..., 3] with zero roll about world ``up`` (image y points along -up)."""
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    z = target - eye
    z = z / z.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(z, up)
    if (x.norm(dim=-1) < 1e-9).any():
        raise ValueError("look_at: viewing direction is parallel to the up axis; roll is undefined")
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    return torch.stack([x, y, z], dim=-2)


def look_at_w2c(eye: torch.Tensor, target: torch.Tensor, up=WORLD_UP) -> torch.Tensor:
    """w2c [..., 4, 4] of an OpenCV camera at eye looking at target, zero roll about ``up``."""
    R = look_at_rotation(eye, target, up)
    return w2c_from_RT(R, -(R @ eye.unsqueeze(-1)).squeeze(-1))


def orbit_positions(azimuth_deg, elevation_deg, radius, center=(0.0, 0.0, 0.0), *, dtype=torch.float64,
                    device=None) -> torch.Tensor:
    """Points on a sphere about ``center`` (Z-up): azimuth counter-clockwise from +X, elevation
    up from the XY plane, both in degrees -> [N, 3]."""
    az = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=dtype, device=device).reshape(-1))
    el = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=dtype, device=device).reshape(-1))
    az, el = torch.broadcast_tensors(az, el)
    c = torch.as_tensor(center, dtype=dtype, device=device)
    return c + radius * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1)


def orbit_cameras(azimuth_deg, elevation_deg, radius, center=(0.0, 0.0, 0.0), *, dtype=torch.float64,
                  device=None) -> torch.Tensor:
    """w2c [N, 4, 4] of cameras on an orbit about ``center``, all looking at it, zero roll."""
    eye = orbit_positions(azimuth_deg, elevation_deg, radius, center, dtype=dtype, device=device)
    target = torch.as_tensor(center, dtype=dtype, device=device).expand_as(eye)
    return look_at_w2c(eye, target)


def canonical_rig(distance: float = FACELIFT_DISTANCE, elevation_deg: float = 0.0,
                  image_size: int = FACELIFT_IMAGE_SIZE, fov_deg: float = FACELIFT_FOV_DEG,
                  *, dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """FaceLift's 6-view rig in MVDiffusion output order (front, front_right, right, back, left,
    front_left) -> w2c [6, 4, 4], K [6, 3, 3]. At the canonical size and field of view, fx = FACELIFT_FOCAL
    (up to its float32 rounding)."""
    az = [FACELIFT_FRONT_AZIMUTH + a for a in FACELIFT_AZIMUTH_OFFSETS]
    w2c = orbit_cameras(az, elevation_deg, distance, dtype=dtype, device=device)
    f = focal_from_fov(fov_deg, image_size)
    K = intrinsics(f, f, image_size / 2, image_size / 2, dtype=dtype, device=device).expand(6, 3, 3).clone()
    return w2c, K


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------
def focal_from_fov(fov_deg: float, size: float) -> float:
    """Focal length in pixels giving a field of view of fov_deg across ``size`` pixels."""
    return size / 2.0 / math.tan(math.radians(fov_deg) / 2.0)


def fov_from_focal(focal, size):
    """Field of view in degrees across ``size`` pixels for focal length ``focal`` (pixels)."""
    focal = torch.as_tensor(focal, dtype=torch.float64)
    return torch.rad2deg(2.0 * torch.atan(torch.as_tensor(size, dtype=torch.float64) / (2.0 * focal)))


def spherical_coords(points: torch.Tensor, center=(0.0, 0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """points [..., 3] -> distance [...], elevation [...] (deg, up from XY), azimuth [...] (deg,
    counter-clockwise from +X, in (-180, 180]) about ``center`` in a Z-up world."""
    p = points - torch.as_tensor(center, dtype=points.dtype, device=points.device)
    dist = p.norm(dim=-1)
    elev = torch.rad2deg(torch.asin((p[..., 2] / dist).clamp(-1, 1)))
    azim = torch.rad2deg(torch.atan2(p[..., 1], p[..., 0]))
    return dist, elev, azim


def up_axis_from_centers(w2c: torch.Tensor) -> torch.Tensor:
    """Estimate the world up axis [3] of a rig w2c [V, 4, 4] (V >= 3) as the normal of the
    least-squares plane through the camera centres (PCA), with its sign chosen so that it agrees
    with the cameras' own up directions (-y image axes): cameras are mounted upright."""
    C = camera_centers(w2c)
    _, _, Vh = torch.linalg.svd(C - C.mean(0), full_matrices=True)
    normal = Vh[-1]
    cam_up = -w2c[:, 1, :3]  # world direction of each camera's -y (image up)
    if (cam_up @ normal).sum() < 0:
        normal = -normal
    return normal / normal.norm()


def rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest rotation W [3, 3] (det +1) with W a/|a| = b/|b|, for vectors a, b [3] (Rodrigues;
    opposite vectors turn by 180 degrees about an axis perpendicular to a). Re-orienting a world
    by X' = W X changes every camera as R' = R W^T, T' = T."""
    a, b = a / a.norm(), b / b.norm()
    v, c = torch.linalg.cross(a, b), float(a @ b)
    eye = torch.eye(3, dtype=a.dtype, device=a.device)
    if c < -1.0 + 1e-12:  # opposite: any perpendicular axis
        axis = torch.linalg.cross(a, eye[int(a.abs().argmin())])
        axis = axis / axis.norm()
        return 2.0 * torch.outer(axis, axis) - eye
    vx = torch.zeros(3, 3, dtype=a.dtype, device=a.device)
    vx[0, 1], vx[0, 2], vx[1, 2] = -v[2], v[1], -v[0]
    vx = vx - vx.T
    return eye + vx + vx @ vx / (1.0 + c)


def rotation_angle_deg(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle (deg) between rotations R_a, R_b [..., 3, 3]."""
    cos = ((R_a @ R_b.transpose(-1, -2)).diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def angle_between_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (deg) between vectors a, b [..., 3]."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


# ----------------------------------------------------------------------------------------------
# Normalization: ONE similarity transform per sample
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Similarity:
    """World similarity X' = scale * (X - center): recentres on the subject, one isotropic scale.

    It keeps the rig's geometry (angles, distance ratios) exactly; rescaling each camera on its
    own does not.
    """
    scale: float
    center: tuple[float, float, float]

    def apply_points(self, X: torch.Tensor) -> torch.Tensor:
        """World points [..., 3] -> normalized points [..., 3]."""
        return self.scale * (X - torch.as_tensor(self.center, dtype=X.dtype, device=X.device))

    def invert_points(self, Xn: torch.Tensor) -> torch.Tensor:
        """Normalized points [..., 3] -> world points [..., 3]."""
        return Xn / self.scale + torch.as_tensor(self.center, dtype=Xn.dtype, device=Xn.device)

    def apply_w2c(self, w2c: torch.Tensor) -> torch.Tensor:
        """w2c [..., 4, 4] in world units -> w2c in normalized units. Since x_cam = R X + T and
        X = X'/s + c, the camera sees s * x_cam = R X' + s (R c + T): R kept, T' = s (R c + T)."""
        R, T = w2c[..., :3, :3], w2c[..., :3, 3]
        c = torch.as_tensor(self.center, dtype=w2c.dtype, device=w2c.device)
        return w2c_from_RT(R, self.scale * ((R @ c) + T))

    def as_matrix(self) -> list[list[float]]:
        """4x4 matrix (row-major lists) mapping homogeneous world points to normalized ones."""
        s, (cx, cy, cz) = self.scale, self.center
        return [[s, 0, 0, -s * cx], [0, s, 0, -s * cy], [0, 0, s, -s * cz], [0, 0, 0, 1]]


def normalizing_similarity(w2c: torch.Tensor, center: torch.Tensor,
                           target_mean_distance: float = FACELIFT_DISTANCE) -> Similarity:
    """The similarity that moves ``center`` [3] to the origin and scales so that the mean distance
    of the cameras w2c [V, 4, 4] to it becomes ``target_mean_distance``."""
    dist = (camera_centers(w2c) - center).norm(dim=-1).mean().item()
    return Similarity(scale=target_mean_distance / dist, center=tuple(float(x) for x in center))


# ----------------------------------------------------------------------------------------------
# Image operations <-> intrinsics
# ----------------------------------------------------------------------------------------------
def crop_intrinsics(K: torch.Tensor, x0: float, y0: float) -> torch.Tensor:
    """K [..., 3, 3] of the crop whose top-left corner is at pixel edge (x0, y0) of the source."""
    K = K.clone()
    K[..., 0, 2] -= x0
    K[..., 1, 2] -= y0
    return K


def scale_intrinsics(K: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """K [..., 3, 3] after resizing the image by sx (width) and sy (height). With pixel centres at
    +0.5 the image edges map to edges, so every entry of the first two rows simply scales."""
    K = K.clone()
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def rotation_homography(K_src: torch.Tensor, R_src: torch.Tensor, K_dst: torch.Tensor,
                        R_dst: torch.Tensor) -> torch.Tensor:
    """Homography H [..., 3, 3] mapping source pixels to destination pixels for two cameras that
    share a centre and differ only by rotation: x_dst ~ K_dst R_dst R_src^T K_src^-1 x_src.
    This is exact for every scene point (no depth involved), which is why 'rectify' keeps images
    and cameras consistent."""
    return K_dst @ R_dst @ R_src.transpose(-1, -2) @ torch.linalg.inv(K_src)


def homography_to_opencv(H: torch.Tensor) -> torch.Tensor:
    """Convert a homography between project pixel coordinates (centres at +0.5) to one between
    OpenCV pixel indices (centres at integers), as cv2.warpPerspective expects."""
    shift = torch.eye(3, dtype=H.dtype, device=H.device)
    shift[0, 2] = shift[1, 2] = 0.5
    unshift = torch.eye(3, dtype=H.dtype, device=H.device)
    unshift[0, 2] = unshift[1, 2] = -0.5
    return unshift @ H @ shift


def apply_homography(H: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Map pixel positions uv [..., N, 2] through homographies H [..., 3, 3] -> [..., N, 2]."""
    uvh = torch.cat([uv, torch.ones_like(uv[..., :1])], -1) @ H.transpose(-1, -2)
    return uvh[..., :2] / uvh[..., 2:]


def rig_mismatch(w2c: torch.Tensor, w2c_ref: torch.Tensor, align_view: int = 0) -> dict:
    """How far a rig is from a reference rig (e.g. FaceLift's canonical one), both normalized
    (subject at the origin, Z-up). w2c [V, 4, 4], w2c_ref [V, 4, 4] -> dict of per-view tensors.

    The reference is first turned about Z so that its view 0 has the azimuth of ``align_view`` of
    the rig (a subject's heading is arbitrary; only relative azimuths matter). Then, per view, the
    angle between the directions from the origin to the two cameras, in the given order (camera i
    of one rig with camera i of the other) and under the best one-to-one pairing (brute force, V <= 8)."""
    import itertools

    V = w2c.shape[0]
    if w2c_ref.shape[0] != V or V > 8:
        raise ValueError(f"rig_mismatch: need two rigs of the same size <= 8, got {V} and {w2c_ref.shape[0]}")
    c, c_ref = camera_centers(w2c), camera_centers(w2c_ref)
    _, el, az = spherical_coords(c)
    _, el_ref, az_ref = spherical_coords(c_ref)
    turn = torch.deg2rad(az[align_view] - az_ref[0])
    rot = torch.tensor([[math.cos(turn), -math.sin(turn), 0.0], [math.sin(turn), math.cos(turn), 0.0],
                        [0.0, 0.0, 1.0]], dtype=c.dtype, device=c.device)
    c_ref = c_ref @ rot.T
    _, el_ref, az_ref = spherical_coords(c_ref)
    angle = angle_between_deg(c[:, None, :], c_ref[None, :, :])  # [V, V]: rig view i vs ref view j
    best = min(itertools.permutations(range(V)), key=lambda p: float(sum(angle[i, j] for i, j in enumerate(p))))
    best_t = torch.tensor(best)
    return {"elevation": el, "azimuth": az, "ref_elevation": el_ref, "ref_azimuth": az_ref,
            "angle_in_order": angle.diagonal(), "best_pairing": best_t,
            "angle_best_pairing": angle[torch.arange(V), best_t]}
