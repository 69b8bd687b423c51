"""Generating, caching and reading back a procedural recording.

Frames are independent (sensor noise and keypoint confidences come from generators keyed by the
frame): ``workers`` processes build the bodies and keypoints ahead (CPU work), this process renders
``render_batch`` frames per call on the device and one encoder thread per video writes them in order.
Measured (runs/h200x4-throughput): one H200 with 12 body processes, 57-60 frames/s at 576x512 with 6
cameras (27 ms a frame one at a time, 15 ms in batches of 16); on a busy 2-core CPU with one torch
thread the demo (6 cameras x 120 frames at 576x512) takes 17-24 s.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ... import cameras
from ...constants import MASK_THRESHOLD
from ...training import keyed_generator
from . import geometry as geo
from . import mouse as mm
from .config import FORMAT_VERSION, GT_DIR, ProceduralConfig, config_hash, image_size, rig_cameras, simulate_motion
from .mouse import KEYPOINT_NAMES, BodyConfig, PoseTrack
from .render import Scene, build_scene, keypoints_2d, render_frames
from .video import VideoSet, encoder_layout, read_frame, save_npz

log = logging.getLogger(__name__)

NOISE_STREAM, KEYPOINT_STREAM = 1, 2  # keyed_generator(seed, stream, frame)


@dataclass
class _Rig:
    """What the CPU side of a frame needs: the config, cameras w2c [V, 4, 4] and K [V, 3, 3]
    (float64, at the image size) and the motion."""
    cfg: ProceduralConfig
    w2c: torch.Tensor
    K: torch.Tensor
    pose: PoseTrack

    @classmethod
    def build(cls, cfg: ProceduralConfig) -> "_Rig":
        w2c, K = rig_cameras(cfg)
        cameras.check_rotation(w2c[:, :3, :3], what="synthetic rig")
        return cls(cfg, w2c, K, simulate_motion(cfg, cfg.n_frames, torch.Generator().manual_seed(cfg.seed)))

    def body(self, f: int) -> tuple[mm.MouseShapes, geo.Quadrics, np.ndarray, np.ndarray]:
        """Frame f's CPU side -> (shapes, their float32 quadrics, keypoints2d [V, 22, 3],
        keypoints3d [22, 3]); depends on (config, f) only."""
        shapes, kp3d = mm.build_mouse(self.pose, f, self.cfg.body)
        kp2d = keypoints_2d(self.cfg, self.w2c, self.K, shapes, kp3d,
                            keyed_generator(self.cfg.seed, KEYPOINT_STREAM, f))
        return shapes, geo.to_quadrics(shapes), kp2d, kp3d


_WORKER_RIG: _Rig | None = None  # the rig of a CPU worker process (set by its initializer)


def _init_worker(cfg: ProceduralConfig) -> None:
    global _WORKER_RIG
    torch.set_num_threads(1)
    _WORKER_RIG = _Rig.build(cfg)


def _worker_body(f: int) -> tuple[mm.MouseShapes, geo.Quadrics, np.ndarray, np.ndarray]:
    """:meth:`_Rig.body` in a worker, the quadrics as numpy arrays (plain pickles: tensors would
    travel as shared-memory handles, one file descriptor each)."""
    shapes, q, kp2d, kp3d = _WORKER_RIG.body(f)
    return shapes, geo.Quadrics(**{k: v.numpy() for k, v in vars(q).items()}), kp2d, kp3d


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
        chunk = max(1, min(16, cfg.n_frames // (4 * cfg.workers)))
        yield from pool.map(_worker_body, range(cfg.n_frames), chunksize=chunk)


def _to_host(*tensors: torch.Tensor) -> list[np.ndarray]:
    """Device tensors -> numpy arrays. From CUDA they land in page-locked memory from torch's caching
    host allocator (one copy engine transfer each, one synchronisation for all): a fresh pageable
    array cost about 6 ms a frame at 576x512 x 6 cameras on an H200 host, 3x the rendering itself.
    A block returns to the cache when the last array viewing it (an encoder's frame) is gone."""
    if not tensors or tensors[0].device.type != "cuda":
        return [t.cpu().numpy() for t in tensors]
    hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for h, t in zip(hosts, tensors):
        h.copy_(t, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return [h.numpy() for h in hosts]


def _rendered_frames(cfg: ProceduralConfig, rig: _Rig, scene: Scene, seconds: dict | None = None,
                     bgr: bool = False):
    """Yield (f, rgb [V, H, W, 3] uint8 with sensor noise, mask [V, H, W, 3] uint8 0/255 (three equal
    channels), keypoints2d [V, 22, 3], keypoints3d [22, 3]) for f = 0 .. n_frames - 1 in order,
    rendering ``cfg.render_batch`` frames per call; images in the encoders' layout
    (:func:`.video.encoder_layout`: BGR when ``bgr``). Each frame depends on (config, f) only.
    ``seconds``, when given, accumulates the time spent waiting for bodies ("bodies") and rendering
    ("render")."""
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
                noise = torch.randn(img.shape[1:], generator=g, device=img.device)
                img[i].add_(noise.mul_(cfg.scene.sensor_noise_std))
        img, mask = _to_host(encoder_layout(img.round_().clamp_(0, 255).to(torch.uint8), bgr),
                             encoder_layout(mask.to(torch.uint8).mul_(255), bgr))
        seconds["render"] = seconds.get("render", 0.0) + time.perf_counter() - t1
        for i, (_, _, kp2d, kp3d) in enumerate(batch):
            yield f0 + i, img[i], mask[i], kp2d, kp3d
        f0, batch, t0 = f + 1, [], time.perf_counter()


def generate_recording(out_dir: str | os.PathLike, config: ProceduralConfig) -> Path:
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


def _generate(out_dir: Path, config: ProceduralConfig) -> Path:
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
    videos = VideoSet(tmp / "videos_undist", V, (w, h), cfg.rig.fps, cfg.video_codec, cfg.video_gop, cfg.video_crf)
    masks = VideoSet(tmp / "simpleclick_undist", V, (w, h), cfg.rig.fps, cfg.video_codec, cfg.video_gop,
                      cfg.video_crf)
    kp3d = np.zeros((cfg.n_frames, len(KEYPOINT_NAMES), 3))
    kp2d = np.zeros((V, cfg.n_frames, len(KEYPOINT_NAMES), 3))
    seconds, start = {"encoders": 0.0}, time.perf_counter()
    try:
        # 2. frames
        for f, rgb, mask, kp2d_f, kp3d_f in tqdm(_rendered_frames(cfg, rig, scene, seconds, videos.bgr), total=cfg.n_frames,
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
    save_npz(gt / "poses.npz", pose.as_dict())
    save_npz(gt / "keypoints3d.npz", {"keypoints3d": kp3d})
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


def ensure_recording(cache_root: str | os.PathLike, config: ProceduralConfig) -> Path:
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
def load_ground_truth(recording_dir: str | os.PathLike) -> tuple[ProceduralConfig, PoseTrack, np.ndarray]:
    """-> (config, poses, keypoints3d [F, 22, 3] mm world) of a procedural recording."""
    gt = Path(recording_dir) / GT_DIR
    try:
        meta = json.loads((gt / "params.json").read_text())
        cfg = ProceduralConfig.from_dict(meta["config"])
        with np.load(gt / "poses.npz") as z:
            pose = PoseTrack(**{k: z[k] for k in mm.POSE_FIELDS})
        with np.load(gt / "keypoints3d.npz") as z:
            kp = z["keypoints3d"]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{gt}: not a procedural recording's ground truth ({e}); "
                         "regenerate it with mousefacelift.data.procedural.ensure_recording") from e
    return cfg, pose, kp


def behaviour(pose: PoseTrack, frame: int, high_deg: float = 45.0) -> str:
    """What the mouse does in ``frame``, from its true pose: "walking", "rear <= {high_deg} deg" or
    "rear > {high_deg} deg" (pitched above ``high_deg``, rearing flag or not: the rise of a high rear counts)."""
    pitch = float(np.degrees(pose.pitch[frame]))
    if pitch > high_deg:
        return f"rear > {high_deg:g} deg"
    return f"rear <= {high_deg:g} deg" if pose.rearing[frame] else "walking"


def split_coverage(pose: PoseTrack, splits: dict[str, Sequence[int]], high_deg: float = 45.0,
                   margin_deg: float = 10.0) -> tuple[list[dict], list[str]]:
    """Which behaviours each split holds, from the ground-truth poses: one row per split (its frames,
    rearing frames, frames pitched above ``high_deg``, highest pitch in degrees) and the warnings a reader
    needs. A held-out split whose highest rear is more than ``margin_deg`` above the train split's asks
    the model for a pose it never saw, so its scores on those frames measure extrapolation.
    splits: name -> frame indices of the recording (e.g. {"train": [...], "val": [...], "test": [...]})."""
    rows = []
    for name, frames in splits.items():
        f = np.asarray(list(frames), dtype=int)
        pitch = np.degrees(pose.pitch[f]) if f.size else np.zeros(0)
        rows.append({"split": name, "frames": int(f.size), "rearing frames": int(pose.rearing[f].sum()) if f.size else 0,
                     f"frames pitched > {high_deg:g} deg": int((pitch > high_deg).sum()),
                     "highest pitch (deg)": round(float(pitch.max()), 1) if f.size else float("nan")})
    top = {r["split"]: r["highest pitch (deg)"] for r in rows if r["frames"]}
    warnings = []
    if "train" in top:
        for name, deg in top.items():
            if name != "train" and deg > top["train"] + margin_deg:
                warnings.append(f"the {name} split holds rears up to {deg:.0f} deg, the train split only up to "
                                f"{top['train']:.0f} deg: its scores on those frames measure extrapolation. A longer "
                                "recording (synthetic_frames) puts rearing episodes on both sides")
    return rows, warnings


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
    return geo.sample_surface_points(shapes, n_points, generator)


def contact_sheet(recording_dir: str | os.PathLike, frame: int, columns: int = 3) -> np.ndarray:
    """All views of one frame tiled (RGB uint8 [rows * H, columns * W, 3]), mask outlines in green,
    keypoints with confidence >= 0.25 as red dots, the camera index in the corner."""
    import cv2

    root = Path(recording_dir)
    n = len(list((root / "videos_undist").glob("*.mp4")))
    tiles = []
    for v in range(n):
        img = np.ascontiguousarray(read_frame(root / "videos_undist" / f"{v}.mp4", frame))
        m = (read_frame(root / "simpleclick_undist" / f"{v}.mp4", frame)[..., 0] > MASK_THRESHOLD).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, (0, 255, 0), 1)
        kp_file = root / "keypoints2d_undist" / f"result_view_{v}.pkl"
        if kp_file.is_file():
            from ..recording import load_pickle_restricted  # a recording from elsewhere must not run code
            kp = np.asarray(load_pickle_restricted(kp_file))[frame]
            for x, y, c in kp:
                if c >= 0.25:
                    cv2.circle(img, (int(round(x)), int(round(y))), 2, (255, 0, 0), -1)
        cv2.putText(img, f"cam {v}  frame {frame}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 0), 2)
        tiles.append(img)
    rows = -(-n // columns)
    tiles += [np.zeros_like(tiles[0])] * (rows * columns - n)
    return np.concatenate([np.concatenate(tiles[r * columns:(r + 1) * columns], 1) for r in range(rows)], 0)
