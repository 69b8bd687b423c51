"""Preprocessing strategies and their metrics (mousefacelift.data.preprocess, .consistency).

The strategies are checked against the pixels: coloured dots drawn at the projections of known
3D points must land where the view's camera projects those points (< 0.5 px) when the cameras are
updated, and far from it when they are left unchanged.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mousefacelift import cameras
from mousefacelift.data import consistency as hull
from mousefacelift.data import preprocess as pp

f64 = torch.float64
SRC_W, SRC_H = 320, 256


# ----------------------------------------------------------------------------------------------
# A toy source view: three coloured dots at known 3D points, a mouse mask off the projected centre
# ----------------------------------------------------------------------------------------------
def toy_view(mask_offset=(14.0, -9.0), mask_radius=(26.0, 15.0)):
    """One source camera looking 25 mm beside the mouse centre (so rectify must turn it), an image
    with a Gaussian dot per colour channel at the projection of POINTS[c], and an elliptical mask
    whose centre sits ``mask_offset`` px from the projected centre."""
    center = torch.tensor([10.0, -5.0, 20.0], dtype=f64)
    points = center + torch.tensor([[-12.0, 4.0, 3.0], [8.0, -6.0, -4.0], [2.0, 10.0, 8.0]], dtype=f64)
    w2c = cameras.look_at_w2c(torch.tensor([260.0, -180.0, 140.0], dtype=f64), center + torch.tensor([25.0, 0, 0]))
    K = cameras.intrinsics(330.0, 333.0, 155.0, 131.0)
    uv, _ = cameras.project(points, w2c, K)
    yy, xx = np.mgrid[0:SRC_H, 0:SRC_W] + 0.5
    rgb = np.zeros((SRC_H, SRC_W, 3), np.float64)
    for c in range(3):
        u, v = uv[c].tolist()
        rgb[..., c] = 250 * np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 1.5 ** 2))
    uc, _ = cameras.project(center[None], w2c, K)
    mu, mv = uc[0, 0].item() + mask_offset[0], uc[0, 1].item() + mask_offset[1]
    mask = ((xx - mu) / mask_radius[0]) ** 2 + ((yy - mv) / mask_radius[1]) ** 2 <= 1.0
    return np.round(rgb).astype(np.uint8), mask, K, w2c, center, points


def dot_positions(rgba: np.ndarray) -> np.ndarray:
    """Intensity centroid of each colour channel [3, 2] (pixel centres at +0.5)."""
    yy, xx = np.mgrid[0:rgba.shape[0], 0:rgba.shape[1]] + 0.5
    out = []
    for c in range(3):
        w = rgba[..., c].astype(np.float64)
        out.append(((w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()))
    return np.array(out)


CONFIG = pp.PreprocessConfig(image_size=96, crop_fraction=0.8, target_ratio=0.3)


def run_strategy(strategy, update_cameras, config=CONFIG):
    rgb, mask, K, w2c, center, points = toy_view()
    views = pp.preprocess_views(rgb[None], mask[None], K[None], w2c[None], center, strategy, config,
                                update_cameras=update_cameras)
    return views[0], (rgb, mask, K, w2c, center, points)


@pytest.mark.parametrize("strategy", pp.STRATEGIES)
def test_updated_cameras_project_onto_the_moved_content(strategy):
    view, (_, _, K, w2c, _, points) = run_strategy(strategy, True)
    assert view.rgba.shape == (96, 96, 4)
    cameras.check_rotation(view.w2c[:3, :3])
    uv_cam, z = cameras.project(points, view.w2c, view.K)
    assert (z > 0).all()
    err = np.linalg.norm(uv_cam.numpy() - dot_positions(view.rgba), axis=-1)
    assert err.max() < 0.5, (strategy, err)
    # the bookkeeping metric agrees: camera projection == source projection moved by H
    assert pp.keypoint_errors(view, K, w2c, points).max() < 1e-6


@pytest.mark.parametrize("strategy, min_err", [("centered", 3.0), ("uniform", 3.0), ("pixel_based", 3.0),
                                               ("rectify", 1.0)])  # rectify and the reference both centre the 3D centre
def test_unchanged_cameras_miss_the_content(strategy, min_err):
    view, (_, _, K, w2c, _, points) = run_strategy(strategy, False)
    updated, _ = run_strategy(strategy, True)
    np.testing.assert_array_equal(view.rgba, updated.rgba)  # same image, only the camera differs
    ref, _ = run_strategy("crop", True)
    torch.testing.assert_close(view.K, ref.K)
    uv_cam, _ = cameras.project(points, view.w2c, view.K)
    err = np.linalg.norm(uv_cam.numpy() - dot_positions(view.rgba), axis=-1)
    assert err.mean() > min_err, (strategy, err)
    torch.testing.assert_close(pp.keypoint_errors(view, K, w2c, points), torch.as_tensor(err, dtype=f64),
                               atol=0.5, rtol=0)


def test_strategy_geometry():
    rgb, mask, K, w2c, center, _ = toy_view()
    S = CONFIG.image_size
    # pixel_based: mask centre of mass at the image centre, size ratio at the target
    pb = pp.pixel_based(rgb, mask, K, w2c, center, CONFIG)
    m = pp.view_mask(pb, CONFIG)
    assert pp.com_offset_px(m) < 0.7
    assert pp.size_ratio(m) == pytest.approx(0.3, abs=0.01)
    # centered: bounding-box centre at the image centre, the fixed crop's scale
    ce = pp.centered(rgb, mask, K, w2c, center, CONFIG)
    ii, jj = np.nonzero(pp.view_mask(ce, CONFIG))
    assert abs((jj.min() + jj.max() + 1) / 2 - S / 2) <= 1.0 and abs((ii.min() + ii.max() + 1) / 2 - S / 2) <= 1.0
    assert ce.K[0, 0].item() == pytest.approx(330.0 * S / round(0.8 * SRC_H))
    # crop and rectify: the 3D centre projects to the image centre; rectify has FaceLift's 50 degrees
    for fn in (pp.crop, pp.rectify):
        v = fn(rgb, mask, K, w2c, center, CONFIG)
        uv, _ = cameras.project(center[None], v.w2c, v.K)
        assert (uv[0] - S / 2).abs().max() < 0.51
    rect = pp.rectify(rgb, mask, K, w2c, center, CONFIG)
    assert cameras.fov_from_focal(rect.K[0, 0], S).item() == pytest.approx(50.0)
    narrow = pp.rectify(rgb, mask, K, w2c, center, pp.PreprocessConfig(image_size=S, fov_deg=30.0))
    assert cameras.fov_from_focal(narrow.K[0, 0], S).item() == pytest.approx(30.0)
    uv, _ = cameras.project(center[None], narrow.w2c, narrow.K)
    assert (uv[0] - S / 2).abs().max() < 0.51
    with pytest.raises(ValueError, match="fov_deg"):
        pp.PreprocessConfig(fov_deg=0.0).validate()
    # uniform: one crop size for all views, chosen from the mean area
    masks = np.stack([mask, np.roll(mask, 3, axis=1) & (np.arange(SRC_W) < 140)])
    size = pp.uniform_crop_size(masks, CONFIG)
    assert size == round(math.sqrt(masks.reshape(2, -1).sum(1).mean()) / 0.3)
    with pytest.raises(ValueError, match="choose from"):
        pp.preprocess_views(rgb[None], mask[None], K[None], w2c[None], center, "pixel", CONFIG)


def test_empty_mask_is_a_clear_error():
    rgb, mask, K, w2c, center, _ = toy_view()
    with pytest.raises(ValueError, match="mask is empty"):
        pp.pixel_based(rgb, mask & False, K, w2c, center, CONFIG)


def test_extraction_inputs(tmp_path):
    from mousefacelift.data import samples

    data = tmp_path / "data"
    data.mkdir()
    frames = [{"frame": f, "status": "written" if f % 3 else "skipped"} for f in range(30)]
    (data / "extraction.json").write_text(json.dumps({"summary": {"recording": "/rec/a"}, "frames": frames}))
    rec, picked = pp.extraction_inputs(data / "extraction.json", 4)
    written = [f for f in range(30) if f % 3]
    assert rec == "/rec/a" and picked == [written[0], written[6], written[13], written[19]]
    assert pp.extraction_inputs(data / "extraction.json", 100)[1] == written
    # no recording path in the summary: the samples' provenance tells
    img = np.zeros((1, 8, 8, 4), np.uint8)
    samples.write_sample(data / "samples" / "sample_000005", img, torch.eye(4, dtype=f64)[None],
                         cameras.intrinsics(8, 8, 4, 4)[None], [0], {"recording": "/rec/b", "frame_index": 5})
    (data / "extraction.json").write_text(json.dumps({"summary": {}, "frames": []}))
    assert pp.extraction_inputs(data / "extraction.json", 4) == ("/rec/b", [5])


# ----------------------------------------------------------------------------------------------
# Metrics on hand-made masks
# ----------------------------------------------------------------------------------------------
def test_mask_metrics_by_hand():
    m = np.zeros((100, 100), bool)
    m[45:55, 45:55] = True  # 10 x 10 square centred at (50, 50)
    assert pp.size_ratio(m) == pytest.approx(0.1)
    assert pp.com_offset_px(m) == pytest.approx(0.0)
    assert not pp.touches_border(m)
    m2 = np.roll(np.roll(m, 3, axis=1), 4, axis=0)
    assert pp.com_offset_px(m2) == pytest.approx(5.0)
    m3 = np.zeros((100, 100), bool)
    m3[20:30, 90:100] = True
    assert pp.touches_border(m3) and pp.touches_border(m3.T) and pp.touches_border(m3[::-1, ::-1])
    assert math.isnan(pp.com_offset_px(np.zeros((4, 4), bool)))


def test_summarize_by_hand():
    rows = []
    for frame in (0, 1):
        for view, (r, off, cut, fov) in enumerate([(0.2, 1.0, False, 40.0), (0.3, 3.0, True, 60.0)]):
            for updated, err, iou in ((True, 0.0, 0.9), (False, 20.0, 0.5)):
                rows.append({"frame": frame, "view": view, "strategy": "s", "cameras_updated": updated,
                             "size_ratio": r, "com_offset_px": off, "cut": cut, "fov_deg": fov,
                             "reproj_mean_px": err, "reproj_max_px": 2 * err, "hull_iou": iou - 0.1 * view})
    t = pp.strategy_table(pd.DataFrame(rows), image_size=64)
    assert list(t["cameras_updated"]) == [True, False]
    row = t.iloc[0]
    assert row["n_frames"] == 2 and row["n_views"] == 4
    assert row["size_ratio_mean"] == pytest.approx(0.25)
    assert row["size_ratio_cv"] == pytest.approx(0.05 / 0.25)  # population std of {0.2, 0.3} = 0.05
    assert row["com_offset_px"] == pytest.approx(2.0) and row["cut_fraction"] == pytest.approx(0.5)
    assert row["fov_mean_deg"] == pytest.approx(50.0) and row["fov_std_deg"] == pytest.approx(10.0)
    assert row["hull_iou_mean"] == pytest.approx(0.85) and row["hull_iou_min"] == pytest.approx(0.8)
    assert t.iloc[1]["reproj_mean_px"] == 20.0 and t.iloc[1]["reproj_max_px"] == 40.0
    assert row["image_size"] == 64


# ----------------------------------------------------------------------------------------------
# Visual hull: vectorised code against slow references, consistent vs inconsistent views
# ----------------------------------------------------------------------------------------------
def sphere_views(size=64, radius=30.0):
    """Six cameras around a sphere at the origin and its exact silhouettes [6, S, S]."""
    w2c = cameras.orbit_cameras([0, 60, 120, 180, 240, 300], [20, -10, 35, 5, 25, -20], 300.0)
    f = cameras.focal_from_fov(30.0, size)
    K = cameras.intrinsics(f, f, size / 2, size / 2).expand(6, 3, 3)
    o, d = cameras.pixel_rays(cameras.invert_rigid(w2c), K, size, size)
    masks = cameras.closest_point_to_origin(o, d).norm(dim=-1) < radius
    return masks, K, w2c


def test_inside_masks_matches_a_loop():
    masks, K, w2c = sphere_views(size=24)
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(200, 3, generator=g, dtype=f64) - 0.5) * 120
    fast = hull.inside_masks(pts, masks, K, w2c)
    for v in range(6):
        for n in range(0, 200, 7):
            uv, z = cameras.project(pts[n][None], w2c[v], K[v])
            u, w = uv[0].tolist()
            want = z[0] > 0 and 0 <= u < 24 and 0 <= w < 24 and bool(masks[v, int(math.floor(w)), int(math.floor(u))])
            assert bool(fast[v, n]) == want


def test_render_silhouette_matches_full_marching():
    """The box- and depth-limited marching equals marching every pixel over the whole cube."""
    masks, K, w2c = sphere_views(size=32)
    center, half, R = torch.zeros(3, dtype=f64), 45.0, 24
    pts = hull.voxel_centers(center, half, R).reshape(-1, 3)
    occ = hull.inside_masks(pts, masks[1:], K[1:], w2c[1:]).all(0).reshape(R, R, R)
    fast = hull.render_silhouette(occ, center, half, K[0], w2c[0], 32, 32, step_voxels=0.25)
    o, d = cameras.pixel_rays(cameras.invert_rigid(w2c[0]), K[0], 32, 32)
    t = torch.linspace(300 - half * 1.8, 300 + half * 1.8, 400, dtype=f64)
    grid = ((o[..., None, :] + t[:, None] * d[..., None, :]) / half).float()  # [32, 32, 400, 3]
    val = torch.nn.functional.grid_sample(occ.float()[None, None], grid[None], align_corners=False)
    slow = val[0, 0].amax(-1) > 0.5
    assert (fast != slow).float().mean() < 0.01 and fast.sum() > 50


def test_visual_hull_separates_consistent_from_inconsistent():
    masks, K, w2c = sphere_views()
    cfg = hull.HullConfig(resolution=48, half_size_mm=50.0, image_size=64)
    good = hull.leave_one_out_iou(masks, K, w2c, torch.zeros(3, dtype=f64), cfg)
    assert good.min() > 0.85, good
    shifted = torch.stack([torch.roll(m, shifts=(3 * (v % 3) - 3, 4 - 2 * v), dims=(0, 1)) for v, m in enumerate(masks)])
    bad = hull.leave_one_out_iou(shifted, K, w2c, torch.zeros(3, dtype=f64), cfg)
    assert bad.mean() < good.mean() - 0.15, (good, bad)


# ----------------------------------------------------------------------------------------------
# End to end: procedural recording -> extraction -> notebook 03 (papermill, tiny params)
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_notebook_03_on_a_procedural_recording(request, tmp_path):
    papermill = pytest.importorskip("papermill")
    from pathlib import Path

    from mousefacelift.data import extract as ex
    from mousefacelift.data import procedural as syn
    from mousefacelift.data.recording import FrameSelection

    root = syn.ensure_recording(request.config.cache.mkdir("mfl_synthetic"),
                                syn.ProceduralConfig(n_frames=8, resolution_scale=0.25, seed=3))
    run = tmp_path / "run"
    ex.extract(root, run, ex.ExtractConfig(selection=FrameSelection(count=None, stride=1, skip_edges=0.0, cut_frames=()),
                                           image_size=64, split_gap=0, min_mask_pixels=50, progress=False))
    nb = Path(__file__).resolve().parent.parent / "notebooks" / "03_preprocessing_comparison.ipynb"
    papermill.execute_notebook(str(nb), str(run / "03.ipynb"), cwd=str(run), kernel_name="mousefacelift",
                               parameters={"n_frames": 2, "image_size": 96, "hull_resolution": 40,
                                           "hull_image_size": 64}, progress_bar=False)
    res = json.loads((run / "results" / "03_preprocessing_comparison.json").read_text())
    assert (run / "preprocessing" / "metrics.csv").is_file()
    assert res["default_strategy"] == "rectify" and res["n_frames"] == 2
    # the acceptance figures, at tiny size: pixel_based is 2D-uniform ...
    assert res["pixel_based_size_cv"] < 0.02 and res["pixel_based_com_offset_px"] < 2.0
    # ... but its images disagree with unchanged cameras, and agree with updated ones
    assert res["pixel_based_reproj_updated_px"] < 1.0 < 3.0 < res["pixel_based_reproj_unchanged_px"]
    assert res["hull_iou_consistent"] > res["hull_iou_inconsistent"] + 0.1
