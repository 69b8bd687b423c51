"""`mfl infer`: FaceLift-style inference, and frame-range reconstruction of a recording.

One image (``infer_image``), like FaceLift's inference script:
1. read an RGBA PNG (alpha = mask) of a reference view and its camera: ``sample_dir:view`` (a
   sample's camera ``view``, the camera id of ``images/cam_{view:03d}.png``, and all that sample's
   cameras as targets) or, by default, FaceLift's canonical front camera and 6-view rig;
2. MVDiffusion generates every target view (the reference camera at the position the model was
   trained with); the real reference replaces its regeneration when ``keep_reference``;
3. GS-LRM turns the views into Gaussians -> ``gaussians.ply`` and a turntable video;
writes ``input.png``, ``multiview.png`` (generated views tiled), ``gaussians.ply``,
``turntable.mp4`` (``.gif`` without ffmpeg) into the output folder.

Both check their inputs before any model is loaded (:func:`check_paths`, :func:`read_rgba`): a
missing file or folder, an image that is not RGBA or has an empty alpha, an output path that is a
file, each is an error naming the path and the fix.

A recording (``infer_recording``): each frame of a range is extracted from all real views with the
``rectify`` policy at the GS-LRM's size (as notebook 01) and reconstructed; one PLY per frame in
world millimetres (the recording's frame, so the sequence is 4D), ``frames.json`` with each frame's
normalization or skip reason, and ``sequence.mp4`` rendered in each frame's normalized space from
a camera orbiting once over the range.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import cameras
from .configs import bounded, check_ranges
from .evaluation import gaussians_from_output, to_world_mm
from .gaussians import render_turntable, turntable_cameras
from .gslrm.attention import ATTENTION_MODES
from .gslrm.data import prepare_images
from .viz import to_uint8, write_video

log = logging.getLogger(__name__)


@dataclass
class InferConfig:
    device: str = "cpu"                     # where the models run ("cpu", "cuda", ...)
    seed: int = 0                           # MVDiffusion noise
    sampler: str = "ddim"                   # "ddim" or "dpm"
    steps: int = bounded(50, min=1)         # denoising steps
    guidance_scale: float = bounded(3.0, min=0)  # classifier-free guidance (1.0 = none)
    keep_reference: bool = True             # the real reference replaces its regenerated view
    min_opacity: float = bounded(0.005, min=0, max=1)  # Gaussians fainter than this are not written
    turntable_frames: int = bounded(120, min=1)  # frames of the turntable video
    render_size: int = bounded(0, min=0)    # side of rendered video frames (0 = the GS-LRM's size)
    elevation_deg: float = 0.0              # turntable camera elevation
    fps: int = bounded(30, min=1)           # video frame rate
    backend: str = "auto"                   # rasterizer backend
    bf16: bool = True                       # bf16 autocast of the MVDiffusion UNet and the GS-LRM transformer on
    #                                         CUDA (the CPU runs fp32)
    attention: str = "auto"                 # GS-LRM attention kernel: auto | sdpa | fa4 | fp8 (gslrm.attention)

    def __post_init__(self):
        check_ranges(self)
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"InferConfig.attention {self.attention!r} is not one of {ATTENTION_MODES}")


def parse_frames(spec: str) -> range:
    """"A:B" (frames A..B-1) or "A:B:S" (every S-th) -> range; a clear error otherwise."""
    try:
        parts = [int(p) for p in spec.split(":")]
        if len(parts) not in (2, 3) or parts[0] < 0 or parts[1] <= parts[0] or (len(parts) == 3 and parts[2] < 1):
            raise ValueError
    except ValueError:
        raise ValueError(f"--frames {spec!r}: use A:B (frames A to B-1, A < B) or A:B:STEP") from None
    return range(*parts)


def read_rgba(path: str | os.PathLike) -> torch.Tensor:
    """An RGBA PNG, 8 or 16 bits per channel -> [4, H, W] float in [0, 1] (alpha = mask). Square
    images with some foreground (alpha > 0.5) only."""
    import cv2

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: image not found; give the RGBA PNG of the mouse (alpha = its mask)")
    im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if im is None or im.ndim != 3 or im.shape[2] != 4 or im.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: not an 8- or 16-bit RGBA PNG; give the mouse image with its mask as alpha channel")
    if im.shape[0] != im.shape[1]:
        raise ValueError(f"{path}: {im.shape[1]}x{im.shape[0]} is not square; crop it (and its camera) first")
    rgba = torch.from_numpy(im[..., [2, 1, 0, 3]].astype(np.float32) / np.iinfo(im.dtype).max).permute(2, 0, 1)
    if not (rgba[3] > 0.5).any():
        raise ValueError(f"{path}: the alpha channel is empty (no pixel above 0.5): alpha must be the mouse's mask, "
                         "opaque on the mouse")
    return rgba.contiguous()


def check_paths(out_dir: str | os.PathLike, gslrm: str | os.PathLike,
                mvdiffusion: str | os.PathLike | None = None) -> None:
    """Before any model is loaded: ``out_dir`` is not a file, the GS-LRM checkpoint (a file, or a
    folder holding ``ckpt_*.pt``) and the MVDiffusion pipeline folder exist. Errors name the path."""
    from .gslrm.model import CKPT_GLOB, latest_checkpoint

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is an existing file; give a folder (it is created if missing)")
    g = Path(gslrm)
    if g.is_dir() and latest_checkpoint(g) is None:
        raise FileNotFoundError(f"--gslrm {g}: no {CKPT_GLOB} in this folder; give notebook 06's gslrm/ folder "
                                "(runs/<run>/gslrm) or a checkpoint file")
    if not g.exists():
        raise FileNotFoundError(f"--gslrm {g} not found; give notebook 06's gslrm/ folder (runs/<run>/gslrm) or a "
                                "checkpoint file")
    if mvdiffusion is not None and not (Path(mvdiffusion) / "model_index.json").is_file():
        raise FileNotFoundError(f"--mvdiffusion {mvdiffusion}: no model_index.json there; give the pipeline folder "
                                "written by notebook 04 (runs/<run>/mvdiffusion/pipeline) or FaceLift's mvdiffusion "
                                "folder")


def reference_cameras(camera: str, image_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Cameras of the views to generate for an image of ``image_size`` px: ``camera`` is
    "SAMPLE_DIR:VIEW" or "" (FaceLift's canonical rig, reference = front).
    -> target w2c [V, 4, 4], target K [V, 3, 3] (for image_size px, float64), reference position."""
    if not camera:
        w2c, K = cameras.canonical_rig(image_size=image_size)
        return w2c, K, 0
    from .data.samples import read_cameras

    folder, _, view = camera.rpartition(":")
    if not folder or not view.isdigit():
        raise ValueError(f"--camera {camera!r}: use SAMPLE_DIR:VIEW, e.g. runs/demo/data/samples/sample_000120:0")
    meta, w2c, K = read_cameras(folder)
    ids = [int(f.get("view_id", i)) for i, f in enumerate(meta["frames"])]
    if int(view) not in ids:
        raise ValueError(f"--camera {camera!r}: {folder} has cameras {ids}, not {view}")
    sizes = {(f["w"], f["h"]) for f in meta["frames"]}
    if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
        raise ValueError(f"{folder}: views must be square and of one size, got {sorted(sizes)}")
    w = next(iter(sizes))[0]
    return w2c, cameras.scale_intrinsics(K, image_size / w, image_size / w), ids.index(int(view))


def arrange(w2c: torch.Tensor, K: torch.Tensor, ref: int, position: int
            ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Move view ``ref`` of w2c [V, 4, 4], K [V, 3, 3] to ``position`` (where the MVDiffusion model
    expects its reference), the others in order -> (w2c, K, order of the original indices)."""
    others = [v for v in range(w2c.shape[0]) if v != ref]
    order = others[:position] + [ref] + others[position:]
    return w2c[order], K[order], order


def _uint8(rgb: torch.Tensor) -> np.ndarray:
    """[..., 3|4, H, W] in [0, 1] -> uint8 [..., H, W, 3|4]."""
    return to_uint8(rgb.movedim(-3, -1))


def _write_png(path: Path, img: np.ndarray) -> Path:
    import cv2

    order = [2, 1, 0, 3] if img.shape[-1] == 4 else [2, 1, 0]
    if not cv2.imwrite(str(path), np.ascontiguousarray(img[..., order])):
        raise OSError(f"could not write {path}")
    return path


def _gaussians(model, rgb: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, cfg: InferConfig):
    """GS-LRM on one object's views rgb [V, 3, S, S] on white, c2w [V, 4, 4], K [V, 3, 3] ->
    :class:`Gaussians` (on the model's device) without those fainter than ``cfg.min_opacity``."""
    dev = next(model.parameters()).device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16 and dev.type == "cuda"):
        out = model(rgb[None].to(dev), c2w[None].float().to(dev), K[None].float().to(dev))
    return gaussians_from_output(out, 0, cfg.min_opacity)


@torch.no_grad()
def infer_image(image: str | os.PathLike, mvdiffusion: str | os.PathLike, gslrm: str | os.PathLike,
                out_dir: str | os.PathLike, camera: str = "", config: InferConfig | None = None) -> dict:
    """Steps 1-3 of the module docstring -> {"input", "multiview", "ply", "video", "n_gaussians", "views"}."""
    from .gslrm.model import from_pretrained
    from .mvdiffusion.pipeline import MVDiffusionPipeline, SamplerConfig, composite, resize_views

    cfg = config or InferConfig()
    dev = torch.device(cfg.device)
    out = Path(out_dir)
    # 1. inputs checked, then the models loaded; image and cameras at the MVDiffusion resolution
    check_paths(out, gslrm, mvdiffusion)
    rgba = read_rgba(image)
    w2c, K, ref = reference_cameras(camera, rgba.shape[-1])
    out.mkdir(parents=True, exist_ok=True)
    pipe = MVDiffusionPipeline.from_pretrained(mvdiffusion).to(dev)
    pipe.model.eval()
    model = from_pretrained(gslrm).to(dev).set_attention(cfg.attention)
    w2c, K, order = arrange(w2c, K, ref, pipe.model.config.reference_view)
    rv, Sm = pipe.model.config.reference_view, pipe.image_size
    ref_img, _ = resize_views(rgba[None], K[rv:rv + 1], Sm)                    # [1, 4, Sm, Sm]
    Km = cameras.scale_intrinsics(K, Sm / rgba.shape[-1], Sm / rgba.shape[-1])
    _write_png(out / "input.png", _uint8(ref_img[0]))
    # 2. every view from the reference
    sampler = SamplerConfig(sampler=cfg.sampler, steps=cfg.steps, guidance_scale=cfg.guidance_scale, bf16=cfg.bf16)
    views = pipe(ref_img, w2c[None, rv], w2c[None], Km[None], sampler,
                 generator=[torch.Generator().manual_seed(cfg.seed)]).cpu()[0]  # [V, 4, Sm, Sm]
    if cfg.keep_reference:
        views[rv] = composite(ref_img[0], (1.0, 1.0, 1.0))
    _write_png(out / "multiview.png", np.concatenate(list(_uint8(views[:, :3])), axis=1))
    # 3. Gaussians, PLY, turntable (the generated RGB is already over white: resized as opaque)
    S = model.cfg.image_size
    rgb, _, Kg = prepare_images(torch.cat([views[:, :3], torch.ones_like(views[:, 3:])], 1), Km, S)
    gs = _gaussians(model, rgb, cameras.invert_rigid(w2c), Kg, cfg)
    ply = gs.write_ply(out / "gaussians.ply")
    frames = render_turntable(gs, cfg.turntable_frames, radius=cameras.FACELIFT_DISTANCE,
                              elevation_deg=cfg.elevation_deg, image_size=cfg.render_size or S, backend=cfg.backend)
    video = write_video(out / "turntable.mp4", frames, cfg.fps)
    log.info("infer: %s -> %s (%d Gaussians)", image, out, len(gs))
    return {"input": out / "input.png", "multiview": out / "multiview.png", "ply": ply, "video": video,
            "n_gaussians": len(gs), "views": order}


@torch.no_grad()
def infer_recording(recording: str | os.PathLike, frames: range, gslrm: str | os.PathLike,
                    out_dir: str | os.PathLike, config: InferConfig | None = None) -> dict:
    """Reconstruct each frame of ``frames`` from all real views (see the module docstring)
    -> {"plys": [paths], "skipped": {frame: reason}, "video": path or None, "frames_json": path}."""
    from .data.extract import ExtractConfig, frame_skip_reason, process_frame
    from .data.recording import open_recording, read_frames
    from .gslrm.model import from_pretrained

    cfg = config or InferConfig()
    dev = torch.device(cfg.device)
    out = Path(out_dir)
    check_paths(out, gslrm)
    rec = open_recording(recording)
    wanted = [f for f in frames if f < rec.n_frames]
    if not wanted:
        raise ValueError(f"--frames {frames.start}:{frames.stop}: {recording} has frames 0..{rec.n_frames - 1}")
    out.mkdir(parents=True, exist_ok=True)
    model = from_pretrained(gslrm).to(dev).set_attention(cfg.attention)
    S = model.cfg.image_size
    ext = ExtractConfig(view_policy="rectify", image_size=S, progress=False)
    size = cfg.render_size or S
    orbit_w2c, orbit_K = turntable_cameras(len(wanted), cameras.FACELIFT_DISTANCE, cfg.elevation_deg, image_size=size)
    plys, skipped, video_frames, info = [], {}, [], {}
    for k, frame in enumerate(read_frames(rec, wanted, progress=False)):
        reason = frame_skip_reason(frame.mask, ext.min_mask_pixels, ext.border_margin, ext.border_contact_max,
                                   ext.border_thin_fraction)
        if reason is not None:
            log.info("frame %d skipped: %s", frame.index, reason)
            skipped[frame.index] = reason
            info[frame.index] = {"skipped": reason}
            continue
        pf = process_frame(frame, rec, ext)
        images = torch.from_numpy(pf.images).permute(0, 3, 1, 2).float() / 255.0
        rgb, _, K = prepare_images(images, pf.K, S)
        g = _gaussians(model, rgb, cameras.invert_rigid(pf.w2c), K, cfg)
        path = to_world_mm(g, pf.provenance["normalization"]).write_ply(out / f"frame_{frame.index:06d}.ply")
        plys.append(path)
        info[frame.index] = {"ply": path.name, "normalization": pf.provenance["normalization"],
                             "center_mm": pf.provenance["center_mm"]}
        r = g.render(orbit_w2c[k:k + 1], orbit_K[k:k + 1], size, size, backend=cfg.backend)
        video_frames.append(_uint8(r.rgb[0, 0].permute(2, 0, 1)))
    video = write_video(out / "sequence.mp4", np.stack(video_frames), cfg.fps) if video_frames else None
    frames_json = out / "frames.json"
    frames_json.write_text(json.dumps({"recording": str(rec.path), "units": "mm (recording world)",
                                       "frames": {str(k): v for k, v in info.items()}}, indent=1))
    log.info("infer: %d frames reconstructed, %d skipped -> %s", len(plys), len(skipped), out)
    return {"plys": plys, "skipped": skipped, "video": video, "frames_json": frames_json}


__all__ = ["InferConfig", "parse_frames", "read_rgba", "check_paths", "reference_cameras", "arrange", "infer_image",
           "infer_recording"]
