"""The embedded procedural recording: format, geometry, determinism, cache, motion statistics, and
the exact ray caster against a slow marching reference."""
import dataclasses
import json
import logging
import math
import os
import pickle

import numpy as np
import pytest
import torch

from mousefacelift import cameras
from mousefacelift.data.procedural import geometry as geo
from mousefacelift.data.procedural import mouse as mm
from mousefacelift.data import procedural as syn
from mousefacelift.data.procedural import generate as gen

N_FRAMES = 30
SMALL = syn.ProceduralConfig(n_frames=N_FRAMES, resolution_scale=0.25, seed=3)


def _read_video(path) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return np.stack(frames)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The renderer's ops are small: on a shared 2-core machine one torch thread is ~10x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return syn.ensure_recording(tmp_path_factory.mktemp("synthetic"), SMALL)


@pytest.fixture(scope="module")
def masks(rec):
    return np.stack([_read_video(rec / "simpleclick_undist" / f"{v}.mp4")[..., 0] > 127 for v in range(6)])


# ----------------------------------------------------------------------------------------------
# Format: plain OpenCV and pickle
# ----------------------------------------------------------------------------------------------
def test_opencv_and_pickle_read_the_recording(rec):
    import cv2

    w, h = syn.image_size(SMALL)
    assert (w, h) == (288, 256)
    for sub in ("videos_undist", "simpleclick_undist"):
        for v in range(6):
            cap = cv2.VideoCapture(str(rec / sub / f"{v}.mp4"))
            assert cap.isOpened()
            assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
            assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (w, h)
            assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(100.0)
            cap.release()
    with open(rec / "new_cam.pkl", "rb") as f:
        cams = pickle.load(f)
    assert isinstance(cams, list) and len(cams) == 6
    w2c, K = syn.rig_cameras(SMALL)
    for v, cam in enumerate(cams):
        assert cam["K"].shape == (3, 3) and cam["R"].shape == (3, 3) and cam["T"].shape == (3,)
        assert cam["K"].dtype == cam["R"].dtype == cam["T"].dtype == np.float64
        np.testing.assert_allclose(cam["K"], cameras.K_to_opencv(K[v]).numpy())   # integer pixel centres
        assert np.linalg.det(cam["R"]) == pytest.approx(1.0)
        C = -cam["R"].T @ cam["T"]
        np.testing.assert_allclose(C, np.array(SMALL.rig.centers[v]), atol=1e-9)
    for v in range(6):
        with open(rec / "keypoints2d_undist" / f"result_view_{v}.pkl", "rb") as f:
            kp = pickle.load(f)
        assert kp.shape == (N_FRAMES, 22, 3) and kp.dtype == np.float64
        conf = kp[..., 2]
        assert ((conf == 0) | ((conf >= 0.9) & (conf <= 1.0))).all()
    gt = np.load(rec / "ground_truth" / "keypoints3d.npz")["keypoints3d"]
    assert gt.shape == (N_FRAMES, 22, 3)
    meta = json.loads((rec / "ground_truth" / "params.json").read_text())
    assert syn.ProceduralConfig.from_dict(meta["config"]) == SMALL
    assert meta["keypoint_names"][:3] == ["left_ear_tip", "right_ear_tip", "nose"]


def test_real_rig_geometry():
    """Default rig: the reference's camera centres, optical axes through the arena axis at 36-70 mm,
    zero roll, fx from the table and fy ~ 1.004 fx."""
    w2c, K = syn.rig_cameras(syn.ProceduralConfig())
    C = cameras.camera_centers(w2c)
    dist, elev, _ = cameras.spherical_coords(C)
    np.testing.assert_allclose(dist.numpy(), [246.1, 414.5, 363.7, 340.0, 318.3, 305.7], atol=0.2)
    np.testing.assert_allclose(elev.numpy(), [14.9, 20.6, 11.3, 10.7, 26.5, 30.8], atol=0.1)
    axis = cameras.optical_axes(w2c)
    # closest point of each optical axis to the vertical line x = y = 55
    for v in range(6):
        s = -((C[v, :2] - 55.0) @ axis[v, :2]) / (axis[v, :2] @ axis[v, :2])
        p = C[v] + s * axis[v]
        assert (p[:2] - 55.0).norm() < 1e-6 and 36.0 <= p[2] <= 70.0
    assert (w2c[:, 0, 2].abs() < 1e-12).all()  # camera x axis horizontal: zero roll
    assert (K[:, 1, 1] / K[:, 0, 0] - 1.004).abs().max() < 0.001
    assert syn.image_size(syn.ProceduralConfig()) == (1152, 1024)


# ----------------------------------------------------------------------------------------------
# Geometry of the rendered recording
# ----------------------------------------------------------------------------------------------
def test_keypoints_project_into_masks(rec, masks):
    """x = K (R X + T) of the ground-truth 3D keypoints with new_cam.pkl lands inside the decoded
    mask for >= 95% of the visible keypoints. The mask is dilated by 2 px (5x5) because thin
    parts (ear tips, tail end: 1.3 mm ~ 1.6 px at this scale) suffer from lossy mp4 coding."""
    import cv2

    with open(rec / "new_cam.pkl", "rb") as f:
        cams = pickle.load(f)
    X = np.load(rec / "ground_truth" / "keypoints3d.npz")["keypoints3d"]          # [F, 22, 3]
    inside, total, strict = 0, 0, 0
    for v, cam in enumerate(cams):
        with open(rec / "keypoints2d_undist" / f"result_view_{v}.pkl", "rb") as f:
            kp = pickle.load(f)
        x = (X @ cam["R"].T + cam["T"]) @ cam["K"].T
        uv = x[..., :2] / x[..., 2:]
        np.testing.assert_allclose(uv, kp[..., :2], atol=1e-6)                     # the file agrees
        for f in range(N_FRAMES):
            m = masks[v, f].astype(np.uint8)
            dil = cv2.dilate(m, np.ones((5, 5), np.uint8))
            for j in np.nonzero(kp[f, :, 2] > 0.25)[0]:
                c, r = int(round(uv[f, j, 0])), int(round(uv[f, j, 1]))
                total += 1
                inside += bool(dil[r, c])
                strict += bool(m[r, c])
    logging.getLogger(__name__).info("keypoints in mask: %d / %d dilated, %d strict", inside, total, strict)
    assert total > 0.5 * 6 * N_FRAMES * 22
    assert inside / total >= 0.95, (inside, total)


def test_render_matches_a_per_pixel_reference_through_new_cam():
    """A lone sphere rendered (lossless mask) equals the obvious reference built from the OpenCV K
    written to new_cam.pkl: pixel index (j, i) is covered when the ray R^T K^-1 (j, i, 1) from the
    camera centre passes within r of the sphere's centre. An off-by-half-pixel K would flip a ring
    of ~30 pixels per view."""
    cfg = dataclasses.replace(syn.ProceduralConfig(n_frames=1, resolution_scale=0.5), scene=dataclasses.replace(
        syn.SceneConfig(), shadows=False))
    w2c, K = syn.rig_cameras(cfg)
    sc = syn.build_scene(cfg, w2c, K)
    centre, radius = np.array([70.0, 40.0, 20.0]), 3.0
    shapes = mm.MouseShapes(
        ell_center=centre[None], ell_rot=np.eye(3)[None], ell_axes=np.full((1, 3), radius),
        cap_a=centre[None], cap_b=centre[None] + [0.0, 0.0, 0.5], cap_r=np.array([1.0]),
        albedo=np.ones((2, 3)), tex_amp=np.zeros(2), tex_R=np.stack([np.eye(3)] * 2), tex_t=np.zeros((2, 3)))
    _, mask = syn.render_frame(cfg, sc, shapes)
    w, h = syn.image_size(cfg)
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    for v in range(6):
        K_cv = cameras.K_to_opencv(K[v]).numpy()           # what new_cam.pkl holds
        R, T = w2c[v, :3, :3].numpy(), w2c[v, :3, 3].numpy()
        d = np.stack([jj, ii, np.ones_like(jj)], -1) @ np.linalg.inv(K_cv).T @ R  # world directions
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        oc = centre - (-R.T @ T)
        dist = np.linalg.norm(oc - (d @ oc)[..., None] * d, axis=-1)
        ref = dist < radius
        got = mask[v].numpy()
        assert ref.sum() > 150
        assert (ref ^ got).sum() <= 2, (v, (ref ^ got).sum())


def test_supersampling_agrees_with_one_ray_per_pixel():
    pose = syn.simulate_motion(SMALL, 1, torch.Generator().manual_seed(0))
    shapes, _ = mm.build_mouse(pose, 0, SMALL.body)
    w2c, K = syn.rig_cameras(SMALL)
    out = {}
    for s in (1, 2):
        cfg = dataclasses.replace(SMALL, supersample=s)
        out[s] = syn.render_frame(cfg, syn.build_scene(cfg, w2c, K), shapes)
    (rgb1, m1), (rgb2, m2) = out[1], out[2]
    assert rgb2.shape == rgb1.shape and m2.shape == m1.shape
    assert (m1 & m2).sum() / (m1 | m2).sum() > 0.9
    assert (rgb1 - rgb2).abs().mean() < 0.01


def test_mouse_coverage_and_visibility(masks):
    """2-8% of each full frame on average per view; visible in all six views in >= 95% of frames."""
    cover = masks.mean(axis=(2, 3))                                                # [V, F]
    logging.getLogger(__name__).info("coverage per view %s", cover.mean(1))
    assert ((cover.mean(1) >= 0.02) & (cover.mean(1) <= 0.08)).all(), cover.mean(1)
    visible_all = (masks.sum(axis=(2, 3)) >= 20).all(0)
    assert visible_all.mean() >= 0.95
    # the mouse sits in the lower part of the image (its mask centroid below the image centre)
    rows = np.arange(masks.shape[2])[None, None, :, None]
    cy = (masks * rows).sum(axis=(2, 3)) / masks.sum(axis=(2, 3)).clip(1)
    assert (np.median(cy, axis=1) > masks.shape[2] / 2).all()


# ----------------------------------------------------------------------------------------------
# Determinism and cache
# ----------------------------------------------------------------------------------------------
def _same_files_and_videos(a, b, views):
    """Assert that recordings a and b hold the same camera, keypoint and ground-truth bytes; yield the
    decoded (a, b) frames of each video and mask video of ``views`` for the caller to compare."""
    for rel in ("new_cam.pkl", "ground_truth/poses.npz", "ground_truth/keypoints3d.npz", "ground_truth/params.json",
                *(f"keypoints2d_undist/result_view_{v}.pkl" for v in views)):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for sub in ("videos_undist", "simpleclick_undist"):
        for v in views:
            yield _read_video(a / sub / f"{v}.mp4"), _read_video(b / sub / f"{v}.mp4")


def test_same_config_gives_identical_files_and_frames(tmp_path):
    cfg = dataclasses.replace(SMALL, n_frames=6, seed=11)
    a = syn.generate_recording(tmp_path / "a", cfg)
    b = syn.generate_recording(tmp_path / "b", cfg)
    for fa, fb in _same_files_and_videos(a, b, views=(0, 5)):
        assert fa.shape[0] == 6 and np.array_equal(fa, fb)
    c = syn.generate_recording(tmp_path / "c", dataclasses.replace(cfg, seed=12))
    assert (a / "ground_truth/poses.npz").read_bytes() != (c / "ground_truth/poses.npz").read_bytes()


def test_body_processes_and_frame_batches_change_nothing_but_speed(tmp_path):
    """Bodies and keypoints built by 2 worker processes and frames rendered 3 per call (a batch of 3
    and a remainder of 2) against this process, one frame per call (the reference): the same
    ground-truth and keypoint bytes, the same hash, and the same frames handed to the encoders: masks
    identical, colours within one 8-bit level on at most 1e-4 of the values (the batched kernels round
    floats differently: measured <= 8e-6 of full scale before quantization)."""
    cfg = dataclasses.replace(SMALL, n_frames=5, seed=5, render_batch=1)
    fast = dataclasses.replace(cfg, workers=2, render_batch=3)
    assert syn.config_hash(cfg) == syn.config_hash(fast)
    a = syn.generate_recording(tmp_path / "a", cfg)
    b = syn.generate_recording(tmp_path / "b", fast)
    for va, vb in _same_files_and_videos(a, b, views=(0, 4)):
        assert va.shape == vb.shape and np.abs(va.astype(int) - vb.astype(int)).mean() < 0.01
    rig = gen._Rig.build(cfg)
    scene = syn.build_scene(cfg, rig.w2c, rig.K)
    ref = list(gen._rendered_frames(cfg, rig, scene))
    got = list(gen._rendered_frames(fast, gen._Rig.build(fast), scene))
    assert [r[0] for r in got] == list(range(5))
    for (_, rgb0, m0, kp0, _), (_, rgb1, m1, kp1, _) in zip(ref, got):
        assert np.array_equal(m0, m1) and np.array_equal(kp0, kp1)
        diff = np.abs(rgb0.astype(int) - rgb1.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-4


def test_a_batch_renders_each_frame_as_alone():
    """render_frames of 3 frames against render_frame of each (the reference: one frame per call)."""
    pose = syn.simulate_motion(SMALL, 30, torch.Generator().manual_seed(3))
    shapes = [mm.build_mouse(pose, f, SMALL.body)[0] for f in (2, 15, 29)]
    w2c, K = syn.rig_cameras(SMALL)
    sc = syn.build_scene(SMALL, w2c, K)
    rgb, mask = syn.render_frames(SMALL, sc, shapes)
    for i, sh in enumerate(shapes):
        rgb1, mask1 = syn.render_frame(SMALL, sc, sh)
        assert torch.equal(mask[i], mask1) and mask1.sum() > 100
        assert (rgb[i] - rgb1).abs().max() < 1e-4


def test_cache_reuses_the_folder_and_ignores_partial_runs(tmp_path, monkeypatch):
    cfg = dataclasses.replace(SMALL, n_frames=2)
    dead_pid = next(p for p in range(999_999, 2_000_000) if not os.path.exists(f"/proc/{p}"))
    stale = tmp_path / f".synthetic_{syn.config_hash(cfg)}.partial-{dead_pid}"
    (stale / "videos_undist").mkdir(parents=True)                  # a killed earlier generation
    first = syn.ensure_recording(tmp_path, cfg)
    assert first.name == f"synthetic_{syn.config_hash(cfg)}" and not stale.exists()
    mtime = (first / "new_cam.pkl").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached recording")
    monkeypatch.setattr(syn, "generate_recording", fail)
    assert syn.ensure_recording(tmp_path, cfg) == first
    assert (first / "new_cam.pkl").stat().st_mtime_ns == mtime
    other = dataclasses.replace(cfg, seed=cfg.seed + 1)
    assert syn.config_hash(other) != syn.config_hash(cfg)


def test_from_dict_rejects_unknown_keys_with_the_closest_name():
    cfg = syn.ProceduralConfig.from_dict({"n_frames": 7, "motion": {"rear_fraction": 0.2},
                                         "rig": {"centers": [[0, 0, 100], [100, 0, 100]],
                                                 "targets": [[0, 50, 0], [50, 50, 0]], "fx": [900, 900],
                                                 "cx": [10, 10], "cy": [10, 10]}})
    assert cfg.n_frames == 7 and cfg.motion.rear_fraction == 0.2 and cfg.rig.centers[1] == (100, 0, 100)
    assert syn.ProceduralConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="did you mean 'resolution_scale'"):
        syn.ProceduralConfig.from_dict({"resolution_scal": 0.5})
    with pytest.raises(ValueError, match="did you mean 'rear_fraction'"):
        syn.ProceduralConfig.from_dict({"motion": {"rear_fractoin": 0.1}})
    with pytest.raises(TypeError, match="n_frames"):
        syn.ProceduralConfig.from_dict({"n_frames": 2.5})


# ----------------------------------------------------------------------------------------------
# Motion
# ----------------------------------------------------------------------------------------------
def test_motion_statistics():
    """Over 60,000 frames (10 min at 100 fps): rearing 6-20% of frames, median speed 50-120 mm/s,
    the body origin within 90 mm of the arena centre and mostly near the wall."""
    pose = syn.simulate_motion(syn.ProceduralConfig(), 60000, torch.Generator().manual_seed(0))
    speed = np.hypot(np.diff(pose.x), np.diff(pose.y)) * 100.0
    r = np.hypot(pose.x - 55.0, pose.y - 55.0)
    rear = pose.rearing.mean()
    logging.getLogger(__name__).info("rearing %.3f, median speed %.1f mm/s, p99 %.0f, mean radius %.1f",
                                     rear, np.median(speed), np.percentile(speed, 99), r.mean())
    assert 0.06 <= rear <= 0.20
    assert 50.0 <= np.median(speed) <= 120.0
    assert r.max() <= 90.0 and (r > 50.0).mean() > 0.7
    assert np.degrees(pose.pitch[pose.rearing]).min() >= 0.5 * 45.0
    assert np.degrees(pose.pitch).max() <= 90.0 + 1e-9
    a, b = (syn.simulate_motion(syn.ProceduralConfig(), 500, torch.Generator().manual_seed(4)) for _ in range(2))
    for k, v in a.as_dict().items():
        np.testing.assert_array_equal(v, getattr(b, k))


# ----------------------------------------------------------------------------------------------
# Ray casting and surface sampling against slow references
# ----------------------------------------------------------------------------------------------
def _inside_reference(shapes: mm.MouseShapes, p: torch.Tensor) -> torch.Tensor:
    """Obvious containment: ellipsoid |S^-1 R^T (p - c)| <= 1; capsule distance to segment <= r."""
    inside = torch.zeros(p.shape[:-1], dtype=torch.bool)
    for c, R, a in zip(shapes.ell_center, shapes.ell_rot, shapes.ell_axes):
        loc = (p - torch.as_tensor(c)) @ torch.as_tensor(R) / torch.as_tensor(a)
        inside |= loc.norm(dim=-1) <= 1
    for a, b, r in zip(shapes.cap_a, shapes.cap_b, shapes.cap_r):
        a, b = torch.as_tensor(a), torch.as_tensor(b)
        s = (((p - a) @ (b - a)) / ((b - a) @ (b - a))).clamp(0, 1)
        inside |= (p - a - s.unsqueeze(-1) * (b - a)).norm(dim=-1) <= r
    return inside


def _two_poses() -> mm.PoseTrack:
    """Frame 0 walking; frame 1 the same place and heading, rearing at 70 deg with tail and head turned."""
    one = syn.simulate_motion(syn.ProceduralConfig(), 1, torch.Generator().manual_seed(1))
    pose = mm.PoseTrack(**{k: np.repeat(v, 2) for k, v in one.as_dict().items()})
    pose.pitch[1], pose.head_yaw[1] = math.radians(70), -0.3
    return pose


@pytest.mark.parametrize("frame", [0, 1])
def test_ray_hits_match_marching(frame):
    pose = _two_poses()
    shapes, kp = mm.build_mouse(pose, frame, syn.ProceduralConfig().body)
    q = geo.to_quadrics(shapes, dtype=torch.float64)
    g = torch.Generator().manual_seed(frame)
    origin = torch.tensor([pose.x[frame] + 150.0, pose.y[frame] - 200.0, 120.0], dtype=torch.float64)
    target = torch.as_tensor(kp, dtype=torch.float64)[torch.randint(0, 22, (200,), generator=g)]
    dirs = target + 8.0 * torch.randn(200, 3, generator=g, dtype=torch.float64) - origin
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    t_fast = geo.ray_hits(q, origin, dirs).min(-1).values
    step = 0.1
    ts = torch.arange(160.0, 400.0, step, dtype=torch.float64)
    hit = _inside_reference(shapes, origin + ts[:, None, None] * dirs)               # [T, N]
    first = torch.where(hit.any(0), ts[hit.float().argmax(0)], torch.full_like(t_fast, math.inf))
    both = torch.isfinite(first) & torch.isfinite(t_fast)
    assert both.sum() > 100
    assert (torch.isfinite(first) == torch.isfinite(t_fast)).float().mean() > 0.99  # grazing rays may differ
    assert ((first[both] - t_fast[both]).abs() <= step + 1e-9).float().mean() > 0.99
    # every keypoint lies inside the body (so it projects inside the silhouette)
    assert _inside_reference(shapes, torch.as_tensor(kp)).all()
    # the batched (tiled) form agrees with the single-origin form
    pieces = torch.arange(len(q.k))[None].repeat(2, 1)
    t_b = geo.ray_hits_batched(q, origin[None].repeat(2, 1), dirs.view(2, 100, 3), pieces).min(-1).values
    torch.testing.assert_close(t_b.reshape(-1), t_fast)


def test_rearing_lifts_the_nose():
    pose = _two_poses()
    body = syn.ProceduralConfig().body
    _, kp0 = mm.build_mouse(pose, 0, body)
    shapes, kp1 = mm.build_mouse(pose, 1, body)
    nose = mm.KEYPOINT_NAMES.index("nose")
    assert kp0[nose, 2] < 20.0 and 60.0 <= kp1[nose, 2] <= 110.0
    assert np.linalg.norm(kp1[mm.KEYPOINT_NAMES.index("tail_root")] - kp0[mm.KEYPOINT_NAMES.index("tail_root")]) < 1.0


def test_surface_samples_lie_on_the_outer_surface(rec):
    g = torch.Generator().manual_seed(0)
    pts = syn.sample_surface(rec, 5, 4000, g)
    assert pts.shape == (4000, 3) and pts.dtype == torch.float64
    _, pose, _ = syn.load_ground_truth(rec)
    again = syn.sample_surface(pose, 5, 4000, torch.Generator().manual_seed(0), body=SMALL.body)
    torch.testing.assert_close(pts, again)
    shapes, _ = mm.build_mouse(pose, 5, SMALL.body)
    q = geo.to_quadrics(shapes, dtype=torch.float64)
    assert not geo.contains(q, pts, margin=-1e-3).any()                  # not inside any piece
    assert geo.contains(q, pts, margin=1e-3).any(-1).all()                # but on one
    assert (pts[:, 2] >= 0).all()


def test_surface_samples_are_uniform_on_a_sphere():
    """On a sphere, uniform area means uniform height (Archimedes): each quarter of z gets 25%."""
    c = np.array([0.0, 0.0, 20.0])
    shapes = mm.MouseShapes(
        ell_center=c[None], ell_rot=np.eye(3)[None], ell_axes=np.full((1, 3), 10.0),
        cap_a=c[None], cap_b=c[None] + [0.0, 0.0, 1.0], cap_r=np.array([1.0]),
        albedo=np.ones((2, 3)), tex_amp=np.zeros(2), tex_R=np.stack([np.eye(3)] * 2), tex_t=np.zeros((2, 3)))
    pts = geo.sample_surface_points(shapes, 20000, torch.Generator().manual_seed(0))
    frac = torch.histc(pts[:, 2] - 20.0, bins=4, min=-10.0, max=10.0) / len(pts)
    assert (frac - 0.25).abs().max() < 0.02
    assert (((pts - torch.as_tensor(c)).norm(dim=-1) - 10.0).abs() < 1e-9).all()


@pytest.mark.gpu
def test_cuda_render_matches_cpu():
    cfg = dataclasses.replace(SMALL, n_frames=1)
    pose = syn.simulate_motion(cfg, 1, torch.Generator().manual_seed(0))
    shapes, _ = mm.build_mouse(pose, 0, cfg.body)
    w2c, K = syn.rig_cameras(cfg)
    out = {}
    for dev in ("cpu", "cuda"):
        c = dataclasses.replace(cfg, device=dev)
        out[dev] = syn.render_frame(c, syn.build_scene(c, w2c, K), shapes)
    rgb_c, m_c = out["cpu"]
    rgb_g, m_g = (x.cpu() for x in out["cuda"])
    assert (m_c ^ m_g).sum() <= 0.002 * m_c.sum()
    assert (rgb_c - rgb_g).abs().mean() < 1e-3


def test_frames_reach_the_encoders_in_their_own_layout(tmp_path):
    """encoder_layout: gray -> three equal channels, RGB -> BGR for OpenCV; VideoSet.write refuses
    anything else, so no pixel work is left for the encoder threads."""
    from mousefacelift.data.procedural.video import VideoSet, encoder_layout

    rgb = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    bgr = encoder_layout(rgb, bgr=True)
    assert bgr.is_contiguous() and torch.equal(bgr, rgb.flip(-1)) and torch.equal(encoder_layout(rgb, False), rgb)
    gray = encoder_layout(rgb[..., 0], bgr=True)
    assert gray.shape == (2, 16, 16, 3) and all(torch.equal(gray[..., c], rgb[..., 0]) for c in range(3))
    videos = VideoSet(tmp_path / "v", 2, (16, 16), 10.0, "mp4v")
    assert videos.bgr
    with pytest.raises(ValueError, match="encoder_layout"):
        videos.write(rgb[..., 0].numpy())
    with pytest.raises(ValueError, match="encoder_layout"):
        videos.write(bgr.numpy()[:, :, ::2])
    videos.write(bgr.numpy())
    videos.close()
    assert all((tmp_path / "v" / f"{v}.mp4").stat().st_size > 0 for v in range(2))


def test_split_coverage_names_a_rear_the_train_split_never_saw():
    """Three stretches: walking, a low rear (40 deg) and a high rear (85 deg). With the high rear only in
    the test split, the coverage rows count it and the warning names the test split and both heights;
    with a high rear in train too, nothing is said."""
    from mousefacelift.data.procedural import PoseTrack, POSE_FIELDS, split_coverage
    n = 30
    pitch = np.zeros(n)
    pitch[10:20], pitch[20:30] = np.radians(40), np.radians(85)
    fields = {k: np.zeros(n) for k in POSE_FIELDS}
    fields.update(pitch=pitch, rearing=pitch > np.radians(20))
    pose = PoseTrack(**fields)
    rows, warnings = split_coverage(pose, {"train": range(0, 20), "val": [], "test": range(20, 30)})
    by = {r["split"]: r for r in rows}
    assert by["train"]["frames"] == 20 and by["train"]["rearing frames"] == 10
    assert by["train"]["highest pitch (deg)"] == 40.0 and by["test"]["frames pitched > 45 deg"] == 10
    assert by["val"]["frames"] == 0
    assert len(warnings) == 1 and "test split" in warnings[0] and "85" in warnings[0] and "40" in warnings[0]
    assert split_coverage(pose, {"train": range(0, 30), "test": range(20, 30)})[1] == []


def test_behaviour_of_a_frame_follows_its_pitch_and_rearing_flag():
    from mousefacelift.data.procedural import PoseTrack, POSE_FIELDS, behaviour
    fields = {k: np.zeros(3) for k in POSE_FIELDS}
    fields.update(pitch=np.radians([0.0, 30.0, 60.0]), rearing=np.array([False, True, False]))
    pose = PoseTrack(**fields)
    assert [behaviour(pose, f) for f in range(3)] == ["walking", "rear <= 45 deg", "rear > 45 deg"]
    assert behaviour(pose, 2, high_deg=70) == "walking"  # pitched 60 without the flag: the rise of a rear
