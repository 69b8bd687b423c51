"""Golden and unit tests of mousefacelift.cameras (the one module with camera math)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mousefacelift import cameras as cam

f64 = torch.float64

# The real rig (markerless_mouse_1_nerf's new_cam.pkl): camera centres (mm) and the published analysis.
REAL_CENTERS = [(-199.5, -129.3, 63.4), (321.6, 216.8, 145.9), (24.0, 355.8, 71.2),
                (327.6, -65.3, 63.3), (-230.4, 167.4, 142.2), (114.6, -236.3, 156.5)]
REAL_DIST = [246.1, 414.5, 363.7, 340.0, 318.3, 305.7]
REAL_ELEV = [14.9, 20.6, 11.3, 10.7, 26.5, 30.8]
REAL_AZIM = [-147.0, 34.0, 86.1, -11.3, 144.0, -64.1]
ARENA_FOCUS = (55.0, 55.0, 50.0)  # optical axes pass near the arena's vertical axis (36-70 mm high)


def real_rig() -> torch.Tensor:
    """w2c [6, 4, 4] of the real rig: each camera at its published centre, looking at the arena axis."""
    C = torch.tensor(REAL_CENTERS, dtype=f64)
    return cam.look_at_w2c(C, torch.tensor(ARENA_FOCUS, dtype=f64).expand_as(C))


def random_rigid(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=f64))
    Q = Q * torch.linalg.det(Q).sign()[:, None, None]  # det +1
    return cam.w2c_from_RT(Q, torch.randn(n, 3, generator=g, dtype=f64) * 5)


def render_blob(uv: tuple[float, float], height: int, width: int, sigma: float = 3.0) -> np.ndarray:
    """float32 image of a Gaussian blob centred at uv (project convention: pixel (i, j) at (j+.5, i+.5))."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    return np.exp(-((xx - uv[0]) ** 2 + (yy - uv[1]) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def centroid(img: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centroid in the project convention."""
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float64) + 0.5
    w = img.astype(np.float64)
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


# ----------------------------------------------------------------------------------------------
# Golden: the real rig
# ----------------------------------------------------------------------------------------------
def test_real_rig_analysis_reproduces_published_numbers():
    w2c = real_rig()
    cam.check_rotation(w2c[:, :3, :3])
    C = cam.camera_centers(w2c)
    torch.testing.assert_close(C, torch.tensor(REAL_CENTERS, dtype=f64))
    dist, elev, azim = cam.spherical_coords(C)
    assert (dist - torch.tensor(REAL_DIST, dtype=f64)).abs().max() < 0.5
    assert (elev - torch.tensor(REAL_ELEV, dtype=f64)).abs().max() < 0.2
    assert (azim - torch.tensor(REAL_AZIM, dtype=f64)).abs().max() < 0.2
    assert dist.mean().item() == pytest.approx(331.4, abs=0.1)
    # mounted upright with zero roll: the estimated up axis is within a degree of +Z
    up = cam.up_axis_from_centers(w2c)
    assert cam.angle_between_deg(up, torch.tensor([0.0, 0.0, 1.0], dtype=f64)) < 1.0


@pytest.mark.parametrize("a", [(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (1.0, 0.0, 0.0), (0.3, -0.5, 0.8), (0.0, 0.0, 1.0)])
def test_rotation_between_turns_a_onto_b_and_moves_the_rig_with_the_world(a):
    a, z = torch.tensor(a, dtype=f64), torch.tensor([0.0, 0.0, 1.0], dtype=f64)
    W = cam.rotation_between(a, z)
    cam.check_rotation(W, atol=1e-12)
    torch.testing.assert_close(W @ (a / a.norm()), z, atol=1e-12, rtol=0)
    # a world point X seen by [R|T] is seen at the same camera coordinates as W X by [R W^T | T]
    w2c = real_rig()
    X = torch.tensor([[55.0, 48.0, 17.0], [-30.0, 10.0, 90.0]], dtype=f64)
    w2c_new = cam.w2c_from_RT(w2c[:, :3, :3] @ W.T, w2c[:, :3, 3])
    K = cam.intrinsics(1000.0, 1000.0, 500.0, 400.0).expand(6, 3, 3)
    torch.testing.assert_close(cam.project(X @ W.T, w2c_new, K)[0], cam.project(X, w2c, K)[0])


def test_normalizing_similarity_on_real_rig():
    w2c = real_rig()
    center = torch.tensor([70.0, 40.0, 15.0], dtype=f64)
    sim = cam.normalizing_similarity(w2c, center)
    w2c_n = sim.apply_w2c(w2c)
    d = cam.camera_centers(w2c_n).norm(dim=-1)
    assert d.mean().item() == pytest.approx(2.7, abs=1e-12)
    # one similarity keeps distance ratios (a per-camera rescaling would not)
    d_mm = (cam.camera_centers(w2c) - center).norm(dim=-1)
    torch.testing.assert_close(d / d[0], d_mm / d_mm[0])
    torch.testing.assert_close(sim.apply_points(center), torch.zeros(3, dtype=f64))
    M = torch.tensor(sim.as_matrix(), dtype=f64)
    X = torch.tensor([[1.0, 2.0, 3.0], [-40.0, 5.0, 9.0]], dtype=f64)
    torch.testing.assert_close((X @ M[:3, :3].T) + M[:3, 3], sim.apply_points(X))
    torch.testing.assert_close(sim.invert_points(sim.apply_points(X)), X)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
def test_invert_rigid_matches_general_inverse():
    w2c = random_rigid(5, seed=0)
    c2w = cam.invert_rigid(w2c)
    torch.testing.assert_close(c2w, torch.linalg.inv(w2c))
    torch.testing.assert_close(w2c @ c2w, torch.eye(4, dtype=f64).expand(5, 4, 4))
    torch.testing.assert_close(c2w[:, :3, 3], cam.camera_centers(w2c))


def test_K_opencv_conversion_round_trip():
    K = cam.intrinsics(1632.3, 1639.3, 601.35, 491.22)
    Kp = cam.K_from_opencv(K)
    assert (Kp[0, 2].item(), Kp[1, 2].item()) == pytest.approx((601.85, 491.72))
    torch.testing.assert_close(cam.K_to_opencv(Kp), K)
    assert K[0, 2].item() == pytest.approx(601.35)  # inputs are not modified in place


@pytest.mark.parametrize("batch", [(), (3,)])
def test_project_and_pixel_rays_round_trip(batch):
    H, W = 6, 8
    w2c = random_rigid(int(np.prod(batch)) if batch else 1, seed=1).reshape(*batch, 4, 4)
    K = cam.intrinsics(7.0, 6.5, 4.2, 2.9).expand(*batch, 3, 3)
    o, d = cam.pixel_rays(cam.invert_rigid(w2c), K, H, W)
    assert o.shape == (*batch, H, W, 3) and d.shape == (*batch, H, W, 3)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(*batch, H, W, dtype=f64))
    pts = (o + 3.7 * d).reshape(*batch, H * W, 3)
    uv, z = cam.project(pts, w2c, K)
    v, u = torch.meshgrid(torch.arange(H, dtype=f64) + 0.5, torch.arange(W, dtype=f64) + 0.5, indexing="ij")
    expected = torch.stack([u, v], -1).reshape(H * W, 2).expand(*batch, H * W, 2)
    torch.testing.assert_close(uv, expected)
    assert (z > 0).all()
    # rays through arbitrary pixels agree with the pixel grid and invert project()
    o2, d2 = cam.rays_through_pixels(expected, cam.invert_rigid(w2c), K)
    torch.testing.assert_close(d2, d.reshape(*batch, H * W, 3))
    torch.testing.assert_close(o2, o.reshape(*batch, H * W, 3))
    uv_any = torch.tensor([[0.1, 5.3], [7.9, 0.0]], dtype=f64).expand(*batch, 2, 2)
    o3, d3 = cam.rays_through_pixels(uv_any, cam.invert_rigid(w2c), K)
    torch.testing.assert_close(cam.project(o3 + 11.0 * d3, w2c, K)[0], uv_any)


def test_look_at_zero_roll_det_plus_one():
    C = torch.tensor(REAL_CENTERS, dtype=f64)
    target = torch.tensor(ARENA_FOCUS, dtype=f64).expand_as(C)
    R = cam.look_at_rotation(C, target)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(6, dtype=f64))
    cam.check_rotation(R)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=f64)
    z_dir = (target - C) / (target - C).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(R[:, 2], z_dir)  # optical axis points at the target
    assert (R[:, 0] @ up).abs().max() < 1e-12  # image x axis horizontal: zero roll
    assert (R[:, 1] @ up < 0).all()  # image y points down
    w2c = cam.look_at_w2c(C, target)
    uv, z = cam.project(target[:1], w2c, cam.intrinsics(100, 100, 64, 48).expand(6, 3, 3))
    torch.testing.assert_close(uv[:, 0], torch.tensor([64.0, 48.0], dtype=f64).expand(6, 2))
    with pytest.raises(ValueError, match="parallel to the up axis"):
        cam.look_at_rotation(torch.tensor([0.0, 0.0, 5.0], dtype=f64), torch.zeros(3, dtype=f64))


def test_check_rotation_rejects_mirror_and_nan():
    R = real_rig()[:, :3, :3]
    with pytest.raises(ValueError, match="det"):
        cam.check_rotation(R * torch.tensor([1.0, -1.0, 1.0], dtype=f64)[:, None])
    bad = R.clone()
    bad[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        cam.check_rotation(bad)
    with pytest.raises(ValueError, match="orthonormal"):
        cam.check_rotation(R * torch.tensor([1.0, 1.02, 1 / 1.02], dtype=f64)[:, None])  # det 1, sheared


def test_canonical_rig():
    w2c, K = cam.canonical_rig()
    assert w2c.shape == (6, 4, 4) and K.shape == (6, 3, 3)
    cam.check_rotation(w2c[:, :3, :3])
    C = cam.camera_centers(w2c)
    torch.testing.assert_close(C[0], torch.tensor([0.0, -2.7, 0.0], dtype=f64))  # front
    torch.testing.assert_close(C[2], torch.tensor([-2.7, 0.0, 0.0], dtype=f64), atol=1e-12, rtol=0)  # right
    torch.testing.assert_close(C[3], torch.tensor([0.0, 2.7, 0.0], dtype=f64), atol=1e-12, rtol=0)  # back
    dist, elev, azim = cam.spherical_coords(C)
    torch.testing.assert_close(dist, torch.full((6,), 2.7, dtype=f64))
    assert elev.abs().max() < 1e-9
    # MVDiffusion order front, front_right, right, back, left, front_left = offsets 0,-45,-90,180,90,45
    offsets = ((azim - azim[0] + 180) % 360) - 180
    torch.testing.assert_close(offsets, torch.tensor([0.0, -45, -90, -180, 90, 45], dtype=f64))
    assert K[:, 0, 0].sub(cam.FACELIFT_FOCAL).abs().max() < 1e-4  # 548.9937744140625 (float32 value)
    assert K[0, 0, 0].item() == pytest.approx(548.99, abs=0.01)
    assert cam.FACELIFT_FOCAL == 548.9937744140625  # the float32 value in FaceLift's camera files, bit for bit
    torch.testing.assert_close(K[:, :2, 2], torch.full((6, 2), 256.0, dtype=f64))
    # every camera looks at the origin: it projects to the image centre
    uv, _ = cam.project(torch.zeros(1, 3, dtype=f64), w2c, K)
    torch.testing.assert_close(uv[:, 0], torch.full((6, 2), 256.0, dtype=f64))


def test_similarity_preserves_projections():
    w2c = real_rig()
    K = cam.intrinsics(1632.3, 1639.3, 601.85, 491.72).expand(6, 3, 3)
    g = torch.Generator().manual_seed(3)
    X = torch.randn(20, 3, generator=g, dtype=f64) * 30 + torch.tensor([55.0, 55.0, 20.0], dtype=f64)
    sim = cam.Similarity(scale=0.0123, center=(60.0, 50.0, 12.0))
    uv, z = cam.project(X, w2c, K)
    uv_n, z_n = cam.project(sim.apply_points(X), sim.apply_w2c(w2c), K)
    torch.testing.assert_close(uv_n, uv)
    torch.testing.assert_close(z_n, z * sim.scale)


# ----------------------------------------------------------------------------------------------
# Image operations <-> intrinsics, checked on actual cv2 images
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x0,y0,size,out", [(37, 21, 200, 100), (50, 10, 180, 240), (0, 0, 300, 300)])
def test_crop_and_scale_intrinsics_match_cv2(x0, y0, size, out):
    import cv2

    H, W = 300, 400
    w2c = cam.look_at_w2c(torch.tensor([0.0, -300.0, 80.0], dtype=f64), torch.zeros(3, dtype=f64))
    K = cam.intrinsics(500.0, 520.0, 200.0, 150.0)
    X = torch.tensor([[12.0, 5.0, -8.0]], dtype=f64)
    uv, _ = cam.project(X, w2c, K)
    img = render_blob(tuple(uv[0].tolist()), H, W)
    crop = img[y0:y0 + size, x0:x0 + size]
    s = out / size
    res = cv2.resize(crop, (out, out), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    K2 = cam.scale_intrinsics(cam.crop_intrinsics(K, x0, y0), s, s)
    uv2, _ = cam.project(X, w2c, K2)
    assert np.hypot(*(np.array(centroid(res)) - uv2[0].numpy())) < 0.05
    # edges map to edges: the crop's full extent maps onto [0, out]
    torch.testing.assert_close(cam.scale_intrinsics(K, 2.0, 0.5)[:2], K[:2] * torch.tensor([[2.0], [0.5]], dtype=f64))


def test_rotation_homography_is_exact_and_matches_cv2_warp():
    import cv2

    C = torch.tensor([-199.5, -129.3, 63.4], dtype=f64)
    R_src = cam.look_at_rotation(C, torch.tensor(ARENA_FOCUS, dtype=f64))
    X = torch.tensor([[80.0, 30.0, 20.0], [40.0, 70.0, 5.0], [60.0, 60.0, 60.0]], dtype=f64)
    R_dst = cam.look_at_rotation(C, X[0])
    K_src = cam.intrinsics(300.0, 310.0, 160.5, 120.2)
    K_dst = cam.intrinsics(150.0, 150.0, 64.0, 64.0)
    H = cam.rotation_homography(K_src, R_src, K_dst, R_dst)
    w2c_src = cam.w2c_from_RT(R_src, -(R_src @ C))
    w2c_dst = cam.w2c_from_RT(R_dst, -(R_dst @ C))
    uv_src, _ = cam.project(X, w2c_src, K_src)
    uv_dst, _ = cam.project(X, w2c_dst, K_dst)
    # exact for every scene point, whatever its depth
    assert (cam.apply_homography(H, uv_src) - uv_dst).abs().max() < 1e-9
    # an actual cv2 warp (pixel-centre conversion included) moves a blob to the predicted place
    img = render_blob(tuple(uv_src[0].tolist()), 240, 320, sigma=4.0)
    M = cam.homography_to_opencv(H).numpy()
    warped = cv2.warpPerspective(img, M, (128, 128), flags=cv2.INTER_LINEAR)
    assert np.hypot(*(np.array(centroid(warped)) - uv_dst[0].numpy())) < 0.1
    # and the inverse-map form (what WARP_INVERSE_MAP expects) gives the same image
    back = cv2.warpPerspective(img, np.linalg.inv(M), (128, 128), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    np.testing.assert_allclose(back, warped, atol=1e-5)


def test_apply_homography():
    H = torch.tensor([[2.0, 0.1, 3.0], [0.0, 1.5, -1.0], [0.001, 0.002, 1.0]], dtype=f64)
    uv = torch.tensor([[10.0, 20.0], [0.0, 0.0]], dtype=f64)
    hom = torch.cat([uv, torch.ones(2, 1, dtype=f64)], -1) @ H.T
    torch.testing.assert_close(cam.apply_homography(H, uv), hom[:, :2] / hom[:, 2:])


def test_triangulate_rays_noiseless():
    X = torch.tensor([55.0, 48.0, 17.0], dtype=f64)
    C = torch.tensor(REAL_CENTERS, dtype=f64)
    P, res = cam.triangulate_rays(C, (X - C) * torch.arange(1, 7, dtype=f64)[:, None])  # non-unit dirs
    torch.testing.assert_close(P, X, atol=1e-9, rtol=0)
    assert res.abs().max() < 1e-9
    # through the cameras: project, cast rays back, intersect
    w2c = real_rig()
    K = cam.intrinsics(1632.3, 1639.3, 601.85, 491.72).expand(6, 3, 3)
    uv, _ = cam.project(X[None], w2c, K)
    o, d = cam.rays_through_pixels(uv, cam.invert_rigid(w2c), K)
    P2, res2 = cam.triangulate_rays(o[:, 0], d[:, 0])
    torch.testing.assert_close(P2, X, atol=1e-8, rtol=0)
    assert res2.max() < 1e-8


@pytest.mark.parametrize("batch", [(), (4,), (3, 2)])
def test_triangulate_rays_batched_matches_one_problem_at_a_time(batch):
    g = torch.Generator().manual_seed(0)
    o = torch.randn(*batch, 5, 3, generator=g, dtype=f64) * 100
    d = torch.randn(*batch, 5, 3, generator=g, dtype=f64)
    w = (torch.rand(*batch, 5, generator=g, dtype=f64) > 0.3).to(f64)
    w[..., :3] = 1.0  # at least three rays per problem
    X, res = cam.triangulate_rays(o, d, w)
    assert X.shape == (*batch, 3) and res.shape == (*batch, 5)
    for idx in itertools.product(*(range(n) for n in batch)):
        keep = w[idx] > 0
        X1, _ = cam.triangulate_rays(o[idx][keep], d[idx][keep])  # the weight-0 rays left out
        torch.testing.assert_close(X[idx], X1, atol=1e-9, rtol=1e-9)
        du = d[idx] / d[idx].norm(dim=-1, keepdim=True)
        r = X1 - o[idx]
        torch.testing.assert_close(res[idx], (r - (r * du).sum(-1, keepdim=True) * du).norm(dim=-1))


def test_up_axis_from_centers_sign():
    w2c = cam.orbit_cameras([0, 60, 130, 200, 270], 25.0, 3.0)
    torch.testing.assert_close(cam.up_axis_from_centers(w2c), torch.tensor([0.0, 0.0, 1.0], dtype=f64),
                               atol=1e-9, rtol=0)
    # the same rig in a world turned upside down (180 deg about X): up is now -Z
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=f64))  # world->world' (self-inverse)
    w2c_flipped = w2c @ flip  # x_cam = R X = R flip X'
    torch.testing.assert_close(cam.up_axis_from_centers(w2c_flipped), torch.tensor([0.0, 0.0, -1.0], dtype=f64),
                               atol=1e-9, rtol=0)
    assert math.isclose(cam.up_axis_from_centers(real_rig()).norm().item(), 1.0)


def test_rig_mismatch_zero_for_a_turned_copy_and_finds_the_pairing():
    from mousefacelift import cameras as C

    w2c, _ = C.canonical_rig()
    turned = C.orbit_cameras([a + 33.0 for a in [-90, -135, -180, 90, 0, -45]], 0.0, 2.7)
    out = C.rig_mismatch(turned, w2c)
    assert float(out["angle_in_order"].abs().max()) < 1e-6
    perm = [3, 0, 5, 1, 2, 4]
    out = C.rig_mismatch(turned[perm], w2c, align_view=1)  # view 1 of the shuffled rig is the front
    assert out["best_pairing"].tolist() == perm  # rig view i is canonical view perm[i]
    assert float(out["angle_best_pairing"].max()) < 1e-6 and float(out["angle_in_order"].max()) > 40
