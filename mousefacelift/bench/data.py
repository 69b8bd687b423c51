"""Benchmarks of the data stages: the procedural recording, video decoding, the rasterizer."""
from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import _sync, row, timed
from ..data import recording

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# The benchmarks
# ----------------------------------------------------------------------------------------------
def video_codec() -> str:
    """H.264 (the default of the procedural recording) when imageio-ffmpeg is installed, else
    OpenCV's mp4v (e.g. on a GPU image without it), so the benchmark still runs; rows say which."""
    try:
        import imageio_ffmpeg  # noqa: F401
        return "h264"
    except ImportError:
        return "mp4v"


def bench_synthetic(device: torch.device, workers: int | None = None, render_batches: tuple[int, ...] = (16, 32)) -> list[dict]:
    """Procedural recording: the demo size (6 cameras x 120 frames at 576x512) end to end, and
    frames/s at full 1152x1024 (a short recording, setup included). On CUDA also params/gpu.yaml's
    size (576x512), 1000 frames, side by side: one frame per render call in this process (the
    reference path) against each of ``render_batches`` frames per call with ``workers`` body
    processes (default: half the CPU cores, at most 12), setup included."""
    from ..data import procedural

    rows, codec = [], video_codec()
    with tempfile.TemporaryDirectory() as tmp:
        if device.type == "cuda":
            n, workers = 1000, workers or max(2, min(12, (os.cpu_count() or 4) // 2))
            rates = {}
            for name, w, b in [("reference", 0, 1)] + [(f"batched {b}", workers, b) for b in render_batches]:
                cfg = procedural.ProceduralConfig(n_frames=n, resolution_scale=0.5, device="cuda", video_codec=codec,
                                                workers=w, render_batch=b, chunk_elements=2 ** (21 if b == 1 else 25))
                t0 = time.perf_counter()
                procedural.generate_recording(Path(tmp) / name, cfg)
                rates[name] = n / (time.perf_counter() - t0)
                rows.append(row("synthetic", f"576x512, {n} frames x 6 cams, {b} frame(s) per call, "
                                             f"{w or 'no'} body processes, chunks of {cfg.chunk_elements}",
                                rates[name], "frames/s",
                                f"{codec}; setup included; target >= 100"))
            rows += [row("synthetic", f"{b} frames per call + body processes vs one frame per call",
                         rates[f"batched {b}"] / rates["reference"], "x", "same run") for b in render_batches]
        cfg = procedural.demo_config(device=device.type, video_codec=codec)
        t0 = time.perf_counter()
        procedural.generate_recording(Path(tmp) / "demo", cfg)
        rows.append(row("synthetic", "demo 6 cams x 120 frames @576x512", time.perf_counter() - t0, "s",
                        f"{codec}; target <= 60 s on a 2-core CPU"))
        n = 30 if device.type == "cuda" else 10
        cfg = procedural.ProceduralConfig(n_frames=n, device=device.type, video_codec=codec)
        t0 = time.perf_counter()
        procedural.generate_recording(Path(tmp) / "full", cfg)
        rows.append(row("synthetic", f"full 1152x1024, {n} frames x 6 cams", n / (time.perf_counter() - t0),
                        "frames/s", f"6-camera frames incl. setup and {codec} encoding"))
    return rows


def bench_decoding(device: torch.device) -> list[dict]:
    """Sequential parallel decoding vs a seek-per-frame reader, same frames, same run: 15 frames at
    stride 9 (the real extraction takes 2000 of 18000 frames) of a full-size procedural recording."""
    from ..data import procedural
    from ..stage import default_cache_dir

    codec = video_codec()
    cfg = procedural.ProceduralConfig(n_frames=150, device=device.type, video_codec=codec)
    rec = recording.open_recording(procedural.ensure_recording(default_cache_dir() / "recordings", cfg))
    r = time_decoding(rec, n_frames=15, stride=9)
    gop = f"H.264, keyframe every {cfg.video_gop}" if codec == "h264" else "mp4v (keyframes every few frames: seeking is cheap)"
    return [row("decoding", "sequential + parallel (1152x1024, 6 cams)", r["sequential_fps"], "frames/s",
                f"{gop}; one thread per video"),
            row("decoding", "sequential, one thread per camera", r["per_camera_fps"], "frames/s",
                f"RGB then mask video in each thread; one thread per video is {r['sequential_fps'] / r['per_camera_fps']:.2f}x"),
            row("decoding", "seek per frame (baseline)", r["seek_fps"], "frames/s"),
            row("decoding", "speed-up", r["ratio"], "x", f"identical frames: {r['identical']}; target >= 3x")]


def time_rasterizer(device, n_gaussians: int = 10_000, n_views: int = 1, image_size: int = 128,
                     backend: str = "auto", repeats: int = 5, seed: int = 0) -> dict:
    """Time :func:`mousefacelift.gaussians.rasterize` on a random scene (cameras of the canonical rig,
    first n_views): returns {"forward_ms", "forward_backward_ms", ...}: medians over ``repeats`` after a warm-up."""
    import numpy as np

    from .. import cameras
    from ..gaussians import random_gaussians, rasterize

    device = torch.device(device)
    gs = random_gaussians(n_gaussians, generator=torch.Generator().manual_seed(seed), device=device)
    w2c, K = cameras.canonical_rig(image_size=image_size)
    idx = torch.arange(n_views) % 6
    w2c, K = w2c[idx].float().to(device)[None], K[idx].float().to(device)[None]
    params = [p[None].clone().requires_grad_(True) for p in (gs.means, gs.quats, gs.scales, gs.opacities, gs.sh0)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(backward: bool) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            r = rasterize(*params, w2c, K, image_size, image_size, backend=backend)
            if backward:
                (r.rgb.sum() + r.alpha.sum()).backward()
        sync()
        return 1000.0 * (time.perf_counter() - t0)

    result = {"device": str(device), "backend": backend if backend != "auto" else
              ("gsplat" if device.type == "cuda" else "torch"),
              "n_gaussians": n_gaussians, "n_views": n_views, "image_size": image_size}
    for name, bwd in (("forward_ms", False), ("forward_backward_ms", True)):
        step(bwd)
        result[name] = float(np.median([step(bwd) for _ in range(repeats)]))
    log.info("time_rasterizer: %s", result)
    return result


def bench_rasterizer(device: torch.device) -> list[dict]:
    """gsplat (CUDA) at 6 views x 512 with 1.5 M Gaussians, and the torch renderer at 128x128."""
    bench = time_rasterizer
    rows = []
    if device.type == "cuda":
        r = bench(device, n_gaussians=1_500_000, n_views=6, image_size=512, backend="gsplat")
        rows += [row("rasterizer", "gsplat 6 views @512, 1.5M Gaussians, forward", r["forward_ms"], "ms"),
                 row("rasterizer", "gsplat 6 views @512, 1.5M Gaussians, fwd+bwd", r["forward_backward_ms"], "ms")]
    r = bench(device, n_gaussians=10_000, n_views=1, image_size=128, backend="torch")
    rows += [row("rasterizer", f"torch renderer 1 view @128, 10k Gaussians, forward ({device.type})",
                 r["forward_ms"], "ms"),
             row("rasterizer", f"torch renderer 1 view @128, 10k Gaussians, fwd+bwd ({device.type})",
                 r["forward_backward_ms"], "ms")]
    return rows




def time_decoding(rec: recording.Recording, n_frames: int, stride: int = 9, cameras: Sequence[int] | None = None,
                   allow_keyframe_jumps: bool = True) -> dict:
    """Time :func:`recording.read_frames` (sequential, one thread per video) against the same with one
    thread per camera (``workers`` = cameras: a camera's RGB and mask videos one after the other) and
    against :func:`recording.read_frames_seek`, in the same run, on ``n_frames`` frames spaced ``stride``
    apart (9 = 2000 of 18000 frames, the default extraction).

    Returns {"n_frames", "stride", "sequential_fps", "per_camera_fps", "seek_fps", "ratio", "identical"}
    where fps counts multi-view frames per second, ``ratio`` is seek time over sequential time and
    ``identical`` says all three returned the same pixels."""
    frames = list(range(0, min(rec.n_frames, n_frames * stride), stride))[:n_frames]

    def sequential(workers=None):
        return [(f.rgb.sum(dtype=np.int64), f.mask.sum()) for f in recording.read_frames(
            rec, frames, cameras, workers=workers, progress=False, allow_keyframe_jumps=allow_keyframe_jumps)]
    sequential()  # untimed: whichever pass ran first paid for the cold page cache (10-15% on a 2-core CPU)
    t0 = time.perf_counter()
    seq = sequential()
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_camera = sequential(workers=len(cameras) if cameras is not None else rec.n_cameras)
    t_cam = time.perf_counter() - t0
    t0 = time.perf_counter()
    seek = [(f.rgb.sum(dtype=np.int64), f.mask.sum()) for f in recording.read_frames_seek(rec, frames, cameras)]
    t_seek = time.perf_counter() - t0
    out = {"n_frames": len(frames), "stride": stride, "keyframe_jumps": allow_keyframe_jumps, "sequential_s": t_seq, "seek_s": t_seek,
           "sequential_fps": len(frames) / t_seq, "per_camera_fps": len(frames) / t_cam, "seek_fps": len(frames) / t_seek,
           "ratio": t_seek / t_seq, "identical": seq == seek == per_camera}
    log.info("decoding benchmark: %s", out)
    return out


def baseline_scene(size: int, device: torch.device, n_gaussians: int = 3000, seed: int = 0):
    """A mouse-sized blob of random Gaussians (an ellipsoid about the origin, 0.5 x 0.2 x 0.2 normalized
    units) seen by 6 cameras on two rings at distance 2.7, 30 degree field of view, rendered by the
    rasterizer of ``device`` -> rgb [6, 3, S, S] on white, alpha [6, 1, S, S], K [6, 3, 3], w2c [6, 4, 4]."""
    from .. import cameras
    from ..gaussians import rasterize
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(1, n_gaussians, 3, generator=g) * torch.tensor([0.5, 0.2, 0.2]) / 2
    quats = torch.randn(1, n_gaussians, 4, generator=g)
    scales = torch.full((1, n_gaussians, 3), 0.03)
    colors = torch.rand(1, n_gaussians, 3, generator=g) * 0.5 + 0.2
    w2c = cameras.orbit_cameras([0.0, 120.0, 240.0, 60.0, 180.0, 300.0], [-30.0] * 3 + [30.0] * 3, 2.7).float()
    f = cameras.focal_from_fov(30.0, size)
    K = cameras.intrinsics(f, f, size / 2, size / 2).float().expand(6, 3, 3).clone()
    with torch.no_grad():
        r = rasterize(*(t.to(device) for t in (means, quats, scales, torch.full((1, n_gaussians), 0.8), colors,
                                               w2c[None], K[None])), size, size, sh_degree=None)
    return r.rgb[0].permute(0, 3, 1, 2), r.alpha[0].permute(0, 3, 1, 2), K.to(device), w2c.to(device)


def bench_baselines(device: torch.device) -> list[dict]:
    """Notebook 07's per-frame Gaussian fit: the six plans of one sample at N = 5 (each view held out
    in turn) fitted one at a time against all six in one batch, same function, same plans, same run;
    on CUDA at 256 px, a 64^3 hull and 300 Adam steps (params/gpu.yaml's scoring), on a CPU at 32 px, a
    24^3 hull and 1 step, timed once (a smoke run: the torch rasterizer is not launch-bound)."""
    from .. import baselines as bl
    cuda = device.type == "cuda"
    size, iterations, voxels = (256, 300, 64) if cuda else (32, 1, 24)
    rgb, alpha, K, w2c = baseline_scene(size, device, n_gaussians=3000 if cuda else 500)
    cfg = bl.BaselineConfig(fit_iterations=iterations, hull_resolution=voxels)
    plans = [[v for v in range(6) if v != t] for t in range(6)]
    t0 = time.perf_counter()
    inits = [bl.hull_gaussians(bl.visual_hull(alpha[p], K[p], w2c[p], cfg), rgb[p], alpha[p], K[p], w2c[p], cfg)
             for p in plans]
    _sync(device)
    hull_ms = (time.perf_counter() - t0) * 1e3 / len(plans)
    ii = torch.tensor(plans)

    def one_at_a_time():
        for p, init in zip(plans, inits):
            bl.fit_gaussians(bl.stack_gaussians([init]), rgb[p][None], alpha[p][None], K[p][None], w2c[p][None], cfg)

    def batched():
        bl.fit_gaussians(bl.stack_gaussians(inits), rgb[ii], alpha[ii], K[ii], w2c[ii], cfg)

    repeats, warmup = (3, 1) if cuda else (1, 0)
    alone = timed(one_at_a_time, device, repeats=repeats, warmup=warmup)
    batch = timed(batched, device, repeats=repeats, warmup=warmup)
    what = (f"6 plans x {iterations} steps @{size}, N = 5, {voxels}^3 hull, "
            f"{inits[0]['means'].shape[0]} Gaussians per plan")
    return [row("baselines", "visual hull and initial Gaussians, per plan", hull_ms, "ms"),
            row("baselines", f"per-frame fit, {what}: one plan at a time", alone, "ms"),
            row("baselines", f"per-frame fit, {what}: one batch", batch, "ms"),
            row("baselines", "per-frame fit: one batch vs one plan at a time", alone / batch, "x",
                "notebook 07 fits each N's plans in one batch")]
