"""Pictures out of tensors: float images to uint8, turntable frames to a browser-playable video file,
and the video shown in a notebook."""
from __future__ import annotations

import html
import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def to_uint8(images) -> np.ndarray:
    """Float images in [0, 1] (a torch tensor or an array, any shape and layout; values outside are
    clipped) -> uint8 numpy array of the same shape, rounded to the nearest level."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    return (np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def _ffmpeg_exe() -> str | None:
    """Path of the ffmpeg binary that imageio-ffmpeg uses, or None when there is none."""
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def write_video(path, frames: np.ndarray, fps: int = 30) -> Path:
    """Write uint8 frames [T, H, W, 3] as an H.264 MP4 (yuv420p; odd sizes padded to even with the
    edge pixels) that browsers play. Without an ffmpeg binary, writes an animated GIF beside it
    (same name, .gif) instead. Returns the path actually written."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video({path}): frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if _ffmpeg_exe() is not None:
        import imageio.v2 as imageio
        H, W = frames.shape[1:3]
        even = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
        with imageio.get_writer(path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=2,
                                quality=8, ffmpeg_log_level="error") as writer:
            for frame in even:
                writer.append_data(frame)
        logger.info("wrote %d frames to %s (H.264 via imageio-ffmpeg)", len(frames), path)
        return path
    from PIL import Image
    gif = path.with_suffix(".gif")
    images = [Image.fromarray(f) for f in frames]
    images[0].save(gif, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    logger.warning("no ffmpeg binary found (imageio-ffmpeg): wrote %d frames to %s as a GIF instead of %s",
                   len(frames), gif, path.name)
    return gif


def show_video(path):
    """An IPython HTML object that plays the video (MP4) or animation (GIF) at ``path`` from its file,
    named relative to the working directory (a run's notebooks execute in the run folder, so the link
    holds beside the executed notebook). The file is not embedded: executed notebooks stay small and
    the videos under runs/ are git-ignored."""
    from IPython.display import HTML
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"show_video: no file at {path}")
    src = html.escape(Path(os.path.relpath(path.resolve(), Path.cwd().resolve())).as_posix(), quote=True)
    if path.suffix.lower() == ".gif":
        return HTML(f'<img src="{src}"/>')
    return HTML(f'<video controls autoplay loop muted playsinline src="{src}"></video>')


def turntable_strip(axes, frames: np.ndarray, margin: int = 4) -> np.ndarray:
    """Draw ``len(axes)`` frames of a turntable, frames [F, H, W, 3] uint8 on white, evenly spaced
    over the orbit and titled by angle, all cropped to the one box that holds the object in every
    drawn frame (plus ``margin`` px), so a small object fills the panels. -> the frame indices drawn."""
    pick = np.linspace(0, len(frames) - 1, len(axes)).round().astype(int)
    shown = frames[pick]
    ink = (shown < 200).any(-1).any(0)                               # [H, W]: clearly not white in any drawn frame
    if ink.any():
        rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
        top, bottom = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, ink.shape[0])
        left, right = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, ink.shape[1])
        shown = shown[:, top:bottom, left:right]
    for ax, i, img in zip(axes, pick, shown):
        ax.imshow(img)
        ax.set_title(f"{360 * i / len(frames):.0f} deg", fontsize=9)
        ax.set_axis_off()
    return pick
