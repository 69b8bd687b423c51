"""The Gaussian rendering core on CPU: the torch rasterizer against a slow, obvious reference,
batching, placement, colours and background, PLY I/O, pruning, turntables, video, and a tiny
optimisation that only converges when the gradients are right."""
import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from plyfile import PlyData

from mousefacelift import cameras, viz
from mousefacelift.gaussians import (SH_C0, Gaussians, RasterSettings, project_gaussians, random_gaussians,
                                     rasterize, rasterize_torch, render_turntable, turntable_cameras)

W, H = 16, 16
SMALL_CHUNKS = RasterSettings(tile_size=4, chunk_pairs=32)  # 16-pixel tiles, 2 Gaussians per block


# ----------------------------------------------------------------------------------------------
# The slow, obvious reference: one view, float64, Python loops over Gaussians and pixels
# ----------------------------------------------------------------------------------------------
def quat_rotate(q, v):
    """Rotate v [3] by the unit quaternion q (wxyz) as q v q*: independent of the matrix formula."""
    w, u = q[0], q[1:]
    return v + 2 * w * torch.linalg.cross(u, v) + 2 * torch.linalg.cross(u, torch.linalg.cross(u, v))


def reference_render(means, quats, scales, opac, rgb, w2c, K, width, height, bg, near=0.01, far=100.0):
    """means [N, 3], ... rgb [N, 3], w2c [4, 4], K [3, 3], bg [3] -> rgb [H, W, 3], alpha [H, W], depth."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    splats = []
    for n in range(means.shape[0]):
        X = w2c[:3, :3] @ means[n] + w2c[:3, 3]
        x, y, z = X
        if not (near <= z <= far) or opac[n] < 1 / 255:
            continue
        q = quats[n] / quats[n].norm()
        Rq = torch.stack([quat_rotate(q, e) for e in torch.eye(3, dtype=means.dtype)], 1)  # columns
        cov_world = Rq @ torch.diag(scales[n] ** 2) @ Rq.T
        cov_cam = w2c[:3, :3] @ cov_world @ w2c[:3, :3].T
        limx, limy = 1.3 * 0.5 * width / fx, 1.3 * 0.5 * height / fy  # cx, cy at the centre here
        tx, ty = z * (x / z).clamp(-limx, limx), z * (y / z).clamp(-limy, limy)
        J = torch.stack([torch.stack([fx / z, 0 * z, -fx * tx / z ** 2]),
                         torch.stack([0 * z, fy / z, -fy * ty / z ** 2])])
        cov2d = J @ cov_cam @ J.T + 0.3 * torch.eye(2, dtype=means.dtype)
        if torch.linalg.det(cov2d) <= 0:
            continue
        mu = torch.stack([fx * x / z + cx, fy * y / z + cy])
        splats.append((z.item(), z, mu, torch.linalg.inv(cov2d), opac[n], rgb[n]))
    splats.sort(key=lambda s: s[0])
    rows, alphas, depths = [], [], []
    for i in range(height):
        for j in range(width):
            p = torch.tensor([j + 0.5, i + 0.5], dtype=means.dtype)
            T, c, d = torch.ones((), dtype=means.dtype), torch.zeros(3, dtype=means.dtype), 0.0
            for _, z, mu, conic, o, col in splats:
                delta = mu - p
                sigma = 0.5 * delta @ conic @ delta
                a = torch.clamp(o * torch.exp(-sigma), max=0.999)
                if sigma < 0 or a < 1 / 255:
                    continue
                if T * (1 - a) <= 1e-4:
                    break
                c = c + a * T * col
                d = d + a * T * z
                T = T * (1 - a)
            rows.append(c + T * bg)
            alphas.append(1 - T)
            depths.append(d / (1 - T).clamp_min(1e-10) if torch.is_tensor(d) else torch.zeros((), dtype=means.dtype))
    return (torch.stack(rows).view(height, width, 3), torch.stack(alphas).view(height, width),
            torch.stack(depths).view(height, width))


def tiny_scene(dtype=torch.float64):
    """A handful of Gaussians in front of a 16x16 camera: overlaps, an opaque stack (early stop),
    one behind the camera, one too faint, one partly off screen, one stretched and rotated."""
    g = torch.Generator().manual_seed(3)
    means = torch.tensor([[0.0, 0.0, 0.0], [0.05, -0.03, 0.1], [0.0, 0.0, -0.2], [0.02, 0.0, -0.25],
                          [0.0, 0.0, -0.3], [0.0, 0.0, -2.5], [-0.1, 0.1, 0.0], [0.46, 0.0, 0.0],
                          [-0.2, -0.15, 0.2]], dtype=dtype)
    n = means.shape[0]
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.tensor([[0.08, 0.05, 0.03], [0.1, 0.02, 0.04], [0.06, 0.06, 0.06], [0.05, 0.07, 0.05],
                           [0.09, 0.09, 0.09], [0.1, 0.1, 0.1], [0.04, 0.12, 0.02], [0.05, 0.05, 0.05],
                           [0.15, 0.01, 0.03]], dtype=dtype)
    opac = torch.tensor([0.7, 0.5, 1.0, 1.0, 1.0, 0.9, 0.003, 0.8, 0.6], dtype=dtype)
    rgb = torch.rand(n, 3, generator=g, dtype=dtype)
    # camera on -z looking at the origin, 16x16 pixels, 50 degree field of view
    w2c = cameras.look_at_w2c(torch.tensor([0.3, -0.2, -2.0], dtype=dtype), torch.zeros(3, dtype=dtype),
                              up=(0.0, 1.0, 0.0))
    f = cameras.focal_from_fov(50.0, W)
    K = cameras.intrinsics(f, f, W / 2, H / 2, dtype=dtype)
    return means, quats, scales, opac, rgb, w2c, K


def render_tiny(scene, bg, settings=RasterSettings(), return_depth=True):
    means, quats, scales, opac, rgb, w2c, K = scene
    return rasterize_torch(means[None], quats[None], scales[None], opac[None], rgb[None], w2c[None, None],
                           K[None, None], W, H, bg.view(1, 1, 3), return_depth=return_depth, settings=settings)


@pytest.mark.parametrize("settings", [RasterSettings(), SMALL_CHUNKS], ids=["default", "small_chunks"])
def test_forward_matches_reference(settings):
    scene = tiny_scene()
    bg = torch.tensor([0.2, 0.9, 0.4], dtype=torch.float64)
    ref_rgb, ref_alpha, ref_depth = reference_render(*scene, W, H, bg)
    assert ref_alpha.max() > 0.999 and ref_alpha.min() < 0.05  # the scene covers both cases
    r = rasterize(*(t[None] for t in scene[:5]), scene[5][None, None], scene[6][None, None], W, H, bg,
                  sh_degree=None, backend="torch", return_depth=True, settings=settings)  # fp32 path
    assert r.rgb.dtype == torch.float32 and r.rgb.shape == (1, 1, H, W, 3)
    assert (r.rgb[0, 0].double() - ref_rgb).abs().max() < 1e-5
    assert (r.alpha[0, 0, ..., 0].double() - ref_alpha).abs().max() < 1e-5
    r64 = render_tiny(scene, bg, settings)
    assert (r64.rgb[0, 0] - ref_rgb).abs().max() < 1e-10
    assert (r64.alpha[0, 0, ..., 0] - ref_alpha).abs().max() < 1e-10
    assert (r64.depth[0, 0, ..., 0] - ref_depth).abs().max() < 1e-8


@pytest.mark.parametrize("settings", [RasterSettings(), SMALL_CHUNKS], ids=["default", "small_chunks"])
def test_gradients_match_reference(settings):
    scene = [t.clone().requires_grad_(True) for t in tiny_scene()[:5]]
    w2c, K = tiny_scene()[5:]
    bg = torch.tensor([0.2, 0.9, 0.4], dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    f64 = dict(generator=g, dtype=torch.float64)
    wr, wa, wd = torch.randn(H, W, 3, **f64), torch.randn(H, W, **f64), torch.randn(H, W, **f64)
    rgb, alpha, depth = reference_render(*scene, w2c, K, W, H, bg)
    ref = torch.autograd.grad((rgb * wr).sum() + (alpha * wa).sum() + (depth * wd).sum(), scene + [bg])
    r = render_tiny(scene + [w2c, K], bg, settings)
    loss = (r.rgb[0, 0] * wr).sum() + (r.alpha[0, 0, ..., 0] * wa).sum() + (r.depth[0, 0, ..., 0] * wd).sum()
    got = torch.autograd.grad(loss, scene + [bg])
    for name, a, b in zip(["means", "quats", "scales", "opacities", "rgb", "background"], got, ref):
        assert b.abs().max() > 0, name
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8), (name, (a - b).abs().max())


def test_covariance_is_the_jacobian_of_the_projection():
    """EWA: Sigma_2D = J Sigma_cam J^T + 0.3 I with J the derivative of cameras.project."""
    means, quats, scales, opac, rgb, w2c, K = tiny_scene()
    proj = project_gaussians(means[None], quats[None], scales[None], opac[None], w2c[None, None],
                             K[None, None], W, H, 0.01, RasterSettings())
    uv, _ = cameras.project(means, w2c, K)
    for n in (0, 1, 3, 8):  # inside the field of view: no clamping
        assert torch.allclose(proj.means2d[0, n], uv[n], atol=1e-12)
        Jw = torch.autograd.functional.jacobian(lambda p: cameras.project(p[None], w2c, K)[0][0], means[n])
        Rq = torch.stack([quat_rotate(quats[n] / quats[n].norm(), e) for e in torch.eye(3, dtype=torch.float64)], 1)
        cov2d = Jw @ (Rq @ torch.diag(scales[n] ** 2) @ Rq.T) @ Jw.T + 0.3 * torch.eye(2, dtype=torch.float64)
        a, b, c = proj.conics[0, n]
        assert torch.allclose(torch.stack([torch.stack([a, b]), torch.stack([b, c])]), torch.linalg.inv(cov2d),
                              rtol=1e-10)
    assert not proj.valid[0, 5] and not proj.valid[0, 6]  # behind the camera / too faint


def test_batching_equals_separate_renders():
    gen = torch.Generator().manual_seed(1)
    scenes = [random_gaussians(300, generator=gen, radius=0.5) for _ in range(2)]
    w2c, K = cameras.canonical_rig(image_size=32)
    w2c, K = w2c[:3].float(), K[:3].float()
    stack = lambda name: torch.stack([getattr(s, name) for s in scenes])  # noqa: E731
    bg = torch.rand(2, 3, 3, generator=gen)
    batched = rasterize(stack("means"), stack("quats"), stack("scales"), stack("opacities"), stack("sh0"),
                        w2c.expand(2, 3, 4, 4), K.expand(2, 3, 3, 3), 32, 32, bg, backend="torch", return_depth=True)
    assert batched.rgb.shape == (2, 3, 32, 32, 3) and batched.depth.shape == (2, 3, 32, 32, 1)
    for b, s in enumerate(scenes):
        for v in range(3):
            one = s.render(w2c[v:v + 1], K[v:v + 1], 32, 32, background=bg[b, v], backend="torch", return_depth=True)
            assert torch.allclose(batched.rgb[b, v], one.rgb[0, 0], atol=1e-6)
            assert torch.allclose(batched.alpha[b, v], one.alpha[0, 0], atol=1e-6)
            assert torch.allclose(batched.depth[b, v], one.depth[0, 0], atol=1e-5)
    assert batched.alpha.max() > 0.9


def test_isotropic_gaussian_lands_at_projected_pixel():
    w2c, K = cameras.canonical_rig(image_size=48)
    w2c, K = w2c[1].float(), K[1].float()
    point = torch.tensor([0.13, -0.05, 0.21])
    uv, depth = cameras.project(point[None], w2c, K)
    gs = Gaussians(point[None], torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.01), torch.tensor([0.9]),
                   torch.zeros(1, 3))
    r = gs.render(w2c[None], K[None], 48, 48, backend="torch", return_depth=True)
    alpha = r.alpha[0, 0, ..., 0]
    i, j = divmod(int(alpha.argmax()), 48)
    assert (i, j) == (int(uv[0, 1]), int(uv[0, 0]))
    v, u = torch.meshgrid(torch.arange(48) + 0.5, torch.arange(48) + 0.5, indexing="ij")
    centroid = torch.stack([(alpha * u).sum(), (alpha * v).sum()]) / alpha.sum()
    assert (centroid - uv[0]).abs().max() < 0.05
    assert abs(r.depth[0, 0, i, j, 0] - depth[0]) < 1e-5


def test_background_and_colour_modes():
    gen = torch.Generator().manual_seed(2)
    gs = random_gaussians(200, generator=gen, radius=0.4)
    w2c, K = cameras.canonical_rig(image_size=24)
    w2c, K = w2c[:2].float(), K[:2].float()
    # transparent Gaussians: the background, exactly
    clear = Gaussians(gs.means, gs.quats, gs.scales, torch.zeros(200), gs.sh0)
    r = clear.render(w2c, K, 24, 24, background=(0.1, 0.2, 0.3), backend="torch")
    assert torch.equal(r.alpha, torch.zeros_like(r.alpha))
    assert torch.allclose(r.rgb, torch.tensor([0.1, 0.2, 0.3]).expand_as(r.rgb))
    # rgb = sum(w c) + (1 - alpha) * background
    r0 = gs.render(w2c, K, 24, 24, background=(0.0, 0.0, 0.0), backend="torch")
    r1 = gs.render(w2c, K, 24, 24, background=(1.0, 0.5, 0.0), backend="torch")
    assert 0.1 < r0.alpha.mean() < 0.95
    assert torch.allclose(r1.rgb - r0.rgb, (1 - r0.alpha) * torch.tensor([1.0, 0.5, 0.0]), atol=1e-6)
    # degree-0 SH vs plain RGB (negative colours clamped at 0)
    gs.sh0 = 2.5 * gs.sh0
    rgb = (0.5 + SH_C0 * gs.sh0).clamp_min(0)
    assert (0.5 + SH_C0 * gs.sh0).min() < 0
    plain = rasterize(gs.means[None], gs.quats[None], gs.scales[None], gs.opacities[None], rgb[None],
                      w2c[None], K[None], 24, 24, sh_degree=None, backend="torch")
    assert torch.allclose(plain.rgb, gs.render(w2c, K, 24, 24, backend="torch").rgb, atol=1e-6)


def test_bad_inputs_raise():
    gs = random_gaussians(10, generator=torch.Generator().manual_seed(0))
    w2c, K = cameras.canonical_rig(image_size=8)
    with pytest.raises(ValueError, match="quats"):
        rasterize(gs.means[None], gs.quats[None, :5], gs.scales[None], gs.opacities[None], gs.sh0[None],
                  w2c[None, :1], K[None, :1], 8, 8)
    with pytest.raises(ValueError, match="backend"):
        gs.render(w2c[:1], K[:1], 8, 8, backend="vulkan")
    with pytest.raises(RuntimeError, match="CUDA"):
        gs.render(w2c[:1], K[:1], 8, 8, backend="gsplat")


# ----------------------------------------------------------------------------------------------
# Container, PLY, pruning
# ----------------------------------------------------------------------------------------------
def test_ply_round_trip(tmp_path):
    gs = random_gaussians(500, generator=torch.Generator().manual_seed(4))
    path = gs.write_ply(tmp_path / "sub" / "scene.ply")
    ply = PlyData.read(str(path))
    assert ply.byte_order == "<" and "format binary_little_endian 1.0" in ply.header
    names = [p.name for p in ply["vertex"].properties]
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                                            "rot_0", "rot_1", "rot_2", "rot_3"])
    assert all(p.val_dtype in ("f4", "float32") for p in ply["vertex"].properties)
    assert ply["vertex"].count == 500
    v = ply["vertex"]
    assert np.allclose(v["opacity"], torch.logit(gs.opacities.double()).numpy(), atol=1e-5)
    assert np.allclose(v["scale_1"], torch.log(gs.scales[:, 1].double()).numpy(), atol=1e-6)
    back = Gaussians.read_ply(path)
    for name in ("means", "quats", "sh0"):
        assert torch.equal(getattr(back, name), getattr(gs, name)), name
    assert torch.allclose(back.opacities, gs.opacities, rtol=1e-6, atol=0)
    assert torch.allclose(back.scales, gs.scales, rtol=1e-6, atol=0)
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        Gaussians.read_ply(tmp_path / "missing.ply")


def test_pruning():
    gs = Gaussians(torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.5, 0.5, -0.5], [2.0, 0, 0]]),
                   torch.tensor([[1.0, 0, 0, 0]]).repeat(4, 1), torch.full((4, 3), 0.1),
                   torch.tensor([0.9, 0.01, 0.5, 0.2]), torch.arange(12.0).view(4, 3))
    kept = gs.prune_opacity(0.2)
    assert len(kept) == 3 and torch.equal(kept.opacities, torch.tensor([0.9, 0.5, 0.2]))
    boxed = gs.crop_box((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    assert len(boxed) == 3 and torch.equal(boxed.sh0[:, 0], torch.tensor([0.0, 3.0, 6.0]))
    assert len(gs) == 4  # the originals are untouched
    with pytest.raises(ValueError, match="sh0"):
        Gaussians(gs.means, gs.quats, gs.scales, gs.opacities, gs.sh0[:2])


# ----------------------------------------------------------------------------------------------
# Turntable and video
# ----------------------------------------------------------------------------------------------
def test_turntable_cameras():
    w2c, K = turntable_cameras()
    assert w2c.shape == (150, 4, 4) and K.shape == (150, 3, 3)
    centres = cameras.camera_centers(w2c.double())
    assert torch.allclose(centres[0], torch.tensor([0.0, -2.7, 0.0], dtype=torch.float64), atol=1e-5)
    dist, elev, azim = cameras.spherical_coords(centres)
    assert torch.allclose(dist, torch.full((150,), 2.7, dtype=torch.float64), atol=1e-5)
    assert elev.abs().max() < 1e-4
    assert abs(azim[1] - (-90 + 360 / 150)) < 1e-4  # counter-clockwise, evenly spaced
    assert abs(K[0, 0, 0] - cameras.FACELIFT_FOCAL) < 1e-3 and K[0, 0, 2] == 256
    front_rig, _ = cameras.canonical_rig()
    assert torch.allclose(w2c[0].double(), front_rig[0], atol=1e-6)


def test_to_uint8_clips_and_rounds_to_the_nearest_level():
    x = torch.tensor([-0.1, 0.0, 0.49 / 255, 0.51 / 255, 0.5, 1.0, 1.2])
    assert viz.to_uint8(x).tolist() == [0, 0, 0, 1, 128, 255, 255]
    assert viz.to_uint8(x.numpy().astype(np.float64)).dtype == np.uint8


def test_render_turntable_and_video(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as a notebook in its run folder
    gs = random_gaussians(300, generator=torch.Generator().manual_seed(5), radius=0.5)
    frames = render_turntable(gs, n_frames=6, image_size=33, backend="torch")
    assert frames.shape == (6, 33, 33, 3) and frames.dtype == np.uint8
    assert frames.min() < 200 and frames.max() == 255  # something on a white background
    path = viz.write_video(tmp_path / "turn.mp4", frames, fps=10)
    assert path.suffix == ".mp4" and path.stat().st_size > 0
    back = imageio.mimread(path)
    assert len(back) == 6 and back[0].shape == (34, 34, 3)  # padded to even sizes for yuv420p
    assert np.abs(back[0][:33, :33].astype(float) - frames[0]).mean() < 12  # lossy but the same picture
    html = viz.show_video(path)
    assert 'src="turn.mp4"' in html.data and "base64" not in html.data  # a link to the file, not the file
    # without an ffmpeg binary: a GIF, named as such
    monkeypatch.setattr(viz, "_ffmpeg_exe", lambda: None)
    gif = viz.write_video(tmp_path / "turn2.mp4", frames, fps=10)
    assert gif.suffix == ".gif" and len(imageio.mimread(gif)) == 6
    assert viz.show_video(gif).data == '<img src="turn2.gif"/>'


# ----------------------------------------------------------------------------------------------
# Gradient descent recovers a scene
# ----------------------------------------------------------------------------------------------
def psnr(a, b):
    return -10 * math.log10(((a - b) ** 2).mean().item())


@pytest.fixture
def one_thread():
    """Small tensors on a shared 2-core machine run faster (and far steadier) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_optimisation_recovers_a_scene(one_thread):
    gen = torch.Generator().manual_seed(7)
    n, size = 32, 32
    target = random_gaussians(n, generator=gen, radius=0.6, scale_range=(0.06, 0.2))
    target.opacities = 0.5 + 0.5 * target.opacities
    w2c, K = cameras.canonical_rig(image_size=size)
    w2c, K = w2c[:4].float(), K[:4].float()
    with torch.no_grad():
        gt = target.render(w2c, K, size, size, backend="torch")
    # start from a perturbation of every parameter
    params = {
        "means": target.means + 0.04 * torch.randn(n, 3, generator=gen),
        "quats": target.quats + 0.5 * torch.randn(n, 4, generator=gen),
        "log_scales": torch.log(target.scales) + 0.4 * torch.randn(n, 3, generator=gen),
        "logit_opacities": torch.logit(target.opacities.clamp(0.01, 0.99)) + 1.0 * torch.randn(n, generator=gen),
        "sh0": target.sh0 + 1.0 * torch.randn(n, 3, generator=gen),
    }
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam([{"params": [params["means"]], "lr": 0.003},
                            {"params": [params[k] for k in ("quats", "log_scales", "logit_opacities", "sh0")],
                             "lr": 0.03}])

    def render():
        p = params
        return Gaussians(p["means"], p["quats"], p["log_scales"].exp(), torch.sigmoid(p["logit_opacities"]),
                         p["sh0"]).render(w2c, K, size, size, backend="torch")

    start = psnr(render().rgb.detach(), gt.rgb)
    for _ in range(150):
        opt.zero_grad()
        r = render()
        loss = ((r.rgb - gt.rgb) ** 2).mean() + ((r.alpha - gt.alpha) ** 2).mean()
        loss.backward()
        opt.step()
    final = psnr(render().rgb.detach(), gt.rgb)
    assert start < 25 and final > 30, (start, final)


def _timed_first_call(key: str, out: str) -> None:
    import time

    from mousefacelift.gaussians import machine_exclusive_first_call

    def build():
        start = time.time()
        time.sleep(0.4)
        return start, time.time()

    first = machine_exclusive_first_call(key, build)
    machine_exclusive_first_call(key, build)  # later calls of the process take no lock
    with open(out, "a") as f:
        f.write(f"{first[0]} {first[1]}\n")


def test_first_calls_of_processes_do_not_overlap(tmp_path):
    """Two processes building into one cache (gsplat's extension) must not build at the same time."""
    import multiprocessing as mp
    import uuid

    key, out = f"test-{uuid.uuid4().hex[:8]}", str(tmp_path / "spans.txt")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_timed_first_call, args=(key, out)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    (a0, a1), (b0, b1) = sorted(tuple(map(float, line.split())) for line in open(out))
    assert a1 <= b0, f"first calls overlapped: {a0:.2f}-{a1:.2f} and {b0:.2f}-{b1:.2f}"


def test_turntable_strip_crops_every_panel_to_the_object():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from mousefacelift import viz

    frames = np.full((12, 100, 120, 3), 255, np.uint8)
    for i in range(12):
        frames[i, 40:50, 30 + 2 * i:40 + 2 * i] = 0          # a 10 x 10 square drifting right
    fig, axes = plt.subplots(1, 4)
    pick = viz.turntable_strip(axes, frames, margin=2)
    assert list(pick) == [0, 4, 7, 11]
    shapes = {ax.images[0].get_array().shape for ax in axes}
    assert shapes == {(10 + 4, 10 + 2 * 11 + 4, 3)}            # rows 38-51, columns 28-63
    assert axes[1].get_title() == "120 deg"
    plt.close(fig)
