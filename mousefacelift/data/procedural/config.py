"""What defines a procedural recording: the rig, the scene, the mouse and the motion, and the hash of
those (it names the cache folder). Runtime knobs (``RUNTIME_KEYS``) change speed only."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import torch

from ... import cameras
from ...configs import bounded, check_ranges, from_dict
from . import mouse as mm
from .mouse import BodyConfig, MotionConfig, PoseTrack

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


RUNTIME_KEYS = ("workers", "render_batch", "chunk_elements")  # ProceduralConfig knobs that change speed, not the files (left out of the hash)


@dataclass(frozen=True)
class ProceduralConfig:
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
    def from_dict(cls, d: dict) -> "ProceduralConfig":
        """Build from a (nested) dict; an unknown key is an error naming the closest valid key."""
        return from_dict(cls, d, "ProceduralConfig")

    def to_dict(self) -> dict:
        """The fields that define the files (runtime knobs such as ``workers`` left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_KEYS}


def config_hash(cfg: ProceduralConfig) -> str:
    """12 hex digits of sha256 over the format version and the json of dataclasses.asdict(cfg)
    (without RUNTIME_KEYS) with sorted keys."""
    text = json.dumps({"format_version": FORMAT_VERSION, **cfg.to_dict()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def demo_config(**overrides) -> ProceduralConfig:
    """The demo recording: 6 cameras x 120 frames at 576x512 (resolution_scale 0.5)."""
    return dataclasses.replace(ProceduralConfig(n_frames=120, resolution_scale=0.5), **overrides)


# ----------------------------------------------------------------------------------------------
# Cameras and motion
# ----------------------------------------------------------------------------------------------
def image_size(cfg: ProceduralConfig) -> tuple[int, int]:
    """(width, height) of the rendered images: the rig size times resolution_scale, rounded to even."""
    w = 2 * max(1, round(cfg.rig.width * cfg.resolution_scale / 2))
    h = 2 * max(1, round(cfg.rig.height * cfg.resolution_scale / 2))
    return w, h


def rig_cameras(cfg: ProceduralConfig) -> tuple[torch.Tensor, torch.Tensor]:
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


def simulate_motion(config: ProceduralConfig | MotionConfig, n_frames: int, generator: torch.Generator,
                    fps: float | None = None) -> PoseTrack:
    """Motion only (no rendering) -> PoseTrack of n_frames; fps defaults to the rig's (100)."""
    if isinstance(config, ProceduralConfig):
        fps = config.rig.fps if fps is None else fps
        config = config.motion
    return mm.simulate_poses(config, n_frames, RigConfig.fps if fps is None else fps, generator)
